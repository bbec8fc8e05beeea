//! Redis Cluster against one node, in one run: `RedisBackend` publish
//! throughput on one `redis-server` and on a cluster of three masters (each
//! with a replica; no persistence on either), how the publish scripts
//! spread over the masters (`INFO commandstats`), and what
//! `JOBWIRE_REDIS_WAIT_REPLICAS=1` costs on the cluster. All on this
//! machine's cores: the cluster cannot be faster here, the point is the
//! spread and the ratios.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use jobwire_core::BackendConfig;
use jobwire_redis::{RedisBackend, RedisConfig};
use jobwire_testkit::cluster::RedisCluster;
use jobwire_testkit::{Persistence, RedisServer};

use crate::publish::{backend_rate, median};

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Job concurrencies to measure.
    #[arg(long, value_delimiter = ',', default_value = "16,256")]
    jobs: Vec<usize>,
    /// Events per publish call (the WAIT cost is also measured with 1).
    #[arg(long, default_value_t = 32)]
    batch: usize,
    /// Seconds per measurement.
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    /// Rounds per cell (alternating; the median is reported).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
}

pub(crate) async fn run(args: Args) -> Result<()> {
    let single = RedisServer::start_private(Persistence::None)?;
    let cluster = tokio::task::block_in_place(|| RedisCluster::start_with(1, Persistence::None))?;
    let masters: Vec<u16> = cluster
        .topology()?
        .into_iter()
        .filter(|n| n.master)
        .map(|n| n.port)
        .collect();
    let duration = Duration::from_secs_f64(args.seconds);
    println!(
        "Redis Cluster (3 masters + 3 replicas) against one redis-server, no persistence, \
         median of {} alternating rounds of {:.0} s",
        args.rounds, args.seconds
    );
    println!(
        "| jobs | batch | one node ev/s | cluster ev/s | cluster/one | cluster + WAIT 1 ev/s | WAIT 1 / none |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|");
    let mut spread = vec![0u64; masters.len()];
    for &jobs in &args.jobs {
        for batch in [args.batch, 1] {
            let (mut one, mut many, mut waited) = (Vec::new(), Vec::new(), Vec::new());
            for _ in 0..args.rounds.max(1) {
                one.push(rate(&single.url(), 0, jobs, batch, duration).await?);
                let before = evalsha_calls(&masters).await?;
                many.push(rate(&cluster.url(), 0, jobs, batch, duration).await?);
                let after = evalsha_calls(&masters).await?;
                for (total, (a, b)) in spread.iter_mut().zip(after.iter().zip(&before)) {
                    *total += a - b;
                }
                waited.push(rate(&cluster.url(), 1, jobs, batch, duration).await?);
            }
            let (one, many, waited) = (median(one), median(many), median(waited));
            println!(
                "| {jobs} | {batch} | {one:.0} | {many:.0} | {:.2} | {waited:.0} | {:.2} |",
                many / one,
                waited / many
            );
        }
    }
    let total: u64 = spread.iter().sum();
    println!();
    println!("publish scripts run per master (EVALSHA calls, WAIT-less cluster rounds):");
    println!("| master | calls | share |");
    println!("|---|---:|---:|");
    for (port, calls) in masters.iter().zip(&spread) {
        println!(
            "| {port} | {calls} | {:.1}% |",
            *calls as f64 / total.max(1) as f64 * 100.0
        );
    }
    Ok(())
}

/// Publish events/s through a fresh `RedisBackend` (under a fresh prefix).
async fn rate(url: &str, wait: u32, jobs: usize, batch: usize, duration: Duration) -> Result<f64> {
    let backend = RedisBackend::connect(RedisConfig {
        key_prefix: format!("jwbench-{:08x}", rand::random::<u32>()),
        wait_replicas: wait,
        backend: BackendConfig::default(),
        ..RedisConfig::new(url)
    })
    .await?;
    backend_rate(&Arc::new(backend), jobs, batch, duration).await
}

/// `cmdstat_evalsha` calls of each master, from `INFO commandstats`.
async fn evalsha_calls(masters: &[u16]) -> Result<Vec<u64>> {
    let mut calls = Vec::with_capacity(masters.len());
    for port in masters {
        let client = redis::Client::open(format!("redis://127.0.0.1:{port}"))?;
        let mut conn = client.get_multiplexed_async_connection().await?;
        let info: String = redis::cmd("INFO")
            .arg("commandstats")
            .query_async(&mut conn)
            .await?;
        let n = info
            .lines()
            .find_map(|l| l.strip_prefix("cmdstat_evalsha:calls="))
            .and_then(|rest| rest.split(',').next())
            .map_or(Ok(0), |n| n.parse::<u64>())
            .context("cmdstat_evalsha")?;
        calls.push(n);
    }
    Ok(calls)
}
