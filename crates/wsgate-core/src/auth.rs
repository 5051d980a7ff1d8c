//! Who is connecting: token verification, the resulting [`Identity`], topic permissions,
//! and the helpers that keep tokens out of logs.
//!
//! The preflight's auth step calls [`Authenticator::authenticate`] on the request parts
//! after every cheap check has passed (see the preflight table in `docs/protocol.md`), so a flood is turned away before any
//! signature is verified. Tokens come from `Authorization: Bearer` or, because browsers
//! cannot set headers on a WebSocket, from the `access_token` query parameter; anything
//! that logs a request target must go through [`redact_query`] first.
//!
//! Only the configured algorithm is ever accepted: a token whose header names another
//! one (`none`, or HS256 against an RSA public key — the classic key-confusion attack) is
//! rejected before its signature is looked at. With a JWKS (`crate::jwks`) the algorithm
//! is the one of the key the token's `kid` names, under the same rule.

use std::borrow::Cow;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::header::{self, HeaderValue};
use http::request::Parts;
use http::{StatusCode, Uri};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::rejection::Rejection;
use jwks::JwksVerifier;
use proxy::ProxyVerifier;

pub mod jwks;
pub mod proxy;

/// The query parameter that may carry the token.
pub const TOKEN_QUERY_PARAM: &str = "access_token";

/// The query parameter that names the user when auth is off.
pub const USER_QUERY_PARAM: &str = "user";

/// Longest accepted user id, in bytes.
pub const MAX_USER_ID_BYTES: usize = 256;

/// Longest accepted topic name, in bytes.
pub const MAX_TOPIC_BYTES: usize = 200;

/// Whether `topic` is a valid topic name: 1..=200 bytes of `[A-Za-z0-9._:-]`.
///
/// Used by the client protocol and the gRPC API alike, so a topic that one accepts the
/// other accepts too.
pub fn valid_topic(topic: &str) -> bool {
    !topic.is_empty()
        && topic.len() <= MAX_TOPIC_BYTES
        && topic
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

/// Whether `pattern` is a valid topic pattern: `*`, a valid topic, or a valid topic
/// prefix ending in `.*`.
pub fn valid_pattern(pattern: &str) -> bool {
    pattern == "*" || valid_topic(pattern) || pattern.strip_suffix(".*").is_some_and(valid_topic)
}

/// Whether `id` is a valid user id: 1..=256 bytes without control characters.
pub fn valid_user_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= MAX_USER_ID_BYTES && !id.chars().any(char::is_control)
}

/// A failure to set up verification or to mint a token. Never carries key material.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The key does not fit the algorithm, or could not be parsed.
    #[error("invalid {algorithm} key: {reason}")]
    InvalidKey {
        /// The configured algorithm.
        algorithm: JwtAlgorithm,
        /// What is wrong with the key.
        reason: String,
    },
    /// The user id given to [`mint_hs256`] is not a [valid user id](valid_user_id).
    #[error("invalid user id: must be 1 to {MAX_USER_ID_BYTES} bytes without control characters")]
    InvalidUserId,
    /// Signing failed.
    #[error("cannot sign token")]
    Sign(#[source] jsonwebtoken::errors::Error),
}

/// The signature algorithms wsgate accepts (`auth.jwt.algorithm`); names as in a token
/// header, parsed case-insensitively.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    Serialize,
    Deserialize,
    strum::Display,
    strum::EnumString,
    strum::IntoStaticStr,
    strum::VariantNames,
)]
#[strum(ascii_case_insensitive)]
pub enum JwtAlgorithm {
    /// HMAC-SHA256 with a shared secret (`auth.jwt.secret`).
    HS256,
    /// RSASSA-PKCS1-v1_5 with SHA-256, verified with an RSA public key PEM.
    RS256,
    /// ECDSA P-256 with SHA-256, verified with an EC public key PEM.
    ES256,
    /// Ed25519, verified with an Ed25519 public key PEM.
    EdDSA,
}

impl JwtAlgorithm {
    fn jsonwebtoken(self) -> Algorithm {
        match self {
            JwtAlgorithm::HS256 => Algorithm::HS256,
            JwtAlgorithm::RS256 => Algorithm::RS256,
            JwtAlgorithm::ES256 => Algorithm::ES256,
            JwtAlgorithm::EdDSA => Algorithm::EdDSA,
        }
    }

    /// Whether this algorithm verifies with a public key (RS256, ES256, EdDSA) rather than a
    /// shared secret.
    pub fn uses_public_key(self) -> bool {
        !matches!(self, JwtAlgorithm::HS256)
    }
}

/// The verification key.
#[derive(Clone)]
pub enum JwtKey {
    /// The shared secret for HS256.
    Secret(Vec<u8>),
    /// The contents of a PEM public key file for RS256 or ES256.
    PublicPem(Vec<u8>),
}

impl std::fmt::Debug for JwtKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            JwtKey::Secret(s) => write!(f, "Secret(<{} bytes redacted>)", s.len()),
            JwtKey::PublicPem(p) => write!(f, "PublicPem(<{} bytes>)", p.len()),
        }
    }
}

/// How tokens are verified (`auth.jwt`).
#[derive(Debug, Clone)]
pub struct JwtConfig {
    /// The one algorithm accepted.
    pub algorithm: JwtAlgorithm,
    /// The verification key; its kind must fit the algorithm.
    pub key: JwtKey,
    /// Required `iss`, when set.
    pub issuer: Option<String>,
    /// Required `aud`, when set. When unset, a token that carries an `aud` is rejected
    /// (RFC 7519 §4.1.3: a recipient not named in `aud` must reject the token).
    pub audience: Option<String>,
    /// Clock skew tolerated on `exp` and `nbf`.
    pub leeway: Duration,
}

/// A verifier built once from a [`JwtConfig`].
#[derive(Clone)]
pub struct JwtVerifier {
    algorithm: JwtAlgorithm,
    key: DecodingKey,
    validation: Validation,
}

impl std::fmt::Debug for JwtVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtVerifier")
            .field("algorithm", &self.algorithm)
            .field("issuer", &self.validation.iss)
            .field("audience", &self.validation.aud)
            .field("leeway_s", &self.validation.leeway)
            .finish_non_exhaustive()
    }
}

