//! Watching jobs live, with exact resume.
//!
//! [`Client::watch`] opens one multiplexed WebSocket (`/ws/jobs`) and
//! subscribes to every job. A background task reads it and hands out
//! [`WatchEvent`]s through a bounded channel; the [`Watch`] stream yields
//! them. The rules (docs/clients.md):
//!
//! - **Cursor first.** For each job the task keeps a cursor (the job's
//!   epoch and the id of the last event handed out) and advances it *before*
//!   handing the event out, so whatever the caller does with an event, a
//!   reconnect neither replays nor skips it.
//! - **Resume.** After any disconnect it reconnects and subscribes each job
//!   with `since` and `epoch`: the server answers `resumed` and sends the
//!   events after the cursor, or — when they were trimmed or the log was
//!   rebuilt — a fresh `current_state` with `resync: true`, handed out as
//!   [`WatchEvent::State`] with `resync` set.
//! - **Checked ids.** An event at or below the cursor is dropped (a
//!   duplicate); one beyond cursor + 1 (a hole) makes the task reconnect and
//!   resume. So ids handed out per job are consecutive.
//! - **Backoff.** Reconnects wait a random time up to a delay that doubles
//!   from 200 ms to 10 s (full jitter), reset once a connection works. Each
//!   round tries every base URL, starting with the last one that worked.
//! - **Tokens.** With a token provider, a fresh token is sent over the
//!   socket (`refresh`) shortly before the current one expires, and a
//!   refused token (4401) is replaced once; with a fixed token, a refusal
//!   ends the stream with [`ClientError::Unauthorized`].
//! - **End.** The stream ends when every job has finished (completed, failed
//!   or cancelled) or was dropped with a [`WatchEvent::Refused`] (not found,
//!   not yours, gone). A subscribe refused as `unavailable` (the server
//!   could not read the store) is not an end: the task reconnects and
//!   subscribes again.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, Stream, StreamExt};
use jobwire_core::{
    Backoff, ClientFrame, Control, Epoch, Event, EventId, JobId, JobState, Refusal, ServerMessage,
};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{self, Message};

use crate::token::refresh_in;
use crate::{Client, ClientError};

/// How long the server may stay silent before the connection counts as
/// dead (it pings every 25 s).
const SILENCE: Duration = Duration::from_secs(75);
const BACKOFF_FIRST: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// Items buffered between the socket reader and the caller.
const CHANNEL: usize = 1024;

/// A resume position: the job's epoch and the last event id handed out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cursor {
    pub epoch: Epoch,
    pub id: EventId,
}

/// What a watch yields.
#[derive(Clone, Debug, PartialEq)]
pub enum WatchEvent {
    /// The job's state as of event `job.last_event_id`: the first item of a
    /// fresh watch, or, with `resync`, after a resume point was lost (events
    /// were trimmed or the log rebuilt): the state replaces what you had.
    State { job: Box<JobState>, resync: bool },
    /// A reconnect resumed exactly after `id` of the log `epoch`; nothing
    /// was missed.
    Resumed {
        job_id: JobId,
        id: EventId,
        epoch: Epoch,
    },
    /// The next event of a job: its id is the previous one's plus one.
    Event(Event),
    /// The connection changed.
    Status(ConnectionStatus),
    /// The server ended the job's subscription: it does not exist (or no
    /// longer: deleted, expired, or its data was lost), is not yours, …
    /// The job is dropped from the watch. (A job's own `error` events are
    /// [`WatchEvent::Event`]s.)
    Refused {
        job_id: JobId,
        code: Refusal,
        message: String,
    },
}

/// The watch's connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConnectionStatus {
    Connecting {
        url: String,
    },
    Connected {
        url: String,
    },
    /// Lost; the next attempt comes after `retry_in`.
    Disconnected {
        reason: String,
        retry_in: Duration,
    },
}

/// A stream of [`WatchEvent`]s; see the module docs. Dropping it closes
/// the connection.
#[derive(Debug)]
pub struct Watch {
    rx: mpsc::Receiver<Result<WatchEvent, ClientError>>,
    cursors: Arc<Mutex<HashMap<JobId, Cursor>>>,
    task: JoinHandle<()>,
}

impl Watch {
    /// Where the job's stream stands: persist it to resume later with
    /// [`Client::watch_from`].
    pub fn cursor(&self, job: &JobId) -> Option<Cursor> {
        self.cursors.lock().ok()?.get(job).cloned()
    }
}

