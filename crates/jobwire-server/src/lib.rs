//! jobwire's API server (`jobwire serve`): the REST jobs API, WebSocket and
//! SSE live delivery with exact resume, JWT auth, limits and metrics. Any
//! number of instances run side by side against one Redis.
//!
//! # Layout
//!
//! - [`auth`]: JWT verification, scopes, token minting.
//! - [`credentials`]: where a request's token is found, and the Origin
//!   rule, for every transport.
//! - [`routes`]: the REST endpoints, health checks.
//! - [`schedules`]: the cron schedules' endpoints.
//! - [`ws`], [`sse`]: the two live transports.
//! - [`session`]: one connection's subscriptions and the subscribe algorithm
//!   (the part that makes delivery exact).
//! - [`hub`]: which connections watch which job; fan-out of live events.
//! - [`tailer`]: reads the backend's live feed into the Hub.
//! - [`state`]: configuration and shared state.
//! - [`limits`]: live connections per instance and user, frame and creation
//!   rates.
//! - [`listener`]: accepts connections under timeouts and caps.
//! - [`metrics`]: renders the Prometheus endpoint.
//! - [`error`]: the JSON error shape.
//! - `web`: the embedded web UI and `/jobwire.js`.
//!
//! [`serve`] takes a bound listener and a state holding the shutdown token,
//! so tests run real servers on port 0.

pub mod auth;
pub mod credentials;
pub mod error;
pub mod hub;
pub mod limits;
pub mod listener;
pub mod metrics;
pub mod routes;
pub mod schedules;
pub mod served;
pub mod session;
pub mod sse;
pub mod state;
pub mod tailer;
mod web;
pub mod ws;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use axum::Router;
use jobwire_core::{Backend, JobStore, LiveFeed, ScheduleStore};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use auth::{check_user, mint_token, Auth, AuthConfig, Scope};
pub use state::{AppState, ServerConfig};

/// How long shutdown waits for sockets to close before giving up on them.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

impl AppState {
    /// State for a server on `backend`. Cancel `shutdown` to stop it.
    pub fn new(
        backend: Arc<dyn Backend>,
        auth: Auth,
        config: ServerConfig,
        shutdown: CancellationToken,
    ) -> AppState {
        AppState::from_shared(state::Shared {
            store: Arc::clone(&backend) as Arc<dyn JobStore>,
            live: Arc::clone(&backend) as Arc<dyn LiveFeed>,
            schedules: Arc::clone(&backend) as Arc<dyn ScheduleStore>,
            queue: backend,
            hub: Arc::default(),
            auth: Arc::new(auth),
            config: Arc::new(config),
            connections: Arc::default(),
            tailer: Arc::default(),
            stats: Arc::default(),
            http: Arc::default(),
            create_rate: Arc::default(),
            served: Arc::default(),
            shutdown,
            tasks: TaskTracker::new(),
        })
    }
}

/// The HTTP routes.
pub fn router(state: AppState) -> Router {
    let body_limit = state.config.max_body_bytes;
    let body_timeout = state.config.body_timeout;
    Router::new()
        .route("/api/jobs", post(routes::create_job).get(routes::list_jobs))
        .route(
            "/api/jobs/{id}",
            get(routes::get_job).delete(routes::delete_job),
        )
        .route("/api/jobs/{id}/cancel", post(routes::cancel_job))
        .route("/api/jobs/{id}/retry", post(routes::retry_job))
        .route(
            "/api/jobs/{id}/events",
            get(routes::history).post(routes::publish),
        )
        .route("/api/jobs/{id}/stream", get(sse::stream))
        .route("/api/workers", get(routes::workers))
        .route("/api/queues", get(routes::queues))
        .route("/api/throughput", get(routes::throughput))
        .route("/api/queues/{queue}/pause", post(routes::pause_queue))
        .route("/api/queues/{queue}/resume", post(routes::resume_queue))
        .route(
            "/api/queues/{queue}/limits",
            axum::routing::put(routes::set_limits),
        )
        .route("/api/schedules", get(schedules::list).post(schedules::put))
        .route(
            "/api/schedules/{name}",
            axum::routing::delete(schedules::delete),
        )
        .route("/api/schedules/{name}/pause", post(schedules::pause))
        .route("/api/schedules/{name}/resume", post(schedules::resume))
        .route("/ws/jobs", get(ws::many_jobs))
        .route("/ws/jobs/{id}", get(ws::one_job))
        .route("/healthz", get(routes::healthz))
        .route("/readyz", get(routes::readyz))
        .route("/metrics", get(metrics::render))
        .merge(web::routes())
        .fallback(
            |method: axum::http::Method, uri: axum::http::Uri| async move {
                error::ApiError::new(
                    axum::http::StatusCode::NOT_FOUND,
                    "no_route",
                    format!("no route {method} {}", uri.path()),
                )
            },
        )
        .layer(DefaultBodyLimit::max(body_limit))
        // One middleware for both (each layer of `from_fn` costs every
        // request a boxed future): the body read within its deadline, and
        // every error in the JSON shape.
        .layer(axum::middleware::from_fn(
            move |request: axum::extract::Request, next: axum::middleware::Next| async move {
                let response = match listener::read_body(body_timeout, body_limit, request).await {
                    Ok(request) => next.run(request).await,
                    Err(refused) => refused,
                };
                error::json_errors(response).await
            },
        ))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            metrics::count_requests,
        ))
        .layer(tower::util::option_layer(cors(
            &state.config.allowed_origins,
        )))
        .with_state(state)
}

