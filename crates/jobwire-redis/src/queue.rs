//! `RedisBackend` as a [`JobQueue`], on Redis Streams consumer groups: one
//! queue stream per partition (`<prefix>:{t}:queue`, group `workers`), in
//! the slot of the jobs it holds, so that creating a job writes its queue
//! entry in the same script as the job (`lua/create.lua`) and the queue
//! spreads over a cluster's masters. Entries are delivered to one consumer
//! each, stay pending until acked, and are taken over with XAUTOCLAIM once
//! idle past the visibility timeout.
//!
//! A claim sweeps the partitions from a rotating start, reading each
//! without blocking until it holds what was asked for: under a backlog that
//! is one read, and no partition waits behind another for long. With
//! nothing to claim it waits for a new entry:
//!
//! - On one Redis, with one blocking XREADGROUP over every partition's
//!   stream: the first entry queued wakes exactly one waiting worker.
//! - On a cluster a command may not span slots, so workers wait on
//!   `<prefix>:wake`, a stream the creator appends the job's partition to
//!   after the job is queued, and sweep again. The wake-up is only a hint:
//!   a lost one (a crash in between) delays a job until the waiting
//!   worker's next sweep, at most one claim wait later.
//!
//! A claim's entry id names its partition: `<p>/<stream id>`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use jobwire_core::{BackendError, Claim, JobId, JobQueue, QueueStats};
use redis::streams::{StreamAutoClaimReply, StreamId, StreamReadReply};
use redis::{RedisError, Value};

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

/// A claim's entry: its partition and its id in that partition's stream.
fn entry_id(p: u16, id: &str) -> String {
    format!("{p}/{id}")
}

/// The partition and stream id of a claim's entry.
fn parse_entry(entry: &str) -> Result<(u16, &str)> {
    entry
        .split_once('/')
        .and_then(|(p, id)| Some((p.parse().ok()?, id)))
        .ok_or_else(|| BackendError::Data(format!("not a queue entry of this backend: {entry:?}")))
}

impl RedisBackend {
    /// Creates each partition's consumer group (and stream) unless it
    /// exists. Reading from id 0 means entries added before the group
    /// existed are delivered.
    pub(crate) async fn ensure_group(&self) -> Result<(), RedisError> {
        for p in 0..self.shared.keys.partitions() {
            self.ensure_group_of(p).await?;
        }
        Ok(())
    }

    async fn ensure_group_of(&self, p: u16) -> Result<(), RedisError> {
        let mut conn = self.shared.conns.command();
        let created = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(self.shared.keys.queue(p))
            .arg(WORKERS_GROUP)
            .arg("0")
            .arg("MKSTREAM")
            .query_async::<()>(&mut conn)
            .await;
        match created {
            Err(e) if e.code() != Some("BUSYGROUP") => Err(e),
            _ => Ok(()),
        }
    }

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

    /// Turns stream entries of partition `p` into claims; entries that are
    /// not jobwire's shape are acked and dropped with a warning rather than
    /// handed out.
    async fn to_claims(&self, p: u16, entries: Vec<StreamId>) -> Result<Vec<Claim>> {
        let mut claims = Vec::with_capacity(entries.len());
        for entry in entries {
            let job = field(&entry, "job").and_then(|s| s.parse::<JobId>().ok());
            let id = entry_id(p, &entry.id);
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
        let (p, id) = parse_entry(entry)?;
        let mut conn = self.shared.conns.command();
        let done: i64 = script
            .key(self.shared.keys.queue(p))
            .arg(WORKERS_GROUP)
            .arg(consumer)
            .arg(id)
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
            let mut conn = self.shared.conns.command();
            deleted += scripts::PRUNE
                .key(self.shared.keys.queue(p))
                .arg(WORKERS_GROUP)
                .arg(consumer)
                .arg(limit.as_millis() as u64)
                .invoke_async::<i64>(&mut conn)
                .await
                .map_err(backend_error)?;
        }
        if deleted > 0 {
            tracing::info!(deleted, idle_over = ?limit, "removed idle queue consumers of departed workers");
        }
        Ok(())
    }

