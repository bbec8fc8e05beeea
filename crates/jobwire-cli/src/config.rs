//! Command-line flags and their environment twins (docs/protocol.md). Invalid values
//! fail at start-up with a message naming the setting (clap exits with 2).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{anyhow, Context};
use clap::{Args, ValueEnum};
use jobwire_core::BackendConfig;
use jobwire_redis::{RedisConfig, TlsFiles};
use jobwire_server::{mint_token, AuthConfig, Scope, ServerConfig};
use jobwire_worker::runtime::default_consumer;
use jobwire_worker::WorkerConfig;

use crate::Failure;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum LogFormat {
    Text,
    Json,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum AuthMode {
    Enabled,
    /// Every request acts as an admin. For local use only.
    Disabled,
}

/// Where jobs are kept, and the limits every process writing them must
/// agree on (`serve`, `dev` and `worker`).
#[derive(Debug, Args)]
pub(crate) struct StoreFlags {
    /// Redis URL: redis:// or rediss://; for Redis Cluster a comma-separated
    /// list of node URLs (any one node's URL also finds its cluster); or
    /// redis+sentinel://host:port,…/MASTER for a master behind Sentinel.
    /// Its value is never shown: it may hold a password.
    #[arg(long, env = "REDIS_URL", hide_env_values = true)]
    pub(crate) redis_url: Option<String>,
    /// Events kept per job.
    #[arg(long, env = "JOBWIRE_STREAM_MAXLEN", default_value_t = 1000,
          value_parser = clap::value_parser!(u64).range(10..=10_000_000))]
    pub(crate) stream_maxlen: u64,
    /// How long a finished job and its events stay (e.g. 24h, 30m, 7d).
    #[arg(long, env = "JOBWIRE_RETENTION", default_value = "24h", value_parser = parse_duration)]
    pub(crate) retention: Duration,
    /// Shared Redis connections for ordinary commands.
    #[arg(long, env = "JOBWIRE_REDIS_POOL_SIZE", default_value_t = 4,
          value_parser = clap::value_parser!(u16).range(1..=256))]
    pub(crate) redis_pool_size: u16,
    /// Partitions of the Redis layout (fixed per deployment).
    #[arg(long, env = "JOBWIRE_PARTITIONS", default_value_t = 16,
          value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub(crate) partitions: u16,
    /// Prefix of every Redis key.
    #[arg(long, env = "JOBWIRE_KEY_PREFIX", default_value = "jobwire")]
    pub(crate) key_prefix: String,
    /// For rediss://: the PEM CA certificate to trust for the Redis server,
    /// instead of the system's roots (e.g. a private CA).
    #[arg(long, env = "JOBWIRE_REDIS_CA_CERT")]
    pub(crate) redis_ca_cert: Option<PathBuf>,
    /// For rediss:// servers that ask for a client certificate: the PEM
    /// certificate (with --redis-client-key).
    #[arg(long, env = "JOBWIRE_REDIS_CLIENT_CERT", requires = "redis_client_key")]
    pub(crate) redis_client_cert: Option<PathBuf>,
    /// The PEM key of --redis-client-cert.
    #[arg(long, env = "JOBWIRE_REDIS_CLIENT_KEY", requires = "redis_client_cert")]
    pub(crate) redis_client_key: Option<PathBuf>,
    /// Replicas that must confirm each job write (WAIT) before it is
    /// acknowledged: fewer writes lost in a failover, for some latency.
    /// 0 (the default) waits for none.
    #[arg(long, env = "JOBWIRE_REDIS_WAIT_REPLICAS", default_value_t = 0,
          value_parser = clap::value_parser!(u32).range(0..=16))]
    pub(crate) redis_wait_replicas: u32,
}

impl StoreFlags {
    pub(crate) fn backend_config(&self) -> BackendConfig {
        BackendConfig {
            stream_maxlen: self.stream_maxlen as usize,
            retention: self.retention,
            partitions: self.partitions,
            ..BackendConfig::default()
        }
    }

