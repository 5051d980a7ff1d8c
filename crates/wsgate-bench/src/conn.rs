//! Client connections: dialing from spread loopback source addresses, the opening of each
//! protocol (wsgate's welcome, Socket.IO's namespace connect), topic subscription, and the
//! reader task that records the latency of every delivery.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use parking_lot::Mutex;
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::{HeaderValue, Response};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{WebSocketStream, client_async_with_config};
use tokio_util::sync::CancellationToken;
use wsgate_core::deflate::{Deframer, InflateStream};

use crate::stats::{self, new_hist, now_us};

/// A client WebSocket over plain TCP (inflating compressed messages when
/// permessage-deflate was negotiated).
pub type Ws = WebSocketStream<InflateStream<TcpStream>>;

/// What `--compression` offers: what browsers send.
const DEFLATE_OFFER: &str = "permessage-deflate; client_max_window_bits";

/// What the server at `--ws` speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Protocol {
    /// wsgate.v1: welcome frame, subscribe ops, pushes with `data`.
    Wsgate,
    /// Any plain WebSocket server (e.g. an echo server): nothing after the upgrade.
    Plain,
    /// Socket.IO 4 over the WebSocket transport (Engine.IO v4).
    Socketio,
    /// wsgate-limit-probe: every connection receives every published frame.
    Probe,
}

/// One `--ws` endpoint.
#[derive(Clone, Debug)]
struct Target {
    url: String,
    addr: SocketAddr,
    loopback: bool,
}

/// How many refusal bodies a run keeps to show.
const REFUSAL_BODIES_KEPT: usize = 5;

/// A refusal body is cut to this many bytes: wsgate's are small JSON, another server's may
/// be a whole page.
const REFUSAL_BODY_LIMIT: usize = 300;

/// Handshakes the server answered with an HTTP status instead of the 101, so that a run
/// can say why (429 `rate_limited` or 429 `too_many_sessions`, 503 `at_capacity`, …)
/// rather than only `http_429`.
#[derive(Debug, Default)]
pub struct Refusals {
    /// `"429 rate_limited"` (status, then the `error` of a JSON body, if any) → count.
    pub counts: BTreeMap<String, u64>,
    /// The first few refusals as they came: status and body.
    pub first: Vec<(u16, String)>,
}

impl Refusals {
    fn record(&mut self, response: &Response<Option<Vec<u8>>>) {
        let status = response.status().as_u16();
        let body = response.body().as_deref().unwrap_or_default();
        let code = serde_json::from_slice::<serde_json::Value>(body)
            .ok()
            .and_then(|v| v.get("error")?.as_str().map(str::to_owned));
        let key = match code {
            Some(code) => format!("{status} {code}"),
            None => status.to_string(),
        };
        *self.counts.entry(key).or_default() += 1;
        if self.first.len() < REFUSAL_BODIES_KEPT {
            let shown = &body[..body.len().min(REFUSAL_BODY_LIMIT)];
            self.first
                .push((status, String::from_utf8_lossy(shown).into_owned()));
        }
    }
}

/// Opens connections spread over the endpoints and the source addresses.
pub struct Dialer {
    targets: Vec<Target>,
    sources: u8,
    /// The protocol spoken.
    pub protocol: Protocol,
    token_secret: Option<String>,
    token_topics: Option<Vec<String>>,
    timeout: Duration,
    config: WebSocketConfig,
    /// Offer permessage-deflate (`--compression`).
    compression: bool,
    /// Every refused handshake of this dialer so far.
    refusals: Mutex<Refusals>,
}

