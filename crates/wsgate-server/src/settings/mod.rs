//! Gateway configuration: typed settings loaded in layers, then built into the objects
//! the gateway runs with.
//!
//! Loading ([`load`]) layers the settings with the `config` crate:
//!
//! 1. built-in defaults ([`Settings::default`]),
//! 2. an optional file (TOML, YAML or JSON, chosen by extension),
//! 3. environment variables `WSGATE__SECTION__KEY` (e.g. `WSGATE__REDIS__URL`,
//!    `WSGATE__AUTH__JWT__SECRET`); list values are comma-separated.
//!
//! Keys are case-insensitive; each is parsed on its own through the table in [`keys`].
//! Building ([`Settings::build`]) then turns the [`Settings`] into a [`GatewayConfig`]:
//! the Host and Origin policies, the authenticator with its key, the TLS configurations,
//! session parameters and backend options, checking every rule on the way. Every
//! problem, of either step, is reported at once in a [`SettingsError`]. The environment
//! is passed in explicitly; nothing here reads the process environment except
//! [`load_from_process_env`].
//!
//! The modules follow those jobs: [`sections`] (the structs and their defaults), [`keys`]
//! (the key table), `values` (one parser per kind of value), `layers` (files and the
//! environment), `build`, `rules` and `auth` (what the settings become, and the rules);
//! `proxy` builds the connect proxy of `[auth.proxy]`; `webhooks` holds the `[webhooks]` section whole (its settings, parser and rules).
//! The reference for every key is `docs/configuration.md`.

mod auth;
mod build;
pub mod keys;
mod layers;
mod proxy;
mod rules;
pub mod sections;
mod values;
mod webhooks;

#[cfg(test)]
mod tests;

use std::fmt;

pub use build::{Backend, GatewayConfig, PreflightPolicies, SessionParams};
pub use keys::KEYS;
pub use layers::{default_pod_id, load, load_from_process_env};
pub use sections::*;
pub use webhooks::{WebhookEndpointSettings, WebhookSettings};

/// Prefix of the environment variables that are configuration keys (`WSGATE__SERVER__LISTEN`).
pub const ENV_PREFIX: &str = "WSGATE__";
/// Environment variable naming the configuration file when no `--config` is given.
pub const CONFIG_FILE_ENV: &str = "WSGATE_CONFIG";
/// Environment variable used as the default `server.pod_id` (set by Kubernetes downward API).
pub const POD_NAME_ENV: &str = "POD_NAME";

/// Smallest accepted HS256 secret, in bytes.
pub const MIN_JWT_SECRET_BYTES: usize = 32;
/// Smallest accepted control-plane API key, in characters.
pub const MIN_API_KEY_CHARS: usize = 16;

/// One configuration problem: the key path it concerns and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Dotted key path (`server.listen`), or the file path for file-level problems.
    pub key: String,
    /// Human-readable description; never contains secret values.
    pub message: String,
}

impl Problem {
    /// Creates a problem for `key`.
    pub fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

/// Every problem found while loading and building the configuration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct SettingsError {
    /// All problems, one per bad key or rule (never empty when returned by [`load`]).
    pub problems: Vec<Problem>,
}

impl fmt::Display for SettingsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}