    /// The Redis settings; call only when `redis_url` is set.
    pub(crate) fn redis_config(&self) -> RedisConfig {
        RedisConfig {
            pool_size: usize::from(self.redis_pool_size),
            wait_replicas: self.redis_wait_replicas,
            key_prefix: self.key_prefix.clone(),
            backend: self.backend_config(),
            tls: TlsFiles {
                ca_cert: self.redis_ca_cert.clone(),
                client_cert: self.redis_client_cert.clone(),
                client_key: self.redis_client_key.clone(),
            },
            ..RedisConfig::new(self.redis_url.clone().unwrap_or_default())
        }
    }
}

/// Settings shared by `serve` and `dev`.
#[derive(Debug, Args)]
pub(crate) struct ServerFlags {
    /// Address to listen on.
    #[arg(long, env = "JOBWIRE_BIND", default_value = "127.0.0.1:8080")]
    pub(crate) bind: SocketAddr,
    #[command(flatten)]
    pub(crate) store: StoreFlags,
    /// HS256 secret for JWTs (at least 16 bytes).
    #[arg(long, env = "JOBWIRE_JWT_SECRET", hide_env_values = true)]
    pub(crate) jwt_secret: Option<String>,
    /// Path to an RS256 or ES256 public key (PEM) for JWTs.
    #[arg(long, env = "JOBWIRE_JWT_PUBLIC_KEY")]
    pub(crate) jwt_public_key: Option<PathBuf>,
    /// `disabled` accepts every request as an admin (local use only).
    #[arg(long, env = "JOBWIRE_AUTH", value_enum, default_value = "enabled")]
    pub(crate) auth: AuthMode,
    /// Origins allowed to open browser sockets and to call the API from
    /// their pages (CORS), comma-separated; `*` for any. Default: same
    /// origin only.
    #[arg(long, env = "JOBWIRE_ALLOWED_ORIGINS", value_delimiter = ',')]
    pub(crate) allowed_origins: Vec<String>,
    /// Open WebSocket and SSE connections per instance.
    #[arg(long, env = "JOBWIRE_MAX_CONNECTIONS", default_value_t = 10_000,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) max_connections: u32,
    /// Open connections per user.
    #[arg(long, env = "JOBWIRE_MAX_CONNECTIONS_PER_USER", default_value_t = 100,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) max_connections_per_user: u32,
    /// Plain HTTP connections open at once (WebSocket and SSE connections
    /// count against --max-connections instead). Past it, a small reserve
    /// still answers /healthz, /readyz and /metrics.
    #[arg(long, env = "JOBWIRE_MAX_HTTP_CONNECTIONS", default_value_t = 2048,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) max_http_connections: u32,
    /// Plain HTTP connections per client address (raise it behind a reverse
    /// proxy, which connects from one address).
    #[arg(long, env = "JOBWIRE_MAX_HTTP_CONNECTIONS_PER_IP", default_value_t = 256,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) max_http_connections_per_ip: u32,
    /// A connection must send complete request headers within this, after
    /// it opens and between requests (it also closes idle keep-alive
    /// connections).
    #[arg(long, env = "JOBWIRE_HEADER_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub(crate) header_timeout: Duration,
    /// A request body must arrive within this.
    #[arg(long, env = "JOBWIRE_BODY_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub(crate) body_timeout: Duration,
    /// Largest `params` of a job, in bytes (serialized JSON).
    #[arg(long, env = "JOBWIRE_MAX_PARAMS_BYTES", default_value_t = 16 * 1024,
          value_parser = clap::value_parser!(u32).range(2..=1024 * 1024))]
    pub(crate) max_params_bytes: u32,
    /// How long an `Idempotency-Key` on `POST /api/jobs` names the job it
    /// made: the same caller and key get that job back meanwhile.
    #[arg(long, env = "JOBWIRE_IDEMPOTENCY_WINDOW", default_value = "24h", value_parser = parse_duration)]
    pub(crate) idempotency_window: Duration,
    /// Job creations per second per user, in bursts of five seconds' worth
    /// (counted per instance).
    #[arg(long, env = "JOBWIRE_CREATE_RATE", default_value_t = 20,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) create_rate: u32,
    /// Unfinished (scheduled, queued or running) jobs per user.
    #[arg(long, env = "JOBWIRE_MAX_UNFINISHED_JOBS", default_value_t = 1000,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) max_unfinished_jobs: u64,
    /// Outbound messages queued per connection before it counts as a slow consumer.
    #[arg(long, env = "JOBWIRE_CLIENT_QUEUE", default_value_t = 1024,
          value_parser = clap::value_parser!(u32).range(8..=1_000_000))]
    pub(crate) client_queue: u32,
    /// Job kinds accepted besides the built-in scan and demo
    /// (comma-separated): the kinds your own workers run.
    #[arg(long, env = "JOBWIRE_KINDS", value_delimiter = ',', value_parser = parse_kind)]
    pub(crate) kinds: Vec<String>,
    /// Log format.
    #[arg(long, env = "JOBWIRE_LOG_FORMAT", value_enum, default_value = "text")]
    pub(crate) log_format: LogFormat,
}

