//! Cron schedules: a job created at each tick of a cron expression, in a
//! time zone, exactly once across every process that fires them.
//!
//! A [`Schedule`] is stored whole under its name ([`crate::ScheduleStore`]);
//! every gateway and worker fires the due ones ([`fire_due`], from
//! [`crate::settle::keep_promoting`]). Exactly once per tick comes from two
//! steps that may each be repeated by any number of processes:
//!
//! 1. the tick's job is created under an idempotency key made of the
//!    schedule's name and the tick, so every process that gets here creates
//!    the same one job;
//! 2. the schedule moves on to its next tick by a compare-and-set on the
//!    record as it was read, so exactly one process advances it.
//!
//! A process that dies between the two leaves the tick due, and the next
//! one to look repeats step 1 (getting the same job back) and does step 2.
//!
//! Ticks missed while nothing ran (every process down, or a round that
//! came late) fire once, not once each ([`Missed::Once`], the default), or
//! not at all ([`Missed::Skip`]).

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::backend::{Idempotency, Result};
use crate::ids::{JobId, Timestamp};
use crate::job::{NewJob, DEFAULT_PRIORITY};
use crate::{BackendError, Created, JobStore, ScheduleStore};

/// A cron schedule: what to create, when, and where it got to.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Schedule {
    /// Unique; letters, digits, `-`, `_`, `.` and `:` ([`check_schedule_name`]).
    pub name: String,
    /// Five fields (minute hour day-of-month month day-of-week), or six
    /// with seconds first; `@hourly`-style nicknames.
    pub cron: String,
    /// IANA time zone the expression is read in (unset: UTC).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tz: Option<String>,
    pub kind: String,
    #[serde(default)]
    pub params: Value,
    /// The jobs' queue (unset: the kind's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<String>,
    #[serde(default = "default_priority")]
    pub priority: u8,
    #[serde(default)]
    pub missed: Missed,
    /// Whose jobs they are (who made the schedule): they count against that
    /// user's quota and show in that user's list.
    pub owner: String,
    #[serde(default)]
    pub paused: bool,
    /// The tick to fire next.
    pub next_fire: Timestamp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_fire: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_job: Option<JobId>,
    pub created_at: Timestamp,
}

fn default_priority() -> u8 {
    DEFAULT_PRIORITY
}

/// What happens to ticks that passed while nothing fired them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Missed {
    /// One job for all of them, as soon as a process looks.
    #[default]
    Once,
    /// None: a tick found more than [`SKIP_LATE`] after its time is passed
    /// over.
    Skip,
}

/// How late a tick may fire under [`Missed::Skip`].
pub const SKIP_LATE: Duration = Duration::from_secs(60);

/// How long a tick's idempotency key is kept: far longer than a process
/// takes between creating the tick's job and advancing the schedule.
pub const TICK_KEY_WINDOW: Duration = Duration::from_secs(24 * 3600);

/// Which schedule and tick made a job (on its state and its first
/// `job_queued`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScheduleTick {
    pub name: String,
    pub tick: Timestamp,
}

/// A parsed cron expression in its time zone.
#[derive(Debug, Clone)]
pub struct Cron {
    cron: croner::Cron,
    tz: jiff::tz::TimeZone,
}

impl Cron {
    /// Parses `expr` (5 fields, or 6 with seconds first) read in time zone
    /// `tz` (an IANA name such as `Europe/Berlin`; unset: UTC).
    ///
    /// # Errors
    /// A message saying what is wrong with the expression or the zone.
    pub fn parse(expr: &str, tz: Option<&str>) -> std::result::Result<Cron, String> {
        let cron =
            parse_cron(expr).map_err(|e| format!("cron {expr:?}: {}", explained(expr, &e)))?;
        let tz = match tz {
            None => jiff::tz::TimeZone::UTC,
            Some(name) => jiff::tz::TimeZone::get(name).map_err(|_| {
                format!("unknown time zone {name:?}: use an IANA name such as Europe/Berlin")
            })?,
        };
        let parsed = Cron { cron, tz };
        // An expression that never matches (31 February) is refused now,
        // not found out at its first tick.
        if parsed.next_after(Timestamp::now()).is_err() {
            return Err(format!(
                "cron {expr:?} never fires: no date matches it (such as 31 February)"
            ));
        }
        Ok(parsed)
    }

    /// The first tick strictly after `t`.
    ///
    /// # Errors
    /// When no tick follows (the search gives up after some years).
    pub fn next_after(&self, t: Timestamp) -> std::result::Result<Timestamp, String> {
        let at = jiff::Timestamp::from_millisecond(t.unix_millis())
            .map_err(|e| format!("time {t} is out of range: {e}"))?
            .to_zoned(self.tz.clone());
        let next = self.cron.find_next_occurrence(&at, false).map_err(|e| {
            format!(
                "no tick of {:?} follows {t}: {e}",
                self.cron.pattern.to_string()
            )
        })?;
        Ok(Timestamp::from_unix_millis(
            next.timestamp().as_millisecond(),
        ))
    }
}

