//! The decisions a store carries out inside its transaction. Pure functions of what the store
//! read, so they are tested here without a database.

use chrono::{DateTime, Utc};

use super::{AtLimit, Policy};
use crate::{
    domain::{RevokeReason, Session, SessionState},
    error::{Error, Refusal, Result},
    store::{RefreshDecision, RefreshState, SuccessorSalt},
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

/// Refresh-token rotation. `successors(salt)` are the hashes of the presented token's successor
/// derived with `salt` under each refresh key, newest key first: rotation uses the newest with
/// `new_salt`, and a retry is recognised under any key (it may have rotated between the first
/// try and the retry) with the salt stored when the token was rotated.
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
    successors: &dyn Fn(&SuccessorSalt) -> Vec<TokenHash>,
    new_salt: SuccessorSalt,
    now: DateTime<Utc>,
) -> RefreshDecision {
    if let Err(error) = ensure_live(state.session, now) {
        return RefreshDecision::Refuse(error);
    }
    let Some(retired_at) = state.presented.retired_at else {
        let Some(successor) = successors(&new_salt).first().copied() else {
            return RefreshDecision::Refuse(Error::Internal(anyhow::anyhow!("no refresh key")));
        };
        let generation = state.presented.generation + 1;
        return RefreshDecision::Rotate {
            successor,
            successor_salt: new_salt,
            idle_expires_at: (now + policy.idle_timeout).min(state.session.expires_at),
            forget_before: generation - KEPT_REFRESH_GENERATIONS,
        };
    };
    if now - retired_at > policy.refresh_reuse_grace {
        return RefreshDecision::Revoke(RevokeReason::internal(RevokeReason::REFRESH_TOKEN_REUSE));
    }
    // A token rotated by a release that kept no salt cannot have its answer recomputed: it is
    // refused as superseded, and the session is left alone.
    let repeated = state.presented.successor_salt.and_then(|salt| {
        let (generation, current) = state.current.as_ref()?;
        (*generation == state.presented.generation + 1 && successors(&salt).contains(current))
            .then_some((*current, salt))
    });
    match repeated {
        Some((successor, salt)) => RefreshDecision::Repeat(successor, salt),
        None => RefreshDecision::Refuse(Error::RefreshRefused(Refusal::RefreshTokenSuperseded)),
    }
}

/// Refuses a refresh of a session that is not live.
fn ensure_live(session: &Session, now: DateTime<Utc>) -> Result<()> {
    match session.state(now) {
        SessionState::Live => Ok(()),
        SessionState::Revoked => Err(Error::RefreshRefused(Refusal::SessionRevoked)),
        SessionState::Expired => Err(Error::RefreshRefused(Refusal::SessionExpired)),
    }
}

#[cfg(test)]
mod tests {
    use chrono::Duration;

    use super::*;
    use crate::store::StoredRefreshToken;

    fn policy(limit: u32, at_limit: AtLimit) -> Policy {
        Policy {
            access_token_ttl: Duration::minutes(15),
            session_lifetime: Duration::days(30),
            idle_timeout: Duration::days(7),
            refresh_reuse_grace: Duration::seconds(10),
            max_sessions_per_user: limit,
            at_limit,
            activity_write_interval: Duration::minutes(1),
            ip_privacy: super::super::IpPrivacy::Full,
            rates: crate::limits::Rates::OFF,
        }
    }

    const SALT: SuccessorSalt = [3; 16];
    const NEW_SALT: SuccessorSalt = [4; 16];

    /// A stored token; a retired one was rotated with [`SALT`].
    fn token(
        session: &Session,
        generation: i32,
        retired_at: Option<DateTime<Utc>>,
    ) -> StoredRefreshToken {
        StoredRefreshToken {
            session_id: session.id,
            generation,
            retired_at,
            successor_salt: retired_at.map(|_| SALT),
        }
    }

