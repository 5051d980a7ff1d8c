#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::io::Write;
use std::time::Duration;

use config::{Value, ValueKind};
use ipnet::IpNet;
use wsgate_core::hosts::{HostPort, OriginRule};

use super::keys::apply_key;
use super::*;

const RSA_PUB: &str = "-----BEGIN PUBLIC KEY-----
MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAk+qUuqCsWQzaz/M3FnOk
ss+x6AnB48iSBpaeFk8BGRd8gZz8WTIPk2gCUDvFYzc8E83I62iLzlGhEEye1Mi+
b5vApV7Rs5VvkwQ3ZjsifElWfFJcC0skiJTIk8fRxmZrygM5Mq7gC9MTBzvIPGVS
Fz3Wcx6auGWJ20aHE/lVuj7/P6ybypQircykEJ6DK9uJ7FCmw2pQC170QRECTBeb
ZRb4zW15x2xYKQF8jqR7/MtsaOZRsUp7GsZ1C8obwo0ijRMWofxd5qokGsluVMCC
ANI+WUn5kCLugHPyHThkeanU5uw/13fb1cACyXuszApYsKIjETJqTymZ2CruSzhA
CwIDAQAB
-----END PUBLIC KEY-----
";

const EC_PUB: &str = "-----BEGIN PUBLIC KEY-----
MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEK/UgFaV9w0zxxB58meX6JGfUDqFT
c0MLmiNOERrgpVC569U0QDF1/jHzy9umCCX7v5BETtBZNoLmG4xfm+ewGA==
-----END PUBLIC KEY-----
";

const SECRET: &str = "0123456789abcdef0123456789abcdef";

fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn write_file(suffix: &str, content: &str) -> tempfile::NamedTempFile {
    let mut f = tempfile::Builder::new().suffix(suffix).tempfile().unwrap();
    f.write_all(content.as_bytes()).unwrap();
    f.flush().unwrap();
    f
}

fn keys(err: &SettingsError) -> Vec<&str> {
    err.problems.iter().map(|p| p.key.as_str()).collect()
}

fn problem<'a>(err: &'a SettingsError, key: &str) -> &'a Problem {
    err.problems
        .iter()
        .find(|p| p.key == key)
        .unwrap_or_else(|| panic!("no problem for {key} in:\n{err}"))
}

#[test]
fn defaults_load_and_validate_clean() {
    let s = load(None, &HashMap::new()).unwrap().settings;
    assert_eq!(s.server.listen, "127.0.0.1:8080".parse().unwrap());
    assert_eq!(s.server.ws_path, "/ws");
    assert_eq!(s.server.grpc_listen, "127.0.0.1:50051".parse().unwrap());
    assert_eq!(s.server.header_read_timeout, Duration::from_secs(10));
    assert_eq!(s.auth.mode, AuthMode::None);
    assert_eq!(s.auth.jwt.leeway, Duration::from_secs(30));
    assert_eq!(s.limits.handshakes_per_ip_per_s, 50);
    assert_eq!(s.limits.handshake_burst, 100);
    assert_eq!(s.limits.max_connections, 100_000);
    assert_eq!(s.session.heartbeat_interval, Duration::from_secs(25));
    assert_eq!(s.session.max_frame_bytes, 65_536);
    assert_eq!(s.session.outbound_queue, 256);
    assert_eq!(s.redis.namespace, "wsgate");
    assert_eq!(s.redis.mode, RedisMode::Standalone);
    assert_eq!(s.registry.pod_ttl, Duration::from_secs(5));
    assert_eq!(s.telemetry.sample_ratio, 1.0);
    assert_eq!(s.telemetry.log_level, "info");
    assert_eq!(s.shutdown.grace, Duration::from_secs(10));
    assert!(s.validate().is_empty());
    assert!(Settings::default().validate().is_empty());
}

#[test]
fn every_key_is_accepted_and_documented() {
    let docs = include_str!("../../../../docs/configuration.md");
    for key in KEYS {
        let mut s = Settings::default();
        assert!(
            apply_key(&mut s, key, Value::new(None, ValueKind::Nil)).is_some(),
            "{key} not handled"
        );
        assert!(
            docs.contains(&format!("| `{key}` |")),
            "{key} has no row in docs/configuration.md"
        );
    }
    // And the other way round: every key the reference documents is one the loader takes.
    for row in docs.lines().filter(|l| l.starts_with("| `")) {
        let documented = row
            .trim_start_matches("| `")
            .split('`')
            .next()
            .unwrap_or("");
        if documented.contains('.') {
            assert!(
                KEYS.contains(&documented),
                "docs/configuration.md documents {documented}, which is not a key"
            );
        }
    }
}

