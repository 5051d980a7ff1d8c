#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicUsize, Ordering};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http::StatusCode;
use jsonwebtoken::{EncodingKey, Header};
use serde_json::{Value, json};

use super::*;
use crate::auth::{Authenticator, Grants, JwtAlgorithm, MintKey, mint, public_jwk};

const RSA1: &str = include_str!("../../../../../tests/fixtures/jwks/rsa1.key.pem");
const RSA1_PUB: &str = include_str!("../../../../../tests/fixtures/jwks/rsa1.pub.pem");
const RSA2: &str = include_str!("../../../../../tests/fixtures/jwks/rsa2.key.pem");
const RSA1024: &str = include_str!("../../../../../tests/fixtures/jwks/rsa1024.key.pem");
const EC: &str = include_str!("../../../../../tests/fixtures/jwks/ec.key.pem");
const ED: &str = include_str!("../../../../../tests/fixtures/jwks/ed25519.key.pem");

fn jwk(alg: JwtAlgorithm, pem: &str, kid: Option<&str>) -> Value {
    public_jwk(alg, pem.as_bytes(), kid).unwrap()
}

fn set(keys: &[Value]) -> KeySet {
    KeySet::parse(json!({ "keys": keys }).to_string().as_bytes()).unwrap()
}

fn token(alg: JwtAlgorithm, pem: &str, kid: Option<&str>) -> String {
    let key = MintKey {
        algorithm: alg,
        key: pem.as_bytes(),
        kid,
    };
    mint(
        &key,
        "alice",
        Duration::from_secs(600),
        Grants::default(),
        None,
        None,
    )
    .unwrap()
}

fn verifier(keys: &Arc<JwksKeys>) -> JwksVerifier {
    JwksVerifier::new(keys.clone(), &ClaimChecks::default())
}

fn with(keys: &[Value]) -> (Arc<JwksKeys>, JwksVerifier) {
    let store = JwksKeys::new();
    store.install(set(keys));
    let v = verifier(&store);
    (store, v)
}

async fn refused(v: &JwksVerifier, token: &str) {
    let r = v.verify(token).await.unwrap_err();
    assert_eq!(
        (r.status, r.code),
        (StatusCode::UNAUTHORIZED, "invalid_token")
    );
}

#[test]
fn key_algorithms_come_from_the_key_type() {
    let s = set(&[
        jwk(JwtAlgorithm::RS256, RSA1, Some("r")),
        jwk(JwtAlgorithm::ES256, EC, Some("e")),
        jwk(JwtAlgorithm::EdDSA, ED, Some("d")),
    ]);
    let algs: Vec<_> = s.keys.iter().map(|k| k.algorithm).collect();
    assert_eq!(algs, [Algorithm::RS256, Algorithm::ES256, Algorithm::EdDSA]);
    // Without `alg` members the same keys get the same algorithms.
    let mut bare = jwk(JwtAlgorithm::ES256, EC, Some("e"));
    bare.as_object_mut().unwrap().remove("alg");
    bare.as_object_mut().unwrap().remove("use");
    assert_eq!(set(&[bare]).keys[0].algorithm, Algorithm::ES256);
}

#[test]
fn unusable_keys_are_skipped_and_an_empty_result_is_an_error() {
    let mut enc = jwk(JwtAlgorithm::RS256, RSA2, Some("enc"));
    enc["use"] = json!("enc");
    let mut wrong_alg = jwk(JwtAlgorithm::RS256, RSA2, Some("ps"));
    wrong_alg["alg"] = json!("PS256");
    let mut es_marked_on_rsa = jwk(JwtAlgorithm::RS256, RSA2, Some("x"));
    es_marked_on_rsa["alg"] = json!("ES256");
    let mut no_verify = jwk(JwtAlgorithm::EdDSA, ED, Some("ops"));
    no_verify["key_ops"] = json!(["encrypt"]);
    let oct = json!({ "kty": "oct", "kid": "hs", "k": URL_SAFE_NO_PAD.encode(b"secret") });
    let small = jwk(JwtAlgorithm::RS256, RSA1024, Some("small"));
    let p384 = json!({ "kty": "EC", "crv": "P-384", "kid": "p384", "x": "AA", "y": "AA" });
    let junk = json!({ "kty": "RSA", "kid": "junk" });
    let skipped = [
        enc,
        wrong_alg,
        es_marked_on_rsa,
        no_verify,
        oct,
        small,
        p384,
        junk,
    ];
    let err = KeySet::parse(json!({ "keys": skipped }).to_string().as_bytes()).unwrap_err();
    let JwksError::NoUsableKey(why) = &err else {
        panic!("{err}")
    };
    for kid in ["enc", "ps", "\"x\"", "ops", "hs", "small", "p384", "junk"] {
        assert!(why.contains(kid), "{kid} not named in: {why}");
    }
    // One good key among them is enough; duplicates of a kid keep the first.
    let mut keys = skipped.to_vec();
    keys.push(jwk(JwtAlgorithm::RS256, RSA1, Some("good")));
    keys.push(jwk(JwtAlgorithm::ES256, EC, Some("good")));
    let s = set(&keys);
    assert_eq!(s.kids().collect::<Vec<_>>(), [Some("good")]);
    assert_eq!(s.keys[0].algorithm, Algorithm::RS256);

    for bad in [
        &b"not json"[..],
        b"{}",
        b"{\"keys\":{}}",
        b"[]",
        b"{\"keys\":[]}",
    ] {
        assert!(
            KeySet::parse(bad).is_err(),
            "{}",
            String::from_utf8_lossy(bad)
        );
    }
}

