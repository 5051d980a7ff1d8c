//! The `recover` scenario: N clients connect and remember their user stream's position
//! from the welcome, all disconnect, each user is sent M messages through the control
//! plane while away, then all N reconnect at once with `?since=`. Per client: the join
//! (connect start to welcome), whether the welcome said `recovered: true`, and when every
//! missed message had arrived — each exactly once, in offset order, with the payload
//! that was sent at that offset.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::bail;
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde_json::{Value, json};
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;
use tonic::metadata::{Ascii, MetadataValue};
use wsgate_proto::pb;

use crate::conn::{self, Dialer, Protocol, Ws};
use crate::publish::Publisher;
use crate::stats::{self, Snapshot, new_hist, summary};
use crate::{Common, GrpcClient};

/// What the scenario is asked for.
pub(crate) struct Plan {
    /// Clients, one user each.
    pub n: usize,
    /// Messages sent to each user while away.
    pub missed: u64,
    /// Drop the TCP connection without a WebSocket close.
    pub abrupt: bool,
    /// Reconnect to the pod each client left (else to the next `--ws`).
    pub same_pod: bool,
}

/// A user stream position: epoch and offset.
#[derive(Clone, Debug, PartialEq)]
struct Position {
    epoch: String,
    offset: u64,
}

/// The `user_stream` of a welcome frame, and its `recovered`.
fn parse_welcome(text: &str) -> Result<(Position, Option<bool>), String> {
    let v: Value = serde_json::from_str(text).map_err(|_| "welcome_not_json".to_owned())?;
    let us = v.get("user_stream").ok_or("no_user_stream")?;
    let position = (|| {
        Some(Position {
            epoch: us.get("epoch")?.as_str()?.to_owned(),
            offset: us.get("offset")?.as_u64()?,
        })
    })()
    .ok_or("bad_user_stream")?;
    Ok((position, v.get("recovered").and_then(Value::as_bool)))
}

/// One message sent to a user while away: where the server put it and what it carried.
#[derive(Clone, Debug)]
struct Sent {
    offset: u64,
    k: u64,
}

/// How one client's reconnect went.
#[derive(Debug, Default)]
struct Outcome {
    error: Option<String>,
    join_us: Option<u64>,
    recovered: Option<bool>,
    /// From the reconnect start (all clients') to the last missed message, µs.
    complete_us: Option<u64>,
    expected: u64,
    delivered: u64,
    duplicates: u64,
    out_of_order: u64,
    wrong_payload: u64,
    unexpected: u64,
}

/// Checks the user pushes of one reconnected client against what was sent to it.
struct Check<'a> {
    user: usize,
    expected: HashMap<u64, u64>,
    seen: HashSet<u64>,
    since: u64,
    last: u64,
    out: &'a mut Outcome,
}

impl Check<'_> {
    /// One text frame; true once every expected message arrived.
    fn frame(&mut self, text: &str) -> bool {
        let Ok(v) = serde_json::from_str::<Value>(text) else {
            return self.done();
        };
        if v.get("op").and_then(Value::as_str) != Some("message") || v.get("topic").is_some() {
            return self.done();
        }
        let Some(offset) = v.get("offset").and_then(Value::as_u64) else {
            self.out.unexpected += 1;
            return self.done();
        };
        // Seen in this session, or before leaving (at or below `since`).
        if offset <= self.since || !self.seen.insert(offset) {
            self.out.duplicates += 1;
            return self.done();
        }
        if offset < self.last {
            self.out.out_of_order += 1;
        }
        self.last = self.last.max(offset);
        match self.expected.get(&offset) {
            Some(&k) => {
                let data = v.get("data");
                let field = |name| data.and_then(|d| d.get(name)).and_then(Value::as_u64);
                if field("u") != Some(self.user as u64) || field("k") != Some(k) {
                    self.out.wrong_payload += 1;
                }
                self.out.delivered += 1;
            }
            None => self.out.unexpected += 1,
        }
        self.done()
    }

    fn done(&self) -> bool {
        self.out.delivered >= self.out.expected
    }
}

/// One client coming back.
struct Rejoin {
    /// Which `--ws` (and source address) to dial.
    pod: usize,
    i: usize,
    user: String,
    since: Position,
    sent: Vec<Sent>,
}

