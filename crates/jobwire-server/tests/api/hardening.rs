//! Hostile clients (docs/operations.md, "Security"): connections that never
//! send a request, trickle their headers, promise a body and never send it,
//! or sit idle, are closed; caps keep a flood from exhausting the server,
//! and health checks still answer through it; long-lived sockets are
//! counted by their own limits.

use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use futures_util::StreamExt;
use jobwire_server::ServerConfig;
use reqwest::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::*;

fn tight() -> ServerConfig {
    ServerConfig {
        header_timeout: Duration::from_secs(1),
        body_timeout: Duration::from_secs(1),
        max_http_connections: 20,
        max_http_connections_per_ip: 15,
        ..ServerConfig::default()
    }
}

/// Whether the server closes `tcp` within `within` (reads until EOF or a
/// reset; what it sent before is returned).
async fn closed_within(tcp: &mut TcpStream, within: Duration) -> Result<Option<String>> {
    let mut got = Vec::new();
    let read = tokio::time::timeout(within, async {
        let mut buf = [0u8; 4096];
        loop {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    Ok(read
        .ok()
        .map(|()| String::from_utf8_lossy(&got).into_owned()))
}

async fn get_status(app: &TestApp, path: &str) -> Result<u16> {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()?;
    Ok(client.get(app.url(path)).send().await?.status().as_u16())
}

#[tokio::test]
async fn silent_slow_and_idle_connections_are_closed() -> Result<()> {
    let app = spawn_app_with(memory(), tight()).await?;
    // Never sends a byte.
    let mut silent = TcpStream::connect(app.addr).await?;
    // Trickles a request line, a byte every 200 ms, for ever.
    let mut slow = TcpStream::connect(app.addr).await?;
    let trickle = tokio::spawn(async move {
        for b in b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaa".iter() {
            if slow.write_all(&[*b]).await.is_err() {
                return slow;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        slow
    });
    // Promises a body and sends a tenth of it.
    let mut body = TcpStream::connect(app.addr).await?;
    body.write_all(
        b"POST /api/jobs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"kind\":",
    )
    .await?;
    // Done with one request, then idle on a keep-alive connection.
    let mut idle = TcpStream::connect(app.addr).await?;
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await?;
    let mut first = [0u8; 64];
    let n = idle.read(&mut first).await?;
    ensure!(String::from_utf8_lossy(&first[..n]).starts_with("HTTP/1.1 200"));

    ensure!(
        closed_within(&mut silent, Duration::from_secs(5))
            .await?
            .is_some(),
        "a silent connection stayed open"
    );
    let answer = closed_within(&mut body, Duration::from_secs(5))
        .await?
        .context("a connection that never sent its body stayed open")?;
    ensure!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    ensure!(
        closed_within(&mut idle, Duration::from_secs(5))
            .await?
            .is_some(),
        "an idle keep-alive connection stayed open"
    );
    let mut slow = trickle.await?;
    ensure!(
        closed_within(&mut slow, Duration::from_secs(5))
            .await?
            .is_some(),
        "a trickling connection stayed open"
    );
    Ok(())
}

#[tokio::test]
async fn a_flood_of_connections_is_capped_and_health_checks_still_answer() -> Result<()> {
    // The flood must outlast the checks below however slow the machine: with
    // `tight()`'s 1 s header timeout, a loaded CI host let the first idle
    // connections time out before the `/api/jobs` probe, which then got a
    // freed slot (401 instead of 503).
    let app = spawn_app_with(
        memory(),
        ServerConfig {
            header_timeout: Duration::from_secs(60),
            ..tight()
        },
    )
    .await?;
    // More idle connections than the caps allow.
    let mut flood = Vec::new();
    for _ in 0..60 {
        flood.push(TcpStream::connect(app.addr).await?);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    ensure!(
        get_status(&app, "/healthz").await? == 200,
        "/healthz in a flood"
    );
    ensure!(
        get_status(&app, "/readyz").await? == 200,
        "/readyz in a flood"
    );
    let busy = get_status(&app, "/api/jobs").await;
    ensure!(
        matches!(busy, Ok(503) | Err(_)),
        "past the caps, the API answers 503 or nothing: {busy:?}"
    );
    let metrics = reqwest::get(app.url("/metrics")).await?.text().await?;
    ensure!(
        metrics.contains("jobwire_http_connections 15"),
        "the per-address cap counts: {}",
        metrics
            .lines()
            .filter(|l| l.starts_with("jobwire_http_connections"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    // The flood goes; the server is usable again.
    drop(flood);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let client = reqwest::Client::new();
        let status = client
            .get(app.url("/api/jobs"))
            .bearer_auth(user_token("alice"))
            .send()
            .await
            .map(|r| r.status().as_u16());
        if let Ok(200) = status {
            break;
        }
        ensure!(
            tokio::time::Instant::now() < deadline,
            "never usable again: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

#[tokio::test]
async fn websockets_are_not_held_to_the_http_connection_caps() -> Result<()> {
    let app = spawn_app_with(memory(), tight()).await?;
    let job = running_job(&app.backend, "alice").await?;
    let mut sockets = Vec::new();
    for _ in 0..40 {
        let (mut ws, _) = connect(
            &app.ws_url(&format!("/ws/jobs/{}", job.id)),
            Some(&user_token("alice")),
            Via::Bearer,
        )
        .await?;
        ensure!(next_json(&mut ws).await?["type"] == "current_state");
        sockets.push(ws);
    }
    ensure!(get_status(&app, "/healthz").await? == 200);
    Ok(())
}

/// SSE streams are long-lived like WebSockets: once streaming they leave
/// the plain-HTTP caps (40 streams under a cap of 20) and are held to the
/// live-connection limits instead (the per-user limit answers 429). A
/// stream the client drops gives its slot back at once, with no event
/// published meanwhile (the stream notices the client is gone, not only
/// its next write failing): 40 dropped, 40 new ones accepted.
#[tokio::test]
async fn sse_streams_leave_the_http_caps_for_the_live_limits() -> Result<()> {
    let app = spawn_app_with(
        memory(),
        ServerConfig {
            max_connections_per_user: 40,
            ..tight()
        },
    )
    .await?;
    let job = running_job(&app.backend, "alice").await?;
    let client = reqwest::Client::new();
    // The stream, once its first message has arrived; `None` if refused.
    let open = || async {
        let response = client
            .get(app.url(&format!("/api/jobs/{}/stream", job.id)))
            .bearer_auth(user_token("alice"))
            .send()
            .await?;
        if response.status() != 200 {
            return Ok::<_, anyhow::Error>(Err(response.status()));
        }
        let mut body = response.bytes_stream();
        tokio::time::timeout(Duration::from_secs(5), body.next())
            .await?
            .context("the stream ended")??;
        Ok(Ok(body))
    };
    let mut streams = Vec::new();
    for i in 0..40 {
        match open().await? {
            Ok(body) => streams.push(body),
            Err(status) => bail!("stream {i}: {status}"),
        }
    }
    ensure!(get_status(&app, "/healthz").await? == 200);
    let past = open().await?.err();
    ensure!(
        past == Some(StatusCode::TOO_MANY_REQUESTS),
        "the 41st stream: {past:?}"
    );

    drop(streams);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let mut again = Vec::new();
    while again.len() < 40 {
        match open().await? {
            Ok(body) => again.push(body),
            Err(_) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(status) => bail!(
                "{} streams accepted after 40 were dropped: {status}",
                again.len()
            ),
        }
    }
    Ok(())
}

/// A quiet stream carries a comment line every 15 s (docs/protocol.md), so
/// that proxies keep it open; it is served as `text/event-stream`, not
/// cached.
#[tokio::test]
async fn a_quiet_sse_stream_carries_keep_alive_comments() -> Result<()> {
    let app = spawn_app_with(memory(), tight()).await?;
    let job = running_job(&app.backend, "alice").await?;
    let response = reqwest::Client::new()
        .get(app.url(&format!("/api/jobs/{}/stream", job.id)))
        .bearer_auth(user_token("alice"))
        .send()
        .await?;
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    ensure!(
        header("content-type") == "text/event-stream",
        "{}",
        header("content-type")
    );
    ensure!(header("cache-control") == "no-cache");
    let mut body = response.bytes_stream();
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(25);
    while !seen.windows(4).any(|w| w == b"\n:\n\n") {
        let chunk = tokio::time::timeout_at(deadline, body.next())
            .await
            .context("no keep-alive comment within 25 s")?
            .context("the stream ended")??;
        seen.extend_from_slice(&chunk);
    }
    let text = String::from_utf8(seen)?;
    ensure!(text.starts_with("id: "), "{text}");
    Ok(())
}

/// A token with arbitrary claims, signed with the test secret.
fn claims_token(claims: serde_json::Value) -> Result<String> {
    use jsonwebtoken::{encode, EncodingKey, Header};
    Ok(encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(SECRET.as_bytes())?,
    )?)
}

fn now_secs() -> Result<u64> {
    Ok(std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs())
}

#[tokio::test]
async fn tokens_with_bad_claims_are_refused_and_huge_exp_is_harmless() -> Result<()> {
    let app = spawn_app(memory()).await?;
    let now = now_secs()?;
    let client = reqwest::Client::new();
    for (why, claims, needle) in [
        (
            "nbf in the future",
            serde_json::json!({"sub": "alice", "scope": "jobs:read", "exp": now + 600, "nbf": now + 300}),
            "not valid yet",
        ),
        (
            "empty sub",
            serde_json::json!({"sub": "", "scope": "jobs:read", "exp": now + 600}),
            "empty",
        ),
        (
            "a newline in sub (log forging)",
            serde_json::json!({"sub": "alice\nINFO forged", "scope": "jobs:read", "exp": now + 600}),
            "control characters",
        ),
    ] {
        let response = client
            .get(app.url("/api/jobs"))
            .bearer_auth(claims_token(claims)?)
            .send()
            .await?;
        ensure!(response.status() == 401, "{why}: {}", response.status());
        let body: serde_json::Value = response.json().await?;
        let message = body["error"]["message"].as_str().unwrap_or_default();
        ensure!(message.contains(needle), "{why}: {body}");
    }
    // An exp at the end of time must not overflow the socket's clock.
    let job = running_job(&app.backend, "alice").await?;
    let forever =
        claims_token(serde_json::json!({"sub": "alice", "scope": "jobs:read", "exp": u64::MAX}))?;
    let (mut ws, _) = connect(
        &app.ws_url(&format!("/ws/jobs/{}", job.id)),
        Some(&forever),
        Via::Bearer,
    )
    .await?;
    ensure!(next_json(&mut ws).await?["type"] == "current_state");
    progress(&app.backend, &job.id, 1).await?;
    ensure!(
        next_json(&mut ws).await?["id"] == 3,
        "the socket did not survive"
    );
    Ok(())
}

#[tokio::test]
async fn an_sse_stream_ends_when_its_token_expires() -> Result<()> {
    let app = spawn_app(memory()).await?;
    let job = running_job(&app.backend, "alice").await?;
    let short = jobwire_server::mint_token(
        SECRET,
        "alice",
        &[jobwire_server::Scope::JobsRead],
        Duration::from_secs(2),
    )?;
    let mut response = reqwest::Client::new()
        .get(app.url(&format!("/api/jobs/{}/stream", job.id)))
        .bearer_auth(short)
        .send()
        .await?;
    ensure!(response.status() == 200);
    let mut text = String::new();
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        while let Ok(Some(chunk)) = response.chunk().await {
            text.push_str(&String::from_utf8_lossy(&chunk));
        }
    })
    .await;
    ensure!(ended.is_ok(), "the stream outlived its token: {text}");
    ensure!(text.contains("token expired"), "{text}");
    Ok(())
}

#[tokio::test]
async fn a_refresh_is_checked_like_a_new_connection() -> Result<()> {
    let app = spawn_app(memory()).await?;
    let alices = running_job(&app.backend, "alice").await?;
    let ops_admin = token(
        "ops",
        &[
            jobwire_server::Scope::JobsRead,
            jobwire_server::Scope::Admin,
        ],
    );
    let (mut ws, _) = connect(&app.ws_url("/ws/jobs"), Some(&ops_admin), Via::Bearer).await?;
    send(
        &mut ws,
        serde_json::json!({"type": "subscribe", "job_id": alices.id}),
    )
    .await?;
    ensure!(next_json(&mut ws).await?["type"] == "current_state");

    // Without jobs:read: refused, and the subscription goes on.
    let no_read = token("ops", &[jobwire_server::Scope::JobsWrite]);
    send(
        &mut ws,
        serde_json::json!({"type": "refresh", "token": no_read}),
    )
    .await?;
    let reply = next_json(&mut ws).await?;
    ensure!(
        reply["type"] == "refused" && reply["code"] == "forbidden",
        "{reply}"
    );
    progress(&app.backend, &alices.id, 1).await?;
    ensure!(next_json(&mut ws).await?["id"] == 3);

    // An admin refreshing to a plain token loses the other users' jobs.
    let plain = token("ops", &[jobwire_server::Scope::JobsRead]);
    send(
        &mut ws,
        serde_json::json!({"type": "refresh", "token": plain}),
    )
    .await?;
    let mut seen = Vec::new();
    for _ in 0..2 {
        seen.push(next_json(&mut ws).await?);
    }
    ensure!(
        seen.iter()
            .any(|m| m["type"] == "refused" && m["job_id"] == alices.id.as_str()),
        "{seen:?}"
    );
    ensure!(seen.iter().any(|m| m["type"] == "refreshed"), "{seen:?}");
    progress(&app.backend, &alices.id, 2).await?;
    send(&mut ws, serde_json::json!({"type": "ping"})).await?;
    let next = next_json(&mut ws).await?;
    ensure!(
        next["type"] == "pong",
        "an event of alice's job still arrived: {next}"
    );
    // And cannot subscribe to it again.
    send(
        &mut ws,
        serde_json::json!({"type": "subscribe", "job_id": alices.id}),
    )
    .await?;
    let again = next_json(&mut ws).await?;
    ensure!(
        again["type"] == "refused" && again["code"] == "forbidden",
        "{again}"
    );
    Ok(())
}

#[tokio::test]
async fn quotas_on_params_pages_and_job_creation() -> Result<()> {
    let config = jobwire_server::ServerConfig {
        create_rate: 1,
        max_unfinished_jobs: 7,
        ..jobwire_server::ServerConfig::default()
    };
    let app = spawn_app_with(memory(), config).await?;
    let client = reqwest::Client::new();
    let create = |params: serde_json::Value| {
        client
            .post(app.url("/api/jobs"))
            .bearer_auth(user_token("alice"))
            .json(&serde_json::json!({"kind": "demo", "params": params}))
            .send()
    };
    let big = create(serde_json::json!({"steps": 1, "pad": "x".repeat(20_000)})).await?;
    ensure!(big.status() == 422, "{}", big.status());
    let body = big.text().await?;
    ensure!(body.contains("params are") && body.len() < 300, "{body}");

    let page = client
        .get(app.url("/api/jobs?limit=500"))
        .bearer_auth(user_token("alice"))
        .send()
        .await?;
    ensure!(page.status() == 422, "{}", page.status());

    // One creation a second, in bursts of five: of six sent at once (so no
    // second can pass between them, however slow the host), one is refused.
    let six = (0..6).map(|_| create(serde_json::json!({"steps": 1000, "delay_ms": 1000})));
    let mut statuses = Vec::new();
    for r in futures_util::future::join_all(six).await {
        let r = r?;
        statuses.push((
            r.status().as_u16(),
            r.headers().get("retry-after").is_some(),
        ));
    }
    statuses.sort();
    ensure!(
        statuses[..5].iter().all(|(s, _)| *s == 201) && statuses[5] == (429, true),
        "{statuses:?}"
    );
    // At most 7 unfinished: after two more seconds, the 8th is refused.
    tokio::time::sleep(Duration::from_millis(2200)).await;
    ensure!(
        create(serde_json::json!({"steps": 1000, "delay_ms": 1000}))
            .await?
            .status()
            == 201
    );
    ensure!(
        create(serde_json::json!({"steps": 1000, "delay_ms": 1000}))
            .await?
            .status()
            == 201
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let full = create(serde_json::json!({"steps": 1})).await?;
    ensure!(full.status() == 429, "{}", full.status());
    ensure!(full.text().await?.contains("too_many_jobs"));
    Ok(())
}

#[tokio::test]
async fn every_error_has_the_json_shape() -> Result<()> {
    let app = spawn_app(memory()).await?;
    let client = reqwest::Client::new();
    for (method, path, status) in [
        (reqwest::Method::GET, "/no/such/route", 404),
        (reqwest::Method::PUT, "/api/jobs", 405),
        (reqwest::Method::GET, "/api/jobs?limit=many", 400),
        (
            reqwest::Method::GET,
            "/api/jobs/01ARZ3NDEKTSV4RRFFQ69G5FAV/events?since=x",
            400,
        ),
    ] {
        let response = client
            .request(method.clone(), app.url(path))
            .bearer_auth(user_token("alice"))
            .send()
            .await?;
        ensure!(
            response.status() == status,
            "{method} {path}: {}",
            response.status()
        );
        let body: serde_json::Value = response
            .json()
            .await
            .with_context(|| format!("{method} {path}: not JSON"))?;
        ensure!(
            body["error"]["code"].is_string() && body["error"]["message"].is_string(),
            "{body}"
        );
    }
    // Echoed input is cut short.
    let long = "e".repeat(10_000);
    let job = running_job(&app.backend, "alice").await?;
    let response = client
        .get(app.url(&format!("/api/jobs/{}/events?since=1&epoch={long}", job.id)))
        .bearer_auth(user_token("alice"))
        .send()
        .await?;
    let text = response.text().await?;
    ensure!(text.len() < 400, "{} bytes echoed", text.len());
    Ok(())
}

#[tokio::test]
async fn origins_need_a_listed_name_or_a_fixed_address() -> Result<()> {
    let app = spawn_app(memory()).await?;
    let job = running_job(&app.backend, "alice").await?;
    let url = app.ws_url(&format!("/ws/jobs/{}", job.id));
    let port = app.addr.port();
    for (origin, host, ok) in [
        (
            format!("http://127.0.0.1:{port}"),
            format!("127.0.0.1:{port}"),
            true,
        ),
        (
            format!("http://localhost:{port}"),
            format!("localhost:{port}"),
            true,
        ),
        // DNS rebinding: a page of evil.example made its name resolve here.
        (
            format!("http://evil.example:{port}"),
            format!("evil.example:{port}"),
            false,
        ),
        (
            format!("http://evil.example:{port}"),
            format!("127.0.0.1:{port}"),
            false,
        ),
    ] {
        let mut request =
            tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
                url.as_str(),
            )?;
        let headers = request.headers_mut();
        headers.insert("origin", origin.parse()?);
        headers.insert("host", host.parse()?);
        headers.insert(
            "authorization",
            format!("Bearer {}", user_token("alice")).parse()?,
        );
        let (mut ws, _) = tokio_tungstenite::connect_async(request).await?;
        if ok {
            ensure!(
                next_json(&mut ws).await?["type"] == "current_state",
                "{origin}"
            );
        } else {
            ensure!(close_code(&mut ws).await? == 1008, "{origin} via {host}");
        }
    }
    Ok(())
}

/// A raw WebSocket handshake, for frames a client library would not send.
async fn raw_ws(app: &TestApp, path: &str) -> Result<TcpStream> {
    let mut tcp = TcpStream::connect(app.addr).await?;
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nAuthorization: Bearer {}\r\n\r\n",
        user_token("alice")
    );
    tcp.write_all(request.as_bytes()).await?;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        tcp.read_exact(&mut byte).await?;
        head.push(byte[0]);
    }
    ensure!(
        head.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    Ok(tcp)
}

/// The close code of the first Close frame the server sends.
async fn close_frame(tcp: &mut TcpStream) -> Result<Option<u16>> {
    let mut frame = [0u8; 2];
    loop {
        if tokio::time::timeout(Duration::from_secs(5), tcp.read_exact(&mut frame))
            .await
            .is_err()
        {
            return Ok(None);
        }
        let len = usize::from(frame[1] & 0x7f);
        let mut payload = vec![0u8; len];
        tcp.read_exact(&mut payload).await?;
        if frame[0] & 0x0f == 0x8 {
            return Ok((len >= 2).then(|| u16::from_be_bytes([payload[0], payload[1]])));
        }
    }
}

#[tokio::test]
async fn protocol_errors_are_closed_with_their_codes() -> Result<()> {
    let app = spawn_app(memory()).await?;
    // A masked text frame whose payload is not UTF-8.
    let mut bad_text = raw_ws(&app, "/ws/jobs").await?;
    let payload = [0xff_u8, 0xfe, 0xfd];
    let mask = [1u8, 2, 3, 4];
    let mut frame = vec![0x81, 0x80 | payload.len() as u8];
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    bad_text.write_all(&frame).await?;
    ensure!(
        close_frame(&mut bad_text).await? == Some(1007),
        "invalid UTF-8"
    );
    // An unmasked frame from a client.
    let mut unmasked = raw_ws(&app, "/ws/jobs").await?;
    unmasked.write_all(&[0x81, 0x02, b'h', b'i']).await?;
    ensure!(
        close_frame(&mut unmasked).await? == Some(1002),
        "unmasked frame"
    );
    Ok(())
}

#[tokio::test]
async fn published_event_types_do_not_grow_the_metrics_without_bound() -> Result<()> {
    let app = spawn_app(memory()).await?;
    let worker = token(
        "w",
        &[
            jobwire_server::Scope::JobsRead,
            jobwire_server::Scope::JobsWrite,
            jobwire_server::Scope::Worker,
        ],
    );
    let client = reqwest::Client::new();
    let job: serde_json::Value = client
        .post(app.url("/api/jobs"))
        .bearer_auth(&worker)
        .json(&serde_json::json!({"kind": "import", "external": true}))
        .send()
        .await?
        .json()
        .await?;
    let id = job["id"].as_str().context("id")?;
    let events: Vec<serde_json::Value> = (0..50)
        .map(|i| serde_json::json!({"type": format!("custom.kind{i}"), "data": {}}))
        .collect();
    let r = client
        .post(app.url(&format!("/api/jobs/{id}/events")))
        .bearer_auth(&worker)
        .json(&events)
        .send()
        .await?;
    ensure!(r.status() == 201, "{}", r.status());
    let metrics = reqwest::get(app.url("/metrics")).await?.text().await?;
    let series: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("jobwire_events_published_total{"))
        .collect();
    ensure!(
        series == ["jobwire_events_published_total{type=\"other\"} 50"],
        "{series:?}"
    );

    // An event's data is at most 64 KiB (serialized): a larger one is
    // refused with a short answer, and nothing of the batch is written.
    let big = serde_json::json!([
        {"type": "progress", "data": {"current": 1}},
        {"type": "custom.big", "data": {"pad": "x".repeat(70 * 1024)}},
    ]);
    let r = client
        .post(app.url(&format!("/api/jobs/{id}/events")))
        .bearer_auth(&worker)
        .json(&big)
        .send()
        .await?;
    ensure!(r.status() == 422 || r.status() == 413, "{}", r.status());
    let body = r.text().await?;
    ensure!(body.len() < 300, "a long answer: {} bytes", body.len());
    let job: serde_json::Value = client
        .get(app.url(&format!("/api/jobs/{id}")))
        .bearer_auth(&worker)
        .send()
        .await?
        .json()
        .await?;
    ensure!(
        job["last_event_id"] == 51,
        "a refused batch was written: {job}"
    );
    Ok(())
}

#[tokio::test]
async fn the_ui_may_connect_only_to_its_own_origin() -> Result<()> {
    let app = spawn_app(memory()).await?;
    let page = reqwest::get(app.url("/")).await?;
    let csp = page
        .headers()
        .get("content-security-policy")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    ensure!(csp.contains("connect-src 'self';"), "{csp}");
    ensure!(!csp.contains("ws:") && !csp.contains("wss:"), "{csp}");
    let garbage = reqwest::Client::new()
        .get(app.url("/api/jobs"))
        .bearer_auth("not-a-jwt")
        .send()
        .await?
        .text()
        .await?;
    ensure!(
        garbage.contains("not a JWT") && garbage.len() < 200,
        "{garbage}"
    );
    // The client script may be imported by pages of other origins (an
    // app's own pages); nothing else is shared with them.
    let client = reqwest::get(app.url("/jobwire.js")).await?;
    ensure!(
        client
            .headers()
            .get("access-control-allow-origin")
            .is_some_and(|v| v == "*"),
        "{:?}",
        client.headers()
    );
    ensure!(page.headers().get("access-control-allow-origin").is_none());
    Ok(())
}

/// CORS follows `JOBWIRE_ALLOWED_ORIGINS`: a listed origin may call the
/// REST API (preflight included) with a bearer token; others get no CORS
/// headers; `/jobwire.js` is importable from anywhere, with one header.
#[tokio::test]
async fn cors_follows_the_allowed_origins() -> Result<()> {
    let config = ServerConfig {
        allowed_origins: vec!["https://app.example".to_owned()],
        ..ServerConfig::default()
    };
    let app = spawn_app_with(memory(), config).await?;
    let client = reqwest::Client::new();
    let acao = |r: &reqwest::Response| -> Vec<String> {
        r.headers()
            .get_all("access-control-allow-origin")
            .iter()
            .filter_map(|v| v.to_str().ok().map(str::to_owned))
            .collect()
    };
    let preflight = client
        .request(reqwest::Method::OPTIONS, app.url("/api/jobs"))
        .header("origin", "https://app.example")
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "authorization,content-type",
        )
        .send()
        .await?;
    ensure!(preflight.status().is_success(), "{}", preflight.status());
    ensure!(
        acao(&preflight) == ["https://app.example"],
        "{:?}",
        preflight.headers()
    );
    let listed = client
        .get(app.url("/api/jobs"))
        .header("origin", "https://app.example")
        .bearer_auth(user_token("alice"))
        .send()
        .await?;
    ensure!(listed.status() == 200 && acao(&listed) == ["https://app.example"]);
    let other = client
        .get(app.url("/api/jobs"))
        .header("origin", "https://evil.example")
        .bearer_auth(user_token("alice"))
        .send()
        .await?;
    ensure!(acao(&other).is_empty(), "{:?}", other.headers());
    for origin in ["https://app.example", "https://evil.example"] {
        let script = client
            .get(app.url("/jobwire.js"))
            .header("origin", origin)
            .send()
            .await?;
        let got = acao(&script);
        ensure!(got.len() == 1, "{origin}: {got:?}");
    }
    Ok(())
}
