//! Workload files (docs/format.md, "Workload files"): a directory holding
//! `workload.json`, `memory.raw` (the regions' bytes concatenated) and
//! `traces/*.trace` (one restore each: `<t_us> <page_index>` per first touch).
//!
//! [`parse_spec`] and [`parse_trace`] are free of I/O and take the file's name
//! only to name it in errors; the benchmark reads a whole directory with them.

use std::collections::HashMap;

use serde::Deserialize;

/// Everything that can be wrong with a workload directory. Each error names
/// the file, and the line where there is one.
#[derive(Debug, thiserror::Error)]
pub enum WorkloadError {
    #[error("{file}: not a valid workload description: {source}")]
    Json {
        file: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("{file}: inconsistent workload description: {reason}")]
    BadSpec { file: String, reason: String },
    #[error("{file}:{line}: malformed trace line: {reason}")]
    Malformed {
        file: String,
        line: usize,
        reason: String,
    },
    #[error("{file}:{line}: page {page} is outside the memory ({total_pages} pages)")]
    PageOutOfRange {
        file: String,
        line: usize,
        page: u64,
        total_pages: u64,
    },
    #[error("{file}:{line}: trace not sorted by time: t_us {t_us} after {previous}")]
    Unsorted {
        file: String,
        line: usize,
        t_us: u64,
        previous: u64,
    },
    #[error("{file}:{line}: page {page} appears twice (first on line {first_line})")]
    DuplicatePage {
        file: String,
        line: usize,
        page: u64,
        first_line: usize,
    },
    #[error("{file}: memory image is {got} bytes, workload.json says {expected}")]
    MemorySize {
        file: String,
        expected: u64,
        got: u64,
    },
    #[error("{file}: memory image missing (neither memory.raw nor memory.raw.zst)")]
    MissingMemory { file: String },
    #[error("{dir}: traces directory missing")]
    MissingTraces { dir: String },
    #[error("{file}: {source}")]
    Io {
        file: String,
        #[source]
        source: std::io::Error,
    },
}

/// `workload.json`. Keys not listed here are ignored.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct WorkloadSpec {
    pub name: String,
    #[serde(default)]
    pub description: String,
    pub page_size: u64,
    pub memory_bytes: u64,
    pub regions: Vec<WorkloadRegion>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct WorkloadRegion {
    pub guest_phys_addr: u64,
    pub size: u64,
}

impl WorkloadSpec {
    pub fn total_pages(&self) -> u64 {
        self.memory_bytes / self.page_size
    }
}

/// Parses and checks `workload.json`: page size a power of two, regions
/// page-aligned, non-empty and disjoint, their sizes adding up to
/// `memory_bytes`.
pub fn parse_spec(file: &str, text: &str) -> Result<WorkloadSpec, WorkloadError> {
    let spec: WorkloadSpec = serde_json::from_str(text).map_err(|source| WorkloadError::Json {
        file: file.to_owned(),
        source,
    })?;
    let bad = |reason: String| WorkloadError::BadSpec {
        file: file.to_owned(),
        reason,
    };
    let ps = spec.page_size;
    if ps == 0 || !ps.is_power_of_two() {
        return Err(bad(format!("page_size {ps} is not a power of two")));
    }
    if spec.regions.is_empty() {
        return Err(bad("no regions".into()));
    }
    let mut sum: u64 = 0;
    let mut spans: Vec<(u64, u64)> = Vec::new();
    for (i, r) in spec.regions.iter().enumerate() {
        if r.size == 0 || r.size % ps != 0 || r.guest_phys_addr % ps != 0 {
            return Err(bad(format!(
                "region {i} (at {:#x}, {} bytes) is empty or not aligned to the page size",
                r.guest_phys_addr, r.size
            )));
        }
        let end = r
            .guest_phys_addr
            .checked_add(r.size)
            .ok_or_else(|| bad(format!("region {i} runs past the end of the address space")))?;
        spans.push((r.guest_phys_addr, end));
        sum = sum
            .checked_add(r.size)
            .ok_or_else(|| bad("region sizes overflow".into()))?;
    }
    spans.sort_unstable();
    if spans.windows(2).any(|w| w[1].0 < w[0].1) {
        return Err(bad("regions overlap".into()));
    }
    if sum != spec.memory_bytes {
        return Err(bad(format!(
            "regions add up to {sum} bytes, memory_bytes is {}",
            spec.memory_bytes
        )));
    }
    Ok(spec)
}

/// One first touch of a page after resume.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceEvent {
    /// Microseconds of guest progress since resume (time waiting for memory
    /// not counted).
    pub t_us: u64,
    pub page: u64,
}

/// One restore of a workload: its first touches, sorted by time, each page
/// at most once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trace {
    /// The file's name without `.trace`.
    pub name: String,
    pub events: Vec<TraceEvent>,
}

impl Trace {
    /// Pages in order of first touch.
    pub fn pages(&self) -> Vec<u64> {
        self.events.iter().map(|e| e.page).collect()
    }
}

