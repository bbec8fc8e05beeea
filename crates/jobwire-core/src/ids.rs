//! Newtypes for the identifiers that cross the process boundary: job ids, event
//! ids, epochs and timestamps. They are parsed once at the edge (HTTP paths,
//! Redis replies, client frames); inner code trusts them.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use thiserror::Error;

use crate::protocol::truncated;

/// Why an identifier was refused.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum IdError {
    /// A job id must be 1–64 characters of `[A-Za-z0-9_-]`.
    #[error("invalid job id {0:?}: expected 1-64 characters of A-Z, a-z, 0-9, '_' or '-'")]
    JobId(String),
    /// An event id is a non-negative integer.
    #[error("invalid event id {0:?}: expected a non-negative integer")]
    EventId(String),
    /// An epoch is 1–32 characters of `[0-9a-z]`.
    #[error("invalid epoch {0:?}: expected 1-32 characters of 0-9 or a-z")]
    Epoch(String),
    /// Timestamps are RFC 3339.
    #[error("invalid timestamp {0:?}: expected RFC 3339")]
    Timestamp(String),
}

/// A job's id: opaque to clients; jobwire generates ULIDs, which sort by
/// creation time (listing relies on that).
///
/// The character set is restricted so that ids are safe inside Redis key
/// names, URL paths and `Last-Event-ID` headers without escaping.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct JobId(Arc<str>);

