//! Booting guests: the built-in test guest ([`testguest`]) and Linux ([`linux`]).

pub mod linux;
pub mod testguest;

use crate::vstate::kvm::KvmError;
use crate::vstate::memory::MemoryError;
use crate::vstate::vm::VmError;
use std::path::PathBuf;

/// A guest could not be booted.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error(transparent)]
    Vm(#[from] VmError),
    #[error(transparent)]
    Memory(#[from] MemoryError),
    #[error(transparent)]
    Kvm(#[from] KvmError),
    #[error("invalid configuration: the test guest runs on 1 to {max} vCPUs, not {vcpus}", max = testguest::MAX_VCPUS)]
    TestGuestVcpus { vcpus: u32 },
    #[error("invalid configuration: a test guest timer of {hz} Hz (1 to {max} Hz supported)")]
    TimerRate { hz: u32, max: u32 },
    #[error("guest memory too small: {what} needs {needed} bytes, the VM has {available}")]
    MemoryTooSmall {
        what: String,
        needed: u64,
        available: u64,
    },
    #[error("the test guest image is {0} bytes, more than the 512 KiB it is loaded into")]
    ImageTooLarge(usize),
    #[error("invalid test guest device work: {0}")]
    DeviceWork(#[from] testguest::DeviceWorkError),
    #[error("cannot read {what} {path}: {source}")]
    Read {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "not a bootable kernel: {path} is neither a bzImage ({bzimage}) nor an ELF vmlinux ({elf})"
    )]
    NotAKernel {
        path: PathBuf,
        bzimage: linux_loader::loader::Error,
        #[source]
        elf: linux_loader::loader::Error,
    },
    #[error("kernel command line {cmdline:?}: {source}")]
    Cmdline {
        cmdline: String,
        source: linux_loader::cmdline::Error,
    },
    #[error("cannot write the kernel command line into guest memory: {0}")]
    WriteCmdline(#[source] linux_loader::loader::Error),
    #[error("cannot write the Linux boot parameters (zero page): {0}")]
    BootParams(#[source] linux_loader::configurator::Error),
}
