//! `RedisBackend`: the jobwire [`Backend`] on Redis (standalone), with the key
//! layout of [`keys`] and the Lua scripts in `lua/`.
//!
//! # Layout
//!
//! - `keys.rs`: every key name, in one place.
//! - `scripts.rs`: the Lua scripts (`lua/*.lua`), run with EVALSHA.
//! - `connection.rs`: the shared command connections and the dedicated ones
//!   that blocking reads need, and the mapping of Redis errors.
//! - `jobs.rs`: create, publish (compare-and-set on the sequence), read,
//!   history, listing, cancel, delete.
//! - `queue.rs`: the job queue on a Streams consumer group.
//! - `limits.rs`: fleet-wide queue limits: slots taken at claim time.
//! - `schedules.rs`: the cron schedules, one hash.
//! - `tail.rs`: the live tail over all partition streams.
//!
//! # Why publish is planned in Rust
//!
//! The reducer, fencing and enrichment live in `jobwire_core` and run in the
//! publishing process; the Lua script only checks that the job's sequence
//! number is still the one the plan was made from and writes. A per-process
//! cache of job heads means a steady publisher needs one round trip per batch;
//! a stale cache costs one retry. See `docs/design.md`.

mod connection;
mod jobs;
mod keys;
mod limits;
mod queue;
mod schedules;
mod scripts;
mod sentinel;
mod tail;
mod tail_connection;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jobwire_core::publish::LogHead;
use jobwire_core::{BackendConfig, JobId};
use thiserror::Error;

pub use keys::{partition_tag, slot_of};

use connection::Connections;
use keys::Keys;

type Result<T, E = jobwire_core::BackendError> = std::result::Result<T, E>;

/// How to reach Redis and the limits to apply. Its `Debug` hides the URL's
/// password.
#[derive(Clone)]
pub struct RedisConfig {
    /// `redis://` or `rediss://` URL, a comma-separated list of them (the
    /// nodes of a Redis Cluster; one node's URL also finds its cluster), or
    /// `redis+sentinel://` (also `rediss+sentinel://`) sentinels and a
    /// master name.
    pub url: String,
    /// Shared multiplexed connections for ordinary commands
    /// (`JOBWIRE_REDIS_POOL_SIZE`); blocking reads get their own.
    pub pool_size: usize,
    /// Prefix of every key, so several deployments can share one Redis.
    pub key_prefix: String,
    /// How long to wait for a reply before treating Redis as unreachable.
    pub command_timeout: Duration,
    /// Log and retention limits.
    pub backend: BackendConfig,
    /// Certificates for a `rediss://` URL.
    pub tls: TlsFiles,
    /// Replicas that must have each job write before it counts
    /// (`JOBWIRE_REDIS_WAIT_REPLICAS`; `WAIT` after every publish and
    /// create). 0: none, as Redis does by default.
    pub wait_replicas: u32,
}

/// PEM files for TLS to Redis (`rediss://`). Without any, the server's
/// certificate must chain to the system's roots.
#[derive(Clone, Debug, Default)]
pub struct TlsFiles {
    /// The CA to trust for the server's certificate instead of the system's
    /// roots (`JOBWIRE_REDIS_CA_CERT`).
    pub ca_cert: Option<std::path::PathBuf>,
    /// A client certificate and its key, for servers that require them
    /// (`JOBWIRE_REDIS_CLIENT_CERT`, `JOBWIRE_REDIS_CLIENT_KEY`).
    pub client_cert: Option<std::path::PathBuf>,
    pub client_key: Option<std::path::PathBuf>,
}

impl TlsFiles {
    fn any(&self) -> bool {
        self.ca_cert.is_some() || self.client_cert.is_some() || self.client_key.is_some()
    }
}

impl std::fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisConfig")
            .field("url", &redacted(&self.url))
            .field("pool_size", &self.pool_size)
            .field("key_prefix", &self.key_prefix)
            .field("command_timeout", &self.command_timeout)
            .field("backend", &self.backend)
            .field("tls", &self.tls)
            .field("wait_replicas", &self.wait_replicas)
            .finish()
    }
}

/// A Redis URL (or a comma-separated list of them) with every password
/// replaced by `***`, fit for logs and error messages:
/// `redis://user:secret@host:6379/0` becomes `redis://user:***@host:6379/0`,
/// and `redis://:secret@host` becomes `redis://:***@host`.
pub fn redacted(url: &str) -> String {
    url.split(',').map(redact_one).collect::<Vec<_>>().join(",")
}

