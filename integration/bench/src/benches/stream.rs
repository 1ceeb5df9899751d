//! `thaw-bench stream`: QUIC streaming throughput of blocks over loopback,
//! from a block server process (mutual TLS, as deployed) to one client.
//!
//! Encrypted figures (suffix `_encrypted`): the same image written with a
//! tenant key and served as ciphertext by the same keyless block server.
//! `stream_decoded_gb_per_s` (and its `_encrypted` twin) adds the client's
//! work on arrival, as a fetch agent does it: decrypting, decompressing and
//! hash-checking each block.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use futures::{stream, StreamExt, TryStreamExt};
use serde_json::json;
use thaw_block_protocol::client::BlockClient;
use thaw_block_protocol::tls::{self, DevPki, SERVER_NAME};
use thaw_block_protocol::wire::Priority;
use thaw_format::block_codec::decode_block_into;
use thaw_format::{BlockOpener, CheckpointId, Manifest, TenantKey, TenantKeys};
use thaw_store::reader::open_manifest;
use thaw_store::Store;

use crate::synthetic;
use thaw_format::ManifestTrust;

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
    let bytes = fetch_all(client, id, blocks, concurrency).await?;
    Ok((bytes, started.elapsed().as_secs_f64()))
}

/// Fetches blocks `0..blocks` once each with `concurrency` requests in
/// flight; returns the bytes received.
pub(super) async fn fetch_all(
    client: &Arc<BlockClient>,
    id: &CheckpointId,
    blocks: u32,
    concurrency: usize,
) -> anyhow::Result<u64> {
    Ok(stream::iter(0..blocks)
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
        .await?)
}

/// As [`pass`], decoding each block on arrival (decrypting it first when
/// the checkpoint is encrypted), as the fetch agent does.
async fn decoded_pass(
    client: &Arc<BlockClient>,
    id: &CheckpointId,
    manifest: &Manifest,
    opener: &BlockOpener,
    concurrency: usize,
) -> anyhow::Result<(u64, f64)> {
    let started = Instant::now();
    let bytes = stream::iter(0..manifest.blocks.len() as u32)
        .map(|b| {
            let client = client.clone();
            let id = id.clone();
            async move {
                let stored = client.fetch_stored(&id, b, Priority::Prefetch).await?;
                let entry = &manifest.blocks[b as usize];
                let mut raw = vec![0u8; entry.raw_len as usize];
                decode_block_into(opener, entry, &stored, &mut raw)
                    .with_context(|| format!("block {b} of {id}"))?;
                anyhow::Ok(stored.len() as u64)
            }
        })
        .buffer_unordered(concurrency)
        .try_fold(0u64, |acc, n| async move { Ok(acc + n) })
        .await?;
    Ok((bytes, started.elapsed().as_secs_f64()))
}

/// A checkpoint's manifest through the block server: written by this bench
/// unsigned, so opened without a signature check.
async fn manifest_of(
    client: &BlockClient,
    id: &CheckpointId,
) -> anyhow::Result<thaw_format::Manifest> {
    let object = client.manifest_object(id).await?;
    Ok(open_manifest(id, &object, &ManifestTrust::InsecureUnsigned)?.manifest)
}

