//! Exact through Redis losing acknowledged writes (docs/design.md, "Exact
//! through data loss"): watchers connected through the loss, watchers that
//! reconnect after it, and watchers of a job whose data vanished. The loss
//! is made with `jobwire_testkit::lost_writes`: the dataset is put back as
//! it was at a snapshot and Redis restarts under a new replication id, as
//! after a crash that cut the AOF or a failover to a lagging replica.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use jobwire_core::{Backend, EventType, JobId, NewEvent};
use jobwire_testkit::lost_writes::Snapshot;
use jobwire_testkit::{Persistence, RedisServer};
use serde_json::{json, Value};

use crate::helpers::*;

/// What one client saw of one job: every rule of docs/protocol.md's
/// guarantee is checked as messages arrive.
#[derive(Debug, Default)]
struct Seen {
    /// The position after the last message: (epoch, id).
    at: Option<(String, u64)>,
    /// Every event received, by (epoch, id): one may never come twice.
    events: HashMap<(String, u64), Value>,
    resyncs: usize,
}

impl Seen {
    fn take(&mut self, m: &Value) -> Result<()> {
        let id = m["id"].as_u64().context("no id")?;
        match m["type"].as_str() {
            Some("current_state" | "resumed") => {
                let epoch = m["epoch"].as_str().context("no epoch")?.to_owned();
                if m["resync"] == true {
                    self.resyncs += 1;
                }
                self.at = Some((epoch, id));
            }
            Some(_) => {
                let (epoch, last) = self
                    .at
                    .clone()
                    .context("an event before the first message")?;
                ensure!(id == last + 1, "id {id} after {last} ({m})");
                let key = (epoch.clone(), id);
                if let Some(before) = self.events.insert(key, m.clone()) {
                    bail!("({epoch}, {id}) delivered twice: {before} then {m}");
                }
                self.at = Some((epoch, id));
            }
            None => bail!("no type: {m}"),
        }
        Ok(())
    }

    fn epoch(&self) -> Option<&str> {
        self.at.as_ref().map(|(e, _)| e.as_str())
    }

    fn last(&self) -> u64 {
        self.at.as_ref().map_or(0, |(_, id)| *id)
    }
}

/// Reads `ws` (one job's messages) until it is at `(epoch, last)`.
/// A one-job WebSocket on `job` and a multiplexed one subscribed to it.
async fn watch_both(app: &TestApp, job: &JobId, token: &str) -> Result<(Ws, Ws)> {
    let (single, _) = connect(
        &app.ws_url(&format!("/ws/jobs/{job}")),
        Some(token),
        Via::Bearer,
    )
    .await?;
    let (mut multi, _) = connect(&app.ws_url("/ws/jobs"), Some(token), Via::Bearer).await?;
    send(&mut multi, json!({"type": "subscribe", "job_id": job})).await?;
    Ok((single, multi))
}

async fn read_until(ws: &mut Ws, seen: &mut Seen, epoch: &str, last: u64) -> Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while seen.epoch() != Some(epoch) || seen.last() < last {
        ensure!(
            tokio::time::Instant::now() < deadline,
            "stuck at {:?}, waiting for ({epoch}, {last})",
            seen.at
        );
        let m = next_json(ws).await?;
        seen.take(&m)?;
    }
    Ok(())
}