#[tokio::test]
async fn each_algorithm_verifies_with_its_key() {
    let (_, v) = with(&[
        jwk(JwtAlgorithm::RS256, RSA1, Some("r")),
        jwk(JwtAlgorithm::ES256, EC, Some("e")),
        jwk(JwtAlgorithm::EdDSA, ED, Some("d")),
    ]);
    for (alg, pem, kid) in [
        (JwtAlgorithm::RS256, RSA1, "r"),
        (JwtAlgorithm::ES256, EC, "e"),
        (JwtAlgorithm::EdDSA, ED, "d"),
    ] {
        let id = v.verify(&token(alg, pem, Some(kid))).await.unwrap();
        assert_eq!(id.user_id, "alice", "{alg}");
    }
    // A key signed by another key under a known kid fails its signature.
    refused(&v, &token(JwtAlgorithm::RS256, RSA2, Some("r"))).await;
}

#[tokio::test]
async fn alg_confusion_is_refused() {
    let (_, v) = with(&[
        jwk(JwtAlgorithm::RS256, RSA1, Some("r")),
        jwk(JwtAlgorithm::ES256, EC, Some("e")),
    ]);
    // alg: none, with and without a signature part.
    let header = URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT","kid":"r"}"#);
    let payload = URL_SAFE_NO_PAD.encode(json!({"sub":"alice","exp":u64::MAX / 2}).to_string());
    refused(&v, &format!("{header}.{payload}.")).await;
    refused(&v, &format!("{header}.{payload}")).await;
    // HS256 signed with the RSA public key (as PEM text) under the RSA key's kid.
    let mut h = Header::new(Algorithm::HS256);
    h.kid = Some("r".to_owned());
    let claims = json!({"sub":"alice","exp":u64::MAX / 2});
    let confused =
        jsonwebtoken::encode(&h, &claims, &EncodingKey::from_secret(RSA1_PUB.as_bytes())).unwrap();
    refused(&v, &confused).await;
    // An alg that does not fit the key named: ES256 under the RSA kid, RS256 under the EC.
    refused(&v, &token(JwtAlgorithm::ES256, EC, Some("r"))).await;
    refused(&v, &token(JwtAlgorithm::RS256, RSA1, Some("e"))).await;
    // Nothing of that asked for a refetch.
    assert!(v.keys.gate.lock().last_asked.is_none());
}

#[tokio::test]
async fn a_token_without_kid_needs_a_one_key_set() {
    let (_, one) = with(&[jwk(JwtAlgorithm::RS256, RSA1, Some("r"))]);
    assert!(
        one.verify(&token(JwtAlgorithm::RS256, RSA1, None))
            .await
            .is_ok()
    );
    let (_, two) = with(&[
        jwk(JwtAlgorithm::RS256, RSA1, Some("r")),
        jwk(JwtAlgorithm::RS256, RSA2, Some("r2")),
    ]);
    refused(&two, &token(JwtAlgorithm::RS256, RSA1, None)).await;
    assert!(
        two.keys.gate.lock().last_asked.is_none(),
        "no refetch for a missing kid"
    );
}

