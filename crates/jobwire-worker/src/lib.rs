//! The worker side of jobwire: take jobs from the queue, run their handlers,
//! and publish their progress through the atomic, fenced publish path.
//!
//! # Layout
//!
//! - [`handler`]: the [`Handler`] trait a job kind implements, the
//!   [`JobContext`] it runs with, and its outcome and error types.
//! - [`reporter`]: the [`Reporter`], which turns progress calls into events
//!   and publishes them in order, batched, exactly once, buffering through
//!   outages (the seed's `CeleryTaskWithUpdates`).
//! - [`runtime`]: [`Worker`]: claims, leases, the reaper of dead workers'
//!   jobs, concurrency and graceful shutdown.
//! - `execute`: the life of one claimed job, from its state check to its ack.
//! - [`kinds`]: the built-in kinds `scan` and `demo`.
//!
//! # Guarantees
//!
//! Every event a handler reports is published once, in order, or the job is
//! not this worker's any more (another attempt runs it, from scratch). A
//! worker that lost its job — its lease expired and another worker took it
//! over — is fenced by the job's attempt number and stops.

pub mod handler;
pub mod kinds;
pub mod reporter;
pub mod runtime;

mod execute;
mod metrics;

pub use handler::{handler_fn, Handler, JobContext, JobError, JobOutcome, StopReason, Stopped};
pub use metrics::Timings;
pub use reporter::Reporter;
pub use runtime::{Worker, WorkerBuilder, WorkerConfig, WorkerStats};
