//! Redis losing acknowledged writes, on demand: the fault that an
//! `appendfsync everysec` AOF allows on a power loss, that a failover to a
//! lagging replica causes, and that a restore from an older snapshot is.
//!
//! [`Snapshot::take`] copies every key (`DUMP`, with its time to live);
//! [`Snapshot::lose_writes_since`] puts the whole dataset back as it was
//! then (keys created since are deleted, the others `RESTORE`d) and restarts
//! the server, so that it comes back under a new replication id, as a
//! crashed or failed-over Redis does. Deterministic, unlike cutting an AOF
//! mid-write: tests know exactly which writes were lost.

use anyhow::{Context, Result};

use crate::RedisServer;

/// Every key of a server at one moment.
#[derive(Debug)]
pub struct Snapshot {
    /// (key, DUMP payload, PTTL in ms or 0 for none).
    keys: Vec<(Vec<u8>, Vec<u8>, i64)>,
}

impl Snapshot {
    /// Copies every key of `server`.
    ///
    /// # Errors
    /// When the server cannot be read.
    pub async fn take(server: &RedisServer) -> Result<Snapshot> {
        let mut conn = connect(server).await?;
        // One script, so the copy is of one moment: copied key by key, a
        // job's log could be taken before a publish and its state after.
        let keys: Vec<(Vec<u8>, Vec<u8>, i64)> = redis::Script::new(
            r"
            local out = {}
            for _, key in ipairs(redis.call('KEYS', '*')) do
                local dump = redis.call('DUMP', key)
                if dump then
                    out[#out + 1] = {key, dump, math.max(redis.call('PTTL', key), 0)}
                end
            end
            return out
            ",
        )
        .invoke_async(&mut conn)
        .await
        .context("copying every key")?;
        Ok(Snapshot { keys })
    }

    /// Rewinds `server` to this snapshot and restarts it. The server must
    /// keep its data across restarts (AOF), or the restart loses
    /// everything instead.
    ///
    /// # Errors
    /// When the server cannot be written or does not come back.
    pub async fn lose_writes_since(&self, server: &mut RedisServer) -> Result<()> {
        let mut conn = connect(server).await?;
        let kept: std::collections::HashSet<&[u8]> =
            self.keys.iter().map(|(k, _, _)| k.as_slice()).collect();
        for key in all_keys(&mut conn).await? {
            if !kept.contains(key.as_slice()) {
                redis::cmd("DEL")
                    .arg(&key)
                    .query_async::<()>(&mut conn)
                    .await?;
            }
        }
        for (key, dump, ttl) in &self.keys {
            redis::cmd("RESTORE")
                .arg(key)
                .arg(ttl)
                .arg(dump)
                .arg("REPLACE")
                .query_async::<()>(&mut conn)
                .await
                .context("RESTORE")?;
        }
        drop(conn);
        server.restart()
    }
}

async fn connect(server: &RedisServer) -> Result<redis::aio::MultiplexedConnection> {
    let client = redis::Client::open(server.url())?;
    Ok(client.get_multiplexed_async_connection().await?)
}

async fn all_keys(conn: &mut redis::aio::MultiplexedConnection) -> Result<Vec<Vec<u8>>> {
    let mut cursor = 0u64;
    let mut keys = Vec::new();
    loop {
        let (next, batch): (u64, Vec<Vec<u8>>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("COUNT")
            .arg(1000)
            .query_async(conn)
            .await?;
        keys.extend(batch);
        if next == 0 {
            return Ok(keys);
        }
        cursor = next;
    }
}