/// The claims wsgate reads; anything else in the token is ignored.
#[derive(Deserialize)]
struct Claims {
    sub: Option<String>,
    exp: u64,
    #[serde(default)]
    topics: Option<Vec<String>>,
    #[serde(default)]
    publish: Option<Vec<String>>,
    /// The token's id, what a revocation by token names.
    #[serde(default)]
    jti: Option<String>,
}

impl JwtVerifier {
    fn new(cfg: JwtConfig) -> Result<Self, AuthError> {
        let algorithm = cfg.algorithm;
        let invalid = |reason: String| AuthError::InvalidKey { algorithm, reason };
        let key = match (algorithm, &cfg.key) {
            (JwtAlgorithm::HS256, JwtKey::Secret(secret)) => {
                if secret.is_empty() {
                    return Err(invalid("the secret is empty".to_owned()));
                }
                DecodingKey::from_secret(secret)
            }
            (JwtAlgorithm::RS256, JwtKey::PublicPem(pem)) => DecodingKey::from_rsa_pem(pem)
                .map_err(|e| invalid(format!("not an RSA public key PEM ({e})")))?,
            (JwtAlgorithm::ES256, JwtKey::PublicPem(pem)) => DecodingKey::from_ec_pem(pem)
                .map_err(|e| invalid(format!("not an EC public key PEM ({e})")))?,
            (JwtAlgorithm::EdDSA, JwtKey::PublicPem(pem)) => DecodingKey::from_ed_pem(pem)
                .map_err(|e| invalid(format!("not an Ed25519 public key PEM ({e})")))?,
            (JwtAlgorithm::HS256, JwtKey::PublicPem(_)) => {
                return Err(invalid(
                    "HS256 needs a shared secret, not a public key".to_owned(),
                ));
            }
            (_, JwtKey::Secret(_)) => {
                return Err(invalid(format!(
                    "{algorithm} needs a public key PEM, not a shared secret"
                )));
            }
        };
        let validation = cfg.claim_checks().validation(algorithm.jsonwebtoken());
        Ok(Self {
            algorithm,
            key,
            validation,
        })
    }

    fn verify(&self, token: &str) -> Result<Identity, Rejection> {
        identity_from(token, &self.key, &self.validation)
    }
}

/// The claim checks of `auth.jwt` that do not depend on the key: `iss`, `aud`, leeway.
#[derive(Debug, Clone, Default)]
pub struct ClaimChecks {
    /// Required `iss`, when set.
    pub issuer: Option<String>,
    /// Required `aud`, when set; when unset a token carrying an `aud` is refused.
    pub audience: Option<String>,
    /// Clock skew tolerated on `exp` and `nbf`.
    pub leeway: Duration,
}

impl ClaimChecks {
    /// The validation for tokens signed with `algorithm` and only that algorithm.
    pub(crate) fn validation(&self, algorithm: Algorithm) -> Validation {
        // `Validation::new` allows exactly this one algorithm; say so explicitly anyway,
        // since accepting any other is the whole class of confusion attacks.
        let mut validation = Validation::new(algorithm);
        validation.algorithms = vec![algorithm];
        validation.leeway = self.leeway.as_secs();
        validation.validate_exp = true;
        validation.validate_nbf = true;
        let mut required = vec!["exp", "sub"];
        if let Some(issuer) = &self.issuer {
            validation.set_issuer(&[issuer]);
            required.push("iss");
        }
        if let Some(audience) = &self.audience {
            validation.set_audience(&[audience]);
            required.push("aud");
        }
        validation.set_required_spec_claims(&required);
        validation
    }
}

impl JwtConfig {
    /// Its claim checks, for a key set that shares them.
    pub fn claim_checks(&self) -> ClaimChecks {
        ClaimChecks {
            issuer: self.issuer.clone(),
            audience: self.audience.clone(),
            leeway: self.leeway,
        }
    }
}

/// Verifies `token` with `key` under `validation` and reads its [`Identity`]; any failure
/// is `invalid_token`, logged at debug with the check that failed, never the token.
pub(crate) fn identity_from(
    token: &str,
    key: &DecodingKey,
    validation: &Validation,
) -> Result<Identity, Rejection> {
    let data = jsonwebtoken::decode::<Claims>(token, key, validation).map_err(|e| {
        tracing::debug!(reason = %e, "token rejected");
        invalid_token()
    })?;
    let claims = data.claims;
    let user_id = claims.sub.filter(|sub| valid_user_id(sub)).ok_or_else(|| {
        tracing::debug!("token rejected: sub is missing or not a valid user id");
        invalid_token()
    })?;
    // A `jti` names the token in revocations, which hold ids to the user id's rules.
    if claims.jti.as_deref().is_some_and(|jti| !valid_user_id(jti)) {
        tracing::debug!("token rejected: jti is not a valid id");
        return Err(invalid_token());
    }
    Ok(Identity {
        user_id,
        topics: TopicPolicy::Patterns(claims.topics.unwrap_or_default()),
        publish: TopicPolicy::Patterns(claims.publish.unwrap_or_default()),
        expires_at: Some(claims.exp),
        token_id: claims.jti,
    })
}

/// Which topics an identity may subscribe (or publish) to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TopicPolicy {
    /// Every topic (auth off).
    Any,
    /// Only topics matching one of these patterns (a token's `topics` claim; none when
    /// the claim is absent).
    Patterns(Vec<String>),
}

impl TopicPolicy {
    /// Whether `topic` is allowed. Patterns: `*` matches every topic; `chat.*` matches
    /// `chat.x` and `chat.x.y` but neither `chat` nor `chatx`; anything else matches
    /// exactly.
    pub fn allows(&self, topic: &str) -> bool {
        match self {
            TopicPolicy::Any => true,
            TopicPolicy::Patterns(patterns) => patterns.iter().any(|p| pattern_matches(p, topic)),
        }
    }
}

/// Whether a topic pattern (`*`, `chat.*`, or an exact topic) matches `topic`.
pub fn pattern_matches(pattern: &str, topic: &str) -> bool {
    if pattern == "*" {
        return true;
    }
    match pattern.strip_suffix('*') {
        Some(prefix) if prefix.ends_with('.') => {
            topic.len() > prefix.len() && topic.starts_with(prefix)
        }
        _ => pattern == topic,
    }
}

