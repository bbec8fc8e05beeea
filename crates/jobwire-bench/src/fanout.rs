//! Fan-out: S WebSocket subscribers spread over N `jobwire serve` processes
//! on one Redis, each watching one of J jobs, while this process publishes
//! at R events/s through the real publish path (`RedisBackend::publish`).
//!
//! Each event carries its publish time in microseconds; subscribers record
//! the end-to-end latency in an HDR histogram and check that ids stay
//! consecutive. The report: connected, published, expected, delivered, lost,
//! duplicated or out of order, latency percentiles, delivered messages/s,
//! and RSS and CPU of each server process. Everything is bounded in time.

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use futures_util::StreamExt;
use hdrhistogram::Histogram;
use jobwire_core::{Backend, BackendConfig, EventType, JobId, NewEvent, NewJob};
use jobwire_redis::{RedisBackend, RedisConfig};
use jobwire_testkit::{free_port, Persistence, RedisServer};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

const SECRET: &str = "jobwire-bench-secret-0123456789";

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Gateway instances (`jobwire serve` processes).
    #[arg(long, default_value_t = 2)]
    instances: usize,
    /// WebSocket subscribers, spread evenly over the instances.
    #[arg(long, default_value_t = 1000)]
    subscribers: usize,
    /// Jobs; subscriber i watches job i % jobs.
    #[arg(long, default_value_t = 100)]
    jobs: usize,
    /// Events published per second, in total.
    #[arg(long, default_value_t = 5000)]
    rate: u64,
    /// Seconds of publishing.
    #[arg(long, default_value_t = 20.0)]
    seconds: f64,
    /// The `jobwire` binary (default: next to this one).
    #[arg(long)]
    jobwire: Option<std::path::PathBuf>,
    /// Resume storm: this many seconds into publishing, every subscriber
    /// drops its socket and reconnects at once, resuming with since/epoch.
    #[arg(long)]
    storm_at: Option<f64>,
}

