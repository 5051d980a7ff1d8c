//! Revocations: "no session of this user, this session, or sessions of this token (`jti`)
//! until this time". The registry keeps the cluster's set; every pod keeps a copy
//! ([`RevocationSet`]) that handshakes and live sessions are checked against without a
//! round trip, and that it refreshes from the registry (see the server's upkeep).
//!
//! A set is a map from what is revoked to until when (ms since the Unix epoch); an entry
//! whose time has passed no longer revokes anything and is dropped on the next refresh.
//! Revoking what is already revoked keeps the later of the two times: a revocation never
//! shortens another.

use std::collections::HashMap;

use crate::ids::SessionId;

/// What a revocation applies to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Revoked {
    /// Every session of a user, and every handshake with a token for it.
    User(String),
    /// One session.
    Session(SessionId),
    /// Every session whose current token (the handshake's, or the last `refresh`'s) has
    /// this `jti`, every handshake with it, and every refresh to it.
    Token(String),
}

impl Revoked {
    /// The registry's name for it: `u:<user>`, `s:<session>` or `t:<jti>`.
    pub fn key(&self) -> String {
        match self {
            Revoked::User(u) => format!("u:{u}"),
            Revoked::Session(s) => format!("s:{s}"),
            Revoked::Token(t) => format!("t:{t}"),
        }
    }

    /// The inverse of [`key`](Self::key); `None` for anything else.
    pub fn from_key(key: &str) -> Option<Self> {
        let (kind, value) = key.split_once(':')?;
        if value.is_empty() {
            return None;
        }
        match kind {
            "u" => Some(Revoked::User(value.to_owned())),
            "s" => Some(Revoked::Session(SessionId::from_string(value.to_owned()))),
            "t" => Some(Revoked::Token(value.to_owned())),
            _ => None,
        }
    }
}

/// One revocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revocation {
    /// What it applies to.
    pub what: Revoked,
    /// Until when, in ms since the Unix epoch.
    pub until_ms: u64,
}

/// Who a session or handshake is, as far as revocations go.
#[derive(Debug, Clone, Copy)]
pub struct Holder<'a> {
    /// The user.
    pub user_id: &'a str,
    /// The session, once there is one.
    pub session_id: Option<&'a SessionId>,
    /// The token's `jti`, when it has one.
    pub token_id: Option<&'a str>,
}

/// A pod's copy of the revocations in force.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RevocationSet {
    until: HashMap<Revoked, u64>,
}

impl RevocationSet {
    /// A set of `revocations` (the later time wins for duplicates).
    pub fn from_revocations(revocations: impl IntoIterator<Item = Revocation>) -> Self {
        let mut set = Self::default();
        for r in revocations {
            set.insert(r);
        }
        set
    }

    /// Adds `r`; keeps the later time when its target is revoked already. Returns the
    /// time in force now.
    pub fn insert(&mut self, r: Revocation) -> u64 {
        let until = self.until.entry(r.what).or_insert(0);
        *until = (*until).max(r.until_ms);
        *until
    }

    /// Whether any revocation in force at `now_ms` applies to `holder`. Three lookups at
    /// most, none when the set is empty (the usual case).
    pub fn revokes(&self, holder: Holder<'_>, now_ms: u64) -> bool {
        if self.until.is_empty() {
            return false;
        }
        let in_force = |what: Revoked| self.until.get(&what).is_some_and(|u| *u > now_ms);
        in_force(Revoked::User(holder.user_id.to_owned()))
            || holder
                .session_id
                .is_some_and(|s| in_force(Revoked::Session(s.clone())))
            || holder
                .token_id
                .is_some_and(|t| in_force(Revoked::Token(t.to_owned())))
    }

