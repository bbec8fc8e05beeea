//! `RedisBackend` as a [`JobStore`]: create, publish, snapshot, history,
//! listing, cancel, delete, the per-user counters and the store's health.

use std::collections::BTreeMap;

use async_trait::async_trait;
use jobwire_core::backend::Promotion;
use jobwire_core::ids::partition_of;
use jobwire_core::publish::{plan, plan_new_job, LogHead, Plan, QueueMove};
use jobwire_core::settle::{promote_each, promotion_event};
use jobwire_core::{
    BackendError, Created, Epoch, EventId, EventRecord, EventsAfter, Idempotency, JobId, JobPage,
    JobState, JobStatus, JobStore, ListQuery, NewEvent, NewJob, PublishOutcome, ResyncReason,
    StoreHealth, Timestamp,
};
use redis::Value;

use crate::connection::backend_error;
use crate::{scripts, RedisBackend, Result};

/// Promotions per `lua/promote.lua` call at most.
const PROMOTE_CHUNK: usize = 200;

/// A promotion planned from a cached head (`JobStore::promote`).
struct Planned {
    job: JobId,
    /// The head it was planned from: its last event id and epoch.
    expected: EventId,
    epoch: Epoch,
    plan: Plan,
}

/// A publish retries its compare-and-set this often under contention.
const MAX_CAS_ATTEMPTS: usize = 64;

/// What the publish script answered.
enum PublishReply {
    Missing,
    Applied {
        cancel: bool,
    },
    /// Boxed: a head is large and this reply is the rare path.
    Moved {
        head: Box<LogHead>,
    },
    /// The head is as planned, but Redis is in another history than the
    /// job's last write (it restarted or failed over, and may have lost
    /// writes): plan again under a new epoch.
    NewHistory {
        head: Box<LogHead>,
    },
}

impl RedisBackend {
    fn missing(&self, job: &JobId) -> BackendError {
        self.cache_head(job, None);
        BackendError::NotFound(job.clone())
    }

    /// Runs the publish script: writes `plan` if the job's sequence is still
    /// `expected`; without a plan it only fetches the head.
    async fn cas(
        &self,
        job: &JobId,
        planned: Option<((EventId, &Epoch), &jobwire_core::publish::Plan)>,
        claim_priority: bool,
    ) -> Result<PublishReply> {
        let keys = &self.shared.keys;
        let limits = &self.shared.config.backend;
        let mut invocation = scripts::PUBLISH.prepare_invoke();
        invocation
            .key(keys.job(job))
            .key(keys.events(job))
            .key(keys.live_of(job))
            .key(keys.stats_of(job))
            .key(keys.unfinished_of(job))
            .key(keys.priority(job));
        let p = keys.partition_of(job);
        let lane = planned.map(|(_, plan)| plan.state.lane());
        invocation
            .key(keys.scheduled(p))
            // Without a plan, any key of the slot stands in (unused).
            .key(
                lane.as_ref()
                    .map_or_else(|| keys.job(job), |lane| keys.queue(p, lane)),
            )
            .key(keys.queues(p))
            .key(keys.ready(p));
        match planned {
            None => {
                invocation
                    .arg(0)
                    .arg("")
                    .arg("")
                    .arg("")
                    .arg(0)
                    .arg("")
                    .arg(0)
                    .arg(0)
                    .arg(0)
                    .arg(&self.shared.publisher)
                    .arg(u8::from(claim_priority))
                    .arg("")
                    .arg(0)
                    .arg("")
                    .arg("")
                    .arg("");
            }
            Some(((expected, epoch), plan)) => {
                let retention_ms = if plan.state.status.is_terminal() {
                    limits.retention.as_millis().max(1)
                } else {
                    0
                };
                invocation
                    .arg(expected.0)
                    .arg(epoch.as_str())
                    .arg(plan.state.epoch.as_str())
                    .arg(to_json(&plan.state)?)
                    .arg(plan.last_n)
                    .arg(plan.state.status.as_str())
                    .arg(limits.stream_maxlen)
                    .arg(limits.live_maxlen)
                    .arg(retention_ms.to_string())
                    .arg(&self.shared.publisher)
                    .arg(u8::from(claim_priority));
                let (code, at) = match plan.queue_move {
                    QueueMove::Stay => ("", 0),
                    QueueMove::Schedule(at) => ("s", at.unix_millis()),
                    QueueMove::Enqueue => ("e", 0),
                    QueueMove::Unschedule => ("u", 0),
                };
                invocation
                    .arg(code)
                    .arg(at)
                    .arg(job.as_str())
                    .arg(&plan.state.kind)
                    .arg(lane.as_deref().unwrap_or_default());
                for event in &plan.events {
                    invocation.arg(&event.json[..]);
                }
            }
        }
        let reply: Vec<Value> = self.write(&invocation, planned.is_some()).await?;
        match reply.as_slice() {
            [Value::Int(0)] => Ok(PublishReply::Missing),
            [Value::Int(1), cancel] => Ok(PublishReply::Applied {
                cancel: is_set(cancel),
            }),
            [Value::Int(code @ (2 | 3)), seq, state, last_n, _cancel] => {
                let head = Box::new(parse_head(job, seq, state, last_n)?);
                Ok(if *code == 2 {
                    PublishReply::Moved { head }
                } else {
                    PublishReply::NewHistory { head }
                })
            }
            other => Err(unexpected("publish", other)),
        }
    }

