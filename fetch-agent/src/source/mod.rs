//! Where stored block bytes come from: a [`BlockSource`] fetches one block's
//! *stored* bytes (compressed, unverified) and a checkpoint's manifest. The
//! agent tries its sources in order (block servers, each block's home
//! first, see [`tier`]; then the object store);
//! decoding and the hash check happen above, in [`crate::fetch`], so a bad
//! source can never get a block installed.

#[cfg(feature = "block-server")]
pub mod block_server;
pub mod health;
pub mod monitor;
#[cfg(feature = "block-server")]
pub mod server_list;
#[cfg(feature = "block-server")]
pub mod tier;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures::future::BoxFuture;
use thaw_format::{CheckpointId, Manifest, ManifestTrust};
use thaw_store::reader::read_manifest_object;
use thaw_store::{CheckpointReader, Store};

use crate::metrics::SourceKind;
use crate::policy::Priority;

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("{source_name}: {message}")]
    Failed {
        source_name: String,
        message: String,
    },
    /// The source cannot be reached (no connection, connection lost): it
    /// is taken out of use until a probe reaches it again.
    #[error("{source_name}: unreachable: {message}")]
    Unreachable {
        source_name: String,
        message: String,
    },
}

impl SourceError {
    pub fn new(source_name: &str, message: impl std::fmt::Display) -> Self {
        SourceError::Failed {
            source_name: source_name.to_owned(),
            message: message.to_string(),
        }
    }

    pub fn unreachable(source_name: &str, message: impl std::fmt::Display) -> Self {
        SourceError::Unreachable {
            source_name: source_name.to_owned(),
            message: message.to_string(),
        }
    }

    pub fn is_unreachable(&self) -> bool {
        matches!(self, SourceError::Unreachable { .. })
    }

    /// What went wrong, without the source's name.
    pub fn reason(&self) -> String {
        match self {
            SourceError::Failed { message, .. } => message.clone(),
            SourceError::Unreachable { message, .. } => format!("unreachable: {message}"),
        }
    }
}

/// A place to fetch blocks from.
pub trait BlockSource: Send + Sync {
    /// For logs and metrics (`object-store`, `block-server 10.0.0.1:4433`).
    fn name(&self) -> &str;

    /// The kind of source, for metrics.
    fn kind(&self) -> SourceKind;

    /// One block's stored bytes, exactly as the manifest's entry describes them.
    fn fetch_stored<'a>(
        &'a self,
        checkpoint: &'a CheckpointId,
        block: u32,
        priority: Priority,
    ) -> BoxFuture<'a, Result<Bytes, SourceError>>;

    /// Several blocks' stored bytes, in the order asked: what streaming asks
    /// for, blocks stored back to back. By default one [`Self::fetch_stored`]
    /// each, all at once; a source that pays per request (an object store)
    /// reads neighbouring blocks in one request instead.
    fn fetch_stored_run<'a>(
        &'a self,
        checkpoint: &'a CheckpointId,
        blocks: &'a [u32],
        priority: Priority,
    ) -> BoxFuture<'a, Result<Vec<Bytes>, SourceError>> {
        Box::pin(futures::future::try_join_all(
            blocks
                .iter()
                .map(move |&b| self.fetch_stored(checkpoint, b, priority)),
        ))
    }

    /// Whether streaming should read neighbouring blocks from this source in
    /// runs ([`Self::fetch_stored_run`]): when each request costs far more
    /// than its bytes. No by default: a run completes all its blocks at once,
    /// later than one-block requests would deliver the first ones.
    fn prefers_runs(&self) -> bool {
        false
    }

    /// Whether this source sends answers in priority order, so a fetch
    /// raised to demand while under way is better asked again at demand
    /// priority (see [`crate::fetch`]). No by default.
    fn orders_by_priority(&self) -> bool {
        false
    }

    /// The checkpoint's manifest object as the source has it, signature
    /// section included, not yet verified: the agent opens it under its trust
    /// (a source is never trusted for content).
    fn manifest_object<'a>(
        &'a self,
        checkpoint: &'a CheckpointId,
    ) -> BoxFuture<'a, Result<Bytes, SourceError>>;

    /// Opens what the source needs (a connection) ahead of the first
    /// restore, so no guest waits for a handshake. Nothing by default.
    fn connect(&self) -> BoxFuture<'_, Result<(), SourceError>> {
        Box::pin(async { Ok(()) })
    }

    /// A source standing for several (a tier of block servers, see
    /// [`tier`]): them in the order to ask them for `block`, each asked
    /// under its own health. `None` for a plain source.
    fn ranked_members(
        &self,
        _manifest: &Manifest,
        _block: u32,
    ) -> Option<Vec<Arc<dyn BlockSource>>> {
        None
    }

    /// The source stopped answering: drop what may be dead without anyone
    /// knowing yet (a connection to a killed server), so the next request
    /// starts afresh. Requests in flight may fail. Nothing by default.
    fn reset(&self) {}
}

