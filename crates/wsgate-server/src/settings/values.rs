//! Parsers for one configuration value each: the `config` crate hands over a loosely
//! typed [`Value`] (a file may say `8080` or `"8080"`; the environment always says a
//! string), and each parser turns it into the field's type or says what is wrong.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use config::{Value, ValueKind};
use ipnet::IpNet;
use strum::VariantNames;

use super::sections::{AuthMode, JwtAlgorithm, LogFormat, OtlpProtocol, RedisMode, TopicHistory};

/// A single scalar as a string (numbers and booleans are converted).
pub(super) fn scalar(v: Value) -> Result<String, String> {
    match v.kind {
        ValueKind::String(s) => Ok(s),
        ValueKind::Boolean(b) => Ok(b.to_string()),
        ValueKind::I64(n) => Ok(n.to_string()),
        ValueKind::I128(n) => Ok(n.to_string()),
        ValueKind::U64(n) => Ok(n.to_string()),
        ValueKind::U128(n) => Ok(n.to_string()),
        ValueKind::Float(n) => Ok(n.to_string()),
        ValueKind::Nil => Err("expected a value, got nothing (null)".to_owned()),
        ValueKind::Table(_) => Err("expected a single value, got a table".to_owned()),
        ValueKind::Array(_) => Err("expected a single value, got a list".to_owned()),
    }
}

pub(super) fn string(v: Value) -> Result<String, String> {
    scalar(v)
}

pub(super) fn opt_string(v: Value) -> Result<Option<String>, String> {
    if matches!(v.kind, ValueKind::Nil) {
        return Ok(None);
    }
    let s = scalar(v)?;
    Ok(if s.trim().is_empty() { None } else { Some(s) })
}

pub(super) fn socket_addr(v: Value) -> Result<SocketAddr, String> {
    parse_socket_addr(&scalar(v)?)
}

/// An optional listener address: unset, null or an empty string (an environment
/// variable set to nothing) mean none.
pub(super) fn opt_socket_addr(v: Value) -> Result<Option<SocketAddr>, String> {
    opt_string(v)?.as_deref().map(parse_socket_addr).transpose()
}

fn parse_socket_addr(s: &str) -> Result<SocketAddr, String> {
    s.trim().parse().map_err(|_| {
        format!("invalid socket address {s:?} (expected IP:PORT, e.g. \"0.0.0.0:8080\")")
    })
}

pub(super) fn duration(v: Value) -> Result<Duration, String> {
    let s = scalar(v)?;
    humantime::parse_duration(s.trim()).map_err(|e| {
        format!("invalid duration {s:?}: {e} (use e.g. \"25s\", \"1m30s\", \"500ms\")")
    })
}

pub(super) fn boolean(v: Value) -> Result<bool, String> {
    if let ValueKind::Boolean(b) = v.kind {
        return Ok(b);
    }
    let s = scalar(v)?;
    match s.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        _ => Err(format!("invalid boolean {s:?}: expected true or false")),
    }
}

pub(super) fn uint<T: TryFrom<u64>>(v: Value) -> Result<T, String> {
    let s = scalar(v)?;
    let n: u64 = s
        .trim()
        .parse()
        .map_err(|_| format!("invalid number {s:?}: expected a non-negative integer"))?;
    T::try_from(n).map_err(|_| format!("{n} is too large"))
}

pub(super) fn float(v: Value) -> Result<f64, String> {
    let s = scalar(v)?;
    s.trim()
        .parse()
        .map_err(|_| format!("invalid number {s:?}: expected a decimal number"))
}

/// A key whose value names one of a few choices (an enum with strum's derives).
pub(super) trait Choice: FromStr + VariantNames {
    /// The message for a value that names none of them.
    fn invalid(value: &str) -> String {
        let names: Vec<String> = Self::VARIANTS.iter().map(|v| format!("{v:?}")).collect();
        let expected = match names.split_last() {
            Some((last, rest)) if !rest.is_empty() => format!("{} or {last}", rest.join(", ")),
            _ => names.join(""),
        };
        format!("invalid value {value:?}: expected {expected}")
    }
}

impl Choice for AuthMode {}
impl Choice for RedisMode {}
impl Choice for LogFormat {}
impl Choice for OtlpProtocol {}
impl Choice for JwtAlgorithm {
    fn invalid(value: &str) -> String {
        format!("unsupported JWT algorithm {value:?}: use HS256, RS256 or ES256")
    }
}

pub(super) fn choice<T: Choice>(v: Value) -> Result<T, String> {
    let s = scalar(v)?;
    s.trim().parse().map_err(|_| T::invalid(&s))
}

