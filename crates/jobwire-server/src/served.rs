//! Which queues live workers serve (from the worker registry) and which
//! are paused, so that a queued job nobody will take now says why ("no
//! worker serves queue X", "queue X is paused") in `GET /api/jobs/{id}`
//! and the listing, and the web UI shows it.
//!
//! Both are read at most once a second per gateway, however many requests
//! ask.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use jobwire_core::{JobQueue, JobState, JobStatus, Timestamp};
use serde_json::Value;

/// How long a read of the registry is used.
const FRESH_FOR: Duration = Duration::from_secs(1);

/// The queues served by a live worker, and the paused ones.
#[derive(Clone, Debug, Default)]
struct Queues {
    served: HashSet<String>,
    paused: HashSet<String>,
}

/// The last read of the queues live workers serve.
#[derive(Debug, Default)]
pub struct ServedQueues {
    last: tokio::sync::Mutex<Option<(Instant, Queues)>>,
}

impl ServedQueues {
    /// The queues now (`None`: the store could not be read; then nothing
    /// is claimed about any queue).
    async fn get(&self, queue: &dyn JobQueue) -> Option<Queues> {
        let mut last = self.last.lock().await;
        if let Some((read, queues)) = last.as_ref() {
            if read.elapsed() < FRESH_FOR {
                return Some(queues.clone());
            }
        }
        let now = Timestamp::now();
        let read = async {
            let workers = queue.workers().await?;
            let paused = queue.paused_queues().await?;
            Ok::<_, jobwire_core::BackendError>(Queues {
                served: workers
                    .into_iter()
                    .filter(|w| w.is_live(now))
                    .flat_map(|w| w.queues)
                    .collect(),
                paused: paused.into_iter().collect(),
            })
        };
        let queues = match read.await {
            Ok(queues) => queues,
            Err(e) => {
                tracing::debug!(error = %e, "cannot read the worker registry");
                return None;
            }
        };
        *last = Some((Instant::now(), queues.clone()));
        Some(queues)
    }

    /// `jobs` as JSON, each queued one that no live worker serves, or whose
    /// queue is paused, with a `"waiting"` saying so.
    pub async fn annotate(&self, queue: &dyn JobQueue, jobs: &[JobState]) -> Vec<Value> {
        let waiting = |job: &JobState| job.status == JobStatus::Queued && !job.external;
        let queues = if jobs.iter().any(waiting) {
            self.get(queue).await
        } else {
            None
        };
        jobs.iter()
            .map(|job| {
                let mut value = serde_json::to_value(job).unwrap_or(Value::Null);
                if let (true, Some(queues), Value::Object(map)) =
                    (waiting(job), queues.as_ref(), &mut value)
                {
                    let name = job.queue();
                    let why = if queues.paused.contains(name) {
                        Some(format!("queue {name:?} is paused"))
                    } else if !queues.served.contains(name) {
                        Some(format!("no worker serves queue {name:?}"))
                    } else {
                        None
                    };
                    if let Some(why) = why {
                        map.insert("waiting".to_owned(), Value::from(why));
                    }
                }
                value
            })
            .collect()
    }
}
