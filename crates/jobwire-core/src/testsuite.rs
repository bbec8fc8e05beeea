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

use std::any::Any;
use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, ensure, Context, Result};
use async_trait::async_trait;
use serde_json::json;

use crate::backend::{
    Backend, BackendConfig, BackendError, CancelOutcome, EventsAfter, JobCounts, ListQuery,
    LiveBatch, QueueStats, Reclaimed, ResyncReason, TailFrom,
};
use crate::event::{Event, EventRecord, EventType, NewEvent};
use crate::ids::{Epoch, EventId, JobId};
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
            jobs_are_counted_by_status,
            unfinished_jobs_are_counted_per_owner,
            pending_of_lists_a_consumers_leased_entries,
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
    let taken = b.take_over_idle(consumer, min_idle, max).await?;
    Ok(crate::settle::settle_all(b, b, taken, max_attempts).await?)
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

/// Ids are 1, 2, 3 … per job, in publication order, across batch sizes.
pub async fn ids_are_consecutive_and_in_order(f: &dyn BackendFactory) -> Result<()> {
    let t = f.create(small_config()).await?;
    let b = t.backend.as_ref();
    let job = started(b, "alice").await?;
    let mut i = 0;
    for size in [1, 2, 7, 1, 30, 9] {
        let batch: Vec<_> = (0..size)
            .map(|_| {
                i += 1;
                progress(i)
            })
            .collect();
        let out = b.publish(&job.id, &batch).await?;
        ensure!(
            out.ids.len() == size,
            "batch of {size} appended {}",
            out.ids.len()
        );
    }
    let events = all_events(b, &job.id).await?;
    ensure!(events.len() == 2 + 50, "log holds {} events", events.len());
    assert_consecutive(&events, 1)?;
    ensure!(events[0].kind == EventType::JobQueued && events[1].kind == EventType::JobStarted);
    let order: Vec<u64> = events[2..]
        .iter()
        .filter_map(|e| e.data["i"].as_u64())
        .collect();
    ensure!(
        order == (1..=50).collect::<Vec<_>>(),
        "payload order {order:?}"
    );
    ensure!(events.iter().all(|e| e.job_id == job.id));
    Ok(())
}

/// After every publish the snapshot's `last_event_id` is the log's last id,
/// and the state equals replaying the log through the reducer.
pub async fn snapshot_tracks_the_log_after_every_publish(f: &dyn BackendFactory) -> Result<()> {
    let t = f.create(small_config()).await?;
    let b = t.backend.as_ref();
    let job = b
        .create_job(NewJob::new("scan", json!({"path": "/x"}), "alice"))
        .await?;
    ensure!(job.last_event_id == EventId(1) && job.status == JobStatus::Queued);
    let steps = vec![
        NewEvent::new(EventType::JobStarted, json!({"total_files": 3})),
        NewEvent::new(EventType::FileProcessing, json!({"file": "a"})),
        NewEvent::new(EventType::FileCompleted, json!({"file": "a"})),
        NewEvent::new(EventType::Error, json!({"file": "b", "message": "denied"})),
        NewEvent::new(EventType::FileCompleted, json!({"file": "c"})),
        NewEvent::new(EventType::JobCompleted, json!({"result": {"files": 3}})),
    ];
    for step in steps {
        let out = b.publish(&job.id, &[step]).await?;
        let snap = b.job(&job.id).await?;
        let events = all_events(b, &job.id).await?;
        let last = events.last().map(|e| e.id).context("empty log")?;
        ensure!(
            snap.last_event_id == last,
            "snapshot at {} but log ends at {last}",
            snap.last_event_id
        );
        ensure!(out.last_event_id == last);
        let mut replayed = JobState::new(
            &NewJob {
                id: job.id.clone(),
                kind: job.kind.clone(),
                params: job.params.clone(),
                owner: job.owner.clone(),
                external: false,
            },
            snap.epoch.clone(),
            snap.created_at,
        );
        for e in &events {
            replayed = crate::reducer::apply(&replayed, e)?;
        }
        replayed.expires_at = snap.expires_at;
        ensure!(
            replayed == snap,
            "replayed log differs from snapshot:\n{replayed:?}\n{snap:?}"
        );
    }
    let done = b.job(&job.id).await?;
    ensure!(done.status == JobStatus::Completed);
    ensure!((done.processed_files, done.failed_files, done.total_files) == (2, 1, 3));
    ensure!(done.result == Some(json!({"files": 3})));
    Ok(())
}

