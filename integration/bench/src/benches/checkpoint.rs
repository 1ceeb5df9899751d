//! `thaw-bench checkpoint`: write a synthetic guest-memory image as a
//! checkpoint to a local directory and read it all back.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{ensure, Context};
use serde_json::json;
use thaw_store::reader::DEFAULT_READ_CONCURRENCY;
use thaw_store::{write_checkpoint, CheckpointReader, MemoryRegion, Store, WriteOptions};

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
    let tmp = match &cfg.dir {
        Some(d) => tempfile::tempdir_in(d),
        None => tempfile::tempdir(),
    }
    .context("creating the store directory")?;
    let store = Store::open(tmp.path().to_str().context("store path is not UTF-8")?)?;

    let image =
        tokio::task::spawn_blocking(move || synthetic::memory_image(cfg.memory_bytes as usize, 42))
            .await?;
    let regions = [MemoryRegion {
        guest_phys_addr: 0,
        bytes: &image,
    }];
    let gib = cfg.memory_bytes as f64 / (1u64 << 30) as f64;

    let cpu = super::process_cpu_seconds();
    let started = Instant::now();
    let summary = write_checkpoint(&store, &regions, Vec::new(), &WriteOptions::default()).await?;
    let write_s = started.elapsed().as_secs_f64();
    let write_cpu_s = super::process_cpu_seconds() - cpu;

    // The destination is touched before timing: the figure is the reader's
    // speed, not the kernel's cost of handing out fresh pages.
    let mut dest = vec![1u8; image.len()];
    let cpu = super::process_cpu_seconds();
    let started = Instant::now();
    let reader =
        CheckpointReader::open(&store, &summary.id, &ManifestTrust::InsecureUnsigned).await?;
    reader
        .read_all_into(&mut dest, DEFAULT_READ_CONCURRENCY)
        .await?;
    let read_s = started.elapsed().as_secs_f64();
    let read_cpu_s = super::process_cpu_seconds() - cpu;
    ensure!(
        dest == image,
        "memory read back differs from memory written"
    );

    let mut out = serde_json::Map::new();
    out.insert("memory_bytes".into(), json!(cfg.memory_bytes));
    out.insert("write_gib_per_s".into(), json!(gib / write_s));
    out.insert("read_gib_per_s".into(), json!(gib / read_s));
    out.insert("write_s".into(), json!(write_s));
    // CPU seconds per GiB of guest memory: what the figures would be with the
    // machine to ourselves is at least cores / this (wall time is noisy here).
    out.insert("write_cpu_s_per_gib".into(), json!(write_cpu_s / gib));
    out.insert("read_cpu_s_per_gib".into(), json!(read_cpu_s / gib));
    out.insert("read_s".into(), json!(read_s));
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
