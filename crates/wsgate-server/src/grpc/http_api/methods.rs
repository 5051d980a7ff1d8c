//! The methods of the HTTP API, one row each, and the translation at their edge: proto3
//! JSON in and out, a `tonic::Status` to an HTTP status and error code.

use bytes::Bytes;
use futures_util::future::BoxFuture;
use http::StatusCode;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tonic::{Code, Status};
use wsgate_core::rejection::{RETRY_AFTER_BUSY_S, Rejection};
use wsgate_proto::pb::gateway_server::Gateway;

use crate::grpc::ControlService;

/// Longest error message passed on from the JSON parser (it may quote the body).
const MAX_PARSE_MESSAGE: usize = 300;

/// How a method answers: the request body (checked for size and content type, not yet
/// parsed) in, a JSON body or a refusal out.
pub type Call = fn(ControlService, Bytes) -> BoxFuture<'static, Result<Vec<u8>, Rejection>>;

/// One method of the HTTP API.
pub struct Method {
    /// The path segment, `/api/v1/<name>`: the gRPC method's name in snake_case.
    pub name: &'static str,
    /// The `wsgate.v1.Gateway` method it serves.
    pub rpc: &'static str,
    /// Its handler.
    pub call: Call,
}

/// A unary Gateway method: its request parsed from proto3 JSON, the [`ControlService`]
/// method called exactly as gRPC calls it, its response written as proto3 JSON.
macro_rules! unary {
    ($rpc:literal, $method:ident) => {
        Method {
            name: stringify!($method),
            rpc: $rpc,
            call: |control, body| {
                Box::pin(async move {
                    let request = decode(&body)?;
                    let response = Gateway::$method(&control, tonic::Request::new(request))
                        .await
                        .map_err(|status| status_rejection(&status))?;
                    encode(response.get_ref())
                })
            },
        }
    };
}

/// Every method the API serves. A method that is not unary (a long poll over a
/// server-streaming call) is a row with its own [`Call`].
pub static METHODS: &[Method] = &[
    unary!("SendToUser", send_to_user),
    unary!("SendToSession", send_to_session),
    unary!("Publish", publish),
    unary!("Broadcast", broadcast),
    unary!("Disconnect", disconnect),
    unary!("Revoke", revoke),
    unary!("GetPresence", get_presence),
    unary!("Stats", stats),
    unary!("History", history),
    Method {
        name: "watch_events",
        rpc: "WatchEvents",
        call: |control, body| Box::pin(super::watch::watch_events(control, body)),
    },
];

/// The method served at `/api/v1/<name>`.
pub fn find(name: &str) -> Option<&'static Method> {
    METHODS.iter().find(|m| m.name == name)
}

/// A request message from its proto3 JSON; an empty body is `{}`.
pub fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T, Rejection> {
    let body: &[u8] = if body.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        body
    };
    serde_json::from_slice(body).map_err(|e| {
        let mut message = format!("the body is not this method's request in proto3 JSON: {e}");
        if message.len() > MAX_PARSE_MESSAGE {
            let mut end = MAX_PARSE_MESSAGE;
            while !message.is_char_boundary(end) {
                end -= 1;
            }
            message.truncate(end);
            message.push('…');
        }
        Rejection::new(StatusCode::BAD_REQUEST, "bad_json", message)
    })
}

/// A response message as proto3 JSON.
pub fn encode<T: Serialize>(message: &T) -> Result<Vec<u8>, Rejection> {
    serde_json::to_vec(message).map_err(|e| {
        tracing::error!(error = %e, "HTTP API: a response could not be encoded");
        Rejection::internal("the response could not be encoded")
    })
}

/// The HTTP answer to a gRPC status: its code in lowercase as the `error`, its message
/// as the `message`. Client mistakes are 400, a missing or wrong key 401, NOT_FOUND 404,
/// RESOURCE_EXHAUSTED 429, UNAVAILABLE 503 with `Retry-After` (like the handshake's 503s),
/// anything else 500.
pub fn status_rejection(status: &Status) -> Rejection {
    let (http, code) = match status.code() {
        Code::InvalidArgument => (StatusCode::BAD_REQUEST, "invalid_argument"),
        Code::FailedPrecondition => (StatusCode::BAD_REQUEST, "failed_precondition"),
        Code::OutOfRange => (StatusCode::BAD_REQUEST, "out_of_range"),
        Code::Unauthenticated => (StatusCode::UNAUTHORIZED, "unauthenticated"),
        Code::NotFound => (StatusCode::NOT_FOUND, "not_found"),
        Code::ResourceExhausted => (StatusCode::TOO_MANY_REQUESTS, "resource_exhausted"),
        Code::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
        other => (StatusCode::INTERNAL_SERVER_ERROR, internal_code(other)),
    };
    let rejection = Rejection::new(http, code, status.message());
    if http == StatusCode::SERVICE_UNAVAILABLE {
        rejection.with_retry_after(RETRY_AFTER_BUSY_S)
    } else {
        rejection
    }
}

