//! `thaw-bench link`: what an emulated link really delivers. For a relayed
//! link (rack, region): round trips of small UDP datagrams through the relay
//! next to bare loopback, single QUIC block fetches, and QUIC block streaming
//! throughput with the relay thread's CPU use. For the object-store link:
//! ranged GET latency one at a time and throughput with many in flight.

use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use futures::{stream, StreamExt, TryStreamExt};
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use serde_json::json;
use thaw_block_protocol::client::BlockClient;
use thaw_block_protocol::server::BlockServer;
use thaw_block_protocol::tls::{self, DevPki, SERVER_NAME};
use thaw_block_protocol::wire::Priority;
use thaw_store::Store;

use super::stream::fetch_all;
use crate::link::{LinkSpec, SlowStore, UdpRelay};
use crate::synthetic;
use thaw_format::ManifestTrust;

pub struct LinkBench {
    pub link: LinkSpec,
    /// Memory image streamed through a relayed link.
    pub memory_bytes: u64,
    /// Requests in flight when measuring throughput.
    pub concurrency: usize,
    pub json: Option<PathBuf>,
}

const PINGS: usize = 2000;
const SINGLE_FETCHES: usize = 500;
const OBJECT_STORE_RANGE: u64 = 64 << 10;

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// (p50, p99) of `samples`.
fn percentiles(mut samples: Vec<Duration>) -> (Duration, Duration) {
    samples.sort();
    let at = |p: f64| samples[((samples.len() - 1) as f64 * p).round() as usize];
    (at(0.5), at(0.99))
}

/// Round trips of 64-byte datagrams to a UDP echo at `target`, one at a time.
fn ping(target: SocketAddr) -> anyhow::Result<Vec<Duration>> {
    let socket = UdpSocket::bind("127.0.0.1:0")?;
    socket.connect(target)?;
    socket.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut buf = [0u8; 64];
    let mut out = Vec::with_capacity(PINGS);
    for i in 0..PINGS as u64 {
        let started = Instant::now();
        socket.send(&i.to_le_bytes())?;
        loop {
            let n = socket.recv(&mut buf).context("echo reply")?;
            if buf[..n] == i.to_le_bytes() {
                break;
            }
        }
        out.push(started.elapsed());
    }
    Ok(out)
}

/// A UDP echo on loopback, serving until the process ends.
fn echo_server() -> anyhow::Result<SocketAddr> {
    let socket = UdpSocket::bind("127.0.0.1:0")?;
    let addr = socket.local_addr()?;
    std::thread::Builder::new()
        .name("thaw-bench-echo".into())
        .spawn(move || {
            let mut buf = vec![0u8; 65536];
            while let Ok((n, from)) = socket.recv_from(&mut buf) {
                let _ = socket.send_to(&buf[..n], from);
            }
        })?;
    Ok(addr)
}

/// Blasts `datagram`-byte datagrams at `target` from one thread for
/// `duration` while another counts what arrives at `sink`; returns
/// (datagrams, bytes, seconds from first to last arrival).
fn blast(
    target: SocketAddr,
    sink: UdpSocket,
    datagram: usize,
    duration: Duration,
) -> anyhow::Result<(u64, u64, f64)> {
    sink.set_read_timeout(Some(Duration::from_millis(300)))?;
    let counter = std::thread::spawn(move || {
        let mut buf = vec![0u8; 65536];
        let (mut n, mut bytes, mut first, mut last) = (0u64, 0u64, None, None);
        while let Ok(len) = sink.recv(&mut buf) {
            let now = Instant::now();
            first.get_or_insert(now);
            last = Some(now);
            n += 1;
            bytes += len as u64;
        }
        let span = match (first, last) {
            (Some(f), Some(l)) => (l - f).as_secs_f64(),
            _ => 0.0,
        };
        (n, bytes, span)
    });
    let sender = UdpSocket::bind("127.0.0.1:0")?;
    sender.connect(target)?;
    let payload = vec![0xa5u8; datagram];
    let started = Instant::now();
    while started.elapsed() < duration {
        for _ in 0..64 {
            // A full socket buffer drops, as a NIC queue would.
            let _ = sender.send(&payload);
        }
    }
    counter
        .join()
        .map_err(|_| anyhow::anyhow!("counting thread panicked"))
}

