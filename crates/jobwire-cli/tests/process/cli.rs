//! The client commands against a real `jobwire dev` (server and workers in
//! one process): `submit --watch`, `watch`, `jobs`, `cancel`, and their exit
//! codes and error lines.

use std::process::{Command, Output};
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use serde_json::Value;

use crate::{as_admin, token, Jobwire};

fn jobwire(server: &Jobwire, args: &[&str]) -> Result<Output> {
    Ok(Command::new(env!("CARGO_BIN_EXE_jobwire"))
        .args(args)
        .env_clear()
        .env("JOBWIRE_URL", server.url(""))
        .env("JOBWIRE_TOKEN", token())
        .output()?)
}

/// `jobwire dev` with `env`, once it is ready.
async fn dev(env: &[(&str, String)]) -> Result<Jobwire> {
    let server = Jobwire::start(&["dev"], env)?;
    server
        .wait_for("/readyz", 200, Duration::from_secs(10))
        .await?;
    Ok(server)
}

/// The command exited with `code` and said `text` on stderr.
fn exits_with(out: &Output, code: i32, text: &str) -> Result<()> {
    ensure!(out.status.code() == Some(code), "{out:?}");
    ensure!(
        String::from_utf8_lossy(&out.stderr).contains(text),
        "{out:?}"
    );
    Ok(())
}

