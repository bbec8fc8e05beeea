//! `RedisBackend` on a real Redis Cluster that the test kit starts on free
//! ports: the whole conformance suite (three masters), then what only a
//! cluster has: partitions spread over the masters, a master killed under
//! load, and a partition's slot moved to another master while in use.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use async_trait::async_trait;
use jobwire_core::testsuite::{BackendFactory, TestBackend};
use jobwire_core::{
    BackendConfig, EventId, EventType, EventsAfter, JobId, JobQueue, JobStore, ListQuery,
    LiveBatch, LiveFeed, NewEvent, NewJob, TailFrom,
};
use jobwire_redis::{partition_tag, slot_of, RedisBackend, RedisConfig};
use jobwire_testkit::cluster::RedisCluster;
use serde_json::json;

struct Cluster;

#[async_trait]
impl BackendFactory for Cluster {
    async fn create(&self, config: BackendConfig) -> anyhow::Result<TestBackend> {
        let cluster = RedisCluster::start_masters_only()?;
        let backend = RedisBackend::connect(RedisConfig {
            backend: config,
            ..RedisConfig::new(cluster.url())
        })
        .await?;
        Ok(TestBackend {
            backend: Arc::new(backend),
            guard: Box::new(cluster),
        })
    }
}

jobwire_core::backend_conformance_tests!(Cluster);

fn config(cluster: &RedisCluster) -> RedisConfig {
    RedisConfig::new(cluster.url())
}

/// The slot of partition `p`'s keys.
fn partition_slot(p: u16) -> u16 {
    slot_of(&format!("jobwire:{{{}}}:live", partition_tag(p, 16)))
}

#[tokio::test]
async fn the_default_partitions_spread_evenly_over_three_masters() -> Result<()> {
    let cluster = RedisCluster::start_masters_only()?;
    let _backend = RedisBackend::connect(config(&cluster)).await?;
    let mut per_master = std::collections::BTreeMap::<u16, usize>::new();
    for p in 0..16 {
        *per_master
            .entry(cluster.master_of(partition_slot(p))?)
            .or_default() += 1;
    }
    let counts: Vec<usize> = per_master.values().copied().collect();
    ensure!(counts.len() == 3, "{per_master:?}");
    ensure!(
        counts
            .iter()
            .max()
            .zip(counts.iter().min())
            .is_some_and(|(a, b)| a - b <= 1),
        "{per_master:?}"
    );
    Ok(())
}

/// One URL of one node is enough: jobwire finds the rest of the cluster.
#[tokio::test]
async fn one_node_url_finds_its_cluster() -> Result<()> {
    let cluster = RedisCluster::start_masters_only()?;
    let first = cluster
        .url()
        .split(',')
        .next()
        .context("a node")?
        .to_owned();
    let backend = RedisBackend::connect(RedisConfig::new(first)).await?;
    // Jobs in every partition: on one node alone most would get MOVED.
    for _ in 0..32 {
        let job = backend
            .create_job(NewJob::new("demo", json!({}), "alice"))
            .await?;
        backend
            .publish(&job.id, &[NewEvent::new(EventType::JobStarted, json!({}))])
            .await?;
    }
    let page = backend
        .list_jobs(&ListQuery {
            limit: 100,
            ..ListQuery::default()
        })
        .await?;
    ensure!(page.jobs.len() == 32, "listed {}", page.jobs.len());
    Ok(())
}

/// Creates `n` running jobs (in any partitions).
async fn running_jobs(backend: &RedisBackend, n: usize) -> Result<Vec<JobId>> {
    let mut jobs = Vec::new();
    for _ in 0..n {
        jobs.push(start(backend, NewJob::new("demo", json!({}), "alice")).await?);
    }
    Ok(jobs)
}

async fn start(backend: &RedisBackend, new: NewJob) -> Result<JobId> {
    let job = backend.create_job(new).await?;
    backend
        .publish(&job.id, &[NewEvent::new(EventType::JobStarted, json!({}))])
        .await?;
    Ok(job.id)
}

