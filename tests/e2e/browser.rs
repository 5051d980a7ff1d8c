//! The try-it page in a real browser: headless Debian `chromium` driven over the Chrome
//! DevTools Protocol (raw CDP: JSON over a WebSocket), against the in-process gateway with
//! JWT auth and an Origin allowlist that requires the page's own origin.
//!
//! Needs `chromium` on the PATH (`scripts/test` installs it). Without it the test fails
//! and says so; it never skips. A screenshot of the page is saved to
//! `target/test-artifacts/try-it.png` (and `try-it-failure.png` when a wait times out).

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio_tungstenite::tungstenite::Message;
use wsgate_proto::pb;
use wsgate_tests::*;

/// How long one wait for the page (or one CDP call) may take.
const PAGE_WAIT: Duration = Duration::from_secs(10);
/// How long chromium may take to start and print its DevTools address.
const LAUNCH_WAIT: Duration = Duration::from_secs(30);

#[tokio::test]
async fn try_it_page_in_headless_chromium() {
    let chromium = find_chromium();

    // The gateway: JWT auth, and only the page's own origin may open a WebSocket.
    let port = free_port();
    let origin = format!("http://127.0.0.1:{port}");
    let mut settings = jwt_settings();
    settings.server.listen = format!("127.0.0.1:{port}").parse().unwrap();
    settings.server.demo_page = true;
    settings.preflight.allowed_origins = vec![origin.clone()];
    settings.preflight.require_origin = true;
    let gw = Gateway::start(settings).await;
    assert_eq!(gw.http.port(), port);

    // The allowlist is really in force: without the page's Origin the upgrade is refused.
    let tok = token("alice", Some(&["news"]));
    let no_origin = raw_request(
        gw.http,
        &upgrade_request(&format!("/ws?access_token={tok}"), ""),
    )
    .await
    .unwrap();
    assert_eq!(no_origin.status, 403, "{}", no_origin.body);
    assert_eq!(no_origin.json()["error"], "origin_required");

    let mut browser = Browser::launch(&chromium).await;
    let mut page = browser.open_page().await;

    let url = format!("{origin}/?token={tok}&subscribe=news");
    page.call("Page.navigate", json!({ "url": url })).await;
    page.wait_for(
        "the page to be connected and subscribed to news",
        "document.getElementById('state')?.dataset.state === 'open' \
         && document.getElementById('subscriptions')?.dataset.subscribed === 'news'",
    )
    .await;
    let user = page
        .eval("document.getElementById('user-id').textContent")
        .await;
    assert_eq!(user, "alice");

    // A gRPC Publish to the topic appears on the page, with its topic.
    let mut grpc = gw.grpc().await;
    let r = grpc
        .publish("news", text("hello from gRPC Publish"))
        .await
        .unwrap();
    assert_eq!(r.targets, 1);
    page.wait_for(
        "the published text on the page",
        "[...document.querySelectorAll('#log li.push')].some(li => \
         li.querySelector('.topic')?.textContent === 'news' \
         && li.querySelector('.text')?.textContent === 'hello from gRPC Publish')",
    )
    .await;

    // A JSON payload is shown pretty-printed.
    let r = grpc
        .publish("news", pb::payload::Body::Json(r#"{"price":42}"#.into()))
        .await
        .unwrap();
    assert_eq!(r.targets, 1);
    page.wait_for(
        "the published JSON on the page",
        "[...document.querySelectorAll('#log li.push pre')].some(p => \
         p.textContent.includes('\"price\": 42'))",
    )
    .await;

    // The app-level ping button gets a pong.
    page.eval("document.getElementById('ping').click(), true")
        .await;
    page.wait_for(
        "a pong after the Ping button",
        "document.getElementById('log').innerText.includes('Pong')",
    )
    .await;

    // A gRPC Disconnect shows its close code, and 4xxx does not reconnect.
    let req = grpc.req(pb::DisconnectRequest {
        target: Some(pb::disconnect_request::Target::UserId("alice".into())),
        code: 4001,
        reason: "token expired".into(),
    });
    let r = grpc.inner.disconnect(req).await.unwrap().into_inner();
    assert_eq!(r.targets, 1);
    page.wait_for(
        "close code 4001 on the page",
        "document.getElementById('close-info')?.dataset.code === '4001' \
         && document.getElementById('state')?.dataset.state === 'closed'",
    )
    .await;
    let close_text = page
        .eval("document.getElementById('close-info').textContent")
        .await;
    assert!(
        close_text.contains("4001") && close_text.contains("token expired"),
        "{close_text}"
    );

    let shot = page.screenshot("try-it.png").await;
    eprintln!("screenshot: {}", shot.display());

    // Nothing went wrong inside the page: no exception, no CSP violation.
    let problems = page.problems();
    assert!(
        problems.is_empty(),
        "the page logged problems:\n{}",
        problems.join("\n")
    );

    // Connect again from the form, then shut the gateway down: 1001 means "reconnect",
    // and the page schedules one with backoff.
    page.eval("document.getElementById('connect').click(), true")
        .await;
    page.wait_for(
        "the page to be connected again",
        "document.getElementById('subscriptions')?.dataset.subscribed === 'news'",
    )
    .await;
    gw.stop().await.unwrap();
    page.wait_for(
        "close code 1001 and a scheduled reconnect",
        "[...document.querySelectorAll('#log li.close .tag')].some(t => \
         t.textContent === 'closed 1001') \
         && ['reconnecting', 'connecting'].includes(\
         document.getElementById('state')?.dataset.state)",
    )
    .await;

    browser.close().await;
}

/// `chromium` on the PATH, or a failure telling how to get it.
fn find_chromium() -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        let candidate = dir.join("chromium");
        if candidate.is_file() {
            return candidate;
        }
    }
    panic!(
        "chromium is not installed, and the browser end-to-end test needs it. \
         Run scripts/test (as root it installs chromium with apt-get), or install it \
         yourself: apt-get install -y --no-install-recommends chromium"
    );
}

