//! `RedisBackend` as a [`JobQueue`], on Redis Streams consumer groups: each
//! queue (named by the job's kind unless the creator chose another) has, per
//! priority in use, a *lane* (`jobwire_core::job::lane`), and each lane one
//! stream per partition (`<prefix>:{t}:queue:<lane>`, group `workers`), in
//! the slot of the jobs it holds, so that creating a job writes its queue
//! entry in the same script as the job (`lua/create.lua`) and a queue
//! spreads over a cluster's masters. Entries are delivered to one consumer
//! each, stay pending until acked, and are taken over with XAUTOCLAIM once
//! idle past the visibility timeout. A worker only ever reads the queues it
//! serves.
//!
//! A claim runs `lua/claim.lua`: it reads the streams without blocking, the
//! worker's first queue first, within a queue the highest priority first
//! (the lowest, one claim in ten: the starvation rule), and within a lane
//! the partitions from a rotating start, until it holds what was asked for.
//! On one Redis that is one script over every stream. On a cluster a
//! script may not span slots: the claim first reads the length of every
//! lane in every partition side by side (one round trip per node), then
//! runs the script on each non-empty stream in the same order until it
//! holds enough; so priorities are strict there too, and an idle claim
//! costs one round trip per node.
//!
//! Which priorities a queue uses is read from the partitions' lane sets
//! (`<prefix>:{t}:queues`) at most once a second ([`LANES_REFRESH`]), so
//! the first job ever given a new priority may wait up to that long more.
//! With nothing to claim it waits for a new entry:
//!
//! - On one Redis, with one blocking XREADGROUP over every stream: the first
//!   entry queued wakes exactly one waiting worker.
//! - On a cluster a command may not span slots, so workers wait on
//!   `<prefix>:wake`, a stream the creator appends the job's partition to
//!   after the job is queued, and claim again. The wake-up is only a hint:
//!   a lost one (a crash in between) delays a job until the waiting
//!   worker's next claim, at most one claim wait later.
//!
//! A claim's entry id names its partition and queue: `<p>/<queue>/<stream id>`.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use jobwire_core::backend::FORGET_WORKERS_AFTER;
use jobwire_core::job::{lane, lowest_first, parse_lane, priority_order, DEFAULT_PRIORITY};
use jobwire_core::{
    BackendError, Claim, JobId, JobQueue, QueueLimits, QueueOverview, QueueStats, Queues,
    Timestamp, WorkerInfo,
};
use redis::streams::{StreamAutoClaimReply, StreamId, StreamReadReply};
use redis::Value;

use crate::connection::{backend_error, MAX_QUEUE_BLOCK};
use crate::keys::WORKERS_GROUP;
use crate::{scripts, RedisBackend, Result};

/// Consumers idle for this many visibility timeouts, holding nothing, are
/// deleted from the group. Live workers are seen far more often: they read
/// the queue (a blocked read counts) or renew their leases continuously.
const PRUNE_AFTER: u32 = 20;
/// Idle workers read the queue every second or so: well within this.
const PRUNE_FLOOR: Duration = Duration::from_secs(5);
/// Wake-ups kept (only the newest matter).
const WAKE_MAXLEN: u32 = 1_000;

/// Where the sweeps of this process start next (see the module docs).
static SWEEP_START: AtomicUsize = AtomicUsize::new(0);
/// The longest a claim over limited queues waits before looking again.
const LIMITED_POLL: Duration = Duration::from_millis(250);
/// How often a claiming process re-reads which priorities its queues use.
pub(crate) const LANES_REFRESH: Duration = Duration::from_secs(1);

/// The priorities other than the default in use, per queue.
type LanesInUse = HashMap<String, BTreeSet<u8>>;

/// What claims read at most once a second ([`LANES_REFRESH`]).
#[derive(Clone, Debug, Default)]
struct ClaimView {
    lanes: LanesInUse,
    /// Paused queues: claims and take-overs pass them by.
    paused: HashSet<String>,
    /// Limited queues: claims take slots first.
    limits: std::collections::BTreeMap<String, QueueLimits>,
}

/// What the claims of one backend know and count.
#[derive(Debug, Default)]
pub(crate) struct Claiming {
    /// The priorities other than the default in use, per queue, and when
    /// they were read.
    view: Mutex<Option<(Instant, ClaimView)>>,
    /// Claims that found work (the starvation rule counts them).
    made: AtomicU64,
    /// Claims that found a limited queue at its limit, per queue.
    held_back: Mutex<std::collections::BTreeMap<String, u64>>,
}

/// A claim's entry: its partition, queue and id in that stream.
fn entry_id(p: u16, queue: &str, id: &str) -> String {
    format!("{p}/{queue}/{id}")
}

/// The partition, queue and stream id of a claim's entry.
fn parse_entry(entry: &str) -> Result<(u16, &str, &str)> {
    let mut parts = entry.splitn(3, '/');
    match (parts.next(), parts.next(), parts.next()) {
        (Some(p), Some(queue), Some(id)) if !queue.is_empty() => p
            .parse()
            .ok()
            .map(|p| (p, queue, id))
            .ok_or_else(|| bad_entry(entry)),
        _ => Err(bad_entry(entry)),
    }
}

fn bad_entry(entry: &str) -> BackendError {
    BackendError::Data(format!("not a queue entry of this backend: {entry:?}"))
}

