//! The in-memory job queues: waiting entries (each in a named queue, with a
//! priority), entries leased to a consumer until acked or taken over after
//! sitting idle (the semantics of a Redis Streams consumer group, which the
//! Redis backend uses), and the schedule of jobs waiting for their time;
//! and `MemoryBackend` as a [`JobQueue`].

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::time::Duration;

use async_trait::async_trait;
use tokio::time::Instant;

use crate::backend::{
    BackendError, Claim, JobQueue, QueueLimits, QueueOverview, QueueStats, Queues, Result,
    WorkerInfo, FORGET_WORKERS_AFTER,
};

/// How often a claim waiting on a limited queue looks again (its slots free
/// up with no enqueue to wake it).
const LIMITED_POLL: Duration = Duration::from_millis(100);
use crate::ids::{JobId, Timestamp};
use crate::job::{lowest_first, priority_order, JobState, JobStatus, MAX_PRIORITY};
use crate::publish::QueueMove;

use super::{lock, MemoryBackend};

/// One FIFO per priority (index = priority), like the Redis backend's lanes.
type Lanes = [VecDeque<Entry>; MAX_PRIORITY as usize + 1];

#[derive(Debug, Default)]
pub(super) struct Queue {
    next_id: u64,
    /// Waiting entries by queue name, then by priority.
    waiting: HashMap<String, Lanes>,
    pending: BTreeMap<u64, Lease>,
    /// Scheduled jobs by time, and each one's time.
    schedule: BTreeSet<(i64, JobId)>,
    /// Each scheduled job's time and queue.
    scheduled_at: HashMap<JobId, (i64, String)>,
    /// Due jobs handed to a promoter ([`JobQueue::claim_due`]), and when:
    /// another is not handed them for [`HANDED_FOR`].
    handed: HashMap<JobId, Instant>,
    /// Claims that found work (the starvation rule counts them).
    claims_made: u64,
    /// The worker registry, by name.
    workers: HashMap<String, WorkerInfo>,
    /// Paused queues: claims and take-overs pass them by.
    paused: BTreeSet<String>,
    /// Fleet-wide limits by queue.
    limits: BTreeMap<String, QueueLimits>,
    /// Recent starts per rate-limited queue, oldest first.
    starts: HashMap<String, VecDeque<Instant>>,
    /// Claims that found a limited queue at its limit, per queue.
    held_back: BTreeMap<String, u64>,
}

/// How long a due job handed to one promoter is not handed to another (a
/// promotion is one publish; a promoter stopped before it lets another
/// have the job after this).
const HANDED_FOR: Duration = Duration::from_secs(2);

#[derive(Clone, Debug)]
struct Entry {
    id: u64,
    job_id: JobId,
    kind: String,
    queue: String,
    priority: u8,
    queued_at: Timestamp,
}

#[derive(Debug)]
struct Lease {
    entry: Entry,
    consumer: String,
    /// Last delivery or renewal: idle time is measured from here.
    touched: Instant,
    /// How long it holds a slot of its queue's concurrency limit unless
    /// renewed.
    lease: Duration,
}

impl Entry {
    fn claim(&self) -> Claim {
        Claim {
            entry: self.id.to_string(),
            job_id: self.job_id.clone(),
            kind: self.kind.clone(),
        }
    }
}

impl Queue {
    pub(super) fn enqueue(&mut self, job: &JobState) {
        self.next_id += 1;
        self.wait(Entry {
            id: self.next_id,
            job_id: job.id.clone(),
            kind: job.kind.clone(),
            queue: job.queue().to_owned(),
            priority: job.priority.min(MAX_PRIORITY),
            queued_at: Timestamp::now(),
        });
    }

    /// Puts an entry at the end of its lane.
    fn wait(&mut self, entry: Entry) {
        let lanes = self.waiting.entry(entry.queue.clone()).or_default();
        lanes[usize::from(entry.priority)].push_back(entry);
    }

    /// Carries out a publish's (or a create's) [`QueueMove`] for `job`;
    /// `true` when it queued the job (workers should look).
    pub(super) fn apply(&mut self, job: &JobState, queue_move: QueueMove) -> bool {
        match queue_move {
            QueueMove::Stay => false,
            QueueMove::Schedule(at) => {
                self.unschedule(&job.id);
                self.schedule.insert((at.unix_millis(), job.id.clone()));
                self.scheduled_at
                    .insert(job.id.clone(), (at.unix_millis(), job.queue().to_owned()));
                false
            }
            QueueMove::Enqueue => {
                self.unschedule(&job.id);
                self.enqueue(job);
                true
            }
            QueueMove::Unschedule => {
                self.unschedule(&job.id);
                false
            }
        }
    }

