//! The connect proxy's decisions with a scripted backend: what is forwarded, how answers
//! are read, what is cached.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicUsize, Ordering};

use serde_json::json;

use super::*;

/// A backend that answers from a script and records what it was sent.
struct Scripted {
    reply: Mutex<ProxyReply>,
    calls: AtomicUsize,
    bodies: Mutex<Vec<serde_json::Value>>,
    outcomes: Mutex<Vec<ProxyOutcome>>,
}

impl Scripted {
    fn new(reply: ProxyReply) -> Arc<Self> {
        Arc::new(Self {
            reply: Mutex::new(reply),
            calls: AtomicUsize::new(0),
            bodies: Mutex::new(Vec::new()),
            outcomes: Mutex::new(Vec::new()),
        })
    }

    fn answering(answer: serde_json::Value) -> Arc<Self> {
        Self::new(ProxyReply::Answer(answer.to_string().into_bytes()))
    }
}

#[async_trait]
impl ConnectProxy for Scripted {
    async fn call(&self, body: Vec<u8>) -> ProxyReply {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.bodies
            .lock()
            .push(serde_json::from_slice(&body).unwrap());
        self.reply.lock().clone()
    }

    fn record(&self, outcome: ProxyOutcome) {
        self.outcomes.lock().push(outcome);
    }
}

fn now_s() -> u64 {
    crate::clock::now_ms() / 1000
}

fn verifier(backend: &Arc<Scripted>, ttl: Duration) -> ProxyVerifier {
    ProxyVerifier::new(
        vec![HeaderName::from_static("cookie")],
        ttl,
        backend.clone(),
    )
}

fn parts(uri: &str, cookie: Option<&str>) -> Parts {
    let mut builder = http::Request::get(uri)
        .header("authorization", "Bearer not-forwarded")
        .header("x-secret", "not-forwarded");
    if let Some(cookie) = cookie {
        builder = builder.header("cookie", cookie);
    }
    let (mut parts, ()) = builder.body(()).unwrap().into_parts();
    parts
        .extensions
        .insert(ClientAddr("203.0.113.9".parse().unwrap()));
    parts
}

async fn verdict(v: &ProxyVerifier, p: &Parts) -> Result<Identity, Rejection> {
    v.authenticate(p).await
}

#[tokio::test]
async fn forwards_only_the_allowed_headers_the_query_and_the_address() {
    let backend = Scripted::answering(json!({"user_id": "alice", "topics": ["chat.*"]}));
    let v = verifier(&backend, Duration::ZERO);
    let mut p = parts("/ws?room=1&x=%20", Some("sid=abc"));
    p.headers.append("cookie", "second=2".parse().unwrap());
    let id = verdict(&v, &p).await.unwrap();
    assert_eq!(id.user_id, "alice");
    assert!(id.topics.allows("chat.1") && !id.topics.allows("news"));
    assert_eq!(id.publish, TopicPolicy::Patterns(vec![]));
    assert_eq!(id.expires_at, None);
    let bodies = backend.bodies.lock();
    assert_eq!(
        bodies[0],
        json!({
            "headers": {"cookie": ["sid=abc", "second=2"]},
            "query": "room=1&x=%20",
            "remote_addr": "203.0.113.9",
        })
    );
    assert_eq!(*backend.outcomes.lock(), vec![ProxyOutcome::Accepted]);
}

#[tokio::test]
async fn absent_headers_and_query_are_empty() {
    let backend = Scripted::answering(json!({"user_id": "u"}));
    let v = verifier(&backend, Duration::ZERO);
    verdict(&v, &parts("/ws", None)).await.unwrap();
    assert_eq!(
        backend.bodies.lock()[0],
        json!({"headers": {}, "query": "", "remote_addr": "203.0.113.9"})
    );
}

