//! Connections to Redis.
//!
//! Ordinary commands share a small pool of `ConnectionManager`s (multiplexed,
//! pipelining concurrent requests, reconnecting by themselves). Blocking reads
//! (`XREAD BLOCK`, `XREADGROUP BLOCK`) stall every other command on their
//! connection, so each gets a dedicated connection whose response timeout
//! exceeds its block time (DEPENDENCIES.md measured both effects).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use jobwire_core::BackendError;
use redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use redis::{AsyncConnectionConfig, Client, ClientTlsConfig, RedisError, TlsCertificates};

use crate::{ConnectError, RedisConfig};

/// A client for the URL, with the configured certificates if any.
fn client(config: &RedisConfig) -> Result<Client, ConnectError> {
    let url_error = |cause| ConnectError::Url {
        url: crate::redacted(&config.url),
        cause,
    };
    let tls = &config.tls;
    if !tls.any() {
        return Client::open(config.url.as_str()).map_err(url_error);
    }
    if !config.url.starts_with("rediss://") {
        return Err(ConnectError::Tls(format!(
            "TLS certificates are configured but REDIS_URL {} is not a rediss:// URL",
            crate::redacted(&config.url)
        )));
    }
    let read = |path: &std::path::Path, what: &str| {
        std::fs::read(path).map_err(|e| {
            ConnectError::Tls(format!("cannot read the {what} {}: {e}", path.display()))
        })
    };
    let client_tls = match (&tls.client_cert, &tls.client_key) {
        (Some(cert), Some(key)) => Some(ClientTlsConfig {
            client_cert: read(cert, "client certificate (JOBWIRE_REDIS_CLIENT_CERT)")?,
            client_key: read(key, "client key (JOBWIRE_REDIS_CLIENT_KEY)")?,
        }),
        (None, None) => None,
        _ => {
            return Err(ConnectError::Tls(
                "JOBWIRE_REDIS_CLIENT_CERT and JOBWIRE_REDIS_CLIENT_KEY go together".to_owned(),
            ))
        }
    };
    let root_cert = match &tls.ca_cert {
        Some(path) => Some(read(path, "CA certificate (JOBWIRE_REDIS_CA_CERT)")?),
        None => None,
    };
    Client::build_with_tls(
        config.url.as_str(),
        TlsCertificates {
            client_tls,
            root_cert,
        },
    )
    .map_err(|e| ConnectError::Tls(format!("unusable TLS certificates: {e}")))
}

/// How long connecting may take before Redis counts as unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug)]
pub(crate) struct Connections {
    client: Client,
    pool: Vec<ConnectionManager>,
    next: AtomicUsize,
    /// Idle dedicated connections for blocking queue reads, reused between
    /// calls (opening one per claim would cost a handshake each time).
    blocking: Mutex<Vec<MultiplexedConnection>>,
}

impl Connections {
    pub(crate) async fn open(config: &RedisConfig) -> Result<Connections, ConnectError> {
        let client = client(config)?;
        let manager_config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(config.command_timeout))
            .set_max_delay(Duration::from_secs(2))
            // Each reconnect tries a few times; a command issued after that
            // triggers the next round. Start-up fails fast instead of
            // sitting through a long backoff: callers retry and log.
            .set_number_of_retries(2);
        let mut pool = Vec::with_capacity(config.pool_size.max(1));
        for _ in 0..config.pool_size.max(1) {
            let manager = client
                .get_connection_manager_with_config(manager_config.clone())
                .await
                .map_err(|cause| ConnectError::Unreachable {
                    url: crate::redacted(&config.url),
                    cause,
                })?;
            pool.push(manager);
        }
        Ok(Connections {
            client,
            pool,
            next: AtomicUsize::new(0),
            blocking: Mutex::new(Vec::new()),
        })
    }

    /// Pings every shared connection. A `ConnectionManager` reconnects only
    /// after one of its own commands failed; pinging them all each second
    /// means that after an outage they are all back within about a second,
    /// instead of each failing one real request first.
    pub(crate) async fn keepalive(&self) {
        for manager in &self.pool {
            let mut manager = manager.clone();
            let _ = redis::cmd("PING").query_async::<()>(&mut manager).await;
        }
    }

    /// A shared connection for ordinary (non-blocking) commands.
    pub(crate) fn command(&self) -> ConnectionManager {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.pool.len();
        self.pool[i].clone()
    }

    /// A new dedicated connection for blocking reads of up to `block`.
    pub(crate) async fn dedicated(
        &self,
        block: Duration,
    ) -> Result<MultiplexedConnection, RedisError> {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(block + Duration::from_secs(5)));
        self.client
            .get_multiplexed_async_connection_with_config(&config)
            .await
    }

    /// A dedicated connection from the idle set, or a new one. Its response
    /// timeout is set for blocks up to [`MAX_QUEUE_BLOCK`].
    pub(crate) async fn take_blocking(&self) -> Result<MultiplexedConnection, RedisError> {
        let idle = self.blocking_set().pop();
        match idle {
            Some(conn) => Ok(conn),
            None => self.dedicated(MAX_QUEUE_BLOCK).await,
        }
    }

    /// Returns a healthy blocking connection to the idle set.
    pub(crate) fn give_back(&self, conn: MultiplexedConnection) {
        let mut idle = self.blocking_set();
        if idle.len() < 16 {
            idle.push(conn);
        }
    }

    fn blocking_set(&self) -> std::sync::MutexGuard<'_, Vec<MultiplexedConnection>> {
        self.blocking
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The longest block a queue read may ask for.
pub(crate) const MAX_QUEUE_BLOCK: Duration = Duration::from_secs(30);

/// Maps a Redis error to a backend error: connection trouble is retryable,
/// anything else means data or a script misbehaved.
pub(crate) fn backend_error(e: RedisError) -> BackendError {
    let transient = e.is_io_error()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_timeout()
        || e.is_unrecoverable_error()
        || matches!(
            e.code(),
            Some("LOADING" | "BUSY" | "MASTERDOWN" | "TRYAGAIN")
        );
    if transient {
        BackendError::Unavailable(e.to_string())
    } else {
        BackendError::Data(e.to_string())
    }
}
