//! Fleet-wide queue limits on Redis: the limits themselves (one hash,
//! `<prefix>:limits`), and the slots a claim of a limited queue takes
//! (`lua/limit_take.lua`), renews and frees (`lua/limit_slot.lua`).
//!
//! A claim of a limited queue first takes as many slots as it wants and
//! the limits leave, then claims at most that many entries, and gives back
//! the slots it found no entry for. Each entry claimed keeps its slot
//! (remembered here, by entry) until it is acked or released; renewing the
//! entry's lease renews the slot's. A worker that dies stops renewing, so
//! its slots lapse with its lease and others may start jobs again.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::Duration;

use jobwire_core::{BackendError, Claim, QueueLimits};

use crate::connection::backend_error;
use crate::{scripts, RedisBackend, Result};

/// A claimed entry's slot.
#[derive(Debug, Clone)]
struct Slot {
    queue: String,
    token: String,
    lease: Duration,
}

/// The slots this process's claims hold, by entry.
#[derive(Debug, Default)]
pub(crate) struct Slots(Mutex<HashMap<String, Slot>>);

impl Slots {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, Slot>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl RedisBackend {
    /// Every queue's limits, by name.
    pub(crate) async fn read_limits(&self) -> Result<BTreeMap<String, QueueLimits>> {
        let all: Vec<(String, String)> = redis::cmd("HGETALL")
            .arg(self.shared.keys.limits())
            .query_async(&mut self.shared.conns.command())
            .await
            .map_err(backend_error)?;
        let mut limits = BTreeMap::new();
        for (queue, json) in all {
            match serde_json::from_str::<QueueLimits>(&json) {
                Ok(l) => {
                    limits.insert(queue, l);
                }
                Err(e) => {
                    tracing::warn!(queue = %queue, error = %e, "ignoring limits this version cannot read");
                }
            }
        }
        Ok(limits)
    }

    pub(crate) async fn write_limits(&self, queue: &str, limits: &QueueLimits) -> Result<()> {
        let key = self.shared.keys.limits();
        let mut conn = self.shared.conns.command();
        if limits.is_none() {
            redis::cmd("HDEL")
                .arg(&key)
                .arg(queue)
                .query_async::<()>(&mut conn)
                .await
                .map_err(backend_error)?;
        } else {
            let json =
                serde_json::to_string(limits).map_err(|e| BackendError::Data(e.to_string()))?;
            redis::cmd("HSET")
                .arg(&key)
                .arg(queue)
                .arg(json)
                .query_async::<()>(&mut conn)
                .await
                .map_err(backend_error)?;
        }
        Ok(())
    }

    /// Up to `want` slots of `queue`, each held for `lease`.
    pub(crate) async fn take_slots(
        &self,
        consumer: &str,
        queue: &str,
        limits: &QueueLimits,
        want: usize,
        lease: Duration,
    ) -> Result<Vec<String>> {
        let (running, starts) = self.shared.keys.limit_sets(queue);
        let (rate_max, per) = limits
            .rate
            .map_or((0, 0), |r| (r.max, r.per.as_millis() as u64));
        scripts::LIMIT_TAKE
            .key(running)
            .key(starts)
            .arg(lease.as_millis() as u64)
            .arg(want)
            .arg(limits.concurrency.unwrap_or(0))
            .arg(rate_max)
            .arg(per)
            .arg(format!("{consumer}:{:x}:", rand::random::<u64>()))
            .invoke_async(&mut self.shared.conns.command())
            .await
            .map_err(backend_error)
    }

    /// Gives each claim of `queue` one of `tokens`, and back the rest.
    pub(crate) async fn keep_slots(
        &self,
        queue: &str,
        claims: &[Claim],
        mut tokens: Vec<String>,
        lease: Duration,
    ) -> Result<()> {
        let unused = tokens.split_off(claims.len().min(tokens.len()));
        {
            let mut slots = self.shared.slots.map();
            for (claim, token) in claims.iter().zip(tokens) {
                slots.insert(
                    claim.entry.clone(),
                    Slot {
                        queue: queue.to_owned(),
                        token,
                        lease,
                    },
                );
            }
        }
        if !unused.is_empty() {
            self.slot_op(queue, "return", Duration::ZERO, &unused)
                .await?;
        }
        Ok(())
    }

    /// Renews the slot of `entry`, if it holds one.
    pub(crate) async fn renew_slot(&self, entry: &str) -> Result<()> {
        let slot = self.shared.slots.map().get(entry).cloned();
        match slot {
            Some(slot) => {
                self.slot_op(&slot.queue, "renew", slot.lease, &[slot.token])
                    .await
            }
            None => Ok(()),
        }
    }

    /// Frees the slot of `entry` (acked or released), if it holds one.
    pub(crate) async fn free_slot(&self, entry: &str) -> Result<()> {
        let slot = self.shared.slots.map().remove(entry);
        match slot {
            Some(slot) => {
                self.slot_op(&slot.queue, "free", Duration::ZERO, &[slot.token])
                    .await
            }
            None => Ok(()),
        }
    }

    async fn slot_op(
        &self,
        queue: &str,
        op: &str,
        lease: Duration,
        tokens: &[String],
    ) -> Result<()> {
        let (running, starts) = self.shared.keys.limit_sets(queue);
        let mut invocation = scripts::LIMIT_SLOT.prepare_invoke();
        invocation
            .key(running)
            .key(starts)
            .arg(op)
            .arg(lease.as_millis() as u64);
        for token in tokens {
            invocation.arg(token);
        }
        invocation
            .invoke_async::<i64>(&mut self.shared.conns.command())
            .await
            .map_err(backend_error)?;
        Ok(())
    }
}
