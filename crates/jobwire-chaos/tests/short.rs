//! The `short` schedule as a CI test: real gateways, workers and Redis, a
//! fixed seed, every fault kind once (a rollback among them), in well under
//! two minutes of a debug build. It asserts that the checker found nothing,
//! and that the run really did something: every fault kind of the schedule
//! was injected without error, events reached every kind of client, and
//! clients reconnected and resynced.
//!
//! The `jobwire` binary must be built (`cargo build -p jobwire-cli`, or a
//! workspace build/test run); its absence is a failure, not a skip.

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use jobwire_chaos::faults::{FaultKind, Schedule};
use jobwire_chaos::{find_jobwire, run, Config};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_schedule_finds_no_violation() -> Result<()> {
    let config = Config {
        seed: 7,
        schedule: Schedule::Short,
        duration: Duration::from_secs(50),
        jobwire: find_jobwire()?,
        gateways: 3,
        workers: 2,
        jobs: None,
        log_dir: None,
    };
    // The run bounds each of its own waits; this is the backstop.
    let report = tokio::time::timeout(Duration::from_secs(170), run(config))
        .await
        .context("the short schedule did not finish within 170 s")??;
    println!("{}", report.text());

    ensure!(
        report.violation_count == 0,
        "violations found:\n{}",
        report.text()
    );
    for kind in FaultKind::ALL {
        ensure!(
            report.faults.get(kind.name()).copied().unwrap_or(0) >= 1,
            "fault {} was not injected:\n{}",
            kind.name(),
            report.text()
        );
    }
    ensure!(report.jobs.submitted >= 20, "{}", report.text());
    for kind in ["rust", "mux", "slow", "single", "sse"] {
        ensure!(
            report.events.get(kind).copied().unwrap_or(0) > 100,
            "{kind} clients got too few events:\n{}",
            report.text()
        );
    }
    ensure!(
        report.reconnects > 0 && report.resyncs > 0,
        "{}",
        report.text()
    );
    // Jobs created after the wipe survive to be checked against their logs.
    ensure!(
        report.jobs.completed + report.jobs.failed > 0,
        "{}",
        report.text()
    );
    Ok(())
}
