//! x86-64 without a VM around it: CPUID ([`cpuid`]), segment descriptors (`gdt`),
//! identity-mapping page tables (`paging`), the Linux boot protocol (`linux_boot`), and the
//! instructions thaw emulates for a software KVM (`emulate`).

pub(crate) mod acpi;
pub mod cpu_profile;
pub mod cpuid;
pub(crate) mod emulate;
pub(crate) mod gdt;
pub(crate) mod linux_boot;
pub(crate) mod paging;
