//! The server's limits on what one client or user may take: live
//! connections (per instance and per user), client frames per second, and
//! job creations per second (`quota`-style 429s). The listener's limits on
//! plain HTTP connections live with the listener (`listener.rs`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use crate::state::ServerConfig;

/// A token bucket: `rate` a second, in bursts of `burst`.
#[derive(Debug)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    at: Instant,
}

impl TokenBucket {
    /// Full, refilling at `per_second` up to `burst`.
    pub fn new(per_second: u32, burst: u32) -> TokenBucket {
        let rate = f64::from(per_second.max(1));
        let burst = f64::from(burst.max(1));
        TokenBucket {
            rate,
            burst,
            tokens: burst,
            at: Instant::now(),
        }
    }

    /// Takes one token; when none is left, how long until one is.
    pub fn take(&mut self) -> Result<(), Duration> {
        let now = Instant::now();
        self.tokens =
            (self.tokens + now.duration_since(self.at).as_secs_f64() * self.rate).min(self.burst);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - self.tokens) / self.rate))
        }
    }

    /// Whether it is full (a full bucket is the same as a new one).
    fn is_full(&self, now: Instant) -> bool {
        self.tokens + now.duration_since(self.at).as_secs_f64() * self.rate >= self.burst
    }
}

/// Users whose creation buckets are tracked at most; past it, full buckets
/// are dropped.
const MAX_TRACKED_USERS: usize = 100_000;

/// Job creations per user: a bucket each (per instance), in bursts of five
/// seconds' worth.
#[derive(Debug, Default)]
pub struct CreateRate {
    buckets: Mutex<HashMap<String, TokenBucket>>,
}

impl CreateRate {
    /// Takes one creation for `user` at `per_second`; the wait before the
    /// next one is allowed, when none is left.
    pub fn take(&self, user: &str, per_second: u32) -> Result<(), Duration> {
        let mut buckets = self
            .buckets
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if buckets.len() >= MAX_TRACKED_USERS && !buckets.contains_key(user) {
            let now = Instant::now();
            buckets.retain(|_, bucket| !bucket.is_full(now));
        }
        buckets
            .entry(user.to_owned())
            .or_insert_with(|| TokenBucket::new(per_second, per_second.saturating_mul(5)))
            .take()
    }
}

/// Why a connection was refused by the limits.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LimitError {
    #[error("this server is at its connection limit ({0})")]
    Instance(usize),
    #[error("too many connections for this user (at most {0})")]
    User(usize),
}

/// Counts open connections, per instance and per user.
#[derive(Debug, Default)]
pub struct Connections {
    open: Mutex<(usize, HashMap<String, usize>)>,
}

/// Holds one connection slot; released on drop.
#[derive(Debug)]
pub struct ConnectionSlot {
    connections: Arc<Connections>,
    user: String,
}

impl Connections {
    /// Takes a slot for `user`, within the limits.
    ///
    /// # Errors
    /// [`LimitError`] when the instance or the user is at the limit.
    pub fn acquire(
        self: &Arc<Self>,
        user: &str,
        config: &ServerConfig,
    ) -> Result<ConnectionSlot, LimitError> {
        let mut open = self.lock();
        if open.0 >= config.max_connections {
            return Err(LimitError::Instance(config.max_connections));
        }
        let mine = open.1.get(user).copied().unwrap_or(0);
        if mine >= config.max_connections_per_user {
            return Err(LimitError::User(config.max_connections_per_user));
        }
        open.0 += 1;
        open.1.insert(user.to_owned(), mine + 1);
        Ok(ConnectionSlot {
            connections: Arc::clone(self),
            user: user.to_owned(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (usize, HashMap<String, usize>)> {
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        let mut open = self.connections.lock();
        open.0 = open.0.saturating_sub(1);
        if let Some(n) = open.1.get_mut(&self.user) {
            *n -= 1;
            if *n == 0 {
                open.1.remove(&self.user);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_burst_then_the_rate() {
        let rate = CreateRate::default();
        for _ in 0..10 {
            assert!(rate.take("alice", 2).is_ok());
        }
        let wait = rate.take("alice", 2).expect_err("the burst is spent");
        assert_eq!(wait, Duration::from_millis(500));
        assert!(rate.take("bob", 2).is_ok(), "buckets are per user");
        tokio::time::advance(Duration::from_millis(500)).await;
        assert!(rate.take("alice", 2).is_ok(), "refilled at the rate");
        assert!(rate.take("alice", 2).is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn frames_refill_up_to_the_burst() {
        let mut bucket = TokenBucket::new(50, 100);
        for _ in 0..100 {
            assert!(bucket.take().is_ok());
        }
        assert!(bucket.take().is_err());
        tokio::time::advance(Duration::from_secs(60)).await;
        for _ in 0..100 {
            assert!(bucket.take().is_ok());
        }
        assert!(
            bucket.take().is_err(),
            "no more than the burst after a long pause"
        );
    }
}
