//! Planning a publish: the part of "append events atomically with the state
//! change" that is the same for every backend.
//!
//! A backend reads the job's [`LogHead`] (state, and the last fenced publish
//! number), calls [`plan`], and then commits the plan atomically *only if the
//! head is unchanged* (the Redis backend compares the sequence number inside
//! its Lua script; the memory backend holds a lock). Keeping the logic here
//! means the Lua script is a lean compare-and-set and both backends agree by
//! construction.

use std::time::Duration;

use thiserror::Error;

use crate::event::{EventRecord, EventType, NewEvent, WireEvent};
use crate::ids::{Epoch, EventId, Timestamp};
use crate::job::{JobState, JobStatus, NewJob};
use crate::reducer::{apply_in_place, Counters, EventView, ReduceError};

/// What a backend stores besides the log itself.
#[derive(Clone, Debug, PartialEq)]
pub struct LogHead {
    /// The state as of the last event (`state.last_event_id` is the sequence).
    pub state: JobState,
    /// The highest fenced publish number applied in the current attempt.
    pub last_n: u64,
}

impl LogHead {
    /// The same head under another epoch: the plan of a publish made from
    /// it starts a new history of the job (docs/design.md, "Exact through
    /// data loss"). Ids continue from the head's.
    pub fn with_epoch(mut self, epoch: Epoch) -> LogHead {
        self.state.epoch = epoch;
        self
    }
}

/// The outcome of planning: what to append and the state to store.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    /// Events to append, with consecutive ids after the head's, serialized.
    pub events: Vec<EventRecord>,
    /// The state after the last of them.
    pub state: JobState,
    /// The last fenced publish number after this batch.
    pub last_n: u64,
    /// Fenced events skipped because their `n` was already applied.
    pub duplicates: usize,
    /// What the publish does to the job's place in its queue.
    pub queue_move: QueueMove,
}

/// What a publish does to a job's place in the queue, decided by the
/// statuses it moves the job between. The backend commits it in the same
/// atomic step as the events, so a job is never `queued` without a queue
/// entry nor `scheduled` off the schedule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QueueMove {
    /// Nothing changes.
    Stay,
    /// Onto the schedule (the job is now `scheduled` until then).
    Schedule(Timestamp),
    /// Off the schedule into its queue: its time came (`job_queued`).
    Enqueue,
    /// Off the schedule: it ended (cancelled, failed) while scheduled.
    Unschedule,
}

impl QueueMove {
    /// The move of a job whose state goes from `from` to `to`. An external
    /// job is never put in a queue (its own program runs it).
    pub fn between(from: &JobState, to: &JobState) -> QueueMove {
        match (from.status, to.status) {
            (_, JobStatus::Scheduled) => QueueMove::Schedule(to.run_at.unwrap_or(to.created_at)),
            (JobStatus::Scheduled, JobStatus::Queued) if !to.external => QueueMove::Enqueue,
            (JobStatus::Scheduled, _) => QueueMove::Unschedule,
            _ => QueueMove::Stay,
        }
    }
}

/// Why a batch cannot be published.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum PlanError {
    /// The publisher's attempt is not the job's current attempt: it is a
    /// zombie whose job was handed to another worker.
    #[error("stale attempt {sent}: the job is on attempt {current}")]
    Fenced { sent: u32, current: u32 },
    /// An event is illegal, out of order or malformed.
    #[error(transparent)]
    Reduce(#[from] ReduceError),
}

/// Plans the publication of `batch` on top of `head`. All or nothing: one
/// refused event refuses the batch.
///
/// # Errors
/// [`PlanError::Fenced`] for a stale attempt, [`PlanError::Reduce`] for an
/// event the reducer refuses.
pub fn plan(
    head: &LogHead,
    batch: &[NewEvent],
    now: Timestamp,
    retention: Duration,
) -> Result<Plan, PlanError> {
    let mut state = head.state.clone();
    let mut last_n = head.last_n;
    let mut events = Vec::with_capacity(batch.len());
    let mut duplicates = 0;
    let timestamp = now.to_string();
    for new in batch {
        if let Some(fence) = new.fence {
            if fence.attempt != state.attempt {
                return Err(PlanError::Fenced {
                    sent: fence.attempt,
                    current: state.attempt,
                });
            }
            if fence.n <= last_n {
                duplicates += 1;
                continue;
            }
            last_n = fence.n;
        }
        let id = state.last_event_id.next();
        apply_in_place(
            &mut state,
            EventView {
                id,
                kind: &new.kind,
                timestamp: now,
                data: &new.data,
            },
        )?;
        if new.kind == EventType::JobRetrying {
            // The next attempt's publisher counts from 1 again.
            last_n = 0;
        }
        if state.status.is_terminal() && state.expires_at.is_none() {
            state.expires_at = Some(now.plus(retention));
        }
        events.push(
            WireEvent {
                id,
                job_id: &state.id,
                epoch: &state.epoch,
                kind: &new.kind,
                timestamp: now,
                timestamp_text: &timestamp,
                data: &new.data,
                counters: Counters::of(&state),
            }
            .to_record(),
        );
    }
    let queue_move = if events.is_empty() {
        QueueMove::Stay
    } else {
        QueueMove::between(&head.state, &state)
    };
    Ok(Plan {
        events,
        state,
        last_n,
        duplicates,
        queue_move,
    })
}

/// [`plan_create`] with a fresh epoch, now, as backends create jobs.
///
/// # Errors
/// [`BackendError::Rejected`], which does not happen in practice.
pub fn plan_new_job(new: &NewJob) -> Result<(JobState, EventRecord), crate::BackendError> {
    plan_create(new, Epoch::generate(), Timestamp::now()).map_err(|source| {
        crate::BackendError::Rejected {
            job: new.id.clone(),
            source,
        }
    })
}

