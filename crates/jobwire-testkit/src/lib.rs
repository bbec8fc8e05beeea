//! Test harness for jobwire: real `redis-server` processes on free ports.
//!
//! Tests never mock Redis. [`RedisServer::start`] launches a private
//! `redis-server` in a temporary directory on a free port, waits until it
//! answers, and kills it on drop; tests can also [`RedisServer::kill`] and
//! [`RedisServer::restart`] it (same port, same data directory, so with AOF on
//! the data survives) to exercise outages. A missing `redis-server` binary is a
//! loud failure, never a skip: `scripts/test` installs it.
//!
//! `JOBWIRE_TEST_REDIS_URL` points tests at an existing server instead; then
//! kill/restart are refused (the harness does not own that process).
//!
//! [`jobs`] reads jobs back: waiting for a state, and the whole log checked
//! for consecutive ids. [`lost_writes`] makes a server lose acknowledged
//! writes on demand. [`sentinel`] runs a master, a replica and three
//! sentinels, for failover tests.

pub mod cluster;
pub mod jobs;
pub mod lost_writes;
pub mod sentinel;
pub mod tls;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// Settings for a `jobwire serve` driven by one load generator on one
/// address (benchmarks, the chaos suite): the per-user, per-address and
/// rate caps are for hostile clients, not for a harness.
pub const UNCAPPED_GATEWAY: [(&str, &str); 5] = [
    ("JOBWIRE_MAX_CONNECTIONS_PER_USER", "1000000"),
    ("JOBWIRE_MAX_CONNECTIONS", "1000000"),
    ("JOBWIRE_MAX_HTTP_CONNECTIONS_PER_IP", "1000000"),
    ("JOBWIRE_CREATE_RATE", "1000000"),
    ("JOBWIRE_MAX_UNFINISHED_JOBS", "100000000"),
];

/// How the server keeps data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Persistence {
    /// Nothing on disk: a restart loses everything.
    None,
    /// Append-only file with fsync every write: a restart keeps everything.
    Aof,
    /// Append-only file with fsync once a second (Redis' default): what
    /// production runs, and what a crash can cut short (see
    /// [`RedisServer::kill_and_cut_aof`]).
    AofEverysec,
}

/// A `redis-server` owned by a test.
#[derive(Debug)]
pub struct RedisServer {
    port: u16,
    /// Also listening with TLS on this port (see [`RedisServer::start_tls`]).
    tls_port: Option<u16>,
    /// A Redis Cluster node, with its bus on this port (see `cluster.rs`).
    cluster_port: Option<u16>,
    persistence: Persistence,
    dir: Option<tempfile::TempDir>,
    child: Option<Child>,
    external_url: Option<String>,
}

impl RedisServer {
    /// Starts a private server without persistence, or uses
    /// `JOBWIRE_TEST_REDIS_URL` when set.
    ///
    /// # Errors
    /// When `redis-server` is not installed or does not come up.
    pub fn start() -> Result<RedisServer> {
        if let Ok(url) = std::env::var("JOBWIRE_TEST_REDIS_URL") {
            return Ok(RedisServer {
                port: 0,
                tls_port: None,
                cluster_port: None,
                persistence: Persistence::None,
                dir: None,
                child: None,
                external_url: Some(url),
            });
        }
        RedisServer::start_private(Persistence::None)
    }

    /// Starts a private server (never an external one) with the given
    /// persistence, for tests that kill and restart it.
    ///
    /// # Errors
    /// When `redis-server` is not installed or does not come up.
    pub fn start_private(persistence: Persistence) -> Result<RedisServer> {
        RedisServer::start_fresh("jobwire-redis-", persistence, |_| Ok(()))
    }

