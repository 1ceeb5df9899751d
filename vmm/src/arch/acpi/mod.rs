//! ACPI tables for Linux guests: RSDP, XSDT, FADT, MADT and DSDT, written by hand.
//!
//! By hand rather than with rust-vmm's `acpi_tables` crate: thaw needs five small tables and a
//! DSDT of two devices, a few hundred lines with every byte covered by tests here, against a new
//! dependency for the whole workspace.
//!
//! The platform is hardware-reduced ACPI, as in Firecracker and Cloud Hypervisor: no PM register
//! blocks or SCI to emulate; the one ACPI event (a VMGenID change) arrives through a Generic Event
//! Device. The FADT still says an 8042 is present (its reset line reboots the guest) and does not
//! say "no CMOS RTC".
//!
//! Everything lives in the BIOS area 0xE0000-0xFFFFF: the RSDP at its start, where a kernel that
//! is not told the RSDP's address finds it by scanning 16-byte boundaries, and the other tables
//! after it; the vCPU wakeup mailbox and its polling code ([`mp_wakeup`]) at its top. The zero
//! page also carries the RSDP's address (`acpi_rsdp_addr`) and the e820 map marks the tables as
//! ACPI data and the mailbox as reserved, so the guest never takes either for RAM.

pub(crate) mod aml;
pub(crate) mod mp_wakeup;
mod sdt;
mod tables;

pub(crate) use tables::VmGenIdAcpi;

use crate::vstate::memory::{GuestMemory, MemoryError};

/// First byte of the area the tables are written into (and the RSDP's address).
pub(crate) const TABLES_START: u64 = 0xe_0000;
/// End of that area: above it, up to 1 MiB, is the vCPU wakeup firmware ([`mp_wakeup`]).
pub(crate) const TABLES_END: u64 = mp_wakeup::FIRMWARE_START;
/// The VMGenID device's hardware id: thaw's own (the driver matches its `_CID`).
pub(crate) const VMGENID_HID: &str = "THAW0001";

/// Every table with the guest-physical address it goes to.
#[derive(Debug, Clone)]
pub(crate) struct AcpiTables {
    pub rsdp_addr: u64,
    pub placed: Vec<(u64, Vec<u8>)>,
}

/// The tables for `vcpus` vCPUs and, if given, a VMGenID device, placed from [`TABLES_START`]
/// on 16-byte boundaries (RSDP, DSDT, FADT, MADT, XSDT).
pub(crate) fn build(vcpus: u32, vmgenid: Option<VmGenIdAcpi>, virtio: &[(u64, u32)]) -> AcpiTables {
    let mut next = TABLES_START + 64; // the RSDP's 36 bytes, rounded up
    let mut placed = Vec::new();
    let mut place = |bytes: Vec<u8>| {
        let at = next;
        next = (at + bytes.len() as u64).next_multiple_of(16);
        placed.push((at, bytes));
        at
    };
    let dsdt = place(tables::dsdt(vmgenid, virtio));
    let fadt = place(tables::fadt(dsdt));
    let madt = place(tables::madt(
        vcpus,
        (vcpus > 1).then_some(mp_wakeup::MAILBOX),
    ));
    let xsdt = place(tables::xsdt(&[fadt, madt]));
    placed.insert(0, (TABLES_START, tables::rsdp(xsdt)));
    assert!(
        next <= TABLES_END,
        "ACPI tables overflow the BIOS area: they end at {next:#x}"
    );
    AcpiTables {
        rsdp_addr: TABLES_START,
        placed,
    }
}

/// Writes the tables and the vCPU wakeup firmware into guest memory; returns the RSDP's address.
pub(crate) fn write(
    mem: &GuestMemory,
    vcpus: u32,
    vmgenid: Option<VmGenIdAcpi>,
    virtio: &[(u64, u32)],
) -> Result<u64, MemoryError> {
    let t = build(vcpus, vmgenid, virtio);
    for (addr, bytes) in &t.placed {
        mem.write(*addr, bytes)?;
    }
    mp_wakeup::write(mem)?;
    Ok(t.rsdp_addr)
}

