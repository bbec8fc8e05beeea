//! A Sentinel set-up on free ports: one master, one replica and three
//! sentinels watching them (quorum 2, a master counts as down after 1 s).
//! Tests kill the master with [`SentinelSet::kill_master`], wait for the
//! sentinels to promote the replica with [`SentinelSet::wait_failover`], and
//! can bring the old master back, which the sentinels turn into a replica.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::{cli, free_port, wait_until, Persistence, RedisServer};

/// The name the sentinels know the master by.
pub const MASTER_NAME: &str = "jobwire";

/// One master, one replica, three sentinels; all killed on drop.
#[derive(Debug)]
pub struct SentinelSet {
    /// The two data servers; which one is master changes with failovers.
    pub servers: [RedisServer; 2],
    sentinels: Vec<Child>,
    sentinel_ports: Vec<u16>,
    _dir: tempfile::TempDir,
}

impl SentinelSet {
    /// Starts the servers (AOF on, so a restarted node keeps its data, as a
    /// real one would), makes the second a replica of the first, waits until
    /// it is in sync, then starts the sentinels and waits until they agree
    /// on the master and have found the replica.
    ///
    /// # Errors
    /// When `redis-server` is missing or the set-up does not come up.
    pub fn start() -> Result<SentinelSet> {
        let master = RedisServer::start_private(Persistence::Aof)?;
        let replica = RedisServer::start_private(Persistence::Aof)?;
        command(
            &replica,
            &["REPLICAOF", "127.0.0.1", &master.port().to_string()],
        )?;
        wait_until(Duration::from_secs(10), "the replica to sync", || {
            Ok(info(&replica, "replication")?.contains("master_link_status:up"))
        })?;
        let dir = tempfile::Builder::new()
            .prefix("jobwire-sentinel-")
            .tempdir()
            .context("creating a directory for the sentinels")?;
        let mut set = SentinelSet {
            servers: [master, replica],
            sentinels: Vec::new(),
            sentinel_ports: Vec::new(),
            _dir: dir,
        };
        for i in 0..3 {
            let port = free_port()?;
            let conf = set._dir.path().join(format!("sentinel-{i}.conf"));
            std::fs::write(
                &conf,
                format!(
                    "port {port}\nbind 127.0.0.1\nprotected-mode no\ndir {dir}\n\
                     sentinel monitor {MASTER_NAME} 127.0.0.1 {master} 2\n\
                     sentinel down-after-milliseconds {MASTER_NAME} 1000\n\
                     sentinel failover-timeout {MASTER_NAME} 4000\n\
                     sentinel parallel-syncs {MASTER_NAME} 1\n",
                    dir = set._dir.path().display(),
                    master = set.servers[0].port(),
                ),
            )?;
            let child = Command::new("redis-server")
                .arg(&conf)
                .arg("--sentinel")
                .arg("--logfile")
                .arg(set._dir.path().join(format!("sentinel-{i}.log")))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context("starting redis-server --sentinel")?;
            set.sentinels.push(child);
            set.sentinel_ports.push(port);
        }
        let master_port = set.servers[0].port();
        for &port in &set.sentinel_ports {
            wait_until(
                Duration::from_secs(15),
                "the sentinels to see the set",
                || {
                    let master = sentinel_master(port)?;
                    let replicas = sentinel_query(port, &["SENTINEL", "REPLICAS", MASTER_NAME])
                        .map(|r| r.contains("slave"))
                        .unwrap_or(false);
                    Ok(master == Some(master_port) && replicas)
                },
            )?;
        }
        Ok(set)
    }

    /// `redis+sentinel://` URL of the three sentinels and the master name.
    pub fn url(&self) -> String {
        let hosts: Vec<String> = self
            .sentinel_ports
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect();
        format!("redis+sentinel://{}/{MASTER_NAME}", hosts.join(","))
    }

    /// The port of the master as the first sentinel that answers reports it.
    ///
    /// # Errors
    /// When no sentinel answers.
    pub fn master_port(&self) -> Result<u16> {
        for &port in &self.sentinel_ports {
            if let Ok(Some(master)) = sentinel_master(port) {
                return Ok(master);
            }
        }
        bail!("no sentinel answered")
    }