/// `wsgate check-config` and the running gateway read an allow-list entry with one
/// grammar: whatever loading accepts, the runtime policy accepts (and matches), and
/// whatever loading refuses, the runtime policy refuses too.
#[test]
fn check_config_and_the_runtime_policies_agree_on_hosts_and_origins() {
    use wsgate_core::preflight::{HostPolicy, OriginPolicy};

    let hosts = [
        "example.com",
        "Example.COM:8080",
        "ws.example.com.",
        "my_service",
        "10.0.0.1",
        "[::1]",
        "[::1]:9000",
        "-a.com",
        "a-.com",
        "a..com",
        "exa mple.com",
        "a.com:0",
        "a.com:99999",
        "a.com:",
        "::1",
        "[::1",
        "http://a.com",
        "u@a.com",
        "a.com/x",
    ];
    for entry in hosts {
        let loaded = load(None, &env(&[("WSGATE__PREFLIGHT__ALLOWED_HOSTS", entry)]));
        let runtime = HostPolicy::new(&[entry.to_owned()]);
        assert_eq!(
            loaded.is_ok(),
            runtime.is_ok(),
            "{entry:?}: check-config {loaded:?} vs runtime {runtime:?}"
        );
        if let Ok(config) = loaded {
            // The policy that loading built lets the entry's own host in.
            let host = entry.trim_end_matches('.');
            let request = http::Request::get("/ws")
                .header("host", host)
                .body(())
                .unwrap();
            let (parts, ()) = request.into_parts();
            assert!(
                config.preflight.host.check(&parts).is_ok(),
                "{entry:?} loads but does not let its own host in"
            );
        }
    }

    let origins = [
        "*",
        "null",
        "https://app.example.com",
        "HTTPS://App.Example.com:8443",
        "http://localhost:3000",
        "https://*.example.com",
        "wss://*.example.com:9443",
        "http://[::1]:8080",
        "https://my_service",
        "ftp://example.com",
        "chrome-extension://abc",
        "example.com",
        "https://example.com/",
        "https://a.*.com",
        "https://*",
        "https://*.10.0.0.1",
        "https://ex*.com",
        "https://-a.com",
        "https://example.com:0",
        "https://",
        "1http://a.com",
    ];
    for entry in origins {
        let loaded = load(None, &env(&[("WSGATE__PREFLIGHT__ALLOWED_ORIGINS", entry)]));
        let runtime = OriginPolicy::new(&[entry.to_owned()], false);
        assert_eq!(
            loaded.is_ok(),
            runtime.is_ok(),
            "{entry:?}: check-config {loaded:?} vs runtime {runtime:?}"
        );
    }
}

#[test]
fn pod_id_defaults() {
    let s = load(None, &env(&[("POD_NAME", "gw-7")])).unwrap().settings;
    assert_eq!(s.server.pod_id, "gw-7");
    let s = load(None, &env(&[("HOSTNAME", "node1")])).unwrap().settings;
    let suffix = s.server.pod_id.strip_prefix("node1-").unwrap();
    assert_eq!(suffix.len(), 6);
    assert!(
        suffix
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
    );
    let s = load(None, &env(&[("WSGATE__SERVER__POD_ID", "explicit")]))
        .unwrap()
        .settings;
    assert_eq!(s.server.pod_id, "explicit");
    let e = load(None, &env(&[("POD_NAME", "bad name!")])).unwrap_err();
    assert_eq!(keys(&e), ["server.pod_id"]);
}

#[test]
fn toml_with_several_bad_keys_reports_all() {
    let f = write_file(
        ".toml",
        r#"
[server]
listen = "foo"
lisen = "127.0.0.1:1"
header_read_timeout = "10 parsecs"

[auth]
mode = "kerberos"

[session]
outbound_queue = -3

[servr]
x = 1
"#,
    );
    let err = load(Some(f.path()), &HashMap::new()).unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("server.listen: invalid socket address \"foo\""),
        "{text}"
    );
    assert!(
        problem(&err, "server.lisen")
            .message
            .starts_with("unknown key")
    );
    assert!(
        problem(&err, "server.lisen")
            .message
            .contains("server.listen")
    );
    assert!(
        problem(&err, "server.header_read_timeout")
            .message
            .contains("invalid duration")
    );
    assert!(problem(&err, "auth.mode").message.contains("kerberos"));
    problem(&err, "session.outbound_queue");
    assert!(problem(&err, "servr").message.starts_with("unknown key"));
    assert_eq!(err.problems.len(), 6, "{text}");
    assert_eq!(text.lines().count(), 6);
}

#[test]
fn env_overrides_file_and_parses_lists() {
    let f = write_file(
        ".toml",
        r#"
[server]
ws_path = "/from-file"
listen = "127.0.0.1:9000"

[preflight]
allowed_origins = ["https://file.example"]
"#,
    );
    let e = env(&[
        ("WSGATE__SERVER__WS_PATH", "/from-env"),
        (
            "WSGATE__PREFLIGHT__ALLOWED_ORIGINS",
            "https://a.com, https://*.B.com:8443",
        ),
        (
            "WSGATE__CONTROL__API_KEYS",
            "k1-0123456789abcdef,k2-0123456789abcdef",
        ),
        (
            "WSGATE__PREFLIGHT__TRUSTED_PROXIES",
            "10.0.0.0/8,192.168.1.1,::1",
        ),
        ("WSGATE__LIMITS__MAX_CONNECTIONS", "7"),
        ("WSGATE__PREFLIGHT__REQUIRE_ORIGIN", "true"),
        ("WSGATE__AUTH__JWT__LEEWAY", "1m30s"),
        ("wsgate__server__grpc_listen", "0.0.0.0:1"), // not a config key: wrong case
        ("WSGATE_CONFIG", "/nonexistent.toml"),       // not a config key
        ("PATH", "/usr/bin"),
    ]);
    let s = load(Some(f.path()), &e).unwrap().settings;
    assert_eq!(s.server.ws_path, "/from-env");
    assert_eq!(s.server.listen, "127.0.0.1:9000".parse().unwrap());
    assert_eq!(
        s.preflight.allowed_origins,
        ["https://a.com", "https://*.b.com:8443"]
    );
    assert_eq!(
        s.control.api_keys,
        ["k1-0123456789abcdef", "k2-0123456789abcdef"]
    );
    assert_eq!(
        s.preflight.trusted_proxies,
        [
            "10.0.0.0/8".parse::<IpNet>().unwrap(),
            "192.168.1.1/32".parse().unwrap(),
            "::1/128".parse().unwrap()
        ]
    );
    assert_eq!(s.limits.max_connections, 7);
    assert!(s.preflight.require_origin);
    assert_eq!(s.auth.jwt.leeway, Duration::from_secs(90));
    assert_eq!(s.server.grpc_listen, "127.0.0.1:50051".parse().unwrap());
}

