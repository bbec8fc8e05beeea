//! The Rust client (`jobwire-client`) against real `jobwire serve`
//! processes: the instance it is attached to is killed, restarted, and shut
//! down while a job publishes, and its short-lived tokens expire and are
//! refreshed; the ids it hands out stay consecutive, with no duplicate.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use futures_util::StreamExt;
use jobwire_client::{Client, ClientError, ConnectionStatus, Provider, WatchEvent};
use jobwire_core::{Backend, EventType, NewEvent, NewJob};
use jobwire_testkit::{free_port, RedisServer};
use serde_json::json;

use crate::{redis_backend, Jobwire, SECRET};

fn mint(ttl: Duration) -> String {
    jobwire_server::mint_token(
        SECRET,
        "alice",
        &[
            jobwire_server::Scope::JobsRead,
            jobwire_server::Scope::JobsWrite,
        ],
        ttl,
    )
    .unwrap_or_default()
}

fn serve(redis_url: &str, port: u16) -> Result<Jobwire> {
    Jobwire::start_on(port, &["serve"], &[("REDIS_URL", redis_url.to_owned())])
}

/// Publishes `total` progress events to `job`, one every `every`, then
/// completes it.
fn publisher(
    backend: Arc<dyn Backend>,
    job: jobwire_core::JobId,
    total: u64,
    every: Duration,
) -> tokio::task::JoinHandle<Result<()>> {
    tokio::spawn(async move {
        for i in 1..=total {
            let event = NewEvent::new(EventType::Progress, json!({"current": i, "total": total}));
            // The store may be briefly busy; the publish path is the
            // backend's own, so just retry.
            loop {
                match backend.publish(&job, std::slice::from_ref(&event)).await {
                    Ok(_) => break,
                    Err(e) if e.is_retryable() => {
                        tokio::time::sleep(Duration::from_millis(20)).await
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            tokio::time::sleep(every).await;
        }
        backend
            .publish(&job, &[NewEvent::new(EventType::JobCompleted, json!({}))])
            .await?;
        Ok(())
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_survives_kills_restarts_switches_and_token_expiry() -> Result<()> {
    let redis = RedisServer::start()?;
    let backend = redis_backend(&redis.url()).await?;
    let (port_a, port_b) = (free_port()?, free_port()?);
    let redis_url = redis.url();
    let a = serve(&redis_url, port_a)?;
    let mut b = serve(&redis_url, port_b)?;
    a.wait_for("/readyz", 200, Duration::from_secs(10)).await?;
    b.wait_for("/readyz", 200, Duration::from_secs(10)).await?;

    let job = backend
        .create_job(NewJob::new("feed", json!({}), "alice").external())
        .await?;
    backend
        .publish(&job.id, &[NewEvent::new(EventType::JobStarted, json!({}))])
        .await?;

    // Tokens live 3 s: the watch outlives several of them.
    let minted = Arc::new(AtomicU32::new(0));
    let provider = Provider::new({
        let minted = Arc::clone(&minted);
        move || {
            minted.fetch_add(1, Ordering::Relaxed);
            let token = mint(Duration::from_secs(3));
            async move { Ok(token) }
        }
    });
    let client = Client::builder()
        .url(a.url(""))
        .url(b.url(""))
        .token(provider)
        .build()?;
    let mut watch = client.watch([job.id.clone()]);
    let feed = publisher(
        Arc::clone(&backend),
        job.id.clone(),
        1500,
        Duration::from_millis(5),
    );

    let mut ids = Vec::new();
    let (mut resumed, mut disconnects) = (0, 0);
    let mut first_state = None;
    let chaos = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        a.signal("KILL")?; // the client is attached to A: it switches to B
        drop(a);
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let restarted = serve(&redis_url, port_a)?; // A again, same port
        tokio::time::sleep(Duration::from_millis(1500)).await;
        b.signal("TERM")?; // 1001: back to A
        b.wait_exit(Duration::from_secs(15))?;
        anyhow::Ok((restarted, b))
    });

    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while let Some(item) = tokio::time::timeout_at(deadline, watch.next())
        .await
        .context("the watch did not end in time")?
    {
        match item? {
            WatchEvent::State { job, resync } => {
                ensure!(!resync, "an unexpected resync");
                ensure!(
                    first_state.is_none(),
                    "a second current_state without resync"
                );
                first_state = Some(job.last_event_id.0);
            }
            WatchEvent::Event(e) => ids.push(e.id.0),
            WatchEvent::Resumed { .. } => resumed += 1,
            WatchEvent::Status(ConnectionStatus::Disconnected { .. }) => disconnects += 1,
            WatchEvent::Status(_) => {}
            WatchEvent::Refused { code, .. } => bail!("refused: {}", code.as_str()),
        }
    }
    feed.await??;
    let (_a, _b) = chaos.await??;

    let start = first_state.context("no current_state")?;
    let expected: Vec<u64> = (start + 1..=start + ids.len() as u64).collect();
    ensure!(
        ids == expected,
        "ids not consecutive: {:?}…",
        &ids[..ids.len().min(20)]
    );
    let last = backend.job(&job.id).await?.last_event_id.0;
    ensure!(
        ids.last() == Some(&last),
        "stopped at {:?}, the log ends at {last}",
        ids.last()
    );
    ensure!(
        resumed >= 2 && disconnects >= 2,
        "resumed {resumed}, disconnects {disconnects}"
    );
    ensure!(
        minted.load(Ordering::Relaxed) >= 3,
        "tokens minted: {minted:?}"
    );
    ensure!(watch.cursor(&job.id).map(|c| c.id.0) == Some(last));
    Ok(())
}

/// A fixed token that expires ends the watch with `Unauthorized`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fixed_token_that_expires_ends_the_watch() -> Result<()> {
    let server = Jobwire::start(&["serve", "--memory"], &[])?;
    server
        .wait_for("/readyz", 200, Duration::from_secs(10))
        .await?;
    let client = Client::new(server.url(""), mint(Duration::from_secs(2)))?;
    let job = client
        .create_job("demo", json!({"steps": 1000, "delay_ms": 100}))
        .await?;
    let mut watch = client.watch([job.id.clone()]);
    let ended = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(item) = watch.next().await {
            if let Err(e) = item {
                return Some(e);
            }
        }
        None
    })
    .await?;
    ensure!(
        matches!(ended, Some(ClientError::Unauthorized(_))),
        "{ended:?}"
    );
    Ok(())
}

/// A job's own `error` events (a file it could not read) reach the Rust
/// client as events, and the watch goes on to the job's end; a control
/// message named like an event type cannot be published.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_events_are_events_and_the_watch_goes_on() -> Result<()> {
    let server = Jobwire::start(&["serve", "--memory"], &[])?;
    server
        .wait_for("/readyz", 200, Duration::from_secs(10))
        .await?;
    let worker = jobwire_server::mint_token(
        SECRET,
        "alice",
        &[
            jobwire_server::Scope::JobsRead,
            jobwire_server::Scope::JobsWrite,
            jobwire_server::Scope::Worker,
        ],
        Duration::from_secs(600),
    )?;
    let client = Client::new(server.url(""), worker)?;
    let job = client.create_external_job("import", json!({})).await?;
    let event = |kind: &str, data: serde_json::Value| jobwire_client::PublishEvent {
        kind: kind.to_owned(),
        data,
        attempt: None,
        n: None,
    };
    let mut watch = client.watch([job.id.clone()]);
    let mut sent = vec![event("job_started", json!({"total_files": 4}))];
    for i in 0..4 {
        let file = format!("f{i}");
        sent.push(if i % 2 == 0 {
            event("error", json!({"file": file, "message": "unreadable"}))
        } else {
            event("file_completed", json!({"file": file}))
        });
    }
    sent.push(event("job_completed", json!({"result": {"ok": 2}})));
    // Subscribed first, so that every event comes live.
    loop {
        let first = tokio::time::timeout(Duration::from_secs(10), watch.next()).await?;
        match first.transpose()? {
            Some(WatchEvent::State { .. }) => break,
            Some(_) => {}
            None => bail!("the watch ended before the job's state"),
        }
    }
    for e in &sent {
        client.publish(&job.id, std::slice::from_ref(e)).await?;
    }
    // Control message names are not event types.
    for reserved in ["refused", "gone", "current_state"] {
        match client.publish(&job.id, &[event(reserved, json!({}))]).await {
            Err(ClientError::Api { status: 422, .. }) => {}
            other => bail!("publishing {reserved:?}: {other:?}"),
        }
    }
    let mut kinds = Vec::new();
    let items = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(item) = watch.next().await {
            match item? {
                WatchEvent::Event(e) => kinds.push(e.kind.as_str().to_owned()),
                WatchEvent::Refused { code, message, .. } => {
                    bail!("refused: {} {message}", code.as_str())
                }
                _ => {}
            }
        }
        Ok(())
    });
    items.await.context("the watch did not end")??;
    ensure!(
        kinds.iter().filter(|k| *k == "error").count() == 2,
        "{kinds:?}"
    );
    ensure!(
        kinds.last().map(String::as_str) == Some("job_completed"),
        "{kinds:?}"
    );
    Ok(())
}
