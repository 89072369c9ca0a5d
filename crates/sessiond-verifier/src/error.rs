//! Why a token is refused, and why a verifier could not be built. Every message is stable and
//! names no token, no claim and no key: it may be logged or sent to a client as it is.

use std::fmt;

/// Why a token was refused. `Display` and [`VerifyError::code`] are stable and token-free.
///
/// [`Stale`](VerifyError::Stale) and [`Unavailable`](VerifyError::Unavailable) say nothing about
/// the token: they mean the verifier cannot vouch for any token right now. The layers and the
/// extractor answer them with 503 (`UNAVAILABLE`), the others with 401 (`UNAUTHENTICATED`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum VerifyError {
    /// The request carries no `authorization: Bearer` token (the layers and the extractor only).
    Missing,
    /// Not a JWT of three base64url segments, over 4 KiB, or without the claims sessiond issues.
    Malformed,
    /// The algorithm is not EdDSA (this covers `none`), the `kid` is missing or unknown, or the
    /// signature does not verify.
    BadSignature,
    /// `exp` has passed (beyond the configured leeway, 0 by default).
    Expired,
    /// `iss` or `aud` is not the configured one.
    WrongIssuerOrAudience,
    /// The session was revoked, the user signed out everywhere after the session started, or the
    /// key that signed the token was removed; in the `Validate` fallback also a session that
    /// expired or is unknown to sessiond.
    Revoked,
    /// The revocation stream has been down or silent longer than the staleness bound (or has not
    /// been synced yet), and the verifier fails closed.
    Stale,
    /// No signing keys were fetched yet, or the `Validate` fallback could not reach sessiond.
    Unavailable,
}

impl VerifyError {
    /// A stable machine-readable code, e.g. for metrics labels.
    pub fn code(self) -> &'static str {
        match self {
            Self::Missing => "MISSING_TOKEN",
            Self::Malformed => "MALFORMED",
            Self::BadSignature => "BAD_SIGNATURE",
            Self::Expired => "TOKEN_EXPIRED",
            Self::WrongIssuerOrAudience => "WRONG_ISSUER_OR_AUDIENCE",
            Self::Revoked => "SESSION_REVOKED",
            Self::Stale => "REVOCATIONS_STALE",
            Self::Unavailable => "UNAVAILABLE",
        }
    }

    /// Whether the refusal is about the verifier's state rather than the token: answer it as
    /// "try again" (503 / `UNAVAILABLE`), not as "sign in again" (401 / `UNAUTHENTICATED`).
    pub fn is_unavailable(self) -> bool {
        matches!(self, Self::Stale | Self::Unavailable)
    }
}

impl fmt::Display for VerifyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Missing => "no bearer token",
            Self::Malformed => "malformed token",
            Self::BadSignature => "bad token signature",
            Self::Expired => "token expired",
            Self::WrongIssuerOrAudience => "wrong token issuer or audience",
            Self::Revoked => "session revoked",
            Self::Stale => "revocation list is stale",
            Self::Unavailable => "token verification unavailable",
        })
    }
}

impl std::error::Error for VerifyError {}

/// Why [`Builder::start`](crate::Builder::start) refused its configuration.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// `issuer` was not set, or is empty.
    #[error("the issuer is not set")]
    MissingIssuer,
    /// `audience` was not set, or is empty.
    #[error("the audience is not set")]
    MissingAudience,
    /// The sessiond gRPC URL does not parse.
    #[error("invalid sessiond gRPC URL: {0}")]
    GrpcUrl(String),
    /// The JWKS URL is not an absolute `http://` or `https://` URL.
    #[error("invalid JWKS URL: {0}")]
    JwksUrl(String),
    /// The API key cannot be sent as a header value (control characters, non-ASCII).
    #[error("the API key is not a valid header value")]
    ApiKey,
    /// A duration is out of range (a zero staleness bound, a refresh floor above its ceiling).
    #[error("invalid setting: {0}")]
    Setting(&'static str),
    /// The system's root certificates could not be loaded for an `https://` JWKS URL.
    #[error("cannot load root certificates for the JWKS URL: {0}")]
    Tls(std::io::Error),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_and_messages_are_distinct() {
        let all = [
            VerifyError::Missing,
            VerifyError::Malformed,
            VerifyError::BadSignature,
            VerifyError::Expired,
            VerifyError::WrongIssuerOrAudience,
            VerifyError::Revoked,
            VerifyError::Stale,
            VerifyError::Unavailable,
        ];
        let codes: std::collections::HashSet<_> = all.iter().map(|e| e.code()).collect();
        let messages: std::collections::HashSet<_> = all.iter().map(|e| e.to_string()).collect();
        assert_eq!(codes.len(), all.len());
        assert_eq!(messages.len(), all.len());
        assert!(VerifyError::Stale.is_unavailable());
        assert!(!VerifyError::Revoked.is_unavailable());
    }
}
