//! A token bucket driven by a clock passed in: caps background streaming to
//! a rate of stored bytes per second.

use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub(super) struct TokenBucket {
    /// Bytes per second.
    rate: u64,
    /// Most tokens the bucket holds: 10 ms of rate, and at least one of the
    /// largest items, so any item can eventually pass.
    burst: u64,
    tokens: u64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket of `rate` bytes per second for items of at most `largest` bytes.
    pub(super) fn new(rate: u64, largest: u64, now: Instant) -> Self {
        let burst = (rate / 100).max(largest).max(1);
        TokenBucket {
            rate: rate.max(1),
            burst,
            tokens: burst,
            last: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last);
        let add = (elapsed.as_nanos() * u128::from(self.rate) / 1_000_000_000) as u64;
        if add > 0 {
            self.tokens = (self.tokens + add).min(self.burst);
            // Advance by exactly the time the added tokens represent, so
            // fractions of a token are not lost between calls.
            let used = Duration::from_nanos(
                (u128::from(add) * 1_000_000_000 / u128::from(self.rate)) as u64,
            );
            self.last += used;
            if self.tokens == self.burst {
                self.last = now;
            }
        }
    }

    /// Takes `cost` tokens if the bucket holds them.
    pub(super) fn try_take(&mut self, cost: u64, now: Instant) -> bool {
        self.refill(now);
        let cost = cost.min(self.burst);
        if self.tokens >= cost {
            self.tokens -= cost;
            true
        } else {
            false
        }
    }

    /// How long until `cost` tokens are available.
    pub(super) fn wait_for(&self, cost: u64, now: Instant) -> Duration {
        let mut probe = self.clone();
        probe.refill(now);
        let cost = cost.min(self.burst);
        if probe.tokens >= cost {
            return Duration::ZERO;
        }
        let missing = cost - probe.tokens;
        Duration::from_nanos(
            (u128::from(missing) * 1_000_000_000).div_ceil(u128::from(self.rate)) as u64,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_is_respected_over_time() {
        let t0 = Instant::now();
        // 1 MB/s, items of 64 KiB.
        let mut b = TokenBucket::new(1_000_000, 65536, t0);
        let mut taken = 0u64;
        let mut now = t0;
        while now < t0 + Duration::from_secs(2) {
            if b.try_take(65536, now) {
                taken += 65536;
            } else {
                now += b.wait_for(65536, now).max(Duration::from_micros(1));
            }
        }
        // Two seconds at 1 MB/s plus the initial burst of one item.
        assert!(taken <= 2_000_000 + 65536, "{taken}");
        assert!(taken >= 2_000_000 - 65536, "{taken}");
    }

    #[test]
    fn wait_for_is_exact_enough() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(1000, 100, t0);
        assert!(b.try_take(100, t0));
        assert!(!b.try_take(100, t0));
        let w = b.wait_for(100, t0);
        assert_eq!(w, Duration::from_millis(100));
        assert!(!b.try_take(100, t0 + w - Duration::from_millis(1)));
        assert!(b.try_take(100, t0 + w));
    }

    #[test]
    fn items_larger_than_the_burst_still_pass() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(10, 5, t0);
        assert!(b.try_take(1000, t0));
        assert!(!b.try_take(1000, t0));
        assert!(b.try_take(1000, t0 + Duration::from_secs(1)));
    }
}
