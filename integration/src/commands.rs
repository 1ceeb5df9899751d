//! What the `thaw` subcommands do, apart from parsing their arguments.

use std::time::Instant;

use anyhow::{ensure, Context};
use storage_backend::catalog::list_checkpoints;
use storage_backend::reader::DEFAULT_READ_CONCURRENCY;
use storage_backend::{
    write_checkpoint, CheckpointId, CheckpointReader, MemoryRegion, Store, WriteOptions,
};

use crate::synthetic;
use crate::units::format_bytes;

/// `thaw checkpoint list STORE`
pub async fn list(store: &Store) -> anyhow::Result<()> {
    let entries = list_checkpoints(store).await?;
    if entries.is_empty() {
        println!("no checkpoints in {}", store.location());
        return Ok(());
    }
    println!(
        "{:<28} {:>10} {:>10} {:>8}  parent",
        "id", "memory", "stored", "blocks"
    );
    for e in entries {
        match e.manifest {
            Ok(m) => println!(
                "{:<28} {:>10} {:>10} {:>8}  {}",
                e.id,
                format_bytes(m.total_bytes()),
                format_bytes(m.stored_bytes()),
                m.blocks.len(),
                m.parent
                    .map(|p| p.to_string())
                    .unwrap_or_else(|| "-".into())
            ),
            Err(err) => println!("{:<28} INVALID: {err}", e.id),
        }
    }
    Ok(())
}

/// `thaw checkpoint verify STORE ID`: fetches and hash-checks every block.
pub async fn verify(store: &Store, id: &CheckpointId) -> anyhow::Result<()> {
    let started = Instant::now();
    let reader = CheckpointReader::open(store, id).await?;
    let report = reader
        .verify(DEFAULT_READ_CONCURRENCY)
        .await
        .with_context(|| format!("checkpoint {id} failed verification"))?;
    println!(
        "checkpoint {id}: OK, {} blocks, {} stored, verified in {:.2} s",
        report.blocks,
        format_bytes(report.stored_bytes),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// `thaw demo`: writes a synthetic guest-memory image as a checkpoint,
/// verifies it and reads it back.
pub async fn demo(store: &Store, memory_bytes: u64) -> anyhow::Result<()> {
    ensure!(
        memory_bytes > 0 && memory_bytes % 4096 == 0,
        "memory size must be a positive multiple of 4 KiB"
    );
    let image =
        tokio::task::spawn_blocking(move || synthetic::memory_image(memory_bytes as usize, 7))
            .await?;
    let regions = [MemoryRegion {
        guest_phys_addr: 0,
        bytes: &image,
    }];
    let t = Instant::now();
    let summary = write_checkpoint(
        store,
        &regions,
        b"demo state".to_vec(),
        &WriteOptions::default(),
    )
    .await?;
    let write_s = t.elapsed().as_secs_f64();

    let t = Instant::now();
    verify(store, &summary.id).await?;
    let verify_s = t.elapsed().as_secs_f64();

    let t = Instant::now();
    let reader = CheckpointReader::open(store, &summary.id).await?;
    let mut back = vec![0u8; image.len()];
    reader
        .read_all_into(&mut back, DEFAULT_READ_CONCURRENCY)
        .await?;
    let read_s = t.elapsed().as_secs_f64();
    ensure!(
        back == image,
        "memory read back differs from memory written"
    );
    ensure!(reader.state_blob() == b"demo state", "state blob differs");

    println!();
    println!(
        "thaw demo: checkpoint {} in {}",
        summary.id,
        store.location()
    );
    let rows = [
        ("guest memory", format_bytes(memory_bytes)),
        ("zero pages (not stored)", summary.zero_pages.to_string()),
        ("blocks", summary.blocks.to_string()),
        ("stored", format_bytes(summary.stored_bytes)),
        ("segments", summary.segments.to_string()),
        ("write", format!("{write_s:.2} s")),
        ("verify", format!("{verify_s:.2} s")),
        ("read back", format!("{read_s:.2} s, identical")),
    ];
    for (k, v) in rows {
        println!("  {k:<24} {v}");
    }
    Ok(())
}
