//! `jobwire watch` (and `submit --watch`): follow jobs live through
//! `jobwire-client`, which resumes exactly across reconnects, restarts and
//! instance switches.
//!
//! On a terminal: one progress bar per job (files done of total, or percent
//! for jobs without files; current file, rate, ETA), fitted to the
//! terminal's width, and a connection line while reconnecting. A job that
//! failed or was cancelled keeps its bar where it stopped, in red.
//! Otherwise, or with `--json`: one JSON line per event on stdout, connection
//! changes on stderr. At the end one summary line per job; exit 0 only if
//! every job completed.
//!
//! A watch that never reaches any server gives up after `--connect-timeout`
//! with one line and exit 1; once connected, it retries for as long as it
//! takes (a server restart, a failover).

use std::collections::HashMap;
use std::io::IsTerminal;
use std::time::Duration;

use anyhow::anyhow;
use futures_util::StreamExt;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use jobwire_client::{
    Client, ConnectionStatus, Cursor, Event, EventType, JobId, JobState, JobStatus, WatchEvent,
};
use jobwire_core::{Control, Timestamp};
use serde_json::Value;
use tokio::time::Instant;

use crate::config::WatchArgs;
use crate::jobs::{client, job_ids};
use crate::Failure;

pub(crate) async fn watch(args: WatchArgs) -> Result<(), Failure> {
    let client = client(&args.client)?;
    let ids = job_ids(&args.jobs)?;
    let start = ids.into_iter().map(|id| (id, None)).collect();
    follow(&client, start, args.json, args.connect_timeout).await
}

