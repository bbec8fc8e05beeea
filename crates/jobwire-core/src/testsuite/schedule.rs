//! Conformance cases of priorities, the schedule (delayed jobs, retries
//! after a backoff) and promotion.

use crate::job::lowest_first;
use crate::settle::promote_due;
use crate::Timestamp;

use super::*;

/// Claims one entry of the demo queue at a time, returning the priorities
/// of the jobs claimed, in order.
async fn priorities_claimed(b: &dyn Backend, n: usize) -> Result<Vec<u8>> {
    let mut order = Vec::new();
    for _ in 0..n {
        let claim = b
            .claim("w", &demo_queues(), 1, Duration::ZERO)
            .await?
            .pop()
            .context("the queue ran dry")?;
        order.push(b.job(&claim.job_id).await?.priority);
        b.ack(&claim.entry).await?;
    }
    Ok(order)
}

/// Within a queue the highest priority goes first, whatever the order of
/// creation.
pub async fn higher_priorities_are_claimed_first(f: &dyn BackendFactory) -> Result<()> {
    let t = f.create(small_config()).await?;
    let b = t.backend.as_ref();
    for p in [1, 9, 5, 0, 9, 7] {
        b.create_job(NewJob::new("demo", json!({}), "alice").at_priority(p))
            .await?;
    }
    let order = priorities_claimed(b, 6).await?;
    ensure!(order == [9, 9, 7, 5, 1, 0], "claimed in order {order:?}");
    Ok(())
}

/// The starvation rule: one claim in ten takes the lowest priority first.
pub async fn urgent_backlog_does_not_starve_low_priorities(f: &dyn BackendFactory) -> Result<()> {
    let t = f.create(small_config()).await?;
    let b = t.backend.as_ref();
    b.create_job(NewJob::new("demo", json!({}), "alice").at_priority(0))
        .await?;
    for _ in 0..12 {
        b.create_job(NewJob::new("demo", json!({}), "alice").at_priority(9))
            .await?;
    }
    let order = priorities_claimed(b, 13).await?;
    let low_at = order.iter().position(|&p| p == 0);
    let expected = (0..13u64).position(lowest_first);
    ensure!(
        low_at == expected,
        "the low-priority job came at claim {low_at:?}, not {expected:?}: {order:?}"
    );
    Ok(())
}

/// A delayed job is `scheduled` (its first event says until when), is not
/// claimable, and is queued once when its time comes, however many
/// promoters race.
pub async fn delayed_job_is_promoted_once_at_its_time(f: &dyn BackendFactory) -> Result<()> {
    let t = f.create(small_config()).await?;
    let b = t.backend.as_ref();
    let at = Timestamp::now().plus(Duration::from_secs(3600));
    let job = b
        .create_job(NewJob::new("demo", json!({}), "alice").not_before(at))
        .await?;
    ensure!(
        job.status == JobStatus::Scheduled && job.run_at == Some(at),
        "{job:?}"
    );
    let first = all_events(b, &job.id).await?;
    ensure!(
        first.len() == 1 && first[0].data["run_at"] == json!(at.to_string()),
        "{first:?}"
    );
    ensure!(b.health().await?.jobs.scheduled == 1);
    ensure!(b.queue_stats().await?.scheduled == 1);
    ensure!(b
        .claim("w", &demo_queues(), 1, Duration::from_millis(50))
        .await?
        .is_empty());
    ensure!(b.due(Timestamp::now(), 10).await?.is_empty(), "due early");
    ensure!(promote_due(b, b, Timestamp::now(), 10).await? == 0);

    let later = at.plus(Duration::from_secs(1));
    ensure!(b.due(later, 10).await? == std::slice::from_ref(&job.id));
    let (x, y, z) = tokio::join!(
        promote_due(b, b, later, 10),
        promote_due(b, b, later, 10),
        promote_due(b, b, later, 10)
    );
    ensure!(x? + y? + z? == 1, "promoted more than once");
    let events = all_events(b, &job.id).await?;
    ensure!(events.len() == 2, "{events:?}");
    ensure!(events[1].kind == EventType::JobQueued);
    ensure!(b.job(&job.id).await?.status == JobStatus::Queued);
    ensure!(b.due(later, 10).await?.is_empty(), "still on the schedule");
    let counts = b.health().await?.jobs;
    ensure!(counts.scheduled == 0 && counts.queued == 1, "{counts:?}");
    let claim = claim_one(b, "w").await?;
    ensure!(claim.job_id == job.id);
    ensure!(b.queue_stats().await?.scheduled == 0);
    Ok(())
}

