//! Errors of the vmm library. Every variant names what failed in words a user can act on.

use std::path::PathBuf;

/// Result alias for the vmm crate.
pub type Result<T> = std::result::Result<T, Error>;

/// Everything that can go wrong while building, running, checkpointing or restoring a VM.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot open KVM device {path}: {source}")]
    KvmOpen {
        path: PathBuf,
        source: kvm_ioctls::Error,
    },
    #[error("KVM lacks a capability thaw needs: {0}")]
    KvmCapability(&'static str),
    #[error("KVM ioctl {op} failed: {source}")]
    Kvm {
        op: &'static str,
        source: kvm_ioctls::Error,
    },
    #[error("{op} failed: {source}")]
    Io { op: String, source: std::io::Error },
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("guest memory too small: {what} needs {needed} bytes, the VM has {available}")]
    MemoryTooSmall {
        what: String,
        needed: u64,
        available: u64,
    },
    #[error("guest address {addr:#x} (+{len} bytes) is outside guest memory")]
    GuestAddress { addr: u64, len: u64 },
    #[error("not a bootable kernel: {0}")]
    Kernel(String),
    #[error("corrupt or unsupported VM state blob: {0}")]
    StateBlob(String),
    #[error("this host's CPU lacks feature {feature}, which the checkpoint requires (it was taken on a CPU with it; checkpoint with a CPU baseline to restore on mixed hosts)")]
    MissingCpuFeature { feature: String },
    #[error("checkpoint does not match this VM: {0}")]
    Incompatible(String),
    #[error("vCPU {cpu}: {msg}")]
    Vcpu { cpu: usize, msg: String },
    #[error("guest stopped: {0}")]
    Guest(String),
    #[error("timed out: {0}")]
    Timeout(String),
    #[error("userfaultfd: {0}")]
    Uffd(String),
    #[error("hand-off to the fetch agent: {0}")]
    Handoff(String),
    #[error("{0} exited; guest memory can no longer be served")]
    AgentGone(crate::persist::agent_link::AgentLocation),
    #[error("checkpoint store: {0}")]
    Store(String),
}

impl Error {
    /// Wraps a kvm-ioctls error with the operation that produced it.
    pub fn kvm(op: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> Error {
        move |source| Error::Kvm { op, source }
    }

    /// Wraps an I/O error with the operation that produced it.
    pub fn io(op: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
        let op = op.into();
        move |source| Error::Io { op, source }
    }
}
