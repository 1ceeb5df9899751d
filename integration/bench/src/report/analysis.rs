//! What the page says about the rows: each strategy's cut of restore overhead against lazy-4k,
//! its time to finish against the oracle, and whether `thaw` meets the targets.

use super::rows::{find_duplicate, Link, Row, Strategy};

/// `thaw`'s restore overhead may be at most this fraction of lazy-4k's (a ≥ 97% cut).
pub(crate) const MAX_OVERHEAD_FRACTION_OF_LAZY: f64 = 0.03;
/// `thaw`'s time to finish may be at most this multiple of the oracle's.
pub(crate) const MAX_FINISH_RATIO_TO_ORACLE: f64 = 1.1;

#[derive(Debug, thiserror::Error)]
pub enum AnalysisError {
    #[error("row {number} ({label}): {message}")]
    InvalidRow {
        /// Counting from 1.
        number: usize,
        label: String,
        message: String,
    },
    #[error("rows {first} and {second} both measure {label} (counting from 1)")]
    DuplicateRow {
        first: usize,
        second: usize,
        label: String,
    },
    #[error("no rows to report")]
    NoRows,
}

/// The rows of one workload over one link, one slot per strategy.
#[derive(Debug)]
pub struct Group<'a> {
    pub workload: &'a str,
    pub link: Link,
    rows: [Option<&'a Row>; Strategy::COUNT],
}

/// Whether `thaw` meets both targets on one workload and link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    Fail {
        overhead_met: bool,
        finish_met: bool,
    },
    /// A row the comparison needs is absent, or lazy-4k had no overhead to cut.
    Undecided(&'static str),
}

impl<'a> Group<'a> {
    pub fn row(&self, strategy: Strategy) -> Option<&'a Row> {
        self.rows[strategy.index()]
    }

    /// The rows present, in [`Strategy::ALL`] order.
    pub fn present(&self) -> impl Iterator<Item = &'a Row> + '_ {
        self.rows.iter().flatten().copied()
    }

    /// Run time with all memory present. Rows of one workload should agree; when they do not
    /// (separate baseline runs), their mean is shown.
    pub fn baseline_s(&self) -> f64 {
        let (sum, n) = self
            .present()
            .fold((0.0, 0usize), |(s, n), r| (s + r.baseline_s, n + 1));
        sum / n as f64
    }

    /// `1 − overhead / overhead(lazy-4k)` in percent; None without a lazy-4k row or when lazy-4k
    /// had no positive overhead (nothing to cut).
    pub fn cut_vs_lazy_pct(&self, strategy: Strategy) -> Option<f64> {
        let lazy = self.row(Strategy::Lazy4k)?.restore_overhead_s;
        let own = self.row(strategy)?.restore_overhead_s;
        (lazy > 0.0).then(|| (1.0 - own / lazy) * 100.0)
    }

    /// `time to finish / time to finish(oracle)`.
    pub fn ratio_to_oracle(&self, strategy: Strategy) -> Option<f64> {
        let oracle = self.row(Strategy::Oracle)?.time_to_finish_s;
        Some(self.row(strategy)?.time_to_finish_s / oracle)
    }

    pub fn verdict(&self) -> Verdict {
        let (Some(thaw), Some(lazy), Some(oracle)) = (
            self.row(Strategy::Thaw),
            self.row(Strategy::Lazy4k),
            self.row(Strategy::Oracle),
        ) else {
            return Verdict::Undecided("needs thaw, lazy-4k and oracle rows");
        };
        if lazy.restore_overhead_s <= 0.0 {
            return Verdict::Undecided("lazy-4k had no overhead to cut");
        }
        // Compared as products, not through the rounded percentages the page shows.
        let overhead_met =
            thaw.restore_overhead_s <= MAX_OVERHEAD_FRACTION_OF_LAZY * lazy.restore_overhead_s;
        let finish_met =
            thaw.time_to_finish_s <= MAX_FINISH_RATIO_TO_ORACLE * oracle.time_to_finish_s;
        if overhead_met && finish_met {
            Verdict::Pass
        } else {
            Verdict::Fail {
                overhead_met,
                finish_met,
            }
        }
    }
}

