use serde::{Deserialize, Serialize};

/// Why a session was revoked: a caller's free text, or one of sessiond's own reasons.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RevokeReason(String);

impl RevokeReason {
    /// The longest accepted reason, in bytes.
    pub const MAX_BYTES: usize = 128;
    /// A caller revoked the session without saying why.
    pub const UNSPECIFIED: &str = "revoked";
    /// A new session started on the same device.
    pub const DEVICE_REPLACED: &str = "device_replaced";
    /// The user reached the per-user session limit and this was the oldest session.
    pub const SESSION_LIMIT: &str = "session_limit";
    /// A retired refresh token came back after the grace window.
    pub const REFRESH_TOKEN_REUSE: &str = "refresh_token_reuse";
    /// DeleteUserSessions signs the user out before it deletes the rows; a row says so only
    /// while the erasure runs.
    pub const ERASED: &str = "erased";

    /// The reasons only sessiond gives.
    const SESSIONDS_OWN: [&str; 4] = [
        Self::DEVICE_REPLACED,
        Self::SESSION_LIMIT,
        Self::REFRESH_TOKEN_REUSE,
        Self::ERASED,
    ];

    /// One of sessiond's own reasons.
    pub fn internal(reason: &'static str) -> Self {
        Self(reason.to_owned())
    }

    /// The reason as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for RevokeReason {
    type Error = String;

    /// A caller's reason. An empty one becomes "revoked". sessiond's own reasons are refused, so
    /// that the audit trail and the metrics can tell what sessiond did from what a caller did.
    fn try_from(value: String) -> Result<Self, Self::Error> {
        if value.is_empty() {
            return Ok(Self::internal(Self::UNSPECIFIED));
        }
        if Self::SESSIONDS_OWN.contains(&value.as_str()) {
            return Err(format!("{value:?} is one of sessiond's own reasons"));
        }
        super::check_text(&value, Self::MAX_BYTES)?;
        Ok(Self(value))
    }
}

#[cfg(test)]
mod tests {
    use super::RevokeReason;

    #[test]
    fn an_empty_reason_becomes_the_default() {
        assert_eq!(
            RevokeReason::try_from(String::new()).map(|r| r.as_str().to_owned()),
            Ok("revoked".into())
        );
    }

    #[test]
    fn a_caller_cannot_give_sessionds_own_reasons() {
        for own in [
            "device_replaced",
            "session_limit",
            "refresh_token_reuse",
            "erased",
        ] {
            assert!(RevokeReason::try_from(own.to_owned()).is_err(), "{own}");
        }
        assert!(RevokeReason::try_from("user signed out".to_owned()).is_ok());
    }

    #[test]
    fn an_overlong_reason_is_refused() {
        assert!(RevokeReason::try_from("x".repeat(RevokeReason::MAX_BYTES + 1)).is_err());
    }
}
