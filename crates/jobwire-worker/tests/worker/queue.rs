//! Jobs through the queue: several workers, failures of every kind, and
//! Redis going away mid-job.

use std::time::Duration;

use anyhow::{ensure, Result};
use jobwire_core::{EventType, JobStatus, NewJob};
use jobwire_testkit::{Persistence, RedisServer};
use jobwire_worker::{handler_fn, JobError, JobOutcome};
use serde_json::json;

use jobwire_testkit::jobs::{create_demo, ensure_queue_empty};

use crate::support::{self, builtin, config, count, log, wait_finished, Running};

/// Three workers share one queue: each of 200 jobs runs exactly once, and
/// every worker gets some.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_share_the_queue_and_run_each_job_once() -> Result<()> {
    let server = RedisServer::start()?;
    let client = support::backend(&server).await?;
    let mut workers = Vec::new();
    for i in 0..3 {
        let backend = support::backend(&server).await?;
        workers.push(Running::start(
            builtin(&backend, config(&format!("w{i}"))).build()?,
        ));
    }
    let mut jobs = Vec::new();
    for _ in 0..200 {
        let job = create_demo(client.as_ref(), json!({"steps": 2, "delay_ms": 5})).await?;
        jobs.push(job.id);
    }
    for id in &jobs {
        let state = wait_finished(client.as_ref(), id).await?;
        ensure!(state.status == JobStatus::Completed, "{state:?}");
        ensure!(state.attempt == 1, "{state:?}");
        let events = log(client.as_ref(), id).await?;
        let kinds: Vec<&str> = events.iter().map(|e| e.kind.as_str()).collect();
        ensure!(
            kinds
                == [
                    "job_queued",
                    "job_started",
                    "progress",
                    "progress",
                    "job_completed"
                ],
            "{id}: {kinds:?}"
        );
    }
    let mut finished = Vec::new();
    for w in workers {
        let worker = w.shut_down().await?;
        let stats = worker.stats().snapshot();
        ensure!(
            stats.lost == 0 && stats.failed == 0 && stats.reclaimed == 0,
            "{stats:?}"
        );
        finished.push(stats.completed);
    }
    ensure!(finished.iter().sum::<u64>() == 200, "{finished:?}");
    ensure!(
        finished.iter().all(|&n| n >= 10),
        "the load did not spread: {finished:?}"
    );
    ensure_queue_empty(client.as_ref()).await?;
    Ok(())
}

/// A handler's error, a panic, an unknown kind and `fail_at` each fail their
/// job with a message; the worker goes on with the next job.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_fail_the_job_and_the_worker_survives() -> Result<()> {
    let server = RedisServer::start()?;
    let backend = support::backend(&server).await?;
    let worker = builtin(&backend, config("w1"))
        .handler(
            "broken",
            handler_fn(|job| async move {
                job.reporter().progress(1, 2, "halfway").await?;
                std::fs::read("/nonexistent/input.csv")?;
                Ok(JobOutcome::done())
            }),
        )
        .handler(
            "panics",
            handler_fn(|_job| async move {
                let empty: Vec<u32> = Vec::new();
                let first = empty.first().copied();
                #[allow(clippy::unwrap_used)]
                Ok::<_, JobError>(JobOutcome::with_result(json!(first.unwrap())))
            }),
        )
        .build()?;
    let running = Running::start(worker);
    let cases = [
        ("broken", json!({}), "No such file"),
        ("panics", json!({}), "panicked"),
        (
            "demo",
            json!({"steps": 5, "delay_ms": 0, "fail_at": 3}),
            "step 3 of 5",
        ),
    ];
    for (kind, params, expected) in cases {
        let job = backend
            .create_job(NewJob::new(kind, params, "alice"))
            .await?;
        let state = wait_finished(backend.as_ref(), &job.id).await?;
        ensure!(state.status == JobStatus::Failed, "{kind}: {state:?}");
        let error = state.error.unwrap_or_default();
        ensure!(error.contains(expected), "{kind}: {error:?}");
        let events = log(backend.as_ref(), &job.id).await?;
        ensure!(count(&events, EventType::JobFailed) == 1, "{events:?}");
    }
    // A kind nobody registered, put in a queue this worker serves: it
    // takes the job and fails it (its own queue, `unknown`, nobody serves:
    // see `workers_with_disjoint_kinds_run_only_their_own`).
    let job = backend
        .create_job(NewJob::new("unknown", json!({}), "alice").in_queue("demo"))
        .await?;
    let state = wait_finished(backend.as_ref(), &job.id).await?;
    ensure!(state.status == JobStatus::Failed, "{state:?}");
    ensure!(
        state
            .error
            .as_deref()
            .is_some_and(|e| e.contains("no handler for kind \"unknown\"")),
        "{state:?}"
    );
    let job = create_demo(backend.as_ref(), json!({"steps": 3, "delay_ms": 0})).await?;
    let state = wait_finished(backend.as_ref(), &job.id).await?;
    ensure!(state.status == JobStatus::Completed, "{state:?}");
    ensure!(state.result == Some(json!({"steps": 3})), "{state:?}");
    let stats = running.shut_down().await?.stats().snapshot();
    ensure!(stats.failed == 4 && stats.completed == 1, "{stats:?}");
    ensure_queue_empty(backend.as_ref()).await?;
    Ok(())
}

