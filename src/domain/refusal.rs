//! The one vocabulary of refusals: why sessiond will not accept a credential. `Validate` answers
//! with it as a token status; `Refresh` fails with it as UNAUTHENTICATED.

use std::fmt;

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
