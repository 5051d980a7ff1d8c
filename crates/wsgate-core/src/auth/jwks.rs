//! Verification keys from a JSON Web Key Set (`auth.jwt.jwks_url`): the parsed [`KeySet`],
//! the shared [`JwksKeys`] every handshake reads and a fetcher replaces, and the
//! [`JwksVerifier`] that picks a token's key by `kid`.
//!
//! Nothing here does HTTP: `wsgate-server` fetches the document, hands it to
//! [`KeySet::parse`] and installs the result with [`JwksKeys::install`]. What this module
//! owns is every decision that touches security:
//!
//! - a key's algorithm comes from the key (its `alg`, or its `kty`/`crv`: RSA → RS256,
//!   EC P-256 → ES256, OKP Ed25519 → EdDSA), and a token whose header names another one
//!   is refused, so `alg: none`, HS256 signed with an RSA public key, or ES256 against an
//!   RSA key never reach a signature check; symmetric (`oct`) keys are never loaded;
//! - keys whose `use` is not `sig` (or whose `key_ops` lacks `verify`) are ignored;
//! - a token without `kid` may use the only key of a one-key set, never guess among
//!   several;
//! - an unknown `kid` asks for a refetch at most once per [`UNKNOWN_KID_REFETCH_EVERY`],
//!   and the handshake waits at most [`UNKNOWN_KID_WAIT`] for a fetch in flight, so a
//!   flood of made-up `kid`s is neither a flood of fetches nor of stalled handshakes.

use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::jwk::{
    AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, KeyOperations, PublicKeyUse,
};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use parking_lot::{Mutex, RwLock};
use serde::Deserialize;
use tokio::sync::{Notify, watch};

use super::{ClaimChecks, Identity, identity_from, invalid_token};
use crate::rejection::Rejection;

/// An unknown `kid` triggers at most one refetch per this long.
pub const UNKNOWN_KID_REFETCH_EVERY: Duration = Duration::from_secs(10);

/// How long a handshake with an unknown `kid` waits for a refetch in flight.
pub const UNKNOWN_KID_WAIT: Duration = Duration::from_secs(1);

/// Most keys read from one document; a set is a handful of keys, so more is a mistake or
/// an attack on memory.
pub const MAX_KEYS: usize = 64;

/// Smallest RSA modulus accepted, in bits.
pub const MIN_RSA_BITS: usize = 2048;

/// The algorithms a key set may hold.
const SUPPORTED: [Algorithm; 3] = [Algorithm::RS256, Algorithm::ES256, Algorithm::EdDSA];

/// Why a JWKS document was not installed. The previous key set stays in use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwksError {
    /// Not a JSON object with a `keys` array.
    #[error("not a JWK set: {0}")]
    Malformed(String),
    /// The document holds no key wsgate can verify with.
    #[error("no usable signing key (RS256, ES256 or EdDSA) in the set; skipped: {0}")]
    NoUsableKey(String),
}

/// One verification key of a set.
#[derive(Clone)]
pub struct SetKey {
    kid: Option<String>,
    algorithm: Algorithm,
    key: DecodingKey,
}

impl std::fmt::Debug for SetKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SetKey")
            .field("kid", &self.kid)
            .field("algorithm", &self.algorithm)
            .finish_non_exhaustive()
    }
}

/// The usable keys of one JWKS document.
#[derive(Debug, Clone)]
pub struct KeySet {
    keys: Vec<SetKey>,
}

/// Which key a token names.
enum Selection<'a> {
    Found(&'a SetKey),
    /// A `kid` the set does not hold: maybe a key newer than the set.
    UnknownKid,
    /// No `kid` and several keys: refused rather than tried one after another.
    Ambiguous,
}

#[derive(Deserialize)]
struct Document {
    keys: Vec<serde_json::Value>,
}

