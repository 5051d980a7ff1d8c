//! Hosts and origins: one grammar for the configuration's allow-lists and for the
//! request headers they are matched against.
//!
//! `preflight.allowed_hosts` entries and `Host` headers are both `host[:port]`;
//! `preflight.allowed_origins` entries and `Origin` headers are both
//! `scheme://host[:port]`. Each is parsed by the one function here, so `wsgate
//! check-config` and the running gateway cannot disagree about what an entry means. An
//! allow-list entry may say a little more than a header can (`*`, `null`, a `*.`
//! wildcard) and a little less: its host names must be RFC 1123 names (no label starts
//! or ends with `-`, which catches typos; a browser's URL parser lets such hosts
//! through, so headers are not held to it), and its schemes are the web's (`http`,
//! `https`, `ws`, `wss`). Those rules sit on top of the shared grammar, in
//! [`HostPort::parse_entry`] and [`OriginRule::parse`].
//!
//! Errors are short reasons meant to follow the entry in a configuration problem
//! (`invalid host "a.com:x": invalid port "x"`); the request checks turn a header that
//! does not parse into the same refusal as one that does not match.

use std::net::{Ipv4Addr, Ipv6Addr};

use http::StatusCode;
use http::header;
use http::request::Parts;

use crate::rejection::{Rejection, quote};

/// A parsed `host[:port]`: a lower-case DNS name (a trailing dot removed), an IPv4
/// address or a bracketed IPv6 address, and the port when one is given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPort {
    /// The host, lower-case; IPv6 in brackets.
    pub host: String,
    /// The port, 1..=65535, when given.
    pub port: Option<u16>,
}

/// How strictly host names are held to RFC 1123.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Names {
    /// Configuration: no label starts or ends with `-`.
    Strict,
    /// Request headers: as a browser's URL parser allows.
    Lenient,
}

impl HostPort {
    /// Parses a `Host` value, `host[:port]` (IPv6 in brackets). A host name has labels
    /// of letters, digits, `-` and `_`, none empty or longer than 63.
    pub fn parse(value: &str) -> Result<Self, String> {
        Self::parse_as(value, Names::Lenient)
    }

    /// Parses an allow-list entry: as [`HostPort::parse`], and no label of a host name
    /// starts or ends with `-`.
    pub fn parse_entry(value: &str) -> Result<Self, String> {
        Self::parse_as(value, Names::Strict)
    }

    fn parse_as(value: &str, names: Names) -> Result<Self, String> {
        let value = value.trim();
        if value.contains(['@', '/', '?', '#']) {
            return Err("a host has no scheme, path, query or user info".to_owned());
        }
        let (host, port) = split_host_port(value)?;
        let host = check_host(host, names)?;
        Ok(Self { host, port })
    }
}

/// Splits `host[:port]` (IPv6 in brackets) and validates the port (1..=65535).
fn split_host_port(s: &str) -> Result<(&str, Option<u16>), String> {
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let end = rest
            .find(']')
            .ok_or_else(|| "missing ']' after IPv6 address".to_owned())?;
        let after = &rest[end + 1..];
        let port = if after.is_empty() {
            None
        } else {
            Some(
                after
                    .strip_prefix(':')
                    .ok_or_else(|| "unexpected characters after ']'".to_owned())?,
            )
        };
        (&s[..end + 2], port)
    } else {
        match s.split_once(':') {
            Some((h, p)) if !p.contains(':') => (h, Some(p)),
            Some(_) => return Err("IPv6 addresses must be in brackets, e.g. [::1]".to_owned()),
            None => (s, None),
        }
    };
    let port = match port {
        None => None,
        Some(p) => match p.parse::<u16>() {
            Ok(n) if n > 0 => Some(n),
            _ => return Err(format!("invalid port {p:?}")),
        },
    };
    Ok((host, port))
}

/// Validates a host name, an IPv4 address or a bracketed IPv6 address; returns it
/// lower-case, without the trailing dot of a fully qualified name.
fn check_host(host: &str, names: Names) -> Result<String, String> {
    if let Some(inner) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        return inner
            .parse::<Ipv6Addr>()
            .map(|_| host.to_ascii_lowercase())
            .map_err(|_| format!("invalid IPv6 address {inner:?}"));
    }
    if host.parse::<Ipv4Addr>().is_ok() {
        return Ok(host.to_owned());
    }
    let name = host.strip_suffix('.').unwrap_or(host);
    check_dns_name(name, names)?;
    Ok(name.to_ascii_lowercase())
}

fn check_dns_name(name: &str, names: Names) -> Result<(), String> {
    if name.is_empty() {
        return Err("empty host".to_owned());
    }
    if name.len() > 253 {
        return Err("host name longer than 253 characters".to_owned());
    }
    for label in name.split('.') {
        let ok = !label.is_empty()
            && label.len() <= 63
            && label
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            && (names == Names::Lenient || !label.starts_with('-') && !label.ends_with('-'));
        if !ok {
            return Err(format!("invalid host name label {label:?}"));
        }
    }
    Ok(())
}

