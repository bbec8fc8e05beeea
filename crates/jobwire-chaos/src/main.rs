//! `jobwire-chaos`: runs a fault schedule against real jobwire processes
//! and checks every client's stream (see the library docs and
//! docs/reliability.md). Prints the report; `--json PATH` also writes it as
//! JSON. Exits 1 when any violation was found (or the run failed).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Parser;
use jobwire_chaos::faults::Schedule;
use jobwire_chaos::{find_jobwire, run, Config};

#[derive(Debug, Parser)]
#[command(name = "jobwire-chaos", about = "jobwire's chaos suite", version)]
struct Args {
    /// Which faults to inject.
    #[arg(long, value_enum, default_value = "short")]
    schedule: Schedule,
    /// Seconds of load and faults (default: 60 for `short`, 600 otherwise).
    #[arg(long)]
    duration: Option<u64>,
    /// Seed of every random choice (faults, jobs, clients).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// The `jobwire` binary (default: the one next to this binary).
    #[arg(long)]
    jobwire: Option<PathBuf>,
    #[arg(long, default_value_t = 3)]
    gateways: usize,
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// Jobs to submit (default: one every 2 s of the duration).
    #[arg(long)]
    jobs: Option<usize>,
    /// Also write the report as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Where the processes' logs go (default: a new temporary directory).
    #[arg(long)]
    log_dir: Option<PathBuf>,
}

fn main() -> ExitCode {
    match start() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("jobwire-chaos: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// `Ok(true)` when the run found no violation.
fn start() -> Result<bool> {
    let args = Args::parse();
    let jobwire = match args.jobwire {
        Some(path) => path,
        None => find_jobwire()?,
    };
    let duration = args.duration.unwrap_or(match args.schedule {
        Schedule::Short => 60,
        _ => 600,
    });
    let config = Config {
        seed: args.seed,
        schedule: args.schedule,
        duration: Duration::from_secs(duration),
        jobwire,
        gateways: args.gateways,
        workers: args.workers,
        jobs: args.jobs,
        log_dir: args.log_dir,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    let report = runtime.block_on(run(config))?;
    print!("{}", report.text());
    if let Some(path) = args.json {
        let json = serde_json::to_string_pretty(&report)?;
        std::fs::write(&path, json).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(report.violation_count == 0)
}
