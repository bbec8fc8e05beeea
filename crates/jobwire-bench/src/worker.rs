//! Worker throughput.
//!
//! 1. **Jobs through the queue**: N trivial jobs (claim → `job_started`, one
//!    `progress`, `job_completed` → ack) are queued first, then W worker
//!    runtimes (each with its own store connections, as separate processes
//!    would have) drain the queue; jobs/s is N over the time to drain it.
//!    Three mixes in the same run: one plain queue; 4 queues with priorities
//!    0–9 (each worker serving all four); and delayed jobs, due by the time
//!    the workers start, so they are promoted while the queue drains. Then
//!    the promotion alone: N due jobs queued by one promoter. Beside jobs/s,
//!    the CPU time the benchmark process and its private redis-server used
//!    per 1,000 jobs: on a small shared machine wall-clock rates swing by a
//!    third between identical runs, CPU time far less. `--rounds` measures
//!    each mix several times, taking turns, and reports medians.
//! 2. **Reporter**: one job reports M `progress` events in a tight loop and
//!    flushes; events/s is M over the time from its first report until all
//!    are stored.
//!
//! Each measurement gets a fresh key prefix on one redis-server, and both run
//! on the memory backend too, as the ceiling of the runtime itself.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use jobwire_core::settle::{promote_due, PROMOTE_BATCH};
use jobwire_core::{Backend, BackendConfig, MemoryBackend, NewJob, Timestamp};
use jobwire_redis::{RedisBackend, RedisConfig};
use jobwire_worker::{handler_fn, JobOutcome, Worker, WorkerConfig};
use serde_json::json;
use tokio_util::sync::CancellationToken;

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Use this Redis instead of starting a private redis-server (`cluster`:
    /// start a private Redis Cluster of three masters; keys under
    /// `jwbench-*` prefixes are written).
    #[arg(long, env = "JOBWIRE_BENCH_REDIS_URL")]
    redis_url: Option<String>,
    /// Trivial jobs per queue measurement.
    #[arg(long, default_value_t = 5000)]
    jobs: usize,
    /// Worker runtimes to measure with.
    #[arg(long, value_delimiter = ',', default_value = "1,4")]
    workers: Vec<usize>,
    /// Jobs each worker runs at once (JOBWIRE_WORKER_CONCURRENCY).
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Events the busy job reports.
    #[arg(long, default_value_t = 200_000)]
    events: u64,
    /// Times each queue mix is measured, the mixes taking turns (each round
    /// starting with the next) on an emptied private Redis; the table gives
    /// each mix's median, so the machine's drift falls on every mix alike.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    rounds: u32,
}

/// How the measured jobs are queued.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mix {
    /// One queue, default priority.
    Plain,
    /// Four queues, priorities 0–9.
    Priorities,
    /// Delayed jobs, due when the workers start (promoted as they run).
    Delayed,
}

impl Mix {
    const ALL: [Mix; 3] = [Mix::Plain, Mix::Priorities, Mix::Delayed];

    fn name(self) -> &'static str {
        match self {
            Mix::Plain => "1 queue",
            Mix::Priorities => "4 queues × 10 priorities",
            Mix::Delayed => "delayed",
        }
    }

    fn queues(self) -> Vec<String> {
        match self {
            Mix::Priorities => (0..4).map(|q| format!("q{q}")).collect(),
            _ => Vec::new(),
        }
    }

    fn job(self, i: usize) -> NewJob {
        let job = NewJob::new("trivial", json!({}), "bench");
        match self {
            Mix::Plain => job,
            Mix::Priorities => job
                .in_queue(format!("q{}", i % 4))
                .at_priority((i % 10) as u8),
            // Due in a moment: before the workers start.
            Mix::Delayed => job.not_before(Timestamp::now().plus(Duration::from_millis(1))),
        }
    }

    /// Events a job's log ends with: `job_queued` (twice when delayed),
    /// `job_started`, `progress`, `job_completed`.
    fn events(self) -> u64 {
        if self == Mix::Delayed {
            5
        } else {
            4
        }
    }
}