impl Dialer {
    /// Resolves every `--ws` URL.
    pub async fn new(
        urls: &[String],
        sources: u8,
        protocol: Protocol,
        token_secret: Option<String>,
        token_topics: Option<Vec<String>>,
        timeout: Duration,
    ) -> anyhow::Result<Self> {
        if urls.is_empty() {
            bail!("give at least one --ws URL");
        }
        let mut targets = Vec::new();
        for url in urls {
            let uri: http::Uri = url.parse().with_context(|| format!("bad --ws URL {url}"))?;
            match uri.scheme_str() {
                Some("ws") => {}
                Some("wss") => bail!("{url}: wss:// is not supported by the load generator"),
                _ => bail!("{url}: a --ws URL starts with ws://"),
            }
            let host = uri.host().context("--ws URL without a host")?;
            let host = host.trim_start_matches('[').trim_end_matches(']');
            let port = uri.port_u16().unwrap_or(80);
            let addr = tokio::net::lookup_host((host, port))
                .await
                .with_context(|| format!("cannot resolve {host}"))?
                .next()
                .with_context(|| format!("{host} resolves to nothing"))?;
            targets.push(Target {
                url: url.clone(),
                addr,
                loopback: addr.ip().is_loopback() && addr.is_ipv4(),
            });
        }
        let config = WebSocketConfig::default()
            .read_buffer_size(4096)
            .write_buffer_size(0)
            .max_message_size(Some(16 << 20));
        Ok(Self {
            targets,
            sources,
            protocol,
            token_secret,
            token_topics,
            timeout,
            config,
            compression: false,
            refusals: Mutex::new(Refusals::default()),
        })
    }

    /// Offers permessage-deflate in every handshake (wsgate's `session.compression`).
    pub fn with_compression(mut self, on: bool) -> Self {
        self.compression = on;
        self
    }

    fn url(&self, i: usize, user: &str, since: Option<&str>) -> anyhow::Result<String> {
        let base = &self.targets[i % self.targets.len()].url;
        let sep = if base.contains('?') { '&' } else { '?' };
        let url = match self.protocol {
            Protocol::Wsgate | Protocol::Plain => match &self.token_secret {
                Some(secret) => {
                    let token = wsgate_core::auth::mint_hs256(
                        secret.as_bytes(),
                        user,
                        Duration::from_secs(6 * 3600),
                        self.token_topics.as_deref(),
                        None,
                        None,
                    )
                    .context("cannot mint a token")?;
                    format!("{base}{sep}access_token={token}")
                }
                None => format!("{base}{sep}user={user}"),
            },
            Protocol::Socketio => format!("{base}{sep}EIO=4&transport=websocket"),
            Protocol::Probe => base.clone(),
        };
        Ok(match since {
            Some(since) => format!(
                "{url}{}since={}",
                if url.contains('?') { '&' } else { '?' },
                query_escape(since)
            ),
            None => url,
        })
    }

    /// Dials connection number `i` as `user`; returns the socket and the handshake time
    /// (TCP connect to the 101), or a failure class (`http_429`, `timeout`, `io:…`).
    pub async fn dial(&self, i: usize, user: &str) -> Result<(Ws, Duration), String> {
        self.dial_since(i, user, None)
            .await
            .map(|(ws, handshake, _)| (ws, handshake))
    }