fn lines(out: &Output) -> Result<Vec<Value>> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).with_context(|| format!("not JSON: {l}")))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_watch_jobs_and_cancel() -> Result<()> {
    let server = dev(&[]).await?;

    // Not a terminal: one JSON line per event, consecutive ids, exit 0.
    let out = jobwire(
        &server,
        &[
            "submit",
            "demo",
            "-p",
            "steps=20",
            "-p",
            "delay_ms=10",
            "--watch",
        ],
    )?;
    ensure!(out.status.code() == Some(0), "{out:?}");
    let items = lines(&out)?;
    let state = items.first().context("no output")?;
    ensure!(state["type"] == "current_state", "{state}");
    let events: Vec<&Value> = items
        .iter()
        .filter(|i| {
            i["id"].is_u64()
                && !["current_state", "resumed"].contains(&i["type"].as_str().unwrap_or_default())
        })
        .collect();
    // The watch resumes after the state `submit` printed: its `resumed`
    // line is the protocol's message, with the log's epoch.
    let resumed: Vec<&Value> = items.iter().filter(|i| i["type"] == "resumed").collect();
    ensure!(resumed.len() == 1, "{items:?}");
    for resumed in resumed {
        ensure!(
            resumed["epoch"] == state["epoch"] && resumed["job_id"] == state["job_id"],
            "{resumed} after {state}"
        );
    }
    let first = state["id"].as_u64().context("no id")?;
    for (i, e) in events.iter().enumerate() {
        ensure!(
            e["id"].as_u64() == Some(first + 1 + i as u64),
            "ids not consecutive: {items:?}"
        );
    }
    ensure!(
        events.last().map(|e| e["type"].clone()) == Some("job_completed".into()),
        "{items:?}"
    );

    // A failing job: exit 1, and a summary line naming the error.
    let out = jobwire(
        &server,
        &[
            "submit",
            "demo",
            "-p",
            "steps=3",
            "-p",
            "fail_at=2",
            "-p",
            "delay_ms=0",
            "--watch",
        ],
    )?;
    ensure!(out.status.code() == Some(1), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(stderr.contains("demo failure at step 2"), "{stderr}");

    // Cancel a long job, then `watch` it: it ended cancelled, exit 1.
    let out = jobwire(
        &server,
        &["submit", "demo", "-p", "steps=1000", "-p", "delay_ms=50"],
    )?;
    ensure!(out.status.success(), "{out:?}");
    let id = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let out = jobwire(&server, &["cancel", &id])?;
    ensure!(out.status.success(), "{out:?}");
    ensure!(
        String::from_utf8_lossy(&out.stdout).contains(&id),
        "{out:?}"
    );
    let out = jobwire(&server, &["watch", &id, "--json"])?;
    exits_with(&out, 1, "cancelled")?;

    // `jobs --json` lists them, newest first.
    let out = jobwire(&server, &["jobs", "--json"])?;
    let jobs: Value = serde_json::from_slice(&out.stdout)?;
    let jobs = jobs.as_array().context("not a list")?;
    ensure!(jobs.len() == 3 && jobs[0]["id"] == id.as_str(), "{jobs:?}");

    // Errors: unknown job (1), bad token (1), no token (2); one clear line.
    let out = jobwire(&server, &["watch", "01ARZ3NDEKTSV4RRFFQ69G5FAV"])?;
    exits_with(&out, 1, "not_found")?;
    let out = Command::new(env!("CARGO_BIN_EXE_jobwire"))
        .args(["jobs"])
        .env_clear()
        .env("JOBWIRE_URL", server.url(""))
        .env("JOBWIRE_TOKEN", "nonsense")
        .output()?;
    exits_with(&out, 1, "token")?;
    let out = Command::new(env!("CARGO_BIN_EXE_jobwire"))
        .args(["jobs"])
        .env_clear()
        .env("JOBWIRE_URL", server.url(""))
        .output()?;
    exits_with(&out, 2, "JOBWIRE_TOKEN")?;
    Ok(())
}

/// Behind a TLS-terminating proxy (as behind a load balancer): `submit
/// --watch` over `https://` and `wss://`, trusting a private CA with
/// `JOBWIRE_CA_CERT`; without it the server is not trusted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_commands_speak_https_and_wss() -> Result<()> {
    let server = dev(&[]).await?;
    let proxy = jobwire_testkit::tls::TlsProxy::start(([127, 0, 0, 1], server.port).into()).await?;
    let submit = |ca: Option<std::path::PathBuf>| {
        let url = proxy.url();
        // Blocking, off the runtime: the proxy runs on it.
        tokio::task::spawn_blocking(move || {
            let mut cmd = Command::new(env!("CARGO_BIN_EXE_jobwire"));
            cmd.args([
                "submit",
                "demo",
                "-p",
                "steps=5",
                "-p",
                "delay_ms=10",
                "--watch",
            ])
            .env_clear()
            .env("JOBWIRE_URL", url)
            .env("JOBWIRE_TOKEN", token());
            if let Some(ca) = ca {
                cmd.env("JOBWIRE_CA_CERT", ca);
            }
            cmd.output()
        })
    };
    let out = submit(Some(proxy.certs.ca_cert.clone())).await??;
    ensure!(out.status.code() == Some(0), "{out:?}");
    let items = lines(&out)?;
    ensure!(
        items.last().map(|e| e["type"].clone()) == Some("job_completed".into()),
        "{items:?}"
    );
    let untrusted = submit(None).await??;
    let stderr = String::from_utf8_lossy(&untrusted.stderr);
    ensure!(
        untrusted.status.code() == Some(1) && stderr.to_lowercase().contains("certificate"),
        "{untrusted:?}"
    );
    Ok(())
}

/// What a terminal of `columns` shows of `script`'s capture: escape
/// sequences dropped, cursor moves up or down taken as line breaks.
fn screen_lines(raw: &[u8]) -> Vec<String> {
    let text = String::from_utf8_lossy(raw);
    let mut lines = vec![String::new()];
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\x1b' => {
                // CSI: ESC [ params final-byte.
                if chars.peek() == Some(&'[') {
                    chars.next();
                    let mut last = ' ';
                    for c in chars.by_ref() {
                        if c.is_ascii_alphabetic() {
                            last = c;
                            break;
                        }
                    }
                    if matches!(last, 'A' | 'B') {
                        lines.push(String::new());
                    }
                }
            }
            '\r' | '\n' => lines.push(String::new()),
            c => lines.last_mut().map(|l| l.push(c)).unwrap_or_default(),
        }
    }
    lines
        .into_iter()
        .map(|l| l.trim_end().to_owned())
        .filter(|l| !l.is_empty())
        .collect()
}