impl RedisBackend {
    /// Tells Cluster workers waiting for work that partition `p`'s queue
    /// has a new entry (see the module docs; one Redis needs no hint).
    pub(crate) async fn wake_workers(&self, p: u16) {
        if !self.shared.conns.clustered() {
            return;
        }
        let mut conn = self.shared.conns.command();
        let woken = redis::cmd("XADD")
            .arg(self.shared.keys.wake())
            .arg("MAXLEN")
            .arg("~")
            .arg(WAKE_MAXLEN)
            .arg("*")
            .arg("p")
            .arg(p)
            .query_async::<()>(&mut conn)
            .await;
        if let Err(e) = woken {
            // Only a hint: a waiting worker finds the job on its next sweep.
            tracing::debug!(error = %e, "could not wake the workers");
        }
    }

    /// Turns entries of lane `lane`'s stream in partition `p` into
    /// claims; entries that are not jobwire's shape are acked and dropped
    /// with a warning rather than handed out.
    async fn to_claims(&self, p: u16, lane: &str, entries: Vec<StreamId>) -> Result<Vec<Claim>> {
        let mut claims = Vec::with_capacity(entries.len());
        for entry in entries {
            let job = field(&entry, "job").and_then(|s| s.parse::<JobId>().ok());
            let id = entry_id(p, lane, &entry.id);
            match (job, field(&entry, "kind")) {
                (Some(job_id), Some(kind)) => claims.push(Claim {
                    entry: id,
                    job_id,
                    kind,
                }),
                _ => {
                    tracing::warn!(entry = %id, "dropping a malformed queue entry");
                    self.ack(&id).await?;
                }
            }
        }
        Ok(claims)
    }

    /// Runs a script that acts on an entry only while `consumer` holds it;
    /// `false` when it does not.
    async fn if_leased(&self, script: &redis::Script, consumer: &str, entry: &str) -> Result<bool> {
        let (p, lane, id) = parse_entry(entry)?;
        let mut conn = self.shared.conns.command();
        let done: i64 = script
            .key(self.shared.keys.queue(p, lane))
            .key(self.shared.keys.ready(p))
            .arg(WORKERS_GROUP)
            .arg(consumer)
            .arg(id)
            .arg(lane)
            .invoke_async(&mut conn)
            .await
            .map_err(backend_error)?;
        Ok(done == 1)
    }

    /// Deletes consumers that hold nothing and were not seen for
    /// [`PRUNE_AFTER`] visibility timeouts (at least [`PRUNE_FLOOR`]): the
    /// processes behind them are gone. Run by the reaper. Deleting a live
    /// consumer would be harmless (it holds nothing, and its next read
    /// recreates it), only wasteful.
    async fn prune_consumers(&self, consumer: &str, visibility: Duration) -> Result<()> {
        let limit = (visibility * PRUNE_AFTER).max(PRUNE_FLOOR);
        let mut deleted = 0i64;
        for p in 0..self.shared.keys.partitions() {
            let streams = self.streams_of(p).await?;
            if streams.is_empty() {
                continue;
            }
            let mut invocation = scripts::PRUNE.prepare_invoke();
            for (_, stream) in &streams {
                invocation.key(stream);
            }
            invocation
                .arg(WORKERS_GROUP)
                .arg(consumer)
                .arg(limit.as_millis() as u64);
            deleted += invocation
                .invoke_async::<i64>(&mut self.shared.conns.command())
                .await
                .map_err(backend_error)?;
        }
        if deleted > 0 {
            tracing::info!(deleted, idle_over = ?limit, "removed idle queue consumers of departed workers");
        }
        Ok(())
    }

    /// The priorities in use per queue (besides the default) and the
    /// paused queues, read again when older than [`LANES_REFRESH`].
    async fn claim_view(&self) -> Result<ClaimView> {
        let claiming = &self.shared.claiming;
        if let Some((read, view)) = claiming
            .view
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
        {
            if read.elapsed() < LANES_REFRESH {
                return Ok(view.clone());
            }
        }
        let keys = &self.shared.keys;
        let names: Vec<Vec<String>> = self
            .per_partition(0..keys.partitions(), |p| {
                redis::cmd("SMEMBERS").arg(keys.queues(p)).clone()
            })
            .await?;
        let mut lanes = LanesInUse::new();
        for name in names.into_iter().flatten() {
            let (queue, priority) = parse_lane(&name);
            if priority != DEFAULT_PRIORITY {
                lanes.entry(queue.to_owned()).or_default().insert(priority);
            }
        }
        let paused: HashSet<String> = redis::cmd("SMEMBERS")
            .arg(keys.paused())
            .query_async(&mut self.shared.conns.command())
            .await
            .map_err(backend_error)?;
        let limits = self.read_limits().await?;
        let view = ClaimView {
            lanes,
            paused,
            limits,
        };
        *claiming.view.lock().unwrap_or_else(|p| p.into_inner()) =
            Some((Instant::now(), view.clone()));
        Ok(view)
    }