/// Publishes `progress` events `from..=to`, fenced `(1, i)` as a worker's
/// reporter does, retrying through the outage.
async fn publish(
    backend: &std::sync::Arc<dyn Backend>,
    job: &JobId,
    from: u64,
    to: u64,
) -> Result<()> {
    for i in from..=to {
        let event = NewEvent::new(EventType::Progress, json!({"current": i})).fenced(1, i);
        let mut tries = 0;
        loop {
            match backend.publish(job, std::slice::from_ref(&event)).await {
                Ok(_) => break,
                Err(e) if e.is_retryable() && tries < 300 => {
                    tries += 1;
                    tokio::time::sleep(Duration::from_millis(30)).await;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watchers_are_resynced_through_lost_writes_and_never_get_an_id_twice() -> Result<()> {
    let mut redis_server = RedisServer::start_private(Persistence::Aof)?;
    let app = spawn_app(redis(&redis_server.url()).await?).await?;
    // The publisher is another process's backend, as a worker is.
    let worker = redis(&redis_server.url()).await?;
    let job = running_job(&worker, "alice").await?;
    let token = user_token("alice");
    let (mut single, mut multi) = watch_both(&app, &job.id, &token).await?;
    let (mut single_seen, mut multi_seen) = (Seen::default(), Seen::default());
    let old = job.epoch.as_str().to_owned();

    publish(&worker, &job.id, 1, 10).await?;
    let snapshot = Snapshot::take(&redis_server).await?;
    publish(&worker, &job.id, 11, 20).await?;
    read_until(&mut single, &mut single_seen, &old, 22).await?;
    read_until(&mut multi, &mut multi_seen, &old, 22).await?;
    // A third client leaves at 22, to come back after the loss.
    let mut away = Seen {
        at: Some((old.clone(), 22)),
        ..Seen::default()
    };

    // Events 13..=22 are lost; Redis comes back under a new replication id.
    snapshot.lose_writes_since(&mut redis_server).await?;

    // Back before anything is written again: 22 is beyond the log's end.
    // (Until the gateway's connections to Redis are back, it answers 1013:
    // try again, as clients do.)
    let url = app.ws_url(&format!("/ws/jobs/{}?since=22&epoch={old}", job.id));
    let (mut back, first) = loop {
        let (mut ws, _) = connect(&url, Some(&token), Via::Bearer).await?;
        match next_json(&mut ws).await {
            Ok(first) => break (ws, first),
            Err(e) if e.to_string().contains("Again") => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => return Err(e),
        }
    };
    ensure!(
        first["type"] == "current_state" && first["resync"] == true,
        "{first}"
    );
    away.take(&first)?;

    // The worker goes on: its next events are 13.. again, of a new history.
    publish(&worker, &job.id, 21, 30).await?;
    let now = worker.job(&job.id).await?;
    let new = now.epoch.as_str().to_owned();
    ensure!(new != old, "the job kept its epoch through lost writes");
    ensure!(now.last_event_id.0 == 22, "{}", now.last_event_id);
    for (ws, seen) in [
        (&mut single, &mut single_seen),
        (&mut multi, &mut multi_seen),
        (&mut back, &mut away),
    ] {
        read_until(ws, seen, &new, 22).await?;
        ensure!(seen.resyncs >= 1, "no resync: {:?}", seen.at);
    }
    // What they were given under the new epoch is the log.
    let log = jobwire_testkit::jobs::log(&*worker, &job.id).await?;
    for seen in [&single_seen, &multi_seen, &away] {
        for ((epoch, id), event) in &seen.events {
            if *epoch == new {
                let stored = log
                    .iter()
                    .find(|e| e.id.0 == *id)
                    .with_context(|| format!("{id} not in the log"))?;
                ensure!(
                    serde_json::to_value(stored)? == *event,
                    "({epoch}, {id}): {event} but the log has {stored:?}"
                );
            }
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watchers_of_a_job_lost_entirely_are_told_it_is_gone() -> Result<()> {
    let mut redis_server = RedisServer::start_private(Persistence::Aof)?;
    let app = spawn_app(redis(&redis_server.url()).await?).await?;
    let snapshot = Snapshot::take(&redis_server).await?;
    let job = running_job(&app.backend, "alice").await?;
    let token = user_token("alice");
    let (mut single, mut multi) = watch_both(&app, &job.id, &token).await?;
    ensure!(next_json(&mut single).await?["type"] == "current_state");
    ensure!(next_json(&mut multi).await?["type"] == "current_state");

    // The job was never persisted: after the restart it does not exist,
    // and nobody will ever publish to it again.
    snapshot.lose_writes_since(&mut redis_server).await?;

    ensure!(
        close_code(&mut single).await? == 4404,
        "the single-job socket"
    );
    let gone = next_json(&mut multi).await?;
    ensure!(
        gone["type"] == "gone" && gone["job_id"] == job.id.as_str(),
        "{gone}"
    );
    Ok(())
}
