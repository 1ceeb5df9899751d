//! The MMIO bus: routes a vCPU's loads and stores to guest-physical addresses that no memory
//! slot backs (KVM exits with `KVM_EXIT_MMIO`) to the device mapped there.
//!
//! thaw's MMIO devices are the virtio-mmio transports, one 4 KiB window each in the hole below
//! 4 GiB (see [`crate::devices::virtio`]). Addresses no device claims read as all ones and ignore
//! writes, as an empty bus does on real hardware.

use std::sync::Arc;

/// A device on the MMIO bus. `offset` is the address less the device's base.
pub(crate) trait MmioDevice: Send + Sync {
    /// A guest load of `data.len()` bytes.
    fn read(&self, offset: u64, data: &mut [u8]);
    /// A guest store.
    fn write(&self, offset: u64, data: &[u8]);
}

struct MmioRange {
    base: u64,
    len: u64,
    device: Arc<dyn MmioDevice>,
}

/// The MMIO bus shared by a VM's vCPUs.
#[derive(Default)]
pub(crate) struct MmioBus {
    ranges: Vec<MmioRange>,
}

impl MmioBus {
    /// An empty bus.
    pub(crate) fn new() -> MmioBus {
        MmioBus::default()
    }

    /// Puts `device` at `base..base + len`.
    ///
    /// # Panics
    /// If the range is empty, wraps, or overlaps a device already there: device placement is
    /// computed in code (from the device's index), so that is a bug, not a runtime condition.
    pub(crate) fn insert(&mut self, base: u64, len: u64, device: Arc<dyn MmioDevice>) {
        let end = base.checked_add(len);
        assert!(
            len > 0 && end.is_some(),
            "MMIO {base:#x}+{len:#x} is not a range"
        );
        let end = end.unwrap_or(u64::MAX);
        assert!(
            self.ranges
                .iter()
                .all(|r| end <= r.base || base >= r.base + r.len),
            "MMIO {base:#x}+{len:#x} overlaps a device already on the bus"
        );
        self.ranges.push(MmioRange { base, len, device });
    }

    fn find(&self, addr: u64, len: usize) -> Option<(&MmioRange, u64)> {
        self.ranges
            .iter()
            .find(|r| addr >= r.base && addr - r.base + len as u64 <= r.len)
            .map(|r| (r, addr - r.base))
    }

    /// Routes a store; an unclaimed address drops it.
    pub(crate) fn write(&self, addr: u64, data: &[u8]) {
        if let Some((r, offset)) = self.find(addr, data.len()) {
            r.device.write(offset, data);
        }
    }

    /// Routes a load; an unclaimed address floats high.
    pub(crate) fn read(&self, addr: u64, data: &mut [u8]) {
        match self.find(addr, data.len()) {
            Some((r, offset)) => r.device.read(offset, data),
            None => data.fill(0xff),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[derive(Default)]
    struct Recorder(Mutex<Vec<(u64, Vec<u8>)>>);

    impl MmioDevice for Recorder {
        fn read(&self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write(&self, offset: u64, data: &[u8]) {
            self.0.lock().unwrap().push((offset, data.to_vec()));
        }
    }

    #[test]
    fn accesses_reach_the_device_at_their_offset_and_other_addresses_float_high() {
        let dev = Arc::new(Recorder::default());
        let mut bus = MmioBus::new();
        bus.insert(0xd000_0000, 0x1000, dev.clone());
        bus.write(0xd000_0070, &[1, 2, 3, 4]);
        bus.write(0xd000_1000, &[9]);
        bus.write(0xd000_0ffe, &[1, 2, 3, 4]);
        assert_eq!(*dev.0.lock().unwrap(), vec![(0x70, vec![1, 2, 3, 4])]);
        let mut b = [0u8; 4];
        bus.read(0xd000_0010, &mut b);
        assert_eq!(b, [0x10; 4]);
        bus.read(0xcfff_fffe, &mut b);
        assert_eq!(b, [0xff; 4], "an access straddling the window's start");
        bus.read(0xe000_0000, &mut b);
        assert_eq!(b, [0xff; 4]);
    }

    #[test]
    #[should_panic(expected = "overlaps")]
    fn overlapping_devices_are_refused() {
        let mut bus = MmioBus::new();
        bus.insert(0xd000_0000, 0x1000, Arc::new(Recorder::default()));
        bus.insert(0xd000_0800, 0x1000, Arc::new(Recorder::default()));
    }
}