pub(crate) struct Gateway {
    pub(crate) child: Child,
    pub(crate) port: u16,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The fields of an event the subscribers read.
#[derive(serde::Deserialize)]
struct Probe {
    id: u64,
    data: ProbeData,
}

#[derive(serde::Deserialize)]
struct ProbeData {
    t_us: Option<u64>,
}

/// What one subscriber saw.
#[derive(Default)]
struct Seen {
    delivered: u64,
    broken: u64,
    /// The close code, if the server closed this subscriber.
    closed: Option<u16>,
    /// After a resume storm: from dropping the socket to the first event
    /// published after the reconnect (so everything before it had arrived).
    caught_up: Option<Duration>,
    /// The reconnect was not answered with `resumed`.
    not_resumed: bool,
}

/// Starts `count` `jobwire serve` processes on `redis` and waits until
/// they are ready.
pub(crate) async fn start_gateways(
    binary: Option<std::path::PathBuf>,
    redis: &RedisServer,
    count: usize,
) -> Result<Vec<Gateway>> {
    let binary = match binary {
        Some(path) => path,
        None => std::env::current_exe()?.with_file_name("jobwire"),
    };
    if !binary.exists() {
        bail!(
            "{} not found: build it with `cargo build --release -p jobwire-cli`",
            binary.display()
        );
    }
    let mut gateways = Vec::new();
    for _ in 0..count.max(1) {
        let port = free_port()?;
        let child = Command::new(&binary)
            .arg("serve")
            .env("REDIS_URL", redis.url())
            .env("JOBWIRE_BIND", format!("127.0.0.1:{port}"))
            .env("JOBWIRE_JWT_SECRET", SECRET)
            .env("JOBWIRE_MAX_CONNECTIONS_PER_USER", "1000000")
            .env("JOBWIRE_MAX_CONNECTIONS", "1000000")
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        gateways.push(Gateway { child, port });
    }
    for g in &gateways {
        wait_ready(g.port).await?;
    }
    Ok(gateways)
}

/// A token the benchmark's subscribers present.
pub(crate) fn bench_token() -> Result<String> {
    Ok(jobwire_server::mint_token(
        SECRET,
        "bench",
        &[jobwire_server::Scope::JobsRead],
        Duration::from_secs(3600),
    )?)
}

pub(crate) async fn run(args: Args) -> Result<()> {
    let redis = RedisServer::start_private(Persistence::None)?;
    let gateways = start_gateways(args.jobwire, &redis, args.instances).await?;
    let publisher = RedisBackend::connect(RedisConfig {
        backend: BackendConfig::default(),
        ..RedisConfig::new(redis.url())
    })
    .await?;
    let mut jobs = Vec::new();
    for _ in 0..args.jobs.max(1) {
        let job = publisher
            .create_job(NewJob::new("bench", json!({}), "bench"))
            .await?;
        publisher
            .publish(
                &job.id,
                vec![NewEvent::new(EventType::JobStarted, json!({}))],
            )
            .await?;
        jobs.push(job.id);
    }
    let token = bench_token()?;
    let histogram = Arc::new(Mutex::new(Histogram::<u64>::new_with_bounds(
        1, 60_000_000, 3,
    )?));
    let mut subscribers = Vec::new();
    let connect_started = Instant::now();
    for i in 0..args.subscribers {
        let port = gateways[i % gateways.len()].port;
        let job = jobs[i % jobs.len()].clone();
        let url = format!("ws://127.0.0.1:{port}/ws/jobs/{job}");
        let mut request = url.into_client_request()?;
        request
            .headers_mut()
            .insert("authorization", format!("Bearer {token}").parse()?);
        let (mut ws, _) = tokio_tungstenite::connect_async_with_config(request, None, true).await?;
        let first = next_json(&mut ws).await?;
        let start = first["id"].as_u64().context("current_state id")?;
        let epoch = first["epoch"]
            .as_str()
            .context("current_state epoch")?
            .to_owned();
        subscribers.push((
            format!("ws://127.0.0.1:{port}/ws/jobs/{job}"),
            epoch,
            ws,
            start,
        ));
    }
    println!(
        "{} subscribers connected to {} instances in {:.1} s",
        subscribers.len(),
        gateways.len(),
        connect_started.elapsed().as_secs_f64()
    );
    let cpu_before: Vec<u64> = gateways.iter().map(|g| cpu_ticks(g.child.id())).collect();
    let duration = Duration::from_secs_f64(args.seconds);
    // Readers stop once everything expected arrived (or the drain timed out),
    // not at a fixed time: a backlog is late, not lost.
    let stop = tokio_util::sync::CancellationToken::new();
    let total_delivered = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut readers = Vec::new();
    let storm = tokio_util::sync::CancellationToken::new();
    for (url, epoch, mut ws, start) in subscribers {
        let histogram = Arc::clone(&histogram);
        let stop = stop.clone();
        let storm = storm.clone();
        let token = token.clone();
        let total_delivered = Arc::clone(&total_delivered);
        readers.push(tokio::spawn(async move {
            let mut seen = Seen::default();
            let mut last = start;
            let mut local = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).ok();
            let mut dropped_at: Option<(Instant, u64)> = None;
            let mut stormed = false;
            loop {
                let msg = tokio::select! {
                    () = stop.cancelled() => break,
                    () = storm.cancelled(), if !stormed => {
                        stormed = true;
                        dropped_at = Some((Instant::now(), now_us()));
                        drop(ws);
                        match resume(&url, &token, last, &epoch).await {
                            Ok((again, resumed)) => {
                                ws = again;
                                seen.not_resumed = !resumed;
                                continue;
                            }
                            Err(_) => break,
                        }
                    }
                    msg = ws.next() => match msg {
                        Some(Ok(msg)) => msg,
                        _ => break,
                    },
                };
                let text = match msg {
                    Message::Text(text) => text,
                    Message::Close(frame) => {
                        seen.closed = Some(frame.map_or(1005, |f| u16::from(f.code)));
                        break;
                    }
                    _ => continue,
                };
                // Only the two fields needed: this process shares the
                // machine with the servers it measures.
                let Ok(event) = serde_json::from_str::<Probe>(&text) else {
                    continue;
                };
                if event.id != last + 1 {
                    seen.broken += 1;
                }
                last = last.max(event.id);
                seen.delivered += 1;
                total_delivered.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if let (Some(t), Some(h)) = (event.data.t_us, local.as_mut()) {
                    let _ = h.record(now_us().saturating_sub(t).max(1));
                }
                if let (Some((at, at_us)), None, Some(t)) =
                    (dropped_at, seen.caught_up, event.data.t_us)
                {
                    if t > at_us {
                        seen.caught_up = Some(at.elapsed());
                    }
                }
            }
            if let (Some(h), Ok(mut all)) = (local, histogram.lock()) {
                let _ = all.add(h);
            }
            seen
        }));
    }
    if let Some(at) = args.storm_at {
        let storm = storm.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs_f64(at)).await;
            storm.cancel();
        });
    }
    let published_per_job = publish(&publisher, &jobs, args.rate, duration).await?;
    let expected: u64 = (0..args.subscribers)
        .map(|i| {
            published_per_job
                .get(&jobs[i % jobs.len()])
                .copied()
                .unwrap_or(0)
        })
        .sum();
    let drain_started = Instant::now();
    while total_delivered.load(std::sync::atomic::Ordering::Relaxed) < expected
        && drain_started.elapsed() < Duration::from_secs(30)
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let drain = drain_started.elapsed();
    stop.cancel();
    let mut delivered = 0;
    let mut broken = 0;
    let mut closes: HashMap<u16, u64> = HashMap::new();
    let mut caught_up = Vec::new();
    let mut not_resumed = 0;
    for reader in readers {
        let seen = reader.await?;
        delivered += seen.delivered;
        broken += seen.broken;
        caught_up.extend(seen.caught_up);
        not_resumed += u64::from(seen.not_resumed);
        if let Some(code) = seen.closed {
            *closes.entry(code).or_default() += 1;
        }
    }
    let cpu_after: Vec<u64> = gateways.iter().map(|g| cpu_ticks(g.child.id())).collect();
    let published: u64 = published_per_job.values().sum();
    let h = histogram
        .lock()
        .map_err(|_| anyhow::anyhow!("histogram lock"))?;
    let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    println!(
        "published {published} events in {:.0} s ({:.0}/s)",
        args.seconds,
        published as f64 / args.seconds
    );
    println!(
        "expected {expected}, delivered {delivered}, lost {}, out of order or duplicated {broken}",
        expected.saturating_sub(delivered)
    );
    println!(
        "delivered messages/s: {:.0} (the last arrived {:.2} s after publishing ended)",
        delivered as f64 / (args.seconds + drain.as_secs_f64()),
        drain.as_secs_f64()
    );
    if !closes.is_empty() {
        // A subscriber closed by the server (1013: it read too slowly) would
        // resume with `since` in real use; here it stops, so its remaining
        // events count as lost.
        println!("subscribers closed by the server, by close code: {closes:?}");
    }
    println!(
        "latency ms: p50 {:.2}  p90 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2}",
        ms(0.5),
        ms(0.9),
        ms(0.99),
        ms(0.999),
        h.max() as f64 / 1000.0
    );
    if args.storm_at.is_some() {
        caught_up.sort();
        let at = |q: f64| {
            caught_up
                .get(((caught_up.len() as f64 * q) as usize).min(caught_up.len().saturating_sub(1)))
                .map_or(f64::NAN, |d| d.as_secs_f64() * 1000.0)
        };
        println!(
            "resume storm: {} of {} subscribers caught up; ms from drop to caught up: p50 {:.0}  p99 {:.0}  max {:.0}; answered without resumed: {not_resumed}",
            caught_up.len(),
            args.subscribers,
            at(0.5),
            at(0.99),
            at(1.0)
        );
    }
    let ticks_per_s = 100.0;
    for (i, g) in gateways.iter().enumerate() {
        let cpu = (cpu_after[i].saturating_sub(cpu_before[i])) as f64 / ticks_per_s / args.seconds
            * 100.0;
        println!(
            "instance {i}: RSS {} KiB, CPU {cpu:.0}% of one core",
            rss_kib(g.child.id())
        );
    }
    Ok(())
}