#[test]
fn keys_are_case_insensitive_and_env_wins() {
    let f = write_file(".toml", "[Server]\nWS_Path = \"/file\"\n");
    let s = load(Some(f.path()), &HashMap::new()).unwrap().settings;
    assert_eq!(s.server.ws_path, "/file");
    let s = load(Some(f.path()), &env(&[("WSGATE__SERVER__WS_PATH", "/env")]))
        .unwrap()
        .settings;
    assert_eq!(s.server.ws_path, "/env");
}

#[test]
fn env_problems_are_reported_per_key() {
    let e = env(&[
        ("WSGATE__SERVER__LISEN", "x"),
        ("WSGATE__SESSION__MAX_MESSAGE_BYTES", "lots"),
        ("WSGATE__TELEMETRY__SAMPLE_RATIO", "2"),
        (
            "WSGATE__PREFLIGHT__ALLOWED_ORIGINS",
            "ftp://a.com,https://a.*.com,*",
        ),
        ("WSGATE__PREFLIGHT__TRUSTED_PROXIES", "10.0.0.0/33"),
        ("WSGATE__CONTROL__API_KEYS", "tiny-key-xyz"),
        ("WSGATE__REDIS__URL", "http://redis:6379"),
    ]);
    let err = load(None, &e).unwrap_err();
    for key in [
        "server.lisen",
        "session.max_message_bytes",
        "telemetry.sample_ratio",
        "preflight.trusted_proxies",
        "control.api_keys",
        "redis.url",
    ] {
        problem(&err, key);
    }
    let origin_problems = err
        .problems
        .iter()
        .filter(|p| p.key == "preflight.allowed_origins")
        .count();
    assert_eq!(origin_problems, 2, "{err}");
    // The API key itself is never echoed.
    assert!(!err.to_string().contains("tiny-key-xyz"), "{err}");
}

#[test]
fn demo_page_follows_loopback_listen_unless_set() {
    assert!(Settings::default().server.demo_page);
    assert!(
        load(None, &HashMap::new())
            .unwrap()
            .settings
            .server
            .demo_page
    );
    let public = [
        ("WSGATE__SERVER__LISTEN", "0.0.0.0:8080"),
        ("WSGATE__AUTH__ALLOW_INSECURE", "true"),
    ];
    assert!(!load(None, &env(&public)).unwrap().settings.server.demo_page);
    let mut on = public.to_vec();
    on.push(("WSGATE__SERVER__DEMO_PAGE", "true"));
    assert!(load(None, &env(&on)).unwrap().settings.server.demo_page);
    let off = env(&[("WSGATE__SERVER__DEMO_PAGE", "false")]);
    assert!(!load(None, &off).unwrap().settings.server.demo_page);
    let err = load(None, &env(&[("WSGATE__SERVER__DEMO_PAGE", "maybe")])).unwrap_err();
    assert_eq!(keys(&err), ["server.demo_page"]);
}

#[test]
fn max_frame_follows_max_message_unless_set() {
    let s = load(
        None,
        &env(&[("WSGATE__SESSION__MAX_MESSAGE_BYTES", "1024")]),
    )
    .unwrap()
    .settings;
    assert_eq!(s.session.max_frame_bytes, 1024);
    let e = env(&[
        ("WSGATE__SESSION__MAX_MESSAGE_BYTES", "1024"),
        ("WSGATE__SESSION__MAX_FRAME_BYTES", "2048"),
    ]);
    let err = load(None, &e).unwrap_err();
    assert_eq!(keys(&err), ["session.max_frame_bytes"]);
}

#[test]
fn non_loopback_without_auth_is_refused_unless_insecure() {
    let e = env(&[("WSGATE__SERVER__LISTEN", "0.0.0.0:8080")]);
    let err = load(None, &e).unwrap_err();
    assert_eq!(keys(&err), ["auth.mode"]);
    let msg = &err.problems[0].message;
    assert!(
        msg.contains("loopback") && msg.contains("0.0.0.0:8080"),
        "{msg}"
    );

    let e = env(&[("WSGATE__SERVER__GRPC_LISTEN", "[::]:50051")]);
    let err = load(None, &e).unwrap_err();
    assert_eq!(keys(&err), ["control.api_keys"]);
    assert!(err.problems[0].message.contains("loopback"));

    let e = env(&[
        ("WSGATE__SERVER__LISTEN", "0.0.0.0:8080"),
        ("WSGATE__SERVER__GRPC_LISTEN", "0.0.0.0:50051"),
        ("WSGATE__AUTH__ALLOW_INSECURE", "true"),
    ]);
    assert!(load(None, &e).is_ok());

    let e = env(&[
        ("WSGATE__SERVER__LISTEN", "0.0.0.0:8080"),
        ("WSGATE__SERVER__GRPC_LISTEN", "0.0.0.0:50051"),
        ("WSGATE__AUTH__MODE", "JWT"),
        ("WSGATE__AUTH__JWT__SECRET", SECRET),
        ("WSGATE__CONTROL__API_KEYS", "0123456789abcdef"),
    ]);
    let s = load(None, &e).unwrap().settings;
    assert_eq!(s.auth.mode, AuthMode::Jwt);
    assert_eq!(s.auth.jwt.effective_algorithm(), Some(JwtAlgorithm::HS256));
}