/// A scheduled job can be cancelled (at once) or deleted, and leaves the
/// schedule either way.
pub async fn scheduled_jobs_cancel_and_delete(f: &dyn BackendFactory) -> Result<()> {
    let t = f.create(small_config()).await?;
    let b = t.backend.as_ref();
    let at = Timestamp::now().plus(Duration::from_secs(60));
    let later = at.plus(Duration::from_secs(1));
    let a = b
        .create_job(NewJob::new("demo", json!({}), "alice").not_before(at))
        .await?;
    let c = b
        .create_job(NewJob::new("demo", json!({}), "alice").not_before(at))
        .await?;
    ensure!(b.unfinished_jobs("alice").await? == 2);
    ensure!(b.cancel(&a.id).await? == CancelOutcome::Cancelled);
    ensure!(b.job(&a.id).await?.status == JobStatus::Cancelled);
    b.delete(&c.id).await?;
    ensure!(b.due(later, 10).await?.is_empty(), "left on the schedule");
    ensure!(promote_due(b, b, later, 10).await? == 0);
    ensure!(b.unfinished_jobs("alice").await? == 0);
    ensure!(b.health().await?.jobs.scheduled == 0);
    Ok(())
}

/// A failed attempt retried after a backoff: `job_retrying` with a
/// `retry_at` puts the job on the schedule (its entry is acked by the
/// worker, or dropped when taken over), and at its time it is queued
/// again with the next attempt.
pub async fn retry_after_a_backoff_waits_on_the_schedule(f: &dyn BackendFactory) -> Result<()> {
    let t = f.create(small_config()).await?;
    let b = t.backend.as_ref();
    let (job, claim) = claimed_and_started(b, "w1").await?;
    let at = Timestamp::now().plus(Duration::from_secs(600));
    let retry = NewEvent::new(
        EventType::JobRetrying,
        json!({"retry_at": at.to_string(), "error": "flaky"}),
    )
    .fenced(1, 2);
    b.publish(&job.id, &[retry]).await?;
    let state = b.job(&job.id).await?;
    ensure!(
        state.status == JobStatus::Scheduled && state.attempt == 2 && state.run_at == Some(at),
        "{state:?}"
    );
    // The worker died before acking: whoever takes the entry over drops it.
    let settled = reclaim(b, "w2", Duration::ZERO, 5, 10).await?;
    ensure!(
        settled
            == [Reclaimed::Dropped {
                job_id: job.id.clone()
            }],
        "{settled:?}"
    );
    ensure!(b.queue_stats().await?.pending == 0, "entry kept");
    ensure!(b
        .claim("w2", &demo_queues(), 1, Duration::from_millis(50))
        .await?
        .is_empty());
    let later = at.plus(Duration::from_secs(1));
    ensure!(promote_due(b, b, later, 10).await? == 1);
    let again = claim_one(b, "w2").await?;
    ensure!(again.job_id == job.id && again.entry != claim.entry);
    ensure!(b.job(&job.id).await?.attempt == 2);
    Ok(())
}

fn worker(name: &str, queues: &[&str], seen: Timestamp, lease_ms: u64) -> crate::WorkerInfo {
    crate::WorkerInfo {
        name: name.to_owned(),
        host: "test".to_owned(),
        pid: 1,
        version: "0".to_owned(),
        queues: queues.iter().map(|q| (*q).to_owned()).collect(),
        concurrency: 4,
        running: Vec::new(),
        started_at: seen,
        last_seen: seen,
        lease_ms,
    }
}

