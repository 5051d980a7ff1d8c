//! The admin listener (`server.admin_listen`): `/metrics`, `/healthz` and `/readyz` move
//! there and off the public listener, which keeps serving WebSockets; it answers through
//! the drain (`/readyz` 503) and closes last; the binary binds it from the environment and
//! `check-config` refuses a port it would share.

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use wsgate_tests::*;

const OPS: [&str; 3] = ["/metrics", "/healthz", "/readyz"];

async fn get(addr: SocketAddr, path: &str) -> std::io::Result<RawResponse> {
    raw_request(
        addr,
        format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes(),
    )
    .await
}

fn admin_settings() -> wsgate_server::settings::Settings {
    let mut s = base_settings();
    s.server.admin_listen = Some("127.0.0.1:0".parse().unwrap());
    s
}

#[tokio::test]
async fn the_admin_listener_serves_the_operations_endpoints_and_nothing_else() {
    let gw = Gateway::start(admin_settings()).await;
    let admin = gw.admin.expect("an admin listener");
    assert_ne!(admin, gw.http);

    // The public listener no longer serves them...
    for path in OPS {
        let r = get(gw.http, path).await.unwrap();
        assert_eq!(r.status, 404, "public {path}: {r:?}");
        assert_eq!(r.json()["error"], "not_found", "public {path}");
    }
    // ...but still takes WebSockets, and pushes reach them.
    let (mut ws, welcome) = gw.connect_user("alice").await;
    assert_eq!(welcome["user_id"], "alice");
    let mut grpc = gw.grpc().await;
    let sent = grpc
        .send_to_user("alice", text("through the public port"))
        .await
        .unwrap();
    assert_eq!(sent.targets, 1);
    let msg = next_json(&mut ws).await;
    assert_eq!(msg["data"], "through the public port", "{msg}");

    // The admin listener serves the three, and the metrics see the public traffic.
    let r = get(admin, "/healthz").await.unwrap();
    assert_eq!(
        (r.status, r.json()["status"].clone()),
        (200, "alive".into())
    );
    let r = get(admin, "/readyz").await.unwrap();
    assert_eq!(
        (r.status, r.json()["status"].clone()),
        (200, "ready".into())
    );
    let r = get(admin, "/metrics").await.unwrap();
    assert_eq!(r.status, 200);
    assert!(
        r.header("content-type").unwrap().starts_with("text/plain"),
        "{r:?}"
    );
    let metrics = wsgate_tests::hostile::parse_metrics(&r.body);
    assert_eq!(metrics.get("wsgate_connections{}"), 1.0, "{}", r.body);
    assert_eq!(metrics.get("wsgate_ready{}"), 1.0, "{}", r.body);

    // Anything else on the admin port is 404: no WebSocket, no API, no try-it page.
    for path in ["/ws?user=bob", "/", "/demo/wsgate-client.js", "/nope"] {
        let r = get(admin, path).await.unwrap();
        assert_eq!(r.status, 404, "admin {path}: {r:?}");
    }
    let r = raw_request(admin, &upgrade_request("/ws?user=bob", ""))
        .await
        .unwrap();
    assert_eq!(r.status, 404, "an upgrade on the admin port: {r:?}");
    let r = raw_request(
        admin,
        b"POST /api/v1/stats HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}",
    )
    .await
    .unwrap();
    assert_eq!(r.status, 404, "the HTTP API on the admin port: {r:?}");
    gw.stop().await.unwrap();
}

#[tokio::test]
async fn without_an_admin_listener_the_public_one_keeps_the_operations_endpoints() {
    let gw = Gateway::start(base_settings()).await;
    assert_eq!(gw.admin, None);
    for path in OPS {
        let r = get(gw.http, path).await.unwrap();
        assert_eq!(r.status, 200, "public {path}: {r:?}");
    }
    gw.stop().await.unwrap();
}

