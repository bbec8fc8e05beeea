//! `MemoryBackend` as a [`JobStore`]: jobs, their logs, listing, cancel,
//! delete, and the counters the Redis backend keeps beside them.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;

use crate::backend::{
    BackendError, Created, EventsAfter, Idempotency, JobPage, JobStore, ListQuery, MinuteCounts,
    Promotion, PublishOutcome, Result, ResyncReason, StoreHealth,
};
use crate::event::NewEvent;
use crate::ids::{Epoch, EventId, JobId, Timestamp};
use crate::job::{JobState, JobStatus, NewJob};
use crate::publish::{plan, plan_new_job, LogHead, QueueMove};

use super::{lock, KeyRecord, MemoryBackend, StoredJob};

impl MemoryBackend {
    /// A publish's atomic step, without telling the live feed's readers
    /// and the waiting workers: returns its outcome, the live position of
    /// its last event, and whether it queued the job.
    fn publish_unannounced(
        &self,
        job: &JobId,
        events: &[NewEvent],
    ) -> Result<(PublishOutcome, Option<u64>, bool)> {
        let config = &self.shared.config;
        self.with_job(job, |stored| {
            let plan = plan(&stored.head, events, Timestamp::now(), config.retention)
                .map_err(|e| BackendError::from_plan(job, e))?;
            let ids = plan.events.iter().map(|e| e.id).collect();
            let (from, to) = (stored.head.state.status, plan.state.status);
            self.count_move(&plan.state.owner, Some(from), Some(to));
            // A start is a new `started_at` (also when the same batch ends
            // the job); a finish, an open job ending.
            self.count_minute(
                plan.state.queue(),
                plan.state.started_at.is_some()
                    && plan.state.started_at != stored.head.state.started_at,
                !from.is_terminal() && to.is_terminal(),
                to == JobStatus::Failed && from != JobStatus::Failed,
            );
            stored.log.extend(plan.events.iter().cloned());
            let excess = stored.log.len().saturating_sub(config.stream_maxlen.max(1));
            stored.log.drain(..excess);
            let queued = self.queue().apply(&plan.state, plan.queue_move);
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
            Ok((outcome, position, queued))
        })
    }

    /// Stores a new job, with no key checked (see `create_job_once`).
    fn insert(&self, new: NewJob) -> Result<JobState> {
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
        }
        let queued = match state.status {
            JobStatus::Scheduled => self.queue().apply(
                &state,
                QueueMove::Schedule(state.run_at.unwrap_or(state.created_at)),
            ),
            _ if new.external => false,
            _ => {
                self.queue().enqueue(&state);
                true
            }
        };
        let position = self.live().push(event);
        self.count_move(&new.owner, None, Some(state.status));
        drop(guard);
        self.announce(position);
        if queued {
            self.shared.queue_ready.notify_waiters();
        }
        Ok(state)
    }
}

#[async_trait]
impl JobStore for MemoryBackend {
    async fn create_job(&self, new: NewJob) -> Result<JobState> {
        match self.create_job_once(new, None).await? {
            Created::New(state) => Ok(state),
            Created::Existing { job, .. } | Created::Unique(job) => {
                Err(BackendError::AlreadyExists(job.id))
            }
        }
    }

