//! A revocation as the durable log (`revocation_event`) records it, and as WatchRevocations and
//! every replica's ledger read it.

use chrono::{DateTime, Utc};

use super::{SessionId, UserId};

/// A position in the revocation log. Cursors grow in commit order on every replica (see the
/// migration that made the log), with gaps where a transaction rolled back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Cursor(pub i64);

impl std::fmt::Display for Cursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::str::FromStr for Cursor {
    type Err = std::num::ParseIntError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        text.parse().map(Self)
    }
}

/// What was revoked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Revoked {
    /// One session: its tokens are refused.
    Session {
        session_id: SessionId,
        user_id: UserId,
    },
    /// Every session of the user created before `not_before`.
    UserBefore {
        user_id: UserId,
        not_before: DateTime<Utc>,
    },
    /// A signing key: the tokens it signed are refused.
    SigningKey { key_id: String },
}

/// One entry of the revocation log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revocation {
    pub cursor: Cursor,
    pub revoked: Revoked,
    pub revoked_at: DateTime<Utc>,
    pub reason: String,
}
