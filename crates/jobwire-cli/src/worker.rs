//! `jobwire worker`: runs jobs from the Redis queue until SIGTERM or SIGINT,
//! then shuts down gracefully (running jobs finish, or go back to the queue
//! at the shutdown timeout); exit 0.

use std::sync::{Arc, OnceLock};

use anyhow::anyhow;
use axum::http::header::CONTENT_TYPE;
use axum::http::StatusCode;
use axum::response::IntoResponse;
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
    store::check(&args.store)?;
    // Served from the start, before Redis is reached (a taken address fails
    // at once, and probes get an answer while Redis is awaited), and until
    // the worker has finished draining its jobs.
    let running: Arc<OnceLock<Worker>> = Arc::default();
    let metrics_done = CancellationToken::new();
    if let Some(addr) = args.metrics_bind {
        let listener = TcpListener::bind(addr).await.map_err(|e| {
            Failure::Usage(anyhow!(
                "cannot serve metrics on {addr} (JOBWIRE_WORKER_METRICS_BIND): {e}"
            ))
        })?;
        serve_metrics(listener, Arc::clone(&running), metrics_done.clone());
    }
    let shutdown = shutdown_on_signal();
    let Some(backend) = store::connect_redis(&args.store, &shutdown).await? else {
        return Ok(());
    };
    if args.worker.scan_root.is_none() {
        tracing::warn!("no JOBWIRE_SCAN_ROOT: this worker fails every scan job (set it to the directory scans may read)");
    }
    let worker = build(backend, &args.worker)?;
    let _ = running.set(worker.clone());
    worker.run(shutdown).await;
    metrics_done.cancel();
    Ok(())
}

/// Serves `/metrics` (503 until the worker runs) and `/healthz` until
/// `done`.
fn serve_metrics(listener: TcpListener, worker: Arc<OnceLock<Worker>>, done: CancellationToken) {
    let addr = listener.local_addr().ok();
    let router = Router::new()
        .route(
            "/metrics",
            get(move || {
                let text = worker.get().map(Worker::render_metrics);
                async move {
                    match text {
                        Some(text) => (
                            [(
                                CONTENT_TYPE,
                                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                            )],
                            text,
                        )
                            .into_response(),
                        None => {
                            (StatusCode::SERVICE_UNAVAILABLE, "waiting for Redis").into_response()
                        }
                    }
                }
            }),
        )
        .route("/healthz", get(|| async { "ok" }));
    if let Some(addr) = addr {
        tracing::info!(%addr, "serving worker metrics");
    }
    tokio::spawn(async move {
        let served = axum::serve(listener, router)
            .with_graceful_shutdown(done.cancelled_owned())
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
    // The command line's worker runs the built-in kinds, no others.
    let kinds = jobwire_core::kinds::BUILTIN_KINDS;
    let named = flags
        .timeouts
        .iter()
        .map(|(kind, _)| ("--timeout", kind))
        .chain(flags.retries.iter().map(|(kind, _)| ("--retry", kind)));
    for (flag, kind) in named {
        if !kinds.contains(&kind.as_str()) {
            return Err(Failure::Usage(anyhow!(
                "{flag} {kind}=…: this worker runs no kind {kind:?} (it runs: {})",
                kinds.join(", ")
            )));
        }
    }
    Ok(())
}

/// A worker with the built-in kinds.
pub(crate) fn build(backend: Arc<dyn Backend>, flags: &WorkerFlags) -> Result<Worker, Failure> {
    check(flags)?;
    let mut builder = Worker::builder(backend)
        .config(flags.worker_config())
        .builtin(flags.scan_root.clone());
    for (kind, limit) in &flags.timeouts {
        builder = builder.timeout(kind.clone(), *limit);
    }
    for (kind, policy) in &flags.retries {
        builder = builder.retry(kind.clone(), policy.clone());
    }
    builder
        .build()
        .map_err(|e| Failure::Usage(anyhow!("worker settings: {e}")))
}
