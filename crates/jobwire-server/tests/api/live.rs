//! WebSocket and SSE delivery: exactness across instances and resumes,
//! auth and limits, bad input, shutdown.

use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use futures_util::StreamExt;
use jobwire_core::{BackendConfig, JobId, MemoryBackend};
use jobwire_server::{Scope, ServerConfig};
use jobwire_testkit::RedisServer;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

use crate::helpers::*;

#[tokio::test]
async fn fresh_subscribe_sends_state_then_every_later_event() -> Result<()> {
    let app = spawn_app(memory()).await?;
    let job = running_job(&app.backend, "alice").await?;
    let (mut ws, _) = connect(
        &app.ws_url(&format!("/ws/jobs/{}", job.id)),
        Some(&user_token("alice")),
        Via::Subprotocol,
    )
    .await?;
    let first = next_json(&mut ws).await?;
    ensure!(
        first["type"] == "current_state" && first["id"] == 2,
        "{first}"
    );
    ensure!(first["epoch"] == job.epoch.as_str() && first["data"]["status"] == "running");
    ensure!(first.get("resync").is_none());
    for i in 1..=20 {
        progress(&app.backend, &job.id, i).await?;
    }
    for expected in 3..=22u64 {
        let event = next_json(&mut ws).await?;
        ensure!(
            event["id"] == expected && event["type"] == "progress",
            "{event}"
        );
    }
    Ok(())
}

/// Two instances on one Redis, a multiplexed client on each watching the same
/// 20 jobs while a third process publishes: every client gets every event
/// exactly once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_deliver_every_event_exactly_once() -> Result<()> {
    let redis_server = RedisServer::start()?;
    let a = spawn_app(redis(&redis_server.url()).await?).await?;
    let b = spawn_app(redis(&redis_server.url()).await?).await?;
    let publisher = redis(&redis_server.url()).await?;
    let mut jobs = Vec::new();
    for _ in 0..20 {
        jobs.push(running_job(&publisher, "alice").await?.id);
    }
    let mut clients = Vec::new();
    for app in [&a, &a, &b, &b] {
        let (mut ws, _) = connect(
            &app.ws_url("/ws/jobs"),
            Some(&user_token("alice")),
            Via::Bearer,
        )
        .await?;
        for job in &jobs {
            send(&mut ws, json!({"type": "subscribe", "job_id": job})).await?;
        }
        clients.push(ws);
    }
    let writer = {
        let (publisher, jobs) = (publisher.clone(), jobs.clone());
        tokio::spawn(async move {
            for i in 1..=30 {
                for job in &jobs {
                    progress(&publisher, job, i).await?;
                }
            }
            anyhow::Ok(())
        })
    };
    for ws in &mut clients {
        collect_until(ws, &jobs, 32).await?;
    }
    writer.await??;
    Ok(())
}

/// A client reads part of a job's events on instance A, drops, and resumes
/// with `since` + `epoch` on instance B: no gap, no duplicate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_on_the_other_instance_loses_nothing() -> Result<()> {
    let redis_server = RedisServer::start()?;
    let a = spawn_app(redis(&redis_server.url()).await?).await?;
    let b = spawn_app(redis(&redis_server.url()).await?).await?;
    let publisher = redis(&redis_server.url()).await?;
    let job = running_job(&publisher, "alice").await?;
    let token = user_token("alice");
    let (mut ws, _) = connect(
        &a.ws_url(&format!("/ws/jobs/{}", job.id)),
        Some(&token),
        Via::Query,
    )
    .await?;
    ensure!(next_json(&mut ws).await?["id"] == 2);
    for i in 1..=10 {
        progress(&publisher, &job.id, i).await?;
    }
    let mut last = 2;
    for _ in 0..6 {
        last = next_json(&mut ws).await?["id"].as_u64().context("id")?;
    }
    drop(ws);
    for i in 11..=20 {
        progress(&publisher, &job.id, i).await?;
    }
    let path = format!("/ws/jobs/{}?since={last}&epoch={}", job.id, job.epoch);
    let (mut ws, _) = connect(&b.ws_url(&path), Some(&token), Via::Subprotocol).await?;
    let first = next_json(&mut ws).await?;
    ensure!(first["type"] == "resumed" && first["id"] == last, "{first}");
    for expected in last + 1..=22 {
        let e = next_json(&mut ws).await?;
        ensure!(e["id"] == expected, "expected {expected}, got {e}");
    }
    progress(&publisher, &job.id, 21).await?;
    ensure!(
        next_json(&mut ws).await?["id"] == 23,
        "live delivery after the resume"
    );
    Ok(())
}

