//! The floor server: the least a fan-out server over Redis Streams can do,
//! to measure jobwire against. Each process runs one `XREAD` loop on the
//! partition streams and writes every entry to the WebSockets of its job:
//! no state, no auth, no resume, no epochs, no heartbeats, no limits. It
//! does batch its writes as jobwire does (what is queued for a socket goes
//! out in one write), so that it is a floor, not a straw man.
//!
//! It speaks just enough of jobwire's protocol for the benchmark's own
//! subscribers (a first `current_state`, then the event JSON as published),
//! so `jobwire-bench baseline` drives it and `jobwire serve` with the same
//! subscribers, jobs and rate, and reports the ratios.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::{Context, Result};
use axum::extract::ws::{Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, State};
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use futures_util::SinkExt;
use jobwire_core::{Control, Epoch, EventId, JobId, JobState, NewJob, Timestamp};
use redis::Value;
use serde_json::json;
use tokio::sync::mpsc;

use crate::gateway::Gateway;
use crate::measure::PublishFn;

/// The hidden `floor` subcommand: one floor server process.
#[derive(Debug, clap::Args)]
pub(crate) struct ServeArgs {
    #[arg(long)]
    redis: String,
    #[arg(long)]
    bind: std::net::SocketAddr,
    #[arg(long)]
    partitions: usize,
}

/// The sockets watching each job.
type Watchers = Arc<RwLock<HashMap<String, Vec<mpsc::UnboundedSender<Utf8Bytes>>>>>;

/// The stream of partition `p` (jobs are spread over partitions as jobwire
/// spreads them: a job always in one).
fn stream(p: usize) -> String {
    format!("floor:{p}")
}

pub(crate) async fn serve(args: ServeArgs) -> Result<()> {
    let client = redis::Client::open(args.redis.as_str())?;
    // The reply to a blocked read may take the whole block: the response
    // timeout (500 ms by default) must exceed it.
    let config =
        redis::AsyncConnectionConfig::new().set_response_timeout(Some(Duration::from_secs(10)));
    let conn = client
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .context("connecting to Redis")?;
    let watchers = Watchers::default();
    tokio::spawn(tail(conn, args.partitions.max(1), Arc::clone(&watchers)));
    let app = Router::new()
        .route("/readyz", get(|| async { "ready" }))
        .route("/ws/jobs/{job}", get(upgrade))
        .with_state(watchers);
    let listener = tokio::net::TcpListener::bind(args.bind).await?;
    axum::serve(listener, app).await?;
    Ok(())
}

async fn upgrade(
    ws: WebSocketUpgrade,
    Path(job): Path<String>,
    State(watchers): State<Watchers>,
) -> Response {
    ws.on_upgrade(move |socket| watch(socket, job, watchers))
}

/// One subscriber: a `current_state` (so that the benchmark's client takes
/// it as a jobwire subscription), then every event of its job.
async fn watch(mut socket: WebSocket, job: String, watchers: Watchers) {
    let Ok(job_id) = job.parse::<JobId>() else {
        return;
    };
    let state = JobState::new(
        &NewJob::new("bench", json!({}), "bench"),
        Epoch::generate(),
        Timestamp::now(),
    );
    let first = Control::CurrentState {
        job_id,
        id: EventId(0),
        epoch: state.epoch.clone(),
        data: Box::new(state),
        resync: false,
    };
    let Ok(first) = serde_json::to_string(&first) else {
        return;
    };
    if socket.send(Message::Text(first.into())).await.is_err() {
        return;
    }
    let (tx, mut rx) = mpsc::unbounded_channel();
    if let Ok(mut w) = watchers.write() {
        w.entry(job).or_default().push(tx);
    }
    loop {
        tokio::select! {
            event = rx.recv() => match event {
                // What is queued goes out in one write (as jobwire batches),
                // not one write and flush per event.
                Some(text) => {
                    if socket.feed(Message::Text(text)).await.is_err() {
                        return;
                    }
                    while let Ok(text) = rx.try_recv() {
                        if socket.feed(Message::Text(text)).await.is_err() {
                            return;
                        }
                    }
                    if socket.flush().await.is_err() {
                        return;
                    }
                }
                None => return,
            },
            incoming = socket.recv() => match incoming {
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return,
                Some(Ok(_)) => {}
            },
        }
    }
}