async fn relayed(
    cfg: &LinkBench,
    rtt: Duration,
    bits_per_sec: u64,
    mtu_bytes: usize,
    out: &mut serde_json::Map<String, serde_json::Value>,
) -> anyhow::Result<()> {
    out.insert("configured_rtt_us".into(), json!(micros(rtt)));
    out.insert(
        "configured_gbit_per_s".into(),
        json!(bits_per_sec as f64 / 1e9),
    );

    let echo = echo_server()?;
    let (bare_p50, bare_p99) = percentiles(tokio::task::spawn_blocking(move || ping(echo)).await??);
    let relay = UdpRelay::start("127.0.0.1:0".parse()?, echo, cfg.link.clone())?;
    let target = relay.local_addr();
    let cpu_before = relay.cpu_time().unwrap_or_default();
    let started = Instant::now();
    let (p50, p99) = percentiles(tokio::task::spawn_blocking(move || ping(target)).await??);
    let ping_wall = started.elapsed();
    let ping_cpu = relay.cpu_time().unwrap_or_default() - cpu_before;
    drop(relay);
    out.insert("loopback_udp_rtt_p50_us".into(), json!(micros(bare_p50)));
    out.insert("loopback_udp_rtt_p99_us".into(), json!(micros(bare_p99)));
    out.insert("udp_rtt_p50_us".into(), json!(micros(p50)));
    out.insert("udp_rtt_p99_us".into(), json!(micros(p99)));
    out.insert(
        "relay_cpu_share_pinging".into(),
        json!(ping_cpu.as_secs_f64() / ping_wall.as_secs_f64()),
    );

    // The relay's own ceiling: raw datagrams of the link's largest size.
    let sink = UdpSocket::bind("127.0.0.1:0")?;
    let relay = UdpRelay::start("127.0.0.1:0".parse()?, sink.local_addr()?, cfg.link.clone())?;
    let datagram = mtu_bytes.saturating_sub(28).min(1472);
    let target = relay.local_addr();
    let cpu_before = relay.cpu_time().unwrap_or_default();
    let (n, bytes, span) =
        tokio::task::spawn_blocking(move || blast(target, sink, datagram, Duration::from_secs(1)))
            .await??;
    let blast_cpu = (relay.cpu_time().unwrap_or_default() - cpu_before).as_secs_f64();
    let blast_stats = relay.stats();
    drop(relay);
    out.insert("udp_blast_datagram_bytes".into(), json!(datagram));
    out.insert(
        "udp_blast_datagrams_per_s".into(),
        json!(n as f64 / span.max(1e-9)),
    );
    out.insert(
        "udp_blast_gbit_per_s".into(),
        json!(bytes as f64 * 8.0 / span.max(1e-9) / 1e9),
    );
    out.insert(
        "udp_blast_queue_drops".into(),
        json!(blast_stats.to_upstream.dropped),
    );
    out.insert("relay_cpu_seconds_blasting".into(), json!(blast_cpu));

    let store = Store::open("memory://")?;
    let id = synthetic::write_image_checkpoint(&store, cfg.memory_bytes as usize, 5).await?;
    let pki = DevPki::generate()?;
    let server = BlockServer::new(store, 4 << 30);
    let running = server.serve(
        "127.0.0.1:0".parse()?,
        tls::server_config(&pki.server, Some(&pki.ca_pem))?,
    )?;
    let relay = UdpRelay::start("127.0.0.1:0".parse()?, running.local_addr, cfg.link.clone())?;
    let client = Arc::new(BlockClient::new(
        relay.local_addr(),
        SERVER_NAME,
        tls::client_config(&pki.ca_pem, Some(&pki.client))?,
    )?);
    let object = client.manifest_object(&id).await?;
    let blocks = thaw_store::reader::open_manifest(&id, &object, &ManifestTrust::InsecureUnsigned)?
        .manifest
        .blocks
        .len() as u32;
    // Fill the server's cache so the figures below are the link's.
    fetch_all(&client, &id, blocks, cfg.concurrency).await?;

    let mut single = Vec::with_capacity(SINGLE_FETCHES);
    for i in 0..SINGLE_FETCHES {
        let block = (i as u32 * 7919) % blocks;
        let started = Instant::now();
        client.fetch_stored(&id, block, Priority::Demand).await?;
        single.push(started.elapsed());
    }
    let (fetch_p50, fetch_p99) = percentiles(single);
    out.insert("quic_block_fetch_p50_us".into(), json!(micros(fetch_p50)));
    out.insert("quic_block_fetch_p99_us".into(), json!(micros(fetch_p99)));

    let before = relay.stats();
    let cpu_before = relay.cpu_time().unwrap_or_default();
    let process_before = super::process_cpu_seconds();
    let started = Instant::now();
    let moved = fetch_all(&client, &id, blocks, cfg.concurrency).await?;
    let wall = started.elapsed().as_secs_f64();
    let relay_cpu = (relay.cpu_time().unwrap_or_default() - cpu_before).as_secs_f64();
    let process_cpu = super::process_cpu_seconds() - process_before;
    let after = relay.stats();
    let path = client.connection().await?.stats().path;
    running.close();

    let gbit = moved as f64 * 8.0 / wall / 1e9;
    out.insert("stream_gbit_per_s".into(), json!(gbit));
    out.insert(
        "stream_share_of_configured_rate".into(),
        json!(gbit * 1e9 / bits_per_sec as f64),
    );
    out.insert("stream_bytes".into(), json!(moved));
    out.insert("concurrency".into(), json!(cfg.concurrency));
    let datagrams = after.to_clients.datagrams - before.to_clients.datagrams;
    out.insert(
        "stream_datagrams_per_s".into(),
        json!(datagrams as f64 / wall),
    );
    out.insert(
        "stream_mean_datagram_bytes".into(),
        json!((after.to_clients.bytes - before.to_clients.bytes) as f64 / datagrams.max(1) as f64),
    );
    out.insert("relay_cpu_share_streaming".into(), json!(relay_cpu / wall));
    out.insert(
        "process_cpu_share_streaming".into(),
        json!(process_cpu / wall),
    );
    out.insert(
        "relay_queue_drops".into(),
        json!(after.to_clients.dropped + after.to_upstream.dropped),
    );
    out.insert(
        "relay_too_large_drops".into(),
        json!(after.to_clients.too_large + after.to_upstream.too_large),
    );
    out.insert("quic_path_mtu".into(), json!(path.current_mtu));
    out.insert("quic_lost_packets".into(), json!(path.lost_packets));
    out.insert(
        "quic_congestion_events".into(),
        json!(path.congestion_events),
    );
    out.insert("quic_smoothed_rtt_us".into(), json!(micros(path.rtt)));
    Ok(())
}

