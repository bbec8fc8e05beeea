//! `RedisBackend` as a [`LiveFeed`]: blocking `XREAD`s of the partitions'
//! live streams, each on a dedicated connection. On one Redis a single read
//! covers every partition. On a cluster a command may not span slots (even
//! slots of one node), so each partition has its own reader, connected to
//! the master that owns its slot; the tail hands out whichever batch comes
//! first.
//!
//! Positions are the last stream id read per partition. After a connection
//! error a reader reconnects and continues from them, so a Redis blip loses
//! nothing; if entries after a position may have been trimmed meanwhile
//! (the stream's first entry is past it), the tail reports a `Gap` so
//! readers re-read the affected jobs' logs.
//!
//! Each reader also learns which Redis history it reads (`master_replid`,
//! new whenever a server starts or a replica is promoted). When it changed,
//! the streams may have lost entries, or hold entries with ids below the
//! positions (a rolled-back stream, a promoted replica with another clock):
//! the reader's positions move to the streams' current ends and the tail
//! reports a `Gap`, so the Hub re-reads every watched job's log. A slot
//! moved to another master by resharding counts as such a change: slower
//! once, never wrong.
//!
//! On a cluster one partition's reader failing (its master down until a
//! replica takes over) does not hold up the others: it retries by itself,
//! with a backoff, and reports nothing but its gap once it reads again.
//!
//! A live entry holds one field per event, named by the job's epoch (see
//! `lua/publish.lua`); each record carries it.

use std::cmp::Ordering;
use std::time::Duration;

use async_trait::async_trait;
use futures_util::future::BoxFuture;
use futures_util::stream::{FuturesUnordered, StreamExt};
use jobwire_core::{
    BackendError, Backoff, Epoch, EventRecord, LiveBatch, LiveFeed, LivePosition, LiveTail,
    TailFrom,
};
use redis::Value;

use crate::connection::backend_error;
use crate::jobs::corrupt;
use crate::tail_connection::{xread_reply, TailConnection, XreadCommand};
use crate::{RedisBackend, Result};

/// How long one read blocks in Redis.
const BLOCK: Duration = Duration::from_secs(1);
/// Entries (publish batches) read per partition per call.
const COUNT: usize = 1024;

/// A live tail over all partitions.
pub(crate) struct RedisTail {
    /// Last id handed out, per partition.
    ids: Vec<String>,
    /// Readers at work (each owns its connection while it reads).
    reading: FuturesUnordered<BoxFuture<'static, (Reader, Result<LiveBatch>)>>,
    /// Whether reader errors are the caller's (one reader) or handled here.
    single: bool,
}

impl std::fmt::Debug for RedisTail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisTail")
            .field("ids", &self.ids)
            .field("readers", &self.reading.len())
            .finish()
    }
}

/// One blocking reader: some partitions, read on one dedicated connection.
struct Reader {
    backend: RedisBackend,
    /// The partitions read, and their streams and positions (same order).
    partitions: Vec<u16>,
    streams: Vec<String>,
    ids: Vec<String>,
    /// The `XREAD` of `streams`, written once.
    command: XreadCommand,
    conn: Option<TailConnection>,
    /// The epoch of the last live event read: consecutive events of one
    /// job (and of jobs of one history) share it rather than each parsing
    /// and allocating their own.
    epoch: Option<Epoch>,
    /// Check for trimmed entries before the next read.
    check_gap: bool,
    /// The Redis history (`master_replid`) the positions were taken in;
    /// `None` when not known (a position handed over from another tail).
    history: Option<String>,
    /// Failed reads in a row: the reader waits before retrying (only a
    /// cluster's; one reader's errors go to the caller, who waits).
    backoff: Option<Backoff>,
    failing: bool,
}

#[async_trait]
impl LiveFeed for RedisBackend {
    async fn tail(&self, from: TailFrom) -> Result<Box<dyn LiveTail>> {
        let keys = &self.shared.keys;
        let count = keys.partitions();
        let groups: Vec<Vec<u16>> = if self.shared.conns.clustered() {
            (0..count).map(|p| vec![p]).collect()
        } else {
            vec![(0..count).collect()]
        };
        let single = groups.len() == 1;
        let streams = |group: &[u16]| group.iter().map(|&p| keys.live(p)).collect::<Vec<_>>();
        let (ids, start): (Vec<String>, Vec<(Vec<String>, bool, Option<String>)>) = match from {
            TailFrom::Now => {
                let ends: Vec<(String, Vec<String>)> = futures_util::future::try_join_all(
                    groups.iter().map(|group| ends(self, streams(group))),
                )
                .await?;
                let mut ids = vec![String::new(); usize::from(count)];
                let mut start = Vec::new();
                for (group, (history, group_ids)) in groups.iter().zip(ends) {
                    for (&p, id) in group.iter().zip(&group_ids) {
                        ids[usize::from(p)] = id.clone();
                    }
                    start.push((group_ids, false, Some(history)));
                }
                (ids, start)
            }
            TailFrom::After(LivePosition(position)) => {
                let ids: Vec<String> = position.split(',').map(str::to_owned).collect();
                if ids.len() != usize::from(count) || ids.iter().any(|id| parse_id(id).is_none()) {
                    return Err(BackendError::Data(format!(
                        "live position {position:?} does not fit {count} partitions"
                    )));
                }
                let start = groups
                    .iter()
                    .map(|group| {
                        let group_ids = group.iter().map(|&p| ids[usize::from(p)].clone());
                        (group_ids.collect(), true, None)
                    })
                    .collect();
                (ids, start)
            }
        };
        let reading = FuturesUnordered::new();
        for (group, (group_ids, check_gap, history)) in groups.into_iter().zip(start) {
            let group_streams = streams(&group);
            let reader = Reader {
                backend: self.clone(),
                command: XreadCommand::new(COUNT, BLOCK, &group_streams),
                streams: group_streams,
                partitions: group,
                ids: group_ids,
                conn: None,
                epoch: None,
                check_gap,
                history,
                backoff: (!single).then(|| Backoff::new(READER_BACKOFF.0, READER_BACKOFF.1)),
                failing: false,
            };
            reading.push(reader.read_next());
        }
        Ok(Box::new(RedisTail {
            ids,
            reading,
            single,
        }))
    }
}