    /// Starts a private server in a new data directory on a free port,
    /// after `prepare` (more ports, files in the directory). A free port
    /// can be taken between our probe and redis binding it: try a few
    /// times before giving up.
    fn start_fresh(
        prefix: &str,
        persistence: Persistence,
        prepare: impl Fn(&mut RedisServer) -> Result<()>,
    ) -> Result<RedisServer> {
        let dir = tempfile::Builder::new()
            .prefix(prefix)
            .tempdir()
            .context("creating a data directory for redis-server")?;
        let mut server = RedisServer {
            port: 0,
            tls_port: None,
            cluster_port: None,
            persistence,
            dir: Some(dir),
            child: None,
            external_url: None,
        };
        let mut last_err = None;
        for _ in 0..5 {
            server.port = free_port()?;
            prepare(&mut server)?;
            match server.spawn() {
                Ok(()) => return Ok(server),
                Err(e) => last_err = Some(e),
            }
        }
        Err(last_err.unwrap_or_else(|| anyhow::anyhow!("redis-server did not start")))
    }

    /// Starts a private server as a Redis Cluster node (not yet in any
    /// cluster: see [`cluster::RedisCluster`]).
    ///
    /// # Errors
    /// When `redis-server` is not installed or does not come up.
    pub fn start_cluster_node(persistence: Persistence) -> Result<RedisServer> {
        RedisServer::start_cluster_node_with(persistence, None)
    }

    /// A cluster node that also speaks TLS (bus and replication too), with
    /// the certificates of `certs` (one CA for the whole cluster).
    ///
    /// # Errors
    /// When `redis-server` is not installed or does not come up.
    pub fn start_cluster_node_with(
        persistence: Persistence,
        certs: Option<&TestCerts>,
    ) -> Result<RedisServer> {
        RedisServer::start_fresh("jobwire-redis-cluster-", persistence, |server| {
            server.cluster_port = Some(free_port()?);
            let Some(certs) = certs else {
                return Ok(());
            };
            server.tls_port = Some(free_port()?);
            let dir = server.data_dir()?;
            for (from, name) in [
                (&certs.ca_cert, "ca.crt"),
                (&certs.server_cert, "server.crt"),
                (&certs.server_key, "server.key"),
                (&certs.client_cert, "client.crt"),
                (&certs.client_key, "client.key"),
            ] {
                std::fs::copy(from, dir.join(name))
                    .with_context(|| format!("copying {}", from.display()))?;
            }
            Ok(())
        })
    }

    /// Starts a private server on a given port (e.g. one a process under test
    /// was already told to use before Redis was up).
    ///
    /// # Errors
    /// When `redis-server` is not installed or does not come up.
    pub fn start_on(port: u16, persistence: Persistence) -> Result<RedisServer> {
        let dir = tempfile::Builder::new()
            .prefix("jobwire-redis-")
            .tempdir()
            .context("creating a data directory for redis-server")?;
        let mut server = RedisServer {
            port,
            tls_port: None,
            cluster_port: None,
            persistence,
            dir: Some(dir),
            child: None,
            external_url: None,
        };
        server.spawn()?;
        Ok(server)
    }

    /// Starts a private server that also listens with TLS, with
    /// certificates of a throwaway CA made with `openssl`, and requires
    /// clients to present a certificate of that CA. The plain port stays
    /// open for readiness checks.
    ///
    /// # Errors
    /// When `openssl` or `redis-server` (built with TLS) is missing, or the
    /// server does not come up.
    pub fn start_tls() -> Result<RedisServer> {
        let dir = tempfile::Builder::new()
            .prefix("jobwire-redis-tls-")
            .tempdir()
            .context("creating a data directory for redis-server")?;
        make_test_certs(dir.path())?;
        let mut server = RedisServer {
            port: free_port()?,
            tls_port: Some(free_port()?),
            cluster_port: None,
            persistence: Persistence::None,
            dir: Some(dir),
            child: None,
            external_url: None,
        };
        server.spawn()?;
        Ok(server)
    }

    /// The `rediss://` URL of a server made by [`RedisServer::start_tls`].
    pub fn tls_url(&self) -> Option<String> {
        self.tls_port
            .map(|port| format!("rediss://127.0.0.1:{port}/"))
    }

    /// The test CA's certificate and a client certificate and key it
    /// signed (PEM files), for a server made by [`RedisServer::start_tls`].
    pub fn test_certs(&self) -> Option<TestCerts> {
        self.tls_port?;
        let dir = self.dir.as_ref()?.path();
        Some(TestCerts {
            ca_cert: dir.join("ca.crt"),
            server_cert: dir.join("server.crt"),
            server_key: dir.join("server.key"),
            client_cert: dir.join("client.crt"),
            client_key: dir.join("client.key"),
        })
    }

