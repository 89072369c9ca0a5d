//! The gRPC adapter: `sessiond.v1.SessionService`. Handlers only translate: they parse requests
//! into domain values (`convert`), call the authority, and map errors in one place (`status`).

mod convert;
pub mod pb;
mod status;

pub use status::note_failure;

use std::{
    future::Future,
    pin::Pin,
    sync::{Arc, OnceLock},
    time::Instant,
};

use tokio_stream::{Stream, StreamExt, wrappers::ReceiverStream};
use tonic::{Code, Request, Response, Status};

use crate::{
    authority::{Authority, Verdict},
    callers::Caller,
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
        let audit = Audit::default();
        let caller = caller_of(&request);
        observed(caller.clone(), Rpc::CreateSession, Some(&audit), async {
            let new = convert::new_session(request.into_inner())?;
            audit.user(&new.user_id);
            let issued = self
                .authority
                .create_session(new, caller.requester())
                .await?;
            audit.session(&issued.session.id);
            let (session, tokens) = convert::issued(issued);
            Ok(Response::new(pb::CreateSessionResponse { session, tokens }))
        })
        .await
    }

    #[tracing::instrument(name = "rpc.Validate", skip_all)]
    async fn validate(
        &self,
        request: Request<pb::ValidateRequest>,
    ) -> Result<Response<pb::ValidateResponse>, Status> {
        observed(caller_of(&request), Rpc::Validate, None, async {
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
        let audit = Audit::default();
        observed(caller_of(&request), Rpc::Refresh, Some(&audit), async {
            let token = convert::refresh_token(request.into_inner().refresh_token)?;
            let issued = self.authority.refresh(token).await?;
            audit.user(&issued.session.user_id);
            audit.session(&issued.session.id);
            let (session, tokens) = convert::issued(issued);
            Ok(Response::new(pb::RefreshResponse { session, tokens }))
        })
        .await
    }

    #[tracing::instrument(name = "rpc.RevokeSession", skip_all)]
    async fn revoke_session(
        &self,
        request: Request<pb::RevokeSessionRequest>,
    ) -> Result<Response<pb::RevokeSessionResponse>, Status> {
        let audit = Audit::default();
        observed(
            caller_of(&request),
            Rpc::RevokeSession,
            Some(&audit),
            async {
                let (id, owner, reason) = convert::revoke_session(request.into_inner())?;
                audit.session(&id);
                if let Some(owner) = &owner {
                    audit.user(owner);
                }
                let revoked = self
                    .authority
                    .revoke_session(id, owner.as_ref(), reason)
                    .await?;
                Ok(Response::new(pb::RevokeSessionResponse { revoked }))
            },
        )
        .await
    }

    #[tracing::instrument(name = "rpc.RevokeUserSessions", skip_all)]
    async fn revoke_user_sessions(
        &self,
        request: Request<pb::RevokeUserSessionsRequest>,
    ) -> Result<Response<pb::RevokeUserSessionsResponse>, Status> {
        let audit = Audit::default();
        observed(
            caller_of(&request),
            Rpc::RevokeUserSessions,
            Some(&audit),
            async {
                let (user_id, except, reason) =
                    convert::revoke_user_sessions(request.into_inner())?;
                audit.user(&user_id);
                let count = self
                    .authority
                    .revoke_user_sessions(&user_id, except, reason)
                    .await?;
                Ok(Response::new(pb::RevokeUserSessionsResponse {
                    revoked_count: u32::try_from(count).unwrap_or(u32::MAX),
                }))
            },
        )
        .await
    }

    #[tracing::instrument(name = "rpc.RevokeSessions", skip_all)]
    async fn revoke_sessions(
        &self,
        request: Request<pb::RevokeSessionsRequest>,
    ) -> Result<Response<pb::RevokeSessionsResponse>, Status> {
        let audit = Audit::default();
        observed(
            caller_of(&request),
            Rpc::RevokeSessions,
            Some(&audit),
            async {
                let (filter, reason, dry_run) = convert::revoke_sessions(request.into_inner())?;
                if let Some(user_id) = &filter.user_id {
                    audit.user(user_id);
                }
                let (matched_count, revoked_count) = self
                    .authority
                    .revoke_sessions(&filter, reason, dry_run)
                    .await?;
                Ok(Response::new(pb::RevokeSessionsResponse {
                    matched_count,
                    revoked_count,
                }))
            },
        )
        .await
    }

    type WatchRevocationsStream =
        Pin<Box<dyn Stream<Item = Result<pb::RevocationEvent, Status>> + Send>>;

    #[tracing::instrument(name = "rpc.WatchRevocations", skip_all)]
    async fn watch_revocations(
        &self,
        request: Request<pb::WatchRevocationsRequest>,
    ) -> Result<Response<Self::WatchRevocationsStream>, Status> {
        observed(caller_of(&request), Rpc::WatchRevocations, None, async {
            let after = convert::after_cursor(request.into_inner())?;
            let watched = self.authority.watch_revocations(after).await?;
            let authority = self.authority.clone();
            let events = ReceiverStream::new(watched).map(move |watched| match watched {
                Ok(watched) => Ok(convert::revocation_event(&watched, |revocation| {
                    authority.tokens_expire_before(revocation)
                })),
                Err(end) => Err(status::answer(Rpc::WatchRevocations, end)),
            });
            Ok(Response::new(
                Box::pin(events) as Self::WatchRevocationsStream
            ))
        })
        .await
    }

    #[tracing::instrument(name = "rpc.DeleteUserSessions", skip_all)]
    async fn delete_user_sessions(
        &self,
        request: Request<pb::DeleteUserSessionsRequest>,
    ) -> Result<Response<pb::DeleteUserSessionsResponse>, Status> {
        let audit = Audit::default();
        observed(
            caller_of(&request),
            Rpc::DeleteUserSessions,
            Some(&audit),
            async {
                let user_id = convert::delete_user_sessions(request.into_inner())?;
                audit.user(&user_id);
                let count = self.authority.delete_user_sessions(&user_id).await?;
                Ok(Response::new(pb::DeleteUserSessionsResponse {
                    deleted_count: u32::try_from(count).unwrap_or(u32::MAX),
                }))
            },
        )
        .await
    }

    #[tracing::instrument(name = "rpc.ListUserSessions", skip_all)]
    async fn list_user_sessions(
        &self,
        request: Request<pb::ListUserSessionsRequest>,
    ) -> Result<Response<pb::ListUserSessionsResponse>, Status> {
        observed(caller_of(&request), Rpc::ListUserSessions, None, async {
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
        observed(caller_of(&request), Rpc::GetSession, None, async {
            let (id, owner) = convert::get_session(request.into_inner())?;
            Ok(Response::new(
                (&self.authority.get_session(id, owner.as_ref()).await?).into(),
            ))
        })
        .await
    }
}

/// Runs one call of `caller`, answers its error, records its code and latency, and for
/// a mutating call writes its audit line.
async fn observed<T>(
    caller: Arc<Caller>,
    method: Rpc,
    audit: Option<&Audit>,
    call: impl Future<Output = Result<T, Error>>,
) -> Result<T, Status> {
    let started = Instant::now();
    let result = call.await.map_err(|error| status::answer(method, error));
    let code = result.as_ref().map_or_else(Status::code, |_| Code::Ok);
    metrics::rpc(caller.calls(), method, code, started.elapsed());
    if let Some(audit) = audit {
        audit.write(&caller, method, code);
    }
    result
}

/// The caller the callers layer found for `request`.
pub fn caller_of<R>(request: &Request<R>) -> Arc<Caller> {
    // The layer always puts one; a server built without it serves in open mode.
    request
        .extensions()
        .get::<Arc<Caller>>()
        .cloned()
        .unwrap_or_else(Caller::anonymous)
}

/// What one audit line names besides the caller and method, filled in as the call learns it.
/// Never a token.
#[derive(Default)]
struct Audit {
    user_id: OnceLock<String>,
    session_id: OnceLock<String>,
}

impl Audit {
    fn user(&self, user_id: &impl ToString) {
        let _ = self.user_id.set(user_id.to_string());
    }

    fn session(&self, session_id: &impl ToString) {
        let _ = self.session_id.set(session_id.to_string());
    }

    fn write(&self, caller: &Caller, method: Rpc, code: Code) {
        tracing::info!(
            target: "sessiond::audit",
            caller = caller.name(),
            method = method.name(),
            user_id = self.user_id.get().map_or("", String::as_str),
            session_id = self.session_id.get().map_or("", String::as_str),
            code = ?code,
            "audit"
        );
    }
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
        if let Ok(request) = pb::RevokeSessionsRequest::decode(bytes) {
            let _ = convert::revoke_sessions(request);
        }
        if let Ok(request) = pb::WatchRevocationsRequest::decode(bytes) {
            let _ = convert::after_cursor(request);
        }
        if let Ok(request) = pb::DeleteUserSessionsRequest::decode(bytes) {
            let _ = convert::delete_user_sessions(request);
        }
        if let Ok(request) = pb::ListUserSessionsRequest::decode(bytes) {
            let _ = convert::list_user_sessions(request);
        }
        if let Ok(request) = pb::GetSessionRequest::decode(bytes) {
            let _ = convert::get_session(request);
        }
        // ValidateRequest carries only the token: the access_token target covers it.
        let _ = pb::ValidateRequest::decode(bytes);
    }
}
