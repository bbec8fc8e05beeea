//! Spawning servers and talking to them.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use futures_util::{SinkExt, StreamExt};
use jobwire_core::{
    Backend, BackendConfig, BackendError, EventType, JobId, JobState, JobStore, MemoryBackend,
    NewEvent, NewJob,
};
use jobwire_redis::{RedisBackend, RedisConfig};
use jobwire_server::{mint_token, AppState, Auth, AuthConfig, Scope, ServerConfig};
use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;

pub(crate) const SECRET: &str = "jobwire-test-secret-0123456789";

pub(crate) type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A running server.
pub(crate) struct TestApp {
    pub addr: SocketAddr,
    pub backend: Arc<dyn Backend>,
    pub shutdown: CancellationToken,
    pub served: tokio::task::JoinHandle<std::io::Result<()>>,
}

pub(crate) async fn spawn_app(backend: Arc<dyn Backend>) -> Result<TestApp> {
    spawn_app_with(backend, ServerConfig::default()).await
}

/// A server on `backend` whose job reads go through `store` (a test double
/// wrapping the backend's own store).
pub(crate) async fn spawn_app_with_store(
    backend: Arc<dyn Backend>,
    store: Arc<dyn JobStore>,
) -> Result<TestApp> {
    spawn(backend, Some(store), ServerConfig::default()).await
}

pub(crate) async fn spawn_app_with(
    backend: Arc<dyn Backend>,
    config: ServerConfig,
) -> Result<TestApp> {
    spawn(backend, None, config).await
}

async fn spawn(
    backend: Arc<dyn Backend>,
    store: Option<Arc<dyn JobStore>>,
    config: ServerConfig,
) -> Result<TestApp> {
    if std::env::var_os("TEST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let auth = Auth::new(&AuthConfig {
        secret: Some(SECRET.into()),
        ..AuthConfig::default()
    })?;
    let shutdown = CancellationToken::new();
    let mut state = AppState::new(backend.clone(), auth, config, shutdown.clone());
    if let Some(store) = store {
        state = state.with_store(store);
    }
    let served = tokio::spawn(jobwire_server::serve(listener, state));
    let app = TestApp {
        addr,
        backend,
        shutdown,
        served,
    };
    app.wait_ready().await?;
    Ok(app)
}

impl TestApp {
    /// `GET path`, with a bearer token when given: the status and the JSON
    /// body (`null` when there is none).
    pub(crate) async fn get(&self, path: &str, token: Option<&str>) -> Result<(StatusCode, Value)> {
        self.request(reqwest::Method::GET, path, token, None).await
    }

