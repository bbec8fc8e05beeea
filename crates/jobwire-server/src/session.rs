//! One connection's subscriptions, and the subscribe algorithm that makes
//! delivery exact (docs/protocol.md). Transport-agnostic: WebSocket and SSE both drive
//! a `Session` and write out what it produces.
//!
//! Subscribing to a job:
//! 1. read the job (404 / 403 checks);
//! 2. register the connection's outbox with the Hub, so live events of the
//!    job are queued from now on;
//! 3. send exactly one first message: `current_state` (the snapshot, as of
//!    event N), or `resumed` followed by the log after `since`, or
//!    `current_state` with `resync: true` when `since` cannot be resumed;
//! 4. from then on pass on only events with id = last sent + 1. Queued live
//!    events at or below the last id sent are duplicates and dropped; an id
//!    further ahead means events were missed, and the log is re-read from the
//!    last id sent.
//!
//! Once started, the session tells the Hub its position: after a live-feed
//! gap the tailer re-reads each job's log once for all of its watchers from
//! there (see [`crate::hub`]), and only asks a session to re-read a job by
//! itself ([`Delivery::Recheck`]) when that cannot serve it.
//!
//! Because the log and the snapshot move together (one atomic publish), and
//! registration happens before the first read, every event after the first
//! message's position reaches the client exactly once, in order.

use rustc_hash::FxHashMap;
use std::sync::Arc;

use jobwire_core::{
    BackendError, Control, Epoch, EventId, EventsAfter, JobId, JobState, JobStore, Resume,
};

use crate::auth::Principal;
use crate::hub::{Delivery, Frame, Hub, Inbox, Outbox};
use crate::state::AppState;

/// Events read from the log per round when catching up.
const CATCH_UP_PAGE: usize = 500;

/// Something to send to the client, in order. Two words: a connection
/// keeps a few slots of these between messages (see `ws.rs`).
#[derive(Clone, Debug)]
pub enum Out {
    /// A message of the protocol (`current_state`, `resumed`, `pong`, an
    /// error …): rare next to events, so boxed.
    Control(Box<Notice>),
    /// An event of a job's log (of the subscription's epoch).
    Event { frame: Arc<Frame> },
}

const _: () = assert!(std::mem::size_of::<Out>() <= 16);

/// A protocol message as sent, with the resume position it stands for, if
/// any.
#[derive(Clone, Debug)]
pub struct Notice {
    pub json: String,
    pub position: Option<(Epoch, EventId)>,
}

impl Out {
    /// A message that moves no resume position.
    pub fn notice(message: &Control) -> Out {
        Out::control(message.to_json(), None)
    }

    fn control(json: String, position: Option<(Epoch, EventId)>) -> Out {
        Out::Control(Box::new(Notice { json, position }))
    }
}

/// Why a subscription was refused.
#[derive(Debug, thiserror::Error)]
pub enum SubscribeError {
    #[error("no job {0}")]
    NotFound(JobId),
    #[error("job {0} belongs to another user")]
    Forbidden(JobId),
    #[error("too many subscriptions on this connection (at most {0})")]
    TooMany(usize),
    #[error(transparent)]
    Backend(BackendError),
}

impl From<BackendError> for SubscribeError {
    fn from(e: BackendError) -> SubscribeError {
        match e {
            BackendError::NotFound(job) => SubscribeError::NotFound(job),
            other => SubscribeError::Backend(other),
        }
    }
}

#[derive(Debug)]
struct Sub {
    last: EventId,
    epoch: Epoch,
    /// The job's owner, to check the subscription again when the
    /// connection's token changes.
    owner: Arc<str>,
}

/// A connection's subscriptions.
#[derive(Debug)]
pub struct Session {
    store: Arc<dyn JobStore>,
    hub: Arc<Hub>,
    outbox: Arc<Outbox>,
    pub principal: Principal,
    subs: FxHashMap<JobId, Sub>,
    max_subscriptions: usize,
}

impl Session {
    /// A new connection's session, with the outbox the Hub fills for it
    /// (bounded by the server's `client_queue`, stopped on shutdown) and
    /// the connection's end of it.
    pub fn open(
        state: &AppState,
        principal: Principal,
        max_subscriptions: usize,
    ) -> (Session, Arc<Outbox>, Inbox) {
        let (outbox, inbox) = Outbox::new(state.config.client_queue, &state.shutdown);
        let session = Session {
            store: state.store.clone(),
            hub: state.hub.clone(),
            outbox: outbox.clone(),
            principal,
            subs: FxHashMap::default(),
            max_subscriptions,
        };
        (session, outbox, inbox)
    }

