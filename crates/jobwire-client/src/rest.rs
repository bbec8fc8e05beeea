//! The REST calls (docs/protocol.md "HTTP").
//!
//! A call goes to the preferred base URL; when that one cannot be connected
//! to, the next is tried (a request that was never sent is safe to send
//! elsewhere, even a create). A 401 makes a token provider fetch a fresh
//! token, and the call is tried once more.

use jobwire_core::{Epoch, Event, EventId, JobId, JobState, JobStatus, Schedule, Timestamp};
use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::{Client, ClientError};

/// Which jobs to list.
#[derive(Clone, Debug, Default)]
pub struct ListOptions {
    pub status: Option<JobStatus>,
    pub kind: Option<String>,
    /// The queue (a job's kind's unless it was given another).
    pub queue: Option<String>,
    /// Only jobs that finished at or after this time.
    pub finished_after: Option<Timestamp>,
    /// 1–500 (the server's default is 50).
    pub limit: Option<usize>,
    /// The previous page's `next_cursor`.
    pub cursor: Option<String>,
}

/// A page of jobs, newest first.
#[derive(Clone, Debug, Deserialize)]
pub struct JobPage {
    pub jobs: Vec<JobState>,
    pub next_cursor: Option<String>,
}

/// A worker in the registry (`GET /api/workers`).
#[derive(Clone, Debug, Deserialize)]
pub struct RegisteredWorker {
    #[serde(flatten)]
    pub worker: jobwire_core::WorkerInfo,
    /// Seen within its lease (by the server's clock).
    pub live: bool,
}

#[derive(Deserialize)]
struct Workers {
    workers: Vec<RegisteredWorker>,
}

/// One queue of `GET /api/queues`.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct QueueRow {
    pub name: String,
    pub waiting: u64,
    #[serde(default)]
    pub scheduled: u64,
    pub running: u64,
    /// Finished in the last whole minute, and the last 15.
    #[serde(default)]
    pub finished_1m: u64,
    #[serde(default)]
    pub finished_15m: u64,
    /// Failed in the last hour.
    #[serde(default)]
    pub failed_1h: u64,
    pub oldest_waiting_age_ms: Option<u64>,
    /// The live workers serving it.
    pub workers: Vec<String>,
    pub paused: bool,
    /// Its fleet-wide limits (none: `{}`).
    #[serde(default)]
    pub limits: jobwire_core::QueueLimits,
}

#[derive(Deserialize)]
struct QueueRows {
    queues: Vec<QueueRow>,
}

/// The body of `POST /api/schedules`: a cron schedule to create or
/// replace.
#[derive(Clone, Debug, Default, Serialize)]
pub struct NewSchedule {
    pub name: String,
    /// 5 fields (minute first) or 6 (seconds first), or `@hourly` and
    /// the like.
    pub cron: String,
    /// IANA time zone (unset: UTC).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tz: Option<String>,
    pub kind: String,
    pub params: Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queue: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub priority: Option<u8>,
    /// `once` (the default) or `skip`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub missed: Option<String>,
}

#[derive(Deserialize)]
struct Schedules {
    schedules: Vec<Schedule>,
}

/// What a cancel did: `cancelled`, `cancel_requested` or `already_finished`.
#[derive(Clone, Debug, Deserialize)]
pub struct CancelReply {
    pub outcome: String,
    pub job: JobState,
}

/// A page of a job's event log.
#[derive(Clone, Debug, Deserialize)]
pub struct History {
    pub job_id: JobId,
    pub epoch: Epoch,
    pub events: Vec<Event>,
}

/// An event to publish to an external job.
#[derive(Clone, Debug, Serialize)]
pub struct PublishEvent {
    #[serde(rename = "type")]
    pub kind: String,
    pub data: Value,
    /// The attempt and the publisher's event number: a repeated `n` is
    /// applied once (send both or neither).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attempt: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub n: Option<u64>,
}

