//! The fleet operations API: cron schedules (admin only, every field
//! checked, create, replace, pause, resume, delete; a schedule's ticks
//! becoming jobs of its owner) and queue limits.

use std::time::{Duration, Instant};

use anyhow::{ensure, Result};
use jobwire_server::Scope;
use serde_json::{json, Value};

use crate::helpers::*;

fn admin() -> String {
    token("root", &[Scope::Admin, Scope::JobsRead, Scope::JobsWrite])
}

#[tokio::test]
async fn schedules_are_kept_by_admins_and_every_field_is_checked() -> Result<()> {
    let app = spawn_app(memory()).await?;
    let root = admin();
    let nightly = json!({"name": "nightly", "cron": "0 3 * * *", "tz": "Europe/Berlin",
        "kind": "scan", "params": {"path": "."}, "priority": 7});

    let (status, _) = app
        .post(
            "/api/schedules",
            Some(&user_token("alice")),
            Some(nightly.clone()),
        )
        .await?;
    ensure!(status == 403, "a non-admin made a schedule: {status}");
    let (status, _) = app
        .get("/api/schedules", Some(&user_token("alice")))
        .await?;
    ensure!(status == 403);

    for (bad, says) in [
        (
            json!({"name": "bad name", "cron": "* * * * *", "kind": "demo"}),
            "schedule name",
        ),
        (
            json!({"name": "x", "cron": "61 * * * *", "kind": "demo"}),
            "cron",
        ),
        (
            json!({"name": "x", "cron": "* * * * *", "tz": "Mars/Base", "kind": "demo"}),
            "Mars/Base",
        ),
        (
            json!({"name": "x", "cron": "* * * * *", "kind": "nope"}),
            "unknown kind",
        ),
        (
            json!({"name": "x", "cron": "* * * * *", "kind": "scan", "params": {}}),
            "scan",
        ),
        (
            json!({"name": "x", "cron": "* * * * *", "kind": "demo", "priority": 10}),
            "priority",
        ),
        (
            json!({"name": "x", "cron": "* * * * *", "kind": "demo", "queue": "a b"}),
            "queue",
        ),
        (
            json!({"name": "x", "cron": "* * * * *", "kind": "demo", "missed": "all"}),
            "missed",
        ),
        (
            json!({"name": "x", "cron": "* * * * *", "kind": "demo", "every": 5}),
            "every",
        ),
    ] {
        let (status, body) = app
            .post("/api/schedules", Some(&root), Some(bad.clone()))
            .await?;
        let message = body["error"]["message"].as_str().unwrap_or_default();
        ensure!(
            (status == 422 || status == 400) && message.contains(says),
            "{bad} gave {status} {body}"
        );
    }

    let (status, made) = app
        .post("/api/schedules", Some(&root), Some(nightly.clone()))
        .await?;
    ensure!(status == 201, "{status} {made}");
    ensure!(
        made["owner"] == "root" && made["missed"] == "once" && made["paused"] == false,
        "{made}"
    );
    let next: jobwire_core::Timestamp = made["next_fire"].as_str().unwrap_or_default().parse()?;
    // 03:00 in Berlin is 01:00 or 02:00 UTC.
    let hour = next.to_string()[11..13].to_owned();
    ensure!(hour == "01" || hour == "02", "{next}");

    let mut replaced = nightly.clone();
    replaced["cron"] = json!("30 4 * * *");
    let (status, again) = app
        .post("/api/schedules", Some(&root), Some(replaced))
        .await?;
    ensure!(
        status == 200 && again["cron"] == "30 4 * * *" && again["created_at"] == made["created_at"],
        "{again}"
    );

    let (status, paused) = app
        .post("/api/schedules/nightly/pause", Some(&root), None)
        .await?;
    ensure!(status == 200 && paused["paused"] == true, "{paused}");
    let (status, resumed) = app
        .post("/api/schedules/nightly/resume", Some(&root), None)
        .await?;
    ensure!(status == 200 && resumed["paused"] == false, "{resumed}");
    let (_, list) = app.get("/api/schedules", Some(&root)).await?;
    ensure!(
        list["schedules"].as_array().map(Vec::len) == Some(1),
        "{list}"
    );

    let (status, _) = app.delete("/api/schedules/nightly", Some(&root)).await?;
    ensure!(status == 204);
    for (method, path) in [
        ("delete", "/api/schedules/nightly"),
        ("post", "/api/schedules/nightly/pause"),
        ("post", "/api/schedules/nightly/resume"),
    ] {
        let (status, body) = if method == "delete" {
            app.delete(path, Some(&root)).await?
        } else {
            app.post(path, Some(&root), None).await?
        };
        ensure!(
            status == 404 && body["error"]["code"] == "not_found",
            "{path}: {status} {body}"
        );
    }
    Ok(())
}

