//! What the `thaw` subcommands do, apart from parsing their arguments.

use std::time::Instant;

use anyhow::Context;
use storage_backend::catalog::list_checkpoints;
use storage_backend::reader::DEFAULT_READ_CONCURRENCY;
use storage_backend::{CheckpointId, CheckpointReader, Store};

use storage_backend::units::format_bytes;

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
