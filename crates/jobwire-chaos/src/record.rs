//! What each watcher saw: one [`WatchLog`] per (client, job), appended to
//! as messages arrive, and the per-job state machine ([`JobWatch`]) every
//! client kind shares to turn protocol messages into observations and to
//! know where to resume.
//!
//! Raw clients record exactly what the server sent (duplicates and holes
//! included: the server promises there are none); the Rust client records
//! what its watch stream hands out (it drops duplicates and resumes at
//! holes by itself, so its log shows what an application would see).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use jobwire_core::{Epoch, Event, EventId, JobId, JobStatus};
use serde::Serialize;

/// The kinds of clients the suite runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientKind {
    /// `jobwire_client::Client::watch` (reconnects by itself).
    Rust,
    /// One WebSocket, many jobs (`/ws/jobs` with subscribe frames).
    Mux,
    /// A slow multiplexed WebSocket (tiny receive buffer, reads slowly
    /// while a `slow-clients` fault lasts).
    Slow,
    /// One job per WebSocket (`/ws/jobs/{id}?since=&epoch=`).
    Single,
    /// Server-sent events (`Last-Event-ID: EPOCH:ID`).
    Sse,
}

/// A clock for the run: times are offsets from its start.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    start: Instant,
}

impl Clock {
    pub fn new() -> Clock {
        Clock {
            start: Instant::now(),
        }
    }

    pub fn now(&self) -> Duration {
        self.start.elapsed()
    }
}

impl Default for Clock {
    fn default() -> Self {
        Clock::new()
    }
}

/// How a job's stream (re)started.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StartKind {
    /// `current_state` on a fresh subscribe.
    Fresh,
    /// `resumed` after a resume.
    Resumed,
    /// `current_state` with `resync: true`.
    Resync,
    /// `current_state` *without* `resync` in answer to a resume: the
    /// protocol does not allow it (the client could not tell it lost its
    /// place).
    StateOnResume,
}

/// One thing a watcher saw.
#[derive(Clone, Debug)]
pub enum Obs {
    /// The first message of a (re)subscribe.
    Start {
        at: Duration,
        kind: StartKind,
        epoch: Epoch,
        id: EventId,
        status: Option<JobStatus>,
        /// For `Resumed`: where the client asked to resume.
        asked: Option<(Epoch, EventId)>,
    },
    /// An event, under the epoch of the stream it came on.
    Event {
        at: Duration,
        epoch: Epoch,
        event: Event,
        /// SSE only: the epoch written in the message's `id:` line.
        labelled: Option<Epoch>,
    },
    /// The job is gone (`gone`, 4404, `not_found`).
    Gone { at: Duration },
    /// The connection was lost or replaced; `reason` says why.
    Reconnect { at: Duration, reason: String },
    /// A connection to this gateway (base URL) was opened, for the
    /// post-mortem of a violation (which gateway served what).
    Connected { at: Duration, gateway: String },
    /// Something the protocol does not allow, seen by the client itself
    /// (an event before any state, a malformed frame, a client error).
    Anomaly { at: Duration, what: String },
}

/// Everything one watcher of one job saw.
#[derive(Clone, Debug)]
pub struct WatchLog {
    pub client: String,
    pub kind: ClientKind,
    pub job: JobId,
    pub obs: Vec<Obs>,
    /// When the watcher stopped: after a terminal event or state, or a
    /// gone notice. `None`: it was still waiting when the run ended.
    pub ended: Option<Duration>,
}

impl WatchLog {
    pub fn reconnects(&self) -> usize {
        self.obs
            .iter()
            .filter(|o| matches!(o, Obs::Reconnect { .. }))
            .count()
    }

    pub fn resyncs(&self) -> usize {
        self.obs
            .iter()
            .filter(|o| {
                matches!(
                    o,
                    Obs::Start {
                        kind: StartKind::Resync,
                        ..
                    }
                )
            })
            .count()
    }

    pub fn events(&self) -> usize {
        self.obs
            .iter()
            .filter(|o| matches!(o, Obs::Event { .. }))
            .count()
    }
}

