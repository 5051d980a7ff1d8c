//! `wsgate health` as a process against a real gateway: 0 on a 200 from `/healthz` or
//! `/readyz`, found through `--url`, the environment or a configuration file (the admin
//! listener when there is one, TLS on the public one pinned to its certificate file);
//! 1 with one line on stderr for a draining or not-ready gateway, a closed port, a
//! listener that never answers (within `--timeout`) and a bad `--url`.

use std::net::SocketAddr;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use wsgate_server::settings::{AuthMode, Settings};
use wsgate_tests::*;

/// `wsgate health ARGS` with only `env` in its environment, off the async workers (the
/// gateway under test runs on them).
async fn health(args: &[&str], env: &[(&str, &str)]) -> Output {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    tokio::task::spawn_blocking(move || {
        Command::new(wsgate_binary())
            .arg("health")
            .args(&args)
            .env_clear()
            .envs(env)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    })
    .await
    .unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Exit 0, nothing on stderr; the stdout line.
fn healthy(o: &Output) -> String {
    assert_eq!(o.status.code(), Some(0), "stderr: {}", stderr(o));
    assert_eq!(stderr(o), "");
    stdout(o)
}

/// Exit 1, nothing on stdout, exactly one line on stderr; that line.
fn unhealthy(o: &Output) -> String {
    assert_eq!(
        o.status.code(),
        Some(1),
        "stdout: {} stderr: {}",
        stdout(o),
        stderr(o)
    );
    assert_eq!(stdout(o), "", "nothing on stdout in text mode");
    let err = stderr(o);
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    assert!(err.starts_with("wsgate: health: "), "{err}");
    err
}

fn listen_env(addr: SocketAddr) -> String {
    addr.to_string()
}

#[tokio::test]
async fn a_running_gateway_is_healthy_through_the_url_the_environment_and_a_file() {
    let gw = Gateway::start(base_settings()).await;
    let http = listen_env(gw.http);

    let out = healthy(&health(&["--url", &format!("http://{http}")], &[]).await);
    assert_eq!(out, format!("http://{http}/healthz: 200\n"));
    // The listener from the environment, as `serve` reads it.
    let env = [("WSGATE__SERVER__LISTEN", http.as_str())];
    let out = healthy(&health(&[], &env).await);
    assert_eq!(out, format!("http://{http}/healthz: 200\n"));
    let o = health(&["--ready", "-o", "json"], &env).await;
    let v: Value = serde_json::from_str(&healthy(&o)).unwrap();
    assert_eq!(
        v,
        serde_json::json!({
            "ok": true,
            "url": format!("http://{http}/readyz"),
            "status": 200,
            "reason": null,
        })
    );
    // ...and from a configuration file (`-c`), through WSGATE_CONFIG too.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("wsgate.toml");
    std::fs::write(&file, format!("[server]\nlisten = \"{http}\"\n")).unwrap();
    let file = file.to_str().unwrap();
    healthy(&health(&["--ready", "-c", file], &[]).await);
    healthy(&health(&["--ready"], &[("WSGATE_CONFIG", file)]).await);

    gw.stop().await.unwrap();
}

#[tokio::test]
async fn the_admin_listener_is_found_through_the_environment() {
    let mut s = base_settings();
    s.server.admin_listen = Some("127.0.0.1:0".parse().unwrap());
    let gw = Gateway::start(s).await;
    let admin = gw.admin.unwrap();
    let http = listen_env(gw.http);
    // With an unspecified address, the probe goes to loopback.
    let admin_any = format!("0.0.0.0:{}", admin.port());
    let env = [
        ("WSGATE__SERVER__LISTEN", http.as_str()),
        ("WSGATE__SERVER__ADMIN_LISTEN", admin_any.as_str()),
    ];
    let out = healthy(&health(&["--ready"], &env).await);
    assert_eq!(
        out,
        format!("http://127.0.0.1:{}/readyz: 200\n", admin.port())
    );
    healthy(&health(&[], &env).await);
    // Without the admin listener in the configuration it would probe the public one,
    // which no longer serves the operations endpoints.
    let err = unhealthy(&health(&[], &env[..1]).await);
    assert!(
        err.contains(&format!("http://{http}/healthz answered 404")),
        "{err}"
    );
    gw.stop().await.unwrap();
}

#[tokio::test]
async fn a_draining_gateway_is_alive_but_not_ready() {
    let mut s = base_settings();
    s.server.admin_listen = Some("127.0.0.1:0".parse().unwrap());
    s.shutdown.grace = Duration::from_secs(3);
    let gw = Gateway::start(s).await;
    let url = format!("http://{}", gw.admin.unwrap());
    healthy(&health(&["--ready", "--url", &url], &[]).await);
    // A session keeps the drain going for a while.
    let (_a, _) = gw.connect_user("a").await;
    let (_b, _) = gw.connect_user("b").await;
    let stopping = tokio::spawn(gw.stop());
    let deadline = Instant::now() + WAIT;
    let o = loop {
        let o = health(&["--ready", "--url", &url], &[]).await;
        if o.status.code() != Some(0) {
            break o;
        }
        assert!(
            Instant::now() < deadline,
            "still ready after the drain began"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let err = unhealthy(&o);
    assert!(
        err.contains("/readyz answered 503 Service Unavailable: draining"),
        "{err}"
    );
    assert!(
        !stopping.is_finished(),
        "the drain ended before it was seen"
    );
    // Alive through the drain; JSON says the same as the exit code.
    healthy(&health(&["--url", &url], &[]).await);
    let o = health(&["--ready", "--url", &url, "-o", "json"], &[]).await;
    assert_eq!(o.status.code(), Some(1));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        (v["ok"].as_bool(), v["status"].as_u64()),
        (Some(false), Some(503))
    );
    assert!(v["reason"].as_str().unwrap().contains("draining"), "{v}");
    stopping.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_gateway_without_its_key_set_is_alive_but_not_ready() {
    let mut s: Settings = base_settings();
    s.auth.mode = AuthMode::Jwt;
    s.auth.jwt.jwks_url = Some(format!("http://127.0.0.1:{}/jwks.json", free_port()));
    let gw = Gateway::start_unready(s).await;
    let url = format!("http://{}", gw.http);
    healthy(&health(&["--url", &url], &[]).await);
    let err = unhealthy(&health(&["--ready", "--url", &url], &[]).await);
    assert!(err.contains("503") && err.contains("JWKS"), "{err}");
    gw.stop().await.unwrap();
}

#[tokio::test]
async fn a_closed_port_or_a_silent_listener_is_unhealthy_within_the_timeout() {
    let closed = format!("http://127.0.0.1:{}", free_port());
    let err = unhealthy(&health(&["--url", &closed], &[]).await);
    assert!(err.contains("Connection refused"), "{err}");
    let o = health(&["--url", &closed, "-o", "json"], &[]).await;
    assert_eq!(o.status.code(), Some(1));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        (v["ok"].as_bool(), v["status"].clone()),
        (Some(false), Value::Null)
    );

    // Accepts connections (the kernel's backlog) and never answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", silent.local_addr().unwrap());
    for args in [
        vec!["--url", &url, "--timeout", "700ms"],
        vec!["--url", &url],
    ] {
        let started = Instant::now();
        let err = unhealthy(&health(&args, &[]).await);
        let took = started.elapsed();
        let timeout = if args.len() == 4 { "700ms" } else { "2s" };
        assert!(
            err.ends_with(&format!("no answer within {timeout}\n")),
            "{err}"
        );
        let bound = humantime::parse_duration(timeout).unwrap();
        assert!(took >= bound, "gave up after {took:?}, before {timeout}");
        // Generous: a loaded machine may start the process slowly, but it must end.
        assert!(took < bound + Duration::from_secs(10), "took {took:?}");
    }
}

#[tokio::test]
async fn a_bad_url_or_configuration_is_a_clear_error() {
    for (url, says) in [
        ("nope", "relative URL without a base"),
        ("ftp://127.0.0.1/", "the scheme must be http or https"),
        ("http://", "empty host"),
        (
            "http://127.0.0.1:1/?x=1",
            "a base URL has no query or fragment",
        ),
        ("http://[::1", "invalid IPv6 address"),
    ] {
        let err = unhealthy(&health(&["--url", url], &[]).await);
        assert!(
            err.contains(&format!("--url {url:?}: {says}")),
            "{url}: {err}"
        );
    }
    for timeout in ["0s", "2h"] {
        let err =
            unhealthy(&health(&["--url", "http://127.0.0.1:1", "--timeout", timeout], &[]).await);
        assert!(err.contains("--timeout"), "{err}");
    }
    // A configuration that does not load: its first problem, exit 1 (not check-config's
    // 64: a health check answers 0 or 1).
    let err = unhealthy(&health(&[], &[("WSGATE__SERVER__LISTEN", "nowhere")]).await);
    assert!(
        err.contains("the configuration does not load") && err.contains("server.listen"),
        "{err}"
    );
    // With --url the configuration is not read at all.
    let gw = Gateway::start(base_settings()).await;
    let url = format!("http://{}", gw.http);
    healthy(&health(&["--url", &url], &[("WSGATE__SERVER__LISTEN", "nowhere")]).await);
    // A usage error stays clap's.
    assert_eq!(health(&["--bogus"], &[]).await.status.code(), Some(2));
    gw.stop().await.unwrap();
}

#[tokio::test]
async fn tls_on_the_public_listener_is_probed_with_its_own_certificate() {
    let tls = tls::self_signed();
    let mut s = base_settings();
    s.server.tls_cert_file = Some(tls.cert.clone());
    s.server.tls_key_file = Some(tls.key.clone());
    let gw = Gateway::start_unready(s).await;
    let http = listen_env(gw.http);
    let (cert, key) = (tls.cert.to_str().unwrap(), tls.key.to_str().unwrap());
    let env = [
        ("WSGATE__SERVER__LISTEN", http.as_str()),
        ("WSGATE__SERVER__TLS_CERT_FILE", cert),
        ("WSGATE__SERVER__TLS_KEY_FILE", key),
    ];
    // From the configuration: https, the certificate in the file accepted.
    let deadline = Instant::now() + WAIT;
    let out = loop {
        let o = health(&["--ready"], &env).await;
        if o.status.code() == Some(0) {
            break healthy(&o);
        }
        assert!(Instant::now() < deadline, "never ready: {}", stderr(&o));
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(out, format!("https://{http}/readyz: 200\n"));
    // Another certificate in the file than the listener's: refused.
    let other = tls::self_signed();
    let (ocert, okey) = (other.cert.to_str().unwrap(), other.key.to_str().unwrap());
    let env_other = [
        ("WSGATE__SERVER__LISTEN", http.as_str()),
        ("WSGATE__SERVER__TLS_CERT_FILE", ocert),
        ("WSGATE__SERVER__TLS_KEY_FILE", okey),
    ];
    let err = unhealthy(&health(&[], &env_other).await);
    assert!(
        err.contains("not the first in server.tls_cert_file"),
        "{err}"
    );
    // Plain http to a TLS listener fails; https to a self-signed certificate fails with
    // the system's roots and passes with --insecure.
    unhealthy(&health(&["--url", &format!("http://{http}")], &[]).await);
    let url = format!("https://{http}");
    let err = unhealthy(&health(&["--url", &url], &[]).await);
    assert!(err.to_lowercase().contains("certificate"), "{err}");
    healthy(&health(&["--url", &url, "--insecure"], &[]).await);
    gw.stop().await.unwrap();
}