    /// Runs `lua/promote.lua` on one partition's planned promotions;
    /// returns what it did and the jobs it left to be published alone.
    async fn promote_batch(&self, p: u16, batch: Vec<Planned>) -> Result<(Promotion, Vec<JobId>)> {
        let keys = &self.shared.keys;
        let limits = &self.shared.config.backend;
        let mut invocation = scripts::PROMOTE.prepare_invoke();
        invocation
            .key(keys.live(p))
            .key(keys.stats(p))
            .key(keys.scheduled(p))
            .key(keys.queues(p))
            .key(keys.ready(p))
            .arg(limits.stream_maxlen)
            .arg(limits.live_maxlen);
        for planned in &batch {
            let lane = planned.plan.state.lane();
            invocation
                .key(keys.job(&planned.job))
                .key(keys.events(&planned.job))
                .key(keys.queue(p, &lane))
                .arg(planned.expected.0)
                .arg(planned.epoch.as_str())
                .arg(to_json(&planned.plan.state)?)
                .arg(planned.plan.last_n)
                .arg(planned.job.as_str())
                .arg(&planned.plan.state.kind)
                .arg(lane)
                .arg(&planned.plan.events[0].json[..]);
        }
        let codes: Vec<i64> = self.write(&invocation, true).await?;
        if codes.len() != batch.len() {
            return Err(BackendError::Data(format!(
                "promote answered {} codes for {} jobs",
                codes.len(),
                batch.len()
            )));
        }
        let (mut done, mut left) = (Promotion::default(), Vec::new());
        for (planned, code) in batch.into_iter().zip(codes) {
            match code {
                1 => {
                    done.promoted += 1;
                    let head = LogHead {
                        state: planned.plan.state,
                        last_n: planned.plan.last_n,
                    };
                    self.cache_head(&planned.job, Some(head));
                }
                0 => {
                    self.cache_head(&planned.job, None);
                    done.stale.push(planned.job);
                }
                _ => left.push(planned.job),
            }
        }
        if done.promoted > 0 {
            self.wake_workers(p).await;
        }
        Ok((done, left))
    }

