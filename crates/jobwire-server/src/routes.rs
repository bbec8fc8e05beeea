//! The REST API (docs/protocol.md): jobs, their history, and publishing events for
//! workers in any language, plus health endpoints.

use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use jobwire_core::{
    CancelOutcome, Created, EventId, EventType, EventsAfter, Idempotency, JobId, JobState,
    JobStatus, ListQuery, NewEvent, NewJob, ResyncReason, Timestamp,
};
use serde::Deserialize;
use serde_json::{json, Map, Value};

use jobwire_core::protocol::truncated;

use crate::auth::{Principal, Scope};
use crate::credentials::Credentials;
use crate::error::ApiError;
use crate::state::AppState;

/// Authenticates a request and checks it holds `scope`.
pub(crate) fn caller(
    state: &AppState,
    credentials: &Credentials,
    scope: Scope,
) -> Result<Principal, ApiError> {
    let principal = credentials.rest(state)?;
    if !principal.has(scope) {
        return Err(ApiError::forbidden(format!(
            "the token lacks the {scope} scope"
        )));
    }
    Ok(principal)
}

fn job_id(raw: &str) -> Result<JobId, ApiError> {
    raw.parse()
        .map_err(|_| ApiError::not_found(format!("no job {raw}")))
}

/// Reads a job the caller may see; another user's job is "not found".
async fn visible_job(
    state: &AppState,
    principal: &Principal,
    id: &JobId,
) -> Result<JobState, ApiError> {
    let job = state.store.job(id).await?;
    if principal.may_see(&job.owner) {
        Ok(job)
    } else {
        Err(ApiError::not_found(format!("no job {id}")))
    }
}

#[derive(Debug, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct CreateJob {
    kind: String,
    #[serde(default)]
    params: Value,
    #[serde(default)]
    external: bool,
    /// The queue to wait in (default: the kind's).
    #[serde(default)]
    queue: Option<String>,
    /// At most one unfinished job of the kind per key.
    #[serde(default)]
    unique_key: Option<String>,
    /// How long one attempt may run (`"30s"`, `"5m"`).
    #[serde(default)]
    timeout: Option<String>,
    /// 0–9, higher first within the queue (default 5).
    #[serde(default)]
    priority: Option<i64>,
    /// Not before this time (RFC 3339): the job is `scheduled` until then.
    #[serde(default)]
    run_at: Option<String>,
    /// Not before this long from now (`"30s"`, `"2h"`).
    #[serde(default)]
    delay: Option<String>,
    /// Attempts in all (1–100; default: the worker's for the kind).
    #[serde(default)]
    max_attempts: Option<u32>,
    /// Waits between attempts: `{"base":"1s","factor":2,"max":"5m"}`.
    #[serde(default)]
    backoff: Option<jobwire_core::RetryBackoff>,
}

/// How far ahead a job may be scheduled.
const LONGEST_DELAY: std::time::Duration = std::time::Duration::from_secs(366 * 24 * 3600);

/// When a create's job becomes runnable (`run_at` or `delay`, checked);
/// `None`: now.
fn run_at_of(req: &CreateJob) -> Result<Option<Timestamp>, ApiError> {
    let now = Timestamp::now();
    let at = match (&req.run_at, &req.delay) {
        (Some(_), Some(_)) => {
            return Err(ApiError::unprocessable("give run_at or delay, not both"))
        }
        (None, None) => return Ok(None),
        (Some(text), None) => text.parse::<Timestamp>().map_err(|_| {
            ApiError::unprocessable(format!(
                "run_at {:?}: expected an RFC 3339 time such as \"2030-01-01T09:00:00Z\"",
                truncated(text, 64)
            ))
        })?,
        (None, Some(text)) => {
            let delay = humantime::parse_duration(text).map_err(|e| {
                ApiError::unprocessable(format!(
                    "delay {:?}: expected a duration such as \"30s\" or \"2h\" ({e})",
                    truncated(text, 64)
                ))
            })?;
            if delay > LONGEST_DELAY {
                return Err(ApiError::unprocessable("delay: at most a year ahead"));
            }
            now.plus(delay)
        }
    };
    if at > now.plus(LONGEST_DELAY) {
        return Err(ApiError::unprocessable("run_at: at most a year ahead"));
    }
    // A time already past runs at once.
    Ok((at > now).then_some(at))
}

