//! The checkpoints of one running VM, for incremental ones: KVM dirty logging stays on between
//! checkpoints, and for each checkpoint this VM produced or was restored from, the pages the
//! guest wrote since it. A checkpoint against one of them writes those pages and points at its
//! blocks for the rest (see `thaw_store::incremental`).
//!
//! Only guest writes are logged by KVM: a VM whose devices write guest memory from the vmm
//! (virtio queues and buffers) would lose those writes in a diff, so it is checkpointed in full.

use crate::persist::checkpoint::{save_and_write, CheckpointError, CheckpointOutcome};
use crate::persist::dirty::{DirtyConfig, PageSet};
use crate::persist::dirty_tracker::DirtyTracker;
use crate::vstate::vm::{Vm, VmError};
use std::collections::VecDeque;
use std::time::Instant;
use thaw_format::CheckpointId;
use thaw_store::{Store, WriteOptions};

/// Checkpoints remembered as possible parents (the most recent ones).
const MAX_PARENTS: usize = 64;

/// A checkpoint this VM produced or was restored from.
struct Known {
    id: String,
    /// The store it is in (its location): a child can point only at blocks of its own store.
    store: String,
    /// Pages the guest wrote since it was taken (or restored).
    written: PageSet,
}

/// What kind of checkpoint is asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Write all of memory.
    Full,
    /// Write what changed since the parent; an error if there is none.
    Diff,
    /// A diff when a parent in the same store exists, else full.
    Auto,
}

/// Why a checkpoint cannot be a diff against the parent asked for.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParentError {
    #[error("checkpoint {id} is not one this VM produced or was restored from (known: {known:?})")]
    Unknown { id: String, known: Vec<String> },
    #[error("the parent {id} is in the store {parent_store}, not {store}: a checkpoint points only at blocks of its own store")]
    OtherStore {
        id: String,
        parent_store: String,
        store: String,
    },
    #[error("this VM has no checkpoint yet and was not restored from one: there is nothing to write a diff against")]
    NoParent,
    #[error("this VM has virtio devices, whose writes to guest memory dirty logging does not see: only full checkpoints")]
    DeviceWrites,
}

/// Dirty logging of a VM and the checkpoints it can write diffs against.
pub struct Lineage {
    tracker: DirtyTracker,
    known: VecDeque<Known>,
}

impl Lineage {
    /// Turns dirty logging on (it may be on already: a restored VM has it from its first
    /// instruction). `restored_from` is the checkpoint (id, store location) the VM's memory
    /// equals where the guest has not written since logging began.
    pub fn start(
        vm: &Vm,
        config: DirtyConfig,
        restored_from: Option<(String, String)>,
    ) -> Result<Lineage, VmError> {
        let tracker = DirtyTracker::start(vm, config)?;
        let known = restored_from
            .map(|(id, store)| Known {
                id,
                store,
                written: PageSet::default(),
            })
            .into_iter()
            .collect();
        Ok(Lineage { tracker, known })
    }

    /// Closes a dirty-log window if one is due.
    pub fn poll(&mut self, vm: &Vm) -> Result<(), VmError> {
        self.tracker.poll(vm)
    }

    /// Pages the guest wrote since the last checkpoint (or since logging began), as of the
    /// last harvest.
    pub fn written_since_checkpoint(&self) -> u64 {
        self.tracker.written_since_cut()
    }

    /// The parent a checkpoint of `kind` into `store` (its location) gets: `requested`, else the
    /// latest known; `None` for a full checkpoint.
    pub fn parent(
        &self,
        vm: &Vm,
        store: &str,
        requested: Option<&str>,
        kind: Kind,
    ) -> Result<Option<String>, ParentError> {
        if kind == Kind::Full {
            return Ok(None);
        }
        let explicit = kind == Kind::Diff || requested.is_some();
        if vm.writes_guest_memory_itself() {
            return if explicit {
                Err(ParentError::DeviceWrites)
            } else {
                Ok(None)
            };
        }
        let found = match requested {
            Some(id) => Some(self.known.iter().find(|k| k.id == id).ok_or_else(|| {
                ParentError::Unknown {
                    id: id.to_string(),
                    known: self.known.iter().map(|k| k.id.clone()).collect(),
                }
            })?),
            None => self.known.back(),
        };
        match found {
            None if explicit => Err(ParentError::NoParent),
            None => Ok(None),
            Some(k) if k.store != store => {
                if explicit {
                    Err(ParentError::OtherStore {
                        id: k.id.clone(),
                        parent_store: k.store.clone(),
                        store: store.to_string(),
                    })
                } else {
                    tracing::info!(parent = %k.id, "the last checkpoint is in another store: writing a full one");
                    Ok(None)
                }
            }
            Some(k) => Ok(Some(k.id.clone())),
        }
    }

    /// Pauses the VM (if running) and checkpoints it into `store`: against `parent` (from
    /// [`Lineage::parent`]) writing only what the guest wrote since, else in full. Either way the
    /// pages written up to the pause are taken from the dirty log, and the new checkpoint
    /// becomes a possible parent. The VM stays paused.
    pub fn checkpoint(
        &mut self,
        vm: &Vm,
        rt: &tokio::runtime::Runtime,
        store: &Store,
        opts: &WriteOptions,
        parent: Option<&str>,
    ) -> Result<CheckpointOutcome, CheckpointError> {
        let t0 = Instant::now();
        vm.pause()?;
        let paused = Instant::now();
        let cut = self.tracker.cut(vm, paused)?;
        for k in &mut self.known {
            k.written.union_with(&cut.written);
        }
        let dirty = parent.and_then(|p| self.known.iter().find(|k| k.id == p));
        let mut outcome = match dirty {
            Some(k) => {
                let pages = k.written.pages();
                let parent_id = CheckpointId::new(k.id.clone()).map_err(|source| {
                    CheckpointError::BadParent {
                        id: k.id.clone(),
                        source,
                    }
                })?;
                let opts = WriteOptions {
                    parent: Some(parent_id),
                    ..opts.clone()
                };
                save_and_write(vm, t0, paused, |regions, blob| {
                    rt.block_on(thaw_store::write_incremental_checkpoint(
                        store,
                        regions,
                        blob,
                        &opts,
                        &pages,
                        Some(&cut.log),
                    ))
                })?
            }
            None => save_and_write(vm, t0, paused, |regions, blob| {
                rt.block_on(thaw_store::dirty_log::write_checkpoint_with_dirty_log(
                    store, regions, blob, opts, &cut.log,
                ))
            })?,
        };
        outcome.dirty = Some(cut.stats);
        self.known.push_back(Known {
            id: outcome.id.clone(),
            store: store.location().to_string(),
            written: PageSet::default(),
        });
        while self.known.len() > MAX_PARENTS {
            self.known.pop_front();
        }
        Ok(outcome)
    }
}
