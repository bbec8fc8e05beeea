//! The cron schedules' API (scope `admin`): `GET/POST /api/schedules`,
//! `DELETE /api/schedules/{name}`, `POST /api/schedules/{name}/pause` and
//! `/resume`. Every gateway and worker fires them
//! (`jobwire_core::schedule::fire_due`); these routes only keep them.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use jobwire_core::schedule::{check_schedule_name, Cron, Missed};
use jobwire_core::{Schedule, Timestamp};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::auth::Scope;
use crate::credentials::Credentials;
use crate::error::ApiError;
use crate::routes::{caller, known_kind, params_object, priority_of};
use crate::state::AppState;

/// The body of `POST /api/schedules`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewSchedule {
    name: String,
    cron: String,
    #[serde(default)]
    tz: Option<String>,
    kind: String,
    #[serde(default)]
    params: Value,
    #[serde(default)]
    queue: Option<String>,
    #[serde(default)]
    priority: Option<i64>,
    /// `once` (default) or `skip`.
    #[serde(default)]
    missed: Missed,
    /// Created paused.
    #[serde(default)]
    paused: bool,
}

/// How many schedules may exist: each is read by every process every
/// round.
const MAX_SCHEDULES: usize = 1_000;

/// `GET /api/schedules`: every schedule, by name.
pub async fn list(
    State(state): State<AppState>,
    credentials: Credentials,
) -> Result<Json<Value>, ApiError> {
    caller(&state, &credentials, Scope::Admin)?;
    let schedules = state.schedules.schedules().await?;
    Ok(Json(json!({ "schedules": schedules })))
}

/// `POST /api/schedules`: creates a schedule (201) or replaces the one of
/// that name (200). Its first tick is the first after now.
pub async fn put(
    State(state): State<AppState>,
    credentials: Credentials,
    body: Result<Json<NewSchedule>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiError> {
    let principal = caller(&state, &credentials, Scope::Admin)?;
    let Json(req) = body?;
    check_schedule_name(&req.name).map_err(ApiError::unprocessable)?;
    let tz = req.tz.filter(|tz| !tz.is_empty());
    let cron = Cron::parse(&req.cron, tz.as_deref()).map_err(ApiError::unprocessable)?;
    let params = params_object(&state, req.params)?;
    known_kind(&state, &req.kind, &params)?;
    if let Some(queue) = &req.queue {
        jobwire_core::check_queue_name(queue).map_err(ApiError::unprocessable)?;
    }
    let now = Timestamp::now();
    let next_fire = cron.next_after(now).map_err(ApiError::unprocessable)?;
    let existing = state.schedules.schedules().await?;
    let replaces = existing.iter().find(|s| s.name == req.name);
    if replaces.is_none() && existing.len() >= MAX_SCHEDULES {
        return Err(ApiError::unprocessable(format!(
            "there are {MAX_SCHEDULES} schedules already: delete some first"
        )));
    }
    let schedule = Schedule {
        name: req.name,
        cron: req.cron.trim().to_owned(),
        tz,
        kind: req.kind,
        params,
        queue: req.queue,
        priority: priority_of(req.priority)?,
        missed: req.missed,
        owner: principal.user,
        paused: req.paused,
        next_fire,
        last_fire: replaces.and_then(|s| s.last_fire),
        last_job: replaces.and_then(|s| s.last_job.clone()),
        created_at: replaces.map_or(now, |s| s.created_at),
    };
    state.schedules.put_schedule(&schedule, None).await?;
    let status = if replaces.is_some() {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((status, Json(json!(schedule))).into_response())
}

/// `DELETE /api/schedules/{name}`: 204, or 404.
pub async fn delete(
    State(state): State<AppState>,
    credentials: Credentials,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    caller(&state, &credentials, Scope::Admin)?;
    if state.schedules.delete_schedule(&name).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(no_such(&name))
    }
}

/// `POST /api/schedules/{name}/pause`: no more ticks fire until resumed.
pub async fn pause(
    State(state): State<AppState>,
    credentials: Credentials,
    Path(name): Path<String>,
) -> Result<Json<Schedule>, ApiError> {
    set_paused(state, credentials, name, true).await
}

/// `POST /api/schedules/{name}/resume`: ticks fire again from the first
/// after now (those passed while paused are not owed).
pub async fn resume(
    State(state): State<AppState>,
    credentials: Credentials,
    Path(name): Path<String>,
) -> Result<Json<Schedule>, ApiError> {
    set_paused(state, credentials, name, false).await
}

async fn set_paused(
    state: AppState,
    credentials: Credentials,
    name: String,
    paused: bool,
) -> Result<Json<Schedule>, ApiError> {
    caller(&state, &credentials, Scope::Admin)?;
    // A compare-and-set against a firing process: go again when it moved
    // the schedule on meanwhile.
    for _ in 0..10 {
        let Some(current) = state
            .schedules
            .schedules()
            .await?
            .into_iter()
            .find(|s| s.name == name)
        else {
            return Err(no_such(&name));
        };
        if current.paused == paused {
            return Ok(Json(current));
        }
        let mut changed = current.clone();
        changed.paused = paused;
        if !paused {
            let cron = Cron::parse(&changed.cron, changed.tz.as_deref())
                .map_err(ApiError::unprocessable)?;
            changed.next_fire = cron
                .next_after(Timestamp::now())
                .map_err(ApiError::unprocessable)?;
        }
        if state
            .schedules
            .put_schedule(&changed, Some(&current))
            .await?
        {
            return Ok(Json(changed));
        }
    }
    Err(ApiError::new(
        StatusCode::CONFLICT,
        "conflict",
        format!("schedule {name:?} kept changing; try again"),
    ))
}

fn no_such(name: &str) -> ApiError {
    ApiError::not_found(format!(
        "no schedule named {:?}",
        jobwire_core::protocol::truncated(name, 80)
    ))
}
