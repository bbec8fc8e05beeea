//! Server-Sent Events: `GET /api/jobs/{id}/stream` (docs/protocol.md).
//!
//! Each message's `id:` is `EPOCH:ID`, so a browser's `EventSource` resumes
//! exactly by itself: on reconnect it sends that back as `Last-Event-ID`. The
//! same `Session` as WebSockets decides what to send; a task feeds the
//! response stream and ends on shutdown or overflow (the client reconnects).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use jobwire_core::{JobId, Resume};
use serde::Deserialize;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tracing::Instrument;

use crate::auth::Scope;
use crate::credentials::Credentials;
use crate::error::ApiError;
use crate::session::{Out, Session, SubscribeError};
use crate::state::AppState;
use crate::ws::when_due;

#[derive(Debug, Default, Deserialize)]
pub struct StreamQuery {
    since: Option<String>,
    epoch: Option<String>,
}

/// `GET /api/jobs/{id}/stream`.
pub async fn stream(
    State(state): State<AppState>,
    Path(job): Path<String>,
    Query(query): Query<StreamQuery>,
    headers: HeaderMap,
    credentials: Credentials,
    http_slot: Option<axum::Extension<Arc<crate::listener::ConnSlot>>>,
) -> Result<Response, ApiError> {
    let principal = credentials.stream(&state)?;
    if !principal.has(Scope::JobsRead) {
        return Err(ApiError::forbidden("the token lacks the jobs:read scope"));
    }
    let job: JobId = job
        .parse()
        .map_err(|_| ApiError::not_found(format!("no job {job}")))?;
    let resume = match headers.get("last-event-id").and_then(|v| v.to_str().ok()) {
        Some(value) => Some(Resume::from_last_event_id(value).map_err(ApiError::bad_request)?),
        None => Resume::from_query(query.since.as_deref(), query.epoch.as_deref())
            .map_err(ApiError::bad_request)?,
    };
    let slot = state
        .connections
        .acquire(&principal.user, &state.config)
        .map_err(|e| {
            ApiError::new(
                axum::http::StatusCode::TOO_MANY_REQUESTS,
                "too_many_connections",
                e.to_string(),
            )
        })?;
    // From here the connection is a live stream, counted by the live
    // limits (just acquired), no longer as plain HTTP.
    if let Some(axum::Extension(http_slot)) = http_slot {
        http_slot.promote();
    }
    let (mut session, outbox, mut inbox) = Session::open(&state, principal, 1);
    let mut first = Vec::new();
    session
        .subscribe(&job, resume, &mut first)
        .await
        .map_err(|e| match e {
            SubscribeError::NotFound(_) => ApiError::not_found(e.to_string()),
            SubscribeError::Forbidden(_) => ApiError::not_found(format!("no job {job}")),
            SubscribeError::TooMany(_) => ApiError::bad_request(e.to_string()),
            SubscribeError::Backend(e) => ApiError::from(e),
        })?;
    let (tx, rx) = mpsc::channel::<Result<Event, Infallible>>(state.config.client_queue.max(1));
    // The stream ends when its token does, like a WebSocket (an
    // `EventSource` then reconnects, and must present a valid token).
    let expires = crate::ws::deadline(&session.principal);
    let span =
        tracing::info_span!("sse", conn = outbox.id, user = %session.principal.user, job = %job);
    let tasks = state.tasks.clone();
    // Captures are used in place (a capture moved into a local would be a
    // second copy in every idle stream's task), and the rare log re-read is
    // boxed.
    tasks.spawn(
        async move {
            let _slot = slot;
            let _gauge = state.stats.sse();
            let mut out = first;
            // Made once, and polled only when they may have fired (see
            // `ws::when_due`): a timer made anew for every delivery cost a
            // registration in the timer wheel each time.
            let expiry = tokio::time::sleep_until(expires);
            tokio::pin!(expiry);
            let stop = outbox.stop.cancelled();
            tokio::pin!(stop);
            // Likewise the wait for the client to go: a fresh `closed()` per
            // delivery joined (and left) the channel's waiter list each time.
            let closed = tx.closed();
            tokio::pin!(closed);
            let (mut expiry_armed, mut stop_armed, mut closed_armed) = (false, false, false);
            loop {
                let ended = session.is_empty();
                for item in out.drain(..) {
                    let published = match &item {
                        Out::Event { frame, .. } => Some(frame.published),
                        Out::Control(_) => None,
                    };
                    if tx.send(Ok(to_sse(item))).await.is_err() {
                        return;
                    }
                    state.stats.sent(1);
                    if let Some(at) = published {
                        state.stats.delivered(at);
                    }
                }
                // The job is gone (its `gone` message was the last).
                if ended {
                    return;
                }
                tokio::select! {
                    biased;
                    () = when_due(expiry.as_mut(), &mut expiry_armed, tokio::time::Sleep::is_elapsed) => {
                        let expired = jobwire_core::Control::Refused {
                            code: jobwire_core::Refusal::Unauthorized,
                            message: "token expired: reconnect with a fresh token".to_owned(),
                            job_id: None,
                        };
                        let _ = tx.send(Ok(Event::default().data(expired.to_json()))).await;
                        return;
                    }
                    () = when_due(stop.as_mut(), &mut stop_armed, |_| outbox.stop.is_cancelled()) => {
                        if !state.shutdown.is_cancelled() {
                            state.stats.slow_disconnect();
                        }
                        return;
                    }
                    () = when_due(closed.as_mut(), &mut closed_armed, |_| tx.is_closed()) => return,
                    delivery = inbox.recv() => {
                        // Events in step are handled without a future; only
                        // a log re-read awaits (boxed: rare, and large).
                        if let Some(slow) = session.deliver_now(delivery, &mut out) {
                            if let Err(e) = Box::pin(session.deliver(slow, &mut out)).await {
                                tracing::warn!(error = %e, "cannot read a job log for an SSE client");
                                return;
                            }
                        }
                    }
                }
            }
        }
        .instrument(span),
    );
    Ok(Sse::new(ReceiverStream::new(rx))
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response())
}

fn to_sse(item: Out) -> Event {
    match item {
        Out::Event { frame } => Event::default()
            .id(format!("{}:{}", frame.epoch, frame.id))
            .data(frame.text.as_str()),
        Out::Control(notice) => {
            let event = Event::default().data(&notice.json);
            match notice.position {
                Some((epoch, id)) => event.id(format!("{epoch}:{id}")),
                None => event,
            }
        }
    }
}
