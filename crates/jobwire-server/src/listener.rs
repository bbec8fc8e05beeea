//! The HTTP listener: accepts TCP connections and serves them with hyper,
//! under limits that keep clients without a token from taking the server's
//! sockets (docs/operations.md, "Security").
//!
//! - **Timeouts.** A connection must send complete request headers within
//!   `header_timeout` of opening, and of finishing its previous request
//!   (hyper's header read timeout also bounds the idle wait between
//!   requests on a keep-alive connection). A request body must arrive
//!   within `body_timeout` ([`read_body`]). Slowloris connections,
//!   trickling headers or promising large bodies, are closed.
//! - **Caps.** At most `max_http_connections` plain HTTP connections at
//!   once, and `max_http_connections_per_ip` per client address. WebSocket
//!   and SSE connections are long-lived by design: once upgraded (or once
//!   an SSE stream starts, see [`ConnSlot::promote`]) they leave these counts
//!   and live under the live-connection limits (`max_connections`, per
//!   user) instead.
//! - **Room for health checks.** Past the caps, a small reserve of
//!   connections is still accepted, but served only `/healthz`, `/readyz`
//!   and `/metrics`, with a short header timeout; everything else gets 503
//!   and the connection closes. Beyond the reserve, connections are closed
//!   at once. So a flood of idle sockets cannot make a health check fail.
//! - **Accept errors** (out of file descriptors, say) are logged and backed
//!   off, never a busy loop.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

use crate::error::ApiError;

/// Connections past the caps still served for health checks.
const HEALTH_RESERVE: usize = 64;
/// The header timeout of a connection in the reserve.
const RESERVE_HEADER_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest pause after an accept error.
const MAX_ACCEPT_BACKOFF: Duration = Duration::from_secs(1);

/// The listener's limits (from `ServerConfig`).
#[derive(Clone, Copy, Debug)]
pub struct HttpLimits {
    pub header_timeout: Duration,
    pub max_http_connections: usize,
    pub max_http_connections_per_ip: usize,
}

/// Open plain HTTP connections, in all and per client address.
#[derive(Debug, Default)]
pub struct HttpConnections {
    total: AtomicUsize,
    per_ip: Mutex<HashMap<IpAddr, usize>>,
}

impl HttpConnections {
    /// Plain HTTP connections open now (upgraded and SSE ones excluded).
    pub fn open(&self) -> usize {
        self.total.load(Ordering::Relaxed)
    }

    fn per_ip(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, usize>> {
        self.per_ip
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// How an accepted connection is served.
enum Admission {
    /// Normally, holding a slot.
    Serve(Arc<ConnSlot>),
    /// Health checks only (the caps are reached).
    HealthOnly,
    /// Not at all: closed at once.
    Refuse,
}

/// A plain HTTP connection's place in the counts; freed when the connection
/// ends or becomes a long-lived stream.
#[derive(Debug)]
pub struct ConnSlot {
    ip: IpAddr,
    counts: Arc<HttpConnections>,
    freed: AtomicBool,
}

impl ConnSlot {
    /// The connection now carries a long-lived stream (SSE), counted by the
    /// live-connection limits: it no longer counts as plain HTTP.
    pub fn promote(&self) {
        self.free();
    }

    fn free(&self) {
        if self.freed.swap(true, Ordering::Relaxed) {
            return;
        }
        self.counts.total.fetch_sub(1, Ordering::Relaxed);
        let mut per_ip = self.counts.per_ip();
        if let Some(n) = per_ip.get_mut(&self.ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                per_ip.remove(&self.ip);
            }
        }
    }
}

impl Drop for ConnSlot {
    fn drop(&mut self) {
        self.free();
    }
}

fn admit(counts: &Arc<HttpConnections>, limits: &HttpLimits, ip: IpAddr) -> Admission {
    let total = counts.total.load(Ordering::Relaxed);
    let mut per_ip = counts.per_ip();
    let mine = per_ip.get(&ip).copied().unwrap_or(0);
    if total >= limits.max_http_connections || mine >= limits.max_http_connections_per_ip {
        return if total < limits.max_http_connections + HEALTH_RESERVE {
            Admission::HealthOnly
        } else {
            Admission::Refuse
        };
    }
    *per_ip.entry(ip).or_default() += 1;
    counts.total.fetch_add(1, Ordering::Relaxed);
    Admission::Serve(Arc::new(ConnSlot {
        ip,
        counts: Arc::clone(counts),
        freed: AtomicBool::new(false),
    }))
}

/// Accepts and serves connections until `shutdown`; then stops accepting
/// and lets each connection finish its request (keep-alive connections are
/// closed between requests). Returns once every connection task ended.
pub async fn run(
    listener: TcpListener,
    router: Router,
    limits: HttpLimits,
    counts: Arc<HttpConnections>,
    shutdown: CancellationToken,
) {
    let connections = TaskTracker::new();
    let mut backoff = jobwire_core::Backoff::new(Duration::from_millis(5), MAX_ACCEPT_BACKOFF);
    // One in-flight reserve connection counts towards the reserve.
    let reserve = Arc::new(AtomicUsize::new(0));
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (tcp, peer) = match accepted {
            Ok(accepted) => {
                backoff.reset();
                accepted
            }
            // The peer gave up before we accepted it: nothing to do.
            Err(e) if is_per_connection(&e) => continue,
            Err(e) => {
                let pause = backoff.failed();
                if backoff.worth_logging() {
                    tracing::warn!(error = %e, ?pause, failures = backoff.failures(),
                        "cannot accept connections (out of file descriptors?); pausing");
                }
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = tokio::time::sleep(pause) => {}
                }
                continue;
            }
        };
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
        match admit(&counts, &limits, peer.ip()) {
            Admission::Serve(slot) => {
                let router = router.clone();
                let shutdown = shutdown.clone();
                connections.spawn(serve(
                    tcp,
                    peer,
                    router,
                    slot,
                    limits.header_timeout,
                    shutdown,
                ));
            }
            Admission::HealthOnly if reserve.load(Ordering::Relaxed) < HEALTH_RESERVE => {
                reserve.fetch_add(1, Ordering::Relaxed);
                let (router, reserve, shutdown) =
                    (router.clone(), Arc::clone(&reserve), shutdown.clone());
                connections.spawn(async move {
                    serve_health_only(tcp, router, shutdown).await;
                    reserve.fetch_sub(1, Ordering::Relaxed);
                });
            }
            Admission::HealthOnly | Admission::Refuse => {
                tracing::debug!(%peer, "connection refused: HTTP connection limits reached");
                drop(tcp);
            }
        }
    }
    connections.close();
    connections.wait().await;
}

