//! `jobwire serve` and `jobwire dev`.
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
use jobwire_redis::{ConnectError, RedisBackend, RedisConfig};
use jobwire_server::{mint_token, AppState, Auth, AuthConfig, Scope};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::{DevArgs, ServeArgs, ServerFlags};
use crate::{telemetry, Failure};

/// `jobwire serve`.
pub(crate) async fn serve(args: ServeArgs) -> Result<(), Failure> {
    let flags = args.flags;
    telemetry::init(flags.log_format);
    let auth = build_auth(&flags.auth_config()?)?;
    if !args.memory && flags.redis_url.is_none() {
        return Err(Failure::Usage(anyhow!(
            "REDIS_URL is required (or --memory / JOBWIRE_MEMORY=true for a single-node server)"
        )));
    }
    let listener = bind(&flags).await?;
    let shutdown = shutdown_on_signal();
    let backend: Arc<dyn Backend> = if args.memory {
        Arc::new(MemoryBackend::new(flags.backend_config()))
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
    // A dev secret unless one is configured, and a token to go with it.
    let secret = flags
        .jwt_secret
        .clone()
        .unwrap_or_else(|| format!("{:032x}", rand::random::<u128>()));
    flags.jwt_secret = Some(secret.clone());
    let auth = build_auth(&flags.auth_config()?)?;
    let token = mint_token(
        &secret,
        "dev",
        &[Scope::JobsRead, Scope::JobsWrite, Scope::Worker],
        Duration::from_secs(7 * 24 * 3600),
    )
    .map_err(|e| Failure::Runtime(anyhow!("minting the dev token: {e}")))?;
    let listener = bind(&flags).await?;
    let shutdown = shutdown_on_signal();
    let (backend, store): (Arc<dyn Backend>, String) = match &flags.redis_url {
        Some(url) => match connect_while_waiting(&flags, &listener, &shutdown).await? {
            Some(b) => (b, format!("Redis at {url}")),
            None => return Ok(()),
        },
        None => (
            Arc::new(MemoryBackend::new(flags.backend_config())),
            "in memory (set REDIS_URL to use Redis)".to_owned(),
        ),
    };
    let addr = listener
        .local_addr()
        .map_err(|e| Failure::Runtime(anyhow!("reading the bound address: {e}")))?;
    println!("jobwire dev is running, jobs kept {store}");
    println!();
    println!("  API:      http://{addr}/api/jobs");
    println!(
        "  Live:     ws://{addr}/ws/jobs/<job id>   (SSE: http://{addr}/api/jobs/<job id>/stream)"
    );
    println!("  Metrics:  http://{addr}/metrics");
    println!();
    println!("  A dev token (user \"dev\", valid 7 days):");
    println!("    export JOBWIRE_TOKEN={token}");
    println!("  Create a job from another terminal:");
    println!("    curl -s -H \"Authorization: Bearer $JOBWIRE_TOKEN\" -H 'content-type: application/json' \\");
    println!("      -d '{{\"kind\":\"demo\",\"params\":{{\"steps\":50}}}}' http://{addr}/api/jobs");
    println!();
    println!("  Press Ctrl-C to stop.");
    run(listener, backend, auth, &flags, shutdown).await
}

async fn run(
    listener: TcpListener,
    backend: Arc<dyn Backend>,
    auth: Auth,
    flags: &ServerFlags,
    shutdown: CancellationToken,
) -> Result<(), Failure> {
    let state = AppState::new(backend, auth, flags.server_config(), shutdown);
    tracing::info!(addr = ?listener.local_addr().ok(), "serving");
    jobwire_server::serve(listener, state)
        .await
        .map_err(|e| Failure::Runtime(anyhow!("server failed: {e}")))?;
    tracing::info!("stopped");
    Ok(())
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

async fn bind(flags: &ServerFlags) -> Result<TcpListener, Failure> {
    TcpListener::bind(flags.bind).await.map_err(|e| {
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
    let url = flags.redis_url.clone().unwrap_or_default();
    let config = RedisConfig {
        pool_size: usize::from(flags.redis_pool_size),
        key_prefix: flags.key_prefix.clone(),
        backend: flags.backend_config(),
        ..RedisConfig::new(url.clone())
    };
    let connected = CancellationToken::new();
    let stand_in = stand_in_server(listener, connected.clone())?;
    let mut backoff = Duration::from_millis(200);
    let result = loop {
        match RedisBackend::connect(config.clone()).await {
            Ok(backend) => break Ok(Some(Arc::new(backend) as Arc<dyn Backend>)),
            Err(e @ (ConnectError::Url { .. } | ConnectError::Layout(_))) => {
                break Err(Failure::Usage(e.into()))
            }
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?backoff, "waiting for Redis");
                tokio::select! {
                    () = shutdown.cancelled() => break Ok(None),
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    };
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
    Ok(tokio::spawn(async move {
        let _ = axum::serve(cloned, router)
            .with_graceful_shutdown(stop.cancelled_owned())
            .await;
    }))
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

/// A token cancelled on SIGINT (Ctrl-C) or SIGTERM.
fn shutdown_on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let trigger = token.clone();
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        let term = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut s) => {
                    s.recv().await;
                }
                Err(_) => std::future::pending::<()>().await,
            }
        };
        #[cfg(not(unix))]
        let term = std::future::pending::<()>();
        tokio::select! {
            _ = ctrl_c => tracing::info!("interrupted: shutting down"),
            () = term => tracing::info!("terminated: shutting down"),
        }
        trigger.cancel();
    });
    token
}