    /// Subscribes to a job (again, if already subscribed: a fresh start).
    ///
    /// # Errors
    /// [`SubscribeError`]: unknown job, another user's job, too many
    /// subscriptions, or the backend failing.
    pub async fn subscribe(
        &mut self,
        job: &JobId,
        since: Option<Resume>,
        out: &mut Vec<Out>,
    ) -> Result<(), SubscribeError> {
        if !self.subs.contains_key(job) && self.subs.len() >= self.max_subscriptions {
            return Err(SubscribeError::TooMany(self.max_subscriptions));
        }
        let state = self.store.job(job).await?;
        if !self.principal.may_see(&state.owner) {
            return Err(SubscribeError::Forbidden(job.clone()));
        }
        self.hub.watch(job, &self.outbox);
        let owner: Arc<str> = state.owner.as_str().into();
        let started = match since {
            Some(resume) => self.resume(job, resume, owner, out).await,
            None => self.fresh(job, false, out).await,
        };
        match &started {
            Ok(()) => {
                // Tell the Hub where this subscription starts, so that a
                // recovery reads the job's log from no later than here. (The
                // job may be gone already: then there is no sub.)
                if let Some(sub) = self.subs.get(job) {
                    self.hub.started(job, self.outbox.id, sub.last, &sub.epoch);
                }
                tracing::debug!(job = %job, "subscribed");
            }
            Err(e) => {
                tracing::debug!(job = %job, error = %e, "subscribe failed");
                self.unsubscribe(job);
            }
        }
        started
    }

    /// Takes a new principal for the connection (a refreshed token, already
    /// checked like a new connection's), and ends the subscriptions it may
    /// not see: each gets a `refused` with code `forbidden`.
    pub fn reauthorize(&mut self, principal: Principal, out: &mut Vec<Out>) {
        self.principal = principal;
        let lost: Vec<JobId> = self
            .subs
            .iter()
            .filter(|(_, sub)| !self.principal.may_see(&sub.owner))
            .map(|(job, _)| job.clone())
            .collect();
        for job in lost {
            out.push(Out::notice(&Control::Refused {
                code: jobwire_core::Refusal::Forbidden,
                message: format!(
                    "job {job} belongs to another user (the refreshed token cannot see it)"
                ),
                job_id: Some(job.clone()),
            }));
            self.unsubscribe(&job);
        }
    }

    /// Whether the connection watches no job (any more): a one-job socket
    /// or SSE stream whose job is gone ends then.
    pub fn is_empty(&self) -> bool {
        self.subs.is_empty()
    }

    /// Stops a subscription; later events of the job are not sent.
    pub fn unsubscribe(&mut self, job: &JobId) {
        self.subs.remove(job);
        self.hub.unwatch(job, self.outbox.id);
    }

    /// Handles one delivery from the Hub.
    ///
    /// # Errors
    /// Backend errors while re-reading a log.
    pub async fn deliver(
        &mut self,
        delivery: Delivery,
        out: &mut Vec<Out>,
    ) -> Result<(), BackendError> {
        match self.deliver_now(delivery, out) {
            None => Ok(()),
            Some(Delivery::Event(frame)) => {
                tracing::debug!(job = %frame.job_id, after = %frame.id, epoch = %frame.epoch,
                    "hole in live events, or another history; re-reading the log");
                self.catch_up(&frame.job_id, out).await
            }
            Some(Delivery::Recheck(job)) => self.catch_up(&job, out).await,
        }
    }

    /// Handles a delivery that needs no log read (the common case: the next
    /// event of a subscription, or a duplicate) without awaiting anything;
    /// gives back the ones that need [`Session::deliver`].
    pub fn deliver_now(&mut self, delivery: Delivery, out: &mut Vec<Out>) -> Option<Delivery> {
        let Delivery::Event(frame) = delivery else {
            return Some(delivery);
        };
        let sub = self.subs.get_mut(&frame.job_id)?;
        if frame.epoch != sub.epoch {
            // Another history of the job (the store lost writes and the
            // job went on under a new epoch, or its log was rebuilt): ids
            // cannot be compared across histories. The re-read resyncs.
            return Some(Delivery::Event(frame));
        }
        if frame.id <= sub.last {
            return None;
        }
        if frame.id != sub.last.next() {
            return Some(Delivery::Event(frame));
        }
        sub.last = frame.id;
        out.push(Out::Event { frame });
        None
    }

