//! The client protocol `wsgate.v1`: JSON text frames in both directions, plus binary
//! frames for binary pushes. See `docs/protocol.md` for the user-facing description.
//!
//! Server frames are encoded here once per message and shared as [`OutFrame`] (a cheap
//! clone of reference-counted bytes) across every recipient.

use bytes::Bytes;
use serde::Serialize;
use serde_json::value::RawValue;
use tungstenite::Utf8Bytes;

use crate::stream::StreamPosition;

/// The subprotocol name negotiated when a client offers it.
pub const SUBPROTOCOL: &str = "wsgate.v1";

/// The body of a push, as given to the control plane.
#[derive(Debug, Clone)]
pub enum Payload {
    /// Arrives as a JSON string in `data`.
    Text(String),
    /// Already-validated JSON, embedded in `data` as the value itself.
    Json(Box<RawValue>),
    /// Arrives as one binary frame holding exactly these bytes.
    Binary(Bytes),
}

impl PartialEq for Payload {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Payload::Text(a), Payload::Text(b)) => a == b,
            (Payload::Json(a), Payload::Json(b)) => a.get() == b.get(),
            (Payload::Binary(a), Payload::Binary(b)) => a == b,
            _ => false,
        }
    }
}

impl Payload {
    /// Validates `json` and wraps it. The error names what is wrong, for the caller.
    pub fn json(json: &str) -> Result<Self, String> {
        // `RawValue` checks the grammar only; a full parse also refuses what strict
        // clients cannot read back, such as a lone UTF-16 surrogate escape ("\ud800").
        serde_json::from_str::<serde_json::Value>(json)
            .map_err(|e| format!("payload.json is not valid JSON: {e}"))?;
        RawValue::from_string(json.to_owned())
            .map(Payload::Json)
            .map_err(|e| format!("payload.json is not valid JSON: {e}"))
    }

    /// Size of the body in bytes (for limits and metrics).
    pub fn len(&self) -> usize {
        match self {
            Payload::Text(t) => t.len(),
            Payload::Json(j) => j.get().len(),
            Payload::Binary(b) => b.len(),
        }
    }

    /// Whether the body is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A JSON value checked once and kept as its text, to be embedded as it is.
#[derive(Debug, Clone)]
pub struct RawJson(Box<RawValue>);

impl RawJson {
    /// Validates `json` as [`Payload::json`] does (strict: what every client can read back).
    pub fn parse(json: &str) -> Result<Self, String> {
        match Payload::json(json)? {
            Payload::Json(raw) => Ok(Self(raw)),
            Payload::Text(_) | Payload::Binary(_) => Err("not JSON".to_owned()),
        }
    }

    /// `null`.
    pub fn null() -> Self {
        Self(RawValue::NULL.to_owned())
    }

    /// The JSON text.
    pub fn get(&self) -> &str {
        self.0.get()
    }
}

impl Serialize for RawJson {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(serializer)
    }
}

impl PartialEq for RawJson {
    fn eq(&self, other: &Self) -> bool {
        self.get() == other.get()
    }
}

/// A frame ready for the socket, shared across recipients without copying.
#[derive(Debug, Clone, PartialEq)]
pub enum OutFrame {
    /// A text frame (valid UTF-8 by construction).
    Text(Utf8Bytes),
    /// A binary frame.
    Binary(Bytes),
}

impl OutFrame {
    /// Bytes on the wire, not counting the frame header.
    pub fn len(&self) -> usize {
        match self {
            OutFrame::Text(t) => t.len(),
            OutFrame::Binary(b) => b.len(),
        }
    }

    /// Whether the frame has no payload.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn json(value: &impl Serialize) -> Self {
        // Serializing our own frame types cannot fail: they hold only strings, numbers
        // and already-validated raw JSON.
        let text = serde_json::to_string(value).unwrap_or_else(|_| String::from("{}"));
        OutFrame::Text(Utf8Bytes::from(text))
    }
}

/// Encodes a push once, for every local recipient.
pub fn encode_push(payload: &Payload, topic: Option<&str>) -> OutFrame {
    #[derive(Serialize)]
    struct Push<'a, T: Serialize> {
        op: &'static str,
        #[serde(skip_serializing_if = "Option::is_none")]
        topic: Option<&'a str>,
        data: T,
    }
    match payload {
        Payload::Binary(bytes) => OutFrame::Binary(bytes.clone()),
        Payload::Text(text) => OutFrame::json(&Push {
            op: "message",
            topic,
            data: text,
        }),
        Payload::Json(raw) => OutFrame::json(&Push {
            op: "message",
            topic,
            data: raw,
        }),
    }
}