fn parse_kind(s: &str) -> Result<String, String> {
    let valid = (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'.');
    if valid {
        Ok(s.to_owned())
    } else {
        Err(format!(
            "{s:?}: a kind is 1-64 characters of a-z, 0-9, '_' or '.'"
        ))
    }
}

/// How a worker runs jobs (`worker`, and the in-process workers of `dev`).
#[derive(Debug, Args)]
pub(crate) struct WorkerFlags {
    /// Jobs run at once.
    #[arg(long, env = "JOBWIRE_WORKER_CONCURRENCY", default_value_t = 4,
          value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub(crate) concurrency: u32,
    /// A job whose worker has not renewed its lease for this long is retried
    /// by another worker (at least 1s).
    #[arg(long, env = "JOBWIRE_VISIBILITY_TIMEOUT", default_value = "30s",
          value_parser = parse_visibility_timeout)]
    pub(crate) visibility_timeout: Duration,
    /// Attempts before a job whose workers keep dying is failed (dead letter).
    #[arg(long, env = "JOBWIRE_MAX_ATTEMPTS", default_value_t = 3,
          value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub(crate) max_attempts: u32,
    /// On SIGTERM, how long running jobs may take to finish before they are
    /// handed back to the queue. (`jobwire dev` without Redis waits at most
    /// 1s: its jobs end with the process anyway.)
    #[arg(long, env = "JOBWIRE_SHUTDOWN_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub(crate) shutdown_timeout: Duration,
    /// This worker's name in the queue's consumer group (default:
    /// worker-<pid>-<random>; must be unique per running worker).
    #[arg(long, env = "JOBWIRE_WORKER_NAME")]
    pub(crate) name: Option<String>,
    /// The directory `scan` jobs are confined to (job paths resolve
    /// against it; links out of it are not followed). Without it a worker
    /// fails every `scan` job; `jobwire dev` defaults to the current
    /// directory.
    #[arg(long, env = "JOBWIRE_SCAN_ROOT")]
    pub(crate) scan_root: Option<PathBuf>,
    /// The queues to take jobs from, comma-separated, the first first
    /// (default: one per kind this worker runs, named after it). Every job
    /// put in these queues must be of a kind this worker runs.
    #[arg(long, env = "JOBWIRE_QUEUES", value_delimiter = ',', value_parser = parse_queue)]
    pub(crate) queues: Vec<String>,
    /// How long one attempt of a kind may run when its job sets no timeout
    /// of its own, as KIND=DURATION, comma-separated (e.g. scan=10m,demo=1m).
    #[arg(long = "timeout", env = "JOBWIRE_TIMEOUTS", value_delimiter = ',',
          value_name = "KIND=DURATION", value_parser = parse_kind_timeout)]
    pub(crate) timeouts: Vec<(String, Duration)>,
    /// How failed attempts of a kind are retried when its job sets no
    /// policy of its own, as KIND=ATTEMPTS[:BASE[,FACTOR[,MAX]]],
    /// semicolon-separated (e.g. `scan=5:10s,2,10m;demo=3`).
    #[arg(long = "retry", env = "JOBWIRE_RETRIES", value_delimiter = ';',
          value_name = "KIND=ATTEMPTS[:BACKOFF]", value_parser = parse_kind_retry)]
    pub(crate) retries: Vec<(String, jobwire_core::RetryPolicy)>,
}

/// An RFC 3339 time.
fn parse_time(s: &str) -> Result<jobwire_core::Timestamp, String> {
    s.trim()
        .parse()
        .map_err(|_| "expected an RFC 3339 time such as 2030-01-01T09:00:00Z".to_owned())
}