#[tokio::test]
async fn no_key_set_yet_is_auth_unavailable() {
    let store = JwksKeys::new();
    let auth = Authenticator::Jwks(Box::new(verifier(&store)));
    let t = token(JwtAlgorithm::RS256, RSA1, Some("r"));
    let r = auth.verify_token(&t).await.unwrap().unwrap_err();
    assert_eq!(
        (r.status, r.code),
        (StatusCode::SERVICE_UNAVAILABLE, "auth_unavailable")
    );
    assert!(r.header(&http::header::RETRY_AFTER).is_some());
    // A forged alg is refused as such even then.
    let r = auth
        .verify_token(&format!(
            "{}.e30.",
            URL_SAFE_NO_PAD.encode(r#"{"alg":"none"}"#)
        ))
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(r.code, "invalid_token");

    store.install(set(&[jwk(JwtAlgorithm::RS256, RSA1, Some("r"))]));
    let parts = http::Request::get("/ws")
        .header("authorization", format!("Bearer {t}"))
        .body(())
        .unwrap()
        .into_parts()
        .0;
    assert_eq!(auth.authenticate(&parts).await.unwrap().user_id, "alice");
}

/// A stand-in for the server's fetcher: serves `next` on every refetch asked for.
fn fake_fetcher(store: Arc<JwksKeys>, next: Vec<Value>, fetches: Arc<AtomicUsize>) {
    tokio::spawn(async move {
        loop {
            store.refetch_wanted().await;
            fetches.fetch_add(1, Ordering::SeqCst);
            store.fetch_started();
            tokio::time::sleep(Duration::from_millis(50)).await;
            store.fetch_finished(Some(set(&next)));
        }
    });
}

#[tokio::test]
async fn an_unknown_kid_waits_for_one_refetch_and_floods_do_not_refetch() {
    let (store, v) = with(&[jwk(JwtAlgorithm::RS256, RSA1, Some("k1"))]);
    let fetches = Arc::new(AtomicUsize::new(0));
    fake_fetcher(
        store.clone(),
        vec![
            jwk(JwtAlgorithm::RS256, RSA1, Some("k1")),
            jwk(JwtAlgorithm::ES256, EC, Some("k2")),
        ],
        fetches.clone(),
    );
    // A new key, not in the set yet: the handshake waits for the refetch and passes.
    let id = v
        .verify(&token(JwtAlgorithm::ES256, EC, Some("k2")))
        .await
        .unwrap();
    assert_eq!(id.user_id, "alice");
    assert_eq!(fetches.load(Ordering::SeqCst), 1);

    // Made-up kids within the next 10 s: refused at once, no fetch.
    // (A real token's payload and signature under made-up headers: the kid is unknown,
    // so the signature is never looked at, and debug-build RSA signing is slow.)
    let real = token(JwtAlgorithm::RS256, RSA1, Some("k1"));
    let rest = real.split_once('.').unwrap().1;
    let started = Instant::now();
    for i in 0..1000 {
        let header = URL_SAFE_NO_PAD.encode(format!(r#"{{"alg":"RS256","kid":"fake-{i}"}}"#));
        refused(&v, &format!("{header}.{rest}")).await;
    }
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(fetches.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn concurrent_unknown_kids_share_the_fetch_in_flight() {
    let (store, v) = with(&[jwk(JwtAlgorithm::RS256, RSA1, Some("k1"))]);
    let fetches = Arc::new(AtomicUsize::new(0));
    fake_fetcher(
        store.clone(),
        vec![jwk(JwtAlgorithm::RS256, RSA2, Some("k2"))],
        fetches.clone(),
    );
    let t = token(JwtAlgorithm::RS256, RSA2, Some("k2"));
    let v = Arc::new(v);
    let waits: Vec<_> = (0..20)
        .map(|_| {
            let (v, t) = (v.clone(), t.clone());
            tokio::spawn(async move { v.verify(&t).await.map(|id| id.user_id) })
        })
        .collect();
    for w in waits {
        assert_eq!(w.await.unwrap().unwrap(), "alice");
    }
    assert_eq!(fetches.load(Ordering::SeqCst), 1);
    // Key 1 is gone from the new set: refused.
    refused(&v, &token(JwtAlgorithm::RS256, RSA1, Some("k1"))).await;
}

#[tokio::test(start_paused = true)]
async fn an_unknown_kid_waits_at_most_a_second() {
    let (_store, v) = with(&[jwk(JwtAlgorithm::RS256, RSA1, Some("k1"))]);
    // Nobody fetches: the wait ends at the bound.
    let started = tokio::time::Instant::now();
    refused(&v, &token(JwtAlgorithm::RS256, RSA2, Some("k2"))).await;
    assert_eq!(started.elapsed(), UNKNOWN_KID_WAIT);
}

#[tokio::test]
async fn a_failed_fetch_keeps_the_last_good_set() {
    let (store, v) = with(&[jwk(JwtAlgorithm::RS256, RSA1, Some("k1"))]);
    store.fetch_started();
    store.fetch_finished(None);
    assert!(
        v.verify(&token(JwtAlgorithm::RS256, RSA1, Some("k1")))
            .await
            .is_ok()
    );
    assert_eq!(store.current().unwrap().len(), 1);
    assert!(store.age().unwrap() < Duration::from_secs(5));
}
