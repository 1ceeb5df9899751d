//! The rows `thaw-bench restore --json` writes: one per workload × link × strategy.
//!
//! Parsing is sans-I/O: it takes the text and a name for it (the file), and its errors name that
//! file, the row (counting from 1) and what is wrong with it.

use serde::{Deserialize, Deserializer, Serialize};

/// Where the fetch agent gets blocks from during a restore.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Link {
    #[serde(rename = "rack")]
    Rack,
    #[serde(rename = "region")]
    Region,
    #[serde(rename = "object-store")]
    ObjectStore,
}

impl Link {
    /// Every link, in the order the page shows them (nearest first).
    pub const ALL: [Link; 3] = [Link::Rack, Link::Region, Link::ObjectStore];

    pub fn name(self) -> &'static str {
        match self {
            Link::Rack => "rack",
            Link::Region => "region",
            Link::ObjectStore => "object-store",
        }
    }
}

/// How memory reaches the restored guest (the benchmark's own list).
pub use crate::benches::restore::strategy::Strategy;

/// Percentiles of fault service latency, in microseconds.
pub use crate::benches::latency::Percentiles as LatencySummary;

/// One measured restore: a workload's last trace replayed over one link with one strategy.
/// Keys the reader does not know are ignored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Row {
    pub workload: String,
    pub link: Link,
    pub strategy: Strategy,
    pub time_to_finish_s: f64,
    pub restore_overhead_s: f64,
    pub requests: u64,
    pub bytes: u64,
    pub faults: u64,
    /// Run time with all memory already present (the same for every strategy of a workload).
    pub baseline_s: f64,
    /// Absent or null when no fault was served (eager).
    #[serde(default)]
    pub fault_latency_us: Option<LatencySummary>,
    /// (latency µs, cumulative fraction) points, sorted; absent, null or empty without faults.
    #[serde(default, deserialize_with = "null_as_empty")]
    pub fault_latency_cdf: Vec<(f64, f64)>,
    /// The legs of the demand fetches to the block server (`--hop-timings`); absent when
    /// not timed or when there was no block server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub demand_fetch_us: Option<crate::benches::restore::hops::DemandFetchSplit>,
    /// The guest's stalled touches, split by whether a learning trace touched the page;
    /// absent for eager (and in rows from before the split was measured).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stalls_by_foresight: Option<crate::benches::restore::foresight::StallSplit>,
}

fn null_as_empty<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<(f64, f64)>, D::Error> {
    Ok(Option::<Vec<(f64, f64)>>::deserialize(d)?.unwrap_or_default())
}

impl Row {
    /// `workload/link/strategy`, how errors and tooltips name a row.
    pub fn label(&self) -> String {
        format!(
            "{}/{}/{}",
            self.workload,
            self.link.name(),
            self.strategy.name()
        )
    }

