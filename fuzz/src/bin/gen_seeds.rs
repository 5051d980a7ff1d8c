//! Writes the seed corpora: `cargo run --release --bin gen_seeds -- <corpus dir>`
//! (from `fuzz/`; default dir `corpus`). Realistic upgrade requests (with a long-lived
//! HS256 token signed with the harness's secret), client ops, encoded envelopes, and
//! client frames for the permessage-deflate adapter.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use prost::Message;
use wsgate_core::auth::mint_hs256;
use wsgate_core::backend::{Command, Envelope, StreamPosition, Target};
use wsgate_core::ids::SessionId;
use wsgate_core::protocol::Payload;
use wsgate_fuzz::FUZZ_SECRET;
use wsgate_proto::pb;

fn write(dir: &Path, name: &str, bytes: &[u8]) {
    fs::create_dir_all(dir).expect("mkdir");
    fs::write(dir.join(name), bytes).expect("write seed");
}

const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

fn handshakes() -> Vec<(String, String)> {
    let token = mint_hs256(
        FUZZ_SECRET,
        "alice",
        Duration::from_secs(100 * 365 * 24 * 3600),
        Some(&["chat.*".to_owned(), "news".to_owned()]),
        None,
        None,
    )
    .expect("mint");
    let std_headers = format!(
        "Host: gw.example.com\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n"
    );
    let h = |line: &str, extra: &str| format!("{line}\r\n{std_headers}{extra}\r\n");
    vec![
        ("plain".into(), h("GET /ws HTTP/1.1", "")),
        (
            "browser".into(),
            h(
                "GET /ws HTTP/1.1",
                "Origin: https://app.example.com\r\nSec-WebSocket-Protocol: wsgate.v1\r\n\
                 User-Agent: Mozilla/5.0\r\nSec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n",
            ),
        ),
        (
            "bearer".into(),
            h(
                "GET /ws HTTP/1.1",
                &format!("Authorization: Bearer {token}\r\n"),
            ),
        ),
        (
            "query_token".into(),
            h(&format!("GET /ws?access_token={token}&x=1 HTTP/1.1"), ""),
        ),
        (
            "user_none".into(),
            h("GET /ws?user=bob%20smith HTTP/1.1", "Origin: null\r\n"),
        ),
        (
            "xff".into(),
            h(
                "GET /ws?user=u1 HTTP/1.1",
                "X-Forwarded-For: 6.6.6.6, 1.2.3.4, 10.2.2.2\r\nX-Forwarded-For: 2001:db8::1\r\n",
            ),
        ),
        (
            "absolute".into(),
            h("GET http://gw.example.com:8080/ws?user=a HTTP/1.1", ""),
        ),
        (
            "wildcard_origin".into(),
            h(
                "GET /ws HTTP/1.1",
                "Origin: https://a.b.example.org:443\r\n",
            ),
        ),
        (
            "ipv6_host".into(),
            "GET /ws HTTP/1.1\r\nHost: [::1]:8080\r\nUpgrade: h2c, WebSocket\r\n\
             Connection: keep-alive, Upgrade\r\nConnection: close\r\n\
             Sec-WebSocket-Key:  AAAAAAAAAAAAAAAAAAAAAA== \r\nSec-WebSocket-Version: 8\r\n\r\n"
                .into(),
        ),
        ("http10".into(), h("GET /ws HTTP/1.0", "")),
        (
            "post".into(),
            h("POST /ws HTTP/1.1", "Content-Length: 0\r\n"),
        ),
        (
            "h2_connect".into(),
            "CONNECT /ws?user=z HTTP/2\r\n:protocol: websocket\r\nSec-WebSocket-Version: 13\r\n\
             Origin: http://localhost:3000\r\n\r\n"
                .into(),
        ),
        (
            "dup_headers".into(),
            h(
                "GET /ws HTTP/1.1",
                &format!(
                    "Host: evil.com\r\nSec-WebSocket-Key: {KEY}\r\nOrigin: https://app.example.com\r\n\
                     Origin: https://x.example.org\r\nAuthorization: Basic dTpw\r\nAuthorization: bearer \r\n"
                ),
            ),
        ),
        (
            "bad_values".into(),
            "GET /ws?access_token=%FF%fe+x&user=%00 HTTP/1.1\r\nHost: localhost:99999\r\n\
             Origin: HTTPS://APP.EXAMPLE.COM.\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ\r\n\
             Sec-WebSocket-Version: 13, 8\r\nX-Forwarded-For: junk\r\n\r\n"
                .into(),
        ),
    ]
}