/// Errors of one incoming connection, not of the listener.
fn is_per_connection(e: &std::io::Error) -> bool {
    use std::io::ErrorKind;
    matches!(
        e.kind(),
        ErrorKind::ConnectionAborted | ErrorKind::ConnectionReset | ErrorKind::Interrupted
    )
}

/// Serves one connection: HTTP/1.1 with upgrades (WebSocket), each request
/// carrying the connection's slot (an SSE stream promotes it).
async fn serve(
    tcp: TcpStream,
    peer: SocketAddr,
    router: Router,
    slot: Arc<ConnSlot>,
    header_timeout: Duration,
    shutdown: CancellationToken,
) {
    let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
        request.extensions_mut().insert(Arc::clone(&slot));
        request
            .extensions_mut()
            .insert(axum::extract::ConnectInfo(peer));
        router.clone().oneshot(request.map(Body::new))
    });
    serve_with(tcp, service, header_timeout, shutdown).await;
}

/// Serves `/healthz`, `/readyz` and `/metrics` on a connection past the
/// caps; anything else gets 503, and the connection closes after one
/// request.
async fn serve_health_only(tcp: TcpStream, router: Router, shutdown: CancellationToken) {
    let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
        let router = router.clone();
        async move {
            let mut response = match request.uri().path() {
                "/healthz" | "/readyz" | "/metrics" => {
                    router.oneshot(request.map(Body::new)).await?
                }
                _ => ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "busy",
                    "the server is at its connection limit; retry later",
                )
                .into_response(),
            };
            response.headers_mut().insert(
                header::CONNECTION,
                header::HeaderValue::from_static("close"),
            );
            Ok::<_, Infallible>(response)
        }
    });
    serve_with(tcp, service, RESERVE_HEADER_TIMEOUT, shutdown).await;
}

async fn serve_with<S>(
    tcp: TcpStream,
    service: S,
    header_timeout: Duration,
    shutdown: CancellationToken,
) where
    S: hyper::service::Service<hyper::Request<Incoming>, Response = Response, Error = Infallible>
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .serve_connection(TokioIo::new(tcp), service)
        .with_upgrades();
    tokio::pin!(connection);
    let result = tokio::select! {
        result = connection.as_mut() => result,
        () = shutdown.cancelled() => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(e) = result {
        // Timeouts, resets and malformed requests: the client's doing.
        tracing::debug!(error = %e, "connection ended with an error");
    }
}

/// Reads a request's body within `timeout` (a client that declares a body
/// and then trickles it, or sends nothing, is answered 408 and the
/// connection closed) and up to `limit` bytes (413): the request with its
/// body read, or the refusal. Requests without a body pass straight
/// through.
pub(crate) async fn read_body(
    timeout: Duration,
    limit: usize,
    request: Request,
) -> Result<Request, Response> {
    let has_body = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .is_none_or(|v| v.trim() != "0")
        && (request.headers().contains_key(header::CONTENT_LENGTH)
            || request.headers().contains_key(header::TRANSFER_ENCODING));
    if !has_body {
        return Ok(request);
    }
    let (parts, body) = request.into_parts();
    let bytes = match tokio::time::timeout(timeout, axum::body::to_bytes(body, limit)).await {
        Ok(Ok(bytes)) => bytes,
        Ok(Err(_)) => {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                format!("the request body exceeds {limit} bytes"),
            )
            .into_response())
        }
        Err(_) => {
            let mut response = ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "timeout",
                format!("the request body did not arrive within {timeout:?}"),
            )
            .into_response();
            response.headers_mut().insert(
                header::CONNECTION,
                header::HeaderValue::from_static("close"),
            );
            return Err(response);
        }
    };
    Ok(Request::from_parts(parts, Body::from(bytes)))
}
