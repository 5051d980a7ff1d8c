//! Publishing for the `push`, `fanout` and `broadcast` scenarios: what a publish
//! addresses, how it reaches the server under test (wsgate's gRPC API, a Socket.IO
//! emit, or the limit probe), the paced publish loop, and the report of what arrived.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use futures_util::SinkExt;
use hdrhistogram::Histogram;
use indicatif::ProgressBar;
use serde_json::{Value, json};
use tokio::sync::{Semaphore, mpsc};
use tokio_tungstenite::tungstenite::Message;
use tonic::metadata::{Ascii, MetadataValue};
use wsgate_proto::pb;

use anyhow::{Context, bail};

use crate::conn::{self, Dialer, Protocol, Sink, Ws};
use crate::stats::{self, new_hist, now_us, summary};
use crate::{Common, GrpcClient};

/// What one publish addresses.
#[derive(Clone)]
pub(crate) enum Op {
    User(String),
    Topic(String),
    Broadcast,
}

/// How publishes reach the server under test.
pub(crate) enum Publisher {
    /// wsgate's control plane, round-robin over the pods.
    Grpc {
        clients: Vec<GrpcClient>,
        auth: Option<MetadataValue<Ascii>>,
    },
    /// A client connection of Socket.IO (`publish`/`broadcast` events) or of the limit
    /// probe (every frame it sends goes to every other connection).
    Ws(Box<Ws>, Protocol),
}

impl Publisher {
    pub(crate) async fn new(c: &Common, d: &Dialer) -> anyhow::Result<Self> {
        match c.protocol {
            Protocol::Wsgate => {
                if c.grpc.is_empty() {
                    bail!("this scenario publishes over gRPC: give --grpc http://HOST:PORT");
                }
                let mut clients = Vec::new();
                for url in &c.grpc {
                    let url = if url.contains("://") {
                        url.clone()
                    } else {
                        format!("http://{url}")
                    };
                    let ch = tonic::transport::Endpoint::from_shared(url.clone())
                        .with_context(|| format!("bad --grpc {url}"))?
                        .connect_timeout(Duration::from_secs(5))
                        .tcp_nodelay(true)
                        .connect()
                        .await
                        .with_context(|| format!("cannot reach the gateway at {url}"))?;
                    clients.push(GrpcClient::new(ch));
                }
                let auth = match &c.api_key {
                    Some(k) => Some(
                        MetadataValue::try_from(format!("Bearer {k}"))
                            .context("the API key has characters not allowed in metadata")?,
                    ),
                    None => None,
                };
                Ok(Self::Grpc { clients, auth })
            }
            Protocol::Socketio | Protocol::Probe => {
                let (ws, _) = d
                    .dial(usize::MAX / 2, "publisher")
                    .await
                    .map_err(|e| anyhow::anyhow!("cannot connect the publisher: {e}"))?;
                Ok(Self::Ws(Box::new(ws), c.protocol))
            }
            Protocol::Plain => bail!("a plain WebSocket server cannot be published to"),
        }
    }
}