/// Once every client had all its messages, how long the run still listens for repeats.
const DUPLICATE_GRACE: Duration = Duration::from_millis(300);

impl Rejoin {
    /// Reconnects with `since` and reads until every message sent arrived (then says so on
    /// `settled`), then on until `stop` (to see duplicates), or until `deadline`.
    async fn run(
        self,
        d: Arc<Dialer>,
        t0: Instant,
        deadline: Instant,
        stop: CancellationToken,
        settled: mpsc::UnboundedSender<()>,
    ) -> Outcome {
        let Self {
            pod,
            i,
            user,
            since,
            sent,
        } = self;
        let mut settled = Some(settled);
        let mut out = Outcome {
            expected: sent.len() as u64,
            ..Outcome::default()
        };
        let start = Instant::now();
        let since_q = format!("{}:{}", since.epoch, since.offset);
        let dial =
            tokio::time::timeout_at(deadline.into(), d.dial_since(pod, &user, Some(&since_q)));
        let (mut ws, welcome) = match dial.await {
            Ok(Ok((ws, _, welcome))) => (ws, welcome),
            Ok(Err(e)) => {
                return Outcome {
                    error: Some(e),
                    ..out
                };
            }
            Err(_) => {
                return Outcome {
                    error: Some("timeout".to_owned()),
                    ..out
                };
            }
        };
        out.join_us = Some(micros(start.elapsed()));
        match parse_welcome(&welcome) {
            Ok((_, recovered)) => out.recovered = recovered,
            Err(e) => out.error = Some(e),
        }
        let mut check = Check {
            user: i,
            expected: sent.iter().map(|s| (s.offset, s.k)).collect(),
            seen: HashSet::new(),
            since: since.offset,
            last: since.offset,
            out: &mut out,
        };
        let mut complete = check.done();
        let mut error = None;
        if complete {
            check.out.complete_us = Some(micros(t0.elapsed()));
            settled.take().map(|tx| tx.send(()));
        }
        loop {
            let next = tokio::select! {
                biased;
                () = stop.cancelled(), if complete => break,
                () = tokio::time::sleep_until(deadline.into()) => break,
                m = ws.next() => m,
            };
            match next {
                Some(Ok(Message::Text(t))) => {
                    if check.frame(t.as_str()) && !complete {
                        complete = true;
                        check.out.complete_us = Some(micros(t0.elapsed()));
                        settled.take().map(|tx| tx.send(()));
                    }
                }
                Some(Ok(Message::Close(f))) => {
                    error = Some(format!("closed_{}", f.map_or(1005, |f| u16::from(f.code))));
                    break;
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    error = Some(conn::ws_class(&e));
                    break;
                }
                None => {
                    error = Some("eof".to_owned());
                    break;
                }
            }
        }
        if out.error.is_none() {
            out.error = match (complete, error) {
                (false, e) => Some(e.unwrap_or_else(|| "incomplete_at_timeout".to_owned())),
                (true, Some(e)) => Some(format!("after_complete:{e}")),
                (true, None) => None,
            };
        }
        let _ = tokio::time::timeout(Duration::from_millis(500), ws.close(None)).await;
        out
    }
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

fn bump(map: &mut BTreeMap<String, u64>, class: String) {
    *map.entry(class).or_default() += 1;
}

/// Phase 1: connects every client and reads its user stream's position.
async fn join_all(
    c: &Common,
    d: &Arc<Dialer>,
    n: usize,
) -> (
    Vec<Option<(Ws, Position)>>,
    BTreeMap<String, u64>,
    Histogram<u64>,
) {
    let sem = Arc::new(Semaphore::new(c.concurrency.max(1)));
    let start = Instant::now();
    let mut tasks = JoinSet::new();
    for i in 0..n {
        if c.connect_rate > 0.0 {
            let at = start + Duration::from_secs_f64(i as f64 / c.connect_rate);
            tokio::time::sleep_until(at.into()).await;
        }
        let Ok(permit) = sem.clone().acquire_owned().await else {
            break;
        };
        let (d, user) = (d.clone(), format!("{}{i}", c.user_prefix));
        tasks.spawn(async move {
            let t = Instant::now();
            let r = d.dial_since(i, &user, None).await;
            drop(permit);
            let r = r.and_then(|(ws, _, welcome)| Ok((ws, parse_welcome(&welcome)?.0)));
            (i, r, micros(t.elapsed()))
        });
    }
    let mut clients: Vec<Option<(Ws, Position)>> = (0..n).map(|_| None).collect();
    let mut failures = BTreeMap::new();
    let mut hist = new_hist();
    while let Some(r) = tasks.join_next().await {
        match r {
            Ok((i, Ok(client), us)) => {
                stats::record(&mut hist, us);
                clients[i] = Some(client);
            }
            Ok((_, Err(class), _)) => bump(&mut failures, class),
            Err(_) => bump(&mut failures, "client_task".to_owned()),
        }
    }
    (clients, failures, hist)
}

/// Phase 2: every client leaves, with a close handshake or (abrupt) by dropping TCP.
async fn leave_all(sockets: Vec<Ws>, abrupt: bool) -> BTreeMap<String, u64> {
    let mut tasks = JoinSet::new();
    for mut ws in sockets {
        tasks.spawn(async move {
            if abrupt {
                drop(ws);
                return Ok(());
            }
            let closed = tokio::time::timeout(Duration::from_secs(5), async {
                ws.send(Message::Close(None))
                    .await
                    .map_err(|e| conn::ws_class(&e))?;
                // Until the server's close frame and the end of the stream.
                while let Some(Ok(_)) = ws.next().await {}
                Ok(())
            })
            .await;
            closed.unwrap_or_else(|_| Err("close_timeout".to_owned()))
        });
    }
    let mut failures = BTreeMap::new();
    while let Some(r) = tasks.join_next().await {
        match r {
            Ok(Ok(())) => {}
            Ok(Err(class)) => bump(&mut failures, class),
            Err(_) => bump(&mut failures, "client_task".to_owned()),
        }
    }
    failures
}

/// One `SendToUser`: the message's epoch and offset, or a failure class.
async fn send_one(
    mut client: GrpcClient,
    auth: Option<MetadataValue<Ascii>>,
    user_id: String,
    body: String,
) -> Result<(String, u64), String> {
    let mut req = tonic::Request::new(pb::SendToUserRequest {
        user_id,
        payload: Some(pb::Payload {
            body: Some(pb::payload::Body::Json(body)),
        }),
        idempotency_key: String::new(),
    });
    req.set_timeout(Duration::from_secs(10));
    if let Some(a) = auth {
        req.metadata_mut().insert("authorization", a);
    }
    match client.send_to_user(req).await {
        Ok(r) => {
            let r = r.into_inner();
            if r.epoch.is_empty() {
                return Err("no_history".to_owned());
            }
            Ok((r.epoch, r.offset))
        }
        Err(s) => Err(format!("grpc_{:?}", s.code()).to_lowercase()),
    }
}

/// What phase 3 sent.
struct Sends {
    /// Per client: the messages the server took, in the order sent.
    sent: Vec<Vec<Sent>>,
    /// Per client: whether an answer named another epoch than the welcome's.
    epoch_changed: Vec<bool>,
    ok: u64,
    failures: BTreeMap<String, u64>,
    call: Histogram<u64>,
    elapsed: Duration,
}

/// Phase 3: `missed` messages to every user that joined, one after the other per user
/// (so offsets follow the order sent), users side by side up to `--concurrency`.
async fn send_missed(
    c: &Common,
    (clients, auth): (&[GrpcClient], &Option<MetadataValue<Ascii>>),
    positions: &[Option<Position>],
    missed: u64,
) -> Sends {
    let start = Instant::now();
    let sem = Arc::new(Semaphore::new(c.concurrency.max(1)));
    let mut tasks = JoinSet::new();
    for (i, pos) in positions.iter().enumerate() {
        let Some(pos) = pos.clone() else { continue };
        let Ok(permit) = sem.clone().acquire_owned().await else {
            break;
        };
        let client = clients[i % clients.len()].clone();
        let (auth, user) = (auth.clone(), format!("{}{i}", c.user_prefix));
        tasks.spawn(async move {
            let mut sent = Vec::new();
            let mut calls = Vec::new();
            let mut errors = Vec::new();
            let mut epoch_changed = false;
            for k in 1..=missed {
                let body = format!(r#"{{"t":{},"u":{i},"k":{k}}}"#, stats::now_us());
                let t = Instant::now();
                let r = send_one(client.clone(), auth.clone(), user.clone(), body).await;
                calls.push(micros(t.elapsed()));
                match r {
                    Ok((epoch, offset)) => {
                        epoch_changed |= epoch != pos.epoch;
                        sent.push(Sent { offset, k });
                    }
                    Err(class) => errors.push(class),
                }
            }
            drop(permit);
            (i, sent, epoch_changed, calls, errors)
        });
    }
    let mut out = Sends {
        sent: vec![Vec::new(); positions.len()],
        epoch_changed: vec![false; positions.len()],
        ok: 0,
        failures: BTreeMap::new(),
        call: new_hist(),
        elapsed: Duration::ZERO,
    };
    while let Some(r) = tasks.join_next().await {
        let Ok((i, sent, changed, calls, errors)) = r else {
            bump(&mut out.failures, "client_task".to_owned());
            continue;
        };
        for us in calls {
            stats::record(&mut out.call, us);
        }
        for class in errors {
            bump(&mut out.failures, class);
        }
        out.ok += sent.len() as u64;
        out.sent[i] = sent;
        out.epoch_changed[i] = changed;
    }
    out.elapsed = start.elapsed();
    out
}

/// Runs the scenario.
pub(crate) async fn recover(c: Common, plan: Plan) -> anyhow::Result<Value> {
    if c.protocol != Protocol::Wsgate {
        bail!("recover uses wsgate's user-stream history: use --protocol wsgate");
    }
    conn::check_open_files(plan.n)?;
    let d = crate::dialer(&c, None).await?;
    let Publisher::Grpc { clients, auth } = Publisher::new(&c, &d).await? else {
        bail!("recover sends over gRPC: give --grpc http://HOST:PORT");
    };
    let tck = stats::clk_tck();
    let pods = c.ws.len();

    // 1. Join, remembering each user stream's position.
    let (joined, join_failures, first_join) = join_all(&c, &d, plan.n).await;
    let mut positions = Vec::with_capacity(plan.n);
    let mut sockets = Vec::new();
    for client in joined {
        match client {
            Some((ws, pos)) => {
                sockets.push(ws);
                positions.push(Some(pos));
            }
            None => positions.push(None),
        }
    }
    let joined = sockets.len() as u64;
    if joined == 0 {
        bail!("no client could join: {join_failures:?}");
    }

    // 2. Leave. 3. Messages while away.
    let leave_failures = leave_all(sockets, plan.abrupt).await;
    let sends = send_missed(&c, (&clients, &auth), &positions, plan.missed).await;

    // 4. Everyone back at once.
    let before = Snapshot::take(&c.pid, &[]).await;
    let client0 = stats::cpu_ticks(std::process::id());
    let stop = CancellationToken::new();
    let t0 = Instant::now();
    let deadline = t0 + c.timeout;
    let mut tasks = JoinSet::new();
    let (settled_tx, mut settled_rx) = mpsc::unbounded_channel();
    for (i, pos) in positions.iter().enumerate() {
        let Some(since) = pos.clone() else { continue };
        let pod = if plan.same_pod || pods < 2 { i } else { i + 1 };
        let (d, stop, user) = (d.clone(), stop.clone(), format!("{}{i}", c.user_prefix));
        let client = Rejoin {
            pod,
            i,
            user,
            since,
            sent: sends.sent[i].clone(),
        };
        tasks.spawn(client.run(d, t0, deadline, stop, settled_tx.clone()));
    }
    drop(settled_tx);
    // Once every client has all its messages (or has failed), a short grace to see
    // duplicates, then everyone stops; clients still incomplete stop at the deadline.
    while settled_rx.recv().await.is_some() {}
    // CPU of the reconnects and replays only: not the grace, nor the closes that follow.
    let after = Snapshot::take(&c.pid, &[]).await;
    let cpu = after.cpu_seconds_since(&before, tck);
    let client_cpu = crate::client_cpu_since(client0, tck);
    tokio::time::sleep(DUPLICATE_GRACE).await;
    stop.cancel();
    let mut outcomes = Vec::new();
    while let Some(r) = tasks.join_next().await {
        outcomes.push(r.unwrap_or_else(|_| Outcome {
            error: Some("client_task".to_owned()),
            ..Outcome::default()
        }));
    }
    Ok(report(
        &c,
        &plan,
        joined,
        join_failures,
        first_join,
        leave_failures,
        &sends,
        &outcomes,
        (cpu, client_cpu),
        after.detail(&before, tck),
    ))
}

/// The scenario's JSON report.
#[allow(clippy::too_many_arguments)]
fn report(
    c: &Common,
    plan: &Plan,
    joined: u64,
    join_failures: BTreeMap<String, u64>,
    first_join: Histogram<u64>,
    leave_failures: BTreeMap<String, u64>,
    sends: &Sends,
    outcomes: &[Outcome],
    (cpu, client_cpu): (Option<f64>, Option<f64>),
    servers: Value,
) -> Value {
    let mut join = new_hist();
    let mut complete = new_hist();
    let mut failures = BTreeMap::new();
    let (mut rec_true, mut rec_false, mut rec_absent) = (0u64, 0u64, 0u64);
    let (mut clean, mut last_complete_us) = (0u64, 0u64);
    let sum = |f: fn(&Outcome) -> u64| outcomes.iter().map(f).sum::<u64>();
    for o in outcomes {
        if let Some(us) = o.join_us {
            stats::record(&mut join, us);
            match o.recovered {
                Some(true) => rec_true += 1,
                Some(false) => rec_false += 1,
                None => rec_absent += 1,
            }
        }
        if let Some(us) = o.complete_us {
            stats::record(&mut complete, us);
            last_complete_us = last_complete_us.max(us);
            if o.recovered == Some(true)
                && o.duplicates + o.out_of_order + o.wrong_payload + o.unexpected == 0
            {
                clean += 1;
            }
        }
        if let Some(e) = &o.error {
            bump(&mut failures, e.clone());
        }
    }
    let total = outcomes.len() as u64;
    let all = total > 0 && clean == total && total == joined;
    let epoch_changed = sends.epoch_changed.iter().filter(|&&b| b).count();
    let expected = sum(|o| o.expected);
    let delivered = sum(|o| o.delivered);
    crate::merge(
        crate::header(c, "recover"),
        json!({
            "clients": plan.n,
            "missed_per_user": plan.missed,
            "leave": if plan.abrupt { "abrupt" } else { "close" },
            "reconnect_to": if plan.same_pod || c.ws.len() < 2 { "same_pod" } else { "next_pod" },
            "timeout_s": c.timeout.as_secs_f64(),
            "first_join": {
                "ok": joined,
                "failed": join_failures.values().sum::<u64>(),
                "failures": join_failures,
                "join_latency": summary(&first_join),
            },
            "leave_failures": leave_failures,
            "sends": {
                "requested": joined * plan.missed,
                "ok": sends.ok,
                "failures": sends.failures,
                "elapsed_s": sends.elapsed.as_secs_f64(),
                "call_latency": summary(&sends.call),
                "epoch_changed_users": epoch_changed,
            },
            "recovery": {
                "reconnected": join.len(),
                "reconnect_attempts": total,
                "recovered": rec_true,
                "not_recovered": rec_false,
                "recovered_absent": rec_absent,
                "complete": clean,
                "failed": total - clean,
                "failures": failures,
                "all_recovered": all,
                "time_to_all_recovered_ms": all.then(|| last_complete_us as f64 / 1000.0),
                "time_to_last_complete_ms": (!complete.is_empty()).then(|| last_complete_us as f64 / 1000.0),
                "join_latency": summary(&join),
                "complete_latency": summary(&complete),
                "expected_messages": expected,
                "delivered_messages": delivered,
                "missing_messages": expected.saturating_sub(delivered),
                "duplicate_messages": sum(|o| o.duplicates),
                "out_of_order_messages": sum(|o| o.out_of_order),
                "wrong_payload_messages": sum(|o| o.wrong_payload),
                "unexpected_messages": sum(|o| o.unexpected),
            },
            "server_cpu_s": cpu,
            "server_cpu_us_per_rejoin": cpu.filter(|_| !join.is_empty()).map(|s| s * 1e6 / join.len() as f64),
            "client_cpu_s": client_cpu,
            "servers": servers,
        }),
    )
}
