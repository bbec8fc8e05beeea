//! `jobwire watch` (and `submit --watch`): follow jobs live through
//! `jobwire-client`, which resumes exactly across reconnects, restarts and
//! instance switches.
//!
//! On a terminal: one progress bar per job (files done of total, or percent
//! for jobs without files; current file, rate, ETA) and a connection line
//! while reconnecting. Otherwise, or with `--json`: one JSON line per event on
//! stdout, connection changes on stderr. At the end one summary line per job;
//! exit 0 only if every job completed.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::time::{Duration, Instant};

use anyhow::anyhow;
use futures_util::StreamExt;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use jobwire_client::{Client, ConnectionStatus, Event, JobId, JobState, JobStatus, WatchEvent};
use serde_json::{json, Value};

use crate::config::WatchArgs;
use crate::jobs::{client, job_ids};
use crate::Failure;

pub(crate) async fn watch(args: WatchArgs) -> Result<(), Failure> {
    let client = client(&args.client)?;
    let ids = job_ids(&args.jobs)?;
    follow(&client, ids, args.json).await
}

/// Follows `ids` until each has ended; `Ok` only if all completed.
pub(crate) async fn follow(client: &Client, ids: Vec<JobId>, json: bool) -> Result<(), Failure> {
    let interactive = !json && std::io::stdout().is_terminal();
    let mut view = if interactive {
        View::bars(&ids)
    } else {
        View::Lines
    };
    let mut jobs: HashMap<JobId, Tracked> =
        ids.iter().map(|id| (id.clone(), Tracked::new())).collect();
    let mut watch = client.watch(ids.clone());
    while let Some(item) = watch.next().await {
        let item = item.map_err(|e| {
            view.abandon();
            Failure::Runtime(e.into())
        })?;
        match &item {
            WatchEvent::State { job, .. } => {
                if let Some(t) = jobs.get_mut(&job.id) {
                    t.apply_state(job);
                }
            }
            WatchEvent::Event(e) => {
                if let Some(t) = jobs.get_mut(&e.job_id) {
                    t.apply_event(e);
                }
            }
            WatchEvent::JobError {
                job_id,
                code,
                message,
            } => {
                if let Some(t) = jobs.get_mut(job_id) {
                    t.error = Some(format!("{message} ({code})"));
                }
            }
            WatchEvent::Resumed { .. } | WatchEvent::Status(_) => {}
        }
        view.show(&item, &jobs);
    }
    view.finish(&jobs);
    let mut unfinished = 0;
    for id in &ids {
        let t = jobs.get(id).map(Tracked::summary).unwrap_or_default();
        eprintln!("{id} {t}");
        if jobs.get(id).map(|t| t.status) != Some(Some(JobStatus::Completed)) {
            unfinished += 1;
        }
    }
    if unfinished == 0 {
        Ok(())
    } else {
        Err(Failure::Runtime(anyhow!(
            "{unfinished} of {} jobs did not complete",
            ids.len()
        )))
    }
}

/// What is known of one job.
#[derive(Debug)]
struct Tracked {
    kind: String,
    status: Option<JobStatus>,
    total: u64,
    processed: u64,
    failed: u64,
    progress: f64,
    current: Option<String>,
    error: Option<String>,
    message: Option<String>,
    since: Instant,
}

impl Tracked {
    fn new() -> Tracked {
        Tracked {
            kind: String::new(),
            status: None,
            total: 0,
            processed: 0,
            failed: 0,
            progress: 0.0,
            current: None,
            error: None,
            message: None,
            since: Instant::now(),
        }
    }

    fn apply_state(&mut self, job: &JobState) {
        self.kind = job.kind.clone();
        self.status = Some(job.status);
        self.total = job.total_files;
        self.processed = job.processed_files;
        self.failed = job.failed_files;
        self.progress = job.progress;
        self.current = job.current_file.clone();
        self.error = job.error.clone();
        self.message = job.message.clone();
    }

    /// Events carry the job's counters after them (docs/protocol.md).
    fn apply_event(&mut self, e: &Event) {
        let d = &e.data;
        let num = |k: &str| d.get(k).and_then(Value::as_u64);
        if let Some(s) = d
            .get("status")
            .and_then(Value::as_str)
            .and_then(|s| s.parse().ok())
        {
            self.status = Some(s);
        }
        self.total = num("total_files").unwrap_or(self.total);
        self.processed = num("processed_files").unwrap_or(self.processed);
        self.failed = num("failed_files").unwrap_or(self.failed);
        self.progress = d
            .get("progress")
            .and_then(Value::as_f64)
            .unwrap_or(self.progress);
        self.current = d
            .get("current_file")
            .and_then(Value::as_str)
            .map(str::to_owned);
        if let Some(m) = d.get("message").and_then(Value::as_str) {
            self.message = Some(m.to_owned());
        }
        if e.kind.as_str() == "job_failed" {
            self.error = d
                .get("error")
                .or(d.get("message"))
                .and_then(Value::as_str)
                .map(str::to_owned);
        }
    }

    fn summary(&self) -> String {
        let took = humantime::format_duration(Duration::from_secs(self.since.elapsed().as_secs()));
        let files = if self.total > 0 {
            format!(
                ", {}/{} files, {} failed",
                self.processed, self.total, self.failed
            )
        } else {
            String::new()
        };
        match (self.status, &self.error) {
            (_, Some(e)) if self.status != Some(JobStatus::Completed) => {
                format!(
                    "{}: {e}",
                    self.status.map_or("error".to_owned(), |s| s.to_string())
                )
            }
            (Some(s), _) => format!("{} {s} in {took}{files}", self.kind),
            (None, _) => "unknown".to_owned(),
        }
    }
}

