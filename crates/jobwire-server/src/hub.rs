//! The Hub: which connections watch which job, the fan-out of live events
//! to them, and where each watched job's log stands for recovery.
//!
//! Each event is turned into one [`Frame`] (its wire JSON as shared bytes)
//! and offered to every watching connection's bounded outbox without waiting.
//! A full outbox marks that connection as a slow consumer (its `stop` token
//! is cancelled; the connection closes with 1013 and the client resumes with
//! `since`). Nobody waits for a slow connection.
//!
//! # Recovery positions
//!
//! When the live feed may have lost events (a gap, a tail opened anew), the
//! tailer reads each watched job's log once, from the position the Hub keeps
//! for it, and dispatches what it finds like live events: one read per job
//! and instance, rather than one per job and connection (a thundering herd
//! on the store after every blip). The position is an event id such that
//! every watcher of the job either has (or has queued) every event up to it,
//! or has queued an event beyond its own last one, which makes it re-read the
//! log by itself (the session's hole logic). It is kept so:
//!
//! - dispatching event N raises it to N: every watcher is given N, and is
//!   either in step or sees a hole;
//! - a connection that finished subscribing at N lowers it to N: it may have
//!   nothing past N, and nothing else would tell it about events lost before
//!   it registered;
//! - connections still subscribing when a recovery is planned have not told
//!   their position yet (their first read may predate the lost events), so
//!   they are asked to re-read the job by themselves. A job whose position is
//!   unknown has only such watchers.
//!
//! Keeping the lowest starting position rather than the highest costs a few
//! duplicate events (sessions drop them) but never leaves a watcher behind
//! with no later event to show it the hole.

use std::collections::{HashSet, VecDeque};
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};
use std::task::Poll;

use axum::extract::ws::Utf8Bytes;
use futures_util::task::AtomicWaker;
use jobwire_core::{Epoch, EventId, EventRecord, JobId};
use rustc_hash::FxHashMap;
use tokio_util::sync::CancellationToken;

/// One event, ready to write to any number of sockets.
#[derive(Clone, Debug)]
pub struct Frame {
    pub job_id: JobId,
    pub id: EventId,
    /// The history the event belongs to: a watcher of another epoch takes
    /// it as a sign to re-read the job, never as its next event.
    pub epoch: Epoch,
    /// When it was published, for the delivery-latency histogram.
    pub published: jobwire_core::Timestamp,
    /// The wire JSON; cloning shares the bytes.
    pub text: Utf8Bytes,
}

impl Frame {
    pub fn of(record: &EventRecord) -> Frame {
        Frame {
            job_id: record.job_id.clone(),
            id: record.id,
            epoch: record.epoch.clone(),
            published: record.timestamp,
            // Shares the record's bytes (validated as UTF-8, not copied).
            text: Utf8Bytes::try_from(record.json.clone()).unwrap_or_else(|_| {
                Utf8Bytes::from(String::from_utf8_lossy(&record.json).into_owned())
            }),
        }
    }
}

/// What the Hub puts in a connection's outbox.
#[derive(Clone, Debug)]
pub enum Delivery {
    /// Shared by every watcher of the event: one allocation per event, and
    /// a small slot in each outbox.
    Event(Arc<Frame>),
    /// Live events of this job may have been missed and the Hub could not
    /// recover them for everyone: re-read its log after the last id
    /// delivered. (An `Arc` keeps `Delivery` two words: outboxes hold many
    /// of them.)
    Recheck(Arc<JobId>),
}

const _: () = assert!(std::mem::size_of::<Delivery>() <= 16);

/// A connection's bounded queue of deliveries, as the Hub sees it; the
/// connection reads it through its [`Inbox`].
///
/// A `VecDeque` under a mutex, not a channel: an idle connection holds no
/// buffer at all (a bounded tokio channel pre-allocates a block of 32 slots
/// and a cache-padded state, about 1 KB per connection), and every offer and
/// take is one uncontended lock.
#[derive(Debug)]
pub struct Outbox {
    pub id: u64,
    queue: Mutex<Queue>,
    /// Most deliveries waiting at once; more is a slow consumer.
    capacity: usize,
    /// The connection waiting for a delivery.
    waker: AtomicWaker,
    /// Cancelled when the connection must end: its outbox overflowed (a
    /// slow consumer), or the server is shutting down (it is a child of the
    /// server's shutdown token). One token per connection: waiting on the
    /// server's own token would lock a mutex every connection shares on
    /// every wake-up.
    pub stop: CancellationToken,
}

#[derive(Debug, Default)]
struct Queue {
    items: VecDeque<Delivery>,
    /// The connection is gone (its inbox dropped): offers are dropped.
    closed: bool,
}

/// A drained queue keeps at most this many slots; a burst's larger buffer
/// is freed, so that an idle connection does not keep it.
const KEPT_SLOTS: usize = 16;