impl Stream for Watch {
    type Item = Result<WatchEvent, ClientError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.rx.poll_recv(cx)
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Client {
    /// Watches jobs from their current state on.
    pub fn watch(&self, jobs: impl IntoIterator<Item = JobId>) -> Watch {
        self.watch_from(jobs.into_iter().map(|j| (j, None)))
    }

    /// Watches jobs, resuming those with a cursor after it.
    pub fn watch_from(&self, jobs: impl IntoIterator<Item = (JobId, Option<Cursor>)>) -> Watch {
        let (tx, rx) = mpsc::channel(CHANNEL);
        let cursors = Arc::new(Mutex::new(HashMap::new()));
        let mut watched = HashMap::new();
        for (job, cursor) in jobs {
            if let (Some(c), Ok(mut all)) = (&cursor, cursors.lock()) {
                all.insert(job.clone(), c.clone());
            }
            watched.insert(
                job,
                Watched {
                    cursor,
                    done: false,
                },
            );
        }
        let runner = Runner {
            client: self.clone(),
            tx,
            jobs: watched,
            cursors: Arc::clone(&cursors),
        };
        Watch {
            rx,
            cursors,
            task: tokio::spawn(runner.run()),
        }
    }
}

struct Watched {
    cursor: Option<Cursor>,
    /// Finished or dropped: not subscribed again.
    done: bool,
}

/// How a connection ended.
enum Ended {
    /// Every job is done.
    AllDone,
    /// The caller dropped the stream.
    Gone,
    /// The token was refused.
    Unauthorized(String),
    /// Anything else: reconnect. `slow_down` asks for a longer wait.
    Lost { reason: String, slow_down: bool },
}

struct Runner {
    client: Client,
    tx: mpsc::Sender<Result<WatchEvent, ClientError>>,
    jobs: HashMap<JobId, Watched>,
    cursors: Arc<Mutex<HashMap<JobId, Cursor>>>,
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

impl Runner {
    async fn run(mut self) {
        let mut backoff = Backoff::new(BACKOFF_FIRST, BACKOFF_MAX);
        let mut token_refused = false;
        loop {
            if self.all_done() {
                return;
            }
            let token = match self.client.token_source().current().await {
                Ok(t) => t,
                Err(e) => return self.fail(e).await,
            };
            let mut reason = String::from("no server reachable");
            let mut slow_down = false;
            for (at, base) in self
                .client
                .urls_in_order()
                .map(|(a, b)| (a, b.to_owned()))
                .collect::<Vec<_>>()
            {
                let url = format!("{}/ws/jobs", ws_base(&base));
                if !self
                    .emit(WatchEvent::Status(ConnectionStatus::Connecting {
                        url: base.clone(),
                    }))
                    .await
                {
                    return;
                }
                let ws = match connect(&url, &token, self.client.tls()).await {
                    Ok(ws) => ws,
                    Err(Refused::Unauthorized(m)) => {
                        reason = format!("{base}: the token was refused; trying a fresh one");
                        match self.after_refusal(&mut token_refused, m).await {
                            Some(()) => break,
                            None => return,
                        }
                    }
                    Err(Refused::Other(m)) => {
                        reason = format!("{base}: {m}");
                        continue;
                    }
                };
                self.client.prefer(at);
                if !self
                    .emit(WatchEvent::Status(ConnectionStatus::Connected {
                        url: base.clone(),
                    }))
                    .await
                {
                    return;
                }
                let started = Instant::now();
                match self.session(ws, token.clone()).await {
                    Ended::AllDone | Ended::Gone => return,
                    Ended::Unauthorized(m) => {
                        reason = format!("{base}: the token was refused; trying a fresh one");
                        match self.after_refusal(&mut token_refused, m).await {
                            Some(()) => break,
                            None => return,
                        }
                    }
                    Ended::Lost {
                        reason: r,
                        slow_down: s,
                    } => {
                        token_refused = false;
                        if started.elapsed() > Duration::from_secs(5) {
                            backoff.reset(); // it worked for a while
                        }
                        reason = r;
                        slow_down = s;
                        break;
                    }
                }
            }
            if self.all_done() {
                return;
            }
            let nominal = backoff.failed();
            let ceiling = if slow_down {
                nominal.max(Duration::from_secs(5))
            } else {
                nominal
            };
            // Jittered: clients that lost the same server spread out.
            let wait = ceiling.mul_f64(rand::random::<f64>());
            let status = ConnectionStatus::Disconnected {
                reason,
                retry_in: wait,
            };
            if !self.emit(WatchEvent::Status(status)).await {
                return;
            }
            tokio::time::sleep(wait).await;
        }
    }

    /// A refused token: a provider gets one more chance, with a fresh
    /// token; otherwise the watch ends. `Some` to go on.
    async fn after_refusal(&mut self, refused_before: &mut bool, message: String) -> Option<()> {
        if self.client.token_source().can_refresh() && !*refused_before {
            *refused_before = true;
            match self.client.token_source().fresh().await {
                Ok(_) => return Some(()),
                Err(e) => {
                    self.fail(e).await;
                    return None;
                }
            }
        }
        self.fail(ClientError::Unauthorized(message)).await;
        None
    }