impl JobId {
    /// A new, time-ordered id (a ULID).
    pub fn generate() -> Self {
        JobId(ulid::Ulid::new().to_string().into())
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The partition this job's keys live in (`0..partitions`).
    ///
    /// FNV-1a: stable across versions, platforms and languages, so any process
    /// (or a worker written in another language) computes the same partition.
    pub fn partition(&self, partitions: u16) -> u16 {
        partition_of(&self.0, partitions)
    }

    /// A new id whose partition is `partition` (of `partitions`): a job
    /// that must share a slot with a record found by another name (an
    /// idempotency key).
    pub fn generate_in(partition: u16, partitions: u16) -> Self {
        loop {
            let id = JobId::generate();
            if id.partition(partitions) == partition % partitions.max(1) {
                return id;
            }
        }
    }
}

/// The partition of any text: FNV-1a of its bytes, modulo `partitions`
/// (what [`JobId::partition`] computes for an id).
pub fn partition_of(text: &str, partitions: u16) -> u16 {
    let mut hash: u32 = 0x811c_9dc5;
    for byte in text.bytes() {
        hash ^= u32::from(byte);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    (hash % u32::from(partitions.max(1))) as u16
}

impl JobId {}

impl FromStr for JobId {
    type Err = IdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let valid = !s.is_empty()
            && s.len() <= 64
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if valid {
            Ok(JobId(s.into()))
        } else {
            Err(IdError::JobId(truncated(s, 64)))
        }
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Serialize for JobId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for JobId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// The sequence number of an event within its job: 1, 2, 3 … without holes.
/// `EventId(0)` means "before the first event".
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct EventId(pub u64);

impl EventId {
    /// The position before any event.
    pub const ZERO: EventId = EventId(0);

    /// The id that follows this one.
    pub fn next(self) -> EventId {
        EventId(self.0 + 1)
    }
}

impl FromStr for EventId {
    type Err = IdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.parse::<u64>()
            .map(EventId)
            .map_err(|_| IdError::EventId(truncated(s, 32)))
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A random token naming one linear history of a job's log. It is written
/// when the log is created, and replaced whenever the store may have lost
/// acknowledged writes to the job (docs/design.md, "Exact through data
/// loss"): events are never written twice under one `(epoch, id)`, so a
/// different epoch means resume positions taken against the old one are
/// meaningless. Cloning shares the text.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Epoch(Arc<str>);

impl Epoch {
    /// A fresh random epoch (64 random bits, lowercase hex).
    pub fn generate() -> Self {
        Epoch(format!("{:016x}", rand::random::<u64>()).into())
    }

    /// The epoch as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for Epoch {
    type Err = IdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let valid = !s.is_empty()
            && s.len() <= 32
            && s.bytes()
                .all(|b| b.is_ascii_digit() || b.is_ascii_lowercase());
        if valid {
            Ok(Epoch(s.into()))
        } else {
            Err(IdError::Epoch(truncated(s, 40)))
        }
    }
}

impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Serialize for Epoch {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Epoch {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A point in time with millisecond precision, written as RFC 3339 in UTC
/// (`2026-11-28T12:00:00.123Z`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(i64);

/// The Julian day number of 1970-01-01.
const UNIX_EPOCH_JULIAN_DAY: i32 = 2_440_588;

const RFC3339_MILLIS: &[time::format_description::FormatItem<'static>] = time::macros::format_description!(
    "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
);

impl Timestamp {
    /// The current wall-clock time.
    pub fn now() -> Self {
        // The system clock directly: taken for every delivered event (its
        // latency), where a calendar date would be wasted work.
        let since_epoch = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis().min(i64::MAX as u128) as i64);
        Timestamp(since_epoch)
    }

    /// Reads the form [`Timestamp`] writes (`2026-11-28T12:00:00.123Z`)
    /// without a general RFC 3339 parser: every event read from the store
    /// carries one. `None` for anything else (which the general parser
    /// then reads).
    pub(crate) fn parse_canonical(s: &str) -> Option<Timestamp> {
        let b = s.as_bytes();
        if b.len() != 24
            || b[4] != b'-'
            || b[7] != b'-'
            || b[10] != b'T'
            || b[13] != b':'
            || b[16] != b':'
            || b[19] != b'.'
            || b[23] != b'Z'
        {
            return None;
        }
        let num = |range: std::ops::Range<usize>| -> Option<i64> {
            b[range].iter().try_fold(0i64, |n, &c| {
                c.is_ascii_digit().then(|| n * 10 + i64::from(c - b'0'))
            })
        };
        let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
        let (hour, minute, second, millis) =
            (num(11..13)?, num(14..16)?, num(17..19)?, num(20..23)?);
        if !(1..=12).contains(&month)
            || !(1..=31).contains(&day)
            || hour > 23
            || minute > 59
            || second > 59
        {
            return None;
        }
        let date = time::Date::from_calendar_date(
            i32::try_from(year).ok()?,
            time::Month::try_from(u8::try_from(month).ok()?).ok()?,
            u8::try_from(day).ok()?,
        )
        .ok()?;
        let days = i64::from(date.to_julian_day()) - i64::from(UNIX_EPOCH_JULIAN_DAY);
        let seconds = days * 86_400 + hour * 3_600 + minute * 60 + second;
        Some(Timestamp(seconds * 1_000 + millis))
    }

    /// From milliseconds since the Unix epoch.
    pub fn from_unix_millis(ms: i64) -> Self {
        Timestamp(ms)
    }

    /// Milliseconds since the Unix epoch.
    pub fn unix_millis(self) -> i64 {
        self.0
    }

    /// This time minus a duration (saturating).
    pub fn minus(self, d: std::time::Duration) -> Self {
        Timestamp(
            self.0
                .saturating_sub(d.as_millis().min(i64::MAX as u128) as i64),
        )
    }

    /// This time plus a duration (saturating).
    pub fn plus(self, d: std::time::Duration) -> Self {
        Timestamp(
            self.0
                .saturating_add(d.as_millis().min(i64::MAX as u128) as i64),
        )
    }
}

impl Timestamp {
    /// The form [`Timestamp`]'s `Display` writes, for years 1970–9999,
    /// without a general formatter: every event carries one.
    fn canonical(self) -> Option<[u8; 24]> {
        let days = i32::try_from(self.0.div_euclid(86_400_000)).ok()?;
        let ms = u32::try_from(self.0.rem_euclid(86_400_000)).ok()?;
        let date = time::Date::from_julian_day(days.checked_add(UNIX_EPOCH_JULIAN_DAY)?).ok()?;
        let year = u32::try_from(date.year()).ok().filter(|y| *y <= 9999)?;
        let mut out = *b"0000-00-00T00:00:00.000Z";
        let mut put = |at: usize, width: usize, mut n: u32| {
            for i in (at..at + width).rev() {
                out[i] = b'0' + (n % 10) as u8;
                n /= 10;
            }
        };
        put(0, 4, year);
        put(5, 2, u32::from(u8::from(date.month())));
        put(8, 2, u32::from(date.day()));
        put(11, 2, ms / 3_600_000);
        put(14, 2, ms / 60_000 % 60);
        put(17, 2, ms / 1_000 % 60);
        put(20, 3, ms % 1_000);
        Some(out)
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(text) = self.canonical() {
            // ASCII digits and separators only.
            return f.write_str(std::str::from_utf8(&text).map_err(|_| fmt::Error)?);
        }
        let nanos = i128::from(self.0) * 1_000_000;
        match time::OffsetDateTime::from_unix_timestamp_nanos(nanos) {
            Ok(t) => match t.format(RFC3339_MILLIS) {
                Ok(s) => f.write_str(&s),
                Err(_) => write!(f, "{}", self.0),
            },
            Err(_) => write!(f, "{}", self.0),
        }
    }
}

impl FromStr for Timestamp {
    type Err = IdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Some(t) = Timestamp::parse_canonical(s) {
            return Ok(t);
        }
        let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
            .map_err(|_| IdError::Timestamp(s.to_owned()))?;
        Ok(Timestamp((t.unix_timestamp_nanos() / 1_000_000) as i64))
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        // The usual case as one string: `collect_str` goes through a
        // formatting adapter that escapes each piece (a job's state holds
        // up to four timestamps, written on every publish).
        if let Some(text) = self.canonical() {
            if let Ok(text) = std::str::from_utf8(&text) {
                return s.serialize_str(text);
            }
        }
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_read_back_what_they_write() {
        for ms in [
            0,
            1,
            999,
            1_764_331_200_123,
            4_102_444_799_999,
            951_782_400_000,
            253_402_300_799_999,
            -1,
            253_402_300_800_000,
        ] {
            let t = Timestamp::from_unix_millis(ms);
            let text = t.to_string();
            // The fast form agrees with the general formatter (which
            // writes milliseconds where it has no calendar date).
            let general =
                match time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000) {
                    Ok(t) => t.format(RFC3339_MILLIS).expect("formats"),
                    Err(_) => ms.to_string(),
                };
            assert_eq!(text, general, "{ms}");
            // JSON holds the same text, fast form or not.
            let json = serde_json::to_string(&t).expect("serializes");
            assert_eq!(json, format!("\"{text}\""), "{ms}");
            if !(0..253_402_300_800_000).contains(&ms) {
                continue;
            }
            assert_eq!(Timestamp::parse_canonical(&text), Some(t), "{text}");
            assert_eq!(text.parse::<Timestamp>().ok(), Some(t));
            assert_eq!(serde_json::from_str::<Timestamp>(&json).ok(), Some(t));
        }
        // Other RFC 3339 forms go to the general parser, and agree with it.
        let t: Timestamp = "2026-11-28T13:00:00.5+01:00".parse().expect("valid");
        assert_eq!(t.to_string(), "2026-11-28T12:00:00.500Z");
        for bad in [
            "2026-02-30T00:00:00.000Z",
            "2026-13-01T00:00:00.000Z",
            "2026-11-28T24:00:00.000Z",
            "2026-11-28T12:00:00.0a0Z",
            "2026-11-28T12:00:00.000",
        ] {
            assert!(bad.parse::<Timestamp>().is_err(), "{bad} accepted");
        }
        let now = Timestamp::now().unix_millis();
        let from_time = (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64;
        assert!((from_time - now).abs() < 1_000);
    }

    #[test]
    fn job_ids_are_validated() {
        assert!("01JDX3Z".parse::<JobId>().is_ok());
        assert!("a_b-c".parse::<JobId>().is_ok());
        for bad in ["", "a b", "a:b", "{x}", &"x".repeat(65)] {
            assert!(bad.parse::<JobId>().is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn partition_is_stable_and_in_range() {
        let id: JobId = "01JDX000000000000000000000".parse().expect("valid id");
        assert_eq!(id.partition(16), id.partition(16));
        for _ in 0..100 {
            assert!(JobId::generate().partition(16) < 16);
        }
        // FNV-1a of "a" is 0xe40c292c: pinned so that a change of the hash
        // (which would misplace every stored job) cannot slip in unnoticed.
        let a: JobId = "a".parse().expect("valid id");
        assert_eq!(a.partition(16), (0xe40c_292c_u32 % 16) as u16);
    }

    #[test]
    fn timestamps_round_trip_with_millis() {
        let t = Timestamp::from_unix_millis(1_795_867_200_123);
        let s = t.to_string();
        assert!(s.ends_with(".123Z"), "{s}");
        assert_eq!(s.parse::<Timestamp>(), Ok(t));
    }

    #[test]
    fn epochs_are_validated() {
        let e = Epoch::generate();
        assert_eq!(e.as_str().parse::<Epoch>(), Ok(e.clone()));
        assert!("AB".parse::<Epoch>().is_err());
        assert!("a:b".parse::<Epoch>().is_err());
    }
}
