//! The `jobwire` binary as a process: configuration errors, waiting for
//! Redis, SIGTERM, and an instance killed under its clients.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use futures_util::StreamExt;
use jobwire_core::{Backend, BackendConfig, EventType, NewEvent, NewJob};
use jobwire_redis::{RedisBackend, RedisConfig};
use jobwire_testkit::{free_port, Persistence, RedisServer};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

const SECRET: &str = "process-test-secret-0123456789";

/// A `jobwire` process, killed on drop.
struct Jobwire {
    child: Child,
    port: u16,
}

impl Jobwire {
    fn start(args: &[&str], env: &[(&str, String)]) -> Result<Jobwire> {
        let port = free_port()?;
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_jobwire"));
        cmd.args(args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("JOBWIRE_BIND", format!("127.0.0.1:{port}"))
            .env("JOBWIRE_JWT_SECRET", SECRET)
            .env("JOBWIRE_PARTITIONS", "4")
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        for (k, v) in env {
            cmd.env(k, v);
        }
        Ok(Jobwire {
            child: cmd.spawn()?,
            port,
        })
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    async fn status(&self, path: &str) -> Option<u16> {
        reqwest::get(self.url(path))
            .await
            .ok()
            .map(|r| r.status().as_u16())
    }

    async fn wait_for(&self, path: &str, status: u16, within: Duration) -> Result<()> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if self.status(path).await == Some(status) {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bail!(
            "{path} never answered {status} (last: {:?})",
            self.status(path).await
        )
    }

    fn signal(&self, signal: &str) -> Result<()> {
        let ok = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.child.id().to_string())
            .status()?
            .success();
        ensure!(ok, "kill -{signal} failed");
        Ok(())
    }

    fn wait_exit(&mut self, within: Duration) -> Result<i32> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status.code().unwrap_or(-1));
            }
            ensure!(Instant::now() < deadline, "did not exit within {within:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Jobwire {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn token() -> String {
    jobwire_server::mint_token(
        SECRET,
        "alice",
        &[
            jobwire_server::Scope::JobsRead,
            jobwire_server::Scope::JobsWrite,
        ],
        Duration::from_secs(600),
    )
    .unwrap_or_default()
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn watch(port: u16, path: &str) -> Result<Ws> {
    let mut request = format!("ws://127.0.0.1:{port}{path}").into_client_request()?;
    request
        .headers_mut()
        .insert("authorization", format!("Bearer {}", token()).parse()?);
    Ok(tokio_tungstenite::connect_async(request).await?.0)
}

/// Next text message as JSON, or the close code as `Err`.
async fn next(ws: &mut Ws) -> Result<Result<Value, Option<u16>>> {
    loop {
        match tokio::time::timeout(Duration::from_secs(10), ws.next()).await? {
            Some(Ok(Message::Text(t))) => return Ok(Ok(serde_json::from_str(&t)?)),
            Some(Ok(Message::Close(f))) => return Ok(Err(f.map(|f| u16::from(f.code)))),
            Some(Ok(_)) => {}
            Some(Err(_)) | None => return Ok(Err(None)),
        }
    }
}

async fn redis_backend(url: &str) -> Result<std::sync::Arc<dyn Backend>> {
    let config = RedisConfig {
        backend: BackendConfig {
            partitions: 4,
            ..BackendConfig::default()
        },
        ..RedisConfig::new(url)
    };
    Ok(std::sync::Arc::new(RedisBackend::connect(config).await?))
}

#[test]
fn configuration_errors_exit_2_naming_the_setting() -> Result<()> {
    /// Arguments, environment, and a word the error must contain.
    type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], &'a str);
    let cases: [Case; 4] = [
        (&["serve"], &[], "REDIS_URL"),
        (
            &["serve", "--memory"],
            &[("JOBWIRE_JWT_SECRET", "")],
            "JOBWIRE_JWT_SECRET",
        ),
        (
            &["serve", "--memory"],
            &[("JOBWIRE_RETENTION", "soon")],
            "retention",
        ),
        (&["serve"], &[("REDIS_URL", "http://nope")], "REDIS_URL"),
    ];
    for (args, env, needle) in cases {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_jobwire"));
        cmd.args(args).env_clear().env("JOBWIRE_JWT_SECRET", SECRET);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let out = cmd.output()?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        ensure!(
            out.status.code() == Some(2),
            "{args:?} {env:?}: exit {:?}, {stderr}",
            out.status.code()
        );
        ensure!(
            stderr.contains(needle),
            "{args:?} {env:?}: {stderr:?} does not name {needle}"
        );
        ensure!(!stderr.contains("panicked"), "{stderr}");
    }
    Ok(())
}

