//! Conformance cases of a job's state and log: ids, snapshots, reads after a
//! position, resync reasons, fencing, refusals, cancel, expiry, concurrency,
//! deletion.

use super::*;

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
                ..NewJob::new(job.kind.clone(), job.params.clone(), job.owner.clone())
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
    let job = demo_job(b).await?;
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
    let queued = demo_job(b).await?;
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
                LiveBatch::Deleted(jobs) => bail!("unexpected deletions {jobs:?}"),
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
