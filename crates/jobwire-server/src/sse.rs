//! Server-Sent Events: `GET /api/jobs/{id}/stream` (docs/protocol.md).
//!
//! Each message's `id:` is `EPOCH:ID`, so a browser's `EventSource` resumes
//! exactly by itself: on reconnect it sends that back as `Last-Event-ID`. The
//! same `Session` as WebSockets decides what to send; a task feeds the
//! response stream and ends on shutdown or overflow (the client reconnects).
//!
//! Messages are written as SSE text by [`sse_message`], one buffer each,
//! rather than through axum's `Sse`/`Event`: those grow a buffer field by
//! field and check every value for line breaks (measured: ~3,000 of a
//! delivery's ~11,400 instructions).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use jobwire_core::{Epoch, EventId, JobId, Resume};
use serde::Deserialize;
use tokio::sync::mpsc;
use tokio::time::Instant;
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
    let (tx, rx) = mpsc::channel::<Result<Bytes, Infallible>>(state.config.client_queue.max(1));
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
            // registration in the timer wheel each time. One timer for the
            // keep-alive comment and the token's expiry.
            let mut next_comment = Instant::now() + KEEP_ALIVE;
            let timer = tokio::time::sleep_until(next_comment.min(expires));
            tokio::pin!(timer);
            let stop = outbox.stop.cancelled();
            tokio::pin!(stop);
            // Likewise the wait for the client to go: a fresh `closed()` per
            // delivery joined (and left) the channel's waiter list each time.
            let closed = tx.closed();
            tokio::pin!(closed);
            let (mut timer_armed, mut stop_armed, mut closed_armed) = (false, false, false);
            loop {
                let ended = session.is_empty();
                for item in out.drain(..) {
                    let published = match &item {
                        Out::Event { frame, .. } => Some(frame.published),
                        Out::Control(_) => None,
                    };
                    if tx.send(Ok(sse_message(item))).await.is_err() {
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
                    () = when_due(timer.as_mut(), &mut timer_armed, tokio::time::Sleep::is_elapsed) => {
                        timer_armed = false;
                        let now = Instant::now();
                        if now >= expires {
                            let expired = jobwire_core::Control::Refused {
                                code: jobwire_core::Refusal::Unauthorized,
                                message: "token expired: reconnect with a fresh token".to_owned(),
                                job_id: None,
                            };
                            let _ = tx.send(Ok(sse_message(Out::notice(&expired)))).await;
                            return;
                        }
                        // A comment keeps proxies from closing a quiet
                        // stream; a stream with messages queued needs none.
                        let _ = tx.try_send(Ok(Bytes::from_static(b":\n\n")));
                        next_comment = now + KEEP_ALIVE;
                        timer.as_mut().reset(next_comment.min(expires));
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
    Ok((
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        Body::from_stream(ReceiverStream::new(rx)),
    )
        .into_response())
}

/// How often a stream carries a comment line, to keep it open through
/// proxies that close quiet connections.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// One SSE message, in one buffer of the right size: `id: EPOCH:ID` when
/// it moves the resume position, then its JSON as `data:`. The JSON is
/// compact (serde_json's), so it is one line; were it not, each line
/// would be a `data:` line of its own, which a reader joins back with line
/// breaks (JSON whitespace, the same document).
fn sse_message(item: Out) -> Bytes {
    let (position, json): (Option<(&Epoch, EventId)>, &str) = match &item {
        Out::Event { frame } => (Some((&frame.epoch, frame.id)), frame.text.as_str()),
        Out::Control(notice) => (
            notice.position.as_ref().map(|(epoch, id)| (epoch, *id)),
            &notice.json,
        ),
    };
    let mut message = Vec::with_capacity(json.len() + 64);
    if let Some((epoch, id)) = position {
        message.extend_from_slice(b"id: ");
        message.extend_from_slice(epoch.as_str().as_bytes());
        message.push(b':');
        message.extend_from_slice(itoa::Buffer::new().format(id.0).as_bytes());
        message.push(b'\n');
    }
    let mut rest = json.as_bytes();
    loop {
        let end = memchr::memchr2(b'\n', b'\r', rest).unwrap_or(rest.len());
        message.extend_from_slice(b"data: ");
        message.extend_from_slice(&rest[..end]);
        message.push(b'\n');
        if end == rest.len() {
            break;
        }
        rest = &rest[end + 1..];
    }
    message.push(b'\n');
    Bytes::from(message)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::Frame;
    use crate::session::Notice;
    use axum::extract::ws::Utf8Bytes;

    fn control(json: &str, position: Option<(Epoch, EventId)>) -> Out {
        Out::Control(Box::new(Notice {
            json: json.to_owned(),
            position,
        }))
    }

    #[test]
    fn messages_are_an_id_line_and_data_lines() {
        let epoch: Epoch = "e1".parse().expect("an epoch");
        let job: JobId = "01ARZ3NDEKTSV4RRFFQ69G5FAV".parse().expect("a job id");
        let event = Out::Event {
            frame: Arc::new(Frame {
                job_id: job,
                id: EventId(7),
                epoch: epoch.clone(),
                published: jobwire_core::Timestamp::now(),
                text: Utf8Bytes::from_static(r#"{"id":7,"type":"progress"}"#),
            }),
        };
        assert_eq!(
            &sse_message(event)[..],
            b"id: e1:7\ndata: {\"id\":7,\"type\":\"progress\"}\n\n"
        );
        let notice = control("{\"type\":\"pong\"}", None);
        assert_eq!(&sse_message(notice)[..], b"data: {\"type\":\"pong\"}\n\n");
        // JSON with line breaks (whitespace) is sent as several data lines.
        let spread = control("{\n\"a\": 1\r\n}", Some((epoch, EventId(3))));
        assert_eq!(
            &sse_message(spread)[..],
            b"id: e1:3\ndata: {\ndata: \"a\": 1\ndata: \ndata: }\n\n"
        );
    }
}
