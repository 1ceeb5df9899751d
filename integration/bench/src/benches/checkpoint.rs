//! `thaw-bench checkpoint`: write a synthetic guest-memory image as a
//! checkpoint to a local directory and read it all back.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{ensure, Context};
use serde_json::json;
use thaw_format::TenantKey;
use thaw_store::reader::DEFAULT_READ_CONCURRENCY;
use thaw_store::{
    write_checkpoint, CheckpointReader, MemoryRegion, Store, WriteOptions, WriteSummary,
};

use crate::synthetic;
use thaw_format::ManifestTrust;

pub struct CheckpointBench {
    pub memory_bytes: u64,
    /// Where the store directory goes (a fresh temporary one when absent).
    pub dir: Option<PathBuf>,
    pub json: Option<PathBuf>,
}

pub async fn run(
    cfg: CheckpointBench,
) -> anyhow::Result<serde_json::Map<String, serde_json::Value>> {
    ensure!(
        cfg.memory_bytes > 0 && cfg.memory_bytes.is_multiple_of(4096),
        "memory size must be a positive multiple of 4 KiB"
    );
    let image =
        tokio::task::spawn_blocking(move || synthetic::memory_image(cfg.memory_bytes as usize, 42))
            .await?;
    let gib = cfg.memory_bytes as f64 / (1u64 << 30) as f64;
    // The destination is touched before timing: the figure is the reader's
    // speed, not the kernel's cost of handing out fresh pages.
    let mut dest = vec![1u8; image.len()];
    let plain = write_and_read(cfg.dir.as_deref(), None, &image, &mut dest).await?;
    let key = TenantKey::generate();
    let encrypted = write_and_read(cfg.dir.as_deref(), Some(&key), &image, &mut dest).await?;
    let summary = &plain.summary;

    let mut out = serde_json::Map::new();
    out.insert("memory_bytes".into(), json!(cfg.memory_bytes));
    // Figures with a tenant key (blocks and state encrypted) carry the
    // suffix _encrypted, next to the same figures in the clear.
    for (suffix, pass) in [("", &plain), ("_encrypted", &encrypted)] {
        let mut put = |name: &str, v: f64| out.insert(format!("{name}{suffix}"), json!(v));
        put("write_gib_per_s", gib / pass.write_s);
        put("read_gib_per_s", gib / pass.read_s);
        put("write_s", pass.write_s);
        // CPU seconds per GiB of guest memory: what the figures would be
        // with the machine to ourselves is at least cores / this (wall time
        // is noisy here).
        put("write_cpu_s_per_gib", pass.write_cpu_s / gib);
        put("read_cpu_s_per_gib", pass.read_cpu_s / gib);
        put("read_s", pass.read_s);
    }
    out.insert(
        "stored_bytes_encrypted".into(),
        json!(encrypted.summary.stored_bytes),
    );
    out.insert(
        "compression_ratio".into(),
        json!(summary.raw_bytes as f64 / summary.stored_bytes.max(1) as f64),
    );
    out.insert("zero_pages".into(), json!(summary.zero_pages));
    out.insert("total_pages".into(), json!(summary.total_pages));
    out.insert("stored_bytes".into(), json!(summary.stored_bytes));
    out.insert("blocks".into(), json!(summary.blocks));
    out.insert("segments".into(), json!(summary.segments));
    super::report(
        "checkpoint benchmark (local directory store)",
        &out,
        cfg.json.as_deref(),
    )?;
    Ok(out)
}

/// One timed write and full read of `image` into a fresh store.
struct Pass {
    write_s: f64,
    write_cpu_s: f64,
    read_s: f64,
    read_cpu_s: f64,
    summary: WriteSummary,
}

/// Writes `image` as a checkpoint into a fresh directory store (under
/// `dir` when given), encrypted when `key` is given, and reads it all back
/// into `dest`, checking it.
async fn write_and_read(
    dir: Option<&Path>,
    key: Option<&TenantKey>,
    image: &[u8],
    dest: &mut [u8],
) -> anyhow::Result<Pass> {
    let tmp = match dir {
        Some(d) => tempfile::tempdir_in(d),
        None => tempfile::tempdir(),
    }
    .context("creating the store directory")?;
    let mut store = Store::open(tmp.path().to_str().context("store path is not UTF-8")?)?;
    if let Some(key) = key {
        store = store.with_tenant_key(key);
    }
    let regions = [MemoryRegion {
        guest_phys_addr: 0,
        bytes: image,
    }];

    let cpu = super::process_cpu_seconds();
    let started = Instant::now();
    let summary = write_checkpoint(&store, &regions, Vec::new(), &WriteOptions::default()).await?;
    let write_s = started.elapsed().as_secs_f64();
    let write_cpu_s = super::process_cpu_seconds() - cpu;

    dest.fill(1);
    let cpu = super::process_cpu_seconds();
    let started = Instant::now();
    let reader =
        CheckpointReader::open(&store, &summary.id, &ManifestTrust::InsecureUnsigned).await?;
    ensure!(
        reader.manifest().encryption.is_some() == key.is_some(),
        "the checkpoint's encryption is not what was asked"
    );
    reader.read_all_into(dest, DEFAULT_READ_CONCURRENCY).await?;
    let read_s = started.elapsed().as_secs_f64();
    let read_cpu_s = super::process_cpu_seconds() - cpu;
    ensure!(
        dest == image,
        "memory read back differs from memory written"
    );
    Ok(Pass {
        write_s,
        write_cpu_s,
        read_s,
        read_cpu_s,
        summary,
    })
}
