//! The one domain error, and the one vocabulary of refusals. Every error has a stable code (sent as
//! `ErrorInfo.reason`) and its doc names the gRPC status it becomes; `api::status` is the only
//! place that turns it into a `Status`. A [`Refusal`] says why a credential is not accepted:
//! `Validate` answers with it as a token status, `Refresh` fails with it as UNAUTHENTICATED.

use std::{fmt, sync::Arc};

/// What the infrastructure said when the store failed: kept as the error's source, for the log,
/// and never sent to a caller. Shared, so one failure can answer every create of a batch.
pub type Cause = Arc<dyn std::error::Error + Send + Sync + 'static>;

/// Why a presented access token or refresh token is not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The access token is not a JWT, or lacks the claims sessiond issues.
    Malformed,
    /// The access token's signature does not verify, its key id is unknown, or its algorithm is
    /// not EdDSA.
    BadSignature,
    /// The access token's `exp` has passed.
    TokenExpired,
    /// The access token's `iss` or `aud` is not ours.
    WrongIssuerOrAudience,
    /// The session the token names does not exist (never did, or was swept).
    SessionNotFound,
    /// The session passed its absolute expiry or its idle timeout.
    SessionExpired,
    /// The session was revoked.
    SessionRevoked,
    /// No session holds this refresh token (never issued, pruned, or its session was deleted).
    RefreshTokenUnknown,
    /// A retired refresh token came back after the grace window: the session is now revoked.
    RefreshTokenReused,
    /// A retired refresh token came back within the grace window, but its successor has itself
    /// been rotated, so the answer it would get is no longer valid. The session is left alone.
    RefreshTokenSuperseded,
}

impl Refusal {
    /// The stable, machine-readable code (sent as `ErrorInfo.reason`).
    pub fn code(self) -> &'static str {
        match self {
            Self::Malformed => "TOKEN_MALFORMED",
            Self::BadSignature => "BAD_SIGNATURE",
            Self::TokenExpired => "TOKEN_EXPIRED",
            Self::WrongIssuerOrAudience => "WRONG_ISSUER_OR_AUDIENCE",
            Self::SessionNotFound => "SESSION_NOT_FOUND",
            Self::SessionExpired => "SESSION_EXPIRED",
            Self::SessionRevoked => "SESSION_REVOKED",
            Self::RefreshTokenUnknown => "REFRESH_TOKEN_UNKNOWN",
            Self::RefreshTokenReused => "REFRESH_TOKEN_REUSED",
            Self::RefreshTokenSuperseded => "REFRESH_TOKEN_SUPERSEDED",
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Malformed => "malformed token",
            Self::BadSignature => "bad signature",
            Self::TokenExpired => "token expired",
            Self::WrongIssuerOrAudience => "wrong issuer or audience",
            Self::SessionNotFound => "session not found",
            Self::SessionExpired => "session expired",
            Self::SessionRevoked => "session revoked",
            Self::RefreshTokenUnknown => "unknown refresh token",
            Self::RefreshTokenReused => {
                "refresh token reused after rotation; the session is revoked"
            }
            Self::RefreshTokenSuperseded => "refresh token already rotated twice",
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
    /// UNAUTHENTICATED: the call carries no identity the callers file names (or a wrong key).
    #[error(
        "no recognised caller: present a client certificate the callers file names, or `authorization: Bearer <key>`"
    )]
    CallerUnidentified,
    /// PERMISSION_DENIED, with an `ErrorInfo` naming the caller and the method.
    #[error("caller {caller:?} may not call {method}")]
    CallerNotAllowed { caller: String, method: String },
    /// UNAUTHENTICATED: a refresh token is not accepted.
    #[error("refresh refused: {0}")]
    RefreshRefused(Refusal),
    /// RESOURCE_EXHAUSTED: the per-user limit is set to "deny".
    #[error("the user already holds the maximum of {limit} live sessions")]
    SessionLimitReached { limit: u32 },
    /// RESOURCE_EXHAUSTED: `bound` calls are in flight already; the call was refused unstarted,
    /// so it may be retried at once elsewhere or after a backoff.
    #[error("too many calls in flight ({setting}); retry with backoff")]
    Overloaded { setting: &'static str },
    /// RESOURCE_EXHAUSTED, with a `RetryInfo` detail: the rate limit `setting` refuses this call
    /// for `retry_after`.
    #[error("rate limited by {setting}; retry after {}ms", retry_after.as_millis())]
    RateLimited {
        setting: &'static str,
        retry_after: std::time::Duration,
    },
    /// UNAVAILABLE: the store cannot be reached or did not answer in time. The cause is logged,
    /// not sent.
    #[error("the session store is unavailable")]
    StoreUnavailable(#[source] Cause),
    /// UNAVAILABLE: Redis did not take a delete that must land before the store's rows go
    /// (DeleteUserSessions). The user is signed out; what was not yet erased stays in the store,
    /// so a retry carries on. Redis's error is logged where it was met.
    #[error(
        "the shared cache did not take the erasure; the user is signed out everywhere, retry to erase the rest"
    )]
    CacheUnavailable,
    /// OUT_OF_RANGE: WatchRevocations was asked to resume from a cursor the log no longer holds
    /// events after (or never issued): the subscriber must start again from a snapshot.
    #[error(
        "after_cursor {cursor} is not in the revocation log, which holds the events after cursor {oldest}: watch again with an empty cursor"
    )]
    CursorOutOfRange { cursor: String, oldest: String },
    /// ABORTED: a WatchRevocations subscriber fell too far behind the events; it resumes from the
    /// last cursor it received.
    #[error(
        "this subscriber fell too far behind the revocation events: watch again with after_cursor set to the last cursor received"
    )]
    WatcherTooSlow,
    /// UNAVAILABLE: the server is shutting down; a WatchRevocations subscriber resumes elsewhere.
    #[error("this server is shutting down: watch again, with the last cursor received")]
    ShuttingDown,
    /// INTERNAL: the store refused a statement (a bug or a schema mismatch). The cause is logged,
    /// not sent.
    #[error("internal error")]
    StoreFailed(#[source] Cause),
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
            Self::CallerUnidentified => "CALLER_UNIDENTIFIED",
            Self::CallerNotAllowed { .. } => "CALLER_NOT_ALLOWED",
            Self::RefreshRefused(refusal) => refusal.code(),
            Self::SessionLimitReached { .. } => "SESSION_LIMIT_REACHED",
            Self::Overloaded { .. } => "OVERLOADED",
            Self::RateLimited { .. } => "RATE_LIMITED",
            Self::StoreUnavailable(_) => "STORE_UNAVAILABLE",
            Self::CacheUnavailable => "CACHE_UNAVAILABLE",
            Self::CursorOutOfRange { .. } => "CURSOR_OUT_OF_RANGE",
            Self::WatcherTooSlow => "WATCHER_TOO_SLOW",
            Self::ShuttingDown => "SHUTTING_DOWN",
            Self::StoreFailed(_) | Self::Internal(_) => "INTERNAL",
        }
    }

    /// How the store failed, if this is a store failure: `unavailable` or `internal`.
    pub fn store_failure(&self) -> Option<&'static str> {
        match self {
            Self::StoreUnavailable(_) => Some("unavailable"),
            Self::StoreFailed(_) => Some("internal"),
            _ => None,
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
