//! `RedisBackend` as a [`JobQueue`], on a Redis Streams consumer group
//! (`workers`): entries are delivered to one consumer each, stay pending
//! until acked, and are taken over with XAUTOCLAIM once idle past the
//! visibility timeout.

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

impl RedisBackend {
    /// Creates the consumer group (and the stream) unless it exists. Reading
    /// from id 0 means entries added before the group existed are delivered.
    pub(crate) async fn ensure_group(&self) -> Result<(), RedisError> {
        let mut conn = self.shared.conns.command();
        let created = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(self.shared.keys.queue())
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

    /// Turns stream entries into claims; entries that are not jobwire's
    /// shape are acked and dropped with a warning rather than handed out.
    async fn to_claims(&self, entries: Vec<StreamId>) -> Result<Vec<Claim>> {
        let mut claims = Vec::with_capacity(entries.len());
        for entry in entries {
            let job = field(&entry, "job").and_then(|s| s.parse::<JobId>().ok());
            match (job, field(&entry, "kind")) {
                (Some(job_id), Some(kind)) => claims.push(Claim {
                    entry: entry.id,
                    job_id,
                    kind,
                }),
                _ => {
                    tracing::warn!(entry = %entry.id, "dropping a malformed queue entry");
                    self.ack(&entry.id).await?;
                }
            }
        }
        Ok(claims)
    }

    /// Runs a script that acts on an entry only while `consumer` holds it;
    /// `false` when it does not.
    async fn if_leased(&self, script: &redis::Script, consumer: &str, entry: &str) -> Result<bool> {
        let mut conn = self.shared.conns.command();
        let done: i64 = script
            .key(self.shared.keys.queue())
            .arg(WORKERS_GROUP)
            .arg(consumer)
            .arg(entry)
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
        let mut conn = self.shared.conns.command();
        let deleted: i64 = scripts::PRUNE
            .key(self.shared.keys.queue())
            .arg(WORKERS_GROUP)
            .arg(consumer)
            .arg(limit.as_millis() as u64)
            .invoke_async(&mut conn)
            .await
            .map_err(backend_error)?;
        if deleted > 0 {
            tracing::info!(deleted, idle_over = ?limit, "removed idle queue consumers of departed workers");
        }
        Ok(())
    }
}

#[async_trait]
impl JobQueue for RedisBackend {
    async fn claim(&self, consumer: &str, max: usize, wait: Duration) -> Result<Vec<Claim>> {
        let wait = wait.min(MAX_QUEUE_BLOCK);
        let mut conn = self
            .shared
            .conns
            .take_blocking()
            .await
            .map_err(backend_error)?;
        let mut read = redis::cmd("XREADGROUP");
        read.arg("GROUP")
            .arg(WORKERS_GROUP)
            .arg(consumer)
            .arg("COUNT")
            .arg(max.max(1));
        // BLOCK 0 would block forever; no BLOCK at all is a plain poll.
        if !wait.is_zero() {
            read.arg("BLOCK").arg(wait.as_millis().max(1) as u64);
        }
        read.arg("STREAMS").arg(self.shared.keys.queue()).arg(">");
        let reply: Option<StreamReadReply> = match read.query_async(&mut conn).await {
            Ok(reply) => reply,
            // The group vanished (Redis restarted without persistence): make
            // it again; the next claim finds it.
            Err(e) if e.code() == Some("NOGROUP") => {
                self.shared.conns.give_back(conn);
                self.ensure_group().await.map_err(backend_error)?;
                return Ok(Vec::new());
            }
            Err(e) => return Err(backend_error(e)),
        };
        self.shared.conns.give_back(conn);
        self.to_claims(read_entries(reply)).await
    }
    async fn renew(&self, consumer: &str, entry: &str) -> Result<bool> {
        self.if_leased(&scripts::RENEW, consumer, entry).await
    }
    async fn ack(&self, entry: &str) -> Result<()> {
        let queue = self.shared.keys.queue();
        let mut conn = self.shared.conns.command();
        // XDEL too: the queue stream only holds work not yet done.
        redis::pipe()
            .atomic()
            .cmd("XACK")
            .arg(&queue)
            .arg(WORKERS_GROUP)
            .arg(entry)
            .ignore()
            .cmd("XDEL")
            .arg(&queue)
            .arg(entry)
            .ignore()
            .query_async::<()>(&mut conn)
            .await
            .map_err(backend_error)
    }
    async fn release(&self, consumer: &str, entry: &str) -> Result<bool> {
        self.if_leased(&scripts::RELEASE, consumer, entry).await
    }
    async fn take_over_idle(
        &self,
        consumer: &str,
        min_idle: Duration,
        max: usize,
    ) -> Result<Vec<Claim>> {
        let max = max.max(1);
        let mut conn = self.shared.conns.command();
        let mut cursor = "0-0".to_owned();
        let mut taken = Vec::new();
        loop {
            let reply: StreamAutoClaimReply = redis::cmd("XAUTOCLAIM")
                .arg(self.shared.keys.queue())
                .arg(WORKERS_GROUP)
                .arg(consumer)
                .arg(min_idle.as_millis() as u64)
                .arg(&cursor)
                .arg("COUNT")
                .arg(max - taken.len())
                .query_async(&mut conn)
                .await
                .map_err(backend_error)?;
            taken.extend(reply.claimed);
            cursor = reply.next_stream_id;
            if cursor == "0-0" || taken.len() >= max {
                break;
            }
        }
        let claims = self.to_claims(taken).await?;
        // Housekeeping only: a failure here (a Redis user without XINFO, a
        // blip) must not lose the entries just taken over above.
        if let Err(e) = self.prune_consumers(consumer, min_idle).await {
            tracing::warn!(error = %e, "could not prune idle queue consumers");
        }
        Ok(claims)
    }
    /// The consumer's own pending entries (XREADGROUP from id 0), oldest
    /// first. Entries deleted meanwhile come back without fields and are
    /// acked away (`to_claims`).
    async fn pending_of(&self, consumer: &str, max: usize) -> Result<Vec<Claim>> {
        let mut conn = self.shared.conns.command();
        let reply: Option<StreamReadReply> = match redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg(WORKERS_GROUP)
            .arg(consumer)
            .arg("COUNT")
            .arg(max.max(1))
            .arg("STREAMS")
            .arg(self.shared.keys.queue())
            .arg("0")
            .query_async(&mut conn)
            .await
        {
            Ok(reply) => reply,
            Err(e) if e.code() == Some("NOGROUP") => return Ok(Vec::new()),
            Err(e) => return Err(backend_error(e)),
        };
        self.to_claims(read_entries(reply)).await
    }
    async fn queue_stats(&self) -> Result<QueueStats> {
        let queue = self.shared.keys.queue();
        let mut conn = self.shared.conns.command();
        let (len, pending): (u64, Value) = redis::pipe()
            .cmd("XLEN")
            .arg(&queue)
            .cmd("XPENDING")
            .arg(&queue)
            .arg(WORKERS_GROUP)
            .query_async(&mut conn)
            .await
            .map_err(backend_error)?;
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
        Ok(QueueStats {
            waiting: len.saturating_sub(pending),
            pending,
        })
    }
}

fn field(entry: &StreamId, name: &str) -> Option<String> {
    match entry.map.get(name)? {
        Value::BulkString(bytes) => String::from_utf8(bytes.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    }
}

/// The entries of an XREADGROUP reply on the one queue stream (none when
/// the read timed out).
fn read_entries(reply: Option<StreamReadReply>) -> Vec<StreamId> {
    reply
        .into_iter()
        .flat_map(|r| r.keys)
        .flat_map(|k| k.ids)
        .collect()
}