pub(crate) async fn run(args: Args) -> Result<()> {
    let (server, url) = crate::redis(args.redis_url.as_deref())?;
    // A private standalone server is emptied before each measurement, so
    // that no mix runs against a Redis grown by the ones before it.
    let redis_pid = match &server {
        Some(crate::OwnRedis::Server(server)) => server.pid(),
        _ => None,
    };
    println!(
        "worker throughput: {} trivial jobs (3 events each), concurrency {} per worker, \
         median of {} rounds, redis {url}",
        args.jobs, args.concurrency, args.rounds
    );
    println!(
        "CPU: user + system seconds of the benchmark process{} per 1,000 jobs (steadier than \
         jobs/s on a shared machine)",
        if redis_pid.is_some() {
            " and the private redis-server"
        } else {
            ""
        }
    );
    println!(
        "| store | workers | queued as | jobs/s | vs 1 queue | CPU ms per 1k jobs | vs 1 queue | all completed once |"
    );
    println!("|---|---:|---|---:|---:|---:|---:|---|");
    for &workers in &args.workers {
        for store in ["redis", "memory"] {
            let mut rates: [Vec<f64>; 3] = Default::default();
            let mut cpu: [Vec<f64>; 3] = Default::default();
            let pids: Vec<u32> = std::iter::once(std::process::id())
                .chain(redis_pid.filter(|_| store == "redis"))
                .collect();
            let mut all_once = true;
            for round in 0..args.rounds as usize {
                // Each round starts with another mix.
                for turn in 0..Mix::ALL.len() {
                    let i = (round + turn) % Mix::ALL.len();
                    let mix = Mix::ALL[i];
                    let stores = match store {
                        "redis" => {
                            if redis_pid.is_some() {
                                flush(&url).await?;
                            }
                            redis_stores(&url, workers).await?
                        }
                        _ => {
                            let memory: Arc<dyn Backend> =
                                Arc::new(MemoryBackend::new(BackendConfig::default()));
                            vec![memory; workers]
                        }
                    };
                    let before = crate::measure::cpu_seconds(&pids);
                    let (rate, once) = drain(&stores, &args, mix).await?;
                    let used = crate::measure::cpu_seconds(&pids) - before;
                    cpu[i].push(used * 1e6 / args.jobs as f64);
                    rates[i].push(rate);
                    all_once &= once;
                }
            }
            let (plain_rate, plain_cpu) = (median(&mut rates[0]), median(&mut cpu[0]));
            let ratio = |x: f64| format!("{x:.2}");
            for (i, mix) in Mix::ALL.into_iter().enumerate() {
                let (rate, cpu) = (median(&mut rates[i]), median(&mut cpu[i]));
                let plain = mix == Mix::Plain;
                let vs = |x: f64, of: f64| {
                    if plain {
                        "–".to_owned()
                    } else {
                        ratio(x / of)
                    }
                };
                println!(
                    "| {store} | {workers} | {} | {rate:.0} | {} | {cpu:.0} | {} | {} |",
                    mix.name(),
                    vs(rate, plain_rate),
                    vs(cpu, plain_cpu),
                    if all_once { "yes" } else { "NO" }
                );
            }
        }
    }
    println!();
    println!(
        "promotion alone: {} due jobs queued by one promoter",
        args.jobs
    );
    println!("| store | jobs promoted/s | ms per 10k |");
    println!("|---|---:|---:|");
    let mut redis = redis_stores(&url, 2).await?;
    let promoter = redis.remove(1);
    promotion_row("redis", redis.remove(0), promoter, args.jobs).await?;
    let memory: Arc<dyn Backend> = Arc::new(MemoryBackend::new(BackendConfig::default()));
    promotion_row("memory", Arc::clone(&memory), memory, args.jobs).await?;
    println!();
    println!(
        "reporter: one job reports {} progress events in a tight loop, then flushes",
        args.events
    );
    println!("| store | events/s |");
    println!("|---|---:|");
    let redis = redis_stores(&url, 1).await?.remove(0);
    reporter_row("redis", redis, args.events).await?;
    let memory: Arc<dyn Backend> = Arc::new(MemoryBackend::new(BackendConfig::default()));
    reporter_row("memory", memory, args.events).await?;
    Ok(())
}

