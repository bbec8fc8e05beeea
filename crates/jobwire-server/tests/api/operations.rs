//! The fleet operations API: cron schedules (admin only, every field
//! checked, create, replace, pause, resume, delete; a schedule's ticks
//! becoming jobs of its owner) and queue limits.

use std::time::{Duration, Instant};

use anyhow::{ensure, Result};
use jobwire_core::{EventType, NewEvent, NewJob};
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

#[tokio::test]
async fn failed_jobs_are_listed_by_kind_queue_and_finish_time() -> Result<()> {
    let app = spawn_app(memory()).await?;
    let root = admin();
    let mut made = Vec::new();
    for (kind, queue) in [("demo", None), ("demo", Some("slow")), ("scan", None)] {
        let mut job = NewJob::new(kind, json!({"path": "."}), "bob");
        if let Some(queue) = queue {
            job = job.in_queue(queue);
        }
        let id = app.backend.create_job(job).await?.id;
        app.backend
            .publish(
                &id,
                &[
                    NewEvent::new(EventType::JobStarted, json!({})),
                    NewEvent::new(EventType::JobFailed, json!({"error": "boom"})),
                ],
            )
            .await?;
        made.push(id.to_string());
    }
    // One that has not finished matches no finish time.
    app.backend
        .create_job(NewJob::new("demo", json!({}), "bob"))
        .await?;
    let ids = |page: &Value| -> Vec<String> {
        let mut ids: Vec<String> = page["jobs"]
            .as_array()
            .map(|jobs| {
                jobs.iter()
                    .filter_map(|j| j["id"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        ids.sort();
        ids
    };
    let sorted = |mut v: Vec<String>| {
        v.sort();
        v
    };
    let hour_ago = jobwire_core::Timestamp::now().minus(Duration::from_secs(3600));
    let soon = jobwire_core::Timestamp::now().plus(Duration::from_secs(3600));
    for (query, expected) in [
        ("status=failed", made.clone()),
        ("status=failed&kind=demo", made[..2].to_vec()),
        ("status=failed&queue=slow", made[1..2].to_vec()),
        ("status=failed&queue=demo", made[..1].to_vec()),
        ("kind=scan", made[2..].to_vec()),
        (&format!("finished_after={hour_ago}"), made.clone()),
        (
            &format!(
                "kind=demo&finished_after={}",
                hour_ago.to_string().replace('Z', "%2B00:00")
            ),
            made[..2].to_vec(),
        ),
        (&format!("finished_after={soon}"), Vec::new()),
    ] {
        let (status, page) = app.get(&format!("/api/jobs?{query}"), Some(&root)).await?;
        ensure!(status == 200, "{query}: {status} {page}");
        ensure!(ids(&page) == sorted(expected.clone()), "{query}: {page}");
    }
    // A user sees only their own, filters or not.
    let (_, page) = app
        .get("/api/jobs?status=failed", Some(&user_token("alice")))
        .await?;
    ensure!(ids(&page).is_empty(), "{page}");
    for (bad, says) in [
        ("finished_after=yesterday", "finished_after"),
        ("queue=a%20b", "queue"),
        ("kind=", "kind"),
    ] {
        let (status, err) = app.get(&format!("/api/jobs?{bad}"), Some(&root)).await?;
        let message = err["error"]["message"].as_str().unwrap_or_default();
        ensure!(
            status == 422 && message.contains(says),
            "{bad}: {status} {err}"
        );
    }
    Ok(())
}
