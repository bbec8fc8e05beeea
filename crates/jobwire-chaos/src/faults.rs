//! Faults and schedules. A [`Schedule`] is turned into a seeded plan (which
//! fault when); the injector then runs the plan against the [`Cluster`]
//! and the clients, one fault at a time, recording when each was injected
//! and when it was lifted (the process is back, Redis continues, the
//! window is over).

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use jobwire_testkit::lost_writes::FileSnapshot;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::Rng;
use serde::Serialize;
use tokio::sync::Mutex;

use crate::clients::Env;
use crate::cluster::{Cluster, Store, StoreKind};

/// One kind of fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum FaultKind {
    /// `kill -9` of a gateway, restarted on its port after a moment.
    GatewayKill,
    /// `kill -9` of a worker mid-job, restarted after a moment.
    WorkerKill,
    /// Redis stopped cleanly (SIGTERM) and started again on its AOF.
    RedisRestart,
    /// Redis frozen (SIGSTOP) for a few seconds, then continued.
    RedisPause,
    /// Redis crashed (SIGKILL) with the tail of its AOF cut off, then
    /// started again: acknowledged writes are lost.
    RedisCutAof,
    /// Redis crashed and started with no data at all.
    RedisWipe,
    /// A snapshot of the data files now; a few seconds later Redis crashes
    /// and restarts on them, losing everything written since
    /// (`lost_writes::FileSnapshot`).
    RedisRollback,
    /// Slow clients read one message a second for a while, until the
    /// gateways drop them (1013); they resume.
    SlowClients,
    /// Every raw client drops its connection and reconnects at once.
    Storm,
    /// For a while every token minted lives 3 s: connections expire
    /// mid-stream (4401), clients renew and resume.
    TokenExpiry,
    /// On Redis Cluster (three masters, three replicas): `kill -9` of a
    /// random master; its replica takes over; the old master is started
    /// again after a moment and rejoins as a replica.
    ClusterFailover,
    /// Behind Sentinel (a master, a replica, three sentinels): `kill -9` of
    /// the master; the sentinels promote the replica; the old master comes
    /// back as a replica.
    SentinelFailover,
}

impl FaultKind {
    pub const ALL: [FaultKind; 10] = [
        FaultKind::GatewayKill,
        FaultKind::WorkerKill,
        FaultKind::RedisRestart,
        FaultKind::RedisPause,
        FaultKind::RedisCutAof,
        FaultKind::RedisWipe,
        FaultKind::RedisRollback,
        FaultKind::SlowClients,
        FaultKind::Storm,
        FaultKind::TokenExpiry,
    ];

    pub fn name(self) -> &'static str {
        match self {
            FaultKind::GatewayKill => "gateway-kill",
            FaultKind::WorkerKill => "worker-kill",
            FaultKind::RedisRestart => "redis-restart",
            FaultKind::RedisPause => "redis-pause",
            FaultKind::RedisCutAof => "redis-cut-aof",
            FaultKind::RedisWipe => "redis-wipe",
            FaultKind::RedisRollback => "redis-rollback",
            FaultKind::SlowClients => "slow-clients",
            FaultKind::Storm => "storm",
            FaultKind::TokenExpiry => "token-expiry",
            FaultKind::ClusterFailover => "cluster-failover",
            FaultKind::SentinelFailover => "sentinel-failover",
        }
    }

    /// Whether Redis loses acknowledged writes (a new epoch for every job
    /// written afterwards, and resyncs).
    pub fn loses_writes(self) -> bool {
        matches!(
            self,
            FaultKind::RedisCutAof
                | FaultKind::RedisWipe
                | FaultKind::RedisRollback
                | FaultKind::ClusterFailover
                | FaultKind::SentinelFailover
        )
    }

    /// The failovers, each on its own Redis set-up (not part of `mixed`
    /// and `short`, which run on one server).
    pub const FAILOVERS: [FaultKind; 2] = [FaultKind::ClusterFailover, FaultKind::SentinelFailover];

    /// The Redis set-up a schedule of this kind runs on.
    pub fn store(self) -> StoreKind {
        match self {
            FaultKind::ClusterFailover => StoreKind::Cluster,
            FaultKind::SentinelFailover => StoreKind::Sentinel,
            _ => StoreKind::Single,
        }
    }
}

