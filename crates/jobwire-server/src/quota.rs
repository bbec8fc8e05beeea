//! Per-user quotas on job creation: a rate (a token bucket per user, per
//! instance) and a cap on unfinished jobs (counted by the backend, so it
//! holds across instances). Both answer 429 with a message saying what to
//! do; the rate also says when to retry (`Retry-After`).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Users tracked at most; past it, buckets that have refilled are dropped
/// (a full bucket is the same as none).
const MAX_TRACKED_USERS: usize = 100_000;

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// Token buckets of job creations, per user.
#[derive(Debug, Default)]
pub struct CreateRate {
    buckets: Mutex<HashMap<String, Bucket>>,
}

impl CreateRate {
    /// Takes one creation for `user` at `per_second` (bursts of five
    /// seconds' worth); the wait before the next one is allowed, when none
    /// is left.
    pub fn take(&self, user: &str, per_second: u32) -> Result<(), Duration> {
        let rate = f64::from(per_second.max(1));
        let burst = rate * 5.0;
        let now = Instant::now();
        let mut buckets = self
            .buckets
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if buckets.len() >= MAX_TRACKED_USERS && !buckets.contains_key(user) {
            buckets.retain(|_, b| b.tokens + now.duration_since(b.at).as_secs_f64() * rate < burst);
        }
        let bucket = buckets.entry(user.to_owned()).or_insert(Bucket {
            tokens: burst,
            at: now,
        });
        bucket.tokens =
            (bucket.tokens + now.duration_since(bucket.at).as_secs_f64() * rate).min(burst);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - bucket.tokens) / rate))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_the_rate() {
        let rate = CreateRate::default();
        for _ in 0..10 {
            assert!(rate.take("alice", 2).is_ok());
        }
        let wait = rate.take("alice", 2).expect_err("the burst is spent");
        assert!(wait <= Duration::from_millis(500), "{wait:?}");
        assert!(rate.take("bob", 2).is_ok(), "buckets are per user");
    }
}