/// Verdicts counted over every workload × link pair.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    pub passed: usize,
    pub failed: usize,
    pub undecided: usize,
}

impl Tally {
    pub fn pairs(&self) -> usize {
        self.passed + self.failed + self.undecided
    }
}

/// All rows arranged by link (in [`Link::ALL`] order), then workload (in order of first
/// appearance in the input, so the caller controls it).
#[derive(Debug)]
pub struct Evaluation<'a> {
    pub workloads: Vec<&'a str>,
    pub groups: Vec<Group<'a>>,
}

impl<'a> Evaluation<'a> {
    pub fn new(rows: &'a [Row]) -> Result<Self, AnalysisError> {
        if rows.is_empty() {
            return Err(AnalysisError::NoRows);
        }
        for (i, row) in rows.iter().enumerate() {
            row.validate()
                .map_err(|message| AnalysisError::InvalidRow {
                    number: i + 1,
                    label: row.label(),
                    message,
                })?;
        }
        if let Some((first, second)) = find_duplicate(rows) {
            return Err(AnalysisError::DuplicateRow {
                first: first + 1,
                second: second + 1,
                label: rows[second].label(),
            });
        }
        let mut workloads: Vec<&str> = Vec::new();
        for row in rows {
            if !workloads.contains(&row.workload.as_str()) {
                workloads.push(&row.workload);
            }
        }
        let mut groups = Vec::new();
        for link in Link::ALL {
            for &workload in &workloads {
                let mut slots = [None; Strategy::COUNT];
                for row in rows
                    .iter()
                    .filter(|r| r.link == link && r.workload == workload)
                {
                    slots[row.strategy.index()] = Some(row);
                }
                if slots.iter().any(Option::is_some) {
                    groups.push(Group {
                        workload,
                        link,
                        rows: slots,
                    });
                }
            }
        }
        Ok(Evaluation { workloads, groups })
    }

    /// Links with at least one row, in [`Link::ALL`] order.
    pub fn links(&self) -> Vec<Link> {
        Link::ALL
            .into_iter()
            .filter(|&l| self.groups.iter().any(|g| g.link == l))
            .collect()
    }

    /// How many workload × link pairs pass, fail, or cannot be decided.
    pub fn tally(&self) -> Tally {
        let mut tally = Tally::default();
        for group in &self.groups {
            match group.verdict() {
                Verdict::Pass => tally.passed += 1,
                Verdict::Fail { .. } => tally.failed += 1,
                Verdict::Undecided(_) => tally.undecided += 1,
            }
        }
        tally
    }

