//! The tables themselves: RSDP, XSDT, FADT (hardware-reduced), MADT and the DSDT.

use super::aml;
use super::sdt::{self, Sdt, HEADER_LEN};
use crate::devices::cmos::CMOS_BASE as CMOS_PORT;

/// The CMOS clock's IRQ, on its ISA pin of the IOAPIC.
const CMOS_GSI: u32 = 8;

/// Where the local APICs are (every vCPU's, at the same physical address).
pub(crate) const LAPIC_ADDR: u32 = 0xfee0_0000;
/// Where KVM's in-kernel IOAPIC is; its pins are GSIs 0 to 23.
pub(crate) const IOAPIC_ADDR: u32 = 0xfec0_0000;

/// Length of an ACPI 2.0+ RSDP.
pub(crate) const RSDP_LEN: usize = 36;
/// FADT revision 6 (ACPI 6.x) is 276 bytes long.
pub(crate) const FADT_REVISION: u8 = 6;
pub(crate) const FADT_LEN: usize = 276;

// FADT fields (ACPI 6.5, table 5.9).
const FADT_IAPC_BOOT_ARCH: usize = 109;
const FADT_FLAGS: usize = 112;
const FADT_MINOR_VERSION: usize = 131;
const FADT_X_DSDT: usize = 140;
const FADT_HYPERVISOR_VENDOR: usize = 268;
/// IAPC_BOOT_ARCH: an 8042 keyboard controller is present (Linux keeps its i8042 driver, and
/// `reboot=k` resets through it).
pub(crate) const IAPC_8042: u16 = 1 << 1;
/// IAPC_BOOT_ARCH: no VGA; probing for one is not safe.
pub(crate) const IAPC_VGA_NOT_PRESENT: u16 = 1 << 2;
/// IAPC_BOOT_ARCH: MSIs must not be enabled (there is no PCI).
pub(crate) const IAPC_MSI_NOT_SUPPORTED: u16 = 1 << 3;
/// IAPC_BOOT_ARCH: no CMOS RTC. Never set: the VM has one (tests check it stays clear).
#[cfg(test)]
pub(crate) const IAPC_CMOS_RTC_NOT_PRESENT: u16 = 1 << 5;
/// FADT flags: power and sleep buttons are not fixed-feature buttons (there are none).
const FADT_PWR_BUTTON: u32 = 1 << 4;
const FADT_SLP_BUTTON: u32 = 1 << 5;
/// FADT flags: hardware-reduced ACPI: no PM1/GPE register blocks, no SCI; events come through
/// a Generic Event Device. Linux then drives no legacy PIC or PIT: LAPIC timers and the IOAPIC.
pub(crate) const FADT_HW_REDUCED_ACPI: u32 = 1 << 20;

// MADT (ACPI 6.5, 5.2.12).
const MADT_LOCAL_APIC: u8 = 0;
const MADT_IO_APIC: u8 = 1;
const MADT_MP_WAKEUP: u8 = 0x10;
const MADT_LOCAL_APIC_LEN: u8 = 8;
const MADT_MP_WAKEUP_LEN: u8 = 16;
const MADT_IO_APIC_LEN: u8 = 12;
const MADT_ENABLED: u32 = 1;

/// The RSDP (5.2.5), revision 2, pointing at the XSDT.
pub(crate) fn rsdp(xsdt_addr: u64) -> Vec<u8> {
    let mut b = vec![0u8; RSDP_LEN];
    b[0..8].copy_from_slice(b"RSD PTR ");
    b[9..15].copy_from_slice(sdt::OEM_ID);
    b[15] = 2;
    b[20..24].copy_from_slice(&(RSDP_LEN as u32).to_le_bytes());
    b[24..32].copy_from_slice(&xsdt_addr.to_le_bytes());
    // The first checksum covers the ACPI 1.0 part (20 bytes), the extended one all of it.
    b[8] = sdt::checksum(&b[..20]);
    b[32] = sdt::checksum(&b);
    b
}

/// The XSDT (5.2.8): 64-bit addresses of every other table but the DSDT (the FADT names it).
pub(crate) fn xsdt(tables: &[u64]) -> Vec<u8> {
    let mut t = Sdt::new(b"XSDT", 1, 0);
    for a in tables {
        t.append(&a.to_le_bytes());
    }
    t.finish()
}

/// The FADT (5.2.9) of a hardware-reduced platform that still has an 8042 and a CMOS RTC.
pub(crate) fn fadt(dsdt_addr: u64) -> Vec<u8> {
    let mut t = Sdt::new(b"FACP", FADT_REVISION, FADT_LEN - HEADER_LEN);
    t.put_u16(
        FADT_IAPC_BOOT_ARCH,
        IAPC_8042 | IAPC_VGA_NOT_PRESENT | IAPC_MSI_NOT_SUPPORTED,
    );
    t.put_u32(
        FADT_FLAGS,
        FADT_HW_REDUCED_ACPI | FADT_PWR_BUTTON | FADT_SLP_BUTTON,
    );
    t.put_u8(FADT_MINOR_VERSION, 5);
    t.put_u64(FADT_X_DSDT, dsdt_addr);
    t.put(FADT_HYPERVISOR_VENDOR, b"THAWVMM\0");
    t.finish()
}

