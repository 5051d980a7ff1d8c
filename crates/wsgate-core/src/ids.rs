//! Identifiers: session ids are ULIDs (unique across pods and sortable by creation time).

use std::fmt;

/// A session's id: a ULID rendered in Crockford base32, e.g. `01J9Z8Q6XG0000000000000000`.
/// Unique across pods without coordination, and sortable by the time the session began.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct SessionId(String);

impl SessionId {
    /// A fresh, unique id.
    pub fn generate() -> Self {
        Self(ulid::Ulid::new().to_string())
    }

    /// Wraps an id received from a caller or a backend (not validated: unknown ids simply
    /// match no session).
    pub fn from_string(id: impl Into<String>) -> Self {
        Self(id.into())
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A message id for envelopes crossing the broker (used for tracing and de-duplication).
pub fn message_id() -> String {
    ulid::Ulid::new().to_string()
}
