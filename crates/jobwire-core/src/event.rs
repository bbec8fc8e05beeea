//! Events (docs/protocol.md): every change to a job is one event in its log.
//!
//! [`NewEvent`] is what a publisher sends (a type, a payload and optional
//! fencing); [`Event`] is what clients receive, with its id, timestamp and the
//! payload enriched with the job's counters after applying it.
//!
//! Backends and the gateway move events as [`EventRecord`]s: the wire JSON,
//! serialized once when the event is published, plus the two fields needed to
//! route it. Nothing on the delivery path serializes an event again.

use std::fmt;

use bytes::Bytes;

use serde::ser::SerializeStruct;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};

use crate::ids::{Epoch, EventId, JobId, Timestamp};
use crate::reducer::Counters;

/// The type of an event. Unknown types are carried through untouched
/// (`Custom`), as docs/protocol.md asks of clients.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum EventType {
    JobQueued,
    JobStarted,
    FileProcessing,
    FileCompleted,
    Error,
    Progress,
    JobCompleted,
    JobFailed,
    JobCancelled,
    JobRetrying,
    /// A type jobwire does not interpret; it changes nothing but the position.
    Custom(String),
}

impl EventType {
    /// Every built-in type, in the order of a job's life.
    pub const BUILTIN: [EventType; 10] = [
        EventType::JobQueued,
        EventType::JobStarted,
        EventType::FileProcessing,
        EventType::FileCompleted,
        EventType::Error,
        EventType::Progress,
        EventType::JobCompleted,
        EventType::JobFailed,
        EventType::JobCancelled,
        EventType::JobRetrying,
    ];

    /// The type as written on the wire.
    pub fn as_str(&self) -> &str {
        match self {
            EventType::Custom(s) => s,
            // Every other variant has a built-in name.
            builtin => builtin.builtin_name().unwrap_or_default(),
        }
    }

    /// The name of a built-in type; `None` for a custom one.
    pub fn builtin_name(&self) -> Option<&'static str> {
        Some(match self {
            EventType::Custom(_) => return None,
            EventType::JobQueued => "job_queued",
            EventType::JobStarted => "job_started",
            EventType::FileProcessing => "file_processing",
            EventType::FileCompleted => "file_completed",
            EventType::Error => "error",
            EventType::Progress => "progress",
            EventType::JobCompleted => "job_completed",
            EventType::JobFailed => "job_failed",
            EventType::JobCancelled => "job_cancelled",
            EventType::JobRetrying => "job_retrying",
        })
    }

    /// Parses a wire name. Custom names must be 1–64 characters of
    /// `[a-z0-9_.]` so they stay readable in logs and metrics labels.
    pub fn parse(s: &str) -> Result<EventType, String> {
        if let Some(builtin) = Self::BUILTIN.iter().find(|t| t.as_str() == s) {
            return Ok(builtin.clone());
        }
        Ok(match s {
            other if crate::protocol::RESERVED_TYPES.contains(&other) => {
                return Err(format!(
                    "{other:?} is a control message of the live protocol, not an event type"
                ))
            }
            other => {
                let valid = !other.is_empty()
                    && other.len() <= 64
                    && other.bytes().all(|b| {
                        b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'.'
                    });
                if !valid {
                    return Err(format!(
                        "invalid event type {:?}: expected 1-64 characters of a-z, 0-9, '_' or '.'",
                        crate::protocol::truncated(other, 64)
                    ));
                }
                EventType::Custom(other.to_owned())
            }
        })
    }

    /// `job_completed`, `job_failed` and `job_cancelled` end a job.
    pub fn is_terminal(&self) -> bool {
        matches!(
            self,
            EventType::JobCompleted | EventType::JobFailed | EventType::JobCancelled
        )
    }
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for EventType {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for EventType {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        EventType::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// Exactly-once publication: `attempt` must be the job's current attempt (a
/// stale one is a zombie worker), and `n` counts the publisher's events within
/// that attempt (an `n` already applied is a retried publish and is skipped).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fence {
    pub attempt: u32,
    pub n: u64,
}

/// An event as a publisher sends it.
#[derive(Clone, Debug, PartialEq)]
pub struct NewEvent {
    pub kind: EventType,
    /// The payload; must be a JSON object.
    pub data: Map<String, Value>,
    pub fence: Option<Fence>,
}

impl NewEvent {
    /// An unfenced event.
    pub fn new(kind: EventType, data: Value) -> NewEvent {
        let data = match data {
            Value::Object(map) => map,
            Value::Null => Map::new(),
            other => {
                let mut map = Map::new();
                map.insert("value".to_owned(), other);
                map
            }
        };
        NewEvent {
            kind,
            data,
            fence: None,
        }
    }

    /// The same event, fenced with `(attempt, n)`.
    pub fn fenced(mut self, attempt: u32, n: u64) -> NewEvent {
        self.fence = Some(Fence { attempt, n });
        self
    }
}

/// An event in a job's log: the wire shape of docs/protocol.md.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub id: EventId,
    pub job_id: JobId,
    #[serde(rename = "type")]
    pub kind: EventType,
    pub timestamp: Timestamp,
    pub data: Map<String, Value>,
}

