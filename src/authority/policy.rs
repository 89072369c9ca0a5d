//! The session rules' numbers, fixed at start (`startup.rs` reads them from the settings).

use chrono::Duration;

use crate::limits::Rates;

/// What a new session does when its user already holds the most live sessions allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AtLimit {
    /// Revoke the user's oldest live sessions to make room.
    EvictOldest,
    /// Refuse the new session.
    Deny,
}

/// How much of a client's address is kept with its session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IpPrivacy {
    /// The address as given.
    Full,
    /// Its network only: /24 for IPv4, /48 for IPv6.
    Truncate,
}

/// How long things live, how many sessions a user may hold, what is kept of an address.
#[derive(Debug, Clone)]
pub struct Policy {
    pub access_token_ttl: Duration,
    /// Absolute lifetime, and the cap on a requested lifetime.
    pub session_lifetime: Duration,
    pub idle_timeout: Duration,
    pub refresh_reuse_grace: Duration,
    /// 0 means unlimited.
    pub max_sessions_per_user: u32,
    pub at_limit: AtLimit,
    /// Activity is written to Postgres at most this often per session.
    pub activity_write_interval: Duration,
    pub ip_privacy: IpPrivacy,
    /// How often a user may create sessions, and a session rotate.
    pub rates: Rates,
}

impl Policy {
    /// How often `Validate` may write `last_seen_at`.
    pub const ACTIVITY_WRITE_INTERVAL: Duration = Duration::minutes(1);
}
