//! Checkpoint names in a store: `names/NAME` objects (see
//! [`thaw_format::name`]), tagged with conditional puts, and the one place
//! where a command's "ID or NAME" argument becomes a checkpoint id.
//!
//! Tagging never overwrites blindly. A new name is written create-only
//! (`If-None-Match: *` on S3), a move with `If-Match` on the e-tag read just
//! before, so of two writers racing on one name exactly one wins and the
//! other is told which checkpoint the name now points at.
//!
//! Stores that cannot update conditionally (object_store's local directory
//! store refuses `PutMode::Update`) move a name by checking the e-tag again,
//! deleting the old object and creating the new one create-only. Creating a
//! name stays atomic there (a hard link); a move is detected as lost when
//! the other writer's create lands first, but a move whose delete falls
//! between another mover's delete and create can replace that mover's tag.
//! A local directory has one host's writers; use S3 where names are shared.
//!
//! Resolution trusts a name for nothing but the id: the checkpoint is then
//! opened under the caller's trust exactly as when named by id.

use bytes::Bytes;
use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectStoreExt, PutMode, PutOptions, UpdateVersion};

use crate::error::CheckpointError;
use crate::store::{keys, Store};
use thaw_format::name::MAX_NAME_OBJECT_BYTES;
use thaw_format::{CheckpointId, CheckpointName, NameError, NameRecord};

#[derive(Debug, thiserror::Error)]
pub enum NamesError {
    #[error(transparent)]
    BadName(#[from] NameError),
    #[error("name {name} in {store} was changed by another writer at the same time: it now points at {now}")]
    Conflict {
        name: CheckpointName,
        store: String,
        now: String,
    },
    #[error("name {name} in {store} points at checkpoint {id} already (move it with --move)")]
    Exists {
        name: CheckpointName,
        store: String,
        id: CheckpointId,
    },
    #[error("checkpoint {arg:?} not found in {store}: it is neither a checkpoint id nor a checkpoint name there")]
    Unknown { arg: String, store: String },
    #[error("name {name} points at checkpoint {id}, which is not in {store} (deleted?)")]
    Dangling {
        name: CheckpointName,
        id: CheckpointId,
        store: String,
    },
    #[error(
        "cannot tag {name}: it is the id of a checkpoint in {store}, which the name would hide"
    )]
    ShadowsId { name: CheckpointName, store: String },
    #[error("name object {key} is invalid: {source}")]
    BadRecord {
        key: String,
        #[source]
        source: NameError,
    },
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
}

/// What [`tag`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TagOutcome {
    Created,
    /// The name pointed at `from` before.
    Moved {
        from: CheckpointId,
    },
    /// The name pointed at this checkpoint already; nothing was written.
    Unchanged,
}

/// A name object as read, with the version a conditional update needs.
struct Current {
    record: NameRecord,
    version: UpdateVersion,
}

/// `names/NAME`'s record, or `None` when the name does not exist.
pub async fn read_name(
    store: &Store,
    name: &CheckpointName,
) -> Result<Option<NameRecord>, NamesError> {
    Ok(read_current(store, name).await?.map(|c| c.record))
}

async fn read_current(store: &Store, name: &CheckpointName) -> Result<Option<Current>, NamesError> {
    let key = keys::name(name);
    let got = match store.object_store().get(&key).await {
        Ok(got) => got,
        Err(object_store::Error::NotFound { .. }) => return Ok(None),
        Err(e) => return Err(CheckpointError::object(key.as_ref(), e).into()),
    };
    let bad = |source| NamesError::BadRecord {
        key: key.to_string(),
        source,
    };
    if got.meta.size > MAX_NAME_OBJECT_BYTES as u64 {
        return Err(bad(NameError::ObjectTooLarge {
            len: got.meta.size as usize,
        }));
    }
    let version = UpdateVersion {
        e_tag: got.meta.e_tag.clone(),
        version: got.meta.version.clone(),
    };
    let bytes = got
        .bytes()
        .await
        .map_err(|e| CheckpointError::object(key.as_ref(), e))?;
    let record = NameRecord::decode(&bytes).map_err(bad)?;
    Ok(Some(Current { record, version }))
}

