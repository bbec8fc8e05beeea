//! The live protocol (docs/protocol.md) as types: what clients send over a WebSocket,
//! what the server sends besides events, and resume points.
//!
//! One module both ends use: the server serializes [`Control`] messages and
//! parses [`ClientFrame`]s; the Rust client, the CLI and the benchmark parse
//! what arrives with [`ServerMessage::parse`].
//!
//! Control messages never share a `type` with an event type (docs/protocol.md): a
//! job's own `error` event is an event, and a refused frame is `refused`.
//! [`crate::EventType::parse`] refuses every name in [`RESERVED_TYPES`], so
//! no publisher can make an event look like a control message either.
//!
//! Events themselves travel as their stored wire JSON ([`crate::EventRecord`]):
//! the server never re-serializes them, so they are not part of the enums.

use serde::{Deserialize, Deserializer, Serialize};

use crate::event::Event;
use crate::ids::{Epoch, EventId, JobId};
use crate::job::JobState;

/// Every `type` the protocol uses for something other than an event: the
/// server's control messages and the client's frames.
pub const RESERVED_TYPES: &[&str] = &[
    "current_state",
    "resumed",
    "pong",
    "refreshed",
    "unsubscribed",
    "refused",
    "gone",
    "subscribe",
    "unsubscribe",
    "ping",
    "refresh",
];

/// A message from the server that is not an event.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Control {
    /// The job's state as of event `id`; every event after `id` follows.
    /// With `resync`, a resume point could not be honoured (trimmed, another
    /// epoch, or the log was rolled back): this state replaces what the
    /// client had.
    CurrentState {
        job_id: JobId,
        id: EventId,
        epoch: Epoch,
        data: Box<JobState>,
        #[serde(default, skip_serializing_if = "is_false")]
        resync: bool,
    },
    /// The resume point was honoured: every event after `id` follows.
    Resumed {
        job_id: JobId,
        id: EventId,
        epoch: Epoch,
    },
    /// The answer to a `ping` frame.
    Pong,
    /// A `refresh` frame's token was accepted; the connection now lives until
    /// `expires_at` (Unix seconds; none for tokens without `exp`).
    Refreshed { expires_at: Option<u64> },
    /// The answer to an `unsubscribe` frame.
    Unsubscribed { job_id: JobId },
    /// A frame or a subscription was refused. With a `job_id`, that job's
    /// subscription has ended (or never started).
    Refused {
        code: Refusal,
        message: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        job_id: Option<JobId>,
    },
    /// A watched job no longer exists (deleted, expired, or its data was
    /// lost): its subscription has ended. The multiplexed socket's 4404.
    Gone { job_id: JobId, message: String },
}

impl Control {
    /// The message's wire JSON.
    pub fn to_json(&self) -> String {
        // Plain strings, numbers and maps: serializing them cannot fail.
        serde_json::to_string(self).unwrap_or_else(|e| {
            format!(r#"{{"type":"refused","code":"internal","message":"{e}"}}"#)
        })
    }

    /// The job the message is about, if any.
    pub fn job_id(&self) -> Option<&JobId> {
        match self {
            Control::CurrentState { job_id, .. }
            | Control::Resumed { job_id, .. }
            | Control::Unsubscribed { job_id }
            | Control::Gone { job_id, .. } => Some(job_id),
            Control::Refused { job_id, .. } => job_id.as_ref(),
            Control::Pong | Control::Refreshed { .. } => None,
        }
    }
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// Why a frame or subscription was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Refusal {
    /// Not JSON, or a known frame with bad fields.
    BadFrame,
    /// A frame `type` the server does not know.
    UnknownType,
    /// A frame this socket does not take (subscribe on a one-job socket).
    Unsupported,
    NotFound,
    Forbidden,
    Unauthorized,
    TooManySubscriptions,
    /// The job store could not be read; subscribe again.
    Unavailable,
    /// A code this client does not know (a newer server).
    #[serde(other)]
    Other,
}

impl Refusal {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::BadFrame => "bad_frame",
            Refusal::UnknownType => "unknown_type",
            Refusal::Unsupported => "unsupported",
            Refusal::NotFound => "not_found",
            Refusal::Forbidden => "forbidden",
            Refusal::Unauthorized => "unauthorized",
            Refusal::TooManySubscriptions => "too_many_subscriptions",
            Refusal::Unavailable => "unavailable",
            Refusal::Other => "other",
        }
    }
}

/// A frame a client sends on a WebSocket.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientFrame {
    /// Watch a job: from its current state, or after `since` in `epoch`.
    Subscribe {
        job_id: JobId,
        #[serde(
            default,
            skip_serializing_if = "Option::is_none",
            deserialize_with = "since_field"
        )]
        since: Option<EventId>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        epoch: Option<Epoch>,
    },
    Unsubscribe {
        job_id: JobId,
    },
    Ping,
    /// A fresh token for this connection.
    Refresh {
        token: String,
    },
}

/// Why a client frame could not be read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("not a valid frame: {0}")]
    Malformed(String),
    #[error("unknown frame type {0:?}")]
    UnknownType(String),
}

