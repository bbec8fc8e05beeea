//! `jobwire serve` and `jobwire dev` (the server plus in-process workers).
//!
//! `serve` binds first and answers `/healthz` (200) and everything else with
//! 503 while it waits for Redis, retrying with backoff instead of exiting.
//! Once connected it serves the full API on the same socket. SIGTERM or
//! SIGINT stops it gracefully (sockets close with 1001; exit 0).

use std::sync::Arc;
use std::time::Duration;

use anyhow::anyhow;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use jobwire_core::{Backend, MemoryBackend};
use jobwire_server::{mint_token, AppState, Auth, AuthConfig, Scope};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::{DevArgs, ServeArgs, ServerFlags};
use crate::{dev_secret, shutdown_on_signal, store, telemetry, worker, Failure};

/// `jobwire serve`.
pub(crate) async fn serve(args: ServeArgs) -> Result<(), Failure> {
    let flags = args.flags;
    telemetry::init(flags.log_format);
    let auth = build_auth(&flags.auth_config()?)?;
    if !args.memory && flags.store.redis_url.is_none() {
        return Err(Failure::Usage(anyhow!(
            "REDIS_URL is required (or --memory / JOBWIRE_MEMORY=true for a single-node server)"
        )));
    }
    if !args.memory {
        store::check(&flags.store)?;
    }
    let listener = bind(&flags).await?;
    let shutdown = shutdown_on_signal();
    let backend: Arc<dyn Backend> = if args.memory {
        Arc::new(MemoryBackend::new(flags.store.backend_config()))
    } else {
        match connect_while_waiting(&flags, &listener, &shutdown).await? {
            Some(backend) => backend,
            None => return Ok(()),
        }
    };
    run(listener, backend, auth, &flags, shutdown).await
}

/// `jobwire dev`.
pub(crate) async fn dev(args: DevArgs) -> Result<(), Failure> {
    let mut flags = args.flags;
    telemetry::init(flags.log_format);
    // The configured secret, else dev's own (kept for `jobwire token`), and
    // a token to go with it.
    let (secret, secret_note) = match flags.jwt_secret.clone() {
        Some(secret) => (secret, "signed with JOBWIRE_JWT_SECRET".to_owned()),
        None => match dev_secret::load_or_create() {
            Ok((secret, path)) => (
                secret,
                format!("signed with dev's own secret, kept in {}", path.display()),
            ),
            Err(e) => {
                tracing::warn!(
                    error = %e,
                    "cannot keep a dev secret: this run's tokens die with it, and `jobwire token` cannot sign for it (set JOBWIRE_JWT_SECRET)"
                );
                (
                    format!(
                        "{:032x}{:032x}",
                        rand::random::<u128>(),
                        rand::random::<u128>()
                    ),
                    "signed with a secret of this run only".to_owned(),
                )
            }
        },
    };
    flags.jwt_secret = Some(secret.clone());
    let auth = build_auth(&flags.auth_config()?)?;
    worker::check(&args.worker)?;
    store::check(&flags.store)?;
    // `dev` is one person's machine: its token may do everything, the
    // operations commands (`jobwire workers`, `jobwire queues`) included.
    let token = mint_token(
        &secret,
        "dev",
        &[
            Scope::JobsRead,
            Scope::JobsWrite,
            Scope::Worker,
            Scope::Admin,
        ],
        Duration::from_secs(7 * 24 * 3600),
    )
    .map_err(|e| Failure::Runtime(anyhow!("minting the dev token: {e}")))?;
    let listener = bind(&flags).await?;
    let shutdown = shutdown_on_signal();
    let (backend, store): (Arc<dyn Backend>, String) = match &flags.store.redis_url {
        Some(url) => match connect_while_waiting(&flags, &listener, &shutdown).await? {
            Some(b) => (b, format!("Redis at {}", jobwire_redis::redacted(url))),
            None => return Ok(()),
        },
        None => (
            Arc::new(MemoryBackend::new(flags.store.backend_config())),
            "in memory (set REDIS_URL to use Redis)".to_owned(),
        ),
    };
    let addr = listener
        .local_addr()
        .map_err(|e| Failure::Runtime(anyhow!("reading the bound address: {e}")))?;
    let mut worker_flags = args.worker;
    if worker_flags.scan_root.is_none() {
        // dev scans the directory it was started in, and what lies below.
        worker_flags.scan_root = std::env::current_dir().ok();
    }
    if flags.store.redis_url.is_none() {
        // Jobs in memory end with the process: waiting for them on Ctrl-C
        // would only delay the exit.
        worker_flags.shutdown_timeout = worker_flags.shutdown_timeout.min(Duration::from_secs(1));
    }
    let workers = worker::build(Arc::clone(&backend), &worker_flags)?;
    let concurrency = workers.config().concurrency;
    let banner = format!(
        "jobwire dev is running: jobs kept {store}; a worker in this process runs up to {concurrency} jobs at once

  Open the web UI (signed in as \"dev\"):
    http://{addr}/#token={token}

  Or from another terminal:
    export JOBWIRE_TOKEN={token} JOBWIRE_URL=http://{addr}
    jobwire submit demo --param steps=50 --watch      # cargo run --release -- submit ...
    jobwire submit scan --param path=. --watch
    jobwire token --sub alice      # more tokens ({secret_note})

  API http://{addr}/api/jobs · metrics http://{addr}/metrics · docs/protocol.md
  Press Ctrl-C to stop."
    );
    // Not `println!`: a closed stdout (`jobwire dev | head -3`, a reader
    // that went away) must not take the server down with a panic.
    {
        use std::io::Write as _;
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{banner}").and_then(|()| out.flush());
    }
    let working = tokio::spawn({
        let shutdown = shutdown.clone();
        async move { workers.run(shutdown).await }
    });
    let served = run(listener, backend, auth, &flags, shutdown).await;
    if let Err(e) = working.await {
        tracing::error!(error = %e, "the workers crashed");
    }
    served
}

async fn run(
    listener: TcpListener,
    backend: Arc<dyn Backend>,
    auth: Auth,
    flags: &ServerFlags,
    shutdown: CancellationToken,
) -> Result<(), Failure> {
    let config = flags.server_config();
    warn_if_too_few_files(&config);
    let state = AppState::new(backend, auth, config, shutdown);
    match listener.local_addr() {
        Ok(addr) => tracing::info!(%addr, "serving"),
        Err(e) => tracing::info!(error = %e, "serving (the bound address cannot be read)"),
    }
    jobwire_server::serve(listener, state)
        .await
        .map_err(|e| Failure::Runtime(anyhow!("server failed: {e}")))?;
    tracing::info!("stopped");
    Ok(())
}

/// Warns when the process may run out of file descriptors before its
/// connection limits are reached: then accepting fails instead of the
/// limits answering (and health checks fail with it).
fn warn_if_too_few_files(config: &jobwire_server::ServerConfig) {
    // Redis connections, the listener, files: a margin.
    let needed = config.max_connections + config.max_http_connections + 64 + 256;
    let soft = std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|limits| {
            limits
                .lines()
                .find(|l| l.starts_with("Max open files"))
                .and_then(|l| l.split_whitespace().nth(3).map(str::to_owned))
        })
        .and_then(|soft| soft.parse::<usize>().ok());
    if let Some(soft) = soft.filter(|soft| *soft < needed) {
        tracing::warn!(
            open_files = soft,
            needed,
            "the open-file limit is below JOBWIRE_MAX_CONNECTIONS + JOBWIRE_MAX_HTTP_CONNECTIONS + a margin: raise it (ulimit -n, LimitNOFILE=) or lower those limits"
        );
    }
}

