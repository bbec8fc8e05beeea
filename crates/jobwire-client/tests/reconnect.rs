//! The watch's reconnect state machine, one rule at a time, against a
//! scripted WebSocket server on loopback: each test's server answers each
//! connection with frames it chooses (a close code, a resync, a hole), and
//! checks the subscribe frame the client sent. End-to-end runs against real
//! servers are in `jobwire-cli`'s process tests; these pin the decisions.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use futures_util::{SinkExt, StreamExt};
use jobwire_client::{Client, ClientError, JobId, Refusal, WatchEvent};
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;

const JOB: &str = "01JDX000000000000000000000";

fn job() -> Result<JobId> {
    Ok(JOB.parse()?)
}

/// What the script does on one connection.
#[derive(Clone, Debug)]
enum Step {
    /// Send this JSON.
    Send(Value),
    /// Close with this code.
    Close(u16),
}

fn state(id: u64, epoch: &str, status: &str, resync: bool) -> Value {
    let mut data = json!({
        "id": JOB, "kind": "demo", "params": {}, "owner": "alice", "status": status,
        "total_files": 0, "processed_files": 0, "failed_files": 0, "current_file": null,
        "progress": 0.0, "message": null, "error": null, "attempt": 1,
        "created_at": "2026-11-28T12:00:00.000Z", "started_at": null, "finished_at": null,
        "epoch": epoch, "last_event_id": id, "result": null, "external": false,
        "cancel_requested": false,
    });
    data["expires_at"] = Value::Null;
    let mut m =
        json!({"type": "current_state", "job_id": JOB, "id": id, "epoch": epoch, "data": data});
    if resync {
        m["resync"] = json!(true);
    }
    m
}

fn event(id: u64, kind: &str) -> Value {
    json!({"id": id, "job_id": JOB, "type": kind, "timestamp": "2026-11-28T12:00:00.000Z",
           "data": {"status": "running"}})
}

/// A server that plays one script per accepted connection, in order, and
/// records the subscribe frame of each.
struct Scripted {
    url: String,
    subscribes: Arc<Mutex<Vec<Value>>>,
}

impl Scripted {
    async fn start(scripts: Vec<Vec<Step>>) -> Result<Scripted> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", listener.local_addr()?);
        let subscribes = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&subscribes);
        tokio::spawn(async move {
            for script in scripts {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let Ok(mut ws) = tokio_tungstenite::accept_async(tcp).await else {
                    return;
                };
                // The client subscribes first.
                if let Some(Ok(Message::Text(text))) = ws.next().await {
                    if let Ok(frame) = serde_json::from_str::<Value>(&text) {
                        if let Ok(mut all) = seen.lock() {
                            all.push(frame);
                        }
                    }
                }
                for step in script {
                    let sent = match step {
                        Step::Send(m) => ws.send(Message::text(m.to_string())).await,
                        Step::Close(code) => {
                            ws.send(Message::Close(Some(CloseFrame {
                                code: CloseCode::from(code),
                                reason: "scripted".into(),
                            })))
                            .await
                        }
                    };
                    if sent.is_err() {
                        break;
                    }
                }
                // Keep the connection until the client goes.
                while let Some(Ok(_)) = ws.next().await {}
            }
        });
        Ok(Scripted { url, subscribes })
    }

    fn subscribe(&self, n: usize) -> Result<Value> {
        self.subscribes
            .lock()
            .ok()
            .and_then(|all| all.get(n).cloned())
            .with_context(|| format!("no subscribe #{n}"))
    }
}

/// Every item until the watch ends (or 10 s pass).
async fn run(client: &Client) -> Result<Vec<Result<WatchEvent, ClientError>>> {
    let mut watch = client.watch([job()?]);
    let mut items = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match tokio::time::timeout_at(deadline, watch.next()).await {
            Ok(Some(item)) => items.push(item),
            Ok(None) => return Ok(items),
            Err(_) => bail!("the watch did not end: {items:?}"),
        }
    }
}

