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
//!
//! [`Snapshot`] rewrites the keys on the running server before restarting
//! it, so it needs the test to hold its writers still meanwhile: a write
//! that lands between the `RESTORE`s, or between the last one and the
//! restart, is made in the old history (same replication id), which is the
//! in-place rewrite docs/design.md says jobwire cannot detect. Under live
//! load (the chaos suite) use [`FileSnapshot`]: it copies the data files
//! and puts them back while the server is down, which is what a restore
//! from an older snapshot or a lost disk tail really is.

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

/// A server's data files (its AOF directory) at one moment.
#[derive(Debug)]
pub struct FileSnapshot {
    copy: tempfile::TempDir,
}

impl FileSnapshot {
    /// Copies the server's AOF directory. The server is frozen (SIGSTOP)
    /// while the files are copied, so they are of one moment; with
    /// `appendfsync everysec` every acknowledged write is in them (Redis
    /// writes the AOF before it replies; only the fsync is deferred).
    ///
    /// # Errors
    /// Without AOF persistence, or when the files cannot be copied.
    pub fn take(server: &RedisServer) -> Result<FileSnapshot> {
        let from = server.data_dir()?.join("appendonlydir");
        let copy = tempfile::Builder::new()
            .prefix("jobwire-redis-snapshot-")
            .tempdir()
            .context("creating a snapshot directory")?;
        server.signal("STOP")?;
        let copied = copy_dir(&from, copy.path());
        let continued = server.signal("CONT");
        copied.with_context(|| format!("copying {}", from.display()))?;
        continued?;
        Ok(FileSnapshot { copy })
    }

    /// Crashes the server (SIGKILL), puts its AOF directory back as it was
    /// at [`FileSnapshot::take`] and starts it again: every write since is
    /// lost, and the server comes back under a new replication id.
    ///
    /// # Errors
    /// When the files cannot be put back or the server does not come back.
    pub fn lose_writes_since(&self, server: &mut RedisServer) -> Result<()> {
        server.kill()?;
        let to = server.data_dir()?.join("appendonlydir");
        if to.exists() {
            std::fs::remove_dir_all(&to).with_context(|| format!("removing {}", to.display()))?;
        }
        std::fs::create_dir_all(&to)?;
        copy_dir(self.copy.path(), &to).with_context(|| format!("restoring {}", to.display()))?;
        server.spawn()
    }
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) -> std::io::Result<()> {
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        if entry.file_type()?.is_file() {
            std::fs::copy(entry.path(), to.join(entry.file_name()))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Persistence;

    async fn dbsize(server: &RedisServer) -> Result<u64> {
        let mut conn = connect(server).await?;
        Ok(redis::cmd("DBSIZE").query_async(&mut conn).await?)
    }

    async fn set(server: &RedisServer, key: &str) -> Result<()> {
        let mut conn = connect(server).await?;
        Ok(redis::cmd("SET")
            .arg(key)
            .arg(1)
            .query_async(&mut conn)
            .await?)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_file_snapshot_loses_what_was_written_after_it() -> Result<()> {
        let mut server = RedisServer::start_private(Persistence::AofEverysec)?;
        set(&server, "before").await?;
        let snapshot = FileSnapshot::take(&server)?;
        set(&server, "after-1").await?;
        set(&server, "after-2").await?;
        assert_eq!(dbsize(&server).await?, 3);
        snapshot.lose_writes_since(&mut server)?;
        assert_eq!(dbsize(&server).await?, 1);
        Ok(())
    }
}