impl KeySet {
    /// Parses a JWKS document. Keys that cannot be used are skipped (with a debug log
    /// naming their `kid` and why); a document with none left is an error.
    pub fn parse(json: &[u8]) -> Result<Self, JwksError> {
        let doc: Document =
            serde_json::from_slice(json).map_err(|e| JwksError::Malformed(e.to_string()))?;
        let mut keys: Vec<SetKey> = Vec::new();
        let mut skipped = Vec::new();
        for value in doc.keys.into_iter().take(MAX_KEYS) {
            match usable_key(value) {
                Ok(key) if keys.iter().any(|k| k.kid.is_some() && k.kid == key.kid) => {
                    skipped.push(format!("{}: duplicate kid", kid_label(&key.kid)));
                }
                Ok(key) => keys.push(key),
                Err((kid, why)) => skipped.push(format!("{}: {why}", kid_label(&kid))),
            }
        }
        for why in &skipped {
            tracing::debug!(key = %why, "JWKS key skipped");
        }
        if keys.is_empty() {
            let skipped = if skipped.is_empty() {
                "none (the set is empty)".to_owned()
            } else {
                skipped.join("; ")
            };
            return Err(JwksError::NoUsableKey(skipped));
        }
        Ok(Self { keys })
    }

    /// How many usable keys the set holds (never 0).
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Always false: a set without a usable key is never built.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The `kid`s of the set, in document order (`None` for a key without one).
    pub fn kids(&self) -> impl Iterator<Item = Option<&str>> {
        self.keys.iter().map(|k| k.kid.as_deref())
    }

    fn select(&self, kid: Option<&str>) -> Selection<'_> {
        match kid {
            Some(kid) => self
                .keys
                .iter()
                .find(|k| k.kid.as_deref() == Some(kid))
                .map_or(Selection::UnknownKid, Selection::Found),
            None => match self.keys.as_slice() {
                [only] => Selection::Found(only),
                _ => Selection::Ambiguous,
            },
        }
    }
}

fn kid_label(kid: &Option<String>) -> String {
    match kid {
        Some(kid) => format!("kid {:?}", truncate(kid, 64)),
        None => "a key without kid".to_owned(),
    }
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// The key `value` describes, or its `kid` and why it cannot be used.
fn usable_key(value: serde_json::Value) -> Result<SetKey, (Option<String>, String)> {
    let kid = value
        .get("kid")
        .and_then(serde_json::Value::as_str)
        .map(str::to_owned);
    let fail = |why: String| (kid.clone(), why);
    let jwk: Jwk = serde_json::from_value(value).map_err(|e| fail(format!("not a JWK ({e})")))?;
    let common = &jwk.common;
    if let Some(usage) = &common.public_key_use
        && *usage != PublicKeyUse::Signature
    {
        return Err(fail("use is not \"sig\"".to_owned()));
    }
    if let Some(ops) = &common.key_operations
        && !ops.contains(&KeyOperations::Verify)
    {
        return Err(fail("key_ops lacks \"verify\"".to_owned()));
    }
    let algorithm = match &jwk.algorithm {
        AlgorithmParameters::RSA(rsa) => {
            let bits = URL_SAFE_NO_PAD
                .decode(rsa.n.trim_end_matches('='))
                .map(|n| {
                    let n = n.iter().skip_while(|b| **b == 0).count();
                    n * 8
                })
                .map_err(|_| fail("n is not base64url".to_owned()))?;
            if bits < MIN_RSA_BITS {
                return Err(fail(format!(
                    "RSA key of about {bits} bits; at least {MIN_RSA_BITS} are required"
                )));
            }
            Algorithm::RS256
        }
        AlgorithmParameters::EllipticCurve(ec) if ec.curve == EllipticCurve::P256 => {
            Algorithm::ES256
        }
        AlgorithmParameters::OctetKeyPair(okp) if okp.curve == EllipticCurve::Ed25519 => {
            Algorithm::EdDSA
        }
        AlgorithmParameters::OctetKey(_) => {
            return Err(fail(
                "symmetric (oct) keys are never taken from a key set".to_owned(),
            ));
        }
        _ => return Err(fail("unsupported key type or curve".to_owned())),
    };
    // An `alg` member must agree with the key: an RSA key marked PS256 or RS512 is not
    // a key for RS256, and trusting the member alone would let it choose.
    if let Some(declared) = common.key_algorithm {
        let agrees = matches!(
            (declared, algorithm),
            (KeyAlgorithm::RS256, Algorithm::RS256)
                | (KeyAlgorithm::ES256, Algorithm::ES256)
                | (KeyAlgorithm::EdDSA, Algorithm::EdDSA)
        );
        if !agrees {
            return Err(fail(format!(
                "alg {declared:?} is not supported for this key type (expected {algorithm:?})"
            )));
        }
    }
    let key = DecodingKey::from_jwk(&jwk).map_err(|e| fail(format!("unusable key ({e})")))?;
    Ok(SetKey {
        kid: common.key_id.clone(),
        algorithm,
        key,
    })
}

/// The current key set, shared by the verifier (which reads it on every handshake) and
/// the fetcher (which replaces it), with the unknown-`kid` refetch gate between them.
pub struct JwksKeys {
    current: RwLock<Option<(Arc<KeySet>, Instant)>>,
    gate: Mutex<Gate>,
    /// Wakes the fetcher for a refetch.
    wanted: Notify,
    /// Counts finished fetch attempts, for handshakes waiting on one.
    finished: watch::Sender<u64>,
}

#[derive(Default)]
struct Gate {
    /// When an unknown `kid` last asked for a refetch.
    last_asked: Option<Instant>,
    /// A fetch is running now.
    in_flight: bool,
}

impl std::fmt::Debug for JwksKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwksKeys")
            .field("keys", &self.current().map(|s| s.len()))
            .finish_non_exhaustive()
    }
}