impl Outbox {
    /// A new outbox holding at most `capacity` deliveries, stopped with
    /// `shutdown`.
    pub fn new(capacity: usize, shutdown: &CancellationToken) -> (Arc<Outbox>, Inbox) {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        let outbox = Arc::new(Outbox {
            id: NEXT.fetch_add(1, Ordering::Relaxed),
            queue: Mutex::default(),
            capacity: capacity.max(1),
            waker: AtomicWaker::new(),
            stop: shutdown.child_token(),
        });
        let inbox = Inbox {
            outbox: Arc::clone(&outbox),
        };
        (outbox, inbox)
    }

    fn queue(&self) -> MutexGuard<'_, Queue> {
        // A panic while holding it cannot leave the queue half-changed.
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn offer(&self, delivery: Delivery) -> bool {
        let mut queue = self.queue();
        if queue.closed {
            // The connection is gone; the Hub forgets it on unsubscribe.
            return true;
        }
        if queue.items.len() >= self.capacity {
            drop(queue);
            self.stop.cancel();
            return false;
        }
        queue.items.push_back(delivery);
        drop(queue);
        self.waker.wake();
        true
    }
}

/// The connection's side of its [`Outbox`].
#[derive(Debug)]
pub struct Inbox {
    outbox: Arc<Outbox>,
}

impl Inbox {
    /// The next delivery, waiting for one.
    pub async fn recv(&mut self) -> Delivery {
        std::future::poll_fn(|cx| {
            if let Some(delivery) = self.try_recv() {
                return Poll::Ready(delivery);
            }
            self.outbox.waker.register(cx.waker());
            // An offer between the first look and the registration woke
            // nobody: look again.
            self.try_recv().map_or(Poll::Pending, Poll::Ready)
        })
        .await
    }

    /// The next delivery, if one is waiting.
    pub fn try_recv(&mut self) -> Option<Delivery> {
        let mut queue = self.outbox.queue();
        let delivery = queue.items.pop_front();
        if queue.items.is_empty() && queue.items.capacity() > KEPT_SLOTS {
            queue.items = VecDeque::new();
        }
        delivery
    }
}

impl Drop for Inbox {
    fn drop(&mut self) {
        let mut queue = self.outbox.queue();
        queue.closed = true;
        queue.items = VecDeque::new();
    }
}

/// A position in a job's log, to recover from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Position {
    /// Read the log after this event.
    pub id: EventId,
    /// The history `id` belongs to. Reading with it turns a rebuilt or
    /// rolled-back log into a resync, not into events of another history.
    pub epoch: Epoch,
}

#[derive(Debug)]
struct Watcher {
    outbox: Arc<Outbox>,
    /// Whether the connection has told where its subscription starts.
    started: bool,
}

/// One watched job.
#[derive(Debug, Default)]
struct Watched {
    watchers: Vec<Watcher>,
    /// See the module docs; `None` until a watcher started or an event was
    /// dispatched.
    position: Option<Position>,
}

impl Watched {
    fn recheck(&self, job: &JobId, only_starting: bool) {
        let job = Arc::new(job.clone());
        for watcher in &self.watchers {
            if !(only_starting && watcher.started) {
                watcher.outbox.offer(Delivery::Recheck(Arc::clone(&job)));
            }
        }
    }
}

/// Shards of the Hub's map: a dispatch locks only the shards of the jobs it
/// delivers, so subscribes, unsubscribes and dispatches of other jobs do not
/// wait for it (centrifuge's hub has 64 too).
const SHARDS: usize = 64;

type Shard = RwLock<FxHashMap<JobId, Watched>>;

/// Job id → the connections watching it, and its recovery position.
#[derive(Debug)]
pub struct Hub {
    shards: Box<[Shard]>,
}

impl Default for Hub {
    fn default() -> Hub {
        Hub {
            shards: (0..SHARDS).map(|_| Shard::default()).collect(),
        }
    }
}

impl Hub {
    /// Starts delivering `job`'s live events to `outbox`. The connection
    /// then reads the job and reports where it starts with [`Hub::started`].
    pub fn watch(&self, job: &JobId, outbox: &Arc<Outbox>) {
        let mut jobs = self.write(job);
        let watched = jobs.entry(job.clone()).or_default();
        match watched
            .watchers
            .iter_mut()
            .find(|w| w.outbox.id == outbox.id)
        {
            // Subscribing again: a fresh start, position not known yet.
            Some(watcher) => watcher.started = false,
            None => watched.watchers.push(Watcher {
                outbox: Arc::clone(outbox),
                started: false,
            }),
        }
    }

