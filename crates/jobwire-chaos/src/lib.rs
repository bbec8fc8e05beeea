//! jobwire's chaos suite: real `jobwire serve` gateways and `jobwire
//! worker` processes on a private Redis, demo jobs watched by clients of
//! every kind, seeded faults (processes killed, Redis restarted, paused,
//! crashed with a cut AOF, wiped, rolled back; slow clients, reconnect
//! storms, expiring tokens), and a checker that compares what every client
//! received with the final logs. docs/reliability.md has the rules and the
//! results.
//!
//! # Layout
//!
//! - [`cluster`]: the processes (Redis, gateways, workers), restartable.
//! - [`clients`]: the Rust client, multiplexed and one-job WebSockets, SSE.
//! - [`record`]: what each watcher saw, and the shared resume logic.
//! - [`load`]: submitting jobs, tracking their ends, reading the final logs.
//! - [`faults`]: fault kinds, schedules and the injector.
//! - [`checker`]: the rules.
//! - [`report`]: the report (text and JSON).
//! - [`tokens`]: JWTs for the clients, short-lived on demand.

pub mod checker;
pub mod clients;
pub mod cluster;
pub mod faults;
pub mod load;
pub mod record;
pub mod report;
pub mod tokens;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use jobwire_core::{JobId, JobStatus};
use rand::SeedableRng;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::checker::Bounds;
use crate::clients::Env;
use crate::cluster::{Cluster, ClusterConfig};
use crate::faults::Schedule;
use crate::load::{Final, LoadConfig};
use crate::record::{Clock, Obs, WatchLog};
use crate::report::{Jobs, Recovery, Report};

/// A run's settings.
#[derive(Clone, Debug)]
pub struct Config {
    pub seed: u64,
    pub schedule: Schedule,
    /// How long jobs are submitted and faults injected; the run then
    /// drains (every job ends) and checks.
    pub duration: Duration,
    /// The `jobwire` binary.
    pub jobwire: PathBuf,
    pub gateways: usize,
    pub workers: usize,
    /// Jobs to submit over the duration (default: one every 2 s).
    pub jobs: Option<usize>,
    /// Where process logs go (default: a fresh directory under the
    /// system's temporary directory, kept for inspection).
    pub log_dir: Option<PathBuf>,
}

/// How long a watcher may take to end after its job did.
const WATCHER_BOUND: Duration = Duration::from_secs(30);
/// How long, after the load, every job may take to end.
const DRAIN: Duration = Duration::from_secs(90);

/// The `jobwire` binary next to this executable (a `cargo build` puts
/// both in `target/<profile>/`; tests run from `target/<profile>/deps/`).
///
/// # Errors
/// When it is found in neither place.
pub fn find_jobwire() -> Result<PathBuf> {
    let exe = std::env::current_exe().context("finding this executable")?;
    let mut dir = exe.parent();
    for _ in 0..2 {
        let Some(d) = dir else { break };
        let candidate = d.join("jobwire");
        if candidate.exists() {
            return Ok(candidate);
        }
        dir = d.parent();
    }
    anyhow::bail!(
        "no jobwire binary next to {}: build it (`cargo build -p jobwire-cli`, with --release for a release run) or pass --jobwire PATH",
        exe.display()
    )
}