/// `events_after(s)` returns exactly the events with ids > s, up to the limit.
pub async fn since_reads_return_exactly_the_later_events(f: &dyn BackendFactory) -> Result<()> {
    let t = f.create(small_config()).await?;
    let b = t.backend.as_ref();
    let job = started(b, "alice").await?;
    b.publish(&job.id, &(1..=20).map(progress).collect::<Vec<_>>())
        .await?;
    let last = 22;
    for since in 0..=last {
        match b.events_after(&job.id, EventId(since), None, 1000).await? {
            EventsAfter::Events(events) => {
                ensure!(
                    events.len() as u64 == last - since,
                    "since {since}: {} events",
                    events.len()
                );
                assert_consecutive(&events, since + 1)?;
            }
            other => bail!("since {since}: {other:?}"),
        }
    }
    match b
        .events_after(&job.id, EventId(5), Some(&job.epoch), 3)
        .await?
    {
        EventsAfter::Events(events) => assert_consecutive(&events, 6).and_then(|_| {
            ensure!(events.len() == 3, "limit ignored");
            Ok(())
        })?,
        other => bail!("limited read: {other:?}"),
    }
    Ok(())
}

/// A resume point whose successors were trimmed, a foreign epoch, and a
/// position beyond the log each ask for a resync.
pub async fn trimmed_resume_point_and_wrong_epoch_are_reported(
    f: &dyn BackendFactory,
) -> Result<()> {
    let t = f
        .create(BackendConfig {
            stream_maxlen: 10,
            ..small_config()
        })
        .await?;
    let b = t.backend.as_ref();
    let job = started(b, "alice").await?;
    for chunk in 0..10 {
        b.publish(
            &job.id,
            &(1..=50)
                .map(|i| progress(chunk * 50 + i))
                .collect::<Vec<_>>(),
        )
        .await?;
    }
    let last = 502;
    match b.events_after(&job.id, EventId::ZERO, None, 10_000).await? {
        EventsAfter::Resync(ResyncReason::Trimmed { oldest }) => {
            ensure!(
                oldest.0 > 1 && oldest.0 <= last - 9,
                "oldest retained {oldest}"
            );
        }
        other => bail!("expected trimmed, got {other:?}"),
    }
    match b
        .events_after(&job.id, EventId(last - 5), Some(&job.epoch), 100)
        .await?
    {
        EventsAfter::Events(events) => assert_consecutive(&events, last - 4)?,
        other => bail!("recent resume: {other:?}"),
    }
    let wrong = Epoch::generate();
    match b
        .events_after(&job.id, EventId(last - 5), Some(&wrong), 100)
        .await?
    {
        EventsAfter::Resync(ResyncReason::EpochChanged { current }) => {
            ensure!(current == job.epoch)
        }
        other => bail!("expected epoch change, got {other:?}"),
    }
    match b
        .events_after(&job.id, EventId(last + 7), None, 100)
        .await?
    {
        EventsAfter::Resync(ResyncReason::Ahead { last: l }) => ensure!(l == EventId(last)),
        other => bail!("expected ahead, got {other:?}"),
    }
    Ok(())
}

/// Fencing: a publish from an older attempt is refused; a repeated `n` is
/// applied once.
pub async fn stale_attempt_is_refused_and_repeated_n_ignored(f: &dyn BackendFactory) -> Result<()> {
    let t = f.create(small_config()).await?;
    let b = t.backend.as_ref();
    let job = b
        .create_job(NewJob::new("demo", json!({}), "alice"))
        .await?;
    let batch = vec![
        NewEvent::new(EventType::JobStarted, json!({})).fenced(1, 1),
        progress(1).fenced(1, 2),
    ];
    let first = b.publish(&job.id, &batch).await?;
    ensure!(first.ids.len() == 2 && first.duplicates == 0);
    // The same publish retried (say, after a timeout): applied once.
    let again = b.publish(&job.id, &batch).await?;
    ensure!(again.ids.is_empty() && again.duplicates == 2, "{again:?}");
    // Partly new: only the new one is appended.
    let mixed = b
        .publish(
            &job.id,
            &[progress(1).fenced(1, 2), progress(2).fenced(1, 3)],
        )
        .await?;
    ensure!(mixed.ids == vec![EventId(4)] && mixed.duplicates == 1);
    match b.publish(&job.id, &[progress(3).fenced(0, 4)]).await {
        Err(BackendError::Fenced {
            sent: 0,
            current: 1,
            ..
        }) => {}
        other => bail!("stale attempt accepted: {other:?}"),
    }
    let events = all_events(b, &job.id).await?;
    ensure!(events.len() == 4, "log has {} events", events.len());
    assert_consecutive(&events, 1)
}