/// A create's retry policy and priority, checked.
fn retry_of(req: &CreateJob) -> Result<(jobwire_core::RetryPolicy, u8), ApiError> {
    let policy = jobwire_core::RetryPolicy {
        max_attempts: req.max_attempts,
        backoff: req.backoff.clone(),
    };
    if req.external && !policy.is_unset() {
        return Err(ApiError::unprocessable(
            "an external job runs elsewhere: its retries are its program's (leave out max_attempts and backoff)",
        ));
    }
    policy.check().map_err(ApiError::unprocessable)?;
    Ok((policy, priority_of(req.priority)?))
}

/// A requested priority, checked (absent: the default).
pub(crate) fn priority_of(priority: Option<i64>) -> Result<u8, ApiError> {
    match priority {
        None => Ok(jobwire_core::job::DEFAULT_PRIORITY),
        Some(p) => u8::try_from(p)
            .ok()
            .filter(|p| *p <= jobwire_core::job::MAX_PRIORITY)
            .ok_or_else(|| {
                ApiError::unprocessable(format!("priority must be 0 to 9 (higher first), not {p}"))
            }),
    }
}

/// The shortest and longest attempt timeouts accepted.
const TIMEOUTS: (std::time::Duration, std::time::Duration) = (
    std::time::Duration::from_millis(100),
    std::time::Duration::from_secs(7 * 24 * 3600),
);

/// A create's `timeout`, checked.
fn timeout_of(req: &CreateJob) -> Result<Option<std::time::Duration>, ApiError> {
    let Some(text) = &req.timeout else {
        return Ok(None);
    };
    if req.external {
        return Err(ApiError::unprocessable(
            "an external job runs elsewhere: its timeout is its program's",
        ));
    }
    let timeout = humantime::parse_duration(text).map_err(|e| {
        ApiError::unprocessable(format!(
            "timeout {text:?}: expected a duration such as \"30s\" or \"5m\" ({e})"
        ))
    })?;
    if !(TIMEOUTS.0..=TIMEOUTS.1).contains(&timeout) {
        return Err(ApiError::unprocessable(format!(
            "timeout {text:?}: must be from {:?} to {:?}",
            TIMEOUTS.0, TIMEOUTS.1
        )));
    }
    Ok(Some(timeout))
}