/// Runs the suite: start, load and faults, drain, check, report.
///
/// # Errors
/// When the processes cannot be started. Violations are in the report,
/// not errors.
pub async fn run(config: Config) -> Result<Report> {
    let wall = Instant::now();
    let log_dir = config.log_dir.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!(
            "jobwire-chaos-{}-{}",
            std::process::id(),
            config.seed
        ))
    });
    let cluster = Cluster::start(ClusterConfig {
        binary: config.jobwire.clone(),
        gateways: config.gateways,
        workers: config.workers,
        log_dir: log_dir.clone(),
        store: config.schedule.store(),
    })
    .await?;
    // The run's clock starts once everything is up (a cluster takes a
    // few seconds), so the first fault comes after the load has started.
    let clock = Clock::new();
    let env = Arc::new(Env::new(
        cluster.gateway_urls(),
        Arc::new(tokens::Tokens::default()),
        clock,
        config.seed,
    ));
    let cluster = Arc::new(tokio::sync::Mutex::new(cluster));
    let secs = config.duration.as_secs().max(10);
    let load = LoadConfig {
        jobs: config.jobs.unwrap_or((secs / 2) as usize),
        // Stop submitting a little early, so the last jobs meet faults too.
        over: config.duration.mul_f64(0.9),
        mux: 3,
        slow: 2,
        steps: (20, 60),
        delay_ms: (100, 300),
    };

    let tasks = Arc::new(Mutex::new(JoinSet::new()));
    let (mux, slow) = {
        let mut set = tasks.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
        load::start_mux(&env, &load, &mut set)
    };
    let known: Arc<Mutex<Vec<JobId>>> = Arc::default();
    let ends: load::Ends = Arc::default();
    let tracking = CancellationToken::new();
    let passes = Arc::new(AtomicU64::new(0));
    let tracker = tokio::spawn(load::track(
        Arc::clone(&env),
        Arc::clone(&known),
        Arc::clone(&ends),
        Arc::clone(&passes),
        tracking.clone(),
    ));

    let mut rng = rand::rngs::StdRng::seed_from_u64(config.seed);
    let plan = faults::plan(config.schedule, config.duration, &mut rng);
    let no_stop = CancellationToken::new();
    // The injector is a task of its own: its blocking steps
    // (`block_in_place`: a failover takes seconds) would otherwise block
    // the submissions too, joined in one task.
    let injector = tokio::spawn(faults::run(
        plan,
        Arc::clone(&cluster),
        Arc::clone(&env),
        rand::rngs::StdRng::seed_from_u64(config.seed.wrapping_add(2)),
        no_stop,
    ));
    let submissions = load::submit(
        Arc::clone(&env),
        load.clone(),
        rand::rngs::StdRng::seed_from_u64(config.seed.wrapping_add(1)),
        mux,
        slow,
        Arc::clone(&tasks),
        Arc::clone(&known),
    )
    .await;
    let fault_log = injector.await.context("the fault injector panicked")?;
    cluster.lock().await.heal().await?;

    // Drain: every job ends, then every watcher does (or the bounds pass).
    // Only a tracker pass that started after the last fault counts: the
    // ends it saw before may have been rolled back.
    let deadline = Instant::now() + DRAIN;
    let jobs: Vec<JobId> = submissions.jobs.iter().map(|s| s.id.clone()).collect();
    let healed = passes.load(Ordering::SeqCst);
    while Instant::now() < deadline
        && (passes.load(Ordering::SeqCst) < healed + 2 || !all_ended(&ends, &jobs))
    {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let deadline = Instant::now() + WATCHER_BOUND;
    while Instant::now() < deadline && env.live_watchers() > 0 {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tracking.cancel();
    env.stop.cancel();
    let _ = tracker.await;
    let mut logs: Vec<WatchLog> = Vec::new();
    let mut set = std::mem::take(&mut *tasks.lock().map_err(|_| anyhow::anyhow!("poisoned"))?);
    let joined = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(done) = set.join_next().await {
            if let Ok(l) = done {
                logs.extend(l);
            }
        }
    })
    .await;
    if joined.is_err() {
        anyhow::bail!("clients did not stop within 20 s of the end of the run");
    }

    let finals = load::read_finals(&env, &jobs).await;
    let ends: HashMap<JobId, Option<Duration>> = ends.lock().map(|e| e.clone()).unwrap_or_default();
    let violations = checker::check(
        &logs,
        &finals,
        &ends,
        Bounds {
            watcher: WATCHER_BOUND,
        },
    );
    let log_dir = cluster.lock().await.log_dir().to_path_buf();
    dump_violating_jobs(&log_dir, &violations, &finals, &logs);
    let log_dir = log_dir.display().to_string();
    Ok(build_report(
        &config,
        wall,
        submissions,
        &finals,
        &logs,
        fault_log,
        &violations,
        log_dir,
    ))
}