/// SSE on the other instance resumes from `Last-Event-ID: EPOCH:ID`, and its
/// `id:` lines carry the same form.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_resumes_from_last_event_id() -> Result<()> {
    let redis_server = RedisServer::start()?;
    let b = spawn_app(redis(&redis_server.url()).await?).await?;
    let publisher = redis(&redis_server.url()).await?;
    let job = running_job(&publisher, "alice").await?;
    for i in 1..=10 {
        progress(&publisher, &job.id, i).await?;
    }
    let response = reqwest::Client::new()
        .get(b.url(&format!("/api/jobs/{}/stream", job.id)))
        .bearer_auth(user_token("alice"))
        .header("last-event-id", format!("{}:7", job.epoch))
        .send()
        .await?;
    ensure!(response.status() == 200, "{}", response.status());
    let mut body = response.bytes_stream();
    let mut text = String::new();
    let mut messages: Vec<(Option<String>, serde_json::Value)> = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while messages.len() < 6 {
        ensure!(tokio::time::Instant::now() < deadline, "got {messages:?}");
        let chunk = tokio::time::timeout(Duration::from_secs(5), body.next())
            .await?
            .context("stream ended")??;
        text.push_str(std::str::from_utf8(&chunk)?);
        while let Some(end) = text.find("\n\n") {
            let block: String = text.drain(..end + 2).collect();
            let id = block
                .lines()
                .find_map(|l| l.strip_prefix("id:"))
                .map(|s| s.trim().to_owned());
            if let Some(data) = block.lines().find_map(|l| l.strip_prefix("data:")) {
                messages.push((id, serde_json::from_str(data.trim())?));
            }
        }
    }
    ensure!(
        messages[0].1["type"] == "resumed" && messages[0].1["id"] == 7,
        "{:?}",
        messages[0]
    );
    for (i, (id, event)) in messages[1..].iter().enumerate() {
        let expected = 8 + i as u64;
        ensure!(event["id"] == expected, "{event}");
        ensure!(
            id.as_deref() == Some(format!("{}:{expected}", job.epoch).as_str()),
            "id line {id:?}"
        );
    }
    Ok(())
}

#[tokio::test]
async fn a_trimmed_or_foreign_resume_point_gets_a_resync() -> Result<()> {
    let backend: std::sync::Arc<dyn jobwire_core::Backend> =
        std::sync::Arc::new(MemoryBackend::new(BackendConfig {
            stream_maxlen: 10,
            ..BackendConfig::default()
        }));
    let app = spawn_app(backend).await?;
    let job = running_job(&app.backend, "alice").await?;
    for i in 1..=50 {
        progress(&app.backend, &job.id, i).await?;
    }
    let token = user_token("alice");
    for query in [
        format!("since=1&epoch={}", job.epoch),
        "since=5&epoch=0000000000000bad".to_owned(),
    ] {
        let path = format!("/ws/jobs/{}?{query}", job.id);
        let (mut ws, _) = connect(&app.ws_url(&path), Some(&token), Via::Bearer).await?;
        let last = app.backend.job(&job.id).await?.last_event_id.0;
        let first = next_json(&mut ws).await?;
        ensure!(
            first["type"] == "current_state" && first["resync"] == true && first["id"] == last,
            "{query}: {first}"
        );
        progress(&app.backend, &job.id, 99).await?;
        ensure!(next_json(&mut ws).await?["id"] == last + 1);
    }
    Ok(())
}