#[cfg(test)]
mod tests {
    use super::sdt::HEADER_LEN;
    use super::tables::*;
    use super::*;

    fn sums_to_zero(b: &[u8]) -> bool {
        b.iter().fold(0u8, |a, x| a.wrapping_add(*x)) == 0
    }

    fn u32_at(b: &[u8], off: usize) -> u32 {
        u32::from_le_bytes(b[off..off + 4].try_into().unwrap())
    }

    fn u64_at(b: &[u8], off: usize) -> u64 {
        u64::from_le_bytes(b[off..off + 8].try_into().unwrap())
    }

    /// The guest's view: the BIOS area read back from memory.
    fn bios_area(vcpus: u32, vmgenid: Option<VmGenIdAcpi>) -> (GuestMemory, u64) {
        let mem = GuestMemory::new(&[(0, 2 << 20)]).unwrap();
        let rsdp = write(&mem, vcpus, vmgenid, &[]).unwrap();
        (mem, rsdp)
    }

    fn table_at(mem: &GuestMemory, addr: u64) -> Vec<u8> {
        let mut head = [0u8; HEADER_LEN];
        mem.read(addr, &mut head).unwrap();
        let mut t = vec![0u8; u32_at(&head, 4) as usize];
        mem.read(addr, &mut t).unwrap();
        t
    }

    /// What Linux does without a pointer (acpi_find_root_pointer): scan the area on 16-byte
    /// boundaries for the signature with a valid checksum.
    fn scan_for_rsdp(mem: &GuestMemory) -> Option<u64> {
        (TABLES_START..TABLES_END).step_by(16).find(|&a| {
            let mut b = [0u8; RSDP_LEN];
            mem.read(a, &mut b).unwrap();
            &b[..8] == b"RSD PTR " && sums_to_zero(&b[..20]) && sums_to_zero(&b)
        })
    }

    #[test]
    fn the_rsdp_is_found_by_scanning_the_bios_area_and_leads_to_every_table() {
        let (mem, rsdp) = bios_area(2, None);
        assert_eq!(scan_for_rsdp(&mem), Some(rsdp));
        let mut r = [0u8; RSDP_LEN];
        mem.read(rsdp, &mut r).unwrap();
        assert_eq!(r[15], 2, "revision 2: the XSDT is used");
        assert_eq!(u32_at(&r, 20), RSDP_LEN as u32);
        let xsdt = table_at(&mem, u64_at(&r, 24));
        assert_eq!(&xsdt[..4], b"XSDT");
        let entries: Vec<u64> = xsdt[HEADER_LEN..]
            .chunks(8)
            .map(|c| u64::from_le_bytes(c.try_into().unwrap()))
            .collect();
        let sigs: Vec<Vec<u8>> = entries
            .iter()
            .map(|&a| table_at(&mem, a)[..4].to_vec())
            .collect();
        assert_eq!(sigs, vec![b"FACP".to_vec(), b"APIC".to_vec()]);
        let fadt = table_at(&mem, entries[0]);
        let dsdt = table_at(&mem, u64_at(&fadt, 140));
        assert_eq!(&dsdt[..4], b"DSDT");
        for t in [&xsdt, &fadt, &dsdt, &table_at(&mem, entries[1])] {
            assert!(sums_to_zero(t), "{:?} checksum", &t[..4]);
            let end = entries.iter().copied().max().unwrap() + 0x1000;
            assert!(end <= TABLES_END);
        }
    }

