//! Baseline: jobwire measured against two floors, with the same
//! subscribers, jobs and rate, in one run.
//!
//! 1. **Redis alone**: publishers `XADD` one event per job stream, and every
//!    subscriber has its own Redis connection blocked in `XREAD` on its
//!    job's stream, so Redis itself does the fan-out.
//! 2. **The floor server** (`floor.rs`): N processes, each one `XREAD` loop
//!    on the partition streams writing to WebSockets, with nothing else.
//! 3. **jobwire**: N `jobwire serve` gateways, published through the
//!    worker runtime's reporter (the `fanout` scenario at one rate).
//!
//! The events carry the same JSON a gateway sends (same size, same `id` and
//! `data.t_us`), and subscribers parse them the same way, so the runs differ
//! only in the path between. The report ends with jobwire/floor ratios.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Value};
use tokio_util::sync::CancellationToken;

use crate::fanout::{self, Round, Under};
use crate::measure::{self, now_us, paced, Percentiles, PublishFn, Recorder, Usage};
use crate::subscriber::Probe;

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Subscribers (each with its own Redis connection in the first run).
    #[arg(long, default_value_t = 1000)]
    subscribers: usize,
    /// Jobs (streams); subscriber i reads stream i % jobs.
    #[arg(long, default_value_t = 100)]
    jobs: usize,
    /// Events published per second, in total.
    #[arg(long, default_value_t = 5000.0)]
    rate: f64,
    /// Seconds of publishing, in each run.
    #[arg(long, default_value_t = 20.0)]
    seconds: f64,
    /// Server processes: floor servers, then jobwire gateways.
    #[arg(long, default_value_t = 2)]
    instances: usize,
    /// Partition streams the floor server reads (jobwire's default).
    #[arg(long, default_value_t = 16)]
    partitions: usize,
    /// The `jobwire` binary (default: next to this one).
    #[arg(long)]
    jobwire: Option<std::path::PathBuf>,
}

/// A job id as a gateway sends it (a real one: the floor server's
/// `current_state` carries it).
fn job_ids(jobs: usize) -> Vec<String> {
    (0..jobs.max(1))
        .map(|_| jobwire_core::JobId::generate().to_string())
        .collect()
}

/// A jobwire event as a gateway sends it, with the same fields and size.
pub(crate) fn event_json(job: &str, id: u64) -> String {
    format!(
        r#"{{"id":{id},"job_id":"{job}","type":"bench.tick","timestamp":"2026-11-28T18:00:00.000000Z","attempt":1,"n":{id},"data":{{"t_us":{}}}}}"#,
        now_us()
    )
}

pub(crate) async fn run(args: Args) -> Result<()> {
    println!("== Redis alone: one blocked XREAD connection per subscriber");
    let alone = redis_alone(&args).await?;
    println!(
        "== the floor server: {} processes, one XREAD loop each",
        args.instances
    );
    let floor = floor_server(&args).await?;
    println!("== jobwire: {} gateways", args.instances);
    let jobwire = fanout::run(fanout::Args::one_round(
        args.instances,
        args.subscribers,
        args.jobs,
        args.rate,
        args.seconds,
        args.jobwire.clone(),
    ))
    .await?
    .context("jobwire's round did not finish")?;
    compare(&alone, &floor, &jobwire);
    Ok(())
}

/// The floor server's run, through the fan-out scenario's measurement.
async fn floor_server(args: &Args) -> Result<Round> {
    let (_redis, url) = crate::redis(None)?;
    let redis_pid = _redis.as_ref().and_then(|s| s.pid());
    let servers = crate::floor::start(&url, args.instances, args.partitions).await?;
    let client = redis::Client::open(url.as_str())?;
    let mut connections = Vec::new();
    for _ in 0..4 {
        connections.push(client.get_multiplexed_async_connection().await?);
    }
    let jobs = job_ids(args.jobs);
    let mut processes: Vec<(String, u32)> = servers
        .iter()
        .enumerate()
        .map(|(i, s)| (format!("floor {i}"), s.child.id()))
        .collect();
    processes.extend(redis_pid.map(|pid| ("redis-server".to_owned(), pid)));
    let under = Under {
        addrs: servers.iter().map(|s| s.addr()).collect(),
        processes,
        publish: crate::floor::publisher(connections, &jobs, args.partitions),
        jobs,
        path: "XADD to the partition streams".to_owned(),
        metrics: false,
    };
    let load = fanout::Args::one_round(
        args.instances,
        args.subscribers,
        args.jobs,
        args.rate,
        args.seconds,
        None,
    );
    fanout::measure(&load, under)
        .await?
        .context("the floor server's round did not finish")
}

/// What the Redis-alone run measured.
struct Alone {
    latency_ms: Percentiles,
    delivered_per_s: f64,
    lost: u64,
}

/// CPU of the servers of a round (not the load generator or Redis), in %
/// of one core.
fn server_cpu(processes: &[Usage]) -> f64 {
    processes
        .iter()
        .filter(|u| u.name != "load generator" && u.name != "redis-server")
        .map(|u| u.cpu)
        .sum()
}

