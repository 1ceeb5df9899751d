//! `thaw bench stream`: QUIC streaming throughput of blocks over loopback,
//! from a block server (mutual TLS, as deployed) to one client.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use futures::{stream, StreamExt, TryStreamExt};
use serde_json::json;
use storage_backend::block_client::BlockClient;
use storage_backend::block_server::BlockServer;
use storage_backend::protocol::Priority;
use storage_backend::tls::{self, DevPki, SERVER_NAME};
use storage_backend::{CheckpointId, Store};

use crate::synthetic;

pub struct StreamBench {
    pub memory_bytes: u64,
    /// Requests in flight at once.
    pub concurrency: usize,
    pub json: Option<PathBuf>,
}

/// Fetches every block once with `concurrency` requests in flight; returns
/// (bytes received, seconds).
async fn pass(
    client: &Arc<BlockClient>,
    id: &CheckpointId,
    blocks: u32,
    concurrency: usize,
) -> anyhow::Result<(u64, f64)> {
    let started = Instant::now();
    let bytes: u64 = stream::iter(0..blocks)
        .map(|b| {
            let client = client.clone();
            let id = id.clone();
            async move {
                client
                    .fetch_stored(&id, b, Priority::Prefetch)
                    .await
                    .map(|s| s.len() as u64)
            }
        })
        .buffer_unordered(concurrency)
        .try_fold(0u64, |acc, n| async move { Ok(acc + n) })
        .await?;
    Ok((bytes, started.elapsed().as_secs_f64()))
}

pub async fn run(cfg: StreamBench) -> anyhow::Result<serde_json::Map<String, serde_json::Value>> {
    let dir = tempfile::tempdir().context("store directory")?;
    let store = Store::open(dir.path().to_str().context("UTF-8 path")?)?;
    let id = synthetic::write_image_checkpoint(&store, cfg.memory_bytes as usize, 5).await?;

    let pki = DevPki::generate()?;
    let server = BlockServer::new(store, 4 << 30);
    let running = server.serve(
        "127.0.0.1:0".parse()?,
        tls::server_config(&pki.server, Some(&pki.ca_pem))?,
    )?;
    let client = Arc::new(BlockClient::new(
        running.local_addr,
        SERVER_NAME,
        tls::client_config(&pki.ca_pem, Some(&pki.client))?,
    )?);
    let blocks = client.manifest(&id).await?.blocks.len() as u32;

    // The first pass reads the store and fills the server's cache; the
    // second measures the protocol alone.
    let (_, cold_s) = pass(&client, &id, blocks, cfg.concurrency).await?;
    let cpu_before = super::process_cpu_seconds();
    let (wire_bytes, warm_s) = pass(&client, &id, blocks, cfg.concurrency).await?;
    let cpu_s = super::process_cpu_seconds() - cpu_before;
    let path = client.connection().await?.stats().path;
    let (path_mtu, lost) = (path.current_mtu, path.lost_packets);
    running.close();

    let mut out = serde_json::Map::new();
    out.insert(
        "stream_gb_per_s".into(),
        json!(wire_bytes as f64 / warm_s / 1e9),
    );
    out.insert(
        "cold_stream_gb_per_s".into(),
        json!(wire_bytes as f64 / cold_s / 1e9),
    );
    out.insert("blocks_per_s".into(), json!(f64::from(blocks) / warm_s));
    out.insert("blocks".into(), json!(blocks));
    out.insert("bytes".into(), json!(wire_bytes));
    out.insert("concurrency".into(), json!(cfg.concurrency));
    out.insert("path_mtu".into(), json!(path_mtu));
    // CPU time of both ends per GB moved: unlike wall time, it barely moves
    // when other work shares the machine.
    out.insert(
        "cpu_s_per_gb".into(),
        json!(cpu_s / (wire_bytes as f64 / 1e9)),
    );
    out.insert("lost_packets".into(), json!(lost));
    super::report(
        "QUIC block streaming over loopback (mutual TLS)",
        &out,
        cfg.json.as_deref(),
    )?;
    Ok(out)
}
