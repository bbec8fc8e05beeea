//! WebSocket endpoints (docs/protocol.md): `/ws/jobs/{id}` watches one job,
//! `/ws/jobs` any number through `subscribe` / `unsubscribe` frames.
//!
//! A connection is one task running one `select!` over: server shutdown
//! (close 1001), slow-consumer overflow (1013), token expiry (4401), the
//! outbox the Hub fills, client frames, and the heartbeat. Outgoing messages
//! are fed in a batch and flushed once.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, Query, State};
use axum::response::Response;
use futures_util::task::AtomicWaker;
use futures_util::{SinkExt, Stream};
use jobwire_core::{ClientFrame, Control, JobId, Refusal, Resume};
use serde::Deserialize;
use tokio::time::Instant;
use tracing::Instrument;

use crate::auth::{AuthError, Principal, Scope};
use crate::credentials::Credentials;
use crate::hub::{Inbox, Outbox};
use crate::limits::TokenBucket;
use crate::metrics::Stats;
use crate::session::{Out, Session, SubscribeError};
use crate::state::AppState;

/// Close codes of docs/protocol.md.
pub mod close {
    pub const GOING_AWAY: u16 = 1001;
    pub const UNSUPPORTED: u16 = 1003;
    pub const POLICY: u16 = 1008;
    pub const TOO_BIG: u16 = 1009;
    pub const TRY_AGAIN: u16 = 1013;
    pub const UNAUTHORIZED: u16 = 4401;
    pub const FORBIDDEN: u16 = 4403;
    pub const NOT_FOUND: u16 = 4404;
    pub const PROTOCOL: u16 = 1002;
    pub const INVALID_DATA: u16 = 1007;
}

/// Slots of the outgoing batch a connection keeps between messages.
const KEPT_OUT_SLOTS: usize = 4;

/// How long a closing server waits for the client's Close.
const CLOSE_GRACE: Duration = Duration::from_secs(2);
/// How long our Close frame may wait to be written. A slow consumer's socket
/// buffer is full of events it has yet to read; the Close goes out behind
/// them, and a client that reads on (slowly) must still learn why it was
/// cut off (1013) rather than see the connection drop. A client that stopped
/// reading altogether is dropped after this.
const CLOSE_WRITE: Duration = Duration::from_secs(10);

#[derive(Debug, Default, Deserialize)]
pub struct WsQuery {
    since: Option<String>,
    epoch: Option<String>,
}

/// `GET /ws/jobs/{id}`.
pub async fn one_job(
    State(state): State<AppState>,
    Path(job): Path<String>,
    Query(query): Query<WsQuery>,
    credentials: Credentials,
    upgrade: WebSocketUpgrade,
) -> Response {
    let first = match job.parse::<JobId>() {
        Ok(job) => Resume::from_query(query.since.as_deref(), query.epoch.as_deref())
            .map(|resume| (job, resume))
            .map_err(|e| (close::POLICY, e)),
        Err(e) => Err((close::NOT_FOUND, e.to_string())),
    };
    accept(state, credentials, upgrade, Some(first))
}

/// `GET /ws/jobs`.
pub async fn many_jobs(
    State(state): State<AppState>,
    credentials: Credentials,
    upgrade: WebSocketUpgrade,
) -> Response {
    accept(state, credentials, upgrade, None)
}

type FirstJob = Option<Result<(JobId, Option<Resume>), (u16, String)>>;

fn accept(
    state: AppState,
    credentials: Credentials,
    upgrade: WebSocketUpgrade,
    first: FirstJob,
) -> Response {
    let principal = credentials.socket(&state);
    let origin_ok = credentials.origin_allowed();
    let limit = state.config.max_frame_bytes;
    // Every idle connection keeps its read buffer. Client frames are small
    // (subscribe, ping, refresh); a larger one is read in several chunks.
    let mut upgrade = upgrade
        .read_buffer_size(512)
        .write_buffer_size(4096)
        .max_message_size(limit)
        .max_frame_size(limit);
    if let Some(protocol) = credentials.protocol() {
        // Echo the token subprotocol: browsers fail the handshake otherwise.
        upgrade = upgrade.protocols([protocol.to_owned()]);
    }
    // Run the connection inside axum's upgrade task (tracked for shutdown)
    // rather than in a task of its own: one task per socket, not two. The
    // upgrade task keeps its callback's captures for the socket's life, so
    // they are boxed: one pointer there, not a second copy of them.
    let admitted = Box::new(Admitted {
        state,
        principal,
        origin_ok,
        first,
    });
    upgrade.on_upgrade(move |socket| {
        let tasks = admitted.state.tasks.clone();
        tasks.track_future(connection(socket, *admitted))
    })
}