/// `POST /api/jobs`.
pub async fn create_job(
    State(state): State<AppState>,
    credentials: Credentials,
    headers: axum::http::HeaderMap,
    body: Result<Json<CreateJob>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiError> {
    let principal = caller(&state, &credentials, Scope::JobsWrite)?;
    let Json(req) = body?;
    let once = idempotency(
        &headers,
        &principal.user,
        &req,
        state.config.idempotency_window,
    )?;
    let timeout = timeout_of(&req)?;
    let run_at = run_at_of(&req)?;
    let (retry, priority) = retry_of(&req)?;
    let params = params_object(&state, req.params)?;
    if req.external {
        if !principal.has(Scope::Worker) {
            return Err(ApiError::forbidden("external jobs need the worker scope"));
        }
        if EventType::parse(&req.kind).is_err() || req.kind.is_empty() {
            return Err(ApiError::unprocessable(format!(
                "invalid kind {:?}",
                truncated(&req.kind, 64)
            )));
        }
    } else {
        known_kind(&state, &req.kind, &params)?;
    }
    if let Err(wait) = state
        .create_rate
        .take(&principal.user, state.config.create_rate)
    {
        let mut response = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            format!(
                "more than {} job creations per second: retry in {wait:.1?}",
                state.config.create_rate
            ),
        )
        .into_response();
        let secs = wait.as_secs() + 1;
        if let Ok(value) = header::HeaderValue::from_str(&secs.to_string()) {
            response.headers_mut().insert(header::RETRY_AFTER, value);
        }
        return Ok(response);
    }
    let unfinished = state.store.unfinished_jobs(&principal.user).await?;
    if unfinished >= state.config.max_unfinished_jobs {
        return Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_jobs",
            format!(
                "{unfinished} of your jobs are scheduled, queued or running (at most {}): wait for some to finish, or cancel some",
                state.config.max_unfinished_jobs
            ),
        ));
    }
    if let Some(queue) = &req.queue {
        if req.external {
            return Err(ApiError::unprocessable(
                "an external job is in no queue: leave out queue",
            ));
        }
        jobwire_core::check_queue_name(queue).map_err(ApiError::unprocessable)?;
    }
    if let Some(key) = &req.unique_key {
        if key.is_empty() || key.len() > MAX_IDEMPOTENCY_KEY {
            return Err(ApiError::unprocessable(format!(
                "unique_key must be 1 to {MAX_IDEMPOTENCY_KEY} characters"
            )));
        }
    }
    let principal_user = principal.user.clone();
    let mut new = NewJob::new(req.kind, params, principal.user);
    new.external = req.external;
    new.queue = req.queue;
    new.unique_key = req.unique_key;
    new.timeout = timeout;
    new.run_at = run_at;
    new.retry = retry;
    new.priority = priority;
    if once.is_none() && new.unique_key.is_none() {
        let job = state.store.create_job(new).await?;
        return Ok((StatusCode::CREATED, Json(job)).into_response());
    }
    match state.store.create_job_once(new, once.as_ref()).await? {
        Created::New(job) => Ok((StatusCode::CREATED, Json(job)).into_response()),
        Created::Existing {
            job,
            same_request: true,
        } => Ok((StatusCode::OK, Json(job)).into_response()),
        Created::Existing { job, .. } => Err(ApiError::new(
            StatusCode::CONFLICT,
            "conflict",
            format!(
                "Idempotency-Key was used for another request, which made job {}: use a new key for a new job",
                job.id
            ),
        )),
        // A unique key is the kind's: another user's job may hold it,
        // and is not shown to this one.
        Created::Unique(job) if job.owner != principal_user => Err(ApiError::new(
            StatusCode::CONFLICT,
            "conflict",
            "another user's unfinished job of this kind holds this unique_key",
        )),
        // Flagged, so the caller can tell it from a new job.
        Created::Unique(job) => {
            let mut body = serde_json::to_value(&job)
                .map_err(|e| ApiError::unprocessable(format!("unreadable job: {e}")))?;
            body["existing"] = Value::Bool(true);
            Ok((StatusCode::OK, Json(body)).into_response())
        }
    }
}

/// The longest `Idempotency-Key`.
const MAX_IDEMPOTENCY_KEY: usize = 200;

/// The create's `Idempotency-Key`, scoped to the caller, with a digest of
/// the request (kind, params, external, queue: what decides the job).
fn idempotency(
    headers: &axum::http::HeaderMap,
    user: &str,
    req: &CreateJob,
    window: std::time::Duration,
) -> Result<Option<Idempotency>, ApiError> {
    let Some(value) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let key = value
        .to_str()
        .ok()
        .filter(|k| !k.is_empty() && k.len() <= MAX_IDEMPOTENCY_KEY)
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid",
                format!(
                    "Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY} visible ASCII characters"
                ),
            )
        })?;
    // serde_json keeps object keys sorted: equal requests serialize alike.
    let request = serde_json::to_vec(req)
        .map_err(|e| ApiError::unprocessable(format!("unreadable request: {e}")))?;
    Ok(Some(Idempotency {
        key: format!("{user}\n{key}"),
        fingerprint: blake3::hash(&request).to_hex().to_string(),
        window,
    }))
}

/// A job's `params`: an object (absent: empty) of at most the configured
/// size.
pub(crate) fn params_object(state: &AppState, params: Value) -> Result<Value, ApiError> {
    let params = match params {
        Value::Null => Value::Object(Map::new()),
        Value::Object(map) => Value::Object(map),
        _ => return Err(ApiError::unprocessable("params must be a JSON object")),
    };
    let size = params.to_string().len();
    if size > state.config.max_params_bytes {
        return Err(ApiError::unprocessable(format!(
            "params are {size} bytes; at most {} are accepted",
            state.config.max_params_bytes
        )));
    }
    Ok(params)
}

