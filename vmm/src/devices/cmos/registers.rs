//! The MC146818 register file behind the CMOS ports, without I/O: the clock registers computed
//! from the host's wall clock plus an offset, the status registers A to D, the alarm bytes and
//! the 114 bytes of battery-backed RAM. The caller passes the host time (microseconds since the
//! Unix epoch) to every access that may read or set the clock.
//!
//! A guest that sets the time (registers written with SET held in register B, or while the
//! clock runs) moves the offset, so its time keeps running from what it wrote, and the offset is
//! saved with the checkpoint: after a restore the clock reads host time plus the same offset, as
//! a battery-backed clock would have kept ticking. Interrupts (periodic, alarm, update-ended) are
//! not raised: register C reads 0.

use super::calendar::{decode, decode_hour, encode, encode_hour, DateTime};
use serde::{Deserialize, Serialize};

pub(crate) const SECONDS: u8 = 0x00;
pub(crate) const MINUTES: u8 = 0x02;
pub(crate) const HOURS: u8 = 0x04;
pub(crate) const WEEKDAY: u8 = 0x06;
pub(crate) const DAY: u8 = 0x07;
pub(crate) const MONTH: u8 = 0x08;
pub(crate) const YEAR: u8 = 0x09;
pub(crate) const REG_A: u8 = 0x0a;
pub(crate) const REG_B: u8 = 0x0b;
pub(crate) const REG_C: u8 = 0x0c;
pub(crate) const REG_D: u8 = 0x0d;
/// The century, where PC firmware keeps it (ACPI's FADT names this index).
pub(crate) const CENTURY: u8 = 0x32;
/// Registers the index port can select.
pub(crate) const REGISTERS: usize = 128;

/// Register A: update in progress (read-only).
const UIP: u8 = 0x80;
/// Register B: SET (the clock is held while the guest writes it), UIE, binary mode, 24-hour mode.
const SET: u8 = 0x80;
const UIE: u8 = 0x10;
const BINARY: u8 = 0x04;
const HOURS_24: u8 = 0x02;
/// Register D: valid RAM and time (the battery is good).
const VRT: u8 = 0x80;
/// Register A at power-on: 32.768 kHz time base, 1024 Hz periodic rate.
const REG_A_DEFAULT: u8 = 0x26;
/// Register B at power-on as PC firmware leaves it: BCD, 24-hour mode, no interrupts.
const REG_B_DEFAULT: u8 = HOURS_24;

const MICROS: i64 = 1_000_000;
/// UIP is set this long before each second's update (the MC146818's 244 µs).
const UIP_LEAD_US: i64 = 244;

/// The clock registers, in the order they are latched and applied.
const CLOCK: [u8; 8] = [SECONDS, MINUTES, HOURS, WEEKDAY, DAY, MONTH, YEAR, CENTURY];

/// Everything the CMOS device holds, as a checkpoint stores it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CmosState {
    /// The register the index port selects (0 to 127).
    pub index: u8,
    /// Bit 7 of the last index written: the guest masked NMIs (no NMI source here heeds it).
    pub nmi_disabled: bool,
    /// The register file. The clock registers are meaningful only while SET is held (the time
    /// the guest is writing); otherwise the clock is computed from the host time.
    #[serde(with = "register_bytes")]
    pub registers: [u8; REGISTERS],
    /// The guest's time less the host's wall-clock time, in microseconds.
    pub offset_us: i64,
}

impl Default for CmosState {
    /// Power-on: the host's time, BCD, 24-hour mode, no interrupts, RAM zeroed.
    fn default() -> Self {
        let mut registers = [0; REGISTERS];
        registers[usize::from(REG_A)] = REG_A_DEFAULT;
        registers[usize::from(REG_B)] = REG_B_DEFAULT;
        registers[usize::from(REG_D)] = VRT;
        CmosState {
            index: 0,
            nmi_disabled: false,
            registers,
            offset_us: 0,
        }
    }
}

