//! What the revocation stream has said and still matters: revoked sessions, per-user not-before
//! instants and removed signing keys, each kept until no token it refuses can still be
//! unexpired (its `token_expires_before`, plus the verifier's expiry leeway). Pure: events come
//! in already received, and time is a parameter.

use std::collections::HashMap;

use chrono::{DateTime, Duration, Utc};
use uuid::Uuid;

use crate::{pb, token::Verified};

/// One revocation, read from a `RevocationEvent`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Revocation {
    /// Refuse tokens whose `sid` is `session_id`.
    Session {
        session_id: Uuid,
        forget_after: DateTime<Utc>,
    },
    /// Refuse tokens of `user_id` whose session started (`sct`) before `not_before_micros`.
    UserNotBefore {
        user_id: String,
        not_before_micros: i64,
        forget_after: DateTime<Utc>,
    },
    /// Refuse tokens signed with `kid`.
    KeyRemoved {
        kid: String,
        forget_after: DateTime<Utc>,
    },
}

/// Why an event was not taken as a revocation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum EventError {
    /// A kind this version does not know (a newer server's): it cannot be enforced.
    #[error("unknown revocation kind {0}")]
    UnknownKind(i32),
    #[error("a {0} event without a valid {1}")]
    Incomplete(&'static str, &'static str),
}

impl Revocation {
    /// The revocation `event` states; `None` for a heartbeat.
    ///
    /// An event without `token_expires_before` is kept for good: forgetting it early could let a
    /// revoked token back in.
    pub(crate) fn from_event(event: &pb::RevocationEvent) -> Result<Option<Self>, EventError> {
        let forget_after = event
            .token_expires_before
            .as_ref()
            .and_then(timestamp)
            .unwrap_or(DateTime::<Utc>::MAX_UTC);
        match pb::RevocationKind::try_from(event.kind) {
            Ok(pb::RevocationKind::Heartbeat) => Ok(None),
            Ok(pb::RevocationKind::Session) => Ok(Some(Self::Session {
                session_id: event
                    .session_id
                    .parse()
                    .map_err(|_| EventError::Incomplete("SESSION", "session_id"))?,
                forget_after,
            })),
            Ok(pb::RevocationKind::UserNotBefore) => {
                if event.user_id.is_empty() {
                    return Err(EventError::Incomplete("USER_NOT_BEFORE", "user_id"));
                }
                let not_before_micros = event
                    .not_before
                    .as_ref()
                    .and_then(ceil_micros)
                    .ok_or(EventError::Incomplete("USER_NOT_BEFORE", "not_before"))?;
                Ok(Some(Self::UserNotBefore {
                    user_id: event.user_id.clone(),
                    not_before_micros,
                    forget_after,
                }))
            }
            Ok(pb::RevocationKind::SigningKeyRemoved) => {
                if event.key_id.is_empty() {
                    return Err(EventError::Incomplete("SIGNING_KEY_REMOVED", "key_id"));
                }
                Ok(Some(Self::KeyRemoved {
                    kid: event.key_id.clone(),
                    forget_after,
                }))
            }
            Ok(pb::RevocationKind::Unspecified) | Err(_) => {
                Err(EventError::UnknownKind(event.kind))
            }
        }
    }
}

/// A protobuf timestamp as a UTC instant; `None` when out of range.
pub(crate) fn timestamp(at: &prost_types::Timestamp) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp(at.seconds, u32::try_from(at.nanos).ok()?)
}

/// A protobuf timestamp in microseconds since the epoch, rounded up: a session that started in
/// the same microsecond but before a sub-microsecond not-before is still refused.
fn ceil_micros(at: &prost_types::Timestamp) -> Option<i64> {
    let nanos = i64::from(at.nanos);
    if !(0..1_000_000_000).contains(&nanos) {
        return None;
    }
    at.seconds
        .checked_mul(1_000_000)?
        .checked_add((nanos + 999) / 1_000)
}

