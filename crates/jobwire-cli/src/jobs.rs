//! The client commands that are one request each: `submit`, `jobs`,
//! `cancel`; and building a `jobwire-client` from the client flags.

use std::io::IsTerminal;

use anyhow::anyhow;
use jobwire_client::{Client, ClientError, JobId, JobStatus, ListOptions, TokenSource};
use jobwire_core::Timestamp;
use serde_json::{Map, Value};

use crate::config::{
    CancelArgs, ClientFlags, JobsArgs, LimitArgs, ListFilters, QueuesArgs, QueuesCommand,
    RetryArgs, SubmitArgs, WorkersArgs,
};
use crate::{watch, Failure};

/// A client from `--url` / `JOBWIRE_URL` and `--token` / `JOBWIRE_TOKEN`.
pub(crate) fn client(flags: &ClientFlags) -> Result<Client, Failure> {
    let token = flags.token.clone().filter(|t| !t.is_empty()).ok_or_else(|| {
        Failure::Usage(anyhow!(
            "JOBWIRE_TOKEN (or --token) is required: use the token `jobwire dev` prints, or mint one with `jobwire token`"
        ))
    })?;
    let mut builder = Client::builder().token(TokenSource::Static(token));
    if let Some(path) = &flags.ca_cert {
        let pem = std::fs::read(path).map_err(|e| {
            Failure::Usage(anyhow!(
                "JOBWIRE_CA_CERT: cannot read {}: {e}",
                path.display()
            ))
        })?;
        builder = builder.ca_cert_pem(pem);
    }
    for url in &flags.url {
        builder = builder.url(url.clone());
    }
    builder
        .build()
        .map_err(|e| Failure::Usage(anyhow!("JOBWIRE_URL: {e}")))
}

pub(crate) fn job_ids(raw: &[String]) -> Result<Vec<JobId>, Failure> {
    raw.iter()
        .map(|s| {
            s.parse::<JobId>()
                .map_err(|e| Failure::Usage(anyhow!("{s:?} is not a job id: {e}")))
        })
        .collect()
}

/// A client error as a one-line runtime failure.
pub(crate) fn failed(e: ClientError) -> Failure {
    Failure::Runtime(e.into())
}

/// `jobwire submit KIND --param k=v … [--watch]`.
pub(crate) async fn submit(args: SubmitArgs) -> Result<(), Failure> {
    let client = client(&args.client)?;
    let params = parse_params(&args.params)?;
    let options = jobwire_client::CreateOptions {
        queue: args.queue.clone(),
        idempotency_key: args.idempotency_key.clone(),
        unique_key: args.unique_key.clone(),
        timeout: args.timeout,
        priority: args.priority,
        run_at: args.run_at,
        delay: args.delay,
        retry: jobwire_core::RetryPolicy {
            max_attempts: args.max_attempts,
            backoff: args.backoff.clone(),
        },
    };
    let submitted = client
        .create_job_with(&args.kind, Value::Object(params), &options)
        .await
        .map_err(failed)?;
    let job = submitted.job;
    if submitted.existing {
        // stderr: stdout stays the job (id or JSON) either way.
        eprintln!(
            "jobwire: job {} already exists (same --idempotency-key, or an unfinished job holds the --unique-key): not created again",
            job.id
        );
    }
    // With --watch into a pipe, stdout carries JSON lines only (the first
    // names the job).
    let lines_only = args.watch && (args.json || !std::io::stdout().is_terminal());
    if args.json && !args.watch {
        println!("{}", serde_json::to_string(&job).unwrap_or_default());
    } else if !lines_only {
        println!("{}", job.id);
    }
    if args.watch {
        let start = vec![(job.id.clone(), Some(job))];
        watch::follow(&client, start, args.json, args.connect_timeout).await?;
    }
    Ok(())
}

