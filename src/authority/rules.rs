//! The decisions a store carries out inside its transaction. Pure functions of what the store
//! read, so they are tested here without a database.

use chrono::{DateTime, Utc};

use super::{AtLimit, Policy};
use crate::{
    domain::{RevokeReason, Session, SessionState},
    error::{Error, RefreshRefusal, Result},
    store::{RefreshDecision, RefreshState},
    token::TokenHash,
};

/// How many generations of retired refresh tokens are kept, so that reuse of any of them is
/// recognised as theft. Older ones are forgotten and are then merely unknown.
pub const KEPT_REFRESH_GENERATIONS: i32 = 16;

/// How many of the user's oldest live sessions to revoke so that one more fits; an error when
/// the policy is to refuse.
pub fn admission(policy: &Policy, live_sessions: i64) -> Result<i64> {
    let limit = policy.max_sessions_per_user;
    if limit == 0 {
        return Ok(0);
    }
    let excess = live_sessions + 1 - i64::from(limit);
    match policy.at_limit {
        _ if excess <= 0 => Ok(0),
        AtLimit::Deny => Err(Error::SessionLimitReached { limit }),
        AtLimit::EvictOldest => Ok(excess),
    }
}

/// Refresh-token rotation. `successors` are the hashes of the presented token's successor under
/// each refresh key, newest key first: rotation uses the newest, and a retry is recognised under
/// any (the key may have rotated between the first try and the retry).
///
/// - The current token rotates to its successor.
/// - A retired token within the grace window is a retry (a lost response, two tabs at once): it
///   gets the same successor, if that is still the current token. If the successor has itself
///   been rotated, the retry is refused but the session is left alone.
/// - A retired token after the grace window was stolen, or the client it was stolen from is
///   now trying: the session can no longer be trusted and is revoked.
pub fn refresh(
    policy: &Policy,
    state: &RefreshState<'_>,
    successors: &[TokenHash],
    now: DateTime<Utc>,
) -> RefreshDecision {
    if let Err(error) = ensure_live(state.session, now) {
        return RefreshDecision::Refuse(error);
    }
    let Some(retired_at) = state.presented.retired_at else {
        let Some(successor) = successors.first() else {
            return RefreshDecision::Refuse(Error::Internal(anyhow::anyhow!("no refresh key")));
        };
        let generation = state.presented.generation + 1;
        return RefreshDecision::Rotate {
            successor: *successor,
            idle_expires_at: (now + policy.idle_timeout).min(state.session.expires_at),
            forget_before: generation - KEPT_REFRESH_GENERATIONS,
        };
    };
    if now - retired_at > policy.refresh_reuse_grace {
        return RefreshDecision::Revoke(RevokeReason::internal(RevokeReason::REFRESH_TOKEN_REUSE));
    }
    let current_successor = state
        .current
        .as_ref()
        .filter(|(generation, _)| *generation == state.presented.generation + 1)
        .and_then(|(_, current)| successors.iter().find(|successor| *successor == current));
    match current_successor {
        Some(successor) => RefreshDecision::Repeat(*successor),
        None => RefreshDecision::Refuse(Error::RefreshRefused(RefreshRefusal::Superseded)),
    }
}

/// Refuses a refresh of a session that is not live.
fn ensure_live(session: &Session, now: DateTime<Utc>) -> Result<()> {
    match session.state(now) {
        SessionState::Live => Ok(()),
        SessionState::Revoked => Err(Error::RefreshRefused(RefreshRefusal::SessionRevoked)),
        SessionState::Expired => Err(Error::RefreshRefused(RefreshRefusal::SessionExpired)),
    }
}

#[cfg(test)]
mod tests {
    use chrono::Duration;

    use super::*;
    use crate::{
        domain::{Device, Metadata, SessionId, UserId},
        store::StoredRefreshToken,
    };

    fn policy(limit: u32, at_limit: AtLimit) -> Policy {
        Policy {
            access_token_ttl: Duration::minutes(15),
            session_lifetime: Duration::days(30),
            idle_timeout: Duration::days(7),
            refresh_reuse_grace: Duration::seconds(10),
            max_sessions_per_user: limit,
            at_limit,
            activity_write_interval: Duration::minutes(1),
            rates: crate::limits::Rates {
                create_per_user: crate::limits::Rate::OFF,
                refresh_per_session: crate::limits::Rate::OFF,
            },
        }
    }