/// The one read loop: `XREAD BLOCK` on every partition stream from their
/// start (the benchmark's Redis is its own, its streams new), each entry to
/// its job's sockets.
async fn tail(mut conn: redis::aio::MultiplexedConnection, partitions: usize, watchers: Watchers) {
    let mut positions = vec!["0-0".to_owned(); partitions];
    let streams: Vec<String> = (0..partitions).map(stream).collect();
    loop {
        let cmd = crate::measure::xread(&streams, &positions);
        let reply: Value = match cmd.query_async(&mut conn).await {
            Ok(reply) => reply,
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(watchers) = watchers.read() else {
            return;
        };
        for entry in crate::measure::xread_entries(&reply) {
            let Some(p) = std::str::from_utf8(entry.stream)
                .ok()
                .and_then(|k| k.strip_prefix("floor:"))
                .and_then(|p| p.parse::<usize>().ok())
                .filter(|p| *p < partitions)
            else {
                continue;
            };
            positions[p] = entry.id;
            // Fields: j <job id> e <event JSON>.
            let (Some(Value::BulkString(job)), Some(Value::BulkString(event))) =
                (entry.fields.get(1), entry.fields.get(3))
            else {
                continue;
            };
            let Some(sockets) = std::str::from_utf8(job).ok().and_then(|j| watchers.get(j)) else {
                continue;
            };
            let Ok(text) = Utf8Bytes::try_from(bytes::Bytes::copy_from_slice(event)) else {
                continue;
            };
            for socket in sockets {
                let _ = socket.send(text.clone());
            }
        }
    }
}

/// Starts `count` floor server processes (this binary's hidden `floor`
/// subcommand) on `redis_url` and waits until they are ready.
pub(crate) async fn start(
    redis_url: &str,
    count: usize,
    partitions: usize,
) -> Result<Vec<Gateway>> {
    let binary = std::env::current_exe()?;
    let mut servers = Vec::new();
    for _ in 0..count.max(1) {
        let port = jobwire_testkit::free_port()?;
        let child = std::process::Command::new(&binary)
            .arg("floor")
            .arg("--redis")
            .arg(redis_url)
            .arg("--bind")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--partitions")
            .arg(partitions.to_string())
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .spawn()
            .context("starting a floor server")?;
        servers.push(Gateway { child, port });
    }
    for s in &servers {
        crate::gateway::wait_ready(s.port).await?;
    }
    Ok(servers)
}

/// Publishes with one `XADD` per event to the job's partition stream, the
/// event JSON shaped as jobwire's (same fields and size).
pub(crate) fn publisher(
    connections: Vec<redis::aio::MultiplexedConnection>,
    jobs: &[String],
    partitions: usize,
) -> PublishFn {
    let connections = Arc::new(connections);
    let jobs: Arc<Vec<String>> = Arc::new(jobs.to_vec());
    let sequences: Arc<Vec<std::sync::atomic::AtomicU64>> =
        Arc::new(jobs.iter().map(|_| Default::default()).collect());
    let partitions = partitions.max(1);
    Arc::new(move |j| {
        let mut conn = connections[j % connections.len()].clone();
        let id = sequences[j].fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        let mut cmd = redis::cmd("XADD");
        cmd.arg(stream(j % partitions))
            .arg("MAXLEN")
            .arg("~")
            .arg(10_000)
            .arg("*")
            .arg("j")
            .arg(&jobs[j])
            .arg("e")
            .arg(crate::baseline::event_json(&jobs[j], id));
        Box::pin(async move {
            let _: Value = cmd.query_async(&mut conn).await?;
            Ok(())
        })
    })
}
