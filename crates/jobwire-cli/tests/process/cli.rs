//! The client commands against a real `jobwire dev` (server and workers in
//! one process): `submit --watch`, `watch`, `jobs`, `cancel`, and their exit
//! codes and error lines.

use std::process::{Command, Output};
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use serde_json::Value;

use crate::{token, Jobwire};

fn jobwire(server: &Jobwire, args: &[&str]) -> Result<Output> {
    Ok(Command::new(env!("CARGO_BIN_EXE_jobwire"))
        .args(args)
        .env_clear()
        .env("JOBWIRE_URL", server.url(""))
        .env("JOBWIRE_TOKEN", token())
        .output()?)
}

fn lines(out: &Output) -> Result<Vec<Value>> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).with_context(|| format!("not JSON: {l}")))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_watch_jobs_and_cancel() -> Result<()> {
    let server = Jobwire::start(&["dev"], &[])?;
    server
        .wait_for("/readyz", 200, Duration::from_secs(10))
        .await?;

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
        .filter(|i| i["id"].is_u64() && i["type"] != "current_state")
        .collect();
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
    ensure!(out.status.code() == Some(1), "{out:?}");
    ensure!(
        String::from_utf8_lossy(&out.stderr).contains("cancelled"),
        "{out:?}"
    );

    // `jobs --json` lists them, newest first.
    let out = jobwire(&server, &["jobs", "--json"])?;
    let jobs: Value = serde_json::from_slice(&out.stdout)?;
    let jobs = jobs.as_array().context("not a list")?;
    ensure!(jobs.len() == 3 && jobs[0]["id"] == id.as_str(), "{jobs:?}");

    // Errors: unknown job (1), bad token (1), no token (2); one clear line.
    let out = jobwire(&server, &["watch", "01ARZ3NDEKTSV4RRFFQ69G5FAV"])?;
    ensure!(out.status.code() == Some(1), "{out:?}");
    ensure!(
        String::from_utf8_lossy(&out.stderr).contains("not_found"),
        "{out:?}"
    );
    let out = Command::new(env!("CARGO_BIN_EXE_jobwire"))
        .args(["jobs"])
        .env_clear()
        .env("JOBWIRE_URL", server.url(""))
        .env("JOBWIRE_TOKEN", "nonsense")
        .output()?;
    ensure!(out.status.code() == Some(1), "{out:?}");
    ensure!(
        String::from_utf8_lossy(&out.stderr).contains("token"),
        "{out:?}"
    );
    let out = Command::new(env!("CARGO_BIN_EXE_jobwire"))
        .args(["jobs"])
        .env_clear()
        .env("JOBWIRE_URL", server.url(""))
        .output()?;
    ensure!(out.status.code() == Some(2), "{out:?}");
    ensure!(
        String::from_utf8_lossy(&out.stderr).contains("JOBWIRE_TOKEN"),
        "{out:?}"
    );
    Ok(())
}

/// Behind a TLS-terminating proxy (as behind a load balancer): `submit
/// --watch` over `https://` and `wss://`, trusting a private CA with
/// `JOBWIRE_CA_CERT`; without it the server is not trusted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_commands_speak_https_and_wss() -> Result<()> {
    let server = Jobwire::start(&["dev"], &[])?;
    server
        .wait_for("/readyz", 200, Duration::from_secs(10))
        .await?;
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
