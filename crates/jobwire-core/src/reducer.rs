//! The pure reducer: `apply(state, event) -> state`.
//!
//! Both backends (and any client that wants to rebuild a job's state from its
//! log) use this one function, so "the state as of event N" means the same
//! thing everywhere. It enforces the legal status transitions and that events
//! are applied in order with consecutive ids.
//!
//! [`enrich`] copies the resulting counters into the event's payload, so a UI
//! can render any single event without replaying the log. Applying an enriched
//! event gives the same state as applying the raw one (tested below).

use serde::Serialize;
use serde_json::{Map, Value};
use thiserror::Error;

use crate::event::{Event, EventType};
use crate::ids::{EventId, Timestamp};
use crate::job::{JobState, JobStatus};

/// Why an event cannot be applied to a state.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum ReduceError {
    /// The event is not legal in the job's current status.
    #[error("event {event} is not allowed while the job is {from}")]
    IllegalTransition { from: JobStatus, event: String },
    /// Events must be applied in order, without holes.
    #[error("event id {got} applied out of order (expected {expected})")]
    OutOfOrder { expected: EventId, got: EventId },
    /// The payload has a field of the wrong shape.
    #[error("invalid event data: {0}")]
    InvalidData(String),
}

/// Applies one event to a state, returning the new state.
///
/// # Errors
/// [`ReduceError`] when the event is out of order, illegal in the current
/// status or carries malformed fields. The input state is never modified.
pub fn apply(state: &JobState, event: &Event) -> Result<JobState, ReduceError> {
    let mut next = state.clone();
    apply_in_place(&mut next, event.view())?;
    Ok(next)
}

/// The parts of an event the reducer reads, borrowed.
#[derive(Clone, Copy, Debug)]
pub struct EventView<'a> {
    pub id: EventId,
    pub kind: &'a EventType,
    pub timestamp: Timestamp,
    pub data: &'a Map<String, Value>,
}

impl Event {
    /// A borrowed view for the reducer.
    pub fn view(&self) -> EventView<'_> {
        EventView {
            id: self.id,
            kind: &self.kind,
            timestamp: self.timestamp,
            data: &self.data,
        }
    }
}

/// A job's counters after an event: what [`enrich`] writes into the event's
/// payload on the wire.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Counters<'a> {
    pub status: JobStatus,
    pub attempt: u32,
    pub total_files: u64,
    pub processed_files: u64,
    pub failed_files: u64,
    pub current_file: Option<&'a str>,
    pub progress: f64,
}

impl<'a> Counters<'a> {
    /// The payload keys the counters own (a publisher's value is replaced).
    pub const KEYS: [&'static str; 7] = [
        "status",
        "attempt",
        "total_files",
        "processed_files",
        "failed_files",
        "current_file",
        "progress",
    ];