/// `submit --watch` on a terminal (a pseudo-terminal from `script`, 100
/// columns): no line is wider than the terminal, and a failed job's bar
/// stays where the job stopped instead of filling to 100%.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminal_bars_fit_the_width_and_stop_where_the_job_stopped() -> Result<()> {
    let server = dev(&[]).await?;
    let watch = format!(
        "stty cols 100 rows 30; {} submit demo -p steps=40 -p delay_ms=20 -p fail_at=7 --watch",
        env!("CARGO_BIN_EXE_jobwire")
    );
    let out = Command::new("script")
        .args(["-qfec", &watch, "/dev/null"])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("TERM", "xterm")
        .env("JOBWIRE_URL", server.url(""))
        .env("JOBWIRE_TOKEN", token())
        .output()
        .context("running script (util-linux)")?;
    ensure!(out.status.code() == Some(1), "{out:?}");
    let lines = screen_lines(&out.stdout);
    let widest = lines.iter().map(|l| l.chars().count()).max().unwrap_or(0);
    ensure!(widest <= 100, "a line of {widest} columns: {lines:#?}");
    let bar = lines
        .iter()
        .rev()
        .find(|l| l.contains('[') && l.contains('%'))
        .context("no bar drawn")?;
    ensure!(
        bar.contains("failed") && bar.contains("15%") && !bar.contains("100%"),
        "the last bar: {bar}"
    );
    let summary = lines.iter().find(|l| l.contains("demo failed in"));
    ensure!(
        summary.is_some_and(|l| !l.contains('[')),
        "the summary does not start a line of its own: {lines:#?}"
    );
    Ok(())
}

/// `watch` when no server ever answered gives up after
/// `--connect-timeout` with one line and exit 1.
#[test]
fn watch_gives_up_when_no_server_ever_answered() -> Result<()> {
    let port = jobwire_testkit::free_port()?;
    let started = std::time::Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_jobwire"))
        .args([
            "watch",
            "01ARZ3NDEKTSV4RRFFQ69G5FAV",
            "--connect-timeout",
            "1s",
        ])
        .env_clear()
        .env("JOBWIRE_URL", format!("http://127.0.0.1:{port}"))
        .env("JOBWIRE_TOKEN", token())
        .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(out.status.code() == Some(1), "{out:?}");
    ensure!(
        stderr.trim().lines().count() == 1 && stderr.contains("gave up after 1s"),
        "{stderr}"
    );
    // Bounded: not the reconnect loop's "for ever" (a generous margin for
    // a loaded machine; the point is that it ends).
    ensure!(
        started.elapsed() < Duration::from_secs(30),
        "took {:?}",
        started.elapsed()
    );
    Ok(())
}

/// `submit --queue` puts the job in that queue; `submit --idempotency-key`
/// run twice prints the same job, and so does `--unique-key` while the job
/// runs; `--timeout` fails a job that runs longer; a bad queue name is
/// refused before any request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_with_a_queue_and_an_idempotency_key() -> Result<()> {
    let server = dev(&[]).await?;
    let submit = |extra: &[&str]| -> Result<String> {
        let mut args = vec!["submit", "demo", "-p", "steps=2", "-p", "delay_ms=1"];
        args.extend_from_slice(extra);
        let out = jobwire(&server, &args)?;
        ensure!(out.status.success(), "{out:?}");
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    };
    let first = submit(&["--idempotency-key", "nightly-2026-12-02"])?;
    let out = jobwire(
        &server,
        &[
            "submit",
            "demo",
            "-p",
            "steps=2",
            "-p",
            "delay_ms=1",
            "--idempotency-key",
            "nightly-2026-12-02",
        ],
    )?;
    let again = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    ensure!(!first.is_empty() && first == again, "{first} then {again}");
    ensure!(
        String::from_utf8_lossy(&out.stderr).contains("already exists"),
        "{out:?}"
    );
    ensure!(
        submit(&[])? != first,
        "a submit without a key was deduplicated"
    );

    // `dev`'s workers serve `demo` and `scan`: a job in another queue
    // waits, and the server says why (no fixed wait needed: the registry
    // says no worker could have taken it).
    let parked = submit(&["--queue", "nightly"])?;
    let out = jobwire(&server, &["jobs", "--json"])?;
    let listed = String::from_utf8_lossy(&out.stdout).into_owned();
    ensure!(listed.contains(&parked), "{listed}");
    let job: Value = reqwest::Client::new()
        .get(server.url(&format!("/api/jobs/{parked}")))
        .bearer_auth(token())
        .send()
        .await?
        .json()
        .await?;
    ensure!(
        job["queue"] == "nightly"
            && job["status"] == "queued"
            && job["waiting"] == "no worker serves queue \"nightly\"",
        "{job}"
    );

    // A timeout stops a demo step that would wait a minute: exit 1.
    let out = jobwire(
        &server,
        &[
            "submit",
            "demo",
            "-p",
            "steps=1",
            "-p",
            "delay_ms=60000",
            "--timeout",
            "500ms",
            "--watch",
        ],
    )?;
    exits_with(&out, 1, "timed out after 500ms")?;

    let out = jobwire(&server, &["submit", "demo", "--queue", "a b"])?;
    exits_with(&out, 2, "queue name")?;
    Ok(())
}