/// The gateway fires the schedule: its ticks become jobs of the schedule's
/// owner, each naming the schedule and its tick.
#[tokio::test]
async fn a_schedules_ticks_become_its_owners_jobs() -> Result<()> {
    let app = spawn_app(memory()).await?;
    let root = admin();
    let (status, _) = app
        .post(
            "/api/schedules",
            Some(&root),
            Some(
                json!({"name": "often", "cron": "* * * * * *", "kind": "demo",
                "params": {"steps": 1}, "queue": "cron"}),
            ),
        )
        .await?;
    ensure!(status == 201);
    let deadline = Instant::now() + Duration::from_secs(10);
    let jobs = loop {
        let (_, page) = app.get("/api/jobs", Some(&root)).await?;
        let jobs = page["jobs"].as_array().cloned().unwrap_or_default();
        if jobs.len() >= 2 {
            break jobs;
        }
        ensure!(Instant::now() < deadline, "no ticks fired: {page}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let ticks: Vec<&Value> = jobs.iter().map(|j| &j["schedule"]["tick"]).collect();
    ensure!(ticks[0] != ticks[1], "{ticks:?}");
    for job in &jobs {
        ensure!(
            job["schedule"]["name"] == "often" && job["queue"] == "cron" && job["owner"] == "root",
            "{job}"
        );
    }
    let (_, list) = app.get("/api/schedules", Some(&root)).await?;
    ensure!(list["schedules"][0]["last_job"].is_string(), "{list}");
    Ok(())
}

/// Queue limits: admin only, checked, shown in `GET /api/queues`, lifted
/// with `{}`.
#[tokio::test]
async fn queue_limits_are_set_checked_shown_and_lifted() -> Result<()> {
    let app = spawn_app(memory()).await?;
    let root = admin();
    let path = "/api/queues/scan/limits";
    let body = json!({"concurrency": 2, "rate": {"max": 10, "per": "1m"}});
    let (status, _) = app
        .put(path, Some(&user_token("alice")), body.clone())
        .await?;
    ensure!(status == 403);
    for bad in [
        json!({"concurrency": 0}),
        json!({"rate": {"max": 0, "per": "1s"}}),
        json!({"rate": {"max": 1, "per": "2d"}}),
        json!({"rate": {"max": 1, "per": "soon"}}),
        json!({"concurrency": 1, "burst": 3}),
    ] {
        let (status, reply) = app.put(path, Some(&root), bad.clone()).await?;
        ensure!(status == 422 || status == 400, "{bad}: {status} {reply}");
    }
    let (status, set) = app.put(path, Some(&root), body.clone()).await?;
    ensure!(status == 200 && set["limits"] == body, "{set}");
    let (_, queues) = app.get("/api/queues", Some(&root)).await?;
    let scan = queues["queues"]
        .as_array()
        .and_then(|qs| qs.iter().find(|q| q["name"] == "scan"))
        .cloned()
        .unwrap_or_default();
    ensure!(scan["limits"] == body, "{queues}");
    let (status, _) = app.put(path, Some(&root), json!({})).await?;
    ensure!(status == 200);
    let (_, queues) = app.get("/api/queues", Some(&root)).await?;
    ensure!(
        !queues["queues"]
            .as_array()
            .is_some_and(|qs| qs.iter().any(|q| q["name"] == "scan")),
        "{queues}"
    );
    Ok(())
}