    /// Reads up to `max` new entries, partition by partition from a
    /// rotating start, without blocking.
    async fn sweep(&self, consumer: &str, max: usize, first: Option<u16>) -> Result<Vec<Claim>> {
        let partitions = usize::from(self.shared.keys.partitions());
        let start = SWEEP_START.fetch_add(1, Ordering::Relaxed);
        let order = first
            .into_iter()
            .chain((0..partitions).map(|i| ((start + i) % partitions) as u16));
        let mut claims = Vec::new();
        for p in order {
            if claims.len() >= max {
                break;
            }
            let mut conn = self.shared.conns.command();
            let reply: Option<StreamReadReply> = match redis::cmd("XREADGROUP")
                .arg("GROUP")
                .arg(WORKERS_GROUP)
                .arg(consumer)
                .arg("COUNT")
                .arg(max - claims.len())
                .arg("STREAMS")
                .arg(self.shared.keys.queue(p))
                .arg(">")
                .query_async(&mut conn)
                .await
            {
                Ok(reply) => reply,
                // The group vanished (Redis restarted without persistence):
                // make it again; the next sweep finds it.
                Err(e) if e.code() == Some("NOGROUP") => {
                    self.ensure_group_of(p).await.map_err(backend_error)?;
                    continue;
                }
                Err(e) => return Err(backend_error(e)),
            };
            claims.extend(self.to_claims(p, read_entries(reply)).await?);
        }
        Ok(claims)
    }