fn redact_one(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        // Not a URL at all: it may still be a password pasted by mistake.
        return "<not a URL>".to_owned();
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = match userinfo.split_once(':') {
                Some((user, _password)) => format!("{user}:***"),
                // `redis://secret@host`: redis-rs reads it as a user name,
                // but people put passwords there.
                None => "***".to_owned(),
            };
            format!("{scheme}://{user}@{host}{path}")
        }
        None => url.to_owned(),
    }
}

impl RedisConfig {
    /// Defaults for everything but the URL.
    pub fn new(url: impl Into<String>) -> RedisConfig {
        RedisConfig {
            url: url.into(),
            pool_size: 4,
            key_prefix: "jobwire".to_owned(),
            command_timeout: Duration::from_secs(5),
            backend: BackendConfig::default(),
            tls: TlsFiles::default(),
            wait_replicas: 0,
        }
    }

    /// What can be checked without Redis: the URL (every node's, for a
    /// cluster; Sentinel's form) and the TLS files. [`RedisBackend::connect`]
    /// makes the same checks; a process makes them first to report a typo
    /// at once, before it takes its port or waits for Redis.
    pub fn check(&self) -> Result<(), ConnectError> {
        connection::check_offline(self)
    }
}

/// Why the backend could not start.
#[derive(Debug, Error)]
pub enum ConnectError {
    /// The URL is not a valid Redis URL. (`url` is redacted; the cause is
    /// in the message, not chained, so `{:#}` does not print it twice.)
    #[error("invalid REDIS_URL {url}: expected redis://[[user]:password@]host[:port][/db] or rediss://… ({cause})")]
    Url {
        url: String,
        cause: redis::RedisError,
    },
    /// Redis did not answer.
    #[error("cannot reach Redis at {url}: {cause}")]
    Unreachable {
        url: String,
        cause: redis::RedisError,
    },
    /// The data in Redis was written with another layout or partition count.
    #[error("{0}")]
    Layout(String),
    /// The TLS settings cannot be used.
    #[error("{0}")]
    Tls(String),
    /// A `redis+sentinel://` URL that cannot be used.
    #[error("invalid REDIS_URL {url}: {why}; expected redis+sentinel://[[user]:password@]host[:port],host[:port]…/master[/db]")]
    Sentinel { url: String, why: String },
    /// A cluster node list that cannot be used.
    #[error("{0}")]
    Cluster(String),
}

/// The Redis backend. Cheap to clone; clones share connections and cache.
#[derive(Clone, Debug)]
pub struct RedisBackend {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    config: RedisConfig,
    keys: Keys,
    conns: Connections,
    /// Last known head of jobs this process publishes to, so a publish is one
    /// round trip. Only a hint: the script's compare-and-set decides.
    heads: Mutex<HashMap<JobId, LogHead>>,
    /// This process among the publishers of a job (publish.lua's priority).
    publisher: String,
    /// Striped per-job turns for publishing (see `publish`). Unrelated
    /// jobs sharing a stripe just take turns, which is harmless.
    publish_turns: Box<[tokio::sync::Mutex<()>]>,
    /// What the claims of this process know and count (`queue.rs`).
    claiming: queue::Claiming,
    /// The limit slots this process's claims hold.
    slots: limits::Slots,
}

/// Stripes of `publish_turns`.
const PUBLISH_TURNS: usize = 1024;

/// Heads cached at most; past it the cache starts over (it is only a hint).
const HEAD_CACHE_CAPACITY: usize = 100_000;

impl RedisBackend {
    /// Connects, checks the stored layout against this build and the
    /// configured partition count, and makes sure the queue's consumer group
    /// exists.
    ///
    /// # Errors
    /// [`ConnectError`] for a bad URL, an unreachable Redis or a layout mismatch.
    pub async fn connect(config: RedisConfig) -> Result<RedisBackend, ConnectError> {
        let keys = Keys::new(&config.key_prefix, config.backend.partitions);
        let conns = Connections::open(&config).await?;
        let backend = RedisBackend {
            shared: Arc::new(Shared {
                config,
                keys,
                conns,
                heads: Mutex::new(HashMap::new()),
                publisher: format!("{:016x}", rand::random::<u64>()),
                publish_turns: (0..PUBLISH_TURNS)
                    .map(|_| tokio::sync::Mutex::new(()))
                    .collect(),
                claiming: queue::Claiming::default(),
                slots: limits::Slots::default(),
            }),
        };
        backend.check_layout().await?;
        if let Err(e) = backend.seed_ready().await {
            // Only entries queued before ready sets existed need it; their
            // lanes are read again once anything new is queued there.
            tracing::warn!(error = %e, "could not mark the queue lanes that hold entries");
        }
        backend.spawn_keepalive();
        Ok(backend)
    }