    /// Runs `lua/create.lua` (see there), with `once`'s key checked and
    /// recorded in the same step.
    async fn create(&self, new: NewJob, once: Option<&Idempotency>) -> Result<Created> {
        let keys = &self.shared.keys;
        let limits = &self.shared.config.backend;
        let (state, event) = plan_new_job(&new)?;
        let p = keys.partition_of(&new.id);
        let mut invocation = scripts::CREATE.prepare_invoke();
        invocation
            .key(keys.job(&new.id))
            .key(keys.events(&new.id))
            .key(keys.live_of(&new.id))
            .key(keys.stats_of(&new.id))
            .key(keys.unfinished_of(&new.id))
            .key(keys.listing(p, None))
            .key(keys.listing(p, Some(&new.owner)))
            .key(keys.queue(p, &state.lane()))
            .key(keys.queues(p))
            // Without a key, any key of the slot stands in (unused).
            .key(match (once, new.unique_scope()) {
                (Some(once), _) => keys.idempotency(p, &once.key),
                (None, Some(scope)) => keys.unique(p, &scope),
                (None, None) => keys.job(&new.id),
            })
            .key(keys.scheduled(p))
            .key(keys.ready(p))
            .arg(to_json(&state)?)
            .arg(&event.json[..])
            .arg(state.epoch.as_str())
            .arg(state.status.as_str())
            .arg(limits.stream_maxlen)
            .arg(limits.live_maxlen)
            .arg(&new.owner)
            .arg(new.id.as_str())
            .arg(&new.kind)
            .arg(u8::from(!new.external))
            .arg(state.lane())
            .arg(once.map_or("", |once| once.fingerprint.as_str()))
            .arg(
                once.map_or(0, |once| once.window.as_millis().max(1))
                    .to_string(),
            )
            .arg(keys.job_prefix(p))
            .arg(u8::from(new.unique_key.is_some()))
            .arg(match state.status {
                JobStatus::Scheduled => state.run_at.unwrap_or(state.created_at).unix_millis(),
                _ => 0,
            });
        let reply: Value = self.write(&invocation, true).await?;
        match reply {
            Value::Int(1) => {}
            Value::Int(0) => return Err(BackendError::AlreadyExists(new.id)),
            Value::Array(parts) => {
                let (code, record) = match parts.as_slice() {
                    [Value::Int(code @ (2 | 3)), record] => (*code, parse_text(record)?),
                    _ => return Err(unexpected("create", &parts)),
                };
                let (id, fingerprint) = record.split_once(' ').unwrap_or((&record, ""));
                let id: JobId = id.parse().map_err(corrupt)?;
                let job = self.job(&id).await?;
                return Ok(if code == 3 {
                    Created::Unique(job)
                } else {
                    Created::Existing {
                        job,
                        same_request: once.is_some_and(|once| once.fingerprint == fingerprint),
                    }
                });
            }
            other => return Err(unexpected("create", std::slice::from_ref(&other))),
        }
        if !new.external && state.status == JobStatus::Queued {
            self.wake_workers(p).await;
        }
        self.cache_head(
            &new.id,
            Some(LogHead {
                state: state.clone(),
                last_n: 0,
            }),
        );
        Ok(Created::New(state))
    }

    /// Runs a script that writes a job. With `JOBWIRE_REDIS_WAIT_REPLICAS`
    /// set (and `wait`), a `WAIT` follows it on the same connection, in the
    /// same pipeline (so on a cluster it goes to the same master), and the
    /// write counts only once that many replicas have it.
    pub(crate) async fn write<T: redis::FromRedisValue>(
        &self,
        invocation: &redis::ScriptInvocation<'_>,
        wait: bool,
    ) -> Result<T> {
        let mut conn = self.shared.conns.command();
        let replicas = self.shared.config.wait_replicas;
        if replicas == 0 || !wait {
            return invocation
                .invoke_async(&mut conn)
                .await
                .map_err(backend_error);
        }
        let timeout = wait_timeout(self.shared.config.command_timeout);
        let mut pipe = redis::pipe();
        pipe.invoke_script(invocation)
            .cmd("WAIT")
            .arg(replicas)
            .arg(timeout.as_millis() as u64);
        let replied: redis::RedisResult<(T, u32)> = pipe.query_async(&mut conn).await;
        let (reply, confirmed) = match replied {
            Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
                // After a Redis restart (a pipeline does not load scripts
                // by itself). Nothing ran: load it and go again.
                invocation
                    .load_async(&mut conn)
                    .await
                    .map_err(backend_error)?;
                pipe.query_async(&mut conn).await.map_err(backend_error)?
            }
            other => other.map_err(backend_error)?,
        };
        if confirmed < replicas {
            return Err(BackendError::Unavailable(format!(
                "written, but only {confirmed} of {replicas} replicas confirmed it within \
                 {timeout:?} (JOBWIRE_REDIS_WAIT_REPLICAS): a failover now could lose it; \
                 publishing it again with the same fence is safe"
            )));
        }
        Ok(reply)
    }

    /// Drops expired jobs from the listing indexes (lazily, as listing finds
    /// them: Redis expires the job's keys but not its index entries).
    async fn forget(&self, expired: &[JobId], owner: Option<&str>) {
        if expired.is_empty() {
            return;
        }
        let keys = &self.shared.keys;
        let removals = expired.iter().map(|id| {
            let p = keys.partition_of(id);
            let mut pipe = redis::pipe();
            pipe.cmd("ZREM").arg(keys.listing(p, None)).arg(id.as_str());
            if owner.is_some() {
                pipe.cmd("ZREM")
                    .arg(keys.listing(p, owner))
                    .arg(id.as_str());
            }
            pipe
        });
        if let Err(e) = self.shared.conns.each::<Value>(removals).await {
            tracing::debug!(error = %e, "could not prune expired jobs from the listing");
        }
    }
}