    async fn fail(&self, e: ClientError) {
        let _ = self.tx.send(Err(e)).await;
    }

    fn all_done(&self) -> bool {
        self.jobs.values().all(|j| j.done)
    }

    /// Hands an item to the caller; `false` when the caller is gone.
    async fn emit(&self, item: WatchEvent) -> bool {
        self.tx.send(Ok(item)).await.is_ok()
    }

    /// One connection: subscribe every job not done, then read.
    async fn session(&mut self, mut ws: Ws, mut token: String) -> Ended {
        for (job, watched) in &self.jobs {
            if watched.done {
                continue;
            }
            let cursor = watched.cursor.as_ref().map(|c| (c.id, c.epoch.clone()));
            let frame = ClientFrame::subscribe(job.clone(), cursor);
            if let Err(e) = ws.send(Message::text(frame.to_json())).await {
                return lost(format!("sending a subscribe: {e}"));
            }
        }
        let mut refresh_at = self.refresh_deadline(&token);
        loop {
            let next = tokio::select! {
                next = tokio::time::timeout(SILENCE, ws.next()) => next,
                () = sleep_until(refresh_at) => {
                    match self.client.token_source().fresh().await {
                        Ok(fresh) => {
                            token = fresh;
                            refresh_at = self.refresh_deadline(&token);
                            let frame = ClientFrame::Refresh { token: token.clone() };
                            if let Err(e) = ws.send(Message::text(frame.to_json())).await {
                                return lost(format!("sending a token refresh: {e}"));
                            }
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "cannot refresh the token; the connection ends at its expiry");
                            refresh_at = None;
                        }
                    }
                    continue;
                }
            };
            let message = match next {
                Err(_) => return lost("the server went silent".to_owned()),
                Ok(None) => return lost("the connection closed".to_owned()),
                Ok(Some(Err(e))) => return lost(e.to_string()),
                Ok(Some(Ok(m))) => m,
            };
            let text = match message {
                Message::Text(t) => t,
                Message::Close(frame) => return closed(frame),
                _ => continue, // pings are answered by the socket itself
            };
            match self.on_frame(&text).await {
                Step::Go => {}
                Step::End(ended) => {
                    let _ = ws.close(None).await;
                    return ended;
                }
            }
            if self.all_done() {
                let _ = ws.close(None).await;
                return Ended::AllDone;
            }
        }
    }

    fn refresh_deadline(&self, token: &str) -> Option<Instant> {
        if !self.client.token_source().can_refresh() {
            return None;
        }
        refresh_in(token).map(|d| Instant::now() + d)
    }

    async fn on_frame(&mut self, text: &str) -> Step {
        let message = match ServerMessage::parse(text) {
            Ok(m) => m,
            Err(e) => return Step::End(lost(format!("the server sent a malformed frame: {e}"))),
        };
        match message {
            ServerMessage::Event(event) => self.on_event(event).await,
            ServerMessage::Control(Control::CurrentState {
                job_id,
                id,
                epoch,
                data,
                resync,
            }) => {
                self.on_state(job_id, Cursor { epoch, id }, data, resync)
                    .await
            }
            ServerMessage::Control(Control::Resumed { job_id, id, epoch }) => {
                self.on_resumed(job_id, id, epoch).await
            }
            // The store could not be read for this subscribe (a Redis
            // outage): docs/protocol.md says subscribe again. Ending the
            // job here left the caller without its events for good;
            // resume on a fresh connection instead, like any lost one.
            ServerMessage::Control(Control::Refused {
                code: Refusal::Unavailable,
                message,
                job_id: Some(job_id),
            }) => Step::End(lost(format!(
                "the server could not read {job_id} ({message}); subscribing again"
            ))),
            ServerMessage::Control(Control::Refused {
                code,
                message,
                job_id: Some(job_id),
            }) => self.job_ended(job_id, code, message).await,
            ServerMessage::Control(Control::Gone { job_id, message }) => {
                self.job_ended(job_id, Refusal::NotFound, message).await
            }
            ServerMessage::Control(Control::Refused {
                code,
                message,
                job_id: None,
            }) => {
                tracing::warn!(code = code.as_str(), %message, "the server refused a frame");
                Step::Go
            }
            ServerMessage::Control(
                Control::Pong | Control::Refreshed { .. } | Control::Unsubscribed { .. },
            ) => Step::Go,
            ServerMessage::Unknown(_) => {
                tracing::debug!(frame = %text, "ignoring an unknown frame");
                Step::Go
            }
        }
    }

    /// The server ended a job's subscription (not found, not yours, gone).
    async fn job_ended(&mut self, job_id: JobId, code: Refusal, message: String) -> Step {
        let Some(w) = self.jobs.get_mut(&job_id) else {
            return Step::Go;
        };
        w.done = true;
        self.go(WatchEvent::Refused {
            job_id,
            code,
            message,
        })
        .await
    }

