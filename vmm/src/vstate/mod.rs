//! KVM state of a VM: the VM itself, its vCPUs and their saved state, guest memory.

pub mod kvm;
pub mod memory;
pub mod vcpu;
pub mod vcpu_state;
pub mod vm;