/// A push from a stream with history: its frame carries the message's `offset`. A binary
/// payload travels as exactly its bytes, so its offset goes ahead of it in an announce
/// frame, `{"op":"binary","offset":N}` (plus `"topic"`), and the binary frame follows.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamPush {
    /// The `binary` announce frame, for a binary payload.
    pub announce: Option<OutFrame>,
    /// The push itself.
    pub frame: OutFrame,
}

impl StreamPush {
    /// Payload bytes of both frames.
    pub fn len(&self) -> usize {
        self.frame.len() + self.announce.as_ref().map_or(0, OutFrame::len)
    }

    /// Whether both frames are empty (never, in practice).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Encodes a push of a stream with history (see [`StreamPush`]).
pub fn encode_stream_push(payload: &Payload, topic: Option<&str>, offset: u64) -> StreamPush {
    #[derive(Serialize)]
    struct Push<'a, T: Serialize> {
        op: &'static str,
        #[serde(skip_serializing_if = "Option::is_none")]
        topic: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        data: Option<T>,
        offset: u64,
    }
    match payload {
        Payload::Binary(bytes) => StreamPush {
            announce: Some(OutFrame::json(&Push::<()> {
                op: "binary",
                topic,
                data: None,
                offset,
            })),
            frame: OutFrame::Binary(bytes.clone()),
        },
        Payload::Text(text) => StreamPush {
            announce: None,
            frame: OutFrame::json(&Push {
                op: "message",
                topic,
                data: Some(text),
                offset,
            }),
        },
        Payload::Json(raw) => StreamPush {
            announce: None,
            frame: OutFrame::json(&Push {
                op: "message",
                topic,
                data: Some(raw),
                offset,
            }),
        },
    }
}

/// The first frame of every session.
pub fn encode_welcome(session_id: &str, user_id: &str, heartbeat_s: u64) -> OutFrame {
    encode_welcome_with_stream(session_id, user_id, heartbeat_s, None)
}

/// The welcome frame of a session whose user stream keeps history: it names the stream's
/// epoch and newest offset, and, when the client asked to recover (`?since=`), whether
/// everything after its offset follows.
pub fn encode_welcome_with_stream(
    session_id: &str,
    user_id: &str,
    heartbeat_s: u64,
    user_stream: Option<(&StreamPosition, Option<bool>)>,
) -> OutFrame {
    #[derive(Serialize)]
    struct Welcome<'a> {
        op: &'static str,
        session_id: &'a str,
        user_id: &'a str,
        heartbeat_s: u64,
        #[serde(skip_serializing_if = "Option::is_none")]
        user_stream: Option<&'a StreamPosition>,
        #[serde(skip_serializing_if = "Option::is_none")]
        recovered: Option<bool>,
    }
    OutFrame::json(&Welcome {
        op: "welcome",
        session_id,
        user_id,
        heartbeat_s,
        user_stream: user_stream.map(|(p, _)| p),
        recovered: user_stream.and_then(|(_, r)| r),
    })
}

/// A request id a client may put on an op; echoed in the reply. Strings and numbers only.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum RequestId {
    /// `"id":"abc"`
    Text(String),
    /// `"id":7`
    Number(serde_json::Number),
}

/// A client op, decoded.
#[derive(Debug, Clone, PartialEq)]
pub enum ClientOp {
    /// `{"op":"subscribe","topic":"T"}`, with `"since":{"epoch":"E","offset":N}` to
    /// recover what the client missed of a topic that keeps history.
    Subscribe {
        /// The topic.
        topic: String,
        /// The last position the client saw, when it asks to recover.
        since: Option<StreamPosition>,
    },
    /// `{"op":"unsubscribe","topic":"T"}`
    Unsubscribe {
        /// The topic.
        topic: String,
    },
    /// `{"op":"ping"}`: the app-level ping browsers need.
    Ping,
    /// `{"op":"publish","topic":"T","data":<json>}`: publish `data` to the topic's
    /// subscribers, through the same fan-out (and history) as the control plane's.
    Publish {
        /// The topic.
        topic: String,
        /// The message: any JSON value ([`Payload::Json`]), pushed as it is.
        data: Payload,
    },
    /// `{"op":"rpc","method":"M","data":…,"id":…}`: a call to the application's backend,
    /// answered by `rpc_result` (or an error) with the same `id`, which is required: the
    /// answer may come after replies to later ops.
    Rpc {
        /// What the backend is asked to do (see [`valid_rpc_method`]).
        method: String,
        /// Any JSON value, exactly as the client wrote it (key order, number forms);
        /// `null` when the op has no `data`.
        data: RawJson,
    },
    /// `{"op":"refresh","token":"…"}`: a new token for the live session (same user): its
    /// expiry and its `topics` and `publish` claims replace the old token's.
    Refresh {
        /// The new token, as sent (verified by the session).
        token: String,
    },
}