/// `n` backends on one Redis under a fresh prefix (one per worker, like
/// separate processes).
async fn redis_stores(url: &str, n: usize) -> Result<Vec<Arc<dyn Backend>>> {
    let prefix = format!("jwbench-{:08x}", rand::random::<u32>());
    let mut stores: Vec<Arc<dyn Backend>> = Vec::with_capacity(n);
    for _ in 0..n {
        let config = RedisConfig {
            key_prefix: prefix.clone(),
            ..RedisConfig::new(url)
        };
        stores.push(Arc::new(RedisBackend::connect(config).await?));
    }
    Ok(stores)
}

/// Empties the (private) Redis at `url`.
async fn flush(url: &str) -> Result<()> {
    let mut conn = redis::Client::open(url)?
        .get_multiplexed_async_connection()
        .await?;
    redis::cmd("FLUSHALL").query_async::<()>(&mut conn).await?;
    Ok(())
}

/// The median of `values` (not empty).
fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// Drains `args.jobs` jobs queued as `mix`; returns jobs/s and whether each
/// completed once.
async fn drain(stores: &[Arc<dyn Backend>], args: &Args, mix: Mix) -> Result<(f64, bool)> {
    let client = Arc::clone(&stores[0]);
    let ids = create_jobs(&client, args.jobs, mix).await?;
    let stop = CancellationToken::new();
    let mut running = Vec::new();
    for (i, store) in stores.iter().enumerate() {
        let worker = Worker::builder(Arc::clone(store))
            .config(WorkerConfig {
                consumer: format!("bench-{i}"),
                concurrency: args.concurrency,
                queues: mix.queues(),
                ..WorkerConfig::default()
            })
            .handler(
                "trivial",
                handler_fn(|job| async move {
                    job.reporter().progress(1, 1, "").await?;
                    Ok(JobOutcome::done())
                }),
            )
            .build()?;
        running.push(worker);
    }
    let started = Instant::now();
    let tasks: Vec<_> = running
        .iter()
        .map(|w| {
            let (w, stop) = (w.clone(), stop.clone());
            tokio::spawn(async move { w.run(stop).await })
        })
        .collect();
    let deadline = started + Duration::from_secs(600);
    while running.iter().map(|w| w.stats().finished()).sum::<u64>() < args.jobs as u64 {
        ensure!(
            Instant::now() < deadline,
            "the queue did not drain in 10 minutes"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let elapsed = started.elapsed().as_secs_f64();
    stop.cancel();
    for t in tasks {
        t.await?;
    }
    let completed: u64 = running
        .iter()
        .map(|w| w.stats().completed.load(Ordering::Relaxed))
        .sum();
    let all_once = completed == args.jobs as u64
        && client.queue_stats().await? == Default::default()
        && check_sample(&client, &ids, mix.events()).await?;
    Ok((args.jobs as f64 / elapsed, all_once))
}

/// Creates `n` due scheduled jobs through `creator`, then times one
/// promoter (`store`: another process on Redis, as in a deployment, where
/// gateways create and every process promotes) queueing them.
async fn promotion_row(
    name: &str,
    creator: Arc<dyn Backend>,
    store: Arc<dyn Backend>,
    n: usize,
) -> Result<()> {
    create_jobs(&creator, n, Mix::Delayed).await?;
    tokio::time::sleep(Duration::from_millis(5)).await;
    let started = Instant::now();
    let mut promoted = 0;
    while promoted < n {
        let round = promote_due(
            store.as_ref(),
            store.as_ref(),
            Timestamp::now(),
            PROMOTE_BATCH,
        )
        .await?;
        ensure!(round > 0, "only {promoted} of {n} were due");
        promoted += round;
    }
    let elapsed = started.elapsed().as_secs_f64();
    ensure!(store.queue_stats().await?.waiting == n as u64);
    println!(
        "| {name} | {:.0} | {:.0} |",
        n as f64 / elapsed,
        elapsed * 1000.0 * 10_000.0 / n as f64
    );
    Ok(())
}

/// Queues `n` trivial jobs as `mix`, 16 creations at a time.
async fn create_jobs(
    client: &Arc<dyn Backend>,
    n: usize,
    mix: Mix,
) -> Result<Vec<jobwire_core::JobId>> {
    let next = Arc::new(AtomicU64::new(0));
    let ids = Arc::new(Mutex::new(Vec::with_capacity(n)));
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let (client, next, ids) = (Arc::clone(client), Arc::clone(&next), Arc::clone(&ids));
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                if i >= n {
                    break;
                }
                let job = client.create_job(mix.job(i)).await?;
                ids.lock()
                    .map_err(|_| anyhow::anyhow!("poisoned"))?
                    .push(job.id);
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let ids = std::mem::take(&mut *ids.lock().map_err(|_| anyhow::anyhow!("poisoned"))?);
    Ok(ids)
}

/// Every 50th job ran once: completed on attempt 1 with exactly `events`
/// events.
async fn check_sample(
    client: &Arc<dyn Backend>,
    ids: &[jobwire_core::JobId],
    events: u64,
) -> Result<bool> {
    for id in ids.iter().step_by(50) {
        let state = client.job(id).await?;
        if state.status != jobwire_core::JobStatus::Completed
            || state.attempt != 1
            || state.last_event_id.0 != events
        {
            return Ok(false);
        }
    }
    Ok(true)
}

async fn reporter_row(name: &str, store: Arc<dyn Backend>, events: u64) -> Result<()> {
    let timing = Arc::new(Mutex::new(None::<Duration>));
    let worker = Worker::builder(Arc::clone(&store))
        .config(WorkerConfig {
            consumer: "bench-reporter".to_owned(),
            ..WorkerConfig::default()
        })
        .handler("busy", {
            let timing = Arc::clone(&timing);
            handler_fn(move |job| {
                let timing = Arc::clone(&timing);
                async move {
                    let started = Instant::now();
                    for i in 1..=events {
                        job.reporter().progress(i, events, "").await?;
                    }
                    job.reporter().flush().await?;
                    if let Ok(mut t) = timing.lock() {
                        *t = Some(started.elapsed());
                    }
                    Ok(JobOutcome::done())
                }
            })
        })
        .build()?;
    let stop = CancellationToken::new();
    let task = tokio::spawn({
        let (w, stop) = (worker.clone(), stop.clone());
        async move { w.run(stop).await }
    });
    let job = store
        .create_job(NewJob::new("busy", json!({}), "bench"))
        .await?;
    let deadline = Instant::now() + Duration::from_secs(600);
    while worker.stats().finished() < 1 {
        ensure!(Instant::now() < deadline, "the busy job did not finish");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    stop.cancel();
    task.await?;
    let elapsed = timing
        .lock()
        .map_err(|_| anyhow::anyhow!("poisoned"))?
        .context("the busy job recorded no time")?;
    let state = store.job(&job.id).await?;
    ensure!(
        state.last_event_id.0 == events + 3,
        "the busy job's log has {} events, expected {}",
        state.last_event_id.0,
        events + 3
    );
    println!("| {name} | {:.0} |", events as f64 / elapsed.as_secs_f64());
    Ok(())
}