/// `preflight.allowed_hosts`: which `Host` values this gateway answers to (DNS
/// rebinding and misrouted-traffic protection).
#[derive(Debug, Clone, Default)]
pub struct HostPolicy {
    allowed: Vec<HostPort>,
}

impl HostPolicy {
    /// Builds the policy from `host` or `host:port` entries. An empty list allows every
    /// host; an entry with a port matches only that port, one without matches any port.
    /// Names compare case-insensitively.
    ///
    /// The error names the first bad entry (configuration loading reports each one, with
    /// [`HostPort::parse_entry`]).
    pub fn new(allowed: &[String]) -> Result<Self, String> {
        let allowed = allowed
            .iter()
            .map(|entry| {
                HostPort::parse_entry(entry).map_err(|e| format!("invalid host {entry:?}: {e}"))
            })
            .collect::<Result<_, _>>()?;
        Ok(Self { allowed })
    }

    /// The policy for entries already parsed.
    pub fn from_entries(allowed: Vec<HostPort>) -> Self {
        Self { allowed }
    }

    /// Checks the request's host: the URI authority when the request target carries one
    /// (absolute-form, or HTTP/2 `:authority`, which RFC 9112 §3.2.2 says wins over
    /// `Host`), else the single `Host` header. Mismatch, absence or ambiguity is 421.
    pub fn check(&self, parts: &Parts) -> Result<(), Rejection> {
        if self.allowed.is_empty() {
            return Ok(());
        }
        let misdirected = |message: String| {
            Err(Rejection::new(
                StatusCode::MISDIRECTED_REQUEST,
                "misdirected_host",
                message,
            ))
        };
        let raw: &[u8] = if let Some(authority) = parts.uri.authority() {
            authority.as_str().as_bytes()
        } else {
            let mut hosts = parts.headers.get_all(header::HOST).iter();
            match (hosts.next(), hosts.next()) {
                (Some(host), None) => host.as_bytes(),
                (None, _) => return misdirected("the Host header is required".to_owned()),
                (Some(_), Some(_)) => {
                    return misdirected("send exactly one Host header".to_owned());
                }
            }
        };
        let parsed = std::str::from_utf8(raw)
            .ok()
            .and_then(|s| HostPort::parse(s).ok());
        let allowed = parsed.is_some_and(|got| {
            self.allowed.iter().any(|entry| {
                entry.host == got.host && (entry.port.is_none() || entry.port == got.port)
            })
        });
        if allowed {
            Ok(())
        } else {
            misdirected(format!("this gateway does not serve host {}", quote(raw)))
        }
    }
}

/// The port a scheme implies when an origin leaves it out.
fn default_port(scheme: &str) -> Option<u16> {
    match scheme {
        "http" | "ws" => Some(80),
        "https" | "wss" => Some(443),
        _ => None,
    }
}

/// A parsed origin (`scheme://host[:port]`) with the scheme's default port made explicit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// The scheme, lower-case.
    pub scheme: String,
    /// The host, as [`HostPort`] has it.
    pub host: String,
    /// The port, explicit or the scheme's default (`None` for a scheme without one).
    pub port: Option<u16>,
}

/// Splits `scheme://rest`, checking the scheme's syntax (RFC 3986) and that the rest has
/// no path, query or user info.
fn split_origin(value: &str) -> Result<(String, &str), String> {
    let (scheme, rest) = value
        .split_once("://")
        .ok_or_else(|| "expected \"*\" or \"scheme://host[:port]\"".to_owned())?;
    let valid_scheme = scheme
        .as_bytes()
        .first()
        .is_some_and(u8::is_ascii_alphabetic)
        && scheme
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'));
    if !valid_scheme {
        return Err(format!("invalid scheme {scheme:?}"));
    }
    if rest.contains(['/', '?', '#', '@']) {
        return Err("an origin has no path, query or user info".to_owned());
    }
    Ok((scheme.to_ascii_lowercase(), rest))
}

impl Origin {
    /// Parses a serialized origin as a browser sends it in `Origin`.
    pub fn parse(value: &str) -> Result<Self, String> {
        Self::parse_as(value, Names::Lenient)
    }

    fn parse_as(value: &str, names: Names) -> Result<Self, String> {
        let (scheme, rest) = split_origin(value.trim())?;
        let HostPort { host, port } = HostPort::parse_as(rest, names)?;
        let port = port.or_else(|| default_port(&scheme));
        Ok(Self { scheme, host, port })
    }
}

/// One `preflight.allowed_origins` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OriginRule {
    /// `*`: every well-formed origin.
    Any,
    /// `null`: the opaque origin of sandboxed frames, `file:` pages and some redirects.
    Null,
    /// One origin, port made explicit.
    Exact(Origin),
    /// `scheme://*.suffix[:port]`: any host strictly below `suffix`.
    Subdomains {
        /// `http` or `https`.
        scheme: String,
        /// The domain below which hosts match.
        suffix: String,
        /// The port, explicit or the scheme's default.
        port: Option<u16>,
    },
}

