//! `jobwire serve` and `jobwire worker` on Redis behind Sentinel: the master
//! is killed mid-job, the sentinels promote the replica, and both processes
//! follow it without a restart. The job completes once, and a watcher's
//! stream stays exact: ids consecutive after each `current_state`, which
//! comes again (with `resync`) when the job goes on under a new epoch.

use std::time::Duration;

use anyhow::{ensure, Result};
use jobwire_testkit::jobs::create_demo;
use jobwire_testkit::sentinel::SentinelSet;
use serde_json::json;

use crate::{completed_once, follow, redis_backend, watch, Jobwire};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sentinel_failover_mid_job_is_followed_by_gateway_worker_and_watcher() -> Result<()> {
    let mut set = tokio::task::block_in_place(SentinelSet::start)?;
    let url = set.url();
    let gateway = Jobwire::start(&["serve"], &[("REDIS_URL", url.clone())])?;
    gateway
        .wait_for("/readyz", 200, Duration::from_secs(20))
        .await?;
    let _worker = Jobwire::start(
        &["worker"],
        &[
            ("REDIS_URL", url.clone()),
            ("JOBWIRE_WORKER_NAME", "w".to_owned()),
        ],
    )?;
    let backend = redis_backend(&url).await?;
    let job = create_demo(backend.as_ref(), json!({"steps": 80, "delay_ms": 100})).await?;
    let mut ws = watch(gateway.port, &format!("/ws/jobs/{}", job.id)).await?;
    let mut killed = false;
    let resyncs = follow(&mut ws, |kind, id| {
        if kind == "progress" && id >= 20 && !killed {
            killed = true;
            tokio::task::block_in_place(|| -> Result<()> {
                let old = set.kill_master()?;
                set.wait_failover(old)?;
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
    completed_once(backend.as_ref(), &job.id).await
}