/// The revocations in force.
#[derive(Debug, Default)]
pub(crate) struct Revocations {
    /// Revoked session → when it may be forgotten.
    sessions: HashMap<Uuid, DateTime<Utc>>,
    /// User → (not-before in microseconds, when it may be forgotten).
    users: HashMap<String, (i64, DateTime<Utc>)>,
    /// Removed kid → when it may be forgotten.
    keys: HashMap<String, DateTime<Utc>>,
}

/// How many revocations of each kind are held.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RevocationCounts {
    /// Revoked sessions.
    pub sessions: usize,
    /// Users with a not-before instant.
    pub users: usize,
    /// Removed signing keys.
    pub keys: usize,
}

impl Revocations {
    /// Takes `revocation` in. A repeat (a replay after a resume, a second not-before) keeps the
    /// stricter of the two: the later not-before, the later time to forget.
    pub(crate) fn apply(&mut self, revocation: Revocation) {
        match revocation {
            Revocation::Session {
                session_id,
                forget_after,
            } => {
                let kept = self.sessions.entry(session_id).or_insert(forget_after);
                *kept = (*kept).max(forget_after);
            }
            Revocation::UserNotBefore {
                user_id,
                not_before_micros,
                forget_after,
            } => {
                let kept = self
                    .users
                    .entry(user_id)
                    .or_insert((not_before_micros, forget_after));
                *kept = (kept.0.max(not_before_micros), kept.1.max(forget_after));
            }
            Revocation::KeyRemoved { kid, forget_after } => {
                let kept = self.keys.entry(kid).or_insert(forget_after);
                *kept = (*kept).max(forget_after);
            }
        }
    }

    /// Whether a revocation refuses `token`. A token without `sct` (an older release's) counts
    /// as started at 0, so any not-before of its user refuses it.
    pub(crate) fn is_refused(&self, token: &Verified) -> bool {
        self.sessions.contains_key(&token.session_id)
            || self.keys.contains_key(&token.kid)
            || self
                .users
                .get(&token.user_id)
                .is_some_and(|(not_before, _)| token.session_started_micros < *not_before)
    }

    /// Forgets what no longer refuses an unexpired token at `now`, given that tokens are taken
    /// until `leeway` past their `exp`. Returns how many entries went.
    pub(crate) fn prune(&mut self, now: DateTime<Utc>, leeway: Duration) -> usize {
        let before = self.len();
        // Kept while `now < forget_after + leeway`, written so that MAX_UTC cannot overflow.
        let cutoff = now
            .checked_sub_signed(leeway)
            .unwrap_or(DateTime::<Utc>::MIN_UTC);
        let live = |forget_after: &DateTime<Utc>| cutoff < *forget_after;
        self.sessions.retain(|_, forget_after| live(forget_after));
        self.users.retain(|_, (_, forget_after)| live(forget_after));
        self.keys.retain(|_, forget_after| live(forget_after));
        before - self.len()
    }

    fn len(&self) -> usize {
        self.sessions.len() + self.users.len() + self.keys.len()
    }

