//! Smoke of the load generator: every scenario of `wsgate-bench`, small (hundreds of
//! connections, a few seconds), against an in-process gateway with JWT auth and an API key,
//! plus the fan-out scenario against `wsgate-limit-probe`, and `recover` against a gateway
//! whose user streams keep history. Asserts that each run works and
//! reports sane figures (counts add up, no failures) — never how fast anything is.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;
use wsgate_tests::{API_KEY, Gateway, SECRET, free_port, jwt_settings, wsgate_binary};

/// A binary built next to `wsgate`.
fn sibling(name: &str) -> PathBuf {
    let bin = wsgate_binary().with_file_name(name);
    assert!(
        bin.exists(),
        "{} not found: build it first with `cargo build --workspace` (the test command does)",
        bin.display()
    );
    bin
}

/// Runs `wsgate-bench ARGS --json` and returns its report.
async fn bench(args: &[String]) -> Value {
    let out = tokio::time::timeout(
        Duration::from_secs(30),
        tokio::process::Command::new(sibling("wsgate-bench"))
            .args(args)
            .arg("--json")
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("wsgate-bench did not finish in 30 s")
    .expect("cannot run wsgate-bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "wsgate-bench {args:?} failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}"))
}

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

fn u(v: &Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not a count: {v}"))
}

/// Each named count of a `recover` report's `recovery` section is what it should be.
fn expect_counts(report: &Value, counts: &[(&str, u64)]) {
    for (field, want) in counts {
        assert_eq!(u(&report["recovery"][field]), *want, "{field}: {report}");
    }
}

/// All connections opened, none failed.
fn assert_connections(report: &Value, n: u64) {
    let c = &report["connections"];
    assert_eq!(u(&c["requested"]), n, "{report}");
    assert_eq!(u(&c["ok"]), n, "{report}");
    assert_eq!(u(&c["failed"]), 0, "{report}");
    assert!(c["handshakes_per_s"].as_f64().unwrap() > 0.0, "{report}");
    assert_eq!(u(&c["handshake_latency"]["count"]), n, "{report}");
}

/// Every expected delivery arrived, with a latency for each.
fn assert_deliveries(report: &Value, expected: u64) {
    let d = &report["deliveries"];
    assert_eq!(u(&d["expected_deliveries"]), expected, "{report}");
    assert_eq!(u(&d["delivered"]), expected, "{report}");
    assert_eq!(d["complete"], true, "{report}");
    assert_eq!(
        d["publish_failures"].as_object().unwrap().len(),
        0,
        "{report}"
    );
    assert_eq!(u(&d["latency"]["count"]), expected, "{report}");
    for q in ["p50_ms", "p90_ms", "p99_ms", "p999_ms"] {
        assert!(d["latency"][q].as_f64().unwrap() >= 0.0, "{q}: {report}");
    }
    assert!(d["deliveries_per_s"].as_f64().unwrap() > 0.0, "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bench_scenario_runs_small_and_reports() {
    let mut settings = jwt_settings();
    // Hundreds of handshakes from a few addresses within a second: the default per-IP
    // limit (50/s, burst 100) would turn most away.
    settings.limits.handshakes_per_ip_per_s = 0;
    let gw = Gateway::start(settings).await;
    let pid = std::process::id().to_string();
    let ws = gw.ws_url("");
    let grpc = format!("http://{}", gw.grpc);
    let common = |extra: &[&str]| {
        let mut a = args(extra);
        a.extend(args(&[
            "--ws",
            &ws,
            "--grpc",
            &grpc,
            "--token-secret",
            SECRET,
            "--api-key",
            API_KEY,
            "--sources",
            "4",
            "--pid",
            &pid,
            "--timeout",
            "5s",
        ]));
        a
    };

    let r = bench(&common(&["connect", "-n", "200"])).await;
    assert_eq!(r["scenario"], "connect");
    assert_eq!(r["auth"], "jwt");
    assert_connections(&r, 200);

    let r = bench(&common(&["idle", "-n", "200", "--duration", "500ms"])).await;
    assert_connections(&r, 200);
    assert_eq!(u(&r["held"]), 200, "{r}");
    assert!(r["server_rss_after_bytes"].as_u64().unwrap() > 0, "{r}");
    assert!(r["server_rss_bytes_per_connection"].is_number(), "{r}");

    let r = bench(&common(&[
        "push",
        "--users",
        "100",
        "--rate",
        "200",
        "--duration",
        "1s",
    ]))
    .await;
    assert_connections(&r, 100);
    assert_eq!(u(&r["sends_requested"]), 200, "{r}");
    assert_eq!(u(&r["deliveries"]["publishes_ok"]), 200, "{r}");
    assert_eq!(u(&r["deliveries"]["registry_targets"]), 200, "{r}");
    assert_deliveries(&r, 200);
    assert!(r["deliveries"]["server_cpu_s"].is_number(), "{r}");

    let r = bench(&common(&[
        "fanout",
        "-m",
        "200",
        "--publishes",
        "10",
        "--topic",
        "smoke.fan",
    ]))
    .await;
    assert_connections(&r, 200);
    assert_eq!(u(&r["deliveries"]["registry_targets"]), 2000, "{r}");
    assert_deliveries(&r, 2000);

    let r = bench(&common(&[
        "broadcast",
        "-n",
        "100",
        "--publishes",
        "5",
        "--rate",
        "50",
    ]))
    .await;
    assert_connections(&r, 100);
    assert_deliveries(&r, 500);
    assert_eq!(u(&r["dropped"]), 0, "{r}");

    // The bare limit probe, the floor the fan-out figures are compared with.
    let port = free_port();
    let mut probe = tokio::process::Command::new(sibling("wsgate-limit-probe"))
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("cannot start wsgate-limit-probe");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "probe not listening"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let probe_pid = probe.id().unwrap().to_string();
    let r = bench(&args(&[
        "fanout",
        "--protocol",
        "probe",
        "--ws",
        &format!("ws://127.0.0.1:{port}/"),
        "-m",
        "200",
        "--publishes",
        "10",
        "--pid",
        &probe_pid,
        "--timeout",
        "5s",
    ]))
    .await;
    assert_connections(&r, 200);
    assert_deliveries(&r, 2000);
    let _ = probe.kill().await;

    // A run that cannot fit in the open-file limit says so instead of crashing.
    let out = tokio::process::Command::new(sibling("wsgate-bench"))
        .args(["idle", "--ws", &ws, "-n", "10000000"])
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("several wsgate-bench processes"), "{err}");

    gw.stop().await.unwrap();
}

/// `wsgate-bench recover` against `gw` with JWT, plus `extra`.
fn recover_args(gw: &Gateway, extra: &[&str]) -> Vec<String> {
    let mut a = args(&["recover", "--ws", &gw.ws_url(""), "--grpc"]);
    a.push(format!("http://{}", gw.grpc));
    a.extend(args(&[
        "--token-secret",
        SECRET,
        "--api-key",
        API_KEY,
        "--sources",
        "4",
    ]));
    a.extend(args(extra));
    a
}

/// A gateway with JWT auth whose user streams keep `size` messages.
async fn with_user_history(size: usize) -> Gateway {
    let mut settings = jwt_settings();
    settings.limits.handshakes_per_ip_per_s = 0;
    settings.history.user.size = size;
    Gateway::start(settings).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_recover_scenario_checks_every_missed_message() {
    let gw = with_user_history(10).await;
    for leave in [
        &["-n", "100", "--missed", "3"][..],
        &["-n", "50", "--abrupt"],
    ] {
        let r = bench(&recover_args(&gw, leave)).await;
        let n = u(&r["clients"]);
        let missed = u(&r["missed_per_user"]);
        assert_eq!(r["scenario"], "recover");
        assert_eq!(u(&r["first_join"]["ok"]), n, "{r}");
        assert_eq!(u(&r["sends"]["ok"]), n * missed, "{r}");
        let rec = &r["recovery"];
        expect_counts(
            &r,
            &[
                ("reconnected", n),
                ("recovered", n),
                ("complete", n),
                ("failed", 0),
                ("expected_messages", n * missed),
                ("delivered_messages", n * missed),
                ("missing_messages", 0),
                ("duplicate_messages", 0),
                ("out_of_order_messages", 0),
                ("wrong_payload_messages", 0),
                ("unexpected_messages", 0),
            ],
        );
        assert_eq!(rec["all_recovered"], true, "{r}");
        assert!(
            rec["time_to_all_recovered_ms"].as_f64().unwrap() > 0.0,
            "{r}"
        );
        assert_eq!(u(&rec["join_latency"]["count"]), n, "{r}");
    }
    gw.stop().await.unwrap();

    // More missed messages than a stream keeps: nobody can recover, and the report says
    // so (recovered: false, every message missing) rather than counting them as recovered.
    let gw = with_user_history(2).await;
    let r = bench(&recover_args(
        &gw,
        &["-n", "20", "--missed", "3", "--timeout", "1s"],
    ))
    .await;
    let rec = &r["recovery"];
    expect_counts(
        &r,
        &[
            ("reconnected", 20),
            ("recovered", 0),
            ("not_recovered", 20),
            ("complete", 0),
            ("failed", 20),
            ("expected_messages", 60),
            ("delivered_messages", 0),
            ("missing_messages", 60),
        ],
    );
    assert_eq!(rec["all_recovered"], false, "{r}");
    assert!(rec["time_to_all_recovered_ms"].is_null(), "{r}");
    gw.stop().await.unwrap();
}