impl Default for JwksKeys {
    fn default() -> Self {
        Self {
            current: RwLock::new(None),
            gate: Mutex::new(Gate::default()),
            wanted: Notify::new(),
            finished: watch::Sender::new(0),
        }
    }
}

impl JwksKeys {
    /// An empty store: every handshake is 503 `auth_unavailable` until a set is installed.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// The key set in use, if one was ever installed.
    pub fn current(&self) -> Option<Arc<KeySet>> {
        self.current.read().as_ref().map(|(set, _)| set.clone())
    }

    /// How long ago the set in use was installed.
    pub fn age(&self) -> Option<Duration> {
        self.current.read().as_ref().map(|(_, at)| at.elapsed())
    }

    /// The fetcher starts a fetch: handshakes with an unknown `kid` wait on it instead
    /// of asking for another.
    pub fn fetch_started(&self) {
        self.gate.lock().in_flight = true;
    }

    /// The fetcher's fetch ended: with a new set to install, or `None` when it failed
    /// (the set in use stays). Wakes the handshakes waiting on it.
    pub fn fetch_finished(&self, set: Option<KeySet>) {
        if let Some(set) = set {
            *self.current.write() = Some((Arc::new(set), Instant::now()));
        }
        self.gate.lock().in_flight = false;
        self.finished.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Installs `set` as a fetch that just succeeded would (tests, static sets).
    pub fn install(&self, set: KeySet) {
        self.fetch_finished(Some(set));
    }

    /// Resolves when a handshake asked for a refetch; the fetcher awaits this between
    /// its timed fetches. A request made while nobody awaits is kept for the next call.
    pub async fn refetch_wanted(&self) {
        self.wanted.notified().await;
    }

    /// For an unknown `kid`: a receiver that changes when the next fetch ends, or `None`
    /// when no fetch runs and one was already asked for within
    /// [`UNKNOWN_KID_REFETCH_EVERY`] (the `kid` is then refused at once).
    fn ask_refetch(&self) -> Option<watch::Receiver<u64>> {
        let mut gate = self.gate.lock();
        // Subscribed under the gate's lock, so a fetch ending after this sees us waiting.
        let rx = self.finished.subscribe();
        if gate.in_flight {
            return Some(rx);
        }
        let now = Instant::now();
        if gate
            .last_asked
            .is_some_and(|at| now.duration_since(at) < UNKNOWN_KID_REFETCH_EVERY)
        {
            return None;
        }
        gate.last_asked = Some(now);
        gate.in_flight = true;
        self.wanted.notify_one();
        Some(rx)
    }
}

/// Verifies tokens against the keys of a [`JwksKeys`].
#[derive(Clone)]
pub struct JwksVerifier {
    keys: Arc<JwksKeys>,
    /// One validation per supported algorithm, built once.
    validations: Vec<(Algorithm, Validation)>,
}

impl std::fmt::Debug for JwksVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwksVerifier")
            .field("keys", &self.keys)
            .finish_non_exhaustive()
    }
}