/// `BASE[,FACTOR[,MAX]]` of a backoff (see `--backoff`).
pub(crate) fn parse_backoff(s: &str) -> Result<jobwire_core::RetryBackoff, String> {
    let mut parts = s.split(',').map(str::trim);
    let defaults = jobwire_core::RetryBackoff::default();
    let base = parse_duration(parts.next().unwrap_or_default())?;
    let factor = match parts.next() {
        Some(f) => f
            .parse::<f64>()
            .map_err(|_| format!("factor {f:?}: expected a number such as 2"))?,
        None => defaults.factor,
    };
    let max = match parts.next() {
        Some(m) => parse_duration(m)?,
        None => defaults.max.max(base),
    };
    if parts.next().is_some() {
        return Err("expected BASE[,FACTOR[,MAX]], e.g. 1s,2,5m".to_owned());
    }
    let backoff = jobwire_core::RetryBackoff { base, factor, max };
    backoff.check()?;
    Ok(backoff)
}

/// `KIND=ATTEMPTS[:BACKOFF]` of `--retry`.
fn parse_kind_retry(s: &str) -> Result<(String, jobwire_core::RetryPolicy), String> {
    let (kind, policy) = s.split_once('=').ok_or_else(|| {
        "expected KIND=ATTEMPTS[:BASE,FACTOR,MAX], e.g. scan=5:10s,2,10m".to_owned()
    })?;
    let (attempts, backoff) = match policy.split_once(':') {
        Some((attempts, backoff)) => (attempts, Some(parse_backoff(backoff)?)),
        None => (policy, None),
    };
    let attempts = attempts
        .trim()
        .parse::<u32>()
        .map_err(|_| format!("attempts {attempts:?}: expected a number from 1 to 100"))?;
    let policy = jobwire_core::RetryPolicy {
        max_attempts: Some(attempts),
        backoff,
    };
    policy.check()?;
    Ok((kind.trim().to_owned(), policy))
}

/// `KIND=DURATION` of `--timeout`.
fn parse_kind_timeout(s: &str) -> Result<(String, Duration), String> {
    let (kind, limit) = s
        .split_once('=')
        .ok_or_else(|| "expected KIND=DURATION, e.g. scan=10m".to_owned())?;
    let limit = parse_duration(limit.trim())?;
    if limit < Duration::from_millis(100) {
        return Err("a timeout is at least 100ms".to_owned());
    }
    Ok((kind.trim().to_owned(), limit))
}

/// A queue name (see `jobwire_core::check_queue_name`).
fn parse_queue(s: &str) -> Result<String, String> {
    jobwire_core::check_queue_name(s.trim()).map(|()| s.trim().to_owned())
}

impl WorkerFlags {
    pub(crate) fn worker_config(&self) -> WorkerConfig {
        WorkerConfig {
            consumer: self.name.clone().unwrap_or_else(default_consumer),
            concurrency: self.concurrency as usize,
            visibility_timeout: self.visibility_timeout,
            max_attempts: self.max_attempts,
            shutdown_timeout: self.shutdown_timeout,
            queues: self.queues.clone(),
            ..WorkerConfig::default()
        }
    }
}

/// A duration such as `30s`, `5m` or `24h`.
pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s)
        .map_err(|e| format!("expected a duration such as 30s, 5m or 24h ({e})"))
}

fn parse_visibility_timeout(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d < Duration::from_secs(1) {
        return Err("must be at least 1s".to_owned());
    }
    Ok(d)
}

#[derive(Debug, Args)]
pub(crate) struct WorkerArgs {
    #[command(flatten)]
    pub(crate) store: StoreFlags,
    #[command(flatten)]
    pub(crate) worker: WorkerFlags,
    /// Serve this worker's Prometheus metrics (`/metrics`) and `/healthz`
    /// on this address. Off by default.
    #[arg(long, env = "JOBWIRE_WORKER_METRICS_BIND")]
    pub(crate) metrics_bind: Option<std::net::SocketAddr>,
    /// Log format.
    #[arg(long, env = "JOBWIRE_LOG_FORMAT", value_enum, default_value = "text")]
    pub(crate) log_format: LogFormat,
}

