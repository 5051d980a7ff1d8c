//! Identifiers: session ids are ULIDs (unique across pods and sortable by creation time).

use std::fmt;
use std::sync::Arc;

use parking_lot::Mutex;

/// A session's id: a ULID rendered in Crockford base32, e.g. `01J9Z8Q6XG0000000000000000`.
/// Unique across pods without coordination, and sortable by the time the session began.
///
/// Shared, not copied: the hub, the registry, the session and its record each hold the
/// id, and a clone is a reference count instead of an allocation per holder.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct SessionId(Arc<str>);

impl SessionId {
    /// A fresh, unique id, strictly greater than every id this process made before
    /// (monotonic within a millisecond), so sessions of one pod sort by creation.
    pub fn generate() -> Self {
        static GENERATOR: Mutex<Option<ulid::Generator>> = Mutex::new(None);
        let mut generator = GENERATOR.lock();
        let id = generator
            .get_or_insert_with(ulid::Generator::new)
            .generate()
            // Overflow of the random part within one millisecond: astronomically rare, and
            // a plain ULID is still unique.
            .unwrap_or_else(|_| ulid::Ulid::new());
        let mut text = [0; ulid::ULID_LEN];
        Self(Arc::from(&*id.array_to_str(&mut text)))
    }

    /// Wraps an id received from a caller or a backend (not validated: unknown ids simply
    /// match no session).
    pub fn from_string(id: impl Into<String>) -> Self {
        Self(Arc::from(id.into()))
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

/// A new stream epoch: 10 random characters of Crockford base32 (50 bits), so two epochs
/// of one stream practically never repeat.
pub fn stream_epoch() -> String {
    let id = ulid::Ulid::new().to_string().to_lowercase();
    // The last 16 characters of a ULID are its random part.
    id[id.len() - 10..].to_owned()
}
