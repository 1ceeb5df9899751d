//! Taking a checkpoint: pause, save the complete VM state, write memory and state through the
//! storage-backend writer; with dirty tracking, also the dirty log, which lays the checkpoint out
//! unless a layout is given.

use crate::persist::dirty::PAGE_SIZE;
use crate::persist::dirty_tracker::{DirtyStats, DirtyTracker};
use crate::persist::state::StateBlobError;
use crate::vstate::vm::{Vm, VmError};
use std::time::Instant;
use thaw_store::store::StoreSpecError;
use thaw_store::{MemoryRegion, Store, WriteOptions, WriteSummary};

/// A checkpoint could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// Pausing the VM, reading its state, or dirty logging.
    #[error(transparent)]
    Vm(#[from] VmError),
    #[error(transparent)]
    State(#[from] StateBlobError),
    #[error("checkpoint store: {0}")]
    Store(#[from] thaw_store::CheckpointError),
    #[error("parent checkpoint id {id:?}: {source}")]
    BadParent {
        id: String,
        #[source]
        source: thaw_format::FormatError,
    },
}

type Result<T> = std::result::Result<T, CheckpointError>;

/// What a checkpoint did and how long each step took.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CheckpointOutcome {
    pub id: String,
    /// The manifest's digest (64 hex digits): pins exactly this checkpoint.
    pub digest: String,
    /// Whether the manifest was signed.
    pub signed: bool,
    /// Signal to all vCPUs parked.
    pub pause_ms: f64,
    /// Reading every piece of vCPU and VM state.
    pub save_state_ms: f64,
    /// Writing memory (zero-page detection, blocks, compression, upload) and the manifest.
    pub write_ms: f64,
    pub state_blob_bytes: usize,
    pub memory_bytes: u64,
    pub zero_pages: u64,
    pub stored_bytes: u64,
    /// Bytes this checkpoint uploaded (new segments and the manifest).
    pub uploaded_bytes: u64,
    pub blocks: usize,
    /// The checkpoint this one is incremental to; `None` for a full one.
    pub parent: Option<String>,
    /// What an incremental checkpoint wrote of its parent's pages.
    pub incremental: Option<IncrementalOutcome>,
    /// Dirty tracking before the checkpoint, when it ran.
    pub dirty: Option<DirtyStats>,
}

/// What an incremental checkpoint wrote.
#[derive(Debug, Clone, serde::Serialize)]
pub struct IncrementalOutcome {
    /// Pages the guest wrote since the parent.
    pub dirty_pages: u64,
    pub dirty_bytes: u64,
    /// Pages not written but read again and uploaded because their block held a dirty page.
    pub repacked_clean_pages: u64,
    /// The parent's blocks pointed at, not uploaded.
    pub kept_blocks: usize,
}

/// A tokio runtime for driving the async store from the synchronous vmm.
pub fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
}

/// Opens a store spec (directory, `file://`, `memory://`, `s3://bucket/prefix`).
pub fn open_store(spec: &str) -> std::result::Result<Store, StoreSpecError> {
    Store::open(spec)
}

/// Pauses the VM (if running), saves its state and memory to `store`. The VM stays paused: the
/// caller resumes it (the original VM goes on) or stops it.
pub fn checkpoint(
    vm: &Vm,
    rt: &tokio::runtime::Runtime,
    store: &Store,
    opts: &WriteOptions,
) -> Result<CheckpointOutcome> {
    checkpoint_inner(vm, rt, store, opts, None)
}

/// As [`checkpoint`], closing `tracker`'s last window at the pause: the dirty log is stored with
/// the checkpoint (`checkpoints/ID/dirty-log`) and gives its layout when `opts.layout` is empty.
pub fn checkpoint_with_dirty_log(
    vm: &Vm,
    rt: &tokio::runtime::Runtime,
    store: &Store,
    opts: &WriteOptions,
    tracker: DirtyTracker,
) -> Result<CheckpointOutcome> {
    checkpoint_inner(vm, rt, store, opts, Some(tracker))
}

fn checkpoint_inner(
    vm: &Vm,
    rt: &tokio::runtime::Runtime,
    store: &Store,
    opts: &WriteOptions,
    tracker: Option<DirtyTracker>,
) -> Result<CheckpointOutcome> {
    let t0 = Instant::now();
    vm.pause()?;
    let paused = Instant::now();
    let dirty = tracker.map(|t| t.finish(vm, paused)).transpose()?;
    let (log, stats) = match dirty {
        Some((log, stats)) => (Some(log), Some(stats)),
        None => (None, None),
    };
    let mut outcome = save_and_write(vm, t0, paused, |regions, blob| match &log {
        Some(log) => rt.block_on(thaw_store::dirty_log::write_checkpoint_with_dirty_log(
            store, regions, blob, opts, log,
        )),
        None => rt.block_on(thaw_store::write_checkpoint(store, regions, blob, opts)),
    })?;
    outcome.dirty = stats;
    Ok(outcome)
}

/// Saves the state of the VM paused at `paused` (the pause asked for at `t0`) and writes it
/// with its memory through `write`.
pub(crate) fn save_and_write(
    vm: &Vm,
    t0: Instant,
    paused: Instant,
    write: impl FnOnce(
        &[MemoryRegion<'_>],
        Vec<u8>,
    ) -> std::result::Result<WriteSummary, thaw_store::CheckpointError>,
) -> Result<CheckpointOutcome> {
    let t1 = Instant::now();
    let state = vm.save_state()?;
    let blob = state.encode()?;
    let t2 = Instant::now();
    let mem = vm.memory();
    let regions: Vec<MemoryRegion<'_>> = (0..mem.regions().len())
        .map(|i| MemoryRegion {
            guest_phys_addr: mem.regions()[i].guest_phys_addr,
            bytes: mem.region_bytes(i),
        })
        .collect();
    let blob_len = blob.len();
    let summary = write(&regions, blob)?;
    let t3 = Instant::now();
    let ms = |a: Instant, b: Instant| (b - a).as_secs_f64() * 1e3;
    Ok(CheckpointOutcome {
        id: summary.id.to_string(),
        digest: summary.digest.to_hex(),
        signed: summary.signed,
        pause_ms: ms(t0, paused),
        save_state_ms: ms(t1, t2),
        write_ms: ms(t2, t3),
        state_blob_bytes: blob_len,
        memory_bytes: mem.size(),
        zero_pages: summary.zero_pages,
        stored_bytes: summary.stored_bytes,
        uploaded_bytes: summary.uploaded_bytes,
        blocks: summary.blocks,
        parent: summary.incremental.as_ref().map(|i| i.parent.to_string()),
        incremental: summary.incremental.map(|i| IncrementalOutcome {
            dirty_pages: i.dirty_pages,
            dirty_bytes: i.dirty_pages * PAGE_SIZE,
            repacked_clean_pages: i.repacked_clean_pages,
            kept_blocks: i.kept_blocks,
        }),
        dirty: None,
    })
}
