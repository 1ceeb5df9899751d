//! One source's health, free of I/O: a state machine fed with what fetches
//! observe (answers and their latency, errors, timeouts) and the time they
//! were observed, deciding how long a fetch may wait for the source,
//! whether new fetches should skip it, and when to probe it.
//!
//! - **Timeout.** The configured timeout is a floor; a source observed to
//!   be slower gets more: `max(2 x srtt, srtt + 4 x rttvar)` (the smoothed
//!   latency and its deviation, as TCP's retransmission timer keeps them),
//!   at most [`HealthConfig::max_timeout`]. An object store answering in
//!   3 s is slow, not dead.
//! - **Down.** A fetch that times out marks its source down only if the
//!   source has answered nothing (to any fetch) since that fetch was sent:
//!   a busy source still answering others is slow for that fetch, not dead.
//!   An error meaning the source cannot be reached (connection lost or
//!   refused) marks it down at once; an error answer (not found, bad
//!   request) proves it alive.
//! - **Probes.** A down source is skipped by new fetches (tried only after
//!   every up source failed) and probed in the background, with a longer
//!   timeout than fetches get, at growing intervals, until it answers; any
//!   answer brings it back up.

use std::time::{Duration, Instant};

/// Limits of one source's timeouts and probes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HealthConfig {
    /// The shortest timeout of a fetch, and the timeout of a source with no
    /// latency observed yet (`--source-timeout`).
    pub base_timeout: Duration,
    /// The longest timeout latency adaptation may give a fetch.
    pub max_timeout: Duration,
    /// The wait before the first probe of a source gone down; doubled after
    /// each failed probe, up to [`Self::max_probe_interval`].
    pub first_probe_after: Duration,
    pub max_probe_interval: Duration,
}

impl HealthConfig {
    /// Limits derived from the configured source timeout: adaptation may
    /// grow a timeout to 30 s (QUIC's idle timeout; slower is unusable for a
    /// page fault) or 8 x the base, whichever is longer; probes start after
    /// a tenth of the base (at most 100 ms) and back off to the base (at
    /// least 1 s).
    pub fn from_base(base_timeout: Duration) -> Self {
        let base_timeout = base_timeout.max(Duration::from_millis(1));
        HealthConfig {
            base_timeout,
            max_timeout: (base_timeout * 8).max(Duration::from_secs(30)),
            first_probe_after: (base_timeout / 10).min(Duration::from_millis(100)),
            max_probe_interval: base_timeout.max(Duration::from_secs(1)),
        }
    }
}

/// Whether a source takes new fetches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Up,
    /// Skipped by new fetches, probed in the background.
    Down {
        since: Instant,
        failed_probes: u32,
    },
}

/// What a fetch's timeout means for its source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeoutVerdict {
    /// The source answered other fetches since this one was sent: slow for
    /// this one, still up.
    Slow,
    /// Silent since this fetch was sent: the source is now down (start probing;
    /// fetches in flight to it go elsewhere).
    WentDown,
    /// It was down already.
    StillDown,
}

#[derive(Debug, Clone)]
pub struct SourceHealth {
    config: HealthConfig,
    state: State,
    /// Smoothed latency and its mean deviation; `None` before any answer.
    srtt: Option<Duration>,
    rttvar: Duration,
    /// When the source last answered anything.
    last_answer: Option<Instant>,
}

impl SourceHealth {
    pub fn new(config: HealthConfig) -> Self {
        SourceHealth {
            config,
            state: State::Up,
            srtt: None,
            rttvar: Duration::ZERO,
            last_answer: None,
        }
    }

    pub fn state(&self) -> State {
        self.state
    }

    pub fn is_up(&self) -> bool {
        self.state == State::Up
    }

    /// The smoothed latency observed, if any.
    pub fn smoothed_latency(&self) -> Option<Duration> {
        self.srtt
    }

    /// How long a fetch may wait for this source.
    pub fn timeout(&self) -> Duration {
        let adapted = self
            .srtt
            .map_or(Duration::ZERO, |s| (s * 2).max(s + self.rttvar * 4));
        adapted
            .max(self.config.base_timeout)
            .min(self.config.max_timeout.max(self.config.base_timeout))
    }

    /// The source delivered an answer after `latency`. Returns whether this
    /// brought it back up.
    pub fn answered(&mut self, now: Instant, latency: Duration) -> bool {
        self.sample(latency);
        self.alive(now)
    }

    /// The source answered with an error (it is there, it refused this
    /// request). Returns whether this brought it back up.
    pub fn refused(&mut self, now: Instant) -> bool {
        self.alive(now)
    }

    /// The source cannot be reached (connection refused or lost). Returns
    /// whether this took it down.
    pub fn unreachable(&mut self, now: Instant) -> bool {
        self.go_down(now)
    }

    /// A fetch sent at `asked_at` waited its timeout without an answer.
    pub fn timed_out(&mut self, now: Instant, asked_at: Instant) -> TimeoutVerdict {
        if !self.is_up() {
            return TimeoutVerdict::StillDown;
        }
        if self.last_answer.is_some_and(|t| t >= asked_at) {
            TimeoutVerdict::Slow
        } else {
            self.go_down(now);
            TimeoutVerdict::WentDown
        }
    }

    /// How long to wait before the next probe of a down source.
    pub fn probe_delay(&self) -> Duration {
        let failed = match self.state {
            State::Up => 0,
            State::Down { failed_probes, .. } => failed_probes,
        };
        let doubled = self
            .config
            .first_probe_after
            .saturating_mul(1u32 << failed.min(16));
        doubled.min(self.config.max_probe_interval)
    }