/// A cluster reader's retry delays after failed reads (first, longest).
const READER_BACKOFF: (Duration, Duration) = (Duration::from_millis(50), Duration::from_secs(1));

/// The Redis history of the node that holds `streams`, and the id of each
/// stream's newest entry ("0-0" for an empty stream), read in one pipeline:
/// one server answers all of it.
async fn ends(backend: &RedisBackend, streams: Vec<String>) -> Result<(String, Vec<String>)> {
    let mut conn = backend.shared.conns.command();
    read_ends(&streams, &mut conn).await
}

async fn read_ends(
    streams: &[String],
    conn: &mut impl redis::aio::ConnectionLike,
) -> Result<(String, Vec<String>)> {
    let mut pipe = redis::pipe();
    // The stream first: on a cluster the pipeline goes to the node of the
    // first command that has a key, and INFO has none.
    for stream in streams {
        pipe.cmd("XREVRANGE")
            .arg(stream)
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(1);
    }
    pipe.cmd("INFO").arg("replication");
    let mut replies: Vec<Value> = pipe.query_async(conn).await.map_err(backend_error)?;
    let info = replies
        .pop()
        .ok_or_else(|| BackendError::Data("no INFO reply".to_owned()))?;
    let info: String = redis::from_redis_value(info).map_err(corrupt)?;
    let history = replication_id(&info)
        .ok_or_else(|| BackendError::Data("INFO replication has no master_replid".to_owned()))?;
    let ids = replies
        .into_iter()
        .map(|reply| {
            let entries: Vec<(String, Value)> = redis::from_redis_value(reply).map_err(corrupt)?;
            Ok(entries
                .into_iter()
                .next()
                .map_or_else(|| "0-0".to_owned(), |(id, _)| id))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok((history, ids))
}

/// `master_replid` out of `INFO replication`.
fn replication_id(info: &str) -> Option<String> {
    info.lines()
        .find_map(|line| line.trim().strip_prefix("master_replid:"))
        .map(str::to_owned)
}

impl Reader {
    /// Reads once, owning itself for the while (see `RedisTail::reading`).
    fn read_next(mut self) -> BoxFuture<'static, (Reader, Result<LiveBatch>)> {
        Box::pin(async move {
            if self.failing {
                if let Some(backoff) = self.backoff.as_mut() {
                    tokio::time::sleep(backoff.failed()).await;
                }
            }
            let result = self.read().await;
            match &result {
                Ok(_) => {
                    self.failing = false;
                    if let Some(backoff) = self.backoff.as_mut() {
                        backoff.reset();
                    }
                }
                Err(_) => {
                    // Start over on a new connection next time, and check
                    // then whether the outage cost us entries.
                    self.conn = None;
                    self.check_gap = true;
                    self.failing = true;
                }
            }
            (self, result)
        })
    }

    /// Whether entries after some partition's position may have been
    /// trimmed. Asked on the reader's own connection: the shared ones may
    /// not have noticed an outage yet.
    async fn gap(&mut self) -> Result<bool> {
        let Some(conn) = self.conn.as_mut() else {
            return Ok(false);
        };
        let mut pipe = redis::pipe();
        for stream in &self.streams {
            pipe.cmd("XRANGE")
                .arg(stream)
                .arg("-")
                .arg("+")
                .arg("COUNT")
                .arg(1);
        }
        let replies: Vec<Vec<(String, Value)>> =
            pipe.query_async(conn).await.map_err(backend_error)?;
        let firsts = replies
            .into_iter()
            .map(|r| r.into_iter().next().map(|(id, _)| id));
        Ok(self.ids.iter().zip(firsts).any(|(ours, first)| {
            first.is_some_and(|first| compare_ids(&first, ours) == Ordering::Greater)
        }))
    }

    async fn read(&mut self) -> Result<LiveBatch> {
        if self.conn.is_none() {
            let mut conn = self
                .backend
                .shared
                .conns
                .tail_connection(&self.streams[0], BLOCK)
                .await
                .map_err(backend_error)?;
            let (history, ends) = read_ends(&self.streams, &mut conn).await?;
            self.conn = Some(conn);
            let known = self.history.replace(history.clone());
            if known.is_some_and(|known| known != history) {
                tracing::warn!(
                    "Redis restarted or failed over (a new replication id): re-reading the watched jobs' logs"
                );
                self.ids = ends;
                self.check_gap = false;
                return Ok(LiveBatch::Gap);
            }
        }
        if self.check_gap {
            let gap = self.gap().await?;
            self.check_gap = false;
            if gap {
                return Ok(LiveBatch::Gap);
            }
        }
        let Some(conn) = self.conn.as_mut() else {
            return Ok(LiveBatch::Events(Vec::new()));
        };
        // Taken apart in place (an entry repeats its field once per event
        // of the batch, which a map-shaped stream reply would collapse).
        let reply = conn
            .xread(&self.command, &self.ids)
            .await
            .map_err(backend_error)?;
        let mut events = Vec::new();
        let mut deleted = Vec::new();
        // Events and deletions go out in separate batches, in feed order:
        // the read stops at the first entry of the other sort (its position
        // stays before it, so the next read starts there).
        'read: for stream in xread_reply(&reply).map_err(backend_error)? {
            let Some(slot) = self.streams.iter().position(|s| s.as_bytes() == stream.key) else {
                continue;
            };
            if stream.entries.len() >= COUNT {
                // A full batch: this reader may be falling behind the trimming.
                self.check_gap = true;
            }
            for entry in stream.entries {
                let deletion = entry
                    .fields
                    .iter()
                    .find(|(name, _)| *name == DELETED_FIELD)
                    .map(|(_, job)| String::from_utf8_lossy(job).parse::<jobwire_core::JobId>());
                match deletion {
                    Some(_) if !events.is_empty() => break 'read,
                    None if !deleted.is_empty() => break 'read,
                    Some(Ok(job)) => deleted.push(job),
                    Some(Err(e)) => {
                        tracing::error!(entry = %entry.id, error = %e, "skipping an unreadable deletion");
                    }
                    None => {
                        for (name, value) in entry.fields {
                            match record(name, value, &mut self.epoch) {
                                Ok(record) => events.push(record),
                                Err(e) => {
                                    tracing::error!(entry = %entry.id, error = %e, "skipping unreadable live event")
                                }
                            }
                        }
                    }
                }
                let position = &mut self.ids[slot];
                position.clear();
                position.push_str(entry.id);
            }
        }
        if !deleted.is_empty() {
            return Ok(LiveBatch::Deleted(deleted));
        }
        Ok(LiveBatch::Events(events))
    }
}

