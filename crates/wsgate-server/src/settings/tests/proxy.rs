//! `[auth.proxy]`: what builds a connect proxy, and the problems of each key, named and
//! never quoting the URL.

use super::*;

fn proxy_settings() -> Settings {
    let mut s = Settings::default();
    s.auth.mode = AuthMode::Proxy;
    s.auth.proxy.url = Some("http://127.0.0.1:9/auth".to_owned());
    s.auth.proxy.headers = vec!["Cookie".to_owned()];
    s.preflight.allowed_origins = vec!["https://app.example.com".to_owned()];
    s
}

/// The one problem of `s`, which must be under `key`; its message.
fn only_problem(s: &Settings, key: &str) -> String {
    let p = s.validate();
    assert_eq!(p.len(), 1, "{p:?}");
    assert_eq!(p[0].key, key, "{p:?}");
    p[0].message.clone()
}

#[test]
fn proxy_mode_from_the_environment_builds_a_connect_proxy() {
    let e = env(&[
        ("WSGATE__AUTH__MODE", "proxy"),
        ("WSGATE__AUTH__PROXY__URL", "http://localhost:3000/ws-auth"),
        ("WSGATE__AUTH__PROXY__HEADERS", "Cookie, X-Csrf-Token"),
        ("WSGATE__AUTH__PROXY__TIMEOUT", "500ms"),
        ("WSGATE__AUTH__PROXY__CACHE_TTL", "30s"),
        (
            "WSGATE__PREFLIGHT__ALLOWED_ORIGINS",
            "https://app.example.com",
        ),
    ]);
    let config = load(None, &e).unwrap();
    let proxy = &config.settings.auth.proxy;
    assert_eq!(proxy.headers, ["Cookie", "X-Csrf-Token"]);
    assert_eq!(proxy.timeout, Duration::from_millis(500));
    assert_eq!(proxy.cache_ttl, Duration::from_secs(30));
    assert!(config.connect_proxy.is_some());
    assert!(matches!(
        *config.authenticator,
        wsgate_core::auth::Authenticator::Proxy(_)
    ));
    // The backend's expires_at is kept to the second.
    assert_eq!(config.session.token_leeway, Duration::ZERO);

    let defaults = Settings::default().auth.proxy;
    assert_eq!(defaults.timeout, Duration::from_secs(2));
    assert_eq!(defaults.cache_ttl, Duration::ZERO);
    assert!(defaults.url.is_none() && defaults.headers.is_empty());

    // In another mode the proxy keys are not used.
    let mut off = (*config.settings).clone();
    off.auth.mode = AuthMode::None;
    let built = off.build().unwrap();
    assert!(built.connect_proxy.is_none());
    assert!(matches!(
        *built.authenticator,
        wsgate_core::auth::Authenticator::None
    ));
}

#[test]
fn proxy_mode_counts_as_auth_on_a_public_listener() {
    let mut s = proxy_settings();
    s.server.listen = "0.0.0.0:8080".parse().unwrap();
    assert!(s.validate().is_empty(), "{:?}", s.validate());
}

#[test]
fn the_url_is_required_and_checked_like_the_jwks_url() {
    let mut s = proxy_settings();
    s.auth.proxy.url = None;
    let message = only_problem(&s, "auth.proxy.url");
    assert!(message.contains("needs the URL"), "{message}");

    for (url, insecure_ok) in [
        ("http://user:hunter2@auth.example.com/check", true),
        ("http://10.0.0.1/check", true),
        ("ftp://hunter2.example.com/check", false),
        ("hunter2 is not a url", false),
        ("https://", false),
    ] {
        let mut bad = proxy_settings();
        bad.auth.proxy.url = Some(url.to_owned());
        let message = only_problem(&bad, "auth.proxy.url");
        assert!(!message.contains("hunter2"), "{url}: {message}");
        bad.auth.allow_insecure = true;
        assert_eq!(bad.validate().is_empty(), insecure_ok, "{url}");
    }
    let mut plain = proxy_settings();
    plain.auth.proxy.url = Some("http://auth.example.com/check".to_owned());
    let message = only_problem(&plain, "auth.proxy.url");
    assert!(
        message.contains("https://") && message.contains("auth.allow_insecure"),
        "{message}"
    );
}

