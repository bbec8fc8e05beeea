//! Tokens for the suite's clients, minted with the gateways' secret.
//!
//! Normally a token lives an hour. The `token-expiry` fault switches to
//! short-lived tokens for a while: every connection made then expires
//! mid-stream (the gateway closes it with 4401, or ends an SSE stream with
//! a refusal), and the client must renew and resume.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::Result;
use jobwire_server::Scope;

use crate::cluster::SECRET;

/// The user every job belongs to.
pub const USER: &str = "chaos";

/// Lifetime of a token minted while short tokens are on. The gateways allow
/// 5 s of clock skew on top.
const SHORT_TTL: Duration = Duration::from_secs(3);
const NORMAL_TTL: Duration = Duration::from_secs(3600);

/// Mints tokens; short ones while a `token-expiry` fault lasts.
#[derive(Debug, Default)]
pub struct Tokens {
    short_until: Mutex<Option<Instant>>,
}

impl Tokens {
    /// A token for the suite's user with `jobs:read` and `jobs:write`.
    ///
    /// # Errors
    /// When signing fails.
    pub fn mint(&self) -> Result<String> {
        let ttl = if self.short_now() {
            SHORT_TTL
        } else {
            NORMAL_TTL
        };
        Ok(jobwire_server::mint_token(
            SECRET,
            USER,
            &[Scope::JobsRead, Scope::JobsWrite],
            ttl,
        )?)
    }

    /// Short tokens for the next `window`.
    pub fn shorten_for(&self, window: Duration) {
        if let Ok(mut until) = self.short_until.lock() {
            *until = Some(Instant::now() + window);
        }
    }

    fn short_now(&self) -> bool {
        self.short_until
            .lock()
            .ok()
            .and_then(|u| *u)
            .is_some_and(|u| Instant::now() < u)
    }
}
