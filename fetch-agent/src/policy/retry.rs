//! How often, and how patiently, a block no source delivered is asked for
//! again before the restore gives up on it.
//!
//! One attempt already tries every source in turn (each within the fetch's
//! source timeout), so a failed attempt means no source had the block's
//! verified bytes at that moment. A few more attempts, spaced out, ride out a
//! source that restarts or a network blip; past them the block is failed: a
//! guest must never wait forever on memory that will not come, and it must
//! never run on memory that did not arrive, so the restore ends with the
//! block's name and the reason.
//!
//! With the numbers below a block that cannot be had is failed after 5
//! attempts and 1.5 s of waiting between them (100 + 200 + 400 + 800 ms),
//! plus what the attempts themselves took (at most every source's timeout
//! each).

use std::time::Duration;

/// Attempts of one block (each over every source) before it is failed.
pub const MAX_FETCH_ATTEMPTS: u32 = 5;

/// Wait before the first retry; each later retry waits twice as long.
const FIRST_RETRY_DELAY: Duration = Duration::from_millis(100);

/// No retry waits longer than this.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(2);

/// How long to wait before attempt number `attempt` of a block (0 is the
/// first attempt, which does not wait).
pub fn retry_delay(attempt: u32) -> Duration {
    if attempt == 0 {
        return Duration::ZERO;
    }
    FIRST_RETRY_DELAY
        .saturating_mul(1 << (attempt - 1).min(16))
        .min(MAX_RETRY_DELAY)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_from_the_first_retry_up_to_the_cap() {
        assert_eq!(retry_delay(0), Duration::ZERO);
        assert_eq!(retry_delay(1), Duration::from_millis(100));
        assert_eq!(retry_delay(2), Duration::from_millis(200));
        assert_eq!(retry_delay(4), Duration::from_millis(800));
        assert_eq!(retry_delay(6), Duration::from_secs(2));
        assert_eq!(retry_delay(u32::MAX), Duration::from_secs(2));
        let waited: Duration = (0..MAX_FETCH_ATTEMPTS).map(retry_delay).sum();
        assert_eq!(waited, Duration::from_millis(1500));
    }
}