/// Unknown jobs, duplicate ids and illegal events are refused and change nothing.
pub async fn illegal_events_and_unknown_jobs_are_refused(f: &dyn BackendFactory) -> Result<()> {
    let t = f.create(small_config()).await?;
    let b = t.backend.as_ref();
    let nobody = JobId::generate();
    ensure!(matches!(
        b.publish(&nobody, &[progress(1)]).await,
        Err(BackendError::NotFound(_))
    ));
    ensure!(matches!(
        b.job(&nobody).await,
        Err(BackendError::NotFound(_))
    ));
    ensure!(matches!(
        b.events_after(&nobody, EventId::ZERO, None, 10).await,
        Err(BackendError::NotFound(_))
    ));
    let new = NewJob::new("demo", json!({}), "alice");
    let job = b.create_job(new.clone()).await?;
    ensure!(matches!(
        b.create_job(new).await,
        Err(BackendError::AlreadyExists(_))
    ));
    // Progress before job_started is illegal; so is a bad payload.
    ensure!(matches!(
        b.publish(&job.id, &[progress(1)]).await,
        Err(BackendError::Rejected { .. })
    ));
    b.publish(&job.id, &[NewEvent::new(EventType::JobStarted, json!({}))])
        .await?;
    let bad = NewEvent::new(EventType::FileProcessing, json!({"file": 42}));
    ensure!(matches!(
        b.publish(&job.id, &[progress(1), bad]).await,
        Err(BackendError::Rejected { .. })
    ));
    // The refused batch left nothing behind, not even its valid first event.
    ensure!(all_events(b, &job.id).await?.len() == 2);
    ensure!(b.job(&job.id).await?.last_event_id == EventId(2));
    Ok(())
}

/// Cancel: a queued job is cancelled at once; a running one gets the flag,
/// which every publish reports; a finished one is left alone.
pub async fn cancel_flag_round_trips(f: &dyn BackendFactory) -> Result<()> {
    let t = f.create(small_config()).await?;
    let b = t.backend.as_ref();
    let queued = b
        .create_job(NewJob::new("demo", json!({}), "alice"))
        .await?;
    ensure!(b.cancel(&queued.id).await? == CancelOutcome::Cancelled);
    let snap = b.job(&queued.id).await?;
    ensure!(snap.status == JobStatus::Cancelled && snap.expires_at.is_some());

    let running = started(b, "alice").await?;
    ensure!(!running.cancel_requested);
    ensure!(
        !b.publish(&running.id, &[progress(1)])
            .await?
            .cancel_requested
    );
    ensure!(b.cancel(&running.id).await? == CancelOutcome::Requested);
    ensure!(b.job(&running.id).await?.cancel_requested);
    let out = b.publish(&running.id, &[progress(2)]).await?;
    ensure!(
        out.cancel_requested,
        "publish did not report the cancel flag"
    );
    ensure!(
        b.publish(&running.id, &[]).await?.cancel_requested,
        "empty publish lost the flag"
    );
    b.publish(
        &running.id,
        &[NewEvent::new(EventType::JobCancelled, json!({}))],
    )
    .await?;
    ensure!(b.job(&running.id).await?.status == JobStatus::Cancelled);
    ensure!(b.cancel(&running.id).await? == CancelOutcome::AlreadyFinished(JobStatus::Cancelled));
    ensure!(matches!(
        b.cancel(&JobId::generate()).await,
        Err(BackendError::NotFound(_))
    ));
    Ok(())
}

/// Created jobs are claimed in order, leased until acked, then gone.
pub async fn queue_claim_and_ack(f: &dyn BackendFactory) -> Result<()> {
    let t = f.create(small_config()).await?;
    let b = t.backend.as_ref();
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(
            b.create_job(NewJob::new("demo", json!({}), "alice"))
                .await?
                .id,
        );
    }
    b.create_job(NewJob::new("celery.task", json!({}), "alice").external())
        .await?;
    let stats = b.queue_stats().await?;
    ensure!(stats.waiting == 3 && stats.pending == 0, "{stats:?}");
    let claims = b.claim("w1", 10, Duration::from_millis(100)).await?;
    ensure!(
        claims.iter().map(|c| c.job_id.clone()).collect::<Vec<_>>() == ids,
        "claims {claims:?}"
    );
    ensure!(claims.iter().all(|c| c.kind == "demo"));
    let stats = b.queue_stats().await?;
    ensure!(stats.waiting == 0 && stats.pending == 3, "{stats:?}");
    ensure!(
        b.claim("w2", 10, Duration::from_millis(50))
            .await?
            .is_empty(),
        "a leased entry was handed out twice"
    );
    for c in &claims {
        b.ack(&c.entry).await?;
    }
    ensure!(b.queue_stats().await? == Default::default());
    ensure!(
        reclaim(b, "w2", Duration::ZERO, 5, 10).await?.is_empty(),
        "acked entries came back"
    );
    Ok(())
}

