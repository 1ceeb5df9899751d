//! Errors of reading and writing checkpoints in a store.

use thaw_format::{
    BlockCodecError, CheckpointId, CryptError, DirtyLogError, FormatError, LayoutError,
    SignatureError,
};

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("checkpoint {id} not found in {store} (no manifest: it does not exist or was never completed)")]
    NotFound { id: CheckpointId, store: String },
    #[error("checkpoint {id} already exists in {store}")]
    AlreadyExists { id: CheckpointId, store: String },
    #[error("manifest of checkpoint {id} is invalid: {source}")]
    BadManifest {
        id: CheckpointId,
        #[source]
        source: FormatError,
    },
    #[error("checkpoint {id} is not trusted: {source}")]
    Untrusted {
        id: CheckpointId,
        #[source]
        source: SignatureError,
    },
    #[error("dirty log of checkpoint {id} is invalid: {source}")]
    BadDirtyLog {
        id: CheckpointId,
        #[source]
        source: DirtyLogError,
    },
    #[error("object {key} is missing from the store")]
    MissingObject { key: String },
    #[error("object {key} is {source}")]
    ObjectTooLarge {
        key: String,
        #[source]
        source: crate::capped_read::TooLarge,
    },
    #[error("object {key}: {source}")]
    Object {
        key: String,
        #[source]
        source: object_store::Error,
    },
    #[error("block {block} (object {key}, offset {offset}) is bad: {source}")]
    BadBlock {
        block: u32,
        key: String,
        offset: u64,
        #[source]
        source: BlockCodecError,
    },
    #[error("guest memory does not fit the checkpoint format: {0}")]
    BadMemory(#[source] FormatError),
    #[error("layout is invalid: {0}")]
    BadLayout(#[from] LayoutError),
    #[error("destination buffer is {got} bytes, the checkpoint's memory is {expected}")]
    DestinationSize { expected: u64, got: u64 },
    #[error("block {0} does not exist in this checkpoint")]
    NoSuchBlock(u32),
    #[error("checkpoint {id}: {source}")]
    Encryption {
        id: CheckpointId,
        #[source]
        source: CryptError,
    },
    #[error("checkpoint {parent} cannot be the parent of this checkpoint: {source}")]
    Parent {
        parent: CheckpointId,
        #[source]
        source: crate::incremental::ParentMismatch,
    },
    #[error("background task failed: {0}")]
    Task(String),
}

impl CheckpointError {
    /// Maps an object-store error on `key`, telling a missing object apart.
    pub(crate) fn object(key: &str, source: object_store::Error) -> Self {
        match source {
            object_store::Error::NotFound { .. } => Self::MissingObject {
                key: key.to_owned(),
            },
            object_store::Error::Generic { store, source }
                if store == crate::capped_read::REFUSAL
                    && source.is::<crate::capped_read::TooLarge>() =>
            {
                Self::ObjectTooLarge {
                    key: key.to_owned(),
                    source: *source
                        .downcast()
                        .expect("checked to be a TooLarge just above"),
                }
            }
            source => Self::Object {
                key: key.to_owned(),
                source,
            },
        }
    }
}
