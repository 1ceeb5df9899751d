//! Port I/O devices and the bus that routes a vCPU's `in`/`out` to them.
//!
//! A VM's bus holds COM1 ([`serial`]), the CMOS real-time clock ([`cmos`]), the keyboard
//! controller's reset line (`i8042`) and, for the test guest, its report port (`report_port`).
//! Linux guests also get a VMGenID device ([`vmgenid`]: a memory page and an interrupt, not on
//! the bus). Ports no device claims read as all ones (nothing drives the bus) and ignore writes,
//! which is what a Linux guest probing for legacy hardware expects.

pub mod cmos;
pub(crate) mod i8042;
pub(crate) mod mmio;
pub mod report_port;
pub mod serial;
pub mod serial_input;
pub mod tap;
pub mod virtio;
pub mod vmgenid;

use std::sync::Arc;

/// What a device tells the vCPU after an access.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum BusAction {
    /// Keep running the guest.
    Continue,
    /// Park this vCPU (the guest reported it is done) until told to resume.
    Park,
    /// Stop this vCPU for good (the guest asked for a reset or power-off).
    Stop(String),
}

/// Something a guest reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GuestEvent {
    /// A test guest report (start, progress, done, bad parameters).
    Report {
        cpu: u32,
        code: u64,
        checksum: u64,
        touches: u64,
        /// Timer ticks counted by the vCPU (interrupt mode; 0 otherwise).
        ticks: u64,
    },
    /// A vCPU stopped because the guest reset or powered off.
    Stopped { cpu: u32, reason: String },
}

/// A device on the port I/O bus. `offset` is the port less the device's first port.
pub(crate) trait PortDevice: Send + Sync {
    /// A guest `out` by vCPU `cpu`.
    fn write(&self, cpu: u32, offset: u16, data: &[u8]) -> BusAction;
    /// A guest `in`; a device that is write-only reads as all ones.
    fn read(&self, _offset: u16, data: &mut [u8]) {
        data.fill(0xff);
    }
}

/// One device and the ports it decodes.
struct PortRange {
    base: u16,
    len: u16,
    device: Arc<dyn PortDevice>,
}

/// The port I/O bus shared by a VM's vCPUs.
#[derive(Default)]
pub(crate) struct PortBus {
    ranges: Vec<PortRange>,
}

impl PortBus {
    /// An empty bus.
    pub(crate) fn new() -> PortBus {
        PortBus::default()
    }

    /// Puts `device` at ports `base..base + len`.
    ///
    /// # Panics
    /// If the range is empty, wraps past port 0xffff, or overlaps a device already there: the
    /// VM's device set is fixed in code, so that is a bug, not a runtime condition.
    pub(crate) fn insert(&mut self, base: u16, len: u16, device: Arc<dyn PortDevice>) {
        let end = u32::from(base) + u32::from(len);
        assert!(
            len > 0 && end <= 0x1_0000,
            "ports {base:#x}+{len} are not a range"
        );
        assert!(
            self.ranges.iter().all(|r| {
                let r_end = u32::from(r.base) + u32::from(r.len);
                end <= u32::from(r.base) || u32::from(base) >= r_end
            }),
            "ports {base:#x}+{len} overlap a device already on the bus"
        );
        self.ranges.push(PortRange { base, len, device });
    }

    fn find(&self, port: u16) -> Option<(&PortRange, u16)> {
        self.ranges
            .iter()
            .find(|r| port >= r.base && u32::from(port) < u32::from(r.base) + u32::from(r.len))
            .map(|r| (r, port - r.base))
    }

    /// Routes an `out` to the device at `port`.
    pub(crate) fn write(&self, cpu: u32, port: u16, data: &[u8]) -> BusAction {
        match self.find(port) {
            Some((r, offset)) => r.device.write(cpu, offset, data),
            None => BusAction::Continue,
        }
    }

    /// Routes an `in` to the device at `port`; no device: the bus floats high.
    pub(crate) fn read(&self, port: u16, data: &mut [u8]) {
        match self.find(port) {
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
    struct Recorder(Mutex<Vec<(u16, Vec<u8>)>>);

    impl PortDevice for Recorder {
        fn write(&self, _cpu: u32, offset: u16, data: &[u8]) -> BusAction {
            self.0.lock().unwrap().push((offset, data.to_vec()));
            BusAction::Park
        }
    }

    #[test]
    fn accesses_reach_the_device_at_their_offset_and_other_ports_float_high() {
        let dev = Arc::new(Recorder::default());
        let mut bus = PortBus::new();
        bus.insert(0x3f8, 8, dev.clone());
        assert_eq!(bus.write(0, 0x3fa, &[7]), BusAction::Park);
        assert_eq!(bus.write(0, 0x400, &[7]), BusAction::Continue);
        assert_eq!(*dev.0.lock().unwrap(), vec![(2, vec![7])]);
        let mut b = [0u8; 2];
        bus.read(0x3f8, &mut b);
        assert_eq!(b, [0xff, 0xff], "a write-only device reads as all ones");
        bus.read(0x60, &mut b);
        assert_eq!(b, [0xff, 0xff]);
    }

    #[test]
    #[should_panic(expected = "overlap")]
    fn overlapping_devices_are_refused() {
        let mut bus = PortBus::new();
        bus.insert(0x3f8, 8, Arc::new(Recorder::default()));
        bus.insert(0x3ff, 1, Arc::new(Recorder::default()));
    }
}