#[async_trait]
impl JobStore for RedisBackend {
    async fn create_job(&self, new: NewJob) -> Result<JobState> {
        match self.create_job_once(new, None).await? {
            Created::New(state) => Ok(state),
            Created::Existing { job, .. } | Created::Unique(job) => {
                Err(BackendError::AlreadyExists(job.id))
            }
        }
    }
    /// The job gets an id in the partition of its key, so that the key's
    /// record shares its slot and `create.lua` checks and sets it in the
    /// same step as the create.
    async fn create_job_once(
        &self,
        mut new: NewJob,
        once: Option<&Idempotency>,
    ) -> Result<Created> {
        let scope = match (once, new.unique_scope()) {
            (Some(_), Some(_)) => return Err(jobwire_core::backend::both_keys()),
            (Some(once), None) => Some(once.key.clone()),
            (None, unique) => unique,
        };
        if let Some(scope) = &scope {
            let partitions = self.shared.keys.partitions();
            new.id = JobId::generate_in(partition_of(scope, partitions), partitions);
        }
        self.create(new, once).await
    }
    async fn publish(&self, job: &JobId, events: &[NewEvent]) -> Result<PublishOutcome> {
        let limits = &self.shared.config.backend;
        // Publishes to one job from this process take turns (in arrival
        // order), so they never race each other's compare-and-set; only
        // other processes can make it fail.
        let _turn = self.shared.publish_turns[self.turn_of(job)].lock().await;
        // A cached head may be stale; only a plan made from a head Redis just
        // returned is trusted to refuse a batch.
        let mut head = self.take_cached_head(job);
        let mut fresh = false;
        // Set when Redis asked for a new history (see `NewHistory`): the
        // next plan is made under this epoch.
        let mut new_epoch: Option<Epoch> = None;
        let mut races_lost = 0u64;
        for _ in 0..MAX_CAS_ATTEMPTS {
            let Some(current) = head.take() else {
                match self.cas(job, None, races_lost >= 2).await? {
                    PublishReply::Missing => return Err(self.missing(job)),
                    PublishReply::Moved { head: h } | PublishReply::NewHistory { head: h } => {
                        head = Some(*h);
                        fresh = true;
                        continue;
                    }
                    // Sequence 0 never matches a job; unreachable in practice.
                    PublishReply::Applied { .. } => continue,
                }
            };
            let stored_epoch = current.state.epoch.clone();
            let planned_from = match new_epoch.take() {
                Some(epoch) => current.with_epoch(epoch),
                None => current,
            };
            let plan = match plan(&planned_from, events, Timestamp::now(), limits.retention) {
                Ok(plan) => plan,
                Err(e) if fresh => return Err(BackendError::from_plan(job, e)),
                Err(_) => {
                    head = None;
                    continue;
                }
            };
            let expected = (planned_from.state.last_event_id, &stored_epoch);
            match self
                .cas(job, Some((expected, &plan)), races_lost >= 2)
                .await?
            {
                PublishReply::Applied { cancel } => {
                    let last_event_id = plan.state.last_event_id;
                    if plan.queue_move == QueueMove::Enqueue {
                        self.wake_workers(self.shared.keys.partition_of(job)).await;
                    }
                    self.cache_head(
                        job,
                        Some(LogHead {
                            state: plan.state,
                            last_n: plan.last_n,
                        }),
                    );
                    return Ok(PublishOutcome {
                        ids: plan.events.iter().map(|e| e.id).collect(),
                        duplicates: plan.duplicates,
                        cancel_requested: cancel,
                        last_event_id,
                    });
                }
                PublishReply::Moved { head: h } => {
                    races_lost += 1;
                    if races_lost < 2 {
                        head = Some(*h);
                        fresh = true;
                    } else {
                        // Lost the race again: another process publishes
                        // to this job in a tight loop. Claim the priority
                        // (publish.lua) with a fresh read of the head after
                        // a random moment (so two such processes fall out
                        // of step); the other's writes wait while we hold it.
                        let pause = rand::random::<u64>() % (1 + races_lost.min(20) * 250);
                        tokio::time::sleep(std::time::Duration::from_micros(pause)).await;
                    }
                }
                PublishReply::NewHistory { head: h } => {
                    let epoch = Epoch::generate();
                    tracing::debug!(job = %job, from = %h.state.epoch, to = %epoch,
                        "Redis restarted or failed over since the job's last write: a new epoch");
                    head = Some(*h);
                    new_epoch = Some(epoch);
                    fresh = true;
                }
                PublishReply::Missing => return Err(self.missing(job)),
            }
        }
        Err(BackendError::Unavailable(format!(
            "job {job}: gave up after {MAX_CAS_ATTEMPTS} concurrent-publish retries"
        )))
    }
    /// A partition's due jobs in one `lua/promote.lua` call per
    /// [`PROMOTE_CHUNK`], planned from the heads `due` cached, partitions
    /// side by side. A job without a cached head, or one the script left
    /// alone (its head moved, or it needs a new epoch), is published on
    /// its own.
    async fn promote(&self, jobs: &[JobId]) -> Result<Promotion> {
        let limits = &self.shared.config.backend;
        let now = Timestamp::now();
        let event = promotion_event();
        let mut planned: BTreeMap<u16, Vec<Planned>> = BTreeMap::new();
        let mut alone = Vec::new();
        for job in jobs {
            let Some(head) = self.take_cached_head(job) else {
                alone.push(job.clone());
                continue;
            };
            match plan(&head, std::slice::from_ref(&event), now, limits.retention) {
                Ok(plan)
                    if head.state.status == JobStatus::Scheduled
                        && plan.queue_move == QueueMove::Enqueue
                        && plan.events.len() == 1 =>
                {
                    let p = self.shared.keys.partition_of(job);
                    planned.entry(p).or_default().push(Planned {
                        job: job.clone(),
                        expected: head.state.last_event_id,
                        epoch: head.state.epoch,
                        plan,
                    });
                }
                // The cached head may be stale: the publish decides.
                _ => {
                    self.cache_head(job, Some(head));
                    alone.push(job.clone());
                }
            }
        }
        let mut batches = Vec::new();
        for (p, mut jobs) in planned {
            while jobs.len() > PROMOTE_CHUNK {
                let rest = jobs.split_off(PROMOTE_CHUNK);
                batches.push((p, std::mem::replace(&mut jobs, rest)));
            }
            batches.push((p, jobs));
        }
        let mut promotion = Promotion::default();
        let done = futures_util::future::try_join_all(
            batches
                .into_iter()
                .map(|(p, batch)| self.promote_batch(p, batch)),
        )
        .await?;
        for (batch, left) in done {
            promotion.promoted += batch.promoted;
            promotion.stale.extend(batch.stale);
            alone.extend(left);
        }
        let each = promote_each(self, &alone).await?;
        promotion.promoted += each.promoted;
        promotion.stale.extend(each.stale);
        Ok(promotion)
    }
    async fn job(&self, job: &JobId) -> Result<JobState> {
        let mut conn = self.shared.conns.command();
        let (state, cancel): (Option<Vec<u8>>, Option<String>) = redis::cmd("HMGET")
            .arg(self.shared.keys.job(job))
            .arg("state")
            .arg("cancel")
            .query_async(&mut conn)
            .await
            .map_err(backend_error)?;
        let state = state.ok_or_else(|| BackendError::NotFound(job.clone()))?;
        let mut state: JobState = serde_json::from_slice(&state).map_err(corrupt)?;
        state.cancel_requested = cancel.as_deref() == Some("1") && !state.status.is_terminal();
        Ok(state)
    }
    async fn events_after(
        &self,
        job: &JobId,
        after: EventId,
        epoch: Option<&Epoch>,
        limit: usize,
    ) -> Result<EventsAfter> {
        let keys = &self.shared.keys;
        let mut conn = self.shared.conns.command();
        let limit = limit.clamp(1, i64::MAX as usize);
        let reply: Vec<Value> = scripts::EVENTS_AFTER
            .key(keys.job(job))
            .key(keys.events(job))
            .arg(after.0)
            .arg(limit)
            .arg(epoch.map_or("", |e| e.as_str()))
            .invoke_async(&mut conn)
            .await
            .map_err(backend_error)?;
        match reply.split_first() {
            Some((Value::Int(0), [])) => Err(BackendError::NotFound(job.clone())),
            Some((Value::Int(1), [epoch, ..])) => {
                let epoch: Epoch = parse_text(epoch)?.parse().map_err(corrupt)?;
                // The replies' bytes become the records' without a copy.
                Ok(EventsAfter::Events(
                    reply
                        .into_iter()
                        .skip(2)
                        .map(|e| record(e, &epoch))
                        .collect::<Result<Vec<_>>>()?,
                ))
            }
            Some((Value::Int(2), [epoch])) => {
                let current: Epoch = parse_text(epoch)?.parse().map_err(corrupt)?;
                Ok(EventsAfter::Resync(ResyncReason::EpochChanged { current }))
            }
            Some((Value::Int(3), [seq])) => Ok(EventsAfter::Resync(ResyncReason::Ahead {
                last: EventId(parse_u64(seq)?),
            })),
            Some((Value::Int(4), [oldest])) => Ok(EventsAfter::Resync(ResyncReason::Trimmed {
                oldest: EventId(parse_u64(oldest)?),
            })),
            _ => Err(unexpected("events_after", &reply)),
        }
    }
    /// Merges the partitions' indexes, newest first: each round reads the
    /// next ids below the cursor from every partition (side by side), and
    /// the first `chunk` of them all are the next `chunk` overall.
    async fn list_jobs(&self, query: &ListQuery) -> Result<JobPage> {
        let keys = &self.shared.keys;
        let owner = query.owner.as_deref();
        let limit = query.limit.max(1);
        // Read ids in chunks until the page is full: a status filter may
        // skip many.
        let chunk = (limit + 1).max(32);
        let mut from = match &query.cursor {
            Some(cursor) => format!("({cursor}"),
            None => "+".to_owned(),
        };
        let budget = self.shared.config.backend.list_scan_budget.max(1);
        let mut scanned = 0;
        let mut jobs = Vec::with_capacity(limit);
        loop {
            if scanned >= budget {
                // Passed over enough: the caller goes on after the last
                // job read (`from` is "(<that id>").
                return Ok(JobPage {
                    jobs,
                    next_cursor: Some(from[1..].parse().map_err(corrupt)?),
                });
            }
            let reads = (0..keys.partitions()).map(|p| {
                let mut pipe = redis::pipe();
                pipe.cmd("ZREVRANGEBYLEX")
                    .arg(keys.listing(p, owner))
                    .arg(&from)
                    .arg("-")
                    .arg("LIMIT")
                    .arg(0)
                    .arg(chunk);
                pipe
            });
            let per_partition: Vec<(Vec<String>,)> =
                self.shared.conns.each(reads).await.map_err(backend_error)?;
            let mut ids: Vec<String> = per_partition.into_iter().flat_map(|(ids,)| ids).collect();
            ids.sort_unstable_by(|a, b| b.cmp(a));
            ids.truncate(chunk);
            let Some(last) = ids.last() else {
                return Ok(JobPage {
                    jobs,
                    next_cursor: None,
                });
            };
            from = format!("({last}");
            scanned += ids.len();
            let ids: Vec<JobId> = ids
                .iter()
                .map(|id| id.parse().map_err(corrupt))
                .collect::<Result<_>>()?;
            let reads = ids.iter().map(|id| {
                let mut pipe = redis::pipe();
                pipe.cmd("HMGET")
                    .arg(keys.job(id))
                    .arg("state")
                    .arg("cancel");
                pipe
            });
            let rows: Vec<((Option<Vec<u8>>, Option<String>),)> =
                self.shared.conns.each(reads).await.map_err(backend_error)?;
            let mut expired = Vec::new();
            for (id, ((state, cancel),)) in ids.iter().zip(rows) {
                let Some(state) = state else {
                    expired.push(id.clone());
                    continue;
                };
                let mut state: JobState = serde_json::from_slice(&state).map_err(corrupt)?;
                if !query.admits(&state) {
                    continue;
                }
                if jobs.len() == limit {
                    let next_cursor = jobs.last().map(|j: &JobState| j.id.clone());
                    self.forget(&expired, owner).await;
                    return Ok(JobPage { jobs, next_cursor });
                }
                state.cancel_requested =
                    cancel.as_deref() == Some("1") && !state.status.is_terminal();
                jobs.push(state);
            }
            self.forget(&expired, owner).await;
        }
    }
    async fn request_cancel(&self, job: &JobId) -> Result<JobState> {
        let mut conn = self.shared.conns.command();
        let state: Option<Vec<u8>> = scripts::CANCEL
            .key(self.shared.keys.job(job))
            .invoke_async(&mut conn)
            .await
            .map_err(backend_error)?;
        let state = state.ok_or_else(|| BackendError::NotFound(job.clone()))?;
        let mut state: JobState = serde_json::from_slice(&state).map_err(corrupt)?;
        state.cancel_requested = !state.status.is_terminal();
        Ok(state)
    }
    async fn delete(&self, job: &JobId) -> Result<()> {
        let keys = &self.shared.keys;
        let mut conn = self.shared.conns.command();
        let state: Option<Vec<u8>> = scripts::DELETE
            .key(keys.job(job))
            .key(keys.events(job))
            .key(keys.stats_of(job))
            .key(keys.unfinished_of(job))
            .key(keys.scheduled(keys.partition_of(job)))
            .key(keys.live_of(job))
            .arg(job.as_str())
            .arg(self.shared.config.backend.live_maxlen)
            .invoke_async(&mut conn)
            .await
            .map_err(backend_error)?;
        self.cache_head(job, None);
        let state = state.ok_or_else(|| BackendError::NotFound(job.clone()))?;
        let state: JobState = serde_json::from_slice(&state).map_err(corrupt)?;
        let p = keys.partition_of(job);
        redis::pipe()
            .cmd("ZREM")
            .arg(keys.listing(p, Some(&state.owner)))
            .arg(job.as_str())
            .ignore()
            .cmd("ZREM")
            .arg(keys.listing(p, None))
            .arg(job.as_str())
            .ignore()
            .query_async::<()>(&mut conn)
            .await
            .map_err(backend_error)
    }
    /// The owner's unfinished jobs, summed over the partitions' counters.
    async fn unfinished_jobs(&self, owner: &str) -> Result<u64> {
        let keys = &self.shared.keys;
        let counts: Vec<Option<i64>> = self
            .per_partition(0..keys.partitions(), |p| {
                redis::cmd("HGET")
                    .arg(keys.unfinished(p))
                    .arg(owner)
                    .clone()
            })
            .await?;
        Ok(counts
            .into_iter()
            .map(|n| u64::try_from(n.unwrap_or(0)).unwrap_or(0))
            .sum())
    }

