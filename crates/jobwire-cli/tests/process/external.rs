//! The Python example of docs/workers.md, run against a real `jobwire
//! serve`: an external job driven through `POST /api/jobs/{id}/events`,
//! with deliberately repeated requests applied once.

use std::process::Command;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use serde_json::Value;

use crate::{Jobwire, SECRET};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_example_publishes_an_external_job_exactly_once() -> Result<()> {
    let server = Jobwire::start(&["serve", "--memory"], &[])?;
    server
        .wait_for("/readyz", 200, Duration::from_secs(10))
        .await?;
    let token = jobwire_server::mint_token(
        SECRET,
        "pyworker",
        &[
            jobwire_server::Scope::JobsRead,
            jobwire_server::Scope::JobsWrite,
            jobwire_server::Scope::Worker,
        ],
        Duration::from_secs(600),
    )?;
    let dir = tempfile::tempdir()?;
    for i in 0..6 {
        std::fs::write(dir.path().join(format!("f{i}.txt")), "line\n".repeat(i + 1))?;
    }
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../examples/python/external_worker.py"
    );
    let out = Command::new("python3")
        .arg(script)
        .arg(dir.path())
        .args([
            "--url",
            &server.url(""),
            "--token",
            &token,
            "--resend-every",
            "2",
        ])
        .output()
        .context("running python3")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success(),
        "exit {:?}: {stdout} {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    let summary: Value = serde_json::from_str(stdout.trim())?;
    ensure!(summary["status"] == "completed", "{summary}");
    ensure!(
        summary["duplicates"].as_u64() > Some(0),
        "nothing was resent: {summary}"
    );
    let id = summary["job_id"].as_str().context("no job id")?;

    let client = reqwest::Client::new();
    let get = |path: String| client.get(server.url(&path)).bearer_auth(&token).send();
    let job: Value = get(format!("/api/jobs/{id}")).await?.json().await?;
    ensure!(job["status"] == "completed", "{job}");
    ensure!(
        job["processed_files"] == 6 && job["total_files"] == 6,
        "{job}"
    );
    ensure!(job["result"]["lines"] == 21, "{job}");
    let page: Value = get(format!("/api/jobs/{id}/events?limit=1000"))
        .await?
        .json()
        .await?;
    let events = page["events"].as_array().context("no events")?;
    let kinds: Vec<&str> = events.iter().filter_map(|e| e["type"].as_str()).collect();
    let mut expected = vec!["job_queued", "job_started"];
    for _ in 0..6 {
        expected.extend(["file_processing", "file_completed"]);
    }
    expected.push("job_completed");
    ensure!(kinds == expected, "{kinds:?}");
    for (i, e) in events.iter().enumerate() {
        ensure!(e["id"] == i + 1, "ids not consecutive: {events:?}");
    }
    Ok(())
}
