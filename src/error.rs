//! The one domain error. Every variant has a stable code (sent as `ErrorInfo.reason`) and its doc
//! names the gRPC status it becomes; `api::status` is the only place that turns it into a `Status`.

use std::fmt;

/// Why a refresh token was refused. Each becomes UNAUTHENTICATED.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefreshRefusal {
    /// No session holds this token (never issued, pruned, or its session was deleted).
    Unknown,
    /// The session passed its absolute expiry or its idle timeout.
    SessionExpired,
    /// The session was revoked.
    SessionRevoked,
    /// A retired token came back after the grace window: the session is now revoked.
    Reused,
    /// A retired token came back within the grace window, but its successor has itself been
    /// rotated, so the answer it would get is no longer valid. The session is left alone.
    Superseded,
}

impl fmt::Display for RefreshRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Unknown => "unknown refresh token",
            Self::SessionExpired => "session expired",
            Self::SessionRevoked => "session revoked",
            Self::Reused => "refresh token reused after rotation; the session is revoked",
            Self::Superseded => "refresh token already rotated twice",
        })
    }
}

/// Everything that can go wrong in a request.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// INVALID_ARGUMENT, with a `BadRequest` field violation naming `field`.
    #[error("invalid {field}: {description}")]
    InvalidArgument {
        field: &'static str,
        description: String,
    },
    /// NOT_FOUND.
    #[error("session not found")]
    SessionNotFound,
    /// UNAUTHENTICATED.
    #[error("refresh refused: {0}")]
    RefreshRefused(RefreshRefusal),
    /// RESOURCE_EXHAUSTED: the per-user limit is set to "deny".
    #[error("the user already holds the maximum of {limit} live sessions")]
    SessionLimitReached { limit: u32 },
    /// UNAVAILABLE: Postgres did not answer in time. The cause is logged, not sent.
    #[error("the session store is unavailable")]
    StoreUnavailable(#[source] sqlx::Error),
    /// INTERNAL: a bug or an unexpected store answer. The cause is logged, not sent.
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

impl Error {
    /// A violation of `field`.
    pub fn invalid(field: &'static str, description: impl Into<String>) -> Self {
        Self::InvalidArgument {
            field,
            description: description.into(),
        }
    }

    /// This error and its sources, joined by ": ", for the log: an internal or unavailable error
    /// shows only its safe first line, and the cause that an operator needs is in its sources.
    pub fn cause_chain(&self) -> String {
        let mut chain = self.to_string();
        let mut source = std::error::Error::source(self);
        while let Some(cause) = source {
            chain.push_str(": ");
            chain.push_str(&cause.to_string());
            source = cause.source();
        }
        chain
    }

    /// The stable, machine-readable code of this error.
    pub fn code(&self) -> &'static str {
        match self {
            Self::InvalidArgument { .. } => "INVALID_ARGUMENT",
            Self::SessionNotFound => "SESSION_NOT_FOUND",
            Self::RefreshRefused(RefreshRefusal::Unknown) => "REFRESH_TOKEN_UNKNOWN",
            Self::RefreshRefused(RefreshRefusal::SessionExpired) => "SESSION_EXPIRED",
            Self::RefreshRefused(RefreshRefusal::SessionRevoked) => "SESSION_REVOKED",
            Self::RefreshRefused(RefreshRefusal::Reused) => "REFRESH_TOKEN_REUSED",
            Self::RefreshRefused(RefreshRefusal::Superseded) => "REFRESH_TOKEN_SUPERSEDED",
            Self::SessionLimitReached { .. } => "SESSION_LIMIT_REACHED",
            Self::StoreUnavailable(_) => "STORE_UNAVAILABLE",
            Self::Internal(_) => "INTERNAL",
        }
    }
}

impl From<sqlx::Error> for Error {
    /// Connection-level failures are UNAVAILABLE (the caller may retry elsewhere); anything else
    /// is a bug or a schema mismatch and is INTERNAL.
    fn from(error: sqlx::Error) -> Self {
        let unreachable = match &error {
            sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::WorkerCrashed
            | sqlx::Error::Protocol(_) => true,
            // Class 08: connection exception; 57P0x: shutting down or starting up; 53300: too many
            // connections; 57014: our statement_timeout fired.
            sqlx::Error::Database(db) => db.code().is_some_and(|code| {
                code.starts_with("08")
                    || code.starts_with("57P0")
                    || code == "53300"
                    || code == "57014"
            }),
            _ => false,
        };
        if unreachable {
            crate::metrics::store_error("unavailable");
            Self::StoreUnavailable(error)
        } else {
            crate::metrics::store_error("internal");
            Self::Internal(error.into())
        }
    }
}

/// The result of everything that can fail in a request.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cause_chain_holds_what_the_caller_is_not_told() {
        let error = Error::Internal(
            anyhow::anyhow!("database \"sessions\" does not exist").context("applying migrations"),
        );
        assert_eq!(error.to_string(), "internal error");
        assert_eq!(
            error.cause_chain(),
            "internal error: applying migrations: database \"sessions\" does not exist"
        );
    }
}
