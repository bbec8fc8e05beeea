//! `jobwire worker` as a process: killed with SIGKILL mid-job (another
//! worker retries the job), and stopped with SIGTERM (it hands its job back
//! and exits 0).

use std::sync::Arc;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use jobwire_core::{Backend, EventType, JobStatus, QueueStats, Timestamp};
use jobwire_testkit::RedisServer;
use serde_json::json;

use jobwire_testkit::jobs::{create_demo, ensure_queue_empty, log, wait_for, wait_progressing};

use crate::{redis_backend, Jobwire};

fn start_worker(redis: &RedisServer, name: &str, extra: &[(&str, &str)]) -> Result<Jobwire> {
    let mut env = vec![
        ("REDIS_URL", redis.url()),
        ("JOBWIRE_WORKER_NAME", name.to_owned()),
        ("JOBWIRE_VISIBILITY_TIMEOUT", "2s".to_owned()),
    ];
    env.extend(extra.iter().map(|(k, v)| (*k, (*v).to_owned())));
    Jobwire::start(&["worker"], &env)
}

/// `kill -9` a worker mid-job: after the visibility timeout another worker
/// takes the job over with `job_retrying`, and finishes it; ids stay
/// consecutive and nothing of the dead attempt follows the retry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_worker_s_job_is_retried_by_another() -> Result<()> {
    let redis = RedisServer::start()?;
    let backend: Arc<dyn Backend> = redis_backend(&redis.url()).await?;
    let mut first = start_worker(&redis, "first", &[])?;
    let job = create_demo(backend.as_ref(), json!({"steps": 40, "delay_ms": 50})).await?;
    wait_for(backend.as_ref(), &job.id, Duration::from_secs(20), |s| {
        s.progress >= 10.0
    })
    .await?;
    first.signal("KILL")?;
    first.wait_exit(Duration::from_secs(5))?;
    let progress_at_death = backend.job(&job.id).await?.progress;

    let _second = start_worker(&redis, "second", &[])?;
    let state = wait_for(backend.as_ref(), &job.id, Duration::from_secs(30), |s| {
        s.status.is_terminal()
    })
    .await?;
    ensure!(
        state.status == JobStatus::Completed && state.attempt == 2,
        "{state:?}"
    );

    let events = log(backend.as_ref(), &job.id).await?;
    let retry = events
        .iter()
        .position(|e| e.kind == EventType::JobRetrying)
        .context("no job_retrying")?;
    let started: Vec<String> = events
        .iter()
        .filter(|e| e.kind == EventType::JobStarted)
        .map(|e| e.data["worker"].as_str().unwrap_or_default().to_owned())
        .collect();
    ensure!(started == ["first", "second"], "{started:?}");
    ensure!(
        events[retry..]
            .iter()
            .all(|e| e.data["attempt"] == json!(2)),
        "the dead attempt published after the retry: {events:#?}"
    );
    let completed = events
        .iter()
        .filter(|e| e.kind == EventType::JobCompleted)
        .count();
    ensure!(completed == 1, "{events:#?}");
    ensure!(
        progress_at_death < 100.0,
        "the first worker finished before it was killed"
    );
    ensure_queue_empty(backend.as_ref()).await?;
    Ok(())
}

/// SIGTERM: the worker waits for its job up to the shutdown timeout, then
/// hands it back to the queue (`job_retrying`) and exits 0; the next worker
/// runs it at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_releases_the_running_job_and_exits_0() -> Result<()> {
    let redis = RedisServer::start()?;
    let backend: Arc<dyn Backend> = redis_backend(&redis.url()).await?;
    let mut leaving = start_worker(&redis, "leaving", &[("JOBWIRE_SHUTDOWN_TIMEOUT", "500ms")])?;
    let job = create_demo(backend.as_ref(), json!({"steps": 100, "delay_ms": 50})).await?;
    wait_progressing(backend.as_ref(), &job.id).await?;
    leaving.signal("TERM")?;
    let code = leaving.wait_exit(Duration::from_secs(10))?;
    ensure!(code == 0, "exit code {code}");
    let state = backend.job(&job.id).await?;
    ensure!(
        state.status == JobStatus::Queued && state.attempt == 2,
        "{state:?}"
    );
    ensure!(
        backend.queue_stats().await?
            == QueueStats {
                waiting: 1,
                pending: 0,
                scheduled: 0,
            },
        "{:?}",
        backend.queue_stats().await?
    );
    // Well inside the visibility timeout: a released job needs no reaper.
    let _arriving = start_worker(&redis, "arriving", &[("JOBWIRE_VISIBILITY_TIMEOUT", "1h")])?;
    wait_for(backend.as_ref(), &job.id, Duration::from_secs(5), |s| {
        s.status == JobStatus::Running && s.attempt == 2
    })
    .await?;
    Ok(())
}

