//! placeholder until auth lands

/// Whether `topic` is a valid topic name: 1..=200 bytes of `[A-Za-z0-9._:-]`.
pub fn valid_topic(topic: &str) -> bool {
    !topic.is_empty()
        && topic.len() <= 200
        && topic
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}