impl Event {
    /// The wire JSON. Serializing our own types cannot fail; the fallback
    /// exists only to avoid a panic path.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|e| {
            format!(
                r#"{{"id":{},"job_id":"{}","type":"error","data":{{"message":"unserializable event: {}"}}}}"#,
                self.id,
                self.job_id,
                e.to_string().replace('"', "'")
            )
        })
    }
}

/// An event as stored and delivered: its wire JSON and the fields needed to
/// route it. Cheap to clone.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventRecord {
    pub id: EventId,
    pub job_id: JobId,
    /// The history the event belongs to (the job's epoch when it was
    /// written). Not part of the wire JSON: a reader compares it with the
    /// epoch of the position it continues from, and treats another epoch as
    /// a resync, never as the next event.
    pub epoch: Epoch,
    /// When it was published (for delivery-latency metrics).
    pub timestamp: Timestamp,
    /// The event in its wire shape (docs/protocol.md): UTF-8 JSON, in
    /// shared bytes that travel from the store's reply to every socket
    /// without a copy (a clone is a reference count).
    pub json: Bytes,
}

impl EventRecord {
    /// Reads a record of the history `epoch` from wire JSON, checking only
    /// the routing fields.
    ///
    /// # Errors
    /// When the JSON has no valid `id` and `job_id`.
    pub fn from_json(json: &str, epoch: Epoch) -> Result<EventRecord, serde_json::Error> {
        EventRecord::from_bytes(Bytes::copy_from_slice(json.as_bytes()), epoch)
    }

    /// As [`EventRecord::from_json`], keeping `json` (bytes as the store
    /// returned them) without a copy.
    ///
    /// # Errors
    /// When the JSON has no valid `id` and `job_id`.
    pub fn from_bytes(json: Bytes, epoch: Epoch) -> Result<EventRecord, serde_json::Error> {
        if let Some((id, job_id, timestamp)) = canonical_head(&json) {
            return Ok(EventRecord {
                id,
                job_id,
                epoch,
                timestamp,
                json,
            });
        }
        #[derive(Deserialize)]
        struct Head {
            id: EventId,
            job_id: JobId,
            timestamp: Timestamp,
        }
        let head: Head = serde_json::from_slice(&json)?;
        Ok(EventRecord {
            id: head.id,
            job_id: head.job_id,
            epoch,
            timestamp: head.timestamp,
            json,
        })
    }

    /// The record of a typed event of the history `epoch`.
    pub fn of(event: &Event, epoch: Epoch) -> EventRecord {
        EventRecord {
            id: event.id,
            job_id: event.job_id.clone(),
            epoch,
            timestamp: event.timestamp,
            json: Bytes::from(event.to_json()),
        }
    }