/// A blocked claim wakes up when a job is enqueued.
pub async fn claim_waits_for_an_enqueue(f: &dyn BackendFactory) -> Result<()> {
    let t = f.create(small_config()).await?;
    let b = Arc::clone(&t.backend);
    let waiter = tokio::spawn({
        let b = Arc::clone(&b);
        async move { b.claim("w1", 1, Duration::from_secs(10)).await }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let job = b
        .create_job(NewJob::new("demo", json!({}), "alice"))
        .await?;
    let claims = tokio::time::timeout(Duration::from_secs(5), waiter)
        .await
        .context("claim did not wake")???;
    ensure!(claims.len() == 1 && claims[0].job_id == job.id);
    Ok(())
}

/// A claim left unacked past the visibility timeout goes to another worker
/// with attempt + 1 and `job_retrying`; the old worker is fenced out.
pub async fn unacked_claim_is_reclaimed_with_a_new_attempt(f: &dyn BackendFactory) -> Result<()> {
    let t = f.create(small_config()).await?;
    let b = t.backend.as_ref();
    let job = b
        .create_job(NewJob::new("demo", json!({}), "alice"))
        .await?;
    let claim = b
        .claim("w1", 1, Duration::from_millis(100))
        .await?
        .pop()
        .context("no claim")?;
    b.publish(
        &job.id,
        &[NewEvent::new(EventType::JobStarted, json!({})).fenced(1, 1)],
    )
    .await?;
    let idle = Duration::from_millis(300);
    ensure!(
        reclaim(b, "w2", idle, 3, 10).await?.is_empty(),
        "reclaimed a fresh lease"
    );
    tokio::time::sleep(idle + Duration::from_millis(100)).await;
    let reclaimed = reclaim(b, "w2", idle, 3, 10).await?;
    match reclaimed.as_slice() {
        [Reclaimed::Retry {
            claim: c,
            attempt: 2,
        }] => ensure!(c.job_id == job.id && c.entry == claim.entry),
        other => bail!("expected one retry at attempt 2, got {other:?}"),
    }
    let snap = b.job(&job.id).await?;
    ensure!(snap.attempt == 2 && snap.status == JobStatus::Queued);
    let events = all_events(b, &job.id).await?;
    ensure!(events.last().map(|e| &e.kind) == Some(&EventType::JobRetrying));
    assert_consecutive(&events, 1)?;
    ensure!(
        !b.renew("w1", &claim.entry).await?,
        "the dead worker kept its lease"
    );
    ensure!(b.renew("w2", &claim.entry).await?);
    ensure!(
        matches!(
            b.publish(&job.id, &[progress(1).fenced(1, 2)]).await,
            Err(BackendError::Fenced {
                sent: 1,
                current: 2,
                ..
            })
        ),
        "the zombie worker could still publish"
    );
    // The new attempt counts its publishes from 1 again.
    let out = b
        .publish(
            &job.id,
            &[NewEvent::new(EventType::JobStarted, json!({})).fenced(2, 1)],
        )
        .await?;
    ensure!(out.ids.len() == 1);
    Ok(())
}

/// Renewing a lease keeps the entry from being reclaimed.
pub async fn renewed_lease_is_not_reclaimed(f: &dyn BackendFactory) -> Result<()> {
    let t = f.create(small_config()).await?;
    let b = t.backend.as_ref();
    b.create_job(NewJob::new("demo", json!({}), "alice"))
        .await?;
    let claim = b
        .claim("w1", 1, Duration::from_millis(100))
        .await?
        .pop()
        .context("no claim")?;
    let idle = Duration::from_millis(400);
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(150)).await;
        ensure!(b.renew("w1", &claim.entry).await?, "renew refused");
    }
    ensure!(
        reclaim(b, "w2", idle, 3, 10).await?.is_empty(),
        "a renewed lease was reclaimed"
    );
    Ok(())
}