#[tokio::test]
async fn bad_tokens_scopes_and_strangers_get_their_close_codes() -> Result<()> {
    let app = spawn_app(memory()).await?;
    let job = running_job(&app.backend, "alice").await?;
    let path = app.ws_url(&format!("/ws/jobs/{}", job.id));
    let expired = {
        use jsonwebtoken::{encode, EncodingKey, Header};
        let exp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_secs()
            - 600;
        encode(
            &Header::default(),
            &json!({"sub": "alice", "scope": "jobs:read", "exp": exp}),
            &EncodingKey::from_secret(SECRET.as_bytes())?,
        )?
    };
    let forged = jobwire_server::mint_token(
        "some-other-secret-entirely",
        "alice",
        &[Scope::JobsRead],
        Duration::from_secs(60),
    )?;
    let cases: Vec<(&str, Option<String>, String, u16)> = vec![
        ("no token", None, path.clone(), 4401),
        ("bad signature", Some(forged), path.clone(), 4401),
        ("expired", Some(expired), path.clone(), 4401),
        (
            "no jobs:read scope",
            Some(token("alice", &[Scope::JobsWrite])),
            path.clone(),
            4403,
        ),
        (
            "another user's job",
            Some(user_token("mallory")),
            path.clone(),
            4403,
        ),
        (
            "no such job",
            Some(user_token("alice")),
            app.ws_url(&format!("/ws/jobs/{}", JobId::generate())),
            4404,
        ),
    ];
    for (case, token, url, code) in cases {
        let (mut ws, _) = connect(&url, token.as_deref(), Via::Subprotocol).await?;
        let got = close_code(&mut ws).await.with_context(|| case.to_owned())?;
        ensure!(got == code, "{case}: close code {got}, expected {code}");
    }
    let (_ws, protocol) = connect(&path, Some(&user_token("alice")), Via::Subprotocol).await?;
    ensure!(
        protocol == Some(format!("access_token.{}", user_token("alice")))
            || protocol.is_some_and(|p| p.starts_with("access_token."))
    );
    Ok(())
}

#[tokio::test]
async fn origins_and_connection_limits_are_enforced() -> Result<()> {
    let config = ServerConfig {
        allowed_origins: vec!["https://app.example".into()],
        max_connections_per_user: 2,
        ..ServerConfig::default()
    };
    let app = spawn_app_with(memory(), config).await?;
    let url = app.ws_url("/ws/jobs");
    let token = user_token("alice");
    let (mut evil, _) = connect_with(
        &url,
        Some(&token),
        Via::Bearer,
        Some("https://evil.example"),
    )
    .await?;
    ensure!(
        close_code(&mut evil).await? == 1008,
        "foreign origin accepted"
    );
    let (mut one, _) =
        connect_with(&url, Some(&token), Via::Bearer, Some("https://app.example")).await?;
    let (mut two, _) = connect(&url, Some(&token), Via::Bearer).await?;
    send(&mut one, json!({"type": "ping"})).await?;
    ensure!(next_json(&mut one).await?["type"] == "pong");
    send(&mut two, json!({"type": "ping"})).await?;
    ensure!(next_json(&mut two).await?["type"] == "pong");
    let (mut three, _) = connect(&url, Some(&token), Via::Bearer).await?;
    ensure!(
        close_code(&mut three).await? == 1008,
        "third connection of one user accepted"
    );
    let (mut other_user, _) = connect(&url, Some(&user_token("bob")), Via::Bearer).await?;
    send(&mut other_user, json!({"type": "ping"})).await?;
    ensure!(
        next_json(&mut other_user).await?["type"] == "pong",
        "the limit is per user"
    );
    drop(one);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (mut again, _) = connect(&url, Some(&token), Via::Bearer).await?;
    send(&mut again, json!({"type": "ping"})).await?;
    ensure!(
        next_json(&mut again).await?["type"] == "pong",
        "a closed connection's slot was not released"
    );
    Ok(())
}