    /// The typed event.
    ///
    /// # Errors
    /// When the JSON is not an event (it was not written by jobwire).
    pub fn parse(&self) -> Result<Event, serde_json::Error> {
        serde_json::from_slice(&self.json)
    }
}

/// The routing fields of wire JSON in the shape jobwire writes it
/// (`{"id":7,"job_id":"…","type":"…","timestamp":"…","data":{…}}`, see
/// [`WireEvent`]), read without a JSON parser: every event a gateway reads
/// from the store passes here, and a parser would walk its whole payload to
/// find the end of the object. `None` for any other shape, which the
/// general parser then reads. The rest is not checked: the store holds only
/// JSON serialized by jobwire, and the bytes are checked as UTF-8 before
/// they go to a socket.
fn canonical_head(json: &[u8]) -> Option<(EventId, JobId, Timestamp)> {
    /// A string's contents up to its closing quote (none escaped), and
    /// what follows it.
    fn plain_string(rest: &[u8]) -> Option<(&str, &[u8])> {
        let end = rest.iter().position(|&b| b == b'"' || b == b'\\')?;
        (rest[end] == b'"').then_some(())?;
        Some((std::str::from_utf8(&rest[..end]).ok()?, &rest[end + 1..]))
    }
    if json.last() != Some(&b'}') {
        return None;
    }
    let rest = json.strip_prefix(br#"{"id":"#)?;
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    let id: u64 = std::str::from_utf8(rest.get(..digits)?)
        .ok()?
        .parse()
        .ok()?;
    let rest = rest[digits..].strip_prefix(br#","job_id":""#)?;
    let (job_id, rest) = plain_string(rest)?;
    let rest = rest.strip_prefix(br#","type":""#)?;
    let (_, rest) = plain_string(rest)?;
    let rest = rest.strip_prefix(br#","timestamp":""#)?;
    let (timestamp, rest) = plain_string(rest)?;
    rest.starts_with(b",").then_some(())?;
    Some((
        EventId(id),
        job_id.parse().ok()?,
        Timestamp::parse_canonical(timestamp)?,
    ))
}

/// Serializes a freshly applied event in its wire shape, with the job's
/// counters written into `data` on the fly: the payload is borrowed, never
/// copied or modified.
pub(crate) struct WireEvent<'a> {
    pub(crate) id: EventId,
    pub(crate) job_id: &'a JobId,
    /// Not serialized: carried on the record.
    pub(crate) epoch: &'a Epoch,
    pub(crate) kind: &'a EventType,
    pub(crate) timestamp: Timestamp,
    /// `timestamp`, pre-formatted (one publish shares one timestamp).
    pub(crate) timestamp_text: &'a str,
    pub(crate) data: &'a Map<String, Value>,
    pub(crate) counters: Counters<'a>,
}

impl WireEvent<'_> {
    pub(crate) fn to_record(&self) -> EventRecord {
        // Serializing plain maps, numbers and strings cannot fail.
        let json = serde_json::to_string(self).unwrap_or_else(|e| {
            format!(
                r#"{{"id":{},"job_id":"{}","type":"error","data":{{"message":"{e}"}}}}"#,
                self.id, self.job_id
            )
        });
        EventRecord {
            id: self.id,
            job_id: self.job_id.clone(),
            epoch: self.epoch.clone(),
            timestamp: self.timestamp,
            json: Bytes::from(json),
        }
    }
}

impl Serialize for WireEvent<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Data<'a> {
            #[serde(flatten)]
            payload: Payload<'a>,
            #[serde(flatten)]
            counters: &'a Counters<'a>,
        }
        let mut event = s.serialize_struct("Event", 5)?;
        event.serialize_field("id", &self.id)?;
        event.serialize_field("job_id", self.job_id)?;
        event.serialize_field("type", self.kind)?;
        event.serialize_field("timestamp", self.timestamp_text)?;
        event.serialize_field(
            "data",
            &Data {
                payload: Payload(self.data),
                counters: &self.counters,
            },
        )?;
        event.end()
    }
}

