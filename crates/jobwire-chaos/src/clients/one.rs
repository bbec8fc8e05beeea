//! One job per connection: `GET /ws/jobs/{id}?since=&epoch=` or the SSE
//! stream `GET /api/jobs/{id}/stream` with `Last-Event-ID: EPOCH:ID`. After
//! any drop (a killed gateway, 1013, an expired token, a storm) the client
//! reconnects to a random gateway with its resume point; it stops at the
//! job's terminal event or state, or when told the job is gone.

use std::sync::Arc;

use jobwire_core::{Epoch, JobId, ServerMessage};
use rand::rngs::StdRng;

use super::conn::{open_ws, ws_base, Feed, Incoming, OpenError, SseFeed};
use super::{apply, Env, Retry, Step, SILENCE};
use crate::record::{ClientKind, JobWatch, WatchLog};

/// Follows `job` until it ends (or the run stops); returns what it saw.
pub async fn run(env: Arc<Env>, name: String, kind: ClientKind, job: JobId) -> WatchLog {
    let mut w = env.watcher(&name, kind, job);
    let mut rng = env.rng(&name);
    let mut retry = Retry::default();
    let mut storm = env.storm.subscribe();
    let http = reqwest::Client::new();
    while !w.done && !env.stop.is_cancelled() {
        let feed = match open(&env, &http, &mut w, kind, &mut rng).await {
            Ok(feed) => feed,
            Err(OpenError::NotFound) => {
                w.on_gone();
                break;
            }
            Err(_) => {
                sleep_or_stop(&env, retry.wait(&mut rng)).await;
                continue;
            }
        };
        retry.reset();
        storm.borrow_and_update();
        let reason = follow(&env, &mut w, feed, &mut storm).await;
        if w.done || env.stop.is_cancelled() {
            break;
        }
        w.on_reconnect(&reason);
        if reason != "storm" {
            sleep_or_stop(&env, retry.wait(&mut rng)).await;
        }
    }
    w.log
}

async fn open(
    env: &Env,
    http: &reqwest::Client,
    w: &mut JobWatch,
    kind: ClientKind,
    rng: &mut StdRng,
) -> Result<Feed, OpenError> {
    let base = env.pick(rng).to_owned();
    let token = env
        .tokens
        .mint()
        .map_err(|e| OpenError::Other(e.to_string()))?;
    let resume = w.subscribing();
    let job = w.job().clone();
    let feed = if kind == ClientKind::Sse {
        let url = format!("{base}/api/jobs/{job}/stream");
        let last = resume.map(|(epoch, id)| format!("{epoch}:{id}"));
        Feed::Sse(SseFeed::open(http, &url, &token, last).await?)
    } else {
        let mut url = format!("{}/ws/jobs/{job}", ws_base(&base));
        if let Some((epoch, id)) = resume {
            url.push_str(&format!("?since={id}&epoch={epoch}"));
        }
        Feed::Ws(Box::new(open_ws(&url, &token, false).await?))
    };
    w.on_connected(&base);
    Ok(feed)
}

/// Reads one connection until it ends; returns why.
async fn follow(
    env: &Env,
    w: &mut JobWatch,
    mut feed: Feed,
    storm: &mut tokio::sync::watch::Receiver<u64>,
) -> String {
    loop {
        let incoming = tokio::select! {
            () = env.stop.cancelled() => return "stopped".to_owned(),
            _ = storm.changed() => {
                feed.close().await;
                return "storm".to_owned();
            }
            next = tokio::time::timeout(SILENCE, feed.next()) => match next {
                Ok(incoming) => incoming,
                Err(_) => return "silent connection".to_owned(),
            },
        };
        let (data, id) = match incoming {
            Incoming::Text { data, id } => (data, id),
            Incoming::KeepAlive => continue,
            Incoming::Closed { code, reason } => {
                if code == Some(4404) {
                    w.on_gone();
                }
                return format!("closed {code:?} {reason}");
            }
        };
        let message = match ServerMessage::parse(&data) {
            Ok(m) => m,
            Err(e) => {
                w.anomaly(format!("malformed message {data:?}: {e}"));
                return "malformed message".to_owned();
            }
        };
        if let Some(other) = job_of(&message).filter(|j| j != w.job()) {
            w.anomaly(format!(
                "a message of another job {other} on a one-job stream"
            ));
            continue;
        }
        // SSE ids are `EPOCH:ID`: the epoch the server says the event is of.
        let labelled = id
            .and_then(|i| i.split_once(':').map(|(e, _)| e.to_owned()))
            .and_then(|e| e.parse::<Epoch>().ok());
        let labelled = if matches!(message, ServerMessage::Event(_)) {
            labelled
        } else {
            None
        };
        if let Step::Reconnect(reason) = apply(w, message, labelled) {
            feed.close().await;
            return reason;
        }
        if w.done {
            feed.close().await;
            return "done".to_owned();
        }
    }
}

/// The job a server message is about.
pub fn job_of(message: &ServerMessage) -> Option<JobId> {
    match message {
        ServerMessage::Event(e) => Some(e.job_id.clone()),
        ServerMessage::Control(c) => c.job_id().cloned(),
        ServerMessage::Unknown(_) => None,
    }
}

/// Sleeps, or returns early when the run stops.
pub async fn sleep_or_stop(env: &Env, wait: std::time::Duration) {
    tokio::select! {
        () = env.stop.cancelled() => {}
        () = tokio::time::sleep(wait) => {}
    }
}