fn ids(items: &[Result<WatchEvent, ClientError>]) -> Vec<u64> {
    items
        .iter()
        .filter_map(|i| match i {
            Ok(WatchEvent::Event(e)) => Some(e.id.0),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn a_closed_connection_is_resumed_after_the_last_event() -> Result<()> {
    let server = Scripted::start(vec![
        vec![
            Step::Send(state(2, "e1", "running", false)),
            Step::Send(event(3, "progress")),
            Step::Send(event(4, "progress")),
            Step::Close(1001),
        ],
        vec![
            Step::Send(json!({"type": "resumed", "job_id": JOB, "id": 4, "epoch": "e1"})),
            Step::Send(event(5, "job_completed")),
        ],
    ])
    .await?;
    let client = Client::new(&server.url, "t")?;
    let items = run(&client).await?;
    ensure!(ids(&items) == [3, 4, 5], "{items:?}");
    let again = server.subscribe(1)?;
    ensure!(again["since"] == 4 && again["epoch"] == "e1", "{again}");
    ensure!(server.subscribe(0)?.get("since").is_none());
    Ok(())
}

#[tokio::test]
async fn a_hole_makes_the_client_resume_from_before_it() -> Result<()> {
    let server = Scripted::start(vec![
        vec![
            Step::Send(state(2, "e1", "running", false)),
            Step::Send(event(3, "progress")),
            // 4 is missing.
            Step::Send(event(5, "progress")),
        ],
        vec![
            Step::Send(json!({"type": "resumed", "job_id": JOB, "id": 3, "epoch": "e1"})),
            Step::Send(event(4, "progress")),
            Step::Send(event(5, "job_completed")),
        ],
    ])
    .await?;
    let client = Client::new(&server.url, "t")?;
    let items = run(&client).await?;
    ensure!(ids(&items) == [3, 4, 5], "never past a hole: {items:?}");
    ensure!(server.subscribe(1)?["since"] == 3);
    Ok(())
}

#[tokio::test]
async fn a_resync_replaces_the_state_and_the_epoch() -> Result<()> {
    let server = Scripted::start(vec![
        vec![
            Step::Send(state(2, "e1", "running", false)),
            Step::Send(event(3, "progress")),
            Step::Close(1013),
        ],
        vec![
            // The job went on under a new epoch (the store lost writes).
            Step::Send(state(7, "e2", "running", true)),
            Step::Send(event(8, "job_completed")),
        ],
    ])
    .await?;
    let client = Client::new(&server.url, "t")?;
    let items = run(&client).await?;
    let resyncs = items
        .iter()
        .filter(|i| matches!(i, Ok(WatchEvent::State { resync: true, job }) if job.epoch.as_str() == "e2"))
        .count();
    ensure!(resyncs == 1, "{items:?}");
    ensure!(ids(&items) == [3, 8], "{items:?}");
    Ok(())
}

/// `refused` with `unavailable` means the server could not read the store
/// (docs/protocol.md: subscribe again); it must not end the job's watch.
#[tokio::test]
async fn an_unavailable_refusal_subscribes_again() -> Result<()> {
    let server = Scripted::start(vec![
        vec![
            Step::Send(state(2, "e1", "running", false)),
            Step::Send(event(3, "progress")),
            Step::Send(
                json!({"type": "refused", "job_id": JOB, "code": "unavailable",
                              "message": "backend unavailable: connection reset"}),
            ),
        ],
        vec![
            Step::Send(json!({"type": "resumed", "job_id": JOB, "id": 3, "epoch": "e1"})),
            Step::Send(event(4, "job_completed")),
        ],
    ])
    .await?;
    let client = Client::new(&server.url, "t")?;
    let items = run(&client).await?;
    ensure!(
        !items
            .iter()
            .any(|i| matches!(i, Ok(WatchEvent::Refused { .. }) | Err(_))),
        "the job was dropped: {items:?}"
    );
    ensure!(ids(&items) == [3, 4], "{items:?}");
    let again = server.subscribe(1)?;
    ensure!(again["since"] == 3 && again["epoch"] == "e1", "{again}");
    Ok(())
}

#[tokio::test]
async fn a_job_that_is_gone_ends_the_watch() -> Result<()> {
    let server = Scripted::start(vec![vec![
        Step::Send(state(2, "e1", "running", false)),
        Step::Send(json!({"type": "gone", "job_id": JOB, "message": "no such job (any more)"})),
    ]])
    .await?;
    let client = Client::new(&server.url, "t")?;
    let items = run(&client).await?;
    ensure!(
        items.iter().any(|i| matches!(
            i,
            Ok(WatchEvent::Refused {
                code: Refusal::NotFound,
                ..
            })
        )),
        "{items:?}"
    );
    Ok(())
}

#[tokio::test]
async fn a_refused_fixed_token_ends_the_watch_with_an_error() -> Result<()> {
    let server = Scripted::start(vec![vec![Step::Close(4401)]]).await?;
    let client = Client::new(&server.url, "t")?;
    let items = run(&client).await?;
    match items.last() {
        Some(Err(ClientError::Unauthorized(_))) => Ok(()),
        other => bail!("{other:?} after {items:?}"),
    }
}

#[tokio::test]
async fn a_job_error_event_is_an_event() -> Result<()> {
    let server = Scripted::start(vec![vec![
        Step::Send(state(2, "e1", "running", false)),
        Step::Send(event(3, "error")),
        Step::Send(event(4, "job_completed")),
    ]])
    .await?;
    let client = Client::new(&server.url, "t")?;
    let items = run(&client).await?;
    ensure!(ids(&items) == [3, 4], "{items:?}");
    Ok(())
}
