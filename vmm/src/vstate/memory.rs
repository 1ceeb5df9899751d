//! Guest memory: anonymous host mappings, one per guest-physical region.
//!
//! The mappings are private, anonymous and `MAP_NORESERVE`, so a large guest costs nothing until it
//! touches its pages, and a lazily restored guest can be registered with userfaultfd (missing mode)
//! while every page is still absent.

/// Guest memory could not be mapped, or an access fell outside it.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    #[error("invalid configuration: memory region {gpa:#x}+{size:#x} is not page aligned")]
    Misaligned { gpa: u64, size: u64 },
    #[error("cannot map {size} bytes of guest memory: {source}")]
    Map { size: u64, source: std::io::Error },
    #[error("guest address {addr:#x} (+{len} bytes) is outside guest memory")]
    OutOfRange { addr: u64, len: u64 },
    #[error("cannot view guest memory through vm-memory: {0}")]
    View(#[source] vm_memory::mmap::MmapRegionError),
    #[error("cannot view guest memory through vm-memory: region at {0:#x} overflows")]
    ViewOverflow(u64),
    #[error("cannot view guest memory through vm-memory: {0}")]
    ViewRegions(#[source] vm_memory::GuestRegionCollectionError),
}

type Result<T> = std::result::Result<T, MemoryError>;

/// Guest-physical address where the 32-bit MMIO hole starts (the LAPIC, IOAPIC and firmware live
/// above it); memory beyond it is placed at 4 GiB.
pub(crate) const MMIO_HOLE_START: u64 = 0xc000_0000;
/// First guest-physical address above the 32-bit MMIO hole.
pub(crate) const HIGH_MEMORY_START: u64 = 0x1_0000_0000;

/// One region of guest memory and the host mapping behind it.
#[derive(Debug)]
pub struct Region {
    pub guest_phys_addr: u64,
    pub size: u64,
    host: *mut u8,
}

impl Region {
    /// Host virtual address of the region's first byte.
    pub fn host_addr(&self) -> u64 {
        self.host as u64
    }
}

/// All guest memory of one VM.
#[derive(Debug)]
pub struct GuestMemory {
    regions: Vec<Region>,
}

// SAFETY: the mappings are plain memory owned by this struct for its whole life; concurrent access
// from vCPU threads goes through KVM (the guest) or through explicit, bounds-checked copies.
unsafe impl Send for GuestMemory {}
// SAFETY: as above; shared references only hand out copies or raw addresses.
unsafe impl Sync for GuestMemory {}

/// The guest-physical layout of `size` bytes of memory: below the MMIO hole, the rest above 4 GiB.
pub(crate) fn layout(size: u64) -> Vec<(u64, u64)> {
    if size <= MMIO_HOLE_START {
        vec![(0, size)]
    } else {
        vec![
            (0, MMIO_HOLE_START),
            (HIGH_MEMORY_START, size - MMIO_HOLE_START),
        ]
    }
}

impl GuestMemory {
    /// Maps empty (never touched) anonymous memory for the given `(guest_phys_addr, size)` regions.
    pub fn new(layout: &[(u64, u64)]) -> Result<GuestMemory> {
        let mut regions = Vec::with_capacity(layout.len());
        for &(gpa, size) in layout {
            if size == 0 || size % 4096 != 0 || gpa % 4096 != 0 {
                return Err(MemoryError::Misaligned { gpa, size });
            }
            // SAFETY: an anonymous private mapping at an address of the kernel's choosing; the
            // result is checked before use and unmapped exactly once in Drop.
            let host = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    size as usize,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                    -1,
                    0,
                )
            };
            if host == libc::MAP_FAILED {
                return Err(MemoryError::Map {
                    size,
                    source: std::io::Error::last_os_error(),
                });
            }
            regions.push(Region {
                guest_phys_addr: gpa,
                size,
                host: host.cast(),
            });
        }
        Ok(GuestMemory { regions })
    }

    /// The regions in guest-physical order.
    pub fn regions(&self) -> &[Region] {
        &self.regions
    }

    /// Total bytes of guest memory.
    pub fn size(&self) -> u64 {
        self.regions.iter().map(|r| r.size).sum()
    }

    /// The region's bytes. Reading memory that a running guest writes gives a racy snapshot; the
    /// checkpoint path reads only while every vCPU is paused.
    pub fn region_bytes(&self, index: usize) -> &[u8] {
        let r = &self.regions[index];
        // SAFETY: the mapping is valid for `size` bytes for the life of self, and u8 has no
        // invalid bit patterns.
        unsafe { std::slice::from_raw_parts(r.host, r.size as usize) }
    }

    /// Mutable bytes of a region, for filling memory before any vCPU runs.
    pub fn region_bytes_mut(&mut self, index: usize) -> &mut [u8] {
        let r = &self.regions[index];
        // SAFETY: as region_bytes; &mut self guarantees no other slice of this memory is alive
        // in safe code.
        unsafe { std::slice::from_raw_parts_mut(r.host, r.size as usize) }
    }

    fn locate(&self, addr: u64, len: u64) -> Result<*mut u8> {
        for r in &self.regions {
            if addr >= r.guest_phys_addr
                && addr
                    .checked_add(len)
                    .is_some_and(|end| end <= r.guest_phys_addr + r.size)
            {
                // SAFETY: the offset is within the mapping, checked just above.
                return Ok(unsafe { r.host.add((addr - r.guest_phys_addr) as usize) });
            }
        }
        Err(MemoryError::OutOfRange { addr, len })
    }

    /// Copies `data` into guest memory at `addr`.
    pub(crate) fn write(&self, addr: u64, data: &[u8]) -> Result<()> {
        let dst = self.locate(addr, data.len() as u64)?;
        // SAFETY: dst is valid for data.len() bytes (locate checked the bounds); the source is a
        // distinct Rust slice, so the ranges do not overlap.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), dst, data.len()) };
        Ok(())
    }

    /// Copies guest memory at `addr` into `out`.
    pub(crate) fn read(&self, addr: u64, out: &mut [u8]) -> Result<()> {
        let src = self.locate(addr, out.len() as u64)?;
        // SAFETY: src is valid for out.len() bytes (locate checked the bounds).
        unsafe { std::ptr::copy_nonoverlapping(src, out.as_mut_ptr(), out.len()) };
        Ok(())
    }

    /// Writes a little-endian u64 at `addr`.
    pub(crate) fn write_u64(&self, addr: u64, value: u64) -> Result<()> {
        self.write(addr, &value.to_le_bytes())
    }

    /// Reads a little-endian u64 at `addr`.
    pub(crate) fn read_u64(&self, addr: u64) -> Result<u64> {
        let mut b = [0u8; 8];
        self.read(addr, &mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    /// A vm-memory view of the same mappings, for linux-loader.
    pub(crate) fn as_vm_memory(&self) -> Result<vm_memory::GuestMemoryMmap> {
        let mut regions = Vec::with_capacity(self.regions.len());
        for r in &self.regions {
            // SAFETY: the pointer and size describe a live mapping that outlives the returned view
            // as long as the caller drops the view before self (it is only used while loading).
            let mmap = unsafe {
                vm_memory::MmapRegion::build_raw(
                    r.host,
                    r.size as usize,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                )
            }
            .map_err(MemoryError::View)?;
            let region =
                vm_memory::GuestRegionMmap::new(mmap, vm_memory::GuestAddress(r.guest_phys_addr))
                    .ok_or(MemoryError::ViewOverflow(r.guest_phys_addr))?;
            regions.push(region);
        }
        vm_memory::GuestMemoryMmap::from_regions(regions).map_err(MemoryError::ViewRegions)
    }
}

impl Drop for GuestMemory {
    fn drop(&mut self) {
        for r in &self.regions {
            // SAFETY: unmaps exactly the mapping created in new(); no slices outlive self.
            unsafe { libc::munmap(r.host.cast(), r.size as usize) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_splits_around_the_mmio_hole() {
        assert_eq!(layout(256 << 20), vec![(0, 256 << 20)]);
        assert_eq!(
            layout(4 << 30),
            vec![
                (0, MMIO_HOLE_START),
                (HIGH_MEMORY_START, (4 << 30) - MMIO_HOLE_START)
            ]
        );
    }

    #[test]
    fn reads_and_writes_are_bounds_checked() {
        let m = GuestMemory::new(&[(0, 8192), (0x10000, 4096)]).unwrap();
        m.write_u64(0x10ff8, 0x1234).unwrap();
        assert_eq!(m.read_u64(0x10ff8).unwrap(), 0x1234);
        assert!(matches!(
            m.write_u64(0x10ffc, 1),
            Err(MemoryError::OutOfRange { .. })
        ));
        assert!(m.read_u64(0x3000).is_err());
        assert_eq!(m.size(), 12288);
        assert!(GuestMemory::new(&[(0, 100)]).is_err());
    }
}
