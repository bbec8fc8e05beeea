//! `jobwire-bench`: jobwire's benchmark scenarios. Each scenario is one
//! subcommand, bounded in time, and prints a results table that can be pasted
//! into `docs/benchmarks.md`.

mod fanout;
mod idle;
mod publish;
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
    /// processes, latency, loss and duplicates, server RSS and CPU.
    Fanout(fanout::Args),
    /// Memory per idle, subscribed WebSocket on one `jobwire serve`.
    Idle(idle::Args),
    /// Worker throughput: trivial jobs/s through the queue, and reporter
    /// events/s for one busy job.
    Worker(worker::Args),
}

/// The Redis to measure against: `url` when given, else a private
/// redis-server (kept running while the returned handle lives).
fn redis(url: Option<&str>) -> Result<(Option<RedisServer>, String)> {
    match url {
        Some(url) => Ok((None, url.to_owned())),
        None => {
            let server = RedisServer::start_private(Persistence::None)?;
            let url = server.url();
            Ok((Some(server), url))
        }
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    match Cli::parse().scenario {
        Scenario::Publish(args) => publish::run(args).await,
        Scenario::Fanout(args) => fanout::run(args).await,
        Scenario::Idle(args) => idle::run(args).await,
        Scenario::Worker(args) => worker::run(args).await,
    }
}
