//! Booting a stock Linux x86-64 kernel (bzImage or ELF vmlinux) with an initramfs and a command
//! line, per the 64-bit Linux boot protocol: boot_params (the "zero page") with the e820 map, the
//! kernel entered in long mode with identity-mapped page tables.
//!
//! One vCPU only: the Debian cloud kernel does not parse MP tables, and thaw does not yet write
//! ACPI tables (MADT) that would let it find more CPUs. `boot` refuses more than one vCPU.

use crate::error::{Error, Result};
use crate::persist::state::GuestKind;
use crate::vstate::memory::{self, GuestMemory};
use crate::vstate::vm::{Vm, VmConfig};
use kvm_bindings::{kvm_fpu, kvm_msr_entry, kvm_regs, kvm_segment, Msrs};
use kvm_ioctls::VcpuFd;
use linux_loader::configurator::linux::LinuxBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::bootparam::{boot_e820_entry, boot_params};
use linux_loader::loader::{self, KernelLoader};
use std::path::Path;
use vm_memory::{Address, GuestAddress};

/// Console on COM1, no reboot loops, quiet enough to crawl through on a software KVM.
pub const DEFAULT_CMDLINE: &str = "console=ttyS0 reboot=k panic=1 nomodules i8042.noaux i8042.nomux i8042.nopnp i8042.dumbkbd tsc=reliable no_timer_check";

const GDT_ADDR: u64 = 0x500;
const ZERO_PAGE: u64 = 0x7000;
const PML4: u64 = 0x9000;
const PDPT: u64 = 0xa000;
const PD: u64 = 0xb000;
const CMDLINE_ADDR: u64 = 0x20000;
const CMDLINE_MAX: usize = 4096;
const HIMEM_START: u64 = 0x10_0000;
const EBDA_START: u64 = 0x9fc00;
const BOOT_STACK: u64 = 0x8ff0;
/// Smallest memory a kernel plus initramfs gets booted with.
pub const MIN_MEMORY: u64 = 64 << 20;
const E820_RAM: u32 = 1;

/// Loads the kernel, initramfs and command line and builds a VM ready to start.
pub fn boot(config: &VmConfig, kernel: &Path, initrd: Option<&Path>, cmdline: &str) -> Result<Vm> {
    if config.vcpus != 1 {
        return Err(Error::Config(
            "Linux guests run on 1 vCPU for now (no ACPI/MP tables yet)".into(),
        ));
    }
    if config.memory_bytes < MIN_MEMORY {
        return Err(Error::MemoryTooSmall {
            what: "a Linux guest".into(),
            needed: MIN_MEMORY,
            available: config.memory_bytes,
        });
    }
    let mem = GuestMemory::new(&memory::layout(config.memory_bytes))?;
    let entry = load_kernel(&mem, kernel, initrd, cmdline)?;
    let vm = Vm::create(config, mem, GuestKind::Linux, None, None)?;
    setup_vcpu(&vm.pending_vcpus()[0].fd, entry)?;
    Ok(vm)
}