    async fn fresh(
        &mut self,
        job: &JobId,
        resync: bool,
        out: &mut Vec<Out>,
    ) -> Result<(), SubscribeError> {
        let state = self.store.job(job).await?;
        let sub = Sub {
            last: state.last_event_id,
            epoch: state.epoch.clone(),
            owner: state.owner.as_str().into(),
        };
        out.push(current_state(state, resync));
        self.subs.insert(job.clone(), sub);
        Ok(())
    }

    async fn resume(
        &mut self,
        job: &JobId,
        resume: Resume,
        owner: Arc<str>,
        out: &mut Vec<Out>,
    ) -> Result<(), SubscribeError> {
        let first = self
            .store
            .events_after(job, resume.id, resume.epoch.as_ref(), CATCH_UP_PAGE)
            .await?;
        let EventsAfter::Events(records) = first else {
            return self.fresh(job, true, out).await;
        };
        // The epoch the client holds is the job's (checked above when
        // given); without one, the history the events were read from.
        let epoch = match (resume.epoch, records.first()) {
            (Some(epoch), _) => epoch,
            (None, Some(record)) => record.epoch.clone(),
            (None, None) => self.store.job(job).await?.epoch,
        };
        let resumed = Control::Resumed {
            job_id: job.clone(),
            id: resume.id,
            epoch: epoch.clone(),
        };
        out.push(Out::control(
            resumed.to_json(),
            Some((epoch.clone(), resume.id)),
        ));
        self.subs.insert(
            job.clone(),
            Sub {
                last: resume.id,
                epoch,
                owner,
            },
        );
        let full = records.len() == CATCH_UP_PAGE;
        self.push_records(job, records, out);
        if full {
            self.catch_up(job, out).await?;
        }
        Ok(())
    }

    /// Re-reads a job's log after the last id sent and sends what follows.
    async fn catch_up(&mut self, job: &JobId, out: &mut Vec<Out>) -> Result<(), BackendError> {
        loop {
            let Some(sub) = self.subs.get(job) else {
                return Ok(());
            };
            let page = self
                .store
                .events_after(job, sub.last, Some(&sub.epoch), CATCH_UP_PAGE)
                .await;
            match page {
                Ok(EventsAfter::Events(records)) => {
                    let full = records.len() == CATCH_UP_PAGE;
                    self.push_records(job, records, out);
                    if !full {
                        return Ok(());
                    }
                }
                Ok(EventsAfter::Resync(reason)) => {
                    tracing::info!(job = %job, ?reason, "resume point lost; resyncing the client");
                    return match self.fresh(job, true, out).await {
                        Err(SubscribeError::Backend(e)) => Err(e),
                        Err(SubscribeError::NotFound(_)) => {
                            self.gone(job, out);
                            Ok(())
                        }
                        _ => Ok(()),
                    };
                }
                Err(BackendError::NotFound(_)) => {
                    self.gone(job, out);
                    return Ok(());
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn push_records(
        &mut self,
        job: &JobId,
        records: Vec<jobwire_core::EventRecord>,
        out: &mut Vec<Out>,
    ) {
        let Some(sub) = self.subs.get_mut(job) else {
            return;
        };
        for record in records {
            if record.id == sub.last.next() && record.epoch == sub.epoch {
                sub.last = record.id;
                out.push(Out::Event {
                    frame: Arc::new(Frame::of(&record)),
                });
            }
        }
    }

    /// The job disappeared (deleted, expired, or its data was lost): tell
    /// the client and stop.
    fn gone(&mut self, job: &JobId, out: &mut Vec<Out>) {
        if self.subs.contains_key(job) {
            out.push(Out::notice(&Control::Gone {
                job_id: job.clone(),
                message: "no such job (any more): it was deleted, expired, or its data was lost"
                    .to_owned(),
            }));
        }
        self.unsubscribe(job);
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        for job in self.subs.keys() {
            self.hub.unwatch(job, self.outbox.id);
        }
    }
}

fn current_state(state: JobState, resync: bool) -> Out {
    let position = Some((state.epoch.clone(), state.last_event_id));
    let message = Control::CurrentState {
        job_id: state.id.clone(),
        id: state.last_event_id,
        epoch: state.epoch.clone(),
        data: Box::new(state),
        resync,
    };
    Out::control(message.to_json(), position)
}