fn compare(alone: &Alone, floor: &Round, jobwire: &Round) {
    let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { f64::NAN };
    // CPU-seconds of the servers per million deliveries.
    let cost = |r: &Round| server_cpu(&r.processes) / 100.0 / r.delivered_per_s.max(1.0) * 1e6;
    println!("== summary (ms; servers' CPU-seconds per million deliveries)");
    println!(
        "Redis alone:  p50 {:.2}  p99 {:.2}  delivered/s {:.0}  lost {}",
        alone.latency_ms.p50, alone.latency_ms.p99, alone.delivered_per_s, alone.lost
    );
    for (name, r) in [("floor server", floor), ("jobwire", jobwire)] {
        println!(
            "{name:<13} p50 {:.2}  p99 {:.2}  delivered/s {:.0}  lost {}  duplicated {}  out of order {}  CPU-s/M {:.1}",
            r.latency_ms.p50,
            r.latency_ms.p99,
            r.delivered_per_s,
            r.lost,
            r.duplicates,
            r.out_of_order,
            cost(r)
        );
    }
    println!(
        "jobwire/floor: p50 {:.2}x  p99 {:.2}x  delivered/s {:.2}x  CPU per delivery {:.2}x",
        ratio(jobwire.latency_ms.p50, floor.latency_ms.p50),
        ratio(jobwire.latency_ms.p99, floor.latency_ms.p99),
        ratio(jobwire.delivered_per_s, floor.delivered_per_s),
        ratio(cost(jobwire), cost(floor)),
    );
}

async fn redis_alone(args: &Args) -> Result<Alone> {
    let (_server, url) = crate::redis(None)?;
    let redis_pid = _server.as_ref().and_then(|s| s.pid());
    let client = redis::Client::open(url.as_str())?;
    let job_names = job_ids(args.jobs);
    let jobs = job_names.len();
    let key = |j: usize| format!("baseline:{j}");

    let recorder = Recorder::new()?;
    let stop = CancellationToken::new();
    let mut readers = Vec::new();
    for who in 0..args.subscribers {
        let config =
            AsyncConnectionConfig::new().set_response_timeout(Some(Duration::from_secs(10)));
        let conn = client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .with_context(|| format!("subscriber {who}'s connection"))?;
        readers.push(tokio::spawn(read(
            conn,
            key(who % jobs),
            who,
            recorder.clone(),
            stop.clone(),
        )));
    }
    println!(
        "{} subscribers, each blocked in XREAD on one of {jobs} streams",
        args.subscribers
    );

    let mut publishers = Vec::new();
    for _ in 0..4 {
        publishers.push(client.get_multiplexed_async_connection().await?);
    }
    let publishers = Arc::new(publishers);
    let sequences: Arc<Vec<AtomicU64>> = Arc::new((0..jobs).map(|_| AtomicU64::new(0)).collect());
    let keys: Arc<Vec<String>> = Arc::new((0..jobs).map(key).collect());
    let publish: PublishFn = Arc::new(move |j| {
        let mut conn = publishers[j % publishers.len()].clone();
        let id = sequences[j].fetch_add(1, Ordering::Relaxed) + 1;
        let mut cmd = redis::cmd("XADD");
        cmd.arg(&keys[j])
            .arg("MAXLEN")
            .arg("~")
            .arg(1000)
            .arg("*")
            .arg("e")
            .arg(event_json(&job_names[j], id));
        Box::pin(async move {
            let _: String = cmd.query_async(&mut conn).await?;
            Ok(())
        })
    });

    let mut meters = measure::meters(redis_pid.map(|pid| ("redis-server".to_owned(), pid)));
    let counts = paced(
        publish,
        jobs,
        args.rate,
        Duration::from_secs_f64(args.seconds),
    )
    .await?;
    let expected: u64 = (0..args.subscribers).map(|i| counts[i % jobs]).sum();
    let drain = recorder.drain(expected, Duration::from_secs(30)).await;
    let usage: Vec<_> = meters.iter_mut().map(|m| m.read()).collect();
    stop.cancel();
    for reader in readers {
        reader.await??;
    }
    let published: u64 = counts.iter().sum();
    let seen = recorder.counts();
    let delivered = seen.delivered;
    println!(
        "rate {:.0}/s asked: published {published} ({:.0}/s); expected {expected}, delivered {delivered}, lost {}, duplicated {}, out of order {}",
        args.rate,
        published as f64 / args.seconds,
        expected.saturating_sub(delivered),
        seen.duplicates,
        seen.out_of_order,
    );
    let delivered_per_s = delivered as f64 / (args.seconds + drain.as_secs_f64());
    println!(
        "  delivered messages/s: {delivered_per_s:.0} (the last arrived {:.2} s after publishing ended)",
        drain.as_secs_f64()
    );
    let latency_ms = Percentiles::of(&recorder.take()?);
    println!("  latency ms: {latency_ms}");
    print!("  ");
    measure::print_usage(&usage);
    Ok(Alone {
        latency_ms,
        delivered_per_s,
        lost: expected.saturating_sub(delivered),
    })
}

/// One subscriber: `XREAD BLOCK` on its stream from the start, until
/// `stop`.
async fn read(
    mut conn: MultiplexedConnection,
    key: String,
    who: usize,
    recorder: Arc<Recorder>,
    stop: CancellationToken,
) -> Result<()> {
    let mut position = "0-0".to_owned();
    let mut last = 0u64;
    loop {
        let cmd = measure::xread(std::slice::from_ref(&key), std::slice::from_ref(&position));
        let reply: Value = tokio::select! {
            () = stop.cancelled() => return Ok(()),
            reply = cmd.query_async(&mut conn) => reply?,
        };
        for (id, event) in entries(&reply) {
            position = id;
            let Ok(probe) = serde_json::from_slice::<Probe>(event) else {
                continue;
            };
            recorder.event(who, probe.id, last, probe.data.t_us);
            last = last.max(probe.id);
        }
    }
}

/// The (entry id, `e` field) pairs of an `XREAD` reply for one stream.
fn entries(reply: &Value) -> Vec<(String, &[u8])> {
    measure::xread_entries(reply)
        .into_iter()
        .filter_map(|entry| match entry.fields.get(1) {
            Some(Value::BulkString(event)) => Some((entry.id, event.as_slice())),
            _ => None,
        })
        .collect()
}