    async fn ping(&self) -> Result<()> {
        let mut conn = self.shared.conns.command();
        redis::cmd("PING")
            .query_async::<()>(&mut conn)
            .await
            .map_err(backend_error)
    }

    async fn throughput(&self, now: Timestamp) -> Result<Vec<jobwire_core::MinuteCounts>> {
        let keys = &self.shared.keys;
        let hour = now.unix_millis().div_euclid(3_600_000);
        let hashes: Vec<(
            std::collections::HashMap<String, u64>,
            std::collections::HashMap<String, u64>,
        )> = self
            .shared
            .conns
            .each((0..keys.partitions()).map(|p| {
                let mut pipe = redis::pipe();
                pipe.cmd("HGETALL").arg(keys.throughput(p, hour - 1));
                pipe.cmd("HGETALL").arg(keys.throughput(p, hour));
                pipe
            }))
            .await
            .map_err(backend_error)?;
        let mut minutes: std::collections::BTreeMap<i64, (u64, u64)> = Default::default();
        for (field, n) in hashes.into_iter().flat_map(|(a, b)| a.into_iter().chain(b)) {
            let Some((minute, which)) = field.split_once(':') else {
                continue;
            };
            let Ok(minute) = minute.parse::<i64>() else {
                continue;
            };
            let slot = minutes.entry(minute).or_default();
            match which {
                "s" => slot.0 += n,
                "f" => slot.1 += n,
                _ => {}
            }
        }
        Ok(jobwire_core::MinuteCounts::recent(
            minutes.into_iter().map(|(m, (s, f))| (m, s, f)),
            now,
        ))
    }