#[tokio::test]
async fn malformed_unknown_and_oversized_frames_do_no_harm() -> Result<()> {
    let app = spawn_app(memory()).await?;
    let job = running_job(&app.backend, "alice").await?;
    let token = user_token("alice");
    let (mut ws, _) = connect(&app.ws_url("/ws/jobs"), Some(&token), Via::Bearer).await?;
    send_raw(&mut ws, "not json {").await?;
    ensure!(next_json(&mut ws).await?["code"] == "bad_frame");
    send(&mut ws, json!({"type": "launch_missiles"})).await?;
    ensure!(next_json(&mut ws).await?["code"] == "unknown_type");
    send(
        &mut ws,
        json!({"type": "subscribe", "job_id": "not a valid id!"}),
    )
    .await?;
    ensure!(next_json(&mut ws).await?["code"] == "bad_frame");
    send(
        &mut ws,
        json!({"type": "subscribe", "job_id": JobId::generate()}),
    )
    .await?;
    ensure!(next_json(&mut ws).await?["code"] == "not_found");
    send(&mut ws, json!({"type": "subscribe", "job_id": job.id})).await?;
    ensure!(next_json(&mut ws).await?["type"] == "current_state");
    send_raw(&mut ws, &"x".repeat(1024 * 1024)).await?;
    ensure!(
        close_code(&mut ws).await? == 1009,
        "a 1 MiB frame was not refused with 1009"
    );
    let (mut fresh, _) = connect(
        &app.ws_url(&format!("/ws/jobs/{}", job.id)),
        Some(&token),
        Via::Bearer,
    )
    .await?;
    ensure!(
        next_json(&mut fresh).await?["type"] == "current_state",
        "the server was affected"
    );
    Ok(())
}

#[tokio::test]
async fn unsubscribe_stops_a_job_and_refresh_extends_the_token() -> Result<()> {
    let app = spawn_app(memory()).await?;
    let (j1, j2) = (
        running_job(&app.backend, "alice").await?,
        running_job(&app.backend, "alice").await?,
    );
    // Long enough that the steps before the refresh fit in it on a loaded
    // host; the ping below still comes well after it has run out.
    let short =
        jobwire_server::mint_token(SECRET, "alice", &[Scope::JobsRead], Duration::from_secs(5))?;
    let (mut ws, _) = connect(&app.ws_url("/ws/jobs"), Some(&short), Via::Subprotocol).await?;
    send(&mut ws, json!({"type": "subscribe", "job_id": j1.id})).await?;
    send(&mut ws, json!({"type": "subscribe", "job_id": j2.id})).await?;
    next_json(&mut ws).await?;
    next_json(&mut ws).await?;
    send(&mut ws, json!({"type": "unsubscribe", "job_id": j1.id})).await?;
    ensure!(next_json(&mut ws).await?["type"] == "unsubscribed");
    progress(&app.backend, &j1.id, 1).await?;
    progress(&app.backend, &j2.id, 1).await?;
    let e = next_json(&mut ws).await?;
    ensure!(
        e["job_id"] == j2.id.as_str(),
        "got an event of an unsubscribed job: {e}"
    );
    send(
        &mut ws,
        json!({"type": "refresh", "token": user_token("alice")}),
    )
    .await?;
    ensure!(next_json(&mut ws).await?["type"] == "refreshed");
    tokio::time::sleep(Duration::from_secs(7)).await;
    send(&mut ws, json!({"type": "ping"})).await?;
    ensure!(
        next_json(&mut ws).await?["type"] == "pong",
        "closed despite the refreshed token"
    );
    Ok(())
}

#[tokio::test]
async fn an_expiring_token_closes_the_socket_with_4401() -> Result<()> {
    let app = spawn_app(memory()).await?;
    let short =
        jobwire_server::mint_token(SECRET, "alice", &[Scope::JobsRead], Duration::from_secs(1))?;
    let (mut ws, _) = connect(&app.ws_url("/ws/jobs"), Some(&short), Via::Subprotocol).await?;
    let started = std::time::Instant::now();
    ensure!(close_code(&mut ws).await? == 4401);
    ensure!(
        started.elapsed() < Duration::from_secs(9),
        "closed only after {:?}",
        started.elapsed()
    );
    Ok(())
}

#[tokio::test]
async fn shutdown_closes_sockets_with_1001_and_returns() -> Result<()> {
    let app = spawn_app(memory()).await?;
    let job = running_job(&app.backend, "alice").await?;
    let (mut ws, _) = connect(
        &app.ws_url(&format!("/ws/jobs/{}", job.id)),
        Some(&user_token("alice")),
        Via::Bearer,
    )
    .await?;
    next_json(&mut ws).await?;
    app.shutdown.cancel();
    ensure!(close_code(&mut ws).await? == 1001);
    let served = tokio::time::timeout(Duration::from_secs(5), app.served)
        .await
        .context("serve did not return")?;
    served??;
    Ok(())
}