fn build_auth(config: &AuthConfig) -> Result<Auth, Failure> {
    let auth = Auth::new(config).map_err(|e| Failure::Usage(e.into()))?;
    if auth.is_disabled() {
        tracing::warn!(
            "authentication is DISABLED (JOBWIRE_AUTH=disabled): every request acts as an admin; use only locally"
        );
    }
    Ok(auth)
}

/// Connections the kernel queues before they are accepted. When an instance
/// dies, its clients reconnect to the others all at once; with the usual 128
/// (std's and tokio's default) the queue overflowed in the benchmark's
/// resume storm, and each dropped SYN cost its client a 1 s retransmit. The
/// kernel caps this at `net.core.somaxconn` (4096 by default).
const LISTEN_BACKLOG: u32 = 4096;

async fn bind(flags: &ServerFlags) -> Result<TcpListener, Failure> {
    let listen = || -> std::io::Result<TcpListener> {
        let socket = if flags.bind.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        socket.bind(flags.bind)?;
        socket.listen(LISTEN_BACKLOG)
    };
    listen().map_err(|e| {
        Failure::Runtime(anyhow!(
            "cannot listen on {} (JOBWIRE_BIND): {e}",
            flags.bind
        ))
    })
}

/// Connects to Redis, retrying with backoff while a stand-in server on the
/// same socket answers `/healthz` with 200 and the rest with 503. `None`
/// when shutdown came first.
async fn connect_while_waiting(
    flags: &ServerFlags,
    listener: &TcpListener,
    shutdown: &CancellationToken,
) -> Result<Option<Arc<dyn Backend>>, Failure> {
    let connected = CancellationToken::new();
    let stand_in = stand_in_server(listener, connected.clone())?;
    let result = store::connect_redis(&flags.store, shutdown).await;
    connected.cancel();
    let _ = stand_in.await;
    result
}

fn stand_in_server(
    listener: &TcpListener,
    stop: CancellationToken,
) -> Result<tokio::task::JoinHandle<()>, Failure> {
    let cloned = clone_listener(listener)?;
    let router = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .fallback(|| async { (StatusCode::SERVICE_UNAVAILABLE, "waiting for Redis") });
    let defaults = jobwire_server::ServerConfig::default();
    let limits = jobwire_server::listener::HttpLimits {
        header_timeout: defaults.header_timeout,
        max_http_connections: defaults.max_http_connections,
        max_http_connections_per_ip: defaults.max_http_connections_per_ip,
    };
    Ok(tokio::spawn(jobwire_server::listener::run(
        cloned,
        router,
        limits,
        Default::default(),
        stop,
    )))
}

/// A second handle on the same listening socket.
fn clone_listener(listener: &TcpListener) -> Result<TcpListener, Failure> {
    use std::os::fd::AsFd;
    let duplicate = || -> std::io::Result<TcpListener> {
        let owned = listener.as_fd().try_clone_to_owned()?;
        let std_listener = std::net::TcpListener::from(owned);
        std_listener.set_nonblocking(true)?;
        TcpListener::from_std(std_listener)
    };
    duplicate().map_err(|e| Failure::Runtime(anyhow!("duplicating the listener: {e}")))
}
