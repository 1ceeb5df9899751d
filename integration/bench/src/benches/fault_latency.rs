//! `thaw-bench fault-latency`: fault service latency as the faulting thread
//! sees it (touch to return), p50/p99, for a block already in the agent's
//! host cache and for a block fetched from the network source, each next to
//! the bare userfaultfd floor (one `UFFDIO_COPY` of the same block size by a
//! plain handler thread) measured in the same run.
//!
//! The network source is a real block server (`thaw_block_protocol::server`)
//! on loopback, reached over QUIC with mutual TLS (a development PKI made for
//! the run). Two network figures: `network_cold_*` with the server's cache
//! cold, so each fault is one QUIC request the server answers from the object
//! store in a local directory; `network_*` from a second agent with an empty
//! host cache while the server's cache is warm, the case a block server in
//! front of a fleet is for, and the network path alone. Agents run in this
//! process with prefetch off, so every touch is one fault; the run fails if
//! any block bypassed the block server.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::uffd_floor::FloorHandler;
use anyhow::Context;
use fetch_agent::fetch::FetchConfig;
use fetch_agent::guest::MappedGuest;
use fetch_agent::metrics::SourceKind;
use fetch_agent::policy::Config;
use fetch_agent::source::block_server::BlockServerSource;
use fetch_agent::{Agent, AgentConfig};
use serde_json::json;
use thaw_block_protocol::server::BlockServer;
use thaw_block_protocol::tls::{self, DevPki};
use thaw_store::{write_checkpoint, MemoryRegion, Store, WriteOptions};

pub struct FaultLatencyBench {
    /// Blocks touched per measurement.
    pub blocks: usize,
    pub json: Option<PathBuf>,
}

const BLOCK_PAGES: usize = 16;
const BLOCK_BYTES: usize = BLOCK_PAGES * 4096;

/// Touches the first page of every block in `order`, timing each fault.
fn touch_blocks(guest: &MappedGuest, order: &[usize]) -> Vec<Duration> {
    order
        .iter()
        .map(|&b| {
            let t = Instant::now();
            std::hint::black_box(guest.touch((b * BLOCK_PAGES) as u64));
            t.elapsed()
        })
        .collect()
}

fn percentile_us(samples: &[Duration], q: f64) -> f64 {
    let mut v: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1e6).collect();
    v.sort_by(|a, b| a.total_cmp(b));
    let i = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1;
    v[i]
}

/// Memory that compresses a little, like real guest memory: no zero pages.
fn image(blocks: usize) -> Vec<u8> {
    let mut m = vec![0u8; blocks * BLOCK_BYTES];
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for (i, chunk) in m.chunks_mut(8).enumerate() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let v = if i % 4 == 0 { i as u64 } else { x };
        chunk.copy_from_slice(&v.to_le_bytes());
    }
    m
}

/// Touches and frees `len` bytes of fresh memory so that the pass after it
/// gets pages the host already backs. Inside a VM whose host takes back free
/// memory (virtio-balloon free page reporting, as on these machines), the
/// first use of a page also costs a host fault: without this, a pass that
/// happens to get such pages looks up to 3x slower than one that does not
/// (measured here: cached p50 280 µs before, 92 µs after, floor 94 µs both).
fn warm_host_memory(len: usize) {
    let mut scratch = vec![0u8; len];
    for i in (0..len).step_by(4096) {
        scratch[i] = 1;
    }
    std::hint::black_box(&scratch);
}

/// A scattered order of all blocks, so the kernel sees no sequential pattern.
fn order(blocks: usize) -> Vec<usize> {
    (0..blocks).map(|i| (i * 7919) % blocks).collect()
}

