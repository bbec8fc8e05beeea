//! The heart of jobwire: what a job and an event are, how events change a job
//! (the reducer), and the storage contract that backends implement.
//!
//! # Layout
//!
//! - [`ids`]: parsed newtypes for job ids, event ids, epochs, timestamps.
//! - [`job`]: the job state snapshot and its status transitions.
//! - [`kinds`]: parameters of the built-in job kinds.
//! - [`event`]: event types, published events and logged events (wire shape).
//! - [`reducer`]: the pure `apply(state, event) -> state`.
//! - [`publish`]: fencing, dedupe and enrichment of a publish, shared by backends.
//! - [`protocol`]: the live protocol's control messages, client frames and
//!   resume points, as types both ends use.
//! - [`backend`]: the backend traits (`JobStore`, `LiveFeed`, `JobQueue`,
//!   and `Backend`, all three) and their types.
//! - [`backoff`]: the one exponential backoff, for every retry loop.
//! - [`schedule`]: cron schedules, and how their ticks fire exactly once.
//! - [`settle`]: what happens to a lapsed lease, and how a cancel finishes,
//!   written once on top of the traits.
//! - [`memory`]: `MemoryBackend`, the in-process backend.
//! - `testsuite` (feature `testsuite`): the conformance suite every backend passes.

pub mod backend;
pub mod backoff;
pub mod event;
pub mod ids;
pub mod job;
pub mod kinds;
pub mod memory;
pub mod protocol;
pub mod publish;
pub mod reducer;
pub mod retry;
pub mod schedule;
pub mod settle;
#[cfg(feature = "testsuite")]
pub mod testsuite;

pub use backend::{
    Backend, BackendConfig, BackendError, CancelOutcome, Claim, Created, EventsAfter, Idempotency,
    JobCounts, JobPage, JobQueue, JobStore, ListQuery, LiveBatch, LiveFeed, LivePosition, LiveTail,
    MinuteCounts, PublishOutcome, QueueLimits, QueueOverview, QueueStats, Queues, RateLimit,
    Reclaimed, ResyncReason, ScheduleStore, StoreHealth, TailFrom, WorkerInfo,
};
pub use backoff::Backoff;
pub use event::{Event, EventRecord, EventType, Fence, NewEvent};
pub use ids::{Epoch, EventId, IdError, JobId, Timestamp};
pub use job::{check_queue_name, JobState, JobStatus, NewJob};
pub use memory::MemoryBackend;
pub use protocol::{ClientFrame, Control, Refusal, Resume, ServerMessage};
pub use retry::{RetryBackoff, RetryPolicy};
pub use schedule::{Schedule, ScheduleTick};
