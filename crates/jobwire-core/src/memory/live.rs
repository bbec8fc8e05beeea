//! The in-memory live feed: a bounded ring of recent events with absolute
//! positions, the tail that reads it, and `MemoryBackend` as a
//! [`LiveFeed`].

use std::collections::VecDeque;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::watch;

use crate::backend::{BackendError, LiveBatch, LiveFeed, LivePosition, LiveTail, Result, TailFrom};
use crate::event::EventRecord;

use super::MemoryBackend;

/// How many events one `next` returns at most.
const BATCH: usize = 1024;
/// How long `next` waits for events before returning an empty batch.
const WAIT: Duration = Duration::from_secs(1);

#[derive(Debug)]
pub(super) struct Feed {
    /// Position of `ring[0]`.
    first: u64,
    ring: VecDeque<EventRecord>,
    capacity: usize,
}

impl Feed {
    pub(super) fn new(capacity: usize) -> Feed {
        Feed {
            first: 0,
            ring: VecDeque::new(),
            capacity,
        }
    }

    /// Appends an event; returns the position after it.
    pub(super) fn push(&mut self, event: EventRecord) -> u64 {
        self.ring.push_back(event);
        if self.ring.len() > self.capacity {
            self.ring.pop_front();
            self.first += 1;
        }
        self.next_position()
    }

    pub(super) fn len(&self) -> usize {
        self.ring.len()
    }

    pub(super) fn next_position(&self) -> u64 {
        self.first + self.ring.len() as u64
    }

    /// Events from `from` on; `None` when `from` was already dropped.
    fn read(&self, from: u64, max: usize) -> Option<Vec<EventRecord>> {
        if from < self.first {
            return None;
        }
        let skip = (from - self.first) as usize;
        Some(self.ring.iter().skip(skip).take(max).cloned().collect())
    }
}

#[derive(Debug)]
pub(super) struct MemoryTail {
    backend: MemoryBackend,
    next: u64,
    changes: watch::Receiver<u64>,
}

impl MemoryTail {
    pub(super) fn new(backend: MemoryBackend, next: u64, changes: watch::Receiver<u64>) -> Self {
        MemoryTail {
            backend,
            next,
            changes,
        }
    }
}

#[async_trait]
impl LiveTail for MemoryTail {
    async fn next(&mut self) -> Result<LiveBatch> {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            self.changes.borrow_and_update();
            {
                let live = self.backend.live();
                match live.read(self.next, BATCH) {
                    None => {
                        self.next = live.first;
                        return Ok(LiveBatch::Gap);
                    }
                    Some(events) if !events.is_empty() => {
                        self.next += events.len() as u64;
                        return Ok(LiveBatch::Events(events));
                    }
                    Some(_) => {}
                }
            }
            match tokio::time::timeout_at(deadline, self.changes.changed()).await {
                Ok(Ok(())) => continue,
                // Timed out, or the backend is gone: nothing more to read now.
                Ok(Err(_)) | Err(_) => return Ok(LiveBatch::Events(Vec::new())),
            }
        }
    }

    fn position(&self) -> LivePosition {
        LivePosition(self.next.to_string())
    }
}

#[async_trait]
impl LiveFeed for MemoryBackend {
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
}
