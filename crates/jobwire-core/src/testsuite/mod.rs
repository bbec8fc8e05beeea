//! The backend conformance suite: one set of behaviours, run against every
//! `Backend` implementation (`MemoryBackend` here, `RedisBackend` against a
//! real redis-server in `jobwire-redis`).
//!
//! A backend's test file instantiates it with one line:
//!
//! ```ignore
//! jobwire_core::backend_conformance_tests!(MyFactory);
//! ```
//!
//! which expands to one `#[tokio::test]` per case, so failures name the case.
//! Every case checks a guarantee with an assertion that fails if it breaks:
//! ids are compared as complete sequences, not sampled.

mod create;
mod cron;
mod limits;
mod listing;
mod live;
mod log;
mod queue;
mod schedule;

pub use create::*;
pub use cron::*;
pub use limits::*;
pub use listing::*;
pub use live::*;
pub use log::*;
pub use queue::*;
pub use schedule::*;

use std::any::Any;
use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, ensure, Context, Result};
use async_trait::async_trait;
use serde_json::json;

use crate::backend::{
    Backend, BackendConfig, BackendError, CancelOutcome, Claim, EventsAfter, JobCounts, ListQuery,
    LiveBatch, QueueStats, Reclaimed, ResyncReason, TailFrom,
};
use crate::event::{Event, EventRecord, EventType, NewEvent};
use crate::ids::{Epoch, EventId, JobId, Timestamp};
use crate::job::{JobState, JobStatus, NewJob};

/// A backend under test, with whatever must outlive it (a redis-server).
#[allow(missing_debug_implementations)]
pub struct TestBackend {
    pub backend: Arc<dyn Backend>,
    pub guard: Box<dyn Any + Send + Sync>,
}

/// Makes fresh, empty backends for the suite.
#[async_trait]
pub trait BackendFactory: Sync {
    /// A new backend with the given limits and no data.
    async fn create(&self, config: BackendConfig) -> Result<TestBackend>;
}

/// Expands to one `#[tokio::test]` per conformance case for `$factory`.
#[macro_export]
macro_rules! backend_conformance_tests {
    ($factory:expr) => {
        $crate::backend_conformance_tests!(@cases $factory;
            ids_are_consecutive_and_in_order,
            snapshot_tracks_the_log_after_every_publish,
            since_reads_return_exactly_the_later_events,
            trimmed_resume_point_and_wrong_epoch_are_reported,
            stale_attempt_is_refused_and_repeated_n_ignored,
            illegal_events_and_unknown_jobs_are_refused,
            cancel_flag_round_trips,
            queue_claim_and_ack,
            claim_waits_for_an_enqueue,
            unacked_claim_is_reclaimed_with_a_new_attempt,
            renewed_lease_is_not_reclaimed,
            released_entry_goes_to_the_next_claim,
            dead_letter_after_max_attempts,
            finished_jobs_expire_after_retention,
            live_tail_sees_every_event_in_order,
            concurrent_publishers_lose_nothing,
            delete_removes_everything,
            listing_is_paginated_newest_first,
            listing_filters_by_kind_queue_and_finish_time,
            a_sparse_filter_is_scanned_in_steps,
            jobs_are_counted_by_status,
            throughput_counts_starts_and_finishes,
            unfinished_jobs_are_counted_per_owner,
            pending_of_lists_a_consumers_leased_entries,
            claims_come_only_from_served_queues,
            the_first_served_queue_goes_first,
            only_a_worker_of_the_queue_takes_over,
            an_idempotency_key_makes_one_job,
            concurrent_creates_under_one_key_make_one_job,
            an_idempotency_key_expires_after_its_window,
            a_unique_key_keeps_one_unfinished_job,
            concurrent_creates_under_one_unique_key_make_one_job,
            higher_priorities_are_claimed_first,
            urgent_backlog_does_not_starve_low_priorities,
            delayed_job_is_promoted_once_at_its_time,
            promoters_sharing_a_backend_promote_each_job_once,
            scheduled_jobs_cancel_and_delete,
            an_external_retry_may_start_before_its_time,
            retry_after_a_backoff_waits_on_the_schedule,
            the_worker_registry_shows_live_and_gone_workers,
            a_paused_queue_is_passed_by_until_resumed,
            the_queue_overview_counts_each_queue,
            a_failed_job_is_retried_by_hand,
            schedules_are_stored_and_compared_whole,
            a_cron_tick_fires_once_across_racing_processes,
            a_lost_advance_makes_no_second_job,
            missed_ticks_fire_once_or_not_at_all,
            queue_limits_are_kept_and_shown,
            a_concurrency_cap_holds_across_claimers,
            a_rate_limit_spaces_the_starts,
            the_queue_overview_counts_scheduled_and_failed_jobs,
        );
    };
    (@cases $factory:expr; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() -> ::anyhow::Result<()> {
                $crate::testsuite::$case(&$factory).await
            }
        )*
    };
}