#[test]
fn listen_and_grpc_listen_must_differ() {
    let mut s = Settings::default();
    s.server.grpc_listen = s.server.listen;
    let p = s.validate();
    assert_eq!(p.len(), 1);
    assert_eq!(p[0].key, "server.grpc_listen");
    // Port 0 means "any free port": both may ask for one.
    s.server.listen = "127.0.0.1:0".parse().unwrap();
    s.server.grpc_listen = s.server.listen;
    assert!(s.validate().is_empty());
}

#[test]
fn admin_listen_needs_a_port_of_its_own() {
    let clash = |admin: &str| {
        let mut s = Settings::default();
        s.server.admin_listen = Some(admin.parse().unwrap());
        s.validate()
    };
    assert!(clash("127.0.0.1:9090").is_empty());
    // Another loopback address on the same port is another socket.
    assert!(clash("127.0.0.2:8080").is_empty());
    for (admin, other) in [
        ("127.0.0.1:8080", "server.listen"),
        ("0.0.0.0:8080", "server.listen"),
        ("127.0.0.1:50051", "server.grpc_listen"),
        ("[::]:50051", "server.grpc_listen"),
    ] {
        let p = clash(admin);
        assert_eq!(p.len(), 1, "{admin}: {p:?}");
        assert_eq!(p[0].key, "server.admin_listen");
        assert!(p[0].message.contains(other), "{admin}: {}", p[0].message);
    }
    // Port 0 picks a free port each time: no clash.
    let mut s = Settings::default();
    s.server.listen = "127.0.0.1:0".parse().unwrap();
    s.server.admin_listen = s.server.listen.into();
    assert!(s.validate().is_empty());
    // Loaded from the environment; empty means unset.
    let e = env(&[("WSGATE__SERVER__ADMIN_LISTEN", "127.0.0.1:9090")]);
    let loaded = load(None, &e).unwrap().settings;
    assert_eq!(loaded.server.admin_listen, "127.0.0.1:9090".parse().ok());
    let e = env(&[("WSGATE__SERVER__ADMIN_LISTEN", "")]);
    assert_eq!(load(None, &e).unwrap().settings.server.admin_listen, None);
    let e = env(&[("WSGATE__SERVER__ADMIN_LISTEN", "9090")]);
    let err = load(None, &e).unwrap_err();
    assert_eq!(err.problems[0].key, "server.admin_listen", "{err}");
    assert!(err.to_string().contains("invalid socket address"), "{err}");
}

#[test]
fn jwt_key_rules() {
    let mut s = Settings::default();
    s.auth.mode = AuthMode::Jwt;
    let p = s.validate();
    assert_eq!(p.len(), 1);
    assert_eq!(p[0].key, "auth.jwt");

    let key_file = write_file(".pem", RSA_PUB);
    s.auth.jwt.secret = Some(SECRET.to_owned());
    s.auth.jwt.public_key_file = Some(key_file.path().to_path_buf());
    let p = s.validate();
    assert_eq!(p.len(), 1);
    assert!(p[0].message.contains("only one"), "{:?}", p);

    s.auth.jwt.public_key_file = None;
    s.auth.jwt.secret = Some("too-short".to_owned());
    let p = s.validate();
    assert_eq!(p.len(), 1);
    assert_eq!(p[0].key, "auth.jwt.secret");
    assert!(!p[0].message.contains("too-short"));

    s.auth.jwt.secret = Some(SECRET.to_owned());
    s.auth.jwt.algorithm = Some(JwtAlgorithm::RS256);
    assert_eq!(s.validate()[0].key, "auth.jwt.algorithm");

    s.auth.jwt.secret = None;
    s.auth.jwt.public_key_file = Some(key_file.path().to_path_buf());
    assert!(s.validate().is_empty(), "{:?}", s.validate());
    s.auth.jwt.algorithm = None;
    assert!(s.validate().is_empty());
    assert_eq!(s.auth.jwt.effective_algorithm(), Some(JwtAlgorithm::RS256));
    s.auth.jwt.algorithm = Some(JwtAlgorithm::HS256);
    assert_eq!(s.validate()[0].key, "auth.jwt.algorithm");

    s.auth.jwt.algorithm = Some(JwtAlgorithm::ES256);
    let ec_file = write_file(".pem", EC_PUB);
    s.auth.jwt.public_key_file = Some(ec_file.path().to_path_buf());
    assert!(s.validate().is_empty(), "{:?}", s.validate());
    s.auth.jwt.algorithm = Some(JwtAlgorithm::RS256);
    assert_eq!(s.validate()[0].key, "auth.jwt.public_key_file");

    let garbage = write_file(".pem", "not a key");
    s.auth.jwt.public_key_file = Some(garbage.path().to_path_buf());
    assert_eq!(s.validate()[0].key, "auth.jwt.public_key_file");
}

#[test]
fn rs256_with_missing_key_file_via_env() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.pem");
    let e = env(&[
        ("WSGATE__AUTH__MODE", "jwt"),
        ("WSGATE__AUTH__JWT__ALGORITHM", "RS256"),
        (
            "WSGATE__AUTH__JWT__PUBLIC_KEY_FILE",
            missing.to_str().unwrap(),
        ),
    ]);
    let err = load(None, &e).unwrap_err();
    assert_eq!(keys(&err), ["auth.jwt.public_key_file"]);
    assert!(err.problems[0].message.contains("not found"));
}

