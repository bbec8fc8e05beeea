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
//!
//! On Redis Cluster (several URLs, or one URL of a cluster node), ordinary
//! commands go through redis-rs's cluster connection, which routes each by
//! its key's slot, follows MOVED and ASK, retries TRYAGAIN and refreshes the
//! slot map after a failover or a resharding. Blocking reads get a dedicated
//! connection to the master that owns their key's slot, found with
//! `CLUSTER SLOTS` each time one is opened.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use jobwire_core::BackendError;
use redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::sentinel::SentinelClient;
use redis::{
    AsyncConnectionConfig, Client, ClientTlsConfig, ConnectionAddr, ConnectionInfo,
    IntoConnectionInfo, RedisError, TlsCertificates, Value,
};

use crate::sentinel::{self, SentinelUrl};
use crate::tail_connection::TailConnection;
use crate::{ConnectError, RedisConfig};

/// The configured TLS certificates, if any, read from their files.
fn certificates(config: &RedisConfig) -> Result<Option<TlsCertificates>, ConnectError> {
    let tls = &config.tls;
    if !tls.any() {
        return Ok(None);
    }
    if !config.url.starts_with("rediss://") && !config.url.starts_with("rediss+sentinel://") {
        // (A cluster's list starts with its first node's URL.)
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

/// The TLS set-up of the live tail's own connections, as redis-rs makes its
/// own from the same certificates: the configured CA alone, else the
/// system's roots; the client certificate when there is one.
fn tls_config(
    certificates: Option<&TlsCertificates>,
) -> Result<rustls::ClientConfig, ConnectError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let bad = |what: &str, e: &dyn std::fmt::Display| ConnectError::Tls(format!("{what}: {e}"));
    let mut roots = rustls::RootCertStore::empty();
    match certificates.and_then(|c| c.root_cert.as_deref()) {
        Some(pem) => {
            for cert in CertificateDer::pem_slice_iter(pem) {
                let cert =
                    cert.map_err(|e| bad("the CA certificate (JOBWIRE_REDIS_CA_CERT)", &e))?;
                roots
                    .add(cert)
                    .map_err(|e| bad("the CA certificate (JOBWIRE_REDIS_CA_CERT)", &e))?;
            }
        }
        None => {
            // Unreadable system certificates are skipped, as redis-rs's
            // own connections would fail on them anyway.
            for cert in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(cert);
            }
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| bad("TLS", &e))?
        .with_root_certificates(roots);
    match certificates.and_then(|c| c.client_tls.as_ref()) {
        Some(client) => {
            let chain = CertificateDer::pem_slice_iter(&client.client_cert)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| bad("the client certificate (JOBWIRE_REDIS_CLIENT_CERT)", &e))?;
            let key = PrivateKeyDer::from_pem_slice(&client.client_key)
                .map_err(|e| bad("the client key (JOBWIRE_REDIS_CLIENT_KEY)", &e))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| bad("the client certificate and key", &e))
        }
        None => Ok(builder.with_no_client_auth()),
    }
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
/// How much longer than its block time a blocking read may take to answer.
const BLOCK_SLACK: Duration = Duration::from_secs(5);

#[derive(Debug)]
pub(crate) struct Connections {
    topology: Topology,
    /// Idle dedicated connections for blocking queue reads, reused between
    /// calls (opening one per claim would cost a handshake each time). All
    /// go to one node: the master, or on a cluster the wake-up stream's.
    blocking: Mutex<Vec<MultiplexedConnection>>,
    /// For the live tail's own connections to a `rediss://` server.
    tls: Option<Arc<rustls::ClientConfig>>,
}

#[derive(Debug)]
enum Topology {
    /// One master: a fixed URL or the one Sentinel names.
    Single(Box<Single>),
    Cluster(Box<Cluster>),
}

#[derive(Debug)]
struct Single {
    source: Source,
    /// The connections to the master; replaced when Sentinel names another.
    node: RwLock<Arc<Node>>,
    manager_config: ConnectionManagerConfig,
    pool_size: usize,
    next: AtomicUsize,
}

struct Cluster {
    conn: ClusterConnection,
    /// How to reach one node (credentials, TLS), taken from the first URL;
    /// dedicated connections take it with the node's address.
    seed: ConnectionInfo,
    certificates: Option<TlsCertificates>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Cluster")
    }
}