fn small_config() -> BackendConfig {
    BackendConfig {
        partitions: 4,
        ..BackendConfig::default()
    }
}

/// A job with no parameters, owned by alice.
async fn demo_job(b: &dyn Backend) -> Result<JobState> {
    Ok(b.create_job(NewJob::new("demo", json!({}), "alice"))
        .await?)
}

/// The queues of a worker that runs `demo` jobs.
fn demo_queues() -> Vec<String> {
    vec!["demo".to_owned()]
}

/// The next claim for `consumer`, which must exist.
async fn claim_one(b: &dyn Backend, consumer: &str) -> Result<Claim> {
    b.claim(consumer, &demo_queues(), 1, Duration::from_millis(100))
        .await?
        .pop()
        .context("no claim")
}

/// A demo job claimed by `consumer`, with its `job_started` published
/// (fenced as attempt 1's first event), as a worker starts one.
async fn claimed_and_started(b: &dyn Backend, consumer: &str) -> Result<(JobState, Claim)> {
    let job = demo_job(b).await?;
    let claim = claim_one(b, consumer).await?;
    b.publish(
        &job.id,
        &[NewEvent::new(EventType::JobStarted, json!({})).fenced(1, 1)],
    )
    .await?;
    Ok((job, claim))
}

async fn started(b: &dyn Backend, owner: &str) -> Result<JobState> {
    let job = b
        .create_job(NewJob::new("demo", json!({"steps": 3}), owner))
        .await?;
    b.publish(&job.id, &[NewEvent::new(EventType::JobStarted, json!({}))])
        .await?;
    Ok(b.job(&job.id).await?)
}

/// Takes over idle entries and settles them, as the worker runtime does.
async fn reclaim(
    b: &dyn Backend,
    consumer: &str,
    min_idle: Duration,
    max_attempts: u32,
    max: usize,
) -> Result<Vec<Reclaimed>> {
    let taken = b
        .take_over_idle(consumer, &demo_queues(), min_idle, max)
        .await?;
    Ok(crate::settle::settle_all(b, b, taken, &|_| max_attempts).await?)
}

fn progress(i: u64) -> NewEvent {
    NewEvent::new(
        EventType::Progress,
        json!({"current": i, "total": 1_000_000, "i": i}),
    )
}

async fn all_events(b: &dyn Backend, job: &JobId) -> Result<Vec<Event>> {
    match b.events_after(job, EventId::ZERO, None, usize::MAX).await? {
        EventsAfter::Events(records) => parse(&records),
        EventsAfter::Resync(r) => bail!("expected events, got resync {r:?}"),
    }
}

/// Parses records, checking that their routing fields match their JSON.
fn parse(records: &[EventRecord]) -> Result<Vec<Event>> {
    records
        .iter()
        .map(|r| {
            let e = r.parse().context("record is not an event")?;
            ensure!(
                e.id == r.id && e.job_id == r.job_id,
                "record {r:?} disagrees with its JSON"
            );
            Ok(e)
        })
        .collect()
}

/// Anything with an event id.
trait HasId {
    fn event_id(&self) -> EventId;
}

impl HasId for Event {
    fn event_id(&self) -> EventId {
        self.id
    }
}

impl HasId for EventRecord {
    fn event_id(&self) -> EventId {
        self.id
    }
}

fn assert_consecutive<E: HasId>(events: &[E], first: u64) -> Result<()> {
    for (i, e) in events.iter().enumerate() {
        ensure!(
            e.event_id() == EventId(first + i as u64),
            "event #{i} has id {}, expected {} (ids: {:?})",
            e.event_id(),
            first + i as u64,
            events.iter().map(|e| e.event_id().0).collect::<Vec<_>>()
        );
    }
    Ok(())
}
