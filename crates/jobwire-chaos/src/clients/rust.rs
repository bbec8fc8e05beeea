//! The Rust client (`jobwire_client::Client::watch`), given every gateway's
//! URL and a token provider: it reconnects, resumes and renews tokens by
//! itself. The log records what its stream hands out; its connection
//! status items mark the reconnects.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use jobwire_client::{Client, ConnectionStatus, Provider, Refusal, WatchEvent};
use jobwire_core::JobId;

use super::Env;
use crate::record::{ClientKind, WatchLog};

/// Watches `job` with the Rust client until it ends (or the run stops).
pub async fn run(env: Arc<Env>, name: String, job: JobId) -> WatchLog {
    let mut w = env.watcher(&name, ClientKind::Rust, job.clone());
    let tokens = Arc::clone(&env.tokens);
    let provider = Provider::new(move || {
        let tokens = Arc::clone(&tokens);
        async move { tokens.mint().map_err(|e| e.to_string()) }
    });
    let mut builder = Client::builder()
        .token(provider)
        .timeout(Duration::from_secs(10));
    for url in &env.urls {
        builder = builder.url(url.clone());
    }
    let client = match builder.build() {
        Ok(c) => c,
        Err(e) => {
            w.anomaly(format!("cannot build the client: {e}"));
            return w.log;
        }
    };
    let mut watch = client.watch([job]);
    while !w.done {
        let item = tokio::select! {
            () = env.stop.cancelled() => break,
            item = watch.next() => item,
        };
        match item {
            None => {
                w.anomaly("the watch ended before the job did");
                break;
            }
            Some(Err(e)) => {
                w.anomaly(format!("the watch failed: {e}"));
                break;
            }
            Some(Ok(event)) => match event {
                WatchEvent::Status(ConnectionStatus::Connected { .. }) => {
                    // It subscribes now, from the cursor it shares with us.
                    w.subscribing();
                }
                WatchEvent::Status(ConnectionStatus::Disconnected { reason, .. }) => {
                    w.on_reconnect(reason);
                }
                WatchEvent::Status(ConnectionStatus::Connecting { .. }) => {}
                WatchEvent::State { job, resync } => {
                    w.on_state(job.epoch.clone(), job.last_event_id, job.status, resync);
                }
                WatchEvent::Resumed { id, .. } => {
                    let epoch = w.cursor.as_ref().map(|(e, _)| e.clone());
                    match epoch {
                        Some(epoch) => w.on_resumed(epoch, id),
                        None => w.anomaly("resumed before any state"),
                    }
                }
                WatchEvent::Event(event) => w.on_event(event, None),
                WatchEvent::Refused { code, message, .. } => {
                    if code == Refusal::NotFound {
                        w.on_gone();
                    } else {
                        w.anomaly(format!("refused {}: {message}", code.as_str()));
                        break;
                    }
                }
            },
        }
    }
    w.log
}