    fn session(now: DateTime<Utc>) -> Session {
        Session {
            id: SessionId::generate(),
            user_id: UserId::try_from("u".to_owned()).unwrap(),
            device: Device::default(),
            metadata: Metadata::default(),
            created_at: now,
            last_seen_at: now,
            expires_at: now + Duration::days(30),
            idle_expires_at: now + Duration::days(7),
            revoked_at: None,
            revoke_reason: None,
        }
    }

    fn token(
        session: &Session,
        generation: i32,
        retired_at: Option<DateTime<Utc>>,
    ) -> StoredRefreshToken {
        StoredRefreshToken {
            session_id: session.id,
            generation,
            retired_at,
        }
    }

    #[test]
    fn no_limit_admits_everything() {
        assert_eq!(admission(&policy(0, AtLimit::Deny), 1_000).ok(), Some(0));
    }

    #[test]
    fn evict_oldest_makes_exactly_enough_room() {
        let policy = policy(3, AtLimit::EvictOldest);
        assert_eq!(admission(&policy, 2).ok(), Some(0));
        assert_eq!(admission(&policy, 3).ok(), Some(1));
        assert_eq!(admission(&policy, 5).ok(), Some(3));
    }

    #[test]
    fn deny_refuses_only_over_the_limit() {
        let policy = policy(3, AtLimit::Deny);
        assert!(admission(&policy, 2).is_ok());
        assert!(matches!(
            admission(&policy, 3),
            Err(Error::SessionLimitReached { limit: 3 })
        ));
    }

    #[test]
    fn the_current_token_rotates_to_the_newest_keys_successor() {
        let now = Utc::now();
        let session = session(now);
        let presented = token(&session, 4, None);
        let state = RefreshState {
            session: &session,
            presented: &presented,
            current: None,
        };
        let successors = [TokenHash([1; 32]), TokenHash([2; 32])];
        let decision = refresh(&policy(0, AtLimit::Deny), &state, &successors, now);
        assert!(matches!(
            decision,
            RefreshDecision::Rotate { forget_before, successor, .. }
                if forget_before == 5 - KEPT_REFRESH_GENERATIONS && successor == TokenHash([1; 32])
        ));
    }

    #[test]
    fn a_retry_within_grace_repeats_only_while_its_successor_is_current() {
        let now = Utc::now();
        let session = session(now);
        let presented = token(&session, 4, Some(now - Duration::seconds(10)));
        let successor = TokenHash([1; 32]);
        let policy = policy(0, AtLimit::Deny);
        let current = RefreshState {
            session: &session,
            presented: &presented,
            current: Some((5, successor)),
        };
        // Recognised under an older key too: the key rotated between the try and the retry.
        let newer_key_first = [TokenHash([9; 32]), successor];
        assert!(matches!(
            refresh(&policy, &current, &newer_key_first, now),
            RefreshDecision::Repeat(repeated) if repeated == successor
        ));
        let moved_on = RefreshState {
            session: &session,
            presented: &presented,
            current: Some((6, TokenHash([2; 32]))),
        };
        assert!(matches!(
            refresh(&policy, &moved_on, &[successor], now),
            RefreshDecision::Refuse(Error::RefreshRefused(RefreshRefusal::Superseded))
        ));
    }

    #[test]
    fn a_retired_token_after_grace_revokes_the_session() {
        let now = Utc::now();
        let session = session(now);
        let presented = token(&session, 4, Some(now - Duration::seconds(11)));
        let state = RefreshState {
            session: &session,
            presented: &presented,
            current: None,
        };
        assert!(matches!(
            refresh(&policy(0, AtLimit::Deny), &state, &[TokenHash([1; 32])], now),
            RefreshDecision::Revoke(reason) if reason.as_str() == "refresh_token_reuse"
        ));
    }

    #[test]
    fn a_session_that_is_not_live_refuses_before_anything_else() {
        let now = Utc::now();
        let mut revoked = session(now);
        revoked.revoked_at = Some(now);
        let presented = token(&revoked, 4, Some(now - Duration::days(1)));
        let state = RefreshState {
            session: &revoked,
            presented: &presented,
            current: None,
        };
        assert!(matches!(
            refresh(
                &policy(0, AtLimit::Deny),
                &state,
                &[TokenHash([1; 32])],
                now
            ),
            RefreshDecision::Refuse(Error::RefreshRefused(RefreshRefusal::SessionRevoked))
        ));
    }
}