/// Reads blocks straight from the object store: one ranged GET per block,
/// and one per run of neighbouring blocks when streaming asks for several.
pub struct ObjectStoreSource {
    name: String,
    store: Store,
    readers: Mutex<HashMap<CheckpointId, CheckpointReader>>,
}

impl ObjectStoreSource {
    pub fn new(store: Store) -> Self {
        ObjectStoreSource {
            name: format!("object store {}", store.location()),
            store,
            readers: Mutex::new(HashMap::new()),
        }
    }

    /// The tenant key of the store handle, which opens the store's
    /// encrypted checkpoints.
    pub fn tenant_keys(&self) -> Option<&Arc<thaw_format::TenantKeys>> {
        self.store.tenant_keys()
    }

    async fn reader(&self, checkpoint: &CheckpointId) -> Result<CheckpointReader, SourceError> {
        let known = self
            .readers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(checkpoint)
            .cloned();
        if let Some(r) = known {
            return Ok(r);
        }
        // Unverified: this manifest only locates stored bytes, and every block is
        // checked against the manifest the agent verified (see crate::fetch).
        let reader =
            CheckpointReader::open(&self.store, checkpoint, &ManifestTrust::InsecureUnsigned)
                .await
                .map_err(|e| SourceError::new(&self.name, e))?;
        self.readers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(checkpoint.clone(), reader.clone());
        Ok(reader)
    }
}

impl BlockSource for ObjectStoreSource {
    fn name(&self) -> &str {
        &self.name
    }

    fn kind(&self) -> SourceKind {
        SourceKind::ObjectStore
    }

    fn fetch_stored<'a>(
        &'a self,
        checkpoint: &'a CheckpointId,
        block: u32,
        _priority: Priority,
    ) -> BoxFuture<'a, Result<Bytes, SourceError>> {
        Box::pin(async move {
            let reader = self.reader(checkpoint).await?;
            reader
                .fetch_stored(block)
                .await
                .map_err(|e| SourceError::new(&self.name, e))
        })
    }

    /// ~20 ms to the first byte and a request-rate limit per prefix: a run
    /// of neighbouring blocks is one ranged GET.
    fn prefers_runs(&self) -> bool {
        true
    }

    fn fetch_stored_run<'a>(
        &'a self,
        checkpoint: &'a CheckpointId,
        blocks: &'a [u32],
        _priority: Priority,
    ) -> BoxFuture<'a, Result<Vec<Bytes>, SourceError>> {
        Box::pin(async move {
            let reader = self.reader(checkpoint).await?;
            reader
                .fetch_stored_many(blocks)
                .await
                .map_err(|e| SourceError::new(&self.name, e))
        })
    }

    fn manifest_object<'a>(
        &'a self,
        checkpoint: &'a CheckpointId,
    ) -> BoxFuture<'a, Result<Bytes, SourceError>> {
        Box::pin(async move {
            read_manifest_object(&self.store, checkpoint)
                .await
                .map_err(|e| SourceError::new(&self.name, e))
        })
    }
}