impl JwksVerifier {
    /// A verifier over `keys` with the claim checks of `claims` (issuer, audience, leeway).
    pub fn new(keys: Arc<JwksKeys>, claims: &ClaimChecks) -> Self {
        let validations = SUPPORTED
            .iter()
            .map(|alg| (*alg, claims.validation(*alg)))
            .collect();
        Self { keys, validations }
    }

    /// The shared key store.
    pub fn keys(&self) -> &Arc<JwksKeys> {
        &self.keys
    }

    /// Verifies `token`: 503 `auth_unavailable` before any key set was fetched, else
    /// `invalid_token` for anything that fails. An unknown `kid` may wait up to
    /// [`UNKNOWN_KID_WAIT`] for a refetch (see the module documentation).
    pub async fn verify(&self, token: &str) -> Result<Identity, Rejection> {
        let header = jsonwebtoken::decode_header(token).map_err(|e| {
            tracing::debug!(reason = %e, "token rejected: unreadable header");
            invalid_token()
        })?;
        // Before any key lookup, so `none`, HS* and the like never cause a refetch.
        if !SUPPORTED.contains(&header.alg) {
            tracing::debug!(alg = ?header.alg, "token rejected: algorithm not accepted");
            return Err(invalid_token());
        }
        let kid = header.kid.as_deref();
        let Some(set) = self.keys.current() else {
            return Err(Rejection::auth_unavailable());
        };
        match self.verify_with(&set, kid, header.alg, token) {
            Err(Verdict::UnknownKid) => {}
            Err(Verdict::Refused) => return Err(invalid_token()),
            Ok(identity) => return Ok(identity),
        }
        let Some(mut finished) = self.keys.ask_refetch() else {
            tracing::debug!("token rejected: unknown kid, refetched recently");
            return Err(invalid_token());
        };
        if tokio::time::timeout(UNKNOWN_KID_WAIT, finished.changed())
            .await
            .is_err()
        {
            tracing::debug!("token rejected: unknown kid, no key set in time");
            return Err(invalid_token());
        }
        let set = self
            .keys
            .current()
            .ok_or_else(Rejection::auth_unavailable)?;
        self.verify_with(&set, kid, header.alg, token).map_err(|_| {
            tracing::debug!("token rejected: unknown kid after a refetch");
            invalid_token()
        })
    }

    fn verify_with(
        &self,
        set: &KeySet,
        kid: Option<&str>,
        alg: Algorithm,
        token: &str,
    ) -> Result<Identity, Verdict> {
        let key = match set.select(kid) {
            Selection::Found(key) => key,
            Selection::UnknownKid => return Err(Verdict::UnknownKid),
            Selection::Ambiguous => {
                tracing::debug!("token rejected: no kid and the key set has several keys");
                return Err(Verdict::Refused);
            }
        };
        if key.algorithm != alg {
            tracing::debug!(token_alg = ?alg, key_alg = ?key.algorithm, "token rejected: alg does not match the key");
            return Err(Verdict::Refused);
        }
        let validation = self
            .validations
            .iter()
            .find(|(a, _)| *a == key.algorithm)
            .map(|(_, v)| v)
            .ok_or(Verdict::Refused)?;
        identity_from(token, &key.key, validation).map_err(|_| Verdict::Refused)
    }
}

enum Verdict {
    UnknownKid,
    Refused,
}

#[cfg(test)]
mod tests;
