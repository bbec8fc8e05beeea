//! Retry policies: how many attempts a job gets and how long it waits
//! between them (docs/workers.md, "Retries").
//!
//! A policy is given per job at create time (`max_attempts`, `backoff`) or
//! per kind by the worker that runs it; the job's own fields win. The
//! backoff is exponential with jitter: the wait after failed attempt `a` is
//! `base × factor^(a-1)`, capped at `max`, then spread by ±20% (and capped
//! again), so that jobs failing together do not come back together.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The most attempts a policy may allow.
pub const MAX_ATTEMPTS_LIMIT: u32 = 100;
/// How far jitter moves a wait, either way (a fraction of it).
pub const JITTER: f64 = 0.2;

/// A job's or a kind's retry policy. Unset fields fall back to the next
/// level (job → kind → worker defaults).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RetryPolicy {
    /// Attempts in all, the first included (1: never retried).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_attempts: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff: Option<RetryBackoff>,
}

impl RetryPolicy {
    /// Neither field is set.
    pub fn is_unset(&self) -> bool {
        self.max_attempts.is_none() && self.backoff.is_none()
    }

    /// This policy, with unset fields taken from `fallback`.
    pub fn or(&self, fallback: &RetryPolicy) -> RetryPolicy {
        RetryPolicy {
            max_attempts: self.max_attempts.or(fallback.max_attempts),
            backoff: self.backoff.clone().or_else(|| fallback.backoff.clone()),
        }
    }

    /// Checks the fields' ranges.
    ///
    /// # Errors
    /// A message naming the field that is out of range.
    pub fn check(&self) -> Result<(), String> {
        if let Some(n) = self.max_attempts {
            if !(1..=MAX_ATTEMPTS_LIMIT).contains(&n) {
                return Err(format!(
                    "max_attempts must be 1 to {MAX_ATTEMPTS_LIMIT}, not {n}"
                ));
            }
        }
        if let Some(backoff) = &self.backoff {
            backoff.check()?;
        }
        Ok(())
    }
}

/// Exponential backoff with jitter. On the wire:
/// `{"base":"1s","factor":2,"max":"5m"}` (durations as `30s`, `5m`, `1h`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RetryBackoff {
    /// The wait after the first failed attempt.
    #[serde(with = "human")]
    pub base: Duration,
    /// How much each further wait grows (1 to 100; default 2).
    #[serde(default = "default_factor")]
    pub factor: f64,
    /// The longest wait (default 5 min).
    #[serde(with = "human", default = "default_max")]
    pub max: Duration,
}

fn default_factor() -> f64 {
    2.0
}

fn default_max() -> Duration {
    Duration::from_secs(300)
}

impl Default for RetryBackoff {
    /// 1 s, doubling, at most 5 min.
    fn default() -> Self {
        RetryBackoff {
            base: Duration::from_secs(1),
            factor: 2.0,
            max: Duration::from_secs(300),
        }
    }
}

impl RetryBackoff {
    /// The longest wait a policy may give (one week).
    pub const LONGEST: Duration = Duration::from_secs(7 * 24 * 3600);

    /// Checks the fields' ranges.
    ///
    /// # Errors
    /// A message naming the field that is out of range.
    pub fn check(&self) -> Result<(), String> {
        if !(self.factor.is_finite() && (1.0..=100.0).contains(&self.factor)) {
            return Err(format!(
                "backoff factor must be 1 to 100, not {}",
                self.factor
            ));
        }
        if self.max > Self::LONGEST || self.base > Self::LONGEST {
            return Err("backoff base and max must be at most 7 days".to_owned());
        }
        if self.max < self.base {
            return Err(format!(
                "backoff max ({}) is shorter than its base ({})",
                humantime::format_duration(self.max),
                humantime::format_duration(self.base)
            ));
        }
        Ok(())
    }

