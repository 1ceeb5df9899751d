//! `thaw-bench fleet`: a fleet of hosts (16 fetch agents, each with its own
//! cache) restores one checkpoint at the same time through a tier of block
//! servers (3), sharded by rendezvous hashing, against one host restoring
//! it alone through the same tier.
//!
//! - `store_reads_ratio`: object-store reads of the fleet / of one host
//!   (goal <= 1.1: the tier reads each block once however many hosts ask).
//! - `server_share_max`: the largest share of block requests any server
//!   took, over the even share (1/servers); goal <= 1.15.
//! - `tier_bytes_ratio`: stored bytes the servers read from the store /
//!   distinct stored bytes the fleet needed (the checkpoint's blocks and
//!   manifest); goal <= 1.1 (each shard read by its home alone).

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{ensure, Context};
use fetch_agent::fetch::FetchConfig;
use fetch_agent::guest::MappedGuest;
use fetch_agent::metrics::SourceKind;
use fetch_agent::source::block_server::BlockServerSource;
use fetch_agent::source::tier::BlockServerTier;
use fetch_agent::{Agent, AgentConfig};
use object_store::local::LocalFileSystem;
use serde_json::json;
use thaw_block_protocol::server::BlockServer;
use thaw_block_protocol::tls::{self, DevPki};
use thaw_format::{CheckpointId, ManifestTrust};
use thaw_store::reader::read_manifest_object;
use thaw_store::{write_checkpoint, CheckpointReader, MemoryRegion, Store, WriteOptions};

use crate::counting_store::CountingStore;
use crate::synthetic;

pub struct FleetBench {
    pub memory_bytes: u64,
    pub hosts: usize,
    pub block_servers: usize,
    pub json: Option<PathBuf>,
}

struct Setup {
    dir: tempfile::TempDir,
    store_dir: PathBuf,
    id: CheckpointId,
    memory: Arc<Vec<u8>>,
    servers: usize,
}

struct FleetRun {
    store_reads: u64,
    seconds: f64,
    server_requests: u64,
    /// Block requests each server took.
    block_requests: Vec<u64>,
    /// Stored bytes all servers read from the store.
    store_bytes: u64,
}

pub fn run(cfg: FleetBench) -> anyhow::Result<serde_json::Map<String, serde_json::Value>> {
    ensure!(cfg.hosts >= 1, "need at least one host");
    ensure!(cfg.block_servers >= 1, "need at least one block server");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let dir = tempfile::tempdir().context("bench directory")?;
    let store_dir = dir.path().join("store");
    let memory = Arc::new(synthetic::memory_image(cfg.memory_bytes as usize, 21));
    let (id, stored_bytes) = rt.block_on(async {
        let store = Store::open(store_dir.to_str().context("UTF-8 path")?)?;
        let regions = [MemoryRegion {
            guest_phys_addr: 0,
            bytes: &memory,
        }];
        let id = write_checkpoint(&store, &regions, vec![], &WriteOptions::default())
            .await?
            .id;
        let manifest = read_manifest_object(&store, &id).await?;
        let reader = CheckpointReader::open(&store, &id, &ManifestTrust::InsecureUnsigned).await?;
        let blocks: u64 = reader.manifest().blocks.iter().map(|b| b.stored_len).sum();
        anyhow::Ok((id, blocks + manifest.len() as u64))
    })?;
    DevPki::generate()?.write_to(&dir.path().join("pki"))?;
    let setup = Setup {
        dir,
        store_dir,
        id,
        memory,
        servers: cfg.block_servers,
    };

    let one = restore_fleet(&rt, &setup, 1)?;
    let many = restore_fleet(&rt, &setup, cfg.hosts)?;
    let mut out = serde_json::Map::new();
    out.insert(
        "store_reads_ratio".into(),
        json!(many.store_reads as f64 / one.store_reads.max(1) as f64),
    );
    out.insert("store_reads_one_host".into(), json!(one.store_reads));
    out.insert("store_reads_fleet".into(), json!(many.store_reads));
    let total: u64 = many.block_requests.iter().sum();
    let largest = many.block_requests.iter().copied().max().unwrap_or(0);
    let even = total as f64 / cfg.block_servers as f64;
    out.insert(
        "server_share_max".into(),
        json!(if total == 0 {
            0.0
        } else {
            largest as f64 / even
        }),
    );
    out.insert(
        "tier_bytes_ratio".into(),
        json!(many.store_bytes as f64 / stored_bytes.max(1) as f64),
    );
    out.insert("hosts".into(), json!(cfg.hosts));
    out.insert("block_servers".into(), json!(cfg.block_servers));
    out.insert(
        "server_block_requests_fleet".into(),
        json!(many.block_requests),
    );
    out.insert("tier_store_bytes_fleet".into(), json!(many.store_bytes));
    out.insert("checkpoint_stored_bytes".into(), json!(stored_bytes));
    out.insert("server_requests_fleet".into(), json!(many.server_requests));
    out.insert("seconds_one_host".into(), json!(one.seconds));
    out.insert("seconds_fleet".into(), json!(many.seconds));
    out.insert("memory_bytes".into(), json!(cfg.memory_bytes));
    super::report(
        &format!(
            "fleet restore: {} hosts through {} block servers",
            cfg.hosts, cfg.block_servers
        ),
        &out,
        cfg.json.as_deref(),
    )?;
    Ok(out)
}

