//! `jobwire worker`: runs jobs from the Redis queue until SIGTERM or SIGINT,
//! then shuts down gracefully (running jobs finish, or go back to the queue
//! at the shutdown timeout); exit 0.

use std::sync::Arc;

use anyhow::anyhow;
use axum::http::header::CONTENT_TYPE;
use axum::routing::get;
use axum::Router;
use jobwire_core::Backend;
use jobwire_worker::Worker;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::{WorkerArgs, WorkerFlags};
use crate::{shutdown_on_signal, store, telemetry, Failure};

pub(crate) async fn worker(args: WorkerArgs) -> Result<(), Failure> {
    telemetry::init(args.log_format);
    if args.store.redis_url.is_none() {
        return Err(Failure::Usage(anyhow!(
            "REDIS_URL is required: workers take jobs from Redis (for everything in one process, use `jobwire dev`)"
        )));
    }
    check(&args.worker)?;
    // Bound before Redis is reached, so that a taken address fails at once.
    let metrics = match args.metrics_bind {
        Some(addr) => Some(bind_metrics(addr).await?),
        None => None,
    };
    let shutdown = shutdown_on_signal();
    let Some(backend) = store::connect_redis(&args.store, &shutdown).await? else {
        return Ok(());
    };
    let worker = build(backend, &args.worker)?;
    if let Some(listener) = metrics {
        serve_metrics(listener, worker.clone(), shutdown.clone());
    }
    worker.run(shutdown).await;
    Ok(())
}

async fn bind_metrics(addr: std::net::SocketAddr) -> Result<TcpListener, Failure> {
    TcpListener::bind(addr).await.map_err(|e| {
        Failure::Usage(anyhow!(
            "cannot serve metrics on {addr} (JOBWIRE_WORKER_METRICS_BIND): {e}"
        ))
    })
}

/// Serves `/metrics` and `/healthz` until `shutdown`.
fn serve_metrics(listener: TcpListener, worker: Worker, shutdown: CancellationToken) {
    let addr = listener.local_addr().ok();
    let router = Router::new()
        .route(
            "/metrics",
            get(move || {
                let text = worker.render_metrics();
                async move { ([(CONTENT_TYPE, "text/plain; version=0.0.4")], text) }
            }),
        )
        .route("/healthz", get(|| async { "ok" }));
    tracing::info!(?addr, "serving worker metrics");
    tokio::spawn(async move {
        let served = axum::serve(listener, router)
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await;
        if let Err(e) = served {
            tracing::warn!(error = %e, "the metrics endpoint stopped");
        }
    });
}

/// Checks what clap cannot, before anything connects.
pub(crate) fn check(flags: &WorkerFlags) -> Result<(), Failure> {
    if let Some(root) = &flags.scan_root {
        if !root.is_dir() {
            return Err(Failure::Usage(anyhow!(
                "JOBWIRE_SCAN_ROOT: {} is not a directory",
                root.display()
            )));
        }
    }
    Ok(())
}

/// A worker with the built-in kinds.
pub(crate) fn build(backend: Arc<dyn Backend>, flags: &WorkerFlags) -> Result<Worker, Failure> {
    check(flags)?;
    Worker::builder(backend)
        .config(flags.worker_config())
        .builtin(flags.scan_root.clone())
        .build()
        .map_err(|e| Failure::Usage(anyhow!("worker settings: {e}")))
}