    /// Like [`Dialer::dial`], with `?since=` (wsgate's user-stream recovery, `epoch:offset`)
    /// when given; also returns wsgate's welcome frame (empty for the other protocols).
    pub async fn dial_since(
        &self,
        i: usize,
        user: &str,
        since: Option<&str>,
    ) -> Result<(Ws, Duration, String), String> {
        let url = self
            .url(i, user, since)
            .map_err(|e| format!("client:{e}"))?;
        let target = &self.targets[i % self.targets.len()];
        let start = Instant::now();
        let fut = async {
            let sock = if target.addr.is_ipv4() {
                TcpSocket::new_v4()
            } else {
                TcpSocket::new_v6()
            }
            .map_err(|e| io_class(&e))?;
            if target.loopback && self.sources > 0 {
                let n = u8::try_from(i % usize::from(self.sources)).unwrap_or(0);
                let src = Ipv4Addr::new(127, 0, 0, 2u8.saturating_add(n));
                sock.bind(SocketAddr::new(IpAddr::V4(src), 0))
                    .map_err(|e| io_class(&e))?;
            }
            let stream = sock.connect(target.addr).await.map_err(|e| io_class(&e))?;
            let _ = stream.set_nodelay(true);
            let mut req = url
                .as_str()
                .into_client_request()
                .map_err(|e| ws_class(&e))?;
            if self.protocol == Protocol::Wsgate {
                req.headers_mut().insert(
                    "sec-websocket-protocol",
                    HeaderValue::from_static("wsgate.v1"),
                );
            }
            if self.compression {
                req.headers_mut().insert(
                    "sec-websocket-extensions",
                    HeaderValue::from_static(DEFLATE_OFFER),
                );
            }
            let stream = InflateStream::new(stream, None);
            let (mut ws, response) = client_async_with_config(req, stream, Some(self.config))
                .await
                .map_err(|e| {
                    if let WsError::Http(response) = &e {
                        self.refusals.lock().record(response);
                    }
                    ws_class(&e)
                })?;
            // The first compressed frame comes later than the welcome (which is small and
            // plain), so nothing read with the response head needs inflating.
            if response.headers().contains_key("sec-websocket-extensions") {
                let limit = 16 << 20;
                ws.get_mut()
                    .set_deframer(Some(Deframer::client(limit, limit)));
            }
            let handshake = start.elapsed();
            let mut welcome = String::new();
            match self.protocol {
                Protocol::Wsgate => {
                    welcome = next_text(&mut ws).await?;
                    if !welcome.contains("\"welcome\"") {
                        return Err("no_welcome".to_owned());
                    }
                }
                Protocol::Socketio => {
                    let t = next_text(&mut ws).await?;
                    if !t.starts_with('0') {
                        return Err("eio_no_open".to_owned());
                    }
                    ws.send(Message::text("40"))
                        .await
                        .map_err(|e| ws_class(&e))?;
                    loop {
                        let t = next_text(&mut ws).await?;
                        if t.starts_with("40") {
                            break;
                        }
                        if t.starts_with("44") {
                            return Err("sio_connect_error".to_owned());
                        }
                    }
                }
                Protocol::Plain | Protocol::Probe => {}
            }
            Ok((ws, handshake, welcome))
        };
        match tokio::time::timeout(self.timeout, fut).await {
            Ok(r) => r,
            Err(_) => Err("timeout".to_owned()),
        }
    }

    /// Subscribes an open connection to `topic` and waits for the confirmation.
    pub async fn subscribe(&self, ws: &mut Ws, topic: &str) -> Result<(), String> {
        let fut = async {
            match self.protocol {
                Protocol::Wsgate => {
                    let op = serde_json::json!({"op": "subscribe", "topic": topic, "id": 1});
                    ws.send(Message::text(op.to_string()))
                        .await
                        .map_err(|e| ws_class(&e))?;
                    loop {
                        let t = next_text(ws).await?;
                        if t.contains("\"subscribed\"") {
                            return Ok(());
                        }
                        if t.contains("\"error\"") {
                            return Err("subscribe_refused".to_owned());
                        }
                    }
                }
                Protocol::Socketio => {
                    let frame = format!("420[\"join\",{}]", serde_json::json!(topic));
                    ws.send(Message::text(frame))
                        .await
                        .map_err(|e| ws_class(&e))?;
                    loop {
                        let t = next_text(ws).await?;
                        if t.starts_with("430") {
                            return Ok(());
                        }
                        if t == "2" {
                            ws.send(Message::text("3"))
                                .await
                                .map_err(|e| ws_class(&e))?;
                        }
                    }
                }
                Protocol::Plain | Protocol::Probe => Ok(()),
            }
        };
        match tokio::time::timeout(self.timeout, fut).await {
            Ok(r) => r,
            Err(_) => Err("subscribe_timeout".to_owned()),
        }
    }
}

/// `value` percent-encoded for a query string (all but unreserved characters and `:`).
fn query_escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~:".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn io_class(e: &std::io::Error) -> String {
    if e.raw_os_error() == Some(24) {
        return "io:too_many_open_files".to_owned();
    }
    format!("io:{:?}", e.kind())
}

/// A failure class for a WebSocket error: the HTTP status of a refused handshake, or the
/// kind of error.
pub fn ws_class(e: &WsError) -> String {
    match e {
        WsError::Http(resp) => format!("http_{}", resp.status().as_u16()),
        WsError::Io(io) => io_class(io),
        WsError::ConnectionClosed | WsError::AlreadyClosed => "closed".to_owned(),
        WsError::Protocol(_) => "protocol".to_owned(),
        WsError::Url(_) => "bad_url".to_owned(),
        WsError::Capacity(_) => "capacity".to_owned(),
        _ => "ws_error".to_owned(),
    }
}