/// What a publish did.
#[derive(Clone, Debug, Deserialize)]
pub struct PublishReply {
    /// Ids of the events stored (repeated numbers excluded).
    pub ids: Vec<EventId>,
    /// Events skipped because their `n` had been applied already.
    pub duplicates: usize,
    /// Somebody asked the job to stop.
    pub cancel_requested: bool,
}

/// Queue controls of a new job (all optional).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CreateOptions {
    /// The queue to wait in (default: the kind's).
    pub queue: Option<String>,
    /// Makes the create at most once: the same key and request within the
    /// server's window return the job the first made (a retry after a
    /// lost reply is then safe).
    pub idempotency_key: Option<String>,
    /// At most one unfinished job of the kind per key: while one is, the
    /// create returns it (not with `idempotency_key`).
    pub unique_key: Option<String>,
    /// How long one attempt may run before it is stopped and failed.
    pub timeout: Option<std::time::Duration>,
    /// 0–9, higher first within the queue (default 5).
    pub priority: Option<u8>,
    /// When the job becomes runnable: it is `scheduled` until then.
    pub run_at: Option<jobwire_core::Timestamp>,
    /// Runnable this long from now (instead of `run_at`).
    pub delay: Option<std::time::Duration>,
    /// Attempts in all, and the waits between them (unset: the worker's
    /// policy for the kind).
    pub retry: jobwire_core::RetryPolicy,
}

/// What [`Client::create_job_with`] got back.
#[derive(Clone, Debug, PartialEq)]
pub struct Submitted {
    pub job: JobState,
    /// The job existed already (the same `idempotency_key`, or an
    /// unfinished job holding the `unique_key`): nothing was created.
    pub existing: bool,
}

impl Client {
    /// `POST /api/jobs`: a job for jobwire's workers.
    ///
    /// # Errors
    /// [`ClientError::Api`] with `invalid` for an unknown kind or bad params.
    pub async fn create_job(&self, kind: &str, params: Value) -> Result<JobState, ClientError> {
        self.create_job_with(kind, params, &CreateOptions::default())
            .await
            .map(|submitted| submitted.job)
    }

    /// [`Client::create_job`] with queue controls.
    ///
    /// # Errors
    /// As [`Client::create_job`]; `invalid` for a bad queue name.
    pub async fn create_job_with(
        &self,
        kind: &str,
        params: Value,
        options: &CreateOptions,
    ) -> Result<Submitted, ClientError> {
        let mut body = json!({ "kind": kind, "params": params });
        if let Some(queue) = &options.queue {
            body["queue"] = json!(queue);
        }
        if let Some(key) = &options.unique_key {
            body["unique_key"] = json!(key);
        }
        if let Some(timeout) = options.timeout {
            body["timeout"] = json!(format!("{}ms", timeout.as_millis()));
        }
        if let Some(priority) = options.priority {
            body["priority"] = json!(priority);
        }
        if let Some(at) = options.run_at {
            body["run_at"] = json!(at.to_string());
        }
        if let Some(delay) = options.delay {
            body["delay"] = json!(format!("{}ms", delay.as_millis()));
        }
        if let Some(n) = options.retry.max_attempts {
            body["max_attempts"] = json!(n);
        }
        if let Some(backoff) = &options.retry.backoff {
            body["backoff"] = json!(backoff);
        }
        let headers: Vec<(&str, &str)> = options
            .idempotency_key
            .as_deref()
            .map(|key| ("idempotency-key", key))
            .into_iter()
            .collect();
        let response = self
            .send(Method::POST, "/api/jobs", Some(&body), &headers)
            .await?;
        // 201: created; 200: an earlier job, named by one of the keys.
        let existing = response.status() == StatusCode::OK;
        let job = response
            .json()
            .await
            .map_err(|e| ClientError::Protocol(format!("/api/jobs: {e}")))?;
        Ok(Submitted { job, existing })
    }

