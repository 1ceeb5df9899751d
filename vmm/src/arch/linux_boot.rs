//! The 64-bit Linux boot protocol (Documentation/arch/x86/boot.rst): where the boot loader puts
//! things in low memory, the zero page (`boot_params`) with its e820 map, and the state of the
//! boot CPU at the kernel's 64-bit entry point: long mode, identity-mapped page tables, flat
//! segments, `%rsi` pointing at the zero page.

use crate::arch::acpi::{self, mp_wakeup};
use crate::arch::gdt::{self, Gdt, Segment, SegmentKind};
use crate::arch::paging;
use crate::vstate::kvm::KvmError;
use crate::vstate::memory::{GuestMemory, MemoryError};
use kvm_bindings::{
    kvm_fpu, kvm_mp_state, kvm_msr_entry, kvm_regs, kvm_segment, Msrs, KVM_MP_STATE_RUNNABLE,
};
use kvm_ioctls::VcpuFd;
use linux_loader::loader::bootparam::{boot_e820_entry, boot_params, setup_header};

/// Where the zero page (`boot_params`) goes.
pub(crate) const ZERO_PAGE: u64 = 0x7000;
/// Where the kernel command line goes.
pub(crate) const CMDLINE_ADDR: u64 = 0x20000;
/// Longest command line, terminating NUL included.
pub(crate) const CMDLINE_MAX: usize = 4096;
/// Where a protected-mode kernel is loaded: 1 MiB.
pub(crate) const HIMEM_START: u64 = 0x10_0000;

const GDT_ADDR: u64 = 0x500;
const PML4: u64 = 0x9000;
const BOOT_STACK: u64 = 0x8ff0;
/// Start of the extended BIOS data area: low RAM ends here.
const EBDA_START: u64 = 0x9fc00;
const E820_RAM: u32 = 1;
const E820_RESERVED: u32 = 2;
/// e820 type of memory holding ACPI tables.
const E820_ACPI: u32 = 3;
/// The early page tables map the first GiB; the kernel builds its own right after entry.
const MAPPED: u64 = 1 << 30;

const BOOT_CODE: Segment = Segment::flat(SegmentKind::Code64, 0);
const BOOT_DATA: Segment = Segment::flat(SegmentKind::Data, 0);

/// The boot GDT: null, null, code64 at 0x10 (`__BOOT_CS`), data at 0x18 (`__BOOT_DS`).
struct BootGdt {
    gdt: Gdt,
    code: u16,
    data: u16,
}

fn boot_gdt() -> BootGdt {
    let mut gdt = Gdt::new();
    gdt.skip();
    let code = gdt.push(BOOT_CODE);
    let data = gdt.push(BOOT_DATA);
    BootGdt { gdt, code, data }
}

/// The zero page for a kernel whose setup header is `header` (bzImage; none for an ELF
/// vmlinux), with the command line at [`CMDLINE_ADDR`], the RSDP's address, and the e820 map of
/// `mem`: low RAM below the EBDA, the ACPI tables' area, the rest of the first region from 1 MiB,
/// every region above the MMIO hole, and the `reserved` ranges (device memory outside RAM that the
/// guest must not treat as free, such as the VMGenID page), in address order.
pub(crate) fn zero_page(
    header: Option<setup_header>,
    cmdline: &str,
    mem: &GuestMemory,
    rsdp: u64,
    reserved: &[(u64, u64)],
) -> boot_params {
    let mut params = boot_params::default();
    if let Some(hdr) = header {
        params.hdr = hdr;
    }
    params.hdr.type_of_loader = 0xff;
    params.hdr.boot_flag = 0xaa55;
    params.hdr.header = 0x5372_6448;
    params.hdr.kernel_alignment = 0x100_0000;
    params.hdr.loadflags |= 0x01; // LOADED_HIGH
    params.hdr.cmd_line_ptr = CMDLINE_ADDR as u32;
    params.hdr.cmdline_size = cmdline.len() as u32 + 1;
    params.acpi_rsdp_addr = rsdp;

    let low_end = low_memory_end(mem);
    let mut e820 = vec![
        (0u64, EBDA_START, E820_RAM),
        (
            acpi::TABLES_START,
            acpi::TABLES_END - acpi::TABLES_START,
            E820_ACPI,
        ),
        (
            mp_wakeup::FIRMWARE_START,
            mp_wakeup::FIRMWARE_END - mp_wakeup::FIRMWARE_START,
            E820_RESERVED,
        ),
        (HIMEM_START, low_end - HIMEM_START, E820_RAM),
    ];
    for r in &mem.regions()[1..] {
        e820.push((r.guest_phys_addr, r.size, E820_RAM));
    }
    e820.extend(reserved.iter().map(|&(a, s)| (a, s, E820_RESERVED)));
    e820.sort_by_key(|e| e.0);
    for (i, (addr, size, kind)) in e820.iter().enumerate() {
        params.e820_table[i] = boot_e820_entry {
            addr: *addr,
            size: *size,
            r#type: *kind,
        };
    }
    params.e820_entries = e820.len() as u8;
    params
}

