//! The processes under test: Redis (from the testkit: one `redis-server`
//! with an `appendfsync everysec` AOF, or for the failover schedules a
//! Sentinel set or a Redis Cluster of three masters and three replicas),
//! `jobwire serve` gateways on fixed loopback
//! ports (a restarted gateway comes back where it was, so clients' URL
//! lists stay valid) and `jobwire worker` processes. Every process is
//! killed when the [`Cluster`] is dropped.
//!
//! The fault injector is the only user of the mutating methods; they block
//! (the testkit's Redis calls are synchronous), so it calls them from
//! `block_in_place`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use jobwire_testkit::cluster::RedisCluster;
use jobwire_testkit::sentinel::SentinelSet;
use jobwire_testkit::{free_port, Persistence, RedisServer};

/// The JWT secret every gateway is started with (loopback only, throwaway).
pub const SECRET: &str = "jobwire-chaos-secret-0123456789abcdef";

/// How the gateways and workers are tuned for the suite.
#[derive(Clone, Debug)]
pub struct ClusterConfig {
    /// The `jobwire` binary.
    pub binary: PathBuf,
    pub gateways: usize,
    pub workers: usize,
    /// Where each process's stderr goes (one file per process start).
    pub log_dir: PathBuf,
    pub store: StoreKind,
}

/// Which Redis set-up the processes run on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreKind {
    Single,
    Sentinel,
    Cluster,
}

/// The Redis under test.
#[derive(Debug)]
pub enum Store {
    Single(RedisServer),
    Sentinel(SentinelSet),
    Cluster(RedisCluster),
}

impl Store {
    fn start(kind: StoreKind) -> Result<Store> {
        Ok(match kind {
            StoreKind::Single => {
                Store::Single(RedisServer::start_private(Persistence::AofEverysec)?)
            }
            StoreKind::Sentinel => Store::Sentinel(SentinelSet::start()?),
            StoreKind::Cluster => Store::Cluster(RedisCluster::start()?),
        })
    }

    fn url(&self) -> String {
        match self {
            Store::Single(redis) => redis.url(),
            Store::Sentinel(set) => set.url(),
            Store::Cluster(cluster) => cluster.url(),
        }
    }

    fn servers(&mut self) -> Vec<&mut RedisServer> {
        match self {
            Store::Single(redis) => vec![redis],
            Store::Sentinel(set) => set.servers.iter_mut().collect(),
            Store::Cluster(cluster) => cluster.nodes.iter_mut().collect(),
        }
    }
}

/// One `jobwire` process slot: restarted in place after a kill.
#[derive(Debug)]
struct Slot {
    name: String,
    child: Option<Child>,
    /// The gateway's port (0 for workers).
    port: u16,
    starts: u32,
}

impl Slot {
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Redis, the gateways and the workers.
#[derive(Debug)]
pub struct Cluster {
    config: ClusterConfig,
    store: Store,
    gateways: Vec<Slot>,
    workers: Vec<Slot>,
}

impl Cluster {
    /// Starts Redis, then every gateway and worker, and waits until the
    /// gateways are ready.
    ///
    /// # Errors
    /// When the binary is missing or a process does not come up.
    pub async fn start(config: ClusterConfig) -> Result<Cluster> {
        if !config.binary.exists() {
            bail!(
                "{} not found: build it first (`cargo build -p jobwire-cli`, with --release for a release run) or pass --jobwire PATH",
                config.binary.display()
            );
        }
        std::fs::create_dir_all(&config.log_dir)
            .with_context(|| format!("creating {}", config.log_dir.display()))?;
        let store = tokio::task::block_in_place(|| Store::start(config.store))?;
        let mut gateways = Vec::new();
        for i in 0..config.gateways.max(1) {
            gateways.push(Slot {
                name: format!("gateway-{i}"),
                child: None,
                port: free_port()?,
                starts: 0,
            });
        }
        let workers = (0..config.workers.max(1))
            .map(|i| Slot {
                name: format!("worker-{i}"),
                child: None,
                port: 0,
                starts: 0,
            })
            .collect();
        let mut cluster = Cluster {
            config,
            store,
            gateways,
            workers,
        };
        for i in 0..cluster.gateways.len() {
            cluster.spawn_gateway(i)?;
        }
        for i in 0..cluster.workers.len() {
            cluster.spawn_worker(i)?;
        }
        for g in &cluster.gateways {
            wait_ready(g.port, Duration::from_secs(30)).await?;
        }
        Ok(cluster)
    }

    /// The gateways' base URLs (`http://127.0.0.1:PORT`), fixed for the run.
    pub fn gateway_urls(&self) -> Vec<String> {
        self.gateways
            .iter()
            .map(|g| format!("http://127.0.0.1:{}", g.port))
            .collect()
    }

    pub fn gateway_count(&self) -> usize {
        self.gateways.len()
    }

    pub fn worker_count(&self) -> usize {
        self.workers.len()
    }

    /// The one Redis server, for the faults that need one.
    ///
    /// # Errors
    /// On a Sentinel set or a cluster.
    pub fn redis_mut(&mut self) -> Result<&mut RedisServer> {
        match &mut self.store {
            Store::Single(redis) => Ok(redis),
            _ => bail!("this fault needs a single Redis server"),
        }
    }

