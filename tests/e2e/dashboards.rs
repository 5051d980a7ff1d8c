//! The Grafana dashboard and the alert rules the Helm chart ships query metrics that a
//! running gateway serves: every `wsgate_…` name in `helm/wsgate/dashboards/wsgate.json`
//! and in `helm/wsgate/files/prometheus-rules.yaml` is a sample name on `/metrics` of a
//! real `wsgate serve` (on a real Redis, with a webhook receiver), after the test made it
//! do what each labelled family counts. The exporter prints no `# HELP` line for a
//! labelled family without samples, so each one must be produced here (or start at 0 in
//! the gateway), not looked up in its registration.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Duration;

use axum::Router;
use axum::http::StatusCode;
use axum::routing::post;
use serde_json::{Value, json};
use wsgate_tests::hostile::eventually;
use wsgate_tests::pods::Pod;
use wsgate_tests::redis::RedisServer;
use wsgate_tests::*;
use yaml_rust2::YamlLoader;

fn chart_file(path: &str) -> String {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../helm/wsgate")
        .join(path);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// Every `wsgate_…` identifier in `text` (a PromQL expression or any text around one).
fn metric_names(text: &str, into: &mut BTreeSet<String>) {
    let bytes = text.as_bytes();
    let ident = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_';
    let mut i = 0;
    while let Some(at) = text[i..].find("wsgate_") {
        let start = i + at;
        let mut end = start + "wsgate_".len();
        while end < bytes.len() && ident(bytes[end]) {
            end += 1;
        }
        let standalone = start == 0 || !(ident(bytes[start - 1]) || bytes[start - 1] == b':');
        if standalone && end > start + "wsgate_".len() {
            into.insert(text[start..end].to_owned());
        }
        i = end;
    }
}

/// The metric names in the queries of a dashboard: panel targets' `expr`, template
/// variables' `query` and `definition` (not titles or descriptions).
fn json_queries(v: &Value, into: &mut BTreeSet<String>) {
    match v {
        Value::Array(a) => a.iter().for_each(|v| json_queries(v, into)),
        Value::Object(o) => {
            for (k, v) in o {
                match (k.as_str(), v) {
                    ("expr" | "query" | "definition", Value::String(s)) => metric_names(s, into),
                    _ => json_queries(v, into),
                }
            }
        }
        _ => {}
    }
}

/// The metric names the dashboard queries (panels and variables).
fn dashboard_names() -> BTreeSet<String> {
    let dash: Value =
        serde_json::from_str(&chart_file("dashboards/wsgate.json")).expect("dashboard JSON");
    let panels = dash["panels"].as_array().expect("panels");
    let exprs = panels
        .iter()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .filter(|t| t["expr"].as_str().is_some_and(|e| !e.is_empty()))
        .count();
    assert!(
        exprs >= 20,
        "only {exprs} panel queries: the walk lost them"
    );
    let mut names = BTreeSet::new();
    json_queries(&dash, &mut names);
    names
}

/// The metric names each alert rule's expression queries.
fn rule_names() -> BTreeMap<String, BTreeSet<String>> {
    let docs =
        YamlLoader::load_from_str(&chart_file("files/prometheus-rules.yaml")).expect("rules YAML");
    let mut out = BTreeMap::new();
    for group in docs[0]["groups"].as_vec().expect("groups") {
        for rule in group["rules"].as_vec().expect("rules") {
            let alert = rule["alert"].as_str().expect("alert name").to_owned();
            let expr = rule["expr"].as_str().expect("expr");
            let mut names = BTreeSet::new();
            metric_names(expr, &mut names);
            assert!(!names.is_empty(), "{alert}: no wsgate metric in {expr:?}");
            assert!(
                rule["annotations"]["runbook_url"]
                    .as_str()
                    .is_some_and(|u| u.contains("operations.md#")),
                "{alert}: no runbook_url into docs/operations.md"
            );
            out.insert(alert, names);
        }
    }
    assert!(out.len() >= 5, "only {} alerts parsed", out.len());
    out
}

/// Sample names on `/metrics` (`_bucket`, `_sum`, `_count` of histograms as such), and
/// the families by `# TYPE`.
async fn exported(pod: &Pod) -> (BTreeSet<String>, BTreeMap<String, String>) {
    let r = raw_request(pod.http, b"GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    let mut samples = BTreeSet::new();
    let mut types = BTreeMap::new();
    for line in r.body.lines() {
        if let Some(t) = line.strip_prefix("# TYPE ") {
            let mut parts = t.split_whitespace();
            if let (Some(name), Some(kind)) = (parts.next(), parts.next()) {
                types.insert(name.to_owned(), kind.to_owned());
            }
        } else if !line.starts_with('#') && !line.is_empty() {
            let end = line.find(['{', ' ']).unwrap_or(line.len());
            samples.insert(line[..end].to_owned());
        }
    }
    (samples, types)
}

/// What is wrong with querying `name`, if anything.
fn problem(
    name: &str,
    samples: &BTreeSet<String>,
    types: &BTreeMap<String, String>,
) -> Option<String> {
    if samples.contains(name) {
        for suffix in ["_bucket", "_sum", "_count"] {
            if let Some(base) = name.strip_suffix(suffix)
                && types.get(base).is_some_and(|t| t == "histogram")
            {
                return None;
            }
        }
        return match types.get(name) {
            Some(_) => None,
            // A sample without a family of its name: only a histogram's series.
            None => Some(format!("{name} is a sample of no family")),
        };
    }
    if types.get(name).is_some_and(|t| t == "histogram") {
        return Some(format!(
            "{name} is a histogram: query {name}_bucket, _sum or _count"
        ));
    }
    Some(format!("{name} is not on /metrics"))
}

#[tokio::test]
async fn every_metric_the_dashboard_and_the_alerts_query_is_served() {
    let dashboard = dashboard_names();
    let rules = rule_names();
    assert!(dashboard.len() >= 20, "dashboard names: {dashboard:?}");

    // A webhook receiver, so that the webhook families get their endpoint's series.
    let app = Router::new().route("/hook", post(|| async { StatusCode::NO_CONTENT }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    let endpoints =
        json!([{ "url": hook, "secret": "dashboards-hook-secret-0123456789", "name": "dash" }]);
    let endpoints = endpoints.to_string();

    let redis = RedisServer::start();
    let pod = Pod::start(
        "pod-dash",
        &redis.url(),
        &[
            ("WSGATE__HISTORY__TOPICS", "chat.*=100/10m"),
            ("WSGATE__WEBHOOKS__ENDPOINTS", endpoints.as_str()),
        ],
    )
    .await;

    // An accepted session that subscribes to a stream with history (a recovery
    // outcome, a subscribed event), a refused handshake, a publish and a push that
    // reach it, an HTTP API call, and a close.
    let (mut ws, _) = pod.connect_user("alice").await;
    send_json(&mut ws, json!({"op": "subscribe", "topic": "chat.1"})).await;
    assert_eq!(next_json(&mut ws).await["op"], "subscribed");
    let refused = raw_request(pod.http, &upgrade_request("/ws", ""))
        .await
        .unwrap();
    assert_eq!(refused.status, 401, "a handshake without ?user=");
    let mut grpc = pod.grpc().await;
    grpc.publish("chat.1", text("to the topic")).await.unwrap();
    assert_eq!(next_json(&mut ws).await["data"], "to the topic");
    grpc.send_to_user("alice", text("to alice")).await.unwrap();
    assert_eq!(next_json(&mut ws).await["data"], "to alice");
    let api = api::Api::plain(pod.grpc, None);
    let stats = api::send(
        api.request(reqwest::Method::POST, "/api/v1/stats")
            .header("content-type", "application/json")
            .body("{}"),
    )
    .await;
    assert_eq!(stats.status, 200, "{stats:?}");
    ws.close(None).await.unwrap();

    // The close and the webhook deliveries happen in the background: wait for them.
    let (samples, types) = eventually(
        "the session's close and a webhook delivery counted",
        Duration::from_secs(15),
        async || {
            let (samples, types) = exported(&pod).await;
            for needed in [
                "wsgate_sessions_closed_total",
                "wsgate_webhook_delivery_duration_seconds_bucket",
            ] {
                if !samples.contains(needed) {
                    return Err(format!("{needed} not yet on /metrics"));
                }
            }
            Ok((samples, types))
        },
    )
    .await;

    let mut missing = Vec::new();
    for name in &dashboard {
        if let Some(p) = problem(name, &samples, &types) {
            missing.push(format!("dashboard: {p}"));
        }
    }
    for (alert, names) in &rules {
        for name in names {
            if let Some(p) = problem(name, &samples, &types) {
                missing.push(format!("alert {alert}: {p}"));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "queried but not served:\n  {}\nserved: {samples:?}",
        missing.join("\n  ")
    );
    drop(redis);
}

#[test]
fn a_bare_histogram_name_or_an_unknown_metric_is_reported() {
    let samples: BTreeSet<String> = [
        "wsgate_x_seconds_bucket",
        "wsgate_x_seconds_sum",
        "wsgate_x_seconds_count",
        "wsgate_up",
    ]
    .map(String::from)
    .into();
    let types: BTreeMap<String, String> = [
        ("wsgate_x_seconds".to_owned(), "histogram".to_owned()),
        ("wsgate_up".to_owned(), "gauge".to_owned()),
    ]
    .into();
    assert_eq!(problem("wsgate_x_seconds_bucket", &samples, &types), None);
    assert_eq!(problem("wsgate_up", &samples, &types), None);
    assert!(
        problem("wsgate_x_seconds", &samples, &types)
            .unwrap()
            .contains("histogram")
    );
    assert!(
        problem("wsgate_down", &samples, &types)
            .unwrap()
            .contains("not on /metrics")
    );
    let mut names = BTreeSet::new();
    metric_names(
        r#"sum(rate(wsgate_a_total{x="wsgate_label"}[5m])) / xwsgate_b + wsgate_c_bucket"#,
        &mut names,
    );
    assert_eq!(
        names.into_iter().collect::<Vec<_>>(),
        ["wsgate_a_total", "wsgate_c_bucket", "wsgate_label"]
    );
}