fn internal_code(code: Code) -> &'static str {
    match code {
        Code::Cancelled => "cancelled",
        Code::DeadlineExceeded => "deadline_exceeded",
        Code::AlreadyExists => "already_exists",
        Code::PermissionDenied => "permission_denied",
        Code::Aborted => "aborted",
        Code::Unimplemented => "unimplemented",
        Code::DataLoss => "data_loss",
        Code::Unknown => "unknown",
        _ => "internal",
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use wsgate_proto::pb;

    #[test]
    fn method_names_are_the_rpc_names_in_snake_case() {
        for m in METHODS {
            let mut snake = String::new();
            for (i, c) in m.rpc.chars().enumerate() {
                if c.is_ascii_uppercase() && i > 0 {
                    snake.push('_');
                }
                snake.push(c.to_ascii_lowercase());
            }
            assert_eq!(m.name, snake);
            assert!(find(m.name).is_some());
        }
        assert!(find("SendToUser").is_none());
        assert!(find("").is_none());
    }

    #[test]
    fn requests_take_both_spellings_and_reject_unknown_fields() {
        let snake: pb::HistoryRequest =
            decode(br#"{"topic":"t","since_offset":"7","limit":2}"#).unwrap();
        let camel: pb::HistoryRequest =
            decode(br#"{"topic":"t","sinceOffset":7,"limit":2}"#).unwrap();
        assert_eq!(snake, camel);
        assert_eq!(snake.since_offset, 7);
        let empty: pb::StatsRequest = decode(b"").unwrap();
        assert_eq!(empty, pb::StatsRequest {});
        for bad in [
            &br#"{"user_id":"a","userid":"b"}"#[..],
            b"[]",
            b"null",
            b"{",
            br#"{"user_id":1}"#,
            br#"{"user_id":"a"} trailing"#,
        ] {
            let e = decode::<pb::GetPresenceRequest>(bad).unwrap_err();
            assert_eq!(e.status, StatusCode::BAD_REQUEST, "{bad:?}");
            assert_eq!(e.code, "bad_json");
        }
        let long = format!(r#"{{"{}":1}}"#, "x".repeat(10_000));
        let e = decode::<pb::StatsRequest>(long.as_bytes()).unwrap_err();
        assert!(e.message.len() <= MAX_PARSE_MESSAGE + '…'.len_utf8());
    }

    #[test]
    fn responses_use_proto_names_strings_for_64_bit_and_write_defaults() {
        let json = encode(&pb::SendResponse {
            targets: 2,
            message_id: "m".into(),
            offset: 0,
            epoch: String::new(),
        })
        .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&json).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"targets":"2","message_id":"m","offset":"0","epoch":""})
        );
        let binary = pb::Payload {
            body: Some(pb::payload::Body::Binary(Bytes::from_static(b"\x00\xff"))),
        };
        let v: serde_json::Value = serde_json::from_slice(&encode(&binary).unwrap()).unwrap();
        assert_eq!(v, serde_json::json!({"binary":"AP8="}));
        // Standard or URL-safe alphabet, padded or not.
        for input in ["+/8=", "+/8", "-_8=", "-_8"] {
            let p: pb::Payload = decode(format!(r#"{{"binary":"{input}"}}"#).as_bytes()).unwrap();
            let want = Bytes::from_static(b"\xfb\xff");
            assert_eq!(p.body, Some(pb::payload::Body::Binary(want)), "{input}");
        }
    }

    #[test]
    fn statuses_map_to_http() {
        let cases = [
            (Status::invalid_argument("x"), 400, "invalid_argument"),
            (Status::failed_precondition("x"), 400, "failed_precondition"),
            (Status::unauthenticated("x"), 401, "unauthenticated"),
            (Status::not_found("x"), 404, "not_found"),
            (Status::resource_exhausted("x"), 429, "resource_exhausted"),
            (Status::unavailable("x"), 503, "unavailable"),
            (Status::internal("x"), 500, "internal"),
            (Status::deadline_exceeded("x"), 500, "deadline_exceeded"),
        ];
        for (status, http, code) in cases {
            let r = status_rejection(&status);
            assert_eq!(
                (r.status.as_u16(), r.code, r.message.as_str()),
                (http, code, "x")
            );
            let retry_after = r.header(&http::header::RETRY_AFTER);
            assert_eq!(
                retry_after.is_some(),
                http == 503,
                "{code}: {retry_after:?}"
            );
        }
    }
}