    async fn health(&self) -> Result<StoreHealth> {
        let keys = &self.shared.keys;
        let mut conn = self.shared.conns.command();
        // On a cluster INFO goes to every master: one reply each.
        let info: Value = redis::cmd("INFO")
            .arg("memory")
            .query_async(&mut conn)
            .await
            .map_err(backend_error)?;
        let partitions: Vec<(u64, std::collections::HashMap<String, i64>)> = self
            .shared
            .conns
            .each((0..keys.partitions()).map(|p| {
                let mut pipe = redis::pipe();
                pipe.cmd("XLEN").arg(keys.live(p));
                pipe.cmd("HGETALL").arg(keys.stats(p));
                pipe
            }))
            .await
            .map_err(backend_error)?;
        let mut jobs = jobwire_core::JobCounts::default();
        let mut live_entries = 0;
        for (length, counts) in partitions {
            live_entries += length;
            for (status, n) in counts {
                if let Ok(status) = status.parse::<jobwire_core::JobStatus>() {
                    jobs.add(status, n);
                }
            }
        }
        Ok(StoreHealth {
            used_memory_bytes: used_memory(&info),
            live_entries,
            jobs,
        })
    }
}

/// `used_memory` out of an INFO reply, summed over the nodes of a cluster.
fn used_memory(info: &Value) -> Option<u64> {
    let text = |v: &Value| match v {
        Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
        Value::VerbatimString { text, .. } => Some(text.clone()),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    };
    let of = |info: &str| {
        info.lines()
            .find_map(|line| line.strip_prefix("used_memory:"))
            .and_then(|v| v.trim().parse::<u64>().ok())
    };
    match info {
        Value::Map(nodes) => nodes
            .iter()
            .map(|(_, v)| text(v).as_deref().and_then(of))
            .sum(),
        other => text(other).as_deref().and_then(of),
    }
}

