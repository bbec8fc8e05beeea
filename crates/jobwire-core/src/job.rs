//! A job's state (docs/protocol.md) and the legal moves between its statuses.
//!
//! `JobState` is the snapshot clients receive in `current_state` and from
//! `GET /api/jobs/{id}`. It only ever changes by applying an event
//! ([`crate::reducer::apply`]), so "the state as of event N" is well defined.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::ids::{Epoch, EventId, JobId, Timestamp};
pub use crate::retry::{RetryBackoff, RetryPolicy};

/// Where a job is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    /// Waiting for its time (`run_at`, or a retry's backoff); then it is
    /// queued.
    Scheduled,
    /// Waiting for a worker (or for another attempt).
    Queued,
    /// A worker is running it.
    Running,
    /// Finished successfully.
    Completed,
    /// Finished with an error (or gave up after too many attempts).
    Failed,
    /// Stopped on request.
    Cancelled,
}

impl JobStatus {
    /// Every status, in lifecycle order.
    pub const ALL: [JobStatus; 6] = [
        JobStatus::Scheduled,
        JobStatus::Queued,
        JobStatus::Running,
        JobStatus::Completed,
        JobStatus::Failed,
        JobStatus::Cancelled,
    ];

    /// Completed, failed and cancelled jobs have ended: nothing changes
    /// them again, but an operator's retry of a failed job
    /// (`failed → scheduled`).
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            JobStatus::Completed | JobStatus::Failed | JobStatus::Cancelled
        )
    }

    /// Whether a job may move from `self` to `to`.
    ///
    /// `running → queued` is a retry (a worker died and another attempt
    /// waits); `queued → queued` is a retry of an attempt that died before it
    /// started; `queued → failed` is a dead letter after too many attempts.
    /// `running → scheduled` (and `queued → scheduled`) is a retry after a
    /// backoff; `scheduled → queued` is its time coming.
    pub fn can_become(self, to: JobStatus) -> bool {
        use JobStatus::*;
        matches!(
            (self, to),
            (Scheduled, Queued)
                | (Failed, Scheduled)
                | (Scheduled, Cancelled)
                | (Scheduled, Failed)
                | (Queued, Scheduled)
                | (Running, Scheduled)
                | (Queued, Running)
                | (Queued, Queued)
                | (Queued, Failed)
                | (Queued, Cancelled)
                | (Running, Running)
                | (Running, Queued)
                | (Running, Completed)
                | (Running, Failed)
                | (Running, Cancelled)
        )
    }

    /// The status as written on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Scheduled => "scheduled",
            JobStatus::Queued => "queued",
            JobStatus::Running => "running",
            JobStatus::Completed => "completed",
            JobStatus::Failed => "failed",
            JobStatus::Cancelled => "cancelled",
        }
    }
}

impl fmt::Display for JobStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for JobStatus {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        JobStatus::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| {
                format!(
                    "unknown status {s:?}: expected scheduled, queued, running, completed, failed or cancelled"
                )
            })
    }
}

/// A job's state as of `last_event_id` (docs/protocol.md).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JobState {
    pub id: JobId,
    pub kind: String,
    pub params: Value,
    /// The JWT `sub` of the user who created the job.
    pub owner: String,
    pub status: JobStatus,
    pub total_files: u64,
    pub processed_files: u64,
    pub failed_files: u64,
    pub current_file: Option<String>,
    /// 0–100.
    pub progress: f64,
    pub message: Option<String>,
    pub error: Option<String>,
    /// 1 for the first run; each `job_retrying` adds one. Publishes carrying
    /// an older attempt are refused (fencing of zombie workers).
    pub attempt: u32,
    pub created_at: Timestamp,
    pub started_at: Option<Timestamp>,
    pub finished_at: Option<Timestamp>,
    /// When a finished job and its events will be removed.
    pub expires_at: Option<Timestamp>,
    pub epoch: Epoch,
    pub last_event_id: EventId,
    /// The handler's result (e.g. the `scan` manifest summary).
    pub result: Option<Value>,
    /// Driven by an outside program through the publish API, not queued for
    /// jobwire's own workers.
    pub external: bool,
    /// The queue it waits in for a worker: by default its kind's name
    /// (empty in states written before queues existed: read it with
    /// [`JobState::queue`]).
    #[serde(default)]
    pub queue: String,
    /// How long one attempt may run, in milliseconds; `None`: the worker's
    /// default for the kind, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// 0–9, higher first within its queue ([`DEFAULT_PRIORITY`] unless
    /// given).
    #[serde(default = "default_priority")]
    pub priority: u8,
    /// When a `scheduled` job becomes runnable (its `run_at`, or the time
    /// its retry's backoff ends); kept once it has been queued.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_at: Option<Timestamp>,
    /// How failed attempts are retried; `None`: the worker's policy for the
    /// kind.
    #[serde(default, skip_serializing_if = "RetryPolicy::is_unset")]
    pub retry: RetryPolicy,
    /// The cron schedule and tick that made the job, if one did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<crate::schedule::ScheduleTick>,
    /// Cancellation was requested; a running job stops at its next report.
    /// Not part of the event-sourced state: backends fill it in on read.
    #[serde(default)]
    pub cancel_requested: bool,
}