pub async fn run(
    cfg: FaultLatencyBench,
) -> anyhow::Result<serde_json::Map<String, serde_json::Value>> {
    anyhow::ensure!(cfg.blocks >= 16, "at least 16 blocks");
    let blocks = cfg.blocks;
    let dir = tempfile::tempdir().context("temporary directory")?;
    let store_spec = dir
        .path()
        .join("store")
        .to_str()
        .context("UTF-8 path")?
        .to_owned();
    let store = Store::open(&store_spec)?;
    let memory = Arc::new(image(blocks));
    let summary = write_checkpoint(
        &store,
        &[MemoryRegion {
            guest_phys_addr: 0,
            bytes: &memory,
        }],
        Vec::new(),
        &WriteOptions {
            block_pages: BLOCK_PAGES as u64,
            ..WriteOptions::default()
        },
    )
    .await?;
    let order = order(blocks);

    // The network source: a block server on loopback with mutual TLS.
    let pki_dir = dir.path().join("pki");
    let pki = DevPki::generate()?;
    pki.write_to(&pki_dir)?;
    let server = BlockServer::new(Store::open(&store_spec)?, (blocks * BLOCK_BYTES * 2) as u64);
    let running = server.serve(
        "127.0.0.1:0".parse()?,
        tls::server_config(&pki.server, Some(pki.ca_pem.as_str()))?,
    )?;

    // Two agents, each with its own host cache: the first meets the server's
    // cache cold, the second finds it warm.
    let mut agents = Vec::new();
    for name in ["agent-cold.sock", "agent-warm.sock"] {
        let source = BlockServerSource::connect(
            &running.local_addr.to_string(),
            &pki_dir.join("ca.pem"),
            Some((&pki_dir.join("client.pem"), &pki_dir.join("client.key"))),
        )?;
        let agent = Agent::new(
            AgentConfig {
                // The bench writes its checkpoints itself.
                trust: thaw_format::ManifestTrust::InsecureUnsigned,
                store: Some(store_spec.clone()),
                allowed_stores: Vec::new(),
                allowed_uids: Vec::new(),
                checkpoint: Some(summary.id.clone()),
                block_servers: vec![source.into_source()],
                policy: Config {
                    prefetch_window: 0,
                    stream: None,
                    zero_fill_ahead: false,
                    ..Config::default()
                },
                fetch: FetchConfig::default(),
                cache_bytes: (blocks * BLOCK_BYTES * 2) as u64,
                trace_dir: None,
            },
            tokio::runtime::Handle::current(),
        );
        let socket = dir.path().join(name);
        let listener = std::os::unix::net::UnixListener::bind(&socket)?;
        {
            let agent = agent.clone();
            std::thread::spawn(move || agent.serve(listener));
        }
        agents.push((agent, socket));
    }
    let (cold_socket, warm_socket) = (agents[0].1.clone(), agents[1].1.clone());

    let id = summary.id.to_string();
    let (floor, network_cold, network, cached) =
        tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
            // Floor, twice: the first pass warms the kernel paths and is dropped.
            let mut floor = Vec::new();
            for _ in 0..2 {
                warm_host_memory(2 * memory.len());
                let guest = MappedGuest::new(memory.len())?;
                // SAFETY: the guest's whole mapping is registered with its uffd
                // and stays mapped until `guest` drops, after the handler.
                let handler = unsafe {
                    FloorHandler::start(
                        guest.uffd(),
                        guest.host_addr(),
                        memory.clone(),
                        BLOCK_BYTES,
                    )
                };
                floor = touch_blocks(&guest, &order);
                anyhow::ensure!(
                    guest.bytes() == &memory[..],
                    "floor handler restored wrong bytes"
                );
                drop(handler);
            }
            // One restore: a fresh mapping handed to the agent behind `socket`,
            // every block touched once.
            let restore = |socket: &std::path::Path| -> anyhow::Result<_> {
                warm_host_memory(2 * memory.len());
                let guest = MappedGuest::new(memory.len())?;
                let msg = guest.handoff(Some(&store_spec), Some(&id)).encode();
                let conn = guest.hand_off(socket, &msg)?;
                let latencies = touch_blocks(&guest, &order);
                anyhow::ensure!(
                    guest.bytes() == &memory[..],
                    "a restore differs from the image"
                );
                drop(conn);
                Ok(latencies)
            };
            // Network, server cold: the first agent fetches every block.
            let network_cold = restore(&cold_socket)?;
            // Network, server warm: the second agent fetches every block again.
            let network = restore(&warm_socket)?;
            // Cached: another VM of the same checkpoint finds every block in the host cache.
            let cached = restore(&cold_socket)?;
            Ok((floor, network_cold, network, cached))
        })
        .await??;

    running.close();
    for (agent, _) in &agents {
        let c = &agent.metrics().counters;
        let sum = |kind: SourceKind| -> u64 {
            c.blocks[kind as usize]
                .iter()
                .map(|x| x.load(Ordering::Relaxed))
                .sum()
        };
        anyhow::ensure!(
            sum(SourceKind::ObjectStore) == 0,
            "{} blocks bypassed the block server",
            sum(SourceKind::ObjectStore)
        );
        anyhow::ensure!(
            sum(SourceKind::BlockServer) >= blocks as u64,
            "only {} of {blocks} blocks came from the block server",
            sum(SourceKind::BlockServer)
        );
    }
    let floor_p50 = percentile_us(&floor, 0.5);
    let mut out = serde_json::Map::new();
    out.insert("cached_p50_us".into(), json!(percentile_us(&cached, 0.5)));
    out.insert("cached_p99_us".into(), json!(percentile_us(&cached, 0.99)));
    out.insert("network_p50_us".into(), json!(percentile_us(&network, 0.5)));
    out.insert(
        "network_p99_us".into(),
        json!(percentile_us(&network, 0.99)),
    );
    out.insert(
        "network_cold_p50_us".into(),
        json!(percentile_us(&network_cold, 0.5)),
    );
    out.insert(
        "network_cold_p99_us".into(),
        json!(percentile_us(&network_cold, 0.99)),
    );
    out.insert("floor_p50_us".into(), json!(floor_p50));
    out.insert("floor_p99_us".into(), json!(percentile_us(&floor, 0.99)));
    out.insert(
        "cached_over_floor".into(),
        json!(percentile_us(&cached, 0.5) / floor_p50),
    );
    out.insert(
        "network_minus_floor_us".into(),
        json!(percentile_us(&network, 0.5) - floor_p50),
    );
    out.insert("block_bytes".into(), json!(BLOCK_BYTES));
    out.insert("blocks".into(), json!(blocks));
    out.insert(
        "network_source".into(),
        json!("block server over QUIC on loopback (mutual TLS); network_*: its cache warm, network_cold_*: cold"),
    );
    out.insert(
        "blocks_fetched".into(),
        json!(agents
            .iter()
            .map(|(a, _)| a.metrics().counters.fetched_blocks())
            .sum::<u64>()),
    );
    super::report(
        "fault latency (touch to return; goals: cached <= 1.5x floor, network <= floor + 200us)",
        &out,
        cfg.json.as_deref(),
    )?;
    Ok(out)
}