/// A released entry is delivered again at once; only its holder may release it.
pub async fn released_entry_goes_to_the_next_claim(f: &dyn BackendFactory) -> Result<()> {
    let t = f.create(small_config()).await?;
    let b = t.backend.as_ref();
    let job = b
        .create_job(NewJob::new("demo", json!({}), "alice"))
        .await?;
    let claim = b
        .claim("w1", 1, Duration::from_millis(100))
        .await?
        .pop()
        .context("no claim")?;
    ensure!(
        !b.release("w2", &claim.entry).await?,
        "another consumer released w1's entry"
    );
    ensure!(b.release("w1", &claim.entry).await?, "release refused");
    ensure!(
        !b.release("w1", &claim.entry).await?,
        "an entry was released twice"
    );
    let again = b.claim("w2", 5, Duration::from_millis(500)).await?;
    ensure!(again.len() == 1, "{again:?}");
    ensure!(
        again[0].job_id == job.id && again[0].kind == "demo",
        "{again:?}"
    );
    ensure!(
        b.queue_stats().await?
            == QueueStats {
                waiting: 0,
                pending: 1
            },
        "{:?}",
        b.queue_stats().await?
    );
    b.ack(&again[0].entry).await?;
    ensure!(
        b.queue_stats().await? == QueueStats::default(),
        "the released entry left a copy"
    );
    Ok(())
}

/// Past `max_attempts` an abandoned job is failed and its entry acked.
pub async fn dead_letter_after_max_attempts(f: &dyn BackendFactory) -> Result<()> {
    let t = f.create(small_config()).await?;
    let b = t.backend.as_ref();
    let job = b
        .create_job(NewJob::new("demo", json!({}), "alice"))
        .await?;
    b.claim("w1", 1, Duration::from_millis(100)).await?;
    let idle = Duration::from_millis(100);
    tokio::time::sleep(idle * 2).await;
    let first = reclaim(b, "w2", idle, 2, 10).await?;
    ensure!(
        matches!(first.as_slice(), [Reclaimed::Retry { attempt: 2, .. }]),
        "{first:?}"
    );
    tokio::time::sleep(idle * 2).await;
    let second = reclaim(b, "w3", idle, 2, 10).await?;
    ensure!(
        matches!(
            second.as_slice(),
            [Reclaimed::DeadLettered { attempts: 2, .. }]
        ),
        "{second:?}"
    );
    let snap = b.job(&job.id).await?;
    ensure!(snap.status == JobStatus::Failed, "{:?}", snap.status);
    ensure!(
        snap.error
            .as_deref()
            .is_some_and(|e| e.contains("2 attempts")),
        "{:?}",
        snap.error
    );
    ensure!(
        b.queue_stats().await? == Default::default(),
        "dead letter left its entry"
    );
    Ok(())
}

/// Finished jobs carry their expiry and disappear after the retention;
/// unfinished jobs do not expire.
pub async fn finished_jobs_expire_after_retention(f: &dyn BackendFactory) -> Result<()> {
    let retention = Duration::from_millis(500);
    let t = f
        .create(BackendConfig {
            retention,
            ..small_config()
        })
        .await?;
    let b = t.backend.as_ref();
    let done = started(b, "alice").await?;
    let out = b
        .publish(
            &done.id,
            &[NewEvent::new(EventType::JobCompleted, json!({}))],
        )
        .await?;
    let snap = b.job(&done.id).await?;
    let finished = snap.finished_at.context("no finished_at")?;
    ensure!(
        snap.expires_at == Some(finished.plus(retention)),
        "expires_at {:?}",
        snap.expires_at
    );
    ensure!(out.ids.len() == 1);
    let pending = started(b, "alice").await?;
    tokio::time::sleep(retention + Duration::from_millis(500)).await;
    ensure!(
        matches!(b.job(&done.id).await, Err(BackendError::NotFound(_))),
        "finished job outlived its retention"
    );
    ensure!(matches!(
        b.events_after(&done.id, EventId::ZERO, None, 10).await,
        Err(BackendError::NotFound(_))
    ));
    ensure!(
        b.job(&pending.id).await?.status == JobStatus::Running,
        "a running job expired"
    );
    let page = b
        .list_jobs(&ListQuery {
            owner: Some("alice".into()),
            limit: 10,
            ..Default::default()
        })
        .await?;
    ensure!(
        page.jobs.iter().map(|j| &j.id).collect::<Vec<_>>() == vec![&pending.id],
        "listing shows expired jobs"
    );
    Ok(())
}