/// `key=value` pairs; values that parse as JSON are JSON, others strings.
pub(crate) fn parse_params(raw: &[String]) -> Result<Map<String, Value>, Failure> {
    let mut params = Map::new();
    for pair in raw {
        let (key, value) = pair
            .split_once('=')
            .ok_or_else(|| Failure::Usage(anyhow!("--param {pair:?}: expected KEY=VALUE")))?;
        if key.is_empty() {
            return Err(Failure::Usage(anyhow!(
                "--param {pair:?}: the key is empty"
            )));
        }
        let value = serde_json::from_str(value).unwrap_or_else(|_| Value::String(value.to_owned()));
        params.insert(key.to_owned(), value);
    }
    Ok(params)
}

/// `jobwire jobs`: the caller's jobs, newest first.
pub(crate) async fn jobs(args: JobsArgs) -> Result<(), Failure> {
    let client = client(&args.client)?;
    let status = match &args.status {
        Some(s) => Some(
            s.parse::<JobStatus>()
                .map_err(|e| Failure::Usage(anyhow!("--status: {e}")))?,
        ),
        None => None,
    };
    let limit = usize::from(args.limit);
    let filters = args.filters.options()?;
    // A page may come back short while there is more (the server reads a
    // bounded number of jobs per request): follow the cursor until `limit`
    // jobs are found or the list ends.
    let mut jobs = Vec::new();
    let mut cursor = None;
    loop {
        let page = client
            .list_jobs(&ListOptions {
                status,
                limit: Some((limit - jobs.len()).min(200)),
                cursor: cursor.take(),
                ..filters.clone()
            })
            .await
            .map_err(failed)?;
        jobs.extend(page.jobs);
        match page.next_cursor {
            Some(next) if jobs.len() < limit => cursor = Some(next),
            _ => break,
        }
    }
    if args.json {
        let jobs: Vec<Value> = jobs
            .iter()
            .map(|j| serde_json::to_value(j).unwrap_or_default())
            .collect();
        println!("{}", Value::Array(jobs));
        return Ok(());
    }
    if jobs.is_empty() {
        println!("no jobs");
        return Ok(());
    }
    // An admin lists everyone's jobs: then the table says whose each is.
    let several_owners = jobs.iter().any(|j| j.owner != jobs[0].owner);
    let owner = |name: &str| {
        if several_owners {
            format!("{:<12}  ", truncate(name, 12))
        } else {
            String::new()
        }
    };
    println!(
        "{:<26}  {:<10}  {}{:<9}  {:>5}  CREATED",
        "ID",
        "KIND",
        owner("OWNER"),
        "STATUS",
        "PROG"
    );
    for job in &jobs {
        println!(
            "{:<26}  {:<10}  {}{:<9}  {:>4.0}%  {}",
            job.id,
            truncate(&job.kind, 10),
            owner(&job.owner),
            job.status.as_str(),
            job.progress,
            job.created_at
        );
    }
    Ok(())
}

impl ListFilters {
    /// The filters as list options, checked here so that a typo is a usage
    /// error (exit 2), not a server's 422.
    fn options(&self) -> Result<ListOptions, Failure> {
        for (flag, value) in [("--kind", &self.kind), ("--queue", &self.queue)] {
            if value.as_ref().is_some_and(|v| v.is_empty()) {
                return Err(Failure::Usage(anyhow!("{flag}: empty")));
            }
        }
        if let Some(queue) = &self.queue {
            jobwire_core::check_queue_name(queue)
                .map_err(|e| Failure::Usage(anyhow!("--queue: {e}")))?;
        }
        let finished_after = self.finished_within.map(|d| Timestamp::now().minus(d));
        Ok(ListOptions {
            kind: self.kind.clone(),
            queue: self.queue.clone(),
            finished_after,
            ..ListOptions::default()
        })
    }
}

pub(crate) fn truncate(s: &str, max: usize) -> String {
    s.chars().take(max).collect()
}

