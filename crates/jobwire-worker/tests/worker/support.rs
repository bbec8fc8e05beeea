//! Shared helpers: backends on a test Redis, running workers, reading logs.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use jobwire_core::{Backend, BackendConfig, Event, EventType, JobId, JobState};
use jobwire_redis::{RedisBackend, RedisConfig};
use jobwire_testkit::RedisServer;
use jobwire_worker::{Worker, WorkerBuilder, WorkerConfig};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub(crate) async fn backend(server: &RedisServer) -> Result<Arc<dyn Backend>> {
    backend_at(&server.url()).await
}

pub(crate) async fn backend_at(url: &str) -> Result<Arc<dyn Backend>> {
    let backend = RedisBackend::connect(RedisConfig {
        command_timeout: Duration::from_secs(2),
        backend: BackendConfig {
            partitions: 4,
            stream_maxlen: 100_000,
            ..BackendConfig::default()
        },
        ..RedisConfig::new(url.to_owned())
    })
    .await?;
    Ok(Arc::new(backend))
}

pub(crate) fn config(consumer: &str) -> WorkerConfig {
    WorkerConfig {
        consumer: consumer.to_owned(),
        concurrency: 4,
        visibility_timeout: Duration::from_secs(30),
        shutdown_timeout: Duration::from_secs(5),
        ..WorkerConfig::default()
    }
}

/// A worker with the built-in kinds.
pub(crate) fn builtin(backend: &Arc<dyn Backend>, config: WorkerConfig) -> WorkerBuilder {
    Worker::builder(Arc::clone(backend))
        .config(config)
        .builtin(None)
}

/// A worker running in the background until its token fires.
pub(crate) struct Running {
    pub(crate) worker: Worker,
    pub(crate) stop: CancellationToken,
    task: JoinHandle<()>,
}

impl Running {
    pub(crate) fn start(worker: Worker) -> Running {
        logs();
        let stop = CancellationToken::new();
        let task = tokio::spawn({
            let (worker, stop) = (worker.clone(), stop.clone());
            async move { worker.run(stop).await }
        });
        Running { worker, stop, task }
    }

    /// Asks it to shut down and waits until it has.
    pub(crate) async fn shut_down(self) -> Result<Worker> {
        self.stop.cancel();
        tokio::time::timeout(Duration::from_secs(30), self.task)
            .await
            .context("the worker did not shut down")??;
        Ok(self.worker)
    }
}

pub(crate) use jobwire_testkit::jobs::{log, wait_for};

pub(crate) async fn wait_finished(backend: &dyn Backend, job: &JobId) -> Result<JobState> {
    wait_for(backend, job, Duration::from_secs(60), |s| {
        s.status.is_terminal()
    })
    .await
}

/// How many events of `kind` the log holds.
pub(crate) fn count(events: &[Event], kind: EventType) -> usize {
    events.iter().filter(|e| e.kind == kind).count()
}

/// The `attempt` counter written into an event's data.
pub(crate) fn attempt_of(event: &Event) -> u64 {
    event
        .data
        .get("attempt")
        .and_then(|v| v.as_u64())
        .unwrap_or(0)
}

/// Logs to the test's output, filtered by `RUST_LOG` (silent by default).
pub(crate) fn logs() {
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .try_init();
}