    /// `POST path` with a JSON body when given.
    pub(crate) async fn post(
        &self,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Result<(StatusCode, Value)> {
        self.request(reqwest::Method::POST, path, token, body).await
    }

    /// `PUT path` with a JSON body.
    pub(crate) async fn put(
        &self,
        path: &str,
        token: Option<&str>,
        body: Value,
    ) -> Result<(StatusCode, Value)> {
        self.request(reqwest::Method::PUT, path, token, Some(body))
            .await
    }

    /// `DELETE path`.
    pub(crate) async fn delete(
        &self,
        path: &str,
        token: Option<&str>,
    ) -> Result<(StatusCode, Value)> {
        self.request(reqwest::Method::DELETE, path, token, None)
            .await
    }

    async fn request(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Result<(StatusCode, Value)> {
        let mut req = reqwest::Client::new().request(method, self.url(path));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await?;
        let status = resp.status();
        let text = resp.text().await?;
        Ok((status, serde_json::from_str(&text).unwrap_or(Value::Null)))
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub(crate) fn ws_url(&self, path: &str) -> String {
        format!("ws://{}{path}", self.addr)
    }

    /// Polls `/readyz` until the server reads its live feed.
    pub(crate) async fn wait_ready(&self) -> Result<()> {
        let client = reqwest::Client::new();
        for _ in 0..200 {
            if let Ok(r) = client.get(self.url("/readyz")).send().await {
                if r.status().is_success() {
                    return Ok(());
                }
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        bail!("server at {} never became ready", self.addr)
    }
}

pub(crate) fn memory() -> Arc<dyn Backend> {
    Arc::new(MemoryBackend::new(BackendConfig::default()))
}

pub(crate) async fn redis(url: &str) -> Result<Arc<dyn Backend>> {
    let backend = RedisBackend::connect(RedisConfig {
        backend: BackendConfig {
            partitions: 4,
            ..BackendConfig::default()
        },
        ..RedisConfig::new(url)
    })
    .await?;
    Ok(Arc::new(backend))
}

pub(crate) fn token(user: &str, scopes: &[Scope]) -> String {
    mint_token(SECRET, user, scopes, Duration::from_secs(3600)).unwrap_or_default()
}

pub(crate) fn user_token(user: &str) -> String {
    token(user, &[Scope::JobsRead, Scope::JobsWrite])
}

/// A running `demo` job of `owner`, created directly on the backend.
pub(crate) async fn running_job(backend: &Arc<dyn Backend>, owner: &str) -> Result<JobState> {
    let job = backend
        .create_job(NewJob::new("demo", json!({}), owner))
        .await?;
    backend
        .publish(&job.id, &[NewEvent::new(EventType::JobStarted, json!({}))])
        .await?;
    Ok(backend.job(&job.id).await?)
}

pub(crate) async fn progress(backend: &Arc<dyn Backend>, job: &JobId, i: u64) -> Result<()> {
    backend
        .publish(
            job,
            &[NewEvent::new(
                EventType::Progress,
                json!({"current": i, "total": 1_000_000}),
            )],
        )
        .await?;
    Ok(())
}

/// How a WebSocket client presents its token.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Via {
    Subprotocol,
    Bearer,
    Query,
}

pub(crate) async fn connect(
    url: &str,
    token: Option<&str>,
    via: Via,
) -> Result<(Ws, Option<String>)> {
    connect_with(url, token, via, None).await
}

pub(crate) async fn connect_with(
    url: &str,
    token: Option<&str>,
    via: Via,
    origin: Option<&str>,
) -> Result<(Ws, Option<String>)> {
    let url = match (token, via) {
        (Some(t), Via::Query) => format!(
            "{url}{}token={t}",
            if url.contains('?') { "&" } else { "?" }
        ),
        _ => url.to_owned(),
    };
    let mut request = url.into_client_request()?;
    if let Some(t) = token {
        match via {
            Via::Subprotocol => {
                request.headers_mut().insert(
                    "sec-websocket-protocol",
                    format!("access_token.{t}").parse()?,
                );
            }
            Via::Bearer => {
                request
                    .headers_mut()
                    .insert("authorization", format!("Bearer {t}").parse()?);
            }
            Via::Query => {}
        }
    }
    if let Some(origin) = origin {
        request.headers_mut().insert("origin", origin.parse()?);
    }
    let (ws, response) = tokio_tungstenite::connect_async(request).await?;
    let protocol = response
        .headers()
        .get("sec-websocket-protocol")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    Ok((ws, protocol))
}

/// The next JSON message (pings skipped); fails on close or timeout.
pub(crate) async fn next_json(ws: &mut Ws) -> Result<Value> {
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .context("no message within 10 s")?
            .context("socket ended")??;
        match msg {
            Message::Text(text) => return Ok(serde_json::from_str(&text)?),
            Message::Close(frame) => bail!("closed: {frame:?}"),
            _ => {}
        }
    }
}

/// Reads until the server closes; returns its close code.
pub(crate) async fn close_code(ws: &mut Ws) -> Result<u16> {
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .context("not closed within 10 s")?;
        match msg {
            Some(Ok(Message::Close(Some(frame)))) => return Ok(u16::from(frame.code)),
            Some(Ok(Message::Close(None))) => return Ok(u16::from(CloseCode::Status)),
            Some(Ok(_)) => {}
            Some(Err(e)) => bail!("socket error before close: {e}"),
            None => bail!("socket ended without a close frame"),
        }
    }
}

pub(crate) async fn send_raw(ws: &mut Ws, text: &str) -> Result<()> {
    ws.send(Message::Text(text.into())).await?;
    Ok(())
}

pub(crate) async fn send(ws: &mut Ws, frame: Value) -> Result<()> {
    ws.send(Message::Text(frame.to_string().into())).await?;
    Ok(())
}

/// Collects, per job, the ids of events received after each job's first
/// message, until every job reached `last` (or fails after 20 s). Checks
/// the first message of each job and that ids are consecutive, without
/// duplicates.
pub(crate) async fn collect_until(ws: &mut Ws, jobs: &[JobId], last: u64) -> Result<()> {
    follow(ws, jobs, Default::default(), last).await
}

/// As [`collect_until`], for a client that already received every job's
/// first message and events up to `after`.
pub(crate) async fn collect_from(ws: &mut Ws, jobs: &[JobId], after: u64, last: u64) -> Result<()> {
    let position = jobs
        .iter()
        .map(|j| (j.as_str().to_owned(), after))
        .collect();
    follow(ws, jobs, position, last).await
}

async fn follow(
    ws: &mut Ws,
    jobs: &[JobId],
    mut position: std::collections::HashMap<String, u64>,
    last: u64,
) -> Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while jobs
        .iter()
        .any(|j| position.get(j.as_str()).copied().unwrap_or(0) < last)
    {
        if tokio::time::Instant::now() > deadline {
            bail!("timed out; positions {position:?}");
        }
        let msg = next_json(ws).await?;
        let job = msg["job_id"]
            .as_str()
            .context("message without job_id")?
            .to_owned();
        let id = msg["id"].as_u64().context("message without id")?;
        match msg["type"].as_str() {
            Some("current_state") | Some("resumed") => {
                if position.insert(job.clone(), id).is_some() {
                    bail!("second first-message for {job}: {msg}");
                }
            }
            Some(_) => {
                let prev = position
                    .get(&job)
                    .copied()
                    .context("event before the first message")?;
                if id != prev + 1 {
                    bail!("job {job}: id {id} after {prev} (gap or duplicate)");
                }
                position.insert(job, id);
            }
            None => bail!("message without type: {msg}"),
        }
    }
    Ok(())
}

/// A real store that counts its job-log reads (`events_after`), and can be
/// told to fail them as an unreachable store would. Everything else passes
/// straight through. (It wraps the one trait it needs to: the live feed and
/// the queue are the backend's own.)
#[derive(Debug)]
pub(crate) struct CountingStore {
    inner: Arc<dyn JobStore>,
    log_reads: AtomicU64,
    fail_log_reads: AtomicBool,
}

impl CountingStore {
    pub(crate) fn new(inner: Arc<dyn JobStore>) -> Arc<CountingStore> {
        Arc::new(CountingStore {
            inner,
            log_reads: AtomicU64::new(0),
            fail_log_reads: AtomicBool::new(false),
        })
    }