/// Longest token a `refresh` op may carry, in bytes (a handshake's whole request head is
/// bounded too; a token is a few hundred bytes to a few KiB).
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// Longest rpc method name, in bytes.
pub const MAX_RPC_METHOD_BYTES: usize = 128;

/// An rpc method name: 1 to [`MAX_RPC_METHOD_BYTES`] characters of `A-Z a-z 0-9 . _ : / -`,
/// so it can go into logs and URLs of the backend's choosing without escaping.
pub fn valid_rpc_method(method: &str) -> bool {
    (1..=MAX_RPC_METHOD_BYTES).contains(&method.len())
        && method
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'/' | b'-'))
}

/// A decoded client frame: the op and its request id.
#[derive(Debug, Clone, PartialEq)]
pub struct ClientRequest {
    /// What the client asks for.
    pub op: ClientOp,
    /// Echoed in the reply.
    pub id: Option<RequestId>,
}

/// Why a client frame was refused; becomes an `{"op":"error"}` reply.
#[derive(Debug, Clone, PartialEq)]
pub struct ProtocolError {
    /// Machine-readable code (`bad_request`, `forbidden_topic`, …).
    pub code: &'static str,
    /// Human-readable explanation.
    pub message: String,
    /// The request id, when the frame had a readable one.
    pub id: Option<RequestId>,
}

impl ProtocolError {
    fn bad_request(message: impl Into<String>, id: Option<RequestId>) -> Self {
        Self {
            code: "bad_request",
            message: message.into(),
            id,
        }
    }
}

/// Decodes one client text frame. Never panics; anything unexpected is a `bad_request`.
pub fn decode_client(text: &str) -> Result<ClientRequest, ProtocolError> {
    let value: serde_json::Value = serde_json::from_str(text)
        .map_err(|_| ProtocolError::bad_request("frame is not valid JSON", None))?;
    let serde_json::Value::Object(mut obj) = value else {
        return Err(ProtocolError::bad_request(
            "frame must be a JSON object",
            None,
        ));
    };
    let id = match obj.remove("id") {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::String(s)) if s.len() <= 128 => Some(RequestId::Text(s)),
        Some(serde_json::Value::Number(n)) => Some(RequestId::Number(n)),
        Some(_) => {
            return Err(ProtocolError::bad_request(
                "\"id\" must be a string of at most 128 bytes or a number",
                None,
            ));
        }
    };
    let op = match obj.get("op").and_then(|v| v.as_str()) {
        Some(op) => op,
        None => return Err(ProtocolError::bad_request("missing \"op\"", id)),
    };
    let topic = || -> Result<String, ProtocolError> {
        match obj.get("topic").and_then(|v| v.as_str()) {
            Some(t) if crate::auth::valid_topic(t) => Ok(t.to_owned()),
            Some(_) => Err(ProtocolError::bad_request(
                "\"topic\" must be 1 to 200 characters of A-Z a-z 0-9 . _ : -",
                id.clone(),
            )),
            None => Err(ProtocolError::bad_request("missing \"topic\"", id.clone())),
        }
    };
    let op = match op {
        "subscribe" => ClientOp::Subscribe {
            topic: topic()?,
            since: match obj.get("since") {
                None | Some(serde_json::Value::Null) => None,
                Some(v) => Some(decode_position(v).ok_or_else(|| {
                    ProtocolError::bad_request(
                        "\"since\" must be {\"epoch\": string, \"offset\": non-negative integer}",
                        id.clone(),
                    )
                })?),
            },
        },
        "unsubscribe" => ClientOp::Unsubscribe { topic: topic()? },
        "ping" => ClientOp::Ping,
        "publish" => {
            let topic = topic()?;
            let data = match obj.get("data") {
                None => return Err(ProtocolError::bad_request("missing \"data\"", id)),
                // Re-encoded from the parsed value: compact, and checked by the full parse.
                Some(v) => serde_json::value::to_raw_value(v)
                    .map(Payload::Json)
                    .map_err(|_| {
                        ProtocolError::bad_request("\"data\" cannot be encoded", id.clone())
                    })?,
            };
            ClientOp::Publish { topic, data }
        }
        "rpc" => decode_rpc(text, &obj, &id)?,
        "refresh" => match obj.get("token").and_then(|v| v.as_str()) {
            Some(t) if !t.is_empty() && t.len() <= MAX_TOKEN_BYTES => ClientOp::Refresh {
                token: t.to_owned(),
            },
            _ => {
                return Err(ProtocolError::bad_request(
                    format!("\"token\" must be a string of 1 to {MAX_TOKEN_BYTES} bytes"),
                    id,
                ));
            }
        },
        _ => {
            return Err(ProtocolError::bad_request(
                "unknown op: expected subscribe, unsubscribe, publish, ping, rpc or refresh",
                id,
            ));
        }
    };
    Ok(ClientRequest { op, id })
}