/// `jobwire workers`: the registry, live workers first.
pub(crate) async fn workers(args: WorkersArgs) -> Result<(), Failure> {
    let client = client(&args.client)?;
    let mut workers = client.workers().await.map_err(failed)?;
    if args.json {
        let all: Vec<Value> = workers
            .iter()
            .map(|w| {
                let mut v = serde_json::to_value(&w.worker).unwrap_or_default();
                v["live"] = Value::Bool(w.live);
                v
            })
            .collect();
        println!("{}", Value::Array(all));
        return Ok(());
    }
    if workers.is_empty() {
        println!("no workers have been seen in the last hour");
        return Ok(());
    }
    workers.sort_by_key(|w| !w.live);
    println!(
        "{:<24}  {:<5}  {:<16}  {:>7}  {:>7}  {:<24}  QUEUES",
        "NAME", "STATE", "HOST", "PID", "RUNNING", "LAST SEEN"
    );
    for w in &workers {
        let info = &w.worker;
        println!(
            "{:<24}  {:<5}  {:<16}  {:>7}  {:>7}  {:<24}  {}",
            truncate(&info.name, 24),
            if w.live { "live" } else { "gone" },
            truncate(&info.host, 16),
            info.pid,
            format!("{}/{}", info.running.len(), info.concurrency),
            info.last_seen,
            info.queues.join(",")
        );
    }
    Ok(())
}

/// `jobwire retry JOB_ID...|--all-failed`: one line per job; exit 1 if
/// any could not be retried.
pub(crate) async fn retry(args: RetryArgs) -> Result<(), Failure> {
    let client = client(&args.client)?;
    let filters = args.filters.options()?;
    if !args.all_failed
        && (filters.kind.is_some() || filters.queue.is_some() || filters.finished_after.is_some())
    {
        return Err(Failure::Usage(anyhow!(
            "--kind, --queue and --finished-within pick jobs for --all-failed"
        )));
    }
    let ids = if args.all_failed {
        let mut ids = Vec::new();
        let mut cursor = None;
        loop {
            let page = client
                .list_jobs(&ListOptions {
                    status: Some(JobStatus::Failed),
                    limit: Some(200),
                    cursor: cursor.take(),
                    ..filters.clone()
                })
                .await
                .map_err(failed)?;
            ids.extend(page.jobs.into_iter().map(|j| j.id));
            match page.next_cursor {
                Some(next) => cursor = Some(next),
                None => break,
            }
        }
        ids
    } else {
        job_ids(&args.jobs)?
    };
    if ids.is_empty() {
        println!("no failed jobs");
        return Ok(());
    }
    let mut refused = 0;
    for id in &ids {
        match client.retry(id).await {
            Ok(job) => println!("{id}: retried (attempt {})", job.attempt),
            Err(e) => {
                refused += 1;
                eprintln!("jobwire: {id}: {e}");
            }
        }
    }
    if refused > 0 {
        return Err(Failure::Runtime(anyhow!(
            "{refused} of {} jobs were not retried",
            ids.len()
        )));
    }
    Ok(())
}

/// `jobwire queues [pause|resume QUEUE]`.
pub(crate) async fn queues(args: QueuesArgs) -> Result<(), Failure> {
    let (action, paused) = match args.action {
        Some(QueuesCommand::Pause(action)) => (action, true),
        Some(QueuesCommand::Resume(action)) => (action, false),
        Some(QueuesCommand::Limit(limit)) => return set_limits(limit).await,
        None => return list_queues(&args.client, args.json).await,
    };
    let client = client(&action.client)?;
    // A queue may be paused before any job uses it; but a name no job or
    // worker has used is more often a typo: say so (best effort).
    let known: Option<Vec<String>> = client
        .queues()
        .await
        .ok()
        .map(|rows| rows.into_iter().map(|q| q.name).collect());
    client
        .set_paused(&action.queue, paused)
        .await
        .map_err(failed)?;
    println!(
        "queue {}: {}",
        action.queue,
        if paused {
            "paused (workers stop claiming from it within a second; running jobs finish)"
        } else {
            "resumed"
        }
    );
    if let Some(known) = known.filter(|k| !k.contains(&action.queue)) {
        eprintln!(
            "jobwire: note: no job or worker has used queue {:?} yet (the queues in use: {})",
            action.queue,
            if known.is_empty() {
                "none".to_owned()
            } else {
                known.join(", ")
            }
        );
    }
    Ok(())
}

