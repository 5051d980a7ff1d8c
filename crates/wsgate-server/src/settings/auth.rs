//! `[auth]`: the authenticator, built once with its key loaded, and the rules on the
//! keys that describe it (the secure-default rule, key kind against algorithm, secret
//! length, leeway).

use std::path::Path;
use std::time::Duration;

use wsgate_core::auth::{AuthError, Authenticator, JwtConfig, JwtKey};

use super::rules::fmt_duration;
use super::sections::{AuthMode, JwtAlgorithm, Settings};
use super::{MIN_JWT_SECRET_BYTES, Problem};

impl Settings {
    /// The authenticator `auth.*` describes, its key read once; `None` when a problem
    /// was reported.
    pub(super) fn authenticator(&self, p: &mut Vec<Problem>) -> Option<Authenticator> {
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
                     set auth.mode = \"jwt\" or auth.allow_insecure = true",
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
        if self.session.client_publish && auth.mode == AuthMode::Jwt {
            p.push(Problem::new(
                "session.client_publish",
                "applies only with auth.mode = \"none\"; with JWT the token's publish claim \
                 decides which topics a session may publish to",
            ));
        }
        if auth.mode != AuthMode::Jwt {
            return (p.len() == before).then_some(Authenticator::None);
        }
        let (algorithm, key) = match (&jwt.secret, &jwt.public_key_file) {
            (None, None) => {
                p.push(Problem::new(
                    "auth.jwt",
                    "auth.mode = \"jwt\" needs a key: set auth.jwt.secret (HS256) or \
                     auth.jwt.public_key_file (RS256/ES256)",
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
                        "HS256 needs auth.jwt.secret; auth.jwt.public_key_file is only for RS256 or ES256",
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
                let kind = if algorithm == JwtAlgorithm::ES256 {
                    "EC"
                } else {
                    "RSA"
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

fn read_key_file(path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            format!("file {} not found", path.display())
        } else {
            format!("cannot read {}: {e}", path.display())
        }
    })
}
