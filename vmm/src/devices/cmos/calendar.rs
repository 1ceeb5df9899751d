//! Calendar arithmetic for the RTC: Unix time to a civil UTC date and back (proleptic
//! Gregorian, any year), and the MC146818's BCD and 12-hour encodings. No I/O.

/// Seconds in a day.
const DAY: i64 = 86_400;

/// A UTC date and time of day, as the RTC's registers hold it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct DateTime {
    pub year: i64,
    /// 1 to 12.
    pub month: u32,
    /// 1 to 31.
    pub day: u32,
    pub hour: u32,
    pub minute: u32,
    pub second: u32,
    /// 1 (Sunday) to 7 (Saturday), the MC146818's day-of-week register.
    pub weekday: u32,
}

/// Days since 1970-01-01 of a civil date (Gregorian; month 1-12, day 1-31 not range-checked).
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (i64::from(month) + 9) % 12;
    let doy = (153 * mp + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The civil date (year, month, day) of a day count since 1970-01-01.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

fn is_leap(year: i64) -> bool {
    year % 4 == 0 && (year % 100 != 0 || year % 400 == 0)
}

fn days_in_month(year: i64, month: u32) -> u32 {
    match month {
        2 if is_leap(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

impl DateTime {
    /// The date and time of `secs` seconds since the Unix epoch.
    pub(crate) fn from_unix(secs: i64) -> DateTime {
        let days = secs.div_euclid(DAY);
        let in_day = secs.rem_euclid(DAY) as u32;
        let (year, month, day) = civil_from_days(days);
        DateTime {
            year,
            month,
            day,
            hour: in_day / 3600,
            minute: in_day / 60 % 60,
            second: in_day % 60,
            weekday: ((days + 4).rem_euclid(7) + 1) as u32,
        }
    }

    /// Seconds since the Unix epoch, or None if a field is out of its range (the weekday is
    /// not checked: the clock derives it from the date, as guests expect).
    pub(crate) fn to_unix(self) -> Option<i64> {
        let valid = (1..=12).contains(&self.month)
            && self.day >= 1
            && self.day <= days_in_month(self.year, self.month)
            && self.hour < 24
            && self.minute < 60
            && self.second < 60;
        valid.then(|| {
            days_from_civil(self.year, self.month, self.day) * DAY
                + i64::from(self.hour * 3600 + self.minute * 60 + self.second)
        })
    }
}

/// `value` (0 to 99) as a register holds it: binary, or two BCD digits.
pub(crate) fn encode(value: u32, binary: bool) -> u8 {
    let v = (value % 100) as u8;
    if binary {
        v
    } else {
        ((v / 10) << 4) | (v % 10)
    }
}

/// A register's value (binary or BCD), or None if a BCD digit is over 9.
pub(crate) fn decode(reg: u8, binary: bool) -> Option<u32> {
    if binary {
        return Some(u32::from(reg));
    }
    let (hi, lo) = (reg >> 4, reg & 0xf);
    (hi <= 9 && lo <= 9).then_some(u32::from(hi * 10 + lo))
}

/// Bit 7 of the hours register in 12-hour mode: PM.
const PM: u8 = 0x80;

/// The hours register: 0-23, or in 12-hour mode 1-12 with bit 7 set after noon.
pub(crate) fn encode_hour(hour: u32, binary: bool, h24: bool) -> u8 {
    if h24 {
        return encode(hour, binary);
    }
    let h12 = match hour % 12 {
        0 => 12,
        h => h,
    };
    encode(h12, binary) | if hour >= 12 { PM } else { 0 }
}

/// The hour (0-23) of an hours register, or None if it is not a valid encoding.
pub(crate) fn decode_hour(reg: u8, binary: bool, h24: bool) -> Option<u32> {
    if h24 {
        return decode(reg, binary).filter(|h| *h < 24);
    }
    let h12 = decode(reg & !PM, binary).filter(|h| (1..=12).contains(h))?;
    Some(h12 % 12 + if reg & PM != 0 { 12 } else { 0 })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unix_time_converts_to_dates_and_back() {
        let epoch = DateTime::from_unix(0);
        assert_eq!((epoch.year, epoch.month, epoch.day), (1970, 1, 1));
        assert_eq!(epoch.weekday, 5, "1970-01-01 was a Thursday");
        // 2024-02-29T23:59:59Z, a Thursday in a leap year.
        let t = DateTime::from_unix(1_709_251_199);
        assert_eq!(
            t,
            DateTime {
                year: 2024,
                month: 2,
                day: 29,
                hour: 23,
                minute: 59,
                second: 59,
                weekday: 5
            }
        );
        assert_eq!(t.to_unix(), Some(1_709_251_199));
        let next = DateTime::from_unix(1_709_251_200);
        assert_eq!((next.month, next.day, next.weekday), (3, 1, 6));
        // Before the epoch: 1969-12-31T23:59:59Z, a Wednesday.
        let before = DateTime::from_unix(-1);
        assert_eq!((before.year, before.month, before.day), (1969, 12, 31));
        assert_eq!((before.hour, before.weekday), (23, 4));
        for secs in (-5_000_000_000i64..10_000_000_000).step_by(7_777_777) {
            assert_eq!(DateTime::from_unix(secs).to_unix(), Some(secs), "{secs}");
        }
    }

    #[test]
    fn impossible_dates_have_no_unix_time() {
        let ok = DateTime::from_unix(1_700_000_000);
        assert!(DateTime { month: 13, ..ok }.to_unix().is_none());
        assert!(DateTime { day: 0, ..ok }.to_unix().is_none());
        assert!(DateTime { hour: 24, ..ok }.to_unix().is_none());
        let feb = |year, day| DateTime {
            year,
            month: 2,
            day,
            ..ok
        };
        assert!(feb(2023, 29).to_unix().is_none());
        assert!(feb(2000, 29).to_unix().is_some(), "2000 was a leap year");
        assert!(feb(2100, 29).to_unix().is_none(), "2100 is not");
    }

    #[test]
    fn bcd_and_twelve_hour_encodings() {
        assert_eq!(encode(59, false), 0x59);
        assert_eq!(encode(59, true), 59);
        assert_eq!(decode(0x59, false), Some(59));
        assert_eq!(decode(0x5a, false), None);
        assert_eq!(decode(0xa0, false), None);
        assert_eq!(encode_hour(0, false, false), 0x12, "midnight is 12 AM");
        assert_eq!(encode_hour(12, false, false), 0x92, "noon is 12 PM");
        assert_eq!(encode_hour(23, true, false), 0x80 | 11);
        assert_eq!(encode_hour(23, false, true), 0x23);
        for binary in [false, true] {
            for h24 in [false, true] {
                for hour in 0..24 {
                    let reg = encode_hour(hour, binary, h24);
                    assert_eq!(decode_hour(reg, binary, h24), Some(hour));
                }
            }
        }
        assert_eq!(decode_hour(0x13, false, false), None, "13 in 12-hour mode");
        assert_eq!(decode_hour(0x24, false, true), None);
    }
}