impl JobState {
    /// The state of a freshly created job, before its `job_queued` event.
    pub fn new(new: &NewJob, epoch: Epoch, now: Timestamp) -> JobState {
        JobState {
            id: new.id.clone(),
            kind: new.kind.clone(),
            params: new.params.clone(),
            owner: new.owner.clone(),
            status: JobStatus::Queued,
            total_files: 0,
            processed_files: 0,
            failed_files: 0,
            current_file: None,
            progress: 0.0,
            message: None,
            error: None,
            attempt: 1,
            created_at: now,
            started_at: None,
            finished_at: None,
            expires_at: None,
            epoch,
            last_event_id: EventId::ZERO,
            result: None,
            external: new.external,
            queue: new.queue().to_owned(),
            timeout_ms: new
                .timeout
                .map(|t| u64::try_from(t.as_millis()).unwrap_or(u64::MAX)),
            priority: new.priority,
            run_at: None,
            retry: new.retry.clone(),
            schedule: new.schedule.clone(),
            cancel_requested: false,
        }
    }

    /// The queue the job waits in (its kind's, unless another was given).
    pub fn queue(&self) -> &str {
        if self.queue.is_empty() {
            &self.kind
        } else {
            &self.queue
        }
    }

    /// The stream of its queue the job waits in: one per priority
    /// ([`lane`]).
    pub fn lane(&self) -> String {
        lane(self.queue(), self.priority)
    }
}

/// The priority of a job created without one.
pub const DEFAULT_PRIORITY: u8 = 5;
/// The highest priority.
pub const MAX_PRIORITY: u8 = 9;

fn default_priority() -> u8 {
    DEFAULT_PRIORITY
}

/// The name of queue `queue`'s lane for `priority`: the queue's own name
/// for the default priority, `<queue>#<priority>` for the others (`#` is
/// never part of a queue name). Backends keep one FIFO per lane and take
/// from the highest lane first.
pub fn lane(queue: &str, priority: u8) -> String {
    if priority == DEFAULT_PRIORITY {
        queue.to_owned()
    } else {
        format!("{queue}#{priority}")
    }
}

/// The queue and priority of a lane named by [`lane`].
pub fn parse_lane(lane: &str) -> (&str, u8) {
    match lane.rsplit_once('#') {
        Some((queue, p)) => match p.parse::<u8>() {
            Ok(p) if p <= MAX_PRIORITY => (queue, p),
            _ => (lane, DEFAULT_PRIORITY),
        },
        None => (lane, DEFAULT_PRIORITY),
    }
}

/// One claim in this many takes a queue's lowest waiting priority first
/// (the starvation rule, docs/workers.md): a backlog of urgent jobs slows
/// the others down but never stops them.
pub const LOWEST_FIRST_EVERY: u64 = 10;

/// Whether a worker's claim number `n` (counting its claims that found
/// work, from 0) takes the lowest priority first.
pub fn lowest_first(n: u64) -> bool {
    n % LOWEST_FIRST_EVERY == LOWEST_FIRST_EVERY - 1
}

/// Priorities in the order a claim takes them.
pub fn priority_order(lowest_first: bool) -> impl Iterator<Item = u8> {
    let order: Box<dyn Iterator<Item = u8>> = if lowest_first {
        Box::new(0..=MAX_PRIORITY)
    } else {
        Box::new((0..=MAX_PRIORITY).rev())
    };
    order
}

/// The longest queue name.
pub const MAX_QUEUE_NAME: usize = 64;

/// Checks a queue name: 1 to 64 letters, digits and `._:-` (names end up in
/// Redis keys and URLs; `/`, braces and spaces would break them).
///
/// # Errors
/// A message naming what is wrong.
pub fn check_queue_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_QUEUE_NAME {
        return Err(format!(
            "queue name {name:?} must be 1 to {MAX_QUEUE_NAME} characters"
        ));
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-')))
    {
        return Err(format!(
            "queue name {name:?} holds {bad:?}: use letters, digits and . _ : -"
        ));
    }
    Ok(())
}