/// Redis is killed mid-job and comes back 1.5 s later (AOF, fsync always):
/// the job finishes, and its log holds every step exactly once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_restart_mid_job_loses_and_repeats_nothing() -> Result<()> {
    let mut server = RedisServer::start_private(Persistence::Aof)?;
    let backend = support::backend(&server).await?;
    let running = Running::start(builtin(&backend, config("w1")).build()?);
    let steps = 150u64;
    let job = create_demo(backend.as_ref(), json!({"steps": steps, "delay_ms": 20})).await?;
    support::wait_for(backend.as_ref(), &job.id, Duration::from_secs(10), |s| {
        s.progress > 10.0
    })
    .await?;
    server.kill()?;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    server.restart()?;
    let state = wait_finished(backend.as_ref(), &job.id).await?;
    ensure!(state.status == JobStatus::Completed, "{state:?}");
    ensure!(state.attempt == 1, "the outage caused a retry: {state:?}");
    let events = log(backend.as_ref(), &job.id).await?;
    let currents: Vec<u64> = events
        .iter()
        .filter(|e| e.kind == EventType::Progress)
        .filter_map(|e| e.data.get("current").and_then(|v| v.as_u64()))
        .collect();
    ensure!(
        currents == (1..=steps).collect::<Vec<_>>(),
        "steps: {currents:?}"
    );
    ensure!(count(&events, EventType::JobStarted) == 1, "{events:?}");
    ensure!(count(&events, EventType::JobCompleted) == 1, "{events:?}");
    let stats = running.shut_down().await?.stats().snapshot();
    ensure!(stats.completed == 1 && stats.lost == 0, "{stats:?}");
    Ok(())
}

/// One busy job's reports are batched: a thousand reports in a tight loop
/// take far fewer publishes (script calls, counted by Redis) than events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_job_publishes_in_batches() -> Result<()> {
    let server = RedisServer::start()?;
    let backend = support::backend(&server).await?;
    let worker = builtin(&backend, config("w1"))
        .handler(
            "busy",
            handler_fn(|job| async move {
                for i in 1..=1000 {
                    job.reporter().progress(i, 1000, "").await?;
                }
                Ok(JobOutcome::done())
            }),
        )
        .build()?;
    let running = Running::start(worker);
    let before = script_calls(&server).await?;
    let job = backend
        .create_job(NewJob::new("busy", json!({}), "alice"))
        .await?;
    let state = wait_finished(backend.as_ref(), &job.id).await?;
    let calls = script_calls(&server).await? - before;
    ensure!(state.status == JobStatus::Completed, "{state:?}");
    let events = log(backend.as_ref(), &job.id).await?;
    ensure!(
        count(&events, EventType::Progress) == 1000,
        "{}",
        events.len()
    );
    ensure!(
        calls < 300,
        "{calls} script calls for {} events",
        events.len()
    );
    running.shut_down().await?;
    Ok(())
}

/// Lua script calls Redis has served so far.
async fn script_calls(server: &RedisServer) -> Result<u64> {
    let client = redis::Client::open(server.url())?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut conn)
        .await?;
    let calls = info
        .lines()
        .filter(|l| l.starts_with("cmdstat_evalsha:") || l.starts_with("cmdstat_eval:"))
        .filter_map(|l| {
            l.split("calls=")
                .nth(1)?
                .split(',')
                .next()?
                .parse::<u64>()
                .ok()
        })
        .sum();
    Ok(calls)
}

