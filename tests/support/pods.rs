//! Gateway pods for the cluster-mode tests: the real `wsgate serve` binary as a process
//! with a clean environment, pointed at a Redis, on fresh loopback ports. Each pod's
//! stderr goes to a file that is printed when a test panics while the pod is alive.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{GrpcClient, Ws, free_port, next_json, raw_request, wsgate_binary};

/// How long a pod may take to answer `/readyz` with 200 after it was spawned.
pub const POD_START_WAIT: Duration = Duration::from_secs(15);

/// A running `wsgate serve` process, SIGKILLed on drop.
pub struct Pod {
    pub name: String,
    pub http: SocketAddr,
    pub grpc: SocketAddr,
    child: Option<Child>,
    log: PathBuf,
    /// The output was already part of a panic message.
    printed: bool,
    _dir: tempfile::TempDir,
}

impl Pod {
    /// Spawns `wsgate serve` as pod `name` on `redis_url` with `pod_ttl = 1s`,
    /// `shutdown.grace = 1s`, `RUST_LOG=info`, plus `extra_env`, and waits until
    /// `/readyz` answers 200.
    pub async fn start(name: &str, redis_url: &str, extra_env: &[(&str, &str)]) -> Self {
        let http: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let mut grpc: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        while grpc == http {
            grpc = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        }
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join(format!("{name}.stderr"));
        let file = std::fs::File::create(&log).unwrap();
        let child = Command::new(wsgate_binary())
            .arg("serve")
            .env_clear()
            .env("POD_NAME", name)
            .env("WSGATE__SERVER__LISTEN", http.to_string())
            .env("WSGATE__SERVER__GRPC_LISTEN", grpc.to_string())
            .env("WSGATE__REDIS__URL", redis_url)
            .env("WSGATE__REGISTRY__POD_TTL", "1s")
            .env("WSGATE__SHUTDOWN__GRACE", "1s")
            .env("RUST_LOG", "info")
            .envs(extra_env.iter().copied())
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .unwrap();
        let mut pod = Self {
            name: name.to_string(),
            http,
            grpc,
            child: Some(child),
            log,
            printed: false,
            _dir: dir,
        };
        let deadline = Instant::now() + POD_START_WAIT;
        loop {
            if pod.ready().await == 200 {
                return pod;
            }
            if let Some(status) = pod.child.as_mut().unwrap().try_wait().unwrap() {
                pod.child = None;
                pod.printed = true;
                panic!(
                    "pod {name} exited before it was ready ({status}); stderr:\n{}",
                    pod.stderr()
                );
            }
            if Instant::now() >= deadline {
                pod.printed = true;
                panic!(
                    "pod {name} not ready within {POD_START_WAIT:?}; stderr:\n{}",
                    pod.stderr()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Everything the pod wrote to stdout and stderr so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Status of `GET /readyz`, or 0 when the request fails or takes over 5 s.
    pub async fn ready(&self) -> u16 {
        match tokio::time::timeout(
            Duration::from_secs(5),
            raw_request(self.http, b"GET /readyz HTTP/1.1\r\nHost: t\r\n\r\n"),
        )
        .await
        {
            Ok(Ok(r)) => r.status,
            _ => 0,
        }
    }

    /// `ws://HTTP/ws?user=USER`.
    pub fn ws_url(&self, user: &str) -> String {
        format!("ws://{}/ws?user={user}", self.http)
    }

    /// Connects a WebSocket client as `user` (auth is off on loopback) and reads the
    /// welcome frame.
    pub async fn connect_user(&self, user: &str) -> (Ws, serde_json::Value) {
        let (mut ws, _) = tokio_tungstenite::connect_async(self.ws_url(user))
            .await
            .unwrap_or_else(|e| panic!("connect {user} to pod {}: {e}", self.name));
        let welcome = next_json(&mut ws).await;
        assert_eq!(welcome["op"], "welcome", "{welcome}");
        (ws, welcome)
    }

    /// A gRPC client on this pod (no API key: the control plane is on loopback).
    pub async fn grpc(&self) -> GrpcClient {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", self.grpc))
            .unwrap()
            .connect()
            .await
            .unwrap_or_else(|e| panic!("gRPC connect to pod {}: {e}", self.name));
        GrpcClient {
            inner: wsgate_proto::pb::gateway_client::GatewayClient::new(channel),
            key: None,
        }
    }

    /// SIGKILL, then reap the process.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends SIGTERM (graceful drain); the process is reaped on drop or [`Pod::wait`].
    pub fn term(&mut self) {
        if let Some(pid) = self.pid() {
            let ok = Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            assert!(ok, "kill -TERM {pid} failed");
        }
    }

    /// Waits up to `timeout` for the process to exit and returns its exit code.
    pub async fn wait(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        loop {
            let child = self.child.as_mut()?;
            if let Some(status) = child.try_wait().unwrap() {
                self.child = None;
                return status.code();
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Pod {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() && !self.printed {
            eprintln!(
                "----- pod {} output -----\n{}----- end of pod {} -----",
                self.name,
                self.stderr(),
                self.name
            );
        }
    }
}