    pub fn store_mut(&mut self) -> &mut Store {
        &mut self.store
    }

    /// `kill -9` of gateway `i`.
    pub fn kill_gateway(&mut self, i: usize) {
        if let Some(g) = self.gateways.get_mut(i) {
            g.kill();
        }
    }

    /// Starts gateway `i` again on its port and waits until it is ready.
    ///
    /// # Errors
    /// When it does not come up.
    pub async fn restart_gateway(&mut self, i: usize) -> Result<()> {
        self.spawn_gateway(i)?;
        let port = self.gateways[i].port;
        wait_ready(port, Duration::from_secs(30)).await
    }

    /// `kill -9` of worker `i`.
    pub fn kill_worker(&mut self, i: usize) {
        if let Some(w) = self.workers.get_mut(i) {
            w.kill();
        }
    }

    /// Starts worker `i` again (under a fresh consumer name).
    ///
    /// # Errors
    /// When it cannot be started.
    pub fn restart_worker(&mut self, i: usize) -> Result<()> {
        self.spawn_worker(i)
    }

    /// Brings back anything that is down (a fault interrupted by the end
    /// of the run): Redis continued, every process running.
    ///
    /// # Errors
    /// When a process cannot be started.
    pub async fn heal(&mut self) -> Result<()> {
        for redis in self.store.servers() {
            let _ = redis.signal("CONT");
            if redis.pid().is_none() {
                redis.restart()?;
            }
        }
        for i in 0..self.gateways.len() {
            if !self.gateways[i].alive() {
                self.restart_gateway(i).await?;
            }
        }
        for i in 0..self.workers.len() {
            if !self.workers[i].alive() {
                self.spawn_worker(i)?;
            }
        }
        Ok(())
    }

    fn spawn_gateway(&mut self, i: usize) -> Result<()> {
        let port = self.gateways[i].port;
        let mut cmd = self.command("serve", i, true)?;
        cmd.env("JOBWIRE_BIND", format!("127.0.0.1:{port}"))
            .env("JOBWIRE_JWT_SECRET", SECRET)
            .envs(jobwire_testkit::UNCAPPED_GATEWAY)
            // A short outbound queue, so that the slow clients are found
            // out within seconds (1013) rather than after megabytes.
            .env("JOBWIRE_CLIENT_QUEUE", "64");
        let child = cmd.spawn().context("starting jobwire serve")?;
        self.gateways[i].child = Some(child);
        Ok(())
    }

    fn spawn_worker(&mut self, i: usize) -> Result<()> {
        let mut cmd = self.command("worker", i, false)?;
        // A killed worker's job is taken over within seconds, not 30 s.
        cmd.env("JOBWIRE_VISIBILITY_TIMEOUT", "3s")
            .env("JOBWIRE_WORKER_CONCURRENCY", "16")
            // Repeated kills must not dead-letter jobs: the suite checks
            // delivery, and a job failed for too many attempts is as
            // terminal as any, but completions exercise more.
            .env("JOBWIRE_MAX_ATTEMPTS", "50")
            .env("JOBWIRE_SHUTDOWN_TIMEOUT", "1s");
        let child = cmd.spawn().context("starting jobwire worker")?;
        self.workers[i].child = Some(child);
        Ok(())
    }

    /// A `jobwire <sub>` command with the common environment and its
    /// stderr to a fresh log file.
    fn command(&mut self, sub: &str, i: usize, gateway: bool) -> Result<Command> {
        let slot = if gateway {
            &mut self.gateways[i]
        } else {
            &mut self.workers[i]
        };
        slot.starts += 1;
        let log = self
            .config
            .log_dir
            .join(format!("{}.{}.log", slot.name, slot.starts));
        let stderr =
            std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        // `JOBWIRE_CHAOS_LOG` sets the processes' RUST_LOG, for post-mortems
        // (e.g. `warn,jobwire_redis=debug,jobwire_worker=debug`).
        let filter = std::env::var("JOBWIRE_CHAOS_LOG").unwrap_or_else(|_| "warn".to_owned());
        let mut cmd = Command::new(&self.config.binary);
        cmd.arg(sub)
            .env("REDIS_URL", self.store.url())
            .env("RUST_LOG", filter)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr);
        Ok(cmd)
    }

    /// Where process logs go.
    pub fn log_dir(&self) -> &Path {
        &self.config.log_dir
    }
}

impl Slot {
    fn alive(&mut self) -> bool {
        match self.child.as_mut() {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for slot in self.gateways.iter_mut().chain(self.workers.iter_mut()) {
            slot.kill();
        }
        // A paused Redis would not die of the testkit's SIGKILL any less,
        // but continue it so its log is complete.
        for redis in self.store.servers() {
            let _ = redis.signal("CONT");
        }
    }
}

/// Waits until `GET /readyz` answers 200.
///
/// # Errors
/// When it does not within `within`.
pub async fn wait_ready(port: u16, within: Duration) -> Result<()> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()?;
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if let Ok(r) = http
            .get(format!("http://127.0.0.1:{port}/readyz"))
            .send()
            .await
        {
            if r.status().is_success() {
                return Ok(());
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("gateway on port {port} was not ready within {within:?}")
}