    /// A claim over queues some of which are limited: queue by queue, in
    /// order, each limited one after taking its slots (see `limits.rs`).
    /// With nothing found it waits at most [`LIMITED_POLL`] (blocking only
    /// on the unlimited queues, whose reads take no slots): a limited
    /// queue's slots free up with nothing to wake a reader.
    async fn claim_limited(
        &self,
        consumer: &str,
        queues: &[String],
        view: &ClaimView,
        max: usize,
        wait: Duration,
        lease: Duration,
    ) -> Result<Vec<Claim>> {
        let made = &self.shared.claiming.made;
        let lowest = lowest_first(made.load(Ordering::Relaxed));
        let mut claims = Vec::new();
        for queue in queues {
            let want = max - claims.len();
            if want == 0 {
                break;
            }
            let lanes = Self::lanes_of(std::slice::from_ref(queue), &view.lanes, lowest);
            match view.limits.get(queue) {
                None => claims.extend(self.sweep(consumer, &lanes, want, None).await?),
                Some(limits) => {
                    let tokens = self
                        .take_slots(consumer, queue, limits, want, lease)
                        .await?;
                    if tokens.is_empty() {
                        *self
                            .shared
                            .claiming
                            .held_back
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .entry(queue.clone())
                            .or_default() += 1;
                        continue;
                    }
                    let got = self.sweep(consumer, &lanes, tokens.len(), None).await?;
                    self.keep_slots(queue, &got, tokens, lease).await?;
                    claims.extend(got);
                }
            }
        }
        let wait = wait.min(LIMITED_POLL);
        if claims.is_empty() && !wait.is_zero() {
            let unlimited: Vec<String> = queues
                .iter()
                .filter(|q| !view.limits.contains_key(*q))
                .cloned()
                .collect();
            if unlimited.is_empty() || self.shared.conns.clustered() {
                tokio::time::sleep(wait).await;
            } else {
                let lanes = Self::lanes_of(&unlimited, &view.lanes, lowest);
                claims = self.wait_single(consumer, &lanes, max, wait).await?;
            }
        }
        if !claims.is_empty() {
            made.fetch_add(1, Ordering::Relaxed);
        }
        Ok(claims)
    }