/// What the handshake decided about a connection.
struct Admitted {
    state: AppState,
    principal: Result<Principal, AuthError>,
    origin_ok: bool,
    first: FirstJob,
}

/// How a connection's loop ended.
enum End {
    /// The client went away, or the socket failed: nothing to say.
    Gone,
    /// The client sent its Close: tungstenite has queued the answering
    /// Close, which a flush writes (RFC 6455 §5.5.1; without it the
    /// client sees 1006, an abnormal closure).
    Answer,
    /// Say why and let the client answer (the closing handshake).
    Close(u16, String),
    /// Stopped while writing (shutdown, or a full outbox): say why, briefly,
    /// behind what the socket holds, then drop it.
    Stopped(u16, &'static str),
}

/// One connection, from admission to close.
///
/// Every idle connection's memory is mostly this future, so it is written
/// for size: a plain function returning an `async move` block uses its
/// captures in place (an `async fn` also copies its arguments into the
/// body's locals, and both copies stay in the future), and the loop borrows
/// what it needs rather than taking it by value (a second copy again).
#[allow(clippy::manual_async_fn)] // on purpose: see above
fn connection(mut socket: WebSocket, mut admitted: Admitted) -> impl Future<Output = ()> + Send {
    async move {
        // Fields are used in place: a field moved into a local would be
        // a second copy in the future.
        let state = &admitted.state;
        if !admitted.origin_ok {
            return close_with(&mut socket, close::POLICY, "origin not allowed").await;
        }
        let user = match &admitted.principal {
            Ok(p) if p.has(Scope::JobsRead) => &p.user,
            Ok(_) => {
                return close_with(
                    &mut socket,
                    close::FORBIDDEN,
                    "the token lacks the jobs:read scope",
                )
                .await
            }
            Err(e) => return close_with(&mut socket, close::UNAUTHORIZED, &e.to_string()).await,
        };
        let _slot = match state.connections.acquire(user, &state.config) {
            Ok(slot) => slot,
            Err(e) => return close_with(&mut socket, close::POLICY, &e.to_string()).await,
        };
        // Taken out (it was checked above), to move into the session.
        let Ok(principal) = std::mem::replace(&mut admitted.principal, Err(AuthError::Missing))
        else {
            return;
        };
        let (mut session, outbox, mut inbox) =
            Session::open(state, principal, state.config.max_subscriptions);
        let single = admitted.first.is_some();
        let mut out = Vec::new();
        if let Some(first) = admitted.first.take() {
            if let Err((code, reason)) =
                Box::pin(subscribe_first(&mut session, first, &mut out)).await
            {
                return close_with(&mut socket, code, &reason).await;
            }
        }
        let span = tracing::info_span!("ws", conn = outbox.id, user = %session.principal.user);
        let end = Loop {
            socket: &mut socket,
            state,
            session: &mut session,
            outbox: &outbox,
            inbox: &mut inbox,
            out: &mut out,
            single,
        }
        .run()
        .instrument(span)
        .await;
        // Boxed: these states are rare, and inline they would enlarge every
        // idle connection's future.
        match end {
            End::Gone => {}
            End::Answer => {
                let _ = Box::pin(tokio::time::timeout(CLOSE_WRITE, socket.flush())).await;
            }
            End::Close(code, reason) => Box::pin(close_gracefully(socket, code, reason)).await,
            End::Stopped(code, reason) => {
                let bye = Message::Close(Some(CloseFrame {
                    code,
                    reason: reason.into(),
                }));
                let _ = Box::pin(tokio::time::timeout(CLOSE_WRITE, socket.send(bye))).await;
            }
        }
    }
}

/// Subscribes a one-job socket to its job; the close code and reason when
/// it may not watch it.
async fn subscribe_first(
    session: &mut Session,
    first: Result<(JobId, Option<Resume>), (u16, String)>,
    out: &mut Vec<Out>,
) -> Result<(), (u16, String)> {
    let (job, resume) = first?;
    session
        .subscribe(&job, resume, out)
        .await
        .map_err(|e| subscribe_close(&e))
}

/// The connection loop's borrows, once the client is admitted.
struct Loop<'a> {
    socket: &'a mut WebSocket,
    state: &'a AppState,
    session: &'a mut Session,
    outbox: &'a Outbox,
    inbox: &'a mut Inbox,
    out: &'a mut Vec<Out>,
    single: bool,
}

