//! Garbage collection of a store: mark every object a checkpoint may still
//! read, sweep the rest once it is older than a grace period.
//!
//! **Mark.** Every live manifest (`checkpoints/ID/manifest`) lists the keys
//! of all objects its blocks are in, its ancestors' included
//! (`Manifest::objects`), so marking needs no walk up the parent chain: a
//! deleted checkpoint's segments stay exactly while some descendant's
//! manifest names them. A live checkpoint's manifest and dirty log are
//! marked too. Deleting a checkpoint moves its manifest to `deleted/ID` (a
//! tombstone); a tombstone younger than the grace period is marked through
//! like a live manifest, an older one is swept.
//!
//! **Sweep.** Only under `checkpoints/` and `deleted/`, only objects that
//! nothing marked and whose `last_modified` is older than the grace period:
//! the segments and dirty logs of interrupted writes (no manifest ever came)
//! and of deleted checkpoints nothing references any more.
//!
//! **Why a concurrent writer is safe.** A writer puts its manifest last, so
//! until then GC sees its objects as unreferenced. Rule: *a checkpoint write
//! must finish within the grace period of its start* (the default, 24 h, is
//! far beyond any write). Then:
//! - the objects it uploads are younger than the grace while it runs, so no
//!   sweep takes them;
//! - the parent objects it reuses were referenced, when the write began
//!   (it reads the parent's manifest first), by the parent's manifest. Until
//!   the writer's own manifest lands, they stay marked through that
//!   manifest or, if the parent is deleted meanwhile, through its tombstone,
//!   which is younger than the grace for as long as the writer is allowed
//!   to run (deleted after the write began, swept only a grace period after
//!   the delete). Once the writer's manifest exists, it marks them itself.
//! - within one GC run, objects are listed before manifests are read and
//!   tombstones are written before manifests are removed, so a checkpoint
//!   deleted during the run is seen either live or as a tombstone.
//!
//! A checkpoint whose manifest cannot be decoded or does not pass the
//! caller's trust might reference anything, so GC refuses to sweep at all
//! ([`GcError::Unreadable`]) unless forced; forced, it keeps that
//! checkpoint's own objects and sweeps the rest.
//!
//! Ages compare the store's `last_modified` with this host's clock; the
//! grace must exceed any skew between them.