/// The next text frame, skipping pings, pongs and binary frames.
pub async fn next_text(ws: &mut Ws) -> Result<String, String> {
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) => return Ok(t.as_str().to_owned()),
            Some(Ok(Message::Close(f))) => {
                return Err(format!("closed_{}", f.map_or(1005, |f| u16::from(f.code))));
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(ws_class(&e)),
            None => return Err("closed".to_owned()),
        }
    }
}

/// The `"t":<µs>` timestamp embedded in a payload.
pub fn extract_t(s: &[u8]) -> Option<u64> {
    let pat = b"\"t\":";
    let pos = s.windows(pat.len()).position(|w| w == pat)? + pat.len();
    let mut v: u64 = 0;
    let mut any = false;
    for &b in &s[pos..] {
        if b.is_ascii_digit() {
            v = v.checked_mul(10)?.checked_add(u64::from(b - b'0'))?;
            any = true;
        } else {
            break;
        }
    }
    any.then_some(v)
}

/// What every reader task reports into.
pub struct Sink {
    /// Delivery latency, µs (payload timestamp to receipt).
    pub hist: Mutex<Histogram<u64>>,
    /// Deliveries that carried a timestamp.
    pub delivered: AtomicU64,
    /// Connections that ended before the run stopped them.
    pub dropped: AtomicU64,
    /// Close codes (or error classes) of those.
    pub drop_reasons: Mutex<BTreeMap<String, u64>>,
    /// Time of the last delivery, µs since the epoch.
    pub last_us: AtomicU64,
}

impl Sink {
    /// An empty sink.
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            hist: Mutex::new(new_hist()),
            delivered: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            drop_reasons: Mutex::new(BTreeMap::new()),
            last_us: AtomicU64::new(0),
        })
    }

    fn on_payload(&self, bytes: &[u8]) {
        if let Some(t) = extract_t(bytes) {
            let now = now_us();
            stats::record(&mut self.hist.lock(), now.saturating_sub(t));
            self.delivered.fetch_add(1, Ordering::Relaxed);
            self.last_us.fetch_max(now, Ordering::Relaxed);
        }
    }

    fn on_drop(&self, reason: String) {
        self.dropped.fetch_add(1, Ordering::Relaxed);
        *self.drop_reasons.lock().entry(reason).or_default() += 1;
    }

    /// Deliveries so far.
    pub fn delivered(&self) -> u64 {
        self.delivered.load(Ordering::Relaxed)
    }
}