#[tokio::test]
async fn a_reader_that_stops_reading_is_closed_with_1013_and_resumes() -> Result<()> {
    let config = ServerConfig {
        client_queue: 8,
        ..ServerConfig::default()
    };
    let app = spawn_app_with(memory(), config).await?;
    let job = running_job(&app.backend, "alice").await?;
    let token = user_token("alice");
    let url = app.ws_url(&format!("/ws/jobs/{}", job.id));
    let (mut slow, _) = connect(&url, Some(&token), Via::Bearer).await?;
    let (mut healthy, _) = connect(&url, Some(&token), Via::Bearer).await?;
    next_json(&mut slow).await?;
    next_json(&mut healthy).await?;
    // Big events, so that the socket buffers fill and the slow reader's
    // outbox overflows.
    let blob = "x".repeat(16 * 1024);
    let mut last = 2;
    for _ in 0..600 {
        app.backend
            .publish(
                &job.id,
                &[jobwire_core::NewEvent::new(
                    jobwire_core::EventType::Progress,
                    json!({"blob": blob}),
                )],
            )
            .await?;
        last += 1;
        let e = next_json(&mut healthy).await?;
        ensure!(e["id"] == last, "the healthy client fell out of step");
    }
    let mut seen = 2;
    let code = loop {
        match tokio::time::timeout(Duration::from_secs(10), slow.next()).await? {
            Some(Ok(Message::Text(t))) => {
                seen = serde_json::from_str::<serde_json::Value>(&t)?["id"]
                    .as_u64()
                    .unwrap_or(seen)
            }
            Some(Ok(Message::Close(f))) => break f.map(|f| u16::from(f.code)),
            Some(Ok(_)) => {}
            Some(Err(_)) | None => break None,
        }
    };
    // The Close frame waits behind the events already in the socket's
    // buffer: a reader that reads on gets it.
    ensure!(code == Some(1013), "slow reader closed with {code:?}");
    ensure!(seen < last, "the slow reader was never cut off");
    let (mut again, _) = connect(
        &format!("{url}?since={seen}&epoch={}", job.epoch),
        Some(&token),
        Via::Bearer,
    )
    .await?;
    ensure!(next_json(&mut again).await?["type"] == "resumed");
    for expected in seen + 1..=last {
        let e = next_json(&mut again).await?;
        if e["id"] != expected {
            bail!(
                "resume after the slow close: expected {expected}, got {}",
                e["id"]
            );
        }
    }
    Ok(())
}