    /// Forgets the cached [`ClaimView`] (this process paused or resumed a
    /// queue: its own claims see it at once).
    fn forget_claim_view(&self) {
        *self
            .shared
            .claiming
            .view
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// The lanes of `queues` in the order a claim takes them: queue by
    /// queue, within a queue by priority (highest first, unless
    /// `lowest_first`).
    fn lanes_of(queues: &Queues, in_use: &LanesInUse, lowest_first: bool) -> Vec<Vec<String>> {
        queues
            .iter()
            .map(|queue| {
                let used = in_use.get(queue);
                priority_order(lowest_first)
                    .filter(|&p| {
                        p == DEFAULT_PRIORITY || used.is_some_and(|used| used.contains(&p))
                    })
                    .map(|p| lane(queue, p))
                    .collect()
            })
            .collect()
    }

    /// Every lane used in partition `p`, with its stream.
    async fn streams_of(&self, p: u16) -> Result<Vec<(String, String)>> {
        let keys = &self.shared.keys;
        let names: Vec<String> = redis::cmd("SMEMBERS")
            .arg(keys.queues(p))
            .query_async(&mut self.shared.conns.command())
            .await
            .map_err(backend_error)?;
        Ok(names
            .into_iter()
            .map(|name| {
                let stream = keys.queue(p, &name);
                (name, stream)
            })
            .collect())
    }

    /// Reads up to `max` new entries of `lanes` (per queue, in order)
    /// without blocking (see the module docs for the order); `first` is the
    /// partition to read first.
    async fn sweep(
        &self,
        consumer: &str,
        lanes: &[Vec<String>],
        max: usize,
        first: Option<u16>,
    ) -> Result<Vec<Claim>> {
        let partitions = usize::from(self.shared.keys.partitions());
        let start = SWEEP_START.fetch_add(1, Ordering::Relaxed);
        let order: Vec<u16> = first
            .into_iter()
            .chain(
                (0..partitions)
                    .map(|i| ((start + i) % partitions) as u16)
                    .filter(|p| Some(*p) != first),
            )
            .collect();
        let all: Vec<&str> = lanes.iter().flatten().map(String::as_str).collect();
        if !self.shared.conns.clustered() {
            return self.claim_from(consumer, &order, &all, max).await;
        }
        // On a cluster, first every partition's ready lanes, side by side
        // (one round trip per node); then a script for each ready lane of
        // each partition, in claim order, until enough are claimed.
        let keys = &self.shared.keys;
        let ready: Vec<HashSet<String>> = self
            .per_partition(order.iter().copied(), |p| {
                redis::cmd("SMEMBERS").arg(keys.ready(p)).clone()
            })
            .await?;
        let mut claims = Vec::new();
        for lane in &all {
            for (&p, ready) in order.iter().zip(&ready) {
                if claims.len() >= max {
                    return Ok(claims);
                }
                if ready.contains(*lane) {
                    claims.extend(
                        self.claim_from(consumer, &[p], &[lane], max - claims.len())
                            .await?,
                    );
                }
            }
        }
        Ok(claims)
    }

    /// One run of `lua/claim.lua` over `lanes` in `partitions`, in order.
    async fn claim_from(
        &self,
        consumer: &str,
        partitions: &[u16],
        lanes: &[&str],
        max: usize,
    ) -> Result<Vec<Claim>> {
        let keys = &self.shared.keys;
        let mut invocation = scripts::CLAIM.prepare_invoke();
        for &p in partitions {
            invocation.key(keys.ready(p));
        }
        invocation
            .arg(WORKERS_GROUP)
            .arg(consumer)
            .arg(max.max(1))
            .arg(partitions.len());
        for &p in partitions {
            invocation.arg(keys.base(p));
        }
        for lane in lanes {
            invocation.arg(*lane);
        }
        let reply: Vec<Value> = invocation
            .invoke_async(&mut self.shared.conns.command())
            .await
            .map_err(backend_error)?;
        let mut claims = Vec::new();
        let mut items = reply.into_iter();
        while let (Some(l), Some(p), Some(id), Some(fields)) =
            (items.next(), items.next(), items.next(), items.next())
        {
            let (Value::Int(l), Value::Int(p), Some(id)) = (l, p, text(id)) else {
                return Err(BackendError::Data("unexpected claim reply".to_owned()));
            };
            let at = |i: i64, len: usize| usize::try_from(i - 1).ok().filter(|&i| i < len);
            let (Some(l), Some(p)) = (at(l, lanes.len()), at(p, partitions.len())) else {
                return Err(BackendError::Data("claim reply names no stream".to_owned()));
            };
            let entry = StreamId {
                id,
                map: pairs(fields),
                ..StreamId::default()
            };
            claims.extend(self.to_claims(partitions[p], lanes[l], vec![entry]).await?);
        }
        Ok(claims)
    }

    /// Every lane used in partition `p` with its figures
    /// (`lua/lane_figures.lua`).
    async fn lane_figures(&self, p: u16) -> Result<Vec<(String, LaneFigures)>> {
        let streams = self.streams_of(p).await?;
        if streams.is_empty() {
            return Ok(Vec::new());
        }
        let mut invocation = scripts::LANE_FIGURES.prepare_invoke();
        for (_, stream) in &streams {
            invocation.key(stream);
        }
        let replies: Vec<(u64, u64, String)> = invocation
            .arg(WORKERS_GROUP)
            .invoke_async(&mut self.shared.conns.command())
            .await
            .map_err(backend_error)?;
        Ok(streams
            .into_iter()
            .zip(replies)
            .map(|((lane, _), (len, pending, oldest))| {
                let oldest = oldest
                    .split_once('-')
                    .and_then(|(ms, _)| ms.parse::<i64>().ok())
                    .map(Timestamp::from_unix_millis);
                (
                    lane,
                    LaneFigures {
                        len,
                        pending,
                        oldest,
                    },
                )
            })
            .collect())
    }

    /// Adds to each partition's ready set the lanes that hold entries
    /// (once, at start-up): for entries queued by a version that kept no
    /// ready sets. A lane added needlessly costs one read.
    pub(crate) async fn seed_ready(&self) -> Result<()> {
        let keys = &self.shared.keys;
        for p in 0..keys.partitions() {
            let held: Vec<String> = self
                .lane_figures(p)
                .await?
                .into_iter()
                .filter(|(_, figures)| figures.oldest.is_some())
                .map(|(lane, _)| lane)
                .collect();
            if !held.is_empty() {
                redis::cmd("SADD")
                    .arg(keys.ready(p))
                    .arg(&held)
                    .query_async::<()>(&mut self.shared.conns.command())
                    .await
                    .map_err(backend_error)?;
            }
        }
        Ok(())
    }

    /// Creates the `workers` group on each stream that lacks it (and the
    /// stream), for the blocking read of an idle claim.
    async fn ensure_groups(&self, streams: &[&str]) -> Result<()> {
        let mut invocation = scripts::ENSURE_GROUPS.prepare_invoke();
        for stream in streams {
            invocation.key(*stream);
        }
        invocation
            .arg(WORKERS_GROUP)
            .invoke_async::<i64>(&mut self.shared.conns.command())
            .await
            .map_err(backend_error)?;
        Ok(())
    }

    /// Waits up to `wait` for an entry of `lanes` on one Redis: one
    /// blocking read over every stream (a stream without the group gets it
    /// first). Redis answers it with the one stream that got an entry;
    /// should it ever hold more than `max`, the rest go back.
    async fn wait_single(
        &self,
        consumer: &str,
        lanes: &[Vec<String>],
        max: usize,
        wait: Duration,
    ) -> Result<Vec<Claim>> {
        let keys = &self.shared.keys;
        let streams: Vec<(u16, &str, String)> = lanes
            .iter()
            .flatten()
            .flat_map(|l| (0..keys.partitions()).map(move |p| (p, l.as_str(), keys.queue(p, l))))
            .collect();
        let Some((_, _, first)) = streams.first() else {
            return Ok(Vec::new());
        };
        let names: Vec<&str> = streams.iter().map(|(_, _, key)| key.as_str()).collect();
        let mut made_groups = false;
        let (conn, reply) = loop {
            let mut conn = self
                .shared
                .conns
                .take_blocking(first)
                .await
                .map_err(backend_error)?;
            let read: redis::RedisResult<Option<StreamReadReply>> = redis::cmd("XREADGROUP")
                .arg("GROUP")
                .arg(WORKERS_GROUP)
                .arg(consumer)
                .arg("COUNT")
                .arg(max)
                .arg("BLOCK")
                .arg(wait.as_millis().max(1) as u64)
                .arg("STREAMS")
                .arg(&names)
                .arg(vec![">"; names.len()])
                .query_async(&mut conn)
                .await;
            match read {
                Ok(reply) => break (conn, reply),
                // A lane never read in some partition, or a group that
                // vanished (Redis restarted without persistence): make the
                // groups and wait again.
                Err(e) if e.code() == Some("NOGROUP") && !made_groups => {
                    self.shared.conns.give_back(conn);
                    self.ensure_groups(&names).await?;
                    made_groups = true;
                }
                Err(e) => return Err(backend_error(e)),
            }
        };
        self.shared.conns.give_back(conn);
        let mut claims = Vec::new();
        for stream in reply.into_iter().flat_map(|r| r.keys) {
            let Some((p, queue, _)) = streams.iter().find(|(_, _, key)| *key == stream.key) else {
                continue;
            };
            claims.extend(self.to_claims(*p, queue, stream.ids).await?);
        }
        for extra in claims.split_off(max.min(claims.len())) {
            self.release(consumer, &extra.entry).await?;
        }
        Ok(claims)
    }

    /// XAUTOCLAIM on lane `lane` of partition `p`: up to `max` entries
    /// idle for `min_idle`, leased to `consumer`.
    async fn auto_claim(
        &self,
        consumer: &str,
        p: u16,
        lane: &str,
        min_idle: Duration,
        max: usize,
    ) -> Result<Vec<StreamId>> {
        let stream = self.shared.keys.queue(p, lane);
        let mut conn = self.shared.conns.command();
        let mut cursor = "0-0".to_owned();
        let mut taken = Vec::new();
        while taken.len() < max {
            let reply: StreamAutoClaimReply = match redis::cmd("XAUTOCLAIM")
                .arg(&stream)
                .arg(WORKERS_GROUP)
                .arg(consumer)
                .arg(min_idle.as_millis() as u64)
                .arg(&cursor)
                .arg("COUNT")
                .arg(max - taken.len())
                .query_async(&mut conn)
                .await
            {
                Ok(reply) => reply,
                // Never claimed from: nothing to take over.
                Err(e) if e.code() == Some("NOGROUP") => break,
                Err(e) => return Err(backend_error(e)),
            };
            taken.extend(reply.claimed);
            cursor = reply.next_stream_id;
            if cursor == "0-0" {
                break;
            }
        }
        Ok(taken)
    }

    /// The newest wake-up's id ("0-0" when there is none).
    async fn last_wake(&self) -> Result<String> {
        let mut conn = self.shared.conns.command();
        let newest: Vec<(String, Value)> = redis::cmd("XREVRANGE")
            .arg(self.shared.keys.wake())
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(1)
            .query_async(&mut conn)
            .await
            .map_err(backend_error)?;
        Ok(newest
            .into_iter()
            .next()
            .map_or_else(|| "0-0".to_owned(), |(id, _)| id))
    }

    /// Waits up to `wait` for a wake-up after `since` on a cluster, and
    /// returns the partition it names.
    async fn wait_wake(&self, since: &str, wait: Duration) -> Result<Option<u16>> {
        let wake = self.shared.keys.wake();
        let mut conn = self
            .shared
            .conns
            .take_blocking(&wake)
            .await
            .map_err(backend_error)?;
        let reply: Option<StreamReadReply> = redis::cmd("XREAD")
            .arg("COUNT")
            .arg(1)
            .arg("BLOCK")
            .arg(wait.as_millis().max(1) as u64)
            .arg("STREAMS")
            .arg(&wake)
            .arg(since)
            .query_async(&mut conn)
            .await
            .map_err(backend_error)?;
        self.shared.conns.give_back(conn);
        Ok(read_entries(reply)
            .first()
            .and_then(|entry| field(entry, "p"))
            .and_then(|p| p.parse().ok()))
    }
}

#[async_trait]
impl JobQueue for RedisBackend {
    async fn claim_for(
        &self,
        consumer: &str,
        queues: &Queues,
        max: usize,
        wait: Duration,
        lease: Duration,
    ) -> Result<Vec<Claim>> {
        let max = max.max(1);
        let view = self.claim_view().await?;
        let queues: Vec<String> = queues
            .iter()
            .filter(|q| !view.paused.contains(*q))
            .cloned()
            .collect();
        if queues.is_empty() {
            tokio::time::sleep(wait.min(MAX_QUEUE_BLOCK)).await;
            return Ok(Vec::new());
        }
        if queues.iter().any(|q| view.limits.contains_key(q)) {
            return self
                .claim_limited(consumer, &queues, &view, max, wait, lease)
                .await;
        }
        let wait = wait.min(MAX_QUEUE_BLOCK);
        let clustered = self.shared.conns.clustered();
        // On a cluster, note the newest wake-up before sweeping: one that
        // comes after it (even while sweeping) ends the wait at once.
        let since = if clustered && !wait.is_zero() {
            Some(self.last_wake().await?)
        } else {
            None
        };
        let made = &self.shared.claiming.made;
        let lanes = Self::lanes_of(
            &queues,
            &view.lanes,
            lowest_first(made.load(Ordering::Relaxed)),
        );
        let mut claims = self.sweep(consumer, &lanes, max, None).await?;
        if claims.is_empty() && !wait.is_zero() {
            claims = match since {
                None => self.wait_single(consumer, &lanes, max, wait).await?,
                Some(since) => match self.wait_wake(&since, wait).await? {
                    Some(p) => self.sweep(consumer, &lanes, max, Some(p)).await?,
                    None => Vec::new(),
                },
            };
        }
        if !claims.is_empty() {
            made.fetch_add(1, Ordering::Relaxed);
        }
        Ok(claims)
    }
    async fn set_limits(&self, queue: &str, limits: &QueueLimits) -> Result<()> {
        self.write_limits(queue, limits).await?;
        self.forget_claim_view();
        Ok(())
    }
    async fn limits(&self) -> Result<std::collections::BTreeMap<String, QueueLimits>> {
        self.read_limits().await
    }
    fn held_back(&self) -> std::collections::BTreeMap<String, u64> {
        self.shared
            .claiming
            .held_back
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
    async fn renew(&self, consumer: &str, entry: &str) -> Result<bool> {
        let renewed = self.if_leased(&scripts::RENEW, consumer, entry).await?;
        if renewed {
            self.renew_slot(entry).await?;
        }
        Ok(renewed)
    }
    async fn ack(&self, entry: &str) -> Result<()> {
        self.free_slot(entry).await?;
        let (p, queue, id) = parse_entry(entry)?;
        let queue = self.shared.keys.queue(p, queue);
        let mut conn = self.shared.conns.command();
        // XDEL too: the queue stream only holds work not yet done.
        redis::pipe()
            .atomic()
            .cmd("XACK")
            .arg(&queue)
            .arg(WORKERS_GROUP)
            .arg(id)
            .ignore()
            .cmd("XDEL")
            .arg(&queue)
            .arg(id)
            .ignore()
            .query_async::<()>(&mut conn)
            .await
            .map_err(backend_error)
    }
    async fn release(&self, consumer: &str, entry: &str) -> Result<bool> {
        let released = self.if_leased(&scripts::RELEASE, consumer, entry).await?;
        self.free_slot(entry).await?;
        if released {
            self.wake_workers(parse_entry(entry)?.0).await;
        }
        Ok(released)
    }
    async fn take_over_idle(
        &self,
        consumer: &str,
        queues: &Queues,
        min_idle: Duration,
        max: usize,
    ) -> Result<Vec<Claim>> {
        let max = max.max(1);
        let view = self.claim_view().await?;
        let mut claims = Vec::new();
        'partitions: for p in 0..self.shared.keys.partitions() {
            for (lane, _) in self.streams_of(p).await? {
                let queue = parse_lane(&lane).0;
                if !queues.iter().any(|q| q == queue) || view.paused.contains(queue) {
                    continue;
                }
                if claims.len() >= max {
                    break 'partitions;
                }
                let want = max - claims.len();
                // A limited queue's take-over is a start like any other.
                let tokens = match view.limits.get(queue) {
                    Some(limits) => {
                        let tokens = self
                            .take_slots(consumer, queue, limits, want, min_idle)
                            .await?;
                        if tokens.is_empty() {
                            continue;
                        }
                        Some(tokens)
                    }
                    None => None,
                };
                let want = tokens.as_ref().map_or(want, Vec::len);
                let taken = self.auto_claim(consumer, p, &lane, min_idle, want).await?;
                let taken = self.to_claims(p, &lane, taken).await?;
                if let Some(tokens) = tokens {
                    self.keep_slots(queue, &taken, tokens, min_idle).await?;
                }
                claims.extend(taken);
            }
        }
        // Housekeeping only: a failure here (a Redis user without XINFO, a
        // blip) must not lose the entries just taken over above.
        if let Err(e) = self.prune_consumers(consumer, min_idle).await {
            tracing::warn!(error = %e, "could not prune idle queue consumers");
        }
        Ok(claims)
    }
    /// The consumer's own pending entries (XREADGROUP from id 0), oldest
    /// first per stream, over every queue used. Entries deleted meanwhile
    /// come back without fields and are acked away (`to_claims`).
    async fn pending_of(&self, consumer: &str, max: usize) -> Result<Vec<Claim>> {
        let max = max.max(1);
        let mut claims = Vec::new();
        for p in 0..self.shared.keys.partitions() {
            for (queue, stream) in self.streams_of(p).await? {
                if claims.len() >= max {
                    return Ok(claims);
                }
                let reply: Option<StreamReadReply> = match redis::cmd("XREADGROUP")
                    .arg("GROUP")
                    .arg(WORKERS_GROUP)
                    .arg(consumer)
                    .arg("COUNT")
                    .arg(max - claims.len())
                    .arg("STREAMS")
                    .arg(&stream)
                    .arg("0")
                    .query_async(&mut self.shared.conns.command())
                    .await
                {
                    Ok(reply) => reply,
                    Err(e) if e.code() == Some("NOGROUP") => continue,
                    Err(e) => return Err(backend_error(e)),
                };
                claims.extend(self.to_claims(p, &queue, read_entries(reply)).await?);
            }
        }
        Ok(claims)
    }
    async fn queue_stats(&self) -> Result<QueueStats> {
        let keys = &self.shared.keys;
        let scheduled: Vec<u64> = self
            .per_partition(0..keys.partitions(), |p| {
                redis::cmd("ZCARD").arg(keys.scheduled(p)).clone()
            })
            .await?;
        let mut stats = QueueStats {
            waiting: 0,
            pending: 0,
            scheduled: scheduled.into_iter().sum(),
        };
        for p in 0..self.shared.keys.partitions() {
            for (_, figures) in self.lane_figures(p).await? {
                stats.waiting += figures.len.saturating_sub(figures.pending);
                stats.pending += figures.pending;
            }
        }
        Ok(stats)
    }

