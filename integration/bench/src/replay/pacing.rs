//! When each touch of a replayed trace is due.
//!
//! A trace's `t_us` is guest progress: time spent waiting for memory is not
//! in it. So the replayer keeps a progress clock that stops while a touch
//! stalls: touch `i` is due at `start + t_us[i] + (all stalls so far)`.
//! Deadlines are absolute, so lateness of the replayer itself (a sleep that
//! overshoots, a preemption) is caught up by the next gap instead of adding
//! up, and the time to finish is the trace's duration plus the stalls.

use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub(crate) struct Pacer {
    start: Instant,
    stalled: Duration,
}

impl Pacer {
    pub(crate) fn new(start: Instant) -> Self {
        Pacer {
            start,
            stalled: Duration::ZERO,
        }
    }

    /// When the touch recorded at `t_us` of guest progress is due.
    pub(crate) fn due(&self, t_us: u64) -> Instant {
        self.start + Duration::from_micros(t_us) + self.stalled
    }

    /// A touch took `took`: the guest made no progress meanwhile.
    pub(crate) fn touched(&mut self, took: Duration) {
        self.stalled += took;
    }

    /// Time the guest has spent in touches so far.
    pub(crate) fn stalled(&self) -> Duration {
        self.stalled
    }
}

/// How to wait until a deadline: sleep while it is far (so the agent on the
/// same machine gets the CPU, as it would on another core of a real host),
/// spin for the last stretch (sleeps overshoot by tens of µs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Wait {
    Sleep(Duration),
    Spin,
    Done,
}

/// Below this much time left, spin instead of sleeping.
pub(crate) const SPIN_BELOW: Duration = Duration::from_micros(250);

pub(crate) fn wait_step(now: Instant, deadline: Instant) -> Wait {
    match deadline.checked_duration_since(now) {
        None => Wait::Done,
        Some(left) if left.is_zero() => Wait::Done,
        Some(left) if left > SPIN_BELOW => Wait::Sleep(left - SPIN_BELOW / 2),
        Some(_) => Wait::Spin,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stalls_push_later_deadlines_back() {
        let t0 = Instant::now();
        let mut p = Pacer::new(t0);
        assert_eq!(p.due(100), t0 + Duration::from_micros(100));
        p.touched(Duration::from_micros(40));
        p.touched(Duration::from_micros(2));
        assert_eq!(p.due(100), t0 + Duration::from_micros(142));
        assert_eq!(p.stalled(), Duration::from_micros(42));
    }

    #[test]
    fn wait_sleeps_far_from_the_deadline_and_spins_near_it() {
        let t0 = Instant::now();
        let d = t0 + Duration::from_millis(10);
        match wait_step(t0, d) {
            Wait::Sleep(s) => {
                assert!(s < Duration::from_millis(10));
                assert!(s > Duration::from_millis(9));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(wait_step(d - Duration::from_micros(100), d), Wait::Spin);
        assert_eq!(wait_step(d, d), Wait::Done);
        assert_eq!(wait_step(d + Duration::from_micros(1), d), Wait::Done);
    }
}