    pub(super) fn unschedule(&mut self, job: &JobId) {
        if let Some((at, _)) = self.scheduled_at.remove(job) {
            self.schedule.remove(&(at, job.clone()));
        }
        self.handed.remove(job);
    }

    /// Up to `max` due jobs; with `claim`, only those no promoter was
    /// handed within [`HANDED_FOR`], which are then handed to this one.
    fn due(&mut self, now: Timestamp, max: usize, claim: bool) -> Vec<JobId> {
        let at = Instant::now();
        if claim {
            self.handed
                .retain(|_, handed| at.duration_since(*handed) < HANDED_FOR);
        }
        let handed = &self.handed;
        let due: Vec<JobId> = self
            .schedule
            .iter()
            .take_while(|(when, _)| *when <= now.unix_millis())
            .filter(|(_, id)| !(claim && handed.contains_key(id)))
            .take(max)
            .map(|(_, id)| id.clone())
            .collect();
        if claim {
            for id in &due {
                self.handed.insert(id.clone(), at);
            }
        }
        due
    }

    /// Up to `max` waiting entries of `queues`, the first queue's first;
    /// within a queue the highest priority first (the lowest, one claim in
    /// [`crate::job::LOWEST_FIRST_EVERY`]), and in order of arrival.
    pub(super) fn claim(
        &mut self,
        consumer: &str,
        queues: &Queues,
        max: usize,
        lease: Duration,
    ) -> Vec<Claim> {
        let now = Instant::now();
        let lowest = lowest_first(self.claims_made);
        let mut claims = Vec::new();
        for queue in queues {
            if self.paused.contains(queue) {
                continue;
            }
            let room = self.room(queue, now);
            if room == 0 {
                *self.held_back.entry(queue.clone()).or_default() += 1;
            }
            let Some(lanes) = self.waiting.get_mut(queue) else {
                continue;
            };
            let upto = claims.len() + room.min(max - claims.len());
            let mut taken = Vec::new();
            for priority in priority_order(lowest) {
                let lane = &mut lanes[usize::from(priority)];
                while claims.len() + taken.len() < upto {
                    let Some(entry) = lane.pop_front() else {
                        break;
                    };
                    taken.push(entry);
                }
            }
            for entry in taken {
                self.started(&entry.queue, now);
                claims.push(entry.claim());
                self.pending.insert(
                    entry.id,
                    Lease {
                        entry,
                        consumer: consumer.to_owned(),
                        touched: now,
                        lease,
                    },
                );
            }
        }
        if !claims.is_empty() {
            self.claims_made += 1;
        }
        claims
    }

    /// How many more of `queue`'s entries its limits let start now.
    fn room(&mut self, queue: &str, now: Instant) -> usize {
        let Some(limits) = self.limits.get(queue) else {
            return usize::MAX;
        };
        let mut room = usize::MAX;
        if let Some(cap) = limits.concurrency {
            let running = self
                .pending
                .values()
                .filter(|l| l.entry.queue == queue && now.duration_since(l.touched) < l.lease)
                .count();
            room = (cap as usize).saturating_sub(running);
        }
        if let Some(rate) = limits.rate {
            let starts = self.starts.entry(queue.to_owned()).or_default();
            while starts
                .front()
                .is_some_and(|t| now.duration_since(*t) >= rate.per)
            {
                starts.pop_front();
            }
            room = room.min((rate.max as usize).saturating_sub(starts.len()));
        }
        room
    }

    /// Records a start of one of `queue`'s entries (for its rate limit).
    fn started(&mut self, queue: &str, now: Instant) {
        if self.limits.get(queue).is_some_and(|l| l.rate.is_some()) {
            self.starts
                .entry(queue.to_owned())
                .or_default()
                .push_back(now);
        }
    }

    pub(super) fn pending_of(&self, consumer: &str, max: usize) -> Vec<Claim> {
        let mut leased: Vec<&Lease> = self
            .pending
            .values()
            .filter(|lease| lease.consumer == consumer)
            .collect();
        leased.sort_by_key(|lease| lease.entry.id);
        leased
            .iter()
            .take(max)
            .map(|lease| lease.entry.claim())
            .collect()
    }

    pub(super) fn renew(&mut self, consumer: &str, entry: &str) -> bool {
        let Ok(id) = entry.parse::<u64>() else {
            return false;
        };
        match self.pending.get_mut(&id) {
            Some(lease) if lease.consumer == consumer => {
                lease.touched = Instant::now();
                true
            }
            _ => false,
        }
    }

