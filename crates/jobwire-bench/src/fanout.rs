//! Fan-out: S subscribers (WebSocket, SSE or a mix) spread over N
//! `jobwire serve` processes on one Redis, each watching one of J jobs,
//! while this process publishes at R events/s through a real publish path:
//! the worker runtime's reporter (a `Worker` runs one handler per job) or
//! the HTTP publish endpoint of the gateways.
//!
//! Each event carries its publish time in µs; subscribers record the
//! end-to-end latency and check that ids stay consecutive. The report:
//! connected, published, expected, delivered, lost, duplicated or out of
//! order, latency percentiles, delivered messages/s, and CPU and RSS of this
//! process, each gateway and redis-server.
//!
//! Three scenarios share this code: one rate (latency), a rising rate until
//! the delivery breaks down (`--step`, throughput), and a mass reconnect
//! mid-stream (`--storm-at`, resume storm). Everything is bounded in time.

use std::collections::HashMap;
use std::io::Write as _;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use jobwire_core::{Backend, BackendConfig, JobId, JobStore, NewJob};
use jobwire_redis::{RedisBackend, RedisConfig};
use jobwire_server::Scope;
use jobwire_worker::{handler_fn, JobError, JobOutcome, Worker, WorkerConfig};
use serde_json::json;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::gateway::{self, Gateway};
use crate::measure::{self, now_us, paced, Percentiles, PublishFn, Recorder, Usage};
use crate::subscriber::{Seen, Subscriber, Target, Transport};

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Use this Redis instead of starting a private redis-server (`cluster`:
    /// start a private Redis Cluster of three masters).
    #[arg(long, env = "JOBWIRE_BENCH_REDIS_URL")]
    redis_url: Option<String>,
    /// Gateway instances (`jobwire serve` processes).
    #[arg(long, default_value_t = 2)]
    instances: usize,
    /// Worker threads of each gateway (default: one per core).
    #[arg(long)]
    gateway_threads: Option<usize>,
    /// Subscribers, spread evenly over the instances.
    #[arg(long, default_value_t = 1000)]
    subscribers: usize,
    /// Percentage of the subscribers that use SSE instead of a WebSocket.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=100))]
    sse_percent: u8,
    /// Jobs; subscriber i watches job i % jobs.
    #[arg(long, default_value_t = 100)]
    jobs: usize,
    /// Events published per second, in total (the first rate with --step).
    #[arg(long, default_value_t = 5000.0)]
    rate: f64,
    /// Seconds of publishing (default 20, or 5 per rate with --step).
    #[arg(long)]
    seconds: Option<f64>,
    /// How events are published.
    #[arg(long, value_enum, default_value_t = PublishPath::Reporter)]
    publish: PublishPath,
    /// Throughput: raise the rate by --factor after each round until events
    /// are lost, p99 exceeds 1 s, the publisher falls behind (under 90% of
    /// the rate asked), or --max-steps rounds ran.
    #[arg(long)]
    step: bool,
    #[arg(long, default_value_t = 1.5)]
    factor: f64,
    #[arg(long, default_value_t = 8)]
    max_steps: usize,
    /// Append one CSV row per round to this file (for the plot).
    #[arg(long)]
    csv: Option<std::path::PathBuf>,
    /// Resume storm: this many seconds into publishing, every subscriber
    /// drops its connection and reconnects at once, resuming where it was.
    #[arg(long)]
    storm_at: Option<f64>,
    /// The `jobwire` binary (default: next to this one).
    #[arg(long)]
    jobwire: Option<std::path::PathBuf>,
}

impl Args {
    /// One round at `rate`, WebSocket subscribers, published through the
    /// reporter: the load `baseline` puts on jobwire and on the floor.
    pub(crate) fn one_round(
        instances: usize,
        subscribers: usize,
        jobs: usize,
        rate: f64,
        seconds: f64,
        jobwire: Option<std::path::PathBuf>,
    ) -> Args {
        Args {
            redis_url: None,
            instances,
            gateway_threads: None,
            subscribers,
            sse_percent: 0,
            jobs,
            rate,
            seconds: Some(seconds),
            publish: PublishPath::Reporter,
            step: false,
            factor: 1.5,
            max_steps: 1,
            csv: None,
            storm_at: None,
            jobwire,
        }
    }
}