pub async fn run(cfg: StreamBench) -> anyhow::Result<serde_json::Map<String, serde_json::Value>> {
    let dir = tempfile::tempdir().context("work directory")?;
    let store_dir = dir.path().join("store");
    std::fs::create_dir(&store_dir)?;
    let store_spec = store_dir.to_str().context("UTF-8 path")?;
    let store = Store::open(store_spec)?;
    let id = synthetic::write_image_checkpoint(&store, cfg.memory_bytes as usize, 5).await?;
    let key = TenantKey::generate();
    let enc_id = synthetic::write_image_checkpoint(
        &store.clone().with_tenant_key(&key),
        cfg.memory_bytes as usize,
        5,
    )
    .await?;

    // The block server runs as deployed: its own process, in front of the
    // store, with mutual TLS. Its cache holds every block. Both ends share
    // this machine's cores, so the server gets one runtime thread, as if each
    // end had a core of its own host: a second server thread only adds
    // cross-thread wake-ups (one connection is served by one thread at a
    // time) and measured 0.54-0.78 GB/s against 0.82-0.87 with one.
    let pki_dir = dir.path().join("pki");
    let pki = DevPki::load_or_generate(&pki_dir)?;
    let cache_bytes = 2 * cfg.memory_bytes + (64 << 20);
    let (server, addr) =
        thaw_cli::daemon::start_block_server(store_spec, &pki_dir, cache_bytes, Some(1))?;
    let client = Arc::new(BlockClient::new(
        addr,
        SERVER_NAME,
        tls::client_config(&pki.ca_pem, Some(&pki.client))?,
    )?);
    let object = client.manifest_object(&id).await?;
    let blocks = thaw_store::reader::open_manifest(&id, &object, &ManifestTrust::InsecureUnsigned)?
        .manifest
        .blocks
        .len() as u32;

    // The first pass reads the store and fills the server's cache; the
    // second measures the protocol alone.
    let (_, cold_s) = pass(&client, &id, blocks, cfg.concurrency).await?;
    let cpu = || super::process_cpu_seconds() + super::cpu_seconds_of(server.pid());
    let cpu_before = cpu();
    let (wire_bytes, warm_s) = pass(&client, &id, blocks, cfg.concurrency).await?;
    let cpu_s = cpu() - cpu_before;

    let manifest = manifest_of(&client, &id).await?;
    let (_, decoded_s) = decoded_pass(
        &client,
        &id,
        &manifest,
        &BlockOpener::Plain,
        cfg.concurrency,
    )
    .await?;
    let enc_manifest = manifest_of(&client, &enc_id).await?;
    anyhow::ensure!(
        enc_manifest.encryption.is_some(),
        "the encrypted checkpoint is not"
    );
    let opener = BlockOpener::for_manifest(&enc_manifest, Some(&Arc::new(TenantKeys::new(&key))))?;
    let enc_blocks = enc_manifest.blocks.len() as u32;
    let (_, enc_cold_s) = pass(&client, &enc_id, enc_blocks, cfg.concurrency).await?;
    let cpu_before = cpu();
    let (enc_bytes, enc_warm_s) = pass(&client, &enc_id, enc_blocks, cfg.concurrency).await?;
    let enc_cpu_s = cpu() - cpu_before;
    let (_, enc_decoded_s) =
        decoded_pass(&client, &enc_id, &enc_manifest, &opener, cfg.concurrency).await?;

    let path = client.connection().await?.stats().path;
    let (path_mtu, lost) = (path.current_mtu, path.lost_packets);
    drop(server);

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
    out.insert(
        "stream_decoded_gb_per_s".into(),
        json!(wire_bytes as f64 / decoded_s / 1e9),
    );
    out.insert(
        "stream_gb_per_s_encrypted".into(),
        json!(enc_bytes as f64 / enc_warm_s / 1e9),
    );
    out.insert(
        "stream_decoded_gb_per_s_encrypted".into(),
        json!(enc_bytes as f64 / enc_decoded_s / 1e9),
    );
    out.insert(
        "cold_stream_gb_per_s_encrypted".into(),
        json!(enc_bytes as f64 / enc_cold_s / 1e9),
    );
    out.insert("bytes_encrypted".into(), json!(enc_bytes));
    out.insert(
        "cpu_s_per_gb_encrypted".into(),
        json!(enc_cpu_s / (enc_bytes as f64 / 1e9)),
    );
    super::report(
        "QUIC block streaming over loopback (mutual TLS)",
        &out,
        cfg.json.as_deref(),
    )?;
    Ok(out)
}
