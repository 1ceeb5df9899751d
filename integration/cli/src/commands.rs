//! What the `thaw` subcommands do, apart from parsing their arguments.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use thaw_format::signature::{key_id, Verified};
use thaw_format::workload::parse_trace;
use thaw_format::{CheckpointId, CheckpointName, ManifestTrust};

use crate::keys::KeyArgs;
use std::collections::BTreeMap;
use thaw_format::{layout_from_traces, with_neighbours};
use thaw_store::catalog::delete_checkpoint;
use thaw_store::catalog::{list_checkpoints, StoredBytes};
use thaw_store::dirty_log::load_dirty_log;
use thaw_store::gc::{collect_garbage, GcOptions, SweptKind};
use thaw_store::names::{list_names, TagOutcome};
use thaw_store::reader::{load_manifest, DEFAULT_READ_CONCURRENCY};
use thaw_store::{CheckpointReader, Store};

use thaw_format::units::format_bytes;

/// `thaw checkpoint list STORE [--json]`: each complete checkpoint with its names, parent, sizes
/// (own: bytes in objects it wrote; shared: bytes it reads from ancestors' objects) and age.
pub async fn list(store: &Store, trust: &ManifestTrust, json: bool) -> anyhow::Result<()> {
    let entries = list_checkpoints(store, trust).await?;
    let mut names_of: BTreeMap<CheckpointId, Vec<String>> = BTreeMap::new();
    let mut bad_names = Vec::new();
    for entry in list_names(store).await? {
        match entry.record {
            Ok(r) => names_of
                .entry(r.id)
                .or_default()
                .push(entry.name.to_string()),
            Err(e) => bad_names.push((entry.name.to_string(), e.to_string())),
        }
    }
    let live: std::collections::HashSet<&CheckpointId> = entries.iter().map(|e| &e.id).collect();
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    if json {
        let checkpoints: Vec<_> = entries
            .iter()
            .map(|e| {
                let names = names_of.get(&e.id).cloned().unwrap_or_default();
                match &e.manifest {
                    Ok(v) => {
                        let m = &v.manifest;
                        let bytes = StoredBytes::of(m);
                        serde_json::json!({
                            "id": e.id.to_string(),
                            "names": names,
                            "parent": m.parent.as_ref().map(|p| p.to_string()),
                            "parent_exists": m.parent.as_ref().map(|p| live.contains(p)),
                            "memory_bytes": m.total_bytes(),
                            "own_bytes": bytes.own,
                            "shared_bytes": bytes.shared,
                            "created_unix_ms": m.created_unix_ms,
                            "age_s": now_ms.saturating_sub(m.created_unix_ms) / 1000,
                            "signed_by": signer(&v.verified),
                        })
                    }
                    Err(err) => serde_json::json!({
                        "id": e.id.to_string(),
                        "names": names,
                        "error": err.to_string(),
                    }),
                }
            })
            .collect();
        let dangling: Vec<_> = names_of
            .iter()
            .filter(|(id, _)| !live.contains(id))
            .map(|(id, names)| serde_json::json!({"id": id.to_string(), "names": names}))
            .collect();
        let bad: Vec<_> = bad_names
            .iter()
            .map(|(name, error)| serde_json::json!({"name": name, "error": error}))
            .collect();
        let doc = serde_json::json!({
            "store": store.location(),
            "checkpoints": checkpoints,
            "dangling_names": dangling,
            "bad_names": bad,
        });
        println!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(());
    }
    if entries.is_empty() {
        println!("no checkpoints in {}", store.location());
    } else {
        println!(
            "{:<28} {:<16} {:<28} {:>10} {:>10} {:>10} {:>8}  signed by",
            "id", "names", "parent", "memory", "own", "shared", "age"
        );
    }
    for e in &entries {
        let names = names_of
            .get(&e.id)
            .map(|n| n.join(","))
            .unwrap_or_else(|| "-".into());
        match &e.manifest {
            Ok(v) => {
                let m = &v.manifest;
                let bytes = StoredBytes::of(m);
                let parent = match &m.parent {
                    None => "-".to_owned(),
                    Some(p) if live.contains(p) => p.to_string(),
                    Some(p) => format!("{p} (deleted)"),
                };
                println!(
                    "{:<28} {:<16} {:<28} {:>10} {:>10} {:>10} {:>8}  {}",
                    e.id,
                    names,
                    parent,
                    format_bytes(m.total_bytes()),
                    format_bytes(bytes.own),
                    format_bytes(bytes.shared),
                    format_age(now_ms.saturating_sub(m.created_unix_ms)),
                    signer(&v.verified),
                )
            }
            Err(err) => println!("{:<28} {:<16} INVALID: {err}", e.id, names),
        }
    }
    for (id, names) in names_of.iter().filter(|(id, _)| !live.contains(id)) {
        println!(
            "name(s) {} point at {id}, which does not exist",
            names.join(",")
        );
    }
    for (name, error) in &bad_names {
        println!("name {name}: {error}");
    }
    Ok(())
}