/// The publish path under test.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum PublishPath {
    /// A jobwire `Worker` runs every job; its handlers report through the
    /// reporter (batched, fenced publishes).
    Reporter,
    /// `POST /api/jobs/{id}/events` on the gateways, one event per request.
    Http,
}

/// One round at one rate.
#[derive(Debug)]
pub(crate) struct Round {
    rate: f64,
    achieved: f64,
    published: u64,
    expected: u64,
    delivered: u64,
    pub(crate) lost: u64,
    pub(crate) duplicates: u64,
    pub(crate) out_of_order: u64,
    pub(crate) delivered_per_s: f64,
    drain_s: f64,
    pub(crate) latency_ms: Percentiles,
    /// Share of deliveries within 1, 5 and 10 ms of publishing: as the
    /// subscribers received them, and as the gateways wrote them (from
    /// their `/metrics`), which tells the gateways' part from the rest.
    client_within: [f64; 3],
    /// None when the servers have no jobwire `/metrics`.
    gateway_within: Option<[f64; 3]>,
    pub(crate) processes: Vec<Usage>,
}

const WITHIN_MS: [f64; 3] = [1.0, 5.0, 10.0];

impl Round {
    fn clean(&self) -> bool {
        self.lost == 0
            && self.duplicates == 0
            && self.out_of_order == 0
            && self.latency_ms.p99 <= 1000.0
            && self.achieved >= 0.9 * self.rate
    }
}

/// Runs the scenario against `jobwire serve` processes; returns the last
/// clean round (the highest clean rate with `--step`).
pub(crate) async fn run(args: Args) -> Result<Option<Round>> {
    if args.storm_at.is_some() && args.step {
        bail!("--storm-at and --step are separate scenarios; pick one");
    }
    let (own_redis, redis_url) = crate::redis(args.redis_url.as_deref())?;
    let gateways = gateway::start(
        args.jobwire.clone(),
        &redis_url,
        args.instances,
        args.gateway_threads,
    )
    .await?;
    let backend = Arc::new(
        RedisBackend::connect(RedisConfig {
            backend: BackendConfig::default(),
            ..RedisConfig::new(redis_url.as_str())
        })
        .await?,
    );
    let mut jobs = Vec::new();
    for _ in 0..args.jobs.max(1) {
        let job = backend
            .create_job(NewJob::new("bench", json!({}), "bench"))
            .await?;
        jobs.push(job.id);
    }
    let stop_worker = CancellationToken::new();
    let publish = match args.publish {
        PublishPath::Reporter => {
            reporter_path(Arc::clone(&backend), &jobs, stop_worker.clone()).await?
        }
        PublishPath::Http => http_path(&gateways, &jobs)?,
    };

    let mut processes: Vec<(String, u32)> = gateways
        .iter()
        .enumerate()
        .map(|(i, g)| (format!("gateway {i}"), g.child.id()))
        .collect();
    processes.extend(
        own_redis
            .as_ref()
            .and_then(crate::OwnRedis::pid)
            .map(|pid| ("redis-server".to_owned(), pid)),
    );
    let under = Under {
        addrs: gateways.iter().map(Gateway::addr).collect(),
        processes,
        jobs: jobs.iter().map(ToString::to_string).collect(),
        publish,
        path: format!("the {:?} path", args.publish),
        metrics: true,
    };
    let best = measure(&args, under).await;
    stop_worker.cancel();
    best
}

/// What a measurement runs against: jobwire's gateways, or the floor
/// server of `jobwire-bench baseline`.
pub(crate) struct Under {
    /// `127.0.0.1:port` of each server; subscriber i connects to i % N.
    pub(crate) addrs: Vec<String>,
    /// The server processes to meter (and redis-server), by name.
    pub(crate) processes: Vec<(String, u32)>,
    /// The jobs; subscriber i watches i % J.
    pub(crate) jobs: Vec<String>,
    pub(crate) publish: PublishFn,
    /// How `publish` publishes, for the report.
    pub(crate) path: String,
    /// The servers serve jobwire's `/metrics` (delivery latency as written).
    pub(crate) metrics: bool,
}