/// Who a handshake authenticated as. Stored in the request extensions by the preflight
/// and bound to the session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The user id (`sub`, or `?user=` with auth off).
    pub user_id: String,
    /// Topics the session may subscribe to.
    pub topics: TopicPolicy,
    /// Topics the session may publish to with the `publish` op: the token's `publish`
    /// claim (none without it). With auth off, none here: `session.client_publish`
    /// decides for the session.
    pub publish: TopicPolicy,
    /// The token's `exp`, in seconds since the Unix epoch; `None` with auth off.
    pub expires_at: Option<u64>,
    /// The token's `jti`, when it has one: a revocation by token id names it.
    pub token_id: Option<String>,
}

/// How handshakes are authenticated (`auth.mode`).
#[derive(Debug, Clone)]
pub enum Authenticator {
    /// No verification: the user id comes from `?user=`. Only for loopback or explicitly
    /// insecure deployments; settings validation enforces that.
    None,
    /// A JWT is required, verified with one configured key.
    Jwt(Box<JwtVerifier>),
    /// A JWT is required, verified with the keys of a JWKS (`auth.jwt.jwks_url`) that
    /// `wsgate-server` fetches and refreshes.
    Jwks(Box<JwksVerifier>),
    /// No token: the handshake's allowed headers, query and address are POSTed to the
    /// application's backend (`auth.proxy.url`), whose answer names the user.
    Proxy(Box<ProxyVerifier>),
}

impl Authenticator {
    /// A JWT authenticator. Fails when the key does not parse or does not fit the
    /// algorithm, so a misconfiguration is caught at start-up.
    pub fn jwt(cfg: JwtConfig) -> Result<Self, AuthError> {
        Ok(Authenticator::Jwt(Box::new(JwtVerifier::new(cfg)?)))
    }

    /// Authenticates a handshake.
    ///
    /// JWT mode: 401 `missing_token` (with `WWW-Authenticate: Bearer`) when there is no
    /// token, 401 `invalid_token` (with `WWW-Authenticate: Bearer error="invalid_token"`)
    /// for any token that fails verification. None mode: 401 `missing_user` without
    /// `?user=`, 400 `invalid_user` when it is not a valid user id. JWKS mode adds 503
    /// `auth_unavailable` while no key set was fetched yet, and may wait (at most
    /// [`crate::jwks::UNKNOWN_KID_WAIT`], for a refetch on an unknown `kid`). Proxy mode
    /// waits for the backend (at most `auth.proxy.timeout`): 401 or 403 `proxy_refused`
    /// when it refuses, 503 `auth_unavailable` when it gives no usable answer.
    pub async fn authenticate(&self, parts: &Parts) -> Result<Identity, Rejection> {
        match self {
            Authenticator::None => {
                let user = query_param(&parts.uri, USER_QUERY_PARAM).ok_or_else(|| {
                    Rejection::new(
                        StatusCode::UNAUTHORIZED,
                        "missing_user",
                        "authentication is off: pass the user id as ?user=<id>",
                    )
                })?;
                match user {
                    Some(user) if valid_user_id(&user) => Ok(Identity {
                        user_id: user,
                        topics: TopicPolicy::Any,
                        publish: TopicPolicy::Patterns(Vec::new()),
                        expires_at: None,
                        token_id: None,
                    }),
                    _ => Err(Rejection::new(
                        StatusCode::BAD_REQUEST,
                        "invalid_user",
                        format!(
                            "?user= must be 1 to {MAX_USER_ID_BYTES} bytes without control \
                             characters"
                        ),
                    )),
                }
            }
            Authenticator::Proxy(verifier) => verifier.authenticate(parts).await,
            Authenticator::Jwt(_) | Authenticator::Jwks(_) => match find_token(parts) {
                Some(Some(token)) => match self.verify_token(&token).await {
                    Some(verdict) => verdict,
                    None => Err(invalid_token()),
                },
                Some(None) => Err(invalid_token()),
                None => Err(Rejection::new(
                    StatusCode::UNAUTHORIZED,
                    "missing_token",
                    "a token is required: send Authorization: Bearer <token> or \
                     ?access_token=<token>",
                )
                .with_header(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"))),
            },
        }
    }
}

impl Authenticator {
    /// Verifies a bare token, as the handshake does (a live session's `refresh` op).
    /// `None` when tokens are not used (auth off, or the connect proxy): there is nothing
    /// to refresh.
    /// With a JWKS this may wait briefly, as the handshake does (see
    /// [`JwksVerifier::verify`]).
    pub async fn verify_token(&self, token: &str) -> Option<Result<Identity, Rejection>> {
        match self {
            Authenticator::None | Authenticator::Proxy(_) => None,
            Authenticator::Jwt(verifier) => Some(verifier.verify(token)),
            Authenticator::Jwks(verifier) => Some(verifier.verify(token).await),
        }
    }
}

/// 401 `invalid_token`, the one answer for every token that fails verification.
pub(crate) fn invalid_token() -> Rejection {
    Rejection::new(
        StatusCode::UNAUTHORIZED,
        "invalid_token",
        "the token is invalid, expired or not meant for this gateway",
    )
    .with_header(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer error=\"invalid_token\""),
    )
}

/// The token of a request: `None` when there is none, `Some(None)` when one is present
/// but unusable (empty, not UTF-8).
fn find_token(parts: &Parts) -> Option<Option<String>> {
    for value in parts.headers.get_all(header::AUTHORIZATION) {
        let bytes = value.as_bytes().trim_ascii();
        let scheme_len = bytes.iter().position(|b| *b == b' ').unwrap_or(bytes.len());
        let (scheme, rest) = bytes.split_at(scheme_len);
        if scheme.eq_ignore_ascii_case(b"bearer") {
            let token = std::str::from_utf8(rest.trim_ascii())
                .ok()
                .filter(|t| !t.is_empty())
                .map(str::to_owned);
            return Some(token);
        }
    }
    query_param(&parts.uri, TOKEN_QUERY_PARAM).map(|token| token.filter(|t| !t.is_empty()))
}

/// Decodes `application/x-www-form-urlencoded` text: `+` is a space, `%XX` a byte, a
/// malformed escape stays as written. `None` when the result is not UTF-8.
fn form_decode(raw: &str) -> Option<Cow<'_, str>> {
    if !raw.contains(['%', '+']) {
        return Some(Cow::Borrowed(raw));
    }
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                if let Some(byte) = hex {
                    out.push(byte);
                    i += 2;
                } else {
                    out.push(b'%');
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).ok().map(Cow::Owned)
}

