//! Recovery after a live-feed gap: every client still gets every event
//! exactly once, in order, and the gateway reads each watched job's log
//! about once, however many connections watch it (no thundering herd on the
//! store after a blip).
//!
//! The gap is real: the memory backend's live ring (65,536 events) is
//! overrun by one large publish of an unwatched job. The tests run on a
//! current-thread runtime and the memory backend never yields, so the server's
//! tailer cannot read anything between the publishes that make the gap.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, ensure, Result};
use jobwire_core::{Backend, BackendConfig, EventType, JobId, MemoryBackend, NewEvent};
use serde_json::json;

use crate::helpers::*;

/// More events than the memory backend's live ring holds.
const OVERRUN: u64 = 70_000;

/// A memory backend whose job logs keep every event of these tests (so a
/// recovery never meets a trimmed log), and its store behind a read counter.
fn counted_memory() -> (Arc<dyn Backend>, Arc<CountingStore>) {
    let backend: Arc<dyn Backend> = Arc::new(MemoryBackend::new(BackendConfig {
        stream_maxlen: 200_000,
        ..BackendConfig::default()
    }));
    let counting = CountingStore::new(backend.clone());
    (backend, counting)
}

/// `n` progress events for each of `jobs`, then one batch of [`OVERRUN`]
/// events for `filler`, which nobody watches: the live feed loses the
/// watched jobs' events and reports a gap. Nothing here awaits anything that
/// is not ready, so the tailer reads none of it in between.
async fn publish_across_a_gap(
    backend: &Arc<dyn Backend>,
    jobs: &[JobId],
    filler: &JobId,
    n: u64,
) -> Result<()> {
    for i in 0..n {
        for job in jobs {
            progress(backend, job, i).await?;
        }
    }
    let batch = (0..OVERRUN)
        .map(|i| NewEvent::new(EventType::Progress, json!({"current": i, "total": OVERRUN})))
        .collect::<Vec<_>>();
    backend.publish(filler, &batch).await?;
    Ok(())
}

async fn metric(app: &TestApp, name: &str) -> Result<u64> {
    let text = reqwest::get(app.url("/metrics")).await?.text().await?;
    let Some(value) = text
        .lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
    else {
        bail!("no {name} in {text}");
    };
    Ok(value.parse()?)
}

/// Clients of `alice` on `/ws/jobs`, each subscribed to every job and past
/// its `current_state` (id 2: the jobs are running).
async fn watchers(app: &TestApp, clients: usize, jobs: &[JobId]) -> Result<Vec<Ws>> {
    let mut all = Vec::new();
    for _ in 0..clients {
        let (mut ws, _) = connect(
            &app.ws_url("/ws/jobs"),
            Some(&user_token("alice")),
            Via::Bearer,
        )
        .await?;
        for job in jobs {
            send(&mut ws, json!({"type": "subscribe", "job_id": job})).await?;
        }
        for _ in jobs {
            let first = next_json(&mut ws).await?;
            ensure!(
                first["type"] == "current_state" && first["id"] == 2,
                "{first}"
            );
        }
        all.push(ws);
    }
    Ok(all)
}

/// 50 connections watch 3 jobs; the live feed loses 40 events of each job.
/// Every connection gets all of them, once, in order, and the recovery costs
/// a handful of log reads, not one per connection and job (150).
#[tokio::test]
async fn a_live_feed_gap_is_recovered_with_one_log_read_per_job() -> Result<()> {
    let (backend, counting) = counted_memory();
    let app = spawn_app_with_store(backend.clone(), counting.clone()).await?;
    let mut jobs = Vec::new();
    for _ in 0..3 {
        jobs.push(running_job(&backend, "alice").await?.id);
    }
    let filler = running_job(&backend, "bob").await?.id;
    let mut clients = watchers(&app, 50, &jobs).await?;
    // Some live events first, so the Hub's positions come from both the
    // subscribers and the dispatches.
    for i in 0..5 {
        for job in &jobs {
            progress(&backend, job, i).await?;
        }
    }
    for ws in &mut clients {
        collect_from(ws, &jobs, 2, 7).await?;
    }
    let reads_before = counting.log_reads();

    publish_across_a_gap(&backend, &jobs, &filler, 20).await?;
    // Published after the gap: on the live feed and in the logs, so the
    // recovery and the feed both deliver them.
    for i in 0..20 {
        for job in &jobs {
            progress(&backend, job, i).await?;
        }
    }

    for ws in &mut clients {
        collect_from(ws, &jobs, 7, 47).await?;
    }
    let reads = counting.log_reads() - reads_before;
    ensure!(
        reads <= 2 * jobs.len() as u64,
        "{reads} log reads for {} jobs and {} connections",
        jobs.len(),
        clients.len()
    );
    ensure!(metric(&app, "jobwire_live_feed_recoveries_total").await? == 1);
    ensure!(metric(&app, "jobwire_recovery_log_reads_total").await? == reads);
    ensure!(metric(&app, "jobwire_recovery_rechecks_total").await? == 0);
    Ok(())
}

/// The store fails the recovery's log reads: the gateway is not ready, reads
/// no further live events, retries with backoff, and once the store answers
/// again every client gets every event exactly once, in order.
#[tokio::test]
async fn a_recovery_that_cannot_read_the_logs_retries_and_loses_nothing() -> Result<()> {
    let (backend, counting) = counted_memory();
    let app = spawn_app_with_store(backend.clone(), counting.clone()).await?;
    let mut jobs = Vec::new();
    for _ in 0..2 {
        jobs.push(running_job(&backend, "alice").await?.id);
    }
    let filler = running_job(&backend, "bob").await?.id;
    let mut clients = watchers(&app, 5, &jobs).await?;

    counting.fail_log_reads(true);
    publish_across_a_gap(&backend, &jobs, &filler, 10).await?;
    // Wait for a few failed attempts, publishing on meanwhile.
    let mut published = 10;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while metric(&app, "jobwire_live_feed_errors_total").await? < 3 {
        ensure!(
            tokio::time::Instant::now() < deadline,
            "the recovery never failed"
        );
        for job in &jobs {
            progress(&backend, job, published).await?;
        }
        published += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let ready = reqwest::get(app.url("/readyz")).await?.status();
    ensure!(!ready.is_success(), "ready while recovery fails: {ready}");
    ensure!(metric(&app, "jobwire_live_feed_recoveries_total").await? == 0);
    counting.fail_log_reads(false);

    for ws in &mut clients {
        collect_from(ws, &jobs, 2, 2 + published).await?;
    }
    for job in &jobs {
        progress(&backend, job, published).await?;
    }
    for ws in &mut clients {
        collect_from(ws, &jobs, 2 + published, 3 + published).await?;
    }
    // Events published during the outage overran the feed again: a second
    // gap, a second recovery.
    ensure!(metric(&app, "jobwire_live_feed_recoveries_total").await? >= 1);
    app.wait_ready().await?;
    Ok(())
}
