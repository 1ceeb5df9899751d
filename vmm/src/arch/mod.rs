//! x86-64: CPUID, segment descriptors, page tables, the Linux boot protocol, and the
//! instructions thaw emulates for a software KVM.

pub mod cpuid;
pub mod emulate;
pub mod gdt;
pub mod linux_boot;
pub mod paging;
