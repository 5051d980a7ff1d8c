//! `[auth]`: the authenticator, built once with its key loaded, and the rules on the
//! keys that describe it (the secure-default rule, key kind against algorithm, secret
//! length, leeway), and the JWKS source when the keys come from `auth.jwt.jwks_url`.

use std::path::Path;
use std::time::Duration;

use wsgate_core::auth::proxy::ProxyVerifier;
use wsgate_core::auth::{AuthError, Authenticator, ClaimChecks, JwtConfig, JwtKey};
use wsgate_core::jwks::{JwksKeys, JwksVerifier};

use super::rules::fmt_duration;
use super::sections::{AuthMode, JwtAlgorithm, Settings};
use super::{MIN_JWT_SECRET_BYTES, Problem};
use crate::jwks::JwksSource;

/// Bounds of `auth.jwt.jwks_refresh`.
const JWKS_REFRESH_RANGE: (Duration, Duration) =
    (Duration::from_secs(1), Duration::from_secs(24 * 3600));

impl Settings {
    /// The authenticator `auth.*` describes, its key read once (or, with
    /// `auth.jwt.jwks_url`, over the store of `jwks`, the source [`Self::jwks_source`]
    /// built) or, in proxy mode, over the `proxy` verifier [`Self::connect_proxy`] built;
    /// `None` when a problem was reported.
    pub(super) fn authenticator(
        &self,
        p: &mut Vec<Problem>,
        jwks: Option<&JwksSource>,
        proxy: Option<&ProxyVerifier>,
    ) -> Option<Authenticator> {
        let before = p.len();
        let auth = &self.auth;
        let jwt = &auth.jwt;
        if auth.mode == AuthMode::None
            && !auth.allow_insecure
            && !self.server.listen.ip().is_loopback()
        {
            p.push(Problem::new(
                "auth.mode",
                format!(
                    "auth is off but the WebSocket listener {} is not on loopback; \
                     set auth.mode = \"jwt\" or \"proxy\", or auth.allow_insecure = true",
                    self.server.listen
                ),
            ));
        }
        if let Some(secret) = &jwt.secret
            && secret.len() < MIN_JWT_SECRET_BYTES
        {
            p.push(Problem::new(
                "auth.jwt.secret",
                format!(
                    "too short ({} bytes); an HS256 secret needs at least {MIN_JWT_SECRET_BYTES} bytes",
                    secret.len()
                ),
            ));
        }
        if jwt.leeway > Duration::from_secs(300) {
            p.push(Problem::new(
                "auth.jwt.leeway",
                format!("must be at most 5m, got {}", fmt_duration(jwt.leeway)),
            ));
        }
        for (key, value) in [
            ("auth.jwt.issuer", &jwt.issuer),
            ("auth.jwt.audience", &jwt.audience),
        ] {
            if value.as_deref().is_some_and(|v| v.trim().is_empty()) {
                p.push(Problem::new(key, "must not be empty when set"));
            }
        }
        if self.session.client_publish && auth.mode != AuthMode::None {
            p.push(Problem::new(
                "session.client_publish",
                "applies only with auth.mode = \"none\"; with JWT the token's publish claim \
                 (with the connect proxy, the backend's publish list) decides which topics a \
                 session may publish to",
            ));
        }
        if auth.mode == AuthMode::Proxy {
            // Without a verifier, connect_proxy reported why.
            let verifier = proxy?.clone();
            return (p.len() == before).then(|| Authenticator::Proxy(Box::new(verifier)));
        }
        if auth.mode != AuthMode::Jwt {
            return (p.len() == before).then_some(Authenticator::None);
        }
        if jwt.jwks_url.is_some() {
            if jwt.secret.is_some() || jwt.public_key_file.is_some() {
                p.push(Problem::new(
                    "auth.jwt",
                    "set only one of auth.jwt.secret, auth.jwt.public_key_file and \
                     auth.jwt.jwks_url",
                ));
                return None;
            }
            if let Some(alg) = jwt.algorithm {
                p.push(Problem::new(
                    "auth.jwt.algorithm",
                    format!(
                        "{alg} does not apply with auth.jwt.jwks_url: each key's algorithm \
                         comes from the key set; remove auth.jwt.algorithm"
                    ),
                ));
            }
            // Without a source, jwks_source reported why.
            let keys = jwks?.keys.clone();
            let claims = ClaimChecks {
                issuer: jwt.issuer.clone(),
                audience: jwt.audience.clone(),
                leeway: jwt.leeway,
            };
            let verifier = JwksVerifier::new(keys, &claims);
            return (p.len() == before).then(|| Authenticator::Jwks(Box::new(verifier)));
        }
        let (algorithm, key) = match (&jwt.secret, &jwt.public_key_file) {
            (None, None) => {
                p.push(Problem::new(
                    "auth.jwt",
                    "auth.mode = \"jwt\" needs a key: set auth.jwt.secret (HS256), \
                     auth.jwt.public_key_file (RS256/ES256/EdDSA) or auth.jwt.jwks_url",
                ));
                return None;
            }
            (Some(_), Some(_)) => {
                p.push(Problem::new(
                    "auth.jwt",
                    "set only one of auth.jwt.secret and auth.jwt.public_key_file",
                ));
                return None;
            }
            (Some(secret), None) => {
                if let Some(alg) = jwt.algorithm.filter(|a| a.uses_public_key()) {
                    p.push(Problem::new(
                        "auth.jwt.algorithm",
                        format!(
                            "{alg} needs auth.jwt.public_key_file; auth.jwt.secret is only for HS256"
                        ),
                    ));
                    return None;
                }
                (
                    JwtAlgorithm::HS256,
                    JwtKey::Secret(secret.as_bytes().to_vec()),
                )
            }
            (None, Some(path)) => {
                let alg = jwt.algorithm.unwrap_or(JwtAlgorithm::RS256);
                if !alg.uses_public_key() {
                    p.push(Problem::new(
                        "auth.jwt.algorithm",
                        "HS256 needs auth.jwt.secret; auth.jwt.public_key_file is only for RS256, ES256 or EdDSA",
                    ));
                    return None;
                }
                match read_key_file(path) {
                    Ok(pem) => (alg, JwtKey::PublicPem(pem)),
                    Err(e) => {
                        p.push(Problem::new("auth.jwt.public_key_file", e));
                        return None;
                    }
                }
            }
        };
        let built = Authenticator::jwt(JwtConfig {
            algorithm,
            key,
            issuer: jwt.issuer.clone(),
            audience: jwt.audience.clone(),
            leeway: jwt.leeway,
        });
        match built {
            Ok(authenticator) => (p.len() == before).then_some(authenticator),
            Err(AuthError::InvalidKey { reason, .. }) => {
                let (key, what) = match &jwt.public_key_file {
                    Some(path) => ("auth.jwt.public_key_file", path.display().to_string()),
                    None => ("auth.jwt.secret", "the secret".to_owned()),
                };
                let kind = match algorithm {
                    JwtAlgorithm::ES256 => "EC",
                    JwtAlgorithm::EdDSA => "Ed25519",
                    _ => "RSA",
                };
                let message = if jwt.public_key_file.is_some() {
                    format!(
                        "{what} is not a PEM {kind} public key usable for {algorithm}: {reason}"
                    )
                } else {
                    format!("{what} is not usable for {algorithm}: {reason}")
                };
                p.push(Problem::new(key, message));
                None
            }
            Err(e) => {
                p.push(Problem::new("auth.jwt", e.to_string()));
                None
            }
        }
    }
}

