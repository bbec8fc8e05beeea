//! Connections to Redis.
//!
//! Ordinary commands share a small pool of `ConnectionManager`s (multiplexed,
//! pipelining concurrent requests, reconnecting by themselves). Blocking reads
//! (`XREAD BLOCK`, `XREADGROUP BLOCK`) stall every other command on their
//! connection, so each gets a dedicated connection whose response timeout
//! exceeds its block time (DEPENDENCIES.md measured both effects).
//!
//! Behind Sentinel (`redis+sentinel://`), all of them follow the master the
//! sentinels name, checked every second (`sentinel.rs`).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use jobwire_core::BackendError;
use redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use redis::sentinel::SentinelClient;
use redis::{AsyncConnectionConfig, Client, ClientTlsConfig, RedisError, TlsCertificates};

use crate::sentinel::{self, SentinelUrl};
use crate::{ConnectError, RedisConfig};

/// The configured TLS certificates, if any, read from their files.
fn certificates(config: &RedisConfig) -> Result<Option<TlsCertificates>, ConnectError> {
    let tls = &config.tls;
    if !tls.any() {
        return Ok(None);
    }
    if !config.url.starts_with("rediss://") && !config.url.starts_with("rediss+sentinel://") {
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
    Ok(Some(TlsCertificates {
        client_tls,
        root_cert,
    }))
}

/// Where the master is: one URL, or wherever Sentinel says.
enum Source {
    Fixed(Client),
    Sentinel(tokio::sync::Mutex<SentinelClient>),
}

impl Source {
    fn new(config: &RedisConfig) -> Result<Source, ConnectError> {
        let certificates = certificates(config)?;
        if sentinel::is_sentinel(&config.url) {
            let invalid = |why| ConnectError::Sentinel {
                url: crate::redacted(&config.url),
                why,
            };
            let url = SentinelUrl::parse(&config.url).map_err(invalid)?;
            let client = url
                .client(certificates)
                .map_err(|e| invalid(e.to_string()))?;
            return Ok(Source::Sentinel(tokio::sync::Mutex::new(client)));
        }
        let client = match certificates {
            None => Client::open(config.url.as_str()),
            Some(certificates) => Client::build_with_tls(config.url.as_str(), certificates),
        };
        client
            .map(Source::Fixed)
            .map_err(|cause| ConnectError::Url {
                url: crate::redacted(&config.url),
                cause,
            })
    }

    /// A client for the master as of now.
    async fn master(&self) -> Result<Client, RedisError> {
        match self {
            Source::Fixed(client) => Ok(client.clone()),
            Source::Sentinel(sentinel) => sentinel.lock().await.async_get_client().await,
        }
    }
}

impl std::fmt::Debug for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Source::Fixed(_) => "Fixed",
            Source::Sentinel(_) => "Sentinel",
        })
    }
}

/// How long connecting may take before Redis counts as unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug)]
pub(crate) struct Connections {
    source: Source,
    /// The connections to the master; replaced when Sentinel names another.
    node: RwLock<Arc<Node>>,
    manager_config: ConnectionManagerConfig,
    pool_size: usize,
    next: AtomicUsize,
    /// Idle dedicated connections for blocking queue reads, reused between
    /// calls (opening one per claim would cost a handshake each time).
    blocking: Mutex<Vec<MultiplexedConnection>>,
}

/// One master and the shared connections to it.
#[derive(Debug)]
struct Node {
    client: Client,
    pool: Vec<ConnectionManager>,
}

impl Node {
    async fn open(
        client: Client,
        config: &ConnectionManagerConfig,
        size: usize,
    ) -> Result<Node, RedisError> {
        let mut pool = Vec::with_capacity(size.max(1));
        for _ in 0..size.max(1) {
            pool.push(
                client
                    .get_connection_manager_with_config(config.clone())
                    .await?,
            );
        }
        Ok(Node { client, pool })
    }
}

impl Connections {
    pub(crate) async fn open(config: &RedisConfig) -> Result<Connections, ConnectError> {
        let source = Source::new(config)?;
        let manager_config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(config.command_timeout))
            .set_max_delay(Duration::from_secs(2))
            // Each reconnect tries a few times; a command issued after that
            // triggers the next round. Start-up fails fast instead of
            // sitting through a long backoff: callers retry and log.
            .set_number_of_retries(2);
        let unreachable = |cause| ConnectError::Unreachable {
            url: crate::redacted(&config.url),
            cause,
        };
        let client = source.master().await.map_err(unreachable)?;
        let node = Node::open(client, &manager_config, config.pool_size)
            .await
            .map_err(unreachable)?;
        Ok(Connections {
            source,
            node: RwLock::new(Arc::new(node)),
            manager_config,
            pool_size: config.pool_size,
            next: AtomicUsize::new(0),
            blocking: Mutex::new(Vec::new()),
        })
    }

    fn node(&self) -> Arc<Node> {
        Arc::clone(&self.node.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// Pings every shared connection. A `ConnectionManager` reconnects only
    /// after one of its own commands failed; pinging them all each second
    /// means that after an outage they are all back within about a second,
    /// instead of each failing one real request first.
    ///
    /// Behind Sentinel it also asks where the master is, and moves every
    /// connection when a failover named another one: new commands and
    /// blocking reads go there, and idle blocking connections to the old
    /// master are dropped. (The writes the old master took and never
    /// passed on are lost; the epochs make clients resync, see design.md.)
    pub(crate) async fn keepalive(&self) {
        let node = self.node();
        for manager in &node.pool {
            let mut manager = manager.clone();
            let _ = redis::cmd("PING").query_async::<()>(&mut manager).await;
        }
        if !matches!(self.source, Source::Sentinel(_)) {
            return;
        }
        let Ok(master) = self.source.master().await else {
            // No sentinel answered, or the master it names is down: keep
            // what we have until the sentinels agree on another.
            return;
        };
        if sentinel::address(&master) == sentinel::address(&node.client) {
            return;
        }
        let address = sentinel::address(&master);
        match Node::open(master, &self.manager_config, self.pool_size).await {
            Ok(new) => {
                tracing::warn!(master = %address, "Sentinel names another master: following it");
                *self.node.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(new);
                self.blocking_set().clear();
            }
            Err(e) => {
                tracing::warn!(master = %address, error = %e, "cannot reach the new master yet")
            }
        }
    }

    /// A shared connection for ordinary (non-blocking) commands.
    pub(crate) fn command(&self) -> ConnectionManager {
        let node = self.node();
        let i = self.next.fetch_add(1, Ordering::Relaxed) % node.pool.len();
        node.pool[i].clone()
    }

    /// A new dedicated connection for blocking reads of up to `block`.
    pub(crate) async fn dedicated(
        &self,
        block: Duration,
    ) -> Result<MultiplexedConnection, RedisError> {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(block + Duration::from_secs(5)));
        self.node()
            .client
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
            // READONLY: a former master, now a replica after a failover,
            // until the connections follow the new one.
            Some("LOADING" | "BUSY" | "MASTERDOWN" | "TRYAGAIN" | "READONLY")
        );
    if transient {
        BackendError::Unavailable(e.to_string())
    } else {
        BackendError::Data(e.to_string())
    }
}