    /// The `redis://` URL of this server.
    pub fn url(&self) -> String {
        match &self.external_url {
            Some(url) => url.clone(),
            None => format!("redis://127.0.0.1:{}/", self.port),
        }
    }

    /// The port it listens on (0 for an external server).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The redis-server process id, while it runs (for CPU and memory
    /// readings in benchmarks).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Kills the server abruptly (SIGKILL), as a crash would.
    ///
    /// # Errors
    /// For an external server, which the harness does not own.
    pub fn kill(&mut self) -> Result<()> {
        if self.external_url.is_some() {
            bail!("cannot kill an external redis (JOBWIRE_TEST_REDIS_URL)");
        }
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        Ok(())
    }

    /// Starts the server again on the same port and data directory.
    ///
    /// # Errors
    /// When it does not come back up.
    pub fn restart(&mut self) -> Result<()> {
        self.kill()?;
        self.spawn()
    }

    /// Sends a signal (`"STOP"`, `"CONT"`, `"TERM"`, …) to the server, as
    /// `kill -SIGNAL` does: for pausing it (SIGSTOP/SIGCONT) or stopping it
    /// cleanly.
    ///
    /// # Errors
    /// When the server is not running (or is external), or `kill` fails.
    pub fn signal(&self, signal: &str) -> Result<()> {
        let pid = self.pid().context("redis-server is not running")?;
        let ok = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(pid.to_string())
            .status()
            .context("running kill")?
            .success();
        if !ok {
            bail!("kill -{signal} {pid} failed");
        }
        Ok(())
    }