    async fn on_state(
        &mut self,
        job_id: JobId,
        cursor: Cursor,
        data: Box<JobState>,
        resync: bool,
    ) -> Step {
        let Some(watched) = self.jobs.get_mut(&job_id) else {
            return Step::Go;
        };
        watched.cursor = Some(cursor);
        watched.done = data.status.is_terminal();
        self.save_cursor(&job_id);
        self.go(WatchEvent::State { job: data, resync }).await
    }

    async fn on_resumed(&mut self, job_id: JobId, id: EventId, epoch: Epoch) -> Step {
        let Some(watched) = self.jobs.get(&job_id) else {
            return Step::Go;
        };
        match &watched.cursor {
            Some(c) if c.id == id && c.epoch == epoch => {
                self.go(WatchEvent::Resumed { job_id, id, epoch }).await
            }
            _ => Step::End(lost(format!(
                "the server resumed {job_id} elsewhere than asked"
            ))),
        }
    }

    async fn on_event(&mut self, event: Event) -> Step {
        let job_id = event.job_id.clone();
        let Some(watched) = self.jobs.get_mut(&job_id) else {
            return Step::Go;
        };
        let Some(cursor) = &mut watched.cursor else {
            return Step::End(lost(format!("an event of {job_id} came before its state")));
        };
        if event.id <= cursor.id {
            tracing::debug!(job = %job_id, id = %event.id, "dropping a duplicate event");
            return Step::Go;
        }
        if event.id != cursor.id.next() {
            return Step::End(lost(format!(
                "a hole in {job_id}: event {} after {}; resuming",
                event.id, cursor.id
            )));
        }
        cursor.id = event.id;
        if event.kind.is_terminal() {
            watched.done = true;
        }
        self.save_cursor(&job_id);
        self.go(WatchEvent::Event(event)).await
    }

    fn save_cursor(&self, job: &JobId) {
        let cursor = self.jobs.get(job).and_then(|w| w.cursor.clone());
        if let (Some(c), Ok(mut all)) = (cursor, self.cursors.lock()) {
            all.insert(job.clone(), c);
        }
    }

    async fn go(&self, item: WatchEvent) -> Step {
        if self.emit(item).await {
            Step::Go
        } else {
            Step::End(Ended::Gone)
        }
    }
}

enum Step {
    Go,
    End(Ended),
}

fn lost(reason: String) -> Ended {
    Ended::Lost {
        reason,
        slow_down: false,
    }
}

fn closed(frame: Option<tungstenite::protocol::CloseFrame>) -> Ended {
    let Some(frame) = frame else {
        return lost("closed by the server".to_owned());
    };
    let code = u16::from(frame.code);
    let reason = format!("closed by the server: {code} {}", frame.reason);
    match code {
        4401 => Ended::Unauthorized(frame.reason.to_string()),
        // Limits (1008) and overload (1013): give the server room.
        1008 => Ended::Lost {
            reason,
            slow_down: true,
        },
        _ => lost(reason),
    }
}

enum Refused {
    Unauthorized(String),
    Other(String),
}

/// `ws://` for `http://`, `wss://` for `https://`.
fn ws_base(base: &str) -> String {
    match base.strip_prefix("https://") {
        Some(rest) => format!("wss://{rest}"),
        None => base.replacen("http://", "ws://", 1),
    }
}

async fn connect(url: &str, token: &str, tls: Arc<rustls::ClientConfig>) -> Result<Ws, Refused> {
    let mut request = url
        .into_client_request()
        .map_err(|e| Refused::Other(e.to_string()))?;
    let bearer = format!("Bearer {token}")
        .parse()
        .map_err(|_| Refused::Unauthorized("the token is not a valid header value".to_owned()))?;
    request.headers_mut().insert("authorization", bearer);
    // tungstenite zero-fills its whole read buffer (128 KiB by default) on
    // every read; events are small, so a small buffer saves that work.
    let config = tungstenite::protocol::WebSocketConfig::default().read_buffer_size(8 * 1024);
    let connecting = tokio_tungstenite::connect_async_tls_with_config(
        request,
        Some(config),
        false,
        Some(tokio_tungstenite::Connector::Rustls(tls)),
    );
    match tokio::time::timeout(Duration::from_secs(10), connecting).await {
        Err(_) => Err(Refused::Other("timed out connecting".to_owned())),
        Ok(Ok((ws, _))) => Ok(ws),
        Ok(Err(tungstenite::Error::Http(response))) if response.status().as_u16() == 401 => Err(
            Refused::Unauthorized("401 on the WebSocket handshake".to_owned()),
        ),
        Ok(Err(e)) => Err(Refused::Other(e.to_string())),
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}
