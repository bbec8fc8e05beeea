//! The load: demo jobs submitted over HTTP at a steady pace, each watched
//! by one client of every kind; a tracker that polls every job's state
//! (to know when each ended, for the checker's "no client waits for ever");
//! and the final read of every job's state and log over HTTP.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jobwire_client::{Client, ClientError};
use jobwire_core::{Epoch, Event, EventId, JobId, JobState};
use rand::rngs::StdRng;
use rand::Rng;
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::clients::{mux, one, rust, Env};
use crate::record::{ClientKind, WatchLog};

/// How much load to make.
#[derive(Clone, Debug)]
pub struct LoadConfig {
    /// Jobs to submit, evenly over `over`.
    pub jobs: usize,
    pub over: Duration,
    /// Normal and slow multiplexed sockets.
    pub mux: usize,
    pub slow: usize,
    /// Steps per demo job, and the delay of each (ms): a job runs for
    /// `steps × delay_ms`.
    pub steps: (u64, u64),
    pub delay_ms: (u64, u64),
}

/// A job the suite created.
#[derive(Clone, Debug)]
pub struct Submitted {
    pub id: JobId,
    pub at: Duration,
    pub params: Value,
}

/// What the submitter made.
#[derive(Debug, Default)]
pub struct Submissions {
    pub jobs: Vec<Submitted>,
    /// Creates that failed after every retry (Redis down too long).
    pub create_failures: usize,
}

/// A REST client of every gateway (it moves on when one is unreachable).
///
/// # Errors
/// When the client cannot be built.
pub fn rest_client(env: &Env) -> anyhow::Result<Client> {
    let mut builder = Client::builder()
        .token(env.tokens.mint()?)
        .timeout(Duration::from_secs(5));
    for url in &env.urls {
        builder = builder.url(url.clone());
    }
    Ok(builder.build()?)
}

/// Starts the mux clients; returns the senders that hand them jobs.
pub fn start_mux(
    env: &Arc<Env>,
    config: &LoadConfig,
    tasks: &mut JoinSet<Vec<WatchLog>>,
) -> (
    Vec<mpsc::UnboundedSender<JobId>>,
    Vec<mpsc::UnboundedSender<JobId>>,
) {
    let mut start = |kind: ClientKind, count: usize, prefix: &str| {
        (0..count)
            .map(|i| {
                let (tx, rx) = mpsc::unbounded_channel();
                tasks.spawn(mux::run(Arc::clone(env), format!("{prefix}-{i}"), kind, rx));
                tx
            })
            .collect::<Vec<_>>()
    };
    let normal = start(ClientKind::Mux, config.mux.max(1), "mux");
    let slow = start(ClientKind::Slow, config.slow, "slow");
    (normal, slow)
}

/// Submits the jobs and starts their watchers; returns when all are
/// submitted (or the run is stopped).
pub async fn submit(
    env: Arc<Env>,
    config: LoadConfig,
    mut rng: StdRng,
    mux: Vec<mpsc::UnboundedSender<JobId>>,
    slow: Vec<mpsc::UnboundedSender<JobId>>,
    tasks: Arc<Mutex<JoinSet<Vec<WatchLog>>>>,
    known: Arc<Mutex<Vec<JobId>>>,
) -> Submissions {
    let mut out = Submissions::default();
    let Ok(client) = rest_client(&env) else {
        return out;
    };
    let pace = config.over / u32::try_from(config.jobs.max(1)).unwrap_or(u32::MAX);
    for n in 0..config.jobs {
        let due = pace * u32::try_from(n).unwrap_or(u32::MAX);
        let now = env.clock.now();
        if due > now {
            tokio::select! {
                () = env.stop.cancelled() => return out,
                () = tokio::time::sleep(due - now) => {}
            }
        }
        let steps = rng.random_range(config.steps.0..=config.steps.1);
        let delay = rng.random_range(config.delay_ms.0..=config.delay_ms.1);
        let mut params = json!({"steps": steps, "delay_ms": delay});
        // A few jobs fail on purpose: `job_failed` is terminal too.
        if rng.random_bool(0.1) {
            params["fail_at"] = json!(steps / 2 + 1);
        }
        let Some(state) = create(&client, &params).await else {
            out.create_failures += 1;
            continue;
        };
        let id = state.id.clone();
        if let Ok(mut known) = known.lock() {
            known.push(id.clone());
        }
        if let Ok(mut tasks) = tasks.lock() {
            let e = &env;
            tasks.spawn({
                let (e, id) = (Arc::clone(e), id.clone());
                async move { vec![rust::run(e, format!("rust-{n}"), id).await] }
            });
            tasks.spawn({
                let (e, id) = (Arc::clone(e), id.clone());
                async move { vec![one::run(e, format!("ws-{n}"), ClientKind::Single, id).await] }
            });
            tasks.spawn({
                let (e, id) = (Arc::clone(e), id.clone());
                async move { vec![one::run(e, format!("sse-{n}"), ClientKind::Sse, id).await] }
            });
        }
        if !mux.is_empty() {
            let _ = mux[n % mux.len()].send(id.clone());
        }
        // Every slow client watches every job: the more a slow client is
        // sent, the sooner its backlog outgrows the kernel's buffers and
        // the gateway's queue, and it is dropped (1013).
        for tx in &slow {
            let _ = tx.send(id.clone());
        }
        out.jobs.push(Submitted {
            id,
            at: env.clock.now(),
            params,
        });
    }
    out
}