#[test]
fn yaml_and_json_files_work() {
    let f = write_file(
        ".yaml",
        "server:\n  ws_path: /yaml\n  header_read_timeout: 500ms\nredis:\n  url: redis://localhost:6379\n  mode: cluster\ntelemetry:\n  log_format: json\n  sample_ratio: 0.25\npreflight:\n  allowed_hosts: [example.com, \"[::1]:8080\"]\n",
    );
    let s = load(Some(f.path()), &HashMap::new()).unwrap().settings;
    assert_eq!(s.server.ws_path, "/yaml");
    assert_eq!(s.server.header_read_timeout, Duration::from_millis(500));
    assert_eq!(s.redis.url.as_deref(), Some("redis://localhost:6379"));
    assert_eq!(s.redis.mode, RedisMode::Cluster);
    assert_eq!(s.telemetry.log_format, LogFormat::Json);
    assert_eq!(s.telemetry.sample_ratio, 0.25);
    assert_eq!(s.preflight.allowed_hosts, ["example.com", "[::1]:8080"]);

    let f = write_file(".json", r#"{"shutdown": {"grace": "2h"}}"#);
    let err = load(Some(f.path()), &HashMap::new()).unwrap_err();
    assert_eq!(keys(&err), ["shutdown.grace"]);
}

#[test]
fn file_problems() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.toml");
    let err = load(Some(&missing), &HashMap::new()).unwrap_err();
    assert!(err.problems[0].message.contains("not found"));

    let f = write_file(".toml", "[server\nlisten = ");
    let err = load(Some(f.path()), &env(&[("WSGATE__SERVER__LISTEN", "nope")])).unwrap_err();
    assert_eq!(err.problems.len(), 2, "{err}");
    assert!(err.problems[0].message.contains("cannot parse"));
    assert_eq!(err.problems[1].key, "server.listen");

    let f = write_file(".ini", "");
    let err = load(Some(f.path()), &HashMap::new()).unwrap_err();
    assert!(err.problems[0].message.contains("extension"));
}

#[test]
fn host_and_origin_syntax() {
    for ok in [
        "*",
        "https://example.com",
        "http://localhost:3000",
        "https://*.example.com",
        "https://*.example.com:8443",
        "http://127.0.0.1:8080",
        "http://[::1]:8080",
    ] {
        assert!(OriginRule::parse(ok).is_ok(), "{ok}");
    }
    for bad in [
        "example.com",
        "ftp://example.com",
        "https://example.com/",
        "https://a.*.com",
        "https://*",
        "https://ex*.com",
        "https://example.com:0",
        "https://example.com:99999",
        "https://",
    ] {
        assert!(OriginRule::parse(bad).is_err(), "{bad}");
    }
    for ok in [
        "example.com",
        "example.com:8080",
        "10.0.0.1",
        "[::1]",
        "[::1]:80",
    ] {
        assert!(HostPort::parse_entry(ok).is_ok(), "{ok}");
    }
    for bad in ["::1", "exa mple.com", "-a.com", "a.com:x", "[::1", ""] {
        assert!(HostPort::parse_entry(bad).is_err(), "{bad}");
    }
}

#[test]
fn error_display_is_one_problem_per_line() {
    let e = SettingsError {
        problems: vec![
            Problem::new("server.listen", "invalid socket address \"foo\""),
            Problem::new("server.lisen", "unknown key"),
        ],
    };
    assert_eq!(
        e.to_string(),
        "server.listen: invalid socket address \"foo\"\nserver.lisen: unknown key"
    );
}

#[test]
fn history_rules_from_a_file_and_from_the_environment() {
    let f = write_file(
        ".toml",
        r#"
[history]
topics = [{ pattern = "chat.*", size = 100, ttl = "10m" }, { pattern = "news", size = 5 }]
idempotency_window = "30s"

[history.user]
size = 50
"#,
    );
    let config = load(Some(f.path()), &HashMap::new()).unwrap();
    let rules = &config.history;
    let chat = rules.for_topic("chat.room1").unwrap();
    assert_eq!((chat.size, chat.ttl), (100, Duration::from_secs(600)));
    let news = rules.for_topic("news").unwrap();
    assert_eq!((news.size, news.ttl), (5, Duration::from_secs(300)));
    assert!(rules.for_topic("other").is_none());
    let user = rules.for_user().unwrap();
    assert_eq!((user.size, user.ttl), (50, Duration::from_secs(300)));
    assert_eq!(rules.idempotency_window, Duration::from_secs(30));

    let config = load(
        None,
        &env(&[("WSGATE__HISTORY__TOPICS", "chat.*=100/10m, news=5")]),
    )
    .unwrap();
    assert_eq!(config.history.for_topic("chat.x").unwrap().size, 100);
    assert_eq!(
        config.history.for_topic("news").unwrap().ttl,
        Duration::from_secs(300)
    );
    assert!(
        config.history.for_user().is_none(),
        "user history is off by default"
    );
}

#[test]
fn bad_history_rules_are_reported_per_key() {
    let f = write_file(
        ".toml",
        r#"
[history]
topics = [{ pattern = "bad pattern", size = 0 }, { pattern = "ok", size = 1, color = "red" }]
idempotency_window = "2h"

[history.user]
size = 1000000
"#,
    );
    let err = load(Some(f.path()), &HashMap::new()).unwrap_err();
    let topics: Vec<&Problem> = err
        .problems
        .iter()
        .filter(|p| p.key == "history.topics")
        .collect();
    assert_eq!(topics.len(), 1, "{err}");
    assert!(topics[0].message.contains("unknown key"), "{err}");
    problem(&err, "history.idempotency_window");
    problem(&err, "history.user.size");

    let err = load(
        None,
        &env(&[("WSGATE__HISTORY__TOPICS", "bad pattern=0,chat.*=x")]),
    )
    .unwrap_err();
    assert!(
        problem(&err, "history.topics")
            .message
            .contains("invalid size"),
        "{err}"
    );
    let err = load(None, &env(&[("WSGATE__HISTORY__TOPICS", "a b=0")])).unwrap_err();
    let messages: Vec<&str> = err.problems.iter().map(|p| p.message.as_str()).collect();
    assert!(
        messages.iter().any(|m| m.contains("invalid pattern"))
            && messages.iter().any(|m| m.contains("size must be between")),
        "{err}"
    );
}