/// Publishes `rate` events/s in total for `duration`: one task per job, as
/// one worker per job would, each stamping an event just before publishing
/// it. A job whose publishes fall behind catches up in a burst, so the
/// achieved rate is reported, not assumed. Returns events per job.
async fn publish(
    backend: &RedisBackend,
    jobs: &[JobId],
    rate: u64,
    duration: Duration,
) -> Result<HashMap<JobId, u64>> {
    let per_job = rate.max(1) as f64 / jobs.len() as f64;
    let period = Duration::from_secs_f64(1.0 / per_job);
    let mut tasks = tokio::task::JoinSet::new();
    for (i, job) in jobs.iter().cloned().enumerate() {
        let backend = backend.clone();
        tasks.spawn(async move {
            // Spread the jobs' ticks over one period.
            let offset = period
                .mul_f64(i as f64 / per_job.max(1.0) / 1.0)
                .min(period);
            tokio::time::sleep(offset).await;
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            let end = Instant::now() + duration;
            let mut sent = 0u64;
            while Instant::now() < end {
                tick.tick().await;
                let event = NewEvent::new(EventType::Progress, json!({"t_us": now_us()}));
                backend.publish(&job, vec![event]).await?;
                sent += 1;
            }
            anyhow::Ok((job, sent))
        });
    }
    let mut counts = HashMap::new();
    while let Some(done) = tasks.join_next().await {
        let (job, sent) = done??;
        counts.insert(job, sent);
    }
    Ok(counts)
}

/// Reconnects a subscriber after `since`; `true` when the server answered
/// `resumed` (nothing to re-read from scratch).
async fn resume(
    url: &str,
    token: &str,
    since: u64,
    epoch: &str,
) -> Result<(
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
    bool,
)> {
    let mut request = format!("{url}?since={since}&epoch={epoch}").into_client_request()?;
    request
        .headers_mut()
        .insert("authorization", format!("Bearer {token}").parse()?);
    let (mut ws, _) = tokio_tungstenite::connect_async_with_config(request, None, true).await?;
    let first = next_json(&mut ws).await?;
    Ok((ws, first["type"] == "resumed"))
}

async fn next_json(
    ws: &mut tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
) -> Result<Value> {
    loop {
        match tokio::time::timeout(Duration::from_secs(10), ws.next()).await? {
            Some(Ok(Message::Text(t))) => return Ok(serde_json::from_str(&t)?),
            Some(Ok(_)) => {}
            other => bail!("subscriber closed: {other:?}"),
        }
    }
}

async fn wait_ready(port: u16) -> Result<()> {
    for _ in 0..200 {
        if let Ok(r) = reqwest::get(format!("http://127.0.0.1:{port}/readyz")).await {
            if r.status().is_success() {
                return Ok(());
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("gateway on port {port} never became ready")
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

pub(crate) fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// utime + stime of a process, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            let rest = s.rsplit_once(')')?.1;
            let fields: Vec<&str> = rest.split_whitespace().collect();
            Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
        })
        .unwrap_or(0)
}
