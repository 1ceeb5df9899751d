//! Starting the other vCPUs through ACPI's Multiprocessor Wakeup mailbox (ACPI 6.4, 5.2.12.19)
//! rather than INIT/SIPI: each vCPU but the boot one starts in long mode in a few instructions of
//! "firmware" that poll a shared mailbox; the kernel writes an APIC id and a 64-bit entry point
//! there and the vCPU with that id acknowledges and jumps to it.
//!
//! Why: INIT/SIPI starts a CPU in real mode, which this machine's software KVM does not run (a
//! Linux guest hangs at "Booting SMP configuration"); the mailbox keeps every vCPU in long mode
//! from its first instruction, and Linux (x86-64, since 5.15) prefers it when the MADT offers it.
//! It works the same on hardware KVM. A vCPU the guest takes offline cannot be started again
//! this way (it is not back in the polling loop); thaw's guests do not offline CPUs.
//!
//! Everything lives in the top of the BIOS area, which the e820 map marks reserved: the mailbox
//! page, the polling code with a GDT, and identity-mapping page tables for the first GiB.

use crate::arch::paging;
use crate::vstate::memory::{GuestMemory, MemoryError};

/// The mailbox (4 KiB aligned, as the specification asks).
pub(crate) const MAILBOX: u64 = 0xf_b000;
/// The polling code.
pub(crate) const AP_ENTRY: u64 = 0xf_c000;
/// The GDT the waiting vCPUs run with (the boot GDT's layout).
pub(crate) const AP_GDT: u64 = AP_ENTRY + 0x800;
/// Page tables of the waiting vCPUs: PML4, PDPT, one page directory (the first GiB).
pub(crate) const AP_PML4: u64 = 0xf_d000;
/// First byte of the firmware's reserved memory (the mailbox) and its end.
pub(crate) const FIRMWARE_START: u64 = MAILBOX;
pub(crate) const FIRMWARE_END: u64 = 0x10_0000;
// The GDT's copy fits below the page tables, and the tables end where this begins.
const _: () = assert!(AP_GDT + 0x100 < AP_PML4);
const _: () = assert!(super::TABLES_END <= FIRMWARE_START);

/// Mailbox command: wake the vCPU named by `apic_id` at `wakeup_vector`.
#[cfg(test)]
const COMMAND_WAKEUP: u16 = 1;

/// The polling loop; the waiting vCPU's APIC id is in EBX (set with its registers).
///
/// ```text
/// 0:  pause
/// 2:  cmp  word  [MAILBOX], 1          ; command == wakeup?
/// 11: jne  0
/// 13: cmp  dword [MAILBOX + 4], ebx    ; for this vCPU?
/// 20: jne  0
/// 22: mov  rax, [MAILBOX + 8]          ; the wakeup vector, read before acknowledging
/// 30: mov  word  [MAILBOX], 0          ; acknowledge: the kernel may reuse the mailbox now
/// 40: jmp  rax
/// ```
pub(crate) fn ap_entry_code() -> Vec<u8> {
    let at = |off: u64| ((MAILBOX + off) as u32).to_le_bytes();
    let mut c = vec![0xf3, 0x90];
    c.extend([0x66, 0x83, 0x3c, 0x25]);
    c.extend(at(0));
    c.push(0x01);
    c.extend([0x75, 0xf3]);
    c.extend([0x39, 0x1c, 0x25]);
    c.extend(at(4));
    c.extend([0x75, 0xea]);
    c.extend([0x48, 0x8b, 0x04, 0x25]);
    c.extend(at(8));
    c.extend([0x66, 0xc7, 0x04, 0x25]);
    c.extend(at(0));
    c.extend([0x00, 0x00]);
    c.extend([0xff, 0xe0]);
    c
}

/// Writes the zeroed mailbox, the polling code and the waiting vCPUs' page tables (the GDT is
/// written by `linux_boot`, which owns its layout).
pub(crate) fn write(mem: &GuestMemory) -> Result<(), MemoryError> {
    mem.write(MAILBOX, &[0u8; 4096])?;
    mem.write(AP_ENTRY, &ap_entry_code())?;
    let end = paging::identity_map_2m(mem, AP_PML4, 1 << 30, false)?;
    debug_assert_eq!(end, FIRMWARE_END);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_code_jumps_back_to_its_start_and_names_the_mailbox_fields() {
        let c = ap_entry_code();
        assert_eq!(c.len(), 42);
        // Both branches land on offset 0: rel8 is counted from the next instruction.
        assert_eq!(13 + (c[12] as i8) as i32, 0);
        assert_eq!(22 + (c[21] as i8) as i32, 0);
        let disp = |off: usize| u32::from_le_bytes(c[off..off + 4].try_into().unwrap()) as u64;
        assert_eq!(disp(6), MAILBOX);
        assert_eq!(c[10] as u16, COMMAND_WAKEUP);
        assert_eq!(disp(16), MAILBOX + 4);
        assert_eq!(disp(26), MAILBOX + 8);
        assert_eq!(disp(34), MAILBOX);
        assert_eq!(&c[40..], &[0xff, 0xe0]);
    }

    #[test]
    fn the_firmware_fits_the_top_of_the_bios_area() {
        let mem = GuestMemory::new(&[(0, 2 << 20)]).unwrap();
        write(&mem).unwrap();
        assert_eq!(mem.read_u64(AP_PML4).unwrap(), (AP_PML4 + 0x1000) | 3);
    }
}