fn client_ops() -> Vec<&'static str> {
    vec![
        r#"{"op":"subscribe","topic":"chat.1","id":"x1"}"#,
        r#"{"op":"unsubscribe","topic":"news:eu-west_2","id":7}"#,
        r#"{"op":"ping"}"#,
        r#"{"op":"ping","id":-12.5e3}"#,
        r#"{"op":"ping","id":123456789012345678901234567890}"#,
        r#"{"op":"ping","id":null,"extra":[1,{"a":true}]}"#,
        r#"{"op":"subscribe","topic":"a b","id":"bad"}"#,
        r#"{"op":"subscribe"}"#,
        r#"{"op":"dance","id":"q"}"#,
        r#"{"op":5}"#,
        r#"{"id":{"x":1},"op":"ping"}"#,
        r#"{"op":"subscribe","topic":"\u0063hat","id":"\ud83d\ude00"}"#,
        r#"[{"op":"ping"}]"#,
        "not json",
        "",
    ]
}

fn envelopes() -> Vec<Bytes> {
    let targets = [
        Target::User("alice".into()),
        Target::Session(SessionId::from_string("01JABCDEFGHJKMNPQRSTVWXYZ0")),
        Target::Topic("chat.1".into()),
        Target::Broadcast,
    ];
    let commands = [
        Command::Deliver(Payload::Text("hello".into())),
        Command::Deliver(Payload::json(r#"{"a":[1,2,{"b":null}]}"#).expect("json")),
        Command::Deliver(Payload::Binary(Bytes::from_static(&[0, 255, 1, 2]))),
        Command::Disconnect {
            code: 4001,
            reason: "kicked".into(),
        },
    ];
    let mut out = Vec::new();
    for target in &targets {
        for command in &commands {
            let mut env = Envelope::new("pod-a", target.clone(), command.clone());
            env.trace_context =
                Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into());
            out.push(wsgate_redis::encode(&env));
        }
    }
    let probe = pb::Envelope {
        version: 1,
        id: "probe-1".into(),
        origin: "pod-b".into(),
        target: None,
        command: Some(pb::envelope::Command::Probe(pb::Probe {})),
        ..Default::default()
    };
    out.push(probe.encode_to_vec().into());
    let mut v2 = probe;
    v2.version = 2;
    out.push(v2.encode_to_vec().into());
    // A stream message: its position in the stream_epoch/stream_offset fields.
    let mut streamed = Envelope::new(
        "pod-a",
        Target::Topic("chat.1".into()),
        Command::Deliver(Payload::Text("kept".into())),
    );
    streamed.position = Some(StreamPosition {
        epoch: "0123456789".into(),
        offset: 300,
    });
    out.push(wsgate_redis::encode(&streamed));
    out
}

/// A masked client frame (`first`: FIN, RSV1, opcode).
fn client_frame(first: u8, payload: &[u8]) -> Vec<u8> {
    wsgate_core::deflate::encode_client_frame(first, payload, [0x37, 0xfa, 0x21, 0x3d])
}

/// Inputs of the `inflate` target: a split byte, then client frames, compressed or not.
fn inflate_seeds() -> Vec<Vec<u8>> {
    let op = wsgate_core::deflate::compress(br#"{"op":"subscribe","topic":"news","id":"1"}"#);
    let big = wsgate_core::deflate::compress(&b"{\"k\":\"v\"}".repeat(300));
    let (a, b) = op.split_at(op.len() / 2);
    let with = |split: u8, frames: &[Vec<u8>]| {
        let mut seed = vec![split];
        for f in frames {
            seed.extend_from_slice(f);
        }
        seed
    };
    vec![
        with(3, &[client_frame(0xc1, &op)]),
        with(9, &[client_frame(0x41, a), client_frame(0x89, b"p"), client_frame(0x80, b)]),
        with(20, &[client_frame(0x81, b"plain"), client_frame(0xc2, &big)]),
        with(0, &[client_frame(0x41, a), client_frame(0xc0, b)]),
        with(5, &[client_frame(0xc1, &[0xff, 0xfe, 0x00])]),
    ]
}

fn main() {
    let root = PathBuf::from(std::env::args().nth(1).unwrap_or_else(|| "corpus".into()));
    for (name, text) in handshakes() {
        write(&root.join("handshake_http"), &name, text.as_bytes());
        // The lenient format of `preflight` reads the same text (LF works too).
        write(&root.join("preflight"), &name, text.as_bytes());
    }
    for (i, op) in client_ops().into_iter().enumerate() {
        write(
            &root.join("client_protocol"),
            &format!("op{i:02}"),
            op.as_bytes(),
        );
    }
    for (i, env) in envelopes().into_iter().enumerate() {
        write(&root.join("envelope"), &format!("env{i:02}"), &env);
    }
    for (i, seed) in inflate_seeds().into_iter().enumerate() {
        write(&root.join("inflate"), &format!("frames{i:02}"), &seed);
    }
    println!("seeds written under {}", root.display());
}