/// `hosts` agents restore the checkpoint at once through fresh block
/// servers; every restored byte is checked.
fn restore_fleet(
    rt: &tokio::runtime::Runtime,
    s: &Setup,
    hosts: usize,
) -> anyhow::Result<FleetRun> {
    let counting = Arc::new(CountingStore::new(Arc::new(
        LocalFileSystem::new_with_prefix(&s.store_dir)?,
    )));
    let store = Store::from_object_store(counting.clone(), "counted local directory");
    let pki = s.dir.path().join("pki");
    let mut servers = Vec::new();
    for _ in 0..s.servers {
        let server = BlockServer::new(store.clone(), 1 << 30);
        let running = rt.block_on(async {
            let config = tls::server_config(
                &tls::Identity::from_files(&pki.join("server.pem"), &pki.join("server.key"))?,
                Some(&tls::read_pem_file(&pki.join("ca.pem"))?),
            )?;
            anyhow::Ok(server.serve("127.0.0.1:0".parse()?, config)?)
        })?;
        servers.push((server, running));
    }
    let addrs: Vec<String> = servers
        .iter()
        .map(|(_, r)| r.local_addr.to_string())
        .collect();
    let spec = s.store_dir.to_str().context("UTF-8 path")?.to_owned();

    let mut agents = Vec::new();
    for host in 0..hosts {
        let ca = pki.join("ca.pem");
        let (cert, key) = (pki.join("client.pem"), pki.join("client.key"));
        let tier = BlockServerTier::new(
            Box::new(move |addr: &str| {
                BlockServerSource::connect(addr, &ca, Some((&cert, &key)))
                    .map(|s| s.into_source())
                    .map_err(|e| e.to_string())
            }),
            FetchConfig::default().source_timeout,
        );
        let failed = rt.block_on(async { tier.set_servers(&addrs) });
        ensure!(failed.is_empty(), "connecting the tier: {failed:?}");
        let agent = Agent::new(
            AgentConfig {
                // The bench writes its checkpoints itself.
                trust: thaw_format::ManifestTrust::InsecureUnsigned,
                store: Some(spec.clone()),
                allowed_stores: Vec::new(),
                allowed_uids: Vec::new(),
                checkpoint: Some(s.id.clone()),
                block_servers: vec![tier],
                policy: Default::default(),
                fetch: FetchConfig::default(),
                cache_bytes: 1 << 30,
                trace_dir: None,
            },
            rt.handle().clone(),
        );
        let socket = s.dir.path().join(format!("agent-{hosts}-{host}.sock"));
        let listener = std::os::unix::net::UnixListener::bind(&socket)?;
        let a = agent.clone();
        std::thread::spawn(move || a.serve(listener));
        agents.push((agent, socket));
    }

    let started = Instant::now();
    let restores: Vec<_> = agents
        .iter()
        .map(|(_, socket)| {
            let socket = socket.clone();
            let memory = s.memory.clone();
            std::thread::spawn(move || restore_one(&socket, &memory))
        })
        .collect();
    for r in restores {
        r.join()
            .map_err(|_| anyhow::anyhow!("restore thread panicked"))??;
    }
    let seconds = started.elapsed().as_secs_f64();
    for (agent, _) in &agents {
        let direct = agent.metrics().counters.blocks[SourceKind::ObjectStore as usize]
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .sum::<u64>();
        ensure!(
            direct == 0,
            "an agent bypassed the block servers for {direct} blocks"
        );
    }
    let mut block_requests = Vec::new();
    let mut store_bytes = 0;
    let mut server_requests = 0;
    for (server, running) in &servers {
        running.close();
        let st = server.stats();
        // Every block request is a cache hit or a miss; manifests are neither.
        block_requests
            .push(st.cache_hits.load(Ordering::Relaxed) + st.cache_misses.load(Ordering::Relaxed));
        store_bytes += st.store_bytes_read.load(Ordering::Relaxed);
        server_requests += st.requests.load(Ordering::Relaxed);
    }
    Ok(FleetRun {
        store_reads: counting.hooks().reads(),
        seconds,
        server_requests,
        block_requests,
        store_bytes,
    })
}

/// One host's restore: maps memory, hands it to the agent, touches every
/// page and checks the contents.
fn restore_one(socket: &Path, memory: &[u8]) -> anyhow::Result<()> {
    let guest = MappedGuest::new(memory.len())?;
    let message = guest.handoff(None, None).encode();
    let _conn = guest.hand_off(socket, &message)?;
    for page in 0..(memory.len() / 4096) as u64 {
        guest.touch(page);
    }
    ensure!(
        guest.bytes() == memory,
        "restored memory differs from the checkpoint"
    );
    Ok(())
}
