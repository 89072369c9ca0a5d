//! The axum extractor: `Authenticated(session)` in a handler's arguments, with the [`Verifier`]
//! in the router's state (`with_state(verifier)`, or any state it can be taken from with
//! `FromRef`). A request that went through [`Verifier::layer`] already carries its session and
//! is not verified twice.

use axum_core::{
    extract::{FromRef, FromRequestParts},
    response::{IntoResponse, Response},
};
use http::request::Parts;

use crate::{Session, Verifier, VerifyError, layer};

/// A request whose bearer token verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authenticated(pub Session);

/// The answer to a request whose token was refused: 401 with `WWW-Authenticate`, or 503 when
/// the verifier cannot judge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuthRejection(pub VerifyError);

impl IntoResponse for AuthRejection {
    fn into_response(self) -> Response {
        layer::http_refusal(self.0)
    }
}

impl<S> FromRequestParts<S> for Authenticated
where
    Verifier: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = AuthRejection;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        if let Some(session) = parts.extensions.get::<Session>() {
            return Ok(Self(session.clone()));
        }
        let token = layer::bearer(&parts.headers).map_err(AuthRejection)?;
        Verifier::from_ref(state)
            .verify(token)
            .await
            .map(Self)
            .map_err(AuthRejection)
    }
}