#[test]
fn event_settings_from_a_file_and_the_environment_and_their_ranges() {
    let config = load(None, &HashMap::new()).unwrap();
    assert_eq!(config.events, crate::events::EventOptions::default());
    assert!(config.events.enabled);
    assert_eq!(config.events.max_len, 100_000);

    let f = write_file(
        ".toml",
        "[events]\nenabled = false\nmax_len = 500\nqueue = 20\n",
    );
    let config = load(Some(f.path()), &HashMap::new()).unwrap();
    let e = &config.events;
    assert_eq!((e.enabled, e.max_len, e.queue), (false, 500, 20));
    let config = load(
        Some(f.path()),
        &env(&[
            ("WSGATE__EVENTS__ENABLED", "yes"),
            ("WSGATE__EVENTS__MAX_LEN", "7"),
        ]),
    )
    .unwrap();
    assert_eq!((config.events.enabled, config.events.max_len), (true, 7));

    let err = load(
        None,
        &env(&[
            ("WSGATE__EVENTS__MAX_LEN", "0"),
            ("WSGATE__EVENTS__QUEUE", "2000000"),
            ("WSGATE__EVENTS__ENABLED", "maybe"),
        ]),
    )
    .unwrap_err();
    assert!(
        problem(&err, "events.max_len")
            .message
            .contains("between 1 and 10000000"),
        "{err}"
    );
    assert!(
        problem(&err, "events.queue")
            .message
            .contains("between 1 and 1000000"),
        "{err}"
    );
    problem(&err, "events.enabled");
}

#[test]
fn client_publish_is_for_auth_off_only() {
    let mut s = Settings::default();
    s.session.client_publish = true;
    assert!(s.validate().is_empty(), "{:?}", s.validate());
    assert!(s.build().unwrap().session.client_publish);

    s.auth.mode = AuthMode::Jwt;
    s.auth.jwt.secret = Some(SECRET.to_owned());
    let p = s.validate();
    assert_eq!(p.len(), 1, "{p:?}");
    assert_eq!(p[0].key, "session.client_publish");
    assert!(p[0].message.contains("publish claim"), "{}", p[0].message);

    let e = env(&[
        ("WSGATE__LIMITS__CLIENT_PUBLISH_PER_S", "0"),
        ("WSGATE__SESSION__CLIENT_PUBLISH", "true"),
    ]);
    let loaded = load(None, &e).unwrap();
    assert_eq!(loaded.session.client_publish_per_s, 0);
    assert!(loaded.session.client_publish);
    assert_eq!(Settings::default().limits.client_publish_per_s, 20);
}

#[test]
fn rpc_is_off_by_default_and_built_from_the_environment() {
    let config = load(None, &HashMap::new()).unwrap();
    assert!(config.session.rpc.is_none());
    assert_eq!(config.settings.rpc.timeout, Duration::from_secs(5));
    assert_eq!(config.settings.rpc.max_in_flight, 8);
    assert_eq!(config.settings.rpc.max_response_bytes, 65_536);

    let config = load(
        None,
        &env(&[
            ("WSGATE__RPC__URL", "http://backend.internal:8000/rpc"),
            ("WSGATE__RPC__TIMEOUT", "750ms"),
            ("WSGATE__RPC__MAX_IN_FLIGHT", "2"),
            ("WSGATE__RPC__BEARER_TOKEN", "s3cr3t-token.value"),
        ]),
    )
    .unwrap();
    let rpc = config.session.rpc.as_ref().expect("rpc configured");
    assert_eq!(rpc.timeout, Duration::from_millis(750));
    assert_eq!(rpc.max_in_flight, 2);
    // Neither the token nor the URL's credentials show in debug output.
    let shown = format!("{config:?} {:?}", config.settings);
    assert!(!shown.contains("s3cr3t"), "{shown}");
}

#[test]
fn bad_rpc_keys_are_reported_without_their_secrets() {
    let err = load(
        None,
        &env(&[
            ("WSGATE__RPC__URL", "ftp://user:hunter2@backend/rpc"),
            ("WSGATE__RPC__TIMEOUT", "0s"),
            ("WSGATE__RPC__MAX_IN_FLIGHT", "0"),
            ("WSGATE__RPC__MAX_RESPONSE_BYTES", "10"),
        ]),
    )
    .unwrap_err();
    for key in [
        "rpc.url",
        "rpc.timeout",
        "rpc.max_in_flight",
        "rpc.max_response_bytes",
    ] {
        problem(&err, key);
    }
    assert!(!err.to_string().contains("hunter2"), "{err}");

    let err = load(
        None,
        &env(&[
            ("WSGATE__RPC__URL", "http://backend/rpc"),
            ("WSGATE__RPC__BEARER_TOKEN", "two words"),
        ]),
    )
    .unwrap_err();
    assert_eq!(keys(&err), ["rpc.bearer_token"]);
    assert!(!err.to_string().contains("words"), "{err}");

    for bad in ["not a url", "http://", "/relative/path", "backend:8000"] {
        let err = load(None, &env(&[("WSGATE__RPC__URL", bad)])).unwrap_err();
        assert_eq!(keys(&err), ["rpc.url"], "{bad}: {err}");
    }
    let err = load(None, &env(&[("WSGATE__RPC__BEARER_TOKEN", "t0k3n")])).unwrap_err();
    assert!(
        problem(&err, "rpc.bearer_token")
            .message
            .contains("without rpc.url"),
        "{err}"
    );
}