    /// Waits up to `wait` for an entry on one Redis: one blocking read over
    /// every partition's stream. Redis answers it with the one stream that
    /// got an entry; should it ever hold more than `max`, the rest go back.
    async fn wait_single(&self, consumer: &str, max: usize, wait: Duration) -> Result<Vec<Claim>> {
        let keys = &self.shared.keys;
        let streams: Vec<String> = (0..keys.partitions()).map(|p| keys.queue(p)).collect();
        let mut conn = self
            .shared
            .conns
            .take_blocking(&streams[0])
            .await
            .map_err(backend_error)?;
        let reply: Option<StreamReadReply> = match redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg(WORKERS_GROUP)
            .arg(consumer)
            .arg("COUNT")
            .arg(max)
            .arg("BLOCK")
            .arg(wait.as_millis().max(1) as u64)
            .arg("STREAMS")
            .arg(&streams)
            .arg(vec![">"; streams.len()])
            .query_async(&mut conn.1)
            .await
        {
            Ok(reply) => reply,
            Err(e) if e.code() == Some("NOGROUP") => {
                self.shared.conns.give_back(conn);
                self.ensure_group().await.map_err(backend_error)?;
                return Ok(Vec::new());
            }
            Err(e) => return Err(backend_error(e)),
        };
        self.shared.conns.give_back(conn);
        let mut claims = Vec::new();
        for stream in reply.into_iter().flat_map(|r| r.keys) {
            let Some(p) = streams.iter().position(|s| *s == stream.key) else {
                continue;
            };
            claims.extend(self.to_claims(p as u16, stream.ids).await?);
        }
        for extra in claims.split_off(max.min(claims.len())) {
            self.release(consumer, &extra.entry).await?;
        }
        Ok(claims)
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
            .query_async(&mut conn.1)
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
    async fn claim(&self, consumer: &str, max: usize, wait: Duration) -> Result<Vec<Claim>> {
        let max = max.max(1);
        let wait = wait.min(MAX_QUEUE_BLOCK);
        let clustered = self.shared.conns.clustered();
        // On a cluster, note the newest wake-up before sweeping: one that
        // comes after it (even while sweeping) ends the wait at once.
        let since = if clustered && !wait.is_zero() {
            Some(self.last_wake().await?)
        } else {
            None
        };
        let claims = self.sweep(consumer, max, None).await?;
        if !claims.is_empty() || wait.is_zero() {
            return Ok(claims);
        }
        match since {
            None => self.wait_single(consumer, max, wait).await,
            Some(since) => match self.wait_wake(&since, wait).await? {
                Some(p) => self.sweep(consumer, max, Some(p)).await,
                None => Ok(Vec::new()),
            },
        }
    }
    async fn renew(&self, consumer: &str, entry: &str) -> Result<bool> {
        self.if_leased(&scripts::RENEW, consumer, entry).await
    }
    async fn ack(&self, entry: &str) -> Result<()> {
        let (p, id) = parse_entry(entry)?;
        let queue = self.shared.keys.queue(p);
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
        if released {
            self.wake_workers(parse_entry(entry)?.0).await;
        }
        Ok(released)
    }
    async fn take_over_idle(
        &self,
        consumer: &str,
        min_idle: Duration,
        max: usize,
    ) -> Result<Vec<Claim>> {
        let max = max.max(1);
        let mut claims = Vec::new();
        for p in 0..self.shared.keys.partitions() {
            let mut conn = self.shared.conns.command();
            let mut cursor = "0-0".to_owned();
            let mut taken = Vec::new();
            while claims.len() + taken.len() < max {
                let reply: StreamAutoClaimReply = redis::cmd("XAUTOCLAIM")
                    .arg(self.shared.keys.queue(p))
                    .arg(WORKERS_GROUP)
                    .arg(consumer)
                    .arg(min_idle.as_millis() as u64)
                    .arg(&cursor)
                    .arg("COUNT")
                    .arg(max - claims.len() - taken.len())
                    .query_async(&mut conn)
                    .await
                    .map_err(backend_error)?;
                taken.extend(reply.claimed);
                cursor = reply.next_stream_id;
                if cursor == "0-0" {
                    break;
                }
            }
            claims.extend(self.to_claims(p, taken).await?);
            if claims.len() >= max {
                break;
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
    /// first per partition. Entries deleted meanwhile come back without
    /// fields and are acked away (`to_claims`).
    async fn pending_of(&self, consumer: &str, max: usize) -> Result<Vec<Claim>> {
        let max = max.max(1);
        let mut claims = Vec::new();
        for p in 0..self.shared.keys.partitions() {
            if claims.len() >= max {
                break;
            }
            let mut conn = self.shared.conns.command();
            let reply: Option<StreamReadReply> = match redis::cmd("XREADGROUP")
                .arg("GROUP")
                .arg(WORKERS_GROUP)
                .arg(consumer)
                .arg("COUNT")
                .arg(max - claims.len())
                .arg("STREAMS")
                .arg(self.shared.keys.queue(p))
                .arg("0")
                .query_async(&mut conn)
                .await
            {
                Ok(reply) => reply,
                Err(e) if e.code() == Some("NOGROUP") => continue,
                Err(e) => return Err(backend_error(e)),
            };
            claims.extend(self.to_claims(p, read_entries(reply)).await?);
        }
        Ok(claims)
    }
    async fn queue_stats(&self) -> Result<QueueStats> {
        let keys = &self.shared.keys;
        let partitions: Vec<(u64, Value)> = self
            .shared
            .conns
            .each((0..keys.partitions()).map(|p| {
                let mut pipe = redis::pipe();
                pipe.cmd("XLEN").arg(keys.queue(p));
                pipe.cmd("XPENDING").arg(keys.queue(p)).arg(WORKERS_GROUP);
                pipe
            }))
            .await
            .map_err(backend_error)?;
        let mut stats = QueueStats {
            waiting: 0,
            pending: 0,
        };
        for (len, pending) in partitions {
            let pending = match pending {
                Value::Array(summary) => match summary.first() {
                    Some(Value::Int(n)) => u64::try_from(*n).unwrap_or(0),
                    _ => 0,
                },
                _ => {
                    return Err(BackendError::Data(format!(
                        "unexpected XPENDING reply: {pending:?}"
                    )))
                }
            };
            stats.waiting += len.saturating_sub(pending);
            stats.pending += pending;
        }
        Ok(stats)
    }
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