/// Connects the subscribers, publishes round after round, and prints each.
pub(crate) async fn measure(args: &Args, under: Under) -> Result<Option<Round>> {
    let Under {
        addrs,
        processes,
        jobs,
        publish,
        path,
        metrics,
    } = under;
    let scraped: &[String] = if metrics { &addrs } else { &[] };
    let token = gateway::token(&[Scope::JobsRead])?;
    let connect_started = std::time::Instant::now();
    let mut subscribers = Vec::new();
    for i in 0..args.subscribers {
        // Spread evenly: subscriber i is SSE when the running share of SSE
        // subscribers steps up at i.
        let share = |n: usize| n * usize::from(args.sse_percent) / 100;
        let transport = if share(i + 1) > share(i) {
            Transport::Sse
        } else {
            Transport::Ws
        };
        let target = Target {
            addr: addrs[i % addrs.len()].clone(),
            job: jobs[i % jobs.len()].clone(),
            transport,
        };
        subscribers.push(
            Subscriber::open(target, &token)
                .await
                .with_context(|| format!("subscriber {i}"))?,
        );
    }
    let sse = subscribers.len() * usize::from(args.sse_percent) / 100;
    println!(
        "{} subscribers ({} WebSocket, {sse} SSE) connected to {} instances in {:.1} s; publishing through {path}",
        subscribers.len(),
        subscribers.len() - sse,
        addrs.len(),
        connect_started.elapsed().as_secs_f64(),
    );

    let recorder = Recorder::new()?;
    let stop = CancellationToken::new();
    let storm = CancellationToken::new();
    let mut readers = Vec::new();
    for (who, subscriber) in subscribers.into_iter().enumerate() {
        readers.push(tokio::spawn(subscriber.run(
            who,
            token.clone(),
            Arc::clone(&recorder),
            stop.clone(),
            storm.clone(),
        )));
    }
    if let Some(at) = args.storm_at {
        let storm = storm.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs_f64(at)).await;
            storm.cancel();
        });
    }

    let mut meters = measure::meters(processes);
    let mut csv = match &args.csv {
        Some(path) => Some(csv_file(path)?),
        None => None,
    };
    let seconds = args.seconds.unwrap_or(if args.step { 5.0 } else { 20.0 });
    let duration = Duration::from_secs_f64(seconds);
    let patience = Duration::from_secs(if args.step { 10 } else { 30 });
    let steps = if args.step { args.max_steps.max(1) } else { 1 };
    let mut expected_so_far = 0;
    let mut rate = args.rate;
    let mut best: Option<Round> = None;
    let mut written_before = gateway_buckets(scraped).await;
    for _ in 0..steps {
        for meter in &mut meters {
            meter.read();
        }
        let before = recorder.counts();
        let counts = paced(Arc::clone(&publish), jobs.len(), rate, duration).await?;
        let expected: u64 = (0..args.subscribers).map(|i| counts[i % jobs.len()]).sum();
        expected_so_far += expected;
        let drain = recorder.drain(expected_so_far, patience).await;
        let processes: Vec<Usage> = meters.iter_mut().map(|m| m.read()).collect();
        let seen = recorder.counts() - before;
        let delivered = seen.delivered;
        let histogram = recorder.take()?;
        let client_within = WITHIN_MS.map(|ms| {
            histogram.count_between(0, (ms * 1000.0) as u64) as f64 / histogram.len().max(1) as f64
        });
        let written = gateway_buckets(scraped).await;
        let gateway_within = metrics.then(|| {
            std::array::from_fn(|i| {
                let total = written.total - written_before.total;
                (written.within[i] - written_before.within[i]) as f64 / total.max(1) as f64
            })
        });
        written_before = written;
        let published: u64 = counts.iter().sum();
        let round = Round {
            rate,
            achieved: published as f64 / seconds,
            published,
            expected,
            delivered,
            lost: expected.saturating_sub(delivered),
            duplicates: seen.duplicates,
            out_of_order: seen.out_of_order,
            delivered_per_s: delivered as f64 / (seconds + drain.as_secs_f64()),
            drain_s: drain.as_secs_f64(),
            latency_ms: Percentiles::of(&histogram),
            client_within,
            gateway_within,
            processes,
        };
        print_round(&round);
        if let Some(file) = csv.as_mut() {
            write_csv(file, &round)?;
        }
        let clean = round.clean();
        // A single round is returned clean or not (the caller compares it);
        // a step returns its highest clean round.
        if clean || !args.step {
            best = Some(round);
        }
        if !clean {
            break;
        }
        rate *= args.factor;
    }
    stop.cancel();
    let mut closes: HashMap<u16, u64> = HashMap::new();
    let mut caught_up = Vec::new();
    let mut not_resumed = 0;
    for reader in readers {
        let seen: Seen = reader.await?;
        caught_up.extend(seen.caught_up);
        not_resumed += u64::from(seen.not_resumed);
        if let Some(code) = seen.closed {
            *closes.entry(code).or_default() += 1;
        }
    }
    if !closes.is_empty() {
        // A subscriber closed by the server (1013: it read too slowly) would
        // resume in real use; here it stops, so its later events count as lost.
        println!("subscribers closed by the server, by close code: {closes:?}");
    }
    if args.storm_at.is_some() {
        print_storm(caught_up, args.subscribers, not_resumed);
    }
    if args.step {
        match &best {
            Some(best) => println!(
                "highest clean rate: {:.0} events/s asked ({:.0} achieved), {:.0} delivered messages/s, p99 {:.2} ms",
                best.rate, best.achieved, best.delivered_per_s, best.latency_ms.p99
            ),
            None => println!("no clean round: even the first rate lost events or was too slow"),
        }
    }
    Ok(best)
}

