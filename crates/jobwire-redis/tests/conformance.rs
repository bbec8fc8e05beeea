//! The backend conformance suite, run against `RedisBackend` on a real
//! `redis-server` that the test kit starts on a free port for each test.

use std::sync::Arc;

use async_trait::async_trait;
use jobwire_core::testsuite::{BackendFactory, TestBackend};
use jobwire_core::BackendConfig;
use jobwire_redis::{RedisBackend, RedisConfig};
use jobwire_testkit::RedisServer;

struct Redis;

#[async_trait]
impl BackendFactory for Redis {
    async fn create(&self, config: BackendConfig) -> anyhow::Result<TestBackend> {
        let server = RedisServer::start()?;
        let backend = RedisBackend::connect(RedisConfig {
            backend: config,
            // Unique per test, so a shared JOBWIRE_TEST_REDIS_URL server works too.
            key_prefix: format!("jobwire-test-{}", jobwire_core::JobId::generate()),
            ..RedisConfig::new(server.url())
        })
        .await?;
        Ok(TestBackend {
            backend: Arc::new(backend),
            guard: Box::new(server),
        })
    }
}

jobwire_core::backend_conformance_tests!(Redis);
