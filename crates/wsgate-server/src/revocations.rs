//! This pod's copy of the cluster's revocations ([`Revocations`]): what the preflight
//! refuses handshakes by (401 `revoked_token`) and what closes live sessions with 3006.
//! The registry holds the cluster's set; the upkeep refreshes the copy from it every
//! [`REFRESH_EVERY`], and the pod that takes a `Revoke` call refreshes at once. The set
//! itself and its rules are `wsgate_core::revocation`.

use std::sync::Arc;
use std::time::Duration;

use parking_lot::RwLock;
use wsgate_core::backend::{BackendError, Registry};
use wsgate_core::close;
use wsgate_core::hub::{Hub, SessionHandle};
use wsgate_core::ids::SessionId;
use wsgate_core::revocation::{Holder, RevocationSet};

/// How often each pod reads the registry's set (one cheap read while nothing changed):
/// a revocation taken on another pod closes this pod's sessions within about this long.
pub const REFRESH_EVERY: Duration = Duration::from_millis(250);

/// A pod's copy of the cluster's revocations, shared by its handshakes and sessions:
/// checked without a round trip, refreshed from the registry (one cheap read while the
/// set's version has not moved).
///
/// Ordering is what keeps a session from slipping through: a refresh swaps the new set
/// in *before* it closes the live sessions it revokes, and a new session checks the set
/// *after* it joins the hub. Whichever of the two comes second sees the other.
#[derive(Debug, Default)]
pub struct Revocations {
    known: RwLock<Known>,
    /// One refresh at a time, so an older read never replaces a newer one.
    refreshing: tokio::sync::Mutex<()>,
}

#[derive(Debug, Default)]
struct Known {
    /// The registry's version of the set; `None` until it was read once.
    version: Option<u64>,
    set: Arc<RevocationSet>,
}

impl Revocations {
    /// An empty copy, not loaded yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether a revocation in force at `now_ms` applies to `holder`.
    pub fn revokes(&self, holder: Holder<'_>, now_ms: u64) -> bool {
        self.known.read().set.revokes(holder, now_ms)
    }

    /// Whether the set was read from the registry at least once: before that, this pod
    /// cannot refuse what the cluster revoked.
    pub fn loaded(&self) -> bool {
        self.known.read().version.is_some()
    }

    /// Revocations kept (in force or not yet pruned).
    pub fn len(&self) -> usize {
        self.known.read().set.len()
    }

    /// Whether none is kept.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Reads the registry's set when its version moved, and closes the sessions of `hub`
    /// that a new (or longer) revocation names, with 3006. Returns how many it closed.
    pub async fn refresh(
        &self,
        registry: &dyn Registry,
        hub: &Hub,
        now_ms: u64,
    ) -> Result<usize, BackendError> {
        let _one = self.refreshing.lock().await;
        // Never read yet: a version no registry has, so the whole set comes back.
        let known = self.known.read().version.unwrap_or(u64::MAX);
        let Some((version, revocations)) = registry.revocations(known, now_ms).await? else {
            return Ok(0);
        };
        let set = Arc::new(RevocationSet::from_revocations(revocations));
        let added = {
            let mut known = self.known.write();
            let added = set.added_since(&known.set, now_ms);
            *known = Known {
                version: Some(version),
                set: set.clone(),
            };
            added
        };
        if added.is_empty() {
            return Ok(0);
        }
        let added = RevocationSet::from_revocations(added);
        let mut closed = 0;
        for session in hub.sessions() {
            if added.revokes(holder_of(&session).as_holder(), now_ms) {
                session.close_with(close::REVOCATION);
                closed += 1;
            }
        }
        Ok(closed)
    }

    /// Closes `session` with 3006 when a revocation names it: for a session that joined
    /// the hub after a refresh may have scanned it. Returns whether it closed it.
    pub fn close_if_revoked(&self, session: &SessionHandle, now_ms: u64) -> bool {
        let revoked = self.revokes(holder_of(session).as_holder(), now_ms);
        if revoked {
            session.close_with(close::REVOCATION);
        }
        revoked
    }
}

