//! A Rust client for jobwire: the REST API (create, get, list, cancel,
//! delete, history, publish) and [`Client::watch`], a stream of a set of
//! jobs' events over one multiplexed WebSocket that survives reconnects,
//! server restarts and instance switches with nothing lost and nothing
//! twice (docs/clients.md has the exact rules).
//!
//! ```no_run
//! # async fn demo() -> Result<(), jobwire_client::ClientError> {
//! use futures_util::StreamExt;
//! use jobwire_client::{Client, WatchEvent};
//!
//! let client = Client::new("http://127.0.0.1:8080", "<jwt>")?;
//! let job = client.create_job("demo", serde_json::json!({"steps": 5})).await?;
//! let mut watch = client.watch([job.id.clone()]);
//! while let Some(item) = watch.next().await {
//!     match item? {
//!         WatchEvent::Event(e) => println!("{} {}", e.id, e.kind),
//!         other => println!("{other:?}"),
//!     }
//! }
//! # Ok(()) }
//! ```
//!
//! # Layout
//!
//! - [`rest`]: the REST calls.
//! - [`watch`]: the live stream and its reconnect logic.
//! - [`token`]: where tokens come from, and when they expire.

pub mod rest;
pub mod token;
pub mod watch;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use thiserror::Error;

pub use jobwire_core::{
    Epoch, Event, EventId, EventType, JobId, JobState, JobStatus, Refusal, Schedule,
};
pub use rest::{
    CancelReply, CreateOptions, History, JobPage, ListOptions, NewSchedule, PublishEvent,
    PublishReply, QueueRow, RegisteredWorker, Submitted,
};
pub use token::{Provider, TokenSource};
pub use watch::{ConnectionStatus, Cursor, Watch, WatchEvent};

/// A failure of a client call.
#[derive(Debug, Error)]
pub enum ClientError {
    /// The server answered with an error (`{"error":{"code","message"}}`).
    #[error("{message} ({status} {code})")]
    Api {
        status: u16,
        code: String,
        message: String,
    },
    /// No server could be reached.
    #[error("cannot reach jobwire at {url}: {message}")]
    Unreachable { url: String, message: String },
    /// The token was refused (401, or a socket closed with 4401) and no
    /// provider could give a better one.
    #[error("the token was refused: {0}")]
    Unauthorized(String),
    /// The server's answer was not what the protocol says.
    #[error("unexpected answer from the server: {0}")]
    Protocol(String),
    /// A bad URL or setting.
    #[error("invalid client configuration: {0}")]
    Config(String),
    /// The token provider failed.
    #[error("the token provider failed: {0}")]
    Token(String),
}

impl ClientError {
    /// The API error code (`not_found`, `forbidden`, …), if the server sent one.
    pub fn code(&self) -> Option<&str> {
        match self {
            ClientError::Api { code, .. } => Some(code),
            _ => None,
        }
    }
}

/// A jobwire client. Cheap to clone; clones share connections and the
/// rotation over base URLs.
#[derive(Clone, Debug)]
pub struct Client {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    http: reqwest::Client,
    /// Roots for `https://` and `wss://`: the system's, plus any CA given.
    tls: Arc<rustls::ClientConfig>,
    urls: Vec<String>,
    /// The base URL currently preferred; moves on when one is unreachable.
    current: AtomicUsize,
    token: TokenSource,
}

