//! Proto ↔ domain. Requests are parsed into domain values here, so a bad field becomes
//! INVALID_ARGUMENT naming it before anything else runs.

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::pb;
use crate::{
    authority::{Issued, SessionRequest},
    domain::{
        Cursor, Device, Metadata, Revocation, RevokeReason, Revoked, Session, SessionFilter,
        SessionId, UserId,
    },
    error::{Error, Refusal},
    revocations::Watched,
    token::RefreshToken,
};

/// Page size when the request asks for 0.
pub const DEFAULT_PAGE_SIZE: u16 = 50;
/// Largest page size a request may ask for.
pub const MAX_PAGE_SIZE: u16 = 500;

pub fn user_id(field: &'static str, value: String) -> Result<UserId, Error> {
    UserId::try_from(value).map_err(|d| Error::invalid(field, d))
}

/// An optional user id: empty means "none".
pub fn optional_user_id(field: &'static str, value: String) -> Result<Option<UserId>, Error> {
    (!value.is_empty())
        .then(|| user_id(field, value))
        .transpose()
}

pub fn session_id(field: &'static str, value: &str) -> Result<SessionId, Error> {
    value.parse().map_err(|d| Error::invalid(field, d))
}

/// An optional session id: empty means "none".
pub fn optional_session_id(field: &'static str, value: &str) -> Result<Option<SessionId>, Error> {
    (!value.is_empty())
        .then(|| session_id(field, value))
        .transpose()
}

pub fn reason(field: &'static str, value: String) -> Result<RevokeReason, Error> {
    RevokeReason::try_from(value).map_err(|d| Error::invalid(field, d))
}

pub fn refresh_token(value: String) -> Result<RefreshToken, Error> {
    RefreshToken::try_from(value).map_err(|d| Error::invalid("refresh_token", d))
}

pub fn new_session(request: pb::CreateSessionRequest) -> Result<SessionRequest, Error> {
    let device = request.device.unwrap_or_default();
    let lifetime = request
        .lifetime
        .map(|lifetime| match std::time::Duration::try_from(lifetime) {
            Ok(lifetime) if !lifetime.is_zero() => Ok(lifetime),
            _ => Err(Error::invalid("lifetime", "must be positive")),
        })
        .transpose()?;
    Ok(SessionRequest {
        user_id: user_id("user_id", request.user_id)?,
        device: Device::parse(
            device.device_id,
            device.name,
            device.user_agent,
            &device.ip_address,
        )?,
        metadata: Metadata::try_from(request.metadata)
            .map_err(|d| Error::invalid("metadata", d))?,
        lifetime,
    })
}

/// RevokeSession's request: which session, whose (if the caller says), and why.
pub fn revoke_session(
    request: pb::RevokeSessionRequest,
) -> Result<(SessionId, Option<UserId>, RevokeReason), Error> {
    Ok((
        session_id("session_id", &request.session_id)?,
        optional_user_id("user_id", request.user_id)?,
        reason("reason", request.reason)?,
    ))
}

/// RevokeUserSessions' request: whose sessions, which one to keep, and why.
pub fn revoke_user_sessions(
    request: pb::RevokeUserSessionsRequest,
) -> Result<(UserId, Option<SessionId>, RevokeReason), Error> {
    Ok((
        user_id("user_id", request.user_id)?,
        optional_session_id("except_session_id", &request.except_session_id)?,
        reason("reason", request.reason)?,
    ))
}

/// RevokeSessions' request: which sessions, why, and whether only to count them.
pub fn revoke_sessions(
    request: pb::RevokeSessionsRequest,
) -> Result<(SessionFilter, RevokeReason, bool), Error> {
    let refused = || Error::invalid("filter", "must set at least one condition");
    let filter = session_filter(request.filter.ok_or_else(refused)?)?;
    if filter.is_empty() {
        return Err(refused());
    }
    Ok((filter, reason("reason", request.reason)?, request.dry_run))
}