    /// Stops the server cleanly (SIGTERM: with AOF it flushes and fsyncs
    /// before exiting), waiting up to `within`; SIGKILL after that. Start it
    /// again with [`RedisServer::restart`].
    ///
    /// # Errors
    /// For an external server, or when the signal cannot be sent.
    pub fn terminate(&mut self, within: Duration) -> Result<()> {
        if self.external_url.is_some() {
            bail!("cannot stop an external redis (JOBWIRE_TEST_REDIS_URL)");
        }
        // A stopped (SIGSTOP) server would ignore SIGTERM until continued.
        let _ = self.signal("CONT");
        self.signal("TERM")?;
        let deadline = Instant::now() + within;
        if let Some(mut child) = self.child.take() {
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return Ok(());
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        Ok(())
    }

    /// Crashes the server (SIGKILL) and cuts up to `bytes` off the end of
    /// its append-only file, as a power loss does to the last second of an
    /// `appendfsync everysec` AOF; then starts it again. Redis 7 keeps a
    /// multi-part AOF (`appendonlydir/`, listed in its manifest); the cut is
    /// made in the last incremental file, which is where the newest writes
    /// are. Returns how many bytes were cut.
    ///
    /// The cut file is then repaired with `redis-check-aof --fix`, which
    /// truncates it before a transaction whose `EXEC` was cut off. Redis'
    /// own repair (`aof-load-truncated yes`) must not be relied on: 7.0
    /// truncates at the last whole *command*, so a cut inside a `MULTI`
    /// (every Lua script's writes are one) leaves `MULTI` and part of the
    /// transaction in the file; it skips them on that load, but appends
    /// after them, and the next load queues everything appended into the
    /// unfinished transaction and runs it at the next `EXEC`: writes that
    /// were lost come back, mixed with later ones
    /// (`a_cut_inside_a_transaction_stays_lost_after_later_restarts`).
    ///
    /// # Errors
    /// Without AOF persistence, when the AOF cannot be found, cut or
    /// repaired, or the server does not come back.
    pub fn kill_and_cut_aof(&mut self, bytes: u64) -> Result<u64> {
        if !matches!(
            self.persistence,
            Persistence::Aof | Persistence::AofEverysec
        ) {
            bail!("kill_and_cut_aof needs AOF persistence");
        }
        self.kill()?;
        let dir = self.data_dir()?.join("appendonlydir");
        let manifest = find_manifest(&dir)?;
        let text = std::fs::read_to_string(&manifest)
            .with_context(|| format!("reading {}", manifest.display()))?;
        // Lines are `file NAME seq N type b|h|i`; the last `i` is the file
        // being written.
        let incr = text
            .lines()
            .rev()
            .filter(|l| l.ends_with("type i"))
            .find_map(|l| l.split_whitespace().nth(1))
            .context("the AOF manifest lists no incremental file")?;
        let path = dir.join(incr);
        let len = std::fs::metadata(&path)
            .with_context(|| format!("reading {}", path.display()))?
            .len();
        let cut = bytes.min(len);
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .and_then(|f| f.set_len(len - cut))
            .with_context(|| format!("truncating {}", path.display()))?;
        // It asks before truncating; a valid file needs no answer.
        let fixed = Command::new("redis-check-aof")
            .arg("--fix")
            .arg(&manifest)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .and_then(|mut child| {
                if let Some(stdin) = child.stdin.as_mut() {
                    stdin.write_all(b"y\n")?;
                }
                child.wait()
            })
            .context("running redis-check-aof --fix (apt-get install redis-tools)")?;
        if !fixed.success() {
            bail!("redis-check-aof --fix failed on {}", manifest.display());
        }
        self.spawn()?;
        Ok(cut)
    }

    /// Crashes the server (SIGKILL), deletes everything it had on disk and
    /// starts it again, empty: every key is gone, as after losing the
    /// machine and its disk.
    ///
    /// # Errors
    /// When the files cannot be removed or the server does not come back.
    pub fn wipe_and_restart(&mut self) -> Result<()> {
        self.kill()?;
        let dir = self.data_dir()?.to_path_buf();
        let aof = dir.join("appendonlydir");
        if aof.exists() {
            std::fs::remove_dir_all(&aof).with_context(|| format!("removing {}", aof.display()))?;
        }
        let rdb = dir.join("dump.rdb");
        if rdb.exists() {
            std::fs::remove_file(&rdb).with_context(|| format!("removing {}", rdb.display()))?;
        }
        self.spawn()
    }

    pub(crate) fn data_dir(&self) -> Result<&Path> {
        self.dir
            .as_ref()
            .map(|d| d.path())
            .context("external redis has no data directory")
    }

    pub(crate) fn spawn(&mut self) -> Result<()> {
        let dir: PathBuf = self.data_dir()?.to_path_buf();
        let mut cmd = Command::new("redis-server");
        cmd.arg("--port")
            .arg(self.port.to_string())
            .args([
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--protected-mode",
                "no",
            ])
            .arg("--dir")
            .arg(&dir)
            .arg("--logfile")
            .arg(dir.join("redis.log"));
        match self.persistence {
            Persistence::None => cmd.args(["--appendonly", "no"]),
            Persistence::Aof => cmd.args(["--appendonly", "yes", "--appendfsync", "always"]),
            Persistence::AofEverysec => {
                cmd.args(["--appendonly", "yes", "--appendfsync", "everysec"])
            }
        };
        if let Some(bus) = self.cluster_port {
            cmd.args(["--cluster-enabled", "yes", "--cluster-node-timeout", "1000"])
                .arg("--cluster-port")
                .arg(bus.to_string())
                .arg("--cluster-config-file")
                .arg(dir.join("nodes.conf"));
        }
        if let Some(tls_port) = self.tls_port {
            cmd.arg("--tls-port")
                .arg(tls_port.to_string())
                .arg("--tls-cert-file")
                .arg(dir.join("server.crt"))
                .arg("--tls-key-file")
                .arg(dir.join("server.key"))
                .arg("--tls-ca-cert-file")
                .arg(dir.join("ca.crt"))
                .args(["--tls-auth-clients", "yes"]);
            if self.cluster_port.is_some() {
                // The bus and replication over TLS too; the nodes then
                // announce their TLS ports to clients.
                // A node is the client of its peers' buses and of its
                // master: it presents the client certificate.
                cmd.args(["--tls-cluster", "yes", "--tls-replication", "yes"])
                    .arg("--tls-client-cert-file")
                    .arg(dir.join("client.crt"))
                    .arg("--tls-client-key-file")
                    .arg(dir.join("client.key"));
            }
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child = cmd.spawn().map_err(|e| {
            anyhow::anyhow!(
                "cannot run redis-server ({e}); install it (scripts/test does: apt-get install redis-server)"
            )
        })?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        loop {
            if ping(addr) {
                return Ok(());
            }
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    let log = std::fs::read_to_string(dir.join("redis.log")).unwrap_or_default();
                    self.child = None;
                    bail!(
                        "redis-server exited with {status} on port {}:\n{log}",
                        self.port
                    );
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "redis-server on port {} did not answer within 10 s",
                    self.port
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Runs `redis-cli -p port args…`; returns its output.
pub(crate) fn cli(port: u16, args: &[&str]) -> Result<String> {
    let out = Command::new("redis-cli")
        .arg("-p")
        .arg(port.to_string())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .context("running redis-cli (scripts/test installs redis-tools)")?;
    if !out.status.success() {
        bail!(
            "redis-cli -p {port} {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Polls `done` every 50 ms until it holds, for up to `patience`.
pub(crate) fn wait_until(
    patience: Duration,
    what: &str,
    mut done: impl FnMut() -> Result<bool>,
) -> Result<()> {
    let deadline = Instant::now() + patience;
    loop {
        if done().unwrap_or(false) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("waited {patience:?} for {what}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// PEM files of a throwaway CA, a server certificate for 127.0.0.1 and a
/// client certificate, both signed by the CA.
#[derive(Clone, Debug)]
pub struct TestCerts {
    pub ca_cert: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

/// Makes a throwaway CA (P-256) and certificates it signed, in `dir`, with
/// the `openssl` command.
///
/// # Errors
/// When `openssl` is missing or fails.
pub fn make_test_certs(dir: &std::path::Path) -> Result<TestCerts> {
    let openssl = |args: &[&str]| -> Result<()> {
        let output = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .map_err(|e| {
                anyhow::anyhow!("cannot run openssl ({e}); install it (apt-get install openssl)")
            })?;
        if !output.status.success() {
            bail!(
                "openssl {args:?} failed: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(())
    };
    let key = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    openssl(
        &[
            &["req", "-x509"],
            &key[..],
            &[
                "-keyout",
                "ca.key",
                "-out",
                "ca.crt",
                "-days",
                "2",
                "-subj",
                "/CN=jobwire test CA",
            ],
        ]
        .concat(),
    )?;
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
    )?;
    std::fs::write(dir.join("client.ext"), "extendedKeyUsage=clientAuth\n")?;
    for (name, subject) in [
        ("server", "/CN=127.0.0.1"),
        ("client", "/CN=jobwire test client"),
    ] {
        let (keyfile, csr, crt, ext) = (
            format!("{name}.key"),
            format!("{name}.csr"),
            format!("{name}.crt"),
            format!("{name}.ext"),
        );
        openssl(
            &[
                &["req"],
                &key[..],
                &["-keyout", &keyfile, "-out", &csr, "-subj", subject],
            ]
            .concat(),
        )?;
        openssl(&[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            &crt,
            "-days",
            "2",
            "-extfile",
            &ext,
        ])?;
    }
    Ok(TestCerts {
        ca_cert: dir.join("ca.crt"),
        server_cert: dir.join("server.crt"),
        server_key: dir.join("server.key"),
        client_cert: dir.join("client.crt"),
        client_key: dir.join("client.key"),
    })
}

/// The manifest of a Redis 7 multi-part AOF directory.
fn find_manifest(dir: &Path) -> Result<PathBuf> {
    std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "manifest"))
        .with_context(|| format!("no AOF manifest in {}", dir.display()))
}

/// A port that was free a moment ago.
///
/// # Errors
/// When no local port can be bound.
pub fn free_port() -> Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("binding a free port")?;
    Ok(listener.local_addr()?.port())
}

fn ping(addr: SocketAddr) -> bool {
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    if stream.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut buf = [0u8; 16];
    matches!(stream.read(&mut buf), Ok(n) if buf[..n].starts_with(b"+PONG"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_kills_and_restarts_with_aof() -> Result<()> {
        let mut redis = RedisServer::start_private(Persistence::Aof)?;
        let addr = SocketAddr::from(([127, 0, 0, 1], redis.port()));
        assert!(ping(addr));
        redis.kill()?;
        assert!(!ping(addr), "killed server still answers");
        redis.restart()?;
        assert!(ping(addr));
        Ok(())
    }

    fn set_and_count(addr: SocketAddr, key: &str) -> usize {
        let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(500)) else {
            return usize::MAX;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
        let _ = stream.write_all(format!("SET {key} 1\r\nDBSIZE\r\n").as_bytes());
        std::thread::sleep(Duration::from_millis(50));
        let mut buf = [0u8; 64];
        let n = stream.read(&mut buf).unwrap_or(0);
        let text = String::from_utf8_lossy(&buf[..n]).to_string();
        text.rsplit(':')
            .next()
            .and_then(|t| t.trim().parse().ok())
            .unwrap_or(usize::MAX)
    }

    #[test]
    fn cutting_the_aof_loses_the_last_writes_and_wiping_loses_all() -> Result<()> {
        let mut redis = RedisServer::start_private(Persistence::AofEverysec)?;
        let addr = SocketAddr::from(([127, 0, 0, 1], redis.port()));
        for i in 0..10 {
            set_and_count(addr, &format!("k{i}"));
        }
        // Each SET is ~30 bytes in the AOF: cutting 100 loses a few.
        let cut = redis.kill_and_cut_aof(100)?;
        assert_eq!(cut, 100);
        let after = set_and_count(addr, "probe");
        assert!(after < 11 && after > 1, "{after} keys after the cut");
        redis.wipe_and_restart()?;
        assert_eq!(set_and_count(addr, "probe"), 1);
        Ok(())
    }

    /// Redis 7.0 loading an AOF cut inside a `MULTI` keeps the partial
    /// transaction in the file and runs it, with whatever was appended
    /// after it, on the load after next: lost writes come back.
    /// `kill_and_cut_aof` repairs the file so that they stay lost.
    #[test]
    fn a_cut_inside_a_transaction_stays_lost_after_later_restarts() -> Result<()> {
        let mut redis = RedisServer::start_private(Persistence::AofEverysec)?;
        let addr = SocketAddr::from(([127, 0, 0, 1], redis.port()));
        set_and_count(addr, "before");
        // A script's writes go to the AOF as one MULTI … EXEC.
        let script = "redis.call('SET', 'ghost', 1); redis.call('SET', 'ghost2', 1)";
        let eval = format!(
            "*3\r\n$4\r\nEVAL\r\n${}\r\n{script}\r\n$1\r\n0\r\n",
            script.len()
        );
        {
            let mut stream = TcpStream::connect(addr)?;
            stream.set_read_timeout(Some(Duration::from_secs(1)))?;
            stream.write_all(eval.as_bytes())?;
            let mut buf = [0u8; 64];
            let _ = stream.read(&mut buf)?;
        }
        // `EXEC` and the end of the last SET: into the transaction.
        redis.kill_and_cut_aof(30)?;
        assert_eq!(set_and_count(addr, "later"), 2, "before and later");
        redis.terminate(Duration::from_secs(10))?;
        redis.restart()?;
        let keys = set_and_count(addr, "probe");
        assert_eq!(keys, 3, "a lost write came back: {keys} keys");
        Ok(())
    }

    #[test]
    fn sigstop_pauses_and_terminate_stops() -> Result<()> {
        let mut redis = RedisServer::start_private(Persistence::AofEverysec)?;
        let addr = SocketAddr::from(([127, 0, 0, 1], redis.port()));
        redis.signal("STOP")?;
        assert!(!ping(addr), "a stopped server answered");
        redis.signal("CONT")?;
        assert!(ping(addr));
        redis.terminate(Duration::from_secs(10))?;
        assert!(!ping(addr));
        redis.restart()?;
        assert!(ping(addr));
        Ok(())
    }
}
