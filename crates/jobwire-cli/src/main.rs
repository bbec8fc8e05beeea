//! The `jobwire` command (SPEC §1). A thin edge: parse flags (each with an
//! environment twin), set up logging, and call into the library crates.
//!
//! Exit codes: 0 success, 1 runtime failure, 2 usage or configuration error.
//! Errors are one clear line on stderr.

mod config;
mod serve;
mod telemetry;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

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
    /// Everything in one process for local use: the API server, in memory
    /// unless REDIS_URL is set. Prints the URLs and a ready dev token.
    Dev(config::DevArgs),
    /// The API server: REST, WebSocket, SSE, /metrics, /healthz, /readyz.
    Serve(config::ServeArgs),
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
    let cli = Cli::parse();
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
