//! The HTTP publish path (`POST /api/jobs/{id}/events`), the path of every
//! worker not written in Rust: POSTs/s, events/s and POST latency, with N
//! requests in flight over keep-alive connections, single events and
//! arrays, against 1 and 2 gateways in one run.
//!
//! Each in-flight request slot owns one external job (as one worker drives
//! one job) and publishes fenced events (`attempt` 1, `n` counting), spread
//! round-robin over the gateways. Latency is from sending a request to its
//! whole answer, in an HDR histogram; CPU is read from `/proc` for the load
//! generator, every gateway and redis-server.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use hdrhistogram::Histogram;
use jobwire_server::Scope;
use serde_json::{json, Value};

use crate::gateway;
use crate::measure::{meters, print_usage, Percentiles};

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Gateway counts to measure, one after the other.
    #[arg(long, value_delimiter = ',', default_value = "1,2")]
    gateways: Vec<usize>,
    /// Events per POST: 1 is a single event object, more an array.
    #[arg(long, value_delimiter = ',', default_value = "1,100")]
    batches: Vec<usize>,
    /// Requests in flight (one job each).
    #[arg(long, default_value_t = 32)]
    in_flight: usize,
    /// Seconds per measurement.
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    /// The `jobwire` binary (default: next to this one).
    #[arg(long)]
    jobwire: Option<std::path::PathBuf>,
    /// Worker threads of each gateway (TOKIO_WORKER_THREADS).
    #[arg(long)]
    gateway_threads: Option<usize>,
}

/// One cell of the table.
struct Cell {
    posts: u64,
    events: u64,
    seconds: f64,
    latency: Percentiles,
    errors: u64,
}

pub(crate) async fn run(args: Args) -> Result<()> {
    println!(
        "HTTP publish: {} requests in flight over keep-alive, {:.0} s per cell, fenced events",
        args.in_flight, args.seconds
    );
    println!(
        "| gateways | events/POST | POSTs/s | events/s | p50 ms | p90 ms | p99 ms | p99.9 ms | errors |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let mut usage_lines = Vec::new();
    for &count in &args.gateways {
        let redis =
            jobwire_testkit::RedisServer::start_private(jobwire_testkit::Persistence::None)?;
        let gateways = gateway::start(
            args.jobwire.clone(),
            &redis.url(),
            count,
            args.gateway_threads,
        )
        .await?;
        let urls: Vec<String> = gateways
            .iter()
            .map(|g| format!("http://{}", g.addr()))
            .collect();
        for &batch in &args.batches {
            let mut procs: Vec<(String, u32)> = gateways
                .iter()
                .enumerate()
                .map(|(i, g)| (format!("gateway {i}"), g.child.id()))
                .collect();
            if let Some(pid) = redis.pid() {
                procs.push(("redis".to_owned(), pid));
            }
            let mut meters = meters(procs);
            let cell = measure(&urls, batch, args.in_flight, args.seconds).await?;
            let usage: Vec<_> = meters.iter_mut().map(|m| m.read()).collect();
            println!(
                "| {count} | {batch} | {:.0} | {:.0} | {:.2} | {:.2} | {:.2} | {:.2} | {} |",
                cell.posts as f64 / cell.seconds,
                cell.events as f64 / cell.seconds,
                cell.latency.p50,
                cell.latency.p90,
                cell.latency.p99,
                cell.latency.p999,
                cell.errors
            );
            usage_lines.push((count, batch, usage));
        }
    }
    for (count, batch, usage) in usage_lines {
        print!("{count} gateway(s), {batch} events/POST: ");
        print_usage(&usage);
    }
    Ok(())
}

async fn measure(urls: &[String], batch: usize, in_flight: usize, seconds: f64) -> Result<Cell> {
    let token = gateway::token(&[Scope::JobsWrite, Scope::Worker])?;
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(in_flight)
        .build()?;
    // One external job per slot, started.
    let mut jobs = Vec::with_capacity(in_flight);
    for slot in 0..in_flight {
        let url = &urls[slot % urls.len()];
        let job: Value = client
            .post(format!("{url}/api/jobs"))
            .bearer_auth(&token)
            .json(&json!({"kind": "bench.http", "external": true}))
            .send()
            .await?
            .error_for_status()
            .context("creating an external job")?
            .json()
            .await?;
        let id = job["id"].as_str().context("job id")?.to_owned();
        client
            .post(format!("{url}/api/jobs/{id}/events"))
            .bearer_auth(&token)
            .json(&json!({"type": "job_started", "data": {}}))
            .send()
            .await?
            .error_for_status()?;
        jobs.push(id);
    }
    let token = Arc::new(token);
    let end = Instant::now() + Duration::from_secs_f64(seconds);
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for (slot, id) in jobs.into_iter().enumerate() {
        let client = client.clone();
        let url = format!("{}/api/jobs/{id}/events", urls[slot % urls.len()]);
        let token = Arc::clone(&token);
        tasks.spawn(async move {
            let mut latency = Histogram::<u64>::new(3)?;
            let (mut posts, mut errors, mut n) = (0u64, 0u64, 0u64);
            while Instant::now() < end {
                let body = if batch == 1 {
                    n += 1;
                    json!({"type": "progress", "data": {"current": n}, "attempt": 1, "n": n})
                } else {
                    let events: Vec<Value> = (0..batch)
                        .map(|_| {
                            n += 1;
                            json!({"type": "progress", "data": {"current": n}, "attempt": 1, "n": n})
                        })
                        .collect();
                    Value::Array(events)
                };
                let sent = Instant::now();
                let ok = match client
                    .post(&url)
                    .bearer_auth(token.as_str())
                    .json(&body)
                    .send()
                    .await
                {
                    Ok(response) => {
                        let ok = response.status().is_success();
                        let _ = response.bytes().await;
                        ok
                    }
                    Err(_) => false,
                };
                latency.record(sent.elapsed().as_micros() as u64)?;
                if ok {
                    posts += 1;
                } else {
                    errors += 1;
                }
            }
            anyhow::Ok((posts, errors, latency))
        });
    }
    let mut total = Histogram::<u64>::new(3)?;
    let (mut posts, mut errors) = (0u64, 0u64);
    while let Some(done) = tasks.join_next().await {
        let (p, e, h) = done??;
        posts += p;
        errors += e;
        total.add(h)?;
    }
    if posts == 0 {
        bail!("no POST succeeded ({errors} errors)");
    }
    Ok(Cell {
        posts,
        events: posts * batch as u64,
        seconds: started.elapsed().as_secs_f64(),
        latency: Percentiles::of(&total),
        errors,
    })
}
