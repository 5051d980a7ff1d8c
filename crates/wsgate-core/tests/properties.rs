//! Property tests over the surfaces the fuzz targets in `fuzz/` hammer (see
//! `docs/fuzzing.md`): the client-protocol decoder, the preflight checks and
//! authentication. They run in the normal suite with proptest's default 256 cases and
//! complement the unit-level properties inside `preflight.rs` and `auth.rs`: each one here
//! is stated against an independent oracle, through the public API only.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use http::header::{HeaderMap, HeaderValue};
use http::request::Parts;
use http::{Request, StatusCode};
use ipnet::IpNet;
use proptest::prelude::*;
use serde_json::{Value, json};
use wsgate_core::auth::{
    Authenticator, JwtAlgorithm, JwtConfig, JwtKey, TopicPolicy, mint_hs256, valid_topic,
    valid_user_id,
};
use wsgate_core::preflight::{self, ECHO_LIMIT, HostPolicy, OriginPolicy, check_ws_key, client_ip};
use wsgate_core::protocol::{
    ClientOp, OutFrame, RawJson, Reply, RequestId, decode_client, encode_reply,
};

const SECRET: &[u8] = b"properties-secret-that-is-long-enough";

fn handshake(uri: &str) -> Parts {
    Request::get(uri)
        .header("host", "gw.example.com")
        .header("upgrade", "websocket")
        .header("connection", "Upgrade")
        .header("sec-websocket-version", "13")
        .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
        .body(())
        .unwrap()
        .into_parts()
        .0
}

fn with_header(name: &'static str, value: &[u8]) -> Option<Parts> {
    let value = HeaderValue::from_bytes(value).ok()?;
    let mut parts = handshake("/ws");
    parts.headers.insert(name, value);
    Some(parts)
}

fn reply_json(frame: &OutFrame) -> Value {
    match frame {
        OutFrame::Text(t) => serde_json::from_str(t.as_str()).unwrap(),
        OutFrame::Binary(_) => panic!("replies are text frames"),
    }
}

/// Static keys never wait: their future is ready at its first poll.
trait AuthenticateNow {
    fn authenticate_now(
        &self,
        parts: &Parts,
    ) -> Result<wsgate_core::auth::Identity, wsgate_core::preflight::Rejection>;
}

impl AuthenticateNow for Authenticator {
    fn authenticate_now(
        &self,
        parts: &Parts,
    ) -> Result<wsgate_core::auth::Identity, wsgate_core::preflight::Rejection> {
        let mut future = std::pin::pin!(self.authenticate(parts));
        match future
            .as_mut()
            .poll(&mut std::task::Context::from_waker(std::task::Waker::noop()))
        {
            std::task::Poll::Ready(verdict) => verdict,
            std::task::Poll::Pending => panic!("a static key waited"),
        }
    }
}

fn hs256() -> Authenticator {
    Authenticator::jwt(JwtConfig {
        algorithm: JwtAlgorithm::HS256,
        key: JwtKey::Secret(SECRET.to_vec()),
        issuer: None,
        audience: None,
        leeway: Duration::from_secs(30),
    })
    .unwrap()
}

/// Percent-encodes every byte that is not unreserved (RFC 3986).
fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// Valid topic names: 1..=200 bytes of `[A-Za-z0-9._:-]`.
fn topic() -> impl Strategy<Value = String> {
    "[A-Za-z0-9._:-]{1,40}"
}

/// A request id as a client may send it.
fn request_id() -> impl Strategy<Value = Option<Value>> {
    prop_oneof![
        Just(None),
        "\\PC{0,128}".prop_filter_map("at most 128 bytes", |s| {
            (s.len() <= 128).then_some(Some(Value::String(s)))
        }),
        any::<i64>().prop_map(|n| Some(json!(n))),
        any::<u64>().prop_map(|n| Some(json!(n))),
    ]
}

/// A DNS label.
fn label() -> impl Strategy<Value = String> {
    "[a-z0-9]([a-z0-9-]{0,8}[a-z0-9])?"
}