#[test]
fn the_timeout_and_the_cache_ttl_are_bounded() {
    for timeout in [
        Duration::ZERO,
        Duration::from_millis(99),
        Duration::from_secs(31),
    ] {
        let mut bad = proxy_settings();
        bad.auth.proxy.timeout = timeout;
        let message = only_problem(&bad, "auth.proxy.timeout");
        assert!(message.contains("between 100ms and 30s"), "{message}");
    }
    for ok in [Duration::from_millis(100), Duration::from_secs(30)] {
        let mut s = proxy_settings();
        s.auth.proxy.timeout = ok;
        assert!(s.validate().is_empty(), "{ok:?}");
    }
    let mut bad = proxy_settings();
    bad.auth.proxy.cache_ttl = Duration::from_secs(601);
    let message = only_problem(&bad, "auth.proxy.cache_ttl");
    assert!(
        message.contains("at most 10m") && message.contains("logout"),
        "{message}"
    );
    let mut ok = proxy_settings();
    ok.auth.proxy.cache_ttl = Duration::from_secs(600);
    assert!(ok.validate().is_empty());
}

#[test]
fn the_header_list_must_name_valid_headers() {
    let mut empty = proxy_settings();
    empty.auth.proxy.headers = Vec::new();
    let message = only_problem(&empty, "auth.proxy.headers");
    assert!(message.contains("at least one"), "{message}");

    for name in ["Bad Header", "Cookie:", "X-é", "a\"b"] {
        let mut bad = proxy_settings();
        bad.auth.proxy.headers = vec!["Cookie".to_owned(), name.to_owned()];
        let message = only_problem(&bad, "auth.proxy.headers");
        assert!(
            message.contains("invalid header name") && message.contains(&format!("{name:?}")),
            "{name}: {message}"
        );
    }
    // Names are case-insensitive; a duplicate is harmless.
    let mut dup = proxy_settings();
    dup.auth.proxy.headers = vec!["Cookie".to_owned(), "cookie".to_owned()];
    assert!(dup.validate().is_empty());

    // From a file, a bad list is reported with every other problem.
    let file = write_file(
        ".toml",
        "[auth]\nmode = \"proxy\"\n[auth.proxy]\nurl = \"https://auth.example.com/check\"\n\
         headers = []\ntimeout = \"1m\"\n[preflight]\nallowed_origins = [\"https://a.example\"]\n",
    );
    let err = load(Some(file.path()), &HashMap::new()).unwrap_err();
    let mut found = keys(&err);
    found.sort_unstable();
    assert_eq!(found, ["auth.proxy.headers", "auth.proxy.timeout"], "{err}");
}

#[test]
fn client_publish_does_not_apply_to_the_connect_proxy() {
    let mut s = proxy_settings();
    s.session.client_publish = true;
    let message = only_problem(&s, "session.client_publish");
    assert!(message.contains("publish list"), "{message}");
}

#[test]
fn forwarding_cookies_needs_an_origin_allow_list() {
    let mut s = proxy_settings();
    s.preflight.allowed_origins = Vec::new();
    let message = only_problem(&s, "preflight.allowed_origins");
    assert!(
        message.contains("Cookie") && message.contains("cross-site"),
        "{message}"
    );
    // The header name is matched case-insensitively.
    s.auth.proxy.headers = vec!["COOKIE".to_owned()];
    assert_eq!(s.validate().len(), 1);
    // Other credentials are not sent by browsers on their own.
    s.auth.proxy.headers = vec!["X-Session".to_owned()];
    assert!(s.validate().is_empty(), "{:?}", s.validate());
    s.auth.proxy.headers = vec!["Cookie".to_owned()];
    s.auth.allow_insecure = true;
    assert!(s.validate().is_empty(), "{:?}", s.validate());
}