impl Loop<'_> {
    async fn run(self) -> End {
        let Loop {
            socket,
            state,
            session,
            outbox,
            inbox,
            out,
            single,
        } = self;
        let _gauge = state.stats.websocket();
        tracing::debug!("connected");
        // The socket is not split: reads and writes never overlap in this
        // loop, and a split socket pays a lock on every read and write.
        // One timer for both the heartbeat and the token's expiry: each
        // timer costs memory on every idle connection.
        let every = state.config.heartbeat;
        let mut next_ping = Instant::now() + every;
        let mut expires = deadline(&session.principal);
        let mut last_heard = Instant::now();
        let timer = tokio::time::sleep_until(next_ping.min(expires));
        tokio::pin!(timer);
        // Client frames per second, in bursts of twice that.
        let rate = state.config.max_frames_per_second;
        let mut bucket = TokenBucket::new(rate, rate.saturating_mul(2));
        // Made once, not on every turn of the loop (measurable per message).
        // Fires on shutdown and on overflow (see `Outbox::stop`).
        let stop = outbox.stop.cancelled();
        tokio::pin!(stop);
        // Whether the stop token and the timer hold this task's waker (see
        // `when_due`).
        let mut stop_armed = false;
        let mut timer_armed = false;
        let reader = Arc::new(ReadSignal::default());
        let mut job_gone = false;
        let end = loop {
            if !out.is_empty() {
                let sent = out.len() as u64;
                // A client that stops reading blocks this write; the Hub then
                // overflows its outbox, and the connection must give up on it.
                let written = tokio::select! {
                    written = Box::pin(write_all(&mut *socket, out, &state.stats)) => written.is_ok(),
                    () = when_due(stop.as_mut(), &mut stop_armed, |_| outbox.stop.is_cancelled()) => {
                        let (code, reason) = stopped(state);
                        // The write was cut short, or the socket is full.
                        return End::Stopped(code, reason);
                    }
                };
                if !written {
                    break End::Gone;
                }
                if job_gone {
                    break End::Close(close::NOT_FOUND, "no such job (any more)".into());
                }
                state.stats.sent(sent);
                // Most sockets sit idle between messages: a batch's
                // capacity is given back (a resume's backlog can be large),
                // but a few slots stay (64 bytes): without them every
                // delivery re-allocated the list, ~3% of its cost.
                out.shrink_to(KEPT_OUT_SLOTS);
            }
            tokio::select! {
                biased;
                () = when_due(stop.as_mut(), &mut stop_armed, |_| outbox.stop.is_cancelled()) => {
                    let (code, reason) = stopped(state);
                    break End::Close(code, reason.into());
                }
                () = when_due(timer.as_mut(), &mut timer_armed, tokio::time::Sleep::is_elapsed) => {
                    timer_armed = false;
                    let now = Instant::now();
                    if now >= expires {
                        break End::Close(close::UNAUTHORIZED, "token expired".into());
                    }
                    if now >= next_ping {
                        if last_heard.elapsed() > every * 3 {
                            break End::Close(close::GOING_AWAY, "no answer to pings".into());
                        }
                        if socket.send(Message::Ping(Default::default())).await.is_err() {
                            break End::Gone;
                        }
                        next_ping = now + every;
                    }
                    timer.as_mut().reset(next_ping.min(expires));
                }
                delivery = inbox.recv() => {
                    // Batch whatever else is already queued. Events in step
                    // are handled without a future; only log re-reads await
                    // (boxed: rare, and large).
                    let mut next = Some(delivery);
                    let mut delivered = Ok(());
                    while let Some(delivery) = next.take() {
                        if let Some(slow) = session.deliver_now(delivery, out) {
                            delivered = Box::pin(session.deliver(slow, out)).await;
                            if delivered.is_err() {
                                break;
                            }
                        }
                        if out.len() < 256 {
                            next = inbox.try_recv();
                        }
                    }
                    // A delivery that could not be handled (a re-read of a
                    // log that failed) is gone from the outbox: the client
                    // resumes.
                    if let Err(e) = delivered {
                        tracing::warn!(error = %e, "cannot read a job log for a client");
                        break End::Close(close::TRY_AGAIN, "temporarily unable to read events: resume with since".into());
                    }
                    // A one-job socket whose job is gone (deleted, expired,
                    // its data lost) ends with "no such job", once what is
                    // queued has been written.
                    job_gone = single && session.is_empty();
                }
                frame = next_frame(&mut *socket, &reader) => {
                    last_heard = Instant::now();
                    let message = match frame {
                        None => break End::Gone,
                        Some(Err(e)) => break protocol_close(e).map_or(End::Gone, |(code, reason)| End::Close(code, reason)),
                        Some(Ok(message)) => message,
                    };
                    if bucket.take().is_err() {
                        break End::Close(close::POLICY, "too many messages".into());
                    }
                    match message {
                        Message::Text(text) => {
                            let reply = Box::pin(client_frame(&text, single, session, out, state, &mut expires)).await;
                            timer.as_mut().reset(next_ping.min(expires));
                            timer_armed = false;
                            if let Some(reply) = reply {
                                out.push(Out::notice(&reply));
                            }
                            // A refreshed token that may not see this
                            // socket's one job ends it.
                            if single && session.is_empty() {
                                break End::Close(close::FORBIDDEN, "the refreshed token cannot see this job".into());
                            }
                        }
                        Message::Binary(_) => break End::Close(close::UNSUPPORTED, "binary frames are not supported".into()),
                        Message::Close(_) => break End::Answer,
                        Message::Ping(_) | Message::Pong(_) => {}
                    }
                }
            }
        };
        match &end {
            End::Gone | End::Answer => tracing::debug!("disconnected"),
            End::Close(code, reason) => tracing::debug!(code, reason, "disconnected"),
            End::Stopped(code, reason) => tracing::debug!(code, reason, "disconnected"),
        }
        end
    }
}

