//! HTTP forward-auth: `/auth/verify`, any method, on `SESSIOND_FORWARD_AUTH_ADDR` and nothing
//! else there (not `/metrics`). The contract of nginx `auth_request`, Caddy `forward_auth` and
//! Traefik `ForwardAuth`: `200` with the user and session headers, which the proxy copies onto
//! the request it passes on; `401` with `WWW-Authenticate`; `503` with `Retry-After` when the
//! store cannot say.
//!
//! It tells a token's holder only what the token already says (its own user and session), so it
//! asks no caller identity: the README says to bind it where only the proxy reaches it. The port's
//! bounds are the ops port's (`limits::http`).

use std::{
    future::Future,
    sync::{Arc, OnceLock},
};

use axum::{
    Router,
    extract::State,
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
    routing::any,
};
use tokio::net::TcpListener;

use super::{Decision, Gateway, RETRY_AFTER_SECONDS};
use crate::{
    limits::http::HttpBounds,
    metrics::{Rpc, RpcCalls},
};

/// The one path served.
pub const VERIFY_PATH: &str = "/auth/verify";

/// The caller forward-auth calls are counted under: the port identifies no one.
const FORWARD_AUTH_CALLER: &str = "forward-auth";

/// Serves `/auth/verify` on `listener` within `bounds` until `stop`.
pub async fn serve(
    listener: TcpListener,
    gateway: Arc<Gateway>,
    bounds: HttpBounds,
    stop: impl Future<Output = ()> + Send + 'static,
) {
    let app = Router::new()
        .route(VERIFY_PATH, any(verify))
        .with_state(gateway);
    crate::limits::http::serve(listener, app, bounds, stop).await;
}

#[tracing::instrument(name = "http.ForwardAuth", skip_all)]
async fn verify(State(gateway): State<Arc<Gateway>>, headers: HeaderMap) -> Response {
    let authorization = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok());
    let cookies = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok());
    let credential = gateway.credential(authorization, cookies);
    let decision = gateway.decide(calls(), Rpc::ForwardAuth, credential).await;
    let settings = gateway.settings();
    let mut response = match decision {
        Decision::Allow {
            user_id,
            session_id,
        } => {
            let mut response = StatusCode::OK.into_response();
            let values = (
                HeaderValue::from_bytes(user_id.as_str().as_bytes()),
                HeaderValue::try_from(session_id.to_string()),
            );
            // A user id is printable text (see `UserId`), which a header value can carry; should
            // one not fit, the request is refused rather than passed on without its user.
            let (Ok(user), Ok(session)) = values else {
                return StatusCode::INTERNAL_SERVER_ERROR.into_response();
            };
            let headers = response.headers_mut();
            headers.insert(settings.user_header.clone(), user);
            headers.insert(settings.session_header.clone(), session);
            response
        }
        Decision::Deny(denial) => {
            let mut response = StatusCode::UNAUTHORIZED.into_response();
            if let Ok(challenge) = HeaderValue::try_from(denial.challenge()) {
                response
                    .headers_mut()
                    .insert(header::WWW_AUTHENTICATE, challenge);
            }
            response
        }
        Decision::Unavailable => {
            let mut response = StatusCode::SERVICE_UNAVAILABLE.into_response();
            response.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from_static(RETRY_AFTER_SECONDS),
            );
            response
        }
    };
    // An answer about one token is for that request alone.
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

fn calls() -> &'static RpcCalls {
    static CALLS: OnceLock<RpcCalls> = OnceLock::new();
    CALLS.get_or_init(|| RpcCalls::new(FORWARD_AUTH_CALLER))
}