#[tokio::test]
async fn sigterm_closes_sockets_with_1001_and_exits_0() -> Result<()> {
    let mut server = Jobwire::start(&["serve", "--memory"], &[])?;
    server
        .wait_for("/readyz", 200, Duration::from_secs(10))
        .await?;
    let job: Value = reqwest::Client::new()
        .post(server.url("/api/jobs"))
        .bearer_auth(token())
        .json(&json!({"kind": "demo"}))
        .send()
        .await?
        .json()
        .await?;
    let id = job["id"].as_str().context("job id")?;
    let mut ws = watch(server.port, &format!("/ws/jobs/{id}")).await?;
    ensure!(next(&mut ws)
        .await?
        .is_ok_and(|m| m["type"] == "current_state"));
    server.signal("TERM")?;
    let closed = next(&mut ws).await?;
    ensure!(closed == Err(Some(1001)), "got {closed:?}");
    ensure!(
        server.wait_exit(Duration::from_secs(5))? == 0,
        "non-zero exit after SIGTERM"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_instance_loses_its_clients_nothing() -> Result<()> {
    let redis = RedisServer::start()?;
    let env = [("REDIS_URL", redis.url())];
    let a = Jobwire::start(&["serve"], &env)?;
    let b = Jobwire::start(&["serve"], &env)?;
    a.wait_for("/readyz", 200, Duration::from_secs(10)).await?;
    b.wait_for("/readyz", 200, Duration::from_secs(10)).await?;
    let publisher = redis_backend(&redis.url()).await?;
    let job = publisher
        .create_job(NewJob::new("demo", json!({}), "alice"))
        .await?;
    publisher
        .publish(
            &job.id,
            vec![NewEvent::new(EventType::JobStarted, json!({}))],
        )
        .await?;
    let mut ws = watch(a.port, &format!("/ws/jobs/{}", job.id)).await?;
    let mut last = next(&mut ws)
        .await?
        .map_err(|c| anyhow::anyhow!("closed {c:?}"))?["id"]
        .as_u64()
        .context("id")?;
    let progress = |i: u64| NewEvent::new(EventType::Progress, json!({"current": i, "total": 100}));
    for i in 1..=10 {
        publisher.publish(&job.id, vec![progress(i)]).await?;
    }
    for _ in 0..5 {
        let e = next(&mut ws)
            .await?
            .map_err(|c| anyhow::anyhow!("closed {c:?}"))?;
        ensure!(e["id"] == last + 1);
        last += 1;
    }
    a.signal("KILL")?;
    for i in 11..=20 {
        publisher.publish(&job.id, vec![progress(i)]).await?;
    }
    // Whatever A still delivered before dying counts; then resume on B.
    while let Ok(Ok(e)) = next(&mut ws).await {
        ensure!(e["id"] == last + 1, "out of step before the kill: {e}");
        last += 1;
    }
    let mut ws = watch(
        b.port,
        &format!("/ws/jobs/{}?since={last}&epoch={}", job.id, job.epoch),
    )
    .await?;
    let first = next(&mut ws)
        .await?
        .map_err(|c| anyhow::anyhow!("closed {c:?}"))?;
    ensure!(first["type"] == "resumed", "{first}");
    for expected in last + 1..=22 {
        let e = next(&mut ws)
            .await?
            .map_err(|c| anyhow::anyhow!("closed {c:?}"))?;
        ensure!(e["id"] == expected, "expected {expected}: {e}");
    }
    Ok(())
}

#[tokio::test]
async fn serve_waits_for_redis_and_becomes_ready_by_itself() -> Result<()> {
    let port = free_port()?;
    let server = Jobwire::start(
        &["serve"],
        &[("REDIS_URL", format!("redis://127.0.0.1:{port}"))],
    )?;
    server
        .wait_for("/healthz", 200, Duration::from_secs(10))
        .await?;
    ensure!(
        server.status("/readyz").await == Some(503),
        "ready without Redis"
    );
    ensure!(server.status("/api/jobs").await == Some(503));
    let _redis = RedisServer::start_on(port, Persistence::None)?;
    server
        .wait_for("/readyz", 200, Duration::from_secs(15))
        .await?;
    Ok(())
}
