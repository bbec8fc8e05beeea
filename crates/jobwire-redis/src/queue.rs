//! `RedisBackend` as a [`JobQueue`], on Redis Streams consumer groups: each
//! queue (named by the job's kind unless the creator chose another) has one
//! stream per partition (`<prefix>:{t}:queue:<name>`, group `workers`), in
//! the slot of the jobs it holds, so that creating a job writes its queue
//! entry in the same script as the job (`lua/create.lua`) and a queue
//! spreads over a cluster's masters. Entries are delivered to one consumer
//! each, stay pending until acked, and are taken over with XAUTOCLAIM once
//! idle past the visibility timeout. A worker only ever reads the queues it
//! serves.
//!
//! A claim runs `lua/claim.lua`: it reads the streams without blocking, the
//! worker's first queue first and within a queue the partitions from a
//! rotating start, until it holds what was asked for. On one Redis that is
//! one script over every stream; on a cluster one per stream (a script may
//! not span slots), in the same order, so an idle claim there costs one
//! round trip per queue and partition. With nothing to claim it waits for
//! a new entry:
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

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use jobwire_core::{BackendError, Claim, JobId, JobQueue, QueueStats, Queues};
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

    /// Turns entries of queue `queue`'s stream in partition `p` into
    /// claims; entries that are not jobwire's shape are acked and dropped
    /// with a warning rather than handed out.
    async fn to_claims(&self, p: u16, queue: &str, entries: Vec<StreamId>) -> Result<Vec<Claim>> {
        let mut claims = Vec::with_capacity(entries.len());
        for entry in entries {
            let job = field(&entry, "job").and_then(|s| s.parse::<JobId>().ok());
            let id = entry_id(p, queue, &entry.id);
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
        let (p, queue, id) = parse_entry(entry)?;
        let mut conn = self.shared.conns.command();
        let done: i64 = script
            .key(self.shared.keys.queue(p, queue))
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

    /// Every queue used in partition `p`, with its stream.
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

    /// Reads up to `max` new entries of `queues` without blocking (see the
    /// module docs for the order); `first` is the partition to read first.
    async fn sweep(
        &self,
        consumer: &str,
        queues: &Queues,
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
        if !self.shared.conns.clustered() {
            let streams: Vec<(u16, &str)> = queues
                .iter()
                .flat_map(|q| order.iter().map(move |&p| (p, q.as_str())))
                .collect();
            return self.claim_from(consumer, &streams, max).await;
        }
        let mut claims = Vec::new();
        for queue in queues {
            for &p in &order {
                if claims.len() >= max {
                    return Ok(claims);
                }
                let streams = [(p, queue.as_str())];
                claims.extend(
                    self.claim_from(consumer, &streams, max - claims.len())
                        .await?,
                );
            }
        }
        Ok(claims)
    }

    /// One run of `lua/claim.lua` over `streams` (partition, queue), in order.
    async fn claim_from(
        &self,
        consumer: &str,
        streams: &[(u16, &str)],
        max: usize,
    ) -> Result<Vec<Claim>> {
        let keys = &self.shared.keys;
        let mut invocation = scripts::CLAIM.prepare_invoke();
        for &(p, queue) in streams {
            invocation.key(keys.queue(p, queue));
        }
        invocation.arg(WORKERS_GROUP).arg(consumer).arg(max.max(1));
        let reply: Vec<Value> = invocation
            .invoke_async(&mut self.shared.conns.command())
            .await
            .map_err(backend_error)?;
        let mut claims = Vec::new();
        let mut items = reply.into_iter();
        while let (Some(index), Some(id), Some(fields)) = (items.next(), items.next(), items.next())
        {
            let (Value::Int(index), Some(id)) = (index, text(id)) else {
                return Err(BackendError::Data("unexpected claim reply".to_owned()));
            };
            let Some(&(p, queue)) = usize::try_from(index - 1).ok().and_then(|i| streams.get(i))
            else {
                return Err(BackendError::Data("claim reply names no stream".to_owned()));
            };
            let entry = StreamId {
                id,
                map: pairs(fields),
                ..StreamId::default()
            };
            claims.extend(self.to_claims(p, queue, vec![entry]).await?);
        }
        Ok(claims)
    }

    /// Waits up to `wait` for an entry of `queues` on one Redis: one
    /// blocking read over every stream (the sweep before made sure each has
    /// the group). Redis answers it with the one stream that got an entry;
    /// should it ever hold more than `max`, the rest go back.
    async fn wait_single(
        &self,
        consumer: &str,
        queues: &Queues,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<Claim>> {
        let keys = &self.shared.keys;
        let streams: Vec<(u16, &str, String)> = queues
            .iter()
            .flat_map(|q| (0..keys.partitions()).map(move |p| (p, q.as_str(), keys.queue(p, q))))
            .collect();
        let Some((_, _, first)) = streams.first() else {
            return Ok(Vec::new());
        };
        let mut conn = self
            .shared
            .conns
            .take_blocking(first)
            .await
            .map_err(backend_error)?;
        let names: Vec<&str> = streams.iter().map(|(_, _, key)| key.as_str()).collect();
        let reply: Option<StreamReadReply> = match redis::cmd("XREADGROUP")
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
            .await
        {
            Ok(reply) => reply,
            // A group vanished (Redis restarted without persistence): the
            // next claim's sweep makes it again.
            Err(e) if e.code() == Some("NOGROUP") => {
                self.shared.conns.give_back(conn);
                return Ok(Vec::new());
            }
            Err(e) => return Err(backend_error(e)),
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

    /// XAUTOCLAIM on queue `queue` of partition `p`: up to `max` entries
    /// idle for `min_idle`, leased to `consumer`.
    async fn auto_claim(
        &self,
        consumer: &str,
        p: u16,
        queue: &str,
        min_idle: Duration,
        max: usize,
    ) -> Result<Vec<StreamId>> {
        let stream = self.shared.keys.queue(p, queue);
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
    async fn claim(
        &self,
        consumer: &str,
        queues: &Queues,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<Claim>> {
        let max = max.max(1);
        if queues.is_empty() {
            tokio::time::sleep(wait.min(MAX_QUEUE_BLOCK)).await;
            return Ok(Vec::new());
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
        let claims = self.sweep(consumer, queues, max, None).await?;
        if !claims.is_empty() || wait.is_zero() {
            return Ok(claims);
        }
        match since {
            None => self.wait_single(consumer, queues, max, wait).await,
            Some(since) => match self.wait_wake(&since, wait).await? {
                Some(p) => self.sweep(consumer, queues, max, Some(p)).await,
                None => Ok(Vec::new()),
            },
        }
    }
    async fn renew(&self, consumer: &str, entry: &str) -> Result<bool> {
        self.if_leased(&scripts::RENEW, consumer, entry).await
    }
    async fn ack(&self, entry: &str) -> Result<()> {
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
        let mut claims = Vec::new();
        'partitions: for p in 0..self.shared.keys.partitions() {
            for queue in queues {
                if claims.len() >= max {
                    break 'partitions;
                }
                let taken = self
                    .auto_claim(consumer, p, queue, min_idle, max - claims.len())
                    .await?;
                claims.extend(self.to_claims(p, queue, taken).await?);
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
        let mut stats = QueueStats {
            waiting: 0,
            pending: 0,
        };
        for p in 0..self.shared.keys.partitions() {
            let streams = self.streams_of(p).await?;
            if streams.is_empty() {
                continue;
            }
            let mut pipe = redis::pipe();
            for (_, stream) in &streams {
                pipe.cmd("XLEN").arg(stream);
                // No group yet (never claimed from): nothing pending.
                pipe.cmd("XINFO").arg("GROUPS").arg(stream);
            }
            let replies: Vec<Value> = pipe
                .query_async(&mut self.shared.conns.command())
                .await
                .map_err(backend_error)?;
            for pair in replies.chunks(2) {
                let len = match pair.first() {
                    Some(Value::Int(n)) => u64::try_from(*n).unwrap_or(0),
                    _ => 0,
                };
                let pending = pair.get(1).map_or(0, group_pending);
                stats.waiting += len.saturating_sub(pending);
                stats.pending += pending;
            }
        }
        Ok(stats)
    }
}

/// The `pending` count of the `workers` group in an `XINFO GROUPS` reply
/// (0 when there is no such group).
fn group_pending(reply: &Value) -> u64 {
    let Value::Array(groups) = reply else {
        return 0;
    };
    groups
        .iter()
        .filter_map(|group| {
            let fields: Vec<(String, Value)> = match group {
                Value::Map(map) => map
                    .iter()
                    .filter_map(|(k, v)| Some((text(k.clone())?, v.clone())))
                    .collect(),
                Value::Array(items) => items
                    .chunks(2)
                    .filter_map(|kv| Some((text(kv.first()?.clone())?, kv.get(1)?.clone())))
                    .collect(),
                _ => return None,
            };
            let is_ours = fields
                .iter()
                .any(|(k, v)| k == "name" && text(v.clone()).as_deref() == Some(WORKERS_GROUP));
            if !is_ours {
                return None;
            }
            fields.into_iter().find_map(|(k, v)| match (k.as_str(), v) {
                ("pending", Value::Int(n)) => u64::try_from(n).ok(),
                _ => None,
            })
        })
        .sum()
}

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
