//! Measurements: latency histograms, clocks, and what `/proc` says about the processes
//! under test (resident memory, CPU time) and about this one (open-file limit).

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;
use serde_json::{Value, json};

/// Microseconds since the Unix epoch (the timestamp embedded in every payload).
pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// A histogram of microseconds, 1 µs … 10 min, 3 significant digits.
pub fn new_hist() -> Histogram<u64> {
    // Constant, valid bounds: construction cannot fail; fall back to an auto-resizing one.
    Histogram::new_with_bounds(1, 600_000_000, 3)
        .or_else(|_| Histogram::new(3))
        .unwrap_or_else(|_| unreachable_hist())
}

#[allow(clippy::panic)]
fn unreachable_hist() -> Histogram<u64> {
    panic!("hdrhistogram rejected constant bounds")
}

/// Records `us` (at least 1).
pub fn record(h: &mut Histogram<u64>, us: u64) {
    h.saturating_record(us.max(1));
}

fn ms(us: u64) -> f64 {
    (us as f64) / 1000.0
}

/// Percentiles of a histogram of microseconds, in milliseconds.
pub fn summary(h: &Histogram<u64>) -> Value {
    if h.is_empty() {
        return json!({ "count": 0 });
    }
    json!({
        "count": h.len(),
        "min_ms": ms(h.min()),
        "mean_ms": h.mean() / 1000.0,
        "p50_ms": ms(h.value_at_quantile(0.50)),
        "p90_ms": ms(h.value_at_quantile(0.90)),
        "p99_ms": ms(h.value_at_quantile(0.99)),
        "p999_ms": ms(h.value_at_quantile(0.999)),
        "max_ms": ms(h.max()),
    })
}

/// Resident memory of `pid` (`VmRSS` in `/proc/PID/status`), in bytes.
pub fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// User plus system CPU time of `pid` (all its threads, dead ones too), in clock ticks.
pub fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: fields start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After ')': state is field 3, so utime (14) and stime (15) are at 11 and 12.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// Clock ticks per second (`getconf CLK_TCK`, 100 when it cannot be asked).
pub fn clk_tck() -> u64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100)
}

/// The soft limit on open files of this process (`/proc/self/limits`).
pub fn open_files_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    let soft = line.split_whitespace().nth(3)?;
    if soft == "unlimited" {
        return Some(u64::MAX);
    }
    soft.parse().ok()
}

/// One reading of the watched processes.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// pid → (resident bytes, CPU ticks).
    pub procs: BTreeMap<u32, (Option<u64>, Option<u64>)>,
    /// Resident bytes read from each `--metrics-url`.
    pub metrics_rss: Vec<Option<u64>>,
}

impl Snapshot {
    /// Reads every pid and metrics URL.
    pub async fn take(pids: &[u32], metrics_urls: &[String]) -> Self {
        let procs = pids
            .iter()
            .map(|&p| (p, (rss_bytes(p), cpu_ticks(p))))
            .collect();
        let mut metrics_rss = Vec::new();
        for url in metrics_urls {
            metrics_rss.push(metrics_resident_bytes(url).await);
        }
        Self { procs, metrics_rss }
    }

    /// Sum of the resident bytes of every pid and metrics URL that answered.
    pub fn total_rss(&self) -> u64 {
        self.procs.values().filter_map(|(r, _)| *r).sum::<u64>()
            + self.metrics_rss.iter().flatten().sum::<u64>()
    }

    /// True when at least one memory reading exists.
    pub fn has_rss(&self) -> bool {
        self.procs.values().any(|(r, _)| r.is_some())
            || self.metrics_rss.iter().any(Option::is_some)
    }

    /// CPU seconds used by every pid between `before` and `self`.
    pub fn cpu_seconds_since(&self, before: &Snapshot, tck: u64) -> Option<f64> {
        let mut ticks = 0u64;
        let mut any = false;
        for (pid, (_, after)) in &self.procs {
            if let (Some(a), Some((_, Some(b)))) = (after, before.procs.get(pid)) {
                ticks += a.saturating_sub(*b);
                any = true;
            }
        }
        any.then(|| ticks as f64 / tck as f64)
    }

    /// Per-process detail: rss before/after and CPU seconds.
    pub fn detail(&self, before: &Snapshot, tck: u64) -> Value {
        let per: Vec<Value> = self
            .procs
            .iter()
            .map(|(pid, (rss, cpu))| {
                let (rss0, cpu0) = before.procs.get(pid).copied().unwrap_or_default();
                json!({
                    "pid": pid,
                    "rss_before_bytes": rss0,
                    "rss_after_bytes": rss,
                    "cpu_s": match (cpu, cpu0) {
                        (Some(a), Some(b)) => Some(a.saturating_sub(b) as f64 / tck as f64),
                        _ => None,
                    },
                })
            })
            .collect();
        json!({ "processes": per, "metrics_rss_before": before.metrics_rss, "metrics_rss_after": self.metrics_rss })
    }
}

/// `wsgate_process_resident_memory_bytes` from a Prometheus endpoint (plain HTTP).
pub async fn metrics_resident_bytes(url: &str) -> Option<u64> {
    let body = http_get(url, Duration::from_secs(3)).await?;
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .find(|l| {
            l.starts_with("wsgate_process_resident_memory_bytes ")
                || l.starts_with("process_resident_memory_bytes ")
        })
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<f64>().ok())
        .map(|v| v as u64)
}

/// A minimal `GET` over plain HTTP/1.1 with `Connection: close`; the body as text.
async fn http_get(url: &str, timeout: Duration) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let uri: http::Uri = url.parse().ok()?;
    let host = uri.host()?;
    let port = uri.port_u16().unwrap_or(80);
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let fut = async {
        let mut s = tokio::net::TcpStream::connect((host, port)).await.ok()?;
        let req = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.ok()?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.ok()?;
        let text = String::from_utf8_lossy(&buf).into_owned();
        let (_, body) = text.split_once("\r\n\r\n")?;
        Some(body.to_owned())
    };
    tokio::time::timeout(timeout, fut).await.ok().flatten()
}
