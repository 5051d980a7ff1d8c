use std::io::{Cursor, Read, Write};

use tungstenite::protocol::Role;
use tungstenite::{Message, WebSocket};

use super::*;
use crate::deflate::compress;

const KEY: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

/// A client frame: `first` (FIN, RSV1, opcode) and `payload`, masked with [`KEY`].
fn frame(first: u8, payload: &[u8]) -> Vec<u8> {
    encode_client_frame(first, payload, KEY)
}

fn run(d: &mut Deframer, input: &[u8]) -> Result<Vec<u8>, InflateError> {
    let mut out = Vec::new();
    d.process(input, &mut out)?;
    Ok(out)
}

/// What tungstenite (as the server) reads from `bytes`, until it runs out or fails.
fn tungstenite_reads(bytes: Vec<u8>) -> Vec<Result<Message, String>> {
    struct Pipe(Cursor<Vec<u8>>);
    impl Read for Pipe {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            self.0.read(buf)
        }
    }
    impl Write for Pipe {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut ws = WebSocket::from_raw_socket(Pipe(Cursor::new(bytes)), Role::Server, None);
    let mut seen = Vec::new();
    loop {
        match ws.read() {
            Ok(m) => seen.push(Ok(m)),
            Err(e) => {
                if !matches!(
                    e,
                    tungstenite::Error::Protocol(
                        tungstenite::error::ProtocolError::ResetWithoutClosingHandshake
                    )
                ) {
                    seen.push(Err(e.to_string()));
                }
                return seen;
            }
        }
    }
}

fn hello() -> Vec<u8> {
    // RFC 7692 §7.2.3.1.
    vec![0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00]
}

#[test]
fn a_compressed_message_reaches_tungstenite_inflated() {
    let mut d = Deframer::server(1024, 1024);
    let out = run(&mut d, &frame(0xc1, &hello())).unwrap();
    assert_eq!(out, [0x81, 0x85, 0, 0, 0, 0, b'H', b'e', b'l', b'l', b'o']);
    assert!(d.is_idle());
    assert_eq!(tungstenite_reads(out), [Ok(Message::text("Hello"))]);
}

#[test]
fn plain_frames_pass_through_byte_for_byte() {
    let mut d = Deframer::server(1024, 1024);
    let mut input = frame(0x01, b"Hel");
    input.extend(frame(0x89, b"ping"));
    input.extend(frame(0x80, b"lo"));
    input.extend(frame(0x82, &[0u8; 300]));
    assert_eq!(run(&mut d, &input).unwrap(), input);
}

#[test]
fn fragments_with_a_ping_between_them() {
    let packed = hello();
    let mut d = Deframer::server(1024, 1024);
    let mut input = frame(0x41, &packed[..3]);
    input.extend(frame(0x89, b"p"));
    input.extend(frame(0x00, &packed[3..5]));
    input.extend(frame(0x80, &packed[5..]));
    let out = run(&mut d, &input).unwrap();
    // The ping first (as it came), then the whole message.
    assert_eq!(
        tungstenite_reads(out),
        [Ok(Message::Ping("p".into())), Ok(Message::text("Hello"))]
    );
}

#[test]
fn every_split_of_the_input_gives_the_same_bytes() {
    let big = br#"{"op":"publish","topic":"t","data":"lorem ipsum dolor"}"#.repeat(50);
    let packed = compress(&big);
    let mut input = frame(0x89, b"hi");
    input.extend(frame(0x41, &packed[..packed.len() / 2]));
    input.extend(frame(0x8a, b""));
    input.extend(frame(0x80, &packed[packed.len() / 2..]));
    input.extend(frame(0x81, b"plain"));
    let whole = run(&mut Deframer::server(1 << 16, 1 << 16), &input).unwrap();
    for cut in 0..=input.len() {
        let mut d = Deframer::server(1 << 16, 1 << 16);
        let mut out = run(&mut d, &input[..cut]).unwrap();
        d.process(&input[cut..], &mut out).unwrap();
        assert_eq!(out, whole, "split at {cut}");
        assert!(d.is_idle());
    }
    let seen = tungstenite_reads(whole);
    assert_eq!(seen.len(), 4, "{seen:?}");
    assert_eq!(seen[2], Ok(Message::text(String::from_utf8(big).unwrap())));
}

