//! Which queues live workers serve, from the worker registry, so that a
//! queued job nobody will take says so ("no worker serves queue X") in
//! `GET /api/jobs/{id}` and the listing, and the web UI shows it.
//!
//! The registry is read at most once a second per gateway (one `HGETALL`),
//! however many requests ask.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use jobwire_core::{JobQueue, JobState, JobStatus, Timestamp};
use serde_json::Value;

/// How long a read of the registry is used.
const FRESH_FOR: Duration = Duration::from_secs(1);

/// The last read of the queues live workers serve.
#[derive(Debug, Default)]
pub struct ServedQueues {
    last: tokio::sync::Mutex<Option<(Instant, HashSet<String>)>>,
}

impl ServedQueues {
    /// The queues served by a live worker now (`None`: the registry could
    /// not be read; then nothing is claimed about any queue).
    async fn get(&self, queue: &dyn JobQueue) -> Option<HashSet<String>> {
        let mut last = self.last.lock().await;
        if let Some((read, served)) = last.as_ref() {
            if read.elapsed() < FRESH_FOR {
                return Some(served.clone());
            }
        }
        let now = Timestamp::now();
        let served: HashSet<String> = match queue.workers().await {
            Ok(workers) => workers
                .into_iter()
                .filter(|w| w.is_live(now))
                .flat_map(|w| w.queues)
                .collect(),
            Err(e) => {
                tracing::debug!(error = %e, "cannot read the worker registry");
                return None;
            }
        };
        *last = Some((Instant::now(), served.clone()));
        Some(served)
    }

    /// `jobs` as JSON, each queued one that no live worker serves with a
    /// `"waiting"` saying so.
    pub async fn annotate(&self, queue: &dyn JobQueue, jobs: &[JobState]) -> Vec<Value> {
        let waiting = |job: &JobState| job.status == JobStatus::Queued && !job.external;
        let served = if jobs.iter().any(waiting) {
            self.get(queue).await
        } else {
            None
        };
        jobs.iter()
            .map(|job| {
                let mut value = serde_json::to_value(job).unwrap_or(Value::Null);
                if let (true, Some(served), Value::Object(map)) =
                    (waiting(job), served.as_ref(), &mut value)
                {
                    if !served.contains(job.queue()) {
                        map.insert(
                            "waiting".to_owned(),
                            Value::from(format!("no worker serves queue {:?}", job.queue())),
                        );
                    }
                }
                value
            })
            .collect()
    }
}