/// The worker registry keeps each worker's last heartbeat: one seen within
/// its lease is live, one missing longer is gone, one gone for an hour is
/// forgotten; a new beat replaces the old.
pub async fn the_worker_registry_shows_live_and_gone_workers(f: &dyn BackendFactory) -> Result<()> {
    let t = f.create(small_config()).await?;
    let b = t.backend.as_ref();
    let now = Timestamp::now();
    let ago = |secs: u64| Timestamp::from_unix_millis(now.unix_millis() - secs as i64 * 1000);
    b.heartbeat(&worker("alive", &["demo"], now, 30_000))
        .await?;
    b.heartbeat(&worker("gone", &["mail"], ago(60), 30_000))
        .await?;
    b.heartbeat(&worker("ancient", &["mail"], ago(7200), 30_000))
        .await?;
    let workers = b.workers().await?;
    let names: Vec<&str> = workers.iter().map(|w| w.name.as_str()).collect();
    ensure!(names == ["alive", "gone"], "{names:?}");
    ensure!(workers[0].is_live(now) && !workers[1].is_live(now));
    let mut again = worker("alive", &["demo", "mail"], now, 30_000);
    again.running = vec![JobId::generate()];
    b.heartbeat(&again).await?;
    let workers = b.workers().await?;
    ensure!(workers.len() == 2 && workers[0] == again, "{workers:?}");
    Ok(())
}

/// A paused queue is passed by: claims and take-overs leave its entries
/// (other queues go on); resumed, its jobs are claimed again.
pub async fn a_paused_queue_is_passed_by_until_resumed(f: &dyn BackendFactory) -> Result<()> {
    let t = f.create(small_config()).await?;
    let b = t.backend.as_ref();
    let queues = vec!["a".to_owned(), "b".to_owned()];
    let in_a = b
        .create_job(NewJob::new("demo", json!({}), "alice").in_queue("a"))
        .await?;
    let running = b
        .create_job(NewJob::new("demo", json!({}), "alice").in_queue("a"))
        .await?;
    let first = b.claim("w1", &queues, 1, Duration::ZERO).await?;
    ensure!(first.len() == 1, "{first:?}");
    b.set_paused("a", true).await?;
    ensure!(b.paused_queues().await? == ["a"]);
    let in_b = b
        .create_job(NewJob::new("demo", json!({}), "alice").in_queue("b"))
        .await?;
    let claimed = b
        .claim("w2", &queues, 10, Duration::from_millis(50))
        .await?;
    ensure!(
        claimed.iter().map(|c| &c.job_id).collect::<Vec<_>>() == [&in_b.id],
        "claimed from a paused queue: {claimed:?}"
    );
    ensure!(
        b.take_over_idle("w2", &queues, Duration::ZERO, 10)
            .await?
            .iter()
            .all(|c| c.job_id == in_b.id),
        "took over from a paused queue"
    );
    b.set_paused("a", false).await?;
    ensure!(b.paused_queues().await?.is_empty());
    let after = b
        .claim("w3", &queues, 10, Duration::from_millis(50))
        .await?;
    let expected = if first[0].job_id == in_a.id {
        &running.id
    } else {
        &in_a.id
    };
    ensure!(
        after.iter().map(|c| &c.job_id).collect::<Vec<_>>() == [expected],
        "{after:?}"
    );
    Ok(())
}

