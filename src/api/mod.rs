//! The gRPC adapter: `sessiond.v1.SessionService`. Handlers only translate: they parse requests
//! into domain values (`convert`), call the authority, and map errors in one place (`status`).

mod convert;
pub mod pb;
mod status;

use std::{future::Future, sync::Arc, time::Instant};

use tonic::{Code, Request, Response, Status};

use crate::{
    authority::{Authority, Verdict},
    error::Error,
    metrics::{self, Rpc},
};
use pb::session_service_server::SessionService;

/// The `SessionService` implementation.
pub struct SessionApi {
    authority: Arc<Authority>,
}

impl SessionApi {
    /// Serves requests with `authority`.
    pub fn new(authority: Arc<Authority>) -> Self {
        Self { authority }
    }
}

#[tonic::async_trait]
impl SessionService for SessionApi {
    #[tracing::instrument(name = "rpc.CreateSession", skip_all)]
    async fn create_session(
        &self,
        request: Request<pb::CreateSessionRequest>,
    ) -> Result<Response<pb::CreateSessionResponse>, Status> {
        observed(Rpc::CreateSession, async {
            let new = convert::new_session(request.into_inner())?;
            let (session, tokens) = convert::issued(self.authority.create_session(new).await?);
            Ok(Response::new(pb::CreateSessionResponse { session, tokens }))
        })
        .await
    }

    #[tracing::instrument(name = "rpc.Validate", skip_all)]
    async fn validate(
        &self,
        request: Request<pb::ValidateRequest>,
    ) -> Result<Response<pb::ValidateResponse>, Status> {
        observed(Rpc::Validate, async {
            let response = match self
                .authority
                .validate(&request.into_inner().access_token)
                .await?
            {
                Verdict::Valid(session) => pb::ValidateResponse {
                    valid: true,
                    status: pb::TokenStatus::Valid.into(),
                    session: Some(session.as_ref().into()),
                },
                Verdict::Refused(refusal) => pb::ValidateResponse {
                    valid: false,
                    status: convert::token_status(refusal).into(),
                    session: None,
                },
            };
            Ok(Response::new(response))
        })
        .await
    }

    #[tracing::instrument(name = "rpc.Refresh", skip_all)]
    async fn refresh(
        &self,
        request: Request<pb::RefreshRequest>,
    ) -> Result<Response<pb::RefreshResponse>, Status> {
        observed(Rpc::Refresh, async {
            let token = convert::refresh_token(request.into_inner().refresh_token)?;
            let (session, tokens) = convert::issued(self.authority.refresh(token).await?);
            Ok(Response::new(pb::RefreshResponse { session, tokens }))
        })
        .await
    }

    #[tracing::instrument(name = "rpc.RevokeSession", skip_all)]
    async fn revoke_session(
        &self,
        request: Request<pb::RevokeSessionRequest>,
    ) -> Result<Response<pb::RevokeSessionResponse>, Status> {
        observed(Rpc::RevokeSession, async {
            let (id, reason) = convert::revoke_session(request.into_inner())?;
            let revoked = self.authority.revoke_session(id, reason).await?;
            Ok(Response::new(pb::RevokeSessionResponse { revoked }))
        })
        .await
    }

    #[tracing::instrument(name = "rpc.RevokeUserSessions", skip_all)]
    async fn revoke_user_sessions(
        &self,
        request: Request<pb::RevokeUserSessionsRequest>,
    ) -> Result<Response<pb::RevokeUserSessionsResponse>, Status> {
        observed(Rpc::RevokeUserSessions, async {
            let (user_id, except, reason) = convert::revoke_user_sessions(request.into_inner())?;
            let count = self
                .authority
                .revoke_user_sessions(&user_id, except, reason)
                .await?;
            Ok(Response::new(pb::RevokeUserSessionsResponse {
                revoked_count: u32::try_from(count).unwrap_or(u32::MAX),
            }))
        })
        .await
    }

    #[tracing::instrument(name = "rpc.ListUserSessions", skip_all)]
    async fn list_user_sessions(
        &self,
        request: Request<pb::ListUserSessionsRequest>,
    ) -> Result<Response<pb::ListUserSessionsResponse>, Status> {
        observed(Rpc::ListUserSessions, async {
            let list = convert::list_user_sessions(request.into_inner())?;
            let page = self
                .authority
                .list_user_sessions(
                    &list.user_id,
                    list.include_revoked,
                    list.page_size,
                    list.after,
                )
                .await?;
            Ok(Response::new(pb::ListUserSessionsResponse {
                sessions: page.sessions.iter().map(Into::into).collect(),
                next_page_token: page
                    .next
                    .map(convert::encode_page_token)
                    .unwrap_or_default(),
            }))
        })
        .await
    }

    #[tracing::instrument(name = "rpc.GetSession", skip_all)]
    async fn get_session(
        &self,
        request: Request<pb::GetSessionRequest>,
    ) -> Result<Response<pb::Session>, Status> {
        observed(Rpc::GetSession, async {
            let id = convert::get_session(request.get_ref())?;
            Ok(Response::new(
                (&self.authority.get_session(id).await?).into(),
            ))
        })
        .await
    }
}

/// Runs one call, answers its error, and records its code and latency.
async fn observed<T>(
    method: Rpc,
    call: impl Future<Output = Result<T, Error>>,
) -> Result<T, Status> {
    let started = Instant::now();
    let result = call.await.map_err(|error| status::answer(method, error));
    let code = result.as_ref().map_or_else(Status::code, |_| Code::Ok);
    metrics::rpc(method, code, started.elapsed());
    result
}

/// What the fuzz targets (`fuzz/`) drive: the parsing of what callers send, exactly as the
/// handlers call it. Built only under cargo-fuzz (`--cfg fuzzing`).
#[cfg(fuzzing)]
pub mod fuzzing {
    use prost::Message;

    pub use super::convert::decode_page_token;
    use super::{convert, pb};

    /// Decodes `bytes` as each RPC's request and, where it decodes, parses it as its handler
    /// does. Errors are the expected outcome; a panic is the bug.
    pub fn parse_every_request(bytes: &[u8]) {
        if let Ok(request) = pb::CreateSessionRequest::decode(bytes) {
            let _ = convert::new_session(request);
        }
        if let Ok(request) = pb::RefreshRequest::decode(bytes) {
            let _ = convert::refresh_token(request.refresh_token);
        }
        if let Ok(request) = pb::RevokeSessionRequest::decode(bytes) {
            let _ = convert::revoke_session(request);
        }
        if let Ok(request) = pb::RevokeUserSessionsRequest::decode(bytes) {
            let _ = convert::revoke_user_sessions(request);
        }
        if let Ok(request) = pb::ListUserSessionsRequest::decode(bytes) {
            let _ = convert::list_user_sessions(request);
        }
        if let Ok(request) = pb::GetSessionRequest::decode(bytes) {
            let _ = convert::get_session(&request);
        }
        // ValidateRequest carries only the token: the access_token target covers it.
        let _ = pb::ValidateRequest::decode(bytes);
    }
}