use std::collections::HashSet;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::{stream, StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{ObjectMeta, ObjectStoreExt};

use crate::error::CheckpointError;
use crate::reader::{load_manifest, open_manifest};
use crate::store::{keys, Store};
use thaw_format::{CheckpointId, ManifestTrust};

/// How old an unreferenced object must be before it is swept, by default:
/// far longer than any checkpoint write takes.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(24 * 3600);

/// Deletes in flight at once.
const DELETE_CONCURRENCY: usize = 16;

#[derive(Debug, Clone)]
pub struct GcOptions {
    pub grace: Duration,
    /// Report what would be swept without deleting anything.
    pub dry_run: bool,
    /// Sweep even when some manifest cannot be read or verified (that
    /// checkpoint's own objects are still kept).
    pub force: bool,
}

impl Default for GcOptions {
    fn default() -> Self {
        Self {
            grace: DEFAULT_GRACE,
            dry_run: false,
            force: false,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum GcError {
    #[error(
        "refusing to sweep: {} manifest(s) cannot be read or verified, and GC cannot know what \
         they reference: {}. Trust their signer (--trust, or --insecure-unsigned for unsigned \
         checkpoints), delete them, or pass --force to sweep anyway (their own objects are kept)",
        .0.len(), .0.join("; ")
    )]
    Unreadable(Vec<String>),
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
}

/// What kind of object was swept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SweptKind {
    /// A segment or dirty log nothing references (an interrupted write, or a
    /// deleted checkpoint's).
    Object,
    /// The manifest copy of a checkpoint deleted more than a grace ago.
    Tombstone,
}

#[derive(Debug, Clone)]
pub struct Swept {
    pub key: String,
    pub bytes: u64,
    pub kind: SweptKind,
}

/// What a GC run found and did.
#[derive(Debug, Clone, Default)]
pub struct GcReport {
    /// Live checkpoints whose manifests were marked through.
    pub live_checkpoints: usize,
    /// Tombstones younger than the grace, marked through.
    pub young_tombstones: usize,
    /// Objects under `checkpoints/` and `deleted/` when listed.
    pub objects_seen: usize,
    /// Unreferenced objects kept because they are younger than the grace.
    pub kept_young: usize,
    pub kept_young_bytes: u64,
    /// Swept (or, in a dry run, to be swept).
    pub swept: Vec<Swept>,
    pub swept_bytes: u64,
    /// Manifests that could not be read or verified (only with `force`).
    pub unreadable: Vec<String>,
    pub dry_run: bool,
}

/// Runs one mark and sweep over `store`; manifests must pass `trust`.
pub async fn collect_garbage(
    store: &Store,
    trust: &ManifestTrust,
    opts: &GcOptions,
) -> Result<GcReport, GcError> {
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    let grace_ms = i64::try_from(opts.grace.as_millis()).unwrap_or(i64::MAX);
    let old = |meta: &ObjectMeta| {
        now_ms.saturating_sub(meta.last_modified.timestamp_millis()) >= grace_ms
    };

    // List before reading any manifest: an object written after the listing
    // is not a candidate, and a manifest removed after it has its tombstone.
    let objects = list(store, keys::CHECKPOINTS).await?;
    let tombstones = list(store, keys::DELETED).await?;

    let mut report = GcReport {
        objects_seen: objects.len() + tombstones.len(),
        dry_run: opts.dry_run,
        ..GcReport::default()
    };
    let mut marked: HashSet<String> = HashSet::new();
    let mut kept_dirs: HashSet<CheckpointId> = HashSet::new();
    let mut unreadable = Vec::new();

    for meta in &objects {
        let Some(id) = live_manifest_id(&meta.location) else {
            continue;
        };
        match load_manifest(store, &id, trust).await {
            Ok(v) => {
                report.live_checkpoints += 1;
                mark_checkpoint(&mut marked, &id, &v.manifest.objects);
            }
            // Deleted since the listing: its tombstone was written first.
            Err(CheckpointError::NotFound { .. }) => {
                match load_tombstone(store, &id, trust).await {
                    Ok(objects) => {
                        report.young_tombstones += 1;
                        mark_checkpoint(&mut marked, &id, &objects);
                    }
                    Err(e) => {
                        unreadable.push(format!("checkpoint {id} (deleted during GC): {e}"));
                        kept_dirs.insert(id);
                    }
                }
            }
            Err(e) => {
                unreadable.push(e.to_string());
                kept_dirs.insert(id);
            }
        }
    }
    let mut old_tombstones = Vec::new();
    for meta in &tombstones {
        let Some(id) = tombstone_id(&meta.location) else {
            continue;
        };
        if old(meta) {
            old_tombstones.push(meta);
            continue;
        }
        match load_tombstone(store, &id, trust).await {
            Ok(objects) => {
                report.young_tombstones += 1;
                mark_checkpoint(&mut marked, &id, &objects);
            }
            Err(e) => unreadable.push(format!("tombstone of deleted checkpoint {id}: {e}")),
        }
    }
    if !unreadable.is_empty() && !opts.force {
        return Err(GcError::Unreadable(unreadable));
    }
    report.unreadable = unreadable;

    let mut doomed = Vec::new();
    for meta in &objects {
        let key = meta.location.as_ref();
        if marked.contains(key)
            || checkpoint_of(&meta.location).is_some_and(|id| kept_dirs.contains(&id))
        {
            continue;
        }
        if !old(meta) {
            report.kept_young += 1;
            report.kept_young_bytes += meta.size;
            continue;
        }
        doomed.push((meta, SweptKind::Object));
    }
    doomed.extend(
        old_tombstones
            .into_iter()
            .map(|m| (m, SweptKind::Tombstone)),
    );
    for (meta, kind) in doomed {
        report.swept_bytes += meta.size;
        report.swept.push(Swept {
            key: meta.location.to_string(),
            bytes: meta.size,
            kind,
        });
    }
    if !opts.dry_run {
        sweep(store, &report.swept).await?;
    }
    tracing::info!(
        swept = report.swept.len(),
        bytes = report.swept_bytes,
        kept_young = report.kept_young,
        dry_run = opts.dry_run,
        "store gc"
    );
    Ok(report)
}

async fn list(store: &Store, prefix: &str) -> Result<Vec<ObjectMeta>, CheckpointError> {
    store
        .object_store()
        .list(Some(&Path::from(prefix)))
        .try_collect()
        .await
        .map_err(|e| CheckpointError::object(prefix, e))
}

/// Marks a checkpoint's referenced objects, its manifest and its dirty log.
fn mark_checkpoint(marked: &mut HashSet<String>, id: &CheckpointId, objects: &[String]) {
    marked.extend(objects.iter().cloned());
    marked.insert(keys::manifest(id).to_string());
    marked.insert(keys::dirty_log(id).to_string());
}

/// The objects a deleted checkpoint's tombstone references.
async fn load_tombstone(
    store: &Store,
    id: &CheckpointId,
    trust: &ManifestTrust,
) -> Result<Vec<String>, CheckpointError> {
    let key = keys::tombstone(id);
    let bytes = crate::capped_read::read_manifest(store, &key)
        .await
        .map_err(|e| CheckpointError::object(key.as_ref(), e))?;
    Ok(open_manifest(id, &bytes, trust)?.manifest.objects)
}

/// `ID` of `checkpoints/ID/manifest`.
fn live_manifest_id(key: &Path) -> Option<CheckpointId> {
    let mut parts = key.parts();
    let (Some(top), Some(id), Some(leaf), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return None;
    };
    (top.as_ref() == keys::CHECKPOINTS && leaf.as_ref() == "manifest")
        .then(|| CheckpointId::new(id.as_ref()).ok())
        .flatten()
}

/// `ID` of any `checkpoints/ID/...`.
fn checkpoint_of(key: &Path) -> Option<CheckpointId> {
    let mut parts = key.parts();
    match (parts.next(), parts.next()) {
        (Some(top), Some(id)) if top.as_ref() == keys::CHECKPOINTS => {
            CheckpointId::new(id.as_ref()).ok()
        }
        _ => None,
    }
}

/// `ID` of `deleted/ID`.
fn tombstone_id(key: &Path) -> Option<CheckpointId> {
    let mut parts = key.parts();
    match (parts.next(), parts.next(), parts.next()) {
        (Some(top), Some(id), None) if top.as_ref() == keys::DELETED => {
            CheckpointId::new(id.as_ref()).ok()
        }
        _ => None,
    }
}

async fn sweep(store: &Store, swept: &[Swept]) -> Result<(), CheckpointError> {
    stream::iter(swept)
        .map(|s| async move {
            match store
                .object_store()
                .delete(&Path::from(s.key.as_str()))
                .await
            {
                // Another GC got there first.
                Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
                Err(e) => Err(CheckpointError::object(&s.key, e)),
            }
        })
        .buffer_unordered(DELETE_CONCURRENCY)
        .try_collect()
        .await
}
