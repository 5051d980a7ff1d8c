//! The real `wsgate` binary as a process: configuration errors and exit codes, a
//! graceful shutdown under SIGTERM with clients connected, and the control commands'
//! output.

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use tokio_tungstenite::tungstenite::Message;
use wsgate_tests::*;

/// A `wsgate` command with a clean environment (no inherited `WSGATE__*`).
fn wsgate(args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(wsgate_binary());
    cmd.args(args)
        .env_clear()
        .env("POD_NAME", "proc-test")
        .envs(env.iter().copied())
        .stdin(Stdio::null());
    cmd
}

fn run(args: &[&str], env: &[(&str, &str)]) -> Output {
    wsgate(args, env).output().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn a_file_with_several_bad_keys_lists_every_problem_and_exits_64() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("wsgate.toml");
    std::fs::write(
        &file,
        r#"
[server]
listen = "not-an-address"
ws_pth = "/typo"

[session]
heartbeat_interval = "soon"

[auth]
mode = "maybe"
"#,
    )
    .unwrap();
    for sub in ["check-config", "serve"] {
        let out = run(&[sub, "--config", file.to_str().unwrap()], &[]);
        assert_eq!(out.status.code(), Some(64), "{sub}: {}", stderr(&out));
        let err = stderr(&out);
        for key in [
            "server.listen",
            "server.ws_pth",
            "session.heartbeat_interval",
            "auth.mode",
        ] {
            assert!(err.contains(key), "{sub}: {key} missing from:\n{err}");
        }
    }
    let good = dir.path().join("good.toml");
    std::fs::write(&good, "[server]\nws_path = \"/socket\"\n").unwrap();
    let out = run(&["check-config", "--config", good.to_str().unwrap()], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
}

#[test]
fn a_public_listener_without_auth_refuses_to_start() {
    let port = free_port().to_string();
    let listen = format!("0.0.0.0:{port}");
    let out = run(&["serve"], &[("WSGATE__SERVER__LISTEN", &listen)]);
    assert_eq!(out.status.code(), Some(64), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("auth.mode") && err.contains("loopback"),
        "{err}"
    );
    // The same with the control plane exposed and no API keys.
    let out = run(
        &["check-config"],
        &[("WSGATE__SERVER__GRPC_LISTEN", "0.0.0.0:50999")],
    );
    assert_eq!(out.status.code(), Some(64));
    assert!(
        stderr(&out).contains("control.api_keys"),
        "{}",
        stderr(&out)
    );
    // Explicitly allowed: starts (checked without binding).
    let out = run(
        &["check-config"],
        &[
            ("WSGATE__SERVER__LISTEN", &listen),
            ("WSGATE__AUTH__ALLOW_INSECURE", "true"),
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
}

/// A running `wsgate serve` process, killed on drop.
struct Served {
    child: std::process::Child,
    http: String,
    grpc: String,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn serve(file: Option<&std::path::Path>, env: &[(&str, &str)]) -> Served {
    let http = format!("127.0.0.1:{}", free_port());
    // A port just released can be handed out again at once: make sure the two differ.
    let grpc = loop {
        let candidate = format!("127.0.0.1:{}", free_port());
        if candidate != http {
            break candidate;
        }
    };
    let mut args = vec!["serve".to_string()];
    if let Some(f) = file {
        args.extend(["--config".into(), f.display().to_string()]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut all_env = vec![
        ("WSGATE__SERVER__LISTEN", http.as_str()),
        ("WSGATE__SERVER__GRPC_LISTEN", grpc.as_str()),
    ];
    all_env.extend_from_slice(env);
    let child = wsgate(&args, &all_env)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let served = Served { child, http, grpc };
    let addr = served.http.parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(r) = raw_request(addr, b"GET /readyz HTTP/1.1\r\nHost: t\r\n\r\n").await
            && r.status == 200
        {
            return served;
        }
        assert!(
            Instant::now() < deadline,
            "wsgate serve did not become ready"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn environment_overrides_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("wsgate.yaml");
    std::fs::write(&file, "server:\n  ws_path: /from-file\n").unwrap();
    let served = serve(Some(&file), &[("WSGATE__SERVER__WS_PATH", "/from-env")]).await;
    let addr = served.http.parse().unwrap();
    let r = raw_request(addr, &upgrade_request("/from-env?user=a", ""))
        .await
        .unwrap();
    assert_eq!(r.status, 101);
    let r = raw_request(addr, &upgrade_request("/from-file?user=a", ""))
        .await
        .unwrap();
    assert_eq!(r.status, 404);
}

#[tokio::test]
async fn sigterm_closes_every_client_with_1001_spread_over_the_grace_period_and_exits_0() {
    const CLIENTS: usize = 6;
    let grace = Duration::from_secs(2);
    let mut served = serve(None, &[("WSGATE__SHUTDOWN__GRACE", "2s")]).await;
    let mut readers = Vec::new();
    for i in 0..CLIENTS {
        let url = format!("ws://{}/ws?user=u{i}", served.http);
        let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
        readers.push(tokio::spawn(async move {
            while let Some(msg) = ws.next().await {
                if let Ok(Message::Close(frame)) = msg {
                    let frame = frame.expect("close frame has a code");
                    return (
                        Instant::now(),
                        u16::from(frame.code),
                        frame.reason.to_string(),
                    );
                }
            }
            panic!("connection ended without a close frame");
        }));
    }

    let started = Instant::now();
    wsgate_tests::hostile::signal(served.child.id(), "-TERM");

    let mut closes = Vec::new();
    for r in readers {
        let (at, code, reason) = tokio::time::timeout(grace * 2, r).await.unwrap().unwrap();
        assert_eq!(code, 1001);
        assert!(
            reason.contains("reconnect"),
            "reason tells the client to reconnect: {reason}"
        );
        closes.push(at.duration_since(started));
    }
    let status = tokio::task::spawn_blocking(move || {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(status) = served.child.try_wait().unwrap() {
                return Some((status, Instant::now()));
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    })
    .await
    .unwrap();
    let (status, exited_at) = status.expect("wsgate did not exit after SIGTERM");
    assert_eq!(status.code(), Some(0));
    let took = exited_at.duration_since(started);
    assert!(
        took <= grace + Duration::from_millis(1500),
        "exit took {took:?}"
    );
    closes.sort();
    eprintln!("closes after SIGTERM: {closes:?}; exit after {took:?}");
    let spread = closes[CLIENTS - 1] - closes[0];
    assert!(
        spread >= grace / 4,
        "closes were not spread over the grace period: {closes:?}"
    );
}

#[tokio::test]
async fn a_grpc_client_that_never_goes_away_does_not_hold_the_shutdown() {
    use tokio::io::AsyncWriteExt;
    let mut served = serve(None, &[("WSGATE__SHUTDOWN__GRACE", "1s")]).await;
    let grpc = served.grpc.clone();
    // An HTTP/2 connection that says hello and then never reads: it cannot acknowledge
    // a graceful GOAWAY.
    let mut stuck = tokio::net::TcpStream::connect(&grpc).await.unwrap();
    stuck
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    wsgate_tests::hostile::signal(served.child.id(), "-TERM");
    let exited = tokio::task::spawn_blocking(move || {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = served.child.try_wait().unwrap() {
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    })
    .await
    .unwrap();
    let status = exited.expect("wsgate did not exit with a stuck gRPC client connected");
    assert_eq!(status.code(), Some(0));
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    drop(stuck);
}

/// Runs the binary off the async workers (the gateway under test runs on them).
async fn cli(args: Vec<String>) -> Output {
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        run(&args, &[])
    })
    .await
    .unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[tokio::test]
async fn the_control_commands_print_stream_positions_and_history() {
    let mut settings = base_settings();
    settings.history.topics = vec![wsgate_server::settings::TopicHistory {
        pattern: "chat.*".into(),
        size: 3,
        ttl: Duration::from_secs(300),
    }];
    settings.history.user.size = 2;
    let gw = Gateway::start(settings).await;
    let grpc_addr = gw.grpc.to_string();
    let call = |args: &[&str]| {
        let mut all: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        all.extend(["--grpc".to_string(), grpc_addr.clone()]);
        cli(all)
    };
    let ok = |o: Output| {
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
        stdout(&o)
    };

    // Without history: the one line it always was.
    let out = ok(call(&["publish", "--topic", "news", "plain"]).await);
    assert!(
        out.starts_with("published to 0 subscriber(s), message "),
        "{out}"
    );
    assert_eq!(out.lines().count(), 1, "{out}");
    let out = ok(call(&["send", "--user", "zed", "hi", "--idempotency-key", "k"]).await);
    assert!(out.starts_with("sent to 0 session(s), message "), "{out}");

    // With history: a second line with the offset and epoch; a repeated key, the same.
    let out = ok(call(&[
        "publish",
        "--topic",
        "chat.1",
        "first",
        "--idempotency-key",
        "k1",
    ])
    .await);
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines[0].starts_with("published to 0 subscriber(s)"),
        "{out}"
    );
    let epoch = lines[1]
        .strip_prefix("offset=1  epoch=")
        .unwrap_or_else(|| panic!("{out}"))
        .to_owned();
    let out = ok(call(&[
        "publish",
        "--topic",
        "chat.1",
        "first",
        "--idempotency-key",
        "k1",
    ])
    .await);
    assert_eq!(
        out.lines().nth(1),
        Some(format!("offset=1  epoch={epoch}").as_str())
    );
    ok(call(&["publish", "--topic", "chat.1", "--json", r#"{"n": 2}"#]).await);
    ok(call(&["publish", "--topic", "chat.1", "line\nbreak"]).await);
    let mut grpc = gw.grpc().await;
    let r = grpc
        .publish(
            "chat.1",
            wsgate_proto::pb::payload::Body::Binary(vec![0u8; 5].into()),
        )
        .await
        .unwrap();
    assert_eq!(r.offset, 4);

    let out = ok(call(&["history", "chat.1"]).await);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], format!("epoch={epoch}  offset=4"), "{out}");
    let rest: Vec<(&str, &str)> = lines[1..]
        .iter()
        .map(|l| {
            let mut parts = l.splitn(3, "  ");
            let offset = parts.next().unwrap();
            let time = parts.next().unwrap();
            // RFC 3339 in UTC with milliseconds: 2025-01-02T03:04:05.678Z
            assert!(
                time.len() == 24 && time.as_bytes()[10] == b'T' && time.ends_with('Z'),
                "{l}"
            );
            (offset, parts.next().unwrap())
        })
        .collect();
    assert_eq!(
        rest,
        [
            ("2", r#"{"n": 2}"#),
            ("3", r#""line\nbreak""#),
            ("4", "<5 bytes>")
        ],
        "{out}"
    );
    let out = ok(call(&["history", "chat.1", "--since", "2", "--limit", "1"]).await);
    assert_eq!(out.lines().count(), 2, "{out}");
    assert!(out.lines().nth(1).unwrap().starts_with("3  "), "{out}");
    let out = ok(call(&["history", "chat.1", "--since", "4"]).await);
    assert_eq!(out.lines().nth(1), Some("no messages"), "{out}");

    // A user's stream.
    let out = ok(call(&["send", "--user", "amy", "hello amy"]).await);
    assert!(
        out.lines().nth(1).unwrap().starts_with("offset=1  epoch="),
        "{out}"
    );
    let out = ok(call(&["history", "--user", "amy"]).await);
    assert!(
        out.lines().nth(1).unwrap().ends_with(r#"  "hello amy""#),
        "{out}"
    );

    // A topic without history: the gateway's reason, and a failure exit.
    let o = call(&["history", "news"]).await;
    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
    assert!(stderr(&o).contains("history.topics"), "{}", stderr(&o));
}

#[tokio::test]
async fn the_revoke_command_closes_a_users_sessions_and_refuses_them_until_its_time() {
    let gw = Gateway::start(base_settings()).await;
    let (mut ws, _) = gw.connect_user("zed").await;
    let grpc_addr = gw.grpc.to_string();
    let out = cli([
        "revoke", "--user", "zed", "--for", "10m", "--grpc", &grpc_addr,
    ]
    .map(String::from)
    .to_vec())
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let printed = stdout(&out);
    assert!(printed.starts_with("revoked until "), "{printed}");
    assert_eq!(close_code(&mut ws).await, Some(3006));
    match tokio_tungstenite::connect_async(gw.ws_url("?user=zed")).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => assert_eq!(r.status(), 401),
        other => panic!("expected 401, got {:?}", other.map(|_| ())),
    }
    // Past 90 days is refused by the gateway with a clear message and exit code 1 or more.
    let out = cli([
        "revoke", "--user", "zed", "--for", "100days", "--grpc", &grpc_addr,
    ]
    .map(String::from)
    .to_vec())
    .await;
    assert_ne!(out.status.code(), Some(0));
    assert!(stderr(&out).contains("90 days"), "{}", stderr(&out));
}
