//! The benchmark's subscribers: one job each, over a WebSocket or SSE, as
//! cheap as a correct client can be (the load generator shares the machine
//! with the servers it measures). Each checks that ids stay consecutive and
//! records the publish-to-receive latency from the `t_us` stamp in the
//! event's data.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use futures_util::StreamExt;
use jobwire_core::{Control, ServerMessage};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use crate::measure::{now_us, Recorder};

/// How a subscriber is connected.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Transport {
    Ws,
    Sse,
}

/// Whom a subscriber watches, and where.
#[derive(Clone, Debug)]
pub(crate) struct Target {
    /// `127.0.0.1:port` of the gateway.
    pub(crate) addr: String,
    pub(crate) job: String,
    pub(crate) transport: Transport,
}

/// A connected subscriber, past its first message.
pub(crate) struct Subscriber {
    target: Target,
    feed: Feed,
    /// The id of the last event seen (or of the first message).
    last: u64,
    epoch: String,
}

/// What one subscriber saw, besides what it added to the [`Recorder`].
#[derive(Default)]
pub(crate) struct Seen {
    /// The close code, if the server closed this subscriber.
    pub(crate) closed: Option<u16>,
    /// After a resume storm: from dropping the socket to the first event
    /// published after the reconnect (ids are consecutive, so everything
    /// before it had arrived).
    pub(crate) caught_up: Option<Duration>,
    /// The reconnect was not answered with `resumed`.
    pub(crate) not_resumed: bool,
}

pub(crate) type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

enum Feed {
    Ws(Box<Ws>),
    Sse(SseFeed),
    /// Between dropping a connection and its replacement.
    Closed,
}

enum Incoming {
    Text(String),
    Closed(Option<u16>),
}

impl Subscriber {
    /// Connects and reads the first message (`current_state`).
    pub(crate) async fn open(target: Target, token: &str) -> Result<Subscriber> {
        let (feed, first) = connect(&target, token, None).await?;
        let Control::CurrentState { id, epoch, .. } = first else {
            bail!("a fresh subscribe was answered with {first:?}");
        };
        let (last, epoch) = (id.0, epoch.as_str().to_owned());
        Ok(Subscriber {
            target,
            feed,
            last,
            epoch,
        })
    }

    /// Reads until `stop`; on `storm` (once), drops the connection and
    /// resumes from the last id seen. `who` picks the recorder's shard.
    pub(crate) async fn run(
        mut self,
        who: usize,
        token: String,
        recorder: Arc<Recorder>,
        stop: CancellationToken,
        storm: CancellationToken,
    ) -> Seen {
        let mut seen = Seen::default();
        let mut dropped_at: Option<(Instant, u64)> = None;
        let mut stormed = false;
        // Made once: a fresh `cancelled()` per message registers with (and
        // leaves) the token's waiter list every time.
        let stop = stop.cancelled();
        let storm = storm.cancelled();
        tokio::pin!(stop, storm);
        loop {
            let incoming = tokio::select! {
                () = &mut stop => break,
                () = &mut storm, if !stormed => {
                    stormed = true;
                    dropped_at = Some((Instant::now(), now_us()));
                    // Really gone before the reconnect, as after a crash.
                    self.feed = Feed::Closed;
                    let resume = (self.last, self.epoch.clone());
                    match connect(&self.target, &token, Some(resume)).await {
                        Ok((feed, first)) => {
                            self.feed = feed;
                            seen.not_resumed = !matches!(first, Control::Resumed { .. });
                            continue;
                        }
                        Err(_) => {
                            seen.not_resumed = true;
                            break;
                        }
                    }
                }
                incoming = self.feed.next() => incoming,
            };
            let text = match incoming {
                Some(Incoming::Text(text)) => text,
                Some(Incoming::Closed(code)) => {
                    seen.closed = code;
                    break;
                }
                None => break,
            };
            // Only the two fields needed; control messages have no `data`.
            let Ok(event) = serde_json::from_str::<Probe>(&text) else {
                continue;
            };
            recorder.event(who, event.id, self.last, event.data.t_us);
            self.last = self.last.max(event.id);
            if let (Some((at, at_us)), None, Some(t)) =
                (dropped_at, seen.caught_up, event.data.t_us)
            {
                if t > at_us {
                    seen.caught_up = Some(at.elapsed());
                }
            }
        }
        seen
    }
}

/// The fields of an event the subscribers (and the baseline's readers)
/// read: its id and publish stamp.
#[derive(serde::Deserialize)]
pub(crate) struct Probe {
    pub(crate) id: u64,
    pub(crate) data: ProbeData,
}

