//! Helpers for the hostile-client and chaos tests: resource accounting of a gateway
//! process from `/proc/<pid>` (open file descriptors, resident memory), Prometheus
//! scrapes as a map, and clients that connect from a chosen loopback source address
//! (`127.0.0.x`), so that per-IP limits can be exercised from one machine.
//!
//! A gateway process without Redis is a [`crate::pods::Pod`] started with an empty Redis
//! URL (`WSGATE__REDIS__URL=` selects the embedded backend).

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::MaybeTlsStream;
use wsgate_proto::pb;

use crate::{GrpcClient, RawResponse, Ws, read_response};

/// Number of open file descriptors of process `pid` (entries of `/proc/<pid>/fd`).
pub fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap_or_else(|e| panic!("cannot list /proc/{pid}/fd: {e}"))
        .count()
}

/// A `kB` field of `/proc/<pid>/status` (`VmRSS`, `VmHWM`, …) in KiB.
pub fn status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("cannot read /proc/{pid}/status: {e}"));
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

/// Resident memory of `pid` in KiB (`VmRSS`).
pub fn rss_kib(pid: u32) -> u64 {
    status_kib(pid, "VmRSS")
}

/// Peak resident memory of `pid` in KiB (`VmHWM`).
pub fn peak_rss_kib(pid: u32) -> u64 {
    status_kib(pid, "VmHWM")
}

/// One scrape of `/metrics`, as `name{label=value,…}` (labels sorted) → value.
#[derive(Debug, Clone, Default)]
pub struct Metrics(pub HashMap<String, f64>);

impl Metrics {
    /// The sample `key` (e.g. `wsgate_connections{}`), 0 when absent.
    pub fn get(&self, key: &str) -> f64 {
        self.0.get(key).copied().unwrap_or(0.0)
    }

    /// The sum over every label set of metric `name`.
    pub fn sum(&self, name: &str) -> f64 {
        let prefix = format!("{name}{{");
        self.0
            .iter()
            .filter(|(k, _)| k.starts_with(&prefix))
            .map(|(_, v)| v)
            .sum()
    }
}

/// Parses Prometheus text into [`Metrics`].
pub fn parse_metrics(text: &str) -> Metrics {
    let lines = text.lines().map(|l| Ok(l.to_owned()));
    let parsed = prometheus_parse::Scrape::parse(lines).expect("metrics parse");
    Metrics(
        parsed
            .samples
            .into_iter()
            .filter_map(|s| {
                let value = match s.value {
                    prometheus_parse::Value::Counter(v)
                    | prometheus_parse::Value::Gauge(v)
                    | prometheus_parse::Value::Untyped(v) => v,
                    _ => return None,
                };
                let mut labels: Vec<String> =
                    s.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
                labels.sort();
                Some((format!("{}{{{}}}", s.metric, labels.join(",")), value))
            })
            .collect(),
    )
}

/// `GET /metrics` on `http`, parsed.
pub async fn scrape(http: SocketAddr) -> Metrics {
    let r = crate::raw_request(http, b"GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap_or_else(|e| panic!("GET /metrics on {http}: {e}"));
    assert_eq!(r.status, 200, "GET /metrics: {r:?}");
    parse_metrics(&r.body)
}

/// A TCP connection to `addr` from the loopback source address `from` (any port).
pub async fn tcp_from(from: Ipv4Addr, addr: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::from((from, 0)))?;
    socket.connect(addr).await
}

/// Like [`tcp_from`], with a small receive buffer (`SO_RCVBUF`, set before connecting so
/// the window is small from the start): a client that stops reading then blocks the
/// server's writes after a few KiB instead of megabytes.
pub async fn tcp_from_small_rcvbuf(
    from: Ipv4Addr,
    addr: SocketAddr,
    rcvbuf: u32,
) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.set_recv_buffer_size(rcvbuf)?;
    socket.bind(SocketAddr::from((from, 0)))?;
    socket.connect(addr).await
}

/// A WebSocket handshake for `url` on `stream` (no welcome read).
pub async fn ws_on(
    stream: TcpStream,
    url: &str,
) -> Result<Ws, tokio_tungstenite::tungstenite::Error> {
    tokio_tungstenite::client_async(url, MaybeTlsStream::Plain(stream))
        .await
        .map(|(ws, _)| ws)
}

/// A WebSocket handshake for `url` (served at `addr`) from source address `from`. A
/// refused handshake is `Err(Error::Http(response))` with the status and headers.
pub async fn ws_from(
    from: Ipv4Addr,
    addr: SocketAddr,
    url: &str,
) -> Result<Ws, tokio_tungstenite::tungstenite::Error> {
    let stream = tcp_from(from, addr)
        .await
        .map_err(tokio_tungstenite::tungstenite::Error::Io)?;
    ws_on(stream, url).await
}

/// Sends `request` from source address `from` and reads one response.
pub async fn raw_request_from(
    from: Ipv4Addr,
    addr: SocketAddr,
    request: &[u8],
) -> std::io::Result<RawResponse> {
    let mut stream = tcp_from(from, addr).await?;
    stream.write_all(request).await?;
    read_response(&mut stream).await
}

/// Polls `check` every 100 ms until it returns `Ok`, failing after `within` with the last
/// reason it gave.
pub async fn eventually<T>(
    what: &str,
    within: Duration,
    mut check: impl AsyncFnMut() -> Result<T, String>,
) -> T {
    let start = Instant::now();
    loop {
        match check().await {
            Ok(v) => return v,
            Err(why) => assert!(
                start.elapsed() < within,
                "{what}: not within {within:?}; last: {why}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The session ids `GetPresence(user)` lists, sorted.
pub async fn presence_ids(grpc: &mut GrpcClient, user: &str) -> Result<Vec<String>, String> {
    let req = grpc.req(pb::GetPresenceRequest {
        user_id: user.into(),
    });
    let r = tokio::time::timeout(Duration::from_secs(3), grpc.inner.get_presence(req))
        .await
        .map_err(|_| format!("GetPresence({user}) hung"))?
        .map_err(|e| format!("GetPresence({user}): {e:?}"))?
        .into_inner();
    let mut ids: Vec<String> = r.sessions.into_iter().map(|s| s.session_id).collect();
    ids.sort();
    if r.online == ids.is_empty() {
        return Err(format!("online = {} with sessions {ids:?}", r.online));
    }
    Ok(ids)
}

/// `Stats()` total connections.
pub async fn total_connections(grpc: &mut GrpcClient) -> Result<u64, String> {
    let req = grpc.req(pb::StatsRequest {});
    let r = tokio::time::timeout(Duration::from_secs(3), grpc.inner.stats(req))
        .await
        .map_err(|_| "Stats hung".to_string())?
        .map_err(|e| format!("Stats: {e:?}"))?
        .into_inner();
    Ok(r.total_connections)
}

/// Sends a signal (`-STOP`, `-CONT`, `-KILL`, …) to `pid` with `kill(1)`.
pub fn signal(pid: u32, sig: &str) {
    let ok = std::process::Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(ok, "kill {sig} {pid} failed");
}