/// A headless chromium process and a CDP connection to it.
struct Browser {
    child: Child,
    cdp: Cdp,
    stderr: Arc<Mutex<Vec<String>>>,
    _profile: tempfile::TempDir,
}

impl Browser {
    async fn launch(chromium: &std::path::Path) -> Self {
        let profile = tempfile::tempdir().unwrap();
        let mut child = Command::new(chromium)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
                "--no-default-browser-check",
                "--remote-debugging-port=0",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", chromium.display()));

        // Chromium prints "DevTools listening on ws://…" on stderr; keep draining the
        // pipe afterwards so that it never blocks, and keep the lines for failures.
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = tokio::sync::oneshot::channel();
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let sink = stderr.clone();
        tokio::spawn(async move {
            let mut tx = Some(tx);
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(rest) = line.split("DevTools listening on ").nth(1)
                    && let Some(tx) = tx.take()
                {
                    let _ = tx.send(rest.trim().to_owned());
                }
                sink.lock().unwrap().push(line);
            }
        });
        let ws_url = match tokio::time::timeout(LAUNCH_WAIT, rx).await {
            Ok(Ok(url)) => url,
            _ => panic!(
                "chromium did not print its DevTools address within {LAUNCH_WAIT:?}; stderr:\n{}",
                stderr.lock().unwrap().join("\n")
            ),
        };
        let (ws, _) = tokio_tungstenite::connect_async(ws_url.as_str())
            .await
            .unwrap_or_else(|e| panic!("cannot connect to chromium's DevTools at {ws_url}: {e}"));
        Self {
            child,
            cdp: Cdp {
                ws,
                next_id: 0,
                events: Vec::new(),
            },
            stderr,
            _profile: profile,
        }
    }

    /// A new tab, attached in flatten mode (its commands carry the session id).
    async fn open_page(&mut self) -> Page<'_> {
        let target = self
            .cdp
            .call(None, "Target.createTarget", json!({ "url": "about:blank" }))
            .await;
        let target_id = target["targetId"].as_str().unwrap().to_owned();
        let attached = self
            .cdp
            .call(
                None,
                "Target.attachToTarget",
                json!({ "targetId": target_id, "flatten": true }),
            )
            .await;
        let session = attached["sessionId"].as_str().unwrap().to_owned();
        let mut page = Page {
            cdp: &mut self.cdp,
            session,
            stderr: self.stderr.clone(),
        };
        page.call("Page.enable", json!({})).await;
        page.call("Runtime.enable", json!({})).await;
        page.call("Log.enable", json!({})).await;
        page.call(
            "Emulation.setDeviceMetricsOverride",
            json!({ "width": 1280, "height": 860, "deviceScaleFactor": 1, "mobile": false }),
        )
        .await;
        page
    }

    async fn close(mut self) {
        let _ = tokio::time::timeout(
            Duration::from_secs(5),
            self.cdp.ws.send(Message::text(
                json!({ "id": u64::MAX, "method": "Browser.close" }).to_string(),
            )),
        )
        .await;
        if tokio::time::timeout(Duration::from_secs(5), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }
}

/// A raw CDP connection: numbered commands, answers matched by id, events kept.
struct Cdp {
    ws: Ws,
    next_id: u64,
    /// `method` and `params` of every event received so far.
    events: Vec<(String, Value)>,
}

impl Cdp {
    async fn call(&mut self, session: Option<&str>, method: &str, params: Value) -> Value {
        self.try_call(session, method, params)
            .await
            .unwrap_or_else(|e| panic!("{e}"))
    }

    async fn try_call(
        &mut self,
        session: Option<&str>,
        method: &str,
        params: Value,
    ) -> Result<Value, String> {
        self.next_id += 1;
        let id = self.next_id;
        let mut msg = json!({ "id": id, "method": method, "params": params });
        if let Some(session) = session {
            msg["sessionId"] = json!(session);
        }
        self.ws
            .send(Message::text(msg.to_string()))
            .await
            .map_err(|e| format!("{method}: send failed: {e}"))?;
        let deadline = tokio::time::Instant::now() + PAGE_WAIT;
        loop {
            let frame = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .map_err(|_| format!("{method}: no answer within {PAGE_WAIT:?}"))?;
            let text = match frame {
                Some(Ok(Message::Text(t))) => t,
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Err(format!("{method}: DevTools socket failed: {e}")),
                None => return Err(format!("{method}: DevTools socket closed")),
            };
            let v: Value = serde_json::from_str(text.as_str())
                .map_err(|e| format!("{method}: bad CDP frame ({e})"))?;
            if v["id"].as_u64() == Some(id) {
                if let Some(error) = v.get("error") {
                    return Err(format!("{method} failed: {error}"));
                }
                return Ok(v["result"].clone());
            }
            if let Some(event) = v["method"].as_str() {
                self.events.push((event.to_owned(), v["params"].clone()));
            }
        }
    }
}

