//! `jobwire worker`: runs jobs from the Redis queue until SIGTERM or SIGINT,
//! then shuts down gracefully (running jobs finish, or go back to the queue
//! at the shutdown timeout); exit 0.

use std::sync::Arc;

use anyhow::anyhow;
use jobwire_core::Backend;
use jobwire_worker::Worker;

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
    let shutdown = shutdown_on_signal();
    let Some(backend) = store::connect_redis(&args.store, &shutdown).await? else {
        return Ok(());
    };
    let worker = build(backend, &args.worker)?;
    worker.run(shutdown).await;
    Ok(())
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
