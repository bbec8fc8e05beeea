//! `demo`: synthetic progress for demos, tests and benchmarks. Each step
//! waits `delay_ms` and reports `progress`; `fail_at` fails the job at that
//! step.

use async_trait::async_trait;
use jobwire_core::kinds::DemoParams;
use serde_json::json;

use crate::handler::{Handler, JobContext, JobError, JobOutcome};

/// The `demo` handler.
#[derive(Clone, Copy, Debug, Default)]
pub struct Demo;

#[async_trait]
impl Handler for Demo {
    async fn run(&self, job: JobContext) -> Result<JobOutcome, JobError> {
        let p = DemoParams::parse(job.params()).map_err(JobError::msg)?;
        let reporter = job.reporter();
        let delay = std::time::Duration::from_millis(p.delay_ms);
        for step in 1..=p.steps {
            if !delay.is_zero() {
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    () = reporter.stopped() => reporter.check()?,
                }
            }
            if p.fail_at == Some(step) {
                return Err(JobError::msg(format!(
                    "demo failure at step {step} of {}, as asked by fail_at",
                    p.steps
                )));
            }
            reporter
                .progress(step, p.steps, &format!("step {step} of {}", p.steps))
                .await?;
        }
        Ok(JobOutcome::with_result(json!({ "steps": p.steps })))
    }
}