/// A connection for ordinary commands: to the one master, or to the cluster.
#[derive(Clone)]
pub(crate) enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl redis::aio::ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a redis::Cmd) -> redis::RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
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

/// Whether `url` lists several nodes (Redis Cluster).
pub(crate) fn is_cluster_list(url: &str) -> bool {
    !sentinel::is_sentinel(url) && url.contains(',')
}

impl Connections {
    pub(crate) async fn open(config: &RedisConfig) -> Result<Connections, ConnectError> {
        let topology = if is_cluster_list(&config.url) {
            Topology::Cluster(Box::new(
                Cluster::open(config, config.url.split(',')).await?,
            ))
        } else {
            let single = Single::open(config).await?;
            if single.is_cluster_node().await {
                // One URL of a cluster node: the cluster it belongs to.
                Topology::Cluster(Box::new(
                    Cluster::open(config, [config.url.as_str()]).await?,
                ))
            } else {
                Topology::Single(Box::new(single))
            }
        };
        let tls = if config.url.starts_with("rediss") {
            Some(Arc::new(tls_config(certificates(config)?.as_ref())?))
        } else {
            None
        };
        Ok(Connections {
            topology,
            blocking: Mutex::new(Vec::new()),
            tls,
        })
    }

    /// Whether this is Redis Cluster.
    pub(crate) fn clustered(&self) -> bool {
        matches!(self.topology, Topology::Cluster(_))
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
        let single = match &self.topology {
            Topology::Single(single) => single,
            Topology::Cluster(cluster) => {
                // Reaches every node; the cluster connection reconnects the
                // ones that fail and refreshes its slot map by itself.
                let mut conn = cluster.conn.clone();
                let _ = redis::cmd("PING").query_async::<()>(&mut conn).await;
                return;
            }
        };
        let node = single.node();
        for manager in &node.pool {
            let mut manager = manager.clone();
            let _ = redis::cmd("PING").query_async::<()>(&mut manager).await;
        }
        if !matches!(single.source, Source::Sentinel(_)) {
            return;
        }
        let Ok(master) = single.source.master().await else {
            // No sentinel answered, or the master it names is down: keep
            // what we have until the sentinels agree on another.
            return;
        };
        if sentinel::address(&master) == sentinel::address(&node.client) {
            return;
        }
        let address = sentinel::address(&master);
        match Node::open(master, &single.manager_config, single.pool_size).await {
            Ok(new) => {
                tracing::warn!(master = %address, "Sentinel names another master: following it");
                *single.node.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(new);
                self.blocking_set().clear();
            }
            Err(e) => {
                tracing::warn!(master = %address, error = %e, "cannot reach the new master yet")
            }
        }
    }

    /// Whether every key is on one master (a fixed URL or Sentinel's): a
    /// script may then touch keys of any slot.
    pub(crate) fn one_master(&self) -> bool {
        matches!(self.topology, Topology::Single(_))
    }

    /// A shared connection for ordinary (non-blocking) commands.
    pub(crate) fn command(&self) -> Conn {
        match &self.topology {
            Topology::Single(single) => {
                let node = single.node();
                let i = single.next.fetch_add(1, Ordering::Relaxed) % node.pool.len();
                Conn::Single(node.pool[i].clone())
            }
            Topology::Cluster(cluster) => Conn::Cluster(cluster.conn.clone()),
        }
    }

    /// Runs commands that each stay within one slot, side by side (on one
    /// connection they still travel as one pipeline), and returns their
    /// replies in order. On a cluster each goes to the node of its slot.
    ///
    /// On one master they go as one pipeline: one request through the
    /// multiplexed connection instead of one each (the promoter asks every
    /// partition several times a second). The pipelines given must not be
    /// atomic nor ignore replies.
    pub(crate) async fn each<T: redis::FromRedisValue>(
        &self,
        commands: impl IntoIterator<Item = redis::Pipeline>,
    ) -> Result<Vec<T>, RedisError> {
        let mut conn = self.command();
        if !self.one_master() {
            return futures_util::future::try_join_all(commands.into_iter().map(|pipe| {
                let mut conn = conn.clone();
                async move { pipe.query_async::<T>(&mut conn).await }
            }))
            .await;
        }
        let mut all = redis::pipe();
        let mut sizes = Vec::new();
        for pipe in commands {
            let before = all.len();
            for cmd in pipe.cmd_iter() {
                all.add_command(cmd.clone());
            }
            sizes.push(all.len() - before);
        }
        let replies: Vec<Value> = if all.is_empty() {
            Vec::new()
        } else {
            all.query_async(&mut conn).await?
        };
        let mut replies = replies.into_iter();
        sizes
            .into_iter()
            .map(|n| redis::from_redis_value(Value::Array(replies.by_ref().take(n).collect())))
            .collect::<Result<_, _>>()
            .map_err(RedisError::from)
    }