/// `JOBWIRE_TIMEOUTS=demo=500ms`: a demo job without a timeout of its own
/// fails once an attempt runs longer; a kind the worker does not run is
/// refused at start-up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kind_timeout_fails_a_long_attempt() -> Result<()> {
    let server = dev(&[("JOBWIRE_TIMEOUTS", "demo=500ms".to_owned())]).await?;
    let out = jobwire(
        &server,
        &[
            "submit",
            "demo",
            "-p",
            "steps=1",
            "-p",
            "delay_ms=60000",
            "--watch",
        ],
    )?;
    exits_with(&out, 1, "timed out after 500ms")?;
    let out = Command::new(env!("CARGO_BIN_EXE_jobwire"))
        .args(["dev", "--timeout", "nokind=1m"])
        .env_clear()
        .output()?;
    exits_with(&out, 2, "runs no kind \"nokind\"")?;
    Ok(())
}

/// `JOBWIRE_RETRIES=demo=3:300ms,2,5s`: a demo job failing on every attempt
/// runs three times, waiting 300 ms then 600 ms (±20%), read back from the
/// `job_retrying` events `submit --watch --json` prints; `--delay` gives a
/// scheduled job; bad queue controls are refused before any request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_with_retries_delays_and_priorities() -> Result<()> {
    let server = dev(&[("JOBWIRE_RETRIES", "demo=3:300ms,2,5s".to_owned())]).await?;
    let out = jobwire(
        &server,
        &[
            "submit",
            "demo",
            "-p",
            "steps=2",
            "-p",
            "delay_ms=1",
            "-p",
            "fail_at=1",
            "--watch",
            "--json",
        ],
    )?;
    ensure!(out.status.code() == Some(1), "{out:?}");
    let events: Vec<Value> = lines(&out)?
        .into_iter()
        .filter(|l| l.get("type").is_some() && l.get("id").is_some())
        .collect();
    let retries: Vec<&Value> = events
        .iter()
        .filter(|e| e["type"] == "job_retrying")
        .collect();
    ensure!(retries.len() == 2, "{events:?}");
    for (retry, nominal) in retries.iter().zip([300i64, 600]) {
        let at = |field: &str| -> Result<i64> {
            let text = retry["data"]
                .get(field)
                .or_else(|| retry.get(field))
                .and_then(Value::as_str)
                .context("no time")?;
            Ok(text.parse::<jobwire_core::Timestamp>()?.unix_millis())
        };
        // ±20% jitter; the event is stamped a moment after `retry_at` was
        // computed, so the low end allows for that moment on a loaded host.
        let wait = at("retry_at")? - at("timestamp")?;
        ensure!(
            (nominal * 8 / 10 - 50..=nominal * 12 / 10 + 1).contains(&wait),
            "waited {wait} ms, not {nominal} ±20%"
        );
    }
    let last = events.last().context("no events")?;
    ensure!(
        last["type"] == "job_failed" && last["data"]["attempt"] == 3,
        "{last}"
    );

    let out = jobwire(
        &server,
        &[
            "submit",
            "demo",
            "--delay",
            "1h",
            "--priority",
            "9",
            "--json",
        ],
    )?;
    ensure!(out.status.success(), "{out:?}");
    let job: Value = serde_json::from_slice(&out.stdout)?;
    ensure!(
        job["status"] == "scheduled" && job["priority"] == 9 && job["run_at"].is_string(),
        "{job}"
    );
    for (args, says) in [
        (&["--priority", "10"][..], "--priority"),
        (&["--delay", "soon"][..], "--delay"),
        (
            &["--delay", "1s", "--run-at", "2030-01-01T00:00:00Z"][..],
            "--run-at",
        ),
        (&["--max-attempts", "0"][..], "--max-attempts"),
        (&["--backoff", "1m,2,1s"][..], "shorter than its base"),
    ] {
        let mut all = vec!["submit", "demo"];
        all.extend_from_slice(args);
        exits_with(&jobwire(&server, &all)?, 2, says)?;
    }
    // `dev`'s worker is in the registry; `jobwire workers` needs admin.
    exits_with(&jobwire(&server, &["workers"])?, 1, "admin")?;
    let out = as_admin(&server, &["workers"])?;
    let table = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success() && table.contains(" live ") && table.contains("demo,scan"),
        "{out:?}"
    );
    let out = Command::new(env!("CARGO_BIN_EXE_jobwire"))
        .args(["dev", "--retry", "nokind=3"])
        .env_clear()
        .output()?;
    exits_with(&out, 2, "runs no kind \"nokind\"")?;
    Ok(())
}

