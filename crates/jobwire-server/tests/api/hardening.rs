//! Hostile clients (docs/operations.md, "Security"): connections that never
//! send a request, trickle their headers, promise a body and never send it,
//! or sit idle, are closed; caps keep a flood from exhausting the server,
//! and health checks still answer through it; long-lived sockets are
//! counted by their own limits.

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use jobwire_server::ServerConfig;
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
    let app = spawn_app_with(memory(), tight()).await?;
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
        metrics.contains("jobwire_connections{transport=\"http\"} 15"),
        "the per-address cap counts: {}",
        metrics
            .lines()
            .filter(|l| l.starts_with("jobwire_connections"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    // The flood times out (header timeout); the server is usable again.
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