/// Polls `future` once to register this task's waker, then again only when
/// `due` says it may have completed. A registered timer or stop token
/// keeps the waker and wakes the task itself; polling one anyway on every
/// wake-up (every delivery) costs a lock (the token's waiter list) or an
/// atomic exchange (the timer's waker) for nothing. `armed` must be reset
/// whenever the future is re-armed (a timer reset).
pub(crate) fn when_due<'a, F: Future>(
    mut future: std::pin::Pin<&'a mut F>,
    armed: &'a mut bool,
    due: impl Fn(&F) -> bool + 'a,
) -> impl Future<Output = F::Output> + 'a {
    std::future::poll_fn(move |cx| {
        if *armed && !due(future.as_ref().get_ref()) {
            return std::task::Poll::Pending;
        }
        *armed = true;
        future.as_mut().poll(cx)
    })
}

/// Whether a connection's socket may have input ([`next_frame`]).
#[derive(Default)]
struct ReadSignal {
    /// No read is due: set by a read that found nothing, cleared when the
    /// socket wakes the task for a read (and after every frame read).
    quiet: AtomicBool,
    task: AtomicWaker,
}

impl Wake for ReadSignal {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }
    fn wake_by_ref(self: &Arc<Self>) {
        self.quiet.store(false, Ordering::Release);
        self.task.wake();
    }
}