/// The fields of an `rpc` op; its `id` is required, to match the answer. `data` is taken
/// from the frame's text as it is, so it reaches the backend unchanged (a `Value` would
/// sort its keys and round integers beyond 64 bits).
fn decode_rpc(
    text: &str,
    obj: &serde_json::Map<String, serde_json::Value>,
    id: &Option<RequestId>,
) -> Result<ClientOp, ProtocolError> {
    let method = match obj.get("method").and_then(|v| v.as_str()) {
        Some(m) if valid_rpc_method(m) => m.to_owned(),
        Some(_) => {
            return Err(ProtocolError::bad_request(
                format!(
                    "\"method\" must be 1 to {MAX_RPC_METHOD_BYTES} characters of A-Z a-z 0-9 . _ : / -"
                ),
                id.clone(),
            ));
        }
        None => {
            return Err(ProtocolError::bad_request(
                "missing \"method\" (a string)",
                id.clone(),
            ));
        }
    };
    if id.is_none() {
        return Err(ProtocolError::bad_request(
            "rpc needs an \"id\" (a string or a number) to match its answer",
            None,
        ));
    }
    #[derive(serde::Deserialize)]
    struct Data<'a> {
        #[serde(borrow, default)]
        data: Option<&'a RawValue>,
    }
    // The frame parsed as a whole already, so this only finds `data` again (strictly:
    // a frame with two `data` keys is refused rather than guessed at).
    let data = match serde_json::from_str::<Data<'_>>(text) {
        Ok(Data { data }) => data.map_or_else(RawJson::null, |raw| RawJson(raw.to_owned())),
        Err(_) => {
            return Err(ProtocolError::bad_request(
                "\"data\" must appear at most once",
                id.clone(),
            ));
        }
    };
    Ok(ClientOp::Rpc { method, data })
}

/// `{"epoch": string of at most 64 bytes, "offset": u64}`.
fn decode_position(v: &serde_json::Value) -> Option<StreamPosition> {
    let epoch = v.get("epoch")?.as_str()?;
    let offset = v.get("offset")?.as_u64()?;
    (epoch.len() <= 64).then(|| StreamPosition {
        epoch: epoch.to_owned(),
        offset,
    })
}

/// Parses the `?since=` of a connect, `epoch:offset`; `None` when malformed.
pub fn parse_since(value: &str) -> Option<StreamPosition> {
    let (epoch, offset) = value.rsplit_once(':')?;
    let offset = offset.parse().ok()?;
    (epoch.len() <= 64).then(|| StreamPosition {
        epoch: epoch.to_owned(),
        offset,
    })
}

