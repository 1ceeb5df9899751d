//! The VMM side of the lazy-restore hand-off: register guest memory with userfaultfd and pass the
//! uffd plus ONE JSON message (thaw_format::handoff) over a Unix stream socket by SCM_RIGHTS.

use crate::vstate::memory::GuestMemory;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use thaw_format::handoff::{Handoff, RegionMapping};
use userfaultfd::{Uffd, UffdBuilder};
use vmm_sys_util::sock_ctrl_msg::ScmSocket;

/// Which fetch agent serves a restore.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentLocation {
    /// The fetch agent's code on a thread of this process.
    InProcess,
    /// A fetch agent process listening on this Unix socket.
    Socket(PathBuf),
}

impl std::fmt::Display for AgentLocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AgentLocation::InProcess => f.write_str("the in-process fetch agent"),
            AgentLocation::Socket(path) => write!(f, "fetch agent at {}", path.display()),
        }
    }
}

/// Guest memory could not be handed to a fetch agent, or the agent stopped serving it.
#[derive(Debug, thiserror::Error)]
pub enum HandoffError {
    #[error("cannot create a userfaultfd: {0}")]
    CreateUffd(#[source] userfaultfd::Error),
    #[error("cannot register guest memory {addr:#x}+{size:#x} with userfaultfd: {source}")]
    Register {
        addr: u64,
        size: u64,
        source: userfaultfd::Error,
    },
    #[error("cannot connect to {agent}: {source}")]
    Connect {
        agent: AgentLocation,
        source: std::io::Error,
    },
    #[error("cannot send the hand-off to the fetch agent: {0}")]
    Send(#[source] std::io::Error),
    #[error("cannot start {what}: {source}")]
    Start {
        what: &'static str,
        source: std::io::Error,
    },
    #[error("the in-process fetch agent failed: {0}")]
    InProcessAgent(#[source] fetch_agent::agent::AgentError),
    #[error("the in-process fetch agent panicked")]
    InProcessAgentPanicked,
    #[error("{0} exited; guest memory can no longer be served")]
    AgentGone(AgentLocation),
}

type Result<T> = std::result::Result<T, HandoffError>;

/// Page size of guest memory mappings.
pub(crate) const PAGE_SIZE: u64 = 4096;

/// Creates a userfaultfd and registers all guest memory with it in missing mode.
pub fn register(mem: &GuestMemory) -> Result<Uffd> {
    // Not user-mode-only: KVM touches guest memory from kernel context on the vCPU's behalf, and
    // those faults must reach the fetch agent too.
    let uffd = UffdBuilder::new()
        .close_on_exec(true)
        .non_blocking(true)
        .user_mode_only(false)
        .create()
        .map_err(HandoffError::CreateUffd)?;
    for r in mem.regions() {
        uffd.register(r.host_addr() as *mut libc::c_void, r.size as usize)
            .map_err(|source| HandoffError::Register {
                addr: r.host_addr(),
                size: r.size,
                source,
            })?;
    }
    Ok(uffd)
}

/// The hand-off message describing `mem`.
pub fn describe(mem: &GuestMemory, store: Option<String>, checkpoint: Option<String>) -> Handoff {
    let mut offset = 0;
    let mappings = mem
        .regions()
        .iter()
        .map(|r| {
            let m = RegionMapping {
                base_host_virt_addr: r.host_addr(),
                size: r.size,
                offset,
                page_size: PAGE_SIZE,
                guest_phys_addr: Some(r.guest_phys_addr),
            };
            offset += r.size;
            m
        })
        .collect();
    let mut h = Handoff::new(mappings);
    h.store = store;
    h.checkpoint = checkpoint;
    h
}

/// Sends the hand-off and the uffd in one message.
pub fn send(sock: &UnixStream, handoff: &Handoff, uffd: &Uffd) -> Result<()> {
    let msg = handoff.encode();
    let n = sock
        .send_with_fd(&msg[..], uffd.as_raw_fd())
        .map_err(|e| HandoffError::Send(e.into()))?;
    if n != msg.len() {
        // The fd went with the first bytes; the rest follows as plain data.
        use std::io::Write;
        (&*sock).write_all(&msg[n..]).map_err(HandoffError::Send)?;
    }
    Ok(())
}
