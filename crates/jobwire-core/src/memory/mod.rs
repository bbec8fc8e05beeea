//! `MemoryBackend`: the whole backend contract inside one process, for
//! `jobwire dev` and single-node `jobwire serve --memory`.
//!
//! # Locking
//!
//! Three kinds of `std::sync::Mutex`, always taken in this order: the index
//! (job map, listings, queue), then one job, then the live feed. Each job has
//! its own lock so publishes to different jobs plan and serialize in
//! parallel; the index and live-feed locks cover only map operations. No lock
//! is held across an `.await`, so blocking mutexes are cheaper than async ones
//! (the reasoning of mini-redis `db.rs`). Waiting (live tail, queue claim)
//! happens outside the locks on a `watch` channel and a `Notify`.

mod live;
mod queue;

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::{watch, Notify};

use crate::backend::{
    Backend, BackendConfig, BackendError, CancelOutcome, Claim, EventsAfter, JobCounts, JobPage,
    ListQuery, LiveTail, PublishOutcome, QueueStats, Reclaimed, Result, ResyncReason, StoreHealth,
    TailFrom,
};
use crate::event::{EventRecord, NewEvent};
use crate::ids::{Epoch, EventId, JobId, Timestamp};
use crate::job::{JobState, JobStatus, NewJob};
use crate::publish::{plan, plan_new_job, LogHead};
use crate::settle::{finish_cancel, settle_all};

use live::{LiveFeed, MemoryTail};
use queue::Queue;

/// The smallest live feed, in events.
const MIN_LIVE_EVENTS: usize = 65_536;

/// The in-process backend. Cheap to clone; clones share the same data.
#[derive(Clone, Debug)]
pub struct MemoryBackend {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    config: BackendConfig,
    index: Mutex<Index>,
    live: Mutex<LiveFeed>,
    /// The live feed's next position, for tails to wait on.
    live_tx: watch::Sender<u64>,
    /// Wakes workers blocked in `claim` when an entry is enqueued.
    queue_ready: Notify,
    /// Jobs by status, kept as the Redis backend keeps them.
    counts: Mutex<JobCounts>,
    /// Unfinished jobs per owner (the per-user quota).
    unfinished: Mutex<HashMap<String, u64>>,
}

#[derive(Debug, Default)]
struct Index {
    jobs: HashMap<JobId, Arc<Mutex<StoredJob>>>,
    /// Listing indexes: job ids sort by creation time (ULIDs).
    all_jobs: BTreeSet<JobId>,
    by_owner: HashMap<String, BTreeSet<JobId>>,
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

impl Index {
    fn remove(&mut self, id: &JobId, owner: &str) -> bool {
        if self.jobs.remove(id).is_none() {
            return false;
        }
        self.all_jobs.remove(id);
        if let Some(set) = self.by_owner.get_mut(owner) {
            set.remove(id);
            if set.is_empty() {
                self.by_owner.remove(owner);
            }
        }
        true
    }
}

/// A poisoned lock is recovered: every operation validates before it
/// mutates, so a panic elsewhere cannot leave half-updated data behind.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl MemoryBackend {
    /// An empty backend with the given limits.
    pub fn new(config: BackendConfig) -> MemoryBackend {
        // One feed for all partitions, counted in events (Redis counts
        // publish batches); records are shared pointers, so be generous.
        let capacity = config
            .live_maxlen
            .saturating_mul(usize::from(config.partitions.max(1)))
            .max(MIN_LIVE_EVENTS);
        MemoryBackend {
            shared: Arc::new(Shared {
                config,
                index: Mutex::new(Index::default()),
                live: Mutex::new(LiveFeed::new(capacity.max(1))),
                live_tx: watch::channel(0).0,
                queue_ready: Notify::new(),
                counts: Mutex::new(JobCounts::default()),
                unfinished: Mutex::new(HashMap::new()),
            }),
        }
    }