    /// The revocations in force at `now_ms` that `older` did not have, or had with an
    /// earlier time: what a pod must apply to its live sessions after a refresh.
    pub fn added_since(&self, older: &RevocationSet, now_ms: u64) -> Vec<Revocation> {
        self.until
            .iter()
            .filter(|(what, until)| {
                **until > now_ms && older.until.get(*what).is_none_or(|old| old < *until)
            })
            .map(|(what, until)| Revocation {
                what: what.clone(),
                until_ms: *until,
            })
            .collect()
    }

    /// Every revocation kept.
    pub fn to_revocations(&self) -> Vec<Revocation> {
        self.until
            .iter()
            .map(|(what, until)| Revocation {
                what: what.clone(),
                until_ms: *until,
            })
            .collect()
    }

    /// Drops the revocations no longer in force at `now_ms`.
    pub fn prune(&mut self, now_ms: u64) {
        self.until.retain(|_, until| *until > now_ms);
    }

    /// Revocations kept.
    pub fn len(&self) -> usize {
        self.until.len()
    }

    /// Whether none is kept.
    pub fn is_empty(&self) -> bool {
        self.until.is_empty()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn r(what: Revoked, until_ms: u64) -> Revocation {
        Revocation { what, until_ms }
    }

    fn holder<'a>(user: &'a str, session: &'a SessionId, token: Option<&'a str>) -> Holder<'a> {
        Holder {
            user_id: user,
            session_id: Some(session),
            token_id: token,
        }
    }

    #[test]
    fn keys_round_trip_and_bad_keys_are_refused() {
        let s = SessionId::from_string("01ABC".to_owned());
        for what in [
            Revoked::User("alice:x".into()),
            Revoked::Session(s),
            Revoked::Token("j-1".into()),
        ] {
            assert_eq!(Revoked::from_key(&what.key()), Some(what));
        }
        for bad in ["", "u", "u:", "x:alice", "alice"] {
            assert_eq!(Revoked::from_key(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_set_revokes_by_user_session_or_token_until_its_time() {
        let s1 = SessionId::from_string("s1".to_owned());
        let s2 = SessionId::from_string("s2".to_owned());
        let set = RevocationSet::from_revocations([
            r(Revoked::User("mallory".into()), 1_000),
            r(Revoked::Session(s1.clone()), 2_000),
            r(Revoked::Token("jti-7".into()), 3_000),
        ]);
        assert!(set.revokes(holder("mallory", &s2, None), 999));
        assert!(
            !set.revokes(holder("mallory", &s2, None), 1_000),
            "until is exclusive"
        );
        assert!(set.revokes(holder("alice", &s1, None), 1_500));
        assert!(set.revokes(holder("alice", &s2, Some("jti-7")), 2_999));
        assert!(!set.revokes(holder("alice", &s2, Some("jti-8")), 0));
        assert!(!RevocationSet::default().revokes(holder("mallory", &s1, Some("jti-7")), 0));
    }

    #[test]
    fn the_later_time_wins_and_refreshes_report_what_is_new_or_longer() {
        let mut old = RevocationSet::default();
        assert_eq!(old.insert(r(Revoked::User("a".into()), 500)), 500);
        assert_eq!(old.insert(r(Revoked::User("a".into()), 300)), 500);
        old.insert(r(Revoked::User("gone".into()), 100));
        let new = RevocationSet::from_revocations([
            r(Revoked::User("a".into()), 500),
            r(Revoked::User("b".into()), 900),
            r(Revoked::User("gone".into()), 100),
            r(Revoked::Token("t".into()), 800),
        ]);
        let mut added = new.added_since(&old, 200);
        added.sort_by_key(|r| r.until_ms);
        assert_eq!(
            added,
            [
                r(Revoked::Token("t".into()), 800),
                r(Revoked::User("b".into()), 900)
            ]
        );
        let longer = RevocationSet::from_revocations([r(Revoked::User("a".into()), 700)]);
        assert_eq!(
            longer.added_since(&old, 200),
            [r(Revoked::User("a".into()), 700)]
        );
        let mut pruned = new.clone();
        pruned.prune(500);
        assert_eq!(pruned.len(), 2);
    }
}