impl OriginRule {
    /// Parses an entry: `*`, `null`, `scheme://host[:port]` or
    /// `scheme://*.domain[:port]` (the wildcard is the whole leftmost label), with scheme
    /// `http`, `https`, `ws` or `wss` and the host as [`HostPort::parse_entry`] takes it.
    /// Case does not matter.
    pub fn parse(entry: &str) -> Result<Self, String> {
        let entry = entry.trim().to_lowercase();
        if entry == "*" {
            return Ok(OriginRule::Any);
        }
        if entry == "null" {
            return Ok(OriginRule::Null);
        }
        let (scheme, rest) = split_origin(&entry)?;
        if default_port(&scheme).is_none() {
            return Err(format!(
                "scheme must be http, https, ws or wss, got {scheme:?}"
            ));
        }
        let Some(domain) = rest.strip_prefix("*.") else {
            if rest.contains('*') {
                return Err(
                    "a wildcard is only allowed as the whole leftmost label (\"*.example.com\")"
                        .to_owned(),
                );
            }
            return Origin::parse_as(&entry, Names::Strict).map(OriginRule::Exact);
        };
        if domain.contains('*') {
            return Err("a wildcard is only allowed as the whole leftmost label".to_owned());
        }
        let HostPort { host, port } = HostPort::parse_entry(domain)?;
        if host.starts_with('[') || host.parse::<Ipv4Addr>().is_ok() {
            return Err("a wildcard needs a domain name, not an IP address".to_owned());
        }
        Ok(OriginRule::Subdomains {
            port: port.or_else(|| default_port(&scheme)),
            scheme,
            suffix: host,
        })
    }

    fn matches(&self, origin: Option<&Origin>) -> bool {
        match (self, origin) {
            (OriginRule::Null, None) => true,
            (OriginRule::Null, Some(_)) | (_, None) => false,
            (OriginRule::Any, Some(_)) => true,
            (OriginRule::Exact(want), Some(got)) => want == got,
            (
                OriginRule::Subdomains {
                    scheme,
                    suffix,
                    port,
                },
                Some(got),
            ) => {
                got.scheme == *scheme
                    && got.port == *port
                    && got
                        .host
                        .strip_suffix(suffix.as_str())
                        .and_then(|label| label.strip_suffix('.'))
                        .is_some_and(|label| !label.is_empty())
            }
        }
    }
}

/// `preflight.allowed_origins` and `preflight.require_origin`: which pages may open a
/// socket (cross-site WebSocket hijacking protection).
#[derive(Debug, Clone, Default)]
pub struct OriginPolicy {
    rules: Vec<OriginRule>,
    require_origin: bool,
}

impl OriginPolicy {
    /// Builds the policy from entries (see [`OriginRule::parse`]).
    ///
    /// Schemes and hosts compare case-insensitively and a scheme's default port equals
    /// the explicit one (`https://a.com` is `https://a.com:443`). A wildcard matches hosts
    /// strictly below its suffix, with the same scheme and port. `*` allows every
    /// well-formed origin but not `null`: the opaque origin is shared by every sandboxed
    /// page, so it must be listed explicitly. An empty list allows every origin.
    ///
    /// A browser always sends `Origin` on a WebSocket handshake; non-browser clients often
    /// do not. A missing `Origin` is allowed unless `require_origin`.
    ///
    /// The error names the first bad entry.
    pub fn new(allowed: &[String], require_origin: bool) -> Result<Self, String> {
        let rules = allowed
            .iter()
            .map(|entry| {
                OriginRule::parse(entry).map_err(|e| format!("invalid origin {entry:?}: {e}"))
            })
            .collect::<Result<_, _>>()?;
        Ok(Self::from_rules(rules, require_origin))
    }

    /// The policy for entries already parsed.
    pub fn from_rules(rules: Vec<OriginRule>, require_origin: bool) -> Self {
        Self {
            rules,
            require_origin,
        }
    }

    /// Checks the `Origin` header: 403 `origin_required` when it is missing and required,
    /// 403 `origin_forbidden` when it matches no entry (or is sent more than once).
    pub fn check(&self, parts: &Parts) -> Result<(), Rejection> {
        let mut values = parts.headers.get_all(header::ORIGIN).iter();
        let Some(value) = values.next() else {
            if self.require_origin {
                return Err(Rejection::new(
                    StatusCode::FORBIDDEN,
                    "origin_required",
                    "this gateway requires an Origin header",
                ));
            }
            return Ok(());
        };
        if self.rules.is_empty() {
            return Ok(());
        }
        let forbidden = || {
            Err(Rejection::new(
                StatusCode::FORBIDDEN,
                "origin_forbidden",
                format!("origin {} is not allowed", quote(value.as_bytes())),
            ))
        };
        if values.next().is_some() {
            return forbidden();
        }
        let Ok(text) = value.to_str() else {
            return forbidden();
        };
        let text = text.trim();
        let origin = if text.eq_ignore_ascii_case("null") {
            None
        } else {
            match Origin::parse(text) {
                Ok(origin) => Some(origin),
                Err(_) => return forbidden(),
            }
        };
        if self.rules.iter().any(|rule| rule.matches(origin.as_ref())) {
            Ok(())
        } else {
            forbidden()
        }
    }
}
