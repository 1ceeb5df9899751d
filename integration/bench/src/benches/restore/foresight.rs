//! Which stalls of a restore no layout learned from the workload's traces
//! could have avoided: touches of pages that none of the learning traces
//! touched. A layout places those pages by neighbourhood or physical order
//! only, so the stream reaches them late and the guest waits for them. The
//! split says how much of a strategy's overhead the traces could have
//! foreseen at all.

use std::collections::HashSet;

use serde::{Deserialize, Serialize};
use thaw_format::workload::{Trace, TraceEvent};

/// Stalled touches and how long they waited in all.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Stalls {
    pub touches: u64,
    pub waited_s: f64,
}

impl Stalls {
    fn add(&mut self, ns: u64) {
        self.touches += 1;
        self.waited_s += ns as f64 / 1e9;
    }
}

/// A restore's stalls, split by whether some learning trace touched the page.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct StallSplit {
    pub foreseen: Stalls,
    pub unforeseen: Stalls,
}

/// The pages the learning traces touched.
pub(crate) struct Foresight {
    seen: HashSet<u64>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("the replay timed {timed} touches, the measured trace has {events}")]
pub(crate) struct LengthMismatch {
    timed: usize,
    events: usize,
}

impl Foresight {
    pub(crate) fn new(learn: &[&Trace]) -> Self {
        Foresight {
            seen: learn
                .iter()
                .flat_map(|t| t.events.iter().map(|e| e.page))
                .collect(),
        }
    }

    fn foresaw(&self, page: u64) -> bool {
        self.seen.contains(&page)
    }

    /// Splits the touches of `measured` that took longer than `stall_ns`
    /// (`touch_ns[i]` timed `measured[i]`).
    pub(crate) fn split(
        &self,
        measured: &[TraceEvent],
        touch_ns: &[u64],
        stall_ns: u64,
    ) -> Result<StallSplit, LengthMismatch> {
        if measured.len() != touch_ns.len() {
            return Err(LengthMismatch {
                timed: touch_ns.len(),
                events: measured.len(),
            });
        }
        let mut split = StallSplit::default();
        for (event, &ns) in measured.iter().zip(touch_ns) {
            if ns <= stall_ns {
                continue;
            }
            if self.foresaw(event.page) {
                split.foreseen.add(ns);
            } else {
                split.unforeseen.add(ns);
            }
        }
        Ok(split)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trace(pages: &[u64]) -> Trace {
        Trace {
            name: "t".into(),
            events: pages
                .iter()
                .enumerate()
                .map(|(i, &page)| TraceEvent {
                    t_us: i as u64,
                    page,
                })
                .collect(),
        }
    }

    #[test]
    fn stalls_split_by_whether_a_learning_trace_touched_the_page() {
        let (a, b) = (trace(&[1, 2]), trace(&[2, 3]));
        let foresight = Foresight::new(&[&a, &b]);
        let measured = trace(&[3, 4, 1, 5, 2]);
        let split = foresight
            .split(&measured.events, &[2_000, 500, 900, 7_000, 1_000], 1_000)
            .unwrap();
        // Page 3 (seen) and 5 (unseen) stalled; 4, 1 and 2 did not (2 took
        // exactly the threshold).
        assert_eq!(split.foreseen.touches, 1);
        assert_eq!(split.unforeseen.touches, 1);
        assert!((split.foreseen.waited_s - 2e-6).abs() < 1e-12);
        assert!((split.unforeseen.waited_s - 7e-6).abs() < 1e-12);
    }

    #[test]
    fn timings_that_do_not_match_the_trace_are_refused() {
        let foresight = Foresight::new(&[&trace(&[1])]);
        let err = foresight
            .split(&trace(&[1, 2]).events, &[5_000], 1_000)
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "the replay timed 1 touches, the measured trace has 2"
        );
    }
}