/// End of the first memory region, below which the initrd must lie.
pub(crate) fn low_memory_end(mem: &GuestMemory) -> u64 {
    let first = &mem.regions()[0];
    first.guest_phys_addr + first.size
}

/// Highest address the initrd may end at, per the kernel's setup header.
pub(crate) fn initrd_limit(params: &boot_params, mem: &GuestMemory) -> u64 {
    let low_end = low_memory_end(mem);
    if params.hdr.initrd_addr_max != 0 {
        (params.hdr.initrd_addr_max as u64).min(low_end)
    } else {
        low_end
    }
}

/// Records an initrd of `len` bytes at `addr` in the zero page.
pub(crate) fn set_initrd(params: &mut boot_params, addr: u64, len: u64) {
    params.hdr.ramdisk_image = addr as u32;
    params.hdr.ramdisk_size = len as u32;
}

/// Writes the boot GDT (also where the waiting vCPUs' copy goes) and the early page tables.
pub(crate) fn write_entry_tables(mem: &GuestMemory) -> Result<(), MemoryError> {
    boot_gdt().gdt.write(mem, GDT_ADDR)?;
    boot_gdt().gdt.write(mem, mp_wakeup::AP_GDT)?;
    paging::identity_map_2m(mem, PML4, MAPPED, false)?;
    Ok(())
}

/// The MSRs firmware sets on every CPU, the boot CPU and those the kernel starts later (which
/// wait for INIT/SIPI in KVM and keep their MSRs across it): the same memory types everywhere,
/// or Linux finds the CPUs' MTRRs inconsistent.
fn setup_firmware_msrs(fd: &VcpuFd) -> Result<(), KvmError> {
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
    .map_err(KvmError::table("boot MSRs"))?;
    fd.set_msrs(&msrs)
        .map_err(KvmError::ioctl("KVM_SET_MSRS"))?;
    Ok(())
}

/// Puts a vCPU in 64-bit mode at CPL0 with flat segments from the boot GDT at `gdt_base`, the
/// identity-mapping page tables at `cr3`, interrupts off, and `regs`.
fn enter_long_mode(fd: &VcpuFd, gdt_base: u64, cr3: u64, regs: kvm_regs) -> Result<(), KvmError> {
    let mut sregs = fd.get_sregs().map_err(KvmError::ioctl("KVM_GET_SREGS"))?;
    let g = boot_gdt();
    gdt::load_flat_segments(
        &mut sregs,
        BOOT_CODE.kvm_segment(g.code),
        BOOT_DATA.kvm_segment(g.data),
    );
    sregs.tr = kvm_segment {
        selector: 0,
        type_: 0xb,
        present: 1,
        limit: 0xffff,
        ..Default::default()
    };
    sregs.gdt.base = gdt_base;
    sregs.gdt.limit = g.gdt.limit();
    sregs.idt.base = 0;
    sregs.idt.limit = 0;
    sregs.cr0 = 0x8000_0011; // PG | ET | PE
    sregs.cr3 = cr3;
    sregs.cr4 = 1 << 5; // PAE
    sregs.efer = 0x500; // LME | LMA
    fd.set_sregs(&sregs)
        .map_err(KvmError::ioctl("KVM_SET_SREGS"))?;
    fd.set_regs(&regs)
        .map_err(KvmError::ioctl("KVM_SET_REGS"))?;
    fd.set_fpu(&kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    })
    .map_err(KvmError::ioctl("KVM_SET_FPU"))?;
    setup_firmware_msrs(fd)
}

