//! Opening the job store on Redis: retried with backoff while Redis does not
//! answer (a process started before its Redis waits for it instead of
//! failing), but a bad URL or a foreign key layout is a configuration error.

use std::sync::Arc;
use std::time::Duration;

use jobwire_core::{Backend, Backoff};
use jobwire_redis::{ConnectError, RedisBackend};
use tokio_util::sync::CancellationToken;

use crate::config::StoreFlags;
use crate::Failure;

/// Checks `REDIS_URL` and the TLS files without connecting: a bad one is a
/// configuration error, reported before the process takes its port.
pub(crate) fn check(store: &StoreFlags) -> Result<(), Failure> {
    if store.redis_url.is_none() {
        return Ok(());
    }
    store
        .redis_config()
        .check()
        .map_err(|e| Failure::Usage(e.into()))
}

/// Connects to `REDIS_URL`. `None` when shutdown came first.
pub(crate) async fn connect_redis(
    store: &StoreFlags,
    shutdown: &CancellationToken,
) -> Result<Option<Arc<dyn Backend>>, Failure> {
    let config = store.redis_config();
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
    loop {
        match RedisBackend::connect(config.clone()).await {
            Ok(backend) => return Ok(Some(Arc::new(backend))),
            Err(
                e @ (ConnectError::Url { .. }
                | ConnectError::Sentinel { .. }
                | ConnectError::Layout(_)
                | ConnectError::Cluster(_)
                | ConnectError::Tls(_)),
            ) => return Err(Failure::Usage(e.into())),
            Err(e) => {
                let wait = backoff.failed();
                tracing::warn!(error = %e, retry_in = ?wait, "waiting for Redis");
                tokio::select! {
                    () = shutdown.cancelled() => return Ok(None),
                    () = tokio::time::sleep(wait) => {}
                }
            }
        }
    }
}
