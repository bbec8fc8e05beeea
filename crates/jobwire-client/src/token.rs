//! Where the client's token comes from, and when it expires.
//!
//! A fixed token serves until its `exp`; after that the server refuses it
//! (401, or a socket closed with 4401) and the client gives up with
//! [`ClientError::Unauthorized`]. A provider is asked for a fresh token
//! shortly before the current one expires (live sockets get it with a
//! `refresh` frame, so they stay open) and whenever the server refuses one.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;

use crate::ClientError;

type Fetch = dyn Fn() -> Pin<Box<dyn Future<Output = Result<String, String>> + Send>> + Send + Sync;

/// A fixed token, or a provider of fresh ones.
#[derive(Clone)]
pub enum TokenSource {
    Static(String),
    Provider(Provider),
}

impl fmt::Debug for TokenSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            // Never print the token itself.
            TokenSource::Static(_) => f.write_str("TokenSource::Static(..)"),
            TokenSource::Provider(_) => f.write_str("TokenSource::Provider(..)"),
        }
    }
}

impl From<String> for TokenSource {
    fn from(token: String) -> TokenSource {
        TokenSource::Static(token)
    }
}

impl From<&str> for TokenSource {
    fn from(token: &str) -> TokenSource {
        TokenSource::Static(token.to_owned())
    }
}

impl From<Provider> for TokenSource {
    fn from(p: Provider) -> TokenSource {
        TokenSource::Provider(p)
    }
}

/// Fetches tokens on demand and remembers the last one.
#[derive(Clone)]
pub struct Provider {
    fetch: Arc<Fetch>,
    last: Arc<Mutex<Option<String>>>,
}

impl fmt::Debug for Provider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Provider").finish_non_exhaustive()
    }
}

impl Provider {
    /// A provider calling `fetch` (an async function returning a token or an
    /// error message) whenever a fresh token is needed.
    pub fn new<F, Fut>(fetch: F) -> Provider
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<String, String>> + Send + 'static,
    {
        Provider {
            fetch: Arc::new(move || Box::pin(fetch())),
            last: Arc::new(Mutex::new(None)),
        }
    }
}

impl TokenSource {
    /// The token to use now.
    ///
    /// # Errors
    /// [`ClientError::Token`] when the provider fails.
    pub async fn current(&self) -> Result<String, ClientError> {
        let token = match self {
            TokenSource::Static(t) => Ok(t.clone()),
            TokenSource::Provider(p) => {
                let cached = p.last.lock().ok().and_then(|l| l.clone());
                match cached {
                    Some(t) if !expires_within(&t, Duration::from_secs(5)) => Ok(t),
                    _ => self.fresh().await,
                }
            }
        };
        token.and_then(usable)
    }

    /// A fresh token from the provider; the fixed token for a fixed source.
    ///
    /// # Errors
    /// [`ClientError::Token`] when the provider fails.
    pub async fn fresh(&self) -> Result<String, ClientError> {
        match self {
            TokenSource::Static(t) => Ok(t.clone()),
            TokenSource::Provider(p) => {
                let token = (p.fetch)().await.map_err(ClientError::Token)?;
                if let Ok(mut last) = p.last.lock() {
                    *last = Some(token.clone());
                }
                Ok(token)
            }
        }
    }

    /// Whether a fresh token can be had (a provider).
    pub fn can_refresh(&self) -> bool {
        matches!(self, TokenSource::Provider(_))
    }
}

/// The token's `exp`, read without verifying it (the server verifies).
pub fn expires_at(token: &str) -> Option<SystemTime> {
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    let exp = claims.get("exp")?.as_u64()?;
    Some(UNIX_EPOCH + Duration::from_secs(exp))
}

/// Whether the token expires within `margin` (unknown expiry: no).
pub fn expires_within(token: &str, margin: Duration) -> bool {
    expires_at(token).is_some_and(|exp| exp <= SystemTime::now() + margin)
}

/// When to refresh a token: a little before it expires (a tenth of its
/// remaining life, at least 2 s and at most 60 s early). `None` when it has
/// no expiry.
pub(crate) fn refresh_in(token: &str) -> Option<Duration> {
    let left = expires_at(token)?
        .duration_since(SystemTime::now())
        .unwrap_or_default();
    let early = (left / 10).clamp(Duration::from_secs(2), Duration::from_secs(60));
    Some(left.saturating_sub(early))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token_with(claims: &str) -> String {
        let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        format!("{}.{}.sig", b64(r#"{"alg":"HS256"}"#), b64(claims))
    }

    #[test]
    fn reads_the_expiry_without_verifying() {
        let t = token_with(r#"{"sub":"a","exp":2000000000}"#);
        assert_eq!(
            expires_at(&t),
            Some(UNIX_EPOCH + Duration::from_secs(2_000_000_000))
        );
        assert!(!expires_within(&t, Duration::from_secs(60)));
        assert!(expires_within(&token_with(r#"{"exp":1}"#), Duration::ZERO));
        assert_eq!(expires_at("not a token"), None);
        assert_eq!(expires_at(&token_with(r#"{"sub":"a"}"#)), None);
        assert!(refresh_in(&t).is_some_and(|d| d > Duration::from_secs(3600)));
    }
}

/// A token goes into an HTTP header: a line break or another control
/// character (a token pasted with its newline, two lines in
/// `JOBWIRE_TOKEN`) would make every request fail with an obscure error.
fn usable(token: String) -> Result<String, ClientError> {
    if token.is_empty() || token.chars().any(|c| !c.is_ascii_graphic()) {
        return Err(ClientError::Config(
            "the token is empty or has spaces, line breaks or non-ASCII characters: it must be one line, as `jobwire token` prints it".to_owned(),
        ));
    }
    Ok(token)
}

#[cfg(test)]
mod usable_tests {
    use super::*;

    #[tokio::test]
    async fn a_token_with_a_line_break_is_a_clear_error() {
        for bad in ["", "abc\ndef", "two words", "tökén"] {
            let error = TokenSource::Static(bad.to_owned())
                .current()
                .await
                .expect_err(bad);
            assert!(error.to_string().contains("one line"), "{error}");
        }
        let good = TokenSource::Static("a.b-c_d".to_owned()).current().await;
        assert_eq!(good.ok().as_deref(), Some("a.b-c_d"));
    }
}
