//! Restoring a checkpoint into a fresh VM, eagerly (all memory first) or lazily (empty memory
//! registered with userfaultfd and handed to a fetch agent, in this process or another; the
//! vCPUs run at once).

use crate::persist::agent_link::AgentLink;
use crate::persist::handoff::{self, HandoffError};
use crate::persist::state::{StateBlobError, VmState};
use crate::vstate::memory::{GuestMemory, MemoryError};
use crate::vstate::vm::{self, Vm, VmConfig, VmError};
use futures::TryStreamExt;
use std::path::PathBuf;
use std::time::Instant;
use thaw_format::{CheckpointId, FormatError, ManifestTrust};
use thaw_store::{CheckpointReader, Store};

/// A checkpoint could not be restored.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error("checkpoint store: checkpoint id {id:?}: {source}")]
    BadId { id: String, source: FormatError },
    #[error("checkpoint store: {0}")]
    Store(#[from] thaw_store::CheckpointError),
    #[error("corrupt or unsupported VM state blob: {0}")]
    State(#[from] StateBlobError),
    #[error("checkpoint does not match this VM: manifest memory layout {manifest:x?} differs from the VM state's {state:x?}")]
    LayoutMismatch {
        manifest: Vec<(u64, u64)>,
        state: Vec<(u64, u64)>,
    },
    #[error("checkpoint store: page {0} lies outside guest memory")]
    PageOutsideMemory(u64),
    /// Building the VM, checking this host's CPU, writing state into KVM, starting vCPUs.
    #[error(transparent)]
    Vm(#[from] VmError),
    #[error(transparent)]
    Memory(#[from] MemoryError),
    #[error(transparent)]
    Handoff(#[from] HandoffError),
}

type Result<T> = std::result::Result<T, RestoreError>;

/// How guest memory comes back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RestoreMode {
    /// Read every block into memory, then run.
    Eager,
    /// Run at once; the fetch agent's code, run in this process, serves faults from the
    /// checkpoint's store.
    Lazy,
    /// Run at once; the fetch agent listening on this Unix socket serves faults.
    Agent(PathBuf),
}

/// How long the steps of a restore took.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct RestoreTimings {
    /// Opening the manifest and decoding and checking the state blob.
    pub open_ms: f64,
    /// Of open_ms: checking this host's CPU features against the checkpoint's.
    pub check_host_ms: f64,
    /// Eager: reading all memory. Lazy: mapping, registering and handing off.
    pub memory_ms: f64,
    /// Creating the VM and writing all state into KVM.
    pub state_ms: f64,
    /// From the start of the restore call until the vCPU threads run (memory and state ready).
    pub resume_ms: f64,
}

/// A restored, running VM.
pub struct Restored {
    pub vm: Vm,
    pub state: VmState,
    pub timings: RestoreTimings,
    /// The fetch agent serving guest memory (lazy and agent mode). Dropping it, or
    /// [`AgentLink::finish`], ends the agent's session: stop the VM first.
    pub agent: Option<AgentLink>,
}

/// Opens a checkpoint's manifest under `trust` and decodes its state blob.
/// The VM state of checkpoint `id`, read and checked as a restore reads it (`thaw cpu check`).
pub fn read_state(
    rt: &tokio::runtime::Runtime,
    store: &Store,
    id: &str,
    trust: &ManifestTrust,
) -> Result<VmState> {
    open(rt, store, id, trust).map(|(_, state)| state)
}

pub(crate) fn open(
    rt: &tokio::runtime::Runtime,
    store: &Store,
    id: &str,
    trust: &ManifestTrust,
) -> Result<(CheckpointReader, VmState)> {
    let cid: CheckpointId = id.parse().map_err(|source| RestoreError::BadId {
        id: id.to_string(),
        source,
    })?;
    let reader = rt.block_on(CheckpointReader::open(store, &cid, trust))?;
    let state = VmState::decode(reader.state_blob()?)?;
    let layout: Vec<(u64, u64)> = reader
        .manifest()
        .regions
        .iter()
        .map(|r| (r.guest_phys_addr, r.size))
        .collect();
    if layout != state.memory {
        return Err(RestoreError::LayoutMismatch {
            manifest: layout,
            state: state.memory,
        });
    }
    Ok((reader, state))
}

/// Reads every stored block into `mem` (zero pages are already zero in fresh memory).
pub(crate) fn fill_memory(
    rt: &tokio::runtime::Runtime,
    reader: &CheckpointReader,
    mem: &mut GuestMemory,
) -> Result<()> {
    let ps = reader.manifest().page_size as usize;
    let starts: Vec<(u64, u64)> = {
        let mut off = 0;
        mem.regions()
            .iter()
            .map(|r| {
                let s = (off, r.size);
                off += r.size;
                s
            })
            .collect()
    };
    rt.block_on(async {
        let order = reader.manifest().prefetch_order.clone();
        let mut blocks = reader.fetch_blocks(order, 8);
        while let Some(block) = blocks.try_next().await? {
            for (page, bytes) in block.pages() {
                let off = page * ps as u64;
                let (ri, &(start, _)) = starts
                    .iter()
                    .enumerate()
                    .find(|(_, (s, len))| off >= *s && off < s + len)
                    .ok_or(RestoreError::PageOutsideMemory(page))?;
                let at = (off - start) as usize;
                mem.region_bytes_mut(ri)[at..at + ps].copy_from_slice(bytes);
            }
        }
        Ok::<(), RestoreError>(())
    })
}

/// Restores checkpoint `id` from `store` and starts its vCPUs.
///
/// Everything that can fail (manifest and its trust, state blob, CPU features, memory, KVM
/// state) is checked before the first vCPU runs; on error no VM is left behind. A lazy restore's
/// fetch agent is told the digest of the manifest verified here and serves memory from no other.
pub fn restore(
    config: &VmConfig,
    rt: &tokio::runtime::Runtime,
    store: &Store,
    store_spec: &str,
    id: &str,
    trust: &ManifestTrust,
    mode: &RestoreMode,
) -> Result<Restored> {
    restore_with(config, rt, store, store_spec, id, trust, mode, false)
}

/// As [`restore`], with KVM dirty logging on before the vCPUs first run when `dirty_log` is
/// set: every page the restored guest writes is logged, so its checkpoints can be incremental
/// to the one restored (see [`crate::persist::lineage`]).
#[allow(clippy::too_many_arguments)]
pub fn restore_with(
    config: &VmConfig,
    rt: &tokio::runtime::Runtime,
    store: &Store,
    store_spec: &str,
    id: &str,
    trust: &ManifestTrust,
    mode: &RestoreMode,
    dirty_log: bool,
) -> Result<Restored> {
    let t0 = Instant::now();
    let (reader, state) = open(rt, store, id, trust)?;
    let tc = Instant::now();
    vm::check_host(&config.kvm_path, &state)?;
    let t1 = Instant::now();
    let mut mem = GuestMemory::new(&state.memory)?;
    let mut lazy = None;
    match mode {
        RestoreMode::Eager => fill_memory(rt, &reader, &mut mem)?,
        RestoreMode::Lazy | RestoreMode::Agent(_) => {
            let uffd = handoff::register(&mem)?;
            let mut msg =
                handoff::describe(&mem, Some(store_spec.to_string()), Some(id.to_string()));
            msg.manifest_digest = Some(reader.digest().to_hex());
            let link = match mode {
                RestoreMode::Agent(path) => AgentLink::connect(path)?,
                _ => AgentLink::in_process(store_spec, store)?,
            };
            link.hand_off(&msg, &uffd)?;
            lazy = Some((link, uffd));
        }
    }
    let t2 = Instant::now();
    let mut vm = Vm::restore(config, &state, mem)?;
    let agent = match lazy {
        Some((mut link, uffd)) => {
            // The vmm's copy of the uffd is kept until the agent hangs up (see AgentLink::watch).
            link.watch(uffd, vm.abort_handle())?;
            Some(link)
        }
        None => None,
    };
    if dirty_log {
        vm.set_dirty_log(true)?;
    }
    let t3 = Instant::now();
    vm.start()?;
    let t4 = Instant::now();
    let ms = |a: Instant, b: Instant| (b - a).as_secs_f64() * 1e3;
    let timings = RestoreTimings {
        open_ms: ms(t0, t1),
        check_host_ms: ms(tc, t1),
        memory_ms: ms(t1, t2),
        state_ms: ms(t2, t3),
        resume_ms: ms(t0, t4),
    };
    Ok(Restored {
        vm,
        state,
        timings,
        agent,
    })
}