impl ServerFlags {
    pub(crate) fn server_config(&self) -> ServerConfig {
        let defaults = ServerConfig::default();
        let mut kinds = defaults.kinds.clone();
        for kind in &self.kinds {
            if !kinds.contains(kind) {
                kinds.push(kind.clone());
            }
        }
        ServerConfig {
            kinds,
            allowed_origins: self.allowed_origins.clone(),
            max_connections: self.max_connections as usize,
            max_connections_per_user: self.max_connections_per_user as usize,
            client_queue: self.client_queue as usize,
            max_http_connections: self.max_http_connections as usize,
            max_http_connections_per_ip: self.max_http_connections_per_ip as usize,
            header_timeout: self.header_timeout,
            body_timeout: self.body_timeout,
            max_params_bytes: self.max_params_bytes as usize,
            idempotency_window: self.idempotency_window,
            create_rate: self.create_rate,
            max_unfinished_jobs: self.max_unfinished_jobs,
            ..defaults
        }
    }

    pub(crate) fn auth_config(&self) -> Result<AuthConfig, Failure> {
        let public_key_pem = match &self.jwt_public_key {
            Some(path) => Some(std::fs::read(path).map_err(|e| {
                Failure::Usage(anyhow!(
                    "JOBWIRE_JWT_PUBLIC_KEY: cannot read {}: {e}",
                    path.display()
                ))
            })?),
            None => None,
        };
        Ok(AuthConfig {
            secret: self.jwt_secret.clone(),
            public_key_pem,
            disabled: self.auth == AuthMode::Disabled,
        })
    }
}

#[derive(Debug, Args)]
pub(crate) struct ServeArgs {
    #[command(flatten)]
    pub(crate) flags: ServerFlags,
    /// Single-node server with the in-memory backend instead of Redis.
    #[arg(long, env = "JOBWIRE_MEMORY")]
    pub(crate) memory: bool,
}

#[derive(Debug, Args)]
pub(crate) struct DevArgs {
    #[command(flatten)]
    pub(crate) flags: ServerFlags,
    #[command(flatten)]
    pub(crate) worker: WorkerFlags,
}

#[derive(Debug, Args)]
pub(crate) struct TokenArgs {
    /// The user (JWT `sub`).
    #[arg(long)]
    sub: String,
    /// A scope to grant (repeat for several): jobs:read, jobs:write, worker, admin.
    #[arg(long = "scope", default_values = ["jobs:read", "jobs:write"])]
    scopes: Vec<String>,
    /// How long the token is valid (e.g. 1h, 30m, 7d).
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    ttl: Duration,
    /// HS256 secret to sign with.
    #[arg(long, env = "JOBWIRE_JWT_SECRET", hide_env_values = true)]
    jwt_secret: Option<String>,
}