#[test]
fn webhook_endpoints_from_a_file_and_from_the_environment() {
    let f = write_file(
        ".toml",
        r#"
[[webhooks.endpoints]]
url = "https://hooks.example/in"
secret = "0123456789abcdef"
events = ["connected", "disconnected"]
name = "billing"

[[webhooks.endpoints]]
url = "http://127.0.0.1:9000/all?token=t0ken"
secret = "fedcba9876543210"
"#,
    );
    let config = load(Some(f.path()), &env(&[])).unwrap();
    let w = &config.webhooks;
    assert_eq!(w.endpoints.len(), 2);
    assert!(w.client.is_some());
    let (billing, all) = (&w.endpoints[0], &w.endpoints[1]);
    assert_eq!(billing.url.as_str(), "https://hooks.example/in");
    assert_eq!(
        (billing.name.as_str(), billing.label.as_str()),
        ("billing", "billing")
    );
    use wsgate_core::events::EventKind;
    assert_eq!(
        billing.events,
        [EventKind::Connected, EventKind::Disconnected]
    );
    assert_eq!(&*all.secret, b"fedcba9876543210");
    assert!(all.events.is_empty(), "absent = every type");
    // Without a name: a name from the URL's hash, a label without its query.
    assert!(
        all.name.starts_with("url-") && all.name.len() == 20,
        "{}",
        all.name
    );
    assert_eq!(all.label, "http://127.0.0.1:9000/all");
    assert_eq!(w.retry_for, Duration::from_secs(3600));
    assert_eq!(w.timeout, Duration::from_secs(5));
    assert_eq!(w.retry_backoff, Duration::from_millis(500));
    assert_eq!(w.lease_ttl, config.settings.registry.pod_ttl);
    let debug = format!("{config:?} {:?}", config.settings);
    for secret in ["0123456789abcdef", "fedcba9876543210", "t0ken"] {
        assert!(!debug.contains(secret), "{secret} in {debug}");
    }

    let e = env(&[
        (
            "WSGATE__WEBHOOKS__ENDPOINTS",
            r#"[{"url":"http://127.0.0.1:1/h","secret":"0123456789abcdef","events":["subscribed"]}]"#,
        ),
        ("WSGATE__WEBHOOKS__RETRY_FOR", "10m"),
        ("WSGATE__WEBHOOKS__RETRY_BACKOFF", "20ms"),
    ]);
    let config = load(None, &e).unwrap();
    let w = &config.webhooks;
    assert_eq!(w.endpoints[0].events, [EventKind::Subscribed]);
    assert_eq!(w.retry_for, Duration::from_secs(600));
    assert_eq!(w.retry_backoff, Duration::from_millis(20));
    // The same URL gives the same name, on every pod and after any restart.
    let again = load(None, &e).unwrap();
    assert_eq!(again.webhooks.endpoints[0].name, w.endpoints[0].name);
    assert!(load(None, &env(&[])).unwrap().webhooks.client.is_none());
}