/// Writes kernel, initrd, command line, zero page and tables; returns the 64-bit entry point.
fn load_kernel(
    mem: &GuestMemory,
    kernel: &Path,
    initrd: Option<&Path>,
    cmdline: &str,
) -> Result<u64> {
    let gm = mem.as_vm_memory()?;
    let mut f = std::fs::File::open(kernel)
        .map_err(Error::io(format!("open kernel {}", kernel.display())))?;
    let bz = loader::bzimage::BzImage::load(&gm, None, &mut f, Some(GuestAddress(HIMEM_START)));
    let (result, entry) = match bz {
        Ok(r) => {
            let entry = r.kernel_load.raw_value() + 0x200;
            (r, entry)
        }
        Err(bz_err) => {
            use std::io::Seek;
            f.rewind().map_err(Error::io("rewind kernel"))?;
            match loader::elf::Elf::load(&gm, None, &mut f, Some(GuestAddress(HIMEM_START))) {
                Ok(r) => {
                    let entry = r.kernel_load.raw_value();
                    (r, entry)
                }
                Err(elf_err) => {
                    return Err(Error::Kernel(format!(
                        "{} is neither a bzImage ({bz_err}) nor an ELF vmlinux ({elf_err})",
                        kernel.display()
                    )))
                }
            }
        }
    };

    let mut params = boot_params::default();
    if let Some(hdr) = result.setup_header {
        params.hdr = hdr;
    }
    params.hdr.type_of_loader = 0xff;
    params.hdr.boot_flag = 0xaa55;
    params.hdr.header = 0x5372_6448;
    params.hdr.kernel_alignment = 0x100_0000;
    params.hdr.loadflags |= 0x01; // LOADED_HIGH

    let mut cl = linux_loader::cmdline::Cmdline::new(CMDLINE_MAX)
        .map_err(|e| Error::Config(format!("command line: {e}")))?;
    cl.insert_str(cmdline)
        .map_err(|e| Error::Config(format!("command line {cmdline:?}: {e}")))?;
    loader::load_cmdline(&gm, GuestAddress(CMDLINE_ADDR), &cl)
        .map_err(|e| Error::Kernel(format!("command line: {e}")))?;
    params.hdr.cmd_line_ptr = CMDLINE_ADDR as u32;
    params.hdr.cmdline_size = cmdline.len() as u32 + 1;

    let low_end = mem.regions()[0].guest_phys_addr + mem.regions()[0].size;
    if let Some(path) = initrd {
        let data =
            std::fs::read(path).map_err(Error::io(format!("read initrd {}", path.display())))?;
        let max = if params.hdr.initrd_addr_max != 0 {
            (params.hdr.initrd_addr_max as u64).min(low_end)
        } else {
            low_end
        };
        let addr = max
            .checked_sub(data.len() as u64)
            .map(|a| a & !0xfff)
            .filter(|a| *a >= result.kernel_end)
            .ok_or_else(|| Error::MemoryTooSmall {
                what: format!("kernel and initrd ({} bytes)", data.len()),
                needed: result.kernel_end + data.len() as u64,
                available: mem.size(),
            })?;
        mem.write(addr, &data)?;
        params.hdr.ramdisk_image = addr as u32;
        params.hdr.ramdisk_size = data.len() as u32;
    }

    let mut e820 = vec![(0u64, EBDA_START), (HIMEM_START, low_end - HIMEM_START)];
    for r in &mem.regions()[1..] {
        e820.push((r.guest_phys_addr, r.size));
    }
    for (i, (addr, size)) in e820.iter().enumerate() {
        params.e820_table[i] = boot_e820_entry {
            addr: *addr,
            size: *size,
            r#type: E820_RAM,
        };
    }
    params.e820_entries = e820.len() as u8;
    LinuxBootConfigurator::write_bootparams::<vm_memory::GuestMemoryMmap>(
        &BootParams::new(&params, GuestAddress(ZERO_PAGE)),
        &gm,
    )
    .map_err(|e| Error::Kernel(format!("boot params: {e}")))?;
    drop(gm);

    // GDT: null, null, code64 (0x10 = __BOOT_CS), data (0x18 = __BOOT_DS).
    let gdt: [u64; 4] = [0, 0, 0x00af_9b00_0000_ffff, 0x00cf_9300_0000_ffff];
    for (i, e) in gdt.iter().enumerate() {
        mem.write_u64(GDT_ADDR + i as u64 * 8, *e)?;
    }
    // Identity map of the first GiB with 2 MiB pages (the kernel builds its own tables).
    mem.write_u64(PML4, PDPT | 0x3)?;
    mem.write_u64(PDPT, PD | 0x3)?;
    for i in 0..512u64 {
        mem.write_u64(PD + i * 8, (i << 21) | 0x83)?;
    }
    Ok(entry)
}

