//! thaw's fetch agent: a process beside the VMM that takes a restored VM's
//! userfaultfd and serves each fault by fetching the faulting locality block
//! (host cache, block server, or the object store), verifying and
//! decompressing it, and installing all its pages; it prefetches neighbours
//! in the checkpoint's prefetch order and may stream the rest.
//!
//! [`policy`] decides, free of I/O (events in, actions out, the clock passed
//! in). The drivers around it: [`restore`] (one restore's fault thread and
//! fetch tasks), [`agent`] (the socket, many restores), [`fetch`] and
//! [`source`] (priorities, fail-over, verification), [`cache`] (the host
//! cache with single flight), [`install`] (userfaultfd ioctls).

pub mod agent;
pub mod cache;
#[cfg(feature = "block-server")]
pub mod cli;
pub mod fetch;
pub mod guest;
pub(crate) mod handoff;
pub mod hangup;
#[cfg(feature = "block-server")]
pub(crate) mod http;
pub(crate) mod install;
pub mod local_socket;
pub mod metrics;
pub mod policy;
pub mod restore;
pub mod source;
pub mod trace;

pub use agent::{Agent, AgentConfig};