async fn checkpoint_exists(store: &Store, id: &CheckpointId) -> Result<bool, CheckpointError> {
    let key = keys::manifest(id);
    match store.object_store().head(&key).await {
        Ok(_) => Ok(true),
        Err(object_store::Error::NotFound { .. }) => Ok(false),
        Err(e) => Err(CheckpointError::object(key.as_ref(), e)),
    }
}

/// Points `name` at checkpoint `id` (which must exist), creating the name,
/// or with `allow_move` moving it from another checkpoint; `tagged_by` is
/// recorded for people. A writer that changed the name between this call's
/// read and its write makes it fail with [`NamesError::Conflict`], naming
/// where the name points now.
pub async fn tag(
    store: &Store,
    name: &CheckpointName,
    id: &CheckpointId,
    tagged_by: &str,
    allow_move: bool,
) -> Result<TagOutcome, NamesError> {
    if !checkpoint_exists(store, id).await? {
        return Err(CheckpointError::NotFound {
            id: id.clone(),
            store: store.location().to_owned(),
        }
        .into());
    }
    if let Ok(as_id) = CheckpointId::new(name.as_str()) {
        if checkpoint_exists(store, &as_id).await? {
            return Err(NamesError::ShadowsId {
                name: name.clone(),
                store: store.location().to_owned(),
            });
        }
    }
    let record = NameRecord {
        id: id.clone(),
        tagged_unix_ms: crate::catalog::unix_ms_now(),
        tagged_by: tagged_by.to_owned(),
    };
    let current = read_current(store, name).await?;
    let outcome = match &current {
        None => TagOutcome::Created,
        Some(c) if &c.record.id == id => return Ok(TagOutcome::Unchanged),
        Some(c) if !allow_move => {
            return Err(NamesError::Exists {
                name: name.clone(),
                store: store.location().to_owned(),
                id: c.record.id.clone(),
            })
        }
        Some(c) => TagOutcome::Moved {
            from: c.record.id.clone(),
        },
    };
    let key = keys::name(name);
    let payload = Bytes::from(record.encode());
    let result = match current {
        None => put(store, &key, payload, PutMode::Create).await,
        Some(c) => {
            match put(
                store,
                &key,
                payload.clone(),
                PutMode::Update(c.version.clone()),
            )
            .await
            {
                Err(object_store::Error::NotImplemented { .. }) => {
                    move_without_update(store, &key, payload, &c.version).await
                }
                r => r,
            }
        }
    };
    match result {
        Ok(()) => Ok(outcome),
        Err(
            object_store::Error::AlreadyExists { .. } | object_store::Error::Precondition { .. },
        ) => Err(conflict(store, name).await),
        Err(e) => Err(CheckpointError::object(key.as_ref(), e).into()),
    }
}

async fn put(
    store: &Store,
    key: &Path,
    payload: Bytes,
    mode: PutMode,
) -> Result<(), object_store::Error> {
    let opts = PutOptions {
        mode,
        ..Default::default()
    };
    store
        .object_store()
        .put_opts(key, payload.into(), opts)
        .await
        .map(|_| ())
}

/// A move on a store without conditional updates: the object must still be
/// the version read, then it is deleted and created again create-only (see
/// the module doc for what this does not exclude).
async fn move_without_update(
    store: &Store,
    key: &Path,
    payload: Bytes,
    read: &UpdateVersion,
) -> Result<(), object_store::Error> {
    let os = store.object_store();
    let now = os.head(key).await.map_err(|e| match e {
        object_store::Error::NotFound { path, source } => {
            object_store::Error::Precondition { path, source }
        }
        e => e,
    })?;
    if now.e_tag != read.e_tag || now.version != read.version {
        return Err(object_store::Error::Precondition {
            path: key.to_string(),
            source: "the name changed since it was read".into(),
        });
    }
    match os.delete(key).await {
        Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
        Err(e) => return Err(e),
    }
    put(store, key, payload, PutMode::Create).await
}

