//! thaw's virtual machine monitor on KVM: boots the test guest (or Linux), pauses it at any
//! moment, saves its complete state, and restores it in a fresh process eagerly or lazily through
//! userfaultfd.
//!
//! Laid out as Firecracker's `src/vmm` is:
//!
//! - [`arch`]: x86-64 without a VM around it: CPUID and the features a checkpoint needs
//!   ([`arch::cpuid`]), segment descriptors, identity-mapping page tables, the Linux boot protocol
//!   (zero page, e820, entry registers), and the few instructions a software KVM cannot emulate.
//! - [`vstate`]: the KVM objects of a running VM: opening KVM ([`vstate::kvm`]), guest memory
//!   ([`vstate::memory`]), the VM ([`vstate::vm`]), its vCPU threads and their saved state.
//! - [`devices`]: the port I/O bus and what is on it: COM1 ([`devices::serial`]), the CMOS
//!   real-time clock ([`devices::cmos`]), the i8042 reset line, and for the test guest its report
//!   port.
//! - [`persist`]: checkpoints: the VM state blob ([`persist::state`], framed by
//!   `thaw_format::envelope`), taking a checkpoint ([`persist::checkpoint`]) with its dirty-page
//!   log, restoring one ([`persist::restore`]), and the hand-off of guest memory to a fetch agent
//!   ([`persist::handoff`]).
//! - [`boot`]: what runs in a VM: the built-in test guest ([`boot::testguest`]: loading, running
//!   it to its checksums, the host-side model of them) and Linux ([`boot::linux`]).
//!
//! The `thaw vm` commands (thaw-cli) and the resume benchmark (thaw-bench) are built on this crate.
//!
//! Lazy restore always goes through the fetch agent's code: with `--agent SOCKET` a fetch agent
//! process serves guest memory; without it the restore starts the agent in this process (its own
//! thread and tokio runtime, serving the checkpoint's store) and hands memory to it over a socket
//! pair, the same hand-off either way.
//!
//! Errors are one enum per operation: [`boot::BootError`], [`persist::checkpoint::CheckpointError`],
//! [`persist::restore::RestoreError`], [`persist::handoff::HandoffError`], and
//! [`boot::testguest::RunError`] for running the test guest; beneath them the shared
//! [`vstate::vm::VmError`], [`vstate::VcpuError`], [`vstate::VcpuStateError`],
//! [`vstate::kvm::KvmError`], [`vstate::memory::MemoryError`], [`devices::serial::SerialError`]
//! and [`persist::state::StateBlobError`]. Each carries the error it stems from as its source.

pub mod arch;
pub mod boot;
pub mod devices;
pub mod persist;
pub mod vstate;