/// `75_000` ms → `1m15s`.
fn format_age(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        3600..=86_399 => format!("{}h{:02}m", s / 3600, s / 60 % 60),
        _ => format!("{}d{:02}h", s / 86_400, s / 3600 % 24),
    }
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

/// The checkpoint a command's `ID|NAME` argument names, resolved once before anything else.
pub async fn resolve(store: &Store, arg: &str) -> anyhow::Result<CheckpointId> {
    Ok(thaw_store::names::resolve(store, arg).await?)
}

/// Who tags a name: `$USER@HOST`, as far as known.
fn tagged_by() -> String {
    let user = std::env::var("USER").unwrap_or_else(|_| "unknown".into());
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "unknown".into());
    format!("{user}@{host}")
}

/// `thaw checkpoint tag STORE NAME ID|NAME [--move]`: creates a name (or moves it, with
/// `--move`), refusing to overwrite a concurrent writer's tag.
pub async fn tag(store: &Store, name: &str, target: &str, allow_move: bool) -> anyhow::Result<()> {
    let name = CheckpointName::new(name)?;
    let id = resolve(store, target).await?;
    match thaw_store::names::tag(store, &name, &id, &tagged_by(), allow_move).await? {
        TagOutcome::Created => println!("{name} -> {id}"),
        TagOutcome::Moved { from } => println!("{name} -> {id} (was {from})"),
        TagOutcome::Unchanged => println!("{name} -> {id} (unchanged)"),
    }
    Ok(())
}

/// `thaw checkpoint delete STORE ID|NAME`: removes the manifest and its names; the blocks stay
/// until `thaw store gc`.
pub async fn delete(store: &Store, target: &str) -> anyhow::Result<()> {
    let id = resolve(store, target).await?;
    let deleted = delete_checkpoint(store, &id).await?;
    let names = match deleted.names.as_slice() {
        [] => String::new(),
        names => format!(
            " and its name(s) {}",
            names
                .iter()
                .map(|n| n.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    println!(
        "checkpoint {id}{names} deleted; its blocks are freed by `thaw store gc` once nothing uses them"
    );
    Ok(())
}

/// `thaw store gc STORE [--grace DURATION] [--dry-run] [--force] [--json]`
pub async fn gc(
    store: &Store,
    trust: &ManifestTrust,
    opts: &GcOptions,
    json: bool,
) -> anyhow::Result<()> {
    let report = collect_garbage(store, trust, opts).await?;
    let verb = if report.dry_run {
        "would sweep"
    } else {
        "swept"
    };
    if json {
        let swept: Vec<_> = report
            .swept
            .iter()
            .map(|s| {
                serde_json::json!({
                    "key": s.key,
                    "bytes": s.bytes,
                    "kind": match s.kind {
                        SweptKind::Object => "object",
                        SweptKind::Tombstone => "tombstone",
                    },
                })
            })
            .collect();
        let doc = serde_json::json!({
            "store": store.location(),
            "dry_run": report.dry_run,
            "grace_s": opts.grace.as_secs(),
            "live_checkpoints": report.live_checkpoints,
            "young_tombstones": report.young_tombstones,
            "objects_seen": report.objects_seen,
            "kept_young": report.kept_young,
            "kept_young_bytes": report.kept_young_bytes,
            "swept_count": report.swept.len(),
            "swept_bytes": report.swept_bytes,
            "swept": swept,
            "unreadable": report.unreadable,
        });
        println!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(());
    }
    for s in &report.swept {
        println!("{verb} {} ({})", s.key, format_bytes(s.bytes));
    }
    for u in &report.unreadable {
        println!("kept the objects of an unreadable manifest (--force): {u}");
    }
    println!(
        "{verb} {} object(s), {}; kept {} live checkpoint(s), {} recently deleted, and {} \
         unreferenced object(s) ({}) younger than the grace of {}",
        report.swept.len(),
        format_bytes(report.swept_bytes),
        report.live_checkpoints,
        report.young_tombstones,
        report.kept_young,
        format_bytes(report.kept_young_bytes),
        humanize(opts.grace),
    );
    Ok(())
}

fn humanize(d: std::time::Duration) -> String {
    format_age(d.as_millis() as u64)
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