    /// How long a probe may wait: four fetch timeouts (a probe waits in the
    /// background, so it can afford to learn that a source is only slow).
    pub fn probe_timeout(&self) -> Duration {
        (self.timeout() * 4).min(self.config.max_timeout.max(self.config.base_timeout))
    }

    /// A probe got no answer (or could not reach the source).
    pub fn probe_failed(&mut self) {
        if let State::Down { failed_probes, .. } = &mut self.state {
            *failed_probes = failed_probes.saturating_add(1);
        }
    }

    fn sample(&mut self, latency: Duration) {
        match self.srtt {
            None => {
                self.srtt = Some(latency);
                self.rttvar = latency / 2;
            }
            Some(srtt) => {
                let deviation = srtt.abs_diff(latency);
                self.rttvar = (self.rttvar * 3 + deviation) / 4;
                self.srtt = Some((srtt * 7 + latency) / 8);
            }
        }
    }

    fn alive(&mut self, now: Instant) -> bool {
        self.last_answer = Some(now);
        let was_down = !self.is_up();
        self.state = State::Up;
        was_down
    }

    fn go_down(&mut self, now: Instant) -> bool {
        if self.is_up() {
            self.state = State::Down {
                since: now,
                failed_probes: 0,
            };
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn health(base_ms: u64) -> SourceHealth {
        SourceHealth::new(HealthConfig::from_base(MS * base_ms as u32))
    }

    #[test]
    fn a_fresh_or_fast_source_gets_the_configured_timeout() {
        let t0 = Instant::now();
        let mut h = health(2000);
        assert_eq!(h.timeout(), MS * 2000);
        for i in 0..20 {
            h.answered(t0 + MS * i, MS);
        }
        assert_eq!(h.timeout(), MS * 2000);
        assert!(h.is_up());
    }

    #[test]
    fn a_source_answering_in_3_s_is_slow_not_dead() {
        let t0 = Instant::now();
        let mut h = health(2000);
        for i in 0..10 {
            h.answered(t0 + MS * (3000 * i), MS * 3000);
        }
        // Well above its latency, so its fetches do not time out.
        assert!(h.timeout() >= MS * 6000, "{:?}", h.timeout());
        assert!(h.timeout() <= HealthConfig::from_base(MS * 2000).max_timeout);
    }

    #[test]
    fn the_adapted_timeout_is_capped_and_comes_back_down() {
        let t0 = Instant::now();
        let mut h = health(100);
        h.answered(t0, Duration::from_secs(600));
        assert_eq!(h.timeout(), Duration::from_secs(30));
        for i in 1..200 {
            h.answered(t0 + MS * i, MS);
        }
        assert_eq!(h.timeout(), MS * 100);
    }

    #[test]
    fn a_timeout_of_a_silent_source_takes_it_down_once() {
        let t0 = Instant::now();
        let mut h = health(500);
        h.answered(t0, MS * 2);
        // Nothing answered since the fetch was sent (1 ms after the last
        // answer): silent, down.
        assert_eq!(
            h.timed_out(t0 + MS * 501, t0 + MS),
            TimeoutVerdict::WentDown
        );
        assert_eq!(
            h.state(),
            State::Down {
                since: t0 + MS * 501,
                failed_probes: 0
            }
        );
        assert_eq!(
            h.timed_out(t0 + MS * 700, t0 + MS * 200),
            TimeoutVerdict::StillDown
        );
        // Never answered at all: also silent.
        let mut fresh = health(500);
        assert_eq!(fresh.timed_out(t0 + MS * 500, t0), TimeoutVerdict::WentDown);
    }

    #[test]
    fn a_timeout_while_the_source_answers_others_is_slowness() {
        let t0 = Instant::now();
        let mut h = health(500);
        // Queued behind others: they were answered after it was sent.
        h.answered(t0 + MS * 300, MS * 2);
        assert_eq!(h.timed_out(t0 + MS * 500, t0), TimeoutVerdict::Slow);
        assert!(h.is_up());
    }

    #[test]
    fn unreachable_takes_it_down_and_any_answer_brings_it_back() {
        let t0 = Instant::now();
        let mut h = health(500);
        assert!(h.unreachable(t0));
        assert!(!h.unreachable(t0 + MS));
        assert!(!h.is_up());
        assert!(h.refused(t0 + MS * 2), "an error answer proves it alive");
        assert!(h.is_up());
        assert!(h.unreachable(t0 + MS * 3));
        assert!(h.answered(t0 + MS * 4, MS));
        assert!(!h.answered(t0 + MS * 5, MS), "already up");
    }

    #[test]
    fn probes_back_off_to_a_bound_and_wait_longer_than_fetches() {
        let t0 = Instant::now();
        let mut h = health(2000);
        h.unreachable(t0);
        let mut delays = vec![h.probe_delay()];
        for _ in 0..8 {
            h.probe_failed();
            delays.push(h.probe_delay());
        }
        assert_eq!(delays[0], MS * 100);
        assert_eq!(delays[1], MS * 200);
        assert!(delays.windows(2).all(|w| w[0] <= w[1]));
        assert_eq!(*delays.last().expect("some"), MS * 2000);
        assert!(h.probe_timeout() > h.timeout());
        for _ in 0..100 {
            h.probe_failed();
        }
        assert_eq!(h.probe_delay(), MS * 2000, "no overflow");
    }
}