/// Publishes `rounds` progress events to each job, one at a time; returns
/// how many were acknowledged per job.
async fn publish_rounds(backend: &RedisBackend, jobs: &[JobId], rounds: usize) -> Vec<u64> {
    let mut acked = vec![0; jobs.len()];
    for round in 0..rounds {
        for (i, job) in jobs.iter().enumerate() {
            let event = NewEvent::new(EventType::Progress, json!({"current": round}));
            if backend.publish(job, &[event]).await.is_ok() {
                acked[i] += 1;
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    acked
}

/// Every job's log holds ids 1, 2, 3 … with no hole, and its state agrees
/// with the log's last id.
async fn logs_are_whole(backend: &RedisBackend, jobs: &[JobId]) -> Result<()> {
    for job in jobs {
        let state = backend.job(job).await?;
        let EventsAfter::Events(events) =
            backend.events_after(job, EventId(0), None, 10_000).await?
        else {
            anyhow::bail!("job {job}: its log cannot be read from the start");
        };
        for (i, event) in events.iter().enumerate() {
            ensure!(
                event.id.0 == i as u64 + 1,
                "job {job}: a hole before event {}",
                event.id
            );
        }
        ensure!(
            events.last().map(|e| e.id) == Some(state.last_event_id),
            "job {job}: state at {} but log at {:?}",
            state.last_event_id,
            events.last().map(|e| e.id)
        );
    }
    Ok(())
}

/// Kills the master of one partition while jobs are published to; its
/// replica takes over, and the same backend (no restart) carries on: new
/// publishes succeed, logs stay whole, and the live tail reports the new
/// history (a gap, so watchers re-read) and then delivers again.
#[tokio::test]
async fn a_master_killed_under_load_fails_over_without_a_restart() -> Result<()> {
    let mut cluster = RedisCluster::start()?;
    let backend = RedisBackend::connect(config(&cluster)).await?;
    let jobs = running_jobs(&backend, 16).await?;
    let mut tail = backend.tail(TailFrom::Now).await?;
    publish_rounds(&backend, &jobs, 5).await;

    let slot = partition_slot(jobs[0].partition(16));
    let old = cluster.kill_master_of(slot)?;
    let load = {
        let backend = backend.clone();
        let jobs = jobs.clone();
        tokio::spawn(async move { publish_rounds(&backend, &jobs, 200).await })
    };
    let new = tokio::task::spawn_blocking(move || {
        let new = cluster.wait_failover(old, slot);
        (cluster, new)
    })
    .await?;
    let (cluster, new) = new;
    let new = new?;
    ensure!(new != old);
    load.await?;

    // After the failover, publishing to the moved partition works again.
    let after = publish_rounds(&backend, &jobs, 3).await;
    ensure!(
        after.iter().all(|&n| n == 3),
        "publishes after the failover: {after:?}"
    );
    logs_are_whole(&backend, &jobs).await?;

    // The tail saw the new history (a gap) and delivers again.
    let mut gap = false;
    let mut delivered_after = false;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while tokio::time::Instant::now() < deadline && !(gap && delivered_after) {
        match tokio::time::timeout(Duration::from_secs(2), tail.next()).await {
            Ok(Ok(LiveBatch::Gap)) => gap = true,
            Ok(Ok(LiveBatch::Events(events))) if gap && !events.is_empty() => {
                delivered_after = true
            }
            Ok(Ok(LiveBatch::Events(_) | LiveBatch::Deleted(_))) | Err(_) => {
                publish_rounds(&backend, &jobs, 1).await;
            }
            Ok(Err(e)) => anyhow::bail!("the cluster tail failed: {e}"),
        }
    }
    ensure!(
        gap,
        "the tail did not report the failed-over partition's new history"
    );
    ensure!(
        delivered_after,
        "the tail delivered nothing after the failover"
    );
    drop(cluster);
    Ok(())
}

/// Moves a partition's slot to another master (a resharding) while its
/// jobs are published to and claimed: nothing fails for good, logs stay
/// whole, and the queue entries moved with the slot are still claimed.
#[tokio::test]
async fn a_slot_moved_to_another_master_keeps_working() -> Result<()> {
    let cluster = RedisCluster::start_masters_only()?;
    let backend = RedisBackend::connect(config(&cluster)).await?;
    // Jobs of one partition, queued (not claimed) and published to.
    let first = start(&backend, NewJob::new("demo", json!({}), "alice")).await?;
    let p = first.partition(16);
    let slot = partition_slot(p);
    let mut jobs = vec![first];
    while jobs.len() < 5 {
        let id = JobId::generate();
        if id.partition(16) == p {
            let mut new = NewJob::new("demo", json!({}), "alice");
            new.id = id;
            jobs.push(start(&backend, new).await?);
        }
    }
    publish_rounds(&backend, &jobs, 3).await;
    let mut tail = backend.tail(TailFrom::Now).await?;

    let to = cluster.another_master(cluster.master_of(slot)?)?;
    let moved = tokio::task::spawn_blocking(move || {
        let moved = cluster.move_slot(slot, to);
        (cluster, moved)
    });
    let during = publish_rounds(&backend, &jobs, 20).await;
    let (cluster, moved) = moved.await?;
    moved?;
    ensure!(cluster.master_of(slot)? == to);

    let after = publish_rounds(&backend, &jobs, 3).await;
    ensure!(
        after.iter().all(|&n| n == 3),
        "publishes after the move: {after:?} (during: {during:?})"
    );
    logs_are_whole(&backend, &jobs).await?;

    // The tail follows the slot to its new master.
    let mut seen = false;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while tokio::time::Instant::now() < deadline && !seen {
        publish_rounds(&backend, &jobs, 1).await;
        if let Ok(Ok(LiveBatch::Events(events))) =
            tokio::time::timeout(Duration::from_secs(2), tail.next()).await
        {
            seen = events.iter().any(|e| jobs.contains(&e.job_id));
        }
    }
    ensure!(seen, "the tail delivered nothing of the moved partition");

    // Every job that was queued in the moved partition is still claimed
    // once (plus the ones of other partitions created on the way).
    let mut claimed = std::collections::HashSet::new();
    loop {
        let claims = backend
            .claim("w", &["demo".to_owned()], 10, Duration::from_millis(200))
            .await?;
        if claims.is_empty() {
            break;
        }
        for claim in claims {
            ensure!(
                claimed.insert(claim.job_id.clone()),
                "{} claimed twice",
                claim.job_id
            );
            backend.ack(&claim.entry).await?;
        }
    }
    for job in &jobs {
        ensure!(
            claimed.contains(job),
            "job {job} of the moved slot was never claimed"
        );
    }
    Ok(())
}

/// `rediss://` node URLs: a cluster speaking TLS only (clients, bus and
/// replication), with a private CA and client certificates.
#[tokio::test]
async fn a_tls_cluster_works_with_a_private_ca_and_client_certificates() -> Result<()> {
    let cluster = RedisCluster::start_tls()?;
    let certs = cluster.test_certs().context("certificates")?;
    let backend = RedisBackend::connect(RedisConfig {
        tls: jobwire_redis::TlsFiles {
            ca_cert: Some(certs.ca_cert.clone()),
            client_cert: Some(certs.client_cert.clone()),
            client_key: Some(certs.client_key.clone()),
        },
        ..RedisConfig::new(cluster.tls_url())
    })
    .await?;
    let mut tail = backend.tail(TailFrom::Now).await?;
    let jobs = running_jobs(&backend, 8).await?;
    publish_rounds(&backend, &jobs, 2).await;
    logs_are_whole(&backend, &jobs).await?;
    // Every job's events come through the per-partition readers (TLS too).
    let mut seen = std::collections::HashSet::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while seen.len() < jobs.len() && tokio::time::Instant::now() < deadline {
        if let Ok(Ok(LiveBatch::Events(events))) =
            tokio::time::timeout(Duration::from_secs(2), tail.next()).await
        {
            seen.extend(events.into_iter().map(|e| e.job_id));
        }
    }
    ensure!(
        seen.len() == jobs.len(),
        "live events of {} of {} jobs",
        seen.len(),
        jobs.len()
    );
    let claims = backend
        .claim("w", &["demo".to_owned()], 100, Duration::from_millis(200))
        .await?;
    ensure!(claims.len() == jobs.len(), "claimed {}", claims.len());
    Ok(())
}
