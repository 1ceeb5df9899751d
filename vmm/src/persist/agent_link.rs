//! The vmm's connection to the fetch agent that serves a lazily restored VM's memory.
//!
//! A lazy restore hands guest memory (its userfaultfd and a description, see
//! [`super::handoff`]) to a fetch agent over a Unix stream socket and keeps the connection open
//! while the VM runs; closing it ends the agent's session. The agent is either a separate process
//! listening on a socket (`thaw agent`, `restore --agent SOCKET`) or the fetch agent's own code
//! run in this process on its own thread and tokio runtime, over a socket pair, serving the
//! checkpoint's store: the hand-off, fault handling, prefetching and streaming are the product's
//! either way.
//!
//! While the VM runs, a watcher thread notices the agent hanging up and aborts the VM (which stops
//! its vCPUs) instead of letting it hang or run on with memory nobody serves: with the reason the
//! agent wrote before hanging up ([`AgentFailed`], see [`fetch_agent::hangup`]), or
//! [`HandoffError::AgentGone`] when it wrote none (it died).
//!
//! The vmm's copy of the userfaultfd stays open until the VM's vCPUs are known to be stopped
//! ([`AgentLink::finish`]); a link dropped without that keeps it open until the process exits.
//! Closing the last copy of a userfaultfd while pages are missing would make the kernel fill them
//! with zeros on the next fault: a guest must never run on memory that did not arrive.

use crate::persist::handoff::{self, AgentLocation, HandoffError};
use crate::vstate::vm::AbortHandle;
use fetch_agent::agent::{Agent, AgentConfig};
use fetch_agent::fetch::FetchConfig;
use fetch_agent::restore::RestoreReport;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use thaw_format::handoff::Handoff;
use thaw_store::Store;
use userfaultfd::Uffd;

type Result<T> = std::result::Result<T, HandoffError>;

/// Bound of the in-process agent's block cache. One restore gains little from caching blocks it
/// has installed already; a small cache keeps the host memory a restore costs close to the
/// guest's own.
const IN_PROCESS_CACHE_BYTES: u64 = 64 << 20;

/// The fetch agent failed the restore and said why before hanging up (e.g. a block no source
/// delivered); the VM was stopped.
#[derive(Debug, thiserror::Error)]
#[error("{agent} failed: {reason}")]
pub struct AgentFailed {
    pub agent: AgentLocation,
    pub reason: String,
}

/// The connection to the fetch agent of one restore. Dropping it (or [`AgentLink::finish`])
/// closes the connection, which ends the agent's session; stop the VM first.
pub struct AgentLink {
    location: AgentLocation,
    stream: Option<UnixStream>,
    /// The vmm's copy of the guest memory's userfaultfd, from [`AgentLink::watch`] on.
    uffd: Option<Uffd>,
    stop: Arc<AtomicBool>,
    watcher: Option<JoinHandle<()>>,
    in_process: Option<JoinHandle<Result<RestoreReport>>>,
}

impl AgentLink {
    /// Connects to the fetch agent listening at `path`.
    pub(crate) fn connect(path: &Path) -> Result<AgentLink> {
        let location = AgentLocation::Socket(path.to_path_buf());
        match UnixStream::connect(path) {
            Ok(stream) => Ok(AgentLink::new(location, stream, None)),
            Err(source) => Err(HandoffError::Connect {
                agent: location,
                source,
            }),
        }
    }

    /// Starts a fetch agent in this process that serves hand-offs naming `spec` from `store`
    /// (the store the checkpoint was opened from), and connects to it.
    pub(crate) fn in_process(spec: &str, store: &Store) -> Result<AgentLink> {
        let (vmm_end, agent_end) = UnixStream::pair().map_err(|source| HandoffError::Start {
            what: "the in-process fetch agent (socket pair)",
            source,
        })?;
        let spec = spec.to_owned();
        let store = store.clone();
        let thread = std::thread::Builder::new()
            .name("fetch-agent".into())
            .spawn(move || serve_in_process(agent_end, &spec, store))
            .map_err(|source| HandoffError::Start {
                what: "the in-process fetch agent's thread",
                source,
            })?;
        Ok(AgentLink::new(
            AgentLocation::InProcess,
            vmm_end,
            Some(thread),
        ))
    }

    fn new(
        location: AgentLocation,
        stream: UnixStream,
        in_process: Option<JoinHandle<Result<RestoreReport>>>,
    ) -> AgentLink {
        AgentLink {
            location,
            stream: Some(stream),
            uffd: None,
            stop: Arc::new(AtomicBool::new(false)),
            watcher: None,
            in_process,
        }
    }

    fn stream(&self) -> &UnixStream {
        self.stream.as_ref().expect("the stream lives until drop")
    }

    /// Hands guest memory to the agent: the description and the userfaultfd.
    pub(crate) fn hand_off(&self, message: &Handoff, uffd: &Uffd) -> Result<()> {
        handoff::send(self.stream(), message, uffd)
    }

