//! `jobwire serve` (and the command line's configuration errors).

use std::io::Read;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use jobwire_core::{EventType, NewEvent, NewJob};
use jobwire_testkit::{free_port, Persistence, RedisServer};
use serde_json::{json, Value};

use crate::{next, redis_backend, token, watch, Jobwire, SECRET};

#[test]
fn configuration_errors_exit_2_naming_the_setting() -> Result<()> {
    /// Arguments, environment, and a word the error must contain.
    type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], &'a str);
    let cases: [Case; 17] = [
        (&["serve"], &[], "REDIS_URL"),
        (
            &["serve"],
            &[("REDIS_URL", "redis://127.0.0.1:1,ftp://127.0.0.1:2")],
            "not a redis:// or rediss:// URL",
        ),
        (
            &["worker", "--timeout", "nokind=1m"],
            &[("REDIS_URL", "redis://127.0.0.1:1")],
            "runs no kind \"nokind\"",
        ),
        (
            &["dev", "--retry", "nokind=3"],
            &[("REDIS_URL", "redis://127.0.0.1:1")],
            "runs no kind \"nokind\"",
        ),
        (
            &["serve", "--memory"],
            &[("JOBWIRE_BIND", "notanaddress")],
            "JOBWIRE_BIND=\"notanaddress\"",
        ),
        (
            &["serve", "--memory", "--bind", "notanaddress"],
            &[],
            "--bind \"notanaddress\"",
        ),
        (
            &["serve"],
            &[("REDIS_URL", "redis://:s3cret@bad host:1")],
            "REDIS_URL",
        ),
        (
            &["serve", "--memory"],
            &[("JOBWIRE_JWT_SECRET", "")],
            "JOBWIRE_JWT_SECRET",
        ),
        (
            &["serve", "--memory"],
            &[("JOBWIRE_RETENTION", "soon")],
            "JOBWIRE_RETENTION=\"soon\": expected a duration",
        ),
        (&["serve"], &[("REDIS_URL", "http://nope")], "REDIS_URL"),
        (
            &["serve"],
            &[("REDIS_URL", "redis+sentinel://127.0.0.1:1")],
            "the master's name is missing",
        ),
        (&["worker"], &[], "REDIS_URL"),
        (
            &["serve"],
            &[
                ("REDIS_URL", "redis://127.0.0.1:1"),
                ("JOBWIRE_REDIS_CA_CERT", "/etc/hostname"),
            ],
            "rediss://",
        ),
        (
            &["serve"],
            &[
                ("REDIS_URL", "rediss://127.0.0.1:1"),
                ("JOBWIRE_REDIS_CA_CERT", "/nonexistent/ca.pem"),
            ],
            "JOBWIRE_REDIS_CA_CERT",
        ),
        (
            &["worker"],
            &[
                ("REDIS_URL", "redis://127.0.0.1:1"),
                ("JOBWIRE_VISIBILITY_TIMEOUT", "10ms"),
            ],
            "JOBWIRE_VISIBILITY_TIMEOUT",
        ),
        (
            &["worker"],
            &[
                ("REDIS_URL", "redis://127.0.0.1:1"),
                ("JOBWIRE_WORKER_CONCURRENCY", "0"),
            ],
            "JOBWIRE_WORKER_CONCURRENCY",
        ),
        (
            &["worker"],
            &[
                ("REDIS_URL", "redis://127.0.0.1:1"),
                ("JOBWIRE_SCAN_ROOT", "/nonexistent/dir"),
            ],
            "JOBWIRE_SCAN_ROOT",
        ),
    ];
    // Every case runs with its address taken: a setting is checked before
    // the port is (a busy port must not hide a typo, and a typo must not
    // wait for Redis).
    let held = std::net::TcpListener::bind("127.0.0.1:0")?;
    let taken = held.local_addr()?.to_string();
    for (args, env, needle) in cases {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_jobwire"));
        cmd.args(args)
            .env_clear()
            .env("JOBWIRE_JWT_SECRET", SECRET)
            .env("JOBWIRE_BIND", &taken);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let out = cmd.output()?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        ensure!(
            out.status.code() == Some(2),
            "{args:?} {env:?}: exit {:?}, {stderr}",
            out.status.code()
        );
        ensure!(
            stderr.contains(needle),
            "{args:?} {env:?}: {stderr:?} does not name {needle}"
        );
        ensure!(!stderr.contains("panicked"), "{stderr}");
        ensure!(
            stderr.trim_end().lines().count() == 1,
            "{args:?} {env:?}: not one line: {stderr}"
        );
        ensure!(
            !stderr.contains("s3cret"),
            "{args:?} {env:?}: a secret was printed: {stderr}"
        );
        // A cause is said once (an error chained to its own message
        // printed it twice).
        for part in stderr.trim_end().split(": ") {
            ensure!(
                part.len() < 12 || stderr.matches(part).count() == 1,
                "{args:?} {env:?}: {part:?} said twice: {stderr}"
            );
        }
    }
    Ok(())
}

