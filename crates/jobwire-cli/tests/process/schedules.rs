//! Cron schedules with real processes: two gateways and three workers on
//! one Redis, every one of them firing ticks, through a `kill -9`, a
//! restart, and an outage of the whole fleet.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use jobwire_core::{Backend, JobState, JobStatus, ListQuery, Timestamp};
use jobwire_testkit::RedisServer;

use crate::{as_admin, redis_backend, Jobwire};

fn start(redis: &RedisServer, role: &str, port: Option<u16>) -> Result<Jobwire> {
    let env = [
        ("REDIS_URL", redis.url()),
        ("JOBWIRE_VISIBILITY_TIMEOUT", "2s".to_owned()),
    ];
    match port {
        Some(port) => Jobwire::start_on(port, &[role], &env),
        None => Jobwire::start(&[role], &env),
    }
}

/// The jobs the schedule made (all `root`'s: it made the schedule),
/// oldest first.
async fn fired(backend: &dyn Backend) -> Result<Vec<JobState>> {
    let mut jobs = backend
        .list_jobs(&ListQuery {
            owner: Some("root".to_owned()),
            limit: 1000,
            ..Default::default()
        })
        .await?
        .jobs;
    jobs.reverse();
    Ok(jobs)
}

fn tick(job: &JobState) -> Result<Timestamp> {
    Ok(job
        .schedule
        .as_ref()
        .with_context(|| format!("job {} was not made by a schedule", job.id))?
        .tick)
}

/// A schedule ticking every second fires each tick once while two gateways
/// and three workers all try (one gateway killed with SIGKILL and
/// restarted, one worker killed); then the whole fleet is down for four
/// seconds, and the ticks missed meanwhile make one job when it is back,
/// not four. Every job completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schedule_fires_each_tick_once_across_gateways_workers_and_restarts() -> Result<()> {
    let redis = RedisServer::start()?;
    let backend: Arc<dyn Backend> = redis_backend(&redis.url()).await?;
    let mut gateways = vec![start(&redis, "serve", None)?, start(&redis, "serve", None)?];
    let mut workers = Vec::new();
    for _ in 0..3 {
        workers.push(start(&redis, "worker", None)?);
    }
    for g in &gateways {
        g.wait_for("/readyz", 200, Duration::from_secs(20)).await?;
    }
    let added = as_admin(
        &gateways[0],
        &[
            "schedule",
            "add",
            "every-second",
            "--cron",
            "* * * * * *",
            "demo",
            "-p",
            "steps=1",
            "-p",
            "delay_ms=0",
        ],
    )?;
    ensure!(added.status.success(), "{added:?}");

    tokio::time::sleep(Duration::from_secs(3)).await;
    let port = gateways[0].port;
    gateways[0].signal("KILL")?;
    gateways[0].wait_exit(Duration::from_secs(5))?;
    workers[0].signal("KILL")?;
    workers[0].wait_exit(Duration::from_secs(5))?;
    gateways[0] = start(&redis, "serve", Some(port))?;
    gateways[0]
        .wait_for("/readyz", 200, Duration::from_secs(20))
        .await?;
    tokio::time::sleep(Duration::from_secs(3)).await;

    // The whole fleet down.
    drop(gateways);
    drop(workers);
    let down = Timestamp::now();
    tokio::time::sleep(Duration::from_secs(4)).await;
    let up = Timestamp::now();
    let gateway = start(&redis, "serve", None)?;
    let _worker = start(&redis, "worker", None)?;
    gateway
        .wait_for("/readyz", 200, Duration::from_secs(20))
        .await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let removed = as_admin(&gateway, &["schedule", "rm", "every-second"])?;
    ensure!(removed.status.success(), "{removed:?}");

    let jobs = fired(backend.as_ref()).await?;
    let ticks: Vec<Timestamp> = jobs.iter().map(tick).collect::<Result<_>>()?;
    let distinct: BTreeSet<Timestamp> = ticks.iter().copied().collect();
    ensure!(
        distinct.len() == ticks.len(),
        "a tick fired twice: {ticks:?}"
    );
    ensure!(
        jobs.len() >= 5,
        "only {} ticks fired: {ticks:?}",
        jobs.len()
    );
    let missed: Vec<&Timestamp> = ticks.iter().filter(|t| **t > down && **t < up).collect();
    ensure!(
        missed.len() <= 1,
        "the ticks missed while everything was down fired more than once: {missed:?}"
    );
    ensure!(
        ticks.iter().any(|t| *t > up),
        "nothing fired after the restart: {ticks:?}"
    );
    for job in &jobs {
        let done = jobwire_testkit::jobs::wait_for(
            backend.as_ref(),
            &job.id,
            Duration::from_secs(30),
            |s| s.status.is_terminal(),
        )
        .await?;
        ensure!(done.status == JobStatus::Completed, "{done:?}");
    }
    Ok(())
}