    async fn queue_overview(&self) -> Result<Vec<QueueOverview>> {
        let paused = self.paused_queues().await?;
        let mut by_name: std::collections::BTreeMap<String, QueueOverview> = paused
            .into_iter()
            .map(|name| {
                let q = QueueOverview {
                    name: name.clone(),
                    paused: true,
                    ..QueueOverview::default()
                };
                (name, q)
            })
            .collect();
        for p in 0..self.shared.keys.partitions() {
            for (lane, figures) in self.lane_figures(p).await? {
                let name = parse_lane(&lane).0.to_owned();
                let q = by_name
                    .entry(name.clone())
                    .or_insert_with(|| QueueOverview {
                        name,
                        ..QueueOverview::default()
                    });
                q.waiting += figures.len.saturating_sub(figures.pending);
                q.running += figures.pending;
                if let Some(at) = figures.oldest {
                    if q.oldest_waiting.is_none_or(|t| at < t) {
                        q.oldest_waiting = Some(at);
                    }
                }
            }
        }
        for (name, limits) in self.read_limits().await? {
            by_name
                .entry(name.clone())
                .or_insert_with(|| QueueOverview {
                    name,
                    ..QueueOverview::default()
                })
                .limits = limits;
        }
        // Scheduled jobs (`scheduled/<queue>` in each partition's stats) and
        // finished and failed ones per minute (`<minute>/<queue>/f|x` in its
        // hourly throughput hashes; lua/publish.lua writes both).
        let keys = &self.shared.keys;
        let now = Timestamp::now().unix_millis();
        let (minute, hour) = (now.div_euclid(60_000), now.div_euclid(3_600_000));
        type Hash = HashMap<String, i64>;
        let partitions: Vec<(Hash, Hash, Hash)> = self
            .shared
            .conns
            .each((0..keys.partitions()).map(|p| {
                let mut pipe = redis::pipe();
                pipe.cmd("HGETALL").arg(keys.stats(p));
                pipe.cmd("HGETALL").arg(keys.throughput(p, hour - 1));
                pipe.cmd("HGETALL").arg(keys.throughput(p, hour));
                pipe
            }))
            .await
            .map_err(backend_error)?;
        fn at<'a>(
            by_name: &'a mut std::collections::BTreeMap<String, QueueOverview>,
            name: &str,
        ) -> &'a mut QueueOverview {
            by_name
                .entry(name.to_owned())
                .or_insert_with(|| QueueOverview {
                    name: name.to_owned(),
                    ..QueueOverview::default()
                })
        }
        for (stats, before, current) in partitions {
            for (field, n) in stats {
                if let Some(queue) = field.strip_prefix("scheduled/") {
                    if n > 0 {
                        at(&mut by_name, queue).scheduled += n as u64;
                    }
                }
            }
            for (field, n) in before.into_iter().chain(current) {
                let mut parts = field.splitn(2, '/');
                let (Some(m), Some(rest)) = (parts.next(), parts.next()) else {
                    continue;
                };
                let (Ok(m), Some((queue, which))) = (m.parse::<i64>(), rest.rsplit_once('/'))
                else {
                    continue;
                };
                let n = n.max(0) as u64;
                let (finished, failed) = match which {
                    "f" => (n, 0),
                    "x" => (0, n),
                    _ => continue,
                };
                at(&mut by_name, queue).count_minute(minute - m, finished, failed);
            }
        }
        Ok(by_name.into_values().collect())
    }
    async fn set_paused(&self, queue: &str, paused: bool) -> Result<()> {
        redis::cmd(if paused { "SADD" } else { "SREM" })
            .arg(self.shared.keys.paused())
            .arg(queue)
            .query_async::<()>(&mut self.shared.conns.command())
            .await
            .map_err(backend_error)?;
        self.forget_claim_view();
        Ok(())
    }
    async fn paused_queues(&self) -> Result<Vec<String>> {
        let mut paused: Vec<String> = redis::cmd("SMEMBERS")
            .arg(self.shared.keys.paused())
            .query_async(&mut self.shared.conns.command())
            .await
            .map_err(backend_error)?;
        paused.sort();
        Ok(paused)
    }
    async fn heartbeat(&self, worker: &WorkerInfo) -> Result<()> {
        let json = serde_json::to_string(worker).map_err(|e| BackendError::Data(e.to_string()))?;
        redis::cmd("HSET")
            .arg(self.shared.keys.workers())
            .arg(&worker.name)
            .arg(json)
            .query_async::<()>(&mut self.shared.conns.command())
            .await
            .map_err(backend_error)
    }
    /// Entries not seen for [`FORGET_WORKERS_AFTER`] are removed on the way.
    async fn workers(&self) -> Result<Vec<WorkerInfo>> {
        let key = self.shared.keys.workers();
        let all: HashMap<String, String> = redis::cmd("HGETALL")
            .arg(&key)
            .query_async(&mut self.shared.conns.command())
            .await
            .map_err(backend_error)?;
        let forget = Timestamp::now().unix_millis() - FORGET_WORKERS_AFTER.as_millis() as i64;
        let mut workers = Vec::with_capacity(all.len());
        let mut stale = Vec::new();
        for (name, json) in all {
            match serde_json::from_str::<WorkerInfo>(&json) {
                Ok(w) if w.last_seen.unix_millis() >= forget => workers.push(w),
                // Long gone, or written by an incompatible version.
                _ => stale.push(name),
            }
        }
        if !stale.is_empty() {
            redis::cmd("HDEL")
                .arg(&key)
                .arg(&stale)
                .query_async::<()>(&mut self.shared.conns.command())
                .await
                .map_err(backend_error)?;
        }
        workers.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(workers)
    }
    /// The due jobs of the partitions whose promotion lease this process
    /// holds or takes (`lua/due.lua`): all partitions in one call on one
    /// master, one call per partition (side by side) on a cluster. Their
    /// heads come along into the head cache, so each promotion is one
    /// compare-and-set.
    async fn due(&self, now: Timestamp, max: usize) -> Result<Vec<JobId>> {
        let keys = &self.shared.keys;
        // An even share each (the earliest of a partition first): `max`
        // over all partitions, not per partition.
        let per_partition = (max / usize::from(keys.partitions()) + 1).clamp(1, DUE_PER_PARTITION);
        // Every gateway and worker asks several times a second: on one
        // master a single call asks every partition (one call per partition
        // cost ~10,000 instructions each in the client, most of the idle
        // gateway's work).
        let groups: Vec<Vec<u16>> = if self.shared.conns.one_master() {
            vec![(0..keys.partitions()).collect()]
        } else {
            (0..keys.partitions()).map(|p| vec![p]).collect()
        };
        // By hash: EVAL would send (and Redis hash) the whole script each
        // time. A server that does not know it yet (new, or restarted) gets
        // it with EVAL, for that round.
        let round = |by_hash: bool| {
            self.shared
                .conns
                .each(Vec::from_iter(groups.iter().map(|group| {
                    let mut cmd = if by_hash {
                        redis::cmd("EVALSHA")
                    } else {
                        redis::cmd("EVAL")
                    };
                    cmd.arg(if by_hash {
                        scripts::DUE.get_hash()
                    } else {
                        scripts::DUE_CODE
                    })
                    .arg(2 * group.len());
                    for &p in group {
                        cmd.arg(keys.scheduled(p)).arg(keys.promoting(p));
                    }
                    cmd.arg(now.unix_millis())
                        .arg(per_partition)
                        .arg(&self.shared.publisher)
                        .arg(PROMOTION_LEASE.as_millis() as u64);
                    for &p in group {
                        cmd.arg(keys.job_prefix(p));
                    }
                    let mut pipe = redis::pipe();
                    pipe.add_command(cmd);
                    pipe
                })))
        };
        let replies: Vec<(Vec<Value>,)> = match round(true).await {
            Err(e) if e.code() == Some("NOSCRIPT") => round(false).await,
            other => other,
        }
        .map_err(crate::connection::backend_error)?;
        let replies: Vec<Vec<Value>> = replies.into_iter().map(|(reply,)| reply).collect();
        let mut due = Vec::new();
        for reply in &replies {
            for entry in reply.chunks(4) {
                let [id, seq, state, last_n] = entry else {
                    return Err(crate::jobs::unexpected("due", entry));
                };
                let Some(job) = redis::from_redis_value::<String>(id.clone())
                    .ok()
                    .and_then(|id| id.parse::<JobId>().ok())
                else {
                    tracing::warn!(entry = ?id, "ignoring a schedule entry that is not a job id");
                    continue;
                };
                if *seq != Value::Nil {
                    // A head that does not parse is left for publish to
                    // fetch (and report).
                    if let Ok(head) = crate::jobs::parse_head(&job, seq, state, last_n) {
                        self.cache_head(&job, Some(head));
                    }
                }
                due.push(job);
            }
        }
        due.truncate(max);
        Ok(due)
    }
    async fn drop_due(&self, job: &JobId) -> Result<()> {
        let keys = &self.shared.keys;
        scripts::DROP_DUE
            .key(keys.job(job))
            .key(keys.scheduled(keys.partition_of(job)))
            .arg(job.as_str())
            .invoke_async::<i64>(&mut self.shared.conns.command())
            .await
            .map_err(backend_error)?;
        Ok(())
    }
}