/// `jobwire queues pause demo` (admin): a demo job submitted then stays
/// queued, and says its queue is paused; `resume` lets it run to the end.
/// Without an admin token, or with a bad queue name, it is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_queue_holds_its_jobs_until_resumed() -> Result<()> {
    let server = dev(&[]).await?;
    let as_admin = |args: &[&str]| as_admin(&server, args);
    exits_with(&jobwire(&server, &["queues", "pause", "demo"])?, 1, "admin")?;
    exits_with(&as_admin(&["queues", "pause", "a b"])?, 2, "queue name")?;
    let out = as_admin(&["queues", "pause", "demo"])?;
    ensure!(
        out.status.success()
            && String::from_utf8_lossy(&out.stdout).contains("paused")
            && out.stderr.is_empty(),
        "{out:?}"
    );
    // A name nothing uses is paused all the same, with a note: a typo?
    let out = as_admin(&["queues", "pause", "sacn"])?;
    let note = String::from_utf8_lossy(&out.stderr);
    ensure!(
        out.status.success()
            && note.contains("no job or worker has used queue \"sacn\"")
            && note.contains("demo"),
        "{out:?}"
    );
    ensure!(as_admin(&["queues", "resume", "sacn"])?.status.success());
    let out = jobwire(
        &server,
        &["submit", "demo", "-p", "steps=1", "-p", "delay_ms=1"],
    )?;
    let id = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let get = || async {
        let job: Value = reqwest::Client::new()
            .get(server.url(&format!("/api/jobs/{id}")))
            .bearer_auth(token())
            .send()
            .await?
            .json()
            .await?;
        anyhow::Ok(job)
    };
    let job = get().await?;
    ensure!(
        job["status"] == "queued" && job["waiting"] == "queue \"demo\" is paused",
        "{job}"
    );
    // The overview: `demo` paused with the job waiting, served by dev's worker.
    let out = as_admin(&["queues", "--json"])?;
    let queues: Value = serde_json::from_slice(&out.stdout)?;
    let demo = queues
        .as_array()
        .and_then(|all| all.iter().find(|q| q["name"] == "demo"))
        .context("no demo queue")?;
    ensure!(
        demo["paused"] == true
            && demo["waiting"] == 1
            && demo["workers"].as_array().map(Vec::len) == Some(1),
        "{queues}"
    );
    let table = String::from_utf8_lossy(&as_admin(&["queues"])?.stdout).into_owned();
    ensure!(
        table
            .lines()
            .any(|l| l.starts_with("demo") && l.contains("paused")),
        "{table}"
    );
    ensure!(as_admin(&["queues", "resume", "demo"])?.status.success());
    let out = jobwire(&server, &["watch", &id])?;
    ensure!(out.status.success(), "{out:?}");
    ensure!(get().await?["status"] == "completed");
    Ok(())
}

