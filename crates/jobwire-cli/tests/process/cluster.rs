//! Two `jobwire serve` gateways and a `jobwire worker` on a Redis Cluster of
//! three masters and three replicas: the master that holds the job's
//! partition is killed mid-job, its replica takes over, and every process
//! follows without a restart. The job completes once, and a watcher on the
//! other gateway than the one the job was created through sees an exact
//! stream: ids consecutive after each `current_state`, which comes again
//! (with `resync`) when the job goes on under a new epoch.

use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use jobwire_core::JobStatus;
use jobwire_testkit::cluster::RedisCluster;
use jobwire_testkit::jobs::{create_demo, log, wait_for};
use serde_json::json;

use crate::{next, redis_backend, watch, Jobwire};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_failover_mid_job_is_followed_by_gateways_worker_and_watcher() -> Result<()> {
    let mut cluster = tokio::task::block_in_place(RedisCluster::start)?;
    let url = cluster.url();
    let first = Jobwire::start(&["serve"], &[("REDIS_URL", url.clone())])?;
    let gateway = Jobwire::start(&["serve"], &[("REDIS_URL", url.clone())])?;
    for g in [&first, &gateway] {
        g.wait_for("/readyz", 200, Duration::from_secs(20)).await?;
    }
    let _worker = Jobwire::start(
        &["worker"],
        &[
            ("REDIS_URL", url.clone()),
            ("JOBWIRE_WORKER_NAME", "w".to_owned()),
        ],
    )?;
    let backend = redis_backend(&url).await?;
    let job = create_demo(backend.as_ref(), json!({"steps": 80, "delay_ms": 100})).await?;
    let slot = jobwire_redis::slot_of(&format!(
        "jobwire:{{{}}}:live",
        jobwire_redis::partition_tag(job.id.partition(4), 4)
    ));
    let mut ws = watch(gateway.port, &format!("/ws/jobs/{}", job.id)).await?;

    // (id of the last message, whether a failover was triggered)
    let mut last: Option<u64> = None;
    let mut killed = false;
    let mut resyncs = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    loop {
        if tokio::time::Instant::now() > deadline {
            let state = backend.job(&job.id).await;
            bail!(
                "the job did not finish: watcher at {last:?} (killed {killed}, {resyncs} resyncs); job {state:?}"
            );
        }
        let message = match next(&mut ws).await {
            Ok(Ok(message)) => message,
            // A quiet stretch while the sentinels elect (heartbeats are
            // not text); anything else ends the socket, which must not
            // happen: a Redis failover is not the gateway's end.
            Err(_) => continue,
            Ok(Err(code)) => bail!("the gateway closed the socket: {code:?}"),
        };
        let id = message["id"].as_u64().context("a message without an id")?;
        match message["type"].as_str() {
            Some("current_state") => {
                if message["resync"] == json!(true) {
                    resyncs += 1;
                }
                last = Some(id);
                // A resync that came after the job's end carries it in its
                // state: nothing follows.
                if message["data"]["status"] == json!("completed") {
                    break;
                }
            }
            Some(kind) => {
                let expected = last.map(|l| l + 1);
                ensure!(
                    Some(id) == expected,
                    "{kind} {id} after {last:?}: not consecutive"
                );
                last = Some(id);
                if kind == "progress" && id >= 20 && !killed {
                    killed = true;
                    tokio::task::block_in_place(|| -> Result<()> {
                        let old = cluster.kill_master_of(slot)?;
                        cluster.wait_failover(old, slot)?;
                        Ok(())
                    })?;
                }
                if kind == "job_completed" {
                    break;
                }
                ensure!(
                    !matches!(kind, "job_failed" | "job_cancelled"),
                    "the job ended {kind}: {message}"
                );
            }
            None => bail!("a message without a type: {message}"),
        }
    }
    ensure!(killed, "the master was never killed");
    // The promoted replica is another history: the job went on under a
    // new epoch, which the watcher learnt by a resync.
    drop(first);
    ensure!(resyncs >= 1, "no resync after a failover");
    let state = wait_for(backend.as_ref(), &job.id, Duration::from_secs(10), |s| {
        s.status.is_terminal()
    })
    .await?;
    ensure!(state.status == JobStatus::Completed, "{state:?}");
    let events = log(backend.as_ref(), &job.id).await?;
    let completed = events
        .iter()
        .filter(|e| e.kind == jobwire_core::EventType::JobCompleted)
        .count();
    ensure!(completed == 1, "completed {completed} times");
    Ok(())
}
