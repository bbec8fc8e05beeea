//! The suite's clients, one module per kind, all recording into
//! [`crate::record`]: the Rust client ([`rust`]), multiplexed WebSockets
//! (normal and slow, [`mux`]), and one-job streams, WebSocket or SSE
//! ([`one`]). [`conn`] opens connections and splits SSE streams; [`Env`] is
//! what every client shares: the gateways, tokens, the run's clock and the
//! signals the fault injector sends them (storm, slow reading, stop).
//!
//! Raw clients reconnect to a random gateway after any drop, resuming from
//! the last (epoch, id) they hold, with a short jittered backoff (none after
//! a storm: that is the storm).

pub mod conn;
pub mod mux;
pub mod one;
pub mod rust;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use jobwire_core::{Control, Refusal, ServerMessage};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use jobwire_core::JobId;

use crate::record::{ClientKind, Clock, JobWatch};
use crate::tokens::Tokens;

/// How long a connection may stay silent before a client drops it. The
/// gateways ping every 25 s; a paused Redis keeps them alive but silent.
pub const SILENCE: Duration = Duration::from_secs(40);

/// What every client shares.
#[derive(Debug)]
pub struct Env {
    /// Gateways' base URLs (`http://127.0.0.1:PORT`).
    pub urls: Vec<String>,
    pub tokens: Arc<Tokens>,
    pub clock: Clock,
    /// The end of the run: every client returns its logs.
    pub stop: CancellationToken,
    /// Bumped for a storm: every raw connection drops and reconnects at once.
    pub storm: watch::Sender<u64>,
    /// While set, slow clients read one message a second.
    pub slow: AtomicBool,
    /// Watchers not yet ended (terminal or gone).
    pub live: Arc<AtomicUsize>,
    pub seed: u64,
}

impl Env {
    pub fn new(urls: Vec<String>, tokens: Arc<Tokens>, clock: Clock, seed: u64) -> Env {
        Env {
            urls,
            tokens,
            clock,
            stop: CancellationToken::new(),
            storm: watch::channel(0).0,
            slow: AtomicBool::new(false),
            live: Arc::new(AtomicUsize::new(0)),
            seed,
        }
    }

    /// A generator for one client, derived from the run's seed.
    pub fn rng(&self, salt: &str) -> StdRng {
        let mut h: u64 = self.seed ^ 0x9E37_79B9_7F4A_7C15;
        for b in salt.bytes() {
            h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01B3);
        }
        StdRng::seed_from_u64(h)
    }

    /// A random gateway's base URL.
    pub fn pick(&self, rng: &mut StdRng) -> &str {
        let i = rng.random_range(0..self.urls.len().max(1));
        self.urls.get(i).map(String::as_str).unwrap_or_default()
    }

    /// A watcher of `job` for client `client`, counted as live until it
    /// ends.
    pub fn watcher(&self, client: &str, kind: ClientKind, job: JobId) -> JobWatch {
        JobWatch::new(client, kind, job, self.clock, Arc::clone(&self.live))
    }

    pub fn live_watchers(&self) -> usize {
        self.live.load(Ordering::SeqCst)
    }

    pub fn slow_now(&self) -> bool {
        self.slow.load(Ordering::Relaxed)
    }
}

/// Reconnect waits: jittered, growing with consecutive failures, capped
/// low (the suite wants many reconnects, quickly).
#[derive(Debug, Default)]
pub struct Retry {
    failures: u32,
}

impl Retry {
    pub fn wait(&mut self, rng: &mut StdRng) -> Duration {
        self.failures = self.failures.saturating_add(1);
        let ceiling = 100u64 << self.failures.min(5);
        Duration::from_millis(rng.random_range(20..=ceiling.min(3000)))
    }

    pub fn reset(&mut self) {
        self.failures = 0;
    }
}

/// What to do after a message.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    Go,
    /// Drop the connection and resume elsewhere, for this reason.
    Reconnect(String),
}

/// Applies one server message to the watch of the job it is about.
/// `labelled` is the epoch of an SSE message's `id:` line.
pub fn apply(
    w: &mut JobWatch,
    message: ServerMessage,
    labelled: Option<jobwire_core::Epoch>,
) -> Step {
    match message {
        ServerMessage::Event(event) => {
            w.on_event(event, labelled);
            Step::Go
        }
        ServerMessage::Control(Control::CurrentState {
            id,
            epoch,
            data,
            resync,
            ..
        }) => {
            w.on_state(epoch, id, data.status, resync);
            Step::Go
        }
        ServerMessage::Control(Control::Resumed { id, epoch, .. }) => {
            w.on_resumed(epoch, id);
            Step::Go
        }
        ServerMessage::Control(Control::Gone { .. }) => {
            w.on_gone();
            Step::Go
        }
        ServerMessage::Control(Control::Refused { code, message, .. }) => match code {
            Refusal::NotFound => {
                w.on_gone();
                Step::Go
            }
            Refusal::Unauthorized => Step::Reconnect(format!("token refused: {message}")),
            Refusal::Unavailable => Step::Reconnect(format!("unavailable: {message}")),
            other => {
                w.anomaly(format!("refused {}: {message}", other.as_str()));
                Step::Reconnect(format!("refused {}", other.as_str()))
            }
        },
        ServerMessage::Control(
            Control::Pong | Control::Refreshed { .. } | Control::Unsubscribed { .. },
        )
        | ServerMessage::Unknown(_) => Step::Go,
    }
}