pub(super) fn opt_choice<T: Choice>(v: Value) -> Result<Option<T>, String> {
    match opt_string(v)? {
        None => Ok(None),
        Some(s) => s.trim().parse().map(Some).map_err(|_| T::invalid(&s)),
    }
}

pub(super) fn opt_path(v: Value) -> Result<Option<PathBuf>, String> {
    opt_string(v).map(|s| s.map(PathBuf::from))
}

/// A list of entries compared case-insensitively (origins, hosts), stored lowercased.
pub(super) fn lowercase_list(v: Value) -> Result<Vec<String>, String> {
    string_list(v).map(|list| list.iter().map(|s| s.to_lowercase()).collect())
}

/// A list: a real list, or a comma-separated string (environment variables).
/// Entries are trimmed; empty entries are dropped.
pub(super) fn string_list(v: Value) -> Result<Vec<String>, String> {
    let raw: Vec<String> = match v.kind {
        ValueKind::Nil => Vec::new(),
        ValueKind::Array(items) => items
            .into_iter()
            .enumerate()
            .map(|(i, item)| scalar(item).map_err(|e| format!("entry {i}: {e}")))
            .collect::<Result<_, _>>()?,
        kind => scalar(Value::new(None, kind))?
            .split(',')
            .map(str::to_owned)
            .collect(),
    };
    Ok(raw
        .into_iter()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .collect())
}

pub(super) fn ip_nets(v: Value) -> Result<Vec<IpNet>, String> {
    let mut nets = Vec::new();
    let mut bad = Vec::new();
    for entry in string_list(v)? {
        if let Ok(net) = entry.parse::<IpNet>() {
            nets.push(net);
        } else if let Ok(ip) = entry.parse::<IpAddr>() {
            nets.push(IpNet::from(ip));
        } else {
            bad.push(format!("{entry:?}"));
        }
    }
    if bad.is_empty() {
        Ok(nets)
    } else {
        Err(format!(
            "invalid IP network {} (expected CIDR like \"10.0.0.0/8\" or a bare IP)",
            bad.join(", ")
        ))
    }
}

/// `history.topics`: a list of tables `{ pattern, size, ttl }` (a file), or a
/// comma-separated `pattern=size[/ttl]` list (the environment). `ttl` defaults to 5m.
pub(super) fn topic_history(v: Value) -> Result<Vec<TopicHistory>, String> {
    const DEFAULT_TTL: Duration = Duration::from_secs(300);
    let items = match v.kind {
        ValueKind::Nil => return Ok(Vec::new()),
        ValueKind::Array(items) => items,
        kind => {
            let text = scalar(Value::new(None, kind))?;
            return text
                .split(',')
                .map(str::trim)
                .filter(|e| !e.is_empty())
                .map(|entry| {
                    let (pattern, rest) = entry.split_once('=').ok_or_else(|| {
                        format!("entry {entry:?}: expected pattern=size or pattern=size/ttl")
                    })?;
                    let (size, ttl) = match rest.split_once('/') {
                        Some((size, ttl)) => (size, Some(ttl)),
                        None => (rest, None),
                    };
                    Ok(TopicHistory {
                        pattern: pattern.trim().to_owned(),
                        size: size
                            .trim()
                            .parse()
                            .map_err(|_| format!("entry {entry:?}: invalid size {size:?}"))?,
                        ttl: match ttl {
                            Some(t) => duration(Value::new(None, ValueKind::String(t.into())))?,
                            None => DEFAULT_TTL,
                        },
                    })
                })
                .collect();
        }
    };
    items
        .into_iter()
        .enumerate()
        .map(|(i, item)| {
            let ValueKind::Table(mut table) = item.kind else {
                return Err(format!(
                    "entry {i}: expected a table {{ pattern = \"…\", size = N, ttl = \"…\" }}"
                ));
            };
            let mut take = |key: &str| {
                table
                    .iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case(key))
                    .map(|(k, _)| k.clone())
                    .and_then(|k| table.remove(&k))
            };
            let pattern = take("pattern").ok_or_else(|| format!("entry {i}: missing pattern"))?;
            let size = take("size").ok_or_else(|| format!("entry {i}: missing size"))?;
            let ttl = take("ttl");
            if let Some(unknown) = table.keys().next() {
                return Err(format!("entry {i}: unknown key {unknown:?}"));
            }
            Ok(TopicHistory {
                pattern: string(pattern).map_err(|e| format!("entry {i}: pattern: {e}"))?,
                size: uint(size).map_err(|e| format!("entry {i}: size: {e}"))?,
                ttl: match ttl {
                    Some(t) => duration(t).map_err(|e| format!("entry {i}: ttl: {e}"))?,
                    None => DEFAULT_TTL,
                },
            })
        })
        .collect()
}