/// Parses a trace: `<t_us> <page_index>` per line and optional further
/// columns (ignored); `#` starts a comment; blank lines are skipped. Times
/// must not decrease, pages must lie below `total_pages` and appear once.
pub fn parse_trace(
    file: &str,
    name: &str,
    text: &str,
    total_pages: u64,
) -> Result<Trace, WorkloadError> {
    let mut events = Vec::new();
    let mut seen: HashMap<u64, usize> = HashMap::new();
    let mut previous = 0u64;
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let content = raw.split('#').next().unwrap_or("").trim();
        if content.is_empty() {
            continue;
        }
        let malformed = |reason: String| WorkloadError::Malformed {
            file: file.to_owned(),
            line,
            reason,
        };
        let mut cols = content.split_whitespace();
        let mut number = |what: &str| -> Result<u64, WorkloadError> {
            let col = cols
                .next()
                .ok_or_else(|| malformed(format!("{what} missing")))?;
            col.parse::<u64>()
                .map_err(|_| malformed(format!("{what} {col:?} is not a non-negative integer")))
        };
        let t_us = number("t_us")?;
        let page = number("page_index")?;
        if t_us < previous {
            return Err(WorkloadError::Unsorted {
                file: file.to_owned(),
                line,
                t_us,
                previous,
            });
        }
        if page >= total_pages {
            return Err(WorkloadError::PageOutOfRange {
                file: file.to_owned(),
                line,
                page,
                total_pages,
            });
        }
        if let Some(&first_line) = seen.get(&page) {
            return Err(WorkloadError::DuplicatePage {
                file: file.to_owned(),
                line,
                page,
                first_line,
            });
        }
        seen.insert(page, line);
        previous = t_us;
        events.push(TraceEvent { t_us, page });
    }
    Ok(Trace {
        name: name.to_owned(),
        events,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPEC: &str = r#"{"name": "t", "page_size": 4096, "memory_bytes": 40960,
        "regions": [{"guest_phys_addr": 0, "size": 32768},
                    {"guest_phys_addr": 1048576, "size": 8192}],
        "future_key": {"anything": [1, 2]}}"#;

    #[test]
    fn spec_parses_and_ignores_unknown_keys() {
        let spec = parse_spec("w.json", SPEC).unwrap();
        assert_eq!(spec.total_pages(), 10);
        assert_eq!(spec.regions.len(), 2);
        assert_eq!(spec.description, "");
    }

    #[test]
    fn inconsistent_specs_are_rejected() {
        let cases = [
            SPEC.replace("40960", "40961"),
            SPEC.replace("\"page_size\": 4096", "\"page_size\": 3000"),
            SPEC.replace("1048576", "4096"),
            SPEC.replace("\"size\": 8192", "\"size\": 100"),
        ];
        for text in cases {
            let err = parse_spec("w.json", &text).unwrap_err();
            assert!(matches!(err, WorkloadError::BadSpec { .. }), "{err}");
            assert!(err.to_string().starts_with("w.json: "), "{err}");
        }
        assert!(matches!(
            parse_spec("w.json", "{\"name\": 1}"),
            Err(WorkloadError::Json { .. })
        ));
    }

    #[test]
    fn trace_parses_comments_blank_lines_and_extra_columns() {
        let text = "# a trace\n\n0 3\n0 1 cpu0 r\n  7 9   # late\n12 0 1 w remote\n";
        let trace = parse_trace("a.trace", "a", text, 10).unwrap();
        assert_eq!(trace.pages(), vec![3, 1, 9, 0]);
        assert_eq!(trace.events[2], TraceEvent { t_us: 7, page: 9 });
    }

    #[test]
    fn bad_traces_name_file_and_line() {
        let err = parse_trace("x.trace", "x", "0 1\n5 10\n", 10).unwrap_err();
        assert!(matches!(
            err,
            WorkloadError::PageOutOfRange {
                line: 2,
                page: 10,
                total_pages: 10,
                ..
            }
        ));
        assert_eq!(
            err.to_string(),
            "x.trace:2: page 10 is outside the memory (10 pages)"
        );
        let err = parse_trace("x.trace", "x", "5 1\n# c\n4 2\n", 10).unwrap_err();
        assert!(matches!(
            err,
            WorkloadError::Unsorted {
                line: 3,
                t_us: 4,
                previous: 5,
                ..
            }
        ));
        let err = parse_trace("x.trace", "x", "1 1\n2 2\n3 1\n", 10).unwrap_err();
        assert!(matches!(
            err,
            WorkloadError::DuplicatePage {
                line: 3,
                page: 1,
                first_line: 1,
                ..
            }
        ));
        for bad in ["7\n", "a 1\n", "1 -2\n", "1 2.5\n"] {
            let err = parse_trace("x.trace", "x", bad, 10).unwrap_err();
            assert!(
                matches!(err, WorkloadError::Malformed { line: 1, .. }),
                "{bad:?}: {err}"
            );
            assert!(err.to_string().starts_with("x.trace:1: "), "{err}");
        }
    }
}