impl FrameError {
    /// The refusal code that reports it.
    pub fn refusal(&self) -> Refusal {
        match self {
            FrameError::Malformed(_) => Refusal::BadFrame,
            FrameError::UnknownType(_) => Refusal::UnknownType,
        }
    }
}

impl ClientFrame {
    /// Reads a client frame.
    ///
    /// # Errors
    /// [`FrameError::UnknownType`] for a frame type the protocol does not
    /// have, [`FrameError::Malformed`] for anything else that is wrong.
    pub fn parse(text: &str) -> Result<ClientFrame, FrameError> {
        #[derive(Deserialize)]
        struct Head {
            #[serde(rename = "type")]
            kind: String,
        }
        let head: Head =
            serde_json::from_str(text).map_err(|e| FrameError::Malformed(e.to_string()))?;
        if !matches!(
            head.kind.as_str(),
            "subscribe" | "unsubscribe" | "ping" | "refresh"
        ) {
            return Err(FrameError::UnknownType(truncated(&head.kind, 64)));
        }
        serde_json::from_str(text).map_err(|e| FrameError::Malformed(e.to_string()))
    }

    /// The frame's wire JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// A subscribe frame for a job, resuming after `cursor` when given.
    pub fn subscribe(job_id: JobId, cursor: Option<(EventId, Epoch)>) -> ClientFrame {
        let (since, epoch) = match cursor {
            Some((id, epoch)) => (Some(id), Some(epoch)),
            None => (None, None),
        };
        ClientFrame::Subscribe {
            job_id,
            since,
            epoch,
        }
    }
}

/// `since` as a number (`7`) or a numeric string (`"7"`): browsers build
/// frames from URL parameters.
fn since_field<'de, D: Deserializer<'de>>(d: D) -> Result<Option<EventId>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Since {
        Number(u64),
        Text(String),
    }
    match Option::<Since>::deserialize(d)? {
        None => Ok(None),
        Some(Since::Number(n)) => Ok(Some(EventId(n))),
        Some(Since::Text(s)) => s
            .trim()
            .parse()
            .map(Some)
            .map_err(|_| serde::de::Error::custom("since must be an event id (a number)")),
    }
}

/// A position to resume a job's stream from: after event `id` of `epoch`.
/// Without an epoch the server takes the job's current one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resume {
    pub id: EventId,
    pub epoch: Option<Epoch>,
}

impl Resume {
    /// The one parser of resume points given as text: a `?since=&epoch=`
    /// query (WebSocket or SSE). `None` when there is no `since`.
    ///
    /// # Errors
    /// A message naming the bad field.
    pub fn from_query(since: Option<&str>, epoch: Option<&str>) -> Result<Option<Resume>, String> {
        let Some(since) = since else {
            return Ok(None);
        };
        let id = since
            .trim()
            .parse::<EventId>()
            .map_err(|_| format!("since must be an event id, not {:?}", truncated(since, 32)))?;
        let epoch = epoch
            .map(|e| {
                e.parse::<Epoch>()
                    .map_err(|_| format!("bad epoch {:?}", truncated(e, 32)))
            })
            .transpose()?;
        Ok(Some(Resume { id, epoch }))
    }

    /// An SSE `Last-Event-ID`: `EPOCH:ID`, or a bare `ID`.
    ///
    /// # Errors
    /// A message saying what was expected.
    pub fn from_last_event_id(value: &str) -> Result<Resume, String> {
        let bad = || {
            format!(
                "bad Last-Event-ID {:?}: expected EPOCH:ID",
                truncated(value, 32)
            )
        };
        let (epoch, id) = match value.split_once(':') {
            Some((epoch, id)) => (Some(epoch.trim()), id),
            None => (None, value),
        };
        let id = id.trim().parse::<EventId>().map_err(|_| bad())?;
        let epoch = epoch
            .map(|e| e.parse::<Epoch>().map_err(|_| bad()))
            .transpose()?;
        Ok(Resume { id, epoch })
    }

    /// From a subscribe frame's fields.
    pub fn from_frame(since: Option<EventId>, epoch: Option<Epoch>) -> Option<Resume> {
        since.map(|id| Resume { id, epoch })
    }
}

/// At most `max` characters of `s`, for echoing client input in errors.
pub fn truncated(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((at, _)) => format!("{}…", &s[..at]),
        None => s.to_owned(),
    }
}

/// Anything the server sends on a WebSocket or in an SSE `data:` line.
#[derive(Clone, Debug, PartialEq)]
pub enum ServerMessage {
    Control(Control),
    Event(Event),
    /// A message of a type this client does not know (a newer server):
    /// passed through, never an error (docs/protocol.md).
    Unknown(serde_json::Value),
}

