//! Density: how much memory one open, subscribed, silent WebSocket costs a
//! `jobwire serve` process. RSS is read before and after opening N
//! connections (each watching a job that publishes nothing), and the
//! difference divided by N, at each of several counts.
//!
//! The open-file limit on these machines is a hard 20,000 per process, for
//! the generator as for the server, so the connections are opened by
//! several child processes of this tool (`jobwire-bench hold`), each from
//! its own 127.0.0.x source address so that ephemeral ports do not run out.

use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use futures_util::StreamExt;
use jobwire_core::{BackendConfig, JobStore, NewJob};
use jobwire_redis::{RedisBackend, RedisConfig};
use jobwire_server::Scope;
use jobwire_testkit::{Persistence, RedisServer};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::gateway;
use crate::measure::rss_kib;

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Connection counts to measure at, rising (each adds to the last).
    #[arg(long, value_delimiter = ',', default_values_t = [10_000, 19_000])]
    connections: Vec<usize>,
    /// Load-generator processes holding the connections (default: enough
    /// for the largest count under this machine's open-file limit, and at
    /// least 2).
    #[arg(long)]
    processes: Option<usize>,
    /// Jobs the connections watch (connection i watches job i % jobs).
    #[arg(long, default_value_t = 100)]
    jobs: usize,
    /// The `jobwire` binary (default: next to this one).
    #[arg(long)]
    jobwire: Option<std::path::PathBuf>,
}

pub(crate) async fn run(args: Args) -> Result<()> {
    let limit = open_file_limit()?;
    let most = args.connections.iter().copied().max().unwrap_or(0);
    let per_process = limit.saturating_sub(256).max(1);
    let processes = args
        .processes
        .unwrap_or_else(|| most.div_ceil(per_process).max(2));
    if most.div_ceil(processes) > per_process {
        bail!("{most} connections over {processes} processes exceed the open-file limit of {limit} per process");
    }
    println!("open-file limit (hard) {limit}; {processes} holder processes");
    let redis = RedisServer::start_private(Persistence::None)?;
    let gateways = gateway::start(args.jobwire, &redis.url(), 1, None).await?;
    let server = &gateways[0];
    if most > limit.saturating_sub(100) {
        bail!("the server's own open-file limit ({limit}) cannot hold {most} connections");
    }
    let backend = RedisBackend::connect(RedisConfig {
        backend: BackendConfig::default(),
        ..RedisConfig::new(redis.url())
    })
    .await?;
    let mut jobs = Vec::new();
    for _ in 0..args.jobs.max(1) {
        jobs.push(
            backend
                .create_job(NewJob::new("bench", json!({}), "bench"))
                .await?
                .id
                .to_string(),
        );
    }
    let token = gateway::token(&[Scope::JobsRead])?;
    let mut holders = Vec::new();
    for k in 0..processes {
        holders.push(Holder::start(k, &server.addr(), &jobs, &token)?);
    }
    // Let the server settle before the baseline.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = rss_kib(server.child.id());
    let started = Instant::now();
    let mut open = 0;
    for &count in &args.connections {
        let more = count.saturating_sub(open);
        for (k, holder) in holders.iter_mut().enumerate() {
            let share = more / processes + usize::from(k < more % processes);
            holder.open(share).await?;
        }
        open = open.max(count);
        let opened = started.elapsed();
        tokio::time::sleep(Duration::from_secs(2)).await;
        let after = rss_kib(server.child.id());
        let per = (after.saturating_sub(before)) as f64 * 1024.0 / open as f64;
        println!(
            "{open} idle subscribed WebSockets (opened in {:.1} s): server RSS {before} KiB -> {after} KiB: {per:.0} bytes ({:.2} KiB) per connection",
            opened.as_secs_f64(),
            per / 1024.0
        );
    }
    for holder in holders {
        holder.stop().await;
    }
    Ok(())
}

/// A child `jobwire-bench hold` process.
struct Holder {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Holder {
    fn start(k: usize, addr: &str, jobs: &[String], token: &str) -> Result<Holder> {
        let mut child = Command::new(std::env::current_exe()?)
            .arg("hold")
            .arg("--addr")
            .arg(addr)
            .arg("--source")
            .arg(format!("127.0.0.{}", 2 + k % 250))
            .arg("--first")
            .arg(k.to_string())
            .arg("--jobs")
            .arg(jobs.join(","))
            .env("JOBWIRE_BENCH_TOKEN", token)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()?;
        let stdin = child.stdin.take().context("holder stdin")?;
        let stdout = BufReader::new(child.stdout.take().context("holder stdout")?);
        Ok(Holder {
            child,
            stdin,
            stdout,
        })
    }

