//! The CMOS real-time clock (an MC146818 as on every PC) at ports 0x70 (index, with the NMI mask
//! in bit 7) and 0x71 (data): the guest reads wall-clock time from it (Linux's rtc_cmos sets the
//! system clock from it at boot). The registers and the clock are [`registers`], free of I/O;
//! this is the port device around them, reading the host's wall clock at each access.
//!
//! IRQ 8 is the RTC's, but the device raises no interrupts (periodic, alarm, update-ended): a
//! Linux guest boots and keeps time without them.

mod calendar;
pub(crate) mod registers;

use super::{BusAction, PortDevice};
use registers::Cmos;
pub use registers::CmosState;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

/// The index port; the data port follows it.
pub(crate) const CMOS_BASE: u16 = 0x70;
pub(crate) const CMOS_LEN: u16 = 2;

/// The host's wall clock in microseconds since the Unix epoch (negative before it).
fn host_now_us() -> i64 {
    match SystemTime::now().duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_micros()).unwrap_or(i64::MAX),
        Err(before) => -i64::try_from(before.duration().as_micros()).unwrap_or(i64::MAX),
    }
}

/// The CMOS on the port bus, shared by the vCPU threads.
pub(crate) struct CmosPort {
    cmos: Mutex<Cmos>,
}

impl CmosPort {
    /// A CMOS at power-on.
    pub(crate) fn new() -> CmosPort {
        CmosPort {
            cmos: Mutex::new(Cmos::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Cmos> {
        self.cmos.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The device state for a checkpoint.
    pub(crate) fn state(&self) -> CmosState {
        self.lock().state().clone()
    }

    /// Puts the device in a checkpoint's state (before any vCPU runs).
    pub(crate) fn restore(&self, state: &CmosState) {
        *self.lock() = Cmos::from_state(state.clone());
    }
}

impl PortDevice for CmosPort {
    fn write(&self, _cpu: u32, offset: u16, data: &[u8]) -> BusAction {
        if let Some(&value) = data.first() {
            let mut cmos = self.lock();
            match offset {
                0 => cmos.write_index(value),
                _ => cmos.write_data(value, host_now_us()),
            }
        }
        BusAction::Continue
    }

    fn read(&self, offset: u16, data: &mut [u8]) {
        // The index port is write-only.
        let value = match offset {
            0 => 0xff,
            _ => self.lock().read_data(host_now_us()),
        };
        data.fill(0);
        if let Some(b) = data.first_mut() {
            *b = value;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::PortBus;
    use std::sync::Arc;

    fn bcd(b: u8) -> i64 {
        i64::from(b >> 4) * 10 + i64::from(b & 0xf)
    }

    /// Through the port bus: the guest reads today's date from the host's clock, and a time the
    /// guest sets survives a save and restore into a new device.
    #[test]
    fn the_bus_reads_the_host_date_and_a_set_time_survives_a_restore() {
        let cmos = Arc::new(CmosPort::new());
        let mut bus = PortBus::new();
        bus.insert(CMOS_BASE, CMOS_LEN, cmos.clone());
        let read = |bus: &PortBus, index: u8| {
            bus.write(0, CMOS_BASE, &[index]);
            let mut b = [0u8];
            bus.read(CMOS_BASE + 1, &mut b);
            b[0]
        };
        let host_days = host_now_us().div_euclid(86_400 * 1_000_000);
        let (day, month, year, century) = (
            read(&bus, 7),
            read(&bus, 8),
            read(&bus, 9),
            read(&bus, 0x32),
        );
        let secs = calendar::DateTime {
            year: bcd(century) * 100 + bcd(year),
            month: bcd(month) as u32,
            day: bcd(day) as u32,
            hour: 0,
            minute: 0,
            second: 0,
            weekday: 1,
        }
        .to_unix()
        .unwrap();
        // Around midnight the two reads may straddle it.
        assert!(
            (secs / 86_400 - host_days).abs() <= 1,
            "CMOS date {century:02x}{year:02x}-{month:02x}-{day:02x}"
        );

        // The guest moves the year back to 2001 (BCD, clock running) with NMIs masked.
        bus.write(0, CMOS_BASE, &[0x80 | 9]);
        bus.write(0, CMOS_BASE + 1, &[0x01]);
        bus.write(0, CMOS_BASE, &[0x32]);
        bus.write(0, CMOS_BASE + 1, &[0x20]);
        let saved = cmos.state();
        assert!(saved.offset_us < 0);
        let copy = Arc::new(CmosPort::new());
        copy.restore(&saved);
        let mut bus2 = PortBus::new();
        bus2.insert(CMOS_BASE, CMOS_LEN, copy.clone());
        assert_eq!(read(&bus2, 9), 0x01);
        assert_eq!(read(&bus2, 0x32), 0x20);
        let mut b = [0u8];
        bus2.read(CMOS_BASE, &mut b);
        assert_eq!(b[0], 0xff, "the index port reads as nothing");
    }
}