/// The queue overview counts each queue's waiting (all priorities) and
/// running entries, knows its oldest waiting entry, and lists paused
/// queues even when empty.
pub async fn the_queue_overview_counts_each_queue(f: &dyn BackendFactory) -> Result<()> {
    let t = f.create(small_config()).await?;
    let b = t.backend.as_ref();
    let before = Timestamp::now();
    for p in [1, 5, 9] {
        b.create_job(
            NewJob::new("demo", json!({}), "alice")
                .in_queue("mail")
                .at_priority(p),
        )
        .await?;
    }
    b.create_job(NewJob::new("demo", json!({}), "alice").in_queue("pdf"))
        .await?;
    b.claim("w", &["mail".to_owned()], 1, Duration::ZERO)
        .await?;
    b.set_paused("idle", true).await?;
    let overview = b.queue_overview().await?;
    let names: Vec<&str> = overview.iter().map(|q| q.name.as_str()).collect();
    ensure!(names == ["idle", "mail", "pdf"], "{overview:?}");
    let (idle, mail, pdf) = (&overview[0], &overview[1], &overview[2]);
    ensure!(idle.paused && idle.waiting == 0 && idle.oldest_waiting.is_none());
    ensure!(
        mail.waiting == 2 && mail.running == 1 && !mail.paused,
        "{mail:?}"
    );
    ensure!(pdf.waiting == 1 && pdf.running == 0, "{pdf:?}");
    let oldest = mail.oldest_waiting.context("no oldest")?;
    ensure!(
        oldest.unix_millis() >= before.unix_millis() - 1 && oldest <= Timestamp::now(),
        "{oldest}"
    );
    Ok(())
}

/// An operator's retry of a failed job: a new attempt on the same job,
/// `job_retrying` then (promoted) `job_queued`, ids continuing; the job no
/// longer expires with the retention, counts as unfinished again, and is
/// claimed again. Only a failed job can be retried.
pub async fn a_failed_job_is_retried_by_hand(f: &dyn BackendFactory) -> Result<()> {
    let t = f
        .create(BackendConfig {
            retention: Duration::from_millis(300),
            ..small_config()
        })
        .await?;
    let b = t.backend.as_ref();
    let (job, claim) = claimed_and_started(b, "w1").await?;
    b.publish(
        &job.id,
        &[NewEvent::new(EventType::JobFailed, json!({"error": "boom"})).fenced(1, 2)],
    )
    .await?;
    b.ack(&claim.entry).await?;
    ensure!(b.unfinished_jobs("alice").await? == 0);
    let retried = crate::settle::retry_failed(b, &job.id, "root").await?;
    ensure!(
        retried.status == JobStatus::Scheduled
            && retried.attempt == 2
            && retried.expires_at.is_none(),
        "{retried:?}"
    );
    ensure!(b.unfinished_jobs("alice").await? == 1);
    let again = crate::settle::retry_failed(b, &job.id, "root").await;
    ensure!(
        matches!(again, Err(BackendError::Invalid(_))),
        "retried twice: {again:?}"
    );
    // Past the retention it would have expired: it is kept.
    tokio::time::sleep(Duration::from_millis(500)).await;
    ensure!(promote_due(b, b, Timestamp::now(), 10).await? == 1);
    let events = all_events(b, &job.id).await?;
    assert_consecutive(&events, 1)?;
    let kinds: Vec<&str> = events.iter().map(|e| e.kind.as_str()).collect();
    ensure!(
        kinds
            == [
                "job_queued",
                "job_started",
                "job_failed",
                "job_retrying",
                "job_queued"
            ],
        "{kinds:?}"
    );
    let claim = claim_one(b, "w2").await?;
    ensure!(claim.job_id == job.id);
    ensure!(b.job(&job.id).await?.status == JobStatus::Queued);
    Ok(())
}