    /// Pings the shared connections every second while the backend lives
    /// (see `Connections::keepalive`).
    fn spawn_keepalive(&self) {
        let shared = Arc::downgrade(&self.shared);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(shared) = shared.upgrade() else {
                    return;
                };
                shared.conns.keepalive().await;
            }
        });
    }

    async fn check_layout(&self) -> Result<(), ConnectError> {
        let url = &self.shared.config.url;
        let unreachable = |cause| ConnectError::Unreachable {
            url: redacted(url),
            cause,
        };
        let keys = &self.shared.keys;
        let mut conn = self.shared.conns.command();
        let layout = LAYOUT_FIELDS;
        // HSETNX both fields, then read back: the first instance to start
        // writes the layout, every later one must agree with it.
        let (_, _, stored): ((), (), (Option<u32>, Option<u16>)) = redis::pipe()
            .cmd("HSETNX")
            .arg(keys.meta())
            .arg(layout.0)
            .arg(keys::LAYOUT_VERSION)
            .cmd("HSETNX")
            .arg(keys.meta())
            .arg(layout.1)
            .arg(keys.partitions())
            .cmd("HMGET")
            .arg(keys.meta())
            .arg(layout.0)
            .arg(layout.1)
            .query_async(&mut conn)
            .await
            .map_err(unreachable)?;
        match stored {
            (Some(v), Some(p)) if v == keys::LAYOUT_VERSION && p == keys.partitions() => Ok(()),
            (v, p) => Err(ConnectError::Layout(format!(
                "Redis at {url} holds jobwire data with layout {v:?} and {p:?} partitions \
                 (key {}); this build uses layout {} with {} partitions. Use another \
                 key prefix or the matching configuration.",
                keys.meta(),
                keys::LAYOUT_VERSION,
                keys.partitions()
            ))),
        }
    }

    /// One command per partition of `partitions` (built by `command`),
    /// side by side; the replies in the same order.
    pub(crate) async fn per_partition<T: redis::FromRedisValue>(
        &self,
        partitions: impl IntoIterator<Item = u16>,
        command: impl Fn(u16) -> redis::Cmd,
    ) -> Result<Vec<T>> {
        let replies: Vec<(T,)> = self
            .shared
            .conns
            .each(partitions.into_iter().map(|p| {
                let mut pipe = redis::pipe();
                pipe.add_command(command(p));
                pipe
            }))
            .await
            .map_err(connection::backend_error)?;
        Ok(replies.into_iter().map(|(reply,)| reply).collect())
    }

    fn turn_of(&self, job: &JobId) -> usize {
        // The partition hash spreads ids well; any stable hash would do.
        usize::from(job.partition(u16::MAX)) % PUBLISH_TURNS
    }

    /// Takes the job's cached head out of the cache (no clone: the caller
    /// holds the job's publish turn, and puts the new head back).
    fn take_cached_head(&self, job: &JobId) -> Option<LogHead> {
        self.heads().remove(job)
    }

    fn cache_head(&self, job: &JobId, head: Option<LogHead>) {
        let mut heads = self.heads();
        match head {
            Some(head) if !head.state.status.is_terminal() => {
                if heads.len() >= HEAD_CACHE_CAPACITY && !heads.contains_key(job) {
                    heads.clear();
                }
                heads.insert(job.clone(), head);
            }
            _ => {
                heads.remove(job);
            }
        }
    }

    fn heads(&self) -> std::sync::MutexGuard<'_, HashMap<JobId, LogHead>> {
        // The map is only a cache; a poisoned one is still usable.
        self.shared
            .heads
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

const LAYOUT_FIELDS: (&str, &str) = ("layout", "partitions");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_show() {
        for (url, shown) in [
            (
                "redis://user:s3cret@host:6379/0",
                "redis://user:***@host:6379/0",
            ),
            ("redis://:s3cret@host", "redis://:***@host"),
            ("rediss://s3cret@host:6380", "rediss://***@host:6380"),
            ("redis://host:6379", "redis://host:6379"),
            (
                "redis://:a@h1:1,redis://:b@h2:2",
                "redis://:***@h1:1,redis://:***@h2:2",
            ),
            ("s3cret", "<not a URL>"),
        ] {
            assert_eq!(redacted(url), shown);
        }
        let config = RedisConfig::new("redis://:s3cret@host");
        assert!(!format!("{config:?}").contains("s3cret"));
    }
}
