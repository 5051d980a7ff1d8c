//! `wsgate-bench`: a load generator for wsgate deployments (and, for comparison, plain
//! WebSocket servers, Socket.IO and the bare limit probe).
//!
//! Scenarios: `connect` (handshake rate and failures), `idle` (resident memory per held
//! connection), `push` (SendToUser latency over gRPC), `fanout` (topic subscribers spread
//! over pods, publishes at a rate or in a burst), `broadcast` and `recover` (clients
//! reconnecting at once with `?since=` after missing messages). Every delivery carries the
//! time it was sent (`{"t":µs,"seq":n}`), so latency is measured from the call to receipt.
//! Network errors are counted by class, never fatal.

mod conn;
mod publish;
mod recover;
mod stats;

use std::io::IsTerminal;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::bail;
use clap::{Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use wsgate_proto::pb;

use conn::{Dialer, OpenPlan, Protocol, Sink};
use publish::{Op, Publisher, deliveries_json, drain, publish};
use stats::{Snapshot, now_us, summary};

type GrpcClient = pb::gateway_client::GatewayClient<tonic::transport::Channel>;

#[derive(Parser)]
#[command(
    name = "wsgate-bench",
    version,
    about = "Load generator for wsgate: connect, idle, push, fanout, broadcast, recover",
    after_help = "One process holds at most `ulimit -n` sockets (20,000 here): for larger runs \
                  start several wsgate-bench processes, each with a share of the connections."
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Open N connections at a target rate; report the handshake rate and failures by status.
    Connect {
        #[command(flatten)]
        c: Common,
        /// Connections to open.
        #[arg(long, short = 'n', default_value_t = 1000)]
        connections: usize,
        /// Keep them open this long after the last one opened.
        #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
        hold: Duration,
    },
    /// Hold N connections for --duration; report the server's resident memory per
    /// connection (with --pid or --metrics-url).
    Idle {
        #[command(flatten)]
        c: Common,
        /// Connections to hold.
        #[arg(long, short = 'n', default_value_t = 1000)]
        connections: usize,
    },
    /// SendToUser over gRPC at --rate for --duration to users connected over WebSocket;
    /// report end-to-end latency.
    Push {
        #[command(flatten)]
        c: Common,
        /// Users, one connection each, spread over the --ws endpoints.
        #[arg(long, default_value_t = 1000)]
        users: usize,
    },
    /// M subscribers of one topic spread over the --ws endpoints; publish --publishes
    /// messages at --rate (0 = one burst); report deliveries/s and latency.
    Fanout {
        #[command(flatten)]
        c: Common,
        /// Subscribers.
        #[arg(long, short = 'm', default_value_t = 1000)]
        subscribers: usize,
        /// Messages to publish.
        #[arg(long, default_value_t = 100)]
        publishes: u64,
        /// The topic.
        #[arg(long, default_value = "bench.fanout")]
        topic: String,
    },
    /// N connections; Broadcast --publishes messages at --rate (0 = one burst).
    Broadcast {
        #[command(flatten)]
        c: Common,
        /// Connections.
        #[arg(long, short = 'n', default_value_t = 1000)]
        connections: usize,
        /// Messages to broadcast.
        #[arg(long, default_value_t = 10)]
        publishes: u64,
    },
    /// N clients join and keep their user stream's position, leave, are sent --missed
    /// messages each (SendToUser), then all reconnect at once with `?since=`; report how
    /// many recovered, how fast, and whether every missed message arrived once, in order.
    /// --timeout bounds the reconnect phase.
    Recover {
        #[command(flatten)]
        c: Common,
        /// Clients, one user each, spread over the --ws endpoints.
        #[arg(long, short = 'n', default_value_t = 1000)]
        connections: usize,
        /// Messages sent to each user while away.
        #[arg(long, default_value_t = 5)]
        missed: u64,
        /// Leave by dropping the TCP connection, without a WebSocket close.
        #[arg(long)]
        abrupt: bool,
        /// Reconnect to the pod each client left (default: the next --ws, as after a pod
        /// restart).
        #[arg(long)]
        same_pod: bool,
    },
}