/// Redis restarts (AOF on) under a running gateway: its tailer reconnects,
/// the client keeps receiving, nothing is repeated, and the one resync
/// (the job's new epoch after the restart) is the only break in its ids.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restart_under_the_gateway_loses_nothing() -> Result<()> {
    let mut redis_server = RedisServer::start_private(jobwire_testkit::Persistence::Aof)?;
    let app = spawn_app(redis(&redis_server.url()).await?).await?;
    let publisher = redis(&redis_server.url()).await?;
    let job = running_job(&publisher, "alice").await?;
    let (mut ws, _) = connect(
        &app.ws_url(&format!("/ws/jobs/{}", job.id)),
        Some(&user_token("alice")),
        Via::Bearer,
    )
    .await?;
    ensure!(next_json(&mut ws).await?["id"] == 2);
    // Fenced publishes: one that failed after Redis applied it is retried
    // safely.
    let publish = |i: u64| {
        let (publisher, id) = (publisher.clone(), job.id.clone());
        async move {
            let event = jobwire_core::NewEvent::new(
                jobwire_core::EventType::Progress,
                json!({"current": i, "total": 100}),
            )
            .fenced(1, i);
            for _ in 0..300 {
                match publisher.publish(&id, std::slice::from_ref(&event)).await {
                    Ok(_) => return Ok(()),
                    Err(e) if e.is_retryable() => {
                        tokio::time::sleep(Duration::from_millis(50)).await
                    }
                    Err(e) => return Err(anyhow::Error::from(e)),
                }
            }
            bail!("publish {i} never went through")
        }
    };
    for i in 1..=10 {
        publish(i).await?;
    }
    redis_server.kill()?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    redis_server.restart()?;
    for i in 11..=20 {
        publish(i).await?;
    }
    // The restart may have lost writes as far as jobwire can tell (a new
    // replication id): the job went on under a new epoch, and the client is
    // resynced to it once; before and after, ids are consecutive.
    let mut last = 2u64;
    let mut resyncs = 0;
    while last < 22 {
        let m = next_json(&mut ws)
            .await
            .with_context(|| format!("waiting for the event after {last}"))?;
        if m["type"] == "current_state" {
            ensure!(
                m["resync"] == true && m["epoch"] != job.epoch.as_str(),
                "{m}"
            );
            let id = m["id"].as_u64().context("id")?;
            ensure!(
                id >= 12,
                "resynced to {id}, before the restart's events: {m}"
            );
            last = id;
            resyncs += 1;
            continue;
        }
        ensure!(m["id"] == last + 1, "expected {}, got {m}", last + 1);
        last += 1;
    }
    ensure!(resyncs == 1, "{resyncs} resyncs");
    app.wait_ready().await?;
    let metrics = reqwest::get(app.url("/metrics")).await?.text().await?;
    ensure!(
        metrics.contains("jobwire_live_feed_reconnects_total 1"),
        "{metrics}"
    );
    ensure!(
        !metrics.contains("jobwire_live_feed_errors_total 0\n"),
        "{metrics}"
    );
    Ok(())
}

#[tokio::test]
async fn a_client_flooding_frames_is_closed_with_1008() -> Result<()> {
    let app = spawn_app(memory()).await?;
    let (mut ws, _) = connect(
        &app.ws_url("/ws/jobs"),
        Some(&user_token("alice")),
        Via::Bearer,
    )
    .await?;
    // The default allows 50 frames/s with bursts of 100.
    for _ in 0..300 {
        if send(&mut ws, json!({"type": "ping"})).await.is_err() {
            break;
        }
    }
    let code = loop {
        match tokio::time::timeout(Duration::from_secs(10), ws.next()).await? {
            Some(Ok(Message::Close(frame))) => break frame.map(|f| u16::from(f.code)),
            Some(Ok(_)) => {}
            Some(Err(_)) | None => break None,
        }
    };
    ensure!(code == Some(1008), "flooding client closed with {code:?}");
    let (mut calm, _) = connect(
        &app.ws_url("/ws/jobs"),
        Some(&user_token("alice")),
        Via::Bearer,
    )
    .await?;
    send(&mut calm, json!({"type": "ping"})).await?;
    ensure!(
        next_json(&mut calm).await?["type"] == "pong",
        "the server was affected"
    );
    Ok(())
}

/// A client that closes gets the server's Close back (the closing
/// handshake), on both kinds of socket: a browser otherwise reports 1006,
/// an abnormal closure, every time a page leaves.
#[tokio::test]
async fn a_client_s_close_is_answered_with_a_close() -> Result<()> {
    use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
    use tokio_tungstenite::tungstenite::protocol::CloseFrame;
    let app = spawn_app(memory()).await?;
    let job = running_job(&app.backend, "alice").await?;
    for path in [format!("/ws/jobs/{}", job.id), "/ws/jobs".to_owned()] {
        let (mut ws, _) =
            connect(&app.ws_url(&path), Some(&user_token("alice")), Via::Bearer).await?;
        if path == "/ws/jobs" {
            send(&mut ws, json!({"type": "ping"})).await?;
        }
        next_json(&mut ws).await?;
        ws.close(Some(CloseFrame {
            code: CloseCode::Normal,
            reason: "bye".into(),
        }))
        .await?;
        let answer = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                match ws.next().await {
                    Some(Ok(Message::Close(frame))) => return Ok(frame),
                    Some(Ok(_)) => continue,
                    other => return Err(anyhow::anyhow!("{path}: no Close came back: {other:?}")),
                }
            }
        })
        .await
        .context("no answer to a Close")??;
        ensure!(
            answer.as_ref().is_some_and(|f| f.code == CloseCode::Normal),
            "{path}: answered with {answer:?}"
        );
    }
    Ok(())
}