    /// A new dedicated connection for blocking reads of up to `block` on
    /// `key`: to the master, or on a cluster to the master of `key`'s slot.
    pub(crate) async fn dedicated(
        &self,
        key: &str,
        block: Duration,
    ) -> Result<MultiplexedConnection, RedisError> {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(block + BLOCK_SLACK));
        self.client_for(key)
            .await?
            .get_multiplexed_async_connection_with_config(&config)
            .await
    }

    /// A new connection of the live tail's own kind for blocking `XREAD`s
    /// of up to `block` on `key` (see `tail_connection.rs`).
    pub(crate) async fn tail_connection(
        &self,
        key: &str,
        block: Duration,
    ) -> Result<TailConnection, RedisError> {
        let client = self.client_for(key).await?;
        TailConnection::connect(
            client.get_connection_info(),
            self.tls.as_ref(),
            CONNECT_TIMEOUT,
            block + BLOCK_SLACK,
        )
        .await
    }

    /// A client for the master, or on a cluster for the master of `key`'s
    /// slot.
    async fn client_for(&self, key: &str) -> Result<Client, RedisError> {
        Ok(match &self.topology {
            Topology::Single(single) => single.node().client.clone(),
            Topology::Cluster(cluster) => cluster.client_for(key).await?,
        })
    }

    /// A dedicated connection for blocking reads on `key` from the idle set,
    /// or a new one. Its response timeout is set for blocks up to
    /// [`MAX_QUEUE_BLOCK`].
    pub(crate) async fn take_blocking(
        &self,
        key: &str,
    ) -> Result<MultiplexedConnection, RedisError> {
        // One that errs (its node failed over, the slot moved) is not given
        // back: the next call opens one to the key's node as of then.
        let idle = self.blocking_set().pop();
        match idle {
            Some(conn) => Ok(conn),
            None => self.dedicated(key, MAX_QUEUE_BLOCK).await,
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

impl Single {
    async fn open(config: &RedisConfig) -> Result<Single, ConnectError> {
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
        Ok(Single {
            source,
            node: RwLock::new(Arc::new(node)),
            manager_config,
            pool_size: config.pool_size,
            next: AtomicUsize::new(0),
        })
    }

    fn node(&self) -> Arc<Node> {
        Arc::clone(&self.node.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// Whether the server is a node of a Redis Cluster (`cluster_enabled:1`).
    async fn is_cluster_node(&self) -> bool {
        let mut conn = self.node().pool[0].clone();
        redis::cmd("INFO")
            .arg("cluster")
            .query_async::<String>(&mut conn)
            .await
            .is_ok_and(|info| info.lines().any(|l| l.trim() == "cluster_enabled:1"))
    }
}

/// The nodes of a cluster's URL list, each a `redis://` or `rediss://` URL.
fn cluster_nodes<'a>(
    config: &RedisConfig,
    urls: impl IntoIterator<Item = &'a str>,
) -> Result<Vec<ConnectionInfo>, ConnectError> {
    let mut nodes = Vec::new();
    for url in urls {
        let url = url.trim();
        if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
            return Err(ConnectError::Cluster(format!(
                "invalid REDIS_URL {}: {} is not a redis:// or rediss:// URL; a cluster \
                 is given as a comma-separated list of node URLs",
                crate::redacted(&config.url),
                crate::redacted(url)
            )));
        }
        nodes.push(
            url.into_connection_info()
                .map_err(|cause| ConnectError::Url {
                    url: crate::redacted(&config.url),
                    cause,
                })?,
        );
    }
    Ok(nodes)
}

/// The checks of `config` that need no Redis: the URL (each node's, for a
/// cluster list; Sentinel's form), and the TLS files and certificates.
/// Processes run them before they take their port or wait for Redis, so a
/// typo is reported as one at once.
pub(crate) fn check_offline(config: &RedisConfig) -> Result<(), ConnectError> {
    if is_cluster_list(&config.url) {
        cluster_nodes(config, config.url.split(','))?;
    } else {
        Source::new(config)?;
    }
    if config.url.starts_with("rediss") {
        tls_config(certificates(config)?.as_ref())?;
    }
    Ok(())
}

impl Cluster {
    async fn open<'a>(
        config: &RedisConfig,
        urls: impl IntoIterator<Item = &'a str>,
    ) -> Result<Cluster, ConnectError> {
        let invalid = |cause| ConnectError::Url {
            url: crate::redacted(&config.url),
            cause,
        };
        let nodes = cluster_nodes(config, urls)?;
        let Some(seed) = nodes.first().cloned() else {
            return Err(ConnectError::Cluster("REDIS_URL lists no node".to_owned()));
        };
        let certificates = certificates(config)?;
        let mut builder = ClusterClientBuilder::new(nodes)
            .connection_timeout(CONNECT_TIMEOUT)
            .response_timeout(config.command_timeout)
            // A failover takes a few seconds: retry MOVED, TRYAGAIN and
            // CLUSTERDOWN through it, with the slot map refreshed between.
            .retries(8)
            .min_retry_wait(50)
            .max_retry_wait(1_000);
        if let Some(certificates) = certificates.clone() {
            builder = builder.certs(certificates);
        }
        let client = builder.build().map_err(invalid)?;
        let conn =
            client
                .get_async_connection()
                .await
                .map_err(|cause| ConnectError::Unreachable {
                    url: crate::redacted(&config.url),
                    cause,
                })?;
        Ok(Cluster {
            conn,
            seed,
            certificates,
        })
    }

    /// A client for the master that owns `key`'s slot now.
    async fn client_for(&self, key: &str) -> Result<Client, RedisError> {
        let slot = crate::keys::slot_of(key);
        let mut conn = self.conn.clone();
        let ranges: Vec<Value> = redis::cmd("CLUSTER")
            .arg("SLOTS")
            .query_async(&mut conn)
            .await?;
        let owner = ranges.iter().find_map(|range| {
            let Value::Array(parts) = range else {
                return None;
            };
            let (Some(Value::Int(first)), Some(Value::Int(last)), Some(Value::Array(master))) =
                (parts.first(), parts.get(1), parts.get(2))
            else {
                return None;
            };
            if !(*first..=*last).contains(&i64::from(slot)) {
                return None;
            }
            let host = match master.first()? {
                Value::BulkString(b) => String::from_utf8(b.clone()).ok()?,
                Value::SimpleString(s) => s.clone(),
                _ => return None,
            };
            let Some(Value::Int(port)) = master.get(1) else {
                return None;
            };
            Some((host, u16::try_from(*port).ok()?))
        });
        let Some((host, port)) = owner else {
            return Err(RedisError::from((
                redis::ErrorKind::Server(redis::ServerErrorKind::ClusterDown),
                "no master owns the slot",
                format!("slot {slot}"),
            )));
        };
        let addr = match self.seed.addr() {
            ConnectionAddr::TcpTls {
                insecure,
                tls_params,
                ..
            } => ConnectionAddr::TcpTls {
                host,
                port,
                insecure: *insecure,
                tls_params: tls_params.clone(),
            },
            _ => ConnectionAddr::Tcp(host, port),
        };
        let info = self.seed.clone().set_addr(addr);
        match &self.certificates {
            None => Client::open(info),
            Some(certificates) => Client::build_with_tls(info, certificates.clone()),
        }
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
            // until the connections follow the new one. MOVED, ASK and
            // CLUSTERDOWN: a cluster's slots moving or failing over (the
            // cluster connection retries them itself; a dedicated one
            // reconnects to the slot's new owner).
            Some(
                "LOADING"
                    | "BUSY"
                    | "MASTERDOWN"
                    | "TRYAGAIN"
                    | "READONLY"
                    | "MOVED"
                    | "ASK"
                    | "CLUSTERDOWN"
            )
        );
    if transient {
        BackendError::Unavailable(e.to_string())
    } else {
        BackendError::Data(e.to_string())
    }
}