    /// Successors under two keys, newest first, that differ with the salt.
    fn successors(salt: &SuccessorSalt) -> Vec<TokenHash> {
        vec![TokenHash([salt[0]; 32]), TokenHash([salt[0] + 100; 32])]
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
        let session = Session::example(now);
        let presented = token(&session, 4, None);
        let state = RefreshState {
            session: &session,
            presented: &presented,
            current: None,
        };
        let decision = refresh(
            &policy(0, AtLimit::Deny),
            &state,
            &successors,
            NEW_SALT,
            now,
        );
        assert!(matches!(
            decision,
            RefreshDecision::Rotate { forget_before, successor, successor_salt, .. }
                if forget_before == 5 - KEPT_REFRESH_GENERATIONS
                    && successor == successors(&NEW_SALT)[0]
                    && successor_salt == NEW_SALT
        ));
    }

    #[test]
    fn a_retry_within_grace_repeats_only_while_its_successor_is_current() {
        let now = Utc::now();
        let session = Session::example(now);
        let presented = token(&session, 4, Some(now - Duration::seconds(10)));
        let policy = policy(0, AtLimit::Deny);
        // Recognised under an older key too: the key rotated between the try and the retry.
        let successor = successors(&SALT)[1];
        let current = RefreshState {
            session: &session,
            presented: &presented,
            current: Some((5, successor)),
        };
        assert!(matches!(
            refresh(&policy, &current, &successors, NEW_SALT, now),
            RefreshDecision::Repeat(repeated, SALT) if repeated == successor
        ));
        let moved_on = RefreshState {
            session: &session,
            presented: &presented,
            current: Some((6, TokenHash([2; 32]))),
        };
        assert!(matches!(
            refresh(&policy, &moved_on, &successors, NEW_SALT, now),
            RefreshDecision::Refuse(Error::RefreshRefused(Refusal::RefreshTokenSuperseded))
        ));
        // Rotated by a release that kept no salt: its answer cannot be recomputed.
        let unsalted = StoredRefreshToken {
            successor_salt: None,
            ..presented.clone()
        };
        let without_salt = RefreshState {
            session: &session,
            presented: &unsalted,
            current: Some((5, successor)),
        };
        assert!(matches!(
            refresh(&policy, &without_salt, &successors, NEW_SALT, now),
            RefreshDecision::Refuse(Error::RefreshRefused(Refusal::RefreshTokenSuperseded))
        ));
    }

    #[test]
    fn a_retired_token_after_grace_revokes_the_session() {
        let now = Utc::now();
        let session = Session::example(now);
        let presented = token(&session, 4, Some(now - Duration::seconds(11)));
        let state = RefreshState {
            session: &session,
            presented: &presented,
            current: None,
        };
        assert!(matches!(
            refresh(&policy(0, AtLimit::Deny), &state, &successors, NEW_SALT, now),
            RefreshDecision::Revoke(reason) if reason.as_str() == "refresh_token_reuse"
        ));
    }

