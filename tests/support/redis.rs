//! Real `redis-server` processes for the cluster-mode tests: a standalone server on a free
//! loopback port, and a 3-master Redis Cluster. Every server runs in its own temporary
//! directory, persists nothing, and is SIGKILLed on drop.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a server may take to answer `PING` after it was spawned.
const START_WAIT: Duration = Duration::from_secs(10);

/// Panics with a clear message when `redis-server` or `redis-cli` is missing.
fn require_tools() {
    for tool in ["redis-server", "redis-cli"] {
        let found = Command::new(tool)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(
            found,
            "`{tool}` is not on PATH: the cluster-mode tests need a real Redis. \
             Run scripts/test (it installs redis-server), or \
             `apt-get install -y --no-install-recommends redis-server`"
        );
    }
}

/// True when `port` on loopback answers a RESP `PING` with `+PONG`.
pub fn answers_ping(port: u16) -> bool {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    if s.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut buf = [0u8; 64];
    match s.read(&mut buf) {
        Ok(n) => buf[..n].starts_with(b"+PONG"),
        Err(_) => false,
    }
}

/// A free loopback port `p` such that `p + 10000` (the cluster bus port) is free too.
fn free_port_pair() -> u16 {
    for _ in 0..200 {
        let p = crate::free_port();
        if p > 55_000 {
            continue;
        }
        if std::net::TcpListener::bind(("127.0.0.1", p + 10_000)).is_ok() {
            return p;
        }
    }
    panic!("no free port pair (p, p+10000) found on loopback");
}

/// One `redis-server` process on `127.0.0.1:port`, killed on drop.
pub struct RedisServer {
    port: u16,
    child: Option<Child>,
    dir: tempfile::TempDir,
    extra: Vec<String>,
    starts: u32,
}

impl RedisServer {
    /// Starts a standalone server on a free loopback port and waits until it answers.
    pub fn start() -> Self {
        Self::start_with(crate::free_port(), &[])
    }

    /// Starts a server on `port` with `extra` arguments (e.g. cluster mode).
    pub fn start_with(port: u16, extra: &[&str]) -> Self {
        require_tools();
        let mut server = Self {
            port,
            child: None,
            dir: tempfile::tempdir().unwrap(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
            starts: 0,
        };
        server.spawn();
        server
    }

    fn spawn(&mut self) {
        assert!(self.child.is_none(), "redis-server already running");
        self.starts += 1;
        // A fresh data directory per start: a restart really is empty (no nodes.conf,
        // no dump).
        let data = self.dir.path().join(format!("run{}", self.starts));
        std::fs::create_dir_all(&data).unwrap();
        let log = std::fs::File::create(self.log_path()).unwrap();
        let port = self.port.to_string();
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port,
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
            ])
            .arg(&data)
            .args(&self.extra)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot spawn redis-server: {e}"));
        self.child = Some(child);
        let deadline = Instant::now() + START_WAIT;
        while !answers_ping(self.port) {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!(
                    "redis-server on port {} exited at start ({status}):\n{}",
                    self.port,
                    self.log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "redis-server on port {} did not answer PING within {START_WAIT:?}:\n{}",
                self.port,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join(format!("redis-{}.log", self.starts))
    }

    /// The server's log of its current (or last) run.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// The temporary directory of this server.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// True while the process runs.
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => c.try_wait().unwrap().is_none(),
            None => false,
        }
    }

    /// SIGKILL, then reap the process.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port with no data (kills it first if it
    /// runs), and waits until it answers.
    pub fn restart_empty(&mut self) {
        self.kill();
        self.spawn();
    }

    /// Runs `redis-cli -p PORT args…` and returns its stdout (panics if it fails).
    pub fn cli(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .arg("-p")
            .arg(self.port.to_string())
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "redis-cli -p {} {args:?} failed: {}",
            self.port,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A Redis Cluster of masters only (no replicas), each node its own process.
pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// Starts `masters` cluster-enabled servers, joins them with
    /// `redis-cli --cluster create`, and waits until every node reports
    /// `cluster_state:ok`.
    pub fn start(masters: usize) -> Self {
        assert!(masters >= 3, "Redis Cluster needs at least 3 masters");
        require_tools();
        let mut nodes: Vec<RedisServer> = Vec::with_capacity(masters);
        while nodes.len() < masters {
            let port = free_port_pair();
            if nodes.iter().any(|n| n.port == port) {
                continue;
            }
            nodes.push(RedisServer::start_with(
                port,
                &[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-node-timeout",
                    "5000",
                ],
            ));
        }
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let out = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let cluster = Self { nodes };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let states: Vec<String> = cluster
                .nodes
                .iter()
                .map(|n| {
                    let info = n.cli(&["cluster", "info"]);
                    let field = |name: &str| {
                        info.lines()
                            .find_map(|l| l.trim().strip_prefix(name))
                            .unwrap_or("?")
                            .to_string()
                    };
                    format!(
                        "state={} known_nodes={}",
                        field("cluster_state:"),
                        field("cluster_known_nodes:")
                    )
                })
                .collect();
            let want = format!("state=ok known_nodes={masters}");
            if states.iter().all(|s| *s == want) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "Redis Cluster did not reach cluster_state:ok: {states:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        cluster
    }

    /// The seed node's URL (`redis://127.0.0.1:P1`).
    pub fn url(&self) -> String {
        self.nodes[0].url()
    }

    /// Runs `redis-cli -p P args…` on every node, returning each stdout.
    pub fn cli_all(&self, args: &[&str]) -> Vec<String> {
        self.nodes.iter().map(|n| n.cli(args)).collect()
    }
}