/// The register file as a byte list of exactly [`REGISTERS`] entries.
mod register_bytes {
    use super::REGISTERS;
    use serde::de::Error;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(r: &[u8; REGISTERS], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(r.iter())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; REGISTERS], D::Error> {
        let bytes = Vec::<u8>::deserialize(d)?;
        let len = bytes.len();
        bytes.try_into().map_err(|_| {
            D::Error::custom(format!("CMOS registers: {len} bytes, expected {REGISTERS}"))
        })
    }
}

/// The register file and its clock.
#[derive(Debug, Clone, Default)]
pub(crate) struct Cmos {
    state: CmosState,
}

impl Cmos {
    /// A CMOS in `state` (a checkpoint's, or [`CmosState::default`] at power-on).
    pub(crate) fn from_state(state: CmosState) -> Cmos {
        Cmos { state }
    }

    pub(crate) fn state(&self) -> &CmosState {
        &self.state
    }

    fn reg(&self, index: u8) -> u8 {
        self.state.registers[usize::from(index)]
    }

    fn reg_mut(&mut self, index: u8) -> &mut u8 {
        &mut self.state.registers[usize::from(index)]
    }

    fn binary(&self) -> bool {
        self.reg(REG_B) & BINARY != 0
    }

    fn hours_24(&self) -> bool {
        self.reg(REG_B) & HOURS_24 != 0
    }

    fn held(&self) -> bool {
        self.reg(REG_B) & SET != 0
    }

    fn guest_us(&self, now_us: i64) -> i64 {
        now_us.saturating_add(self.state.offset_us)
    }

    /// A write to the index port (0x70): selects a register; bit 7 masks NMIs.
    pub(crate) fn write_index(&mut self, value: u8) {
        self.state.index = value & 0x7f;
        self.state.nmi_disabled = value & 0x80 != 0;
    }

    /// A read of the data port (0x71): the selected register.
    pub(crate) fn read_data(&mut self, now_us: i64) -> u8 {
        let index = self.state.index;
        match index {
            REG_A => {
                let fraction = self.guest_us(now_us).rem_euclid(MICROS);
                let updating = !self.held() && fraction >= MICROS - UIP_LEAD_US;
                (self.reg(REG_A) & !UIP) | if updating { UIP } else { 0 }
            }
            // Reading C acknowledges the interrupt flags it holds.
            REG_C => std::mem::take(self.reg_mut(REG_C)),
            _ if CLOCK.contains(&index) && !self.held() => self.clock_register(index, now_us),
            _ => self.reg(index),
        }
    }

    /// A write to the data port (0x71): the selected register.
    pub(crate) fn write_data(&mut self, value: u8, now_us: i64) {
        let index = self.state.index;
        match index {
            REG_A => *self.reg_mut(REG_A) = value & !UIP,
            REG_B => self.write_reg_b(value, now_us),
            // Read-only: interrupt flags and the battery status.
            REG_C | REG_D => {}
            _ if CLOCK.contains(&index) && !self.held() => {
                // The clock runs: the new field takes effect at once.
                self.latch(now_us);
                *self.reg_mut(index) = value;
                self.apply(now_us);
            }
            _ => *self.reg_mut(index) = value,
        }
    }

    fn write_reg_b(&mut self, value: u8, now_us: i64) {
        let was_held = self.held();
        let mut value = value;
        if value & SET != 0 {
            // Setting SET ends update-ended interrupts (the MC146818 clears UIE with it).
            value &= !UIE;
            if !was_held {
                self.latch(now_us);
            }
        }
        *self.reg_mut(REG_B) = value;
        if was_held && value & SET == 0 {
            self.apply(now_us);
        }
    }

    /// The clock register `index` for the guest's time now.
    fn clock_register(&self, index: u8, now_us: i64) -> u8 {
        let t = DateTime::from_unix(self.guest_us(now_us).div_euclid(MICROS));
        let binary = self.binary();
        match index {
            SECONDS => encode(t.second, binary),
            MINUTES => encode(t.minute, binary),
            HOURS => encode_hour(t.hour, binary, self.hours_24()),
            WEEKDAY => encode(t.weekday, binary),
            DAY => encode(t.day, binary),
            MONTH => encode(t.month, binary),
            YEAR => encode(t.year.rem_euclid(100) as u32, binary),
            CENTURY => encode(t.year.div_euclid(100).rem_euclid(100) as u32, binary),
            _ => unreachable!("{index:#x} is not a clock register"),
        }
    }