/// Runs every job in a jobwire `Worker` whose handler reports one event per
/// tick it is sent.
async fn reporter_path(
    backend: Arc<RedisBackend>,
    jobs: &[JobId],
    stop: CancellationToken,
) -> Result<PublishFn> {
    let mut senders = Vec::new();
    let mut inboxes = HashMap::new();
    for job in jobs {
        let (tx, rx) = mpsc::channel::<()>(4096);
        senders.push(tx);
        inboxes.insert(job.clone(), rx);
    }
    let inboxes = Arc::new(Mutex::new(inboxes));
    let (started_tx, mut started) = mpsc::unbounded_channel::<()>();
    let handler = handler_fn(move |ctx| {
        let inbox = inboxes.lock().ok().and_then(|mut i| i.remove(ctx.id()));
        let started = started_tx.clone();
        async move {
            let Some(mut ticks) = inbox else {
                return Err(JobError::msg("not a job of this benchmark run"));
            };
            let _ = started.send(());
            while ticks.recv().await.is_some() {
                ctx.reporter()
                    .custom("bench.tick", json!({"t_us": now_us()}))
                    .await?;
            }
            Ok(JobOutcome::done())
        }
    });
    let backend: Arc<dyn Backend> = backend;
    let worker = Worker::builder(backend)
        .config(WorkerConfig {
            concurrency: jobs.len(),
            ..WorkerConfig::default()
        })
        .handler("bench", handler)
        .build()?;
    tokio::spawn(async move { worker.run(stop).await });
    for _ in jobs {
        tokio::time::timeout(Duration::from_secs(30), started.recv())
            .await
            .context("the worker did not start every job within 30 s")?;
    }
    let senders = Arc::new(senders);
    Ok(Arc::new(move |j| {
        let senders = Arc::clone(&senders);
        Box::pin(async move {
            senders[j]
                .send(())
                .await
                .map_err(|_| anyhow::anyhow!("job {j}'s handler ended"))
        })
    }))
}

/// Publishes with `POST /api/jobs/{id}/events`, job j on gateway j % N.
fn http_path(gateways: &[Gateway], jobs: &[JobId]) -> Result<PublishFn> {
    let token = gateway::token(&[Scope::Worker])?;
    let client = reqwest::Client::builder().tcp_nodelay(true).build()?;
    let urls: Arc<Vec<String>> = Arc::new(
        jobs.iter()
            .enumerate()
            .map(|(j, job)| {
                format!(
                    "http://{}/api/jobs/{job}/events",
                    gateways[j % gateways.len()].addr()
                )
            })
            .collect(),
    );
    Ok(Arc::new(move |j| {
        let request = client
            .post(&urls[j])
            .bearer_auth(&token)
            .json(&json!({"type": "bench.tick", "data": {"t_us": now_us()}}));
        Box::pin(async move {
            request.send().await?.error_for_status()?;
            Ok(())
        })
    }))
}

