//! `[webhooks]`: the endpoints parsed into the delivery side's configuration, with every
//! problem of every entry reported at once.

use std::time::Duration;

use super::Problem;
use super::rules::fmt_duration;
use super::sections::Settings;
use crate::webhooks::{EVENT_TYPES, Endpoint, WebhookConfig};

/// Shortest accepted HMAC key: shorter ones are guessable.
const MIN_SECRET_BYTES: usize = 16;

impl Settings {
    /// `webhooks.*` as the delivery side takes it; problems are added to `p`.
    pub(super) fn webhook_config(&self, p: &mut Vec<Problem>) -> WebhookConfig {
        let w = &self.webhooks;
        let key = "webhooks.endpoints";
        let mut endpoints = Vec::with_capacity(w.endpoints.len());
        for (i, entry) in w.endpoints.iter().enumerate() {
            let before = p.len();
            let url = match url::Url::parse(&entry.url) {
                Ok(url) if matches!(url.scheme(), "http" | "https") && url.has_host() => Some(url),
                Ok(_) => {
                    p.push(Problem::new(
                        key,
                        format!("entry {i}: url must be an http:// or https:// URL with a host"),
                    ));
                    None
                }
                Err(e) => {
                    p.push(Problem::new(key, format!("entry {i}: url: {e}")));
                    None
                }
            };
            if entry.secret.len() < MIN_SECRET_BYTES {
                p.push(Problem::new(
                    key,
                    format!(
                        "entry {i}: secret must be at least {MIN_SECRET_BYTES} bytes (it keys the \
                         signature receivers check)"
                    ),
                ));
            }
            for event in &entry.events {
                if !EVENT_TYPES.contains(&event.as_str()) {
                    p.push(Problem::new(
                        key,
                        format!(
                            "entry {i}: unknown event type {event:?}; expected one of {}",
                            EVENT_TYPES.join(", ")
                        ),
                    ));
                }
            }
            if let (Some(url), true) = (url, p.len() == before) {
                endpoints.push(Endpoint {
                    url,
                    secret: entry.secret.as_bytes().into(),
                    events: entry.events.clone(),
                });
            }
        }
        let ranges = [
            (
                "webhooks.retry_for",
                w.retry_for,
                Duration::from_secs(1),
                Duration::from_secs(86_400),
            ),
            (
                "webhooks.timeout",
                w.timeout,
                Duration::from_millis(100),
                Duration::from_secs(60),
            ),
        ];
        for (key, value, min, max) in ranges {
            if value < min || value > max {
                p.push(Problem::new(
                    key,
                    format!(
                        "must be between {} and {}, got {}",
                        fmt_duration(min),
                        fmt_duration(max),
                        fmt_duration(value)
                    ),
                ));
            }
        }
        if !(1..=1_000_000).contains(&w.queue) {
            p.push(Problem::new(
                "webhooks.queue",
                format!("must be between 1 and 1000000, got {}", w.queue),
            ));
        }
        WebhookConfig {
            endpoints,
            retry_for: w.retry_for,
            queue: w.queue,
            timeout: w.timeout,
        }
    }
}