/// Checks that jobwire's workers know `kind`, and the parameters of the
/// built-in kinds (docs/protocol.md).
pub(crate) fn known_kind(state: &AppState, kind: &str, params: &Value) -> Result<(), ApiError> {
    if !state.config.kinds.iter().any(|k| k == kind) {
        return Err(ApiError::unprocessable(format!(
            "unknown kind {:?}; known kinds: {}",
            truncated(kind, 64),
            state.config.kinds.join(", ")
        )));
    }
    jobwire_core::kinds::check_params(kind, params)
        .map_err(|m| ApiError::unprocessable(format!("{kind}: {m}")))
}

#[derive(Debug, Deserialize)]
pub struct ListParams {
    status: Option<String>,
    kind: Option<String>,
    queue: Option<String>,
    /// RFC 3339: only jobs that finished at or after it.
    finished_after: Option<String>,
    limit: Option<usize>,
    cursor: Option<String>,
}

/// `GET /api/jobs`.
pub async fn list_jobs(
    State(state): State<AppState>,
    credentials: Credentials,
    Query(params): Query<ListParams>,
) -> Result<Json<Value>, ApiError> {
    let principal = caller(&state, &credentials, Scope::JobsRead)?;
    let status = params
        .status
        .map(|s| s.parse::<JobStatus>())
        .transpose()
        .map_err(ApiError::unprocessable)?;
    let limit = params.limit.unwrap_or(50);
    if !(1..=state.config.max_page).contains(&limit) {
        return Err(ApiError::unprocessable(format!(
            "limit must be from 1 to {}",
            state.config.max_page
        )));
    }
    let cursor = params
        .cursor
        .map(|c| c.parse::<JobId>())
        .transpose()
        .map_err(|e| ApiError::unprocessable(e.to_string()))?;
    if let Some(queue) = &params.queue {
        jobwire_core::check_queue_name(queue).map_err(ApiError::unprocessable)?;
    }
    if params
        .kind
        .as_ref()
        .is_some_and(|k| k.is_empty() || k.len() > 256)
    {
        return Err(ApiError::unprocessable("kind must be 1 to 256 bytes"));
    }
    let finished_after = params
        .finished_after
        .map(|t| t.parse::<Timestamp>())
        .transpose()
        .map_err(|_| ApiError::unprocessable("finished_after must be an RFC 3339 time"))?;
    let owner = (!principal.scopes.contains(&Scope::Admin)).then(|| principal.user.clone());
    let page = state
        .store
        .list_jobs(&ListQuery {
            owner,
            status,
            kind: params.kind,
            queue: params.queue,
            finished_after,
            limit,
            cursor,
        })
        .await?;
    let jobs = state
        .served
        .annotate(state.queue.as_ref(), &page.jobs)
        .await;
    Ok(Json(json!({"jobs": jobs, "next_cursor": page.next_cursor})))
}

/// `GET /api/jobs/{id}`.
pub async fn get_job(
    State(state): State<AppState>,
    credentials: Credentials,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let principal = caller(&state, &credentials, Scope::JobsRead)?;
    let job = visible_job(&state, &principal, &job_id(&id)?).await?;
    let mut annotated = state
        .served
        .annotate(state.queue.as_ref(), std::slice::from_ref(&job))
        .await;
    Ok(Json(annotated.pop().unwrap_or(Value::Null)))
}

/// `POST /api/jobs/{id}/cancel`.
pub async fn cancel_job(
    State(state): State<AppState>,
    credentials: Credentials,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let principal = caller(&state, &credentials, Scope::JobsWrite)?;
    let id = job_id(&id)?;
    visible_job(&state, &principal, &id).await?;
    let outcome = match state.store.cancel(&id).await? {
        CancelOutcome::Cancelled => "cancelled",
        CancelOutcome::Requested => "cancel_requested",
        CancelOutcome::AlreadyFinished(_) => "already_finished",
    };
    let job = state.store.job(&id).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({"outcome": outcome, "job": job})),
    )
        .into_response())
}

/// `POST /api/jobs/{id}/retry` (scope `admin`): a failed job gets a new
/// attempt (`job_retrying`, then `job_queued`; ids continue). 409 for a
/// job that has not failed.
pub async fn retry_job(
    State(state): State<AppState>,
    credentials: Credentials,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let principal = caller(&state, &credentials, Scope::Admin)?;
    let id = job_id(&id)?;
    match jobwire_core::settle::retry_failed(state.store.as_ref(), &id, &principal.user).await {
        Ok(job) => Ok((StatusCode::ACCEPTED, Json(job)).into_response()),
        Err(jobwire_core::BackendError::Invalid(message)) => {
            Err(ApiError::new(StatusCode::CONFLICT, "conflict", message))
        }
        Err(e) => Err(e.into()),
    }
}