/// The publisher's payload without the keys the counters own.
struct Payload<'a>(&'a Map<String, Value>);

impl Serialize for Payload<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(
            self.0
                .iter()
                .filter(|(k, _)| !Counters::KEYS.contains(&k.as_str())),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_and_custom_types_round_trip() {
        let builtin = EventType::BUILTIN.map(|t| t.as_str().to_owned());
        for name in builtin
            .iter()
            .map(String::as_str)
            .chain(["thumbnail.ready"])
        {
            let t = EventType::parse(name).expect("valid type");
            assert_eq!(t.as_str(), name);
        }
        assert!(EventType::parse("").is_err());
        assert!(EventType::parse("Bad Type").is_err());
    }

    #[test]
    fn records_read_the_head_jobwire_writes_and_any_other_json() {
        let event = Event {
            id: EventId(42),
            job_id: "01JDX".parse().expect("valid id"),
            kind: EventType::Custom("thumbnail.ready".into()),
            timestamp: Timestamp::from_unix_millis(1_764_331_200_123),
            data: serde_json::json!({"n": "a \"quoted\" }"})
                .as_object()
                .cloned()
                .unwrap_or_default(),
        };
        let written = event.to_json();
        let epoch: Epoch = "e1".parse().expect("valid epoch");
        assert!(canonical_head(written.as_bytes()).is_some(), "{written}");
        // Other key orders, spaces and escapes take the general parser.
        let reordered = r#"{"job_id":"01JDX", "timestamp":"2025-11-28T12:00:00.123Z","id":42,"type":"x","data":{}}"#;
        let escaped = r#"{"id":42,"job_id":"01J\u0044X","type":"x","timestamp":"2025-11-28T12:00:00.123Z","data":{}}"#;
        for json in [written.as_str(), reordered] {
            let record = EventRecord::from_json(json, epoch.clone()).expect("reads");
            assert_eq!(record.id, EventId(42), "{json}");
            assert_eq!(record.job_id.as_str(), "01JDX", "{json}");
            assert_eq!(record.timestamp, event.timestamp, "{json}");
        }
        assert!(canonical_head(reordered.as_bytes()).is_none());
        assert!(canonical_head(escaped.as_bytes()).is_none());
        assert_eq!(
            EventRecord::from_json(escaped, epoch.clone())
                .map(|r| r.job_id.as_str().to_owned())
                .ok()
                .as_deref(),
            Some("01JDX")
        );
        for bad in [
            r#"{"id":-1,"job_id":"01JDX","type":"x","timestamp":"2025-11-28T12:00:00.123Z","data":{}}"#,
            r#"{"id":1,"job_id":"no spaces","type":"x","timestamp":"2025-11-28T12:00:00.123Z","data":{}}"#,
            r#"{"id":1,"job_id":"01JDX","type":"x","timestamp":"yesterday","data":{}}"#,
            r#"{"id":1,"job_id":"01JDX""#,
            "",
        ] {
            assert!(EventRecord::from_json(bad, epoch.clone()).is_err(), "{bad}");
        }
    }

    #[test]
    fn wire_shape_matches_spec() {
        let e = Event {
            id: EventId(7),
            job_id: "01JDX".parse().expect("valid id"),
            kind: EventType::FileCompleted,
            timestamp: Timestamp::from_unix_millis(0),
            data: serde_json::json!({"processed_files": 3})
                .as_object()
                .cloned()
                .unwrap_or_default(),
        };
        let v: Value = serde_json::from_str(&e.to_json()).expect("valid json");
        assert_eq!(v["id"], 7);
        assert_eq!(v["type"], "file_completed");
        assert_eq!(v["timestamp"], "1970-01-01T00:00:00.000Z");
        assert_eq!(v["data"]["processed_files"], 3);
        let back: Event = serde_json::from_value(v).expect("parses back");
        assert_eq!(back, e);
    }
}