    fn index(&self) -> MutexGuard<'_, Index> {
        lock(&self.shared.index)
    }

    fn live(&self) -> MutexGuard<'_, LiveFeed> {
        lock(&self.shared.live)
    }

    /// Runs `f` on a job under its lock, unless the job is missing or has
    /// expired (an expired job is removed on the way).
    fn with_job<T>(&self, id: &JobId, f: impl FnOnce(&mut StoredJob) -> Result<T>) -> Result<T> {
        let job = self
            .index()
            .jobs
            .get(id)
            .cloned()
            .ok_or_else(|| BackendError::NotFound(id.clone()))?;
        let mut stored = lock(&job);
        if stored.expired(Timestamp::now()) {
            let owner = stored.head.state.owner.clone();
            drop(stored);
            self.index().remove(id, &owner);
            return Err(BackendError::NotFound(id.clone()));
        }
        f(&mut stored)
    }

    /// Counts a job of `owner` moving from `from` (none: created) to `to`
    /// (none: deleted).
    fn count_move(&self, owner: &str, from: Option<JobStatus>, to: Option<JobStatus>) {
        if from == to {
            return;
        }
        let unfinished = |s: Option<JobStatus>| s.is_some_and(|s| !s.is_terminal());
        {
            let mut counts = lock(&self.shared.counts);
            if let Some(from) = from.filter(|s| !s.is_terminal()) {
                counts.add(from, -1);
            }
            if let Some(to) = to {
                counts.add(to, 1);
            }
        }
        match (unfinished(from), unfinished(to)) {
            (false, true) => {
                *lock(&self.shared.unfinished)
                    .entry(owner.to_owned())
                    .or_default() += 1
            }
            (true, false) => {
                let mut per_owner = lock(&self.shared.unfinished);
                if let Some(n) = per_owner.get_mut(owner) {
                    *n = n.saturating_sub(1);
                    if *n == 0 {
                        per_owner.remove(owner);
                    }
                }
            }
            _ => {}
        }
    }

    fn announce(&self, position: u64) {
        self.shared.live_tx.send_replace(position);
    }
}

#[async_trait]
impl Backend for MemoryBackend {
    async fn create_job(&self, new: NewJob) -> Result<JobState> {
        let (state, event) = plan_new_job(&new)?;
        let job = Arc::new(Mutex::new(StoredJob {
            head: LogHead {
                state: state.clone(),
                last_n: 0,
            },
            log: VecDeque::from([event.clone()]),
            cancel: false,
        }));
        // Hold the new job's lock until its first event is on the live feed,
        // so no later event of it can overtake `job_queued` there.
        let guard = lock(&job);
        {
            let mut index = self.index();
            if index.jobs.contains_key(&new.id) {
                return Err(BackendError::AlreadyExists(new.id));
            }
            index.jobs.insert(new.id.clone(), Arc::clone(&job));
            index.all_jobs.insert(new.id.clone());
            index
                .by_owner
                .entry(new.owner.clone())
                .or_default()
                .insert(new.id.clone());
            if !new.external {
                index.queue.enqueue(new.id.clone(), new.kind.clone());
            }
        }
        let position = self.live().push(event);
        self.count_move(&new.owner, None, Some(JobStatus::Queued));
        drop(guard);
        self.announce(position);
        if !new.external {
            self.shared.queue_ready.notify_waiters();
        }
        Ok(state)
    }

    async fn publish(&self, job: &JobId, events: Vec<NewEvent>) -> Result<PublishOutcome> {
        let config = &self.shared.config;
        let (outcome, position) = self.with_job(job, |stored| {
            let plan = plan(&stored.head, &events, Timestamp::now(), config.retention)
                .map_err(|e| BackendError::from_plan(job, e))?;
            let ids = plan.events.iter().map(|e| e.id).collect();
            self.count_move(
                &plan.state.owner,
                Some(stored.head.state.status),
                Some(plan.state.status),
            );
            stored.log.extend(plan.events.iter().cloned());
            let excess = stored.log.len().saturating_sub(config.stream_maxlen.max(1));
            stored.log.drain(..excess);
            stored.head = LogHead {
                state: plan.state,
                last_n: plan.last_n,
            };
            // Still under the job's lock: the job's events reach the live
            // feed in id order.
            let position = if plan.events.is_empty() {
                None
            } else {
                let mut live = self.live();
                plan.events.into_iter().map(|e| live.push(e)).last()
            };
            let outcome = PublishOutcome {
                ids,
                duplicates: plan.duplicates,
                cancel_requested: stored.cancel,
                last_event_id: stored.head.state.last_event_id,
            };
            Ok((outcome, position))
        })?;
        if let Some(position) = position {
            self.announce(position);
        }
        Ok(outcome)
    }

    async fn job(&self, job: &JobId) -> Result<JobState> {
        self.with_job(job, |stored| Ok(stored.snapshot()))
    }

    async fn events_after(
        &self,
        job: &JobId,
        after: EventId,
        epoch: Option<&Epoch>,
        limit: usize,
    ) -> Result<EventsAfter> {
        self.with_job(job, |stored| {
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
        })
    }

