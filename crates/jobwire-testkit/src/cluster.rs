//! A Redis Cluster on free ports: three masters with one replica each,
//! made with `redis-cli --cluster create` (each master gets one contiguous
//! third of the slots). Nodes count as failed after 1 s
//! (`cluster-node-timeout`), so a killed master's replica takes over within
//! a few seconds. Tests kill a master with [`RedisCluster::kill_master_of`],
//! wait for the promotion with [`RedisCluster::wait_failover`], and move a
//! slot to another master with [`RedisCluster::move_slot`].

use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::{cli, make_test_certs, wait_until, Persistence, RedisServer, TestCerts};

/// Six nodes (three masters, three replicas), killed on drop.
#[derive(Debug)]
pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
    /// The certificates of a TLS cluster ([`RedisCluster::start_tls`]).
    certs: Option<(tempfile::TempDir, TestCerts)>,
}

/// One line of `CLUSTER NODES`.
#[derive(Clone, Debug)]
pub struct NodeInfo {
    pub id: String,
    pub port: u16,
    pub master: bool,
    pub failed: bool,
    /// Slot ranges it serves (masters).
    pub slots: Vec<(u16, u16)>,
}

impl RedisCluster {
    /// Starts six nodes (AOF on, as in production), joins them into a
    /// cluster of three masters and three replicas, and waits until every
    /// node reports the cluster up and every replica is in sync.
    ///
    /// # Errors
    /// When `redis-server` or `redis-cli` is missing or the cluster does not
    /// come up.
    pub fn start() -> Result<RedisCluster> {
        RedisCluster::start_with(1, Persistence::Aof)
    }

    /// Three masters without replicas: quicker to start, for tests that
    /// kill nothing.
    ///
    /// # Errors
    /// As [`RedisCluster::start`].
    pub fn start_masters_only() -> Result<RedisCluster> {
        RedisCluster::start_with(0, Persistence::Aof)
    }