    /// `events_after` calls so far (failed ones included).
    pub(crate) fn log_reads(&self) -> u64 {
        self.log_reads.load(Ordering::SeqCst)
    }

    pub(crate) fn fail_log_reads(&self, fail: bool) {
        self.fail_log_reads.store(fail, Ordering::SeqCst);
    }
}

type StoreResult<T> = std::result::Result<T, BackendError>;

#[async_trait::async_trait]
impl JobStore for CountingStore {
    async fn create_job(&self, new: NewJob) -> StoreResult<JobState> {
        self.inner.create_job(new).await
    }
    async fn create_job_once(
        &self,
        new: NewJob,
        once: Option<&jobwire_core::Idempotency>,
    ) -> StoreResult<jobwire_core::Created> {
        self.inner.create_job_once(new, once).await
    }

    async fn publish(
        &self,
        job: &JobId,
        events: &[NewEvent],
    ) -> StoreResult<jobwire_core::PublishOutcome> {
        self.inner.publish(job, events).await
    }

    async fn job(&self, job: &JobId) -> StoreResult<JobState> {
        self.inner.job(job).await
    }

    async fn events_after(
        &self,
        job: &JobId,
        after: jobwire_core::EventId,
        epoch: Option<&jobwire_core::Epoch>,
        limit: usize,
    ) -> StoreResult<jobwire_core::EventsAfter> {
        self.log_reads.fetch_add(1, Ordering::SeqCst);
        if self.fail_log_reads.load(Ordering::SeqCst) {
            return Err(BackendError::Unavailable("log reads are failing".into()));
        }
        self.inner.events_after(job, after, epoch, limit).await
    }

    async fn list_jobs(
        &self,
        query: &jobwire_core::ListQuery,
    ) -> StoreResult<jobwire_core::JobPage> {
        self.inner.list_jobs(query).await
    }

    async fn request_cancel(&self, job: &JobId) -> StoreResult<JobState> {
        self.inner.request_cancel(job).await
    }

    async fn delete(&self, job: &JobId) -> StoreResult<()> {
        self.inner.delete(job).await
    }

    async fn unfinished_jobs(&self, owner: &str) -> StoreResult<u64> {
        self.inner.unfinished_jobs(owner).await
    }

    async fn ping(&self) -> StoreResult<()> {
        self.inner.ping().await
    }

    async fn health(&self) -> StoreResult<jobwire_core::StoreHealth> {
        self.inner.health().await
    }
    async fn throughput(
        &self,
        now: jobwire_core::Timestamp,
    ) -> StoreResult<Vec<jobwire_core::MinuteCounts>> {
        self.inner.throughput(now).await
    }
}