/// The socket's next frame, read only when the socket may have one. A
/// read attempt that finds nothing (the WebSocket layer's buffers, then the
/// socket) cost ~830 instructions, paid on every wake-up, that is on every
/// delivery; clients rarely send. The read is given a waker of its own,
/// which marks the signal before it wakes the task, so other wake-ups skip
/// it. After a frame the read stays due: more may be buffered already, and
/// the socket will not wake the task for those.
fn next_frame<'a>(
    socket: &'a mut WebSocket,
    signal: &'a Arc<ReadSignal>,
) -> impl Future<Output = Option<Result<Message, axum::Error>>> + 'a {
    std::future::poll_fn(move |cx| {
        // Cleared before the read: a wake-up during it is not lost.
        if signal.quiet.swap(true, Ordering::AcqRel) {
            return Poll::Pending;
        }
        signal.task.register(cx.waker());
        let waker = Waker::from(Arc::clone(signal));
        match Pin::new(&mut *socket).poll_next(&mut Context::from_waker(&waker)) {
            Poll::Ready(frame) => {
                signal.quiet.store(false, Ordering::Release);
                Poll::Ready(frame)
            }
            Poll::Pending => Poll::Pending,
        }
    })
}

/// Why the connection's stop token fired: server shutdown (1001), else its
/// outbox overflowed (1013, counted as a slow-consumer disconnect).
fn stopped(state: &AppState) -> (u16, &'static str) {
    if state.shutdown.is_cancelled() {
        (
            close::GOING_AWAY,
            "server shutting down: resume on another instance",
        )
    } else {
        state.stats.slow_disconnect();
        (
            close::TRY_AGAIN,
            "slow consumer: reconnect and resume with since",
        )
    }
}

/// Sends our Close frame and lets the client answer it.
async fn close_gracefully(mut socket: WebSocket, code: u16, reason: String) {
    let bye = socket.send(Message::Close(Some(CloseFrame {
        code,
        reason: reason.into(),
    })));
    if tokio::time::timeout(CLOSE_WRITE, bye).await.is_err() {
        return;
    }
    // The closing handshake: read (and drop) what the client still sends
    // until its Close, briefly. Dropping a socket with unread input makes
    // the kernel reset it, and the client would never see our code.
    let _ = tokio::time::timeout(CLOSE_GRACE, async {
        while let Some(Ok(message)) = socket.recv().await {
            if matches!(message, Message::Close(_)) {
                break;
            }
        }
    })
    .await;
}

/// Handles one client frame; returns a reply to send, if any.
async fn client_frame(
    text: &str,
    single: bool,
    session: &mut Session,
    out: &mut Vec<Out>,
    state: &AppState,
    expires: &mut Instant,
) -> Option<Control> {
    let refused = |code: Refusal, message: String| {
        Some(Control::Refused {
            code,
            message,
            job_id: None,
        })
    };
    let frame = match ClientFrame::parse(text) {
        Ok(frame) => frame,
        Err(e) => return refused(e.refusal(), e.to_string()),
    };
    match frame {
        ClientFrame::Ping => Some(Control::Pong),
        ClientFrame::Subscribe { .. } | ClientFrame::Unsubscribe { .. } if single => refused(
            Refusal::Unsupported,
            "this socket watches one job; use /ws/jobs to subscribe to several".into(),
        ),
        ClientFrame::Subscribe {
            job_id,
            since,
            epoch,
        } => {
            let resume = Resume::from_frame(since, epoch);
            match session.subscribe(&job_id, resume, out).await {
                Ok(()) => None,
                Err(e) => {
                    let code = match &e {
                        SubscribeError::NotFound(_) => Refusal::NotFound,
                        SubscribeError::Forbidden(_) => Refusal::Forbidden,
                        SubscribeError::TooMany(_) => Refusal::TooManySubscriptions,
                        SubscribeError::Backend(_) => Refusal::Unavailable,
                    };
                    Some(Control::Refused {
                        code,
                        message: e.to_string(),
                        job_id: Some(job_id),
                    })
                }
            }
        }
        ClientFrame::Unsubscribe { job_id } => {
            session.unsubscribe(&job_id);
            Some(Control::Unsubscribed { job_id })
        }
        // Checked like a new connection's token: same user, `jobs:read`;
        // then every current subscription must still be allowed (an admin
        // who refreshes to a user's token loses the others' jobs). A
        // refused refresh changes nothing: the old token still expires.
        ClientFrame::Refresh { token } => match state.auth.verify(Some(&token)) {
            Ok(p) if p.user != session.principal.user => refused(
                Refusal::Forbidden,
                "a refreshed token must be for the same user".into(),
            ),
            Ok(p) if !p.has(Scope::JobsRead) => refused(
                Refusal::Forbidden,
                "the refreshed token lacks the jobs:read scope".into(),
            ),
            Ok(p) => {
                *expires = deadline(&p);
                let expires_at = p.expires_at;
                session.reauthorize(p, out);
                Some(Control::Refreshed { expires_at })
            }
            Err(e) => refused(Refusal::Unauthorized, e.to_string()),
        },
    }
}

