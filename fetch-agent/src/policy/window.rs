//! How many streaming fetches a restore keeps in flight.
//!
//! Delay-based, like TCP Vegas: the window grows while streaming fetches
//! come back about as fast as the fastest fetch seen so far, and shrinks
//! when they take more than twice as long, which means a queue is building
//! somewhere on the way (the link, the block server, the CPUs). So
//! streaming keeps dozens of requests outstanding against an object store
//! that answers each after tens of milliseconds whatever the load, but only
//! a few on a fast, narrow path, where every extra request in flight is
//! queueing delay for the next demand fetch.

use std::time::{Duration, Instant};

/// Window at the start of a restore.
const INITIAL: f64 = 4.0;
/// Latency above `CONGESTED_FACTOR` × the fastest seen, plus this slack
/// (timer and scheduling noise), counts as queueing.
const SLACK: Duration = Duration::from_micros(250);
const CONGESTED_FACTOR: f64 = 2.0;
/// A cut keeps this share of the window.
const CUT: f64 = 0.75;

#[derive(Debug, Clone)]
pub struct StreamWindow {
    window: f64,
    ceiling: usize,
    fastest: Option<Duration>,
    last_cut: Option<Instant>,
    /// Until the first cut the window grows by one per completion (it
    /// doubles every round trip); after, by one per round trip.
    probing: bool,
}

impl StreamWindow {
    pub fn new(ceiling: usize) -> Self {
        let ceiling = ceiling.max(1);
        StreamWindow {
            window: INITIAL.min(ceiling as f64),
            ceiling,
            fastest: None,
            last_cut: None,
            probing: true,
        }
    }

    /// Starts from `requests` requests of `blocks_per_request` blocks each
    /// instead of [`INITIAL`] blocks: the same number of requests in flight
    /// at first when each carries a run of blocks.
    pub fn start_with_runs(&mut self, blocks_per_request: usize) {
        let initial = INITIAL * blocks_per_request.max(1) as f64;
        self.window = self.window.max(initial.min(self.ceiling as f64));
    }

    /// Streaming fetches allowed in flight now.
    pub fn allowed(&self) -> usize {
        (self.window as usize).clamp(1, self.ceiling)
    }

    /// A fetch of this restore completed after `latency`; `streaming` says
    /// whether it was a streaming fetch (others only teach the fastest time).
    pub fn completed(&mut self, latency: Duration, streaming: bool, now: Instant) {
        let fastest = *self.fastest.get_or_insert(latency);
        self.fastest = Some(fastest.min(latency));
        if !streaming {
            return;
        }
        let congested = latency > fastest.mul_f64(CONGESTED_FACTOR) + SLACK;
        if !congested {
            let step = if self.probing { 1.0 } else { 1.0 / self.window };
            self.window = (self.window + step).min(self.ceiling as f64);
            return;
        }
        // One cut per round trip: the fetches that come back late together
        // report the same queue.
        if self
            .last_cut
            .is_some_and(|t| now.saturating_duration_since(t) < latency)
        {
            return;
        }
        self.probing = false;
        self.last_cut = Some(now);
        self.window = (self.window * CUT).max(1.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn runs_start_with_as_many_requests_in_flight() {
        let mut w = StreamWindow::new(512);
        w.start_with_runs(16);
        assert_eq!(w.allowed(), 64);
        let mut small = StreamWindow::new(32);
        small.start_with_runs(16);
        assert_eq!(small.allowed(), 32);
    }

    #[test]
    fn grows_to_the_ceiling_while_latency_stays_flat() {
        let t0 = Instant::now();
        let mut w = StreamWindow::new(64);
        assert_eq!(w.allowed(), 4);
        for i in 0..100 {
            w.completed(ms(20), true, t0 + ms(i));
        }
        assert_eq!(w.allowed(), 64);
    }

    #[test]
    fn shrinks_once_per_round_trip_when_latency_doubles() {
        let t0 = Instant::now();
        let mut w = StreamWindow::new(64);
        for _ in 0..12 {
            w.completed(ms(1), true, t0);
        }
        assert_eq!(w.allowed(), 16);
        // Five late completions at once: one cut.
        for _ in 0..5 {
            w.completed(ms(3), true, t0 + ms(10));
        }
        assert_eq!(w.allowed(), 12);
        // A round trip later, still late: another cut.
        w.completed(ms(3), true, t0 + ms(14));
        assert_eq!(w.allowed(), 9);
        // After a cut, growth is one per window's worth of completions.
        for _ in 0..10 {
            w.completed(ms(1), true, t0 + ms(20));
        }
        assert_eq!(w.allowed(), 10);
    }

    #[test]
    fn never_below_one_nor_above_the_ceiling() {
        let t0 = Instant::now();
        let mut w = StreamWindow::new(2);
        assert_eq!(w.allowed(), 2);
        w.completed(ms(1), false, t0);
        for i in 0..50u64 {
            w.completed(ms(100), true, t0 + ms(200 * i));
        }
        assert_eq!(w.allowed(), 1);
        for _ in 0..50 {
            w.completed(ms(1), true, t0 + ms(20_000));
        }
        assert_eq!(w.allowed(), 2);
    }

    #[test]
    fn other_fetches_teach_the_fastest_time_only() {
        let t0 = Instant::now();
        let mut w = StreamWindow::new(64);
        w.completed(ms(1), false, t0);
        assert_eq!(w.allowed(), 4);
        // Streaming at 10 ms against a 1 ms best: queueing.
        w.completed(ms(10), true, t0 + ms(50));
        assert_eq!(w.allowed(), 3);
    }
}