    /// The server that is master now.
    ///
    /// # Errors
    /// When no sentinel answers or the master is not one of the two.
    pub fn master(&mut self) -> Result<&mut RedisServer> {
        let port = self.master_port()?;
        self.servers
            .iter_mut()
            .find(|s| s.port() == port)
            .context("the sentinels' master is not one of the set's servers")
    }

    /// Waits until the replica has every write the master took (`WAIT`).
    ///
    /// # Errors
    /// When the replica does not catch up within 5 s.
    pub fn wait_replicated(&mut self) -> Result<()> {
        let master = self.master()?;
        let acked = command(master, &["WAIT", "1", "5000"])?;
        if acked.trim() != "1" {
            bail!("the replica did not catch up: WAIT answered {acked}");
        }
        Ok(())
    }

    /// Waits until the server on `port` is a replica in sync with the
    /// master (after a restart the sentinels make it one, then it syncs).
    ///
    /// # Errors
    /// When that does not happen within 30 s.
    pub fn wait_in_sync(&self, port: u16) -> Result<()> {
        wait_until(Duration::from_secs(30), "the replica to sync", || {
            let info = cli(port, &["INFO", "replication"])?;
            Ok(info.contains("role:slave") && info.contains("master_link_status:up"))
        })
    }

    /// Starts the server on `port` again (same data directory).
    ///
    /// # Errors
    /// When `port` is not one of the set's servers or it does not come up.
    pub fn restart(&mut self, port: u16) -> Result<()> {
        self.servers
            .iter_mut()
            .find(|s| s.port() == port)
            .context("no such server in the set")?
            .restart()
    }

    /// Kills the current master (SIGKILL); returns its port.
    ///
    /// # Errors
    /// When the master cannot be found.
    pub fn kill_master(&mut self) -> Result<u16> {
        let master = self.master()?;
        master.kill()?;
        Ok(master.port())
    }

    /// Waits until every sentinel names a master other than `old` (the
    /// replica was promoted); returns the new master's port.
    ///
    /// A failover takes a few seconds, but a sentinel whose timer stalls
    /// for 2 s (a loaded 2-core machine running the whole suite) enters
    /// TILT mode and does nothing for 30 s; the wait allows for that.
    ///
    /// # Errors
    /// When the failover does not happen within 90 s; the error carries
    /// the end of each sentinel's log.
    pub fn wait_failover(&self, old: u16) -> Result<u16> {
        let mut new = 0;
        let waited = wait_until(Duration::from_secs(90), "the failover", || {
            let mut promoted = None;
            for &port in &self.sentinel_ports {
                match sentinel_master(port)? {
                    Some(master) if master != old => promoted = Some(master),
                    _ => return Ok(false),
                }
            }
            new = promoted.unwrap_or(0);
            Ok(promoted.is_some())
        });
        waited.map_err(|e| e.context(self.log_tails()))?;
        Ok(new)
    }

    /// The last lines of every sentinel's log, for an error message.
    fn log_tails(&self) -> String {
        let mut out = String::from("sentinel logs:");
        for i in 0..self.sentinels.len() {
            let path = self._dir.path().join(format!("sentinel-{i}.log"));
            let log = std::fs::read_to_string(&path).unwrap_or_default();
            let lines: Vec<&str> = log.lines().collect();
            out.push_str(&format!("\n--- sentinel {i} ---\n"));
            out.push_str(&lines[lines.len().saturating_sub(15)..].join("\n"));
        }
        out
    }
}

impl Drop for SentinelSet {
    fn drop(&mut self) {
        for child in &mut self.sentinels {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Runs one command on a server with `redis-cli`; returns its output.
fn command(server: &RedisServer, args: &[&str]) -> Result<String> {
    cli(server.port(), args)
}

fn info(server: &RedisServer, section: &str) -> Result<String> {
    command(server, &["INFO", section])
}

fn sentinel_query(port: u16, args: &[&str]) -> Result<String> {
    cli(port, args)
}

/// The master's port as the sentinel on `port` reports it.
fn sentinel_master(port: u16) -> Result<Option<u16>> {
    let out = sentinel_query(port, &["SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER_NAME])?;
    Ok(out.lines().nth(1).and_then(|p| p.trim().parse().ok()))
}