    async fn tail(&self, from: TailFrom) -> Result<Box<dyn LiveTail>> {
        let start = match from {
            TailFrom::Now => self.live().next_position(),
            TailFrom::After(pos) => pos.0.parse::<u64>().map_err(|_| {
                BackendError::Data(format!("not a memory live position: {:?}", pos.0))
            })?,
        };
        Ok(Box::new(MemoryTail::new(
            self.clone(),
            start,
            self.shared.live_tx.subscribe(),
        )))
    }

    async fn list_jobs(&self, query: &ListQuery) -> Result<JobPage> {
        let now = Timestamp::now();
        let limit = query.limit.max(1);
        let mut index = self.index();
        let ids: Vec<JobId> = {
            let set = match &query.owner {
                Some(owner) => match index.by_owner.get(owner) {
                    Some(set) => set,
                    None => {
                        return Ok(JobPage {
                            jobs: Vec::new(),
                            next_cursor: None,
                        })
                    }
                },
                None => &index.all_jobs,
            };
            let newest_first: Box<dyn Iterator<Item = &JobId>> = match &query.cursor {
                Some(cursor) => Box::new(set.range(..cursor).rev()),
                None => Box::new(set.iter().rev()),
            };
            newest_first.cloned().collect()
        };
        let mut jobs = Vec::with_capacity(limit);
        let mut more = false;
        let mut expired = Vec::new();
        for id in ids {
            let Some(job) = index.jobs.get(&id) else {
                continue;
            };
            let stored = lock(job);
            if stored.expired(now) {
                expired.push((id, stored.head.state.owner.clone()));
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
        for (id, owner) in expired {
            index.remove(&id, &owner);
        }
        let next_cursor = if more {
            jobs.last().map(|j| j.id.clone())
        } else {
            None
        };
        Ok(JobPage { jobs, next_cursor })
    }

    async fn cancel(&self, job: &JobId) -> Result<CancelOutcome> {
        let state = self.with_job(job, |stored| {
            if !stored.head.state.status.is_terminal() {
                stored.cancel = true;
            }
            Ok(stored.snapshot())
        })?;
        finish_cancel(self, state).await
    }

    async fn delete(&self, job: &JobId) -> Result<()> {
        let (owner, status) = self.with_job(job, |stored| {
            Ok((stored.head.state.owner.clone(), stored.head.state.status))
        })?;
        if self.index().remove(job, &owner) {
            self.count_move(&owner, Some(status), None);
            Ok(())
        } else {
            Err(BackendError::NotFound(job.clone()))
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
            let claims = self.index().queue.claim(consumer, max.max(1));
            if !claims.is_empty() {
                return Ok(claims);
            }
            if tokio::time::timeout_at(deadline, ready).await.is_err() {
                return Ok(Vec::new());
            }
        }
    }

    async fn pending_of(&self, consumer: &str, max: usize) -> Result<Vec<Claim>> {
        Ok(self.index().queue.pending_of(consumer, max))
    }

    async fn unfinished_jobs(&self, owner: &str) -> Result<u64> {
        Ok(lock(&self.shared.unfinished)
            .get(owner)
            .copied()
            .unwrap_or(0))
    }

    async fn renew(&self, consumer: &str, entry: &str) -> Result<bool> {
        Ok(self.index().queue.renew(consumer, entry))
    }

    async fn ack(&self, entry: &str) -> Result<()> {
        self.index().queue.ack(entry);
        Ok(())
    }

    async fn release(&self, consumer: &str, entry: &str) -> Result<bool> {
        let released = self.index().queue.release(consumer, entry);
        if released {
            self.shared.queue_ready.notify_waiters();
        }
        Ok(released)
    }

    async fn reclaim_idle(
        &self,
        consumer: &str,
        min_idle: Duration,
        max_attempts: u32,
        max: usize,
    ) -> Result<Vec<Reclaimed>> {
        let taken = self.index().queue.take_idle(consumer, min_idle, max.max(1));
        settle_all(self, taken, max_attempts).await
    }

    async fn queue_stats(&self) -> Result<QueueStats> {
        Ok(self.index().queue.stats())
    }

    async fn ping(&self) -> Result<()> {
        Ok(())
    }

    async fn health(&self) -> Result<StoreHealth> {
        Ok(StoreHealth {
            used_memory_bytes: None,
            live_entries: self.live().len() as u64,
            jobs: *lock(&self.shared.counts),
        })
    }
}