/// The first value of query parameter `name`: `None` when absent, `Some(None)` when its
/// value does not decode to UTF-8.
/// The form-decoded value of query parameter `name`: `None` when absent, `Some(None)`
/// when present but not decodable.
pub fn query_param(uri: &Uri, name: &str) -> Option<Option<String>> {
    uri.query()?.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        (form_decode(key)? == name).then(|| form_decode(value).map(Cow::into_owned))
    })
}

/// The request target (path and query) with every `access_token` value replaced by
/// `REDACTED`, for logs and spans.
pub fn redact_query(uri: &Uri) -> String {
    let path = uri.path();
    let Some(query) = uri.query() else {
        return path.to_owned();
    };
    let redacted: Vec<Cow<'_, str>> = query
        .split('&')
        .map(|pair| {
            let key = pair.split_once('=').map_or(pair, |(key, _)| key);
            // A key that does not decode cannot be the token parameter either.
            if form_decode(key).is_some_and(|k| k == TOKEN_QUERY_PARAM) {
                Cow::Owned(format!("{key}=REDACTED"))
            } else {
                Cow::Borrowed(pair)
            }
        })
        .collect();
    format!("{path}?{}", redacted.join("&"))
}

#[derive(Serialize)]
struct MintClaims<'a> {
    sub: &'a str,
    iat: u64,
    exp: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    topics: Option<&'a [String]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    publish: Option<&'a [String]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    iss: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    aud: Option<&'a str>,
    jti: String,
}

/// Mints an HS256 token for development (`wsgate token`): `sub`, `iat`, `exp = now +
/// ttl`, and `topics`, `iss`, `aud` when given. Without `topics` the token may subscribe
/// to nothing.
pub fn mint_hs256(
    secret: &[u8],
    user_id: &str,
    ttl: Duration,
    topics: Option<&[String]>,
    issuer: Option<&str>,
    audience: Option<&str>,
) -> Result<String, AuthError> {
    let grants = Grants {
        topics,
        publish: None,
    };
    mint_hs256_with(secret, user_id, ttl, grants, issuer, audience)
}

/// The claims of a development token that say what it may do.
#[derive(Debug, Clone, Copy, Default)]
pub struct Grants<'a> {
    /// `topics`: patterns the token may subscribe to (none when absent).
    pub topics: Option<&'a [String]>,
    /// `publish`: patterns the token may publish to with the `publish` op (none when
    /// absent).
    pub publish: Option<&'a [String]>,
}

/// [`mint_hs256`] with a `publish` claim too.
pub fn mint_hs256_with(
    secret: &[u8],
    user_id: &str,
    ttl: Duration,
    grants: Grants<'_>,
    issuer: Option<&str>,
    audience: Option<&str>,
) -> Result<String, AuthError> {
    let key = MintKey {
        algorithm: JwtAlgorithm::HS256,
        key: secret,
        kid: None,
    };
    mint(&key, user_id, ttl, grants, issuer, audience)
}

/// What a development token is signed with.
#[derive(Clone, Copy)]
pub struct MintKey<'a> {
    /// The algorithm, which also says what `key` is.
    pub algorithm: JwtAlgorithm,
    /// The HS256 secret, or the PEM of the private key for RS256, ES256 or EdDSA.
    pub key: &'a [u8],
    /// The `kid` header, naming the key in a JWKS.
    pub kid: Option<&'a str>,
}

impl std::fmt::Debug for MintKey<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MintKey")
            .field("algorithm", &self.algorithm)
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