/// One tab.
struct Page<'a> {
    cdp: &'a mut Cdp,
    session: String,
    stderr: Arc<Mutex<Vec<String>>>,
}

impl Page<'_> {
    async fn call(&mut self, method: &str, params: Value) -> Value {
        match self.cdp.try_call(Some(&self.session), method, params).await {
            Ok(v) => v,
            Err(e) => panic!("{e}\n{}", self.diagnostics().await),
        }
    }

    /// Evaluates `expression` in the page and returns its value as text (JSON for
    /// non-strings).
    async fn eval(&mut self, expression: &str) -> String {
        let r = self.try_eval(expression).await;
        match r {
            Ok(v) => v,
            Err(e) => panic!("{e}\n{}", self.diagnostics().await),
        }
    }

    async fn try_eval(&mut self, expression: &str) -> Result<String, String> {
        let r = self
            .cdp
            .try_call(
                Some(&self.session),
                "Runtime.evaluate",
                json!({ "expression": expression, "returnByValue": true }),
            )
            .await?;
        if let Some(ex) = r.get("exceptionDetails") {
            return Err(format!("evaluating {expression:?} threw: {ex}"));
        }
        Ok(match &r["result"]["value"] {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        })
    }

    /// Polls `condition` (a JavaScript expression) until it is `true`; fails after
    /// [`PAGE_WAIT`] with the page's visible text and a screenshot.
    async fn wait_for(&mut self, what: &str, condition: &str) {
        let deadline = tokio::time::Instant::now() + PAGE_WAIT;
        let mut last = String::new();
        while tokio::time::Instant::now() < deadline {
            match self.try_eval(&format!("Boolean({condition})")).await {
                Ok(v) if v == "true" => return,
                Ok(v) => last = v,
                Err(e) => last = e,
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let shot = self.screenshot("try-it-failure.png").await;
        panic!(
            "timed out after {PAGE_WAIT:?} waiting for {what} (last result: {last}); \
             screenshot: {}\n{}",
            shot.display(),
            self.diagnostics().await
        );
    }

    /// Saves a PNG of the viewport under `target/test-artifacts/`.
    async fn screenshot(&mut self, name: &str) -> PathBuf {
        let r = self
            .cdp
            .try_call(
                Some(&self.session),
                "Page.captureScreenshot",
                json!({ "format": "png" }),
            )
            .await;
        let path = artifacts_dir().join(name);
        match r.and_then(|r| {
            base64::engine::general_purpose::STANDARD
                .decode(r["data"].as_str().unwrap_or_default())
                .map_err(|e| e.to_string())
        }) {
            Ok(png) => {
                std::fs::create_dir_all(path.parent().unwrap()).unwrap();
                std::fs::write(&path, png).unwrap();
            }
            Err(e) => eprintln!("cannot take a screenshot: {e}"),
        }
        path
    }

    /// JavaScript exceptions and console/CSP errors reported by the page so far.
    fn problems(&self) -> Vec<String> {
        self.cdp
            .events
            .iter()
            .filter_map(|(method, params)| match method.as_str() {
                "Runtime.exceptionThrown" => Some(format!(
                    "exception: {}",
                    params["exceptionDetails"]["exception"]["description"]
                )),
                "Log.entryAdded" if params["entry"]["level"] == "error" => {
                    let text = params["entry"]["text"].as_str().unwrap_or_default();
                    let url = params["entry"]["url"].as_str().unwrap_or_default();
                    Some(format!("console error: {text} {url}"))
                }
                _ => None,
            })
            .collect()
    }

    /// The page's visible text, its problems and chromium's last stderr lines.
    async fn diagnostics(&mut self) -> String {
        let text = self
            .try_eval("document.body ? document.body.innerText : '(no body)'")
            .await
            .unwrap_or_else(|e| format!("(cannot read the page: {e})"));
        let stderr = self.stderr.lock().unwrap();
        let tail = &stderr[stderr.len().saturating_sub(20)..];
        format!(
            "--- page text ---\n{text}\n--- page problems ---\n{}\n\
             --- chromium stderr (last lines) ---\n{}",
            self.problems().join("\n"),
            tail.join("\n")
        )
    }
}

/// `target/test-artifacts`, found from the test executable (`target/debug/deps/…`).
fn artifacts_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let target = exe
        .ancestors()
        .find(|p| p.file_name().is_some_and(|n| n == "deps"))
        .and_then(|deps| deps.parent())
        .and_then(|profile| profile.parent())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"));
    target.join("test-artifacts")
}
