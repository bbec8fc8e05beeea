//! `MemoryBackend`: the whole backend contract inside one process, for
//! `jobwire dev` and single-node `jobwire serve --memory`.
//!
//! One `std::sync::Mutex` guards all state: every operation is a few map
//! lookups and never awaits while holding it, so a blocking mutex is cheaper
//! than an async one (the reasoning of mini-redis `db.rs`). Waiting (live tail,
//! queue claim) happens outside the lock on a `watch` channel and a `Notify`.

mod live;
mod queue;

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::{watch, Notify};

use crate::backend::{
    Backend, BackendConfig, BackendError, CancelOutcome, Claim, EventsAfter, JobPage, ListQuery,
    LiveTail, PublishOutcome, QueueStats, Reclaimed, Result, ResyncReason, TailFrom,
};
use crate::event::{EventRecord, NewEvent};
use crate::ids::{Epoch, EventId, JobId, Timestamp};
use crate::job::{JobState, NewJob};
use crate::publish::{plan, plan_create, LogHead};
use crate::settle::{finish_cancel, settle_reclaimed};

use live::{LiveFeed, MemoryTail};
use queue::Queue;

/// The in-process backend. Cheap to clone; clones share the same data.
#[derive(Clone, Debug)]
pub struct MemoryBackend {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    config: BackendConfig,
    inner: Mutex<Inner>,
    /// The live feed's next position, for tails to wait on.
    live_tx: watch::Sender<u64>,
    /// Wakes workers blocked in `claim` when an entry is enqueued.
    queue_ready: Notify,
}

#[derive(Debug, Default)]
struct Inner {
    jobs: HashMap<JobId, StoredJob>,
    /// Listing indexes: job ids sort by creation time (ULIDs).
    all_jobs: BTreeSet<JobId>,
    by_owner: HashMap<String, BTreeSet<JobId>>,
    live: LiveFeed,
    queue: Queue,
}

#[derive(Debug)]
struct StoredJob {
    head: LogHead,
    log: VecDeque<EventRecord>,
    cancel: bool,
}

impl StoredJob {
    fn snapshot(&self) -> JobState {
        let mut state = self.head.state.clone();
        state.cancel_requested = self.cancel;
        state
    }

    fn expired(&self, now: Timestamp) -> bool {
        self.head.state.expires_at.is_some_and(|at| at <= now)
    }
}

impl Inner {
    /// The job, unless it has expired (in which case it is removed now).
    fn live_job(&mut self, id: &JobId) -> Result<&mut StoredJob> {
        let expired = match self.jobs.get(id) {
            None => return Err(BackendError::NotFound(id.clone())),
            Some(job) => job.expired(Timestamp::now()),
        };
        if expired {
            self.remove(id);
            return Err(BackendError::NotFound(id.clone()));
        }
        self.jobs
            .get_mut(id)
            .ok_or_else(|| BackendError::NotFound(id.clone()))
    }

    fn remove(&mut self, id: &JobId) -> Option<StoredJob> {
        let job = self.jobs.remove(id)?;
        self.all_jobs.remove(id);
        if let Some(set) = self.by_owner.get_mut(&job.head.state.owner) {
            set.remove(id);
            if set.is_empty() {
                self.by_owner.remove(&job.head.state.owner);
            }
        }
        Some(job)
    }
}