#[tokio::test]
async fn refusals_pass_their_status_on() {
    for status in [StatusCode::UNAUTHORIZED, StatusCode::FORBIDDEN] {
        let backend = Scripted::new(ProxyReply::Refused(status));
        let r = verdict(&verifier(&backend, Duration::ZERO), &parts("/ws", None))
            .await
            .unwrap_err();
        assert_eq!((r.status, r.code), (status, "proxy_refused"));
        assert_eq!(*backend.outcomes.lock(), vec![ProxyOutcome::Refused]);
    }
    // Any other "refusal" is a backend fault.
    let backend = Scripted::new(ProxyReply::Refused(StatusCode::NOT_FOUND));
    let r = verdict(&verifier(&backend, Duration::ZERO), &parts("/ws", None))
        .await
        .unwrap_err();
    assert_eq!(
        (r.status, r.code),
        (StatusCode::SERVICE_UNAVAILABLE, "auth_unavailable")
    );
}

#[tokio::test]
async fn unusable_answers_are_unavailable() {
    let past = now_s() - 10;
    let cases = [
        ProxyReply::Unavailable("connection refused".into()),
        ProxyReply::Answer(b"not json".to_vec()),
        ProxyReply::Answer(b"{}".to_vec()),
        ProxyReply::Answer(json!({"user_id": ""}).to_string().into_bytes()),
        ProxyReply::Answer(json!({"user_id": "a\nb"}).to_string().into_bytes()),
        ProxyReply::Answer(json!({"user_id": 7}).to_string().into_bytes()),
        ProxyReply::Answer(
            json!({"user_id": "u", "topics": ["bad topic"]})
                .to_string()
                .into_bytes(),
        ),
        ProxyReply::Answer(
            json!({"user_id": "u", "publish": ["a.*.b*"]})
                .to_string()
                .into_bytes(),
        ),
        ProxyReply::Answer(
            json!({"user_id": "u", "expires_at": past})
                .to_string()
                .into_bytes(),
        ),
        ProxyReply::Answer(
            json!({"user_id": "u", "expires_at": "soon"})
                .to_string()
                .into_bytes(),
        ),
        ProxyReply::Answer(vec![b' '; MAX_ANSWER_BYTES + 1]),
    ];
    for reply in cases {
        let backend = Scripted::new(reply.clone());
        let r = verdict(
            &verifier(&backend, Duration::from_secs(60)),
            &parts("/ws", None),
        )
        .await
        .unwrap_err();
        assert_eq!(
            (r.status, r.code),
            (StatusCode::SERVICE_UNAVAILABLE, "auth_unavailable"),
            "{reply:?}"
        );
        assert_eq!(r.header(&http::header::RETRY_AFTER).unwrap(), "5");
        assert_eq!(*backend.outcomes.lock(), vec![ProxyOutcome::Unavailable]);
    }
}

#[tokio::test]
async fn expires_at_and_publish_are_read() {
    let at = now_s() + 120;
    let backend = Scripted::answering(
        json!({"user_id": "u", "topics": ["*"], "publish": ["out"], "expires_at": at}),
    );
    let id = verdict(&verifier(&backend, Duration::ZERO), &parts("/ws", None))
        .await
        .unwrap();
    assert_eq!(id.expires_at, Some(at));
    assert!(id.publish.allows("out") && !id.publish.allows("in"));
    assert_eq!(id.token_id, None);
}

#[tokio::test]
async fn the_cache_keeps_accepted_answers_per_credentials() {
    let backend = Scripted::answering(json!({"user_id": "u"}));
    let v = verifier(&backend, Duration::from_secs(60));
    for _ in 0..3 {
        verdict(&v, &parts("/ws", Some("sid=1"))).await.unwrap();
    }
    assert_eq!(backend.calls.load(Ordering::SeqCst), 1);
    // Another cookie, another query or another address is another key.
    verdict(&v, &parts("/ws", Some("sid=2"))).await.unwrap();
    verdict(&v, &parts("/ws?a=1", Some("sid=1"))).await.unwrap();
    let mut elsewhere = parts("/ws", Some("sid=1"));
    elsewhere
        .extensions
        .insert(ClientAddr("198.51.100.1".parse().unwrap()));
    verdict(&v, &elsewhere).await.unwrap();
    assert_eq!(backend.calls.load(Ordering::SeqCst), 4);
    assert_eq!(v.cached(), 4);
    // A header that is not forwarded does not split the cache.
    let mut other = parts("/ws", Some("sid=1"));
    other
        .headers
        .insert("x-secret", "different".parse().unwrap());
    verdict(&v, &other).await.unwrap();
    assert_eq!(backend.calls.load(Ordering::SeqCst), 4);
    assert_eq!(
        backend
            .outcomes
            .lock()
            .iter()
            .filter(|o| **o == ProxyOutcome::Cached)
            .count(),
        3
    );
}

