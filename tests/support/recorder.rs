//! What the multi-pod tests share: a socket recorder that keeps reading (so pings are
//! answered) and remembers every frame, and a sender that retries until one arrives.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;

use crate::hostile::eventually;
use crate::{GrpcClient, Ws, text};

/// The session id of a welcome frame.
pub fn session_id(welcome: &Value) -> String {
    welcome["session_id"]
        .as_str()
        .unwrap_or_else(|| panic!("welcome without session_id: {welcome}"))
        .to_string()
}

/// Every frame a socket receives, read by a task of its own (so pings are answered).
pub struct Recorder {
    frames: Arc<Mutex<Vec<Message>>>,
    ended: Arc<Mutex<Option<String>>>,
}

impl Recorder {
    pub fn start(mut ws: Ws) -> Self {
        let frames = Arc::new(Mutex::new(Vec::new()));
        let ended = Arc::new(Mutex::new(None));
        let (f, e) = (frames.clone(), ended.clone());
        tokio::spawn(async move {
            let why = loop {
                match ws.next().await {
                    Some(Ok(m)) => f.lock().unwrap().push(m),
                    Some(Err(err)) => break format!("error: {err}"),
                    None => break "stream ended".to_string(),
                }
            };
            *e.lock().unwrap() = Some(why);
        });
        Self { frames, ended }
    }

    /// The `data` of every push received so far.
    pub fn pushes(&self) -> Vec<String> {
        self.frames
            .lock()
            .unwrap()
            .iter()
            .filter_map(|m| match m {
                Message::Text(t) => serde_json::from_str::<Value>(t.as_str()).ok(),
                _ => None,
            })
            .filter(|v| v["op"] == "message")
            .map(|v| v["data"].as_str().unwrap_or_default().to_string())
            .collect()
    }

    /// Panics if the socket received a close frame or ended.
    pub fn assert_open(&self, who: &str) {
        let closes: Vec<Message> = self
            .frames
            .lock()
            .unwrap()
            .iter()
            .filter(|m| matches!(m, Message::Close(_)))
            .cloned()
            .collect();
        assert!(closes.is_empty(), "{who} received a close: {closes:?}");
        let ended = self.ended.lock().unwrap().clone();
        assert!(ended.is_none(), "{who}'s socket ended: {ended:?}");
    }

    /// Panics if any push arrived twice.
    pub fn assert_no_duplicates(&self, who: &str) {
        let pushes = self.pushes();
        let unique: BTreeSet<&String> = pushes.iter().collect();
        assert_eq!(
            unique.len(),
            pushes.len(),
            "{who} got a message twice: {pushes:?}"
        );
    }
}

/// Sends `prefix-N` to `user` via `grpc` until `rec` has received one of them.
pub async fn send_until_received(
    what: &str,
    within: Duration,
    grpc: &mut GrpcClient,
    user: &str,
    prefix: &str,
    rec: &Recorder,
) {
    let mut n = 0u32;
    eventually(what, within, async || {
        if rec.pushes().iter().any(|d| d.starts_with(prefix)) {
            return Ok(());
        }
        n += 1;
        let data = format!("{prefix}-{n}");
        let r = tokio::time::timeout(Duration::from_secs(3), grpc.send_to_user(user, text(&data)))
            .await
            .map_err(|_| format!("SendToUser {data} hung"))?
            .map_err(|e| format!("SendToUser {data}: {e:?}"))?;
        tokio::time::sleep(Duration::from_millis(150)).await;
        if rec.pushes().iter().any(|d| d.starts_with(prefix)) {
            Ok(())
        } else {
            Err(format!("{data} (targets {}) not received", r.targets))
        }
    })
    .await;
}