    /// The counters of a state.
    pub fn of(state: &'a JobState) -> Counters<'a> {
        Counters {
            status: state.status,
            attempt: state.attempt,
            total_files: state.total_files,
            processed_files: state.processed_files,
            failed_files: state.failed_files,
            current_file: state.current_file.as_deref(),
            progress: state.progress,
        }
    }
}

/// [`apply`] without the copy, for callers that apply many events to a state
/// they own (the publish planner). On error the state may be half-updated:
/// callers must discard it.
///
/// # Errors
/// As [`apply`].
pub fn apply_in_place(next: &mut JobState, event: EventView<'_>) -> Result<(), ReduceError> {
    let expected = next.last_event_id.next();
    if event.id != expected {
        return Err(ReduceError::OutOfOrder {
            expected,
            got: event.id,
        });
    }
    let (from, first_event) = (next.status, next.last_event_id == EventId::ZERO);
    next.last_event_id = event.id;
    let data = event.data;
    let illegal = || ReduceError::IllegalTransition {
        from,
        event: event.kind.to_string(),
    };
    let require = |ok: bool| if ok { Ok(()) } else { Err(illegal()) };

    match event.kind {
        EventType::JobQueued => {
            // The first event queues the job, or schedules it when it
            // names a `run_at`; a later one is its scheduled time coming.
            require(first_event || from == JobStatus::Scheduled)?;
            let run_at = if first_event {
                opt_timestamp(data, "run_at")?
            } else {
                None
            };
            match run_at {
                Some(at) => {
                    next.status = JobStatus::Scheduled;
                    next.run_at = Some(at);
                }
                None => next.status = JobStatus::Queued,
            }
        }
        EventType::JobStarted => {
            // An external job's program decides when a retry runs: it may
            // start before the promoter has queued it again.
            require(from == JobStatus::Queued || (from == JobStatus::Scheduled && next.external))?;
            next.status = JobStatus::Running;
            next.started_at = Some(event.timestamp);
            next.error = None;
            set_opt_u64(&mut next.total_files, data, "total_files")?;
            set_opt_string(&mut next.message, data, "message")?;
        }
        EventType::FileProcessing => {
            require(from == JobStatus::Running)?;
            next.current_file = Some(required_string(data, "file")?);
            set_opt_u64(&mut next.total_files, data, "total_files")?;
        }
        EventType::FileCompleted => {
            require(from == JobStatus::Running)?;
            if let Some(file) = opt_string(data, "file")? {
                next.current_file = Some(file);
            }
            set_opt_u64(&mut next.total_files, data, "total_files")?;
            next.processed_files += 1;
            next.progress = file_progress(next);
        }
        EventType::Error => {
            require(from == JobStatus::Running)?;
            if let Some(file) = opt_string(data, "file")? {
                next.current_file = Some(file);
                next.failed_files += 1;
            }
            set_opt_u64(&mut next.total_files, data, "total_files")?;
            set_opt_string(&mut next.message, data, "message")?;
            next.progress = file_progress(next);
        }
        EventType::Progress => {
            require(from == JobStatus::Running)?;
            let current = opt_f64(data, "current")?;
            let total = opt_f64(data, "total")?;
            if let (Some(current), Some(total)) = (current, total) {
                if total > 0.0 {
                    next.progress = clamp_percent(current / total * 100.0);
                }
            } else if let Some(pct) = opt_f64(data, "progress")? {
                next.progress = clamp_percent(pct);
            }
            set_opt_u64(&mut next.total_files, data, "total_files")?;
            set_opt_string(&mut next.message, data, "message")?;
        }
        EventType::JobCompleted => {
            require(from.can_become(JobStatus::Completed))?;
            next.status = JobStatus::Completed;
            next.progress = 100.0;
            next.current_file = None;
            next.finished_at = Some(event.timestamp);
            if let Some(result) = data.get("result") {
                next.result = Some(result.clone());
            }
            set_opt_string(&mut next.message, data, "message")?;
        }
        EventType::JobFailed => {
            require(from.can_become(JobStatus::Failed))?;
            next.status = JobStatus::Failed;
            next.current_file = None;
            next.finished_at = Some(event.timestamp);
            next.error = Some(
                opt_string(data, "error")?
                    .or(opt_string(data, "message")?)
                    .unwrap_or_else(|| "job failed".to_owned()),
            );
        }
        EventType::JobCancelled => {
            require(from.can_become(JobStatus::Cancelled))?;
            next.status = JobStatus::Cancelled;
            next.current_file = None;
            next.finished_at = Some(event.timestamp);
            set_opt_string(&mut next.message, data, "reason")?;
        }
        EventType::JobRetrying => {
            // With a `retry_at` the next attempt waits for it (a backoff).
            let retry_at = opt_timestamp(data, "retry_at")?;
            let to = match retry_at {
                Some(_) => JobStatus::Scheduled,
                None => JobStatus::Queued,
            };
            // A failed job is retried by hand (an operator's retry): only
            // through the schedule, so `job_queued` follows.
            let by_hand = from == JobStatus::Failed && retry_at.is_some();
            require(matches!(from, JobStatus::Queued | JobStatus::Running) || by_hand)?;
            if by_hand {
                next.finished_at = None;
                next.expires_at = None;
            }
            // A new attempt starts from scratch: counters of the dead attempt
            // would otherwise be counted twice.
            next.status = to;
            if retry_at.is_some() {
                next.run_at = retry_at;
            }
            if let Some(error) = opt_string(data, "error")? {
                next.error = Some(error);
            }
            next.attempt += 1;
            next.total_files = 0;
            next.processed_files = 0;
            next.failed_files = 0;
            next.current_file = None;
            next.progress = 0.0;
            next.started_at = None;
            set_opt_string(&mut next.message, data, "reason")?;
        }
        EventType::Custom(_) => require(!from.is_terminal())?,
    }
    Ok(())
}

/// Writes the job's counters after an event into that event's payload, as
/// they appear on the wire.
pub fn enrich(state: &JobState, data: &mut Map<String, Value>) {
    if let Ok(Value::Object(counters)) = serde_json::to_value(Counters::of(state)) {
        data.extend(counters);
    }
}

fn file_progress(state: &JobState) -> f64 {
    if state.total_files == 0 {
        return state.progress;
    }
    let done = (state.processed_files + state.failed_files) as f64;
    clamp_percent(done / state.total_files as f64 * 100.0)
}

/// A percentage from 0 to 100, to two decimals: 7 of 50 is 14, not
/// 14.000000000000002.
fn clamp_percent(p: f64) -> f64 {
    if p.is_nan() {
        0.0
    } else {
        (p.clamp(0.0, 100.0) * 100.0).round() / 100.0
    }
}

fn opt_string(data: &Map<String, Value>, key: &str) -> Result<Option<String>, ReduceError> {
    match data.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(ReduceError::InvalidData(format!("{key} must be a string"))),
    }
}