/// How long a `WAIT` for replicas may take: half the command timeout, at
/// most a second (a healthy replica answers in well under a millisecond).
fn wait_timeout(command_timeout: std::time::Duration) -> std::time::Duration {
    (command_timeout / 2).min(std::time::Duration::from_secs(1))
}

fn to_json(state: &JobState) -> Result<String> {
    serde_json::to_string(state).map_err(|e| BackendError::Data(format!("serializing state: {e}")))
}

fn from_json<T: serde::de::DeserializeOwned>(v: &Value) -> Result<T> {
    match v {
        Value::BulkString(bytes) => serde_json::from_slice(bytes).map_err(corrupt),
        other => Err(unexpected("json", std::slice::from_ref(other))),
    }
}

fn record(v: Value, epoch: &Epoch) -> Result<EventRecord> {
    match v {
        Value::BulkString(bytes) => {
            EventRecord::from_bytes(bytes::Bytes::from(bytes), epoch.clone()).map_err(corrupt)
        }
        other => Err(unexpected("event", std::slice::from_ref(&other))),
    }
}

fn parse_text(v: &Value) -> Result<String> {
    match v {
        Value::BulkString(bytes) => String::from_utf8(bytes.clone()).map_err(corrupt),
        Value::SimpleString(s) => Ok(s.clone()),
        Value::Int(i) => Ok(i.to_string()),
        other => Err(unexpected("text", std::slice::from_ref(other))),
    }
}