#[derive(Args, Clone)]
struct Common {
    /// WebSocket endpoint (`ws://HOST:PORT/ws`); repeat for several pods. Connections are
    /// spread round-robin. For Socket.IO: `ws://HOST:PORT/socket.io/`.
    #[arg(long = "ws", required = true)]
    ws: Vec<String>,
    /// gRPC control plane (`http://HOST:PORT`); repeat for several pods (calls round-robin).
    #[arg(long = "grpc")]
    grpc: Vec<String>,
    /// API key for the control plane.
    #[arg(long, env = "WSGATE_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// HS256 secret: mint a token per user (`access_token`). Without it, `?user=` is sent.
    #[arg(long, env = "WSGATE_BENCH_TOKEN_SECRET", hide_env_values = true)]
    token_secret: Option<String>,
    /// What the server speaks.
    #[arg(long, value_enum, default_value = "wsgate")]
    protocol: Protocol,
    /// Spread connections over this many source addresses 127.0.0.2, 127.0.0.3, … (loopback
    /// targets only; 0 = let the OS pick).
    #[arg(long, default_value_t = 1)]
    sources: u8,
    /// Hold time (idle), send period (push).
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// connect/idle: handshakes per second (0 = as fast as --concurrency allows); push:
    /// sends per second (0 = 1000); fanout/broadcast: publishes per second (0 = one burst).
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    /// push/fanout/broadcast: handshakes per second while connecting (0 = unpaced).
    #[arg(long, default_value_t = 0.0)]
    connect_rate: f64,
    /// Handshakes (and gRPC calls) in flight at most.
    #[arg(long, default_value_t = 200)]
    concurrency: usize,
    /// User ids are PREFIX0, PREFIX1, …
    #[arg(long, default_value = "bench-")]
    user_prefix: String,
    /// A server process to watch (RSS and CPU time from /proc); repeatable (pods, Redis).
    #[arg(long)]
    pid: Vec<u32>,
    /// A Prometheus endpoint to read `wsgate_process_resident_memory_bytes` from; repeatable.
    #[arg(long)]
    metrics_url: Vec<String>,
    /// Per-handshake timeout, and how long deliveries may stall before the run gives up.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    timeout: Duration,
    /// Extra payload bytes per message.
    #[arg(long, default_value_t = 0)]
    pad: usize,
    /// Make the padding realistic JSON (records with varied ids, names, prices and
    /// timestamps) instead of one repeated letter, which compresses unrealistically well.
    #[arg(long)]
    pad_json: bool,
    /// Offer permessage-deflate in every handshake.
    #[arg(long)]
    compression: bool,
    /// Print one JSON object on stdout instead of the table.
    #[arg(long)]
    json: bool,
    /// Runtime worker threads (default: one per core).
    #[arg(long)]
    threads: Option<usize>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let c = match &cli.cmd {
        Cmd::Connect { c, .. }
        | Cmd::Idle { c, .. }
        | Cmd::Push { c, .. }
        | Cmd::Fanout { c, .. }
        | Cmd::Broadcast { c, .. }
        | Cmd::Recover { c, .. } => c.clone(),
    };
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    rt.enable_all();
    if let Some(n) = c.threads {
        rt.worker_threads(n.max(1));
    }
    let rt = match rt.build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("wsgate-bench: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(run(cli.cmd));
    rt.shutdown_timeout(Duration::from_secs(2));
    match result {
        Ok(report) => {
            if c.json {
                println!("{report}");
            } else {
                print_table(&report);
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("wsgate-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cmd: Cmd) -> anyhow::Result<Value> {
    match cmd {
        Cmd::Connect {
            c,
            connections,
            hold,
        } => connect(c, connections, hold).await,
        Cmd::Idle { c, connections } => idle(c, connections).await,
        Cmd::Push { c, users } => push(c, users).await,
        Cmd::Fanout {
            c,
            subscribers,
            publishes,
            topic,
        } => fanout(c, subscribers, publishes, Some(topic)).await,
        Cmd::Broadcast {
            c,
            connections,
            publishes,
        } => fanout(c, connections, publishes, None).await,
        Cmd::Recover {
            c,
            connections,
            missed,
            abrupt,
            same_pod,
        } => {
            let plan = recover::Plan {
                n: connections,
                missed,
                abrupt,
                same_pod,
            };
            recover::recover(c, plan).await
        }
    }
}

fn bar(c: &Common, len: u64, msg: &'static str) -> ProgressBar {
    if c.json || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(len);
    if let Ok(style) = ProgressStyle::with_template(
        "{msg:>12} [{elapsed_precise}] {wide_bar} {pos}/{len} ({per_sec})",
    ) {
        pb.set_style(style);
    }
    pb.set_message(msg);
    pb
}

async fn dialer(c: &Common, topics: Option<Vec<String>>) -> anyhow::Result<Arc<Dialer>> {
    Ok(Arc::new(
        Dialer::new(
            &c.ws,
            c.sources,
            c.protocol,
            c.token_secret.clone(),
            topics,
            c.timeout,
        )
        .await?
        .with_compression(c.compression),
    ))
}

fn header(c: &Common, scenario: &str) -> Value {
    json!({
        "scenario": scenario,
        "protocol": format!("{:?}", c.protocol).to_lowercase(),
        "ws": c.ws,
        "grpc": c.grpc,
        "sources": c.sources,
        "auth": if c.token_secret.is_some() { "jwt" } else { "none" },
        "started_unix_ms": now_us() / 1000,
    })
}

fn opened_json(o: &conn::Opened, requested: usize) -> Value {
    let secs = o.elapsed.as_secs_f64();
    let refusal_bodies: Vec<Value> = o
        .refusals
        .first
        .iter()
        .map(|(status, body)| json!({ "status": status, "body": body }))
        .collect();
    json!({
        "requested": requested,
        "ok": o.ok,
        "failed": o.failures.values().sum::<u64>(),
        "failures": o.failures,
        "refusals": o.refusals.counts,
        "refusal_bodies": refusal_bodies,
        "elapsed_s": secs,
        "handshakes_per_s": if secs > 0.0 { o.ok as f64 / secs } else { 0.0 },
        "handshake_latency": summary(&o.handshake),
    })
}

fn merge(mut a: Value, b: Value) -> Value {
    if let (Some(a), Value::Object(b)) = (a.as_object_mut(), b) {
        a.extend(b);
    }
    a
}

async fn connect(c: Common, n: usize, hold: Duration) -> anyhow::Result<Value> {
    conn::check_open_files(n)?;
    let d = dialer(&c, None).await?;
    let sink = Sink::new();
    let stop = CancellationToken::new();
    let tck = stats::clk_tck();
    let before = Snapshot::take(&c.pid, &[]).await;
    let client0 = stats::cpu_ticks(std::process::id());
    let pb = bar(&c, n as u64, "connect");
    let plan = OpenPlan {
        n,
        rate: c.rate,
        concurrency: c.concurrency,
        user_prefix: c.user_prefix.clone(),
        topic: None,
    };
    let opened = conn::open_many(d, &plan, sink.clone(), stop.clone(), &pb).await;
    pb.finish_and_clear();
    let after = Snapshot::take(&c.pid, &[]).await;
    let client_cpu = client_cpu_since(client0, tck);
    if !hold.is_zero() {
        tokio::time::sleep(hold).await;
    }
    let cpu = after.cpu_seconds_since(&before, tck);
    let report = merge(
        header(&c, "connect"),
        json!({
            "target_rate": c.rate,
            "concurrency": c.concurrency,
            "connections": opened_json(&opened, n),
            "dropped_while_held": sink.dropped.load(Ordering::Relaxed),
            "server_cpu_s": cpu,
            "server_cpu_us_per_handshake": cpu.filter(|_| opened.ok > 0).map(|s| s * 1e6 / opened.ok as f64),
            "client_cpu_s": client_cpu,
            "client_cpu_us_per_handshake": client_cpu.filter(|_| opened.ok > 0).map(|s| s * 1e6 / opened.ok as f64),
            "servers": after.detail(&before, tck),
        }),
    );
    conn::close_all(&stop, opened.readers).await;
    Ok(report)
}

async fn idle(c: Common, n: usize) -> anyhow::Result<Value> {
    conn::check_open_files(n)?;
    let d = dialer(&c, None).await?;
    let sink = Sink::new();
    let stop = CancellationToken::new();
    let tck = stats::clk_tck();
    let before = Snapshot::take(&c.pid, &c.metrics_url).await;
    let pb = bar(&c, n as u64, "idle");
    let plan = OpenPlan {
        n,
        rate: c.rate,
        concurrency: c.concurrency,
        user_prefix: c.user_prefix.clone(),
        topic: None,
    };
    let opened = conn::open_many(d, &plan, sink.clone(), stop.clone(), &pb).await;
    pb.finish_and_clear();
    tokio::time::sleep(c.duration).await;
    let after = Snapshot::take(&c.pid, &c.metrics_url).await;
    let held = opened
        .ok
        .saturating_sub(sink.dropped.load(Ordering::Relaxed));
    let per_conn = (after.has_rss() && held > 0)
        .then(|| (after.total_rss() as f64 - before.total_rss() as f64) / held as f64);
    let report = merge(
        header(&c, "idle"),
        json!({
            "connections": opened_json(&opened, n),
            "held_s": c.duration.as_secs_f64(),
            "held": held,
            "dropped_while_held": sink.dropped.load(Ordering::Relaxed),
            "drop_reasons": *sink.drop_reasons.lock(),
            "server_rss_before_bytes": before.has_rss().then(|| before.total_rss()),
            "server_rss_after_bytes": after.has_rss().then(|| after.total_rss()),
            "server_rss_bytes_per_connection": per_conn,
            "server_rss_kib_per_connection": per_conn.map(|b| b / 1024.0),
            "client_rss_bytes": stats::rss_bytes(std::process::id()),
            "servers": after.detail(&before, tck),
        }),
    );
    if per_conn.is_none() {
        eprintln!("wsgate-bench: give --pid or --metrics-url to measure the server's memory");
    }
    conn::close_all(&stop, opened.readers).await;
    Ok(report)
}

async fn push(c: Common, users: usize) -> anyhow::Result<Value> {
    if c.protocol != Protocol::Wsgate {
        bail!("push calls wsgate's SendToUser: use --protocol wsgate");
    }
    conn::check_open_files(users)?;
    let d = dialer(&c, None).await?;
    let mut publisher = Publisher::new(&c, &d).await?;
    let sink = Sink::new();
    let stop = CancellationToken::new();
    let tck = stats::clk_tck();
    let pb = bar(&c, users as u64, "connect");
    let plan = OpenPlan {
        n: users,
        rate: c.connect_rate,
        concurrency: c.concurrency,
        user_prefix: c.user_prefix.clone(),
        topic: None,
    };
    let opened = conn::open_many(d, &plan, sink.clone(), stop.clone(), &pb).await;
    pb.finish_and_clear();
    if opened.ok == 0 {
        conn::close_all(&stop, opened.readers).await;
        bail!("no connection could be opened: {:?}", opened.failures);
    }
    let rate = if c.rate > 0.0 { c.rate } else { 1000.0 };
    let count = ((rate * c.duration.as_secs_f64()).round() as u64).max(1);
    let before = Snapshot::take(&c.pid, &[]).await;
    let client0 = stats::cpu_ticks(std::process::id());
    let pb = bar(&c, count, "push");
    let prefix = c.user_prefix.clone();
    let n = users as u64;
    let p = publish(
        &c,
        &mut publisher,
        count,
        rate,
        |seq| Op::User(format!("{prefix}{}", seq % n)),
        &pb,
    )
    .await;
    pb.finish_and_clear();
    let pb = bar(&c, p.targets, "deliver");
    let complete = drain(&sink, p.targets, c.timeout, &pb).await;
    pb.finish_and_clear();
    let after = Snapshot::take(&c.pid, &[]).await;
    let cpu = after.cpu_seconds_since(&before, tck);
    let client_cpu = client_cpu_since(client0, tck);
    let report = merge(
        header(&c, "push"),
        json!({
            "target_rate": rate,
            "duration_s": c.duration.as_secs_f64(),
            "connections": opened_json(&opened, users),
            "sends_requested": count,
            "deliveries": deliveries_json(&sink, &p, p.targets, complete, cpu, client_cpu),
            "dropped": sink.dropped.load(Ordering::Relaxed),
            "servers": after.detail(&before, tck),
        }),
    );
    conn::close_all(&stop, opened.readers).await;
    Ok(report)
}

async fn fanout(
    c: Common,
    n: usize,
    publishes: u64,
    topic: Option<String>,
) -> anyhow::Result<Value> {
    conn::check_open_files(n + 1)?;
    let scenario = if topic.is_some() {
        "fanout"
    } else {
        "broadcast"
    };
    let d = dialer(&c, topic.clone().map(|t| vec![t])).await?;
    let mut publisher = Publisher::new(&c, &d).await?;
    let sink = Sink::new();
    let stop = CancellationToken::new();
    let tck = stats::clk_tck();
    let pb = bar(&c, n as u64, "subscribe");
    let plan = OpenPlan {
        n,
        rate: c.connect_rate,
        concurrency: c.concurrency,
        user_prefix: c.user_prefix.clone(),
        topic: topic.clone(),
    };
    let opened = conn::open_many(d, &plan, sink.clone(), stop.clone(), &pb).await;
    pb.finish_and_clear();
    if opened.ok == 0 {
        conn::close_all(&stop, opened.readers).await;
        bail!("no connection could be opened: {:?}", opened.failures);
    }
    // Let the last subscriptions settle everywhere (remote pods, adapters).
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = Snapshot::take(&c.pid, &[]).await;
    let client0 = stats::cpu_ticks(std::process::id());
    let pb = bar(&c, publishes, "publish");
    let p = publish(
        &c,
        &mut publisher,
        publishes,
        c.rate,
        |_| match &topic {
            Some(t) => Op::Topic(t.clone()),
            None => Op::Broadcast,
        },
        &pb,
    )
    .await;
    pb.finish_and_clear();
    let expected = opened.ok * p.ok;
    let pb = bar(&c, expected, "deliver");
    let complete = drain(&sink, expected, c.timeout, &pb).await;
    pb.finish_and_clear();
    let after = Snapshot::take(&c.pid, &[]).await;
    let cpu = after.cpu_seconds_since(&before, tck);
    let client_cpu = client_cpu_since(client0, tck);
    let report = merge(
        header(&c, scenario),
        json!({
            "topic": topic,
            "publishes_requested": publishes,
            "target_rate": c.rate,
            "connections": opened_json(&opened, n),
            "deliveries": deliveries_json(&sink, &p, expected, complete, cpu, client_cpu),
            "dropped": sink.dropped.load(Ordering::Relaxed),
            "drop_reasons": *sink.drop_reasons.lock(),
            "servers": after.detail(&before, tck),
        }),
    );
    conn::close_all(&stop, opened.readers).await;
    Ok(report)
}

/// CPU seconds this process used since `before` ticks.
fn client_cpu_since(before: Option<u64>, tck: u64) -> Option<f64> {
    let now = stats::cpu_ticks(std::process::id())?;
    Some(now.saturating_sub(before?) as f64 / tck as f64)
}

/// A readable summary: every scalar of the report, one per line, dotted keys.
fn print_table(report: &Value) {
    let mut rows = Vec::new();
    flatten("", report, &mut rows);
    let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    println!("{:-<1$}", "", width + 30);
    for (k, v) in rows {
        println!("{k:<width$}  {v}");
    }
    println!("{:-<1$}", "", width + 30);
}

fn flatten(prefix: &str, v: &Value, out: &mut Vec<(String, String)>) {
    match v {
        Value::Object(map) => {
            for (k, v) in map {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&key, v, out);
            }
        }
        Value::Array(items) if items.iter().any(|i| i.is_object()) => {
            for (i, v) in items.iter().enumerate() {
                flatten(&format!("{prefix}[{i}]"), v, out);
            }
        }
        Value::Null => {}
        Value::Number(n) => {
            let s = match n.as_f64() {
                Some(f) if n.is_f64() => format!("{f:.3}"),
                _ => n.to_string(),
            };
            out.push((prefix.to_owned(), s));
        }
        Value::String(s) => out.push((prefix.to_owned(), s.clone())),
        other => out.push((prefix.to_owned(), other.to_string())),
    }
}
