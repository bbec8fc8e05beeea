//! The gateways under test: `jobwire serve` processes started on a private
//! Redis, and the tokens the load generator presents to them.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use jobwire_server::Scope;
use jobwire_testkit::free_port;

const SECRET: &str = "jobwire-bench-secret-0123456789";

/// One `jobwire serve` process, killed when dropped.
pub(crate) struct Gateway {
    pub(crate) child: Child,
    pub(crate) port: u16,
}

impl Gateway {
    pub(crate) fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for Gateway {
    /// SIGTERM first, so the gateway shuts down as in production (and a
    /// profiler wrapped around it gets to write its output); SIGKILL if it
    /// is still there after 10 s.
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::time::Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `count` `jobwire serve` processes on `redis_url` and waits until
/// they are ready. `binary` defaults to the `jobwire` next to this one.
pub(crate) async fn start(
    binary: Option<std::path::PathBuf>,
    redis_url: &str,
    count: usize,
    threads: Option<usize>,
) -> Result<Vec<Gateway>> {
    let binary = match binary {
        Some(path) => path,
        None => std::env::current_exe()?.with_file_name("jobwire"),
    };
    if !binary.exists() {
        bail!(
            "{} not found: build it with `cargo build --release -p jobwire-cli`",
            binary.display()
        );
    }
    let mut gateways = Vec::new();
    for _ in 0..count.max(1) {
        let port = free_port()?;
        let mut command = Command::new(&binary);
        if let Some(threads) = threads {
            command.env("TOKIO_WORKER_THREADS", threads.to_string());
        }
        let child = command
            .arg("serve")
            .env("REDIS_URL", redis_url)
            .env("JOBWIRE_BIND", format!("127.0.0.1:{port}"))
            .env("JOBWIRE_JWT_SECRET", SECRET)
            .envs(jobwire_testkit::UNCAPPED_GATEWAY)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        gateways.push(Gateway { child, port });
    }
    for g in &gateways {
        wait_ready(g.port).await?;
    }
    Ok(gateways)
}

/// A token for the benchmark's subscribers (`jobs:read`) or publishers
/// (`worker`, and `jobs:write` to create external jobs).
pub(crate) fn token(scopes: &[Scope]) -> Result<String> {
    Ok(jobwire_server::mint_token(
        SECRET,
        "bench",
        scopes,
        Duration::from_secs(3600),
    )?)
}

pub(crate) async fn wait_ready(port: u16) -> Result<()> {
    for _ in 0..200 {
        if let Ok(r) = reqwest::get(format!("http://127.0.0.1:{port}/readyz")).await {
            if r.status().is_success() {
                return Ok(());
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("gateway on port {port} never became ready")
}