/// Reads `ws` until `stop`, recording every delivery; answers Engine.IO pings.
async fn read_loop(mut ws: Ws, protocol: Protocol, sink: Arc<Sink>, stop: CancellationToken) {
    loop {
        tokio::select! {
            biased;
            () = stop.cancelled() => break,
            m = ws.next() => match m {
                Some(Ok(Message::Text(t))) => {
                    if protocol == Protocol::Socketio && t.as_str() == "2" {
                        if ws.send(Message::text("3")).await.is_err() {
                            sink.on_drop("pong_failed".to_owned());
                            return;
                        }
                        continue;
                    }
                    sink.on_payload(t.as_bytes());
                }
                Some(Ok(Message::Binary(b))) => sink.on_payload(&b),
                Some(Ok(Message::Close(f))) => {
                    sink.on_drop(format!("closed_{}", f.map_or(1005, |f| u16::from(f.code))));
                    return;
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => { sink.on_drop(ws_class(&e)); return; }
                None => { sink.on_drop("eof".to_owned()); return; }
            }
        }
    }
    // Stopped by the run: a prompt close, bounded so that a dead peer cannot hold us.
    let _ = tokio::time::timeout(Duration::from_millis(500), ws.close(None)).await;
}

/// Outcome of opening many connections.
pub struct Opened {
    /// Connections open (and subscribed, when asked).
    pub ok: u64,
    /// Failures by class.
    pub failures: BTreeMap<String, u64>,
    /// Handshake time (TCP connect to 101), µs.
    pub handshake: Histogram<u64>,
    /// The refused handshakes among the failures, with their status, code and body.
    pub refusals: Refusals,
    /// From the first dial to the last outcome.
    pub elapsed: Duration,
    /// The reader tasks, which run until `stop`.
    pub readers: Vec<JoinHandle<()>>,
}

/// How connections are opened.
pub struct OpenPlan {
    /// How many.
    pub n: usize,
    /// Target handshakes per second (0 = as fast as `concurrency` allows).
    pub rate: f64,
    /// Handshakes in flight at most.
    pub concurrency: usize,
    /// User id of connection `i` is `{user_prefix}{i}`.
    pub user_prefix: String,
    /// Subscribe each connection to this topic after it opened.
    pub topic: Option<String>,
}

/// Opens `plan.n` connections, each followed by a reader task feeding `sink`.
pub async fn open_many(
    dialer: Arc<Dialer>,
    plan: &OpenPlan,
    sink: Arc<Sink>,
    stop: CancellationToken,
    progress: &indicatif::ProgressBar,
) -> Opened {
    let (tx, mut rx) = mpsc::unbounded_channel::<Result<u64, String>>();
    let sem = Arc::new(Semaphore::new(plan.concurrency.max(1)));
    let start = Instant::now();
    let mut readers = Vec::with_capacity(plan.n);
    let mut handshake = new_hist();
    let mut failures: BTreeMap<String, u64> = BTreeMap::new();
    let mut ok = 0u64;
    let mut outcomes = 0usize;
    let mut record = |r: Result<u64, String>, ok: &mut u64| {
        match r {
            Ok(us) => {
                stats::record(&mut handshake, us);
                *ok += 1;
            }
            Err(class) => *failures.entry(class).or_default() += 1,
        }
        progress.inc(1);
    };
    for i in 0..plan.n {
        if plan.rate > 0.0 {
            let at = start + Duration::from_secs_f64(i as f64 / plan.rate);
            tokio::time::sleep_until(at.into()).await;
        }
        let Ok(permit) = sem.clone().acquire_owned().await else {
            break;
        };
        while let Ok(r) = rx.try_recv() {
            record(r, &mut ok);
            outcomes += 1;
        }
        let (dialer, sink, stop, tx) = (dialer.clone(), sink.clone(), stop.clone(), tx.clone());
        let user = format!("{}{i}", plan.user_prefix);
        let topic = plan.topic.clone();
        readers.push(tokio::spawn(async move {
            let ws = match dialer.dial(i, &user).await {
                Ok((mut ws, hs)) => {
                    if let Some(topic) = &topic
                        && let Err(e) = dialer.subscribe(&mut ws, topic).await
                    {
                        drop(permit);
                        let _ = tx.send(Err(e));
                        return;
                    }
                    let _ = tx.send(Ok(micros(hs)));
                    ws
                }
                Err(e) => {
                    drop(permit);
                    let _ = tx.send(Err(e));
                    return;
                }
            };
            drop(permit);
            read_loop(ws, dialer.protocol, sink, stop).await;
        }));
    }
    drop(tx);
    while outcomes < plan.n {
        match rx.recv().await {
            Some(r) => {
                record(r, &mut ok);
                outcomes += 1;
            }
            None => break,
        }
    }
    Opened {
        ok,
        failures,
        handshake,
        refusals: std::mem::take(&mut *dialer.refusals.lock()),
        elapsed: start.elapsed(),
        readers,
    }
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// Stops every reader and waits (bounded) for them to close their sockets.
pub async fn close_all(stop: &CancellationToken, readers: Vec<JoinHandle<()>>) {
    stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(10), async {
        for r in readers {
            let _ = r.await;
        }
    })
    .await;
}

/// Refuses a run that cannot fit in this process's open-file limit, saying what to do.
pub fn check_open_files(connections: usize) -> anyhow::Result<()> {
    let need = connections as u64 + 64;
    if let Some(limit) = stats::open_files_limit()
        && need > limit
    {
        bail!(
            "{connections} connections need about {need} open files, but this process may hold \
             {limit} (ulimit -n). Run several wsgate-bench processes side by side, each with \
             a share of the connections (e.g. 2 × {} with --user-prefix a/b), or raise the limit",
            connections.div_ceil(2)
        );
    }
    Ok(())
}
