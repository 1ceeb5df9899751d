//! The date and machine lines for a page measured on this host (the caller may pass its own).

use thaw_format::units::format_bytes;

/// Today's date in UTC, `YYYY-MM-DD`.
pub fn today_utc() -> String {
    let seconds = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (y, m, d) = civil_date((seconds / 86_400) as i64);
    format!("{y:04}-{m:02}-{d:02}")
}

/// CPU model, logical CPUs, memory and kernel of this host, from /proc.
pub fn this_machine() -> String {
    let read = |path| std::fs::read_to_string(path).unwrap_or_default();
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    describe_machine(
        &read("/proc/cpuinfo"),
        &read("/proc/meminfo"),
        read("/proc/sys/kernel/osrelease").trim(),
        cpus,
    )
}

/// "MODEL, N CPUs, MEM memory, Linux RELEASE", leaving out what the inputs do not tell.
pub fn describe_machine(cpuinfo: &str, meminfo: &str, kernel: &str, cpus: usize) -> String {
    let field = |text: &str, key: &str| {
        text.lines().find_map(|line| {
            let (k, v) = line.split_once(':')?;
            (k.trim() == key).then(|| v.trim().to_string())
        })
    };
    let mut parts = Vec::new();
    if let Some(model) = field(cpuinfo, "model name") {
        parts.push(model);
    }
    if cpus > 0 {
        parts.push(format!("{cpus} CPUs"));
    }
    let mem_kib = field(meminfo, "MemTotal")
        .and_then(|v| v.trim_end_matches("kB").trim().parse::<u64>().ok());
    if let Some(kib) = mem_kib {
        parts.push(format!("{} memory", format_bytes(kib * 1024)));
    }
    if !kernel.is_empty() {
        parts.push(format!("Linux {kernel}"));
    }
    if parts.is_empty() {
        "an undescribed machine".into()
    } else {
        parts.join(", ")
    }
}

/// (year, month, day) of the day `days` after 1970-01-01 in the proleptic Gregorian calendar.
/// Counts in 400-year eras of 146097 days, with years starting on 1 March so that the leap day
/// falls at the end of a year.
fn civil_date(days: i64) -> (i64, u32, u32) {
    let shifted = days + 719_468; // days from 0000-03-01 to 1970-01-01
    let era = shifted.div_euclid(146_097);
    let day_of_era = shifted.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_from_march = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * month_from_march + 2) / 5 + 1) as u32;
    let month = (if month_from_march < 10 {
        month_from_march + 3
    } else {
        month_from_march - 9
    }) as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates() {
        assert_eq!(civil_date(0), (1970, 1, 1));
        assert_eq!(civil_date(-1), (1969, 12, 31));
        assert_eq!(civil_date(11_016), (2000, 2, 29));
        assert_eq!(civil_date(19_723), (2024, 1, 1));
        assert_eq!(civil_date(20_000), (2024, 10, 4));
    }

    #[test]
    fn machine_line_from_proc_text() {
        let cpuinfo = "processor\t: 0\nmodel name\t: Example CPU @ 2.0GHz\n";
        let meminfo = "MemTotal:       24576000 kB\nMemFree: 1 kB\n";
        assert_eq!(
            describe_machine(cpuinfo, meminfo, "6.1.0", 2),
            "Example CPU @ 2.0GHz, 2 CPUs, 23.4 GiB memory, Linux 6.1.0"
        );
        assert_eq!(describe_machine("", "", "", 0), "an undescribed machine");
        assert!(today_utc().len() == 10);
    }
}