    /// Asks the holder to open `n` more connections and waits until it has.
    async fn open(&mut self, n: usize) -> Result<()> {
        self.stdin.write_all(format!("{n}\n").as_bytes()).await?;
        let mut line = String::new();
        self.stdout.read_line(&mut line).await?;
        match line.trim().strip_prefix("ok ") {
            Some(_) => Ok(()),
            None => bail!("holder failed: {}", line.trim()),
        }
    }

    async fn stop(mut self) {
        drop(self.stdin);
        let mut rest = Vec::new();
        let _ = self.stdout.read_to_end(&mut rest).await;
        let _ = self.child.wait().await;
    }
}

#[derive(Debug, clap::Args)]
pub(crate) struct HoldArgs {
    /// The gateway's address.
    #[arg(long)]
    addr: String,
    /// The local address to connect from.
    #[arg(long)]
    source: std::net::IpAddr,
    /// Index of this holder; its connections are spread over the jobs from
    /// here.
    #[arg(long, default_value_t = 0)]
    first: usize,
    #[arg(long, value_delimiter = ',')]
    jobs: Vec<String>,
}

/// `jobwire-bench hold`: reads counts from stdin, opens that many more
/// subscribed WebSockets each time and answers `ok <total>`; holds them
/// until stdin closes. Started by the idle scenario, not by hand.
pub(crate) async fn hold(args: HoldArgs) -> Result<()> {
    let token = std::env::var("JOBWIRE_BENCH_TOKEN").context("JOBWIRE_BENCH_TOKEN is not set")?;
    if args.jobs.is_empty() {
        bail!("--jobs is empty");
    }
    let server: std::net::SocketAddr = args.addr.parse()?;
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let mut sockets = Vec::new();
    let mut stdout = tokio::io::stdout();
    while let Some(line) = lines.next_line().await? {
        let n: usize = line.trim().parse().context("a count")?;
        let mut failure = None;
        for _ in 0..n {
            let i = args.first + sockets.len();
            let url = format!(
                "ws://{}/ws/jobs/{}",
                args.addr,
                args.jobs[i % args.jobs.len()]
            );
            match open(server, args.source, &url, &token).await {
                // Read in the background: tungstenite answers the server's
                // pings while reading, and an unanswered socket would be
                // closed after three heartbeats.
                Ok(mut ws) => sockets.push(tokio::spawn(async move {
                    while let Some(Ok(_)) = ws.next().await {}
                })),
                Err(e) => {
                    failure = Some(format!("connection {}: {e:#}", sockets.len()));
                    break;
                }
            }
        }
        let answer = match failure {
            None => format!("ok {}\n", sockets.len()),
            Some(e) => format!("error {e}\n"),
        };
        stdout.write_all(answer.as_bytes()).await?;
        stdout.flush().await?;
    }
    Ok(())
}

type RawWs = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

/// Opens one subscribed WebSocket from `source` and waits for its
/// `current_state`.
async fn open(
    server: std::net::SocketAddr,
    source: std::net::IpAddr,
    url: &str,
    token: &str,
) -> Result<RawWs> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind((source, 0).into())?;
    let stream = socket.connect(server).await?;
    let mut request = url.into_client_request()?;
    request
        .headers_mut()
        .insert("authorization", format!("Bearer {token}").parse()?);
    let config = WebSocketConfig::default().read_buffer_size(4096);
    let (mut ws, _) =
        tokio_tungstenite::client_async_with_config(request, stream, Some(config)).await?;
    match tokio::time::timeout(Duration::from_secs(10), ws.next()).await {
        Ok(Some(Ok(_))) => Ok(ws),
        other => bail!("no current_state: {other:?}"),
    }
}

/// This process's hard limit on open files.
fn open_file_limit() -> Result<usize> {
    let limits = std::fs::read_to_string("/proc/self/limits")?;
    limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(4))
        .and_then(|v| v.parse().ok())
        .context("reading the open-file limit from /proc/self/limits")
}
