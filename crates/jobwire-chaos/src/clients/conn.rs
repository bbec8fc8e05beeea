//! Opening connections to a gateway: WebSockets (optionally with a tiny
//! receive buffer, for slow clients) and SSE streams, read as a sequence of
//! [`Incoming`] messages.

use std::time::Duration;

use futures_util::StreamExt;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::MaybeTlsStream;

pub type Ws = tokio_tungstenite::WebSocketStream<MaybeTlsStream<tokio::net::TcpStream>>;

/// How long opening a connection may take.
const OPEN_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a connection could not be opened.
#[derive(Debug)]
pub enum OpenError {
    /// 401: the token was refused.
    Unauthorized,
    /// 404: no such job.
    NotFound,
    Other(String),
}

/// One message from a connection.
#[derive(Debug)]
pub enum Incoming {
    /// A text frame, or an SSE message's `data` with its `id:` line.
    Text { data: String, id: Option<String> },
    /// The connection ended: the close code if the server sent one.
    Closed { code: Option<u16>, reason: String },
    /// A ping or an SSE comment: the connection is alive, nothing to apply.
    KeepAlive,
}

impl Incoming {
    /// The connection ended without a close code (an error, or the end of
    /// the stream).
    fn lost(reason: impl Into<String>) -> Incoming {
        Incoming::Closed {
            code: None,
            reason: reason.into(),
        }
    }
}

/// `ws://…` for an `http://…` base URL.
pub fn ws_base(base: &str) -> String {
    base.replacen("http://", "ws://", 1)
}

/// Opens a WebSocket. With `small_buffer`, the socket's receive buffer is
/// a few KiB, so that a client that stops reading backs the gateway up
/// quickly (the kernel would otherwise absorb megabytes).
///
/// # Errors
/// As [`OpenError`].
pub async fn open_ws(url: &str, token: &str, small_buffer: bool) -> Result<Ws, OpenError> {
    let opening = async {
        let mut request = url
            .into_client_request()
            .map_err(|e| OpenError::Other(e.to_string()))?;
        let bearer = format!("Bearer {token}")
            .parse()
            .map_err(|_| OpenError::Other("bad token header".to_owned()))?;
        request.headers_mut().insert("authorization", bearer);
        let config = WebSocketConfig::default().read_buffer_size(4096);
        let host = request
            .uri()
            .authority()
            .map(|a| a.as_str().to_owned())
            .ok_or_else(|| OpenError::Other("no host in the URL".to_owned()))?;
        let addr: std::net::SocketAddr = host
            .parse()
            .map_err(|_| OpenError::Other(format!("not an address: {host}")))?;
        let socket =
            tokio::net::TcpSocket::new_v4().map_err(|e| OpenError::Other(e.to_string()))?;
        if small_buffer {
            socket
                .set_recv_buffer_size(4096)
                .map_err(|e| OpenError::Other(e.to_string()))?;
        }
        let stream = socket
            .connect(addr)
            .await
            .map_err(|e| OpenError::Other(e.to_string()))?;
        let _ = stream.set_nodelay(true);
        match tokio_tungstenite::client_async_with_config(
            request,
            MaybeTlsStream::Plain(stream),
            Some(config),
        )
        .await
        {
            Ok((ws, _)) => Ok(ws),
            Err(tungstenite::Error::Http(response)) => match response.status().as_u16() {
                401 => Err(OpenError::Unauthorized),
                404 => Err(OpenError::NotFound),
                s => Err(OpenError::Other(format!("HTTP {s} on the handshake"))),
            },
            Err(e) => Err(OpenError::Other(e.to_string())),
        }
    };
    match tokio::time::timeout(OPEN_TIMEOUT, opening).await {
        Ok(result) => result,
        Err(_) => Err(OpenError::Other("timed out opening".to_owned())),
    }
}

/// The next message of a WebSocket (pings are answered by tungstenite).
pub async fn next_ws(ws: &mut Ws) -> Incoming {
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(text))) => {
                return Incoming::Text {
                    data: text.to_string(),
                    id: None,
                }
            }
            Some(Ok(Message::Close(frame))) => {
                return Incoming::Closed {
                    code: frame.as_ref().map(|f| u16::from(f.code)),
                    reason: frame.map(|f| f.reason.to_string()).unwrap_or_default(),
                }
            }
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => return Incoming::KeepAlive,
            Some(Ok(_)) => {}
            Some(Err(e)) => return Incoming::lost(e.to_string()),
            None => return Incoming::lost("end of stream"),
        }
    }
}

/// An SSE stream, split into messages.
pub struct SseFeed {
    body: futures_util::stream::BoxStream<'static, reqwest::Result<Vec<u8>>>,
    buffer: Vec<u8>,
}

impl std::fmt::Debug for SseFeed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SseFeed").finish_non_exhaustive()
    }
}

impl SseFeed {
    /// `GET url` with the token, resuming with `Last-Event-ID` when given.
    ///
    /// # Errors
    /// As [`OpenError`].
    pub async fn open(
        http: &reqwest::Client,
        url: &str,
        token: &str,
        last_event_id: Option<String>,
    ) -> Result<SseFeed, OpenError> {
        let mut request = http.get(url).bearer_auth(token);
        if let Some(id) = last_event_id {
            request = request.header("last-event-id", id);
        }
        let response = tokio::time::timeout(OPEN_TIMEOUT, request.send())
            .await
            .map_err(|_| OpenError::Other("timed out opening".to_owned()))?
            .map_err(|e| OpenError::Other(e.to_string()))?;
        match response.status().as_u16() {
            200 => Ok(SseFeed {
                body: response
                    .bytes_stream()
                    .map(|c| c.map(|c| c.to_vec()))
                    .boxed(),
                buffer: Vec::new(),
            }),
            401 => Err(OpenError::Unauthorized),
            404 => Err(OpenError::NotFound),
            s => Err(OpenError::Other(format!("HTTP {s}"))),
        }
    }

    /// The next message with data (comments and keep-alives skipped).
    pub async fn next(&mut self) -> Incoming {
        loop {
            if let Some(end) = find(&self.buffer, b"\n\n") {
                let block: Vec<u8> = self.buffer.drain(..end + 2).collect();
                let text = String::from_utf8_lossy(&block);
                let mut data = Vec::new();
                let mut id = None;
                for line in text.lines() {
                    if let Some(d) = line.strip_prefix("data:") {
                        data.push(d.strip_prefix(' ').unwrap_or(d).to_owned());
                    } else if let Some(i) = line.strip_prefix("id:") {
                        id = Some(i.trim().to_owned());
                    }
                }
                if !data.is_empty() {
                    return Incoming::Text {
                        data: data.join("\n"),
                        id,
                    };
                }
                return Incoming::KeepAlive;
            }
            match self.body.next().await {
                Some(Ok(chunk)) => self.buffer.extend_from_slice(&chunk),
                Some(Err(e)) => return Incoming::lost(e.to_string()),
                None => return Incoming::lost("the stream ended"),
            }
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// A connection that carries one job: a WebSocket or an SSE stream.
#[derive(Debug)]
pub enum Feed {
    Ws(Box<Ws>),
    Sse(SseFeed),
}

impl Feed {
    pub async fn next(&mut self) -> Incoming {
        match self {
            Feed::Ws(ws) => next_ws(ws).await,
            Feed::Sse(sse) => sse.next().await,
        }
    }

    /// Closes politely (a WebSocket close frame; SSE just drops).
    pub async fn close(self) {
        if let Feed::Ws(mut ws) = self {
            let _ = tokio::time::timeout(Duration::from_millis(500), ws.close(None)).await;
        }
    }
}
