//! A job kind of your own: `word_count` counts the words of every file in a
//! directory, reporting per-file progress. docs/workers.md walks through it.
//!
//! Run it next to a gateway that accepts the kind:
//!
//! ```text
//! JOBWIRE_KINDS=word_count REDIS_URL=redis://127.0.0.1:6379 jobwire serve
//! REDIS_URL=redis://127.0.0.1:6379 cargo run -p jobwire-worker --example word_count
//! ```

use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use jobwire_redis::{RedisBackend, RedisConfig};
use jobwire_worker::{Handler, JobContext, JobError, JobOutcome, Worker, WorkerConfig};
use serde::Deserialize;
use serde_json::json;
use tokio_util::sync::CancellationToken;

/// The job's parameters, as submitted in `POST /api/jobs`.
#[derive(Deserialize)]
struct Params {
    path: PathBuf,
}

struct WordCount;

#[async_trait]
impl Handler for WordCount {
    async fn run(&self, job: JobContext) -> Result<JobOutcome, JobError> {
        // A bad parameter fails the job with this message.
        let params: Params = job.params_as()?;
        let report = job.reporter();

        let mut files = Vec::new();
        let mut entries = tokio::fs::read_dir(&params.path).await?;
        while let Some(entry) = entries.next_entry().await? {
            if entry.file_type().await?.is_file() {
                files.push(entry.path());
            }
        }
        files.sort();
        report
            .total_files(files.len() as u64, "counting words")
            .await?;

        let mut words = 0;
        for path in &files {
            let name = path.file_name().unwrap_or_default().to_string_lossy();
            // Every report returns an error once the job is cancelled (or
            // another worker took it over): `?` stops the job right here.
            report.file_processing(&name).await?;
            match tokio::fs::read_to_string(path).await {
                Ok(text) => {
                    let n = text.split_whitespace().count();
                    words += n;
                    report.file_completed(&name, json!({ "words": n })).await?;
                }
                // One unreadable file is an `error` event; the job goes on.
                Err(e) => report.file_error(&name, e).await?,
            }
        }
        // Stored on the job as `result`, sent with `job_completed`.
        Ok(
            JobOutcome::with_result(json!({ "files": files.len(), "words": words }))
                .message(format!("{words} words")),
        )
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned());
    let backend = RedisBackend::connect(RedisConfig::new(url)).await?;
    let worker = Worker::builder(Arc::new(backend))
        .config(WorkerConfig {
            concurrency: 8,
            ..WorkerConfig::default()
        })
        // Workers share one queue, so each should run every kind.
        .builtin(None)
        .handler("word_count", WordCount)
        .build()?;

    let shutdown = CancellationToken::new();
    tokio::spawn({
        let shutdown = shutdown.clone();
        async move {
            let _ = tokio::signal::ctrl_c().await;
            shutdown.cancel();
        }
    });
    // Runs until Ctrl-C, then lets running jobs finish (or hands them back).
    worker.run(shutdown).await;
    Ok(())
}