    /// Copies the running clock into the clock registers (SET is about to hold them).
    fn latch(&mut self, now_us: i64) {
        for index in CLOCK {
            *self.reg_mut(index) = self.clock_register(index, now_us);
        }
    }

    /// Runs the clock from the time in the clock registers, from this moment; a time that is not
    /// a valid date in the current mode leaves the clock as it was.
    fn apply(&mut self, now_us: i64) {
        let (binary, h24) = (self.binary(), self.hours_24());
        let field = |index| decode(self.reg(index), binary);
        let date = (|| {
            let year = field(CENTURY)? * 100 + field(YEAR)?;
            DateTime {
                year: i64::from(year),
                month: field(MONTH)?,
                day: field(DAY)?,
                hour: decode_hour(self.reg(HOURS), binary, h24)?,
                minute: field(MINUTES)?,
                second: field(SECONDS)?,
                weekday: 1,
            }
            .to_unix()
        })();
        match date {
            Some(secs) => {
                self.state.offset_us = secs.saturating_mul(MICROS).saturating_sub(now_us);
            }
            None => tracing::debug!("CMOS: the guest wrote an invalid time; clock unchanged"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The first byte of battery-backed RAM (0x0e..0x80: 114 bytes).
    const RAM_START: u8 = 0x0e;

    /// 2026-12-07T17:45:30.25Z, a Monday.
    const NOW: i64 = 1_796_665_530 * MICROS + 250_000;

    fn read(c: &mut Cmos, index: u8, now: i64) -> u8 {
        c.write_index(index);
        c.read_data(now)
    }

    fn write(c: &mut Cmos, index: u8, value: u8, now: i64) {
        c.write_index(index);
        c.write_data(value, now);
    }

    fn date(c: &mut Cmos, now: i64) -> [u8; 8] {
        CLOCK.map(|i| read(c, i, now))
    }

    #[test]
    fn power_on_reads_the_host_time_in_bcd_24_hour_mode() {
        let mut c = Cmos::default();
        // seconds, minutes, hours, weekday, day, month, year, century
        assert_eq!(
            date(&mut c, NOW),
            [0x30, 0x45, 0x17, 0x02, 0x07, 0x12, 0x26, 0x20]
        );
        assert_eq!(read(&mut c, REG_D, NOW), VRT, "valid RAM and time");
        assert_eq!(read(&mut c, REG_B, NOW), HOURS_24);
        assert_eq!(read(&mut c, REG_C, NOW), 0);
        // A second later the seconds moved on.
        assert_eq!(read(&mut c, SECONDS, NOW + MICROS), 0x31);
    }

    #[test]
    fn binary_and_12_hour_modes_follow_register_b() {
        let mut c = Cmos::default();
        write(&mut c, REG_B, BINARY, NOW);
        assert_eq!(
            date(&mut c, NOW),
            [30, 45, 0x80 | 5, 2, 7, 12, 26, 20],
            "binary, 5 PM"
        );
        write(&mut c, REG_B, 0, NOW);
        assert_eq!(read(&mut c, HOURS, NOW), 0x85, "BCD, 5 PM");
    }

    #[test]
    fn uip_is_set_just_before_each_update() {
        let mut c = Cmos::default();
        let second = NOW - NOW.rem_euclid(MICROS);
        assert_eq!(read(&mut c, REG_A, second + 500_000), REG_A_DEFAULT);
        assert_eq!(read(&mut c, REG_A, second + 999_800), REG_A_DEFAULT | UIP);
        assert_eq!(read(&mut c, REG_A, second + MICROS), REG_A_DEFAULT);
        write(&mut c, REG_A, 0xff, NOW);
        assert_eq!(read(&mut c, REG_A, second), 0x7f, "UIP is read-only");
    }

    #[test]
    fn time_set_under_set_sticks_and_keeps_running() {
        let mut c = Cmos::default();
        // The guest sets 1999-12-31 23:59:58, as Linux's mc146818_set_time does.
        write(&mut c, REG_B, HOURS_24 | SET | UIE, NOW);
        assert_eq!(read(&mut c, REG_B, NOW) & UIE, 0, "SET clears UIE");
        for (index, value) in [
            (SECONDS, 0x58),
            (MINUTES, 0x59),
            (HOURS, 0x23),
            (DAY, 0x31),
            (MONTH, 0x12),
            (YEAR, 0x99),
            (CENTURY, 0x19),
        ] {
            write(&mut c, index, value, NOW);
        }
        // Held: the registers read what was written, however long the guest takes.
        assert_eq!(read(&mut c, SECONDS, NOW + 5 * MICROS), 0x58);
        write(&mut c, REG_B, HOURS_24, NOW + 5 * MICROS);
        let later = NOW + 8 * MICROS;
        assert_eq!(
            date(&mut c, later),
            [0x01, 0x00, 0x00, 0x07, 0x01, 0x01, 0x00, 0x20],
            "three seconds after release: 2000-01-01 00:00:01, a Saturday"
        );
        // The offset is the state a checkpoint keeps: a restored CMOS reads the same time.
        let mut copy = Cmos::from_state(c.state().clone());
        assert_eq!(date(&mut copy, later), date(&mut c, later));
    }

    #[test]
    fn a_field_written_while_the_clock_runs_takes_effect() {
        let mut c = Cmos::default();
        write(&mut c, MINUTES, 0x05, NOW);
        assert_eq!(read(&mut c, MINUTES, NOW + 2 * MICROS), 0x05);
        assert_eq!(read(&mut c, HOURS, NOW + 2 * MICROS), 0x17);
    }

    #[test]
    fn an_invalid_time_leaves_the_clock_alone() {
        let mut c = Cmos::default();
        write(&mut c, REG_B, HOURS_24 | SET, NOW);
        write(&mut c, MONTH, 0x13, NOW);
        write(&mut c, REG_B, HOURS_24, NOW);
        assert_eq!(c.state().offset_us, 0);
        write(&mut c, DAY, 0x3a, NOW);
        assert_eq!(c.state().offset_us, 0, "0x3a is not BCD");
    }

    #[test]
    fn ram_alarm_and_index_register() {
        let mut c = Cmos::default();
        write(&mut c, 0x7f, 0xab, NOW);
        write(&mut c, RAM_START, 0xcd, NOW);
        write(&mut c, 0x01, 0x45, NOW); // seconds alarm
        assert_eq!(read(&mut c, 0x7f, NOW), 0xab);
        assert_eq!(read(&mut c, RAM_START, NOW), 0xcd);
        assert_eq!(read(&mut c, 0x01, NOW), 0x45);
        c.write_index(0x80 | RAM_START);
        assert!(c.state().nmi_disabled);
        assert_eq!(c.read_data(NOW), 0xcd, "bit 7 masks NMIs, not the index");
        write(&mut c, REG_D, 0, NOW);
        assert_eq!(read(&mut c, REG_D, NOW), VRT, "register D is read-only");
        c.state.registers[usize::from(REG_C)] = 0x90;
        assert_eq!(read(&mut c, REG_C, NOW), 0x90);
        assert_eq!(read(&mut c, REG_C, NOW), 0, "reading C clears it");
    }

    #[test]
    fn state_round_trips_through_json_and_a_short_register_file_is_refused() {
        let mut c = Cmos::default();
        write(&mut c, 0x40, 7, NOW);
        write(&mut c, YEAR, 0x30, NOW);
        let json = serde_json::to_string(c.state()).unwrap();
        let back: CmosState = serde_json::from_str(&json).unwrap();
        assert_eq!(&back, c.state());
        let mut short: serde_json::Value = serde_json::from_str(&json).unwrap();
        short["registers"].as_array_mut().unwrap().pop();
        let short = short.to_string();
        let err = serde_json::from_str::<CmosState>(&short).unwrap_err();
        assert!(err.to_string().contains("expected 128"), "{err}");
    }
}