    #[test]
    fn the_fadt_is_hardware_reduced_with_an_8042_and_a_cmos_rtc() {
        let f = fadt(0xe0040);
        assert_eq!(f.len(), FADT_LEN);
        assert_eq!(u32_at(&f, 4) as usize, FADT_LEN);
        assert_eq!(f[8], FADT_REVISION);
        assert!(sums_to_zero(&f));
        let flags = u32_at(&f, 112);
        assert_ne!(flags & FADT_HW_REDUCED_ACPI, 0);
        let arch = u16::from_le_bytes([f[109], f[110]]);
        assert_ne!(arch & IAPC_8042, 0, "the i8042 must stay (reboot)");
        assert_eq!(
            arch & IAPC_CMOS_RTC_NOT_PRESENT,
            0,
            "the CMOS RTC must stay"
        );
        assert_eq!(u64_at(&f, 140), 0xe0040);
        assert_eq!(u32_at(&f, 40), 0, "only X_DSDT is set");
    }

    #[test]
    fn the_madt_has_one_enabled_local_apic_per_vcpu_and_the_ioapic() {
        for vcpus in [1u32, 2, 7, 64] {
            let m = madt(vcpus, Some(0xfb000));
            assert!(sums_to_zero(&m));
            assert_eq!(m.len(), HEADER_LEN + 8 + 8 * vcpus as usize + 12 + 16);
            assert_eq!(u32_at(&m, HEADER_LEN), LAPIC_ADDR);
            let mut off = HEADER_LEN + 8;
            let mut lapics = Vec::new();
            let mut ioapics = Vec::new();
            let mut mailboxes = Vec::new();
            while off < m.len() {
                let (kind, len) = (m[off], m[off + 1] as usize);
                match kind {
                    0 => {
                        assert_eq!(u32_at(&m, off + 4) & 1, 1, "enabled");
                        lapics.push(m[off + 3]);
                    }
                    1 => ioapics.push((u32_at(&m, off + 4), u32_at(&m, off + 8))),
                    0x10 => {
                        assert_eq!(len, 16);
                        mailboxes.push(u64_at(&m, off + 8));
                    }
                    other => panic!("unexpected MADT entry type {other}"),
                }
                off += len;
            }
            assert_eq!(off, m.len());
            assert_eq!(lapics, (0..vcpus as u8).collect::<Vec<_>>());
            assert_eq!(ioapics, vec![(IOAPIC_ADDR, 0)]);
            assert_eq!(mailboxes, vec![0xfb000]);
        }
        assert_eq!(madt(1, None).len(), HEADER_LEN + 8 + 8 + 12);
    }

    #[test]
    fn the_dsdt_describes_vmgenid_and_its_event_device_only_when_asked() {
        let plain = dsdt(None, &[]);
        assert!(sums_to_zero(&plain));
        let bytes = |needle: &[u8], hay: &[u8]| hay.windows(needle.len()).any(|w| w == needle);
        assert!(!bytes(b"VM_GEN_COUNTER", &plain));
        let v = VmGenIdAcpi {
            addr: 0xfeb0_0000,
            gsi: 9,
        };
        let d = dsdt(Some(v), &[]);
        assert!(sums_to_zero(&d));
        assert_eq!(u32_at(&d, 4) as usize, d.len());
        assert!(bytes(b"\x0dVM_GEN_COUNTER\0", &d));
        assert!(bytes(b"\x0dACPI0013\0", &d));
        // ADDR returns Package (2) { low, high }.
        assert!(bytes(
            &[0xa4, 0x12, 0x08, 0x02, 0x0c, 0, 0, 0xb0, 0xfe, 0x00],
            &d
        ));
        // _CRS: the extended interrupt descriptor on GSI 9, edge, active high.
        assert!(bytes(&[0x89, 6, 0, 3, 1, 9, 0, 0, 0, 0x79, 0], &d));
    }

    #[test]
    fn tables_for_the_most_vcpus_fit_the_bios_area() {
        let all_virtio: Vec<(u64, u32)> = (0..crate::devices::virtio::MAX_DEVICES)
            .filter_map(crate::devices::virtio::placement)
            .collect();
        let t = build(
            64,
            Some(VmGenIdAcpi {
                addr: 1 << 40,
                gsi: 9,
            }),
            &all_virtio,
        );
        let (last, bytes) = t.placed.iter().max_by_key(|p| p.0).unwrap();
        assert!(last + bytes.len() as u64 <= TABLES_END);
    }
}
