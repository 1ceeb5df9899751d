//! Listing the checkpoints of a store. A checkpoint exists once its manifest
//! does: directories of segments without a manifest are writes that never
//! finished and are not listed.

use object_store::path::Path;

use crate::error::CheckpointError;
use crate::reader::{load_manifest, VerifiedManifest};
use crate::store::{keys, Store};
use thaw_format::{CheckpointId, ManifestTrust};

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
