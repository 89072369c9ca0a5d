use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{Device, Metadata, SessionId, UserId};

/// One signed-in device of one user, as Postgres holds it and the cache copies it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    pub id: SessionId,
    pub user_id: UserId,
    pub device: Device,
    pub metadata: Metadata,
    pub created_at: DateTime<Utc>,
    /// Last refresh or validate, written at most once per activity interval.
    pub last_seen_at: DateTime<Utc>,
    /// The absolute end; activity does not move it.
    pub expires_at: DateTime<Utc>,
    /// The end unless activity pushes it forward; never after `expires_at`.
    pub idle_expires_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
    pub revoke_reason: Option<String>,
}

/// Whether a session may still be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionState {
    Live,
    Revoked,
    /// Past its absolute expiry or its idle timeout.
    Expired,
}

impl Session {
    /// The session's state at `now`. Revocation wins over expiry.
    pub fn state(&self, now: DateTime<Utc>) -> SessionState {
        if self.revoked_at.is_some() {
            SessionState::Revoked
        } else if now >= self.expires_at || now >= self.idle_expires_at {
            SessionState::Expired
        } else {
            SessionState::Live
        }
    }
}

#[cfg(test)]
impl Session {
    /// A live session of user `u`, created at `now`, for unit tests to start from.
    pub(crate) fn example(now: DateTime<Utc>) -> Self {
        use chrono::Duration;
        Self {
            id: SessionId::generate(),
            user_id: UserId::try_from("u".to_owned()).expect("valid"),
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
}

#[cfg(test)]
mod tests {
    use chrono::Duration;

    use super::*;

    #[test]
    fn a_fresh_session_is_live() {
        let now = Utc::now();
        assert_eq!(Session::example(now).state(now), SessionState::Live);
    }

    #[test]
    fn idle_expiry_and_absolute_expiry_both_end_it() {
        let now = Utc::now();
        assert_eq!(
            Session::example(now).state(now + Duration::days(7)),
            SessionState::Expired
        );
        let mut active = Session::example(now);
        active.idle_expires_at = now + Duration::days(60);
        assert_eq!(
            active.state(now + Duration::days(30)),
            SessionState::Expired
        );
    }

    #[test]
    fn revocation_wins_over_expiry() {
        let now = Utc::now();
        let mut revoked = Session::example(now);
        revoked.revoked_at = Some(now);
        assert_eq!(
            revoked.state(now + Duration::days(90)),
            SessionState::Revoked
        );
    }
}