/// `DELETE /api/jobs/{id}`.
pub async fn delete_job(
    State(state): State<AppState>,
    credentials: Credentials,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let principal = caller(&state, &credentials, Scope::JobsWrite)?;
    let id = job_id(&id)?;
    visible_job(&state, &principal, &id).await?;
    state.store.delete(&id).await?;
    // This instance's watchers hear it now (others through the live feed).
    state.hub.recheck(&id);
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize)]
pub struct HistoryParams {
    since: Option<u64>,
    limit: Option<usize>,
    epoch: Option<String>,
}

/// `GET /api/jobs/{id}/events?since=&limit=`: a page of the log. The events
/// are written out as stored, without being decoded.
pub async fn history(
    State(state): State<AppState>,
    credentials: Credentials,
    Path(id): Path<String>,
    Query(params): Query<HistoryParams>,
) -> Result<Response, ApiError> {
    let principal = caller(&state, &credentials, Scope::JobsRead)?;
    let id = job_id(&id)?;
    let job = visible_job(&state, &principal, &id).await?;
    let limit = params.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::unprocessable("limit must be from 1 to 1000"));
    }
    let epoch = params
        .epoch
        .map(|e| e.parse())
        .transpose()
        .map_err(|e: jobwire_core::IdError| ApiError::unprocessable(e.to_string()))?;
    let since = EventId(params.since.unwrap_or(0));
    match state
        .store
        .events_after(&id, since, epoch.as_ref(), limit)
        .await?
    {
        EventsAfter::Events(records) => {
            // The history the events were read from (the job's epoch may
            // have changed since it was read above).
            let epoch = records.first().map_or(&job.epoch, |r| &r.epoch);
            let mut body =
                Vec::with_capacity(64 + records.iter().map(|r| r.json.len() + 1).sum::<usize>());
            body.extend_from_slice(br#"{"job_id":""#);
            body.extend_from_slice(id.as_str().as_bytes());
            body.extend_from_slice(br#"","epoch":""#);
            body.extend_from_slice(epoch.as_str().as_bytes());
            body.extend_from_slice(br#"","events":["#);
            for (i, record) in records.iter().enumerate() {
                if i > 0 {
                    body.push(b',');
                }
                body.extend_from_slice(&record.json);
            }
            body.extend_from_slice(b"]}");
            Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
        }
        EventsAfter::Resync(reason) => {
            let message = match reason {
                ResyncReason::Trimmed { oldest } => {
                    format!("events after {since} were trimmed; the oldest kept is {oldest}")
                }
                ResyncReason::EpochChanged { current } => format!(
                    "the job's log is at epoch {current}, not {}: it was rebuilt, or the epoch \
                     is not this job's; read it again from the start",
                    epoch.as_ref().map_or("(none)", |e| e.as_str())
                ),
                ResyncReason::Ahead { last } => {
                    format!("since {since} is beyond the last event {last}")
                }
            };
            Err(ApiError::new(StatusCode::GONE, "resync_required", message))
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublishItem {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    data: Value,
    attempt: Option<u32>,
    n: Option<u64>,
}

/// Most events in one `POST /api/jobs/{id}/events`.
const MAX_PUBLISH_BATCH: usize = 1000;

/// `POST /api/jobs/{id}/events` (scope `worker`): the same atomic publish
/// path as jobwire's own workers.
pub async fn publish(
    State(state): State<AppState>,
    credentials: Credentials,
    Path(id): Path<String>,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    caller(&state, &credentials, Scope::Worker)?;
    let id = job_id(&id)?;
    let (items, single) = publish_items(&headers, &body)?;
    if items.is_empty() || items.len() > MAX_PUBLISH_BATCH {
        return Err(ApiError::unprocessable(format!(
            "send 1 to {MAX_PUBLISH_BATCH} events"
        )));
    }
    let mut events = Vec::with_capacity(items.len());
    for item in items {
        let kind = EventType::parse(&item.kind).map_err(ApiError::unprocessable)?;
        if kind == EventType::JobQueued {
            return Err(ApiError::unprocessable(
                "job_queued is written by jobwire itself",
            ));
        }
        if !matches!(item.data, Value::Object(_) | Value::Null) {
            return Err(ApiError::unprocessable("data must be a JSON object"));
        }
        // A body within the limit holds no event over it: measure an
        // event's data only when the body is larger.
        if body.len() > state.config.max_event_bytes {
            let size = item.data.to_string().len();
            if size > state.config.max_event_bytes {
                return Err(ApiError::unprocessable(format!(
                    "an event's data is {size} bytes; at most {} are accepted",
                    state.config.max_event_bytes
                )));
            }
        }
        let mut event = NewEvent::new(kind, item.data);
        match (item.attempt, item.n) {
            (Some(attempt), Some(n)) => event = event.fenced(attempt, n),
            (None, None) => {}
            _ => return Err(ApiError::unprocessable("attempt and n go together")),
        }
        events.push(event);
    }
    // Label values are bounded: the built-in types, and `other` for every
    // custom one (a publisher could otherwise create a series per name).
    let types: Vec<&'static str> = events
        .iter()
        .map(|e| e.kind.builtin_name().unwrap_or("other"))
        .collect();
    let outcome = state.store.publish(&id, &events).await?;
    for kind in types {
        state.stats.published(kind);
    }
    let status = if outcome.ids.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    let body = if single {
        json!({"id": outcome.ids.first(), "duplicate": outcome.ids.is_empty(),
               "cancel_requested": outcome.cancel_requested})
    } else {
        json!({"ids": outcome.ids, "duplicates": outcome.duplicates,
               "cancel_requested": outcome.cancel_requested})
    };
    Ok((status, Json(body)).into_response())
}

/// The events of a publish body: one event object, or an array of them
/// (then `single` is false). Read by the body's first character, not with
/// an untagged enum, which would parse the whole body twice.
fn publish_items(
    headers: &axum::http::HeaderMap,
    body: &[u8],
) -> Result<(Vec<PublishItem>, bool), ApiError> {
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| {
            let v = v.trim();
            v.eq_ignore_ascii_case("application/json") || v.ends_with("+json")
        });
    if !json {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "expected a body of Content-Type: application/json",
        ));
    }
    let malformed = |e: serde_json::Error| {
        ApiError::unprocessable(format!("not an event or an array of events: {e}"))
    };
    match body.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'[') => Ok((serde_json::from_slice(body).map_err(malformed)?, false)),
        _ => Ok((vec![serde_json::from_slice(body).map_err(malformed)?], true)),
    }
}