/// `jobwire token`: prints a signed token.
pub(crate) fn token(args: TokenArgs) -> Result<(), Failure> {
    // Refused here rather than minted for the server to refuse.
    jobwire_server::check_user(&args.sub).map_err(|why| Failure::Usage(anyhow!("--sub: {why}")))?;
    if args.ttl < Duration::from_secs(1) {
        return Err(Failure::Usage(anyhow!(
            "--ttl: a token lives at least 1s (its expiry is in whole seconds)"
        )));
    }
    let secret = match args.jwt_secret {
        Some(secret) => secret,
        // No secret configured: sign for `jobwire dev`, whose secret is kept
        // in a file of the user's.
        None => match crate::dev_secret::load() {
            Some((secret, path)) => {
                eprintln!(
                    "jobwire: signing with the secret of `jobwire dev` ({}); set JOBWIRE_JWT_SECRET to sign for another server",
                    path.display()
                );
                secret
            }
            None => {
                return Err(Failure::Usage(anyhow!(
                    "JOBWIRE_JWT_SECRET (or --jwt-secret) is required to sign a token (`jobwire dev` keeps its own secret, but has not run as this user yet)"
                )))
            }
        },
    };
    if secret.len() < 16 {
        return Err(Failure::Usage(anyhow!(
            "JOBWIRE_JWT_SECRET must be at least 16 bytes"
        )));
    }
    let scopes = args
        .scopes
        .iter()
        .map(|s| {
            Scope::parse(s).ok_or_else(|| {
                Failure::Usage(anyhow!(
                    "unknown scope {s:?}: use jobs:read, jobs:write, worker or admin"
                ))
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let token = mint_token(&secret, &args.sub, &scopes, args.ttl).context("signing the token")?;
    println!("{token}");
    Ok(())
}

/// How client commands (`submit`, `watch`, `jobs`, `cancel`) reach the server.
#[derive(Debug, Args)]
pub(crate) struct ClientFlags {
    /// The server's URL; several (comma-separated) are tried in turn when
    /// one is down.
    #[arg(
        long,
        env = "JOBWIRE_URL",
        value_delimiter = ',',
        default_value = "http://127.0.0.1:8080"
    )]
    pub(crate) url: Vec<String>,
    /// The JWT to send (`jobwire token`, or the one `jobwire dev` prints).
    #[arg(long, env = "JOBWIRE_TOKEN", hide_env_values = true)]
    pub(crate) token: Option<String>,
    /// For https:// URLs: a PEM CA certificate to trust besides the
    /// system's roots (e.g. a private CA).
    #[arg(long, env = "JOBWIRE_CA_CERT")]
    pub(crate) ca_cert: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub(crate) struct SubmitArgs {
    /// The job's kind (`scan`, `demo`, or one your workers run).
    pub(crate) kind: String,
    /// A parameter, `key=value`; the value is read as JSON when it parses
    /// (`steps=50`, `fail_at=null`), else as a string (`path=docs`).
    #[arg(long = "param", short = 'p', value_name = "KEY=VALUE")]
    pub(crate) params: Vec<String>,
    /// The queue to put the job in (default: the one named after its
    /// kind); a worker takes jobs only from the queues it serves.
    #[arg(long, value_parser = parse_queue)]
    pub(crate) queue: Option<String>,
    /// Submit at most once: running this again with the same key (and the
    /// same kind and params) prints the job the first run made.
    #[arg(long, conflicts_with = "unique_key")]
    pub(crate) idempotency_key: Option<String>,
    /// At most one unfinished job of this kind per key: while one is
    /// scheduled, queued or running, print that one instead of creating another.
    #[arg(long)]
    pub(crate) unique_key: Option<String>,
    /// How long one attempt may run (e.g. 30s, 5m): then the worker stops
    /// it and the job fails.
    #[arg(long, value_parser = parse_duration)]
    pub(crate) timeout: Option<Duration>,
    /// 0 to 9: within its queue, higher runs first (default 5).
    #[arg(long, value_parser = clap::value_parser!(u8).range(0..=9))]
    pub(crate) priority: Option<u8>,
    /// Run no sooner than this long from now (e.g. 30s, 2h): the job is
    /// `scheduled` until then.
    #[arg(long, value_parser = parse_duration, conflicts_with = "run_at")]
    pub(crate) delay: Option<Duration>,
    /// Run no sooner than this time (RFC 3339, e.g. 2030-01-01T09:00:00Z).
    #[arg(long, value_parser = parse_time)]
    pub(crate) run_at: Option<jobwire_core::Timestamp>,
    /// Attempts in all (1 to 100): a failing attempt is retried after a
    /// backoff until they are used up (default: the worker's policy).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub(crate) max_attempts: Option<u32>,
    /// The wait between attempts, as BASE[,FACTOR[,MAX]] (e.g. 1s,2,5m:
    /// 1 s, doubling, at most 5 min; each jittered by ±20%).
    #[arg(long, value_parser = parse_backoff, value_name = "BASE[,FACTOR[,MAX]]")]
    pub(crate) backoff: Option<jobwire_core::RetryBackoff>,
    /// Follow the job until it ends (as `jobwire watch`).
    #[arg(long)]
    pub(crate) watch: bool,
    /// Print JSON instead of text (with --watch: one event per line).
    #[arg(long)]
    pub(crate) json: bool,
    /// With --watch: give up when no server answers for this long (once
    /// connected, reconnects go on for as long as it takes).
    #[arg(long, env = "JOBWIRE_CONNECT_TIMEOUT", default_value = "15s", value_parser = parse_duration)]
    pub(crate) connect_timeout: Duration,
    #[command(flatten)]
    pub(crate) client: ClientFlags,
}

#[derive(Debug, Args)]
pub(crate) struct WatchArgs {
    /// The jobs to follow.
    #[arg(required = true, value_name = "JOB_ID")]
    pub(crate) jobs: Vec<String>,
    /// One JSON line per event instead of progress bars (the default when
    /// the output is not a terminal).
    #[arg(long)]
    pub(crate) json: bool,
    /// Give up when no server answers for this long (once connected,
    /// reconnects go on for as long as it takes).
    #[arg(long, env = "JOBWIRE_CONNECT_TIMEOUT", default_value = "15s", value_parser = parse_duration)]
    pub(crate) connect_timeout: Duration,
    #[command(flatten)]
    pub(crate) client: ClientFlags,
}

#[derive(Debug, Args)]
pub(crate) struct JobsArgs {
    /// Only jobs in this status (scheduled, queued, running, completed,
    /// failed, cancelled).
    #[arg(long)]
    pub(crate) status: Option<String>,
    #[command(flatten)]
    pub(crate) filters: ListFilters,
    /// How many jobs to show (1-500).
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u16).range(1..=500))]
    pub(crate) limit: u16,
    /// Print the page as JSON.
    #[arg(long)]
    pub(crate) json: bool,
    #[command(flatten)]
    pub(crate) client: ClientFlags,
}