    /// `POST /api/jobs` with `external: true` (scope `worker`): a job this
    /// program drives with [`Client::publish`].
    ///
    /// # Errors
    /// As [`Client::create_job`]; `forbidden` without the `worker` scope.
    pub async fn create_external_job(
        &self,
        kind: &str,
        params: Value,
    ) -> Result<JobState, ClientError> {
        let body = json!({ "kind": kind, "params": params, "external": true });
        self.call(Method::POST, "/api/jobs", Some(&body)).await
    }

    /// `GET /api/jobs/{id}`.
    ///
    /// # Errors
    /// `not_found` for an unknown job or another user's.
    pub async fn job(&self, id: &JobId) -> Result<JobState, ClientError> {
        self.call(Method::GET, &format!("/api/jobs/{id}"), None)
            .await
    }

    /// Why a queued job is not taken, when the server knows (`GET
    /// /api/jobs/{id}`'s `waiting`: "no worker serves queue \"x\""); `None`
    /// once a worker serves its queue, or when it is not queued.
    ///
    /// # Errors
    /// `not_found` for an unknown job or another user's.
    pub async fn waiting(&self, id: &JobId) -> Result<Option<String>, ClientError> {
        #[derive(serde::Deserialize)]
        struct Waiting {
            waiting: Option<String>,
        }
        let reply: Waiting = self
            .call(Method::GET, &format!("/api/jobs/{id}"), None)
            .await?;
        Ok(reply.waiting)
    }

    /// `GET /api/jobs`: the caller's jobs, newest first.
    ///
    /// # Errors
    /// [`ClientError`] from the server or the network.
    pub async fn list_jobs(&self, options: &ListOptions) -> Result<JobPage, ClientError> {
        let finished_after = options.finished_after.map(|t| t.to_string());
        let limit = options.limit.map(|l| l.to_string());
        let pairs = [
            ("status", options.status.map(|s| s.as_str())),
            ("kind", options.kind.as_deref()),
            ("queue", options.queue.as_deref()),
            ("finished_after", finished_after.as_deref()),
            ("limit", limit.as_deref()),
            ("cursor", options.cursor.as_deref()),
        ];
        let query: Vec<String> = pairs
            .iter()
            .filter_map(|(name, value)| {
                let value: String = form_urlencoded::byte_serialize((*value)?.as_bytes()).collect();
                Some(format!("{name}={value}"))
            })
            .collect();
        let path = if query.is_empty() {
            "/api/jobs".to_owned()
        } else {
            format!("/api/jobs?{}", query.join("&"))
        };
        self.call(Method::GET, &path, None).await
    }

    /// `GET /api/workers` (scope `admin`): the worker registry, by name.
    ///
    /// # Errors
    /// `forbidden` without the admin scope; [`ClientError`] from the network.
    pub async fn workers(&self) -> Result<Vec<RegisteredWorker>, ClientError> {
        let reply: Workers = self.call(Method::GET, "/api/workers", None).await?;
        Ok(reply.workers)
    }

    /// `GET /api/queues` (scope `admin`): the queues at a glance, by name.
    ///
    /// # Errors
    /// `forbidden` without the admin scope; [`ClientError`] from the network.
    pub async fn queues(&self) -> Result<Vec<QueueRow>, ClientError> {
        let reply: QueueRows = self.call(Method::GET, "/api/queues", None).await?;
        Ok(reply.queues)
    }

    /// `POST /api/jobs/{id}/retry` (scope `admin`): a new attempt for a
    /// failed job; the job, now scheduled.
    ///
    /// # Errors
    /// `conflict` for a job that has not failed; `forbidden` without admin.
    pub async fn retry(&self, id: &JobId) -> Result<JobState, ClientError> {
        self.call(Method::POST, &format!("/api/jobs/{id}/retry"), None)
            .await
    }

