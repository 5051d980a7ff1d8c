//! The `Sec-WebSocket-Extensions` negotiation (RFC 6455 §9.1, RFC 7692 §5 and §7.1).
//!
//! The server takes the first `permessage-deflate` offer it can honour and always answers
//! with both `no_context_takeover` parameters (a server may add
//! `client_no_context_takeover` unasked, RFC 7692 §7.1.1.2): every message then stands
//! alone in both directions. An offer is declined (and the next one considered) when it
//! asks for a server window under 32 KiB (miniz_oxide always uses 15 bits), repeats a
//! parameter, has a bad value or a parameter this server does not know. No offer ever
//! fails the handshake: the connection then goes on uncompressed.

/// The answer to an accepted offer without `server_max_window_bits`.
pub const RESPONSE: &str =
    "permessage-deflate; server_no_context_takeover; client_no_context_takeover";

/// The answer to an accepted offer with `server_max_window_bits=15`, which the response
/// must repeat (RFC 7692 §7.1.2.1).
const RESPONSE_WINDOW_15: &str = "permessage-deflate; server_no_context_takeover; client_no_context_takeover; server_max_window_bits=15";

/// The extension's name.
const NAME: &str = "permessage-deflate";

/// The response header value for the first acceptable `permessage-deflate` offer among
/// the values of every `Sec-WebSocket-Extensions` header line, if any.
pub fn negotiate<'a>(values: impl IntoIterator<Item = &'a str>) -> Option<&'static str> {
    values
        .into_iter()
        .flat_map(|v| split_outside_quotes(v, ','))
        .find_map(accept_offer)
}

/// Whether one offer (`name; param; param=value`) is acceptable, and the answer.
fn accept_offer(offer: &str) -> Option<&'static str> {
    let mut parts = split_outside_quotes(offer, ';');
    if !parts.next()?.trim().eq_ignore_ascii_case(NAME) {
        return None;
    }
    let mut seen = [false; 4];
    let mut window_15 = false;
    for param in parts {
        let (name, value) = match param.split_once('=') {
            Some((n, v)) => (n.trim(), Some(unquote(v.trim())?)),
            None => (param.trim(), None),
        };
        let index = match name.to_ascii_lowercase().as_str() {
            "server_no_context_takeover" if value.is_none() => 0,
            "client_no_context_takeover" if value.is_none() => 1,
            "server_max_window_bits" => {
                // Only the full window is honoured: the compressor cannot use less.
                if window_bits(value.as_deref()?)? != 15 {
                    return None;
                }
                window_15 = true;
                2
            }
            "client_max_window_bits" => {
                // Any client window is fine: the inflater has 32 KiB.
                if let Some(v) = value.as_deref() {
                    window_bits(v)?;
                }
                3
            }
            _ => return None,
        };
        if std::mem::replace(&mut seen[index], true) {
            return None;
        }
    }
    Some(if window_15 {
        RESPONSE_WINDOW_15
    } else {
        RESPONSE
    })
}

/// A window size parameter: a decimal integer from 8 to 15, no leading zero.
fn window_bits(value: &str) -> Option<u8> {
    if value.starts_with('0') || value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    value.parse().ok().filter(|bits| (8..=15).contains(bits))
}

/// A parameter value as a token or a quoted string (RFC 7230 quoted-string with
/// backslash escapes); `None` when it is malformed.
fn unquote(value: &str) -> Option<String> {
    let Some(inner) = value.strip_prefix('"') else {
        return (!value.is_empty() && !value.contains('"')).then(|| value.to_owned());
    };
    let inner = inner.strip_suffix('"')?;
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => out.push(chars.next()?),
            '"' => return None,
            c => out.push(c),
        }
    }
    Some(out)
}

/// Splits at `sep` where it is not inside a quoted string.
fn split_outside_quotes(s: &str, sep: char) -> impl Iterator<Item = &str> {
    let mut rest = Some(s);
    std::iter::from_fn(move || {
        let s = rest?;
        let (mut quoted, mut escaped) = (false, false);
        for (i, c) in s.char_indices() {
            match c {
                _ if escaped => escaped = false,
                '\\' if quoted => escaped = true,
                '"' => quoted = !quoted,
                c if c == sep && !quoted => {
                    rest = Some(&s[i + c.len_utf8()..]);
                    return Some(&s[..i]);
                }
                _ => {}
            }
        }
        rest = None;
        Some(s)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(v: &str) -> Option<&'static str> {
        negotiate([v])
    }

    #[test]
    fn accepts_the_rfc7692_offers() {
        // §5.1 and §7.1 examples.
        assert_eq!(one("permessage-deflate"), Some(RESPONSE));
        assert_eq!(
            one("permessage-deflate; client_max_window_bits"),
            Some(RESPONSE)
        );
        assert_eq!(
            one("permessage-deflate; client_max_window_bits=10"),
            Some(RESPONSE)
        );
        assert_eq!(
            one("permessage-deflate; server_no_context_takeover; client_no_context_takeover"),
            Some(RESPONSE)
        );
        assert_eq!(
            one("PerMessage-Deflate ;Client_Max_Window_Bits=\"12\""),
            Some(RESPONSE)
        );
        assert_eq!(
            one("permessage-deflate; server_max_window_bits=15"),
            Some(RESPONSE_WINDOW_15)
        );
        // What browsers send.
        assert_eq!(
            one("permessage-deflate; client_max_window_bits"),
            Some(RESPONSE)
        );
    }

    #[test]
    fn declines_what_it_cannot_honour_and_takes_the_next_offer() {
        // §5.2's example: the server declines the first offer and takes the second.
        let offers = "permessage-deflate; server_max_window_bits=10, permessage-deflate";
        assert_eq!(one(offers), Some(RESPONSE));
        assert_eq!(one("permessage-deflate; server_max_window_bits=10"), None);
        assert_eq!(one("permessage-deflate; server_max_window_bits"), None);
        assert_eq!(one("permessage-deflate; client_max_window_bits=16"), None);
        assert_eq!(one("permessage-deflate; client_max_window_bits=7"), None);
        assert_eq!(one("permessage-deflate; client_max_window_bits=010"), None);
        assert_eq!(
            one("permessage-deflate; client_max_window_bits=\"1\\0\""),
            Some(RESPONSE)
        );
        assert_eq!(one("permessage-deflate; client_max_window_bits=\"10"), None);
        assert_eq!(
            one("permessage-deflate; client_no_context_takeover; client_no_context_takeover"),
            None
        );
        assert_eq!(
            one("permessage-deflate; server_no_context_takeover=1"),
            None
        );
        assert_eq!(one("permessage-deflate; foo"), None);
        assert_eq!(one("x-webkit-deflate-frame"), None);
        assert_eq!(one(""), None);
        assert_eq!(one(",,;"), None);
    }

    #[test]
    fn reads_every_header_line_and_quoted_commas() {
        assert_eq!(
            negotiate([
                "foo; bar=\"a,b;c\"",
                "permessage-deflate; server_max_window_bits=9",
                "permessage-deflate; client_no_context_takeover"
            ]),
            Some(RESPONSE)
        );
        assert_eq!(negotiate(["foo", "bar"]), None);
        assert_eq!(negotiate(std::iter::empty()), None);
    }
}