async fn set_limits(args: LimitArgs) -> Result<(), Failure> {
    if !args.clear && args.concurrency.is_none() && args.rate.is_none() {
        return Err(Failure::Usage(anyhow!(
            "give --concurrency N, --rate N/INTERVAL or both (or --clear to lift the limits)"
        )));
    }
    let limits = jobwire_core::QueueLimits {
        concurrency: args.concurrency,
        rate: args.rate,
    };
    client(&args.client)?
        .set_limits(&args.queue, &limits)
        .await
        .map_err(failed)?;
    println!("queue {}: {}", args.queue, describe_limits(&limits));
    Ok(())
}

/// `≤2 running, ≤10/1m`, or `no limits`.
fn describe_limits(limits: &jobwire_core::QueueLimits) -> String {
    let mut parts = Vec::new();
    if let Some(n) = limits.concurrency {
        parts.push(format!("≤{n} running"));
    }
    if let Some(rate) = limits.rate {
        parts.push(format!(
            "≤{}/{}",
            rate.max,
            humantime::format_duration(rate.per)
        ));
    }
    if parts.is_empty() {
        "no limits".to_owned()
    } else {
        parts.join(", ")
    }
}

async fn list_queues(flags: &ClientFlags, json: bool) -> Result<(), Failure> {
    let client = client(flags)?;
    let queues = client.queues().await.map_err(failed)?;
    if json {
        println!("{}", serde_json::to_string(&queues).unwrap_or_default());
        return Ok(());
    }
    if queues.is_empty() {
        println!("no queues yet");
        return Ok(());
    }
    println!(
        "{:<20}  {:>7}  {:>9}  {:>7}  {:>9}  {:>9}  {:>11}  {:<6}  {:<7}  LIMITS",
        "QUEUE",
        "WAITING",
        "SCHEDULED",
        "RUNNING",
        "DONE/MIN",
        "FAILED 1H",
        "OLDEST WAIT",
        "STATE",
        "WORKERS"
    );
    for q in &queues {
        let oldest = q.oldest_waiting_age_ms.map_or("–".to_owned(), |ms| {
            humantime::format_duration(std::time::Duration::from_secs(ms / 1000)).to_string()
        });
        // Jobs per minute: the last minute's, and the last 15's average.
        let rate = format!("{}/{:.0}", q.finished_1m, q.finished_15m as f64 / 15.0);
        println!(
            "{:<20}  {:>7}  {:>9}  {:>7}  {:>9}  {:>9}  {:>11}  {:<6}  {:<7}  {}",
            truncate(&q.name, 20),
            q.waiting,
            q.scheduled,
            q.running,
            rate,
            q.failed_1h,
            oldest,
            if q.paused { "paused" } else { "active" },
            if q.workers.is_empty() {
                "none".to_owned()
            } else {
                q.workers.len().to_string()
            },
            if q.limits.is_none() {
                "–".to_owned()
            } else {
                describe_limits(&q.limits)
            }
        );
    }
    Ok(())
}

/// `jobwire cancel JOB_ID`.
pub(crate) async fn cancel(args: CancelArgs) -> Result<(), Failure> {
    let client = client(&args.client)?;
    let id = job_ids(std::slice::from_ref(&args.job))?.remove(0);
    let reply = client.cancel(&id).await.map_err(failed)?;
    let what = match reply.outcome.as_str() {
        "cancelled" => "cancelled".to_owned(),
        "cancel_requested" => "cancel requested: it stops at its next progress report".to_owned(),
        "already_finished" => format!("already finished ({})", reply.job.status),
        other => other.to_owned(),
    };
    println!("{id}: {what}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn params_are_json_when_they_parse() {
        let raw = [
            "steps=50",
            "path=docs/a b",
            "fail_at=null",
            "flag=true",
            "q=\"7\"",
        ]
        .map(String::from);
        let params = parse_params(&raw)
            .map_err(|_| "parse")
            .expect("valid params");
        assert_eq!(
            Value::Object(params),
            json!({"steps": 50, "path": "docs/a b", "fail_at": null, "flag": true, "q": "7"})
        );
        assert!(parse_params(&["nokey".to_owned()]).is_err());
        assert!(parse_params(&["=v".to_owned()]).is_err());
    }
}