fn parse_u64(v: &Value) -> Result<u64> {
    match v {
        Value::Int(i) => u64::try_from(*i).map_err(corrupt),
        _ => parse_text(v)?.parse().map_err(corrupt),
    }
}

fn is_set(v: &Value) -> bool {
    match v {
        Value::Int(i) => *i != 0,
        Value::BulkString(b) => b.as_slice() == b"1",
        _ => false,
    }
}

pub(crate) fn corrupt(e: impl std::fmt::Display) -> BackendError {
    BackendError::Data(format!("unreadable data in Redis: {e}"))
}

pub(crate) fn unexpected(what: &str, reply: &[Value]) -> BackendError {
    BackendError::Data(format!("unexpected {what} reply from Redis: {reply:?}"))
}

/// A job's head as the scripts return it (`seq`, `state`, `last_n` of its
/// hash), checked for agreement.
pub(crate) fn parse_head(
    job: &JobId,
    seq: &Value,
    state: &Value,
    last_n: &Value,
) -> Result<LogHead> {
    let state: JobState = from_json(state)?;
    let seq = parse_u64(seq)?;
    if state.last_event_id.0 != seq {
        return Err(BackendError::Data(format!(
            "job {job}: state is at event {} but the sequence at {seq}",
            state.last_event_id
        )));
    }
    Ok(LogHead {
        state,
        last_n: parse_u64(last_n)?,
    })
}