/// The MADT (5.2.12): one enabled local APIC per vCPU (APIC id = vCPU index, as
/// `arch::cpuid::for_vcpu` reports it), KVM's IOAPIC with GSI base 0, and with `mailbox` the
/// Multiprocessor Wakeup structure that starts the other vCPUs (see `mp_wakeup`). No interrupt
/// source overrides: ISA IRQs 0-15 are IOAPIC pins 0-15 in KVM's default routing, and a
/// hardware-reduced guest does not use the PIT's IRQ 0.
pub(crate) fn madt(vcpus: u32, mailbox: Option<u64>) -> Vec<u8> {
    let mut t = Sdt::new(b"APIC", 5, 8);
    t.put_u32(HEADER_LEN, LAPIC_ADDR);
    t.put_u32(HEADER_LEN + 4, 0); // flags: no PC-AT dual 8259 setup to honour
    for id in 0..vcpus {
        t.append(&[MADT_LOCAL_APIC, MADT_LOCAL_APIC_LEN, id as u8, id as u8]);
        t.append(&MADT_ENABLED.to_le_bytes());
    }
    t.append(&[MADT_IO_APIC, MADT_IO_APIC_LEN, 0, 0]);
    t.append(&IOAPIC_ADDR.to_le_bytes());
    t.append(&0u32.to_le_bytes());
    if let Some(addr) = mailbox {
        // Type, length, mailbox version 0, reserved, the mailbox's address.
        t.append(&[MADT_MP_WAKEUP, MADT_MP_WAKEUP_LEN, 0, 0, 0, 0, 0, 0]);
        t.append(&addr.to_le_bytes());
    }
    t.finish()
}

/// Where a VMGenID device's generation lives and which GSI announces a change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct VmGenIdAcpi {
    /// Guest-physical address of the 16-byte generation ID.
    pub addr: u64,
    /// The Generic Event Device's interrupt.
    pub gsi: u32,
}

/// The DSDT (5.2.11.1): with VMGenID, a VMGenID device whose `ADDR` method returns the
/// generation's address (the package of two 32-bit halves Linux's `vmgenid` driver expects) and a
/// Generic Event Device (ACPI0013) whose interrupt runs `_EVT`, which notifies it (0x80) so the
/// guest reads the new generation.
///
/// And one virtio-mmio device (`LNRO0005`, the ACPI id Linux's virtio_mmio driver matches) per
/// `(base, gsi)` of `virtio`: a hardware-reduced guest has no legacy IRQs to take from the
/// kernel command line, so each device's window and interrupt are described here.
pub(crate) fn dsdt(vmgenid: Option<VmGenIdAcpi>, virtio: &[(u64, u32)]) -> Vec<u8> {
    // The CMOS clock: with hardware-reduced ACPI the guest has no legacy IRQ mapping, so its
    // IRQ 8 exists for the guest only as described here.
    let mut devices = vec![aml::device(
        "RTC0",
        &[
            aml::name_decl("_HID", &aml::string("PNP0B00")),
            aml::name_decl("_CRS", &aml::io_interrupt_resource(CMOS_PORT, 2, CMOS_GSI)),
        ],
    )];
    for (i, &(base, gsi)) in virtio.iter().enumerate() {
        let base = u32::try_from(base).expect("virtio-mmio windows lie below 4 GiB");
        devices.push(aml::device(
            &format!("VR{i:02X}"),
            &[
                aml::name_decl("_HID", &aml::string("LNRO0005")),
                aml::name_decl("_UID", &aml::int(i as u64)),
                aml::name_decl("_CRS", &aml::mmio_interrupt_resource(base, 0x1000, gsi)),
            ],
        ));
    }
    if let Some(v) = vmgenid {
        devices.push(aml::device(
            "VGEN",
            &[
                aml::name_decl("_HID", &aml::string(super::VMGENID_HID)),
                aml::name_decl("_CID", &aml::string("VM_GEN_COUNTER")),
                aml::name_decl("_DDN", &aml::string("VM_GEN_COUNTER")),
                aml::method(
                    "ADDR",
                    0,
                    &[aml::return_(&aml::package(&[
                        aml::int(v.addr & 0xffff_ffff),
                        aml::int(v.addr >> 32),
                    ]))],
                ),
            ],
        ));
        devices.push(aml::device(
            "GED0",
            &[
                aml::name_decl("_HID", &aml::string("ACPI0013")),
                aml::name_decl("_UID", &aml::int(0)),
                aml::name_decl("_CRS", &aml::interrupt_resource(v.gsi)),
                aml::method(
                    "_EVT",
                    1,
                    &[aml::if_(
                        &aml::lequal(&aml::arg0(), &aml::int(v.gsi.into())),
                        &[aml::notify("\\_SB.VGEN", 0x80)],
                    )],
                ),
            ],
        ));
    }
    let mut t = Sdt::new(b"DSDT", 2, 0);
    t.append(&aml::scope("\\_SB", &devices));
    t.finish()
}
