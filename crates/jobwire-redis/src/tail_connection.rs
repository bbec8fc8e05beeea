//! The live tail's own Redis connection: its `XREAD`s written and their
//! replies read without redis-rs's general machinery.
//!
//! Every gateway reads each live event once, in the `XREAD` replies of one
//! dedicated connection, and that read is on the path of every delivery.
//! Through redis-rs's multiplexed connection a reply of one entry cost about
//! 40,000 instructions: the command of 37 arguments built anew, a channel to
//! the connection's driver task and a wake-up back, and a combinator-based
//! parser making a `Value` tree with a `Vec` per string (docs/benchmarks.md,
//! instructions per delivery). Here the command is written into a reused
//! buffer, the reply is read into a reused buffer and taken apart in place;
//! only each event's JSON is copied out, into the `Bytes` that goes to the
//! sockets. Not sliced out of the read buffer instead: a slice keeps the
//! whole buffer alive, and one event waiting in a slow consumer's outbox
//! would pin everything read after it.
//!
//! The connection is made from the same `ConnectionInfo` redis-rs would use
//! (TCP, TLS with the configured certificates, or a Unix socket, then `AUTH`
//! and `SELECT`), and speaks RESP2 whatever the URL asks: it is never shared,
//! and RESP2 is all the tail needs. The tail's rare commands (the streams'
//! ends, `INFO`, the gap check) go through [`ConnectionLike`], their replies
//! parsed by redis-rs.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use redis::aio::ConnectionLike;
use redis::{Cmd, ConnectionAddr, ConnectionInfo, ErrorKind, Pipeline, RedisError, Value};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// What a connection runs over: TCP, TLS over TCP, or a Unix socket.
trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

/// A dedicated connection for the live tail.
pub(crate) struct TailConnection {
    io: Box<dyn Io>,
    /// Bytes read and not yet taken as replies.
    input: BytesMut,
    /// The command being written (reused from call to call).
    output: Vec<u8>,
    /// Longest wait for a reply.
    timeout: Duration,
    db: i64,
}

/// Read buffer to start with, and the least room made for each read.
const READ_CHUNK: usize = 8 * 1024;

impl TailConnection {
    /// Connects and authenticates within `connect_timeout`; replies are then
    /// awaited for up to `timeout`.
    pub(crate) async fn connect(
        info: &ConnectionInfo,
        tls: Option<&Arc<rustls::ClientConfig>>,
        connect_timeout: Duration,
        timeout: Duration,
    ) -> Result<TailConnection, RedisError> {
        let io = tokio::time::timeout(connect_timeout, open(info.addr(), tls))
            .await
            .map_err(|_| timed_out("connecting to Redis"))??;
        let settings = info.redis_settings();
        let mut conn = TailConnection {
            io,
            input: BytesMut::with_capacity(READ_CHUNK),
            output: Vec::new(),
            timeout: connect_timeout,
            db: settings.db(),
        };
        let mut setup = redis::pipe();
        if let Some(password) = settings.password() {
            let auth = setup.cmd("AUTH");
            if let Some(user) = settings.username() {
                auth.arg(user);
            }
            auth.arg(password);
        }
        if settings.db() != 0 {
            setup.cmd("SELECT").arg(settings.db());
        }
        if !setup.is_empty() {
            conn.req_packed_commands(&setup, 0, setup.len()).await?;
        }
        conn.timeout = timeout;
        Ok(conn)
    }

    /// Runs `command` from `ids` on; its reply unparsed (see
    /// [`xread_reply`]).
    pub(crate) async fn xread(
        &mut self,
        command: &XreadCommand,
        ids: &[String],
    ) -> Result<BytesMut, RedisError> {
        let mut out = std::mem::take(&mut self.output);
        out.clear();
        out.extend_from_slice(&command.prefix);
        for id in ids {
            bulk(&mut out, id.as_bytes());
        }
        let sent = self.send(&out).await;
        self.output = out;
        sent?;
        self.reply().await
    }

    async fn send(&mut self, command: &[u8]) -> Result<(), RedisError> {
        let write = async {
            self.io.write_all(command).await?;
            self.io.flush().await
        };
        tokio::time::timeout(self.timeout, write)
            .await
            .map_err(|_| timed_out("writing to Redis"))??;
        Ok(())
    }

