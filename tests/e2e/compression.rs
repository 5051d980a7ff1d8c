//! permessage-deflate end to end: clients that negotiate it get large pushes compressed
//! (RSV1 on the wire, read here frame by frame from the raw socket), deflated once for
//! all of them, while a client that did not gets the same push plain; compressed client
//! messages are inflated, and one that inflates past the message limit closes with 1009.

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use wsgate_core::deflate::{RESPONSE, compress, decompress, encode_client_frame};
use wsgate_tests::hostile::{Metrics, scrape};
use wsgate_tests::*;

const OFFER: &str = "permessage-deflate; client_max_window_bits";

/// A client on a raw socket that read the handshake's response head (and nothing more).
struct RawClient {
    stream: TcpStream,
    extensions: Option<String>,
}

/// One server frame: FIN and RSV1 bits, opcode, payload.
#[derive(Debug)]
struct RawFrame {
    rsv1: bool,
    opcode: u8,
    payload: Vec<u8>,
}

impl RawClient {
    async fn connect(gw: &Gateway, user: &str, extensions: Option<&str>) -> Self {
        let mut stream = TcpStream::connect(gw.http).await.unwrap();
        let extra = extensions
            .map(|e| format!("Sec-WebSocket-Extensions: {e}\r\n"))
            .unwrap_or_default();
        let request = upgrade_request(&format!("/ws?user={user}"), &extra);
        stream.write_all(&request).await.unwrap();
        // Byte by byte, so no frame after the head is taken with it.
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            head.push(stream.read_u8().await.unwrap());
        }
        let head = String::from_utf8(head).unwrap();
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        let extensions = head
            .lines()
            .filter_map(|l| l.split_once(':'))
            .find(|(k, _)| k.eq_ignore_ascii_case("sec-websocket-extensions"))
            .map(|(_, v)| v.trim().to_owned());
        Self { stream, extensions }
    }

    async fn frame(&mut self) -> RawFrame {
        tokio::time::timeout(WAIT, async {
            let mut h = [0u8; 2];
            self.stream.read_exact(&mut h).await.unwrap();
            assert_eq!(h[1] & 0x80, 0, "server frames are unmasked");
            let len = match h[1] & 0x7f {
                126 => u64::from(self.stream.read_u16().await.unwrap()),
                127 => self.stream.read_u64().await.unwrap(),
                n => u64::from(n),
            };
            let mut payload = vec![0; len as usize];
            self.stream.read_exact(&mut payload).await.unwrap();
            assert!(h[0] & 0x80 != 0, "the server does not fragment");
            RawFrame {
                rsv1: h[0] & 0x40 != 0,
                opcode: h[0] & 0x0f,
                payload,
            }
        })
        .await
        .expect("no frame within the wait")
    }

    /// The next data or close frame (pings skipped).
    async fn data(&mut self) -> RawFrame {
        loop {
            let f = self.frame().await;
            if f.opcode != 0x9 && f.opcode != 0xa {
                return f;
            }
        }
    }

    /// Sends a masked client frame.
    async fn send(&mut self, first: u8, payload: &[u8]) {
        let out = encode_client_frame(first, payload, [0x12, 0x34, 0x56, 0x78]);
        self.stream.write_all(&out).await.unwrap();
    }

    /// The next data frame's JSON, inflated when it came compressed.
    async fn json(&mut self) -> (bool, serde_json::Value) {
        let f = self.data().await;
        assert_eq!(f.opcode, 0x1, "{f:?}");
        let text = if f.rsv1 {
            decompress(&f.payload, 1 << 20).unwrap()
        } else {
            f.payload
        };
        (f.rsv1, serde_json::from_slice(&text).unwrap())
    }
}

async fn metrics(gw: &Gateway) -> Metrics {
    scrape(gw.ops()).await
}

fn metric(m: &Metrics, name: &str) -> f64 {
    m.sum(name)
}

fn settings(compression: bool) -> wsgate_server::settings::Settings {
    let mut s = base_settings();
    s.session.compression = compression;
    s.session.max_message_bytes = 16 * 1024;
    s.session.max_frame_bytes = 16 * 1024;
    s
}

