//! x86-64: CPUID, the instructions thaw emulates for a software KVM.

pub mod cpuid;
pub mod emulate;
