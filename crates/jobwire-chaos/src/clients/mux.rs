//! A multiplexed WebSocket (`/ws/jobs`): one socket, many jobs, added as
//! they are created (a `subscribe` frame each). After a drop it reconnects
//! to a random gateway and subscribes every job not yet ended, each with
//! its own resume point.
//!
//! A *slow* mux client ([`ClientKind::Slow`]) has a receive buffer of a few
//! KiB and, while a `slow-clients` fault lasts, reads one message a second,
//! so the gateway's outbound queue for it overflows and it is dropped
//! (1013); it must then resume like any other client.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::SinkExt;
use jobwire_core::{ClientFrame, JobId, ServerMessage};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

use super::conn::{next_ws, open_ws, ws_base, Incoming, Ws};
use super::one::{job_of, sleep_or_stop};
use super::{apply, Env, Retry, Step, SILENCE};
use crate::record::{ClientKind, JobWatch, WatchLog};

/// Runs a mux client until the run stops; jobs to watch arrive on `jobs`.
pub async fn run(
    env: Arc<Env>,
    name: String,
    kind: ClientKind,
    mut jobs: mpsc::UnboundedReceiver<JobId>,
) -> Vec<WatchLog> {
    let mut watches: HashMap<JobId, JobWatch> = HashMap::new();
    let mut rng = env.rng(&name);
    let mut retry = Retry::default();
    let mut storm = env.storm.subscribe();
    let mut more = true;
    while !env.stop.is_cancelled() {
        while let Ok(job) = jobs.try_recv() {
            watches.insert(job.clone(), env.watcher(&name, kind, job));
        }
        let base = env.pick(&mut rng).to_owned();
        let Ok(token) = env.tokens.mint() else {
            sleep_or_stop(&env, retry.wait(&mut rng)).await;
            continue;
        };
        let url = format!("{}/ws/jobs", ws_base(&base));
        let mut ws = match open_ws(&url, &token, kind == ClientKind::Slow).await {
            Ok(ws) => ws,
            Err(_) => {
                sleep_or_stop(&env, retry.wait(&mut rng)).await;
                continue;
            }
        };
        retry.reset();
        storm.borrow_and_update();
        let mut reason = None;
        for w in watches.values_mut().filter(|w| !w.done) {
            w.on_connected(&base);
            if let Err(e) = subscribe(&mut ws, w).await {
                reason = Some(e);
                break;
            }
        }
        let reason = match reason {
            Some(r) => r,
            None => {
                let mut session = Session {
                    env: &env,
                    base: &base,
                    kind,
                    name: &name,
                    ws: &mut ws,
                    watches: &mut watches,
                };
                session.read(&mut jobs, &mut more, &mut storm).await
            }
        };
        let _ = tokio::time::timeout(Duration::from_millis(500), ws.close(None)).await;
        if env.stop.is_cancelled() {
            break;
        }
        for w in watches.values_mut().filter(|w| !w.done) {
            w.on_reconnect(&reason);
        }
        if reason != "storm" {
            sleep_or_stop(&env, retry.wait(&mut rng)).await;
        }
    }
    watches.into_values().map(|w| w.log).collect()
}

async fn subscribe(ws: &mut Ws, w: &mut JobWatch) -> Result<(), String> {
    let resume = w.subscribing().map(|(epoch, id)| (id, epoch));
    let frame = ClientFrame::subscribe(w.job().clone(), resume);
    ws.send(Message::text(frame.to_json()))
        .await
        .map_err(|e| format!("sending a subscribe: {e}"))
}

struct Session<'a> {
    env: &'a Env,
    /// The gateway this connection is to.
    base: &'a str,
    kind: ClientKind,
    name: &'a str,
    ws: &'a mut Ws,
    watches: &'a mut HashMap<JobId, JobWatch>,
}

impl Session<'_> {
    /// Reads until the connection is lost; returns why.
    async fn read(
        &mut self,
        jobs: &mut mpsc::UnboundedReceiver<JobId>,
        more: &mut bool,
        storm: &mut tokio::sync::watch::Receiver<u64>,
    ) -> String {
        loop {
            let incoming = tokio::select! {
                () = self.env.stop.cancelled() => return "stopped".to_owned(),
                _ = storm.changed() => return "storm".to_owned(),
                job = jobs.recv(), if *more => {
                    let Some(job) = job else {
                        *more = false;
                        continue;
                    };
                    let mut w = self.env.watcher(self.name, self.kind, job.clone());
                    w.on_connected(self.base);
                    let sent = subscribe(self.ws, &mut w).await;
                    self.watches.insert(job, w);
                    if let Err(e) = sent {
                        return e;
                    }
                    continue;
                }
                next = tokio::time::timeout(SILENCE, next_ws(self.ws)) => match next {
                    Ok(incoming) => incoming,
                    Err(_) => return "silent connection".to_owned(),
                },
            };
            let data = match incoming {
                Incoming::Text { data, .. } => data,
                Incoming::KeepAlive => continue,
                Incoming::Closed { code, reason } => return format!("closed {code:?} {reason}"),
            };
            if self.kind == ClientKind::Slow && self.env.slow_now() {
                sleep_or_stop(self.env, Duration::from_secs(1)).await;
            }
            let message = match ServerMessage::parse(&data) {
                Ok(m) => m,
                Err(e) => return format!("malformed message {data:?}: {e}"),
            };
            let Some(job) = job_of(&message) else {
                if let Step::Reconnect(reason) = connection_level(&message) {
                    return reason;
                }
                continue;
            };
            let Some(w) = self.watches.get_mut(&job) else {
                continue;
            };
            if let Step::Reconnect(reason) = apply(w, message, None) {
                return reason;
            }
        }
    }
}

/// A message about no job in particular: a token refusal ends the
/// connection (reconnect with a fresh token); the rest is ignored.
fn connection_level(message: &ServerMessage) -> Step {
    match message {
        ServerMessage::Control(jobwire_core::Control::Refused { code, message, .. })
            if *code == jobwire_core::Refusal::Unauthorized =>
        {
            Step::Reconnect(format!("token refused: {message}"))
        }
        _ => Step::Go,
    }
}