/// Writes, for each job with a violation, its final log and what each of
/// its watchers saw to `<log_dir>/jobs/<job>.txt`, for the post-mortem.
fn dump_violating_jobs(
    log_dir: &std::path::Path,
    violations: &[checker::Violation],
    finals: &HashMap<JobId, Final>,
    logs: &[WatchLog],
) {
    use std::fmt::Write as _;
    let dir = log_dir.join("jobs");
    let mut jobs: Vec<&str> = violations.iter().map(|v| v.job.as_str()).collect();
    jobs.sort_unstable();
    jobs.dedup();
    for job in jobs.into_iter().take(50) {
        let mut out = String::new();
        for v in violations.iter().filter(|v| v.job == job) {
            let _ = writeln!(out, "VIOLATION {} {:?}: {}", v.kind, v.client, v.detail);
        }
        let Ok(id) = job.parse::<JobId>() else {
            continue;
        };
        match finals.get(&id) {
            Some(Final::Present {
                state,
                epoch,
                events,
            }) => {
                let _ = writeln!(
                    out,
                    "FINAL epoch {epoch} state {}",
                    serde_json::to_string(state).unwrap_or_default()
                );
                for e in events {
                    let _ = writeln!(out, "  {}", e.to_json());
                }
            }
            other => {
                let _ = writeln!(out, "FINAL {other:?}");
            }
        }
        for log in logs.iter().filter(|l| l.job == id) {
            let _ = writeln!(out, "WATCHER {} ended {:?}", log.client, log.ended);
            for obs in &log.obs {
                let line = match obs {
                    Obs::Event {
                        at, epoch, event, ..
                    } => format!(
                        "{:.3} event {epoch}:{} {} attempt {}",
                        at.as_secs_f64(),
                        event.id,
                        event.kind,
                        event.data.get("attempt").cloned().unwrap_or_default()
                    ),
                    other => format!("{other:?}"),
                };
                let _ = writeln!(out, "  {line}");
            }
        }
        if std::fs::create_dir_all(&dir).is_ok() {
            let _ = std::fs::write(dir.join(format!("{job}.txt")), out);
        }
    }
}

fn all_ended(ends: &load::Ends, jobs: &[JobId]) -> bool {
    ends.lock()
        .map(|e| jobs.iter().all(|j| e.get(j).copied().flatten().is_some()))
        .unwrap_or(false)
}

#[allow(clippy::too_many_arguments)]
fn build_report(
    config: &Config,
    wall: Instant,
    submissions: load::Submissions,
    finals: &HashMap<JobId, Final>,
    logs: &[WatchLog],
    fault_log: Vec<faults::FaultRecord>,
    violations: &[checker::Violation],
    log_dir: String,
) -> Report {
    let mut jobs = Jobs {
        submitted: submissions.jobs.len(),
        create_failures: submissions.create_failures,
        ..Jobs::default()
    };
    for f in finals.values() {
        match f {
            Final::Gone => jobs.gone += 1,
            Final::Unreadable(_) => jobs.unfinished += 1,
            Final::Present { state, .. } => match state.status {
                JobStatus::Completed => jobs.completed += 1,
                JobStatus::Failed => jobs.failed += 1,
                JobStatus::Cancelled => jobs.cancelled += 1,
                _ => jobs.unfinished += 1,
            },
        }
    }
    let mut created_epochs = HashMap::new();
    for log in logs {
        if let Some(Obs::Start { epoch, .. }) = log.obs.first() {
            created_epochs
                .entry(log.job.clone())
                .or_insert(epoch.clone());
        }
    }
    jobs.epoch_changed = finals
        .iter()
        .filter(|(job, f)| match (f, created_epochs.get(*job)) {
            (Final::Present { epoch, .. }, Some(first)) => epoch != first,
            _ => false,
        })
        .count();
    let mut watchers = BTreeMap::new();
    let mut events = BTreeMap::new();
    let mut deliveries = Vec::new();
    let (mut reconnects, mut resyncs, mut gone) = (0, 0, 0);
    let mut causes = BTreeMap::new();
    for log in logs {
        let kind = serde_json::to_value(log.kind)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        *watchers.entry(kind.clone()).or_insert(0) += 1;
        *events.entry(kind).or_insert(0) += log.events();
        reconnects += log.reconnects();
        resyncs += log.resyncs();
        for obs in &log.obs {
            match obs {
                Obs::Event { at, .. } => deliveries.push(at.as_secs_f64()),
                Obs::Gone { .. } => gone += 1,
                Obs::Reconnect { reason, .. } => {
                    *causes.entry(report::cause(reason)).or_insert(0) += 1;
                }
                _ => {}
            }
        }
    }
    deliveries.sort_by(f64::total_cmp);
    Report {
        seed: config.seed,
        schedule: config.schedule.name().to_owned(),
        duration_s: config.duration.as_secs(),
        wall_s: wall.elapsed().as_secs_f64(),
        gateways: config.gateways,
        workers: config.workers,
        jobs,
        watchers,
        events_total: deliveries.len(),
        events,
        reconnects,
        reconnect_causes: causes,
        resyncs,
        gone_notices: gone,
        faults: faults::counts(&fault_log),
        recovery_ms: Recovery::measure(&fault_log, &deliveries),
        fault_log,
        violations: checker::summarize(violations),
        violation_count: violations.len(),
        log_dir,
    }
}