/// The TLS client settings: the system's root certificates plus `extra`
/// (PEM texts), with the ring provider.
fn tls_config(extra: &[Vec<u8>]) -> Result<rustls::ClientConfig, ClientError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;
    let mut roots = rustls::RootCertStore::empty();
    // Unreadable system certificates are skipped, as browsers do; a private
    // CA given explicitly must parse.
    let native = rustls_native_certs::load_native_certs();
    roots.add_parsable_certificates(native.certs);
    for pem in extra {
        let mut added = 0;
        for cert in CertificateDer::pem_slice_iter(pem) {
            let cert = cert.map_err(|e| ClientError::Config(format!("CA certificate: {e}")))?;
            roots
                .add(cert)
                .map_err(|e| ClientError::Config(format!("CA certificate: {e}")))?;
            added += 1;
        }
        if added == 0 {
            return Err(ClientError::Config(
                "CA certificate: no PEM certificate found".to_owned(),
            ));
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ClientError::Config(format!("TLS: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// Builds a [`Client`].
#[derive(Debug)]
pub struct ClientBuilder {
    urls: Vec<String>,
    token: Option<TokenSource>,
    timeout: Duration,
    ca_certs: Vec<Vec<u8>>,
}

impl ClientBuilder {
    /// Trusts the CA certificates in this PEM text for `https://` servers,
    /// besides the system's roots (for a private CA).
    pub fn ca_cert_pem(mut self, pem: impl Into<Vec<u8>>) -> ClientBuilder {
        self.ca_certs.push(pem.into());
        self
    }

    /// Adds a base URL (`http://host:port` or `https://host`). With several, calls and watches
    /// rotate to the next when one cannot be reached.
    pub fn url(mut self, url: impl Into<String>) -> ClientBuilder {
        self.urls.push(url.into());
        self
    }

    /// The token, or a provider that is asked again before the token expires
    /// and whenever the server refuses it.
    pub fn token(mut self, token: impl Into<TokenSource>) -> ClientBuilder {
        self.token = Some(token.into());
        self
    }

    /// Timeout of REST calls (default 30 s).
    pub fn timeout(mut self, timeout: Duration) -> ClientBuilder {
        self.timeout = timeout;
        self
    }

    /// # Errors
    /// [`ClientError::Config`] without a URL or token, with a URL that is
    /// neither `http://` nor `https://`, or with a CA certificate that does
    /// not parse.
    pub fn build(self) -> Result<Client, ClientError> {
        if self.urls.is_empty() {
            return Err(ClientError::Config("no server URL given".to_owned()));
        }
        let mut urls = Vec::with_capacity(self.urls.len());
        for url in self.urls {
            let url = url.trim_end_matches('/').to_owned();
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(ClientError::Config(format!(
                    "{url}: the URL must start with http:// or https://"
                )));
            }
            urls.push(url);
        }
        let token = self
            .token
            .ok_or_else(|| ClientError::Config("no token given".to_owned()))?;
        let tls = Arc::new(tls_config(&self.ca_certs)?);
        let http = reqwest::Client::builder()
            .timeout(self.timeout)
            .connect_timeout(Duration::from_secs(5))
            .use_preconfigured_tls((*tls).clone())
            .build()
            .map_err(|e| ClientError::Config(e.to_string()))?;
        Ok(Client {
            shared: Arc::new(Shared {
                http,
                tls,
                urls,
                current: AtomicUsize::new(0),
                token,
            }),
        })
    }
}

impl Client {
    /// A client of one server with a fixed token.
    ///
    /// # Errors
    /// [`ClientError::Config`] for a URL that is not `http://`.
    pub fn new(url: impl Into<String>, token: impl Into<String>) -> Result<Client, ClientError> {
        Client::builder()
            .url(url)
            .token(TokenSource::Static(token.into()))
            .build()
    }

    pub fn builder() -> ClientBuilder {
        ClientBuilder {
            urls: Vec::new(),
            token: None,
            timeout: Duration::from_secs(30),
            ca_certs: Vec::new(),
        }
    }

    /// The base URLs it was built with.
    pub fn urls(&self) -> Vec<&str> {
        self.shared.urls.iter().map(String::as_str).collect()
    }

    /// The base URLs, starting with the currently preferred one.
    pub(crate) fn urls_in_order(&self) -> impl Iterator<Item = (usize, &str)> {
        let n = self.shared.urls.len();
        let start = self.shared.current.load(Ordering::Relaxed) % n;
        (0..n).map(move |i| {
            let at = (start + i) % n;
            (at, self.shared.urls[at].as_str())
        })
    }

    /// Prefers the URL at `at` from now on (it answered).
    pub(crate) fn prefer(&self, at: usize) {
        self.shared.current.store(at, Ordering::Relaxed);
    }

    /// TLS settings for `wss://` watches (the same as for REST calls).
    pub(crate) fn tls(&self) -> Arc<rustls::ClientConfig> {
        Arc::clone(&self.shared.tls)
    }

    pub(crate) fn http(&self) -> &reqwest::Client {
        &self.shared.http
    }

    pub(crate) fn token_source(&self) -> &TokenSource {
        &self.shared.token
    }
}