/// Deliveries the gateways wrote, in all and within each of [`WITHIN_MS`]
/// of publishing (cumulative counts of `jobwire_delivery_latency_seconds`).
#[derive(Clone, Copy, Default)]
struct Written {
    total: u64,
    within: [u64; 3],
}

async fn gateway_buckets(addrs: &[String]) -> Written {
    let mut written = Written::default();
    for addr in addrs {
        let Ok(response) = reqwest::get(format!("http://{addr}/metrics")).await else {
            continue;
        };
        let Ok(text) = response.text().await else {
            continue;
        };
        for line in text.lines() {
            let Some(rest) = line.strip_prefix("jobwire_delivery_latency_seconds_") else {
                continue;
            };
            let Some((name, value)) = rest.rsplit_once(' ') else {
                continue;
            };
            let Ok(value) = value.parse::<u64>() else {
                continue;
            };
            if name == "count" {
                written.total += value;
            }
            for (i, ms) in WITHIN_MS.iter().enumerate() {
                if name == format!("bucket{{le=\"{}\"}}", ms / 1000.0) {
                    written.within[i] += value;
                }
            }
        }
    }
    written
}

fn print_round(round: &Round) {
    println!(
        "rate {:.0}/s asked: published {} ({:.0}/s); expected {}, delivered {}, lost {}, duplicated {}, out of order {}",
        round.rate, round.published, round.achieved, round.expected, round.delivered, round.lost, round.duplicates, round.out_of_order
    );
    println!(
        "  delivered messages/s: {:.0} (the last arrived {:.2} s after publishing ended)",
        round.delivered_per_s, round.drain_s
    );
    println!("  latency ms: {}", round.latency_ms);
    let shares = |w: &[f64; 3]| {
        WITHIN_MS
            .iter()
            .zip(w)
            .map(|(ms, share)| format!("{:.1}% ≤ {ms} ms", share * 100.0))
            .collect::<Vec<_>>()
            .join(", ")
    };
    println!(
        "  received by subscribers: {}",
        shares(&round.client_within)
    );
    if let Some(written) = &round.gateway_within {
        println!("  written by gateways:     {}", shares(written));
    }
    print!("  ");
    measure::print_usage(&round.processes);
}

fn print_storm(mut caught_up: Vec<Duration>, subscribers: usize, not_resumed: u64) {
    caught_up.sort();
    let at = |q: f64| {
        caught_up
            .get(((caught_up.len() as f64 * q) as usize).min(caught_up.len().saturating_sub(1)))
            .map_or(f64::NAN, |d| d.as_secs_f64() * 1000.0)
    };
    println!(
        "resume storm: {} of {subscribers} subscribers caught up; ms from drop to caught up: p50 {:.0}  p99 {:.0}  max {:.0}; answered without resumed: {not_resumed}",
        caught_up.len(),
        at(0.5),
        at(0.99),
        at(1.0)
    );
}

fn csv_file(path: &std::path::Path) -> Result<std::fs::File> {
    let new = !path.exists();
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    if new {
        writeln!(
            file,
            "rate,achieved,delivered_per_s,p50_ms,p90_ms,p99_ms,p999_ms,max_ms,lost,duplicates,out_of_order"
        )?;
    }
    Ok(file)
}

fn write_csv(file: &mut std::fs::File, r: &Round) -> Result<()> {
    let l = &r.latency_ms;
    writeln!(
        file,
        "{:.0},{:.0},{:.0},{:.3},{:.3},{:.3},{:.3},{:.3},{},{},{}",
        r.rate,
        r.achieved,
        r.delivered_per_s,
        l.p50,
        l.p90,
        l.p99,
        l.p999,
        l.max,
        r.lost,
        r.duplicates,
        r.out_of_order
    )?;
    Ok(())
}
