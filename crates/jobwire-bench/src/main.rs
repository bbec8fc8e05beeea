//! `jobwire-bench`: jobwire's benchmark scenarios. Each scenario is one
//! subcommand, bounded in time, and prints a results table that can be pasted
//! into `docs/benchmarks.md`.

mod baseline;
mod cluster;
mod fanout;
mod floor;
mod gateway;
mod http;
mod idle;
mod measure;
mod publish;
mod subscriber;
mod worker;

use anyhow::Result;
use clap::{Parser, Subcommand};
use jobwire_testkit::{Persistence, RedisServer};

/// jobwire's hot paths allocate many small JSON maps; mimalloc makes those
/// allocations markedly cheaper than glibc's malloc (see docs/benchmarks.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(name = "jobwire-bench", about = "jobwire benchmark scenarios", version)]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Debug, Subcommand)]
enum Scenario {
    /// Publish throughput: RedisBackend and MemoryBackend against raw
    /// pipelined XADD on the same Redis, at several job concurrencies.
    Publish(publish::Args),
    /// End-to-end fan-out: subscribers over several `jobwire serve`
    /// processes, latency, loss and duplicates, server RSS and CPU. Also
    /// the throughput (`--step`) and resume-storm (`--storm-at`) scenarios.
    Fanout(fanout::Args),
    /// The HTTP publish path: POSTs/s, events/s and latency with N requests
    /// in flight, single events and arrays, against 1 and 2 gateways.
    Http(http::Args),
    /// jobwire against two floors at the same load, in one run: Redis alone
    /// (one blocked XREAD connection per subscriber) and a minimal fan-out
    /// server (one XREAD loop feeding WebSockets); prints the ratios.
    Baseline(baseline::Args),
    /// (Internal) one floor server process for `baseline`.
    #[command(hide = true)]
    Floor(floor::ServeArgs),
    /// Density: memory per idle, subscribed WebSocket on one `jobwire
    /// serve`, held by several load-generator processes.
    Idle(idle::Args),
    /// (Internal) holds WebSockets for `idle`, driven over stdin.
    #[command(hide = true)]
    Hold(idle::HoldArgs),
    /// Worker throughput: trivial jobs/s through the queue, and reporter
    /// events/s for one busy job.
    Worker(worker::Args),
    /// Redis Cluster against one node: publish throughput, how the work
    /// spreads over the masters, and the cost of WAIT 1.
    Cluster(cluster::Args),
}

/// A private Redis the benchmark started, stopped when dropped.
#[derive(Debug)]
enum OwnRedis {
    Server(RedisServer),
    /// Held only to stop it when dropped.
    Cluster {
        _cluster: jobwire_testkit::cluster::RedisCluster,
    },
}

impl OwnRedis {
    /// The server's process id (for CPU readings); none for a cluster.
    fn pid(&self) -> Option<u32> {
        match self {
            OwnRedis::Server(server) => server.pid(),
            OwnRedis::Cluster { .. } => None,
        }
    }
}

/// The Redis to measure against: `url` when given; `cluster` for a private
/// Redis Cluster of three masters; else a private redis-server. None keeps
/// data on disk. A private one runs while the returned handle lives.
fn redis(url: Option<&str>) -> Result<(Option<OwnRedis>, String)> {
    match url {
        Some("cluster") => {
            let cluster = jobwire_testkit::cluster::RedisCluster::start_with(0, Persistence::None)?;
            let url = cluster.url();
            Ok((Some(OwnRedis::Cluster { _cluster: cluster }), url))
        }
        Some(url) => Ok((None, url.to_owned())),
        None => {
            let server = RedisServer::start_private(Persistence::None)?;
            let url = server.url();
            Ok((Some(OwnRedis::Server(server)), url))
        }
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    match Cli::parse().scenario {
        Scenario::Publish(args) => publish::run(args).await,
        Scenario::Fanout(args) => fanout::run(args).await.map(drop),
        Scenario::Http(args) => http::run(args).await,
        Scenario::Baseline(args) => baseline::run(args).await,
        Scenario::Floor(args) => floor::serve(args).await,
        Scenario::Idle(args) => idle::run(args).await,
        Scenario::Hold(args) => idle::hold(args).await,
        Scenario::Worker(args) => worker::run(args).await,
        Scenario::Cluster(args) => cluster::run(args).await,
    }
}
