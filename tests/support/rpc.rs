//! The SessionService calls the tests make, on any client: an in-process `TestApp`'s or a
//! `SessiondProcess`'s. `try_*` return the `Status` a call failed with; the others panic on one.

use sessiond::api::pb::{self, session_service_client::SessionServiceClient};
use tonic::{Status, transport::Channel};

pub type Client = SessionServiceClient<Channel>;

/// The CreateSession request the tests send: `user_id` on `device_id` (empty for an unknown
/// device), with a device name, user agent and IP address, and one metadata entry.
pub fn create_request(user_id: &str, device_id: &str) -> pb::CreateSessionRequest {
    pb::CreateSessionRequest {
        user_id: user_id.into(),
        device: Some(pb::Device {
            device_id: device_id.into(),
            name: "test device".into(),
            user_agent: "tests/1.0".into(),
            ip_address: "203.0.113.7".into(),
        }),
        metadata: [("app".to_owned(), "tests".to_owned())].into(),
        lifetime: None,
    }
}

/// A new session for `user_id` on `device_id` (empty for an unknown device).
pub async fn try_create(
    client: &mut Client,
    user_id: &str,
    device_id: &str,
) -> Result<pb::CreateSessionResponse, Status> {
    client
        .create_session(create_request(user_id, device_id))
        .await
        .map(tonic::Response::into_inner)
}

/// [`try_create`], which must succeed.
pub async fn create(
    client: &mut Client,
    user_id: &str,
    device_id: &str,
) -> pb::CreateSessionResponse {
    try_create(client, user_id, device_id)
        .await
        .expect("CreateSession succeeds")
}

pub async fn try_validate(
    client: &mut Client,
    access_token: &str,
) -> Result<pb::ValidateResponse, Status> {
    client
        .validate(pb::ValidateRequest {
            access_token: access_token.into(),
        })
        .await
        .map(tonic::Response::into_inner)
}

/// [`try_validate`], which must answer (with any verdict).
pub async fn validate(client: &mut Client, access_token: &str) -> pb::ValidateResponse {
    try_validate(client, access_token)
        .await
        .expect("Validate answers")
}

pub async fn refresh(
    client: &mut Client,
    refresh_token: &str,
) -> Result<pb::RefreshResponse, Status> {
    client
        .refresh(pb::RefreshRequest {
            refresh_token: refresh_token.into(),
        })
        .await
        .map(tonic::Response::into_inner)
}

pub async fn get(client: &mut Client, session_id: &str) -> Result<pb::Session, Status> {
    client
        .get_session(pb::GetSessionRequest {
            session_id: session_id.into(),
            user_id: String::new(),
        })
        .await
        .map(tonic::Response::into_inner)
}

/// RevokeSession with `reason`: whether it revoked a live session.
pub async fn try_revoke(
    client: &mut Client,
    session_id: &str,
    reason: &str,
) -> Result<bool, Status> {
    client
        .revoke_session(pb::RevokeSessionRequest {
            session_id: session_id.into(),
            reason: reason.into(),
            user_id: String::new(),
        })
        .await
        .map(|response| response.into_inner().revoked)
}

/// Signs `session_id` out ([`try_revoke`], which must succeed): whether it was live.
pub async fn revoke(client: &mut Client, session_id: &str) -> bool {
    try_revoke(client, session_id, "signed out")
        .await
        .expect("RevokeSession succeeds")
}

/// RevokeUserSessions ("password changed") of every session of `user_id` but `except` (empty for
/// none): how many it revoked.
pub async fn revoke_user(client: &mut Client, user_id: &str, except: &str) -> Result<u32, Status> {
    client
        .revoke_user_sessions(pb::RevokeUserSessionsRequest {
            user_id: user_id.into(),
            except_session_id: except.into(),
            reason: "password changed".into(),
        })
        .await
        .map(|response| response.into_inner().revoked_count)
}

/// DeleteUserSessions of `user_id`: how many sessions it erased.
pub async fn delete_user(client: &mut Client, user_id: &str) -> Result<u32, Status> {
    client
        .delete_user_sessions(pb::DeleteUserSessionsRequest {
            user_id: user_id.into(),
        })
        .await
        .map(|response| response.into_inner().deleted_count)
}

/// The access and refresh tokens of a response.
pub fn tokens(pair: &Option<pb::TokenPair>) -> (String, String) {
    let pair = pair.as_ref().expect("a token pair");
    (pair.access_token.clone(), pair.refresh_token.clone())
}

/// The id of the session a CreateSession made.
pub fn session_id(created: &pb::CreateSessionResponse) -> String {
    created
        .session
        .as_ref()
        .expect("a session")
        .session_id
        .clone()
}

/// The access token and session id of a CreateSession response.
pub fn token_and_id(created: &pb::CreateSessionResponse) -> (String, String) {
    (tokens(&created.tokens).0, session_id(created))
}

/// Asserts `status` is a refusal by the rate limit `setting` (RESOURCE_EXHAUSTED, `RATE_LIMITED`,
/// the setting named): the delay its `RetryInfo` gives, which must be above zero.
pub fn rate_limit_delay(status: &Status, setting: &str) -> std::time::Duration {
    use tonic_types::StatusExt;
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    assert_eq!(
        status.get_details_error_info().expect("error info").reason,
        "RATE_LIMITED"
    );
    assert!(status.message().contains(setting), "{status:?}");
    let delay = status
        .get_details_retry_info()
        .expect("retry info")
        .retry_delay
        .expect("a delay");
    assert!(delay > std::time::Duration::ZERO);
    delay
}
