//! Idle connections: how much memory one open, subscribed, silent WebSocket
//! costs a `jobwire serve` process. RSS is read before and after opening N
//! connections (each watching a job that publishes nothing), and the
//! difference divided by N.
//!
//! The open-file limit on these machines is a hard 20,000 per process, for
//! the generator as for the server: read it with `ulimit -Hn`.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use futures_util::StreamExt;
use jobwire_core::{Backend, BackendConfig, NewJob};
use jobwire_redis::{RedisBackend, RedisConfig};
use jobwire_testkit::{Persistence, RedisServer};
use serde_json::json;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::fanout::{bench_token, rss_kib, start_gateways};

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Connections to hold open.
    #[arg(long, default_value_t = 10_000)]
    connections: usize,
    /// Jobs the connections watch (connection i watches job i % jobs).
    #[arg(long, default_value_t = 100)]
    jobs: usize,
    /// The `jobwire` binary (default: next to this one).
    #[arg(long)]
    jobwire: Option<std::path::PathBuf>,
}

pub(crate) async fn run(args: Args) -> Result<()> {
    let redis = RedisServer::start_private(Persistence::None)?;
    let gateways = start_gateways(args.jobwire, &redis, 1).await?;
    let gateway = &gateways[0];
    let backend = RedisBackend::connect(RedisConfig {
        backend: BackendConfig::default(),
        ..RedisConfig::new(redis.url())
    })
    .await?;
    let mut jobs = Vec::new();
    for _ in 0..args.jobs.max(1) {
        jobs.push(
            backend
                .create_job(NewJob::new("bench", json!({}), "bench"))
                .await?
                .id,
        );
    }
    let token = bench_token()?;
    // Let the server settle before the baseline.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = rss_kib(gateway.child.id());
    let started = Instant::now();
    let mut sockets = Vec::with_capacity(args.connections);
    for i in 0..args.connections {
        let url = format!(
            "ws://127.0.0.1:{}/ws/jobs/{}",
            gateway.port,
            jobs[i % jobs.len()]
        );
        let mut request = url.into_client_request()?;
        request
            .headers_mut()
            .insert("authorization", format!("Bearer {token}").parse()?);
        let (mut ws, _) = tokio_tungstenite::connect_async(request)
            .await
            .with_context(|| format!("connection {i} (raise `ulimit -n`?)"))?;
        // Wait for current_state: the subscription is in place.
        let _ = tokio::time::timeout(Duration::from_secs(10), ws.next()).await?;
        sockets.push(ws);
    }
    let opened = started.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = rss_kib(gateway.child.id());
    let per = (after.saturating_sub(before)) as f64 * 1024.0 / args.connections as f64;
    println!(
        "{} idle subscribed WebSockets opened in {:.1} s; server RSS {before} KiB -> {after} KiB: {:.0} bytes ({:.1} KiB) per connection",
        sockets.len(),
        opened.as_secs_f64(),
        per,
        per / 1024.0
    );
    Ok(())
}