/// Two workers with disjoint kinds share one Redis: each runs only its own
/// jobs (the other's wait in queues it does not serve), and a job of a kind
/// neither runs stays queued instead of being failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_with_disjoint_kinds_run_only_their_own() -> Result<()> {
    let server = RedisServer::start()?;
    let client = support::backend(&server).await?;
    let server = &server;
    let worker = |name: &'static str, kind: &'static str| async move {
        let backend = support::backend(server).await?;
        let worker = jobwire_worker::Worker::builder(backend)
            .config(config(name))
            .handler(
                kind,
                handler_fn(move |_job| async move {
                    Ok(JobOutcome::with_result(json!({ "ran_by": name })))
                }),
            )
            .build()?;
        ensure!(
            worker.queues() == [kind.to_owned()],
            "{:?}",
            worker.queues()
        );
        anyhow::Ok(Running::start(worker))
    };
    let alpha = worker("alpha-worker", "alpha").await?;
    let beta = worker("beta-worker", "beta").await?;
    let mut jobs = Vec::new();
    for i in 0..20 {
        let kind = if i % 2 == 0 { "alpha" } else { "beta" };
        let job = client
            .create_job(NewJob::new(kind, json!({}), "alice"))
            .await?;
        jobs.push((kind, job.id));
    }
    let orphan = client
        .create_job(NewJob::new("gamma", json!({}), "alice"))
        .await?;
    for (kind, id) in &jobs {
        let state = wait_finished(client.as_ref(), id).await?;
        ensure!(state.status == JobStatus::Completed, "{kind}: {state:?}");
        let ran_by = format!("{kind}-worker");
        ensure!(
            state.result == Some(json!({ "ran_by": ran_by })),
            "{kind}: {state:?}"
        );
        ensure!(state.attempt == 1, "{state:?}");
    }
    let orphan = client.job(&orphan.id).await?;
    ensure!(
        orphan.status == JobStatus::Queued,
        "gamma was touched: {orphan:?}"
    );
    for running in [alpha, beta] {
        let stats = running.shut_down().await?.stats().snapshot();
        ensure!(stats.failed == 0, "{stats:?}");
    }
    Ok(())
}

/// Timeouts: a job's own timeout stops a handler that waits for it (it sees
/// the stop as it sees a cancel); a kind's timeout stops one that never
/// looks, by aborting it after the grace. Both jobs fail, saying so, and
/// the worker goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_attempt_past_its_timeout_is_stopped_and_failed() -> Result<()> {
    let server = RedisServer::start()?;
    let backend = support::backend(&server).await?;
    let worker = jobwire_worker::Worker::builder(std::sync::Arc::clone(&backend))
        .config(config("w1"))
        .handler(
            "waits",
            handler_fn(|job| async move {
                job.reporter().stopped().await;
                job.reporter().check()?;
                Ok(JobOutcome::done())
            }),
        )
        .handler(
            "hangs",
            handler_fn(|_job| async move {
                tokio::time::sleep(std::time::Duration::from_secs(3600)).await;
                Ok(JobOutcome::done())
            }),
        )
        .handler(
            "quick",
            handler_fn(|_job| async move { Ok(JobOutcome::done()) }),
        )
        .timeout("hangs", Duration::from_millis(200))
        .build()?;
    let running = Running::start(worker);
    let mut own = NewJob::new("waits", json!({}), "alice");
    own.timeout = Some(Duration::from_millis(300));
    let own = backend.create_job(own).await?;
    let hangs = backend
        .create_job(NewJob::new("hangs", json!({}), "alice"))
        .await?;
    for (job, limit) in [(&own, "300ms"), (&hangs, "200ms")] {
        let state = wait_finished(backend.as_ref(), &job.id).await?;
        ensure!(state.status == JobStatus::Failed, "{state:?}");
        let error = state.error.unwrap_or_default();
        ensure!(
            error.contains(&format!("timed out after {limit}")),
            "{error}"
        );
        ensure!(state.attempt == 1, "retried: {:?}", state.attempt);
    }
    let after = backend
        .create_job(NewJob::new("quick", json!({}), "alice"))
        .await?;
    let state = wait_finished(backend.as_ref(), &after.id).await?;
    ensure!(state.status == JobStatus::Completed, "{state:?}");
    running.shut_down().await?;
    Ok(())
}
