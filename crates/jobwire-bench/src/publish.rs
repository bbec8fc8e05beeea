//! Publish throughput.
//!
//! For each job concurrency J, J tasks publish progress events in batches of
//! B for a fixed time through: (1) raw pipelined `XADD` of the same event JSON
//! to one stream per job — the physical floor of writing to Redis; (2)
//! `RedisBackend::publish` (plan + Lua compare-and-set + log and live XADDs);
//! (3) `MemoryBackend::publish`. All three run in one process against one
//! redis-server, so the ratios are comparable even on a noisy machine.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use jobwire_core::{
    Backend, BackendConfig, Event, EventId, EventType, JobId, MemoryBackend, NewEvent, NewJob,
    Timestamp,
};
use jobwire_redis::{RedisBackend, RedisConfig};
use serde_json::json;

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Use this Redis instead of starting a private redis-server (`cluster`:
    /// start a private Redis Cluster of three masters). Its data is
    /// flushed between measurements.
    #[arg(long, env = "JOBWIRE_BENCH_REDIS_URL")]
    redis_url: Option<String>,
    /// Job concurrencies to measure.
    #[arg(long, value_delimiter = ',', default_value = "1,16,256")]
    jobs: Vec<usize>,
    /// Events per publish call (and per raw pipeline).
    #[arg(long, default_value_t = 32)]
    batch: usize,
    /// Seconds per measurement.
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    /// Shared Redis connections (JOBWIRE_REDIS_POOL_SIZE).
    #[arg(long, default_value_t = 4)]
    pool: usize,
    /// Rounds per cell: the paths alternate, round after round, and the
    /// median of each is reported (this machine is noisy).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Measure only these paths (for profiling one at a time).
    #[arg(long, value_delimiter = ',', default_value = "raw,redis,memory")]
    only: Vec<Path>,
}

/// A measured publish path.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Path {
    Raw,
    Redis,
    Memory,
}

pub(crate) async fn run(args: Args) -> Result<()> {
    let (_server, url) = crate::redis(args.redis_url.as_deref())?;
    let duration = Duration::from_secs_f64(args.seconds);
    println!(
        "publish throughput: batch {} events, median of {} alternating rounds of {:.0} s, pool {} connections, redis {url}",
        args.batch, args.rounds, args.seconds, args.pool
    );
    println!("| jobs | raw XADD ev/s | RedisBackend ev/s | Redis/raw | MemoryBackend ev/s |");
    println!("|---:|---:|---:|---:|---:|");
    for &jobs in &args.jobs {
        // Raw XADD pipelines span streams of every slot: one node only.
        let clustered = url.contains(',');
        let wanted = |p| args.only.contains(&p) && !(clustered && p == Path::Raw);
        let (mut raw, mut redis, mut memory) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..args.rounds.max(1) {
            if wanted(Path::Raw) {
                raw.push(raw_xadd(&url, jobs, args.batch, args.pool, duration).await?);
            }
            if wanted(Path::Redis) {
                let backend = redis_backend(&url, args.pool).await?;
                redis.push(backend_rate(&backend, jobs, args.batch, duration).await?);
                flush(&url).await?;
            }
            if wanted(Path::Memory) {
                let backend = Arc::new(MemoryBackend::new(config()));
                memory.push(backend_rate(&backend, jobs, args.batch, duration).await?);
            }
        }
        let (raw, redis, memory) = (median(raw), median(redis), median(memory));
        println!(
            "| {jobs} | {raw:.0} | {redis:.0} | {:.0}% | {memory:.0} |",
            redis / raw * 100.0
        );
    }
    Ok(())
}

fn config() -> BackendConfig {
    BackendConfig::default()
}

async fn redis_backend(url: &str, pool: usize) -> Result<Arc<RedisBackend>> {
    let backend = RedisBackend::connect(RedisConfig {
        pool_size: pool,
        key_prefix: "jobwire-bench".to_owned(),
        backend: config(),
        ..RedisConfig::new(url)
    })
    .await?;
    Ok(Arc::new(backend))
}

/// A representative event: what the worker reporter sends for a file.
fn sample_event(job: &JobId, id: u64) -> String {
    let mut data = serde_json::Map::new();
    data.insert("file".into(), json!("docs/reports/2026/q3-summary.md"));
    jobwire_core::reducer::enrich(
        &jobwire_core::JobState::new(
            &NewJob::new("scan", json!({}), "bench"),
            jobwire_core::Epoch::generate(),
            Timestamp::now(),
        ),
        &mut data,
    );
    Event {
        id: EventId(id),
        job_id: job.clone(),
        kind: EventType::FileCompleted,
        timestamp: Timestamp::now(),
        data,
    }
    .to_json()
}

