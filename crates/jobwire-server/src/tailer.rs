//! The live tailer: reads the backend's live feed and hands each batch to the
//! Hub. It keeps going through outages: on errors it backs off and retries
//! (the tail keeps its position), and whenever live events may have been
//! missed (a reported gap, or a tail opened anew) it asks every connection to
//! re-read its jobs' logs, so nothing is lost.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use jobwire_core::{Backend, LiveBatch, TailFrom};
use tokio_util::sync::CancellationToken;

use crate::hub::Hub;

/// Whether the tailer is currently reading (for `/readyz`), and how often
/// reading failed.
#[derive(Debug, Default)]
pub struct TailerHealth {
    up: AtomicBool,
    errors: AtomicU64,
    reconnects: AtomicU64,
}

impl TailerHealth {
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    pub fn errors(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }

    /// Times the feed was read again after failing.
    pub fn reconnects(&self) -> u64 {
        self.reconnects.load(Ordering::Relaxed)
    }

    fn set(&self, up: bool) {
        if up && !self.up.swap(true, Ordering::Relaxed) && self.errors() > 0 {
            self.reconnects.fetch_add(1, Ordering::Relaxed);
        }
        if !up {
            self.up.store(false, Ordering::Relaxed);
        }
    }

    fn failed(&self) {
        self.set(false);
        self.errors.fetch_add(1, Ordering::Relaxed);
    }
}

const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Runs until `shutdown` is cancelled.
pub async fn run(
    backend: Arc<dyn Backend>,
    hub: Arc<Hub>,
    health: Arc<TailerHealth>,
    shutdown: CancellationToken,
) {
    let mut backoff = MIN_BACKOFF;
    loop {
        let opened = tokio::select! {
            () = shutdown.cancelled() => return,
            opened = backend.tail(TailFrom::Now) => opened,
        };
        let mut tail = match opened {
            Ok(tail) => tail,
            Err(e) => {
                health.failed();
                tracing::warn!(error = %e, retry_in = ?backoff, "cannot open the live feed");
                if back_off(&mut backoff, &shutdown).await {
                    return;
                }
                continue;
            }
        };
        // Anything published before this tail opened was not seen by it.
        hub.recheck_all();
        health.set(true);
        backoff = MIN_BACKOFF;
        loop {
            let next = tokio::select! {
                () = shutdown.cancelled() => return,
                next = tail.next() => next,
            };
            match next {
                Ok(LiveBatch::Events(records)) => {
                    if !health.is_up() {
                        health.set(true);
                        backoff = MIN_BACKOFF;
                    }
                    hub.dispatch(&records);
                }
                Ok(LiveBatch::Gap) => {
                    tracing::warn!("live feed gap: connections re-read their jobs");
                    hub.recheck_all();
                }
                Err(e) => {
                    health.failed();
                    tracing::warn!(error = %e, retry_in = ?backoff, "live feed read failed");
                    if back_off(&mut backoff, &shutdown).await {
                        return;
                    }
                }
            }
        }
    }
}

/// Sleeps for `backoff`, then doubles it (up to the maximum); `true` when
/// shutdown came first.
async fn back_off(backoff: &mut Duration, shutdown: &CancellationToken) -> bool {
    let stopped = tokio::select! {
        () = shutdown.cancelled() => true,
        () = tokio::time::sleep(*backoff) => false,
    };
    *backoff = (*backoff * 2).min(MAX_BACKOFF);
    stopped
}
