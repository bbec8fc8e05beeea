//! The `jobwire` binary as a process: configuration errors, waiting for
//! Redis, SIGTERM, an instance killed under its clients, and workers killed
//! or stopped mid-job, a Redis master lost behind Sentinel.

mod cli;
mod client;
mod cluster;
mod external;
mod fleet;
mod queue_controls;
mod readme;
mod schedules;
mod sentinel;
mod serve;
mod worker;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use futures_util::StreamExt;
use jobwire_core::{Backend, BackendConfig, EventType, JobId, JobStatus};
use jobwire_redis::{RedisBackend, RedisConfig};
use jobwire_testkit::free_port;
use jobwire_testkit::jobs::{log, wait_for};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

pub(crate) const SECRET: &str = "process-test-secret-0123456789";

/// A `jobwire` process, killed on drop.
pub(crate) struct Jobwire {
    pub(crate) child: Child,
    pub(crate) port: u16,
}

impl Jobwire {
    pub(crate) fn start(args: &[&str], env: &[(&str, String)]) -> Result<Jobwire> {
        Jobwire::start_on(free_port()?, args, env)
    }

    /// Starts on a given port (to restart an instance where it was).
    pub(crate) fn start_on(port: u16, args: &[&str], env: &[(&str, String)]) -> Result<Jobwire> {
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

    pub(crate) fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub(crate) async fn status(&self, path: &str) -> Option<u16> {
        reqwest::get(self.url(path))
            .await
            .ok()
            .map(|r| r.status().as_u16())
    }

    pub(crate) async fn wait_for(&self, path: &str, status: u16, within: Duration) -> Result<()> {
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

    pub(crate) fn signal(&self, signal: &str) -> Result<()> {
        let ok = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.child.id().to_string())
            .status()?
            .success();
        ensure!(ok, "kill -{signal} failed");
        Ok(())
    }

    pub(crate) fn wait_exit(&mut self, within: Duration) -> Result<i32> {
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

/// `jobwire ARGS` against `server`, as an operator: a token of the
/// `admin` scope (and `jobs:read`, for the listings).
pub(crate) fn as_admin(server: &Jobwire, args: &[&str]) -> Result<std::process::Output> {
    let admin = jobwire_server::mint_token(
        SECRET,
        "root",
        &[
            jobwire_server::Scope::Admin,
            jobwire_server::Scope::JobsRead,
        ],
        Duration::from_secs(600),
    )?;
    Ok(Command::new(env!("CARGO_BIN_EXE_jobwire"))
        .args(args)
        .env_clear()
        .env("JOBWIRE_URL", server.url(""))
        .env("JOBWIRE_TOKEN", admin)
        .output()?)
}

pub(crate) fn token() -> String {
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

pub(crate) type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

pub(crate) async fn watch(port: u16, path: &str) -> Result<Ws> {
    let mut request = format!("ws://127.0.0.1:{port}{path}").into_client_request()?;
    request
        .headers_mut()
        .insert("authorization", format!("Bearer {}", token()).parse()?);
    Ok(tokio_tungstenite::connect_async(request).await?.0)
}

/// Next text message as JSON, or the close code as `Err`.
pub(crate) async fn next(ws: &mut Ws) -> Result<Result<Value, Option<u16>>> {
    loop {
        match tokio::time::timeout(Duration::from_secs(10), ws.next()).await? {
            Some(Ok(Message::Text(t))) => return Ok(Ok(serde_json::from_str(&t)?)),
            Some(Ok(Message::Close(f))) => return Ok(Err(f.map(|f| u16::from(f.code)))),
            Some(Ok(_)) => {}
            Some(Err(_)) | None => return Ok(Err(None)),
        }
    }
}

pub(crate) async fn redis_backend(url: &str) -> Result<std::sync::Arc<dyn Backend>> {
    let config = RedisConfig {
        backend: BackendConfig {
            partitions: 4,
            ..BackendConfig::default()
        },
        ..RedisConfig::new(url)
    };
    Ok(std::sync::Arc::new(RedisBackend::connect(config).await?))
}

/// Reads a watcher's stream until the job's end, checking that ids are
/// consecutive after each `current_state`; calls `each` with every event's
/// type and id. Returns the number of resyncs.
pub(crate) async fn follow(
    ws: &mut Ws,
    mut each: impl FnMut(&str, u64) -> Result<()>,
) -> Result<usize> {
    let mut last: Option<u64> = None;
    let mut resyncs = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    loop {
        ensure!(
            tokio::time::Instant::now() < deadline,
            "the job did not finish: watcher at {last:?} ({resyncs} resyncs)"
        );
        let message = match next(ws).await {
            Ok(Ok(message)) => message,
            // A quiet stretch while a master fails over; anything else ends
            // the socket, which must not happen.
            Err(_) => continue,
            Ok(Err(code)) => bail!("the gateway closed the socket: {code:?}"),
        };
        let id = message["id"].as_u64().context("a message without an id")?;
        match message["type"].as_str() {
            Some("current_state") => {
                if message["resync"] == json!(true) {
                    resyncs += 1;
                }
                last = Some(id);
                // A resync that came after the job's end carries it in its
                // state: nothing follows.
                if message["data"]["status"] == json!("completed") {
                    return Ok(resyncs);
                }
            }
            Some(kind) => {
                ensure!(
                    Some(id) == last.map(|l| l + 1),
                    "{kind} {id} after {last:?}: not consecutive"
                );
                last = Some(id);
                each(kind, id)?;
                ensure!(
                    !matches!(kind, "job_failed" | "job_cancelled"),
                    "the job ended {kind}: {message}"
                );
                if kind == "job_completed" {
                    return Ok(resyncs);
                }
            }
            None => bail!("a message without a type: {message}"),
        }
    }
}

/// The job completed, once.
pub(crate) async fn completed_once(backend: &dyn Backend, job: &JobId) -> Result<()> {
    let state = wait_for(backend, job, Duration::from_secs(10), |s| {
        s.status.is_terminal()
    })
    .await?;
    ensure!(state.status == JobStatus::Completed, "{state:?}");
    let completed = log(backend, job)
        .await?
        .iter()
        .filter(|e| e.kind == EventType::JobCompleted)
        .count();
    ensure!(completed == 1, "job {job} completed {completed} times");
    Ok(())
}