#[derive(Debug, Args)]
// Job ids or --all-failed, one of them: said so in the usage line.
#[command(group(clap::ArgGroup::new("which").required(true).args(["jobs", "all_failed"])))]
pub(crate) struct RetryArgs {
    /// The failed jobs to retry.
    #[arg(value_name = "JOB_ID")]
    pub(crate) jobs: Vec<String>,
    /// Every failed job (of every user), or those the filters pick.
    #[arg(long)]
    pub(crate) all_failed: bool,
    #[command(flatten)]
    pub(crate) filters: ListFilters,
    #[command(flatten)]
    pub(crate) client: ClientFlags,
}

/// Filters of a job listing (`jobwire jobs`, `jobwire retry --all-failed`).
#[derive(Debug, Args)]
pub(crate) struct ListFilters {
    /// Only jobs of this kind.
    #[arg(long)]
    pub(crate) kind: Option<String>,
    /// Only jobs of this queue.
    #[arg(long)]
    pub(crate) queue: Option<String>,
    /// Only jobs that finished within this long (e.g. 1h, 30m, 2d).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub(crate) finished_within: Option<Duration>,
}

#[derive(Debug, Args)]
pub(crate) struct WorkersArgs {
    /// Print the registry as JSON.
    #[arg(long)]
    pub(crate) json: bool,
    #[command(flatten)]
    pub(crate) client: ClientFlags,
}

#[derive(Debug, Args)]
pub(crate) struct QueuesArgs {
    #[command(subcommand)]
    pub(crate) action: Option<QueuesCommand>,
    /// Print the queues as JSON.
    #[arg(long)]
    pub(crate) json: bool,
    #[command(flatten)]
    pub(crate) client: ClientFlags,
}

#[derive(Debug, clap::Subcommand)]
pub(crate) enum QueuesCommand {
    /// Stop workers claiming from a queue (running jobs finish; new jobs
    /// still queue up).
    Pause(QueueArgs),
    /// Let workers claim from a paused queue again.
    Resume(QueueArgs),
    /// Set a queue's fleet-wide limits: at most N of its jobs running at
    /// once, at most N started per interval, across every worker.
    Limit(LimitArgs),
}

#[derive(Debug, Args)]
pub(crate) struct LimitArgs {
    /// The queue.
    #[arg(value_name = "QUEUE", value_parser = parse_queue)]
    pub(crate) queue: String,
    /// At most this many of its jobs run at once (a dead worker's slots
    /// free up when its lease lapses).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) concurrency: Option<u32>,
    /// At most N starts per interval, as N/INTERVAL (e.g. 10/1m, 5/1s).
    #[arg(long, value_parser = parse_rate, value_name = "N/INTERVAL")]
    pub(crate) rate: Option<jobwire_core::RateLimit>,
    /// Lift the queue's limits.
    #[arg(long, conflicts_with_all = ["concurrency", "rate"])]
    pub(crate) clear: bool,
    #[command(flatten)]
    pub(crate) client: ClientFlags,
}

