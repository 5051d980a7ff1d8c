//! The `wsgate` command line as a process: `--output json` of every command that answers
//! something (one object on stdout), RFC 3339 times in the text output, shell completion
//! scripts, and the version with its git revision.

use std::process::{Command, Output, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::Value;
use wsgate_tests::*;

/// Runs `wsgate` with `args` and a clean environment, off the async workers (the gateway
/// under test runs on them).
async fn wsgate(args: &[&str]) -> Output {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    tokio::task::spawn_blocking(move || run(&args))
        .await
        .unwrap()
}

fn run(args: &[String]) -> Output {
    Command::new(wsgate_binary())
        .args(args)
        .env_clear()
        .env("POD_NAME", "cli-test")
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn ok(o: &Output) -> String {
    assert_eq!(
        o.status.code(),
        Some(0),
        "stderr: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout.clone()).unwrap()
}

/// The one JSON object a `--output json` run printed: exactly one line, an object.
fn one_object(o: &Output) -> Value {
    let out = ok(o);
    assert_eq!(out.lines().count(), 1, "one line of JSON: {out}");
    let v: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert!(v.is_object(), "{out}");
    v
}

/// A proto3 JSON uint64: a string of digits.
fn uint64(v: &Value) -> u64 {
    v.as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not a uint64 string: {v}"))
}

/// Milliseconds since the epoch of an RFC 3339 time.
fn rfc3339_ms(s: &str) -> u64 {
    let t = humantime::parse_rfc3339(s).unwrap_or_else(|e| panic!("{s:?} is not RFC 3339: {e}"));
    t.duration_since(UNIX_EPOCH).unwrap().as_millis() as u64
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

#[tokio::test]
async fn every_control_command_prints_one_json_object_and_times_in_rfc3339() {
    let mut settings = base_settings();
    settings.history.topics = vec![wsgate_server::settings::TopicHistory {
        pattern: "chat.*".into(),
        size: 10,
        ttl: Duration::from_secs(300),
    }];
    let gw = Gateway::start(settings).await;
    let grpc = gw.grpc.to_string();
    let call = |args: &[&str]| {
        let mut all = args.to_vec();
        all.extend(["--grpc", &grpc]);
        let all: Vec<String> = all.iter().map(|a| a.to_string()).collect();
        async move {
            tokio::task::spawn_blocking(move || run(&all))
                .await
                .unwrap()
        }
    };
    let (mut ws, _) = gw.connect_user("alice").await;
    send_json(
        &mut ws,
        serde_json::json!({"op": "subscribe", "topic": "chat.1", "id": 1}),
    )
    .await;
    assert_eq!(next_json(&mut ws).await["op"], "subscribed");

    // send: the SendResponse, as the HTTP API writes it.
    let v = one_object(&call(&["send", "--user", "alice", "hi", "-o", "json"]).await);
    assert_eq!(uint64(&v["targets"]), 1, "{v}");
    assert!(!v["message_id"].as_str().unwrap().is_empty(), "{v}");
    assert_eq!((uint64(&v["offset"]), v["epoch"].as_str()), (0, Some("")));
    assert_eq!(next_json(&mut ws).await["data"], "hi");

    // publish, to a topic with history, with a JSON payload: offset and epoch.
    let v = one_object(
        &call(&[
            "publish",
            "--topic",
            "chat.1",
            "--json",
            r#"{"n":1}"#,
            "--output",
            "json",
        ])
        .await,
    );
    assert_eq!(uint64(&v["targets"]), 1, "{v}");
    assert_eq!(uint64(&v["offset"]), 1, "{v}");
    let epoch = v["epoch"].as_str().unwrap().to_owned();
    assert!(!epoch.is_empty(), "{v}");
    assert_eq!(
        next_json(&mut ws).await["data"],
        serde_json::json!({"n": 1})
    );
    let before = now_ms();
    one_object(&call(&["publish", "--topic", "chat.1", "second", "-o", "json"]).await);

    // history: the messages with their payloads, milliseconds and RFC 3339 beside them.
    let v = one_object(&call(&["history", "chat.1", "-o", "json"]).await);
    assert_eq!(v["epoch"], epoch.as_str(), "{v}");
    assert_eq!(uint64(&v["offset"]), 2, "{v}");
    let messages = v["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 2, "{v}");
    assert_eq!(
        messages[0]["payload"],
        serde_json::json!({"json": r#"{"n":1}"#})
    );
    assert_eq!(
        messages[1]["payload"],
        serde_json::json!({"text": "second"})
    );
    for m in messages {
        let ms = uint64(&m["published_at_ms"]);
        assert_eq!(rfc3339_ms(m["published_at"].as_str().unwrap()), ms, "{m}");
    }
    let second_at = uint64(&messages[1]["published_at_ms"]);
    assert!(
        (before.saturating_sub(1000)..=now_ms()).contains(&second_at),
        "{second_at} is not around now ({before})"
    );
    // ...and the text form prints the same time in RFC 3339.
    let text = ok(&call(&["history", "chat.1", "--since", "1"]).await);
    let line = text.lines().nth(1).unwrap_or_else(|| panic!("{text}"));
    let time = line.split("  ").nth(1).unwrap();
    assert_eq!(rfc3339_ms(time), second_at, "{text}");

    // presence: the sessions, connected_at_ms kept, connected_at beside it; the text
    // form prints RFC 3339 instead of milliseconds.
    let v = one_object(&call(&["presence", "alice", "--output=json"]).await);
    assert_eq!(
        (v["user_id"].as_str(), v["online"].as_bool()),
        (Some("alice"), Some(true))
    );
    let session = &v["sessions"][0];
    let connected_ms = uint64(&session["connected_at_ms"]);
    let connected_at = session["connected_at"].as_str().unwrap();
    assert_eq!(rfc3339_ms(connected_at), connected_ms, "{v}");
    assert!(
        connected_ms <= now_ms() && connected_ms + 60_000 > now_ms(),
        "{v}"
    );
    let text = ok(&call(&["presence", "alice"]).await);
    assert!(
        text.contains(&format!("  connected_at={connected_at}  ")),
        "{text}"
    );
    assert!(!text.contains("connected_at_ms"), "{text}");
    let v = one_object(&call(&["presence", "nobody", "-o", "json"]).await);
    assert_eq!(v["online"], false, "{v}");
    assert_eq!(v["sessions"], serde_json::json!([]), "{v}");

    // revoke: until_ms and until.
    let v =
        one_object(&call(&["revoke", "--session", "s-none", "--for", "1h", "-o", "json"]).await);
    let until_ms = uint64(&v["until_ms"]);
    assert_eq!(rfc3339_ms(v["until"].as_str().unwrap()), until_ms, "{v}");
    assert!(until_ms > now_ms() + 3_500_000, "{v}");

    // An error is text on stderr, nothing on stdout, exit 1, also with --output json.
    let o = call(&["history", "news", "-o", "json"]).await;
    assert_eq!(o.status.code(), Some(1));
    assert!(
        o.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("history.topics"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    // Not an output format.
    let o = call(&["presence", "alice", "-o", "yaml"]).await;
    assert_eq!(o.status.code(), Some(2));
}

#[tokio::test]
async fn check_config_answers_in_json_too() {
    let v = one_object(&wsgate(&["check-config", "--output", "json"]).await);
    assert_eq!(v, serde_json::json!({"ok": true, "problems": []}));

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.toml");
    std::fs::write(
        &file,
        "[server]\nlisten = \"nowhere\"\n[session]\nheartbeat_interval = \"soon\"\n",
    )
    .unwrap();
    let o = wsgate(&["check-config", "-c", file.to_str().unwrap(), "-o", "json"]).await;
    assert_eq!(o.status.code(), Some(64));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["ok"], false, "{v}");
    let problems = v["problems"].as_array().unwrap();
    let mut keys: Vec<&str> = problems
        .iter()
        .map(|p| p["key"].as_str().unwrap())
        .collect();
    keys.sort_unstable();
    assert_eq!(keys, ["server.listen", "session.heartbeat_interval"], "{v}");
    assert!(
        problems
            .iter()
            .any(|p| p["message"].as_str().unwrap().contains("\"nowhere\"")),
        "{v}"
    );
}

#[test]
fn completions_are_scripts_for_each_shell() {
    for shell in ["bash", "zsh", "fish", "powershell", "elvish"] {
        let o = run(&["completions".into(), shell.into()]);
        let script = ok(&o);
        assert!(script.len() > 1000, "{shell}: {script}");
        // It completes the subcommands and their options.
        for word in ["presence", "history", "completions", "--output"] {
            assert!(script.contains(word), "{shell}: no {word}");
        }
    }
    // bash can read the bash one.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("wsgate.bash");
    std::fs::write(&path, ok(&run(&["completions".into(), "bash".into()]))).unwrap();
    let check = Command::new("bash").arg("-n").arg(&path).output().unwrap();
    assert!(
        check.status.success(),
        "bash -n: {}",
        String::from_utf8_lossy(&check.stderr)
    );
    // Loaded, it defines the completion function for wsgate.
    let check = Command::new("bash")
        .arg("-c")
        .arg(format!("source {} && complete -p wsgate", path.display()))
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&check.stdout).contains("wsgate"),
        "{check:?}"
    );
    // A shell it does not know is a usage error.
    assert_eq!(
        run(&["completions".into(), "tcsh".into()]).status.code(),
        Some(2)
    );
}

#[test]
fn version_prints_the_crate_version_and_the_git_revision() {
    let line = ok(&run(&["version".into()]));
    assert_eq!(
        line,
        ok(&run(&["--version".into()])),
        "version and --version agree"
    );
    let version = env!("CARGO_PKG_VERSION");
    let rest = line
        .trim_end()
        .strip_prefix(&format!("wsgate {version} ("))
        .and_then(|r| r.strip_suffix(')'))
        .unwrap_or_else(|| panic!("{line}"));
    let v = one_object(&run(&["version".into(), "-o".into(), "json".into()]));
    assert_eq!(v["version"], version);
    assert_eq!(v["git_revision"], rest, "{v}");
    // Works beside a broken configuration: it reads none.
    let o = Command::new(wsgate_binary())
        .args(["version"])
        .env_clear()
        .env("WSGATE__SERVER__LISTEN", "nowhere")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0));

    // A short commit id (with -dirty for a tree with changes), or `unknown` for a build
    // without git. When this checkout has git, the id is one of its commits.
    if rest == "unknown" {
        return;
    }
    let rev = rest.strip_suffix("-dirty").unwrap_or(rest);
    assert!(
        rev.len() >= 7 && rev.chars().all(|c| c.is_ascii_hexdigit()),
        "{line}"
    );
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let known = Command::new("git")
        .arg("-C")
        .arg(repo)
        .args(["cat-file", "-e", &format!("{rev}^{{commit}}")])
        .status();
    if let Ok(status) = known {
        assert!(status.success(), "{rev} is not a commit of this repository");
    }
}
