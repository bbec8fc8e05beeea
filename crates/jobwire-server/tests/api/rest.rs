//! The REST API: status codes, the error shape, ownership, pagination,
//! history and the publish endpoint for external workers.

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
    ensure!(
        status == 409 && r["error"]["code"] == "stale_attempt",
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
    // Prometheus rejects a whole page that describes one family twice.
    let mut described = std::collections::HashSet::new();
    for line in text.lines().filter(|l| l.starts_with("# TYPE ")) {
        ensure!(described.insert(line), "described twice: {line}");
    }
    ensure!(text.trim_end().ends_with("# EOF"), "{text}");
    Ok(())
}
