//! The KVM objects of a VM: opening KVM ([`kvm`]), guest memory ([`memory`]), the VM ([`vm`]),
//! its vCPU threads (`vcpu`), this host's CPU as restores see it ([`host_cpu`]) and saving and restoring their state (`vcpu_state`), and the guest's
//! clocks across a restore (`clock`).

pub(crate) mod clock;
pub mod host_cpu;
pub mod kvm;
pub mod memory;
pub(crate) mod vcpu;
pub(crate) mod vcpu_state;
pub mod vm;

pub use vcpu::VcpuError;
pub use vcpu_state::VcpuStateError;