/// Follows jobs until each has ended; `Ok` only if all completed. A job
/// given with its state (`submit --watch`: the state its creation returned)
/// is followed from that state on, so that every event after it is shown,
/// however fast the job runs; the others start from their current state.
pub(crate) async fn follow(
    client: &Client,
    start: Vec<(JobId, Option<JobState>)>,
    json: bool,
    connect_timeout: Duration,
) -> Result<(), Failure> {
    let ids: Vec<JobId> = start.iter().map(|(id, _)| id.clone()).collect();
    let interactive = !json && std::io::stdout().is_terminal();
    let mut view = if interactive {
        View::bars(&ids)
    } else {
        View::Lines
    };
    let mut jobs: HashMap<JobId, Tracked> =
        ids.iter().map(|id| (id.clone(), Tracked::new())).collect();
    let mut from = Vec::with_capacity(start.len());
    for (id, state) in start {
        let mut cursor = None;
        if let Some(job) = state {
            cursor = Some(Cursor {
                epoch: job.epoch.clone(),
                id: job.last_event_id,
            });
            if let Some(t) = jobs.get_mut(&id) {
                t.apply_state(&job);
                note_waiting(client, &job, t, &view).await;
            }
            let known = WatchEvent::State {
                job: Box::new(job),
                resync: false,
            };
            view.show(&known, &jobs);
        }
        from.push((id, cursor));
    }
    let mut watch = client.watch_from(from);
    // Until a server has answered once, the watch may give up.
    let mut give_up_at = Some(Instant::now() + connect_timeout);
    let mut last_failure = String::from("no answer");
    loop {
        let next = match give_up_at {
            Some(at) => match tokio::time::timeout_at(at, watch.next()).await {
                Ok(next) => next,
                Err(_) => {
                    view.abandon();
                    return Err(Failure::Runtime(anyhow!(
                        "cannot reach the server at {} (gave up after {}): {last_failure}",
                        client.urls().join(", "),
                        humantime::format_duration(connect_timeout)
                    )));
                }
            },
            None => watch.next().await,
        };
        let Some(item) = next else { break };
        let item = item.map_err(|e| {
            view.abandon();
            Failure::Runtime(e.into())
        })?;
        match &item {
            WatchEvent::State { job, .. } => {
                if let Some(t) = jobs.get_mut(&job.id) {
                    t.apply_state(job);
                    note_waiting(client, job, t, &view).await;
                }
            }
            WatchEvent::Event(e) => {
                if let Some(t) = jobs.get_mut(&e.job_id) {
                    t.apply_event(e);
                }
            }
            WatchEvent::Refused {
                job_id,
                code,
                message,
            } => {
                if let Some(t) = jobs.get_mut(job_id) {
                    t.error = Some(format!("{message} ({})", code.as_str()));
                }
            }
            WatchEvent::Status(ConnectionStatus::Connected { .. }) => give_up_at = None,
            WatchEvent::Status(ConnectionStatus::Disconnected { reason, .. }) => {
                last_failure.clone_from(reason);
            }
            WatchEvent::Resumed { .. } | WatchEvent::Status(_) => {}
        }
        // Before any server answered, failed attempts are not news on
        // their own: if they go on, the give-up line says why.
        let connecting = give_up_at.is_some()
            && matches!(view, View::Lines)
            && matches!(
                item,
                WatchEvent::Status(ConnectionStatus::Disconnected { .. })
            );
        if !connecting {
            view.show(&item, &jobs);
        }
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

/// A queued job may wait for a worker that does not exist (no worker
/// serves its queue): asks the server, and says so (on the job's bar, or
/// once on stderr), instead of showing "queued" with no end in sight.
async fn note_waiting(client: &Client, job: &JobState, t: &mut Tracked, view: &View) {
    if job.status != JobStatus::Queued || t.waiting.is_some() {
        return;
    }
    t.waiting = client.waiting(&job.id).await.ok().flatten();
    if let (Some(why), View::Lines) = (&t.waiting, view) {
        eprintln!("jobwire: {} waits: {why}", job.id);
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
    /// Why it stays queued ("no worker serves queue …"), while it does.
    waiting: Option<String>,
    /// When the job's current attempt started and when it finished, as the
    /// server recorded them (not when this watch began).
    started_at: Option<Timestamp>,
    finished_at: Option<Timestamp>,
    /// When this watch first saw the job running, for the files/s rate.
    watching_since: Instant,
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
            waiting: None,
            started_at: None,
            finished_at: None,
            watching_since: Instant::now(),
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
        if job.status != JobStatus::Queued {
            self.waiting = None;
        }
        self.started_at = job.started_at;
        self.finished_at = job.finished_at;
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
            if s != JobStatus::Queued {
                self.waiting = None;
            }
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
        match &e.kind {
            EventType::JobStarted => {
                self.started_at = Some(e.timestamp);
                self.watching_since = Instant::now();
            }
            EventType::JobRetrying => self.started_at = None,
            EventType::JobFailed => {
                self.error = d
                    .get("error")
                    .or(d.get("message"))
                    .and_then(Value::as_str)
                    .map(str::to_owned);
            }
            _ => {}
        }
        if e.kind.is_terminal() {
            self.finished_at = Some(e.timestamp);
        }
    }

    /// How long the job ran: from its start to its end, as the server saw
    /// them.
    fn took(&self) -> Option<Duration> {
        let (start, end) = (self.started_at?, self.finished_at?);
        let ms = end.unix_millis().saturating_sub(start.unix_millis());
        Some(Duration::from_millis(u64::try_from(ms).unwrap_or(0)))
    }

    fn summary(&self) -> String {
        let took = match self.took() {
            // Whole seconds beyond a minute, milliseconds below one.
            Some(d) if d >= Duration::from_secs(60) => {
                format!(
                    " in {}",
                    humantime::format_duration(Duration::from_secs(d.as_secs()))
                )
            }
            Some(d) => format!(" in {}", short_duration(d)),
            None => String::new(),
        };
        let files = if self.total > 0 {
            format!(
                ", {}/{} files, {} failed",
                self.processed, self.total, self.failed
            )
        } else {
            String::new()
        };
        match (self.status, &self.error) {
            // Never seen (an unknown job, another user's): only the refusal.
            (None, Some(e)) => format!("refused: {e}"),
            (Some(s), Some(e)) if s != JobStatus::Completed => {
                format!("{} {s}{took}{files}: {e}", self.kind)
            }
            (Some(s), _) => format!("{} {s}{took}{files}", self.kind),
            (None, _) => "unknown".to_owned(),
        }
    }
}

enum View {
    Bars {
        bars: HashMap<JobId, Bar>,
        connection: ProgressBar,
        /// The bar's width in characters, from the terminal's width.
        width: usize,
    },
    Lines,
}

impl View {
    fn bars(ids: &[JobId]) -> View {
        let all = MultiProgress::with_draw_target(ProgressDrawTarget::stdout());
        // The rest of a line takes about 60 columns at most; the message
        // (`{wide_msg}`) takes what is left and is cut to fit, so no line
        // wraps.
        let columns = usize::from(console::Term::stdout().size().1);
        let width = (columns.saturating_sub(70) / 2).clamp(10, 30);
        let bars = ids
            .iter()
            .map(|id| {
                let bar = all.add(ProgressBar::new(100));
                bar.set_style(percent_style(width, Look::Running));
                bar.set_prefix(short(id));
                bar.enable_steady_tick(Duration::from_millis(250));
                (id.clone(), Bar { bar, drawn: None })
            })
            .collect();
        // A line under the bars that says when the connection is lost.
        let connection = all.add(ProgressBar::new_spinner());
        connection.set_style(
            ProgressStyle::with_template("{wide_msg}")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        View::Bars {
            bars,
            connection,
            width,
        }
    }

    fn show(&mut self, item: &WatchEvent, jobs: &HashMap<JobId, Tracked>) {
        match self {
            View::Lines => print_line(item),
            View::Bars {
                bars,
                connection,
                width,
            } => match item {
                WatchEvent::Status(ConnectionStatus::Disconnected { reason, retry_in }) => {
                    connection.set_message(format!(
                        "⟳ reconnecting in {}: {reason}",
                        short_duration(*retry_in)
                    ));
                }
                WatchEvent::Resumed { .. }
                | WatchEvent::Status(ConnectionStatus::Connected { .. }) => {
                    connection.set_message("");
                }
                WatchEvent::State { job, .. } => {
                    update_bar(&job.id, bars.get_mut(&job.id), jobs.get(&job.id), *width)
                }
                WatchEvent::Event(e) => update_bar(
                    &e.job_id,
                    bars.get_mut(&e.job_id),
                    jobs.get(&e.job_id),
                    *width,
                ),
                WatchEvent::Refused { job_id, .. } => {
                    update_bar(job_id, bars.get_mut(job_id), jobs.get(job_id), *width)
                }
                WatchEvent::Status(_) => {}
            },
        }
    }

    fn finish(&mut self, jobs: &HashMap<JobId, Tracked>) {
        if let View::Bars {
            bars,
            connection,
            width,
        } = self
        {
            for (id, bar) in bars.iter_mut() {
                let tracked = jobs.get(id);
                update_bar(id, Some(bar), tracked, *width);
                if tracked.and_then(|t| t.status) == Some(JobStatus::Completed) {
                    bar.bar.finish();
                } else {
                    // `finish` would fill the bar to 100%: a failed or
                    // cancelled job's bar stays where the job stopped.
                    bar.bar.abandon();
                }
            }
            connection.finish_and_clear();
            // Clearing the connection line leaves the cursor at the end of
            // the last bar: the summary lines start on a line of their own.
            println!();
        }
    }

    fn abandon(&mut self) {
        if let View::Bars { bars, .. } = self {
            for bar in bars.values() {
                bar.bar.abandon();
            }
        }
    }
}

/// How a bar is drawn: running in blue, ended badly in red.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Look {
    Running,
    Stopped,
}

impl Look {
    fn of(status: Option<JobStatus>, error: bool) -> Look {
        match status {
            Some(JobStatus::Failed | JobStatus::Cancelled) => Look::Stopped,
            Some(JobStatus::Completed) => Look::Running,
            _ if error => Look::Stopped,
            _ => Look::Running,
        }
    }

    fn colours(self) -> &'static str {
        match self {
            Look::Running => "cyan/blue",
            Look::Stopped => "red/red",
        }
    }
}

/// A job's bar, and the style it was last given (building a style parses
/// its template: not something to do per event).
struct Bar {
    bar: ProgressBar,
    drawn: Option<(bool, Look)>,
}

fn update_bar(id: &JobId, bar: Option<&mut Bar>, t: Option<&Tracked>, width: usize) {
    let (Some(Bar { bar, drawn }), Some(t)) = (bar, t) else {
        return;
    };
    let look = Look::of(t.status, t.error.is_some());
    let files = t.total > 0;
    if *drawn != Some((files, look)) {
        bar.set_style(if files {
            files_style(width, look)
        } else {
            percent_style(width, look)
        });
        *drawn = Some((files, look));
    }
    if files {
        if bar.length() != Some(t.total) {
            bar.set_length(t.total);
        }
        bar.set_position(t.processed + t.failed);
    } else {
        bar.set_position(t.progress.round() as u64);
    }
    let status = t.status.map_or("…".to_owned(), |s| s.to_string());
    // The first that applies: why it waits, its error, its file, its message.
    let detail = [&t.waiting, &t.error, &t.current, &t.message]
        .into_iter()
        .find_map(Option::as_deref)
        .unwrap_or_default();
    // Files per second since the job started running here (indicatif's
    // own rate counts bar updates, which arrive in bursts).
    let rate = match t.watching_since.elapsed().as_secs_f64() {
        secs if t.total > 0 && secs > 0.5 && !t.status.is_some_and(JobStatus::is_terminal) => {
            format!("{:>5.0} files/s ", (t.processed + t.failed) as f64 / secs)
        }
        _ => String::new(),
    };
    // Paths keep their end (the file name); `{wide_msg}` cuts the rest to
    // the terminal's width.
    bar.set_message(format!("{rate}{status:<9} {}", keep_end(detail, 60)));
    bar.set_prefix(format!("{} {}", short(id), t.kind));
}

fn percent_style(width: usize, look: Look) -> ProgressStyle {
    let template = format!(
        "{{prefix:<18}} [{{bar:{width}.{}}}] {{pos:>3}}% {{elapsed:>4}} {{wide_msg}}",
        look.colours()
    );
    ProgressStyle::with_template(&template)
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ")
}

fn files_style(width: usize, look: Look) -> ProgressStyle {
    let template = format!(
        "{{prefix:<18}} [{{bar:{width}.{}}}] {{pos}}/{{len}} files, eta {{eta:>3}} {{wide_msg}}",
        look.colours()
    );
    ProgressStyle::with_template(&template)
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ")
}

/// The last 8 characters of a job id: enough to tell jobs apart on screen.
fn short(id: &JobId) -> String {
    let chars: Vec<char> = id.as_str().chars().collect();
    chars[chars.len().saturating_sub(8)..].iter().collect()
}

/// At most `max` characters of `s`, keeping its end.
fn keep_end(s: &str, max: usize) -> String {
    let count = s.chars().count();
    if count <= max {
        return s.to_owned();
    }
    let tail: String = s.chars().skip(count - (max - 1)).collect();
    format!("…{tail}")
}

/// Non-interactive output: events and states as JSON lines on stdout,
/// connection changes as text on stderr.
fn print_line(item: &WatchEvent) {
    match item {
        WatchEvent::Event(e) => println!("{}", serde_json::to_string(e).unwrap_or_default()),
        WatchEvent::State { job, resync } => println!(
            "{}",
            Control::CurrentState {
                job_id: job.id.clone(),
                id: job.last_event_id,
                epoch: job.epoch.clone(),
                data: job.clone(),
                resync: *resync,
            }
            .to_json()
        ),
        WatchEvent::Resumed { job_id, id, epoch } => println!(
            "{}",
            Control::Resumed {
                job_id: job_id.clone(),
                id: *id,
                epoch: epoch.clone(),
            }
            .to_json()
        ),
        WatchEvent::Refused {
            job_id,
            code,
            message,
        } => println!(
            "{}",
            Control::Refused {
                code: *code,
                message: message.clone(),
                job_id: Some(job_id.clone()),
            }
            .to_json()
        ),
        WatchEvent::Status(ConnectionStatus::Disconnected { reason, retry_in }) => {
            eprintln!(
                "jobwire: disconnected ({reason}); reconnecting in {}",
                short_duration(*retry_in)
            );
        }
        WatchEvent::Status(ConnectionStatus::Connected { url }) => {
            eprintln!("jobwire: connected to {url}");
        }
        WatchEvent::Status(ConnectionStatus::Connecting { .. }) => {}
    }
}

/// A duration under a minute as people write it: "under 1ms", "307ms",
/// "2.5s".
fn short_duration(d: Duration) -> String {
    if d < Duration::from_millis(1) {
        "under 1ms".to_owned()
    } else if d < Duration::from_secs(1) {
        format!("{}ms", d.as_millis())
    } else {
        format!("{:.1}s", d.as_secs_f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_keep_their_end() {
        assert_eq!(keep_end("abc", 5), "abc");
        assert_eq!(keep_end("a/b/c/d/e.txt", 6), "…e.txt");
    }

    #[test]
    fn the_time_taken_is_the_servers() {
        let mut t = Tracked::new();
        t.started_at = Some(Timestamp::from_unix_millis(1_000));
        t.finished_at = Some(Timestamp::from_unix_millis(3_500));
        t.status = Some(JobStatus::Completed);
        t.kind = "demo".into();
        assert_eq!(t.took(), Some(Duration::from_millis(2_500)));
        assert_eq!(t.summary(), "demo completed in 2.5s");
        t.finished_at = t.started_at;
        assert_eq!(t.summary(), "demo completed in under 1ms");
        t.finished_at = Some(Timestamp::from_unix_millis(1_307));
        assert_eq!(t.summary(), "demo completed in 307ms");
    }

    #[test]
    fn failed_and_cancelled_bars_look_stopped() {
        assert!(Look::of(Some(JobStatus::Failed), true) == Look::Stopped);
        assert!(Look::of(Some(JobStatus::Cancelled), false) == Look::Stopped);
        assert!(Look::of(Some(JobStatus::Running), false) == Look::Running);
    }
}