fn kernel_segment(selector: u16, code: bool) -> kvm_segment {
    kvm_segment {
        base: 0,
        limit: 0xf_ffff,
        selector,
        type_: if code { 0xb } else { 0x3 },
        present: 1,
        dpl: 0,
        db: if code { 0 } else { 1 },
        s: 1,
        l: if code { 1 } else { 0 },
        g: 1,
        avl: 0,
        unusable: 0,
        padding: 0,
    }
}

/// Registers of the boot CPU at the kernel's 64-bit entry, plus the MSRs firmware would set.
fn setup_vcpu(fd: &VcpuFd, entry: u64) -> Result<()> {
    let mut sregs = fd.get_sregs().map_err(Error::kvm("KVM_GET_SREGS"))?;
    sregs.cs = kernel_segment(0x10, true);
    let data = kernel_segment(0x18, false);
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = kvm_segment {
        selector: 0,
        type_: 0xb,
        present: 1,
        limit: 0xffff,
        ..Default::default()
    };
    sregs.gdt.base = GDT_ADDR;
    sregs.gdt.limit = 4 * 8 - 1;
    sregs.idt.base = 0;
    sregs.idt.limit = 0;
    sregs.cr0 = 0x8000_0011; // PG | ET | PE
    sregs.cr3 = PML4;
    sregs.cr4 = 1 << 5; // PAE
    sregs.efer = 0x500; // LME | LMA
    fd.set_sregs(&sregs).map_err(Error::kvm("KVM_SET_SREGS"))?;
    let regs = kvm_regs {
        rip: entry,
        rsp: BOOT_STACK,
        rbp: BOOT_STACK,
        rsi: ZERO_PAGE,
        rflags: 0x2,
        ..Default::default()
    };
    fd.set_regs(&regs).map_err(Error::kvm("KVM_SET_REGS"))?;
    fd.set_fpu(&kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    })
    .map_err(Error::kvm("KVM_SET_FPU"))?;
    let msr = |index: u32, data: u64| kvm_msr_entry {
        index,
        data,
        ..Default::default()
    };
    let msrs = Msrs::from_entries(&[
        msr(0x174, 0),             // SYSENTER_CS
        msr(0x175, 0),             // SYSENTER_ESP
        msr(0x176, 0),             // SYSENTER_EIP
        msr(0xc000_0081, 0),       // STAR
        msr(0xc000_0082, 0),       // LSTAR
        msr(0xc000_0084, 0),       // SFMASK
        msr(0x1a0, 1),             // MISC_ENABLE: fast strings
        msr(0x2ff, (1 << 11) | 6), // MTRRdefType: enabled, write-back
    ])
    .map_err(|e| Error::Config(format!("boot MSRs: {e:?}")))?;
    fd.set_msrs(&msrs).map_err(Error::kvm("KVM_SET_MSRS"))?;
    // LAPIC: LINT0 as ExtINT (the PIC's interrupts reach the CPU), LINT1 as NMI.
    let mut lapic = fd.get_lapic().map_err(Error::kvm("KVM_GET_LAPIC"))?;
    let set_reg = |regs: &mut [std::os::raw::c_char; 1024], off: usize, mode: u32| {
        let mut v = u32::from_le_bytes([
            regs[off] as u8,
            regs[off + 1] as u8,
            regs[off + 2] as u8,
            regs[off + 3] as u8,
        ]);
        v = (v & !0x700) | (mode << 8);
        for (i, b) in v.to_le_bytes().iter().enumerate() {
            regs[off + i] = *b as std::os::raw::c_char;
        }
    };
    set_reg(&mut lapic.regs, 0x350, 7);
    set_reg(&mut lapic.regs, 0x360, 4);
    fd.set_lapic(&lapic).map_err(Error::kvm("KVM_SET_LAPIC"))?;
    Ok(())
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
        let err = load_kernel(&mem, &p, None, DEFAULT_CMDLINE).unwrap_err();
        assert!(matches!(err, Error::Kernel(_)), "{err}");
        assert!(err.to_string().contains("neither a bzImage"), "{err}");
    }
}