/// `GET /api/workers` (scope `admin`): the worker registry, each worker
/// with `live` (seen within its lease, by this gateway's clock).
pub async fn workers(
    State(state): State<AppState>,
    credentials: Credentials,
) -> Result<Json<Value>, ApiError> {
    caller(&state, &credentials, Scope::Admin)?;
    let now = Timestamp::now();
    let workers: Vec<Value> = state
        .queue
        .workers()
        .await?
        .into_iter()
        .map(|w| {
            let live = w.is_live(now);
            let mut value = serde_json::to_value(&w).unwrap_or(Value::Null);
            if let Value::Object(map) = &mut value {
                map.insert("live".to_owned(), Value::Bool(live));
            }
            value
        })
        .collect();
    Ok(Json(json!({ "workers": workers })))
}

/// `GET /api/queues` (scope `admin`): per queue, its waiting, scheduled
/// and running jobs, its throughput (finished in the last 1 and 15 whole
/// minutes) and failures of the last hour, the age of its oldest waiting
/// entry, the live workers serving it, its limits and whether it is
/// paused; queues that live workers serve are listed even when empty.
pub async fn queues(
    State(state): State<AppState>,
    credentials: Credentials,
) -> Result<Json<Value>, ApiError> {
    caller(&state, &credentials, Scope::Admin)?;
    let now = Timestamp::now();
    let mut overview = state.queue.queue_overview().await?;
    let live: Vec<jobwire_core::WorkerInfo> = state
        .queue
        .workers()
        .await?
        .into_iter()
        .filter(|w| w.is_live(now))
        .collect();
    for name in live.iter().flat_map(|w| &w.queues) {
        if !overview.iter().any(|q| &q.name == name) {
            overview.push(jobwire_core::QueueOverview {
                name: name.clone(),
                ..Default::default()
            });
        }
    }
    overview.sort_by(|a, b| a.name.cmp(&b.name));
    let queues: Vec<Value> = overview
        .into_iter()
        .map(|q| {
            let workers: Vec<&str> = live
                .iter()
                .filter(|w| w.queues.contains(&q.name))
                .map(|w| w.name.as_str())
                .collect();
            json!({
                "name": q.name,
                "waiting": q.waiting,
                "scheduled": q.scheduled,
                "running": q.running,
                "finished_1m": q.finished_1m,
                "finished_15m": q.finished_15m,
                "failed_1h": q.failed_1h,
                "oldest_waiting_age_ms": q.oldest_waiting
                    .map(|t| (now.unix_millis() - t.unix_millis()).max(0)),
                "workers": workers,
                "paused": q.paused,
                "limits": q.limits,
            })
        })
        .collect();
    Ok(Json(json!({ "queues": queues })))
}