/// Mints a development token (`wsgate token`) with any supported algorithm: `sub`,
/// `iat`, `exp = now + ttl`, a random `jti` (a ULID), the grants, `iss` and `aud` when given, and `kid` in the
/// header when given.
pub fn mint(
    key: &MintKey<'_>,
    user_id: &str,
    ttl: Duration,
    grants: Grants<'_>,
    issuer: Option<&str>,
    audience: Option<&str>,
) -> Result<String, AuthError> {
    if !valid_user_id(user_id) {
        return Err(AuthError::InvalidUserId);
    }
    let algorithm = key.algorithm;
    let invalid = |reason: String| AuthError::InvalidKey { algorithm, reason };
    let encoding = match algorithm {
        JwtAlgorithm::HS256 if key.key.is_empty() => {
            return Err(invalid("the secret is empty".to_owned()));
        }
        JwtAlgorithm::HS256 => EncodingKey::from_secret(key.key),
        JwtAlgorithm::RS256 => EncodingKey::from_rsa_pem(key.key)
            .map_err(|e| invalid(format!("not an RSA private key PEM ({e})")))?,
        JwtAlgorithm::ES256 => EncodingKey::from_ec_pem(key.key)
            .map_err(|e| invalid(format!("not an EC P-256 private key PEM ({e})")))?,
        JwtAlgorithm::EdDSA => EncodingKey::from_ed_pem(key.key)
            .map_err(|e| invalid(format!("not an Ed25519 private key PEM ({e})")))?,
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let claims = MintClaims {
        sub: user_id,
        iat: now,
        exp: now.saturating_add(ttl.as_secs()),
        topics: grants.topics,
        publish: grants.publish,
        iss: issuer,
        aud: audience,
        // A fresh id, so that a development token can be revoked on its own.
        jti: ulid::Ulid::new().to_string(),
    };
    let mut header = Header::new(algorithm.jsonwebtoken());
    header.kid = key.kid.map(str::to_owned);
    jsonwebtoken::encode(&header, &claims, &encoding).map_err(AuthError::Sign)
}

/// The public JWK of a private key PEM, with `kid`, `alg` and `use: sig`, as a JWKS
/// serves it (`wsgate jwks`, tests). HS256 has no public key: an error.
pub fn public_jwk(
    algorithm: JwtAlgorithm,
    private_pem: &[u8],
    kid: Option<&str>,
) -> Result<serde_json::Value, AuthError> {
    let invalid = |reason: String| AuthError::InvalidKey { algorithm, reason };
    let encoding = match algorithm {
        JwtAlgorithm::HS256 => {
            return Err(invalid(
                "HS256 keys are secrets and are never published".to_owned(),
            ));
        }
        JwtAlgorithm::RS256 => EncodingKey::from_rsa_pem(private_pem),
        JwtAlgorithm::ES256 => EncodingKey::from_ec_pem(private_pem),
        JwtAlgorithm::EdDSA => EncodingKey::from_ed_pem(private_pem),
    }
    .map_err(|e| invalid(format!("not a private key PEM for {algorithm} ({e})")))?;
    let mut jwk = jsonwebtoken::jwk::Jwk::from_encoding_key(&encoding, algorithm.jsonwebtoken())
        .map_err(|e| invalid(e.to_string()))?;
    jwk.common.key_id = kid.map(str::to_owned);
    jwk.common.public_key_use = Some(jsonwebtoken::jwk::PublicKeyUse::Signature);
    serde_json::to_value(&jwk).map_err(|e| invalid(e.to_string()))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use base64::Engine as _;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use serde_json::json;

    /// Static keys never wait: their future is ready at its first poll.
    trait AuthenticateNow {
        fn authenticate_now(&self, parts: &Parts) -> Result<Identity, Rejection>;
    }

    impl AuthenticateNow for Authenticator {
        fn authenticate_now(&self, parts: &Parts) -> Result<Identity, Rejection> {
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

    // Test-only keys, generated once with openssl for these tests.
    const RSA_PRIVATE: &str = "\
-----BEGIN PRIVATE KEY-----
MIIEvgIBADANBgkqhkiG9w0BAQEFAASCBKgwggSkAgEAAoIBAQDjOfb16PrPoNSi
zdJIQRyZH4OmN0K9E14BAQx3+qD5LDzg4CmZE37Ur7QHpPC/wRiDkYxzKQulUBNu
Re4hHokPVb4CeiPVK0F4hCHGeMuRt3wVP0IhTh8ufKLX2EL0aaQzqwZTt1sWGNhg
e4/UsKweVwuWR3Du3lucA0Mhactx1wCTDCGL2oSvNFk/QOLT2mPEJ6cUGmbJxl1t
scwUpwJGp4beP3j6yoF8vbaTENc4qYOXgavU2rzY923Ji6lwQoYIC1rsjiItU7Rh
b+DFGAwDBiBOzr7r7WRMewBPfhDVdQFk3sufWJRZKG+6/WL91LShdd0XG0QgZKpu
3VH7Pm6DAgMBAAECggEAKHadhkv/QfMTeoxpammB5LiqcnJ7xXzJ7CbaKBFvEgAx
NSBl9/bzSn+hcQ0LvDHwIhnMp4NDKiSY2TXFwosUADGWHQ3QDLlftszc0OGY6rGA
fK4fohutzNLwErzVq32Weob1oPnRVB2HhqLqSYdOlzaL/y5oq3jYWm9wSGZ1DqfT
cIKvZhQKDMOXg1q4ek2U9LrSkek1LiOG+P9WEcjjmR/y3N4PDi0edUlvqpg9A0er
y8Twrq4Qxz8GimTtHiB3flWB4lBysUgSnYVNm9MTbRh2Vq+iXMYK4bScFAnQihAG
uWy3aX/WxzcWxzI7gsed01ojzmhBtJMoRA3JjpzoeQKBgQDzrcRLvaU83w6UxyI5
GhI30M8lybKyxWn/KXzmjMIXL38UPVV1I82DBBQdk8AdzndlJHN61uWjQmliwTTL
2IGwOJC8N/b1X8TAqSX6m3/4ZGxZnePDnM/Q0X1Kgw5r5UZHCEDlgndwkwW76Skl
/tlJDsqrTGeoj8f5RClD6TurGwKBgQDutzwlPVuAJex8xhLuXKGBIX4CKE+dqDGR
v7ViGcoETiCxnB92gNUJCREzZAYkBY0NL/iV+Fu/rZHU6Hp/8sX8yJSIOa2ELbfu
GjBzbN3cAkdauHbgDld1+4XvbmZ8BRuSZWc/8g447gGq3+aJ/Wkx4gK/RpTwbTjP
wy1Hp1PYuQKBgQDI4ehf9DBjFROFLQCWiFqabuZGJZfObpZqRr5zpXhf+sTNX56y
mdhS+KrIk0QejlW5KKqWis/2ncoZImOu5IZNSuRudch+Efw2Q3tOtKBzmf4Ehvf8
C6r6X6jlI1NhOTqNVk2BpuNmB54Dgjxs2UIxSyNiwfL2b8mQQVOva3fIHwKBgHqm
GnjntYN5+K+C9WcSoMg/9QYWwBE4wX8pCICGz4y2t4WJuYChYNNrnTLSSXVohLgp
1Yb4O+uXuj2x1H64tZDTXb1AJS6sbrwfKJWlcbgAU7kA3dLwi29K8924018VIL1u
7EWmkDgf0SuCLmjnkozWmqK8GPoOpAnbNgCCsEnBAoGBAI3Uqduwb+84Li7Mim9h
W2kYllEU4kPHq53rFr2BBY5yQM6EF4bOC5JFtiZBEggT6BvYcfkw4NFf/4J4YqH8
Wi8CGH8ab17GZc6GWZnhRMlHN9FguoIwexrjA4P0gH5poE6UDcmp8KoPXezABwgx
rxL5ymYmkFpHPaLzbu6joCgp
-----END PRIVATE KEY-----
";

    const RSA_PUBLIC: &str = "\
-----BEGIN PUBLIC KEY-----
MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA4zn29ej6z6DUos3SSEEc
mR+DpjdCvRNeAQEMd/qg+Sw84OApmRN+1K+0B6Twv8EYg5GMcykLpVATbkXuIR6J
D1W+Anoj1StBeIQhxnjLkbd8FT9CIU4fLnyi19hC9GmkM6sGU7dbFhjYYHuP1LCs
HlcLlkdw7t5bnANDIWnLcdcAkwwhi9qErzRZP0Di09pjxCenFBpmycZdbbHMFKcC
RqeG3j94+sqBfL22kxDXOKmDl4Gr1Nq82PdtyYupcEKGCAta7I4iLVO0YW/gxRgM
AwYgTs6+6+1kTHsAT34Q1XUBZN7Ln1iUWShvuv1i/dS0oXXdFxtEIGSqbt1R+z5u
gwIDAQAB
-----END PUBLIC KEY-----
";

    const EC_PRIVATE: &str = "\
-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg9dinKkOBue5ZEsqc
dIZjUlwXfUpl+csseyE5NZF9bHyhRANCAAQtkMd2t9TT23EFi5mCPG15AnEc9/kI
Z1S/dWGwI2aEC3ZKZvwqhIQ7FsXiUZrEr1lR0ZZSiWW3d5zQ3ey1BcqW
-----END PRIVATE KEY-----
";

    const EC_PUBLIC: &str = "\
-----BEGIN PUBLIC KEY-----
MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAELZDHdrfU09txBYuZgjxteQJxHPf5
CGdUv3VhsCNmhAt2Smb8KoSEOxbF4lGaxK9ZUdGWUollt3ec0N3stQXKlg==
-----END PUBLIC KEY-----
";
    const SECRET: &[u8] = b"test-secret-that-is-long-enough-for-hs256";

    fn now() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    fn config(algorithm: JwtAlgorithm, key: JwtKey) -> JwtConfig {
        JwtConfig {
            algorithm,
            key,
            issuer: None,
            audience: None,
            leeway: Duration::from_secs(0),
        }
    }

    fn hs256() -> Authenticator {
        Authenticator::jwt(config(JwtAlgorithm::HS256, JwtKey::Secret(SECRET.to_vec()))).unwrap()
    }

    fn sign(alg: Algorithm, key: &EncodingKey, claims: &serde_json::Value) -> String {
        jsonwebtoken::encode(&Header::new(alg), claims, key).unwrap()
    }

    fn sign_hs(claims: &serde_json::Value) -> String {
        sign(Algorithm::HS256, &EncodingKey::from_secret(SECRET), claims)
    }

    fn claims(sub: &str) -> serde_json::Value {
        json!({ "sub": sub, "exp": now() + 600 })
    }

    fn with_bearer(token: &str) -> Parts {
        http::Request::get("/ws")
            .header("authorization", format!("Bearer {token}"))
            .body(())
            .unwrap()
            .into_parts()
            .0
    }

    fn with_uri(uri: &str) -> Parts {
        http::Request::get(uri).body(()).unwrap().into_parts().0
    }

    fn assert_invalid(result: Result<Identity, Rejection>, token: &str) {
        let r = result.unwrap_err();
        assert_eq!(
            (r.status, r.code),
            (StatusCode::UNAUTHORIZED, "invalid_token")
        );
        assert_eq!(
            r.header(&header::WWW_AUTHENTICATE).unwrap(),
            "Bearer error=\"invalid_token\""
        );
        assert!(!token.is_empty() && !r.message.contains(token));
        assert!(!r.json_body().contains(token));
    }

    #[test]
    fn valid_hs256_via_header_and_query() {
        let auth = hs256();
        let token = sign_hs(&claims("u42"));
        let id = auth.authenticate_now(&with_bearer(&token)).unwrap();
        assert_eq!(id.user_id, "u42");
        assert_eq!(id.topics, TopicPolicy::Patterns(vec![]));
        assert!(id.expires_at.unwrap() > now());

        let id = auth
            .authenticate_now(&with_uri(&format!("/ws?x=1&access_token={token}")))
            .unwrap();
        assert_eq!(id.user_id, "u42");

        // Scheme is case-insensitive.
        let p = http::Request::get("/ws")
            .header("authorization", format!("bEaReR   {token}"))
            .body(())
            .unwrap()
            .into_parts()
            .0;
        assert!(auth.authenticate_now(&p).is_ok());

        // The header wins over the query.
        let mut p = with_bearer(&token);
        p.uri = "/ws?access_token=garbage".parse().unwrap();
        assert!(auth.authenticate_now(&p).is_ok());
    }

    #[test]
    fn percent_encoded_query_token() {
        let token = sign_hs(&claims("u1"));
        let encoded = token.replace('.', "%2E");
        let id = hs256()
            .authenticate_now(&with_uri(&format!("/ws?access%5Ftoken={encoded}")))
            .unwrap();
        assert_eq!(id.user_id, "u1");
    }

    #[test]
    fn missing_token() {
        for p in [
            with_uri("/ws"),
            with_uri("/ws?user=bob"),
            http::Request::get("/ws")
                .header("authorization", "Basic dXNlcjpwYXNz")
                .body(())
                .unwrap()
                .into_parts()
                .0,
        ] {
            let r = hs256().authenticate_now(&p).unwrap_err();
            assert_eq!(
                (r.status, r.code),
                (StatusCode::UNAUTHORIZED, "missing_token")
            );
            assert_eq!(r.header(&header::WWW_AUTHENTICATE).unwrap(), "Bearer");
        }
        // Present but empty is a bad token, not a missing one.
        let r = hs256()
            .authenticate_now(&with_uri("/ws?access_token="))
            .unwrap_err();
        assert_eq!(r.code, "invalid_token");
        let r = hs256().authenticate_now(&with_bearer("")).unwrap_err();
        assert_eq!(r.code, "invalid_token");
    }

    #[test]
    fn expired_and_not_yet_valid() {
        let token = sign_hs(&json!({ "sub": "u", "exp": now() - 10 }));
        assert_invalid(hs256().authenticate_now(&with_bearer(&token)), &token);
        let token = sign_hs(&json!({ "sub": "u", "exp": now() + 600, "nbf": now() + 300 }));
        assert_invalid(hs256().authenticate_now(&with_bearer(&token)), &token);
        // Leeway forgives small skew.
        let lenient = Authenticator::jwt(JwtConfig {
            leeway: Duration::from_secs(60),
            ..config(JwtAlgorithm::HS256, JwtKey::Secret(SECRET.to_vec()))
        })
        .unwrap();
        let token = sign_hs(&json!({ "sub": "u", "exp": now() - 10 }));
        assert!(lenient.authenticate_now(&with_bearer(&token)).is_ok());
    }

    #[test]
    fn wrong_key_and_malformed() {
        let token = sign(
            Algorithm::HS256,
            &EncodingKey::from_secret(b"another-secret"),
            &claims("u"),
        );
        assert_invalid(hs256().authenticate_now(&with_bearer(&token)), &token);
        for junk in ["abc", "a.b.c", "....", "eyJ.eyJ.sig"] {
            assert_invalid(hs256().authenticate_now(&with_bearer(junk)), junk);
        }
        // A tampered payload fails the signature.
        let token = sign_hs(&claims("alice"));
        let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
        parts[1] = URL_SAFE_NO_PAD.encode(claims("admin").to_string());
        let forged = parts.join(".");
        assert_invalid(hs256().authenticate_now(&with_bearer(&forged)), &forged);
    }

    #[test]
    fn required_claims() {
        for c in [
            json!({ "exp": now() + 600 }),
            json!({ "sub": "", "exp": now() + 600 }),
            json!({ "sub": "a\u{0}b", "exp": now() + 600 }),
            json!({ "sub": "x".repeat(257), "exp": now() + 600 }),
            json!({ "sub": 42, "exp": now() + 600 }),
            json!({ "sub": "u" }),
            json!({ "sub": "u", "exp": "tomorrow" }),
            json!({ "sub": "u", "exp": now() + 600, "topics": "chat.*" }),
        ] {
            let token = sign_hs(&c);
            assert_invalid(hs256().authenticate_now(&with_bearer(&token)), &token);
        }
    }

    #[test]
    fn alg_none_is_rejected() {
        let header = URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT"}"#);
        let payload = URL_SAFE_NO_PAD.encode(claims("u").to_string());
        for token in [
            format!("{header}.{payload}."),
            format!("{header}.{payload}"),
        ] {
            assert_invalid(hs256().authenticate_now(&with_bearer(&token)), &token);
        }
    }

    #[test]
    fn rs256_rejects_hs256_signed_with_the_public_key() {
        let rs = Authenticator::jwt(config(
            JwtAlgorithm::RS256,
            JwtKey::PublicPem(RSA_PUBLIC.as_bytes().to_vec()),
        ))
        .unwrap();
        let good = sign(
            Algorithm::RS256,
            &EncodingKey::from_rsa_pem(RSA_PRIVATE.as_bytes()).unwrap(),
            &claims("u"),
        );
        assert_eq!(
            rs.authenticate_now(&with_bearer(&good)).unwrap().user_id,
            "u"
        );

        let confused = sign(
            Algorithm::HS256,
            &EncodingKey::from_secret(RSA_PUBLIC.as_bytes()),
            &claims("u"),
        );
        assert_invalid(rs.authenticate_now(&with_bearer(&confused)), &confused);

        // And the other way round: an RS-signed token against an HS256 gateway.
        assert_invalid(hs256().authenticate_now(&with_bearer(&good)), &good);
        // An RS256 gateway does not take ES256 tokens either.
        let es = sign(
            Algorithm::ES256,
            &EncodingKey::from_ec_pem(EC_PRIVATE.as_bytes()).unwrap(),
            &claims("u"),
        );
        assert_invalid(rs.authenticate_now(&with_bearer(&es)), &es);
    }

    #[test]
    fn es256_works() {
        let es = Authenticator::jwt(config(
            JwtAlgorithm::ES256,
            JwtKey::PublicPem(EC_PUBLIC.as_bytes().to_vec()),
        ))
        .unwrap();
        let token = sign(
            Algorithm::ES256,
            &EncodingKey::from_ec_pem(EC_PRIVATE.as_bytes()).unwrap(),
            &json!({ "sub": "e", "exp": now() + 60, "topics": ["a.*"] }),
        );
        let id = es.authenticate_now(&with_bearer(&token)).unwrap();
        assert_eq!(id.user_id, "e");
        assert!(id.topics.allows("a.b"));
        let hs = sign(
            Algorithm::HS256,
            &EncodingKey::from_secret(EC_PUBLIC.as_bytes()),
            &claims("e"),
        );
        assert_invalid(es.authenticate_now(&with_bearer(&hs)), &hs);
    }

    #[test]
    fn issuer_and_audience() {
        let auth = Authenticator::jwt(JwtConfig {
            issuer: Some("https://issuer".to_owned()),
            audience: Some("wsgate".to_owned()),
            ..config(JwtAlgorithm::HS256, JwtKey::Secret(SECRET.to_vec()))
        })
        .unwrap();
        let exp = now() + 600;
        let ok = sign_hs(&json!({"sub":"u","exp":exp,"iss":"https://issuer","aud":"wsgate"}));
        assert!(auth.authenticate_now(&with_bearer(&ok)).is_ok());
        let ok = sign_hs(&json!({"sub":"u","exp":exp,"iss":"https://issuer","aud":["x","wsgate"]}));
        assert!(auth.authenticate_now(&with_bearer(&ok)).is_ok());
        for bad in [
            json!({"sub":"u","exp":exp,"iss":"https://other","aud":"wsgate"}),
            json!({"sub":"u","exp":exp,"iss":"https://issuer","aud":"other"}),
            json!({"sub":"u","exp":exp,"aud":"wsgate"}),
            json!({"sub":"u","exp":exp,"iss":"https://issuer"}),
        ] {
            let token = sign_hs(&bad);
            assert_invalid(auth.authenticate_now(&with_bearer(&token)), &token);
        }
        // Without a configured audience, a token addressed to someone is not for us.
        let token = sign_hs(&json!({"sub":"u","exp":exp,"aud":"someone-else"}));
        assert_invalid(hs256().authenticate_now(&with_bearer(&token)), &token);
    }

    #[test]
    fn key_must_fit_algorithm() {
        let cases = [
            config(JwtAlgorithm::HS256, JwtKey::Secret(vec![])),
            config(JwtAlgorithm::HS256, JwtKey::PublicPem(RSA_PUBLIC.into())),
            config(JwtAlgorithm::RS256, JwtKey::Secret(SECRET.to_vec())),
            config(
                JwtAlgorithm::RS256,
                JwtKey::PublicPem(b"not a pem".to_vec()),
            ),
            config(JwtAlgorithm::ES256, JwtKey::PublicPem(RSA_PUBLIC.into())),
        ];
        for cfg in cases {
            let err = Authenticator::jwt(cfg).unwrap_err();
            assert!(!err.to_string().contains("test-secret"));
        }
        let dbg = format!(
            "{:?}",
            config(JwtAlgorithm::HS256, JwtKey::Secret(SECRET.to_vec()))
        );
        assert!(!dbg.contains("test-secret"), "{dbg}");
        assert!(!format!("{:?}", hs256()).contains("test-secret"));
    }

    #[test]
    fn topic_patterns() {
        let token = sign_hs(&json!({
            "sub": "u", "exp": now() + 600, "topics": ["chat.*", "news"]
        }));
        let id = hs256().authenticate_now(&with_bearer(&token)).unwrap();
        let t = &id.topics;
        assert!(t.allows("chat.x") && t.allows("chat.x.y") && t.allows("news"));
        assert!(!t.allows("chat") && !t.allows("chatx") && !t.allows("chat."));
        assert!(!t.allows("news.x") && !t.allows("newsy") && !t.allows("other"));

        let all = TopicPolicy::Patterns(vec!["*".to_owned()]);
        assert!(all.allows("anything.at:all"));
        assert!(TopicPolicy::Any.allows("x"));
        assert!(!TopicPolicy::Patterns(vec![]).allows("x"));
        // A `*` that is not a whole last segment is literal.
        let odd = TopicPolicy::Patterns(vec!["chat*".to_owned()]);
        assert!(!odd.allows("chatx") && odd.allows("chat*"));
    }

    #[test]
    fn auth_none_mode() {
        let id = Authenticator::None
            .authenticate_now(&with_uri("/ws?user=bob%20smith"))
            .unwrap();
        assert_eq!(id.user_id, "bob smith");
        assert_eq!(id.topics, TopicPolicy::Any);
        assert_eq!(id.expires_at, None);

        let r = Authenticator::None
            .authenticate_now(&with_uri("/ws"))
            .unwrap_err();
        assert_eq!(
            (r.status, r.code),
            (StatusCode::UNAUTHORIZED, "missing_user")
        );
        assert!(r.message.contains("?user="));
        for bad in ["/ws?user=", "/ws?user=a%00b", "/ws?user=%FF"] {
            let r = Authenticator::None
                .authenticate_now(&with_uri(bad))
                .unwrap_err();
            assert_eq!(r.code, "invalid_user", "{bad}");
        }
    }

    #[test]
    fn mint_round_trips() {
        let topics = vec!["chat.*".to_owned()];
        let token = mint_hs256(
            SECRET,
            "minted",
            Duration::from_secs(60),
            Some(&topics),
            Some("iss"),
            Some("aud"),
        )
        .unwrap();
        let auth = Authenticator::jwt(JwtConfig {
            issuer: Some("iss".to_owned()),
            audience: Some("aud".to_owned()),
            ..config(JwtAlgorithm::HS256, JwtKey::Secret(SECRET.to_vec()))
        })
        .unwrap();
        let id = auth.authenticate_now(&with_bearer(&token)).unwrap();
        assert_eq!(id.user_id, "minted");
        assert!(id.topics.allows("chat.1"));
        assert!(matches!(
            mint_hs256(SECRET, "", Duration::from_secs(1), None, None, None),
            Err(AuthError::InvalidUserId)
        ));
    }

    #[test]
    fn redaction() {
        let uri: Uri = "/ws?a=1&access_token=SECRET.TOKEN&b=2".parse().unwrap();
        assert_eq!(redact_query(&uri), "/ws?a=1&access_token=REDACTED&b=2");
        let uri: Uri = "/ws?access%5Ftoken=SECRET&access_token=S2".parse().unwrap();
        let r = redact_query(&uri);
        assert!(!r.contains("SECRET") && !r.contains("S2"), "{r}");
        let uri: Uri = "/ws?access_token".parse().unwrap();
        assert_eq!(redact_query(&uri), "/ws?access_token=REDACTED");
        let uri: Uri = "/ws".parse().unwrap();
        assert_eq!(redact_query(&uri), "/ws");
        let uri: Uri = "http://h/ws?user=x".parse().unwrap();
        assert_eq!(redact_query(&uri), "/ws?user=x");
    }

    #[test]
    fn validity_helpers() {
        assert!(valid_topic("a.b:c-d_e") && !valid_topic("") && !valid_topic("a b"));
        assert!(valid_topic(&"a".repeat(200)) && !valid_topic(&"a".repeat(201)));
        assert!(valid_user_id("ü42") && !valid_user_id("") && !valid_user_id("a\nb"));
        assert!(valid_user_id(&"a".repeat(256)) && !valid_user_id(&"a".repeat(257)));
        assert_eq!(
            "rs256".parse::<JwtAlgorithm>().unwrap(),
            JwtAlgorithm::RS256
        );
        assert!("none".parse::<JwtAlgorithm>().is_err());
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn redaction_never_leaks_the_token(
                token in "[A-Za-z0-9._~-]{1,80}",
                before in "[a-z]{1,5}=[a-z0-9]{0,5}",
                after in "[a-z]{1,5}=[a-z0-9]{0,5}",
            ) {
                let marked = format!("TOKEN{token}");
                let target = format!("/ws?{before}&access_token={marked}&{after}");
                let uri: Uri = target.parse().unwrap();
                let redacted = redact_query(&uri);
                prop_assert!(!redacted.contains(&marked), "{}", redacted);
                prop_assert!(redacted.contains(&before) && redacted.contains(&after));
            }

            #[test]
            fn wildcard_patterns_match_exactly_the_deeper_topics(
                prefix in "[a-z]{1,6}",
                topic in "[a-z.]{0,12}",
            ) {
                let policy = TopicPolicy::Patterns(vec![format!("{prefix}.*")]);
                let expected = topic.len() > prefix.len() + 1
                    && topic.starts_with(&format!("{prefix}."));
                prop_assert_eq!(policy.allows(&topic), expected);
            }

            #[test]
            fn arbitrary_bearer_values_never_panic(value in "[ -~]{0,300}") {
                let Ok(header) = HeaderValue::from_str(&format!("Bearer {value}")) else {
                    return Ok(());
                };
                let mut p = with_uri("/ws");
                p.headers.insert("authorization", header);
                if let Err(r) = hs256().authenticate_now(&p) {
                    prop_assert_eq!(r.status, StatusCode::UNAUTHORIZED);
                    let echoed = r.json_body().contains(value.trim());
                    prop_assert!(value.trim().len() < 16 || !echoed);
                }
            }
        }
    }
}