/// One job as a raw client follows it: its log and where to resume.
#[derive(Debug)]
pub struct JobWatch {
    pub log: WatchLog,
    /// The epoch and the last id held: the resume point.
    pub cursor: Option<(Epoch, EventId)>,
    /// Whether the last (re)subscribe asked to resume.
    asked: Option<(Epoch, EventId)>,
    pub done: bool,
    clock: Clock,
    /// The run's count of watchers not yet ended.
    live: Arc<AtomicUsize>,
}

impl JobWatch {
    pub fn new(
        client: &str,
        kind: ClientKind,
        job: JobId,
        clock: Clock,
        live: Arc<AtomicUsize>,
    ) -> JobWatch {
        live.fetch_add(1, Ordering::SeqCst);
        JobWatch {
            log: WatchLog {
                client: client.to_owned(),
                kind,
                job,
                obs: Vec::new(),
                ended: None,
            },
            cursor: None,
            asked: None,
            done: false,
            clock,
            live,
        }
    }

    pub fn job(&self) -> &JobId {
        &self.log.job
    }

    /// A (re)subscribe is being sent, resuming from the cursor if any.
    pub fn subscribing(&mut self) -> Option<(Epoch, EventId)> {
        self.asked = self.cursor.clone();
        self.asked.clone()
    }

    /// `current_state`.
    pub fn on_state(&mut self, epoch: Epoch, id: EventId, status: JobStatus, resync: bool) {
        let kind = match (resync, self.asked.is_some()) {
            (true, _) => StartKind::Resync,
            (false, false) => StartKind::Fresh,
            (false, true) => StartKind::StateOnResume,
        };
        self.log.obs.push(Obs::Start {
            at: self.clock.now(),
            kind,
            epoch: epoch.clone(),
            id,
            status: Some(status),
            asked: self.asked.clone(),
        });
        self.cursor = Some((epoch, id));
        self.asked = None;
        if status.is_terminal() {
            self.finish();
        }
    }

    /// `resumed` (epoch as the server said; the Rust client does not pass
    /// it on, and gives the one it held).
    pub fn on_resumed(&mut self, epoch: Epoch, id: EventId) {
        self.log.obs.push(Obs::Start {
            at: self.clock.now(),
            kind: StartKind::Resumed,
            epoch: epoch.clone(),
            id,
            status: None,
            asked: self.asked.clone(),
        });
        self.cursor = Some((epoch, id));
        self.asked = None;
    }

    /// An event of this job.
    pub fn on_event(&mut self, event: Event, labelled: Option<Epoch>) {
        let at = self.clock.now();
        let Some((epoch, last)) = &mut self.cursor else {
            self.log.obs.push(Obs::Anomaly {
                at,
                what: format!("event {} before any state", event.id),
            });
            return;
        };
        // Resume after the highest id held, so that a duplicate the
        // checker will report does not also move the cursor back.
        if event.id > *last {
            *last = event.id;
        }
        let terminal = event.kind.is_terminal();
        self.log.obs.push(Obs::Event {
            at,
            epoch: epoch.clone(),
            event,
            labelled,
        });
        if terminal {
            self.finish();
        }
    }

    pub fn on_gone(&mut self) {
        self.log.obs.push(Obs::Gone {
            at: self.clock.now(),
        });
        self.finish();
    }

    pub fn on_reconnect(&mut self, reason: impl Into<String>) {
        self.log.obs.push(Obs::Reconnect {
            at: self.clock.now(),
            reason: reason.into(),
        });
    }

    pub fn on_connected(&mut self, gateway: &str) {
        self.log.obs.push(Obs::Connected {
            at: self.clock.now(),
            gateway: gateway.to_owned(),
        });
    }

    pub fn anomaly(&mut self, what: impl Into<String>) {
        self.log.obs.push(Obs::Anomaly {
            at: self.clock.now(),
            what: what.into(),
        });
    }

    fn finish(&mut self) {
        if !self.done {
            self.done = true;
            self.log.ended = Some(self.clock.now());
            self.live.fetch_sub(1, Ordering::SeqCst);
        }
    }
}