/// What to inject (`--schedule`): one kind of fault, or a mix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Schedule {
    /// Faults of this one kind, spaced through the run.
    One(FaultKind),
    /// Faults of every kind, at random.
    Mixed,
    /// Every kind once, in a seeded order, within a short run (CI); always
    /// includes a rollback.
    Short,
}

/// Every schedule, in the order `--help` lists them.
const SCHEDULES: [Schedule; 14] = {
    let mut all = [Schedule::Mixed; 14];
    let mut i = 0;
    while i < FaultKind::ALL.len() {
        all[i] = Schedule::One(FaultKind::ALL[i]);
        i += 1;
    }
    all[10] = Schedule::One(FaultKind::FAILOVERS[0]);
    all[11] = Schedule::One(FaultKind::FAILOVERS[1]);
    all[13] = Schedule::Short;
    all
};

impl Schedule {
    /// The Redis set-up the schedule runs on.
    pub fn store(self) -> StoreKind {
        match self {
            Schedule::One(kind) => kind.store(),
            Schedule::Mixed | Schedule::Short => StoreKind::Single,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Schedule::One(kind) => kind.name(),
            Schedule::Mixed => "mixed",
            Schedule::Short => "short",
        }
    }
}

impl clap::ValueEnum for Schedule {
    fn value_variants<'a>() -> &'a [Self] {
        &SCHEDULES
    }

    fn to_possible_value(&self) -> Option<clap::builder::PossibleValue> {
        Some(clap::builder::PossibleValue::new(self.name()))
    }
}