/// An external job's retry after a backoff is its program's to start: it
/// may start before the promoter queues it, and leaves the schedule then.
pub async fn an_external_retry_may_start_before_its_time(f: &dyn BackendFactory) -> Result<()> {
    let t = f.create(small_config()).await?;
    let b = t.backend.as_ref();
    let job = b
        .create_job(NewJob::new("py.task", json!({}), "alice").external())
        .await?;
    b.publish(&job.id, &[NewEvent::new(EventType::JobStarted, json!({}))])
        .await?;
    let later = Timestamp::now().plus(Duration::from_secs(3600));
    b.publish(
        &job.id,
        &[NewEvent::new(
            EventType::JobRetrying,
            json!({"retry_at": later.to_string()}),
        )],
    )
    .await?;
    ensure!(b.job(&job.id).await?.status == JobStatus::Scheduled);
    ensure!(b.queue_stats().await?.scheduled == 1);
    b.publish(&job.id, &[NewEvent::new(EventType::JobStarted, json!({}))])
        .await?;
    let state = b.job(&job.id).await?;
    ensure!(
        state.status == JobStatus::Running && state.attempt == 2,
        "{state:?}"
    );
    ensure!(
        b.queue_stats().await?.scheduled == 0,
        "left on the schedule"
    );
    ensure!(b.due(later, 10).await?.is_empty());
    Ok(())
}

/// Promoters sharing one backend (a process's server and workers): claims
/// hand out only due jobs, a look ([`JobQueue::due`]) is not a claim, and
/// racing promoters promote each job exactly once, all of them in the end
/// (a share handed out and not promoted comes back after a moment).
pub async fn promoters_sharing_a_backend_promote_each_job_once(
    f: &dyn BackendFactory,
) -> Result<()> {
    let t = f.create(small_config()).await?;
    let b = t.backend.as_ref();
    let at = Timestamp::now().plus(Duration::from_secs(3600));
    let mut ids = Vec::new();
    for _ in 0..40 {
        let job = NewJob::new("demo", json!({}), "alice").not_before(at);
        ids.push(b.create_job(job).await?.id);
    }
    ids.sort();
    ensure!(
        b.claim_due(Timestamp::now(), 40).await?.is_empty(),
        "claimed early"
    );
    let mut tail = b.tail(TailFrom::Now).await?;
    let later = at.plus(Duration::from_secs(1));
    let (w, x) = tokio::join!(b.claim_due(later, 10), b.claim_due(later, 10));
    ensure!(
        [w?, x?].concat().iter().all(|id| ids.contains(id)),
        "a claim handed out a job that is not due"
    );
    // A look is not a claim: every due job is still there to see.
    ensure!(
        b.due(later, 100).await?.len() == 40,
        "due changed by claims"
    );
    let mut promoted = 0;
    for _ in 0..100 {
        let (w, x, y, z) = tokio::join!(
            promote_due(b, b, later, 8),
            promote_due(b, b, later, 8),
            promote_due(b, b, later, 8),
            promote_due(b, b, later, 8)
        );
        promoted += w? + x? + y? + z?;
        if b.due(later, 100).await?.is_empty() {
            break;
        }
        // A share handed out and not promoted comes back after a moment.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    ensure!(promoted == 40, "{promoted} promotions of 40 jobs");
    for id in &ids {
        let queued = all_events(b, id)
            .await?
            .iter()
            .filter(|e| e.kind == EventType::JobQueued)
            .count();
        ensure!(queued == 2, "job {id} has {queued} job_queued events");
    }
    // The live feed carries each promotion once (the Redis backend writes
    // a batch's promotions into shared live entries).
    let mut live: Vec<(JobId, u64)> = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while live.len() < 40 {
        ensure!(
            tokio::time::Instant::now() < deadline,
            "the live feed had {} of 40 promotions",
            live.len()
        );
        match tail.next().await? {
            LiveBatch::Events(events) => {
                live.extend(events.into_iter().map(|e| (e.job_id.clone(), e.id.0)))
            }
            other => bail!("unexpected {other:?}"),
        }
    }
    live.sort();
    let expected: Vec<(JobId, u64)> = ids.iter().map(|id| (id.clone(), 2)).collect();
    ensure!(live == expected, "live feed: {live:?}");
    ensure!(b.queue_stats().await?.scheduled == 0);
    let counts = b.health().await?.jobs;
    ensure!(counts.scheduled == 0 && counts.queued == 40, "{counts:?}");
    Ok(())
}