/// The error for a lost race on `name`, saying where it points now.
async fn conflict(store: &Store, name: &CheckpointName) -> NamesError {
    let now = match read_name(store, name).await {
        Ok(Some(r)) => format!("checkpoint {}", r.id),
        Ok(None) => "nothing (it was removed)".to_owned(),
        Err(e) => format!("an unreadable record ({e})"),
    };
    NamesError::Conflict {
        name: name.clone(),
        store: store.location().to_owned(),
        now,
    }
}

/// The checkpoint `arg` names: `arg` itself when a checkpoint has that id
/// (an id always means itself, so a name can never redirect it), else the
/// checkpoint of the name `arg`, which must still exist. Commands call this
/// once, before anything else, and use only the id afterwards.
pub async fn resolve(store: &Store, arg: &str) -> Result<CheckpointId, NamesError> {
    let as_id = CheckpointId::new(arg).ok();
    if let Some(id) = &as_id {
        if checkpoint_exists(store, id).await? {
            return Ok(id.clone());
        }
    }
    let name = match CheckpointName::new(arg) {
        Ok(name) => name,
        Err(e) if as_id.is_none() => return Err(e.into()),
        Err(_) => {
            return Err(NamesError::Unknown {
                arg: arg.to_owned(),
                store: store.location().to_owned(),
            })
        }
    };
    let Some(record) = read_name(store, &name).await? else {
        return Err(NamesError::Unknown {
            arg: arg.to_owned(),
            store: store.location().to_owned(),
        });
    };
    if !checkpoint_exists(store, &record.id).await? {
        return Err(NamesError::Dangling {
            name,
            id: record.id,
            store: store.location().to_owned(),
        });
    }
    Ok(record.id)
}

/// One name of a listing: its record, or why it could not be read.
pub struct NameEntry {
    pub name: CheckpointName,
    pub record: Result<NameRecord, NamesError>,
}

/// Every name of the store, sorted. Objects under `names/` whose key is not
/// a valid name (put there by other tools) are skipped.
pub async fn list_names(store: &Store) -> Result<Vec<NameEntry>, NamesError> {
    let prefix = Path::from(keys::NAMES);
    let objects: Vec<_> = store
        .object_store()
        .list(Some(&prefix))
        .try_collect()
        .await
        .map_err(|e| CheckpointError::object(keys::NAMES, e))?;
    let mut entries = Vec::new();
    for meta in objects {
        let Some(name) = meta
            .location
            .as_ref()
            .strip_prefix("names/")
            .and_then(|n| CheckpointName::new(n).ok())
        else {
            continue;
        };
        let record = match read_name(store, &name).await {
            Ok(Some(r)) => Ok(r),
            // Removed since the listing.
            Ok(None) => continue,
            Err(e) => Err(e),
        };
        entries.push(NameEntry { name, record });
    }
    entries.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(entries)
}

/// Removes `name`; `false` when it did not exist.
pub async fn remove_name(store: &Store, name: &CheckpointName) -> Result<bool, NamesError> {
    let key = keys::name(name);
    match store.object_store().delete(&key).await {
        Ok(()) => Ok(true),
        Err(object_store::Error::NotFound { .. }) => Ok(false),
        Err(e) => Err(CheckpointError::object(key.as_ref(), e).into()),
    }
}

/// Removes every name that points at `id`, returning them.
pub async fn remove_names_of(
    store: &Store,
    id: &CheckpointId,
) -> Result<Vec<CheckpointName>, NamesError> {
    let mut removed = Vec::new();
    for entry in list_names(store).await? {
        if matches!(&entry.record, Ok(r) if &r.id == id) && remove_name(store, &entry.name).await? {
            removed.push(entry.name);
        }
    }
    Ok(removed)
}