/// A lane stream's figures (`lua/lane_figures.lua`).
#[derive(Debug)]
struct LaneFigures {
    len: u64,
    pending: u64,
    /// When its oldest undelivered entry was queued.
    oldest: Option<Timestamp>,
}

/// The most scheduled jobs read per partition by one `due` call.
const DUE_PER_PARTITION: usize = 1_000;
/// How long a promoter holds a partition's promotion (renewed while it has
/// due jobs): the longest a crashed promoter delays that partition's.
const PROMOTION_LEASE: Duration = Duration::from_secs(2);

fn text(v: Value) -> Option<String> {
    match v {
        Value::BulkString(bytes) => String::from_utf8(bytes).ok(),
        Value::SimpleString(s) => Some(s),
        _ => None,
    }
}

/// A flat `[field, value, …]` array as a stream entry's map.
fn pairs(fields: Value) -> std::collections::HashMap<String, Value> {
    let Value::Array(items) = fields else {
        return Default::default();
    };
    let mut map = std::collections::HashMap::new();
    let mut items = items.into_iter();
    while let (Some(k), Some(v)) = (items.next(), items.next()) {
        if let Some(k) = text(k) {
            map.insert(k, v);
        }
    }
    map
}

fn field(entry: &StreamId, name: &str) -> Option<String> {
    match entry.map.get(name)? {
        Value::BulkString(bytes) => String::from_utf8(bytes.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    }
}

/// The entries of an XREAD(GROUP) reply on one stream (none when the read
/// timed out).
fn read_entries(reply: Option<StreamReadReply>) -> Vec<StreamId> {
    reply
        .into_iter()
        .flat_map(|r| r.keys)
        .flat_map(|k| k.ids)
        .collect()
}