/// Writes `items` in one flush, then counts their deliveries and empties
/// `items` (read twice rather than drained into a list of publish times: a
/// list would be an allocation per write).
async fn write_all<S>(sink: &mut S, items: &mut Vec<Out>, stats: &Stats) -> Result<(), axum::Error>
where
    S: futures_util::Sink<Message, Error = axum::Error> + Unpin,
{
    for item in items.iter_mut() {
        let text = match item {
            Out::Event { frame } => frame.text.clone(),
            // Each control message is written once.
            Out::Control(notice) => Utf8Bytes::from(std::mem::take(&mut notice.json)),
        };
        sink.feed(Message::Text(text)).await?;
    }
    sink.flush().await?;
    for item in items.drain(..) {
        if let Out::Event { frame } = item {
            stats.delivered(frame.published);
        }
    }
    Ok(())
}

/// Whether a read failed because the client's frame exceeded the limit.
/// How to close after a read failed: the client broke the protocol (1002),
/// sent text that is not UTF-8 (1007) or a frame over the limit (1009). A
/// connection that simply went away gets nothing.
fn protocol_close(e: axum::Error) -> Option<(u16, String)> {
    let inner = e.into_inner();
    match inner.downcast_ref::<tungstenite::Error>()? {
        tungstenite::Error::Capacity(_) => Some((close::TOO_BIG, "frame too large".to_owned())),
        tungstenite::Error::Utf8(_) => {
            Some((close::INVALID_DATA, "text frame is not UTF-8".to_owned()))
        }
        tungstenite::Error::Protocol(p) => {
            let mut reason = format!("protocol error: {p}");
            reason.truncate(100);
            Some((close::PROTOCOL, reason))
        }
        _ => None,
    }
}

fn subscribe_close(e: &SubscribeError) -> (u16, String) {
    match e {
        SubscribeError::NotFound(_) => (close::NOT_FOUND, e.to_string()),
        SubscribeError::Forbidden(_) => (close::FORBIDDEN, e.to_string()),
        SubscribeError::TooMany(_) => (close::POLICY, e.to_string()),
        SubscribeError::Backend(_) => (
            close::TRY_AGAIN,
            "the job store is unreachable; retry".into(),
        ),
    }
}

async fn close_with(socket: &mut WebSocket, code: u16, reason: &str) {
    // Close reasons are limited to 123 bytes by the protocol.
    let mut reason = reason.to_owned();
    while reason.len() > 123 {
        reason.pop();
    }
    let _ = socket
        .send(Message::Close(Some(CloseFrame {
            code,
            reason: reason.into(),
        })))
        .await;
}

/// When the connection's token expires. A token without `exp` (auth
/// disabled) or with one centuries away gets 100 years: an `exp` near 2^64
/// would overflow the clock.
pub(crate) fn deadline(principal: &Principal) -> Instant {
    let far = Duration::from_secs(100 * 365 * 24 * 3600);
    Instant::now() + principal.time_left().unwrap_or(far).min(far)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn returned_size<A, B, R>(_: fn(A, B) -> R) -> usize {
        std::mem::size_of::<R>()
    }

    /// Idle connections are mostly this future (docs/benchmarks.md,
    /// density): an `async fn` copying its arguments, or a large future
    /// awaited inline, would double it without anything else showing it.
    #[test]
    fn a_connections_future_stays_small() {
        let size = returned_size(connection);
        println!("connection future: {size} bytes");
        assert!(size <= 2_048, "the connection future grew to {size} bytes");
    }
}