async fn object_store(
    cfg: &LinkBench,
    out: &mut serde_json::Map<String, serde_json::Value>,
) -> anyhow::Result<()> {
    let inner: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    let slow = Arc::new(SlowStore::for_link(inner, &cfg.link)?);
    let object_bytes = cfg.memory_bytes.max(OBJECT_STORE_RANGE);
    let path = Path::from("bench/segment");
    slow.put(&path, vec![0x5au8; object_bytes as usize].into())
        .await?;
    let ranges = object_bytes / OBJECT_STORE_RANGE;
    out.insert(
        "model_range_get_us".into(),
        json!(micros(slow.hooks().read_time(OBJECT_STORE_RANGE))),
    );

    let mut single = Vec::new();
    for i in 0..50 {
        let at = (i * 7919 % ranges) * OBJECT_STORE_RANGE;
        let started = Instant::now();
        slow.get_range(&path, at..at + OBJECT_STORE_RANGE).await?;
        single.push(started.elapsed());
    }
    let (p50, p99) = percentiles(single);
    out.insert("range_get_64k_p50_us".into(), json!(micros(p50)));
    out.insert("range_get_64k_p99_us".into(), json!(micros(p99)));

    let requests_before = slow.hooks().requests();
    let started = Instant::now();
    let moved: u64 = stream::iter(0..ranges)
        .map(|i| {
            let slow = slow.clone();
            let path = path.clone();
            async move {
                let at = i * OBJECT_STORE_RANGE;
                slow.get_range(&path, at..at + OBJECT_STORE_RANGE)
                    .await
                    .map(|b| b.len() as u64)
            }
        })
        .buffer_unordered(cfg.concurrency)
        .try_fold(0u64, |acc, n| async move { Ok(acc + n) })
        .await?;
    let wall = started.elapsed().as_secs_f64();
    out.insert(
        "parallel_gbit_per_s".into(),
        json!(moved as f64 * 8.0 / wall / 1e9),
    );
    out.insert(
        "parallel_requests".into(),
        json!(slow.hooks().requests() - requests_before),
    );
    out.insert("concurrency".into(), json!(cfg.concurrency));
    Ok(())
}

pub async fn run(cfg: LinkBench) -> anyhow::Result<serde_json::Map<String, serde_json::Value>> {
    let mut out = serde_json::Map::new();
    out.insert("link".into(), json!(cfg.link.name()));
    match &cfg.link {
        LinkSpec::Relayed {
            rtt,
            bandwidth_bits_per_sec,
            mtu_bytes,
            ..
        } => relayed(&cfg, *rtt, *bandwidth_bits_per_sec, *mtu_bytes, &mut out).await?,
        LinkSpec::ObjectStore { .. } => object_store(&cfg, &mut out).await?,
    }
    super::report(
        &format!("Emulated link {}", cfg.link),
        &out,
        cfg.json.as_deref(),
    )?;
    Ok(out)
}