    /// Checks what serde cannot: times are positive, the CDF is a CDF. Rows built in code
    /// (not parsed) go through this too, since JSON cannot carry NaN but `f64` can.
    pub fn validate(&self) -> Result<(), String> {
        if self.workload.is_empty() {
            return Err("workload is empty".into());
        }
        for (key, v) in [
            ("time_to_finish_s", self.time_to_finish_s),
            ("baseline_s", self.baseline_s),
        ] {
            if !(v.is_finite() && v > 0.0) {
                return Err(format!(
                    "{key} must be a positive number of seconds, got {v}"
                ));
            }
        }
        if !self.restore_overhead_s.is_finite() {
            return Err(format!(
                "restore_overhead_s must be finite, got {}",
                self.restore_overhead_s
            ));
        }
        if let Some(l) = &self.fault_latency_us {
            for (key, v) in [
                ("p50", l.p50),
                ("p90", l.p90),
                ("p99", l.p99),
                ("max", l.max),
            ] {
                if !(v.is_finite() && v >= 0.0) {
                    return Err(format!("fault_latency_us.{key} must be ≥ 0, got {v}"));
                }
            }
        }
        let mut previous = (0.0, 0.0);
        for (i, &(latency, fraction)) in self.fault_latency_cdf.iter().enumerate() {
            if !(latency.is_finite() && latency >= 0.0) {
                return Err(format!(
                    "fault_latency_cdf[{i}]: latency must be ≥ 0 µs, got {latency}"
                ));
            }
            if !(0.0..=1.0).contains(&fraction) {
                return Err(format!(
                    "fault_latency_cdf[{i}]: fraction must lie in 0..1, got {fraction}"
                ));
            }
            if latency < previous.0 || fraction < previous.1 {
                return Err(format!(
                    "fault_latency_cdf[{i}]: points must not decrease, got {:?} after {:?}",
                    (latency, fraction),
                    previous
                ));
            }
            previous = (latency, fraction);
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RowsError {
    #[error("{source_name}: not JSON: {error}")]
    NotJson {
        source_name: String,
        error: serde_json::Error,
    },
    #[error("{source_name}: expected a JSON list of rows, found {found}")]
    NotAList { source_name: String, found: String },
    #[error("{source_name}: row {number} of {total}{label}: {message}")]
    BadRow {
        source_name: String,
        /// Counting from 1.
        number: usize,
        total: usize,
        /// ` (workload/link/strategy)` as far as the row names them, or empty.
        label: String,
        message: String,
    },
}

/// Parses the rows in `text`, a JSON list; `source_name` (the file) is used only in errors.
pub fn parse_rows(text: &str, source_name: &str) -> Result<Vec<Row>, RowsError> {
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|error| RowsError::NotJson {
            source_name: source_name.to_string(),
            error,
        })?;
    let serde_json::Value::Array(items) = value else {
        return Err(RowsError::NotAList {
            source_name: source_name.to_string(),
            found: json_kind(&value).to_string(),
        });
    };
    let total = items.len();
    items
        .into_iter()
        .enumerate()
        .map(|(i, item)| {
            let bad = |message: String, label: String| RowsError::BadRow {
                source_name: source_name.to_string(),
                number: i + 1,
                total,
                label,
                message,
            };
            let label = partial_label(&item);
            let row: Row =
                serde_json::from_value(item).map_err(|e| bad(e.to_string(), label.clone()))?;
            row.validate().map_err(|message| bad(message, label))?;
            Ok(row)
        })
        .collect()
}

/// The first two rows (indexes into `rows`) that measure the same workload, link and strategy.
pub(crate) fn find_duplicate(rows: &[Row]) -> Option<(usize, usize)> {
    let mut seen = std::collections::BTreeMap::new();
    for (i, row) in rows.iter().enumerate() {
        if let Some(&first) = seen.get(&(row.workload.as_str(), row.link, row.strategy)) {
            return Some((first, i));
        }
        seen.insert((row.workload.as_str(), row.link, row.strategy), i);
    }
    None
}

/// ` (shell/rack/thaw)` from whichever of the naming keys a malformed row still has.
fn partial_label(item: &serde_json::Value) -> String {
    let parts: Vec<&str> = ["workload", "link", "strategy"]
        .iter()
        .map(|key| item.get(key).and_then(|v| v.as_str()).unwrap_or("?"))
        .collect();
    if parts.iter().all(|p| *p == "?") {
        String::new()
    } else {
        format!(" ({})", parts.join("/"))
    }
}

fn json_kind(value: &serde_json::Value) -> &'static str {
    match value {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "a list",
        serde_json::Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROW: &str = r#"{"workload": "shell", "link": "rack", "strategy": "thaw",
        "time_to_finish_s": 2.41, "restore_overhead_s": 0.012, "requests": 120,
        "bytes": 7340032, "faults": 310, "baseline_s": 2.398,
        "fault_latency_us": {"p50": 35.1, "p90": 80.0, "p99": 410.2, "max": 1900.0},
        "fault_latency_cdf": [[12.5, 0.01], [14.0, 0.02]], "extra": {"ignored": true}}"#;

    #[test]
    fn parses_a_row_and_ignores_unknown_keys() {
        let rows = parse_rows(&format!("[{ROW}]"), "r.json").unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].strategy, Strategy::Thaw);
        assert_eq!(rows[0].link, Link::Rack);
        assert_eq!(rows[0].fault_latency_cdf, vec![(12.5, 0.01), (14.0, 0.02)]);
        assert_eq!(rows[0].fault_latency_us.unwrap().p99, 410.2);
    }

    #[test]
    fn null_latency_and_cdf_are_empty() {
        let row = ROW
            .replace(
                r#"{"p50": 35.1, "p90": 80.0, "p99": 410.2, "max": 1900.0}"#,
                "null",
            )
            .replace("[[12.5, 0.01], [14.0, 0.02]]", "null");
        let rows = parse_rows(&format!("[{row}]"), "r.json").unwrap();
        assert_eq!(rows[0].fault_latency_us, None);
        assert!(rows[0].fault_latency_cdf.is_empty());
    }

    #[test]
    fn names_round_trip_through_serde() {
        for s in Strategy::ALL {
            let json = serde_json::to_string(&s).unwrap();
            assert_eq!(json, format!("\"{}\"", s.name()));
            assert_eq!(Strategy::ALL[s.index()], s);
        }
        for l in Link::ALL {
            assert_eq!(
                serde_json::to_string(&l).unwrap(),
                format!("\"{}\"", l.name())
            );
        }
    }

    #[test]
    fn errors_name_the_file_the_row_and_the_problem() {
        let missing = ROW.replace(r#""baseline_s": 2.398,"#, "");
        let err = parse_rows(&format!("[{ROW}, {missing}]"), "r.json")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("r.json: row 2 of 2 (shell/rack/thaw)"),
            "{err}"
        );
        assert!(err.contains("baseline_s"), "{err}");

        let unknown = ROW.replace(r#""thaw""#, r#""lazy""#);
        let err = parse_rows(&format!("[{unknown}]"), "r.json")
            .unwrap_err()
            .to_string();
        assert!(err.contains("row 1 of 1 (shell/rack/lazy)"), "{err}");
        assert!(err.contains("unknown variant `lazy`"), "{err}");

        let bad_link = ROW.replace(r#""rack""#, r#""lan""#);
        let err = parse_rows(&format!("[{bad_link}]"), "r.json")
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown variant `lan`"), "{err}");

        let negative = ROW.replace("2.41", "-1");
        let err = parse_rows(&format!("[{negative}]"), "r.json")
            .unwrap_err()
            .to_string();
        assert!(err.contains("time_to_finish_s must be a positive"), "{err}");

        let unsorted = ROW.replace("[14.0, 0.02]", "[11.0, 0.02]");
        let err = parse_rows(&format!("[{unsorted}]"), "r.json")
            .unwrap_err()
            .to_string();
        assert!(err.contains("fault_latency_cdf[1]"), "{err}");

        let err = parse_rows(ROW, "r.json").unwrap_err().to_string();
        assert_eq!(err, "r.json: expected a JSON list of rows, found an object");
        assert!(parse_rows("[", "r.json")
            .unwrap_err()
            .to_string()
            .starts_with("r.json: not JSON"));
    }

    #[test]
    fn duplicates_are_found() {
        let rows = parse_rows(&format!("[{ROW}]"), "r.json").unwrap();
        let mut other = rows[0].clone();
        other.strategy = Strategy::Oracle;
        let all = vec![rows[0].clone(), other, rows[0].clone()];
        assert_eq!(find_duplicate(&all), Some((0, 2)));
        assert_eq!(find_duplicate(&all[..2]), None);
    }
}