/// One tail sees every event of every job, across partitions, each job's in order.
pub async fn live_tail_sees_every_event_in_order(f: &dyn BackendFactory) -> Result<()> {
    let t = f.create(small_config()).await?;
    let b = t.backend.as_ref();
    let mut tail = b.tail(TailFrom::Now).await?;
    let mut jobs = Vec::new();
    for _ in 0..20 {
        jobs.push(started(b, "alice").await?.id);
    }
    let partitions: HashSet<u16> = jobs.iter().map(|j| j.partition(4)).collect();
    ensure!(partitions.len() > 1, "test jobs all fell in one partition");
    for round in 1..=10 {
        for job in &jobs {
            b.publish(job, &[progress(round)]).await?;
        }
    }
    let expected = jobs.len() * 12;
    let mut seen: BTreeMap<JobId, Vec<u64>> = BTreeMap::new();
    let mut count = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while count < expected {
        ensure!(
            tokio::time::Instant::now() < deadline,
            "tail saw {count} of {expected} events"
        );
        match tail.next().await? {
            LiveBatch::Events(events) => {
                for e in events {
                    count += 1;
                    seen.entry(e.job_id.clone()).or_default().push(e.id.0);
                }
            }
            LiveBatch::Gap => bail!("unexpected gap"),
        }
    }
    for job in &jobs {
        let ids = seen
            .get(job)
            .ok_or_else(|| anyhow!("no events for {job}"))?;
        ensure!(
            *ids == (1..=12).collect::<Vec<_>>(),
            "job {job} seen as {ids:?}"
        );
    }
    // A second tail opened at the first one's position continues seamlessly.
    let position = tail.position();
    b.publish(&jobs[0], &[progress(99)]).await?;
    let mut resumed = b.tail(TailFrom::After(position)).await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        ensure!(
            tokio::time::Instant::now() < deadline,
            "resumed tail saw nothing"
        );
        if let LiveBatch::Events(events) = resumed.next().await? {
            if let Some(e) = events.first() {
                ensure!(
                    e.job_id == jobs[0] && e.id == EventId(13),
                    "resumed at {e:?}"
                );
                break;
            }
        }
    }
    Ok(())
}