/// `jobwire retry JOB_ID` (dev's token is admin): a failed job gets a new
/// attempt on the same job, its ids continuing (`job_failed`,
/// `job_retrying`, `job_queued`, `job_started` …); a job that has not
/// failed is refused; `--all-failed` retries every failed one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_gives_a_failed_job_a_new_attempt() -> Result<()> {
    let server = dev(&[]).await?;
    let as_admin = |args: &[&str]| as_admin(&server, args);
    let failing = [
        "submit",
        "demo",
        "-p",
        "steps=2",
        "-p",
        "delay_ms=1",
        "-p",
        "fail_at=2",
    ];
    let out = jobwire(&server, &failing)?;
    let id = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    exits_with(&jobwire(&server, &["watch", &id])?, 1, "failed")?;
    exits_with(&jobwire(&server, &["retry", &id])?, 1, "admin")?;
    let out = as_admin(&["retry", &id])?;
    ensure!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("attempt 2"),
        "{out:?}"
    );
    // It runs again (and fails again: fail_at is deterministic).
    exits_with(&jobwire(&server, &["watch", &id])?, 1, "failed")?;
    let history: Value = reqwest::Client::new()
        .get(server.url(&format!("/api/jobs/{id}/events")))
        .bearer_auth(token())
        .send()
        .await?
        .json()
        .await?;
    let events = history["events"].as_array().context("no events")?;
    let kinds: Vec<&str> = events.iter().filter_map(|e| e["type"].as_str()).collect();
    let failed_at = kinds
        .iter()
        .position(|k| *k == "job_failed")
        .context("no failure")?;
    ensure!(
        kinds[failed_at + 1..].starts_with(&["job_retrying", "job_queued", "job_started"]),
        "{kinds:?}"
    );
    let ids: Vec<u64> = events.iter().filter_map(|e| e["id"].as_u64()).collect();
    ensure!(ids.windows(2).all(|w| w[1] == w[0] + 1), "{ids:?}");

    let done = jobwire(
        &server,
        &[
            "submit",
            "demo",
            "-p",
            "steps=1",
            "-p",
            "delay_ms=1",
            "--watch",
        ],
    )?;
    ensure!(done.status.success(), "{done:?}");
    let completed = lines(&done)?
        .first()
        .and_then(|l| l["job_id"].as_str().or(l["id"].as_str()).map(str::to_owned))
        .context("no job id")?;
    exits_with(&as_admin(&["retry", &completed])?, 1, "only a failed job")?;
    // The listing's filters, also picking what --all-failed retries.
    let listed = |args: &[&str]| -> Result<Vec<String>> {
        let mut all = vec!["jobs", "--status", "failed", "--json"];
        all.extend_from_slice(args);
        let out = as_admin(&all)?;
        ensure!(out.status.success(), "{out:?}");
        let jobs: Value = serde_json::from_slice(&out.stdout)?;
        Ok(jobs
            .as_array()
            .context("not an array")?
            .iter()
            .filter_map(|j| j["id"].as_str().map(str::to_owned))
            .collect())
    };
    ensure!(listed(&["--kind", "demo", "--finished-within", "1h"])? == std::slice::from_ref(&id));
    ensure!(listed(&["--queue", "scan"])?.is_empty());
    ensure!(listed(&["--kind", "scan"])?.is_empty());
    exits_with(&as_admin(&["jobs", "--queue", "a b"])?, 2, "--queue")?;
    exits_with(
        &as_admin(&["jobs", "--finished-within", "soon"])?,
        2,
        "soon",
    )?;
    exits_with(
        &as_admin(&["retry", &id, "--kind", "demo"])?,
        2,
        "--all-failed",
    )?;
    // Neither ids nor --all-failed: the usage names both.
    exits_with(&as_admin(&["retry"])?, 2, "<JOB_ID|--all-failed>")?;
    let out = as_admin(&["retry", "--all-failed", "--queue", "scan"])?;
    ensure!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("no failed jobs"),
        "{out:?}"
    );
    let out = as_admin(&["retry", "--all-failed"])?;
    ensure!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains(&id),
        "{out:?}"
    );

    // The table: alice's jobs need no owner column; an admin's listing of
    // everyone's (root's job among alice's) says whose each one is.
    let root = jobwire_server::mint_token(
        crate::SECRET,
        "root",
        &[jobwire_server::Scope::JobsWrite],
        Duration::from_secs(600),
    )?;
    let made = reqwest::Client::new()
        .post(server.url("/api/jobs"))
        .bearer_auth(root)
        .json(&serde_json::json!({"kind": "demo", "params": {"steps": 1}}))
        .send()
        .await?;
    ensure!(made.status() == 201, "{made:?}");
    let mine = jobwire(&server, &["jobs"])?;
    let mine = String::from_utf8_lossy(&mine.stdout);
    ensure!(mine.starts_with("ID") && !mine.contains("OWNER"), "{mine}");
    let all = as_admin(&["jobs"])?;
    let all = String::from_utf8_lossy(&all.stdout);
    ensure!(
        all.lines().next().is_some_and(|h| h.contains("OWNER"))
            && all.contains(" alice ")
            && all.contains(" root "),
        "{all}"
    );
    Ok(())
}

