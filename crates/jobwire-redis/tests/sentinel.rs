//! Redis behind Sentinel (`redis+sentinel://`): the backend finds the master
//! through the sentinels and follows a failover without a restart; the log
//! stays exact, under a new epoch (the promoted replica is another history).

use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use jobwire_core::{
    BackendConfig, EventId, EventType, EventsAfter, JobId, JobStore, NewEvent, NewJob,
};
use jobwire_redis::{ConnectError, RedisBackend, RedisConfig};
use jobwire_testkit::sentinel::SentinelSet;
use serde_json::json;

fn config(url: String) -> RedisConfig {
    RedisConfig {
        command_timeout: Duration::from_secs(2),
        backend: BackendConfig {
            partitions: 4,
            ..BackendConfig::default()
        },
        ..RedisConfig::new(url)
    }
}

/// Publishes progress event `i`, fenced (a retry after an outage that hid
/// the reply is applied once), retrying while Redis is unavailable.
async fn publish_fenced(b: &RedisBackend, job: &JobId, i: u64) -> Result<EventId> {
    let event = NewEvent::new(EventType::Progress, json!({"current": i})).fenced(1, i);
    for _ in 0..400 {
        match b.publish(job, std::slice::from_ref(&event)).await {
            Ok(outcome) => return Ok(outcome.last_event_id),
            Err(e) if e.is_retryable() => tokio::time::sleep(Duration::from_millis(50)).await,
            Err(e) => return Err(e.into()),
        }
    }
    bail!("publish {i} never went through")
}

/// The `current` of every progress event in the log, and its ids.
async fn log(b: &RedisBackend, job: &JobId) -> Result<(Vec<u64>, Vec<u64>)> {
    let events = match b.events_after(job, EventId::ZERO, None, 1000).await? {
        EventsAfter::Events(events) => events,
        other => bail!("{other:?}"),
    };
    let ids = events.iter().map(|e| e.id.0).collect();
    let mut currents = Vec::new();
    for e in &events {
        let event = e.parse()?;
        if let Some(current) = event.data.get("current") {
            currents.push(current.as_u64().context("current")?);
        }
    }
    Ok((ids, currents))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failover_is_followed_without_a_restart_and_the_log_stays_exact() -> Result<()> {
    let mut set = tokio::task::block_in_place(SentinelSet::start)?;
    let b = RedisBackend::connect(config(set.url())).await?;
    let job = b
        .create_job(NewJob::new("demo", json!({}), "alice"))
        .await?;
    b.publish(&job.id, &[NewEvent::new(EventType::JobStarted, json!({}))])
        .await?;
    for i in 1..=50 {
        publish_fenced(&b, &job.id, i).await?;
    }
    // Replication is asynchronous: wait until the replica has everything,
    // so that this test is about following the failover, not about loss
    // (the data-loss tests cover a promoted replica that lags).
    tokio::task::block_in_place(|| set.wait_replicated())?;

    let old = tokio::task::block_in_place(|| set.kill_master())?;
    let new = tokio::task::block_in_place(|| set.wait_failover(old))?;
    ensure!(new != old);
    for i in 51..=100 {
        publish_fenced(&b, &job.id, i).await?;
    }
    let after = b.job(&job.id).await?;
    ensure!(
        after.epoch != job.epoch,
        "the epoch survived a failover to another history"
    );

    // The old master comes back; the sentinels make it a replica of the
    // new one. The backend stays with the new master.
    tokio::task::block_in_place(|| set.restart(old))?;
    for i in 101..=120 {
        publish_fenced(&b, &job.id, i).await?;
    }
    let (ids, currents) = log(&b, &job.id).await?;
    // job_queued, job_started, then the 120 progress events.
    ensure!(ids == (1..=122).collect::<Vec<_>>(), "log ids {ids:?}");
    ensure!(
        currents == (1..=120).collect::<Vec<_>>(),
        "payloads {currents:?}"
    );
    Ok(())
}

#[tokio::test]
async fn bad_sentinel_urls_and_absent_sentinels_are_clear_errors() -> Result<()> {
    for bad in ["redis+sentinel://127.0.0.1:1", "redis+sentinel://h:x/m"] {
        match RedisBackend::connect(RedisConfig::new(bad)).await {
            Err(e @ ConnectError::Sentinel { .. }) => {
                ensure!(e.to_string().contains("redis+sentinel://"), "{e}")
            }
            other => bail!("{bad} accepted: {other:?}"),
        }
    }
    let port = jobwire_testkit::free_port()?;
    let url = format!("redis+sentinel://:secret@127.0.0.1:{port}/jobwire");
    match RedisBackend::connect(RedisConfig::new(url)).await {
        Err(e @ ConnectError::Unreachable { .. }) => {
            let message = e.to_string();
            ensure!(message.contains(&port.to_string()), "{message}");
            ensure!(
                !message.contains("secret"),
                "the password was shown: {message}"
            );
        }
        other => bail!("absent sentinels accepted: {other:?}"),
    }
    Ok(())
}

/// `JOBWIRE_REDIS_WAIT_REPLICAS=1`: a publish is acknowledged once the
/// replica has it (it then survives a failover); with the replica stopped
/// it is refused as unavailable (not lost silently), and a retry with the
/// same fence once the replica is back is applied once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_replicas_acknowledges_only_what_a_replica_has() -> Result<()> {
    let set = tokio::task::block_in_place(SentinelSet::start)?;
    let b = RedisBackend::connect(RedisConfig {
        wait_replicas: 1,
        ..config(set.url())
    })
    .await?;
    let job = b
        .create_job(NewJob::new("demo", json!({}), "alice"))
        .await?;
    b.publish(&job.id, &[NewEvent::new(EventType::JobStarted, json!({}))])
        .await?;
    let first = publish_fenced(&b, &job.id, 1).await?;
    ensure!(first == EventId(3), "{first:?}");

    let master = set.master_port()?;
    let replica = set
        .servers
        .iter()
        .find(|s| s.port() != master)
        .context("the replica")?;
    replica.signal("STOP")?;
    let event = NewEvent::new(EventType::Progress, json!({"current": 2})).fenced(1, 2);
    let refused = b.publish(&job.id, std::slice::from_ref(&event)).await;
    replica.signal("CONT")?;
    match refused {
        Err(e) => ensure!(
            e.is_retryable() && e.to_string().contains("replicas confirmed"),
            "{e}"
        ),
        Ok(outcome) => bail!("acknowledged without the replica: {outcome:?}"),
    }
    // The write itself happened; the same fenced event again is not
    // applied twice.
    publish_fenced(&b, &job.id, 2).await?;
    let (ids, currents) = log(&b, &job.id).await?;
    ensure!(ids == [1, 2, 3, 4], "ids {ids:?}");
    ensure!(currents == [1, 2], "payloads {currents:?}");
    Ok(())
}