/// 8 publishers × 1,000 events spread over 8 jobs, all concurrently and
/// contending on the same jobs: every log holds every event once, ids
/// consecutive, each publisher's events in its order; the tail sees them all.
pub async fn concurrent_publishers_lose_nothing(f: &dyn BackendFactory) -> Result<()> {
    const PUBLISHERS: u64 = 8;
    const EVENTS: u64 = 1000;
    // A feed that holds the whole run: this case checks order and loss, not
    // what happens when a tail falls behind (that is a reported Gap).
    let t = f
        .create(BackendConfig {
            stream_maxlen: 5000,
            live_maxlen: 20_000,
            ..small_config()
        })
        .await?;
    let b = Arc::clone(&t.backend);
    let mut jobs = Vec::new();
    for _ in 0..8 {
        jobs.push(started(b.as_ref(), "alice").await?.id);
    }
    // The tail is drained while the publishers run, as a gateway would.
    let mut tail = b.tail(TailFrom::Now).await?;
    let expected = (PUBLISHERS * EVENTS) as usize;
    let tailer = tokio::spawn(async move {
        let mut tailed = 0;
        let mut last_seen: BTreeMap<JobId, EventId> = BTreeMap::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while tailed < expected {
            ensure!(
                tokio::time::Instant::now() < deadline,
                "tail saw {tailed} of {expected}"
            );
            match tail.next().await? {
                LiveBatch::Events(events) => {
                    for e in events {
                        let prev = last_seen
                            .insert(e.job_id.clone(), e.id)
                            .unwrap_or(EventId(2));
                        ensure!(
                            e.id == prev.next(),
                            "tail: job {} went {prev} -> {}",
                            e.job_id,
                            e.id
                        );
                        tailed += 1;
                    }
                }
                LiveBatch::Gap => bail!("the tail fell behind the live feed after {tailed} events"),
            }
        }
        Ok(())
    });
    let jobs = Arc::new(jobs);
    let mut tasks = Vec::new();
    for p in 0..PUBLISHERS {
        let (b, jobs) = (Arc::clone(&b), Arc::clone(&jobs));
        tasks.push(tokio::spawn(async move {
            for k in 0..EVENTS {
                let job = &jobs[((p + k) % jobs.len() as u64) as usize];
                let ev = NewEvent::new(EventType::Progress, json!({"p": p, "k": k}));
                b.publish(job, &[ev]).await?;
            }
            Ok::<_, BackendError>(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    let mut seen = HashSet::new();
    for job in jobs.iter() {
        let events = all_events(b.as_ref(), job).await?;
        ensure!(
            events.len() as u64 == 2 + PUBLISHERS * EVENTS / 8,
            "job {job} has {} events",
            events.len()
        );
        assert_consecutive(&events, 1)?;
        let mut last_k: BTreeMap<u64, u64> = BTreeMap::new();
        for e in &events[2..] {
            let (p, k) = (
                e.data["p"].as_u64().context("p")?,
                e.data["k"].as_u64().context("k")?,
            );
            ensure!(seen.insert((p, k)), "event ({p},{k}) duplicated");
            if let Some(prev) = last_k.insert(p, k) {
                ensure!(prev < k, "publisher {p} reordered: {prev} then {k}");
            }
        }
    }
    ensure!(
        seen.len() as u64 == PUBLISHERS * EVENTS,
        "{} distinct events",
        seen.len()
    );
    tailer.await?
}

/// Delete removes the state, the log and the listing entry.
pub async fn delete_removes_everything(f: &dyn BackendFactory) -> Result<()> {
    let t = f.create(small_config()).await?;
    let b = t.backend.as_ref();
    let job = started(b, "alice").await?;
    b.publish(&job.id, &(1..=5).map(progress).collect::<Vec<_>>())
        .await?;
    b.delete(&job.id).await?;
    ensure!(matches!(
        b.job(&job.id).await,
        Err(BackendError::NotFound(_))
    ));
    ensure!(matches!(
        b.events_after(&job.id, EventId::ZERO, None, 10).await,
        Err(BackendError::NotFound(_))
    ));
    ensure!(matches!(
        b.publish(&job.id, &[progress(6)]).await,
        Err(BackendError::NotFound(_))
    ));
    let page = b
        .list_jobs(&ListQuery {
            owner: Some("alice".into()),
            limit: 10,
            ..Default::default()
        })
        .await?;
    ensure!(page.jobs.is_empty(), "deleted job still listed");
    ensure!(matches!(
        b.delete(&job.id).await,
        Err(BackendError::NotFound(_))
    ));
    Ok(())
}

/// Listing: a user's jobs only, newest first, in pages that add up exactly;
/// a status filter; everyone's jobs for an admin query.
pub async fn listing_is_paginated_newest_first(f: &dyn BackendFactory) -> Result<()> {
    let t = f.create(small_config()).await?;
    let b = t.backend.as_ref();
    let mut alice = Vec::new();
    for i in 0..5 {
        alice.push(
            b.create_job(NewJob::new("demo", json!({"i": i}), "alice"))
                .await?
                .id,
        );
        // ULIDs created within one millisecond may not sort by creation.
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    b.create_job(NewJob::new("demo", json!({}), "bob")).await?;
    b.publish(
        &alice[1],
        &[NewEvent::new(EventType::JobStarted, json!({}))],
    )
    .await?;
    let mut listed = Vec::new();
    let mut cursor = None;
    let mut pages = 0;
    loop {
        let page = b
            .list_jobs(&ListQuery {
                owner: Some("alice".into()),
                limit: 2,
                cursor,
                status: None,
            })
            .await?;
        pages += 1;
        ensure!(
            page.jobs.iter().all(|j| j.owner == "alice"),
            "another user's job listed"
        );
        listed.extend(page.jobs.into_iter().map(|j| j.id));
        match page.next_cursor {
            Some(c) => cursor = Some(c),
            None => break,
        }
        ensure!(pages < 10, "pagination does not end");
    }
    let newest_first: Vec<_> = alice.iter().rev().cloned().collect();
    ensure!(listed == newest_first, "listed {listed:?}");
    ensure!(pages == 3);
    let running = b
        .list_jobs(&ListQuery {
            owner: Some("alice".into()),
            status: Some(JobStatus::Running),
            limit: 10,
            cursor: None,
        })
        .await?;
    ensure!(running.jobs.len() == 1 && running.jobs[0].id == alice[1]);
    let everyone = b
        .list_jobs(&ListQuery {
            limit: 100,
            ..Default::default()
        })
        .await?;
    ensure!(everyone.jobs.len() == 6 && everyone.next_cursor.is_none());
    let nobody = b
        .list_jobs(&ListQuery {
            owner: Some("carol".into()),
            limit: 10,
            ..Default::default()
        })
        .await?;
    ensure!(nobody.jobs.is_empty() && nobody.next_cursor.is_none());
    Ok(())
}

/// `health().jobs` follows every status change: creation, start, each way
/// of finishing, a retry, and deletion of an unfinished job.
pub async fn jobs_are_counted_by_status(f: &dyn BackendFactory) -> Result<()> {
    let t = f.create(small_config()).await?;
    let b = t.backend.as_ref();
    let counts = |q, r, c, fl, x| JobCounts {
        queued: q,
        running: r,
        completed: c,
        failed: fl,
        cancelled: x,
    };
    let check = |expected: JobCounts, step: &'static str| async move {
        let got = b.health().await?.jobs;
        ensure!(got == expected, "{step}: {got:?}, expected {expected:?}");
        Ok::<_, anyhow::Error>(())
    };
    check(counts(0, 0, 0, 0, 0), "empty").await?;
    let mut ids = Vec::new();
    for _ in 0..5 {
        ids.push(
            b.create_job(NewJob::new("demo", json!({}), "alice"))
                .await?
                .id,
        );
    }
    check(counts(5, 0, 0, 0, 0), "created").await?;
    let start = || NewEvent::new(EventType::JobStarted, json!({}));
    b.publish(
        &ids[0],
        &[start(), NewEvent::new(EventType::JobCompleted, json!({}))],
    )
    .await?;
    check(counts(4, 0, 1, 0, 0), "started and completed in one batch").await?;
    b.publish(&ids[1], &[start()]).await?;
    b.publish(&ids[1], &[progress(1)]).await?;
    check(counts(3, 1, 1, 0, 0), "running").await?;
    b.publish(
        &ids[1],
        &[NewEvent::new(EventType::JobFailed, json!({"error": "x"}))],
    )
    .await?;
    b.cancel(&ids[2]).await?;
    check(counts(2, 0, 1, 1, 1), "failed and cancelled").await?;
    b.publish(&ids[3], &[start()]).await?;
    b.publish(&ids[3], &[NewEvent::new(EventType::JobRetrying, json!({}))])
        .await?;
    check(
        counts(2, 0, 1, 1, 1),
        "started, then back to queued for a retry",
    )
    .await?;
    b.publish(&ids[4], &[start()]).await?;
    b.delete(&ids[4]).await?;
    b.delete(&ids[0]).await?;
    check(
        counts(1, 0, 1, 1, 1),
        "deleted a running and a finished job",
    )
    .await?;
    Ok(())
}

/// The per-user quota's counter: created jobs count until they finish or
/// are deleted, per owner, whatever their partition.
pub async fn unfinished_jobs_are_counted_per_owner(f: &dyn BackendFactory) -> Result<()> {
    let t = f.create(small_config()).await?;
    let b = t.backend.as_ref();
    let mut ids = Vec::new();
    for _ in 0..6 {
        ids.push(
            b.create_job(NewJob::new("demo", json!({}), "alice"))
                .await?
                .id,
        );
    }
    b.create_job(NewJob::new("demo", json!({}), "bob")).await?;
    ensure!(b.unfinished_jobs("alice").await? == 6);
    ensure!(b.unfinished_jobs("bob").await? == 1);
    ensure!(b.unfinished_jobs("carol").await? == 0);
    let start = || NewEvent::new(EventType::JobStarted, json!({}));
    b.publish(&ids[0], &[start()]).await?;
    ensure!(
        b.unfinished_jobs("alice").await? == 6,
        "running is unfinished"
    );
    b.publish(
        &ids[0],
        &[NewEvent::new(EventType::JobCompleted, json!({}))],
    )
    .await?;
    b.cancel(&ids[1]).await?;
    b.publish(&ids[2], &[start()]).await?;
    b.publish(
        &ids[2],
        &[NewEvent::new(EventType::JobFailed, json!({"error": "x"}))],
    )
    .await?;
    b.publish(&ids[3], &[start()]).await?;
    b.delete(&ids[3]).await?;
    b.delete(&ids[0]).await?;
    ensure!(
        b.unfinished_jobs("alice").await? == 2,
        "after completing, cancelling, failing and deleting: {}",
        b.unfinished_jobs("alice").await?
    );
    Ok(())
}

/// A worker can list the entries leased to it (to find orphans).
pub async fn pending_of_lists_a_consumers_leased_entries(f: &dyn BackendFactory) -> Result<()> {
    let t = f.create(small_config()).await?;
    let b = t.backend.as_ref();
    for _ in 0..3 {
        b.create_job(NewJob::new("demo", json!({}), "alice"))
            .await?;
    }
    let mine = b.claim("c1", 2, Duration::from_secs(1)).await?;
    let theirs = b.claim("c2", 1, Duration::from_secs(1)).await?;
    ensure!(mine.len() == 2 && theirs.len() == 1);
    let leased = b.pending_of("c1", 10).await?;
    ensure!(leased == mine, "{leased:?} vs {mine:?}");
    b.ack(&mine[0].entry).await?;
    let leased = b.pending_of("c1", 10).await?;
    ensure!(leased == mine[1..], "after an ack: {leased:?}");
    ensure!(b.pending_of("nobody", 10).await?.is_empty());
    Ok(())
}