/// A vCPU other than the boot one: in long mode in the wakeup mailbox's polling loop
/// (`acpi::mp_wakeup`) with its APIC id in EBX, runnable rather than waiting for an INIT/SIPI.
pub(crate) fn setup_waiting_cpu(fd: &VcpuFd, apic_id: u32) -> Result<(), KvmError> {
    enter_long_mode(
        fd,
        mp_wakeup::AP_GDT,
        mp_wakeup::AP_PML4,
        kvm_regs {
            rip: mp_wakeup::AP_ENTRY,
            rbx: apic_id.into(),
            rflags: 0x2,
            ..Default::default()
        },
    )?;
    fd.set_mp_state(kvm_mp_state {
        mp_state: KVM_MP_STATE_RUNNABLE,
    })
    .map_err(KvmError::ioctl("KVM_SET_MP_STATE"))
}

/// Registers of the boot CPU at the kernel's 64-bit entry, plus the MSRs firmware would set.
pub(crate) fn setup_boot_cpu(fd: &VcpuFd, entry: u64) -> Result<(), KvmError> {
    enter_long_mode(
        fd,
        GDT_ADDR,
        PML4,
        kvm_regs {
            rip: entry,
            rsp: BOOT_STACK,
            rbp: BOOT_STACK,
            rsi: ZERO_PAGE,
            rflags: 0x2,
            ..Default::default()
        },
    )?;
    // LAPIC: LINT0 as ExtINT (the PIC's interrupts reach the CPU), LINT1 as NMI.
    let mut lapic = fd.get_lapic().map_err(KvmError::ioctl("KVM_GET_LAPIC"))?;
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
    fd.set_lapic(&lapic)
        .map_err(KvmError::ioctl("KVM_SET_LAPIC"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_boot_gdt_and_tables_are_where_the_protocol_expects_them() {
        let mem = GuestMemory::new(&[(0, 64 << 20)]).unwrap();
        write_entry_tables(&mem).unwrap();
        assert_eq!(
            mem.read_u64(GDT_ADDR + 0x10).unwrap(),
            0x00af_9b00_0000_ffff
        );
        assert_eq!(
            mem.read_u64(GDT_ADDR + 0x18).unwrap(),
            0x00cf_9300_0000_ffff
        );
        assert_eq!(mem.read_u64(PML4).unwrap(), 0xa003);
        assert_eq!(mem.read_u64(0xa000).unwrap(), 0xb003);
        assert_eq!(mem.read_u64(0xb000 + 511 * 8).unwrap(), (511 << 21) | 0x83);
        let p = zero_page(
            None,
            "console=ttyS0",
            &mem,
            0xe0000,
            &[(0xfeb0_0000, 0x1000)],
        );
        assert_eq!(p.e820_entries, 5);
        let e820: Vec<(u64, u64, u32)> = p.e820_table[..5]
            .iter()
            .map(|e| (e.addr, e.size, e.r#type))
            .collect();
        assert_eq!(
            e820,
            vec![
                (0, EBDA_START, E820_RAM),
                (0xe0000, 0x1b000, E820_ACPI),
                (0xfb000, 0x5000, E820_RESERVED),
                (HIMEM_START, (64 << 20) - HIMEM_START, E820_RAM),
                (0xfeb0_0000, 0x1000, E820_RESERVED),
            ]
        );
        let rsdp = p.acpi_rsdp_addr;
        assert_eq!(rsdp, 0xe0000);
        let cmdline_size = p.hdr.cmdline_size;
        assert_eq!(cmdline_size, 14);
    }
}