/// A session's [`Holder`] parts, owned (the token id sits behind the handle's lock).
struct OwnedHolder<'a> {
    user_id: &'a str,
    session_id: &'a SessionId,
    token_id: Option<String>,
}

impl OwnedHolder<'_> {
    fn as_holder(&self) -> Holder<'_> {
        Holder {
            user_id: self.user_id,
            session_id: Some(self.session_id),
            token_id: self.token_id.as_deref(),
        }
    }
}

fn holder_of(session: &SessionHandle) -> OwnedHolder<'_> {
    OwnedHolder {
        user_id: &session.user_id,
        session_id: &session.id,
        token_id: session.token_id(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use wsgate_core::backend::memory::MemoryRegistry;
    use wsgate_core::revocation::{Revocation, Revoked};

    fn session(id: &str, user: &str, token: Option<&str>) -> Arc<SessionHandle> {
        let (handle, _rx) = SessionHandle::new(SessionId::from_string(id.to_owned()), user, 4);
        handle.set_token_id(token.map(str::to_owned));
        handle
    }

    fn code(handle: &SessionHandle) -> Option<u16> {
        handle.close_reason().map(|r| r.code)
    }

    #[tokio::test]
    async fn a_refresh_closes_exactly_the_sessions_a_new_revocation_names() {
        let registry = MemoryRegistry::new();
        let hub = Hub::new();
        let copy = Revocations::new();
        assert!(!copy.loaded());
        assert_eq!(
            copy.refresh(registry.as_ref(), &hub, 1_000).await.unwrap(),
            0
        );
        assert!(copy.loaded());

        let (by_user, by_token, by_session, bystander) = (
            session("s1", "mallory", None),
            session("s2", "alice", Some("stolen")),
            session("s3", "bob", None),
            session("s4", "alice", Some("kept")),
        );
        for s in [&by_user, &by_token, &by_session, &bystander] {
            hub.insert(s.clone());
        }
        for what in [
            Revoked::User("mallory".into()),
            Revoked::Token("stolen".into()),
            Revoked::Session(SessionId::from_string("s3".to_owned())),
        ] {
            registry
                .revoke(&Revocation {
                    what,
                    until_ms: 5_000,
                })
                .await
                .unwrap();
        }
        assert_eq!(
            copy.refresh(registry.as_ref(), &hub, 2_000).await.unwrap(),
            3
        );
        for s in [&by_user, &by_token, &by_session] {
            assert_eq!(code(s), Some(close::REVOKED), "{}", s.id);
        }
        assert_eq!(code(&bystander), None);
        assert_eq!(copy.len(), 3);
        // Nothing new: the next refresh closes nothing (and reads nothing).
        assert_eq!(
            copy.refresh(registry.as_ref(), &hub, 2_100).await.unwrap(),
            0
        );
    }

    #[tokio::test]
    async fn a_session_that_joins_after_the_refresh_closes_itself() {
        let registry = MemoryRegistry::new();
        let hub = Hub::new();
        let copy = Revocations::new();
        registry
            .revoke(&Revocation {
                what: Revoked::User("mallory".into()),
                until_ms: 5_000,
            })
            .await
            .unwrap();
        copy.refresh(registry.as_ref(), &hub, 1_000).await.unwrap();
        // Passed the preflight before the revocation, joins the hub after the scan.
        let late = session("late", "mallory", None);
        hub.insert(late.clone());
        assert!(copy.close_if_revoked(&late, 1_000));
        assert_eq!(code(&late), Some(close::REVOKED));
        let other = session("other", "alice", None);
        assert!(!copy.close_if_revoked(&other, 1_000));
        // Past its time, the revocation names no one.
        let after = session("after", "mallory", None);
        assert!(!copy.close_if_revoked(&after, 5_000));
    }
}