    async fn create_job_once(&self, new: NewJob, once: Option<&Idempotency>) -> Result<Created> {
        if once.is_some() && new.unique_key.is_some() {
            return Err(crate::backend::both_keys());
        }
        let mut keys = self.shared.idempotency.lock().await;
        let now = tokio::time::Instant::now();
        keys.idempotency.retain(|_, record| record.expires > now);
        if let Some(once) = once {
            if let Some(record) = keys.idempotency.get(&once.key) {
                match self.job(&record.job).await {
                    Ok(job) => {
                        return Ok(Created::Existing {
                            job,
                            same_request: record.fingerprint == once.fingerprint,
                        })
                    }
                    // Its job is gone: the key is free again.
                    Err(BackendError::NotFound(_)) => {}
                    Err(e) => return Err(e),
                }
            }
        }
        let unique = new.unique_scope();
        if let Some(holder) = unique.as_ref().and_then(|scope| keys.unique.get(scope)) {
            match self.job(holder).await {
                Ok(job) if !job.status.is_terminal() => return Ok(Created::Unique(job)),
                // Finished or gone: the key is free again.
                Ok(_) | Err(BackendError::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        let job = self.insert(new)?;
        if let Some(once) = once {
            keys.idempotency.insert(
                once.key.clone(),
                KeyRecord {
                    job: job.id.clone(),
                    fingerprint: once.fingerprint.clone(),
                    expires: now + once.window,
                },
            );
        }
        if let Some(scope) = unique {
            keys.unique.insert(scope, job.id.clone());
        }
        Ok(Created::New(job))
    }

    async fn publish(&self, job: &JobId, events: &[NewEvent]) -> Result<PublishOutcome> {
        let (outcome, position, queued) = self.publish_unannounced(job, events)?;
        if let Some(position) = position {
            self.announce(position);
        }
        if queued {
            self.shared.queue_ready.notify_waiters();
        }
        Ok(outcome)
    }

    /// One publish after another, under no lock but each job's own, and
    /// one announcement to the live feed and the waiting workers for the
    /// batch: a worker woken per promoted job claimed them one by one.
    async fn promote(&self, jobs: &[JobId]) -> Result<Promotion> {
        let event = [crate::settle::promotion_event()];
        let mut promotion = Promotion::default();
        let (mut last, mut queued) = (None, false);
        for job in jobs {
            match self.publish_unannounced(job, &event) {
                Ok((_, position, q)) => {
                    promotion.promoted += 1;
                    last = position.or(last);
                    queued |= q;
                }
                Err(BackendError::NotFound(_) | BackendError::Rejected { .. }) => {
                    promotion.stale.push(job.clone());
                }
                Err(e) => return Err(e),
            }
        }
        if let Some(position) = last {
            self.announce(position);
        }
        if queued {
            self.shared.queue_ready.notify_waiters();
        }
        Ok(promotion)
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

    async fn list_jobs(&self, query: &ListQuery) -> Result<JobPage> {
        let now = Timestamp::now();
        let limit = query.limit.max(1);
        let budget = self.shared.config.list_scan_budget.max(1);
        let mut index = self.index();
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
        let mut jobs = Vec::with_capacity(limit);
        let mut next_cursor = None;
        let mut expired = Vec::new();
        let mut scanned: Option<&JobId> = None;
        for (n, id) in newest_first.enumerate() {
            if n == budget {
                // Passed over enough: the caller goes on after the last
                // job read.
                next_cursor = scanned.cloned();
                break;
            }
            scanned = Some(id);
            let Some(job) = index.jobs.get(id) else {
                continue;
            };
            let stored = lock(job);
            if stored.expired(now) {
                expired.push((id.clone(), stored.head.state.owner.clone()));
                continue;
            }
            if !query.admits(&stored.head.state) {
                continue;
            }
            if jobs.len() == limit {
                next_cursor = jobs.last().map(|j: &JobState| j.id.clone());
                break;
            }
            jobs.push(stored.snapshot());
        }
        for (id, owner) in expired {
            index.remove(&id, &owner);
        }
        Ok(JobPage { jobs, next_cursor })
    }

    async fn request_cancel(&self, job: &JobId) -> Result<JobState> {
        let state = self.with_job(job, |stored| {
            if !stored.head.state.status.is_terminal() {
                stored.cancel = true;
            }
            Ok(stored.snapshot())
        })?;
        Ok(state)
    }

    async fn delete(&self, job: &JobId) -> Result<()> {
        let (owner, status) = self.with_job(job, |stored| {
            Ok((stored.head.state.owner.clone(), stored.head.state.status))
        })?;
        if self.index().remove(job, &owner) {
            self.queue().unschedule(job);
            self.count_move(&owner, Some(status), None);
            Ok(())
        } else {
            Err(BackendError::NotFound(job.clone()))
        }
    }

    async fn unfinished_jobs(&self, owner: &str) -> Result<u64> {
        Ok(lock(&self.shared.unfinished)
            .get(owner)
            .copied()
            .unwrap_or(0))
    }

    async fn ping(&self) -> Result<()> {
        Ok(())
    }

    async fn throughput(&self, now: Timestamp) -> Result<Vec<MinuteCounts>> {
        let counts = lock(&self.shared.throughput)
            .iter()
            .map(|(m, (s, f))| (*m, *s, *f))
            .collect::<Vec<_>>();
        Ok(MinuteCounts::recent(counts, now))
    }

    async fn health(&self) -> Result<StoreHealth> {
        Ok(StoreHealth {
            used_memory_bytes: None,
            live_entries: self.live().len() as u64,
            jobs: *lock(&self.shared.counts),
        })
    }
}
