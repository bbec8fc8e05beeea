//! The memory backend's cron schedules: a map by name under one lock, so a
//! compare-and-set is a comparison under that lock.

use async_trait::async_trait;

use super::{lock, MemoryBackend};
use crate::backend::{Result, ScheduleStore};
use crate::schedule::Schedule;

#[async_trait]
impl ScheduleStore for MemoryBackend {
    async fn schedules(&self) -> Result<Vec<Schedule>> {
        Ok(lock(&self.shared.schedules).values().cloned().collect())
    }

    async fn put_schedule(&self, schedule: &Schedule, expected: Option<&Schedule>) -> Result<bool> {
        let mut schedules = lock(&self.shared.schedules);
        if let Some(expected) = expected {
            if schedules.get(&schedule.name) != Some(expected) {
                return Ok(false);
            }
        }
        schedules.insert(schedule.name.clone(), schedule.clone());
        Ok(true)
    }

    async fn delete_schedule(&self, name: &str) -> Result<bool> {
        Ok(lock(&self.shared.schedules).remove(name).is_some())
    }
}