    pub(super) fn ack(&mut self, entry: &str) {
        if let Ok(id) = entry.parse::<u64>() {
            // A waiting entry is acked only when its job is dropped
            // unclaimed: rare enough for a scan.
            if self.pending.remove(&id).is_none() {
                for lane in self.waiting.values_mut().flat_map(|lanes| lanes.iter_mut()) {
                    lane.retain(|e| e.id != id);
                }
            }
        }
    }

    /// Moves an entry leased to `consumer` back to the end of the waiting line.
    pub(super) fn release(&mut self, consumer: &str, entry: &str) -> bool {
        let Ok(id) = entry.parse::<u64>() else {
            return false;
        };
        match self.pending.get(&id) {
            Some(lease) if lease.consumer == consumer => {}
            _ => return false,
        }
        if let Some(lease) = self.pending.remove(&id) {
            self.wait(lease.entry);
        }
        true
    }

    /// Moves up to `max` leases idle for `min_idle` to `consumer` (within
    /// their queues' limits; each then holds its slot for `min_idle`).
    pub(super) fn take_idle(
        &mut self,
        consumer: &str,
        queues: &Queues,
        min_idle: Duration,
        max: usize,
    ) -> Vec<Claim> {
        let now = Instant::now();
        let idle: Vec<u64> = self
            .pending
            .values()
            .filter(|lease| {
                now.duration_since(lease.touched) >= min_idle
                    && queues.contains(&lease.entry.queue)
                    && !self.paused.contains(&lease.entry.queue)
            })
            .map(|lease| lease.entry.id)
            .collect();
        let mut taken = Vec::new();
        for id in idle {
            if taken.len() == max {
                break;
            }
            let Some(queue) = self.pending.get(&id).map(|l| l.entry.queue.clone()) else {
                continue;
            };
            if self.room(&queue, now) == 0 {
                continue;
            }
            self.started(&queue, now);
            if let Some(lease) = self.pending.get_mut(&id) {
                lease.consumer = consumer.to_owned();
                lease.touched = now;
                lease.lease = min_idle;
                taken.push(lease.entry.claim());
            }
        }
        taken
    }

    fn overview(&self) -> Vec<QueueOverview> {
        let mut by_name: BTreeMap<&str, QueueOverview> = BTreeMap::new();
        let at = |name: &str| -> QueueOverview {
            QueueOverview {
                name: name.to_owned(),
                paused: self.paused.contains(name),
                ..QueueOverview::default()
            }
        };
        for (name, lanes) in &self.waiting {
            let q = by_name.entry(name).or_insert_with(|| at(name));
            for entry in lanes.iter().flatten() {
                q.waiting += 1;
                if q.oldest_waiting.is_none_or(|t| entry.queued_at < t) {
                    q.oldest_waiting = Some(entry.queued_at);
                }
            }
        }
        for lease in self.pending.values() {
            let name = lease.entry.queue.as_str();
            by_name.entry(name).or_insert_with(|| at(name)).running += 1;
        }
        for name in self.paused.iter().chain(self.limits.keys()) {
            by_name.entry(name).or_insert_with(|| at(name));
        }
        for (_, name) in self.scheduled_at.values() {
            by_name.entry(name).or_insert_with(|| at(name)).scheduled += 1;
        }
        for (name, limits) in &self.limits {
            if let Some(q) = by_name.get_mut(name.as_str()) {
                q.limits = limits.clone();
            }
        }
        by_name.into_values().collect()
    }

    pub(super) fn stats(&self) -> QueueStats {
        QueueStats {
            waiting: self
                .waiting
                .values()
                .flat_map(|lanes| lanes.iter())
                .map(|lane| lane.len() as u64)
                .sum(),
            pending: self.pending.len() as u64,
            scheduled: self.schedule.len() as u64,
        }
    }
}

#[async_trait]
impl JobQueue for MemoryBackend {
    async fn claim_for(
        &self,
        consumer: &str,
        queues: &Queues,
        max: usize,
        wait: Duration,
        lease: Duration,
    ) -> Result<Vec<Claim>> {
        let deadline = tokio::time::Instant::now() + wait;
        // A limited queue's slots free up with no enqueue to wake us: look
        // again at least this often.
        let limited = {
            let queue = self.queue();
            queues.iter().any(|q| queue.limits.contains_key(q))
        };
        loop {
            // Register interest before looking, so an enqueue between the
            // look and the wait still wakes us.
            let ready = self.shared.queue_ready.notified();
            tokio::pin!(ready);
            ready.as_mut().enable();
            let claims = self.queue().claim(consumer, queues, max.max(1), lease);
            if !claims.is_empty() {
                return Ok(claims);
            }
            let until = if limited {
                deadline.min(tokio::time::Instant::now() + LIMITED_POLL)
            } else {
                deadline
            };
            if tokio::time::timeout_at(until, ready).await.is_err()
                && tokio::time::Instant::now() >= deadline
            {
                return Ok(Vec::new());
            }
        }
    }