#[tokio::test]
async fn sigterm_closes_sockets_with_1001_and_exits_0() -> Result<()> {
    let mut server = Jobwire::start(&["serve", "--memory"], &[])?;
    server
        .wait_for("/readyz", 200, Duration::from_secs(10))
        .await?;
    let job: Value = reqwest::Client::new()
        .post(server.url("/api/jobs"))
        .bearer_auth(token())
        .json(&json!({"kind": "demo"}))
        .send()
        .await?
        .json()
        .await?;
    let id = job["id"].as_str().context("job id")?;
    let mut ws = watch(server.port, &format!("/ws/jobs/{id}")).await?;
    ensure!(next(&mut ws)
        .await?
        .is_ok_and(|m| m["type"] == "current_state"));
    server.signal("TERM")?;
    let closed = next(&mut ws).await?;
    ensure!(closed == Err(Some(1001)), "got {closed:?}");
    ensure!(
        server.wait_exit(Duration::from_secs(5))? == 0,
        "non-zero exit after SIGTERM"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_instance_loses_its_clients_nothing() -> Result<()> {
    let redis = RedisServer::start()?;
    let env = [("REDIS_URL", redis.url())];
    let a = Jobwire::start(&["serve"], &env)?;
    let b = Jobwire::start(&["serve"], &env)?;
    a.wait_for("/readyz", 200, Duration::from_secs(10)).await?;
    b.wait_for("/readyz", 200, Duration::from_secs(10)).await?;
    let publisher = redis_backend(&redis.url()).await?;
    let job = publisher
        .create_job(NewJob::new("demo", json!({}), "alice"))
        .await?;
    publisher
        .publish(&job.id, &[NewEvent::new(EventType::JobStarted, json!({}))])
        .await?;
    let mut ws = watch(a.port, &format!("/ws/jobs/{}", job.id)).await?;
    let mut last = next(&mut ws)
        .await?
        .map_err(|c| anyhow::anyhow!("closed {c:?}"))?["id"]
        .as_u64()
        .context("id")?;
    let progress = |i: u64| NewEvent::new(EventType::Progress, json!({"current": i, "total": 100}));
    for i in 1..=10 {
        publisher.publish(&job.id, &[progress(i)]).await?;
    }
    for _ in 0..5 {
        let e = next(&mut ws)
            .await?
            .map_err(|c| anyhow::anyhow!("closed {c:?}"))?;
        ensure!(e["id"] == last + 1);
        last += 1;
    }
    a.signal("KILL")?;
    for i in 11..=20 {
        publisher.publish(&job.id, &[progress(i)]).await?;
    }
    // Whatever A still delivered before dying counts; then resume on B.
    while let Ok(Ok(e)) = next(&mut ws).await {
        ensure!(e["id"] == last + 1, "out of step before the kill: {e}");
        last += 1;
    }
    let mut ws = watch(
        b.port,
        &format!("/ws/jobs/{}?since={last}&epoch={}", job.id, job.epoch),
    )
    .await?;
    let first = next(&mut ws)
        .await?
        .map_err(|c| anyhow::anyhow!("closed {c:?}"))?;
    ensure!(first["type"] == "resumed", "{first}");
    for expected in last + 1..=22 {
        let e = next(&mut ws)
            .await?
            .map_err(|c| anyhow::anyhow!("closed {c:?}"))?;
        ensure!(e["id"] == expected, "expected {expected}: {e}");
    }
    Ok(())
}

#[tokio::test]
async fn serve_waits_for_redis_and_becomes_ready_by_itself() -> Result<()> {
    let port = free_port()?;
    let server = Jobwire::start(
        &["serve"],
        &[("REDIS_URL", format!("redis://127.0.0.1:{port}"))],
    )?;
    server
        .wait_for("/healthz", 200, Duration::from_secs(10))
        .await?;
    ensure!(
        server.status("/readyz").await == Some(503),
        "ready without Redis"
    );
    ensure!(server.status("/api/jobs").await == Some(503));
    let _redis = RedisServer::start_on(port, Persistence::None)?;
    server
        .wait_for("/readyz", 200, Duration::from_secs(15))
        .await?;
    Ok(())
}

/// `rediss://` end to end: a gateway and a worker reach a TLS-only Redis
/// (private CA, client certificates) and run a job.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_and_worker_speak_tls_to_redis() -> Result<()> {
    let redis = RedisServer::start_tls()?;
    let certs = redis.test_certs().context("no test certificates")?;
    let path = |p: &std::path::Path| p.to_string_lossy().into_owned();
    let env = [
        ("REDIS_URL", redis.tls_url().context("no TLS port")?),
        ("JOBWIRE_REDIS_CA_CERT", path(&certs.ca_cert)),
        ("JOBWIRE_REDIS_CLIENT_CERT", path(&certs.client_cert)),
        ("JOBWIRE_REDIS_CLIENT_KEY", path(&certs.client_key)),
    ];
    let server = Jobwire::start(&["serve"], &env)?;
    let _worker = Jobwire::start(&["worker"], &env)?;
    server
        .wait_for("/readyz", 200, Duration::from_secs(10))
        .await?;
    let client = reqwest::Client::new();
    let created: Value = client
        .post(server.url("/api/jobs"))
        .bearer_auth(token())
        .json(&json!({"kind": "demo", "params": {"steps": 3, "delay_ms": 10}}))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let id = created["id"].as_str().context("no id")?.to_owned();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let job: Value = client
            .get(server.url(&format!("/api/jobs/{id}")))
            .bearer_auth(token())
            .send()
            .await?
            .json()
            .await?;
        if job["status"] == "completed" {
            return Ok(());
        }
        ensure!(
            std::time::Instant::now() < deadline,
            "not completed over TLS: {job}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Secrets (a Redis password, the JWT secret, a client token) never show:
/// not in `--help` (which prints environment values), not in the warnings
/// logged while Redis is unreachable, not in the worker's either.
#[test]
fn secrets_never_show_in_help_or_logs() -> Result<()> {
    const PASSWORD: &str = "s3cret-redis-pw";
    const JWT: &str = "s3cret-jwt-secret-0123456789";
    let port = jobwire_testkit::free_port()?;
    let redis_url = format!("redis://user:{PASSWORD}@127.0.0.1:{port}");
    // With `until`, the process runs until its output names that text twice
    // (the "waiting for Redis" warning repeats: a secret printed only on a
    // retry must show too) or 20 s pass, then is killed; without, it runs
    // to its end.
    let run = |args: &[&str], until: Option<&str>| -> Result<String> {
        let mut child = Command::new(env!("CARGO_BIN_EXE_jobwire"))
            .args(args)
            .env_clear()
            .env("REDIS_URL", &redis_url)
            .env("JOBWIRE_JWT_SECRET", JWT)
            .env("JOBWIRE_TOKEN", JWT)
            .env("JOBWIRE_BIND", "127.0.0.1:0")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()?;
        let shown = Arc::new(Mutex::new(Vec::new()));
        let readers = [
            child
                .stdout
                .take()
                .map(|o| Box::new(o) as Box<dyn Read + Send>),
            child
                .stderr
                .take()
                .map(|e| Box::new(e) as Box<dyn Read + Send>),
        ]
        .into_iter()
        .flatten()
        .map(|mut out| {
            let shown = Arc::clone(&shown);
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n @ 1..) = out.read(&mut buf) {
                    shown
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .extend_from_slice(&buf[..n]);
                }
            })
        })
        .collect::<Vec<_>>();
        let text = || {
            String::from_utf8_lossy(&shown.lock().unwrap_or_else(|p| p.into_inner())).into_owned()
        };
        if let Some(until) = until {
            let deadline = std::time::Instant::now() + Duration::from_secs(20);
            while text().matches(until).count() < 2 && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = child.kill();
        }
        child.wait()?;
        for reader in readers {
            let _ = reader.join();
        }
        Ok(text())
    };
    const REDACTED: &str = "user:***@127.0.0.1";
    for (args, wait) in [
        (&["serve", "--help"][..], None),
        (&["worker", "--help"], None),
        (&["dev", "--help"], None),
        (&["submit", "--help"], None),
        (&["token", "--help"], None),
        (&["serve"], Some(REDACTED)),
        (&["worker"], Some(REDACTED)),
    ] {
        let shown = run(args, wait)?;
        ensure!(
            !shown.contains(PASSWORD) && !shown.contains(JWT),
            "{args:?} showed a secret: {shown}"
        );
        if wait.is_some() {
            ensure!(
                shown.contains(REDACTED),
                "{args:?}: the redacted URL is not named: {shown}"
            );
        }
    }
    Ok(())
}