/// `--metrics-bind`: the worker serves its counters for Prometheus, and they
/// move as jobs run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_serves_prometheus_metrics() -> Result<()> {
    let redis = RedisServer::start()?;
    let backend: Arc<dyn Backend> = redis_backend(&redis.url()).await?;
    let port = jobwire_testkit::free_port()?;
    let bind = format!("127.0.0.1:{port}");
    let _worker = start_worker(
        &redis,
        "metered",
        &[
            ("JOBWIRE_WORKER_METRICS_BIND", bind.as_str()),
            ("JOBWIRE_WORKER_CONCURRENCY", "3"),
        ],
    )?;
    let metrics = || async {
        let mut last = None;
        for _ in 0..100 {
            match reqwest::get(format!("http://{bind}/metrics")).await {
                Ok(r) if r.status().is_success() => return Ok(r.text().await?),
                other => last = Some(format!("{other:?}")),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        anyhow::bail!("no /metrics on {bind}: {last:?}")
    };
    let before = metrics().await?;
    ensure!(
        before.contains("jobwire_worker_concurrency 3")
            && before.contains("jobwire_worker_jobs_total{outcome=\"completed\"} 0"),
        "{before}"
    );
    let job = create_demo(backend.as_ref(), json!({"steps": 3, "delay_ms": 10})).await?;
    wait_for(backend.as_ref(), &job.id, Duration::from_secs(20), |s| {
        s.status.is_terminal()
    })
    .await?;
    // The counter moves right after the terminal event is stored.
    let mut after = String::new();
    for _ in 0..50 {
        after = metrics().await?;
        if after.contains("jobwire_worker_jobs_total{outcome=\"completed\"} 1") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    ensure!(
        after.contains("jobwire_worker_claims_total{source=\"queue\"} 1")
            && after.contains("jobwire_worker_jobs_total{outcome=\"completed\"} 1")
            && after.contains("jobwire_worker_running_jobs 0"),
        "{after}"
    );
    let events = after
        .lines()
        .find_map(|l| l.strip_prefix("jobwire_worker_events_published_total "))
        .context("no events counter")?;
    ensure!(events.parse::<u64>()? >= 5, "{after}");
    Ok(())
}

/// A running worker is in the registry with its queues, concurrency and
/// pid; killed with SIGKILL it is shown as gone once its lease (the
/// visibility timeout) passes; stopped with SIGTERM it leaves at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_registry_shows_workers_and_when_they_are_gone() -> Result<()> {
    let redis = RedisServer::start()?;
    let backend: Arc<dyn Backend> = redis_backend(&redis.url()).await?;
    let mut killed = start_worker(&redis, "killed", &[("JOBWIRE_QUEUES", "a,b")])?;
    let mut stopped = start_worker(&redis, "stopped", &[])?;
    let seen = |name: &'static str| {
        let backend = Arc::clone(&backend);
        async move {
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            loop {
                let workers = backend.workers().await?;
                if let Some(w) = workers.into_iter().find(|w| w.name == name) {
                    return Ok::<_, anyhow::Error>(w);
                }
                ensure!(std::time::Instant::now() < deadline, "{name} never beat");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    let w = seen("killed").await?;
    ensure!(
        w.queues == ["a", "b"] && w.pid == killed.child.id() && w.is_live(Timestamp::now()),
        "{w:?}"
    );
    let s = seen("stopped").await?;
    ensure!(s.queues == ["demo", "scan"], "{s:?}");
    killed.signal("KILL")?;
    killed.wait_exit(Duration::from_secs(5))?;
    stopped.signal("TERM")?;
    ensure!(stopped.wait_exit(Duration::from_secs(10))? == 0);
    ensure!(
        !seen("stopped").await?.is_live(Timestamp::now()),
        "left late"
    );
    // Gone once 2 s (its visibility timeout) pass without a beat.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while seen("killed").await?.is_live(Timestamp::now()) {
        ensure!(std::time::Instant::now() < deadline, "still live");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(())
}