fn opt_timestamp(data: &Map<String, Value>, key: &str) -> Result<Option<Timestamp>, ReduceError> {
    opt_string(data, key)?
        .map(|text| {
            text.parse::<Timestamp>().map_err(|_| {
                ReduceError::InvalidData(format!("{key} must be an RFC 3339 time, not {text:?}"))
            })
        })
        .transpose()
}

fn required_string(data: &Map<String, Value>, key: &str) -> Result<String, ReduceError> {
    opt_string(data, key)?.ok_or_else(|| ReduceError::InvalidData(format!("{key} is required")))
}

fn set_opt_string(
    field: &mut Option<String>,
    data: &Map<String, Value>,
    key: &str,
) -> Result<(), ReduceError> {
    if let Some(s) = opt_string(data, key)? {
        *field = Some(s);
    }
    Ok(())
}

fn set_opt_u64(field: &mut u64, data: &Map<String, Value>, key: &str) -> Result<(), ReduceError> {
    match data.get(key) {
        None | Some(Value::Null) => Ok(()),
        Some(v) => {
            *field = v.as_u64().ok_or_else(|| {
                ReduceError::InvalidData(format!("{key} must be a non-negative integer"))
            })?;
            Ok(())
        }
    }
}

fn opt_f64(data: &Map<String, Value>, key: &str) -> Result<Option<f64>, ReduceError> {
    match data.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_f64()
            .filter(|f| f.is_finite())
            .map(Some)
            .ok_or_else(|| ReduceError::InvalidData(format!("{key} must be a number"))),
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::json;

    use super::*;
    use crate::ids::Epoch;
    use crate::job::NewJob;

    fn queued() -> JobState {
        let new = NewJob::new("demo", json!({}), "alice");
        let mut s = JobState::new(&new, Epoch::generate(), Timestamp::from_unix_millis(0));
        let ev = event(&s, EventType::JobQueued, json!({}));
        s = apply(&s, &ev).expect("queued applies");
        s
    }

    fn event(state: &JobState, kind: EventType, data: Value) -> Event {
        Event {
            id: state.last_event_id.next(),
            job_id: state.id.clone(),
            kind,
            timestamp: Timestamp::from_unix_millis(1),
            data: data.as_object().cloned().unwrap_or_default(),
        }
    }

    #[test]
    fn a_scan_runs_to_completion() {
        let mut s = queued();
        for (kind, data) in [
            (EventType::JobStarted, json!({"total_files": 2})),
            (EventType::FileProcessing, json!({"file": "a"})),
            (EventType::FileCompleted, json!({"file": "a"})),
            (EventType::Error, json!({"file": "b", "message": "denied"})),
            (EventType::JobCompleted, json!({"result": {"files": 2}})),
        ] {
            s = apply(&s, &event(&s, kind, data)).expect("legal");
        }
        assert_eq!(s.status, JobStatus::Completed);
        assert_eq!((s.processed_files, s.failed_files), (1, 1));
        assert_eq!(s.progress, 100.0);
        assert_eq!(s.last_event_id, EventId(6));
        assert_eq!(s.result, Some(json!({"files": 2})));
    }

    #[test]
    fn progress_is_a_percentage_to_two_decimals() {
        let mut s = queued();
        s = apply(&s, &event(&s, EventType::JobStarted, json!({}))).expect("legal");
        for (current, total, percent) in [(7, 50, 14.0), (29, 50, 58.0), (1, 3, 33.33)] {
            let data = json!({"current": current, "total": total});
            s = apply(&s, &event(&s, EventType::Progress, data)).expect("legal");
            assert_eq!(s.progress, percent);
        }
    }

    #[test]
    fn illegal_and_out_of_order_events_are_refused() {
        let s = queued();
        let e = event(&s, EventType::FileCompleted, json!({}));
        assert!(matches!(
            apply(&s, &e),
            Err(ReduceError::IllegalTransition { .. })
        ));
        let mut e = event(&s, EventType::JobStarted, json!({}));
        e.id = EventId(5);
        assert!(matches!(apply(&s, &e), Err(ReduceError::OutOfOrder { .. })));
        let e = event(&s, EventType::JobStarted, json!({"total_files": -1}));
        assert!(matches!(apply(&s, &e), Err(ReduceError::InvalidData(_))));
    }

    #[test]
    fn retrying_starts_a_new_attempt_from_scratch() {
        let mut s = queued();
        s = apply(
            &s,
            &event(&s, EventType::JobStarted, json!({"total_files": 3})),
        )
        .expect("ok");
        s = apply(
            &s,
            &event(&s, EventType::FileCompleted, json!({"file": "x"})),
        )
        .expect("ok");
        s = apply(
            &s,
            &event(&s, EventType::JobRetrying, json!({"reason": "worker died"})),
        )
        .expect("ok");
        assert_eq!(s.status, JobStatus::Queued);
        assert_eq!(s.attempt, 2);
        assert_eq!((s.processed_files, s.total_files, s.progress), (0, 0, 0.0));
    }

    #[test]
    fn scheduled_jobs_wait_for_their_time_and_retries_can_wait_too() {
        let new = NewJob::new("demo", json!({}), "alice");
        let s = JobState::new(&new, Epoch::generate(), Timestamp::from_unix_millis(0));
        let at = "2030-01-01T00:00:00Z";
        let s = apply(&s, &event(&s, EventType::JobQueued, json!({"run_at": at}))).expect("ok");
        assert_eq!(s.status, JobStatus::Scheduled);
        assert_eq!(
            s.run_at.map(|t| t.to_string()).as_deref(),
            Some("2030-01-01T00:00:00.000Z")
        );
        let early = event(&s, EventType::JobStarted, json!({}));
        assert!(apply(&s, &early).is_err(), "a scheduled job cannot start");
        // An external one can: its program runs its retries when it likes.
        let external = JobState {
            external: true,
            ..s.clone()
        };
        let started = apply(
            &external,
            &event(&external, EventType::JobStarted, json!({})),
        );
        assert_eq!(started.map(|s| s.status), Ok(JobStatus::Running));
        let s = apply(&s, &event(&s, EventType::JobQueued, json!({}))).expect("promoted");
        assert_eq!(s.status, JobStatus::Queued);
        let twice = event(&s, EventType::JobQueued, json!({}));
        assert!(apply(&s, &twice).is_err(), "promoted once");
        let s = apply(&s, &event(&s, EventType::JobStarted, json!({}))).expect("ok");
        let retry = json!({"retry_at": "2030-01-01T00:00:05Z", "error": "boom"});
        let s = apply(&s, &event(&s, EventType::JobRetrying, retry)).expect("ok");
        assert_eq!((s.status, s.attempt), (JobStatus::Scheduled, 2));
        assert_eq!(s.error.as_deref(), Some("boom"));
        let again = event(&s, EventType::JobRetrying, json!({}));
        assert!(apply(&s, &again).is_err(), "a scheduled job is not retried");
        let bad = event(&s, EventType::JobCancelled, json!({}));
        assert_eq!(apply(&s, &bad).map(|s| s.status), Ok(JobStatus::Cancelled));
        // A failed job retried by hand goes back on the schedule.
        let failed = apply(&s, &event(&s, EventType::JobQueued, json!({}))).expect("queued");
        let failed = apply(&failed, &event(&failed, EventType::JobFailed, json!({}))).expect("ok");
        let plain = event(&failed, EventType::JobRetrying, json!({}));
        assert!(
            apply(&failed, &plain).is_err(),
            "retried without the schedule"
        );
        let by_hand = json!({"retry_at": "2030-01-01T00:00:00Z"});
        let again = apply(&failed, &event(&failed, EventType::JobRetrying, by_hand)).expect("ok");
        assert_eq!((again.status, again.attempt), (JobStatus::Scheduled, 3));
        assert_eq!((again.finished_at, again.expires_at), (None, None));
        let bad_time = event(&s, EventType::JobQueued, json!({"run_at": "tomorrow"}));
        assert!(
            apply(&s, &bad_time).is_ok(),
            "only a first job_queued reads run_at"
        );
    }

    fn any_event_type() -> impl Strategy<Value = EventType> {
        prop_oneof![
            Just(EventType::JobQueued),
            Just(EventType::JobStarted),
            Just(EventType::FileProcessing),
            Just(EventType::FileCompleted),
            Just(EventType::Error),
            Just(EventType::Progress),
            Just(EventType::JobCompleted),
            Just(EventType::JobFailed),
            Just(EventType::JobCancelled),
            Just(EventType::JobRetrying),
            Just(EventType::Custom("note".into())),
        ]
    }

    fn any_data() -> impl Strategy<Value = Value> {
        (
            proptest::option::of(0u64..20),
            proptest::option::of("[a-z]{1,3}"),
            proptest::option::of(0.0f64..200.0),
        )
            .prop_map(|(total, file, pct)| {
                let mut m = Map::new();
                if let Some(t) = total {
                    m.insert("total_files".into(), t.into());
                }
                if let Some(f) = file {
                    m.insert("file".into(), f.into());
                }
                if let Some(p) = pct {
                    m.insert("progress".into(), p.into());
                    // Now and then a retry after a backoff.
                    if p > 150.0 {
                        m.insert("retry_at".into(), "2030-01-01T00:00:00Z".into());
                    }
                }
                Value::Object(m)
            })
    }

    proptest! {
        /// Over any sequence of events: ids stay consecutive, progress stays in
        /// 0..=100, nothing changes after a terminal status, every status move is
        /// a legal one, and enriching an event never changes what it does.
        #[test]
        fn reducer_invariants(steps in proptest::collection::vec((any_event_type(), any_data()), 0..60)) {
            let mut s = queued();
            for (kind, data) in steps {
                let ev = event(&s, kind, data);
                match apply(&s, &ev) {
                    Ok(next) => {
                        prop_assert!(s.status.can_become(next.status) || s.status == next.status);
                        // Nothing leaves a terminal status but an operator's
                        // retry of a failed job.
                        prop_assert!(
                            !s.status.is_terminal()
                                || (s.status == JobStatus::Failed && ev.kind == EventType::JobRetrying)
                        );
                        prop_assert_eq!(next.last_event_id, s.last_event_id.next());
                        prop_assert!((0.0..=100.0).contains(&next.progress));
                        let mut enriched = ev.clone();
                        enrich(&next, &mut enriched.data);
                        prop_assert_eq!(apply(&s, &enriched), Ok(next.clone()));
                        s = next;
                    }
                    Err(_) => {
                        // A refused event leaves the state as it was (apply is pure);
                        // terminal states refuse everything.
                    }
                }
            }
            if s.status.is_terminal() {
                for kind in [EventType::JobStarted, EventType::Progress, EventType::JobCompleted, EventType::Custom("x".into())] {
                    let ev = event(&s, kind, json!({}));
                    prop_assert!(apply(&s, &ev).is_err());
                }
            }
        }

        /// Event ids order exactly as their numbers do, in text and in JSON.
        #[test]
        fn event_id_order_matches_numbers(a in any::<u64>(), b in any::<u64>()) {
            let (x, y) = (EventId(a), EventId(b));
            prop_assert_eq!(x.cmp(&y), a.cmp(&b));
            prop_assert_eq!(x.to_string().parse::<EventId>(), Ok(x));
            prop_assert_eq!(serde_json::to_string(&x).ok(), Some(a.to_string()));
        }
    }
}
