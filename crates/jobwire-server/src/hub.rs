//! The Hub: which connections watch which job, and the fan-out of live
//! events to them.
//!
//! Each event is turned into one [`Frame`] (its wire JSON as shared bytes)
//! and offered to every watching connection's bounded outbox with `try_send`.
//! A full outbox marks that connection as a slow consumer (its `slow` token
//! is cancelled; the connection closes with 1013 and the client resumes with
//! `since`). Nobody waits for a slow connection.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use axum::extract::ws::Utf8Bytes;
use jobwire_core::{EventId, EventRecord, JobId};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// One event, ready to write to any number of sockets.
#[derive(Clone, Debug)]
pub struct Frame {
    pub job_id: JobId,
    pub id: EventId,
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
            published: record.timestamp,
            text: Utf8Bytes::from(record.json.to_string()),
        }
    }
}

/// What the Hub puts in a connection's outbox.
#[derive(Clone, Debug)]
pub enum Delivery {
    /// Shared by every watcher of the event: one allocation per event, and
    /// a small slot in each (pre-allocated) outbox.
    Event(Arc<Frame>),
    /// Live events may have been missed (the tail had a gap or restarted):
    /// re-read every subscribed job's log after the last id delivered.
    Recheck,
}

/// The sending side of one connection, as the Hub sees it.
#[derive(Debug)]
pub struct Outbox {
    pub id: u64,
    tx: mpsc::Sender<Delivery>,
    /// Cancelled when the outbox overflowed.
    pub slow: CancellationToken,
}

impl Outbox {
    /// A new outbox holding at most `capacity` deliveries.
    pub fn new(capacity: usize) -> (Arc<Outbox>, mpsc::Receiver<Delivery>) {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        let (tx, rx) = mpsc::channel(capacity.max(1));
        let outbox = Outbox {
            id: NEXT.fetch_add(1, Ordering::Relaxed),
            tx,
            slow: CancellationToken::new(),
        };
        (Arc::new(outbox), rx)
    }

    fn offer(&self, delivery: Delivery) -> bool {
        match self.tx.try_send(delivery) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.slow.cancel();
                false
            }
            // The connection is gone; the Hub forgets it on unsubscribe.
            Err(mpsc::error::TrySendError::Closed(_)) => true,
        }
    }
}

/// Job id → the outboxes of the connections watching it.
#[derive(Debug, Default)]
pub struct Hub {
    watchers: RwLock<HashMap<JobId, Vec<Arc<Outbox>>>>,
}

impl Hub {
    /// Starts delivering `job`'s live events to `outbox`.
    pub fn watch(&self, job: &JobId, outbox: &Arc<Outbox>) {
        let mut watchers = self.write();
        let list = watchers.entry(job.clone()).or_default();
        if !list.iter().any(|o| o.id == outbox.id) {
            list.push(Arc::clone(outbox));
        }
    }

    /// Stops delivering `job`'s events to the outbox `outbox_id`.
    pub fn unwatch(&self, job: &JobId, outbox_id: u64) {
        let mut watchers = self.write();
        if let Some(list) = watchers.get_mut(job) {
            list.retain(|o| o.id != outbox_id);
            if list.is_empty() {
                watchers.remove(job);
            }
        }
    }

    /// Offers live events to their watchers, each event serialized once.
    pub fn dispatch(&self, records: &[EventRecord]) {
        let watchers = self.read();
        for record in records {
            let Some(list) = watchers.get(&record.job_id) else {
                continue;
            };
            let frame = Arc::new(Frame::of(record));
            for outbox in list {
                // A full outbox marks its connection slow; it counts itself
                // when it closes.
                outbox.offer(Delivery::Event(Arc::clone(&frame)));
            }
        }
    }

    /// Asks every connection to re-read its jobs' logs.
    pub fn recheck_all(&self) {
        let watchers = self.read();
        let mut told = std::collections::HashSet::new();
        for outbox in watchers.values().flatten() {
            if told.insert(outbox.id) {
                outbox.offer(Delivery::Recheck);
            }
        }
    }

    /// Jobs with at least one watcher here.
    pub fn watched_jobs(&self) -> usize {
        self.read().len()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<JobId, Vec<Arc<Outbox>>>> {
        self.watchers
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<JobId, Vec<Arc<Outbox>>>> {
        self.watchers
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}