#[async_trait]
impl LiveTail for RedisTail {
    async fn next(&mut self) -> Result<LiveBatch> {
        loop {
            let Some((reader, result)) = self.reading.next().await else {
                return Err(BackendError::Unavailable(
                    "the live tail has no reader".to_owned(),
                ));
            };
            // Positions move only with what is handed out.
            for (&p, id) in reader.partitions.iter().zip(&reader.ids) {
                self.ids[usize::from(p)].clone_from(id);
            }
            self.reading.push(reader.read_next());
            match result {
                Err(e) if !self.single => {
                    tracing::warn!(error = %e, "live feed read failed on one partition: retrying it");
                }
                other => return other,
            }
        }
    }

    fn position(&self) -> LivePosition {
        LivePosition(self.ids.join(","))
    }
}

/// The field of a live entry that says a job was deleted (its value: the
/// job's id; `lua/delete.lua`). No epoch can be named so.
const DELETED_FIELD: &[u8] = b"!deleted";

/// One live event: its field's name (the job's epoch) and value (the
/// event's wire JSON). Entries written before fields were named by epoch
/// are named `e`, which is never a job's epoch: a reader takes such an
/// event for one of another history and re-reads the job's log (slower,
/// never wrong). `last` is the epoch of the event read before, reused when
/// this one's is the same.
fn record(name: &[u8], value: &[u8], last: &mut Option<Epoch>) -> Result<EventRecord> {
    let name = std::str::from_utf8(name).map_err(corrupt)?;
    let epoch = match last {
        Some(epoch) if epoch.as_str() == name => epoch.clone(),
        _ => last.insert(name.parse().map_err(corrupt)?).clone(),
    };
    // Copied out of the reply (see `tail_connection.rs`): the only copy of
    // the event's bytes on their way to the sockets.
    EventRecord::from_bytes(bytes::Bytes::copy_from_slice(value), epoch).map_err(corrupt)
}

fn parse_id(id: &str) -> Option<(u64, u64)> {
    let (ms, seq) = id.split_once('-').unwrap_or((id, "0"));
    Some((ms.parse().ok()?, seq.parse().ok()?))
}

fn compare_ids(a: &str, b: &str) -> Ordering {
    parse_id(a).cmp(&parse_id(b))
}
