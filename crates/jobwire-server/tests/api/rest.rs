//! The REST API: status codes, the error shape, ownership, pagination,
//! history and the publish endpoint for external workers.

use std::sync::Arc;

use anyhow::{ensure, Result};
use jobwire_server::Scope;
use reqwest::Client;
use serde_json::json;

use crate::helpers::*;

#[tokio::test]
async fn jobs_are_created_read_listed_cancelled_and_deleted() -> Result<()> {
    let app = spawn_app(memory()).await?;
    let alice = user_token("alice");
    let (status, job) = app
        .post(
            "/api/jobs",
            Some(&alice),
            Some(json!({"kind": "demo", "params": {"steps": 5}})),
        )
        .await?;
    ensure!(
        status == 201 && job["status"] == "queued" && job["owner"] == "alice",
        "{status} {job}"
    );
    let id = job["id"].as_str().unwrap_or_default().to_owned();
    let (status, got) = app.get(&format!("/api/jobs/{id}"), Some(&alice)).await?;
    ensure!(status == 200 && got["id"] == id.as_str());
    let (status, err) = app
        .get(&format!("/api/jobs/{id}"), Some(&user_token("mallory")))
        .await?;
    ensure!(
        status == 404 && err["error"]["code"] == "not_found",
        "another user's job: {status} {err}"
    );
    for _ in 0..4 {
        app.post("/api/jobs", Some(&alice), Some(json!({"kind": "demo"})))
            .await?;
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
    let (status, page) = app.get("/api/jobs?limit=3", Some(&alice)).await?;
    ensure!(
        status == 200 && page["jobs"].as_array().map(Vec::len) == Some(3),
        "{page}"
    );
    let cursor = page["next_cursor"].as_str().unwrap_or_default().to_owned();
    let (_, rest) = app
        .get(&format!("/api/jobs?limit=3&cursor={cursor}"), Some(&alice))
        .await?;
    ensure!(
        rest["jobs"].as_array().map(Vec::len) == Some(2) && rest["next_cursor"].is_null(),
        "{rest}"
    );
    let (status, cancelled) = app
        .post(&format!("/api/jobs/{id}/cancel"), Some(&alice), None)
        .await?;
    ensure!(
        status == 202 && cancelled["job"]["status"] == "cancelled",
        "{status} {cancelled}"
    );
    let (status, _) = app.delete(&format!("/api/jobs/{id}"), Some(&alice)).await?;
    ensure!(status == 204);
    let (status, _) = app.get(&format!("/api/jobs/{id}"), Some(&alice)).await?;
    ensure!(status == 404);
    Ok(())
}

#[tokio::test]
async fn bad_requests_get_clear_errors() -> Result<()> {
    let app = spawn_app(memory()).await?;
    let alice = user_token("alice");
    let cases = [
        (None, json!({"kind": "demo"}), 401, "unauthorized"),
        (
            Some(token("alice", &[Scope::JobsRead])),
            json!({"kind": "demo"}),
            403,
            "forbidden",
        ),
        (
            Some(alice.clone()),
            json!({"kind": "teleport"}),
            422,
            "invalid",
        ),
        (
            Some(alice.clone()),
            json!({"kind": "scan", "params": {}}),
            422,
            "invalid",
        ),
        (
            Some(alice.clone()),
            json!({"kind": "demo", "params": {"steps": -3}}),
            422,
            "invalid",
        ),
        (
            Some(alice.clone()),
            json!({"kind": "demo", "params": [1]}),
            422,
            "invalid",
        ),
        (
            Some(alice.clone()),
            json!({"kind": "x.y", "external": true}),
            403,
            "forbidden",
        ),
        (
            Some(alice.clone()),
            json!({"nonsense": true}),
            422,
            "invalid",
        ),
    ];
    for (token, body, status, code) in cases {
        let (got, err) = app
            .post("/api/jobs", token.as_deref(), Some(body.clone()))
            .await?;
        ensure!(
            got.as_u16() == status && err["error"]["code"] == code,
            "{body}: {got} {err}"
        );
        ensure!(err["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()));
    }
    let (status, _) = app.get("/api/jobs?limit=0", Some(&alice)).await?;
    ensure!(status == 422);
    let (status, _) = app.get("/api/jobs?status=dreaming", Some(&alice)).await?;
    ensure!(status == 422);
    let raw = Client::new()
        .post(app.url("/api/jobs"))
        .bearer_auth(&alice)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await?;
    ensure!(raw.status() == 422, "malformed JSON: {}", raw.status());
    let big = Client::new()
        .post(app.url("/api/jobs"))
        .bearer_auth(&alice)
        .header("content-type", "application/json")
        .body(format!(
            r#"{{"kind":"demo","params":{{"pad":"{}"}}}}"#,
            "x".repeat(2 * 1024 * 1024)
        ))
        .send()
        .await?;
    ensure!(big.status() == 413, "a 2 MiB body: {}", big.status());
    Ok(())
}

#[tokio::test]
async fn external_workers_publish_through_the_api_exactly_once() -> Result<()> {
    let app = spawn_app(memory()).await?;
    let worker = token(
        "celery",
        &[Scope::JobsRead, Scope::JobsWrite, Scope::Worker],
    );
    let (status, job) = app
        .post(
            "/api/jobs",
            Some(&worker),
            Some(json!({"kind": "celery.index", "external": true})),
        )
        .await?;
    ensure!(status == 201 && job["external"] == true, "{status} {job}");
    let id = job["id"].as_str().unwrap_or_default().to_owned();
    let path = format!("/api/jobs/{id}/events");
    let started = json!({"type": "job_started", "data": {"total_files": 2}, "attempt": 1, "n": 1});
    let (status, r) = app
        .post(&path, Some(&worker), Some(started.clone()))
        .await?;
    ensure!(status == 201 && r["id"] == 2, "{status} {r}");
    let (status, r) = app.post(&path, Some(&worker), Some(started)).await?;
    ensure!(
        status == 200 && r["duplicate"] == true,
        "a repeated n: {status} {r}"
    );
    let batch = json!([
        {"type": "file_completed", "data": {"file": "a"}, "attempt": 1, "n": 2},
        {"type": "file_completed", "data": {"file": "b"}, "attempt": 1, "n": 3},
        {"type": "job_completed", "data": {"result": {"ok": true}}, "attempt": 1, "n": 4}
    ]);
    let (status, r) = app.post(&path, Some(&worker), Some(batch)).await?;
    ensure!(
        status == 201 && r["ids"] == json!([3, 4, 5]),
        "{status} {r}"
    );
    let (status, r) = app
        .post(
            &path,
            Some(&worker),
            Some(json!({"type": "progress", "attempt": 0, "n": 9})),
        )
        .await?;
    // The refusals say, in fields, what a publisher acts on.
    ensure!(
        status == 409 && r["error"]["code"] == "stale_attempt" && r["error"]["attempt"] == 1,
        "{status} {r}"
    );
    let (status, r) = app
        .post(
            &path,
            Some(&worker),
            Some(json!({"type": "progress", "attempt": 1, "n": 10})),
        )
        .await?;
    ensure!(
        status == 409 && r["error"]["code"] == "conflict" && r["error"]["status"] == "completed",
        "{status} {r}"
    );
    let (status, r) = app
        .post(
            &path,
            Some(&user_token("alice")),
            Some(json!({"type": "progress"})),
        )
        .await?;
    ensure!(
        status == 403,
        "publish without the worker scope: {status} {r}"
    );
    let (status, r) = app
        .post(&path, Some(&worker), Some(json!({"type": "Not A Type"})))
        .await?;
    ensure!(status == 422, "{status} {r}");
    let (status, history) = app
        .get(&format!("/api/jobs/{id}/events?since=2"), Some(&worker))
        .await?;
    let ids: Vec<u64> = history["events"]
        .as_array()
        .map(|a| a.iter().filter_map(|e| e["id"].as_u64()).collect())
        .unwrap_or_default();
    ensure!(status == 200 && ids == vec![3, 4, 5], "{status} {history}");
    ensure!(history["events"][2]["data"]["status"] == "completed");
    let (_, job) = app.get(&format!("/api/jobs/{id}"), Some(&worker)).await?;
    ensure!(
        job["status"] == "completed" && job["processed_files"] == 2 && job["result"]["ok"] == true,
        "{job}"
    );
    Ok(())
}

#[tokio::test]
async fn health_and_metrics_answer() -> Result<()> {
    let app = spawn_app(memory()).await?;
    let (status, _) = app.get("/healthz", None).await?;
    ensure!(status == 200);
    let (status, _) = app.get("/readyz", None).await?;
    ensure!(status == 200);
    let job = running_job(&app.backend, "alice").await?;
    let (mut ws, _) = connect(
        &app.ws_url(&format!("/ws/jobs/{}", job.id)),
        Some(&user_token("alice")),
        Via::Bearer,
    )
    .await?;
    next_json(&mut ws).await?;
    progress(&app.backend, &job.id, 1).await?;
    next_json(&mut ws).await?;
    let text = Client::new()
        .get(app.url("/metrics"))
        .send()
        .await?
        .text()
        .await?;
    ensure!(
        text.contains("jobwire_connections{transport=\"websocket\"} 1"),
        "{text}"
    );
    ensure!(text.contains("jobwire_messages_sent_total 2"), "{text}");
    ensure!(text.contains("jobwire_watched_jobs 1"), "{text}");
    ensure!(
        text.contains("jobwire_delivery_latency_seconds_count 1"),
        "latency histogram: {text}"
    );
    ensure!(
        text.contains("jobwire_delivery_latency_seconds_bucket{le=\"+Inf\"} 1"),
        "{text}"
    );
    ensure!(
        text.contains(r#"jobwire_http_requests_total{route="/readyz",status="200"}"#),
        "{text}"
    );
    ensure!(
        text.contains(r#"jobwire_jobs{status="running"} 1"#),
        "{text}"
    );
    for state in ["waiting", "scheduled", "running"] {
        let series = format!(r#"jobwire_queue_jobs{{queue="demo",state="{state}"}} "#);
        ensure!(text.contains(&series), "{series}: {text}");
    }
    ensure!(
        text.contains(r#"jobwire_queue_paused{queue="demo"} 0"#),
        "{text}"
    );
    // Prometheus rejects a whole page that describes one family twice.
    let mut described = std::collections::HashSet::new();
    for line in text.lines().filter(|l| l.starts_with("# TYPE ")) {
        ensure!(described.insert(line), "described twice: {line}");
    }
    ensure!(text.trim_end().ends_with("# EOF"), "{text}");
    Ok(())
}

/// `Idempotency-Key` on `POST /api/jobs`: the same caller, key and request
/// get the first job back (200); another request under the key is 409;
/// another caller's key of the same name is theirs; a key that is not
/// visible ASCII is 400.
#[tokio::test]
async fn an_idempotency_key_gets_the_same_job_back() -> Result<()> {
    let app = spawn_app(memory()).await?;
    let create = |token: String, key: &'static str, body: serde_json::Value| {
        let url = app.url("/api/jobs");
        async move {
            let resp = Client::new()
                .post(url)
                .bearer_auth(token)
                .header("idempotency-key", key)
                .json(&body)
                .send()
                .await?;
            let status = resp.status();
            let body: serde_json::Value = resp.json().await.unwrap_or_default();
            anyhow::Ok((status, body))
        }
    };
    let body = json!({"kind": "demo", "params": {"steps": 2, "delay_ms": 1}});
    // The same object with its keys in another order is the same request.
    let reordered = json!({"params": {"delay_ms": 1, "steps": 2}, "kind": "demo"});
    let (status, first) = create(user_token("alice"), "order-7", body.clone()).await?;
    ensure!(status == 201, "{status} {first}");
    let (status, again) = create(user_token("alice"), "order-7", reordered).await?;
    ensure!(
        status == 200 && again["id"] == first["id"],
        "{status} {again}"
    );
    let (status, conflict) = create(
        user_token("alice"),
        "order-7",
        json!({"kind": "demo", "params": {"steps": 3}}),
    )
    .await?;
    ensure!(
        status == 409 && conflict["error"]["code"] == "conflict",
        "{status} {conflict}"
    );
    let (status, bobs) = create(user_token("bob"), "order-7", body.clone()).await?;
    ensure!(
        status == 201 && bobs["id"] != first["id"],
        "{status} {bobs}"
    );
    let resp = Client::new()
        .post(app.url("/api/jobs"))
        .bearer_auth(user_token("alice"))
        .header("idempotency-key", "")
        .json(&body)
        .send()
        .await?;
    ensure!(resp.status() == 400, "an empty key: {}", resp.status());
    Ok(())
}

/// Twenty concurrent `POST /api/jobs` with one `Idempotency-Key`, on two
/// gateways over one Redis: one job, which every response names.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_creates_with_one_key_on_two_gateways_make_one_job() -> Result<()> {
    let server = jobwire_testkit::RedisServer::start()?;
    let apps = [
        spawn_app(redis(&server.url()).await?).await?,
        spawn_app(redis(&server.url()).await?).await?,
    ];
    let token = user_token("alice");
    let body = json!({"kind": "demo", "params": {"steps": 1}});
    let requests = (0..20).map(|i| {
        let url = apps[i % 2].url("/api/jobs");
        let (token, body) = (token.clone(), body.clone());
        async move {
            let resp = Client::new()
                .post(url)
                .bearer_auth(token)
                .header("idempotency-key", "upload-42")
                .json(&body)
                .send()
                .await?;
            let status = resp.status().as_u16();
            let job: serde_json::Value = resp.json().await?;
            anyhow::Ok((status, job["id"].as_str().unwrap_or_default().to_owned()))
        }
    });
    let replies = futures_util::future::try_join_all(requests).await?;
    let created = replies.iter().filter(|(status, _)| *status == 201).count();
    ensure!(created == 1, "{created} created: {replies:?}");
    ensure!(
        replies
            .iter()
            .all(|(status, id)| (*status == 200 || *status == 201) && *id == replies[0].1),
        "{replies:?}"
    );
    let (_, page) = apps[0].get("/api/jobs", Some(&token)).await?;
    ensure!(page["jobs"].as_array().map(Vec::len) == Some(1), "{page}");
    Ok(())
}

/// `unique_key`: while the first job is unfinished, the same kind and key
/// return it flagged `existing` (200); another user's job holding the key
/// is not shown (409); with an `Idempotency-Key` too, 422.
#[tokio::test]
async fn a_unique_key_returns_the_unfinished_job() -> Result<()> {
    let app = spawn_app(memory()).await?;
    let alice = user_token("alice");
    let body = json!({"kind": "demo", "params": {"steps": 100000, "delay_ms": 1000}, "unique_key": "nightly"});
    let (status, first) = app
        .post("/api/jobs", Some(&alice), Some(body.clone()))
        .await?;
    ensure!(
        status == 201 && first.get("existing").is_none(),
        "{status} {first}"
    );
    let (status, again) = app
        .post("/api/jobs", Some(&alice), Some(body.clone()))
        .await?;
    ensure!(
        status == 200 && again["id"] == first["id"] && again["existing"] == true,
        "{status} {again}"
    );
    let (status, bobs) = app
        .post("/api/jobs", Some(&user_token("bob")), Some(body.clone()))
        .await?;
    ensure!(
        status == 409
            && bobs
                .to_string()
                .find(first["id"].as_str().unwrap_or("?"))
                .is_none(),
        "{status} {bobs}"
    );
    let resp = Client::new()
        .post(app.url("/api/jobs"))
        .bearer_auth(&alice)
        .header("idempotency-key", "k")
        .json(&body)
        .send()
        .await?;
    ensure!(resp.status() == 422, "both keys: {}", resp.status());
    Ok(())
}

/// Queue controls at create time: a delayed job comes back `scheduled`
/// with its `run_at` (and can be cancelled at once), priority and retry
/// policy are stored on the job, and every bad value is a 422 naming the
/// field.
#[tokio::test]
async fn queue_controls_are_stored_and_checked() -> Result<()> {
    let app = spawn_app(memory()).await?;
    let alice = user_token("alice");
    let body = json!({"kind": "demo", "delay": "1h", "priority": 8, "max_attempts": 4,
        "backoff": {"base": "2s", "factor": 3, "max": "1m"}});
    let (status, job) = app.post("/api/jobs", Some(&alice), Some(body)).await?;
    ensure!(status == 201, "{status} {job}");
    ensure!(
        job["status"] == "scheduled" && job["priority"] == 8 && job["run_at"].is_string(),
        "{job}"
    );
    ensure!(
        job["retry"]
            == json!({"max_attempts": 4, "backoff": {"base": "2s", "factor": 3.0, "max": "1m"}}),
        "{job}"
    );
    let id = job["id"].as_str().unwrap_or_default();
    let (status, page) = app
        .get(&format!("/api/jobs/{id}/events"), Some(&alice))
        .await?;
    ensure!(
        status == 200 && page["events"][0]["data"]["run_at"] == job["run_at"],
        "{page}"
    );
    let (status, _) = app
        .post(&format!("/api/jobs/{id}/cancel"), Some(&alice), None)
        .await?;
    ensure!(status == 202);
    let (_, job) = app.get(&format!("/api/jobs/{id}"), Some(&alice)).await?;
    ensure!(job["status"] == "cancelled", "{job}");
    // A time already past runs at once.
    let (status, now) = app
        .post(
            "/api/jobs",
            Some(&alice),
            Some(json!({"kind": "demo", "run_at": "2001-01-01T00:00:00Z"})),
        )
        .await?;
    ensure!(status == 201 && now["status"] == "queued", "{now}");
    let all_scopes = token("alice", &[Scope::JobsRead, Scope::JobsWrite, Scope::Worker]);
    for (body, field) in [
        (json!({"kind": "demo", "priority": 10}), "priority"),
        (json!({"kind": "demo", "priority": -1}), "priority"),
        (json!({"kind": "demo", "delay": "soon"}), "delay"),
        (json!({"kind": "demo", "delay": "1000d"}), "delay"),
        (json!({"kind": "demo", "run_at": "tomorrow"}), "run_at"),
        (
            json!({"kind": "demo", "run_at": "2001-01-01T00:00:00Z", "delay": "1s"}),
            "run_at or delay",
        ),
        (json!({"kind": "demo", "max_attempts": 0}), "max_attempts"),
        (
            json!({"kind": "demo", "backoff": {"base": "1m", "max": "1s"}}),
            "backoff",
        ),
        (
            json!({"kind": "demo", "backoff": {"base": "often"}}),
            "duration",
        ),
        (
            json!({"kind": "x.y", "external": true, "max_attempts": 2}),
            "external",
        ),
    ] {
        let (status, err) = app
            .post("/api/jobs", Some(&all_scopes), Some(body.clone()))
            .await?;
        let message = err["error"]["message"].as_str().unwrap_or_default();
        ensure!(
            status == 422 && message.contains(field),
            "{body}: {status} {err}"
        );
    }
    Ok(())
}

/// A queued job whose queue no live worker serves says so in `GET
/// /api/jobs/{id}` and the listing (`waiting`); once a worker serving it
/// beats in the registry, it no longer does.
#[tokio::test]
async fn a_job_no_worker_serves_says_so() -> Result<()> {
    let backend = memory();
    let app = spawn_app(Arc::clone(&backend)).await?;
    let alice = user_token("alice");
    let (_, job) = app
        .post(
            "/api/jobs",
            Some(&alice),
            Some(json!({"kind": "demo", "queue": "nightly"})),
        )
        .await?;
    let id = job["id"].as_str().unwrap_or_default().to_owned();
    let (_, got) = app.get(&format!("/api/jobs/{id}"), Some(&alice)).await?;
    ensure!(
        got["waiting"] == "no worker serves queue \"nightly\"",
        "{got}"
    );
    let (_, page) = app.get("/api/jobs", Some(&alice)).await?;
    ensure!(page["jobs"][0]["waiting"] == got["waiting"], "{page}");
    let now = jobwire_core::Timestamp::now();
    backend
        .heartbeat(&jobwire_core::WorkerInfo {
            name: "w1".to_owned(),
            host: "h".to_owned(),
            pid: 1,
            version: "0".to_owned(),
            queues: vec!["nightly".to_owned()],
            concurrency: 1,
            running: Vec::new(),
            started_at: now,
            last_seen: now,
            lease_ms: 60_000,
        })
        .await?;
    // The registry, for admins only.
    let (status, _) = app.get("/api/workers", Some(&alice)).await?;
    ensure!(status == 403);
    let (status, reg) = app
        .get("/api/workers", Some(&token("root", &[Scope::Admin])))
        .await?;
    ensure!(
        status == 200
            && reg["workers"][0]["name"] == "w1"
            && reg["workers"][0]["live"] == true
            && reg["workers"][0]["queues"] == json!(["nightly"]),
        "{reg}"
    );
    // The gateway reads the registry at most once a second.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let (_, got) = app.get(&format!("/api/jobs/{id}"), Some(&alice)).await?;
        if got.get("waiting").is_none() {
            break;
        }
        ensure!(std::time::Instant::now() < deadline, "still waiting: {got}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    Ok(())
}
