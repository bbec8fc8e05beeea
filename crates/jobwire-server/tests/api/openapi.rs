//! `docs/openapi.json` and the router agree: every documented operation is
//! served, and every route the server has is documented. And the Grafana
//! dashboard in docs/ uses documented series only.

use std::collections::BTreeSet;

use anyhow::{ensure, Context, Result};
use serde_json::Value;

use crate::helpers::*;

/// The routes of `jobwire_server::router`, as (method, path).
const ROUTES: &[(&str, &str)] = &[
    ("post", "/api/jobs"),
    ("get", "/api/jobs"),
    ("get", "/api/jobs/{id}"),
    ("delete", "/api/jobs/{id}"),
    ("post", "/api/jobs/{id}/cancel"),
    ("post", "/api/jobs/{id}/retry"),
    ("get", "/api/jobs/{id}/events"),
    ("post", "/api/jobs/{id}/events"),
    ("get", "/api/jobs/{id}/stream"),
    ("get", "/api/workers"),
    ("get", "/api/queues"),
    ("get", "/api/throughput"),
    ("post", "/api/queues/{queue}/pause"),
    ("post", "/api/queues/{queue}/resume"),
    ("put", "/api/queues/{queue}/limits"),
    ("get", "/api/schedules"),
    ("post", "/api/schedules"),
    ("delete", "/api/schedules/{name}"),
    ("post", "/api/schedules/{name}/pause"),
    ("post", "/api/schedules/{name}/resume"),
    ("get", "/ws/jobs"),
    ("get", "/ws/jobs/{id}"),
    ("get", "/healthz"),
    ("get", "/readyz"),
    ("get", "/metrics"),
    ("get", "/"),
    ("get", "/app.js"),
    ("get", "/style.css"),
    ("get", "/jobwire.js"),
];

#[tokio::test]
async fn the_openapi_document_matches_the_routes() -> Result<()> {
    let doc: Value = serde_json::from_str(include_str!("../../../../docs/openapi.json"))?;
    let mut documented = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().context("paths")? {
        for method in item.as_object().context("path item")?.keys() {
            documented.insert((method.clone(), path.clone()));
        }
    }
    let listed: BTreeSet<(String, String)> = ROUTES
        .iter()
        .map(|(m, p)| ((*m).to_owned(), (*p).to_owned()))
        .collect();
    ensure!(
        documented == listed,
        "documented {documented:?}\nrouted {listed:?}"
    );

    // Every listed route exists on a running server: an unknown route answers
    // 404 with code `no_route` and a wrong method 405, while our handlers
    // answer otherwise (or succeed).
    let app = spawn_app(memory()).await?;
    let client = reqwest::Client::new();
    for (method, path) in ROUTES {
        let url = app.url(&path.replace("{id}", "01JDX000000000000000000000"));
        let method = reqwest::Method::from_bytes(method.to_uppercase().as_bytes())?;
        let resp = client.request(method.clone(), &url).send().await?;
        let status = resp.status();
        let body = resp.text().await?;
        ensure!(status != 405, "{method} {path}: method not routed");
        ensure!(
            status != 404 || !body.contains("no_route"),
            "{method} {path}: not routed"
        );
    }
    let missing = client.get(app.url("/api/nothing-here")).send().await?;
    ensure!(
        missing.status() == 404 && missing.text().await?.contains("no_route"),
        "the route check would not notice a missing route"
    );
    Ok(())
}

/// `docs/grafana-dashboard.json` queries only series docs/operations.md
/// lists as exported by the gateways and workers.
#[test]
fn the_grafana_dashboard_uses_only_documented_series() -> Result<()> {
    let doc: Value = serde_json::from_str(include_str!("../../../../docs/grafana-dashboard.json"))?;
    let documented = include_str!("../../../../docs/operations.md");
    let mut checked = 0;
    for panel in doc["panels"].as_array().context("panels")? {
        for target in panel["targets"].as_array().context("targets")? {
            let expr = target["expr"].as_str().context("expr")?;
            for (at, _) in expr.match_indices("jobwire_") {
                let name: String = expr[at..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                let base = name.strip_suffix("_bucket").unwrap_or(&name);
                ensure!(
                    documented.contains(&format!("`{base}"))
                        || documented.contains(&format!("`{}", base.trim_end_matches("_total"))),
                    "the dashboard queries {name}, which docs/operations.md does not list"
                );
                checked += 1;
            }
        }
    }
    ensure!(checked >= 12, "only {checked} series found");
    Ok(())
}
