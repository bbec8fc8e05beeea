//! The server's configuration and the state shared by every request
//! (passed with `with_state`, never global).

use std::sync::Arc;
use std::time::Duration;

use jobwire_core::{JobQueue, JobStore, LiveFeed, ScheduleStore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::Auth;
use crate::hub::Hub;
use crate::tailer::TailerHealth;

/// Limits and policies of one API server instance.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Origins allowed to open browser sockets. Empty: same-origin only
    /// (plus clients that send no `Origin`, i.e. not browsers).
    pub allowed_origins: Vec<String>,
    /// Open WebSocket + SSE connections per instance (`JOBWIRE_MAX_CONNECTIONS`).
    pub max_connections: usize,
    /// Per user (`JOBWIRE_MAX_CONNECTIONS_PER_USER`).
    pub max_connections_per_user: usize,
    /// Outbound messages queued per connection before it is a slow consumer
    /// (`JOBWIRE_CLIENT_QUEUE`).
    pub client_queue: usize,
    /// Largest client frame accepted, in bytes.
    pub max_frame_bytes: usize,
    /// Client frames per second per connection (bursts of twice that).
    pub max_frames_per_second: u32,
    /// Jobs one connection may watch.
    pub max_subscriptions: usize,
    /// Interval of server pings; a client silent for three is dropped.
    pub heartbeat: Duration,
    /// Job kinds accepted by `POST /api/jobs` (besides external jobs).
    pub kinds: Vec<String>,
    /// Largest request body, in bytes.
    pub max_body_bytes: usize,
    /// A connection must send complete request headers this soon after it
    /// opens or finishes a request; it also bounds idle keep-alive
    /// connections (`JOBWIRE_HEADER_TIMEOUT`).
    pub header_timeout: Duration,
    /// A request body must arrive within this (`JOBWIRE_BODY_TIMEOUT`).
    pub body_timeout: Duration,
    /// Plain HTTP connections open at once; WebSocket and SSE connections
    /// count against `max_connections` instead
    /// (`JOBWIRE_MAX_HTTP_CONNECTIONS`).
    pub max_http_connections: usize,
    /// Plain HTTP connections per client address
    /// (`JOBWIRE_MAX_HTTP_CONNECTIONS_PER_IP`; raise it behind a proxy,
    /// which is one address).
    pub max_http_connections_per_ip: usize,
    /// Largest `params` of a job, serialized (`JOBWIRE_MAX_PARAMS_BYTES`).
    pub max_params_bytes: usize,
    /// Largest `data` of one published event, serialized.
    pub max_event_bytes: usize,
    /// How long an `Idempotency-Key` names the job it made
    /// (`JOBWIRE_IDEMPOTENCY_WINDOW`).
    pub idempotency_window: Duration,
    /// Job creations per second per user, in bursts of five seconds' worth
    /// (`JOBWIRE_CREATE_RATE`; per instance).
    pub create_rate: u32,
    /// Unfinished (scheduled, queued or running) jobs per user
    /// (`JOBWIRE_MAX_UNFINISHED_JOBS`).
    pub max_unfinished_jobs: u64,
    /// Largest page of `GET /api/jobs`.
    pub max_page: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            allowed_origins: Vec::new(),
            max_connections: 10_000,
            max_connections_per_user: 100,
            client_queue: 1024,
            max_frame_bytes: 64 * 1024,
            max_frames_per_second: 50,
            max_subscriptions: 1000,
            heartbeat: Duration::from_secs(25),
            kinds: jobwire_core::kinds::BUILTIN_KINDS
                .iter()
                .map(|k| (*k).to_owned())
                .collect(),
            max_body_bytes: 1024 * 1024,
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            max_http_connections: 2048,
            max_http_connections_per_ip: 256,
            max_params_bytes: 16 * 1024,
            max_event_bytes: 64 * 1024,
            idempotency_window: Duration::from_secs(24 * 3600),
            create_rate: 20,
            max_unfinished_jobs: 1000,
            max_page: 200,
        }
    }
}

/// Everything a handler needs, behind one `Arc`: axum clones the state for
/// every extractor of every request, and a clone of this is one reference
/// count where a struct of `Arc`s was fifteen (measurable on the publish
/// path), and a socket's task holds one pointer.
#[derive(Clone, Debug)]
pub struct AppState(Arc<Shared>);

impl AppState {
    pub fn from_shared(shared: Shared) -> AppState {
        AppState(Arc::new(shared))
    }

    /// The same state on another job store (tests wrap the store).
    pub fn with_store(self, store: Arc<dyn JobStore>) -> AppState {
        let mut shared = Shared::clone(&self.0);
        shared.store = store;
        AppState::from_shared(shared)
    }
}

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// What [`AppState`] shares.
#[derive(Clone, Debug)]
pub struct Shared {
    /// Jobs and their logs (REST, subscribes, recovery reads).
    pub store: Arc<dyn JobStore>,
    /// The live feed the tailer reads.
    pub live: Arc<dyn LiveFeed>,
    /// The queue: its gauges and the operations API.
    pub queue: Arc<dyn JobQueue>,
    /// Cron schedules: the operations API, and firing them.
    pub schedules: Arc<dyn ScheduleStore>,
    pub hub: Arc<Hub>,
    pub auth: Arc<Auth>,
    pub config: Arc<ServerConfig>,
    pub connections: Arc<crate::limits::Connections>,
    pub tailer: Arc<TailerHealth>,
    pub stats: Arc<crate::metrics::Stats>,
    /// Open plain HTTP connections (see `listener`).
    pub http: Arc<crate::listener::HttpConnections>,
    /// Job creations per user (see `limits`).
    pub create_rate: Arc<crate::limits::CreateRate>,
    /// The queues live workers serve (see `served`).
    pub served: Arc<crate::served::ServedQueues>,
    /// Cancelled on SIGTERM/SIGINT: sockets close with 1001.
    pub shutdown: CancellationToken,
    /// Every socket task, so shutdown can wait for them.
    pub tasks: TaskTracker,
}