#[test]
fn bad_webhooks_are_reported_per_entry_without_secrets() {
    let e = env(&[
        (
            "WSGATE__WEBHOOKS__ENDPOINTS",
            r#"[{"url":"ftp://x/","secret":"0123456789abcdef"},
                {"url":"https://ok.example/","secret":"short-secret","events":["connected","left"]},
                {"url":"not a url","secret":"0123456789abcdef"},
                {"url":"https://ok.example/","secret":"0123456789abcdef","name":"a b"},
                {"url":"https://a.example/","secret":"0123456789abcdef","name":"dup"},
                {"url":"https://b.example/","secret":"0123456789abcdef","name":"dup"}]"#,
        ),
        ("WSGATE__WEBHOOKS__RETRY_FOR", "0s"),
        ("WSGATE__WEBHOOKS__TIMEOUT", "2m"),
        ("WSGATE__WEBHOOKS__RETRY_BACKOFF", "1ms"),
    ]);
    let err = load(None, &e).unwrap_err();
    let messages: Vec<String> = err.problems.iter().map(ToString::to_string).collect();
    let has = |needle: &str| messages.iter().any(|m| m.contains(needle));
    for needle in [
        "webhooks.endpoints: entry 0: url must be an http:// or https:// URL",
        "entry 1: secret must be at least 16 bytes",
        "entry 1: unknown event type \"left\"",
        "entry 2: invalid url",
        "entry 3: name must be",
        "entry 5: the same name as entry 4",
        "webhooks.retry_for: must be between 1s",
        "webhooks.timeout: must be between 100ms and 1m",
        "webhooks.retry_backoff: must be between 10ms",
    ] {
        assert!(has(needle), "{needle:?} not in {messages:?}");
    }
    for secret in ["0123456789abcdef", "short-secret"] {
        assert!(!err.to_string().contains(secret), "{secret} quoted: {err}");
    }

    let e = env(&[("WSGATE__WEBHOOKS__ENDPOINTS", r#"{"url":"x"}"#)]);
    assert_eq!(keys(&load(None, &e).unwrap_err()), ["webhooks.endpoints"]);
    let e = env(&[(
        "WSGATE__WEBHOOKS__ENDPOINTS",
        r#"[{"url":"http://a/","secret":"0123456789abcdef","extra":1}]"#,
    )]);
    let err = load(None, &e).unwrap_err();
    assert!(
        problem(&err, "webhooks.endpoints")
            .message
            .contains("extra")
    );
}

#[test]
fn webhooks_need_the_event_log() {
    let e = env(&[
        (
            "WSGATE__WEBHOOKS__ENDPOINTS",
            r#"[{"url":"http://127.0.0.1:1/h","secret":"0123456789abcdef"}]"#,
        ),
        ("WSGATE__EVENTS__ENABLED", "false"),
    ]);
    let err = load(None, &e).unwrap_err();
    let p = problem(&err, "webhooks.endpoints");
    assert!(p.message.contains("events.enabled = true"), "{p}");
    // Without endpoints, events may be off.
    assert!(load(None, &env(&[("WSGATE__EVENTS__ENABLED", "false")])).is_ok());
}

#[test]
fn jwks_url_from_the_environment_builds_a_key_set_source() {
    let e = env(&[
        ("WSGATE__AUTH__MODE", "jwt"),
        (
            "WSGATE__AUTH__JWT__JWKS_URL",
            "http://127.0.0.1:9/.well-known/jwks.json",
        ),
        ("WSGATE__AUTH__JWT__JWKS_REFRESH", "30s"),
        ("WSGATE__AUTH__JWT__ISSUER", "https://idp.example.com"),
    ]);
    let config = load(None, &e).unwrap();
    assert_eq!(
        config.settings.auth.jwt.jwks_refresh,
        Duration::from_secs(30)
    );
    let source = config.jwks.as_ref().unwrap();
    assert_eq!(source.refresh, Duration::from_secs(30));
    assert_eq!(source.url.path(), "/.well-known/jwks.json");
    assert!(matches!(
        *config.authenticator,
        wsgate_core::auth::Authenticator::Jwks(_)
    ));
    assert_eq!(
        Settings::default().auth.jwt.jwks_refresh,
        Duration::from_secs(300)
    );
    // Loopback names and addresses may use plain http.
    for url in ["http://localhost:8000/jwks", "http://[::1]/jwks"] {
        let mut s = (*config.settings).clone();
        s.auth.jwt.jwks_url = Some(url.to_owned());
        assert!(s.validate().is_empty(), "{url}: {:?}", s.validate());
    }
    // With auth off there is nothing to fetch for.
    let mut off = (*config.settings).clone();
    off.auth.mode = AuthMode::None;
    assert!(off.build().unwrap().jwks.is_none());
}

#[test]
fn jwks_url_rules_name_their_key_and_never_quote_the_url() {
    let mut s = Settings::default();
    s.auth.mode = AuthMode::Jwt;
    s.auth.jwt.jwks_url = Some("http://127.0.0.1/jwks".to_owned());
    assert!(s.validate().is_empty(), "{:?}", s.validate());

    let mut both = s.clone();
    both.auth.jwt.secret = Some(SECRET.to_owned());
    let p = both.validate();
    assert_eq!(p.len(), 1, "{p:?}");
    assert_eq!(p[0].key, "auth.jwt");
    assert!(p[0].message.contains("only one"), "{p:?}");

    let mut alg = s.clone();
    alg.auth.jwt.algorithm = Some(JwtAlgorithm::RS256);
    assert_eq!(alg.validate()[0].key, "auth.jwt.algorithm");

    for (url, insecure_ok) in [
        ("http://user:hunter2@idp.example.com/jwks", true),
        ("http://10.0.0.1/jwks", true),
        ("ftp://hunter2.example.com/jwks", false),
        ("hunter2 is not a url", false),
        ("https://", false),
    ] {
        let mut bad = s.clone();
        bad.auth.jwt.jwks_url = Some(url.to_owned());
        let p = bad.validate();
        assert_eq!(p.len(), 1, "{url}: {p:?}");
        assert_eq!(p[0].key, "auth.jwt.jwks_url", "{url}");
        assert!(!p[0].message.contains("hunter2"), "{url}: {}", p[0].message);
        bad.auth.allow_insecure = true;
        assert_eq!(
            bad.validate().is_empty(),
            insecure_ok,
            "{url}: {:?}",
            bad.validate()
        );
    }

    for refresh in [
        Duration::ZERO,
        Duration::from_millis(500),
        Duration::from_secs(2 * 86_400),
    ] {
        let mut bad = s.clone();
        bad.auth.jwt.jwks_refresh = refresh;
        let p = bad.validate();
        assert_eq!(p.len(), 1, "{refresh:?}: {p:?}");
        assert_eq!(p[0].key, "auth.jwt.jwks_refresh");
    }
}

#[test]
fn eddsa_public_key_files_are_accepted() {
    let mut s = Settings::default();
    s.auth.mode = AuthMode::Jwt;
    s.auth.jwt.algorithm = Some(JwtAlgorithm::EdDSA);
    let ed = write_file(
        ".pem",
        include_str!("../../../../tests/fixtures/jwks/ed25519.pub.pem"),
    );
    s.auth.jwt.public_key_file = Some(ed.path().to_path_buf());
    assert!(s.validate().is_empty(), "{:?}", s.validate());
    let rsa = write_file(".pem", RSA_PUB);
    s.auth.jwt.public_key_file = Some(rsa.path().to_path_buf());
    let p = s.validate();
    assert_eq!(p[0].key, "auth.jwt.public_key_file");
    assert!(p[0].message.contains("Ed25519"), "{p:?}");
}

mod proxy;