    /// `POST /api/queues/{queue}/pause` or `/resume` (scope `admin`).
    ///
    /// # Errors
    /// `forbidden` without the admin scope, `invalid` for a bad queue name.
    pub async fn set_paused(&self, queue: &str, paused: bool) -> Result<(), ClientError> {
        let action = if paused { "pause" } else { "resume" };
        let _: Value = self
            .call(Method::POST, &format!("/api/queues/{queue}/{action}"), None)
            .await?;
        Ok(())
    }

    /// `GET /api/schedules` (scope `admin`): every cron schedule, by name.
    ///
    /// # Errors
    /// `forbidden` without the admin scope; [`ClientError`] from the network.
    pub async fn schedules(&self) -> Result<Vec<Schedule>, ClientError> {
        let reply: Schedules = self.call(Method::GET, "/api/schedules", None).await?;
        Ok(reply.schedules)
    }

    /// `POST /api/schedules` (scope `admin`): creates the schedule, or
    /// replaces the one of that name; it as stored.
    ///
    /// # Errors
    /// `invalid` for a bad name, expression, zone, kind or params.
    pub async fn put_schedule(&self, schedule: &NewSchedule) -> Result<Schedule, ClientError> {
        let body =
            serde_json::to_value(schedule).map_err(|e| ClientError::Config(e.to_string()))?;
        self.call(Method::POST, "/api/schedules", Some(&body)).await
    }

    /// `DELETE /api/schedules/{name}` (scope `admin`).
    ///
    /// # Errors
    /// `not_found` when there is no such schedule.
    pub async fn delete_schedule(&self, name: &str) -> Result<(), ClientError> {
        self.send(Method::DELETE, &format!("/api/schedules/{name}"), None, &[])
            .await
            .map(drop)
    }

    /// `POST /api/schedules/{name}/pause` or `/resume` (scope `admin`);
    /// the schedule as it now is.
    ///
    /// # Errors
    /// `not_found` when there is no such schedule.
    pub async fn set_schedule_paused(
        &self,
        name: &str,
        paused: bool,
    ) -> Result<Schedule, ClientError> {
        let action = if paused { "pause" } else { "resume" };
        self.call(
            Method::POST,
            &format!("/api/schedules/{name}/{action}"),
            None,
        )
        .await
    }

    /// `PUT /api/queues/{queue}/limits` (scope `admin`): the queue's
    /// fleet-wide limits; all `None` lifts them.
    ///
    /// # Errors
    /// `invalid` for a bad queue name or figures; `forbidden` without admin.
    pub async fn set_limits(
        &self,
        queue: &str,
        limits: &jobwire_core::QueueLimits,
    ) -> Result<(), ClientError> {
        let body = serde_json::to_value(limits).map_err(|e| ClientError::Config(e.to_string()))?;
        self.send(
            Method::PUT,
            &format!("/api/queues/{queue}/limits"),
            Some(&body),
            &[],
        )
        .await
        .map(drop)
    }

    /// `POST /api/jobs/{id}/cancel`.
    ///
    /// # Errors
    /// `not_found` for an unknown job.
    pub async fn cancel(&self, id: &JobId) -> Result<CancelReply, ClientError> {
        self.call(Method::POST, &format!("/api/jobs/{id}/cancel"), None)
            .await
    }

    /// `DELETE /api/jobs/{id}`.
    ///
    /// # Errors
    /// `not_found` for an unknown job.
    pub async fn delete(&self, id: &JobId) -> Result<(), ClientError> {
        self.send(Method::DELETE, &format!("/api/jobs/{id}"), None, &[])
            .await
            .map(drop)
    }

    /// `GET /api/jobs/{id}/events`: up to `limit` events after `since`.
    ///
    /// # Errors
    /// `resync_required` (410) when those events were trimmed or `epoch` is
    /// not the job's.
    pub async fn history(
        &self,
        id: &JobId,
        since: EventId,
        epoch: Option<&Epoch>,
        limit: usize,
    ) -> Result<History, ClientError> {
        let mut path = format!("/api/jobs/{id}/events?since={since}&limit={limit}");
        if let Some(epoch) = epoch {
            path.push_str(&format!("&epoch={epoch}"));
        }
        self.call(Method::GET, &path, None).await
    }