/// What a caller supplies to create a job.
#[derive(Clone, Debug, PartialEq)]
pub struct NewJob {
    pub id: JobId,
    pub kind: String,
    pub params: Value,
    pub owner: String,
    /// Not queued for jobwire's workers; driven through the publish API.
    pub external: bool,
    /// The queue to wait in; `None`: the kind's.
    pub queue: Option<String>,
    /// At most one unfinished job of this kind has this key: while one is
    /// scheduled, queued or running, creating another returns it
    /// ([`crate::Created::Unique`]).
    pub unique_key: Option<String>,
    /// How long one attempt may run before it is stopped and failed.
    pub timeout: Option<std::time::Duration>,
    /// 0–9, higher first within the queue.
    pub priority: u8,
    /// Not runnable before this time: the job is `scheduled` until then.
    pub run_at: Option<Timestamp>,
    /// How failed attempts are retried (unset: the worker's policy).
    pub retry: RetryPolicy,
    /// The cron schedule and tick that made the job, if one did.
    pub schedule: Option<crate::schedule::ScheduleTick>,
}

impl NewJob {
    /// A job for jobwire's own workers, with a fresh id.
    pub fn new(kind: impl Into<String>, params: Value, owner: impl Into<String>) -> NewJob {
        NewJob {
            id: JobId::generate(),
            kind: kind.into(),
            params,
            owner: owner.into(),
            external: false,
            queue: None,
            unique_key: None,
            timeout: None,
            priority: DEFAULT_PRIORITY,
            run_at: None,
            retry: RetryPolicy::default(),
            schedule: None,
        }
    }

    /// Marks the job as driven by an outside program.
    pub fn external(mut self) -> NewJob {
        self.external = true;
        self
    }

    /// Puts the job in `queue` instead of its kind's.
    pub fn in_queue(mut self, queue: impl Into<String>) -> NewJob {
        self.queue = Some(queue.into());
        self
    }

    /// Gives the job a priority (0–9, higher first within its queue).
    pub fn at_priority(mut self, priority: u8) -> NewJob {
        self.priority = priority;
        self
    }

    /// Makes the job wait until `at` (it is `scheduled` until then).
    pub fn not_before(mut self, at: Timestamp) -> NewJob {
        self.run_at = Some(at);
        self
    }

    /// Makes the job unique among the unfinished jobs of its kind by `key`.
    pub fn unique(mut self, key: impl Into<String>) -> NewJob {
        self.unique_key = Some(key.into());
        self
    }

    /// Where the records of this job's unique key live: its partition is
    /// computed from this (see [`crate::ids::partition_of`]).
    pub fn unique_scope(&self) -> Option<String> {
        self.unique_key
            .as_ref()
            .map(|key| format!("{}\n{key}", self.kind))
    }

    /// The queue the job goes to.
    pub fn queue(&self) -> &str {
        self.queue.as_deref().unwrap_or(&self.kind)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terminal_statuses_go_nowhere_but_a_failed_job_retried() {
        for from in JobStatus::ALL.into_iter().filter(|s| s.is_terminal()) {
            for to in JobStatus::ALL {
                let retry = (from, to) == (JobStatus::Failed, JobStatus::Scheduled);
                assert_eq!(from.can_become(to), retry, "{from} -> {to}");
            }
        }
    }

    #[test]
    fn lanes_name_queue_and_priority() {
        assert_eq!(lane("mail", DEFAULT_PRIORITY), "mail");
        assert_eq!(lane("mail", 9), "mail#9");
        for p in 0..=MAX_PRIORITY {
            assert_eq!(parse_lane(&lane("a.b:c", p)), ("a.b:c", p));
        }
        let claims: Vec<bool> = (0..20).map(lowest_first).collect();
        assert_eq!(claims.iter().filter(|&&l| l).count(), 2);
        assert!(claims[9] && claims[19] && !claims[0]);
        assert_eq!(priority_order(false).next(), Some(9));
        assert_eq!(priority_order(true).next(), Some(0));
    }

    #[test]
    fn status_text_round_trips() {
        for s in JobStatus::ALL {
            assert_eq!(s.as_str().parse::<JobStatus>(), Ok(s));
        }
        assert!("done".parse::<JobStatus>().is_err());
    }
}
