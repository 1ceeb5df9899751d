//! Identity-mapping page tables for entering long mode: guest-virtual = guest-physical, in
//! 2 MiB pages.

use crate::vstate::memory::{GuestMemory, MemoryError};

const PRESENT: u64 = 1;
const WRITABLE: u64 = 1 << 1;
const USER: u64 = 1 << 2;
const HUGE: u64 = 1 << 7;
const PAGE: u64 = 0x1000;

/// Writes a four-level identity map of guest-physical `[0, top)`, rounded up to whole GiB (at
/// most 512 GiB): the PML4 at `pml4`, the PDPT in the page after it, then one page directory of
/// 2 MiB pages per GiB. `user` makes every page accessible at CPL3. Returns the first address
/// after the tables.
pub(crate) fn identity_map_2m(
    mem: &GuestMemory,
    pml4: u64,
    top: u64,
    user: bool,
) -> Result<u64, MemoryError> {
    let gib = top.div_ceil(1 << 30);
    assert!(gib <= 512, "one PDPT maps at most 512 GiB, not {gib} GiB");
    let flags = PRESENT | WRITABLE | if user { USER } else { 0 };
    let pdpt = pml4 + PAGE;
    mem.write(pml4, &[0u8; PAGE as usize])?;
    mem.write(pdpt, &[0u8; PAGE as usize])?;
    mem.write_u64(pml4, pdpt | flags)?;
    for g in 0..gib {
        let pd = pdpt + PAGE * (g + 1);
        mem.write_u64(pdpt + g * 8, pd | flags)?;
        let mut table = vec![0u8; PAGE as usize];
        for (e, entry) in table.chunks_exact_mut(8).enumerate() {
            let addr = (g << 30) | ((e as u64) << 21);
            entry.copy_from_slice(&(addr | flags | HUGE).to_le_bytes());
        }
        mem.write(pd, &table)?;
    }
    Ok(pdpt + PAGE * (gib + 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_each_gib_through_its_own_page_directory() {
        let mem = GuestMemory::new(&[(0, 1 << 20)]).unwrap();
        let end = identity_map_2m(&mem, 0x9000, 2 << 30, false).unwrap();
        assert_eq!(end, 0xd000);
        assert_eq!(mem.read_u64(0x9000).unwrap(), 0xa000 | 0x3);
        assert_eq!(mem.read_u64(0xa008).unwrap(), 0xc000 | 0x3);
        assert_eq!(mem.read_u64(0xb008).unwrap(), (2 << 20) | 0x83);
        assert_eq!(mem.read_u64(0xc000).unwrap(), (1 << 30) | 0x83);
        identity_map_2m(&mem, 0x10000, 1, true).unwrap();
        assert_eq!(mem.read_u64(0x12000 + 8).unwrap(), (2 << 20) | 0x87);
    }
}