/// CORS for the origins of `JOBWIRE_ALLOWED_ORIGINS` (the same list that
/// may open browser sockets): a page of an app served elsewhere may call
/// the REST API and read SSE with its user's bearer token. No list: no
/// layer and no CORS headers (same origin only). Tokens travel in
/// `Authorization`, not cookies, so no credentials mode is needed.
fn cors(allowed: &[String]) -> Option<tower_http::cors::CorsLayer> {
    use axum::http::{header, HeaderName, HeaderValue, Method};
    use tower_http::cors::{AllowOrigin, CorsLayer};

    if allowed.is_empty() {
        return None;
    }
    let origins = if allowed.iter().any(|a| a == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(allowed.iter().filter_map(|a| HeaderValue::from_str(a).ok()))
    };
    CorsLayer::new()
        .allow_origin(origins)
        .allow_methods([Method::GET, Method::POST, Method::PUT, Method::DELETE])
        .allow_headers([
            header::AUTHORIZATION,
            header::CONTENT_TYPE,
            HeaderName::from_static("idempotency-key"),
            HeaderName::from_static("last-event-id"),
        ])
        .max_age(std::time::Duration::from_secs(600))
        .into()
}

/// Serves until `state.shutdown` is cancelled: then stops accepting, closes
/// sockets with 1001, finishes in-flight requests and returns.
///
/// # Errors
/// I/O errors of the listener.
pub async fn serve(listener: TcpListener, state: AppState) -> std::io::Result<()> {
    let tailer = tokio::spawn(tailer::run(
        state.live.clone(),
        state.store.clone(),
        state.hub.clone(),
        state.tailer.clone(),
        state.shutdown.clone(),
    ));
    // Scheduled jobs are queued when their time comes, and cron schedules
    // fire, by every gateway and worker (once each: jobwire_core::settle::
    // promote_due, jobwire_core::schedule::fire_due), so a job's status
    // moves on even where its worker is not running yet.
    let promoter = {
        let (store, queue) = (state.store.clone(), state.queue.clone());
        let (schedules, stats) = (state.schedules.clone(), state.stats.clone());
        tokio::spawn(async move {
            jobwire_core::settle::keep_promoting(
                store.as_ref(),
                queue.as_ref(),
                schedules.as_ref(),
                |round| stats.record_round(round),
            )
            .await;
        })
    };
    let shutdown = state.shutdown.clone();
    let tasks = state.tasks.clone();
    let limits = listener::HttpLimits {
        header_timeout: state.config.header_timeout,
        max_http_connections: state.config.max_http_connections,
        max_http_connections_per_ip: state.config.max_http_connections_per_ip,
    };
    let counts = state.http.clone();
    listener::run(listener, router(state), limits, counts, shutdown.clone()).await;
    // axum does not wait for upgraded sockets (tokio-rs/axum#3003): they
    // watch the same token and close with 1001; wait for them here.
    shutdown.cancel();
    tasks.close();
    if tokio::time::timeout(SHUTDOWN_GRACE, tasks.wait())
        .await
        .is_err()
    {
        tracing::warn!("some connections did not close within {SHUTDOWN_GRACE:?}");
    }
    promoter.abort();
    let _ = tailer.await;
    Ok(())
}
