//! Conformance cases of the job queue: claims, acks, leases, releases,
//! take-overs of lapsed leases and what they settle into.

use super::*;

/// Created jobs are claimed, leased until acked, then gone. (Order: the
/// Redis backend keeps one queue per partition, each in creation order,
/// and claims round-robin across them: docs/design.md, "The queue".)
pub async fn queue_claim_and_ack(f: &dyn BackendFactory) -> Result<()> {
    let t = f.create(small_config()).await?;
    let b = t.backend.as_ref();
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(demo_job(b).await?.id);
    }
    b.create_job(NewJob::new("celery.task", json!({}), "alice").external())
        .await?;
    let stats = b.queue_stats().await?;
    ensure!(stats.waiting == 3 && stats.pending == 0, "{stats:?}");
    let claims = b
        .claim("w1", &demo_queues(), 10, Duration::from_millis(100))
        .await?;
    let mut claimed: Vec<JobId> = claims.iter().map(|c| c.job_id.clone()).collect();
    claimed.sort();
    ids.sort();
    ensure!(claimed == ids, "claims {claims:?}");
    ensure!(claims.iter().all(|c| c.kind == "demo"));
    let stats = b.queue_stats().await?;
    ensure!(stats.waiting == 0 && stats.pending == 3, "{stats:?}");
    ensure!(
        b.claim("w2", &demo_queues(), 10, Duration::from_millis(50))
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
        async move {
            b.claim("w1", &demo_queues(), 1, Duration::from_secs(10))
                .await
        }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let job = demo_job(b.as_ref()).await?;
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
    let (job, claim) = claimed_and_started(b, "w1").await?;
    // A second, so the fresh lease is still fresh when checked on a loaded host.
    let idle = Duration::from_secs(1);
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
    demo_job(b).await?;
    let claim = claim_one(b, "w1").await?;
    // Renewed four times over longer than the idle window; the window is
    // wide enough that the last renewal is still fresh on a loaded host.
    let idle = Duration::from_secs(1);
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(350)).await;
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
    let job = demo_job(b).await?;
    let claim = claim_one(b, "w1").await?;
    ensure!(
        !b.release("w2", &claim.entry).await?,
        "another consumer released w1's entry"
    );
    ensure!(b.release("w1", &claim.entry).await?, "release refused");
    ensure!(
        !b.release("w1", &claim.entry).await?,
        "an entry was released twice"
    );
    let again = b
        .claim("w2", &demo_queues(), 5, Duration::from_millis(500))
        .await?;
    ensure!(again.len() == 1, "{again:?}");
    ensure!(
        again[0].job_id == job.id && again[0].kind == "demo",
        "{again:?}"
    );
    ensure!(
        b.queue_stats().await?
            == QueueStats {
                waiting: 0,
                pending: 1,
                scheduled: 0,
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
    let job = demo_job(b).await?;
    b.claim("w1", &demo_queues(), 1, Duration::from_millis(100))
        .await?;
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

/// A worker can list the entries leased to it (to find orphans).
pub async fn pending_of_lists_a_consumers_leased_entries(f: &dyn BackendFactory) -> Result<()> {
    let t = f.create(small_config()).await?;
    let b = t.backend.as_ref();
    for _ in 0..3 {
        demo_job(b).await?;
    }
    let mine = b
        .claim("c1", &demo_queues(), 2, Duration::from_secs(1))
        .await?;
    let theirs = b
        .claim("c2", &demo_queues(), 1, Duration::from_secs(1))
        .await?;
    ensure!(mine.len() == 2 && theirs.len() == 1);
    let leased = b.pending_of("c1", 10).await?;
    ensure!(leased == mine, "{leased:?} vs {mine:?}");
    b.ack(&mine[0].entry).await?;
    let leased = b.pending_of("c1", 10).await?;
    ensure!(leased == mine[1..], "after an ack: {leased:?}");
    ensure!(b.pending_of("nobody", 10).await?.is_empty());
    Ok(())
}

/// A worker claims only from the queues it serves: by default a job waits
/// in its kind's queue, or in the one it was created for.
pub async fn claims_come_only_from_served_queues(f: &dyn BackendFactory) -> Result<()> {
    let t = f.create(small_config()).await?;
    let b = t.backend.as_ref();
    let a = b.create_job(NewJob::new("a", json!({}), "alice")).await?;
    let other = b.create_job(NewJob::new("b", json!({}), "alice")).await?;
    let special = b
        .create_job(NewJob::new("a", json!({}), "alice").in_queue("special"))
        .await?;
    ensure!(special.queue() == "special" && a.queue() == "a");
    let wait = Duration::from_millis(100);
    let served = |names: &[&str]| names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>();
    let ids = |claims: Vec<Claim>| claims.into_iter().map(|c| c.job_id).collect::<Vec<_>>();
    let only = |job: &JobState| vec![job.id.clone()];
    ensure!(
        b.claim("w", &served(&["nothing"]), 10, wait)
            .await?
            .is_empty(),
        "a claim from a queue nobody used returned entries"
    );
    ensure!(ids(b.claim("w", &served(&["a"]), 10, wait).await?) == only(&a));
    ensure!(ids(b.claim("w", &served(&["special"]), 10, wait).await?) == only(&special));
    ensure!(ids(b.claim("w", &served(&["b", "a"]), 10, wait).await?) == only(&other));
    Ok(())
}

/// A worker's first queue goes first: with entries in both, a claim of one
/// takes the first queue's.
pub async fn the_first_served_queue_goes_first(f: &dyn BackendFactory) -> Result<()> {
    let t = f.create(small_config()).await?;
    let b = t.backend.as_ref();
    let mut low = Vec::new();
    for _ in 0..3 {
        low.push(
            b.create_job(NewJob::new("demo", json!({}), "alice").in_queue("low"))
                .await?
                .id,
        );
    }
    let high = b
        .create_job(NewJob::new("demo", json!({}), "alice").in_queue("high"))
        .await?;
    let queues = vec!["high".to_owned(), "low".to_owned()];
    let first = b.claim("w", &queues, 1, Duration::from_millis(100)).await?;
    ensure!(
        first.iter().map(|c| &c.job_id).collect::<Vec<_>>() == [&high.id],
        "claimed {first:?}"
    );
    let rest = b
        .claim("w", &queues, 10, Duration::from_millis(100))
        .await?;
    let mut rest: Vec<JobId> = rest.into_iter().map(|c| c.job_id).collect();
    rest.sort();
    low.sort();
    ensure!(rest == low, "then {rest:?}");
    Ok(())
}

/// Lapsed leases are taken over only by workers that serve their queue
/// (the taker may run the retried job).
pub async fn only_a_worker_of_the_queue_takes_over(f: &dyn BackendFactory) -> Result<()> {
    let t = f.create(small_config()).await?;
    let b = t.backend.as_ref();
    b.create_job(NewJob::new("a", json!({}), "alice")).await?;
    let queues_a = vec!["a".to_owned()];
    let claimed = b
        .claim("w1", &queues_a, 1, Duration::from_millis(100))
        .await?;
    ensure!(claimed.len() == 1);
    let other = vec!["b".to_owned()];
    ensure!(
        b.take_over_idle("w2", &other, Duration::ZERO, 10)
            .await?
            .is_empty(),
        "a worker of queue b took over an entry of queue a"
    );
    let taken = b
        .take_over_idle("w3", &queues_a, Duration::ZERO, 10)
        .await?;
    ensure!(
        taken.len() == 1 && taken[0].job_id == claimed[0].job_id,
        "{taken:?}"
    );
    Ok(())
}
