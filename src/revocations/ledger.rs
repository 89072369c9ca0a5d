//! What a replica knows is revoked, from the revocation log: the sessions revoked, and the users'
//! not-before instants, each kept for as long as a token it refuses may still be presented. A
//! `Validate` consults it after the caches, so that no cached copy, however stale (a revocation
//! whose Redis write was lost), outlives a revocation this replica has read from the log.

use std::collections::HashMap;

use chrono::{DateTime, Utc};

use crate::domain::{Revocation, Revoked, SessionId, UserId};

/// Revocations still in force, each with the instant after which it refuses no live token.
#[derive(Debug, Default)]
pub struct Ledger {
    sessions: HashMap<SessionId, DateTime<Utc>>,
    /// Per user: the not-before instant, and when it may be forgotten.
    users: HashMap<UserId, (DateTime<Utc>, DateTime<Utc>)>,
}

impl Ledger {
    /// Takes in `revocation`, to be kept until `forget_at`.
    pub fn apply(&mut self, revocation: &Revocation, forget_at: DateTime<Utc>) {
        match &revocation.revoked {
            Revoked::Session { session_id, .. } => {
                let kept = self.sessions.entry(*session_id).or_insert(forget_at);
                *kept = (*kept).max(forget_at);
            }
            Revoked::UserBefore {
                user_id,
                not_before,
            } => {
                let kept = self
                    .users
                    .entry(user_id.clone())
                    .or_insert((*not_before, forget_at));
                *kept = (kept.0.max(*not_before), kept.1.max(forget_at));
            }
            // Every replica reads its own key files, and refuses a removed key's tokens itself.
            Revoked::SigningKey { .. } => {}
        }
    }

    /// Whether a revocation refuses the session `session_id` of `user_id`, started at
    /// `created_at`.
    pub fn refuses(
        &self,
        session_id: SessionId,
        user_id: &UserId,
        created_at: DateTime<Utc>,
    ) -> bool {
        self.sessions.contains_key(&session_id)
            || self
                .users
                .get(user_id)
                .is_some_and(|(not_before, _)| created_at < *not_before)
    }

    /// Forgets what refuses no token any more at `now`.
    pub fn prune(&mut self, now: DateTime<Utc>) {
        self.sessions.retain(|_, forget_at| *forget_at > now);
        self.users.retain(|_, (_, forget_at)| *forget_at > now);
    }

    /// How many revocations it holds.
    pub fn len(&self) -> usize {
        self.sessions.len() + self.users.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty() && self.users.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeDelta;

    use super::*;
    use crate::domain::Cursor;

    fn revocation(revoked: Revoked) -> Revocation {
        Revocation {
            cursor: Cursor(1),
            revoked,
            revoked_at: Utc::now(),
            reason: "revoked".into(),
        }
    }

    fn user(name: &str) -> UserId {
        UserId::try_from(name.to_owned()).expect("a valid user id")
    }

    #[test]
    fn a_revoked_session_is_refused_until_it_is_forgotten() {
        let now = Utc::now();
        let (revoked, other) = (SessionId::generate(), SessionId::generate());
        let mut ledger = Ledger::default();
        ledger.apply(
            &revocation(Revoked::Session {
                session_id: revoked,
                user_id: user("ada"),
            }),
            now + TimeDelta::minutes(15),
        );
        assert!(ledger.refuses(revoked, &user("ada"), now));
        assert!(!ledger.refuses(other, &user("ada"), now));
        ledger.prune(now + TimeDelta::minutes(14));
        assert!(ledger.refuses(revoked, &user("ada"), now));
        ledger.prune(now + TimeDelta::minutes(15));
        assert!(!ledger.refuses(revoked, &user("ada"), now));
        assert!(ledger.is_empty());
    }

    #[test]
    fn a_not_before_refuses_only_that_users_older_sessions() {
        let now = Utc::now();
        let mut ledger = Ledger::default();
        ledger.apply(
            &revocation(Revoked::UserBefore {
                user_id: user("ada"),
                not_before: now,
            }),
            now + TimeDelta::minutes(15),
        );
        let session = SessionId::generate();
        assert!(ledger.refuses(session, &user("ada"), now - TimeDelta::microseconds(1)));
        assert!(!ledger.refuses(session, &user("ada"), now));
        assert!(!ledger.refuses(session, &user("bob"), now - TimeDelta::hours(1)));
    }

    #[test]
    fn an_older_not_before_never_replaces_a_newer_one() {
        let now = Utc::now();
        let mut ledger = Ledger::default();
        let forget = now + TimeDelta::minutes(15);
        for not_before in [now, now - TimeDelta::minutes(1)] {
            ledger.apply(
                &revocation(Revoked::UserBefore {
                    user_id: user("ada"),
                    not_before,
                }),
                forget,
            );
        }
        let session = SessionId::generate();
        assert!(ledger.refuses(session, &user("ada"), now - TimeDelta::seconds(1)));
        assert_eq!(ledger.len(), 1);
    }
}