    /// The connection `outbox_id` has sent `job`'s events up to `last` (of
    /// the log `epoch`) and passes on live events from here.
    pub fn started(&self, job: &JobId, outbox_id: u64, last: EventId, epoch: &Epoch) {
        let mut jobs = self.write(job);
        let Some(watched) = jobs.get_mut(job) else {
            return;
        };
        let Some(watcher) = watched
            .watchers
            .iter_mut()
            .find(|w| w.outbox.id == outbox_id)
        else {
            return;
        };
        watcher.started = true;
        match &mut watched.position {
            Some(position) if position.epoch == *epoch => {
                position.id = position.id.min(last);
            }
            // Unknown, or of another history: ids of one history say
            // nothing about another.
            other => {
                let changed = other.is_some();
                *other = Some(Position {
                    id: last,
                    epoch: epoch.clone(),
                });
                // The other watchers started in the old history, and the
                // position that would have made a recovery resync them is
                // gone: a live feed that skipped the new history's first
                // events (the tail jumps past what it cannot trust after a
                // Redis restart), then a recovery from this position, find
                // nothing to send them, and they wait for ever. Each
                // re-reads instead (those already in this history find
                // nothing new).
                if changed {
                    for other in watched.watchers.iter().filter(|w| w.outbox.id != outbox_id) {
                        if other.started {
                            other.outbox.offer(Delivery::Recheck(Arc::new(job.clone())));
                        }
                    }
                }
            }
        }
    }

    /// Stops delivering `job`'s events to the outbox `outbox_id`.
    pub fn unwatch(&self, job: &JobId, outbox_id: u64) {
        let mut jobs = self.write(job);
        if let Some(watched) = jobs.get_mut(job) {
            watched.watchers.retain(|w| w.outbox.id != outbox_id);
            if watched.watchers.is_empty() {
                jobs.remove(job);
            }
        }
    }

    /// Offers events (live, or read for a recovery) to their watchers, each
    /// event serialized once, and moves the jobs' positions past them.
    pub fn dispatch(&self, records: &[EventRecord]) {
        // The shard's write lock: positions move. A batch's records of one
        // shard (often one job's run) share one lock.
        let mut held: Option<(
            usize,
            std::sync::RwLockWriteGuard<'_, FxHashMap<JobId, Watched>>,
        )> = None;
        for record in records {
            let index = shard_of(&record.job_id);
            let jobs = match &mut held {
                Some((i, guard)) if *i == index => guard,
                _ => {
                    held = None;
                    &mut held.insert((index, write_lock(&self.shards[index]))).1
                }
            };
            let Some(watched) = jobs.get_mut(&record.job_id) else {
                continue;
            };
            match &mut watched.position {
                Some(position) if position.epoch == record.epoch => {
                    position.id = position.id.max(record.id);
                }
                // The first event, or one of a new history (the store lost
                // writes, or the job's log was rebuilt): every watcher is
                // given this event, and a watcher of the old history
                // re-reads the job when it meets it.
                other => {
                    *other = Some(Position {
                        id: record.id,
                        epoch: record.epoch.clone(),
                    })
                }
            }
            let frame = Arc::new(Frame::of(record));
            for watcher in &watched.watchers {
                // A full outbox marks its connection slow; it counts itself
                // when it closes.
                watcher.outbox.offer(Delivery::Event(Arc::clone(&frame)));
            }
        }
    }

    /// Asks every connection watching `job` to re-read its log by itself.
    pub fn recheck(&self, job: &JobId) {
        if let Some(watched) = read_lock(&self.shards[shard_of(job)]).get(job) {
            watched.recheck(job, false);
        }
    }

    /// Plans a recovery of `jobs` (every watched job when `None`): the
    /// position to read each job's log from. Connections still subscribing
    /// are asked to re-read by themselves (see the module docs), here, under
    /// the lock, so that none falls between the plan and its report.
    pub fn plan_recovery(&self, jobs: Option<&HashSet<JobId>>) -> Vec<(JobId, Position)> {
        let mut plan = Vec::new();
        let mut plan_one = |job: &JobId, w: &Watched| {
            w.recheck(job, true);
            if let Some(position) = &w.position {
                plan.push((job.clone(), position.clone()));
            }
        };
        match jobs {
            Some(jobs) => {
                for job in jobs {
                    if let Some(w) = read_lock(&self.shards[shard_of(job)]).get(job) {
                        plan_one(job, w);
                    }
                }
            }
            None => {
                for shard in self.shards.iter() {
                    for (job, w) in read_lock(shard).iter() {
                        plan_one(job, w);
                    }
                }
            }
        }
        plan
    }

    /// Jobs with at least one watcher here.
    pub fn watched_jobs(&self) -> usize {
        self.shards.iter().map(|shard| read_lock(shard).len()).sum()
    }

    fn write(&self, job: &JobId) -> std::sync::RwLockWriteGuard<'_, FxHashMap<JobId, Watched>> {
        write_lock(&self.shards[shard_of(job)])
    }
}

