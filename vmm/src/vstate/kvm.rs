//! Opening KVM, and the error of anything KVM refuses.

use kvm_ioctls::{Cap, Kvm};
use std::path::{Path, PathBuf};

/// Where the KVM device is unless configured otherwise.
pub const DEFAULT_KVM_PATH: &str = "/dev/kvm";

/// KVM could not be opened, lacks something thaw needs, or refused an ioctl.
#[derive(Debug, thiserror::Error)]
pub enum KvmError {
    #[error("cannot open KVM device {path}: {source}")]
    Open {
        path: PathBuf,
        source: kvm_ioctls::Error,
    },
    #[error("cannot open KVM device {0}: the path contains a NUL byte")]
    NulInPath(PathBuf),
    #[error("KVM lacks a capability thaw needs: {0}")]
    Capability(&'static str),
    #[error("KVM ioctl {op} failed: {source}")]
    Ioctl {
        op: &'static str,
        source: kvm_ioctls::Error,
    },
    #[error("{what} has more entries than a KVM table holds: {source}")]
    TableTooLarge {
        what: &'static str,
        source: vmm_sys_util::fam::Error,
    },
}

impl KvmError {
    /// Wraps a failed ioctl's error with the ioctl's name: `.map_err(KvmError::ioctl("KVM_RUN"))`.
    pub(crate) fn ioctl(op: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> KvmError {
        move |source| KvmError::Ioctl { op, source }
    }

    /// Wraps the error of building a KVM table (CPUID, MSRs, XSAVE) with what it held.
    pub(crate) fn table(what: &'static str) -> impl FnOnce(vmm_sys_util::fam::Error) -> KvmError {
        move |source| KvmError::TableTooLarge { what, source }
    }
}

/// Opens KVM and checks it has what thaw needs.
pub(crate) fn open_kvm(path: &Path) -> Result<Kvm, KvmError> {
    use std::os::unix::ffi::OsStrExt;
    let cpath = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| KvmError::NulInPath(path.to_path_buf()))?;
    let kvm = Kvm::new_with_path(cpath).map_err(|source| KvmError::Open {
        path: path.to_path_buf(),
        source,
    })?;
    if kvm.get_api_version() != 12 {
        return Err(KvmError::Capability("KVM API version 12"));
    }
    for (cap, name) in [
        (Cap::Irqchip, "in-kernel irqchip"),
        (Cap::Pit2, "PIT2"),
        (Cap::UserMemory, "user memory"),
        (Cap::ImmediateExit, "immediate exit"),
        (Cap::VcpuEvents, "vCPU events"),
        (Cap::Xsave, "XSAVE"),
        (Cap::AdjustClock, "KVM clock get/set"),
        (Cap::Irqfd, "irqfd"),
        (Cap::SetTssAddr, "TSS address"),
        (Cap::ExtCpuid, "CPUID2"),
    ] {
        if !kvm.check_extension(cap) {
            return Err(KvmError::Capability(name));
        }
    }
    Ok(kvm)
}