fn session_filter(filter: pb::SessionFilter) -> Result<SessionFilter, Error> {
    let device_id = match filter.device_id.as_str() {
        "" => None,
        // Checked as CreateSession checks it: what is refused there can match nothing here.
        _ => {
            Device::parse(filter.device_id, String::new(), String::new(), "")
                .map_err(|_| {
                    Error::invalid(
                        "filter.device_id",
                        format!("must be at most {} printable bytes", Device::MAX_ID_BYTES),
                    )
                })?
                .device_id
        }
    };
    let network = match filter.ip_address.as_str() {
        "" => None,
        text => Some(
            text.parse::<ipnet::IpNet>()
                .or_else(|_| text.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                .map_err(|_| {
                    Error::invalid(
                        "filter.ip_address",
                        "must be an IPv4 or IPv6 address, or a network in CIDR form (203.0.113.0/24)",
                    )
                })?,
        ),
    };
    let metadata = filter
        .metadata
        .map(|entry| {
            if entry.key.is_empty() {
                return Err(Error::invalid("filter.metadata.key", "must not be empty"));
            }
            Ok((entry.key, entry.value))
        })
        .transpose()?;
    Ok(SessionFilter {
        user_id: optional_user_id("filter.user_id", filter.user_id)?,
        device_id,
        created_before: filter
            .created_before
            .map(|at| time("filter.created_before", at))
            .transpose()?,
        created_after: filter
            .created_after
            .map(|at| time("filter.created_after", at))
            .transpose()?,
        last_seen_before: filter
            .last_seen_before
            .map(|at| time("filter.last_seen_before", at))
            .transpose()?,
        network,
        metadata,
    })
}

/// A timestamp as an instant.
fn time(field: &'static str, at: prost_types::Timestamp) -> Result<DateTime<Utc>, Error> {
    u32::try_from(at.nanos)
        .ok()
        .and_then(|nanos| DateTime::from_timestamp(at.seconds, nanos))
        .ok_or_else(|| Error::invalid(field, "must be a valid timestamp"))
}

/// WatchRevocations' request: where to resume (`None`: from the revocations still in force).
pub fn after_cursor(request: pb::WatchRevocationsRequest) -> Result<Option<Cursor>, Error> {
    (!request.after_cursor.is_empty())
        .then(|| {
            request.after_cursor.parse().map_err(|_| {
                Error::invalid(
                    "after_cursor",
                    "must be a cursor from a RevocationEvent, or empty",
                )
            })
        })
        .transpose()
}

/// What a WatchRevocations stream sends; `tokens_expire_before` says until when a revocation
/// refuses tokens.
pub fn revocation_event(
    watched: &Watched,
    tokens_expire_before: impl Fn(&Revocation) -> DateTime<Utc>,
) -> pb::RevocationEvent {
    let revocation = match watched {
        Watched::Heartbeat(cursor) => {
            return pb::RevocationEvent {
                cursor: cursor.to_string(),
                kind: pb::RevocationKind::Heartbeat.into(),
                ..Default::default()
            };
        }
        Watched::Revocation(revocation) => revocation,
    };
    let mut event = pb::RevocationEvent {
        cursor: revocation.cursor.to_string(),
        revoked_at: Some(timestamp(revocation.revoked_at)),
        reason: revocation.reason.clone(),
        token_expires_before: Some(timestamp(tokens_expire_before(revocation))),
        ..Default::default()
    };
    match &revocation.revoked {
        Revoked::Session {
            session_id,
            user_id,
        } => {
            event.kind = pb::RevocationKind::Session.into();
            event.session_id = session_id.to_string();
            event.user_id = user_id.as_str().to_owned();
        }
        Revoked::UserBefore {
            user_id,
            not_before,
        } => {
            event.kind = pb::RevocationKind::UserNotBefore.into();
            event.user_id = user_id.as_str().to_owned();
            event.not_before = Some(timestamp(*not_before));
        }
        Revoked::SigningKey { key_id } => {
            event.kind = pb::RevocationKind::SigningKeyRemoved.into();
            event.key_id = key_id.clone();
        }
    }
    event
}

/// DeleteUserSessions' request: whose sessions to erase.
pub fn delete_user_sessions(request: pb::DeleteUserSessionsRequest) -> Result<UserId, Error> {
    user_id("user_id", request.user_id)
}

/// ListUserSessions' request.
pub struct ListRequest {
    pub user_id: UserId,
    pub include_revoked: bool,
    pub page_size: u16,
    pub after: Option<SessionId>,
}

pub fn list_user_sessions(request: pb::ListUserSessionsRequest) -> Result<ListRequest, Error> {
    Ok(ListRequest {
        user_id: user_id("user_id", request.user_id)?,
        include_revoked: request.include_revoked,
        page_size: page_size(request.page_size)?,
        after: decode_page_token(&request.page_token)?,
    })
}

/// GetSession's request: which session, and whose (if the caller says).
pub fn get_session(request: pb::GetSessionRequest) -> Result<(SessionId, Option<UserId>), Error> {
    Ok((
        session_id("session_id", &request.session_id)?,
        optional_user_id("user_id", request.user_id)?,
    ))
}

/// The page size the request asks for.
pub fn page_size(value: i32) -> Result<u16, Error> {
    match u16::try_from(value) {
        Ok(0) => Ok(DEFAULT_PAGE_SIZE),
        Ok(size) if size <= MAX_PAGE_SIZE => Ok(size),
        _ => Err(Error::invalid(
            "page_size",
            format!("must be between 0 and {MAX_PAGE_SIZE}"),
        )),
    }
}

/// A page token is the last session id of the page before, opaque to callers.
pub fn encode_page_token(after: SessionId) -> String {
    URL_SAFE_NO_PAD.encode(after.as_uuid().as_bytes())
}

pub fn decode_page_token(token: &str) -> Result<Option<SessionId>, Error> {
    if token.is_empty() {
        return Ok(None);
    }
    let bytes = URL_SAFE_NO_PAD
        .decode(token)
        .ok()
        .and_then(|bytes| Uuid::from_slice(&bytes).ok())
        .ok_or_else(|| {
            Error::invalid(
                "page_token",
                "must be a next_page_token from ListUserSessions",
            )
        })?;
    Ok(Some(bytes.into()))
}

pub fn timestamp(time: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: time.timestamp(),
        // Always below 10^9 by chrono's contract, so the cast cannot wrap.
        nanos: time.timestamp_subsec_nanos() as i32,
    }
}