impl ServerMessage {
    /// Reads a server message: a control message by its `type`, else an
    /// event (anything with an `id` and a `job_id`), else unknown.
    ///
    /// # Errors
    /// When the text is not JSON, or a known message has bad fields.
    pub fn parse(text: &str) -> Result<ServerMessage, serde_json::Error> {
        #[derive(Deserialize)]
        struct Head {
            #[serde(rename = "type", default)]
            kind: Option<String>,
            #[serde(default)]
            id: Option<serde_json::Value>,
            #[serde(default)]
            job_id: Option<serde_json::Value>,
        }
        let head: Head = serde_json::from_str(text)?;
        let kind = head.kind.as_deref().unwrap_or_default();
        if RESERVED_TYPES.contains(&kind) {
            // Client frame names are reserved but never sent by servers;
            // a server that did gets a parse error here.
            return serde_json::from_str(text).map(ServerMessage::Control);
        }
        if head.id.is_some() && head.job_id.is_some() {
            if let Ok(event) = serde_json::from_str(text) {
                return Ok(ServerMessage::Event(event));
            }
        }
        serde_json::from_str(text).map(ServerMessage::Unknown)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::EventType;

    fn job() -> JobId {
        "01JDXAAAAAAAAAAAAAAAAAAAAA".parse().expect("job id")
    }

    #[test]
    fn no_control_type_is_an_event_type() {
        for name in RESERVED_TYPES {
            assert!(
                EventType::parse(name).is_err(),
                "{name} must not be an event type"
            );
        }
        for known in EventType::BUILTIN {
            assert!(!RESERVED_TYPES.contains(&known.as_str()));
        }
    }

    #[test]
    fn an_error_event_is_an_event_and_a_refusal_is_control() {
        let event = json!({"id": 3, "job_id": job(), "type": "error",
                           "timestamp": "2026-11-28T12:00:00.000Z",
                           "data": {"file": "a", "message": "unreadable"}})
        .to_string();
        match ServerMessage::parse(&event).expect("parses") {
            ServerMessage::Event(e) => assert_eq!(e.kind, EventType::Error),
            other => panic!("an error event parsed as {other:?}"),
        }
        let refused = Control::Refused {
            code: Refusal::NotFound,
            message: "no job".into(),
            job_id: Some(job()),
        };
        let text = refused.to_json();
        let v: serde_json::Value = serde_json::from_str(&text).expect("json");
        assert_eq!(v["type"], "refused");
        assert_eq!(v["code"], "not_found");
        assert_eq!(
            ServerMessage::parse(&text).expect("parses"),
            ServerMessage::Control(refused)
        );
    }

    #[test]
    fn unknown_messages_pass_through() {
        let text = r#"{"type":"welcome","motd":"hi"}"#;
        assert!(matches!(
            ServerMessage::parse(text),
            Ok(ServerMessage::Unknown(_))
        ));
        let code = r#"{"type":"refused","code":"brand_new","message":"m"}"#;
        assert!(matches!(
            ServerMessage::parse(code),
            Ok(ServerMessage::Control(Control::Refused {
                code: Refusal::Other,
                ..
            }))
        ));
    }

    #[test]
    fn client_frames() {
        assert_eq!(
            ClientFrame::parse(r#"{"type":"ping"}"#),
            Ok(ClientFrame::Ping)
        );
        let j = job();
        for since in [json!(7), json!("7")] {
            let text = json!({"type": "subscribe", "job_id": j, "since": since, "epoch": "e1"})
                .to_string();
            assert_eq!(
                ClientFrame::parse(&text),
                Ok(ClientFrame::Subscribe {
                    job_id: j.clone(),
                    since: Some(EventId(7)),
                    epoch: Some("e1".parse().expect("epoch")),
                })
            );
        }
        assert!(matches!(
            ClientFrame::parse(r#"{"type":"launch"}"#),
            Err(FrameError::UnknownType(_))
        ));
        assert!(matches!(
            ClientFrame::parse(r#"{"type":"subscribe","job_id":"bad id!"}"#),
            Err(FrameError::Malformed(_))
        ));
        assert!(matches!(
            ClientFrame::parse("not json"),
            Err(FrameError::Malformed(_))
        ));
        let frame = ClientFrame::subscribe(j, Some((EventId(3), "e".parse().expect("epoch"))));
        assert_eq!(ClientFrame::parse(&frame.to_json()), Ok(frame));
    }

    #[test]
    fn resume_points() {
        assert_eq!(Resume::from_query(None, Some("e")), Ok(None));
        assert_eq!(
            Resume::from_query(Some("4"), Some("e")),
            Ok(Some(Resume {
                id: EventId(4),
                epoch: Some("e".parse().expect("epoch"))
            }))
        );
        assert!(Resume::from_query(Some("x"), None).is_err());
        assert_eq!(
            Resume::from_last_event_id("abc123:42"),
            Ok(Resume {
                id: EventId(42),
                epoch: Some("abc123".parse().expect("epoch"))
            })
        );
        assert_eq!(
            Resume::from_last_event_id("7"),
            Ok(Resume {
                id: EventId(7),
                epoch: None
            })
        );
        assert!(Resume::from_last_event_id("x:y").is_err());
        assert!(Resume::from_last_event_id("").is_err());
        let long = "9".repeat(10_000);
        let err = Resume::from_query(Some(&long), None).expect_err("too long");
        assert!(err.len() < 100, "echoed input is truncated: {err}");
    }
}