impl Settings {
    /// The key set source `auth.jwt.jwks_url` and `auth.jwt.jwks_refresh` describe, with
    /// its HTTP client and an empty key store; `None` when the URL is unset or a problem
    /// was reported. Problems never quote the URL: it may carry credentials.
    pub(super) fn jwks_source(&self, p: &mut Vec<Problem>) -> Option<JwksSource> {
        let jwt = &self.auth.jwt;
        let (min, max) = JWKS_REFRESH_RANGE;
        if !(min..=max).contains(&jwt.jwks_refresh) {
            p.push(Problem::new(
                "auth.jwt.jwks_refresh",
                format!(
                    "must be between 1s and 24h, got {}",
                    fmt_duration(jwt.jwks_refresh)
                ),
            ));
            return None;
        }
        let raw = jwt.jwks_url.as_deref()?;
        let url = outbound_url(p, "auth.jwt.jwks_url", raw, self.auth.allow_insecure)?;
        let https = url.scheme() == "https";
        match JwksSource::client(https) {
            Ok(client) => Some(JwksSource {
                url,
                refresh: jwt.jwks_refresh,
                client,
                keys: JwksKeys::new(),
            }),
            Err(e) => {
                p.push(Problem::new("auth.jwt.jwks_url", e));
                None
            }
        }
    }
}

/// The URL of a service the gateway trusts with authentication (`auth.jwt.jwks_url`,
/// `auth.proxy.url`): `https://`, or plain `http://` only to a loopback host unless
/// `auth.allow_insecure`, since whoever can change its answers in transit decides who
/// gets in. `None` after reporting a problem under `key`, which never quotes the URL (it
/// may carry credentials).
pub(super) fn outbound_url(
    p: &mut Vec<Problem>,
    key: &str,
    raw: &str,
    allow_insecure: bool,
) -> Option<url::Url> {
    let problem = |p: &mut Vec<Problem>, message: String| {
        p.push(Problem::new(key, message));
        None
    };
    let url = match url::Url::parse(raw) {
        Ok(url) => url,
        Err(e) => return problem(p, format!("invalid URL: {e}")),
    };
    let https = match url.scheme() {
        "https" => true,
        "http" => false,
        other => {
            return problem(
                p,
                format!("unsupported scheme {other:?}: expected https:// (or http:// to loopback)"),
            );
        }
    };
    let loopback = match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(name)) => name.eq_ignore_ascii_case("localhost"),
        None => return problem(p, "the URL has no host".to_owned()),
    };
    if !https && !loopback && !allow_insecure {
        return problem(
            p,
            "plain http:// is allowed only to a loopback host; use https:// or set \
             auth.allow_insecure = true"
                .to_owned(),
        );
    }
    Some(url)
}

fn read_key_file(path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            format!("file {} not found", path.display())
        } else {
            format!("cannot read {}: {e}", path.display())
        }
    })
}