/// `N/INTERVAL`, e.g. `10/1m`.
fn parse_rate(text: &str) -> Result<jobwire_core::RateLimit, String> {
    let (max, per) = text
        .split_once('/')
        .ok_or_else(|| "expected N/INTERVAL, e.g. 10/1m".to_owned())?;
    let max: u32 = max
        .trim()
        .parse()
        .map_err(|_| "N must be a whole number".to_owned())?;
    let per = humantime::parse_duration(per.trim()).map_err(|e| format!("the interval: {e}"))?;
    let rate = jobwire_core::RateLimit { max, per };
    jobwire_core::QueueLimits {
        concurrency: None,
        rate: Some(rate),
    }
    .check()?;
    Ok(rate)
}

#[derive(Debug, Args)]
pub(crate) struct QueueArgs {
    /// The queue.
    #[arg(value_name = "QUEUE", value_parser = parse_queue)]
    pub(crate) queue: String,
    #[command(flatten)]
    pub(crate) client: ClientFlags,
}

#[derive(Debug, Args)]
pub(crate) struct ScheduleArgs {
    #[command(subcommand)]
    pub(crate) action: ScheduleCommand,
}

#[derive(Debug, clap::Subcommand)]
pub(crate) enum ScheduleCommand {
    /// Create a cron schedule, or replace the one of that name: a job of
    /// KIND at each tick, exactly once however many gateways and workers
    /// run.
    Add(ScheduleAddArgs),
    /// List the schedules with their next and last ticks.
    Ls(ScheduleListArgs),
    /// Delete a schedule (its jobs stay).
    Rm(ScheduleNameArgs),
    /// Stop a schedule firing until resumed.
    Pause(ScheduleNameArgs),
    /// Fire again, from the first tick after now.
    Resume(ScheduleNameArgs),
}

#[derive(Debug, Args)]
pub(crate) struct ScheduleAddArgs {
    /// The schedule's name (letters, digits, '-', '_', '.', ':').
    pub(crate) name: String,
    /// When: 5 fields (minute hour day-of-month month day-of-week, e.g.
    /// "*/5 * * * *"), 6 with seconds first, or @hourly, @daily, @weekly...
    #[arg(long)]
    pub(crate) cron: String,
    /// The IANA time zone the expression is read in (default UTC), e.g.
    /// Europe/Berlin.
    #[arg(long)]
    pub(crate) tz: Option<String>,
    /// The kind of job each tick creates.
    pub(crate) kind: String,
    /// A parameter of the jobs, `key=value` (as for `jobwire submit`).
    #[arg(long = "param", short = 'p', value_name = "KEY=VALUE")]
    pub(crate) params: Vec<String>,
    /// The queue of the jobs (default: the one named after the kind).
    #[arg(long, value_parser = parse_queue)]
    pub(crate) queue: Option<String>,
    /// 0 to 9: within its queue, higher runs first (default 5).
    #[arg(long, value_parser = clap::value_parser!(u8).range(0..=9))]
    pub(crate) priority: Option<u8>,
    /// Ticks missed while nothing ran: fire `once` for all of them (the
    /// default), or `skip` them.
    #[arg(long, value_parser = ["once", "skip"])]
    pub(crate) missed: Option<String>,
    #[command(flatten)]
    pub(crate) client: ClientFlags,
}

#[derive(Debug, Args)]
pub(crate) struct ScheduleListArgs {
    /// Print the schedules as JSON.
    #[arg(long)]
    pub(crate) json: bool,
    #[command(flatten)]
    pub(crate) client: ClientFlags,
}

#[derive(Debug, Args)]
pub(crate) struct ScheduleNameArgs {
    /// The schedule.
    pub(crate) name: String,
    #[command(flatten)]
    pub(crate) client: ClientFlags,
}

#[derive(Debug, Args)]
pub(crate) struct CancelArgs {
    /// The job to cancel.
    #[arg(value_name = "JOB_ID")]
    pub(crate) job: String,
    #[command(flatten)]
    pub(crate) client: ClientFlags,
}