    /// `POST /api/jobs/{id}/events` (scope `worker`): publishes events in
    /// order, atomically.
    ///
    /// # Errors
    /// `stale_attempt` (409) for an old attempt, `conflict` for an event the
    /// job's status does not allow, `invalid` for a malformed one.
    pub async fn publish(
        &self,
        id: &JobId,
        events: &[PublishEvent],
    ) -> Result<PublishReply, ClientError> {
        let body = serde_json::to_value(events).map_err(|e| ClientError::Config(e.to_string()))?;
        self.call(Method::POST, &format!("/api/jobs/{id}/events"), Some(&body))
            .await
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<T, ClientError> {
        let response = self.send(method, path, body, &[]).await?;
        response
            .json()
            .await
            .map_err(|e| ClientError::Protocol(format!("{path}: {e}")))
    }

    /// Sends a request, rotating over the base URLs on connection failures
    /// and retrying once with a fresh token on 401.
    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        headers: &[(&str, &str)],
    ) -> Result<reqwest::Response, ClientError> {
        let mut refreshed = false;
        let mut token = self.token_source().current().await?;
        let mut last_error = None;
        loop {
            let mut unauthorized = None;
            for (at, base) in self.urls_in_order().collect::<Vec<_>>() {
                let url = format!("{base}{path}");
                let mut request = self
                    .http()
                    .request(method.clone(), &url)
                    .bearer_auth(&token);
                if let Some(body) = body {
                    request = request.json(body);
                }
                for (name, value) in headers {
                    request = request.header(*name, *value);
                }
                let response = match request.send().await {
                    Ok(r) => r,
                    Err(e) if e.is_connect() => {
                        last_error = Some(ClientError::Unreachable {
                            url: base.to_owned(),
                            message: with_causes(&e),
                        });
                        continue;
                    }
                    Err(e) => {
                        return Err(ClientError::Unreachable {
                            url: base.to_owned(),
                            message: with_causes(&e),
                        })
                    }
                };
                self.prefer(at);
                let status = response.status();
                if status.is_success() {
                    return Ok(response);
                }
                let error = api_error(status, response).await;
                if status == StatusCode::UNAUTHORIZED {
                    unauthorized = Some(error);
                    break;
                }
                return Err(error);
            }
            match unauthorized {
                Some(error) if !refreshed && self.token_source().can_refresh() => {
                    refreshed = true;
                    token = self.token_source().fresh().await?;
                    last_error = Some(error);
                }
                Some(ClientError::Api { message, .. }) => {
                    return Err(ClientError::Unauthorized(message))
                }
                Some(other) => return Err(other),
                None => {
                    return Err(last_error
                        .unwrap_or_else(|| ClientError::Config("no server URL given".to_owned())))
                }
            }
        }
    }
}

async fn api_error(status: StatusCode, response: reqwest::Response) -> ClientError {
    #[derive(Deserialize)]
    struct Body {
        error: Inner,
    }
    #[derive(Deserialize)]
    struct Inner {
        code: String,
        message: String,
    }
    let text = response.text().await.unwrap_or_default();
    match serde_json::from_str::<Body>(&text) {
        Ok(b) => ClientError::Api {
            status: status.as_u16(),
            code: b.error.code,
            message: b.error.message,
        },
        Err(_) => ClientError::Api {
            status: status.as_u16(),
            code: status
                .canonical_reason()
                .unwrap_or("error")
                .to_lowercase()
                .replace(' ', "_"),
            message: text.chars().take(200).collect(),
        },
    }
}

/// An error with its causes (reqwest's own text stops at "error sending
/// request", which hides a refused connection or an untrusted certificate).
fn with_causes(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
