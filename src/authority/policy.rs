//! The session rules' numbers, fixed at start.

use chrono::Duration;

use crate::config::{LimitPolicy, Settings};

/// How long things live and how many sessions a user may hold.
#[derive(Debug, Clone)]
pub struct Policy {
    pub access_token_ttl: Duration,
    /// Absolute lifetime, and the cap on a requested lifetime.
    pub session_lifetime: Duration,
    pub idle_timeout: Duration,
    pub refresh_reuse_grace: Duration,
    /// 0 means unlimited.
    pub max_sessions_per_user: u32,
    pub limit_policy: LimitPolicy,
    /// Activity is written to Postgres at most this often per session.
    pub activity_write_interval: Duration,
}

impl Policy {
    /// How often `Validate` may write `last_seen_at`.
    pub const ACTIVITY_WRITE_INTERVAL: Duration = Duration::minutes(1);

    /// The policy the settings describe; the error names the setting that does not fit.
    pub fn from_settings(settings: &Settings) -> Result<Self, String> {
        let duration = |name: &str, value: std::time::Duration| {
            Duration::from_std(value).map_err(|_| format!("{name} is too long"))
        };
        Ok(Self {
            access_token_ttl: duration("SESSIOND_ACCESS_TOKEN_TTL", settings.access_token_ttl)?,
            session_lifetime: duration("SESSIOND_SESSION_LIFETIME", settings.session_lifetime)?,
            idle_timeout: duration("SESSIOND_IDLE_TIMEOUT", settings.idle_timeout)?,
            refresh_reuse_grace: duration(
                "SESSIOND_REFRESH_REUSE_GRACE",
                settings.refresh_reuse_grace,
            )?,
            max_sessions_per_user: settings.max_sessions_per_user,
            limit_policy: settings.session_limit_policy,
            activity_write_interval: Self::ACTIVITY_WRITE_INTERVAL,
        })
    }
}
