//! The backend conformance suite, run against `MemoryBackend`.

use std::sync::Arc;

use async_trait::async_trait;
use jobwire_core::testsuite::{BackendFactory, TestBackend};
use jobwire_core::{BackendConfig, MemoryBackend};

struct Memory;

#[async_trait]
impl BackendFactory for Memory {
    async fn create(&self, config: BackendConfig) -> anyhow::Result<TestBackend> {
        Ok(TestBackend {
            backend: Arc::new(MemoryBackend::new(config)),
            guard: Box::new(()),
        })
    }
}

jobwire_core::backend_conformance_tests!(Memory);
