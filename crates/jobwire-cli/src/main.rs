//! The `jobwire` command (docs/protocol.md). A thin edge: parse flags (each with an
//! environment twin), set up logging, and call into the library crates.
//!
//! Exit codes: 0 success, 1 runtime failure, 2 usage or configuration error.
//! Errors are one clear line on stderr.

mod config;
mod dev_secret;
mod jobs;
mod schedules;
mod serve;
mod store;
mod telemetry;
mod watch;
mod worker;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

/// The hot paths allocate many small strings and maps; mimalloc makes that
/// markedly cheaper than glibc's malloc (docs/benchmarks.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(
    name = "jobwire",
    version,
    about = "Background jobs with live, exactly-resumable progress over WebSocket and SSE",
    long_about = None
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Everything in one process for local use: the API server and workers,
    /// in memory unless REDIS_URL is set. Prints the URLs and a ready dev token.
    Dev(config::DevArgs),
    /// The API server: REST, WebSocket, SSE, /metrics, /healthz, /readyz.
    Serve(config::ServeArgs),
    /// A job worker: takes jobs from the Redis queue, runs them, publishes
    /// their progress. Run as many as you like.
    Worker(config::WorkerArgs),
    /// Create a job over the REST API; --watch follows it.
    Submit(config::SubmitArgs),
    /// Follow jobs live with progress bars; resumes across reconnects. Exits
    /// 0 when all completed, 1 if any failed or was cancelled.
    Watch(config::WatchArgs),
    /// List your jobs, newest first (an admin token lists everyone's; an OWNER column shows when they are several users').
    Jobs(config::JobsArgs),
    /// Cancel a job.
    Cancel(config::CancelArgs),
    /// The workers in the registry: live or gone, their queues and jobs
    /// (admin token).
    Workers(config::WorkersArgs),
    /// Retry failed jobs: a new attempt on the same job (admin token).
    Retry(config::RetryArgs),
    /// The queues at a glance; `pause` or `resume` one (admin token).
    Queues(config::QueuesArgs),
    /// Cron schedules: `add`, `ls`, `rm`, `pause`, `resume` (admin token).
    Schedule(config::ScheduleArgs),
    /// Mint a JWT with the configured secret (for development and scripts).
    Token(config::TokenArgs),
}

/// A failure and the exit code it calls for.
#[derive(Debug)]
pub(crate) enum Failure {
    /// Bad flags or configuration: exit 2.
    Usage(anyhow::Error),
    /// Anything at run time: exit 1.
    Runtime(anyhow::Error),
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Failure {
        Failure::Runtime(e)
    }
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return usage_error(e),
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("jobwire: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Dev(args) => serve::dev(args).await,
            Command::Serve(args) => serve::serve(args).await,
            Command::Worker(args) => worker::worker(args).await,
            Command::Submit(args) => jobs::submit(args).await,
            Command::Watch(args) => watch::watch(args).await,
            Command::Jobs(args) => jobs::jobs(args).await,
            Command::Cancel(args) => jobs::cancel(args).await,
            Command::Workers(args) => jobs::workers(args).await,
            Command::Queues(args) => jobs::queues(args).await,
            Command::Retry(args) => jobs::retry(args).await,
            Command::Schedule(args) => schedules::schedule(args).await,
            Command::Token(args) => config::token(args),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Usage(e)) => {
            eprintln!("jobwire: {e:#}");
            ExitCode::from(2)
        }
        Err(Failure::Runtime(e)) => {
            eprintln!("jobwire: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// A bad flag or environment value is one line naming the setting as the
/// user gave it (`JOBWIRE_BIND="x": …` or `--bind "x": …`), exit 2. Other
/// clap errors (help, version, missing arguments with their usage) are
/// printed as clap prints them.
fn usage_error(e: clap::Error) -> ExitCode {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    use clap::CommandFactory;
    if !matches!(
        e.kind(),
        ErrorKind::InvalidValue | ErrorKind::ValueValidation
    ) {
        e.exit();
    }
    let text = |kind| match e.get(kind) {
        Some(ContextValue::String(s)) => Some(s.clone()),
        _ => None,
    };
    let (Some(arg), Some(value)) = (
        text(ContextKind::InvalidArg),
        text(ContextKind::InvalidValue),
    ) else {
        e.exit();
    };
    let why = match (
        std::error::Error::source(&e),
        e.get(ContextKind::ValidValue),
    ) {
        (Some(cause), _) => cause.to_string(),
        (None, Some(ContextValue::Strings(valid))) => {
            format!("expected one of {}", valid.join(", "))
        }
        _ => "invalid value".to_owned(),
    };
    // `--bind <BIND>` → the `bind` argument of whichever command has it.
    let long = arg.split_whitespace().next().unwrap_or_default().to_owned();
    let mut command = Cli::command();
    command.build();
    let found = command
        .get_subcommands()
        .flat_map(|c| c.get_arguments())
        .find(|a| a.get_long().is_some_and(|l| format!("--{l}") == long))
        .map(|a| {
            (
                a.get_env().map(|v| v.to_string_lossy().into_owned()),
                a.is_hide_env_values_set(),
            )
        });
    let on_command_line = std::env::args().any(|a| a == long || a.starts_with(&format!("{long}=")));
    let shown = |secret: bool| {
        if secret {
            "(hidden)".to_owned()
        } else {
            format!("{value:?}")
        }
    };
    let setting = match found {
        Some((Some(env), secret)) if !on_command_line && std::env::var_os(&env).is_some() => {
            format!("{env}={}", shown(secret))
        }
        Some((_, secret)) => format!("{long} {}", shown(secret)),
        None => format!("{arg} {value:?}"),
    };
    eprintln!("jobwire: {setting}: {why}");
    ExitCode::from(2)
}

/// A token cancelled on SIGINT (Ctrl-C) or SIGTERM.
fn shutdown_on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let trigger = token.clone();
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        let term = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut s) => {
                    s.recv().await;
                }
                Err(_) => std::future::pending::<()>().await,
            }
        };
        #[cfg(not(unix))]
        let term = std::future::pending::<()>();
        tokio::select! {
            _ = ctrl_c => tracing::info!("interrupted: shutting down"),
            () = term => tracing::info!("terminated: shutting down"),
        }
        trigger.cancel();
    });
    token
}