/// A reply to a client op.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    /// The subscription is active: pushes to the topic published from now on arrive.
    Subscribed(String),
    /// The subscription to a topic that keeps history is active: `position` is the
    /// stream's epoch and newest offset; `recovered` answers a `since` (when true, the
    /// messages after it follow as ordinary pushes before live ones).
    Joined {
        /// The topic.
        topic: String,
        /// The stream's epoch and newest offset.
        position: StreamPosition,
        /// Whether everything after the client's `since` follows (only with `since`).
        recovered: Option<bool>,
    },
    /// The subscription is gone.
    Unsubscribed(String),
    /// The server ended the subscription; `reason` says why (`insufficient_state`: the
    /// session cannot vouch for the stream's continuity; subscribe again with `since`).
    Dropped {
        /// The topic.
        topic: String,
        /// Machine-readable reason.
        reason: &'static str,
    },
    /// Answer to the app-level ping.
    Pong,
    /// The client's `publish` went out; `position` is its place in the topic's stream
    /// when the topic keeps history.
    Published {
        /// The topic.
        topic: String,
        /// The message's epoch and offset (topics with history only).
        position: Option<StreamPosition>,
    },
    /// The backend's answer to an `rpc` op: its JSON body, as `data`.
    RpcResult(RawJson),
    /// The `refresh` op's new token is in force; the session now ends at its `exp`
    /// (seconds since the Unix epoch), written as `expires_at`.
    Refreshed {
        /// The new token's `exp`.
        expires_at: u64,
    },
    /// The op was refused.
    Error {
        /// Machine-readable code.
        code: &'static str,
        /// Human-readable explanation.
        message: String,
    },
}