    /// The next whole reply, read as far as needed.
    async fn reply(&mut self) -> Result<BytesMut, RedisError> {
        loop {
            match frame_len(&self.input) {
                Ok(Some(len)) => return Ok(self.input.split_to(len)),
                Ok(None) => {}
                Err(what) => return Err(protocol(what)),
            }
            // Room to read into: at least a chunk, and as much again as is
            // buffered, so that a large reply is re-scanned only a few times.
            let want = READ_CHUNK.max(self.input.len());
            if self.input.capacity() - self.input.len() < want {
                self.input.reserve(want);
            }
            let read = tokio::time::timeout(self.timeout, self.io.read_buf(&mut self.input))
                .await
                .map_err(|_| timed_out("waiting for Redis to answer"))??;
            if read == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "Redis closed the connection",
                )
                .into());
            }
        }
    }

    /// A reply as redis-rs's `Value`, a server error as an error.
    async fn value(&mut self) -> Result<Value, RedisError> {
        let frame = self.reply().await?;
        redis::parse_redis_value(&frame)?.extract_error()
    }
}

impl ConnectionLike for TailConnection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> redis::RedisFuture<'a, Value> {
        Box::pin(async move {
            self.send(&cmd.get_packed_command()).await?;
            self.value().await
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<Value>> {
        Box::pin(async move {
            self.send(&pipeline.get_packed_pipeline()).await?;
            let mut values = Vec::with_capacity(count);
            let mut failed = None;
            // Every reply is read, even after an error: the next command
            // must not meet this one's leftovers.
            for i in 0..offset + count {
                match self.value().await {
                    Ok(value) if i >= offset => values.push(value),
                    Ok(_) => {}
                    Err(e) if e.is_io_error() || e.kind() == ErrorKind::Parse => return Err(e),
                    Err(e) => failed = failed.or(Some(e)),
                }
            }
            failed.map_or(Ok(values), Err)
        })
    }

    fn get_db(&self) -> i64 {
        self.db
    }
}

async fn open(
    addr: &ConnectionAddr,
    tls: Option<&Arc<rustls::ClientConfig>>,
) -> Result<Box<dyn Io>, RedisError> {
    let tcp = |host: &str, port: u16| {
        let address = format!("{host}:{port}");
        async move {
            let stream = tokio::net::TcpStream::connect(address).await?;
            stream.set_nodelay(true)?;
            Ok::<_, io::Error>(stream)
        }
    };
    Ok(match addr {
        ConnectionAddr::Tcp(host, port) => Box::new(tcp(host, *port).await?),
        ConnectionAddr::TcpTls {
            host,
            port,
            insecure,
            ..
        } => {
            if *insecure {
                return Err(invalid("TLS without certificate checks is not supported"));
            }
            let Some(tls) = tls else {
                return Err(invalid("a rediss:// address without a TLS configuration"));
            };
            let name = rustls::pki_types::ServerName::try_from(host.clone())
                .map_err(|_| invalid("the Redis host is not a valid TLS server name"))?;
            let stream = tcp(host, *port).await?;
            let connector = tokio_rustls::TlsConnector::from(Arc::clone(tls));
            Box::new(connector.connect(name, stream).await?)
        }
        #[cfg(unix)]
        ConnectionAddr::Unix(path) => Box::new(tokio::net::UnixStream::connect(path).await?),
        #[allow(unreachable_patterns)] // (non-exhaustive upstream)
        _ => return Err(invalid("an address kind the live tail cannot reach")),
    })
}

/// `XREAD COUNT count BLOCK block STREAMS streams...`, written once: only
/// the positions that follow change from read to read.
#[derive(Debug)]
pub(crate) struct XreadCommand {
    prefix: Vec<u8>,
}

impl XreadCommand {
    pub(crate) fn new(count: usize, block: Duration, streams: &[String]) -> XreadCommand {
        let mut prefix = Vec::new();
        let block_ms = u64::try_from(block.as_millis()).unwrap_or(u64::MAX);
        header(&mut prefix, b'*', (6 + 2 * streams.len()) as u64);
        bulk(&mut prefix, b"XREAD");
        bulk(&mut prefix, b"COUNT");
        bulk(&mut prefix, count.to_string().as_bytes());
        bulk(&mut prefix, b"BLOCK");
        bulk(&mut prefix, block_ms.to_string().as_bytes());
        bulk(&mut prefix, b"STREAMS");
        for stream in streams {
            bulk(&mut prefix, stream.as_bytes());
        }
        XreadCommand { prefix }
    }
}

fn invalid(what: &'static str) -> RedisError {
    RedisError::from((ErrorKind::InvalidClientConfig, what))
}

fn protocol(what: &'static str) -> RedisError {
    RedisError::from((
        ErrorKind::Parse,
        "unexpected reply from Redis",
        what.to_owned(),
    ))
}

fn timed_out(what: &str) -> RedisError {
    io::Error::new(io::ErrorKind::TimedOut, format!("timed out {what}")).into()
}

fn header(out: &mut Vec<u8>, kind: u8, n: u64) {
    out.push(kind);
    decimal(out, n);
    out.extend_from_slice(b"\r\n");
}

fn bulk(out: &mut Vec<u8>, arg: &[u8]) {
    header(out, b'$', arg.len() as u64);
    out.extend_from_slice(arg);
    out.extend_from_slice(b"\r\n");
}

fn decimal(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
}

/// The length of the first whole RESP2 reply in `buf`; `None` while it is
/// incomplete. Arrays only add to the count of values still to read, so
/// nesting needs no recursion.
fn frame_len(buf: &[u8]) -> Result<Option<usize>, &'static str> {
    let mut at = 0;
    let mut pending: u64 = 1;
    while pending > 0 {
        let Some((kind, line, next)) = line(buf, at) else {
            return Ok(None);
        };
        at = next;
        pending -= 1;
        match kind {
            b'+' | b'-' | b':' => {}
            b'$' => {
                let len = signed(line)?;
                if len >= 0 {
                    let len = usize::try_from(len).map_err(|_| "bulk length")?;
                    let end = len
                        .checked_add(2)
                        .and_then(|n| n.checked_add(at))
                        .ok_or("bulk length")?;
                    if buf.len() < end {
                        return Ok(None);
                    }
                    if &buf[end - 2..end] != b"\r\n" {
                        return Err("a bulk string without its CRLF");
                    }
                    at = end;
                }
            }
            b'*' => {
                let len = signed(line)?;
                if len > 0 {
                    pending += len.unsigned_abs();
                }
            }
            _ => return Err("a RESP type this connection does not speak"),
        }
    }
    Ok(Some(at))
}