    /// Three masters with `replicas` replicas each, keeping data as
    /// `persistence` says (benchmarks compare with a server without any).
    ///
    /// # Errors
    /// As [`RedisCluster::start`].
    pub fn start_with(replicas: u8, persistence: Persistence) -> Result<RedisCluster> {
        let nodes = (0..3 * (1 + usize::from(replicas)))
            .map(|_| RedisServer::start_cluster_node(persistence))
            .collect::<Result<Vec<_>>>()?;
        let addresses: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port()))
            .collect();
        let mut args = vec!["--cluster", "create"];
        args.extend(addresses.iter().map(String::as_str));
        let replicas = replicas.to_string();
        args.extend(["--cluster-replicas", &replicas, "--cluster-yes"]);
        cli(nodes[0].port(), &args).context("redis-cli --cluster create")?;
        let cluster = RedisCluster { nodes, certs: None };
        cluster.wait_healthy(Duration::from_secs(30))?;
        Ok(cluster)
    }

    /// Three masters over TLS only for clients, the bus and replication
    /// (`tls-cluster`), with certificates of a throwaway CA; clients must
    /// present one too. Their plain ports stay open for the harness.
    ///
    /// # Errors
    /// When `openssl`, `redis-server` (with TLS) or `redis-cli` is missing,
    /// or the cluster does not come up.
    pub fn start_tls() -> Result<RedisCluster> {
        let dir = tempfile::Builder::new()
            .prefix("jobwire-cluster-certs-")
            .tempdir()
            .context("creating a directory for the certificates")?;
        let certs = make_test_certs(dir.path())?;
        let nodes = (0..3)
            .map(|_| RedisServer::start_cluster_node_with(Persistence::None, Some(&certs)))
            .collect::<Result<Vec<_>>>()?;
        let tls_ports: Vec<String> = nodes
            .iter()
            .filter_map(RedisServer::tls_url)
            .filter_map(|url| {
                url.rsplit(':')
                    .next()
                    .map(|p| p.trim_end_matches('/').to_owned())
            })
            .map(|port| format!("127.0.0.1:{port}"))
            .collect();
        let path = |p: &std::path::Path| p.display().to_string();
        let (ca, cert, key) = (
            path(&certs.ca_cert),
            path(&certs.client_cert),
            path(&certs.client_key),
        );
        let mut args = vec![
            "--tls",
            "--cacert",
            &ca,
            "--cert",
            &cert,
            "--key",
            &key,
            "--cluster",
            "create",
        ];
        args.extend(tls_ports.iter().map(String::as_str));
        args.extend(["--cluster-replicas", "0", "--cluster-yes"]);
        // redis-cli waits for ever for nodes that cannot meet (a TLS
        // mistake on the bus): give it 30 s.
        let mut child = std::process::Command::new("redis-cli")
            .args(&args)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .context("running redis-cli --tls --cluster create")?;
        let created = wait_until(
            Duration::from_secs(30),
            "redis-cli --cluster create",
            || Ok(child.try_wait()?.is_some_and(|status| status.success())),
        );
        let _ = child.kill();
        let _ = child.wait();
        created?;
        let cluster = RedisCluster {
            nodes,
            certs: Some((dir, certs)),
        };
        wait_until(Duration::from_secs(30), "the TLS cluster to be up", || {
            for node in &cluster.nodes {
                if !cli(node.port(), &["CLUSTER", "INFO"])?.contains("cluster_state:ok") {
                    return Ok(false);
                }
            }
            Ok(true)
        })?;
        Ok(cluster)
    }

    /// `rediss://` URLs of a [`RedisCluster::start_tls`] cluster's nodes.
    pub fn tls_url(&self) -> String {
        self.nodes
            .iter()
            .filter_map(RedisServer::tls_url)
            .map(|url| url.trim_end_matches('/').to_owned())
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The certificates of a [`RedisCluster::start_tls`] cluster.
    pub fn test_certs(&self) -> Option<&TestCerts> {
        self.certs.as_ref().map(|(_, certs)| certs)
    }

    /// `REDIS_URL` for jobwire: every node's URL, comma-separated.
    pub fn url(&self) -> String {
        self.nodes
            .iter()
            .map(|n| format!("redis://127.0.0.1:{}", n.port()))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Ports of the nodes that are running.
    fn live_ports(&self) -> Vec<u16> {
        self.nodes
            .iter()
            .filter(|n| n.pid().is_some())
            .map(RedisServer::port)
            .collect()
    }

    /// `CLUSTER NODES` as the first running node that answers sees it.
    ///
    /// # Errors
    /// When no node answers.
    pub fn topology(&self) -> Result<Vec<NodeInfo>> {
        for port in self.live_ports() {
            if let Ok(out) = cli(port, &["CLUSTER", "NODES"]) {
                return Ok(parse_nodes(&out));
            }
        }
        bail!("no cluster node answered")
    }

    /// The port of the master serving `slot`.
    ///
    /// # Errors
    /// When no node answers or no master serves it.
    pub fn master_of(&self, slot: u16) -> Result<u16> {
        self.topology()?
            .into_iter()
            .find(|n| {
                n.master && !n.failed && n.slots.iter().any(|&(a, b)| (a..=b).contains(&slot))
            })
            .map(|n| n.port)
            .with_context(|| format!("no master serves slot {slot}"))
    }

    /// The port of a running master other than the one on `port`.
    ///
    /// # Errors
    /// When there is none.
    pub fn another_master(&self, port: u16) -> Result<u16> {
        self.topology()?
            .into_iter()
            .find(|n| n.master && !n.failed && n.port != port)
            .map(|n| n.port)
            .context("no other master")
    }

    /// Waits until every running node reports `cluster_state:ok`, every
    /// slot is served by a master that runs, and every replica of a running
    /// master is in sync.
    ///
    /// # Errors
    /// When that does not happen within `patience`.
    pub fn wait_healthy(&self, patience: Duration) -> Result<()> {
        wait_until(patience, "the cluster to be healthy", || {
            let live = self.live_ports();
            for &port in &live {
                if !cli(port, &["CLUSTER", "INFO"])?.contains("cluster_state:ok") {
                    return Ok(false);
                }
            }
            let topology = self.topology()?;
            let served: u32 = topology
                .iter()
                .filter(|n| n.master && !n.failed && live.contains(&n.port))
                .flat_map(|n| n.slots.iter())
                .map(|&(a, b)| u32::from(b - a) + 1)
                .sum();
            if served != 16_384 {
                return Ok(false);
            }
            for node in topology
                .iter()
                .filter(|n| !n.master && live.contains(&n.port))
            {
                let info = cli(node.port, &["INFO", "replication"])?;
                if !info.contains("master_link_status:up") {
                    return Ok(false);
                }
            }
            Ok(true)
        })
    }

    /// Kills (SIGKILL) the master that serves `slot`; returns its port.
    ///
    /// # Errors
    /// When it cannot be found.
    pub fn kill_master_of(&mut self, slot: u16) -> Result<u16> {
        let port = self.master_of(slot)?;
        self.node(port)?.kill()?;
        Ok(port)
    }

    /// Waits until a replica has taken over the slots of the killed master
    /// on `old` and the cluster is healthy again; returns the new master's
    /// port.
    ///
    /// # Errors
    /// When that does not happen within 60 s (an election takes about two
    /// node timeouts, but on a 2-core machine running the whole suite the
    /// nodes' cron can lag far behind).
    pub fn wait_failover(&self, old: u16, slot: u16) -> Result<u16> {
        let mut new = 0;
        wait_until(Duration::from_secs(60), "the cluster failover", || {
            new = self.master_of(slot)?;
            Ok(new != old)
        })?;
        self.wait_healthy(Duration::from_secs(30))?;
        Ok(new)
    }

    /// Starts the node on `port` again (same data directory and node
    /// identity); the cluster makes it a replica of its old slots' master.
    ///
    /// # Errors
    /// When it is not one of the cluster's nodes or does not come up.
    pub fn restart(&mut self, port: u16) -> Result<()> {
        self.node(port)?.restart()
    }

    /// Moves `slot`, keys and all, to the master on `to` the way
    /// `redis-cli --cluster reshard` does: IMPORTING and MIGRATING, MIGRATE
    /// the keys in batches, then hand the slot over on every master.
    ///
    /// # Errors
    /// When a step fails.
    pub fn move_slot(&self, slot: u16, to: u16) -> Result<()> {
        let from = self.master_of(slot)?;
        if from == to {
            return Ok(());
        }
        let topology = self.topology()?;
        let id_of = |port: u16| {
            topology
                .iter()
                .find(|n| n.port == port)
                .map(|n| n.id.clone())
                .with_context(|| format!("no node on port {port}"))
        };
        let (from_id, to_id) = (id_of(from)?, id_of(to)?);
        let slot_arg = slot.to_string();
        cli(
            to,
            &["CLUSTER", "SETSLOT", &slot_arg, "IMPORTING", &from_id],
        )?;
        cli(
            from,
            &["CLUSTER", "SETSLOT", &slot_arg, "MIGRATING", &to_id],
        )?;
        loop {
            let keys = cli(from, &["CLUSTER", "GETKEYSINSLOT", &slot_arg, "100"])?;
            let keys: Vec<&str> = keys.lines().filter(|k| !k.is_empty()).collect();
            if keys.is_empty() {
                break;
            }
            let to_arg = to.to_string();
            let mut args = vec!["MIGRATE", "127.0.0.1", &to_arg, "", "0", "5000", "KEYS"];
            args.extend(keys.iter().copied());
            let out = cli(from, &args)?;
            if !out.contains("OK") && !out.contains("NOKEY") {
                bail!("MIGRATE of slot {slot}: {out}");
            }
        }
        for node in topology.iter().filter(|n| n.master && !n.failed) {
            cli(
                node.port,
                &["CLUSTER", "SETSLOT", &slot_arg, "NODE", &to_id],
            )?;
        }
        wait_until(Duration::from_secs(10), "the slot move to settle", || {
            Ok(self.master_of(slot)? == to)
        })
    }

    fn node(&mut self, port: u16) -> Result<&mut RedisServer> {
        self.nodes
            .iter_mut()
            .find(|n| n.port() == port)
            .with_context(|| format!("no cluster node on port {port}"))
    }
}

/// Parses `CLUSTER NODES`: `<id> <ip:port@bus> <flags> <master> <ping>
/// <pong> <epoch> <link> <slot>…`.
fn parse_nodes(out: &str) -> Vec<NodeInfo> {
    out.lines()
        .filter_map(|line| {
            let parts: Vec<&str> = line.split_whitespace().collect();
            let (id, address, flags) = (parts.first()?, parts.get(1)?, parts.get(2)?);
            let port = address
                .split('@')
                .next()?
                .rsplit(':')
                .next()?
                .parse()
                .ok()?;
            let slots = parts
                .iter()
                .skip(8)
                // `[slot->-id]` entries are migrations in progress.
                .filter(|s| !s.starts_with('['))
                .filter_map(|s| match s.split_once('-') {
                    Some((a, b)) => Some((a.parse().ok()?, b.parse().ok()?)),
                    None => s.parse().ok().map(|a| (a, a)),
                })
                .collect();
            Some(NodeInfo {
                id: (*id).to_owned(),
                port,
                master: flags.contains("master"),
                failed: flags.contains("fail") && !flags.contains("fail?"),
                slots,
            })
        })
        .collect()
}