fn shard_of(job: &JobId) -> usize {
    let mut hasher = rustc_hash::FxHasher::default();
    job.hash(&mut hasher);
    (hasher.finish() as usize) % SHARDS
}

fn read_lock(shard: &Shard) -> std::sync::RwLockReadGuard<'_, FxHashMap<JobId, Watched>> {
    shard
        .read()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn write_lock(shard: &Shard) -> std::sync::RwLockWriteGuard<'_, FxHashMap<JobId, Watched>> {
    shard
        .write()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(job: &JobId, id: u64) -> EventRecord {
        EventRecord {
            id: EventId(id),
            job_id: job.clone(),
            epoch: "e1".parse().expect("epoch"),
            timestamp: jobwire_core::Timestamp::now(),
            json: "{}".into(),
        }
    }

    fn rechecks(rx: &mut Inbox) -> usize {
        let mut n = 0;
        while let Some(delivery) = rx.try_recv() {
            if matches!(delivery, Delivery::Recheck(_)) {
                n += 1;
            }
        }
        n
    }

    #[test]
    fn positions_follow_dispatches_and_the_lowest_start() {
        let hub = Hub::default();
        let job = JobId::generate();
        // The epoch of `record`'s events: one history throughout.
        let epoch: Epoch = "e1".parse().expect("epoch");
        let shutdown = CancellationToken::new();
        let (a, mut a_rx) = Outbox::new(16, &shutdown);
        let (b, mut b_rx) = Outbox::new(16, &shutdown);
        hub.watch(&job, &a);
        hub.started(&job, a.id, EventId(5), &epoch);
        hub.dispatch(&[record(&job, 6), record(&job, 7)]);
        let at = |hub: &Hub| hub.plan_recovery(None).first().map(|(_, p)| p.id);
        assert_eq!(at(&hub), Some(EventId(7)));
        // A later subscriber that starts behind: the read must cover it.
        hub.watch(&job, &b);
        hub.started(&job, b.id, EventId(4), &epoch);
        assert_eq!(at(&hub), Some(EventId(4)));
        // Nobody was still subscribing: no one is asked to re-read.
        assert_eq!(rechecks(&mut a_rx) + rechecks(&mut b_rx), 0);
        let plan = hub.plan_recovery(None);
        assert_eq!(plan[0].1.epoch, epoch);
    }

    /// Found by the chaos suite (redis-cut-aof): after a crash the job went
    /// on under a new epoch, a reconnecting client started in it on this
    /// instance, and the watchers still holding the old epoch were never
    /// told: the recovery read from the new position found nothing.
    #[test]
    fn a_start_in_another_history_makes_the_others_re_read() {
        let hub = Hub::default();
        let job = JobId::generate();
        let (old, new) = (Epoch::generate(), Epoch::generate());
        let shutdown = CancellationToken::new();
        let (a, mut a_rx) = Outbox::new(16, &shutdown);
        let (b, mut b_rx) = Outbox::new(16, &shutdown);
        hub.watch(&job, &a);
        hub.started(&job, a.id, EventId(36), &old);
        hub.watch(&job, &b);
        hub.started(&job, b.id, EventId(36), &new);
        assert_eq!(rechecks(&mut a_rx), 1, "the old history's watcher re-reads");
        assert_eq!(rechecks(&mut b_rx), 0);
        // A start in the same history asks nobody.
        let (c, mut c_rx) = Outbox::new(16, &shutdown);
        hub.watch(&job, &c);
        hub.started(&job, c.id, EventId(36), &new);
        assert_eq!(
            rechecks(&mut a_rx) + rechecks(&mut b_rx) + rechecks(&mut c_rx),
            0
        );
    }

    #[test]
    fn watchers_still_subscribing_re_read_by_themselves() {
        let hub = Hub::default();
        let (known, unknown) = (JobId::generate(), JobId::generate());
        let shutdown = CancellationToken::new();
        let (a, mut a_rx) = Outbox::new(16, &shutdown);
        let (b, mut b_rx) = Outbox::new(16, &shutdown);
        hub.watch(&known, &a);
        hub.started(&known, a.id, EventId(3), &Epoch::generate());
        hub.watch(&known, &b);
        hub.watch(&unknown, &b);
        let plan = hub.plan_recovery(None);
        // Only the job with a position is read; b re-reads both of its jobs.
        assert_eq!(plan.len(), 1);
        assert_eq!(plan[0].0, known);
        assert_eq!(rechecks(&mut a_rx), 0);
        assert_eq!(rechecks(&mut b_rx), 2);
        // Unwatching forgets the job and its position.
        hub.unwatch(&unknown, b.id);
        assert_eq!(hub.watched_jobs(), 1);
    }
}
