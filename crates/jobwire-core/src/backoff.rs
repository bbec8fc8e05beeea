//! The one backoff of jobwire: waits that double from a first delay up to
//! a ceiling, reset by a success, with a count of the failures in between
//! (so an outage is logged at its start and then at every doubling, not on
//! every retry). Used by the gateway's tailer and listener, the worker's
//! store calls and reporter, the CLI's wait for Redis, and the Rust
//! client's reconnects (which jitter each wait, so that clients that lost
//! the same server do not come back in step).

use std::time::Duration;

/// Exponential backoff. See the module docs.
#[derive(Clone, Debug)]
pub struct Backoff {
    first: Duration,
    max: Duration,
    next: Duration,
    failures: u32,
}

impl Backoff {
    /// Waits of `first`, doubling up to `max`.
    pub fn new(first: Duration, max: Duration) -> Backoff {
        Backoff {
            first,
            max: max.max(first),
            next: first,
            failures: 0,
        }
    }

    /// Counts a failure and gives the wait before the next try.
    pub fn failed(&mut self) -> Duration {
        self.failures = self.failures.saturating_add(1);
        let wait = self.next;
        self.next = (self.next * 2).min(self.max);
        wait
    }

    /// The wait [`Backoff::failed`] would give next.
    pub fn peek(&self) -> Duration {
        self.next
    }

    /// Failures since the last success.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// Whether the failure just counted deserves a log line: the first, and
    /// then every doubling of their number.
    pub fn worth_logging(&self) -> bool {
        self.failures == 1 || self.failures.is_power_of_two()
    }

    /// A success: the next failure waits `first` again. Returns how many
    /// failures it ends (0 when there were none).
    pub fn reset(&mut self) -> u32 {
        let failures = self.failures;
        self.next = self.first;
        self.failures = 0;
        failures
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_ceiling_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(500));
        let waits: Vec<u128> = (0..5).map(|_| b.failed().as_millis()).collect();
        assert_eq!(waits, [100, 200, 400, 500, 500]);
        assert_eq!(b.failures(), 5);
        assert_eq!(b.reset(), 5);
        assert_eq!(b.failed(), Duration::from_millis(100));
        assert!(b.worth_logging());
    }
}