    /// How many of each kind are held.
    pub(crate) fn counts(&self) -> RevocationCounts {
        RevocationCounts {
            sessions: self.sessions.len(),
            users: self.users.len(),
            keys: self.keys.len(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + seconds, 0).expect("a time")
    }

    fn proto(time: DateTime<Utc>) -> Option<prost_types::Timestamp> {
        Some(prost_types::Timestamp {
            seconds: time.timestamp(),
            nanos: i32::try_from(time.timestamp_subsec_nanos()).expect("nanos"),
        })
    }

    fn token(user: &str, sid: Uuid, started: DateTime<Utc>, kid: &str) -> Verified {
        Verified {
            user_id: user.into(),
            session_id: sid,
            expires_at: at(900),
            session_started_micros: started.timestamp_micros(),
            kid: kid.into(),
        }
    }

    fn event(kind: pb::RevocationKind) -> pb::RevocationEvent {
        pb::RevocationEvent {
            cursor: "c1".into(),
            kind: kind.into(),
            revoked_at: proto(at(0)),
            token_expires_before: proto(at(900)),
            ..Default::default()
        }
    }

    #[test]
    fn a_revoked_session_refuses_its_tokens_and_no_others() {
        let (revoked, other) = (Uuid::now_v7(), Uuid::now_v7());
        let mut set = Revocations::default();
        let mut e = event(pb::RevocationKind::Session);
        e.session_id = revoked.to_string();
        e.user_id = "alice".into();
        set.apply(
            Revocation::from_event(&e)
                .expect("valid")
                .expect("a revocation"),
        );
        assert!(set.is_refused(&token("alice", revoked, at(-60), "k1")));
        // By sid alone: whoever the token says the user is.
        assert!(set.is_refused(&token("bob", revoked, at(-60), "k1")));
        assert!(!set.is_refused(&token("alice", other, at(-60), "k1")));
    }

    #[test]
    fn a_user_not_before_refuses_sessions_started_before_it_to_the_microsecond() {
        let not_before = at(0) + Duration::microseconds(500);
        let mut set = Revocations::default();
        let mut e = event(pb::RevocationKind::UserNotBefore);
        e.user_id = "alice".into();
        e.not_before = proto(not_before);
        set.apply(
            Revocation::from_event(&e)
                .expect("valid")
                .expect("a revocation"),
        );
        let sid = Uuid::now_v7();
        assert!(set.is_refused(&token(
            "alice",
            sid,
            not_before - Duration::microseconds(1),
            "k"
        )));
        assert!(
            !set.is_refused(&token("alice", sid, not_before, "k")),
            "started at it: kept"
        );
        assert!(!set.is_refused(&token("alice", sid, not_before + Duration::seconds(1), "k")));
        assert!(!set.is_refused(&token("bob", sid, at(-60), "k")));
        let mut older = token("alice", sid, at(-60), "k");
        older.session_started_micros = 0;
        assert!(set.is_refused(&older), "a token without sct is refused");

        // A not-before a quarter of a microsecond past a whole one still refuses that microsecond.
        e.not_before = Some(prost_types::Timestamp {
            seconds: at(10).timestamp(),
            nanos: 250,
        });
        set.apply(
            Revocation::from_event(&e)
                .expect("valid")
                .expect("a revocation"),
        );
        assert!(set.is_refused(&token("alice", sid, at(10), "k")));
        assert!(!set.is_refused(&token(
            "alice",
            sid,
            at(10) + Duration::microseconds(1),
            "k"
        )));
    }

    #[test]
    fn a_later_not_before_wins_and_an_earlier_one_changes_nothing() {
        let mut set = Revocations::default();
        let apply = |set: &mut Revocations, not_before: DateTime<Utc>, forget: DateTime<Utc>| {
            set.apply(Revocation::UserNotBefore {
                user_id: "alice".into(),
                not_before_micros: not_before.timestamp_micros(),
                forget_after: forget,
            });
        };
        apply(&mut set, at(100), at(1_000));
        apply(&mut set, at(50), at(500));
        let sid = Uuid::now_v7();
        assert!(set.is_refused(&token("alice", sid, at(99), "k")));
        set.prune(at(600), Duration::zero());
        assert!(
            set.is_refused(&token("alice", sid, at(99), "k")),
            "the later forget time holds"
        );
        apply(&mut set, at(200), at(1_100));
        assert!(set.is_refused(&token("alice", sid, at(199), "k")));
    }

    #[test]
    fn a_removed_key_refuses_every_token_it_signed() {
        let mut set = Revocations::default();
        let mut e = event(pb::RevocationKind::SigningKeyRemoved);
        e.key_id = "old-kid".into();
        set.apply(
            Revocation::from_event(&e)
                .expect("valid")
                .expect("a revocation"),
        );
        assert!(set.is_refused(&token("alice", Uuid::now_v7(), at(0), "old-kid")));
        assert!(!set.is_refused(&token("alice", Uuid::now_v7(), at(0), "new-kid")));
    }

    #[test]
    fn entries_are_forgotten_once_every_token_they_refuse_has_expired() {
        let sid = Uuid::now_v7();
        let mut set = Revocations::default();
        set.apply(Revocation::Session {
            session_id: sid,
            forget_after: at(900),
        });
        set.apply(Revocation::KeyRemoved {
            kid: "k".into(),
            forget_after: at(300),
        });
        set.apply(Revocation::UserNotBefore {
            user_id: "u".into(),
            not_before_micros: at(0).timestamp_micros(),
            forget_after: at(600),
        });
        set.apply(Revocation::Session {
            session_id: Uuid::now_v7(),
            forget_after: DateTime::<Utc>::MAX_UTC,
        });
        assert_eq!(set.prune(at(299), Duration::zero()), 0);
        assert_eq!(
            set.prune(at(300), Duration::zero()),
            1,
            "the key went at its instant"
        );
        // With a 5 s leeway a token is taken until exp + 5 s: its revocation stays as long.
        assert_eq!(set.prune(at(604), Duration::seconds(5)), 0);
        assert_eq!(set.prune(at(605), Duration::seconds(5)), 1);
        assert!(set.is_refused(&token("x", sid, at(0), "k2")));
        assert_eq!(set.prune(at(900), Duration::zero()), 1);
        assert!(!set.is_refused(&token("x", sid, at(0), "k2")));
        assert_eq!(
            set.counts(),
            RevocationCounts {
                sessions: 1,
                users: 0,
                keys: 0
            },
            "one without token_expires_before is kept"
        );
        assert_eq!(set.prune(DateTime::<Utc>::MAX_UTC, Duration::days(1)), 0);
    }

    #[test]
    fn a_replayed_event_is_taken_once() {
        let sid = Uuid::now_v7();
        let mut set = Revocations::default();
        let mut e = event(pb::RevocationKind::Session);
        e.session_id = sid.to_string();
        for _ in 0..3 {
            set.apply(
                Revocation::from_event(&e)
                    .expect("valid")
                    .expect("a revocation"),
            );
        }
        assert_eq!(set.counts().sessions, 1);
    }

    #[test]
    fn events_are_read_strictly() {
        assert_eq!(
            Revocation::from_event(&event(pb::RevocationKind::Heartbeat)),
            Ok(None)
        );
        let mut unknown = event(pb::RevocationKind::Session);
        unknown.kind = 42;
        assert_eq!(
            Revocation::from_event(&unknown),
            Err(EventError::UnknownKind(42))
        );
        assert_eq!(
            Revocation::from_event(&event(pb::RevocationKind::Unspecified)),
            Err(EventError::UnknownKind(0))
        );
        let mut bad_sid = event(pb::RevocationKind::Session);
        bad_sid.session_id = "not-a-uuid".into();
        assert!(Revocation::from_event(&bad_sid).is_err());
        let mut no_user = event(pb::RevocationKind::UserNotBefore);
        no_user.not_before = proto(at(0));
        assert!(Revocation::from_event(&no_user).is_err());
        let mut no_instant = event(pb::RevocationKind::UserNotBefore);
        no_instant.user_id = "u".into();
        assert!(Revocation::from_event(&no_instant).is_err());
        assert!(Revocation::from_event(&event(pb::RevocationKind::SigningKeyRemoved)).is_err());

        let mut forever = event(pb::RevocationKind::Session);
        forever.session_id = Uuid::now_v7().to_string();
        forever.token_expires_before = None;
        assert!(matches!(
            Revocation::from_event(&forever),
            Ok(Some(Revocation::Session { forget_after, .. })) if forget_after == DateTime::<Utc>::MAX_UTC
        ));
    }
}