/// `PUT /api/queues/{queue}/limits` (scope `admin`): the queue's
/// fleet-wide limits, `{"concurrency": N, "rate": {"max": N, "per":
/// "1m"}}`; `{}` lifts them. Claims see the change within about a second.
pub async fn set_limits(
    State(state): State<AppState>,
    credentials: Credentials,
    Path(queue): Path<String>,
    body: Result<Json<jobwire_core::QueueLimits>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    caller(&state, &credentials, Scope::Admin)?;
    jobwire_core::check_queue_name(&queue).map_err(ApiError::unprocessable)?;
    let Json(limits) = body?;
    limits.check().map_err(ApiError::unprocessable)?;
    state.queue.set_limits(&queue, &limits).await?;
    Ok(Json(json!({"queue": queue, "limits": limits})))
}

/// `GET /api/throughput` (scope `admin`): jobs started and finished per
/// minute over the last hour, store-wide (the minutes that had any).
pub async fn throughput(
    State(state): State<AppState>,
    credentials: Credentials,
) -> Result<Json<Value>, ApiError> {
    caller(&state, &credentials, Scope::Admin)?;
    let minutes = state.store.throughput(Timestamp::now()).await?;
    Ok(Json(json!({ "minutes": minutes })))
}

/// `POST /api/queues/{queue}/pause` (scope `admin`): workers stop claiming
/// from the queue (within about a second); running jobs finish.
pub async fn pause_queue(
    State(state): State<AppState>,
    credentials: Credentials,
    Path(queue): Path<String>,
) -> Result<Json<Value>, ApiError> {
    set_paused(state, credentials, queue, true).await
}

/// `POST /api/queues/{queue}/resume` (scope `admin`).
pub async fn resume_queue(
    State(state): State<AppState>,
    credentials: Credentials,
    Path(queue): Path<String>,
) -> Result<Json<Value>, ApiError> {
    set_paused(state, credentials, queue, false).await
}

async fn set_paused(
    state: AppState,
    credentials: Credentials,
    queue: String,
    paused: bool,
) -> Result<Json<Value>, ApiError> {
    caller(&state, &credentials, Scope::Admin)?;
    jobwire_core::check_queue_name(&queue).map_err(ApiError::unprocessable)?;
    state.queue.set_paused(&queue, paused).await?;
    Ok(Json(json!({"queue": queue, "paused": paused})))
}

/// `GET /healthz`: the process is alive.
pub async fn healthz() -> &'static str {
    "ok"
}

/// `GET /readyz`: the backend answers and the live feed is being read.
pub async fn readyz(State(state): State<AppState>) -> Response {
    let backend = state.store.ping().await;
    let tailing = state.tailer.is_up();
    match (backend, tailing) {
        (Ok(()), true) => (StatusCode::OK, "ready").into_response(),
        (Err(e), _) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("backend unreachable: {e}"),
        )
            .into_response(),
        (Ok(()), false) => {
            (StatusCode::SERVICE_UNAVAILABLE, "live feed not connected").into_response()
        }
    }
}
