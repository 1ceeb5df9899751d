//! Booting a stock Linux x86-64 kernel (bzImage or ELF vmlinux) with an initramfs and a command
//! line: linux-loader puts the kernel at 1 MiB, the initrd goes as high in low memory as the
//! kernel allows, and `arch::linux_boot` writes the zero page and enters the kernel in
//! long mode. virtio devices are described in the ACPI DSDT.
//!
//! ACPI tables (`arch::acpi`) in the BIOS area tell the kernel about every vCPU (MADT) and the
//! platform (hardware-reduced FADT). The boot vCPU enters the kernel in long mode; the others
//! wait in long mode for the kernel to start them through the ACPI wakeup mailbox
//! (`arch::acpi::mp_wakeup`: this machine's KVM cannot run the real mode an INIT/SIPI starts in).
//! The DSDT describes a VMGenID device (`devices::vmgenid`), whose page the e820 map reserves.

use crate::arch::acpi::{self, VmGenIdAcpi};
use crate::arch::linux_boot::{self, CMDLINE_ADDR, CMDLINE_MAX, HIMEM_START, ZERO_PAGE};
use crate::boot::BootError;
use crate::devices::virtio;
use crate::devices::vmgenid;
use crate::persist::state::GuestKind;
use crate::vstate::memory::{self, GuestMemory};
use crate::vstate::vm::{Vm, VmConfig, VmError};
use linux_loader::configurator::linux::LinuxBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::{self, KernelLoader};
use std::path::Path;
use vm_memory::{Address, GuestAddress};

/// Console on COM1, no reboot loops, quiet enough to crawl through on a software KVM.
pub const DEFAULT_CMDLINE: &str = "console=ttyS0 reboot=k panic=1 nomodules i8042.noaux i8042.nomux i8042.nopnp i8042.dumbkbd tsc=reliable no_timer_check";

/// Smallest memory a kernel plus initramfs gets booted with.
pub(crate) const MIN_MEMORY: u64 = 64 << 20;

/// Loads the kernel, initramfs and command line and builds a VM ready to start.
pub fn boot(
    config: &VmConfig,
    kernel: &Path,
    initrd: Option<&Path>,
    cmdline: &str,
) -> Result<Vm, BootError> {
    if config.memory_bytes < MIN_MEMORY {
        return Err(BootError::MemoryTooSmall {
            what: "a Linux guest".into(),
            needed: MIN_MEMORY,
            available: config.memory_bytes,
        });
    }
    let mem = GuestMemory::new(&memory::layout(config.memory_bytes))?;
    // virtio-mmio devices are described in the DSDT (hardware-reduced ACPI has no legacy IRQs
    // for `virtio_mmio.device=` on the command line to use).
    let virtio: Vec<(u64, u32)> = (0..config.disks.len() + config.nets.len())
        .filter_map(virtio::placement)
        .collect();
    let vmgenid = VmGenIdAcpi {
        addr: vmgenid::ADDR,
        gsi: vmgenid::GED_GSI,
    };
    let rsdp = acpi::write(&mem, config.vcpus, Some(vmgenid), &virtio)?;
    let reserved = [(vmgenid::ADDR, vmgenid::PAGE_SIZE)];
    let entry = load_kernel(&mem, kernel, initrd, cmdline, rsdp, &reserved)?;
    let mut vm = Vm::create(config, mem, GuestKind::Linux, None, None)?;
    vm.attach_vmgenid(vmgenid::new_generation().map_err(VmError::from)?)?;
    let vcpus = vm.pending_vcpus();
    linux_boot::setup_boot_cpu(&vcpus[0].fd, entry)?;
    for ap in &vcpus[1..] {
        linux_boot::setup_waiting_cpu(&ap.fd, ap.id)?;
    }
    Ok(vm)
}

/// Writes kernel, initrd, command line, zero page (with the RSDP's address and the `reserved`
/// ranges in its e820 map) and entry tables; returns the 64-bit entry point.
fn load_kernel(
    mem: &GuestMemory,
    kernel: &Path,
    initrd: Option<&Path>,
    cmdline: &str,
    rsdp: u64,
    reserved: &[(u64, u64)],
) -> Result<u64, BootError> {
    let gm = mem.as_vm_memory()?;
    let read_kernel = |source| BootError::Read {
        what: "kernel",
        path: kernel.to_path_buf(),
        source,
    };
    let mut f = std::fs::File::open(kernel).map_err(read_kernel)?;
    let bz = loader::bzimage::BzImage::load(&gm, None, &mut f, Some(GuestAddress(HIMEM_START)));
    let (result, entry) = match bz {
        Ok(r) => {
            let entry = r.kernel_load.raw_value() + 0x200;
            (r, entry)
        }
        Err(bz_err) => {
            use std::io::Seek;
            f.rewind().map_err(read_kernel)?;
            match loader::elf::Elf::load(&gm, None, &mut f, Some(GuestAddress(HIMEM_START))) {
                Ok(r) => {
                    let entry = r.kernel_load.raw_value();
                    (r, entry)
                }
                Err(elf) => {
                    return Err(BootError::NotAKernel {
                        path: kernel.to_path_buf(),
                        bzimage: bz_err,
                        elf,
                    })
                }
            }
        }
    };

    let bad_cmdline = |source| BootError::Cmdline {
        cmdline: cmdline.to_string(),
        source,
    };
    let mut cl = linux_loader::cmdline::Cmdline::new(CMDLINE_MAX).map_err(bad_cmdline)?;
    cl.insert_str(cmdline).map_err(bad_cmdline)?;
    loader::load_cmdline(&gm, GuestAddress(CMDLINE_ADDR), &cl).map_err(BootError::WriteCmdline)?;
    let mut params = linux_boot::zero_page(result.setup_header, cmdline, mem, rsdp, reserved);

    if let Some(path) = initrd {
        let data = std::fs::read(path).map_err(|source| BootError::Read {
            what: "initrd",
            path: path.to_path_buf(),
            source,
        })?;
        let addr = linux_boot::initrd_limit(&params, mem)
            .checked_sub(data.len() as u64)
            .map(|a| a & !0xfff)
            .filter(|a| *a >= result.kernel_end)
            .ok_or_else(|| BootError::MemoryTooSmall {
                what: format!("kernel and initrd ({} bytes)", data.len()),
                needed: result.kernel_end + data.len() as u64,
                available: mem.size(),
            })?;
        mem.write(addr, &data)?;
        linux_boot::set_initrd(&mut params, addr, data.len() as u64);
    }

    LinuxBootConfigurator::write_bootparams::<vm_memory::GuestMemoryMmap>(
        &BootParams::new(&params, GuestAddress(ZERO_PAGE)),
        &gm,
    )
    .map_err(BootError::BootParams)?;
    drop(gm);
    linux_boot::write_entry_tables(mem)?;
    Ok(entry)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_that_is_not_a_kernel_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("notakernel");
        std::fs::write(&p, b"#!/bin/sh\necho hello\n").unwrap();
        let mem = GuestMemory::new(&[(0, 64 << 20)]).unwrap();
        let err = load_kernel(&mem, &p, None, DEFAULT_CMDLINE, 0, &[]).unwrap_err();
        assert!(matches!(err, BootError::NotAKernel { .. }), "{err}");
        assert!(err.to_string().contains("neither a bzImage"), "{err}");
    }
}