/// Creates a demo job, retrying through outages for up to 20 s.
async fn create(client: &Client, params: &Value) -> Option<JobState> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while tokio::time::Instant::now() < deadline {
        match client.create_job("demo", params.clone()).await {
            Ok(state) => return Some(state),
            // 4xx other than 429 will not get better.
            Err(ClientError::Api { status, .. })
                if (400..500).contains(&status) && status != 429 =>
            {
                return None
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    }
    None
}

/// When each job was last seen to end (terminal or gone); `None` while it
/// runs (again: a rollback can un-finish a job).
pub type Ends = Arc<Mutex<HashMap<JobId, Option<Duration>>>>;

/// Polls every known job once a second until `stop`, counting finished
/// passes in `passes` (so the drain can wait for a pass that started
/// after the last fault: a rollback can un-finish a job the tracker saw end).
pub async fn track(
    env: Arc<Env>,
    jobs: Arc<Mutex<Vec<JobId>>>,
    ends: Ends,
    passes: Arc<std::sync::atomic::AtomicU64>,
    stop: CancellationToken,
) {
    let Ok(client) = rest_client(&env) else {
        return;
    };
    loop {
        let known: Vec<JobId> = jobs.lock().map(|j| j.clone()).unwrap_or_default();
        for job in known {
            let ended = match client.job(&job).await {
                Ok(state) => Some(state.status.is_terminal()),
                Err(ClientError::Api { status: 404, .. }) => Some(true),
                Err(_) => None, // unknown: keep what we had
            };
            if let (Some(ended), Ok(mut ends)) = (ended, ends.lock()) {
                let entry = ends.entry(job).or_insert(None);
                match (ended, *entry) {
                    (true, None) => *entry = Some(env.clock.now()),
                    (false, Some(_)) => *entry = None,
                    _ => {}
                }
            }
        }
        passes.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

/// A job as it stands at the end.
#[derive(Clone, Debug)]
pub enum Final {
    /// 404: deleted, or its data lost entirely.
    Gone,
    Present {
        state: Box<JobState>,
        epoch: Epoch,
        events: Vec<Event>,
    },
    /// It could not be read (reported as a violation: the run ended with
    /// the gateways unable to serve it).
    Unreadable(String),
}

/// Reads every job's final state and whole log over HTTP.
pub async fn read_finals(env: &Env, jobs: &[JobId]) -> HashMap<JobId, Final> {
    let mut out = HashMap::new();
    let client = match rest_client(env) {
        Ok(c) => c,
        Err(e) => {
            for job in jobs {
                out.insert(job.clone(), Final::Unreadable(e.to_string()));
            }
            return out;
        }
    };
    for job in jobs {
        let mut last = None;
        for _ in 0..10 {
            match read_final(&client, job).await {
                Ok(f) => {
                    last = Some(f);
                    break;
                }
                Err(e) => {
                    last = Some(Final::Unreadable(e));
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
        if let Some(f) = last {
            out.insert(job.clone(), f);
        }
    }
    out
}

async fn read_final(client: &Client, job: &JobId) -> Result<Final, String> {
    let state = match client.job(job).await {
        Ok(s) => s,
        Err(ClientError::Api { status: 404, .. }) => return Ok(Final::Gone),
        Err(e) => return Err(e.to_string()),
    };
    let mut events = Vec::new();
    let mut epoch = None;
    loop {
        let since = events.last().map(|e: &Event| e.id).unwrap_or(EventId(0));
        let page = client
            .history(job, since, None, 1000)
            .await
            .map_err(|e| e.to_string())?;
        match &epoch {
            None => epoch = Some(page.epoch.clone()),
            Some(e) if *e != page.epoch => return Err("the epoch changed while reading".into()),
            Some(_) => {}
        }
        let n = page.events.len();
        events.extend(page.events);
        if n < 1000 {
            break;
        }
    }
    let epoch = epoch.ok_or("no epoch")?;
    if epoch != state.epoch || EventId(events.len() as u64) < state.last_event_id {
        return Err("the job changed while reading".into());
    }
    Ok(Final::Present {
        state: Box::new(state),
        epoch,
        events,
    })
}