    /// Watches the connection for the agent hanging up and keeps the vmm's copy of `uffd`, so a
    /// fault arriving after the agent hung up waits (instead of reading zeros) until the VM is
    /// stopped. On hang-up the watcher aborts the VM through `abort` with the agent's reason (or
    /// [`HandoffError::AgentGone`]); the VM's next event stops its vCPUs.
    pub(crate) fn watch(&mut self, uffd: Uffd, abort: AbortHandle) -> Result<()> {
        self.uffd = Some(uffd);
        let fd = self.stream().as_raw_fd();
        let location = self.location.clone();
        let flag = self.stop.clone();
        let watcher = std::thread::Builder::new()
            .name("agent-watch".into())
            .spawn(move || {
                let mut said = Vec::new();
                while !flag.load(Ordering::Acquire) {
                    let mut p = libc::pollfd {
                        fd,
                        events: libc::POLLIN | libc::POLLRDHUP,
                        revents: 0,
                    };
                    // SAFETY: `p` is one valid pollfd for the duration of the call; `fd` stays
                    // open while this thread runs because `AgentLink::shut_down` joins it before
                    // the stream closes.
                    let n = unsafe { libc::poll(&mut p, 1, 100) };
                    if n <= 0 {
                        continue;
                    }
                    let open = read_available(fd, &mut said);
                    let hung_up =
                        p.revents & (libc::POLLRDHUP | libc::POLLHUP | libc::POLLERR) != 0;
                    let reason = fetch_agent::hangup::parse(&said);
                    if reason.is_none() && open && !hung_up {
                        continue;
                    }
                    match reason {
                        Some(reason) => {
                            let e = AgentFailed {
                                agent: location,
                                reason,
                            };
                            tracing::error!("{e}");
                            abort.abort(e);
                        }
                        None => {
                            let e = HandoffError::AgentGone(location);
                            tracing::error!("{e}");
                            abort.abort(e);
                        }
                    }
                    return;
                }
            })
            .map_err(|source| HandoffError::Start {
                what: "the thread watching the fetch agent",
                source,
            })?;
        self.watcher = Some(watcher);
        Ok(())
    }

    /// Closes the connection, ending the agent's session, and for the in-process agent waits
    /// for it to finish and returns what it did; then closes the vmm's copy of the userfaultfd.
    /// Only once the VM's vCPUs have stopped ([`crate::vstate::vm::Vm::stop`] returned Ok): its
    /// memory is no longer served after this.
    pub fn finish(mut self) -> Result<Option<RestoreReport>> {
        let ended = self.shut_down();
        drop(self.uffd.take());
        match ended {
            None => Ok(None),
            Some(Ok(Ok(report))) => Ok(Some(report)),
            Some(Ok(Err(e))) => Err(e),
            Some(Err(_)) => Err(HandoffError::InProcessAgentPanicked),
        }
    }

    /// Stops the watcher, closes the connection, and joins the in-process agent.
    fn shut_down(&mut self) -> Option<std::thread::Result<Result<RestoreReport>>> {
        self.stop.store(true, Ordering::Release);
        if let Some(w) = self.watcher.take() {
            let _ = w.join();
        }
        drop(self.stream.take());
        self.in_process.take().map(|t| t.join())
    }
}

impl Drop for AgentLink {
    fn drop(&mut self) {
        self.shut_down();
        if let Some(uffd) = self.uffd.take() {
            // Not known to be safe to close (see the module docs): kept open until the process
            // exits.
            tracing::debug!("keeping the userfaultfd of a restore that did not finish open");
            std::mem::forget(uffd);
        }
    }
}

/// Reads what the agent sent without blocking, keeping at most one report line's worth; false
/// once the agent closed its end.
fn read_available(fd: RawFd, said: &mut Vec<u8>) -> bool {
    let mut buf = [0u8; 4096];
    loop {
        // SAFETY: recv into a live buffer of the length passed; MSG_DONTWAIT so it never blocks;
        // `fd` is open (see the caller).
        let got = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) };
        match got {
            0 => return false,
            n if n < 0 => {
                let e = std::io::Error::last_os_error();
                return matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted
                );
            }
            n => {
                let room = fetch_agent::hangup::MAX_LINE.saturating_sub(said.len());
                said.extend_from_slice(&buf[..(n as usize).min(room)]);
            }
        }
    }
}

/// The in-process agent's thread: a tokio runtime of its own and an agent that knows only the
/// checkpoint's store, serving the one connection until the vmm closes it.
fn serve_in_process(conn: UnixStream, spec: &str, store: Store) -> Result<RestoreReport> {
    // One runtime thread, as `thaw agent` runs by default: a fetch passes between tasks, and on
    // one thread each hand-over is a local wake-up.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("fetch-agent-io")
        .enable_all()
        .build()
        .map_err(|source| HandoffError::Start {
            what: "the in-process fetch agent's runtime",
            source,
        })?;
    let agent = Agent::new(
        AgentConfig {
            store: None,
            allowed_stores: Vec::new(),
            allowed_uids: Vec::new(),
            checkpoint: None,
            // The vmm's hand-off pins the digest of the manifest it verified: nothing else is
            // served, so no key is needed here.
            trust: thaw_format::ManifestTrust::Keys(Vec::new()),
            block_servers: Vec::new(),
            policy: Default::default(),
            fetch: FetchConfig::default(),
            cache_bytes: IN_PROCESS_CACHE_BYTES,
            trace_dir: None,
        },
        runtime.handle().clone(),
    );
    agent.register_store(spec, store);
    agent.handle(conn).map_err(|e| {
        tracing::error!("in-process fetch agent: {e}");
        HandoffError::InProcessAgent(e)
    })
}
