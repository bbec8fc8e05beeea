//! `MemoryBackend`: the whole backend contract inside one process, for
//! `jobwire dev` and single-node `jobwire serve --memory`.
//!
//! # Locking
//!
//! Four kinds of `std::sync::Mutex`, always taken in this order: the index
//! (job map, listings), then one job, then the queue (entries, leases and
//! schedule), then the live feed. Each job has
//! its own lock so publishes to different jobs plan and serialize in
//! parallel; the index and live-feed locks cover only map operations. No lock
//! is held across an `.await`, so blocking mutexes are cheaper than async ones
//! (the reasoning of mini-redis `db.rs`). Waiting (live tail, queue claim)
//! happens outside the locks on a `watch` channel and a `Notify`.

mod live;
mod queue;
mod schedules;
mod store;

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::{watch, Notify};

use crate::backend::{BackendConfig, BackendError, JobCounts, Result};
use crate::event::EventRecord;
use crate::ids::{JobId, Timestamp};
use crate::job::{JobState, JobStatus};
use crate::publish::LogHead;

use live::Feed;
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
    queue: Mutex<Queue>,
    live: Mutex<Feed>,
    /// The live feed's next position, for tails to wait on.
    live_tx: watch::Sender<u64>,
    /// Wakes workers blocked in `claim` when an entry is enqueued.
    queue_ready: Notify,
    /// Jobs by status, kept as the Redis backend keeps them.
    counts: Mutex<JobCounts>,
    /// Unfinished jobs per owner (the per-user quota).
    unfinished: Mutex<HashMap<String, u64>>,
    /// Idempotency keys and the jobs they made. An async mutex: it is held
    /// across the create it guards (the one exception to the rule above).
    idempotency: tokio::sync::Mutex<Keys>,
    /// Jobs started and finished per minute (minute index since the Unix
    /// epoch), the last hour or so.
    throughput: Mutex<std::collections::BTreeMap<i64, (u64, u64)>>,
    /// Jobs finished and failed per minute and queue, the last hour or so.
    queue_minutes: Mutex<std::collections::BTreeMap<(i64, String), (u64, u64)>>,
    /// Cron schedules by name (a lock of its own, never held with another).
    schedules: Mutex<std::collections::BTreeMap<String, crate::schedule::Schedule>>,
}

/// Idempotency keys and unique keys, and the jobs they name.
#[derive(Debug, Default)]
struct Keys {
    idempotency: HashMap<String, KeyRecord>,
    /// `<kind>\n<key>` → the job that holds it (while unfinished).
    unique: HashMap<String, JobId>,
}

/// What an idempotency key made, and until when it counts.
#[derive(Debug)]
struct KeyRecord {
    job: JobId,
    fingerprint: String,
    expires: tokio::time::Instant,
}

#[derive(Debug, Default)]
struct Index {
    jobs: HashMap<JobId, Arc<Mutex<StoredJob>>>,
    /// Listing indexes: job ids sort by creation time (ULIDs).
    all_jobs: BTreeSet<JobId>,
    by_owner: HashMap<String, BTreeSet<JobId>>,
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
                queue: Mutex::new(Queue::default()),
                live: Mutex::new(Feed::new(capacity.max(1))),
                live_tx: watch::channel(0).0,
                queue_ready: Notify::new(),
                counts: Mutex::new(JobCounts::default()),
                unfinished: Mutex::new(HashMap::new()),
                idempotency: tokio::sync::Mutex::new(Keys::default()),
                schedules: Mutex::default(),
                throughput: Mutex::default(),
                queue_minutes: Mutex::default(),
            }),
        }
    }

    fn index(&self) -> MutexGuard<'_, Index> {
        lock(&self.shared.index)
    }

    fn queue(&self) -> MutexGuard<'_, Queue> {
        lock(&self.shared.queue)
    }

    fn live(&self) -> MutexGuard<'_, Feed> {
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

    /// Counts a job (an attempt) that started, and one that finished
    /// (`failed` or not), in this minute's throughput, store-wide and for
    /// its queue.
    fn count_minute(&self, queue: &str, started: bool, finished: bool, failed: bool) {
        if !(started || finished) {
            return;
        }
        let minute = crate::Timestamp::now().unix_millis().div_euclid(60_000);
        let recent = |m: i64| m > minute - crate::backend::THROUGHPUT_MINUTES;
        {
            let mut throughput = lock(&self.shared.throughput);
            let slot = throughput.entry(minute).or_default();
            slot.0 += u64::from(started);
            slot.1 += u64::from(finished);
            throughput.retain(|m, _| recent(*m));
        }
        if finished {
            let mut per_queue = lock(&self.shared.queue_minutes);
            let slot = per_queue.entry((minute, queue.to_owned())).or_default();
            slot.0 += 1;
            slot.1 += u64::from(failed);
            per_queue.retain(|(m, _), _| recent(*m));
        }
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
