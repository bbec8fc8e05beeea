//! `jobwire serve` and `jobwire worker` on a Redis Cluster started by the
//! test kit:
//! - two gateways and two workers run jobs while a slot holding one of
//!   them is moved to another master: every watcher sees every event once,
//!   in order;
//! - on three masters and three replicas, the master that holds the job's
//!   partition is killed mid-job; its replica takes over and every process
//!   follows without a restart. The job completes once and the watcher's
//!   stream stays exact: ids consecutive after each `current_state`, which
//!   comes again (with `resync`) when the job goes on under a new epoch.

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use jobwire_core::JobId;
use jobwire_testkit::cluster::RedisCluster;
use jobwire_testkit::jobs::{create_demo, wait_progressing};
use serde_json::json;

use crate::{completed_once, follow, redis_backend, watch, Jobwire};

/// The slot of a job's partition (the process tests run 4 partitions).
fn slot_of(job: &JobId) -> u16 {
    jobwire_redis::slot_of(&format!(
        "jobwire:{{{}}}:live",
        jobwire_redis::partition_tag(job.partition(4), 4)
    ))
}

/// Starts `gateways` gateways and `workers` workers on `url`, ready.
async fn start(url: &str, gateways: usize, workers: usize) -> Result<Vec<Jobwire>> {
    let mut processes = Vec::new();
    for _ in 0..gateways {
        processes.push(Jobwire::start(
            &["serve"],
            &[("REDIS_URL", url.to_owned())],
        )?);
    }
    for g in &processes {
        g.wait_for("/readyz", 200, Duration::from_secs(20)).await?;
    }
    for i in 0..workers {
        processes.push(Jobwire::start(
            &["worker"],
            &[
                ("REDIS_URL", url.to_owned()),
                ("JOBWIRE_WORKER_NAME", format!("w{i}")),
            ],
        )?);
    }
    Ok(processes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateways_and_two_workers_stay_exact_through_a_slot_move() -> Result<()> {
    let cluster = tokio::task::block_in_place(RedisCluster::start_masters_only)?;
    let url = cluster.url();
    let processes = start(&url, 2, 2).await?;
    let gateways = [processes[0].port, processes[1].port];
    let backend = redis_backend(&url).await?;
    let mut jobs = Vec::new();
    for _ in 0..6 {
        jobs.push(
            create_demo(backend.as_ref(), json!({"steps": 40, "delay_ms": 50}))
                .await?
                .id,
        );
    }
    let mut watchers = Vec::new();
    for (i, job) in jobs.iter().enumerate() {
        let mut ws = watch(gateways[i % 2], &format!("/ws/jobs/{job}")).await?;
        watchers.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            let resyncs = follow(&mut ws, |_, id| {
                ids.push(id);
                Ok(())
            })
            .await?;
            anyhow::Ok((ids, resyncs))
        }));
    }
    // Move the slot of the first job's partition while it runs.
    wait_progressing(backend.as_ref(), &jobs[0]).await?;
    let slot = slot_of(&jobs[0]);
    let (cluster, moved) = tokio::task::spawn_blocking(move || {
        let moved = (|| -> Result<u16> {
            let to = cluster.another_master(cluster.master_of(slot)?)?;
            cluster.move_slot(slot, to)?;
            Ok(to)
        })();
        (cluster, moved)
    })
    .await?;
    let to = moved?;
    ensure!(cluster.master_of(slot)? == to);
    for (job, watcher) in jobs.iter().zip(watchers) {
        let (ids, _resyncs) = watcher.await??;
        let mut unique = ids.clone();
        unique.dedup();
        ensure!(unique == ids, "job {job}: an event came twice: {ids:?}");
        completed_once(backend.as_ref(), job).await?;
    }
    drop(processes);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_failover_mid_job_is_followed_by_gateways_worker_and_watcher() -> Result<()> {
    let cluster = tokio::task::block_in_place(RedisCluster::start)?;
    let url = cluster.url();
    let processes = start(&url, 2, 2).await?;
    let backend = redis_backend(&url).await?;
    let job = create_demo(backend.as_ref(), json!({"steps": 80, "delay_ms": 100})).await?;
    let slot = slot_of(&job.id);
    // Watched on the second gateway.
    let mut ws = watch(processes[1].port, &format!("/ws/jobs/{}", job.id)).await?;
    let mut cluster = Some(cluster);
    let mut killed = false;
    let resyncs = follow(&mut ws, |kind, id| {
        if kind == "progress" && id >= 20 && !killed {
            killed = true;
            let cluster = cluster.as_mut().context("the cluster")?;
            tokio::task::block_in_place(|| -> Result<()> {
                let old = cluster.kill_master_of(slot)?;
                cluster.wait_failover(old, slot)?;
                Ok(())
            })?;
        }
        Ok(())
    })
    .await?;
    ensure!(killed, "the master was never killed");
    // The promoted replica is another history: the job went on under a
    // new epoch, which the watcher learnt by a resync.
    ensure!(resyncs >= 1, "no resync after a failover");
    completed_once(backend.as_ref(), &job.id).await?;
    drop(processes);
    Ok(())
}