fn parse_cron(expr: &str) -> std::result::Result<croner::Cron, croner::errors::CronError> {
    use croner::parser::{CronParser, Seconds, Year};
    CronParser::builder()
        .seconds(Seconds::Optional)
        .year(Year::Disallowed)
        .build()
        .parse(expr)
}

/// What is wrong with `expr`, which croner refused with `error`: the field
/// count, or which field, and what that field takes. (croner's own words
/// name neither: "Number out of bounds.")
fn explained(expr: &str, error: &croner::errors::CronError) -> String {
    const FIELDS: [(&str, &str); 6] = [
        ("seconds", "0–59"),
        ("minute", "0–59"),
        ("hour", "0–23"),
        ("day-of-month", "1–31"),
        ("month", "1–12 or JAN–DEC"),
        ("day-of-week", "0–7 or SUN–SAT, 0 and 7 both Sunday"),
    ];
    let fields: Vec<&str> = expr.split_whitespace().collect();
    if expr.trim_start().starts_with('@') {
        return format!(
            "{error} (the shortcuts are @yearly or @annually, @monthly, @weekly, @daily, @hourly)"
        );
    }
    let names = match fields.len() {
        5 => &FIELDS[1..],
        6 => &FIELDS[..],
        n => {
            return format!(
                "{n} fields; a cron expression has 5 (minute hour day-of-month month \
                 day-of-week), or 6 with seconds first"
            )
        }
    };
    // The first field that fails alone, the others being `*`.
    for (i, (field, (name, range))) in fields.iter().zip(names).enumerate() {
        let alone: Vec<&str> = (0..fields.len())
            .map(|j| if j == i { *field } else { "*" })
            .collect();
        if let Err(e) = parse_cron(&alone.join(" ")) {
            return format!("the {name} field {field:?} is invalid ({range}): {e}");
        }
    }
    error.to_string()
}

/// Checks a schedule's name: 1 to 64 of letters, digits, `-`, `_`, `.`, `:`
/// (it is part of URLs and of Redis keys).
///
/// # Errors
/// What is wrong with it.
pub fn check_schedule_name(name: &str) -> std::result::Result<(), String> {
    let fine = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':');
    if name.is_empty() || name.len() > 64 || !name.chars().all(fine) {
        return Err(format!(
            "schedule name {:?} must be 1 to 64 letters, digits, '-', '_', '.' or ':'",
            name.chars().take(80).collect::<String>()
        ));
    }
    Ok(())
}

impl Schedule {
    /// The job of tick `tick`.
    fn job_of(&self, tick: Timestamp) -> NewJob {
        let mut new = NewJob::new(self.kind.clone(), self.params.clone(), self.owner.clone());
        new.queue = self.queue.clone();
        new.priority = self.priority;
        new.schedule = Some(ScheduleTick {
            name: self.name.clone(),
            tick,
        });
        new
    }

    /// The idempotency key of tick `tick`: its scope cannot be a user's
    /// (theirs are `<sub>\n<header>`, and a header holds no newline).
    fn tick_key(&self, tick: Timestamp) -> Idempotency {
        let spec = serde_json::json!([self.kind, self.params, self.queue, self.priority]);
        Idempotency {
            key: format!("\nschedule\n{}\n{}", self.name, tick.unix_millis()),
            fingerprint: blake3::hash(spec.to_string().as_bytes())
                .to_hex()
                .to_string(),
            window: TICK_KEY_WINDOW,
        }
    }
}

/// What one [`fire_due`] round did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Fired {
    /// Jobs this process created for ticks.
    pub created: usize,
    /// Ticks passed over ([`Missed::Skip`]).
    pub skipped: usize,
}