fn payload(seq: u64, pad: usize, json: bool) -> String {
    if pad == 0 {
        format!(r#"{{"t":{},"seq":{seq}}}"#, now_us())
    } else if json {
        format!(
            r#"{{"t":{},"seq":{seq},"items":{}}}"#,
            now_us(),
            json_records(seq, pad)
        )
    } else {
        format!(
            r#"{{"t":{},"seq":{seq},"pad":"{}"}}"#,
            now_us(),
            "x".repeat(pad)
        )
    }
}

/// A JSON array of records about `bytes` long, varied as application data is (ids, names,
/// prices, timestamps from a pseudo-random sequence seeded by `seq`), so that compression
/// figures are not those of a repeated letter.
fn json_records(seq: u64, bytes: usize) -> String {
    const NAMES: [&str; 8] = [
        "alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi",
    ];
    const EVENTS: [&str; 4] = ["order.created", "order.paid", "cart.updated", "item.viewed"];
    let mut x = seq
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let mut next = || {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        x >> 33
    };
    let mut out = String::from("[");
    while out.len() < bytes {
        if out.len() > 1 {
            out.push(',');
        }
        let (a, b, c, d) = (next(), next(), next(), next());
        out.push_str(&format!(
            r#"{{"id":{},"user":"{}-{}","event":"{}","price":{}.{:02},"qty":{},"ts":{}}}"#,
            a % 1_000_000,
            NAMES[(b % 8) as usize],
            b % 10_000,
            EVENTS[(c % 4) as usize],
            c % 500,
            d % 100,
            d % 9 + 1,
            1_764_000_000_000 + a % 100_000_000,
        ));
    }
    out.push(']');
    out
}

pub(crate) struct Published {
    pub(crate) ok: u64,
    pub(crate) targets: u64,
    pub(crate) failures: BTreeMap<String, u64>,
    pub(crate) call: Histogram<u64>,
    pub(crate) started_us: u64,
    pub(crate) elapsed: Duration,
}

async fn grpc_call(
    mut client: GrpcClient,
    auth: Option<MetadataValue<Ascii>>,
    op: Op,
    body: String,
) -> Result<u64, String> {
    fn req<T>(msg: T, auth: &Option<MetadataValue<Ascii>>) -> tonic::Request<T> {
        let mut r = tonic::Request::new(msg);
        r.set_timeout(Duration::from_secs(10));
        if let Some(a) = auth {
            r.metadata_mut().insert("authorization", a.clone());
        }
        r
    }
    let payload = Some(pb::Payload {
        body: Some(pb::payload::Body::Json(body)),
    });
    let r = match op {
        Op::User(user_id) => {
            client
                .send_to_user(req(
                    pb::SendToUserRequest {
                        user_id,
                        payload,
                        idempotency_key: String::new(),
                    },
                    &auth,
                ))
                .await
        }
        Op::Topic(topic) => {
            client
                .publish(req(
                    pb::PublishRequest {
                        topic,
                        payload,
                        idempotency_key: String::new(),
                    },
                    &auth,
                ))
                .await
        }
        Op::Broadcast => {
            client
                .broadcast(req(pb::BroadcastRequest { payload }, &auth))
                .await
        }
    };
    r.map(|r| r.into_inner().targets)
        .map_err(|s| format!("grpc_{:?}", s.code()).to_lowercase())
}

/// Sends `count` publishes at `rate` per second (0 = all at once).
pub(crate) async fn publish(
    c: &Common,
    publisher: &mut Publisher,
    count: u64,
    rate: f64,
    op_of: impl Fn(u64) -> Op,
    pb: &ProgressBar,
) -> Published {
    let start = Instant::now();
    let started_us = now_us();
    let mut out = Published {
        ok: 0,
        targets: 0,
        failures: BTreeMap::new(),
        call: new_hist(),
        started_us,
        elapsed: Duration::ZERO,
    };
    match publisher {
        Publisher::Grpc { clients, auth } => {
            let sem = Arc::new(Semaphore::new(c.concurrency.max(1)));
            let (tx, mut rx) = mpsc::unbounded_channel::<(Result<u64, String>, u64)>();
            for seq in 0..count {
                if rate > 0.0 {
                    let at = start + Duration::from_secs_f64(seq as f64 / rate);
                    tokio::time::sleep_until(at.into()).await;
                }
                let Ok(permit) = sem.clone().acquire_owned().await else {
                    break;
                };
                let client = clients[(seq as usize) % clients.len()].clone();
                let (auth, op, tx, pad, pad_json) =
                    (auth.clone(), op_of(seq), tx.clone(), c.pad, c.pad_json);
                tokio::spawn(async move {
                    let t0 = Instant::now();
                    let r = grpc_call(client, auth, op, payload(seq, pad, pad_json)).await;
                    drop(permit);
                    let _ = tx.send((r, u64::try_from(t0.elapsed().as_micros()).unwrap_or(0)));
                });
            }
            drop(tx);
            while let Some((r, us)) = rx.recv().await {
                stats::record(&mut out.call, us);
                match r {
                    Ok(t) => {
                        out.ok += 1;
                        out.targets += t;
                    }
                    Err(code) => *out.failures.entry(code).or_default() += 1,
                }
                pb.inc(1);
            }
        }
        Publisher::Ws(ws, protocol) => {
            for seq in 0..count {
                if rate > 0.0 {
                    let at = start + Duration::from_secs_f64(seq as f64 / rate);
                    tokio::time::sleep_until(at.into()).await;
                }
                let body = payload(seq, c.pad, c.pad_json);
                let frame = match (*protocol, op_of(seq)) {
                    (Protocol::Socketio, Op::Topic(t)) => format!(
                        r#"42["publish",{{"topic":{},"data":{body}}}]"#,
                        serde_json::json!(t)
                    ),
                    (Protocol::Socketio, _) => format!(r#"42["broadcast",{{"data":{body}}}]"#),
                    (_, Op::Topic(t)) => format!(
                        r#"{{"op":"message","topic":{},"data":{body}}}"#,
                        serde_json::json!(t)
                    ),
                    _ => format!(r#"{{"op":"message","data":{body}}}"#),
                };
                let t0 = Instant::now();
                match ws.send(Message::text(frame)).await {
                    Ok(()) => out.ok += 1,
                    Err(e) => *out.failures.entry(conn::ws_class(&e)).or_default() += 1,
                }
                stats::record(
                    &mut out.call,
                    u64::try_from(t0.elapsed().as_micros()).unwrap_or(0),
                );
                pb.inc(1);
            }
        }
    }
    out.elapsed = start.elapsed();
    out
}

/// Waits until `expected` deliveries arrived, or none arrived for `quiet`.
pub(crate) async fn drain(sink: &Sink, expected: u64, quiet: Duration, pb: &ProgressBar) -> bool {
    let mut last = sink.delivered();
    let mut since = Instant::now();
    loop {
        let now = sink.delivered();
        pb.set_position(now);
        if now >= expected {
            return true;
        }
        if now != last {
            last = now;
            since = Instant::now();
        } else if since.elapsed() >= quiet {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

pub(crate) fn deliveries_json(
    sink: &Sink,
    p: &Published,
    expected: u64,
    complete: bool,
    cpu: Option<f64>,
    client_cpu: Option<f64>,
) -> Value {
    let delivered = sink.delivered();
    let last = sink.last_us.load(Ordering::Relaxed);
    let window_s = last.saturating_sub(p.started_us) as f64 / 1e6;
    json!({
        "publishes_ok": p.ok,
        "publish_failures": p.failures,
        "publish_elapsed_s": p.elapsed.as_secs_f64(),
        "publishes_per_s": if p.elapsed.as_secs_f64() > 0.0 { p.ok as f64 / p.elapsed.as_secs_f64() } else { 0.0 },
        "registry_targets": p.targets,
        "call_latency": summary(&p.call),
        "expected_deliveries": expected,
        "delivered": delivered,
        "missing": expected.saturating_sub(delivered),
        "complete": complete,
        "delivery_window_s": window_s,
        "deliveries_per_s": if window_s > 0.0 { delivered as f64 / window_s } else { 0.0 },
        "latency": summary(&sink.hist.lock()),
        "server_cpu_s": cpu,
        "server_cpu_us_per_delivery": cpu.filter(|_| delivered > 0).map(|s| s * 1e6 / delivered as f64),
        "client_cpu_s": client_cpu,
        "client_cpu_us_per_delivery": client_cpu.filter(|_| delivered > 0).map(|s| s * 1e6 / delivered as f64),
    })
}
