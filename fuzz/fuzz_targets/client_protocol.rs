//! Arbitrary client frames through `decode_client`, and every reply `encode_reply` makes
//! for what it decodes. Must never panic; every reply is valid JSON echoing the request
//! id; a decoded op re-encoded as a client frame is valid JSON and decodes to itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::{Value, json};
use wsgate_core::auth::valid_topic;
use wsgate_core::protocol::{
    ClientOp, MAX_TOKEN_BYTES, OutFrame, Payload, Reply, RequestId, decode_client, encode_push,
    encode_reply, encode_welcome, valid_rpc_method,
};

fn parse(frame: &OutFrame) -> Value {
    match frame {
        OutFrame::Text(t) => serde_json::from_str(t.as_str())
            .unwrap_or_else(|e| panic!("server frame is not valid JSON ({e}): {:?}", t.as_str())),
        OutFrame::Binary(_) => panic!("a reply must be a text frame"),
    }
}

fn id_json(id: Option<&RequestId>) -> Value {
    match id {
        None => Value::Null,
        Some(RequestId::Text(s)) => Value::String(s.clone()),
        Some(RequestId::Number(n)) => Value::Number(n.clone()),
    }
}

/// Ids compare exactly, except float ids: serde_json's default float parser is not
/// correctly rounded, so an id outside i64/u64 can come back one ulp off across a
/// serialize/parse cycle (docs/fuzzing.md, finding 2). Those must agree to 1e-15.
fn same_id(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) if x.is_f64() || y.is_f64() => {
            let (x, y) = (
                x.as_f64().unwrap_or(f64::NAN),
                y.as_f64().unwrap_or(f64::NAN),
            );
            x == y || ((x - y) / x).abs() <= 1e-15
        }
        _ => a == b,
    }
}

fn check_reply(reply: &Reply, id: Option<&RequestId>, op: &str) {
    let v = parse(&encode_reply(reply, id));
    assert_eq!(v["op"], op);
    match id {
        None => assert!(v.get("id").is_none(), "reply invents an id: {v}"),
        Some(_) => assert!(
            same_id(&v["id"], &id_json(id)),
            "reply does not echo the id: {} vs {}",
            v["id"],
            id_json(id)
        ),
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match decode_client(text) {
        Ok(req) => {
            let id = req.id.as_ref();
            if let Some(RequestId::Text(s)) = id {
                assert!(s.len() <= 128, "text id longer than 128 bytes accepted");
            }
            let (op, topic) = match &req.op {
                ClientOp::Subscribe { topic, .. } => ("subscribe", Some(topic)),
                ClientOp::Unsubscribe { topic } => ("unsubscribe", Some(topic)),
                ClientOp::Ping => ("ping", None),
                ClientOp::Publish { topic, .. } => ("publish", Some(topic)),
                ClientOp::Rpc { method, .. } => {
                    assert!(valid_rpc_method(method), "invalid method accepted: {method:?}");
                    assert!(id.is_some(), "rpc accepted without an id");
                    ("rpc", None)
                }
                ClientOp::Refresh { token } => {
                    assert!(
                        !token.is_empty() && token.len() <= MAX_TOKEN_BYTES,
                        "refresh accepted with a token of {} bytes",
                        token.len()
                    );
                    ("refresh", None)
                }
            };
            if let Some(topic) = topic {
                assert!(valid_topic(topic), "invalid topic accepted: {topic:?}");
                check_reply(&Reply::Subscribed(topic.clone()), id, "subscribed");
                check_reply(&Reply::Unsubscribed(topic.clone()), id, "unsubscribed");
                let push = encode_push(&Payload::Text(text.to_owned()), Some(topic));
                assert_eq!(parse(&push)["data"], text);
            }
            check_reply(&Reply::Pong, id, "pong");
            check_reply(
                &Reply::Error {
                    code: "forbidden_topic",
                    message: text.to_owned(),
                },
                id,
                "error",
            );
            // Re-encode the op as a client frame: valid JSON that decodes to the same op
            // and the same id.
            let mut frame = json!({ "op": op });
            if let Some(topic) = topic {
                frame["topic"] = json!(topic);
            }
            match &req.op {
                ClientOp::Rpc { method, data } => {
                    frame["method"] = json!(method);
                    frame["data"] = serde_json::from_str(data.get()).expect("rpc data is JSON");
                }
                ClientOp::Publish { data, .. } => {
                    let Payload::Json(data) = data else {
                        panic!("a client publish carries JSON data");
                    };
                    frame["data"] = serde_json::from_str(data.get()).expect("publish data is JSON");
                }
                ClientOp::Refresh { token } => frame["token"] = json!(token),
                _ => {}
            }
            if id.is_some() {
                frame["id"] = id_json(id);
            }
            let again = serde_json::to_string(&frame).expect("frame serializes");
            let back = decode_client(&again).expect("re-encoded op decodes");
            match (&back.op, &req.op) {
                // rpc data is kept as written; through a `Value` its text may change
                // (key order, number forms), its value may not.
                (
                    ClientOp::Rpc { method: m1, data: d1 },
                    ClientOp::Rpc { method: m2, data: d2 },
                ) => {
                    assert_eq!(m1, m2);
                    let value = |d: &str| serde_json::from_str::<Value>(d).expect("JSON");
                    assert_eq!(value(d1.get()), value(d2.get()), "rpc data changes");
                }
                (back, op) => assert_eq!(back, op),
            }
            assert!(
                same_id(&id_json(back.id.as_ref()), &id_json(id)),
                "id changes across a round trip: {again}"
            );
        }
        Err(e) => {
            assert_eq!(e.code, "bad_request");
            check_reply(
                &Reply::Error {
                    code: e.code,
                    message: e.message.clone(),
                },
                e.id.as_ref(),
                "error",
            );
        }
    }
    // Server frames built from arbitrary strings stay valid JSON.
    let v = parse(&encode_welcome(text, text, 30));
    assert_eq!(v["session_id"], text);
    // A JSON payload is embedded verbatim: the push must be JSON by the RFC 8259 grammar
    // (`RawValue`). It is not always parseable into a `serde_json::Value`: `Payload::json`
    // lets lone UTF-16 surrogate escapes such as "\ud83d" through, which strict parsers
    // (serde_json's `Value`) refuse -- see docs/fuzzing.md, finding 1.
    if let Ok(payload) = Payload::json(text) {
        let OutFrame::Text(push) = encode_push(&payload, None) else {
            panic!("a JSON push must be a text frame");
        };
        serde_json::from_str::<Box<serde_json::value::RawValue>>(push.as_str())
            .unwrap_or_else(|e| panic!("push is not JSON ({e}): {:?}", push.as_str()));
    }
});