enum View {
    Bars {
        bars: HashMap<JobId, ProgressBar>,
        connection: ProgressBar,
    },
    Lines,
}

impl View {
    fn bars(ids: &[JobId]) -> View {
        let all = MultiProgress::with_draw_target(ProgressDrawTarget::stdout());
        let bars = ids
            .iter()
            .map(|id| {
                let bar = all.add(ProgressBar::new(100));
                bar.set_style(percent_style());
                bar.set_prefix(short(id));
                bar.enable_steady_tick(Duration::from_millis(250));
                (id.clone(), bar)
            })
            .collect();
        // A line under the bars that says when the connection is lost.
        let connection = all.add(ProgressBar::new_spinner());
        connection.set_style(
            ProgressStyle::with_template("{msg}")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        View::Bars { bars, connection }
    }

    fn show(&mut self, item: &WatchEvent, jobs: &HashMap<JobId, Tracked>) {
        match self {
            View::Lines => print_line(item),
            View::Bars { bars, connection } => match item {
                WatchEvent::Status(ConnectionStatus::Disconnected { reason, retry_in }) => {
                    connection.set_message(format!("⟳ reconnecting in {retry_in:.1?}: {reason}"));
                }
                WatchEvent::Resumed { .. }
                | WatchEvent::Status(ConnectionStatus::Connected { .. }) => {
                    connection.set_message("");
                }
                WatchEvent::State { job, .. } => {
                    update_bar(&job.id, bars.get(&job.id), jobs.get(&job.id))
                }
                WatchEvent::Event(e) => {
                    update_bar(&e.job_id, bars.get(&e.job_id), jobs.get(&e.job_id))
                }
                WatchEvent::JobError { job_id, .. } => {
                    update_bar(job_id, bars.get(job_id), jobs.get(job_id))
                }
                WatchEvent::Status(_) => {}
            },
        }
    }

    fn finish(&mut self, jobs: &HashMap<JobId, Tracked>) {
        if let View::Bars {
            bars, connection, ..
        } = self
        {
            for (id, bar) in bars.iter() {
                update_bar(id, Some(bar), jobs.get(id));
                bar.finish();
            }
            connection.finish_and_clear();
        }
    }

    fn abandon(&mut self) {
        if let View::Bars { bars, .. } = self {
            for bar in bars.values() {
                bar.abandon();
            }
        }
    }
}

fn update_bar(id: &JobId, bar: Option<&ProgressBar>, t: Option<&Tracked>) {
    let (Some(bar), Some(t)) = (bar, t) else {
        return;
    };
    if t.total > 0 {
        if bar.length() != Some(t.total) {
            bar.set_style(files_style());
            bar.set_length(t.total);
        }
        bar.set_position(t.processed + t.failed);
    } else {
        bar.set_position(t.progress.round() as u64);
    }
    let status = t.status.map_or("…".to_owned(), |s| s.to_string());
    let detail = match (&t.error, &t.current, &t.message) {
        (Some(e), _, _) => e.clone(),
        (None, Some(file), _) => file.clone(),
        (None, None, Some(m)) => m.clone(),
        _ => String::new(),
    };
    // Files per second since the watch began (indicatif's own rate
    // counts bar updates, which arrive in bursts).
    let rate = match t.since.elapsed().as_secs_f64() {
        secs if t.total > 0 && secs > 0.5 => {
            format!("{:>6.0} files/s ", (t.processed + t.failed) as f64 / secs)
        }
        _ => String::new(),
    };
    bar.set_message(format!("{rate}{status:<9} {}", truncate(&detail, 48)));
    bar.set_prefix(format!("{} {}", short(id), t.kind));
}

fn percent_style() -> ProgressStyle {
    ProgressStyle::with_template("{prefix:<18} [{bar:30.cyan/blue}] {pos:>3}%   {elapsed:>4} {msg}")
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ")
}

fn files_style() -> ProgressStyle {
    ProgressStyle::with_template(
        "{prefix:<18} [{bar:30.cyan/blue}] {pos}/{len} files, eta {eta:>3} {msg}",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar())
    .progress_chars("=> ")
}

/// The last 8 characters of a job id: enough to tell jobs apart on screen.
fn short(id: &JobId) -> String {
    let chars: Vec<char> = id.as_str().chars().collect();
    chars[chars.len().saturating_sub(8)..].iter().collect()
}

fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_owned();
    }
    let tail: String = s
        .chars()
        .rev()
        .take(max - 1)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    format!("…{tail}")
}

/// Non-interactive output: events and states as JSON lines on stdout,
/// connection changes as text on stderr.
fn print_line(item: &WatchEvent) {
    match item {
        WatchEvent::Event(e) => println!("{}", serde_json::to_string(e).unwrap_or_default()),
        WatchEvent::State { job, resync } => println!(
            "{}",
            json!({"type": "current_state", "job_id": job.id, "id": job.last_event_id,
                   "epoch": job.epoch, "resync": resync, "data": job})
        ),
        WatchEvent::Resumed { job_id, id } => {
            println!("{}", json!({"type": "resumed", "job_id": job_id, "id": id}));
        }
        WatchEvent::JobError {
            job_id,
            code,
            message,
        } => println!(
            "{}",
            json!({"type": "error", "job_id": job_id, "code": code, "message": message})
        ),
        WatchEvent::Status(ConnectionStatus::Disconnected { reason, retry_in }) => {
            eprintln!("jobwire: disconnected ({reason}); reconnecting in {retry_in:.1?}");
        }
        WatchEvent::Status(ConnectionStatus::Connected { url }) => {
            eprintln!("jobwire: connected to {url}");
        }
        WatchEvent::Status(ConnectionStatus::Connecting { .. }) => {}
    }
}