/// Encodes a reply, echoing the request id when there was one.
pub fn encode_reply(reply: &Reply, id: Option<&RequestId>) -> OutFrame {
    #[derive(Serialize)]
    struct Out<'a> {
        op: &'static str,
        #[serde(skip_serializing_if = "Option::is_none")]
        topic: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        epoch: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        offset: Option<u64>,
        #[serde(skip_serializing_if = "Option::is_none")]
        recovered: Option<bool>,
        #[serde(skip_serializing_if = "Option::is_none")]
        reason: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        code: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        message: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a RequestId>,
        #[serde(skip_serializing_if = "Option::is_none")]
        data: Option<&'a RawValue>,
        #[serde(skip_serializing_if = "Option::is_none")]
        expires_at: Option<u64>,
    }
    let mut out = Out {
        op: "",
        topic: None,
        epoch: None,
        offset: None,
        recovered: None,
        reason: None,
        code: None,
        message: None,
        id,
        data: None,
        expires_at: None,
    };
    match reply {
        Reply::Subscribed(t) => (out.op, out.topic) = ("subscribed", Some(t.as_str())),
        Reply::Joined {
            topic,
            position,
            recovered,
        } => {
            (out.op, out.topic) = ("subscribed", Some(topic.as_str()));
            out.epoch = Some(&position.epoch);
            out.offset = Some(position.offset);
            out.recovered = *recovered;
        }
        Reply::Unsubscribed(t) => (out.op, out.topic) = ("unsubscribed", Some(t.as_str())),
        Reply::Dropped { topic, reason } => {
            (out.op, out.topic, out.reason) = ("unsubscribed", Some(topic.as_str()), Some(*reason));
        }
        Reply::Pong => out.op = "pong",
        Reply::Published { topic, position } => {
            (out.op, out.topic) = ("published", Some(topic.as_str()));
            if let Some(position) = position {
                out.epoch = Some(&position.epoch);
                out.offset = Some(position.offset);
            }
        }
        Reply::RpcResult(data) => (out.op, out.data) = ("rpc_result", Some(&*data.0)),
        Reply::Refreshed { expires_at } => {
            (out.op, out.expires_at) = ("refreshed", Some(*expires_at))
        }
        Reply::Error { code, message } => {
            (out.op, out.code, out.message) = ("error", Some(*code), Some(message.as_str()));
        }
    }
    OutFrame::json(&out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn text(frame: &OutFrame) -> serde_json::Value {
        match frame {
            OutFrame::Text(t) => serde_json::from_str(t.as_str()).unwrap(),
            OutFrame::Binary(_) => panic!("expected text"),
        }
    }

    #[test]
    fn pushes_embed_json_and_quote_text() {
        let j = encode_push(&Payload::json(r#"{"a":[1,2]}"#).unwrap(), Some("news"));
        assert_eq!(
            text(&j),
            serde_json::json!({"op":"message","topic":"news","data":{"a":[1,2]}})
        );
        let t = encode_push(&Payload::Text("hi \"there\"".into()), None);
        assert_eq!(
            text(&t),
            serde_json::json!({"op":"message","data":"hi \"there\""})
        );
        let b = encode_push(&Payload::Binary(Bytes::from_static(&[0, 255, 1])), None);
        assert_eq!(b, OutFrame::Binary(Bytes::from_static(&[0, 255, 1])));
    }

    #[test]
    fn invalid_json_payload_is_refused() {
        assert!(Payload::json("{nope").is_err());
        assert!(Payload::json("").is_err());
        // Valid JSON grammar, but no strict parser can read it back (found by fuzzing).
        assert!(Payload::json(r#""\ud800""#).is_err());
        assert!(Payload::json(r#"{"a":"\ud83dx"}"#).is_err());
        assert!(
            Payload::json(r#""\ud83d\ude00""#).is_ok(),
            "a surrogate pair is fine"
        );
    }

    #[test]
    fn float_request_ids_are_echoed_exactly() {
        // What JavaScript writes for this number; found by fuzzing.
        let r = decode_client(r#"{"op":"ping","id":1.2345678901234557e+20}"#).unwrap();
        let reply = encode_reply(&Reply::Pong, r.id.as_ref());
        let OutFrame::Text(t) = reply else {
            panic!("text")
        };
        assert!(
            t.as_str().contains("1.2345678901234557e+20"),
            "{}",
            t.as_str()
        );
    }

    #[test]
    fn decodes_ops_and_echoes_ids() {
        let r = decode_client(r#"{"op":"subscribe","topic":"chat.1","id":"x1"}"#).unwrap();
        assert_eq!(
            r.op,
            ClientOp::Subscribe {
                topic: "chat.1".into(),
                since: None,
            }
        );
        let reply = encode_reply(&Reply::Subscribed("chat.1".into()), r.id.as_ref());
        assert_eq!(
            text(&reply),
            serde_json::json!({"op":"subscribed","topic":"chat.1","id":"x1"})
        );
        let p = decode_client(r#"{"op":"ping","id":7}"#).unwrap();
        assert_eq!(p.op, ClientOp::Ping);
        assert_eq!(
            text(&encode_reply(&Reply::Pong, p.id.as_ref())),
            serde_json::json!({"op":"pong","id":7})
        );
    }

    #[test]
    fn publish_takes_any_json_value_and_answers_its_position() {
        let r =
            decode_client(r#"{"op":"publish","topic":"chat.1","data": {"n" : [1, "x"]},"id":3}"#)
                .unwrap();
        let ClientOp::Publish { topic, data } = r.op else {
            panic!("not a publish: {r:?}");
        };
        assert_eq!(topic, "chat.1");
        assert_eq!(data, Payload::json(r#"{"n":[1,"x"]}"#).unwrap());
        for data in ["null", "\"text\"", "0", "[]"] {
            let frame = format!(r#"{{"op":"publish","topic":"t","data":{data}}}"#);
            assert!(matches!(
                decode_client(&frame).unwrap().op,
                ClientOp::Publish { .. }
            ));
        }
        let position = StreamPosition {
            epoch: "e1".into(),
            offset: 9,
        };
        let reply = Reply::Published {
            topic: "chat.1".into(),
            position: Some(position),
        };
        assert_eq!(
            text(&encode_reply(&reply, r.id.as_ref())),
            serde_json::json!({"op":"published","topic":"chat.1","epoch":"e1","offset":9,"id":3})
        );
        let plain = Reply::Published {
            topic: "news".into(),
            position: None,
        };
        assert_eq!(
            text(&encode_reply(&plain, None)),
            serde_json::json!({"op":"published","topic":"news"})
        );
    }

    #[test]
    fn garbage_is_a_bad_request_with_the_id_when_readable() {
        for bad in [
            "",
            "not json",
            "[]",
            "42",
            "{}",
            r#"{"op":5}"#,
            r#"{"op":"dance"}"#,
            r#"{"op":"subscribe"}"#,
            r#"{"op":"subscribe","topic":""}"#,
            r#"{"op":"subscribe","topic":"a b"}"#,
            r#"{"op":"ping","id":{"x":1}}"#,
            r#"{"op":"publish","topic":"t"}"#,
            r#"{"op":"publish","data":1}"#,
            r#"{"op":"publish","topic":"a b","data":1}"#,
        ] {
            let err = decode_client(bad).unwrap_err();
            assert_eq!(err.code, "bad_request", "{bad}");
        }
        let err = decode_client(r#"{"op":"dance","id":"q"}"#).unwrap_err();
        assert_eq!(err.id, Some(RequestId::Text("q".into())));
    }

    #[test]
    fn rpc_ops_are_decoded_and_answered_with_their_id() {
        let r = decode_client(
            r#"{"op":"rpc","method":"orders.get","data":{"z":1, "a":[1e2,123456789012345678901234567890]},"id":"c1"}"#,
        )
        .unwrap();
        // As the client wrote it: key order, number forms and big integers kept.
        assert_eq!(
            r.op,
            ClientOp::Rpc {
                method: "orders.get".into(),
                data: RawJson::parse(r#"{"z":1, "a":[1e2,123456789012345678901234567890]}"#)
                    .unwrap(),
            }
        );
        assert_eq!(r.id, Some(RequestId::Text("c1".into())));
        // No data is null; a number id is fine.
        let r = decode_client(r#"{"op":"rpc","method":"users/v1:me_now-1","id":3}"#).unwrap();
        assert_eq!(
            r.op,
            ClientOp::Rpc {
                method: "users/v1:me_now-1".into(),
                data: RawJson::null(),
            }
        );
        let long = "m".repeat(MAX_RPC_METHOD_BYTES);
        assert!(decode_client(&format!(r#"{{"op":"rpc","method":"{long}","id":1}}"#)).is_ok());

        let answer = RawJson::parse(r#"{"ok":true}"#).unwrap();
        assert_eq!(
            text(&encode_reply(&Reply::RpcResult(answer), r.id.as_ref())),
            serde_json::json!({"op":"rpc_result","data":{"ok":true},"id":3})
        );
        let null = RawJson::parse("null").unwrap();
        assert_eq!(
            text(&encode_reply(&Reply::RpcResult(null), None)),
            serde_json::json!({"op":"rpc_result","data":null})
        );
    }

    #[test]
    fn refresh_ops_carry_a_token_and_are_answered_with_the_new_expiry() {
        let r = decode_client(r#"{"op":"refresh","token":"a.b.c","id":9}"#).unwrap();
        assert_eq!(
            r.op,
            ClientOp::Refresh {
                token: "a.b.c".into()
            }
        );
        assert_eq!(
            text(&encode_reply(
                &Reply::Refreshed {
                    expires_at: 1_800_000_000
                },
                r.id.as_ref()
            )),
            serde_json::json!({"op":"refreshed","expires_at":1_800_000_000u64,"id":9})
        );
        let long = "t".repeat(MAX_TOKEN_BYTES + 1);
        for bad in [
            r#"{"op":"refresh"}"#.to_owned(),
            r#"{"op":"refresh","token":""}"#.to_owned(),
            r#"{"op":"refresh","token":7}"#.to_owned(),
            format!(r#"{{"op":"refresh","token":"{long}"}}"#),
        ] {
            let e = decode_client(&bad).unwrap_err();
            assert_eq!(e.code, "bad_request", "{bad:.80}");
            assert!(e.message.contains("\"token\""), "{}", e.message);
        }
    }

    #[test]
    fn bad_rpc_ops_are_bad_requests() {
        let too_long = format!(r#"{{"op":"rpc","method":"{}","id":1}}"#, "m".repeat(129));
        for (bad, why) in [
            (r#"{"op":"rpc","id":1}"#, "missing \"method\""),
            (r#"{"op":"rpc","method":7,"id":1}"#, "missing \"method\""),
            (r#"{"op":"rpc","method":"","id":1}"#, "\"method\" must be"),
            (
                r#"{"op":"rpc","method":"a b","id":1}"#,
                "\"method\" must be",
            ),
            (
                r#"{"op":"rpc","method":"a\nb","id":1}"#,
                "\"method\" must be",
            ),
            (r#"{"op":"rpc","method":"é","id":1}"#, "\"method\" must be"),
            (too_long.as_str(), "\"method\" must be"),
            (
                r#"{"op":"rpc","method":"m","data":1,"data":2,"id":1}"#,
                "\"data\" must appear at most once",
            ),
        ] {
            let e = decode_client(bad).unwrap_err();
            assert_eq!(e.code, "bad_request", "{bad}");
            assert!(e.message.contains(why), "{bad}: {}", e.message);
            assert_eq!(e.id, Some(RequestId::Number(1.into())), "{bad}");
        }
        // Without an id the answer could not be matched: refused, and says why.
        for no_id in [
            r#"{"op":"rpc","method":"m"}"#,
            r#"{"op":"rpc","method":"m","data":1,"id":null}"#,
        ] {
            let e = decode_client(no_id).unwrap_err();
            assert_eq!(e.code, "bad_request");
            assert!(e.message.contains("\"id\""), "{}", e.message);
            assert_eq!(e.id, None);
        }
        assert!(RawJson::parse("{").is_err());
        assert!(RawJson::parse(r#""\ud800""#).is_err());
        assert!(valid_rpc_method("a.b_c:d/e-f9"));
        assert!(!valid_rpc_method("a?b"));
    }

    #[test]
    fn stream_pushes_carry_their_offset_and_binary_is_announced() {
        let t = encode_stream_push(&Payload::Text("hi".into()), Some("news"), 42);
        assert_eq!(t.announce, None);
        assert_eq!(
            text(&t.frame),
            serde_json::json!({"op":"message","topic":"news","data":"hi","offset":42})
        );
        let j = encode_stream_push(&Payload::json("[1]").unwrap(), None, 7);
        assert_eq!(
            text(&j.frame),
            serde_json::json!({"op":"message","data":[1],"offset":7})
        );
        let b = encode_stream_push(&Payload::Binary(Bytes::from_static(&[9, 0])), Some("t"), 3);
        assert_eq!(
            text(b.announce.as_ref().unwrap()),
            serde_json::json!({"op":"binary","topic":"t","offset":3})
        );
        assert_eq!(b.frame, OutFrame::Binary(Bytes::from_static(&[9, 0])));
        assert_eq!(b.len(), b.frame.len() + b.announce.as_ref().unwrap().len());
    }

    #[test]
    fn subscribe_since_and_connect_since_are_decoded_or_refused() {
        let r = decode_client(
            r#"{"op":"subscribe","topic":"t","since":{"epoch":"ab12","offset":9},"id":1}"#,
        )
        .unwrap();
        let expected = StreamPosition {
            epoch: "ab12".into(),
            offset: 9,
        };
        assert_eq!(
            r.op,
            ClientOp::Subscribe {
                topic: "t".into(),
                since: Some(expected.clone())
            }
        );
        for bad in [
            r#"{"op":"subscribe","topic":"t","since":{"epoch":"e"}}"#,
            r#"{"op":"subscribe","topic":"t","since":{"epoch":"e","offset":-1}}"#,
            r#"{"op":"subscribe","topic":"t","since":{"epoch":7,"offset":1}}"#,
            r#"{"op":"subscribe","topic":"t","since":"e:1"}"#,
        ] {
            let e = decode_client(bad).unwrap_err();
            assert_eq!(e.code, "bad_request", "{bad}");
        }
        assert_eq!(parse_since("ab12:9"), Some(expected));
        assert_eq!(parse_since("ab12"), None);
        assert_eq!(parse_since("ab12:x"), None);
        assert_eq!(parse_since(&format!("{}:1", "e".repeat(65))), None);
    }

    #[test]
    fn joined_and_dropped_replies_and_the_stream_welcome() {
        let position = StreamPosition {
            epoch: "e1".into(),
            offset: 5,
        };
        let joined = Reply::Joined {
            topic: "t".into(),
            position: position.clone(),
            recovered: Some(true),
        };
        assert_eq!(
            text(&encode_reply(&joined, Some(&RequestId::Text("x".into())))),
            serde_json::json!({"op":"subscribed","topic":"t","epoch":"e1","offset":5,"recovered":true,"id":"x"})
        );
        let plain = Reply::Joined {
            topic: "t".into(),
            position: position.clone(),
            recovered: None,
        };
        assert_eq!(
            text(&encode_reply(&plain, None)),
            serde_json::json!({"op":"subscribed","topic":"t","epoch":"e1","offset":5})
        );
        let dropped = Reply::Dropped {
            topic: "t".into(),
            reason: "insufficient_state",
        };
        assert_eq!(
            text(&encode_reply(&dropped, None)),
            serde_json::json!({"op":"unsubscribed","topic":"t","reason":"insufficient_state"})
        );
        assert_eq!(
            text(&encode_welcome_with_stream(
                "s",
                "u",
                25,
                Some((&position, Some(false)))
            )),
            serde_json::json!({"op":"welcome","session_id":"s","user_id":"u","heartbeat_s":25,
                "user_stream":{"epoch":"e1","offset":5},"recovered":false})
        );
        assert_eq!(
            text(&encode_welcome("s", "u", 25)),
            serde_json::json!({"op":"welcome","session_id":"s","user_id":"u","heartbeat_s":25})
        );
    }
}
