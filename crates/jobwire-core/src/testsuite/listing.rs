//! Conformance cases of listing and the counters kept beside the jobs.

use super::*;

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
                ..Default::default()
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
            ..Default::default()
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

/// Filters by kind, queue and finish time, as the failed-jobs page uses
/// them: across owners, paged, and exact when most jobs do not match.
pub async fn listing_filters_by_kind_queue_and_finish_time(f: &dyn BackendFactory) -> Result<()> {
    let t = f.create(small_config()).await?;
    let b = t.backend.as_ref();
    let fail = |id: JobId| async move {
        b.publish(
            &id,
            &[
                NewEvent::new(EventType::JobStarted, json!({})),
                NewEvent::new(EventType::JobFailed, json!({"error": "x"})),
            ],
        )
        .await?;
        Ok::<_, anyhow::Error>(id)
    };
    // 3 failed demo jobs in queue "slow" (alice, bob), 2 failed in the
    // kind's queue, 20 completed ones between them, one queued.
    let mut slow = Vec::new();
    let mut plain = Vec::new();
    for i in 0..25 {
        let owner = if i % 2 == 0 { "alice" } else { "bob" };
        let job = NewJob::new("demo", json!({}), owner);
        let id = match i {
            0 | 10 | 20 => {
                slow.push(fail(b.create_job(job.in_queue("slow")).await?.id).await?);
                continue;
            }
            5 | 15 => b.create_job(job).await?.id,
            _ => {
                let id = b.create_job(job).await?.id;
                b.publish(
                    &id,
                    &[
                        NewEvent::new(EventType::JobStarted, json!({})),
                        NewEvent::new(EventType::JobCompleted, json!({})),
                    ],
                )
                .await?;
                continue;
            }
        };
        plain.push(fail(id).await?);
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    b.create_job(NewJob::new("other", json!({}), "alice"))
        .await?;
    let list = |query: ListQuery| async move {
        let mut ids = Vec::new();
        let mut cursor = None;
        loop {
            let page = b
                .list_jobs(&ListQuery {
                    limit: 1,
                    cursor,
                    ..query.clone()
                })
                .await?;
            ids.extend(page.jobs.into_iter().map(|j| j.id));
            match page.next_cursor {
                Some(c) => cursor = Some(c),
                None => break,
            }
            ensure!(ids.len() < 100, "pagination does not end");
        }
        ids.sort();
        Ok::<_, anyhow::Error>(ids)
    };
    let failed = |q: ListQuery| ListQuery {
        status: Some(JobStatus::Failed),
        ..q
    };
    let mut all: Vec<JobId> = slow.iter().chain(&plain).cloned().collect();
    all.sort();
    slow.sort();
    plain.sort();
    let got = list(failed(ListQuery::default())).await?;
    ensure!(got == all, "failed jobs: {got:?}, expected {all:?}");
    let got = list(failed(ListQuery {
        queue: Some("slow".into()),
        ..Default::default()
    }))
    .await?;
    ensure!(got == slow, "queue slow: {got:?}, expected {slow:?}");
    let got = list(failed(ListQuery {
        queue: Some("demo".into()),
        ..Default::default()
    }))
    .await?;
    ensure!(got == plain, "queue demo (the kind's): {got:?}");
    let got = list(failed(ListQuery {
        kind: Some("demo".into()),
        owner: Some("alice".into()),
        ..Default::default()
    }))
    .await?;
    let alices: Vec<JobId> = {
        let mut v = Vec::new();
        for id in &all {
            if b.job(id).await?.owner == "alice" {
                v.push(id.clone());
            }
        }
        v
    };
    ensure!(got == alices, "alice's demo jobs: {got:?}");
    ensure!(
        list(ListQuery {
            kind: Some("nothing".into()),
            ..Default::default()
        })
        .await?
        .is_empty(),
        "a kind nobody has matched"
    );
    // Finish time: every failed job finished after the first one did, none
    // in the future, and an unfinished job never matches.
    let mut since = Timestamp::now();
    for id in &all {
        let at = b.job(id).await?.finished_at;
        since = since.min(at.context("a failed job without finished_at")?);
    }
    ensure!(
        list(failed(ListQuery {
            finished_after: Some(since),
            ..Default::default()
        }))
        .await?
            == all
    );
    let later = Timestamp::from_unix_millis(Timestamp::now().unix_millis() + 60_000);
    ensure!(list(ListQuery {
        finished_after: Some(later),
        ..Default::default()
    })
    .await?
    .is_empty());
    let other = list(ListQuery {
        kind: Some("other".into()),
        finished_after: Some(since),
        ..Default::default()
    })
    .await?;
    ensure!(other.is_empty(), "an unfinished job matched a finish time");
    Ok(())
}

/// `health().jobs` follows every status change: creation, start, each way
/// of finishing, a retry, and deletion of an unfinished job.
pub async fn jobs_are_counted_by_status(f: &dyn BackendFactory) -> Result<()> {
    let t = f.create(small_config()).await?;
    let b = t.backend.as_ref();
    let counts = |q, r, c, fl, x| JobCounts {
        scheduled: 0,
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
        ids.push(demo_job(b).await?.id);
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
        ids.push(demo_job(b).await?.id);
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

/// Throughput counts each start (also one in the same batch as the end)
/// and each finish (a cancel before the start included), in this minute.
pub async fn throughput_counts_starts_and_finishes(f: &dyn BackendFactory) -> Result<()> {
    let t = f.create(small_config()).await?;
    let b = t.backend.as_ref();
    let mut ids = Vec::new();
    for _ in 0..4 {
        ids.push(demo_job(b).await?.id);
    }
    let start = || NewEvent::new(EventType::JobStarted, json!({}));
    let done = || NewEvent::new(EventType::JobCompleted, json!({}));
    b.publish(&ids[0], &[start()]).await?;
    b.publish(&ids[0], &[progress(1)]).await?;
    b.publish(&ids[0], &[done()]).await?;
    b.publish(&ids[1], &[start(), done()]).await?;
    b.publish(&ids[2], &[start()]).await?;
    b.cancel(&ids[3]).await?;
    let now = crate::Timestamp::now();
    let minutes = b.throughput(now).await?;
    let started: u64 = minutes.iter().map(|m| m.started).sum();
    let finished: u64 = minutes.iter().map(|m| m.finished).sum();
    ensure!(started == 3 && finished == 3, "{minutes:?}");
    ensure!(minutes.len() <= 2, "{minutes:?}");
    ensure!(
        minutes
            .iter()
            .all(|m| m.minute <= now && m.minute.unix_millis() % 60_000 == 0),
        "{minutes:?}"
    );
    Ok(())
}

/// A filter that matches few of many jobs is scanned a budget at a time:
/// short (even empty) pages with a cursor, and following the cursor finds
/// every match once, in order; unfiltered pages stay full.
pub async fn a_sparse_filter_is_scanned_in_steps(f: &dyn BackendFactory) -> Result<()> {
    let t = f
        .create(BackendConfig {
            list_scan_budget: 20,
            ..small_config()
        })
        .await?;
    let b = t.backend.as_ref();
    let mut rare = Vec::new();
    for i in 0..130 {
        // Rare jobs where a page of the memory backend stops (every 20th).
        let kind = if i % 20 == 9 { "rare" } else { "demo" };
        let job = b.create_job(NewJob::new(kind, json!({}), "alice")).await?;
        if kind == "rare" {
            rare.push(job.id);
        }
    }
    // Newest first is by id (ids made in one millisecond are not in
    // creation order).
    rare.sort_by(|a, b| b.cmp(a));
    let mut found = Vec::new();
    let mut cursor = None;
    let mut pages = 0;
    loop {
        pages += 1;
        ensure!(pages < 100, "the listing never ended");
        let page = b
            .list_jobs(&ListQuery {
                owner: Some("alice".into()),
                kind: Some("rare".into()),
                limit: 10,
                cursor,
                ..ListQuery::default()
            })
            .await?;
        ensure!(page.jobs.len() <= 10);
        found.extend(page.jobs.into_iter().map(|j| j.id));
        match page.next_cursor {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    ensure!(found == rare, "found {found:?}, expected {rare:?}");
    ensure!(
        pages >= 3,
        "130 jobs read in {pages} pages under a budget of 20"
    );
    let full = b
        .list_jobs(&ListQuery {
            owner: Some("alice".into()),
            limit: 15,
            ..ListQuery::default()
        })
        .await?;
    ensure!(full.jobs.len() == 15 && full.next_cursor.is_some());
    Ok(())
}