/// The type byte and the rest of the line starting at `at`, and where the
/// next line starts; `None` when the line is not all there.
fn line(buf: &[u8], at: usize) -> Option<(u8, &[u8], usize)> {
    let kind = *buf.get(at)?;
    let rest = buf.get(at + 1..)?;
    // A header line holds no CR of its own: its end is the first one.
    let end = rest.iter().position(|&b| b == b'\r')?;
    (*rest.get(end + 1)? == b'\n').then_some(())?;
    Some((kind, &rest[..end], at + 1 + end + 2))
}

fn signed(digits: &[u8]) -> Result<i64, &'static str> {
    std::str::from_utf8(digits)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or("a length that is not a number")
}

/// One stream of an `XREAD` reply, borrowed from the reply.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct StreamRead<'a> {
    pub(crate) key: &'a [u8],
    pub(crate) entries: Vec<Entry<'a>>,
}

/// One entry: its id and its (field, value) pairs.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Entry<'a> {
    pub(crate) id: &'a str,
    pub(crate) fields: Vec<(&'a [u8], &'a [u8])>,
}

/// Takes apart a whole `XREAD` reply (RESP2): nil when the block timed out,
/// else per stream `[key, [[id, [field, value, ...]], ...]]`. A server
/// error comes back as the error it is.
pub(crate) fn xread_reply(frame: &[u8]) -> Result<Vec<StreamRead<'_>>, RedisError> {
    if frame.first() == Some(&b'-') {
        return Err(redis::parse_redis_value(frame)?
            .extract_error()
            .err()
            .unwrap_or_else(|| protocol("an error reply that is not one")));
    }
    let mut reply = Reader { buf: frame, at: 0 };
    let streams = reply.array().map_err(protocol)?;
    let mut read = Vec::with_capacity(streams);
    for _ in 0..streams {
        if reply.array().map_err(protocol)? != 2 {
            return Err(protocol("a stream that is not [key, entries]"));
        }
        let key = reply.bulk().map_err(protocol)?;
        let count = reply.array().map_err(protocol)?;
        let mut entries = Vec::with_capacity(count);
        for _ in 0..count {
            if reply.array().map_err(protocol)? != 2 {
                return Err(protocol("an entry that is not [id, fields]"));
            }
            let id = std::str::from_utf8(reply.bulk().map_err(protocol)?)
                .map_err(|_| protocol("an entry id that is not text"))?;
            let values = reply.array().map_err(protocol)?;
            let mut fields = Vec::with_capacity(values / 2);
            for _ in 0..values / 2 {
                let name = reply.bulk().map_err(protocol)?;
                fields.push((name, reply.bulk().map_err(protocol)?));
            }
            if values % 2 == 1 {
                reply.bulk().map_err(protocol)?;
            }
            entries.push(Entry { id, fields });
        }
        read.push(StreamRead { key, entries });
    }
    Ok(read)
}