    pub fn groups_of(&self, link: Link) -> impl Iterator<Item = &Group<'a>> + '_ {
        self.groups.iter().filter(move |g| g.link == link)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A row with the given timings; counters are arbitrary but plausible.
    pub(crate) fn row(
        workload: &str,
        link: Link,
        strategy: Strategy,
        finish_s: f64,
        overhead_s: f64,
    ) -> Row {
        Row {
            workload: workload.into(),
            link,
            strategy,
            time_to_finish_s: finish_s,
            restore_overhead_s: overhead_s,
            requests: 10,
            bytes: 1 << 20,
            faults: 100,
            baseline_s: finish_s - overhead_s,
            fault_latency_us: None,
            fault_latency_cdf: Vec::new(),
            demand_fetch_us: None,
            stalls_by_foresight: None,
        }
    }

    /// lazy-4k with 1 s of overhead, oracle finishing at 10 s, thaw as given.
    fn trio(thaw_finish: f64, thaw_overhead: f64) -> Vec<Row> {
        vec![
            row("w", Link::Rack, Strategy::Lazy4k, 11.0, 1.0),
            row("w", Link::Rack, Strategy::Oracle, 10.0, 0.005),
            row("w", Link::Rack, Strategy::Thaw, thaw_finish, thaw_overhead),
        ]
    }

    fn verdict(rows: &[Row]) -> Verdict {
        Evaluation::new(rows).unwrap().groups[0].verdict()
    }

    #[test]
    fn targets_on_both_sides_of_the_bounds() {
        assert_eq!(verdict(&trio(10.9, 0.029)), Verdict::Pass);
        assert_eq!(
            verdict(&trio(10.9, 0.031)),
            Verdict::Fail {
                overhead_met: false,
                finish_met: true
            }
        );
        assert_eq!(
            verdict(&trio(11.1, 0.029)),
            Verdict::Fail {
                overhead_met: true,
                finish_met: false
            }
        );
        assert_eq!(
            verdict(&trio(11.1, 0.031)),
            Verdict::Fail {
                overhead_met: false,
                finish_met: false
            }
        );
    }

    #[test]
    fn cut_and_ratio() {
        let rows = trio(10.5, 0.02);
        let eval = Evaluation::new(&rows).unwrap();
        let g = &eval.groups[0];
        assert!((g.cut_vs_lazy_pct(Strategy::Thaw).unwrap() - 98.0).abs() < 1e-9);
        assert_eq!(g.cut_vs_lazy_pct(Strategy::Lazy4k), Some(0.0));
        assert!((g.ratio_to_oracle(Strategy::Thaw).unwrap() - 1.05).abs() < 1e-9);
        assert_eq!(g.cut_vs_lazy_pct(Strategy::Eager), None);
    }

    #[test]
    fn undecided_without_the_reference_rows_or_lazy_overhead() {
        let rows = trio(10.0, 0.01);
        assert!(matches!(verdict(&rows[1..]), Verdict::Undecided(_)));
        assert!(matches!(
            verdict(&[rows[0].clone(), rows[2].clone()]),
            Verdict::Undecided(_)
        ));
        let mut no_cut = rows.clone();
        no_cut[0].restore_overhead_s = 0.0;
        assert_eq!(
            verdict(&no_cut),
            Verdict::Undecided("lazy-4k had no overhead to cut")
        );
    }

    #[test]
    fn groups_follow_link_order_then_first_appearance() {
        let rows = vec![
            row("b", Link::ObjectStore, Strategy::Thaw, 2.0, 0.1),
            row("a", Link::Rack, Strategy::Thaw, 2.0, 0.1),
            row("b", Link::Rack, Strategy::Thaw, 2.0, 0.1),
        ];
        let eval = Evaluation::new(&rows).unwrap();
        assert_eq!(eval.workloads, ["b", "a"]);
        let order: Vec<_> = eval.groups.iter().map(|g| (g.link, g.workload)).collect();
        assert_eq!(
            order,
            [
                (Link::Rack, "b"),
                (Link::Rack, "a"),
                (Link::ObjectStore, "b")
            ]
        );
        assert_eq!(eval.links(), [Link::Rack, Link::ObjectStore]);
    }

    #[test]
    fn rejects_duplicates_invalid_rows_and_nothing() {
        let rows = trio(10.0, 0.01);
        let mut dup = rows.clone();
        dup.push(rows[1].clone());
        let err = Evaluation::new(&dup).unwrap_err().to_string();
        assert_eq!(
            err,
            "rows 2 and 4 both measure w/rack/oracle (counting from 1)"
        );
        let mut nan = rows.clone();
        nan[2].time_to_finish_s = f64::NAN;
        let err = Evaluation::new(&nan).unwrap_err().to_string();
        assert!(
            err.starts_with("row 3 (w/rack/thaw): time_to_finish_s"),
            "{err}"
        );
        assert!(matches!(Evaluation::new(&[]), Err(AnalysisError::NoRows)));
    }
}