impl Serialize for Schedule {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

/// A fault due at `at` (from the start of the run).
#[derive(Clone, Copy, Debug)]
pub struct Planned {
    pub at: Duration,
    pub kind: FaultKind,
}

/// The first fault comes after the load has started.
const FIRST: Duration = Duration::from_secs(4);

/// The plan of a schedule over `duration`.
pub fn plan(schedule: Schedule, duration: Duration, rng: &mut StdRng) -> Vec<Planned> {
    let span = duration.saturating_sub(FIRST);
    let kinds: Vec<FaultKind> = match schedule {
        Schedule::Short => {
            let mut kinds = FaultKind::ALL.to_vec();
            kinds.shuffle(rng);
            // A wipe makes every job so far gone: run it in the first half,
            // so that the jobs created after it meet the other faults and
            // the final logs have something to check against.
            kinds.retain(|k| *k != FaultKind::RedisWipe);
            let at = rng.random_range(1..=kinds.len() / 3);
            kinds.insert(at, FaultKind::RedisWipe);
            kinds
        }
        Schedule::Mixed => {
            let n = (span.as_secs() / 6).max(1);
            (0..n)
                .map(|i| {
                    // Wipes are rarer: each one ends every job so far. None
                    // in the second half, so that the jobs created then
                    // keep their logs to be checked against at the end.
                    let mut kind = FaultKind::ALL[rng.random_range(0..FaultKind::ALL.len())];
                    if kind == FaultKind::RedisWipe && (i >= n / 2 || rng.random_bool(0.7)) {
                        kind = FaultKind::RedisRollback;
                    }
                    kind
                })
                .collect()
        }
        Schedule::One(kind) => {
            // Faults with a window (and the data-losing ones, which take a
            // restart) are spaced so that the system runs normally between
            // them: slow clients read slowly only half the time.
            let every = match kind {
                FaultKind::SlowClients => 16,
                FaultKind::ClusterFailover | FaultKind::SentinelFailover => 15,
                k if k.loses_writes() || k == FaultKind::TokenExpiry => 8,
                _ => 5,
            };
            (0..(span.as_secs() / every).max(1)).map(|_| kind).collect()
        }
    };
    let gap = span / u32::try_from(kinds.len().max(1)).unwrap_or(1);
    kinds
        .into_iter()
        .enumerate()
        .map(|(i, kind)| {
            let jitter = gap.mul_f64(rng.random_range(0.0..0.3));
            Planned {
                at: FIRST + gap * u32::try_from(i).unwrap_or(0) + jitter,
                kind,
            }
        })
        .collect()
}

/// A fault as injected.
#[derive(Clone, Debug, Serialize)]
pub struct FaultRecord {
    pub kind: FaultKind,
    /// Seconds from the start of the run.
    pub at: f64,
    /// When it was lifted.
    pub lifted: f64,
    /// The wall-clock time it was injected (to match process logs and event
    /// timestamps).
    pub wall: jobwire_core::Timestamp,
    pub detail: String,
    /// Set when the injection failed.
    pub error: Option<String>,
}

/// Injects the plan's faults in order until it is done or `stop`.
pub async fn run(
    plan: Vec<Planned>,
    cluster: Arc<Mutex<Cluster>>,
    env: Arc<Env>,
    mut rng: StdRng,
    stop: tokio_util::sync::CancellationToken,
) -> Vec<FaultRecord> {
    let mut records = Vec::new();
    for planned in plan {
        let now = env.clock.now();
        if planned.at > now {
            tokio::select! {
                () = stop.cancelled() => break,
                () = tokio::time::sleep(planned.at - now) => {}
            }
        }
        if stop.is_cancelled() {
            break;
        }
        let at = env.clock.now();
        let wall = jobwire_core::Timestamp::now();
        let result = inject(planned.kind, &cluster, &env, &mut rng).await;
        let lifted = env.clock.now();
        let (detail, error) = match result {
            Ok(detail) => (detail, None),
            Err(e) => (String::new(), Some(format!("{e:#}"))),
        };
        records.push(FaultRecord {
            kind: planned.kind,
            at: at.as_secs_f64(),
            lifted: lifted.as_secs_f64(),
            wall,
            detail,
            error,
        });
    }
    records
}

/// Injects one fault and lifts it; returns what was done.
async fn inject(
    kind: FaultKind,
    cluster: &Mutex<Cluster>,
    env: &Env,
    rng: &mut StdRng,
) -> Result<String> {
    let pause =
        |rng: &mut StdRng, lo: u64, hi: u64| Duration::from_millis(rng.random_range(lo..=hi));
    match kind {
        FaultKind::GatewayKill => {
            let mut c = cluster.lock().await;
            let i = rng.random_range(0..c.gateway_count());
            c.kill_gateway(i);
            let down = pause(rng, 300, 2000);
            tokio::time::sleep(down).await;
            c.restart_gateway(i).await?;
            Ok(format!("gateway {i} down for {down:?}"))
        }
        FaultKind::WorkerKill => {
            let mut c = cluster.lock().await;
            let i = rng.random_range(0..c.worker_count());
            c.kill_worker(i);
            let down = pause(rng, 300, 2000);
            tokio::time::sleep(down).await;
            c.restart_worker(i)?;
            Ok(format!("worker {i} down for {down:?}"))
        }
        FaultKind::RedisRestart => {
            let mut c = cluster.lock().await;
            tokio::task::block_in_place(|| -> Result<()> {
                c.redis_mut()?.terminate(Duration::from_secs(10))?;
                c.redis_mut()?.restart()
            })?;
            Ok("SIGTERM and restart".to_owned())
        }
        FaultKind::RedisPause => {
            let mut c = cluster.lock().await;
            let frozen = pause(rng, 1000, 4000);
            c.redis_mut()?.signal("STOP")?;
            tokio::time::sleep(frozen).await;
            c.redis_mut()?.signal("CONT")?;
            Ok(format!("frozen for {frozen:?}"))
        }
        FaultKind::RedisCutAof => {
            let mut c = cluster.lock().await;
            let bytes = rng.random_range(200..=20_000);
            let redis = c.redis_mut()?;
            let cut = tokio::task::block_in_place(|| redis.kill_and_cut_aof(bytes))?;
            Ok(format!("cut {cut} bytes off the AOF"))
        }
        FaultKind::RedisWipe => {
            let mut c = cluster.lock().await;
            let redis = c.redis_mut()?;
            tokio::task::block_in_place(|| redis.wipe_and_restart())?;
            Ok("all data gone".to_owned())
        }
        FaultKind::RedisRollback => {
            // The data files, not the keys (`lost_writes::Snapshot`): an
            // in-place restore would race the live writers, whose writes
            // between it and the restart would keep the old history.
            let mut c = cluster.lock().await;
            let redis = c.redis_mut()?;
            let snapshot = tokio::task::block_in_place(|| FileSnapshot::take(redis))?;
            let lost = pause(rng, 1500, 4000);
            tokio::time::sleep(lost).await;
            tokio::task::block_in_place(|| snapshot.lose_writes_since(redis))?;
            Ok(format!("lost the last {lost:?} of writes"))
        }
        FaultKind::SlowClients => {
            let window = pause(rng, 8000, 14_000);
            env.slow.store(true, Ordering::Relaxed);
            tokio::time::sleep(window).await;
            env.slow.store(false, Ordering::Relaxed);
            Ok(format!("slow for {window:?}"))
        }
        FaultKind::Storm => {
            env.storm.send_modify(|n| *n += 1);
            Ok("every raw client reconnected at once".to_owned())
        }
        FaultKind::ClusterFailover => {
            let mut c = cluster.lock().await;
            let Store::Cluster(redis) = c.store_mut() else {
                anyhow::bail!("cluster-failover needs the cluster set-up");
            };
            let slot = rng.random_range(0..16_384u16);
            let back_after = pause(rng, 1000, 4000);
            let (old, new) = tokio::task::block_in_place(|| -> Result<(u16, u16)> {
                let old = redis.kill_master_of(slot)?;
                let new = redis.wait_failover(old, slot)?;
                std::thread::sleep(back_after);
                redis.restart(old)?;
                redis.wait_healthy(Duration::from_secs(30))?;
                Ok((old, new))
            })?;
            Ok(format!(
                "master {old} killed, {new} promoted; {old} back as a replica after {back_after:?}"
            ))
        }
        FaultKind::SentinelFailover => {
            let mut c = cluster.lock().await;
            let Store::Sentinel(set) = c.store_mut() else {
                anyhow::bail!("sentinel-failover needs the Sentinel set-up");
            };
            let back_after = pause(rng, 1000, 4000);
            let (old, new) = tokio::task::block_in_place(|| -> Result<(u16, u16)> {
                let old = set.kill_master()?;
                let new = set.wait_failover(old)?;
                std::thread::sleep(back_after);
                set.restart(old)?;
                // Before the next fault: a replica still loading or syncing
                // could be promoted without the last writes, and the next
                // failover bring them back (docs/reliability.md).
                set.wait_in_sync(old)?;
                Ok((old, new))
            })?;
            Ok(format!(
                "master {old} killed, {new} promoted; {old} back as a replica after {back_after:?}"
            ))
        }
        FaultKind::TokenExpiry => {
            let window = pause(rng, 8000, 12_000);
            env.tokens.shorten_for(window);
            // Reconnect everyone now, so live connections pick up tokens
            // that expire mid-stream.
            env.storm.send_modify(|n| *n += 1);
            tokio::time::sleep(window).await;
            Ok(format!("3 s tokens for {window:?}"))
        }
    }
}

/// Faults injected (without error), by kind.
pub fn counts(records: &[FaultRecord]) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for r in records.iter().filter(|r| r.error.is_none()) {
        *out.entry(r.kind.name().to_owned()).or_insert(0) += 1;
    }
    out
}