#[tokio::test]
async fn a_push_is_deflated_once_for_every_session_that_negotiated() {
    let gw = Gateway::start(settings(true)).await;
    let mut compressed = Vec::new();
    for _ in 0..3 {
        let mut c = RawClient::connect(&gw, "alice", Some(OFFER)).await;
        assert_eq!(c.extensions.as_deref(), Some(RESPONSE));
        let (rsv1, welcome) = c.json().await;
        assert_eq!(welcome["op"], "welcome");
        assert!(!rsv1, "a small frame goes plain");
        compressed.push(c);
    }
    // A client that offers nothing, and one whose only offer is declined.
    let (mut plain, _) = gw.connect_user("alice").await;
    let mut declined = RawClient::connect(
        &gw,
        "alice",
        Some("permessage-deflate; server_max_window_bits=9"),
    )
    .await;
    assert_eq!(declined.extensions, None);
    declined.json().await;

    let before = metrics(&gw).await;
    let data = format!(
        r#"{{"items":[{}]}}"#,
        (0..40)
            .map(|i| format!(r#"{{"id":{i},"name":"item {i}","tags":["a","b"],"ok":true}}"#))
            .collect::<Vec<_>>()
            .join(",")
    );
    let payload = serde_json::json!({ "op": "push", "data": data }).to_string();
    let mut grpc = gw.grpc().await;
    grpc.send_to_user("alice", text(&data)).await.unwrap();

    let mut wire = Vec::new();
    for c in &mut compressed {
        let f = c.data().await;
        assert!(f.rsv1, "a negotiated session gets it compressed");
        assert!(
            f.payload.len() < payload.len() / 3,
            "{} bytes",
            f.payload.len()
        );
        let pushed: serde_json::Value =
            serde_json::from_slice(&decompress(&f.payload, 1 << 20).unwrap()).unwrap();
        assert_eq!(pushed["data"], data.as_str());
        wire.push(f.payload);
    }
    assert!(
        wire.iter().all(|w| *w == wire[0]),
        "the same compressed bytes"
    );
    let (rsv1, pushed) = declined.json().await;
    assert!(!rsv1);
    assert_eq!(pushed["data"], data.as_str());
    match next_data(&mut plain).await {
        Message::Text(t) => {
            let v: serde_json::Value = serde_json::from_str(t.as_str()).unwrap();
            assert_eq!(v["data"], data.as_str());
        }
        other => panic!("{other:?}"),
    }

    let after = metrics(&gw).await;
    let delta = |name: &str| metric(&after, name) - metric(&before, name);
    assert_eq!(delta("wsgate_deflate_runs_total"), 1.0, "deflated once");
    assert_eq!(delta("wsgate_deflated_frames_sent_total"), 3.0);
    assert!(delta("wsgate_deflate_saved_bytes_total") > 3.0 * (payload.len() as f64) / 2.0);
    assert_eq!(metric(&after, "wsgate_compression_negotiated_total"), 3.0);
}

#[tokio::test]
async fn compressed_client_messages_are_inflated_and_bounded() {
    let gw = Gateway::start(settings(true)).await;
    let mut c = RawClient::connect(&gw, "bob", Some(OFFER)).await;
    c.json().await;
    // A subscribe op, compressed and fragmented, with a ping between the fragments.
    let op = compress(br#"{"op":"subscribe","topic":"news","id":"s1"}"#);
    let (a, b) = op.split_at(op.len() / 2);
    c.send(0x41, a).await;
    c.send(0x89, b"hi").await;
    c.send(0x80, b).await;
    let pong = c.frame().await;
    assert_eq!((pong.opcode, pong.payload.as_slice()), (0xa, &b"hi"[..]));
    let (_, reply) = c.json().await;
    assert_eq!(reply["op"], "subscribed", "{reply}");
    assert_eq!(reply["id"], "s1");

    // 1 MiB of spaces deflates to about a kilobyte: inflating it passes the 16 KiB limit.
    let bomb = compress(&vec![b' '; 1 << 20]);
    assert!(bomb.len() < 16 * 1024);
    c.send(0xc1, &bomb).await;
    let close = c.data().await;
    assert_eq!(close.opcode, 0x8);
    assert_eq!(
        u16::from_be_bytes([close.payload[0], close.payload[1]]),
        1009
    );
}

#[tokio::test]
async fn compression_is_off_by_default() {
    let gw = Gateway::start(settings(false)).await;
    let mut c = RawClient::connect(&gw, "carol", Some(OFFER)).await;
    assert_eq!(c.extensions, None);
    c.json().await;
    // Without the extension an RSV1 frame is a protocol error, as before.
    c.send(0xc1, &compress(b"{}")).await;
    let close = c.data().await;
    assert_eq!(close.opcode, 0x8);
    assert_eq!(
        u16::from_be_bytes([close.payload[0], close.payload[1]]),
        1002
    );
}
