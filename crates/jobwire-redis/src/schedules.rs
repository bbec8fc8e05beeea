//! The cron schedules on Redis: one hash (`<prefix>:schedules`, name →
//! JSON record), written whole, and compare-and-set against the record as
//! it was read (`lua/put_schedule.lua`).

use async_trait::async_trait;
use jobwire_core::backend::ScheduleStore;
use jobwire_core::{BackendError, Schedule};

use crate::connection::backend_error;
use crate::{scripts, RedisBackend, Result};

#[async_trait]
impl ScheduleStore for RedisBackend {
    async fn schedules(&self) -> Result<Vec<Schedule>> {
        let all: Vec<(String, String)> = redis::cmd("HGETALL")
            .arg(self.shared.keys.schedules())
            .query_async(&mut self.shared.conns.command())
            .await
            .map_err(backend_error)?;
        let mut schedules = Vec::with_capacity(all.len());
        for (name, json) in all {
            match serde_json::from_str::<Schedule>(&json) {
                Ok(schedule) => schedules.push(schedule),
                Err(e) => {
                    tracing::warn!(schedule = %name, error = %e, "ignoring a schedule this version cannot read");
                }
            }
        }
        schedules.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(schedules)
    }

    async fn put_schedule(&self, schedule: &Schedule, expected: Option<&Schedule>) -> Result<bool> {
        let mut invocation = scripts::PUT_SCHEDULE.prepare_invoke();
        invocation
            .key(self.shared.keys.schedules())
            .arg(&schedule.name)
            .arg(to_json(schedule)?)
            .arg(u8::from(expected.is_some()))
            .arg(match expected {
                Some(expected) => to_json(expected)?,
                None => String::new(),
            });
        let stored: i64 = self.write(&invocation, true).await?;
        Ok(stored == 1)
    }

    async fn delete_schedule(&self, name: &str) -> Result<bool> {
        let removed: i64 = redis::cmd("HDEL")
            .arg(self.shared.keys.schedules())
            .arg(name)
            .query_async(&mut self.shared.conns.command())
            .await
            .map_err(backend_error)?;
        Ok(removed == 1)
    }
}

fn to_json(schedule: &Schedule) -> Result<String> {
    serde_json::to_string(schedule)
        .map_err(|e| BackendError::Data(format!("schedule {}: {e}", schedule.name)))
}