/// Fires every schedule whose tick came by `now`: creates the tick's job
/// (once across all processes) and moves the schedule on to its first tick
/// after `now`.
///
/// # Errors
/// Store errors; a schedule that cannot be fired (its expression no longer
/// parses, or its job is refused) is logged and passed over.
pub async fn fire_due(
    store: &dyn JobStore,
    schedules: &dyn ScheduleStore,
    now: Timestamp,
) -> Result<Fired> {
    let mut fired = Fired::default();
    for schedule in schedules.schedules().await? {
        if schedule.paused || schedule.next_fire > now {
            continue;
        }
        let cron = match Cron::parse(&schedule.cron, schedule.tz.as_deref()) {
            Ok(cron) => cron,
            Err(e) => {
                tracing::warn!(schedule = %schedule.name, error = %e, "passing over a schedule that no longer parses");
                continue;
            }
        };
        let tick = schedule.next_fire;
        let late = now.unix_millis().saturating_sub(tick.unix_millis());
        let skip = schedule.missed == Missed::Skip && late > SKIP_LATE.as_millis() as i64;
        let job = if skip {
            None
        } else {
            match store
                .create_job_once(schedule.job_of(tick), Some(&schedule.tick_key(tick)))
                .await
            {
                Ok(Created::New(job)) => {
                    fired.created += 1;
                    Some(job.id)
                }
                // Another process fired this tick (or this one did, and
                // died before moving the schedule on).
                Ok(Created::Existing { job, .. } | Created::Unique(job)) => Some(job.id),
                Err(e @ (BackendError::Invalid(_) | BackendError::Rejected { .. })) => {
                    tracing::warn!(schedule = %schedule.name, error = %e, "a schedule's job was refused; its tick is passed over");
                    None
                }
                Err(e) => return Err(e),
            }
        };
        let mut moved = schedule.clone();
        match cron.next_after(now.max(tick)) {
            Ok(next) => moved.next_fire = next,
            Err(e) => {
                tracing::warn!(schedule = %schedule.name, error = %e, "a schedule has no further tick; it is paused");
                moved.paused = true;
            }
        }
        if job.is_some() {
            moved.last_fire = Some(tick);
            moved.last_job = job;
        }
        fired.skipped += usize::from(skip);
        // Lost: another process moved it on first, or it was changed.
        schedules.put_schedule(&moved, Some(&schedule)).await?;
    }
    Ok(fired)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> Timestamp {
        s.parse().expect("a timestamp")
    }

    #[test]
    fn five_fields_are_minutes_and_six_start_with_seconds() {
        let every5 = Cron::parse("*/5 * * * *", None).expect("parses");
        assert_eq!(
            every5
                .next_after(at("2026-12-02T10:02:30.000Z"))
                .expect("a tick"),
            at("2026-12-02T10:05:00.000Z")
        );
        // Strictly after: a tick is never its own successor.
        assert_eq!(
            every5
                .next_after(at("2026-12-02T10:05:00.000Z"))
                .expect("a tick"),
            at("2026-12-02T10:10:00.000Z")
        );
        let every2s = Cron::parse("*/2 * * * * *", None).expect("parses");
        assert_eq!(
            every2s
                .next_after(at("2026-12-02T10:00:00.500Z"))
                .expect("a tick"),
            at("2026-12-02T10:00:02.000Z")
        );
        let hourly = Cron::parse("@hourly", None).expect("parses");
        assert_eq!(
            hourly
                .next_after(at("2026-12-02T10:00:00.000Z"))
                .expect("a tick"),
            at("2026-12-02T11:00:00.000Z")
        );
    }

    #[test]
    fn a_time_zone_moves_the_ticks_with_its_offset_and_daylight_saving() {
        let berlin = Cron::parse("0 9 * * *", Some("Europe/Berlin")).expect("parses");
        // Winter: UTC+1.
        assert_eq!(
            berlin
                .next_after(at("2026-12-02T00:00:00.000Z"))
                .expect("a tick"),
            at("2026-12-02T08:00:00.000Z")
        );
        // Summer: UTC+2.
        assert_eq!(
            berlin
                .next_after(at("2026-07-01T00:00:00.000Z"))
                .expect("a tick"),
            at("2026-07-01T07:00:00.000Z")
        );
    }

    #[test]
    fn bad_expressions_and_zones_say_what_is_wrong() {
        for bad in [
            "",
            "* * *",
            "61 * * * *",
            "* * * * * * * *",
            "0 0 31 2 *",
            "every day",
        ] {
            let e = Cron::parse(bad, None).expect_err(bad);
            assert!(!e.is_empty(), "{bad}");
        }
        // Which field, and what it takes; a count; a date that never comes.
        for (bad, says) in [
            ("61 * * * *", "the minute field \"61\" is invalid (0–59)"),
            (
                "0 3 * * MON-XYZ",
                "the day-of-week field \"MON-XYZ\" is invalid",
            ),
            ("0 61 * * * *", "the minute field \"61\""),
            ("0 0 25 * * *", "the hour field \"25\" is invalid (0–23)"),
            ("* * *", "3 fields; a cron expression has 5"),
            ("0 0 31 2 *", "never fires"),
        ] {
            let e = Cron::parse(bad, None).expect_err(bad);
            assert!(e.contains(says), "{bad}: {e}");
        }
        let e = Cron::parse("* * * * *", Some("Mars/Olympus")).expect_err("unknown zone");
        assert!(e.contains("Mars/Olympus"), "{e}");
    }

    #[test]
    fn names_are_checked() {
        for good in ["nightly", "scan-docs_2", "team.a:hourly"] {
            check_schedule_name(good).expect(good);
        }
        for bad in ["", "has space", "slash/in", &"x".repeat(65)] {
            check_schedule_name(bad).expect_err(bad);
        }
    }
}