#[tokio::test]
async fn refusals_and_failures_are_not_cached_and_no_cache_means_every_call() {
    let backend = Scripted::new(ProxyReply::Refused(StatusCode::UNAUTHORIZED));
    let v = verifier(&backend, Duration::from_secs(60));
    for _ in 0..2 {
        verdict(&v, &parts("/ws", Some("sid=1"))).await.unwrap_err();
    }
    assert_eq!(backend.calls.load(Ordering::SeqCst), 2);
    assert_eq!(v.cached(), 0);
    // Logged in now: the next handshake asks again and is let in.
    *backend.reply.lock() = ProxyReply::Answer(json!({"user_id": "u"}).to_string().into_bytes());
    verdict(&v, &parts("/ws", Some("sid=1"))).await.unwrap();

    let backend = Scripted::answering(json!({"user_id": "u"}));
    let v = verifier(&backend, Duration::ZERO);
    for _ in 0..2 {
        verdict(&v, &parts("/ws", Some("sid=1"))).await.unwrap();
    }
    assert_eq!(backend.calls.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn the_cache_never_outlives_the_answer_nor_holds_raw_credentials() {
    // An answer expiring in 1 s is cached for 1 s at most, even with a long TTL.
    let backend = Scripted::answering(json!({"user_id": "u", "expires_at": now_s() + 1}));
    let v = verifier(&backend, Duration::from_secs(3600));
    verdict(&v, &parts("/ws", Some("sid=secret-cookie")))
        .await
        .unwrap();
    let entries = v.cache.as_ref().unwrap().entries.lock();
    let until = entries.values().next().unwrap().1;
    assert!(until <= Instant::now() + Duration::from_secs(1));
    // Keys are digests: the cookie is nowhere in the cache.
    assert!(
        entries
            .keys()
            .all(|k| !k.windows(6).any(|w| w == b"secret"))
    );
}

#[test]
fn the_cache_is_bounded() {
    let cache = ProxyCache {
        ttl: Duration::from_secs(60),
        entries: Mutex::new(HashMap::new()),
    };
    let id = Identity {
        user_id: "u".into(),
        topics: TopicPolicy::Patterns(vec![]),
        publish: TopicPolicy::Patterns(vec![]),
        expires_at: None,
        token_id: None,
    };
    for i in 0..(MAX_CACHE_ENTRIES + 50) {
        let key: [u8; 32] = Sha256::digest(i.to_le_bytes()).into();
        cache.put(key, &id, now_s());
    }
    assert_eq!(cache.len(), MAX_CACHE_ENTRIES);
}

#[tokio::test]
async fn a_missing_client_address_fails_closed() {
    let backend = Scripted::answering(json!({"user_id": "u"}));
    let v = verifier(&backend, Duration::ZERO);
    let (p, ()) = http::Request::get("/ws").body(()).unwrap().into_parts();
    let r = verdict(&v, &p).await.unwrap_err();
    assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(backend.calls.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn the_authenticator_routes_to_the_backend_and_has_no_token_to_refresh() {
    let backend = Scripted::answering(json!({"user_id": "via-proxy"}));
    let auth = super::super::Authenticator::Proxy(Box::new(verifier(&backend, Duration::ZERO)));
    let id = auth
        .authenticate(&parts("/ws", Some("sid=1")))
        .await
        .unwrap();
    assert_eq!(id.user_id, "via-proxy");
    assert!(auth.verify_token("any.token.here").await.is_none());
    assert_eq!(backend.calls.load(Ordering::SeqCst), 1);
}