impl MemoryBackend {
    /// An empty backend with the given limits.
    pub fn new(config: BackendConfig) -> MemoryBackend {
        let capacity = config
            .live_maxlen
            .saturating_mul(usize::from(config.partitions.max(1)));
        let inner = Inner {
            live: LiveFeed::new(capacity.max(1)),
            ..Inner::default()
        };
        MemoryBackend {
            shared: Arc::new(Shared {
                config,
                inner: Mutex::new(inner),
                live_tx: watch::channel(0).0,
                queue_ready: Notify::new(),
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave the maps half-updated
        // in a way later calls would trip over (each operation validates
        // before it mutates), so recovering the guard is sound.
        self.shared
            .inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[async_trait]
impl Backend for MemoryBackend {
    async fn create_job(&self, new: NewJob) -> Result<JobState> {
        let (state, event) =
            plan_create(&new, Epoch::generate(), Timestamp::now()).map_err(|source| {
                BackendError::Rejected {
                    job: new.id.clone(),
                    source,
                }
            })?;
        let position = {
            let mut inner = self.lock();
            if inner.jobs.contains_key(&new.id) {
                return Err(BackendError::AlreadyExists(new.id));
            }
            let position = inner.live.push(event.clone());
            inner.jobs.insert(
                new.id.clone(),
                StoredJob {
                    head: LogHead {
                        state: state.clone(),
                        last_n: 0,
                    },
                    log: VecDeque::from([event]),
                    cancel: false,
                },
            );
            inner.all_jobs.insert(new.id.clone());
            inner
                .by_owner
                .entry(new.owner.clone())
                .or_default()
                .insert(new.id.clone());
            if !new.external {
                inner.queue.enqueue(new.id.clone(), new.kind.clone());
            }
            position
        };
        self.shared.live_tx.send_replace(position);
        if !new.external {
            self.shared.queue_ready.notify_waiters();
        }
        Ok(state)
    }

    async fn publish(&self, job: &JobId, events: Vec<NewEvent>) -> Result<PublishOutcome> {
        let config = &self.shared.config;
        let (outcome, position) = {
            let mut inner = self.lock();
            let stored = inner.live_job(job)?;
            let plan = plan(&stored.head, &events, Timestamp::now(), config.retention)
                .map_err(|e| BackendError::from_plan(job, e))?;
            let appended = plan.events;
            stored.log.extend(appended.iter().cloned());
            while stored.log.len() > config.stream_maxlen.max(1) {
                stored.log.pop_front();
            }
            stored.head = LogHead {
                state: plan.state,
                last_n: plan.last_n,
            };
            let outcome = PublishOutcome {
                ids: appended.iter().map(|e| e.id).collect(),
                duplicates: plan.duplicates,
                cancel_requested: stored.cancel,
                last_event_id: stored.head.state.last_event_id,
            };
            let mut position = None;
            for event in appended {
                position = Some(inner.live.push(event));
            }
            (outcome, position)
        };
        if let Some(position) = position {
            self.shared.live_tx.send_replace(position);
        }
        Ok(outcome)
    }

    async fn job(&self, job: &JobId) -> Result<JobState> {
        Ok(self.lock().live_job(job)?.snapshot())
    }

    async fn events_after(
        &self,
        job: &JobId,
        after: EventId,
        epoch: Option<&Epoch>,
        limit: usize,
    ) -> Result<EventsAfter> {
        let mut inner = self.lock();
        let stored = inner.live_job(job)?;
        let state = &stored.head.state;
        if let Some(epoch) = epoch {
            if *epoch != state.epoch {
                return Ok(EventsAfter::Resync(ResyncReason::EpochChanged {
                    current: state.epoch.clone(),
                }));
            }
        }
        let last = state.last_event_id;
        if after > last {
            return Ok(EventsAfter::Resync(ResyncReason::Ahead { last }));
        }
        let oldest = stored.log.front().map_or(last.next(), |e| e.id);
        if after.next() < oldest {
            return Ok(EventsAfter::Resync(ResyncReason::Trimmed { oldest }));
        }
        // Ids are consecutive, so the event after `after` sits at a known index.
        let skip = (after.next().0 - oldest.0) as usize;
        Ok(EventsAfter::Events(
            stored.log.iter().skip(skip).take(limit).cloned().collect(),
        ))
    }

    async fn tail(&self, from: TailFrom) -> Result<Box<dyn LiveTail>> {
        let start = {
            let inner = self.lock();
            match from {
                TailFrom::Now => inner.live.next_position(),
                TailFrom::After(pos) => pos.0.parse::<u64>().map_err(|_| {
                    BackendError::Data(format!("not a memory live position: {:?}", pos.0))
                })?,
            }
        };
        Ok(Box::new(MemoryTail::new(
            self.clone(),
            start,
            self.shared.live_tx.subscribe(),
        )))
    }

    async fn list_jobs(&self, query: &ListQuery) -> Result<JobPage> {
        let mut inner = self.lock();
        let now = Timestamp::now();
        let limit = query.limit.max(1);
        let ids: Vec<JobId> = {
            let set = match &query.owner {
                Some(owner) => match inner.by_owner.get(owner) {
                    Some(set) => set,
                    None => {
                        return Ok(JobPage {
                            jobs: Vec::new(),
                            next_cursor: None,
                        })
                    }
                },
                None => &inner.all_jobs,
            };
            let newest_first: Box<dyn Iterator<Item = &JobId>> = match &query.cursor {
                Some(cursor) => Box::new(set.range(..cursor).rev()),
                None => Box::new(set.iter().rev()),
            };
            newest_first.cloned().collect()
        };
        let mut jobs = Vec::with_capacity(limit);
        let mut more = false;
        for id in ids {
            let Some(stored) = inner.jobs.get(&id) else {
                continue;
            };
            if stored.expired(now) {
                inner.remove(&id);
                continue;
            }
            if query.status.is_some_and(|s| s != stored.head.state.status) {
                continue;
            }
            if jobs.len() == limit {
                more = true;
                break;
            }
            jobs.push(stored.snapshot());
        }
        let next_cursor = if more {
            jobs.last().map(|j| j.id.clone())
        } else {
            None
        };
        Ok(JobPage { jobs, next_cursor })
    }

    async fn cancel(&self, job: &JobId) -> Result<CancelOutcome> {
        let state = {
            let mut inner = self.lock();
            let stored = inner.live_job(job)?;
            if !stored.head.state.status.is_terminal() {
                stored.cancel = true;
            }
            stored.snapshot()
        };
        finish_cancel(self, state).await
    }

    async fn delete(&self, job: &JobId) -> Result<()> {
        match self.lock().remove(job) {
            Some(_) => Ok(()),
            None => Err(BackendError::NotFound(job.clone())),
        }
    }

    async fn claim(&self, consumer: &str, max: usize, wait: Duration) -> Result<Vec<Claim>> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            // Register interest before looking, so an enqueue between the
            // look and the wait still wakes us.
            let ready = self.shared.queue_ready.notified();
            tokio::pin!(ready);
            ready.as_mut().enable();
            let claims = self.lock().queue.claim(consumer, max.max(1));
            if !claims.is_empty() {
                return Ok(claims);
            }
            if tokio::time::timeout_at(deadline, ready).await.is_err() {
                return Ok(Vec::new());
            }
        }
    }

    async fn renew(&self, consumer: &str, entry: &str) -> Result<bool> {
        Ok(self.lock().queue.renew(consumer, entry))
    }

    async fn ack(&self, entry: &str) -> Result<()> {
        self.lock().queue.ack(entry);
        Ok(())
    }

    async fn reclaim_idle(
        &self,
        consumer: &str,
        min_idle: Duration,
        max_attempts: u32,
        max: usize,
    ) -> Result<Vec<Reclaimed>> {
        let taken = self.lock().queue.take_idle(consumer, min_idle, max.max(1));
        let mut settled = Vec::with_capacity(taken.len());
        for claim in taken {
            settled.push(settle_reclaimed(self, claim, max_attempts).await?);
        }
        Ok(settled)
    }

    async fn queue_stats(&self) -> Result<QueueStats> {
        Ok(self.lock().queue.stats())
    }

    async fn ping(&self) -> Result<()> {
        Ok(())
    }
}
