//! Parameters of the built-in job kinds (docs/protocol.md), parsed in one place so the
//! gateway refuses bad parameters with 422 at `POST /api/jobs` and the worker
//! reads them with exactly the same rules.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The built-in kinds.
pub const BUILTIN_KINDS: [&str; 2] = [ScanParams::KIND, DemoParams::KIND];

/// Parameters of `scan`: walk a directory, hash and count every file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScanParams {
    /// The directory to walk.
    pub path: String,
    /// Only files whose path relative to `path` matches this glob
    /// (`*.md`, `docs/**/*.rs`).
    #[serde(default)]
    pub glob: Option<String>,
}

impl ScanParams {
    pub const KIND: &'static str = "scan";

    /// Reads and checks `scan` parameters.
    ///
    /// # Errors
    /// A message naming the offending parameter.
    pub fn parse(params: &Value) -> Result<ScanParams, String> {
        let p: ScanParams = from_params(params)?;
        if p.path.trim().is_empty() {
            return Err("params.path (a directory) must not be empty".to_owned());
        }
        if let Some(glob) = &p.glob {
            glob::Pattern::new(glob).map_err(|e| format!("params.glob {glob:?}: {e}"))?;
        }
        Ok(p)
    }
}

/// Parameters of `demo`: synthetic progress for demos, tests and benchmarks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DemoParams {
    /// Progress steps (1–1,000,000; default 10).
    #[serde(default = "DemoParams::default_steps")]
    pub steps: u64,
    /// Pause before each step, in milliseconds (0–60,000; default 500).
    #[serde(default = "DemoParams::default_delay_ms")]
    pub delay_ms: u64,
    /// Fail the job at this step (1-based), for trying out failures.
    #[serde(default)]
    pub fail_at: Option<u64>,
}

impl DemoParams {
    pub const KIND: &'static str = "demo";
    pub const MAX_STEPS: u64 = 1_000_000;
    pub const MAX_DELAY_MS: u64 = 60_000;

    fn default_steps() -> u64 {
        10
    }

    fn default_delay_ms() -> u64 {
        500
    }

    /// Reads and checks `demo` parameters.
    ///
    /// # Errors
    /// A message naming the offending parameter.
    pub fn parse(params: &Value) -> Result<DemoParams, String> {
        let p: DemoParams = from_params(params)?;
        if !(1..=Self::MAX_STEPS).contains(&p.steps) {
            return Err(format!(
                "params.steps must be an integer from 1 to {}",
                Self::MAX_STEPS
            ));
        }
        if p.delay_ms > Self::MAX_DELAY_MS {
            return Err(format!(
                "params.delay_ms must be an integer from 0 to {}",
                Self::MAX_DELAY_MS
            ));
        }
        if p.fail_at == Some(0) {
            return Err("params.fail_at counts steps from 1".to_owned());
        }
        Ok(p)
    }
}

/// Checks the parameters of a built-in kind; other kinds pass unchecked.
///
/// # Errors
/// A message naming the offending parameter.
pub fn check_params(kind: &str, params: &Value) -> Result<(), String> {
    match kind {
        ScanParams::KIND => ScanParams::parse(params).map(drop),
        DemoParams::KIND => DemoParams::parse(params).map(drop),
        _ => Ok(()),
    }
}

/// Deserializes an object of parameters (`null` counts as `{}`), naming the
/// offending field in errors.
fn from_params<T: for<'de> Deserialize<'de>>(params: &Value) -> Result<T, String> {
    let params = match params {
        Value::Null => Value::Object(Default::default()),
        Value::Object(_) => params.clone(),
        _ => return Err("params must be a JSON object".to_owned()),
    };
    serde_json::from_value(params).map_err(|e| format!("params: {e}"))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn demo_defaults_and_limits() {
        assert_eq!(
            DemoParams::parse(&json!(null)),
            Ok(DemoParams {
                steps: 10,
                delay_ms: 500,
                fail_at: None
            })
        );
        assert!(DemoParams::parse(&json!({"steps": 0})).is_err());
        assert!(DemoParams::parse(&json!({"steps": -1})).is_err());
        assert!(DemoParams::parse(&json!({"delay_ms": 60_001})).is_err());
        assert!(DemoParams::parse(&json!({"fail_at": 0})).is_err());
        let err = DemoParams::parse(&json!({"stepz": 3})).expect_err("unknown field");
        assert!(err.contains("stepz"), "{err}");
    }

    #[test]
    fn scan_needs_a_path_and_a_valid_glob() {
        assert!(ScanParams::parse(&json!({})).is_err());
        assert!(ScanParams::parse(&json!({"path": " "})).is_err());
        assert!(ScanParams::parse(&json!({"path": "/tmp", "glob": "[a"})).is_err());
        assert!(ScanParams::parse(&json!({"path": "/tmp", "glob": 3})).is_err());
        let ok = ScanParams::parse(&json!({"path": "/tmp", "glob": "**/*.md"}));
        assert_eq!(ok.map(|p| p.glob), Ok(Some("**/*.md".to_owned())));
        assert!(check_params("other", &json!([1])).is_ok());
    }
}