/// Runs `jobs` copies of `step` until `duration` passes; returns events/s.
async fn measure<F, Fut>(jobs: usize, duration: Duration, step: F) -> Result<f64>
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<u64>> + Send,
{
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let step = Arc::new(step);
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(jobs);
    for j in 0..jobs {
        let (stop, count, step) = (Arc::clone(&stop), Arc::clone(&count), Arc::clone(&step));
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                count.fetch_add(step(j).await?, Ordering::Relaxed);
                // An in-memory publish never waits; without a yield the
                // publishers would starve the timer that ends the run.
                tokio::task::yield_now().await;
            }
            Ok::<_, anyhow::Error>(())
        }));
    }
    tokio::time::sleep(duration).await;
    stop.store(true, Ordering::Relaxed);
    let total = count.load(Ordering::Relaxed);
    let elapsed = started.elapsed();
    for task in tasks {
        task.await??;
    }
    Ok(total as f64 / elapsed.as_secs_f64())
}

async fn raw_xadd(
    url: &str,
    jobs: usize,
    batch: usize,
    pool: usize,
    duration: Duration,
) -> Result<f64> {
    let client = redis::Client::open(url)?;
    let mut conns = Vec::new();
    for _ in 0..pool.max(1) {
        conns.push(client.get_connection_manager().await?);
    }
    let ids: Vec<JobId> = (0..jobs).map(|_| JobId::generate()).collect();
    let payloads: Vec<String> = ids.iter().map(|id| sample_event(id, 1)).collect();
    let (ids, payloads) = (Arc::new(ids), Arc::new(payloads));
    let rate = measure(jobs, duration, move |j| {
        let mut conn = conns[j % conns.len()].clone();
        let key = format!("jobwire-bench:raw:{}", ids[j]);
        let payload = Arc::clone(&payloads);
        async move {
            let mut pipe = redis::pipe();
            for _ in 0..batch {
                pipe.cmd("XADD")
                    .arg(&key)
                    .arg("MAXLEN")
                    .arg("~")
                    .arg(1000)
                    .arg("*")
                    .arg("e")
                    .arg(&payload[j])
                    .ignore();
            }
            pipe.query_async::<()>(&mut conn)
                .await
                .context("raw XADD")?;
            Ok(batch as u64)
        }
    })
    .await?;
    flush(url).await?;
    Ok(rate)
}

/// Empties the benchmark's Redis between measurements, so each starts
/// alike (each node of a cluster; replicas refuse, and follow their master).
async fn flush(url: &str) -> Result<()> {
    let nodes: Vec<&str> = url.split(',').collect();
    for node in &nodes {
        let client = redis::Client::open(*node)?;
        let mut conn = client.get_multiplexed_async_connection().await?;
        let flushed = redis::cmd("FLUSHDB").query_async::<()>(&mut conn).await;
        if nodes.len() == 1 {
            flushed?;
        }
    }
    Ok(())
}

pub(crate) fn median(mut xs: Vec<f64>) -> f64 {
    if xs.is_empty() {
        return f64::NAN;
    }
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

pub(crate) async fn backend_rate<B: Backend>(
    backend: &Arc<B>,
    jobs: usize,
    batch: usize,
    duration: Duration,
) -> Result<f64> {
    let mut ids = Vec::with_capacity(jobs);
    for _ in 0..jobs {
        let job = backend
            .create_job(NewJob::new("scan", json!({"path": "/data"}), "bench"))
            .await?;
        backend
            .publish(
                &job.id,
                &[NewEvent::new(
                    EventType::JobStarted,
                    json!({"total_files": 1_000_000_000u64}),
                )],
            )
            .await?;
        ids.push(job.id);
    }
    let ids = Arc::new(ids);
    let backend = Arc::clone(backend);
    measure(jobs, duration, move |j| {
        let (backend, ids) = (Arc::clone(&backend), Arc::clone(&ids));
        async move {
            let events: Vec<NewEvent> = (0..batch)
                .map(|_| {
                    NewEvent::new(
                        EventType::FileCompleted,
                        json!({"file": "docs/reports/2026/q3-summary.md"}),
                    )
                })
                .collect();
            let out = backend.publish(&ids[j], &events).await?;
            Ok(out.ids.len() as u64)
        }
    })
    .await
}