/// `jobwire jobs --limit N` shows N jobs also past one server page (200):
/// it follows the listing's cursor.
#[tokio::test]
async fn jobs_lists_more_than_one_page() -> Result<()> {
    let server = dev(&[("JOBWIRE_CREATE_RATE", "1000".to_owned())]).await?;
    let http = reqwest::Client::new();
    for _ in 0..205 {
        let created = http
            .post(server.url("/api/jobs"))
            .bearer_auth(token())
            .json(&serde_json::json!({"kind": "demo", "params": {}, "delay": "1h"}))
            .send()
            .await?;
        ensure!(created.status() == 201, "{created:?}");
    }
    let out = jobwire(&server, &["jobs", "--limit", "203", "--json"])?;
    ensure!(out.status.success(), "{out:?}");
    let jobs: Vec<Value> = serde_json::from_slice(&out.stdout)?;
    ensure!(jobs.len() == 203, "{} jobs", jobs.len());
    let ids: std::collections::HashSet<&str> =
        jobs.iter().filter_map(|j| j["id"].as_str()).collect();
    ensure!(ids.len() == 203, "repeated jobs");
    let out = jobwire(
        &server,
        &["jobs", "--status", "scheduled", "--kind", "demo"],
    )?;
    ensure!(out.status.success() && lines_of(&out) == 21, "{out:?}");
    Ok(())
}

/// Lines a command printed.
fn lines_of(out: &Output) -> usize {
    String::from_utf8_lossy(&out.stdout).lines().count()
}

/// Watching a job no worker can take says why it stays queued (the server
/// knows no worker serves its queue), instead of "queued" with no end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watching_a_job_no_worker_serves_says_so() -> Result<()> {
    use std::io::{BufRead, BufReader};
    let server = dev(&[]).await?;
    let out = jobwire(&server, &["submit", "demo", "--queue", "nobody"])?;
    ensure!(out.status.success(), "{out:?}");
    let id = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let mut child = Command::new(env!("CARGO_BIN_EXE_jobwire"))
        .args(["watch", &id])
        .env_clear()
        .env("JOBWIRE_URL", server.url(""))
        .env("JOBWIRE_TOKEN", token())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    let stderr = child.stderr.take().context("no stderr")?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let expected = format!("jobwire: {id} waits: no worker serves queue \"nobody\"");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let (mut said, mut found) = (Vec::new(), false);
    while let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) {
        match rx.recv_timeout(left) {
            Ok(line) if line == expected => {
                found = true;
                break;
            }
            Ok(line) => said.push(line),
            Err(_) => break,
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    ensure!(found, "never said why: {said:?}");
    Ok(())
}
