//! Restoring a checkpoint into a fresh VM, eagerly (all memory first) or lazily (empty memory
//! registered with userfaultfd and handed to a page server; the vCPUs run at once).

use crate::error::{Error, Result};
use crate::persist::handoff;
use crate::persist::pageserver::InProcessServer;
use crate::persist::state::VmState;
use crate::vstate::memory::GuestMemory;
use crate::vstate::vm::{self, AbortHandle, Vm, VmConfig};
use futures::TryStreamExt;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;
use thaw_format::CheckpointId;
use thaw_store::{CheckpointReader, Store};
use userfaultfd::Uffd;

/// How guest memory comes back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// Read every block into memory, then run.
    Eager,
    /// Run at once; an in-process page server thread serves faults.
    Lazy,
    /// Run at once; the page server (fetch agent) listening on this socket serves faults.
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
    /// The in-process page server (lazy mode).
    pub page_server: Option<InProcessServer>,
    /// The socket to the page server (lazy and agent mode); dropping it ends the session.
    pub agent: Option<AgentLink>,
}

/// The hand-off connection to a page server. In agent mode a watcher thread notices the agent
/// exiting (the socket hangs up) and aborts the VM with [`Error::AgentGone`] instead of letting
/// it hang or run on with memory nobody serves. Dropping the link stops the watcher and closes
/// the connection.
pub struct AgentLink {
    stream: UnixStream,
    stop: Arc<AtomicBool>,
    watcher: Option<JoinHandle<()>>,
}

impl AgentLink {
    fn plain(stream: UnixStream) -> Self {
        AgentLink {
            stream,
            stop: Arc::new(AtomicBool::new(false)),
            watcher: None,
        }
    }

    /// Watches `stream` for the agent at `path` hanging up. The watcher keeps the vmm's copy of
    /// `uffd` open until then, so a fault arriving after the agent died waits (instead of
    /// reading zeros) until the VM is aborted; on hang-up it records the error first and then
    /// closes the uffd, which releases the waiting faults so the vCPU threads can be stopped.
    fn watched(stream: UnixStream, path: &Path, uffd: Uffd, abort: AbortHandle) -> Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let fd = stream.as_raw_fd();
        let path = path.to_path_buf();
        let flag = stop.clone();
        let watcher = std::thread::Builder::new()
            .name("agent-watch".into())
            .spawn(move || {
                let _uffd = uffd;
                while !flag.load(Ordering::Acquire) {
                    let mut p = libc::pollfd {
                        fd,
                        events: libc::POLLRDHUP,
                        revents: 0,
                    };
                    // SAFETY: `p` is one valid pollfd for the duration of the call; `fd` stays
                    // open while this thread runs because `AgentLink::drop` joins it before
                    // the stream closes.
                    let n = unsafe { libc::poll(&mut p, 1, 100) };
                    if n > 0 && p.revents & (libc::POLLRDHUP | libc::POLLHUP | libc::POLLERR) != 0 {
                        let e = Error::AgentGone(path);
                        tracing::error!("{e}");
                        abort.abort(e);
                        return;
                    }
                }
            })
            .map_err(Error::io("spawn the agent watcher thread"))?;
        Ok(AgentLink {
            stream,
            stop,
            watcher: Some(watcher),
        })
    }

    /// The connection to the page server.
    pub fn stream(&self) -> &UnixStream {
        &self.stream
    }
}

impl Drop for AgentLink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(w) = self.watcher.take() {
            let _ = w.join();
        }
    }
}

/// Opens a checkpoint's manifest and decodes its state blob.
pub fn open(
    rt: &tokio::runtime::Runtime,
    store: &Store,
    id: &str,
) -> Result<(CheckpointReader, VmState)> {
    let cid: CheckpointId = id
        .parse()
        .map_err(|e| Error::Store(format!("checkpoint id {id:?}: {e}")))?;
    let reader = rt
        .block_on(CheckpointReader::open(store, &cid))
        .map_err(|e| Error::Store(e.to_string()))?;
    let state = VmState::decode(reader.state_blob())?;
    let layout: Vec<(u64, u64)> = reader
        .manifest()
        .regions
        .iter()
        .map(|r| (r.guest_phys_addr, r.size))
        .collect();
    if layout != state.memory {
        return Err(Error::Incompatible(format!(
            "manifest memory layout {layout:x?} differs from the VM state's {:x?}",
            state.memory
        )));
    }
    Ok((reader, state))
}

/// Reads every stored block into `mem` (zero pages are already zero in fresh memory).
pub fn fill_memory(
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
        while let Some(block) = blocks
            .try_next()
            .await
            .map_err(|e| Error::Store(e.to_string()))?
        {
            for (page, bytes) in block.pages() {
                let off = page * ps as u64;
                let (ri, &(start, _)) = starts
                    .iter()
                    .enumerate()
                    .find(|(_, (s, len))| off >= *s && off < s + len)
                    .ok_or_else(|| Error::Store(format!("page {page} outside memory")))?;
                let at = (off - start) as usize;
                mem.region_bytes_mut(ri)[at..at + ps].copy_from_slice(bytes);
            }
        }
        Ok::<(), Error>(())
    })
}

/// Restores checkpoint `id` from `store` and starts its vCPUs.
///
/// Everything that can fail (manifest, state blob, CPU features, memory, KVM state) is checked
/// before the first vCPU runs; on error no VM is left behind.
pub fn restore(
    config: &VmConfig,
    rt: &tokio::runtime::Runtime,
    store: &Store,
    store_spec: &str,
    id: &str,
    mode: &Mode,
) -> Result<Restored> {
    let t0 = Instant::now();
    let (reader, state) = open(rt, store, id)?;
    let tc = Instant::now();
    vm::check_host(&config.kvm_path, &state)?;
    let t1 = Instant::now();
    let mut mem = GuestMemory::new(&state.memory)?;
    let mut page_server = None;
    let mut agent = None;
    let mut kept_uffd = None;
    match mode {
        Mode::Eager => fill_memory(rt, &reader, &mut mem)?,
        Mode::Lazy | Mode::Agent(_) => {
            let uffd = handoff::register(&mem)?;
            let msg = handoff::describe(&mem, Some(store_spec.to_string()), Some(id.to_string()));
            let sock = match mode {
                Mode::Agent(path) => UnixStream::connect(path).map_err(Error::io(format!(
                    "connect to page server {}",
                    path.display()
                )))?,
                _ => {
                    let (server, sock) = InProcessServer::spawn()?;
                    page_server = Some(server);
                    sock
                }
            };
            handoff::send(&sock, &msg, &uffd)?;
            if matches!(mode, Mode::Agent(_)) {
                // Kept until the agent hangs up (see `AgentLink::watched`).
                kept_uffd = Some(uffd);
            } else {
                // The page server holds its own copy of the uffd now; ours may close.
                drop(uffd);
            }
            agent = Some(sock);
        }
    }
    let t2 = Instant::now();
    let mut vm = Vm::restore(config, &state, mem)?;
    let agent = match (mode, agent, kept_uffd) {
        (Mode::Agent(path), Some(sock), Some(uffd)) => {
            Some(AgentLink::watched(sock, path, uffd, vm.abort_handle())?)
        }
        (_, sock, _) => sock.map(AgentLink::plain),
    };
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
    if page_server.is_some() {
        // The in-process server's socket stays open as long as the VM runs.
    }
    Ok(Restored {
        vm,
        state,
        timings,
        page_server,
        agent: if matches!(mode, Mode::Eager) {
            None
        } else {
            agent
        },
    })
}
