//! What the `thaw` subcommands do, apart from parsing their arguments.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use thaw_format::signature::{key_id, Verified};
use thaw_format::workload::parse_trace;
use thaw_format::{CheckpointId, ManifestTrust};

use crate::keys::KeyArgs;
use thaw_format::{layout_from_traces, with_neighbours};
use thaw_store::catalog::list_checkpoints;
use thaw_store::dirty_log::load_dirty_log;
use thaw_store::reader::{load_manifest, DEFAULT_READ_CONCURRENCY};
use thaw_store::{CheckpointReader, Store};

use thaw_format::units::format_bytes;

/// `thaw checkpoint list STORE`
pub async fn list(store: &Store, trust: &ManifestTrust) -> anyhow::Result<()> {
    let entries = list_checkpoints(store, trust).await?;
    if entries.is_empty() {
        println!("no checkpoints in {}", store.location());
        return Ok(());
    }
    println!(
        "{:<28} {:>10} {:>10} {:>8}  {:<16}  parent",
        "id", "memory", "stored", "blocks", "signed by"
    );
    for e in entries {
        match e.manifest {
            Ok(v) => println!(
                "{:<28} {:>10} {:>10} {:>8}  {:<16}  {}",
                e.id,
                format_bytes(v.manifest.total_bytes()),
                format_bytes(v.manifest.stored_bytes()),
                v.manifest.blocks.len(),
                signer(&v.verified),
                v.manifest
                    .parent
                    .map(|p| p.to_string())
                    .unwrap_or_else(|| "-".into())
            ),
            Err(err) => println!("{:<28} INVALID: {err}", e.id),
        }
    }
    Ok(())
}

/// Who signed a listed or verified checkpoint.
fn signer(verified: &Verified) -> String {
    match verified {
        Verified::SignedBy(key) => key_id(key),
        Verified::DigestMatched => "digest".into(),
        Verified::Unsigned => "unchecked".into(),
    }
}

/// `thaw checkpoint verify STORE ID`: checks the manifest's signature, then fetches and
/// hash-checks every block, and checks the dirty log, if the checkpoint has one, against its
/// memory.
pub async fn verify(store: &Store, id: &CheckpointId, trust: &ManifestTrust) -> anyhow::Result<()> {
    let started = Instant::now();
    let reader = CheckpointReader::open(store, id, trust).await?;
    let m = reader.manifest();
    let log = load_dirty_log(store, id).await?;
    if let Some(log) = &log {
        log.check_memory(m.page_size, m.total_pages())
            .with_context(|| format!("dirty log of checkpoint {id} does not fit its memory"))?;
    }
    let report = reader
        .verify(DEFAULT_READ_CONCURRENCY)
        .await
        .with_context(|| format!("checkpoint {id} failed verification"))?;
    println!(
        "checkpoint {id}: OK, {} blocks, {} stored, signed by {}, verified in {:.2} s",
        report.blocks,
        format_bytes(report.stored_bytes),
        signer(reader.verified()),
        started.elapsed().as_secs_f64()
    );
    if let Some(log) = log {
        let pages: u64 = log.windows.iter().map(|w| w.page_count()).sum();
        println!(
            "dirty log: OK, {} windows naming {pages} pages",
            log.windows.len()
        );
    }
    Ok(())
}

/// `thaw checkpoint relayout STORE ID --trace FILE [--trace FILE ...] [--id NEW]`
pub async fn relayout(
    store: &Store,
    id: &CheckpointId,
    keys: &KeyArgs,
    traces: &[PathBuf],
    new_id: Option<CheckpointId>,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let trust = keys.trust()?;
    let signing_key = keys.signing_key()?;
    let total_pages = load_manifest(store, id, &trust)
        .await?
        .manifest
        .total_pages();
    let mut profiles = Vec::with_capacity(traces.len());
    for path in traces {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading trace {}", path.display()))?;
        let name = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let trace = parse_trace(&path.display().to_string(), &name, &text, total_pages)?;
        profiles.push(trace.pages());
    }
    let layout = with_neighbours(layout_from_traces(&profiles), total_pages);
    let layout_pages = layout.len();
    let summary = thaw_store::relayout::relayout(store, id, layout, new_id, &trust, signing_key)
        .await
        .with_context(|| format!("relayout of checkpoint {id}"))?;
    println!(
        "checkpoint {} written from {id}: layout of {layout_pages} pages from {} trace(s), \
         {} blocks ({} reused from {id}), {} uploaded, in {:.2} s",
        summary.id,
        traces.len(),
        summary.blocks,
        summary.reused_blocks,
        format_bytes(summary.uploaded_bytes),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