impl From<&Session> for pb::Session {
    fn from(session: &Session) -> Self {
        Self {
            session_id: session.id.to_string(),
            user_id: session.user_id.as_str().to_owned(),
            device: Some(pb::Device {
                device_id: session.device.device_id.clone().unwrap_or_default(),
                name: session.device.name.clone(),
                user_agent: session.device.user_agent.clone(),
                ip_address: session
                    .device
                    .ip_address
                    .map(|ip| ip.to_string())
                    .unwrap_or_default(),
            }),
            metadata: session
                .metadata
                .entries()
                .iter()
                .map(|(key, value)| (key.clone(), value.clone()))
                .collect(),
            created_at: Some(timestamp(session.created_at)),
            last_seen_at: Some(timestamp(session.last_seen_at)),
            expires_at: Some(timestamp(session.expires_at)),
            idle_expires_at: Some(timestamp(session.idle_expires_at)),
            revoked_at: session.revoked_at.map(timestamp),
            revoke_reason: session.revoke_reason.clone().unwrap_or_default(),
        }
    }
}

/// The session and tokens, as CreateSession and Refresh answer them.
pub fn issued(issued: Issued) -> (Option<pb::Session>, Option<pb::TokenPair>) {
    let tokens = pb::TokenPair {
        access_token: issued.access_token,
        access_token_expires_at: Some(timestamp(issued.access_token_expires_at)),
        refresh_token: issued.refresh_token.expose().to_owned(),
        refresh_token_expires_at: Some(timestamp(issued.refresh_token_expires_at)),
    };
    (Some((&issued.session).into()), Some(tokens))
}

/// Validate's status for a refused access token.
pub fn token_status(refusal: Refusal) -> pb::TokenStatus {
    match refusal {
        Refusal::Malformed => pb::TokenStatus::Malformed,
        Refusal::BadSignature => pb::TokenStatus::BadSignature,
        Refusal::TokenExpired => pb::TokenStatus::TokenExpired,
        Refusal::WrongIssuerOrAudience => pb::TokenStatus::WrongIssuerOrAudience,
        Refusal::SessionRevoked => pb::TokenStatus::SessionRevoked,
        Refusal::SessionExpired => pb::TokenStatus::SessionExpired,
        Refusal::SessionNotFound => pb::TokenStatus::SessionNotFound,
        // Only a refresh token is refused so; an access token never is. Should one be, the
        // caller still hears a refusal.
        Refusal::RefreshTokenUnknown
        | Refusal::RefreshTokenReused
        | Refusal::RefreshTokenSuperseded => pb::TokenStatus::Malformed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_page_token_round_trips() {
        let id = SessionId::generate();
        assert_eq!(
            decode_page_token(&encode_page_token(id)).ok().flatten(),
            Some(id)
        );
        assert!(decode_page_token("").is_ok_and(|after| after.is_none()));
        assert!(decode_page_token("garbage!").is_err());
    }

    #[test]
    fn page_sizes_outside_the_range_are_refused() {
        assert_eq!(page_size(0).ok(), Some(DEFAULT_PAGE_SIZE));
        assert_eq!(page_size(500).ok(), Some(500));
        assert!(page_size(501).is_err());
        assert!(page_size(-1).is_err());
    }

    #[test]
    fn a_non_positive_lifetime_is_refused() {
        for seconds in [0, -5] {
            let request = pb::CreateSessionRequest {
                user_id: "u".into(),
                lifetime: Some(prost_types::Duration { seconds, nanos: 0 }),
                ..Default::default()
            };
            assert!(matches!(
                new_session(request),
                Err(Error::InvalidArgument {
                    field: "lifetime",
                    ..
                })
            ));
        }
    }
}