    async fn renew(&self, consumer: &str, entry: &str) -> Result<bool> {
        Ok(self.queue().renew(consumer, entry))
    }

    async fn ack(&self, entry: &str) -> Result<()> {
        self.queue().ack(entry);
        // A slot of a limited queue may be free now.
        self.shared.queue_ready.notify_waiters();
        Ok(())
    }

    async fn set_limits(&self, queue: &str, limits: &QueueLimits) -> Result<()> {
        let mut q = self.queue();
        if limits.is_none() {
            q.limits.remove(queue);
            q.starts.remove(queue);
        } else {
            q.limits.insert(queue.to_owned(), limits.clone());
        }
        drop(q);
        self.shared.queue_ready.notify_waiters();
        Ok(())
    }

    async fn limits(&self) -> Result<BTreeMap<String, QueueLimits>> {
        Ok(self.queue().limits.clone())
    }

    fn held_back(&self) -> BTreeMap<String, u64> {
        self.queue().held_back.clone()
    }

    async fn release(&self, consumer: &str, entry: &str) -> Result<bool> {
        let released = self.queue().release(consumer, entry);
        if released {
            self.shared.queue_ready.notify_waiters();
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
        Ok(self
            .queue()
            .take_idle(consumer, queues, min_idle, max.max(1)))
    }

    async fn pending_of(&self, consumer: &str, max: usize) -> Result<Vec<Claim>> {
        Ok(self.queue().pending_of(consumer, max))
    }

    async fn queue_stats(&self) -> Result<QueueStats> {
        Ok(self.queue().stats())
    }

    async fn due(&self, now: Timestamp, max: usize) -> Result<Vec<JobId>> {
        Ok(self.queue().due(now, max, false))
    }

    /// The server and the workers of a process share this backend, each
    /// with a promoter: each is handed its own share (the Redis backend
    /// leases partitions to one process instead).
    async fn claim_due(&self, now: Timestamp, max: usize) -> Result<Vec<JobId>> {
        Ok(self.queue().due(now, max, true))
    }

    async fn queue_overview(&self) -> Result<Vec<QueueOverview>> {
        let mut overview = self.queue().overview();
        let current = Timestamp::now().unix_millis().div_euclid(60_000);
        for ((minute, queue), (finished, failed)) in lock(&self.shared.queue_minutes).iter() {
            let at = match overview.iter().position(|q| &q.name == queue) {
                Some(at) => at,
                None => {
                    overview.push(QueueOverview {
                        name: queue.clone(),
                        ..QueueOverview::default()
                    });
                    overview.len() - 1
                }
            };
            overview[at].count_minute(current - minute, *finished, *failed);
        }
        overview.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(overview)
    }

    async fn set_paused(&self, queue: &str, paused: bool) -> Result<()> {
        let mut q = self.queue();
        if paused {
            q.paused.insert(queue.to_owned());
        } else if q.paused.remove(queue) {
            drop(q);
            // Its waiting jobs can be claimed again.
            self.shared.queue_ready.notify_waiters();
        }
        Ok(())
    }

    async fn paused_queues(&self) -> Result<Vec<String>> {
        Ok(self.queue().paused.iter().cloned().collect())
    }

    async fn heartbeat(&self, worker: &WorkerInfo) -> Result<()> {
        self.queue()
            .workers
            .insert(worker.name.clone(), worker.clone());
        Ok(())
    }

    async fn workers(&self) -> Result<Vec<WorkerInfo>> {
        let forget = Timestamp::now().unix_millis() - FORGET_WORKERS_AFTER.as_millis() as i64;
        let mut queue = self.queue();
        queue
            .workers
            .retain(|_, w| w.last_seen.unix_millis() >= forget);
        let mut workers: Vec<WorkerInfo> = queue.workers.values().cloned().collect();
        workers.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(workers)
    }

    async fn drop_due(&self, job: &JobId) -> Result<()> {
        // Under the job's lock, so its status cannot change in between.
        let found = self.with_job(job, |stored| {
            if stored.head.state.status != JobStatus::Scheduled {
                lock(&self.shared.queue).unschedule(job);
            }
            Ok(())
        });
        match found {
            Err(BackendError::NotFound(_)) => {
                self.queue().unschedule(job);
                Ok(())
            }
            other => other,
        }
    }
}