    /// The wait after failed attempt `attempt` (1 for the first), before
    /// jitter.
    pub fn nominal(&self, attempt: u32) -> Duration {
        let exponent = i32::try_from(attempt.saturating_sub(1)).unwrap_or(i32::MAX);
        let secs = self.base.as_secs_f64() * self.factor.powi(exponent);
        if !secs.is_finite() || secs >= self.max.as_secs_f64() {
            return self.max;
        }
        Duration::from_secs_f64(secs)
    }

    /// The wait after failed attempt `attempt`, jittered by `unit` (a
    /// number in [0, 1), random in practice): within ±[`JITTER`] of
    /// [`RetryBackoff::nominal`], never above `max`.
    pub fn wait(&self, attempt: u32, unit: f64) -> Duration {
        let spread = 1.0 - JITTER + 2.0 * JITTER * unit.clamp(0.0, 1.0);
        self.nominal(attempt).mul_f64(spread).min(self.max)
    }
}

impl RetryBackoff {
    /// [`RetryBackoff::wait`] with random jitter.
    pub fn jittered(&self, attempt: u32) -> Duration {
        self.wait(attempt, rand::random::<f64>())
    }
}

impl fmt::Display for RetryBackoff {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} ×{} up to {}",
            humantime::format_duration(self.base),
            self.factor,
            humantime::format_duration(self.max)
        )
    }
}

/// Durations as humantime text (`"1s"`, `"5m"`).
pub(crate) mod human {
    use super::*;

    pub(crate) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&humantime::format_duration(*d))
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(&text)
            .map_err(|e| serde::de::Error::custom(format!("invalid duration {text:?}: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_grow_by_the_factor_up_to_the_cap_and_jitter_stays_within_bounds() {
        let b = RetryBackoff {
            base: Duration::from_secs(1),
            factor: 3.0,
            max: Duration::from_secs(20),
        };
        let nominal: Vec<u64> = (1..=5).map(|a| b.nominal(a).as_secs()).collect();
        assert_eq!(nominal, [1, 3, 9, 20, 20]);
        assert_eq!(b.wait(2, 0.0), Duration::from_millis(2400));
        assert_eq!(b.wait(2, 1.0), Duration::from_millis(3600));
        assert_eq!(
            b.wait(4, 1.0),
            Duration::from_secs(20),
            "capped after jitter"
        );
        assert_eq!(b.nominal(u32::MAX), b.max);
    }

    #[test]
    fn policies_parse_from_the_wire_shape_and_fall_back_field_by_field() {
        let p: RetryPolicy = serde_json::from_str(
            r#"{"max_attempts":4,"backoff":{"base":"500ms","factor":2,"max":"5m"}}"#,
        )
        .expect("parses");
        assert_eq!(p.max_attempts, Some(4));
        let backoff = p.backoff.clone().expect("backoff");
        assert_eq!(backoff.base, Duration::from_millis(500));
        assert!(p.check().is_ok());
        let text = serde_json::to_string(&p).expect("serializes");
        assert_eq!(
            serde_json::from_str::<RetryPolicy>(&text).ok(),
            Some(p.clone())
        );

        let kind = RetryPolicy {
            max_attempts: Some(9),
            backoff: None,
        };
        let job = RetryPolicy {
            max_attempts: None,
            backoff: Some(backoff),
        };
        let both = job.or(&kind);
        assert_eq!(both.max_attempts, Some(9));
        assert!(both.backoff.is_some());

        for bad in [
            r#"{"max_attempts":0}"#,
            r#"{"backoff":{"base":"1m","max":"1s"}}"#,
            r#"{"backoff":{"base":"1s","factor":0.5}}"#,
        ] {
            let p: RetryPolicy = serde_json::from_str(bad).expect("parses");
            assert!(p.check().is_err(), "{bad} accepted");
        }
        assert!(serde_json::from_str::<RetryPolicy>(r#"{"backoff":{"base":"soon"}}"#).is_err());
    }
}