    #[test]
    fn a_session_that_is_not_live_refuses_before_anything_else() {
        let now = Utc::now();
        let mut revoked = Session::example(now);
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
                &successors,
                NEW_SALT,
                now
            ),
            RefreshDecision::Refuse(Error::RefreshRefused(Refusal::SessionRevoked))
        ));
    }

    /// The rotation state machine against a model of the store: any interleaving of presented
    /// tokens (current, retired, old), retries and clock steps leaves at most one live token per
    /// session, gives a retry within the grace window the first try's answer, and revokes the
    /// session on every token presented after its grace window.
    mod state_machine {
        use proptest::prelude::*;
        use sha2::{Digest, Sha256};

        use super::*;

        #[derive(Debug, Clone)]
        enum Step {
            /// Present the `n`th token ever issued (modulo how many there are).
            Present(usize),
            /// Let this many seconds pass.
            Wait(i64),
        }

        fn step() -> impl Strategy<Value = Step> {
            prop_oneof![
                3 => any::<usize>().prop_map(Step::Present),
                1 => (0_i64..25).prop_map(Step::Wait),
            ]
        }

        /// What the store holds of one token.
        struct Stored {
            hash: TokenHash,
            token: StoredRefreshToken,
        }

        /// The successor a key derives: a function of the token and the salt alone.
        fn derive(of: &TokenHash, salt: &SuccessorSalt) -> TokenHash {
            TokenHash(
                Sha256::new()
                    .chain_update(of.0)
                    .chain_update(salt)
                    .finalize()
                    .into(),
            )
        }

        proptest! {
            #[test]
            fn any_interleaving_keeps_one_live_token_and_catches_every_late_reuse(
                steps in proptest::collection::vec(step(), 1..60),
            ) {
                let policy = policy(0, AtLimit::Deny);
                let mut now = Utc::now();
                let mut session = Session::example(now);
                let mut tokens = vec![Stored {
                    hash: TokenHash([0; 32]),
                    token: token(&session, 0, None),
                }];
                for (salt_counter, step) in steps.into_iter().enumerate() {
                    let n = match step {
                        Step::Wait(seconds) => {
                            now += Duration::seconds(seconds);
                            continue;
                        }
                        Step::Present(n) => n % tokens.len(),
                    };
                    let current = tokens
                        .iter()
                        .find(|stored| stored.token.retired_at.is_none())
                        .map(|stored| (stored.token.generation, stored.hash));
                    let presented = &tokens[n];
                    let state = RefreshState {
                        session: &session,
                        presented: &presented.token,
                        current,
                    };
                    let of = presented.hash;
                    let successors = |salt: &SuccessorSalt| vec![derive(&of, salt)];
                    let new_salt = [u8::try_from(salt_counter % 256).unwrap_or(0); 16];
                    let retired_at = presented.token.retired_at;
                    match refresh(&policy, &state, &successors, new_salt, now) {
                        RefreshDecision::Rotate { successor, successor_salt, .. } => {
                            prop_assert!(retired_at.is_none(), "only the current token rotates");
                            prop_assert_eq!(successor, derive(&of, &successor_salt));
                            let generation = tokens[n].token.generation + 1;
                            tokens[n].token.retired_at = Some(now);
                            tokens[n].token.successor_salt = Some(successor_salt);
                            tokens.push(Stored {
                                hash: successor,
                                token: token(&session, generation, None),
                            });
                        }
                        RefreshDecision::Repeat(successor, salt) => {
                            let retired_at = retired_at.expect("only a retired token repeats");
                            prop_assert!(now - retired_at <= policy.refresh_reuse_grace);
                            prop_assert_eq!(Some(successor), current.map(|(_, hash)| hash));
                            prop_assert_eq!(successor, derive(&of, &salt), "the first try's answer");
                        }
                        RefreshDecision::Revoke(_) => {
                            let retired_at = retired_at.expect("only a retired token is reuse");
                            prop_assert!(now - retired_at > policy.refresh_reuse_grace);
                            session.revoked_at = Some(now);
                        }
                        RefreshDecision::Refuse(Error::RefreshRefused(Refusal::SessionRevoked)) => {
                            prop_assert!(session.revoked_at.is_some());
                        }
                        RefreshDecision::Refuse(Error::RefreshRefused(Refusal::RefreshTokenSuperseded)) => {
                            let retired_at = retired_at.expect("a current token is never superseded");
                            prop_assert!(now - retired_at <= policy.refresh_reuse_grace);
                        }
                        other => prop_assert!(false, "unexpected {other:?}"),
                    }
                    // Every late reuse was caught: a retired token past its grace never leaves
                    // the session live.
                    if let Some(retired_at) = retired_at
                        && now - retired_at > policy.refresh_reuse_grace
                    {
                        prop_assert!(session.revoked_at.is_some(), "a late reuse revokes");
                    }
                    let live = tokens.iter().filter(|stored| stored.token.retired_at.is_none()).count();
                    prop_assert!(live <= 1, "{live} live tokens");
                }
            }
        }
    }
}