/// Plans a job's creation: its initial state and `job_queued` event (id 1).
///
/// # Errors
/// Never in practice (a fresh state always accepts `job_queued`); the
/// `Result` keeps the reducer's contract honest.
pub fn plan_create(
    new: &NewJob,
    epoch: Epoch,
    now: Timestamp,
) -> Result<(JobState, EventRecord), ReduceError> {
    let mut state = JobState::new(new, epoch, now);
    let mut data = serde_json::Map::new();
    data.insert("kind".into(), serde_json::Value::from(new.kind.as_str()));
    data.insert("queue".into(), serde_json::Value::from(new.queue()));
    if new.priority != crate::job::DEFAULT_PRIORITY {
        data.insert("priority".into(), serde_json::Value::from(new.priority));
    }
    // A job that must wait says until when (it is `scheduled` until then).
    if let Some(at) = new.run_at {
        data.insert("run_at".into(), serde_json::Value::from(at.to_string()));
    }
    if let Some(tick) = &new.schedule {
        data.insert(
            "schedule".into(),
            serde_json::json!({"name": tick.name, "tick": tick.tick.to_string()}),
        );
    }
    let id = EventId::ZERO.next();
    apply_in_place(
        &mut state,
        EventView {
            id,
            kind: &EventType::JobQueued,
            timestamp: now,
            data: &data,
        },
    )?;
    let record = WireEvent {
        id,
        job_id: &state.id,
        epoch: &state.epoch,
        kind: &EventType::JobQueued,
        timestamp: now,
        timestamp_text: &now.to_string(),
        data: &data,
        counters: Counters::of(&state),
    }
    .to_record();
    Ok((state, record))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::ids::Epoch;

    fn head() -> LogHead {
        let new = NewJob::new("demo", json!({}), "alice");
        let (state, _) = plan_create(&new, Epoch::generate(), Timestamp::now()).expect("create");
        LogHead { state, last_n: 0 }
    }

    #[test]
    fn fenced_duplicates_are_skipped_and_stale_attempts_refused() {
        let h = head();
        let batch = vec![
            NewEvent::new(EventType::JobStarted, json!({})).fenced(1, 1),
            NewEvent::new(EventType::Progress, json!({"progress": 5})).fenced(1, 2),
        ];
        let p = plan(&h, &batch, Timestamp::now(), Duration::from_secs(1)).expect("plans");
        assert_eq!(p.events.len(), 2);
        assert_eq!(p.events[1].id, EventId(3));
        let wire = p.events[1].parse().expect("wire JSON parses");
        assert_eq!(wire.data["progress"], 5.0);
        assert_eq!(wire.data["status"], "running");
        let h2 = LogHead {
            state: p.state,
            last_n: p.last_n,
        };
        // The same batch again (a retried publish): nothing new.
        let again = plan(&h2, &batch, Timestamp::now(), Duration::from_secs(1)).expect("plans");
        assert_eq!((again.events.len(), again.duplicates), (0, 2));
        let stale = [NewEvent::new(EventType::Progress, json!({})).fenced(0, 3)];
        assert_eq!(
            plan(&h2, &stale, Timestamp::now(), Duration::from_secs(1)),
            Err(PlanError::Fenced {
                sent: 0,
                current: 1
            })
        );
    }

    #[test]
    fn statuses_moved_between_decide_the_queue_move() {
        let h = head();
        let at = "2030-01-01T00:00:00Z";
        let start = [NewEvent::new(EventType::JobStarted, json!({}))];
        let p = plan(&h, &start, Timestamp::now(), Duration::from_secs(1)).expect("plans");
        assert_eq!(p.queue_move, QueueMove::Stay);
        let h = LogHead {
            state: p.state,
            last_n: 0,
        };
        let retry = [NewEvent::new(
            EventType::JobRetrying,
            json!({"retry_at": at}),
        )];
        let p = plan(&h, &retry, Timestamp::now(), Duration::from_secs(1)).expect("plans");
        assert_eq!(p.queue_move, QueueMove::Schedule(at.parse().expect("time")));
        let h = LogHead {
            state: p.state,
            last_n: 0,
        };
        let promote = [NewEvent::new(EventType::JobQueued, json!({}))];
        let p = plan(&h, &promote, Timestamp::now(), Duration::from_secs(1)).expect("plans");
        assert_eq!(p.queue_move, QueueMove::Enqueue);
        let cancel = [NewEvent::new(EventType::JobCancelled, json!({}))];
        let p = plan(&h, &cancel, Timestamp::now(), Duration::from_secs(1)).expect("plans");
        assert_eq!(p.queue_move, QueueMove::Unschedule);
        let mut external = h.clone();
        external.state.external = true;
        let p = plan(
            &external,
            &promote,
            Timestamp::now(),
            Duration::from_secs(1),
        )
        .expect("plans");
        assert_eq!(
            p.queue_move,
            QueueMove::Unschedule,
            "external jobs are never queued"
        );
    }

    #[test]
    fn terminal_events_set_the_expiry() {
        let h = head();
        let now = Timestamp::from_unix_millis(1000);
        let batch = [NewEvent::new(EventType::JobCancelled, json!({}))];
        let p = plan(&h, &batch, now, Duration::from_secs(2)).expect("plans");
        assert_eq!(p.state.expires_at, Some(Timestamp::from_unix_millis(3000)));
    }
}
