//! `wsgate-limit-probe`: the naive floor of server cost for fan-out benchmarks.
//!
//! A bare WebSocket server with no gateway logic: no auth, no registry, no heartbeat, no
//! queues. Every text frame a client sends is encoded once as a server frame and written to
//! every other open connection, one `write` per delivery, in one task. What a real gateway
//! costs per delivery beyond this is the price of its logic (or the gain of batching).
//!
//! `wsgate-limit-probe --listen 127.0.0.1:9300` (the bench connects to `ws://…/` with
//! `--protocol probe`).

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use clap::Parser;
use futures_util::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;

#[derive(Parser)]
#[command(
    name = "wsgate-limit-probe",
    version,
    about = "Bare fan-out server: one write per delivery"
)]
struct Cli {
    /// Listen address.
    #[arg(long, default_value = "127.0.0.1:9300")]
    listen: SocketAddr,
}

enum Event {
    Joined(u64, OwnedWriteHalf),
    Left(u64),
    Publish(u64, Bytes),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("wsgate-limit-probe: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match rt.block_on(serve(cli.listen)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("wsgate-limit-probe: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn serve(listen: SocketAddr) -> std::io::Result<()> {
    let listener = TcpListener::bind(listen).await?;
    eprintln!("wsgate-limit-probe listening on {}", listener.local_addr()?);
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(dispatch(rx));
    let mut next_id = 0u64;
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                eprintln!("accept: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        next_id += 1;
        let (id, tx) = (next_id, tx.clone());
        tokio::spawn(async move {
            let _ = connection(id, stream, tx).await;
        });
    }
}

/// One task owns every write half: a published frame is encoded once and written to each
/// socket with one `write_all`, in turn.
async fn dispatch(mut rx: mpsc::UnboundedReceiver<Event>) {
    let mut socks: Vec<(u64, OwnedWriteHalf)> = Vec::new();
    while let Some(ev) = rx.recv().await {
        match ev {
            Event::Joined(id, w) => socks.push((id, w)),
            Event::Left(id) => socks.retain(|(i, _)| *i != id),
            Event::Publish(from, payload) => {
                let frame = encode_text(&payload);
                let mut dead = Vec::new();
                for (id, w) in &mut socks {
                    if *id != from && w.write_all(&frame).await.is_err() {
                        dead.push(*id);
                    }
                }
                socks.retain(|(i, _)| !dead.contains(i));
            }
        }
    }
}

/// An unmasked server text frame.
fn encode_text(payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(payload.len() + 10);
    f.push(0x81);
    match payload.len() {
        n if n < 126 => f.push(n as u8),
        n if n <= 0xFFFF => {
            f.push(126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            f.push(127);
            f.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    f.extend_from_slice(payload);
    f
}

async fn connection(
    id: u64,
    mut stream: TcpStream,
    tx: mpsc::UnboundedSender<Event>,
) -> std::io::Result<()> {
    let _ = stream.set_nodelay(true);
    // The request head, by hand: only the key matters.
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    let head_end = loop {
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p + 4;
        }
        if buf.len() > 16 * 1024 {
            return Ok(());
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let Some(key) = head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim()
            .eq_ignore_ascii_case("sec-websocket-key")
            .then(|| v.trim().to_owned())
    }) else {
        stream
            .write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
            .await?;
        return Ok(());
    };
    let resp = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n\r\n",
        derive_accept_key(key.as_bytes())
    );
    stream.write_all(resp.as_bytes()).await?;
    let (read, write) = stream.into_split();
    let _ = tx.send(Event::Joined(id, write));
    // Frames from the client: each text frame is a publish. The reader never writes
    // (close replies are not needed by the load generator).
    let mut ws = WebSocketStream::from_raw_socket(ReadOnly(read), Role::Server, None).await;
    while let Some(msg) = ws.next().await {
        match msg {
            Ok(Message::Text(t)) => {
                let _ = tx.send(Event::Publish(id, Bytes::copy_from_slice(t.as_bytes())));
            }
            Ok(Message::Close(_)) | Err(_) => break,
            Ok(_) => {}
        }
    }
    let _ = tx.send(Event::Left(id));
    Ok(())
}

/// The read half as a stream that swallows writes (pongs, close replies).
struct ReadOnly(tokio::net::tcp::OwnedReadHalf);

impl tokio::io::AsyncRead for ReadOnly {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for ReadOnly {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::task::Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}
