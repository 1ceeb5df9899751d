//! Listing and deleting the checkpoints of a store. A checkpoint exists once
//! its manifest does: directories of segments without a manifest are writes
//! that never finished and are not listed.

use object_store::path::Path;
use object_store::ObjectStoreExt;

use crate::error::CheckpointError;
use crate::names::{remove_names_of, NamesError};
use crate::reader::{load_manifest, read_manifest_object, VerifiedManifest};
use crate::store::{keys, Store};
use thaw_format::{CheckpointId, Manifest, ManifestTrust};

/// One entry of a listing: the manifest, or why it could not be read or was
/// not trusted.
pub struct CatalogEntry {
    pub id: CheckpointId,
    pub manifest: Result<VerifiedManifest, CheckpointError>,
}

/// The store's complete checkpoints, each manifest opened under `trust`.
pub async fn list_checkpoints(
    store: &Store,
    trust: &ManifestTrust,
) -> Result<Vec<CatalogEntry>, CheckpointError> {
    let prefix = Path::from(keys::CHECKPOINTS);
    let listing = store
        .object_store()
        .list_with_delimiter(Some(&prefix))
        .await
        .map_err(|e| CheckpointError::object(keys::CHECKPOINTS, e))?;
    let mut entries = Vec::new();
    for dir in listing.common_prefixes {
        let Some(name) = dir.filename() else { continue };
        let Ok(id) = CheckpointId::new(name) else {
            continue;
        };
        match load_manifest(store, &id, trust).await {
            Err(CheckpointError::NotFound { .. }) => continue,
            manifest => entries.push(CatalogEntry { id, manifest }),
        }
    }
    entries.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(entries)
}

/// Milliseconds since the Unix epoch, now (0 before it).
pub(crate) fn unix_ms_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Where a checkpoint's stored bytes are: in objects it wrote itself, or in
/// its ancestors' objects that it references.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StoredBytes {
    /// Bytes of its blocks in its own segments (`checkpoints/ID/...`).
    pub own: u64,
    /// Bytes of its blocks in other checkpoints' segments.
    pub shared: u64,
}

impl StoredBytes {
    pub fn of(manifest: &Manifest) -> Self {
        let own_prefix = format!("{}/{}/", keys::CHECKPOINTS, manifest.id);
        let own_object: Vec<bool> = manifest
            .objects
            .iter()
            .map(|k| k.starts_with(&own_prefix))
            .collect();
        let mut bytes = Self::default();
        for b in &manifest.blocks {
            if own_object[b.object as usize] {
                bytes.own += b.stored_len;
            } else {
                bytes.shared += b.stored_len;
            }
        }
        bytes
    }
}

/// What [`delete_checkpoint`] removed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deleted {
    pub id: CheckpointId,
    /// The names that pointed at it, removed with it.
    pub names: Vec<thaw_format::CheckpointName>,
}

/// Deletes checkpoint `id`: its manifest and the names pointing at it. Its
/// segments and dirty log stay until `thaw store gc` finds nothing that
/// references them (children may).
///
/// The manifest is first copied to `deleted/ID` (a tombstone), then
/// removed: GC keeps marking through a tombstone for one grace period, so a
/// write that began from this checkpoint as its parent before the delete
/// keeps the blocks it reuses (see [`crate::gc`]).
pub async fn delete_checkpoint(store: &Store, id: &CheckpointId) -> Result<Deleted, NamesError> {
    let manifest = read_manifest_object(store, id).await?;
    let os = store.object_store();
    let tombstone = keys::tombstone(id);
    os.put(&tombstone, manifest.into())
        .await
        .map_err(|e| CheckpointError::object(tombstone.as_ref(), e))?;
    let key = keys::manifest(id);
    match os.delete(&key).await {
        Ok(()) => {}
        Err(object_store::Error::NotFound { .. }) => {
            return Err(CheckpointError::NotFound {
                id: id.clone(),
                store: store.location().to_owned(),
            }
            .into())
        }
        Err(e) => return Err(CheckpointError::object(key.as_ref(), e).into()),
    }
    let names = remove_names_of(store, id).await?;
    tracing::info!(%id, ?names, "checkpoint deleted");
    Ok(Deleted {
        id: id.clone(),
        names,
    })
}