#[test]
fn large_messages_go_on_in_frames_of_the_frame_limit() {
    let big = vec![b'a'; 1000];
    let mut d = Deframer::server(4096, 300);
    let out = run(&mut d, &frame(0xc2, &compress(&big))).unwrap();
    // 300 + 300 + 300 + 100, each with a 4-byte length and a zero key.
    assert_eq!(out.len(), 1000 + 3 * 8 + 6);
    assert_eq!(out[0], 0x02);
    assert_eq!(tungstenite_reads(out), [Ok(Message::binary(big))]);
}

#[test]
fn oversized_messages_are_refused() {
    let zeros = vec![0u8; 5000];
    let packed = compress(&zeros);
    assert_eq!(
        run(&mut Deframer::server(4999, 4999), &frame(0xc2, &packed)),
        Err(InflateError::TooBig)
    );
    assert_eq!(
        run(&mut Deframer::server(5000, 5000), &frame(0xc2, &packed))
            .unwrap()
            .len(),
        5000 + 8
    );
    // The compressed size counts too, across fragments, before any payload is read.
    let mut d = Deframer::server(100, 100);
    run(&mut d, &frame(0x42, &[0; 60])).unwrap();
    assert_eq!(
        run(&mut d, &frame(0x80, &[0; 41])[..8]),
        Err(InflateError::TooBig)
    );
    assert_eq!(InflateError::TooBig.close_code(), 1009);
}

#[test]
fn rsv1_where_it_does_not_belong_is_left_to_tungstenite() {
    // On a continuation frame of a compressed message.
    let mut d = Deframer::server(1024, 1024);
    let mut input = frame(0x41, &hello()[..3]);
    input.extend(frame(0xc0, &hello()[3..]));
    let out = run(&mut d, &input).unwrap();
    assert_eq!(out, frame(0xc0, &hello()[3..]));
    let seen = tungstenite_reads(out);
    assert!(
        matches!(&seen[..], [Err(e)] if e.contains("Reserved bits")),
        "{seen:?}"
    );
    // On a control frame, and on an unmasked client frame.
    let ping = frame(0xc9, b"x");
    assert_eq!(run(&mut Deframer::server(64, 64), &ping).unwrap(), ping);
    let unmasked = [0xc1, 0x02, 0xf2, 0x00];
    assert_eq!(
        run(&mut Deframer::server(64, 64), &unmasked).unwrap(),
        unmasked
    );
}

#[test]
fn a_new_message_inside_a_compressed_one_fails() {
    let mut d = Deframer::server(1024, 1024);
    let mut input = frame(0x41, &hello()[..3]);
    input.extend(frame(0x81, b"x"));
    assert_eq!(run(&mut d, &input), Err(InflateError::Protocol));
}

#[test]
fn bad_compressed_data_fails_with_1007() {
    let mut d = Deframer::server(1024, 1024);
    let err = run(&mut d, &frame(0xc1, &[0xff, 0xff, 0xff])).unwrap_err();
    assert_eq!(err, InflateError::BadData);
    assert_eq!(err.close_code(), 1007);
}

#[test]
fn an_empty_compressed_message() {
    let mut d = Deframer::server(16, 16);
    // An empty message deflates to `00` (RFC 7692 §7.2.3.6), or to nothing at all.
    assert_eq!(
        run(&mut d, &frame(0xc1, &[0x00])).unwrap(),
        [0x81, 0x80, 0, 0, 0, 0]
    );
    assert_eq!(
        run(&mut d, &frame(0xc1, &[])).unwrap(),
        [0x81, 0x80, 0, 0, 0, 0]
    );
}

#[test]
fn the_client_role_reads_unmasked_server_frames() {
    let mut d = Deframer::client(1024, 1024);
    let mut input = vec![0xc1, hello().len() as u8];
    input.extend(hello());
    assert_eq!(run(&mut d, &input).unwrap(), b"\x81\x05Hello");
}