#[tokio::test]
async fn the_admin_listener_answers_through_the_drain_and_closes_last() {
    let mut settings = admin_settings();
    settings.shutdown.grace = Duration::from_secs(2);
    let gw = Gateway::start(settings).await;
    let admin = gw.admin.unwrap();
    let public = gw.http;
    // Two sessions: the drain closes the second three quarters into the grace, so it
    // lasts at least that long.
    let (_a, _) = gw.connect_user("a").await;
    let (_b, _) = gw.connect_user("b").await;

    let stopping = tokio::spawn(gw.stop());
    let deadline = Instant::now() + WAIT;
    let not_ready = loop {
        let r = get(admin, "/readyz").await.unwrap();
        if r.status == 503 {
            break r;
        }
        assert_eq!(r.status, 200, "{r:?}");
        assert!(
            Instant::now() < deadline,
            "/readyz stayed 200 after shutdown began"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(not_ready.json()["error"], "not_ready");
    assert!(
        not_ready.json()["message"]
            .as_str()
            .unwrap()
            .contains("draining"),
        "{not_ready:?}"
    );
    // Mid-drain: alive, scraped, and the public port takes no new connections.
    assert!(
        !stopping.is_finished(),
        "the drain ended before it was seen"
    );
    let r = get(admin, "/healthz").await.unwrap();
    assert_eq!(r.status, 200);
    let metrics = wsgate_tests::hostile::scrape(admin).await;
    assert_eq!(metrics.get("wsgate_ready{}"), 0.0, "{metrics:?}");
    // The public listener stops accepting as the drain starts (as without an admin
    // listener); probes keep their answers on the admin port.
    let deadline = Instant::now() + WAIT;
    while get(public, "/ws").await.is_ok() {
        assert!(
            Instant::now() < deadline,
            "the public listener still accepts during the drain"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        !stopping.is_finished(),
        "the drain ended before it was checked"
    );

    stopping.await.unwrap().unwrap();
    assert!(
        get(admin, "/healthz").await.is_err(),
        "the admin listener is still open after the gateway stopped"
    );
}

/// `wsgate` with a clean environment.
fn wsgate(args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(wsgate_binary());
    cmd.args(args)
        .env_clear()
        .env("POD_NAME", "admin-test")
        .envs(env.iter().copied())
        .stdin(Stdio::null());
    cmd
}

#[test]
fn check_config_refuses_an_admin_port_shared_with_another_listener() {
    let listen = [
        ("WSGATE__SERVER__LISTEN", "127.0.0.1:18080"),
        ("WSGATE__SERVER__GRPC_LISTEN", "127.0.0.1:15051"),
    ];
    for (admin, clashes_with) in [
        ("127.0.0.1:18080", "server.listen"),
        ("0.0.0.0:18080", "server.listen"),
        ("127.0.0.1:15051", "server.grpc_listen"),
        ("127.0.0.1", "invalid socket address"),
    ] {
        let mut env = listen.to_vec();
        env.push(("WSGATE__SERVER__ADMIN_LISTEN", admin));
        for sub in ["check-config", "serve"] {
            let out = wsgate(&[sub], &env).output().unwrap();
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(64), "{sub} with {admin}: {err}");
            assert!(
                err.contains("server.admin_listen") && err.contains(clashes_with),
                "{sub} with {admin}: {err}"
            );
        }
    }
    let mut env = listen.to_vec();
    env.push(("WSGATE__SERVER__ADMIN_LISTEN", "127.0.0.1:19090"));
    let out = wsgate(&["check-config"], &env).output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The binary, configured from the environment as the Helm chart does it.
#[tokio::test]
async fn wsgate_serve_binds_the_admin_listener_from_the_environment() {
    let [http, grpc, admin] = [(); 3].map(|()| {
        format!("127.0.0.1:{}", free_port())
            .parse::<SocketAddr>()
            .unwrap()
    });
    let (h, g, a) = (http.to_string(), grpc.to_string(), admin.to_string());
    let mut child = wsgate(
        &["serve"],
        &[
            ("WSGATE__SERVER__LISTEN", &h),
            ("WSGATE__SERVER__GRPC_LISTEN", &g),
            ("WSGATE__SERVER__ADMIN_LISTEN", &a),
            ("WSGATE__SHUTDOWN__GRACE", "1s"),
        ],
    )
    .stdout(Stdio::null())
    .stderr(Stdio::inherit())
    .spawn()
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(r) = get(admin, "/readyz").await
            && r.status == 200
        {
            break;
        }
        assert!(Instant::now() < deadline, "not ready on the admin port");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let r = get(admin, "/metrics").await.unwrap();
    assert_eq!(r.status, 200);
    assert!(r.body.contains("wsgate_ready 1"), "{}", r.body);
    for path in OPS {
        assert_eq!(get(http, path).await.unwrap().status, 404, "public {path}");
    }
    let r = raw_request(http, &upgrade_request("/ws?user=a", ""))
        .await
        .unwrap();
    assert_eq!(r.status, 101);

    wsgate_tests::hostile::signal(child.id(), "-TERM");
    let status = tokio::task::spawn_blocking(move || {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return Some(status);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    })
    .await
    .unwrap();
    assert_eq!(status.and_then(|s| s.code()), Some(0));
}