/// The server pings on its heartbeat; a client that answers stays, one that
/// stops reading (and so never answers) is closed with 1001 after three
/// intervals.
#[tokio::test]
async fn heartbeats_keep_live_clients_and_drop_silent_ones() -> Result<()> {
    let config = ServerConfig {
        heartbeat: Duration::from_millis(500),
        ..ServerConfig::default()
    };
    let app = spawn_app_with(memory(), config).await?;
    let token = user_token("alice");
    // 500 ms, not less: the live client must never go three intervals
    // unread, even when a loaded host stalls this test for a while.

    // Reading answers pings (tungstenite replies with pongs as it reads).
    let (mut live, _) = connect(&app.ws_url("/ws/jobs"), Some(&token), Via::Subprotocol).await?;
    let (mut silent, _) = connect(&app.ws_url("/ws/jobs"), Some(&token), Via::Subprotocol).await?;
    let mut pings = 0;
    let until = tokio::time::Instant::now() + Duration::from_millis(3500);
    while let Ok(msg) = tokio::time::timeout_at(until, live.next()).await {
        match msg {
            Some(Ok(Message::Ping(_))) => pings += 1,
            Some(Ok(Message::Close(frame))) => bail!("a live client was closed: {frame:?}"),
            Some(Ok(_)) => {}
            other => bail!("the live connection ended: {other:?}"),
        }
    }
    ensure!(
        pings >= 4,
        "only {pings} pings in 3.5 s at a 500 ms heartbeat"
    );

    // The silent one was read only now: its pings went unanswered.
    loop {
        match tokio::time::timeout(Duration::from_secs(5), silent.next()).await? {
            Some(Ok(Message::Close(Some(frame)))) => {
                ensure!(u16::from(frame.code) == 1001, "{frame:?}");
                ensure!(frame.reason.contains("pings"), "{frame:?}");
                break;
            }
            Some(Ok(Message::Ping(_))) => {}
            other => bail!("expected a close for the silent client, got {other:?}"),
        }
    }
    Ok(())
}

/// A job deleted while watched ends its watchers on every instance: the
/// one that served the DELETE at once, the other through the live feed
/// (a single-job socket closes with 4404, a multiplexed one says `gone`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_job_ends_its_watchers_on_every_instance() -> Result<()> {
    let redis_server = RedisServer::start()?;
    let a = spawn_app(redis(&redis_server.url()).await?).await?;
    let b = spawn_app(redis(&redis_server.url()).await?).await?;
    let token = user_token("alice");
    let job = running_job(&a.backend, "alice").await?;
    let mut watchers = Vec::new();
    for app in [&a, &b] {
        let (single, _) = connect(
            &app.ws_url(&format!("/ws/jobs/{}", job.id)),
            Some(&token),
            Via::Bearer,
        )
        .await?;
        let (mut multi, _) = connect(&app.ws_url("/ws/jobs"), Some(&token), Via::Bearer).await?;
        send(&mut multi, json!({"type": "subscribe", "job_id": job.id})).await?;
        watchers.push((single, multi));
    }
    for (single, multi) in &mut watchers {
        ensure!(next_json(single).await?["type"] == "current_state");
        ensure!(next_json(multi).await?["type"] == "current_state");
    }
    let (status, _) = a
        .delete(&format!("/api/jobs/{}", job.id), Some(&token))
        .await?;
    ensure!(status == 204);
    for (i, (single, multi)) in watchers.iter_mut().enumerate() {
        let code = tokio::time::timeout(Duration::from_secs(10), close_code(single)).await??;
        ensure!(
            code == 4404,
            "instance {i}: the single-job socket closed with {code}"
        );
        let gone = tokio::time::timeout(Duration::from_secs(10), next_json(multi)).await??;
        ensure!(
            gone["type"] == "gone" && gone["job_id"] == job.id.as_str(),
            "instance {i}: {gone}"
        );
    }
    Ok(())
}