#[derive(serde::Deserialize)]
pub(crate) struct ProbeData {
    pub(crate) t_us: Option<u64>,
}

/// Connects (resuming after `(id, epoch)` when given) and returns the feed
/// with its first message.
async fn connect(
    target: &Target,
    token: &str,
    resume: Option<(u64, String)>,
) -> Result<(Feed, Control)> {
    let mut feed = match target.transport {
        Transport::Ws => {
            let mut url = format!("ws://{}/ws/jobs/{}", target.addr, target.job);
            if let Some((since, epoch)) = &resume {
                url.push_str(&format!("?since={since}&epoch={epoch}"));
            }
            Feed::Ws(Box::new(open_ws(&url, token).await?))
        }
        Transport::Sse => Feed::Sse(SseFeed::open(target, token, resume).await?),
    };
    let first = match tokio::time::timeout(Duration::from_secs(10), feed.next()).await {
        Ok(Some(Incoming::Text(text))) => match ServerMessage::parse(&text)? {
            ServerMessage::Control(first) => first,
            other => bail!("a subscribe was answered with {other:?}"),
        },
        other => bail!("subscriber got no first message: {}", other.is_ok()),
    };
    Ok((feed, first))
}

/// Opens a WebSocket with the bench token.
pub(crate) async fn open_ws(url: &str, token: &str) -> Result<Ws> {
    let mut request = url.into_client_request()?;
    request
        .headers_mut()
        .insert("authorization", format!("Bearer {token}").parse()?);
    // tungstenite zero-fills its whole read buffer (128 KiB by default) on
    // every read: that was a fifth of this process's CPU. Events are small.
    let config = WebSocketConfig::default().read_buffer_size(4096);
    let (ws, _) = tokio_tungstenite::connect_async_with_config(request, Some(config), true).await?;
    Ok(ws)
}

impl Feed {
    async fn next(&mut self) -> Option<Incoming> {
        match self {
            Feed::Ws(ws) => loop {
                match ws.next().await? {
                    Ok(Message::Text(text)) => return Some(Incoming::Text(text.to_string())),
                    Ok(Message::Close(frame)) => {
                        return Some(Incoming::Closed(frame.map(|f| u16::from(f.code))))
                    }
                    Ok(_) => {}
                    Err(_) => return None,
                }
            },
            Feed::Sse(sse) => sse.next().await.map(Incoming::Text),
            Feed::Closed => None,
        }
    }
}

/// An SSE stream read with reqwest, split into the `data` of each event.
struct SseFeed {
    body: futures_util::stream::BoxStream<'static, reqwest::Result<Vec<u8>>>,
    buffer: Vec<u8>,
}

impl SseFeed {
    async fn open(target: &Target, token: &str, resume: Option<(u64, String)>) -> Result<SseFeed> {
        let url = format!("http://{}/api/jobs/{}/stream", target.addr, target.job);
        let mut request = sse_client()?.get(url).bearer_auth(token);
        if let Some((id, epoch)) = resume {
            request = request.header("last-event-id", format!("{epoch}:{id}"));
        }
        let response = request.send().await?.error_for_status()?;
        Ok(SseFeed {
            body: response
                .bytes_stream()
                .map(|c| c.map(|c| c.to_vec()))
                .boxed(),
            buffer: Vec::new(),
        })
    }

    /// The data of the next event (comments and keep-alives skipped).
    async fn next(&mut self) -> Option<String> {
        loop {
            if let Some(end) = find(&self.buffer, b"\n\n") {
                let block: Vec<u8> = self.buffer.drain(..end + 2).collect();
                let text = String::from_utf8_lossy(&block);
                let data: Vec<&str> = text
                    .lines()
                    .filter_map(|l| l.strip_prefix("data:"))
                    .map(|d| d.strip_prefix(' ').unwrap_or(d))
                    .collect();
                if !data.is_empty() {
                    return Some(data.join("\n"));
                }
                continue;
            }
            let chunk = self.body.next().await?.ok()?;
            self.buffer.extend_from_slice(&chunk);
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// One HTTP client for every SSE subscriber: its own connection each
/// (a stream holds its connection), no pooling limits to hit.
fn sse_client() -> Result<reqwest::Client> {
    static CLIENT: std::sync::OnceLock<reqwest::Client> = std::sync::OnceLock::new();
    if let Some(client) = CLIENT.get() {
        return Ok(client.clone());
    }
    let client = reqwest::Client::builder().tcp_nodelay(true).build()?;
    Ok(CLIENT.get_or_init(|| client).clone())
}