/// A cursor over a whole reply.
struct Reader<'a> {
    buf: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    /// An array's length; 0 for nil.
    fn array(&mut self) -> Result<usize, &'static str> {
        let (kind, line, next) = line(self.buf, self.at).ok_or("a truncated reply")?;
        if kind != b'*' {
            return Err("expected an array");
        }
        self.at = next;
        Ok(usize::try_from(signed(line)?).unwrap_or(0))
    }

    /// A bulk string (nil reads as empty).
    fn bulk(&mut self) -> Result<&'a [u8], &'static str> {
        let (kind, line, next) = line(self.buf, self.at).ok_or("a truncated reply")?;
        if kind != b'$' {
            return Err("expected a bulk string");
        }
        self.at = next;
        let Ok(len) = usize::try_from(signed(line)?) else {
            return Ok(&[]);
        };
        let end = next.checked_add(len).ok_or("a truncated reply")?;
        let bytes = self.buf.get(next..end).ok_or("a truncated reply")?;
        self.at = end + 2;
        Ok(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const REPLY: &[u8] = b"*1\r\n*2\r\n$12\r\njw:{p3}:live\r\n*2\r\n\
        *2\r\n$3\r\n5-0\r\n*4\r\n$2\r\nE1\r\n$7\r\n{\"a\":1}\r\n$2\r\nE1\r\n$0\r\n\r\n\
        *2\r\n$3\r\n6-1\r\n*2\r\n$8\r\n!deleted\r\n$4\r\nJOB1\r\n";

    #[test]
    fn a_reply_is_whole_only_with_its_last_byte() {
        assert_eq!(frame_len(REPLY), Ok(Some(REPLY.len())));
        for cut in 0..REPLY.len() {
            assert_eq!(frame_len(&REPLY[..cut]), Ok(None), "cut at {cut}");
        }
        let mut two = REPLY.to_vec();
        two.extend_from_slice(b"+OK\r\n");
        assert_eq!(frame_len(&two), Ok(Some(REPLY.len())));
        assert_eq!(frame_len(b"*-1\r\n"), Ok(Some(5)));
        assert_eq!(frame_len(b"$-1\r\n"), Ok(Some(5)));
        assert!(frame_len(b"$3\r\nabcde\r\n").is_err());
        assert!(frame_len(b"%1\r\n").is_err());
        assert!(frame_len(b"*x\r\n").is_err());
    }

    #[test]
    fn an_xread_reply_is_taken_apart_in_place() -> Result<(), RedisError> {
        let streams = xread_reply(REPLY)?;
        assert_eq!(
            streams,
            vec![StreamRead {
                key: b"jw:{p3}:live",
                entries: vec![
                    Entry {
                        id: "5-0",
                        fields: vec![(&b"E1"[..], &b"{\"a\":1}"[..]), (b"E1", b"")],
                    },
                    Entry {
                        id: "6-1",
                        fields: vec![(&b"!deleted"[..], &b"JOB1"[..])],
                    },
                ],
            }]
        );
        assert!(xread_reply(b"*-1\r\n")?.is_empty());
        Ok(())
    }

    #[test]
    fn errors_and_odd_shapes_are_errors_not_panics() {
        let error = xread_reply(b"-READONLY You can't write against a read only replica.\r\n");
        assert_eq!(
            error
                .err()
                .and_then(|e| e.code().map(str::to_owned))
                .as_deref(),
            Some("READONLY")
        );
        for odd in [
            &b"*1\r\n$3\r\nabc\r\n"[..],
            b"*1\r\n*3\r\n$1\r\na\r\n*0\r\n*0\r\n",
            b"*1\r\n*2\r\n$1\r\na\r\n*1\r\n*2\r\n:5\r\n*0\r\n",
            b":1\r\n",
        ] {
            assert!(xread_reply(odd).is_err(), "{odd:?}");
        }
    }

    #[test]
    fn commands_are_written_as_resp_arrays() {
        let command = XreadCommand::new(
            10,
            Duration::from_secs(1),
            &["a".to_owned(), "bc".to_owned()],
        );
        let mut out = command.prefix.clone();
        bulk(&mut out, b"0-0");
        bulk(&mut out, b"12-3");
        let packed = redis::cmd("XREAD")
            .arg("COUNT")
            .arg(10)
            .arg("BLOCK")
            .arg(1000)
            .arg("STREAMS")
            .arg(&["a", "bc", "0-0", "12-3"])
            .get_packed_command();
        assert_eq!(out, packed);
        let mut zero = Vec::new();
        decimal(&mut zero, 0);
        assert_eq!(zero, b"0");
    }
}