proptest! {
    // ---- client protocol -------------------------------------------------------------

    #[test]
    fn decode_client_never_panics_and_only_answers_bad_request(text in "\\PC{0,200}") {
        if let Err(e) = decode_client(&text) {
            prop_assert_eq!(e.code, "bad_request");
            let reply = reply_json(&encode_reply(
                &Reply::Error { code: e.code, message: e.message.clone() },
                e.id.as_ref(),
            ));
            prop_assert_eq!(&reply["op"], "error");
        }
    }

    #[test]
    fn decode_client_never_panics_on_json_shaped_noise(
        op in prop::sample::select(vec!["subscribe", "unsubscribe", "ping", "Ping", "", "x"]),
        key in prop::sample::select(vec!["topic", "id", "op", "Topic", "data"]),
        value in prop_oneof![
            Just(json!(null)), Just(json!(true)), any::<f64>().prop_map(|f| json!(f)),
            "\\PC{0,40}".prop_map(Value::String), Just(json!([1, {"a": []}])),
        ],
    ) {
        let mut frame = json!({ "op": op });
        frame[key] = value;
        let text = frame.to_string();
        match decode_client(&text) {
            Ok(req) => {
                prop_assert!(matches!(op, "subscribe" | "unsubscribe" | "ping") || key == "op");
                if let ClientOp::Subscribe { topic, .. } | ClientOp::Unsubscribe { topic } = &req.op {
                    prop_assert!(valid_topic(topic));
                }
            }
            Err(e) => prop_assert_eq!(e.code, "bad_request"),
        }
    }

    #[test]
    fn ops_with_ids_round_trip_and_replies_echo_the_id(
        kind in 0..3u8,
        topic in topic(),
        id in request_id(),
    ) {
        let op = ["subscribe", "unsubscribe", "ping"][usize::from(kind)];
        let mut frame = json!({ "op": op });
        if kind < 2 {
            frame["topic"] = json!(topic);
        }
        if let Some(id) = &id {
            frame["id"] = id.clone();
        }
        let req = decode_client(&frame.to_string()).unwrap();
        let expected = match kind {
            0 => ClientOp::Subscribe { topic: topic.clone(), since: None },
            1 => ClientOp::Unsubscribe { topic: topic.clone() },
            _ => ClientOp::Ping,
        };
        prop_assert_eq!(&req.op, &expected);
        let reply = match &req.op {
            ClientOp::Subscribe { topic, .. } => Reply::Subscribed(topic.clone()),
            ClientOp::Unsubscribe { topic } => Reply::Unsubscribed(topic.clone()),
            ClientOp::Ping => Reply::Pong,
            ClientOp::Rpc { .. } | ClientOp::Publish { .. } | ClientOp::Refresh { .. } => {
                unreachable!("only subscribe, unsubscribe and ping are sent")
            }
        };
        let out = reply_json(&encode_reply(&reply, req.id.as_ref()));
        match &id {
            None => prop_assert!(out.get("id").is_none()),
            Some(id) => prop_assert_eq!(&out["id"], id),
        }
    }

    #[test]
    fn rpc_ops_keep_method_and_data_and_need_an_id(
        method in "[A-Za-z0-9._:/-]{1,128}",
        data in prop_oneof![
            Just(Value::Null),
            any::<i64>().prop_map(|n| json!(n)),
            "[ -~]{0,40}".prop_map(|s| json!(s)),
            ("[a-z]{1,8}", any::<bool>()).prop_map(|(k, b)| json!({ k: [b, null] })),
        ],
        id in request_id(),
    ) {
        let mut frame = json!({ "op": "rpc", "method": method, "data": data });
        if let Some(id) = &id {
            frame["id"] = id.clone();
        }
        match (decode_client(&frame.to_string()), &id) {
            (Ok(req), Some(id)) => {
                let raw = RawJson::parse(&data.to_string()).unwrap();
                prop_assert_eq!(&req.op, &ClientOp::Rpc { method: method.clone(), data: raw });
                let reply = Reply::Error { code: "rpc_failed", message: "no".into() };
                let out = reply_json(&encode_reply(&reply, req.id.as_ref()));
                prop_assert_eq!(&out["id"], id);
            }
            (Err(e), None) => prop_assert_eq!(e.code, "bad_request"),
            (other, id) => prop_assert!(false, "{other:?} for id {id:?}"),
        }
    }

    #[test]
    fn long_or_structured_ids_are_refused_without_echo(
        long in "[a-z]{129,300}",
        structured in prop_oneof![Just(json!(true)), Just(json!([1])), Just(json!({"a": 1}))],
    ) {
        for id in [json!(long), structured] {
            let e = decode_client(&json!({"op": "ping", "id": id}).to_string()).unwrap_err();
            prop_assert_eq!(e.code, "bad_request");
            prop_assert_eq!(e.id, None::<RequestId>);
        }
    }

    #[test]
    fn invalid_topics_are_refused(
        good in topic(),
        bad in "[ /#*\"\\\\\u{e9}\u{0}]",
        at in any::<prop::sample::Index>(),
    ) {
        let mut t = good.clone();
        let pos = at.index(good.len() + 1);
        t.insert_str(pos, &bad);
        let e = decode_client(&json!({"op": "subscribe", "topic": t}).to_string()).unwrap_err();
        prop_assert_eq!(e.code, "bad_request");
        let too_long = "a".repeat(201);
        let frame = json!({"op": "subscribe", "topic": too_long});
        prop_assert!(decode_client(&frame.to_string()).is_err());
    }

    // ---- Sec-WebSocket-Key -----------------------------------------------------------

    /// Independent oracle: 16 bytes are exactly 22 base64 characters, the last of which
    /// carries 2 data bits and 4 zero bits (so it is one of `A Q g w`), then `==`.
    #[test]
    fn key_accepted_iff_base64_of_16_bytes(
        body in "[A-Za-z0-9+/]{19,23}",
        last in prop::sample::select(vec!["A", "Q", "g", "w", "B", "R", "h", "x", "/", ""]),
        pad in prop::sample::select(vec!["", "=", "==", "==="]),
        ws in prop::sample::select(vec!["", " ", "\t"]),
    ) {
        let key = format!("{body}{last}{pad}");
        let expected = key.len() == 24
            && key.ends_with("==")
            && matches!(key.as_bytes()[21], b'A' | b'Q' | b'g' | b'w');
        let parts = with_header("sec-websocket-key", format!("{ws}{key}{ws}").as_bytes()).unwrap();
        let got = check_ws_key(&parts);
        prop_assert_eq!(got.is_ok(), expected, "{:?}", key);
        if expected {
            prop_assert_eq!(STANDARD.decode(&key).unwrap().len(), 16);
        }
    }

    #[test]
    fn preflight_checks_never_panic_nor_echo_much(
        name in prop::sample::select(vec![
            "host", "origin", "upgrade", "connection", "sec-websocket-version",
            "sec-websocket-key", "authorization", "x-forwarded-for",
        ]),
        value in prop::collection::vec(any::<u8>(), 0..400),
    ) {
        let Some(parts) = with_header(name, &value) else { return Ok(()); };
        let host = HostPolicy::new(&["gw.example.com".to_owned()]).unwrap();
        let origin = OriginPolicy::new(&["https://*.example.org".to_owned()], true).unwrap();
        let results = [
            preflight::check_method(&parts),
            preflight::check_http_version(&parts),
            preflight::check_upgrade_header(&parts),
            preflight::check_connection_header(&parts),
            preflight::check_ws_version(&parts),
            check_ws_key(&parts),
            host.check(&parts),
            origin.check(&parts),
            hs256().authenticate_now(&parts).map(|_| ()),
        ];
        for r in results.into_iter().filter_map(Result::err) {
            prop_assert!(r.message.len() <= ECHO_LIMIT * 10 + 200, "{}", r.message);
            let body: Value = serde_json::from_str(&r.json_body()).unwrap();
            prop_assert_eq!(&body["error"], r.code);
        }
    }

    // ---- Host and Origin policies ----------------------------------------------------

    #[test]
    fn host_policy_is_case_insensitive_and_port_exact(
        labels in prop::collection::vec(label(), 1..4),
        port in prop::option::of(1..=65535u16),
        other in 1..=65535u16,
        upper in any::<bool>(),
        dot in any::<bool>(),
    ) {
        let host = labels.join(".");
        let entry = match port { Some(p) => format!("{host}:{p}"), None => host.clone() };
        let policy = HostPolicy::new(&[entry]).unwrap();
        let sent_host = if upper { host.to_ascii_uppercase() } else { host.clone() };
        let sent_host = if dot { format!("{sent_host}.") } else { sent_host };
        let check = |value: &str| {
            let mut p = handshake("/ws");
            p.headers.insert("host", HeaderValue::from_str(value).unwrap());
            policy.check(&p).is_ok()
        };
        let with_port = format!("{sent_host}:{other}");
        prop_assert_eq!(check(&with_port), port.is_none_or(|p| p == other), "{}", with_port);
        prop_assert_eq!(check(&sent_host), port.is_none(), "{}", sent_host);
        // A host that merely ends with the allowed one is someone else.
        prop_assert!(!check(&format!("x{host}")), "see inputs");
        prop_assert!(!check(&format!("a.{host}")), "see inputs");
    }

    #[test]
    fn wildcard_origin_needs_a_dot_boundary(
        domain in prop::collection::vec(label(), 1..3),
        sub in prop::collection::vec(label(), 1..3),
        glue in "[a-z0-9-]{1,6}",
        scheme in prop::sample::select(vec!["http", "https", "ws", "wss"]),
        upper in any::<bool>(),
    ) {
        let domain = domain.join(".");
        let policy = OriginPolicy::new(&[format!("{scheme}://*.{domain}")], false).unwrap();
        let check = |origin: &str| {
            let mut p = handshake("/ws");
            p.headers.insert("origin", HeaderValue::from_str(origin).unwrap());
            policy.check(&p).is_ok()
        };
        let sub = sub.join(".");
        let good = format!("{scheme}://{sub}.{domain}");
        let good = if upper { good.to_ascii_uppercase() } else { good };
        prop_assert!(check(&good), "{}", good);
        // Ends with the domain but without a dot boundary: never.
        prop_assert!(!check(&format!("{scheme}://{glue}{domain}")), "see inputs");
        prop_assert!(!check(&format!("{scheme}://{sub}.{glue}{domain}")), "see inputs");
        prop_assert!(!check(&format!("{scheme}://{sub}-{domain}")), "see inputs");
        // The domain itself, a suffix-extended host, another scheme or port: never.
        prop_assert!(!check(&format!("{scheme}://{domain}")), "see inputs");
        prop_assert!(!check(&format!("{scheme}://{sub}.{domain}.evil.com")), "see inputs");
        let other = if scheme.ends_with('s') { "http" } else { "https" };
        prop_assert!(!check(&format!("{other}://{sub}.{domain}")), "see inputs");
        prop_assert!(!check(&format!("{scheme}://{sub}.{domain}:1")), "see inputs");
    }

    // ---- client_ip ------------------------------------------------------------------

    #[test]
    fn an_untrusted_peer_is_never_overridden(
        peer in any::<[u8; 4]>(),
        xff in "[0-9a-f:., ]{0,80}",
    ) {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let peer_ip = IpAddr::from(peer);
        let mut headers = HeaderMap::new();
        headers.insert("x-forwarded-for", HeaderValue::from_str(&xff).unwrap());
        let got = client_ip(SocketAddr::new(peer_ip, 1), &headers, &trusted);
        if peer[0] != 10 {
            prop_assert_eq!(got, peer_ip);
        } else {
            // A trusted peer yields itself unless it forwarded something.
            prop_assert!(got == peer_ip || !xff.trim().is_empty());
        }
    }

    // ---- authentication -------------------------------------------------------------

    #[test]
    fn user_ids_round_trip_through_the_query(user in "\\PC{1,60}") {
        prop_assume!(valid_user_id(&user));
        let parts = handshake(&format!("/ws?x=1&user={}", percent_encode(&user)));
        let id = Authenticator::None.authenticate_now(&parts).unwrap();
        prop_assert_eq!(id.user_id, user);
        prop_assert_eq!(id.topics, TopicPolicy::Any);
    }

    #[test]
    fn minted_tokens_authenticate_by_header_and_query(
        user in "\\PC{1,60}",
        prefix in "[A-Za-z0-9_:-]{1,8}(\\.[A-Za-z0-9_:-]{1,8}){0,2}",
        rest in topic(),
        sibling in "[A-Za-z0-9_:-]{1,8}",
    ) {
        prop_assume!(valid_user_id(&user));
        let pattern = format!("{prefix}.*");
        let token = mint_hs256(
            SECRET, &user, Duration::from_secs(600), Some(&[pattern]), None, None,
        ).unwrap();
        let auth = hs256();
        let mut by_header = handshake("/ws");
        by_header.headers.insert(
            "authorization",
            HeaderValue::from_str(&format!("Bearer {token}")).unwrap(),
        );
        let by_query = handshake(&format!("/ws?access_token={token}"));
        for parts in [by_header, by_query] {
            let id = auth.authenticate_now(&parts).unwrap();
            prop_assert_eq!(&id.user_id, &user);
            // `p.*` allows `p.x` for every valid x, never `p` itself nor `p` glued to
            // anything without the dot.
            let deeper = format!("{prefix}.{rest}");
            prop_assert!(id.topics.allows(&deeper), "{}", deeper);
            prop_assert!(!id.topics.allows(&prefix));
            prop_assert!(!id.topics.allows(&format!("{prefix}.")), "see inputs");
            prop_assert!(!id.topics.allows(&format!("{prefix}{sibling}")), "see inputs");
        }
        // A token signed with another secret is refused with 401 whatever it says.
        let forged = mint_hs256(
            b"another-secret-of-sufficient-length", &user, Duration::from_secs(600),
            None, None, None,
        ).unwrap();
        let r = auth.authenticate_now(&handshake(&format!("/ws?access_token={forged}"))).unwrap_err();
        prop_assert_eq!((r.status, r.code), (StatusCode::UNAUTHORIZED, "invalid_token"));
    }

    #[test]
    fn exact_and_star_topic_patterns(t in topic(), other in topic()) {
        let exact = TopicPolicy::Patterns(vec![t.clone()]);
        prop_assert!(exact.allows(&t));
        prop_assert_eq!(exact.allows(&other), other == t);
        prop_assert!(TopicPolicy::Patterns(vec!["*".to_owned()]).allows(&other));
        prop_assert!(!TopicPolicy::Patterns(vec![]).allows(&other));
    }
}
