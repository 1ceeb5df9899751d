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

/// `thaw checkpoint import STORE --firecracker-mem FILE [--firecracker-state FILE]
/// [--region GPA:SIZE ...] [--trace FILE ...] [--id ID]`: prints the new id as its last line.
pub async fn import_firecracker(
    store: &Store,
    keys: &KeyArgs,
    args: &FirecrackerImport,
) -> anyhow::Result<()> {
    use thaw_store::import::{import_firecracker, regions_of};
    let started = Instant::now();
    // Reading a sparse file gives zeros in its holes (a diff snapshot): zero pages, elided.
    let memory = std::fs::read(&args.memory)
        .with_context(|| format!("reading Firecracker memory file {}", args.memory.display()))?;
    let vmstate = args
        .state
        .as_ref()
        .map(|p| {
            std::fs::read(p)
                .with_context(|| format!("reading Firecracker vmstate file {}", p.display()))
        })
        .transpose()?;
    let regions = regions_of(memory.len() as u64, &args.regions)?;
    let mut options = keys.write_options()?;
    options.id = args.id.clone();

    if !args.traces.is_empty() {
        let total_pages = memory.len() as u64 / options.page_size;
        let mut profiles = Vec::with_capacity(args.traces.len());
        for path in &args.traces {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading trace {}", path.display()))?;
            let name = path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            let trace = parse_trace(&path.display().to_string(), &name, &text, total_pages)?;
            profiles.push(trace.pages());
        }
        options.layout = with_neighbours(layout_from_traces(&profiles), total_pages);
    }
    let summary = import_firecracker(store, &memory, &regions, vmstate.as_deref(), &options)
        .await
        .context("importing the Firecracker snapshot")?;
    println!(
        "imported {} of Firecracker memory in {} region(s){}: {} blocks, {} zero pages elided, \
         {} uploaded, {}, in {:.2} s",
        format_bytes(memory.len() as u64),
        regions.len(),
        if vmstate.is_some() {
            " with its vmstate"
        } else {
            ""
        },
        summary.blocks,
        summary.zero_pages,
        format_bytes(summary.uploaded_bytes),
        if summary.signed { "signed" } else { "unsigned" },
        started.elapsed().as_secs_f64()
    );
    println!("{}", summary.id);
    Ok(())
}

/// What `thaw checkpoint import` reads.
pub struct FirecrackerImport {
    pub memory: PathBuf,
    pub state: Option<PathBuf>,
    pub regions: Vec<thaw_store::import::RegionSpec>,
    pub traces: Vec<PathBuf>,
    pub id: Option<CheckpointId>,
}

/// `thaw checkpoint export STORE ID --firecracker-state OUT [--firecracker-mem OUT]`
pub async fn export_firecracker(
    store: &Store,
    id: &CheckpointId,
    trust: &ManifestTrust,
    state_out: &std::path::Path,
    memory_out: Option<&std::path::Path>,
) -> anyhow::Result<()> {
    use thaw_store::import::{firecracker_memory, firecracker_vmstate};
    let reader = CheckpointReader::open(store, id, trust)
        .await
        .with_context(|| format!("opening checkpoint {id}"))?;
    let vmstate = firecracker_vmstate(&reader)?;
    std::fs::write(state_out, &vmstate)
        .with_context(|| format!("writing {}", state_out.display()))?;
    println!(
        "Firecracker vmstate of {id}: {} in {}",
        format_bytes(vmstate.len() as u64),
        state_out.display()
    );
    if let Some(out) = memory_out {
        let memory = firecracker_memory(&reader).await?;
        std::fs::write(out, &memory).with_context(|| format!("writing {}", out.display()))?;
        println!(
            "Firecracker memory of {id}: {} in {}",
            format_bytes(memory.len() as u64),
            out.display()
        );
    }
    Ok(())
}
