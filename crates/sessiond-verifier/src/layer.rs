//! Where a token comes in and a refusal goes out: the `authorization: Bearer` header read, the
//! tower layer (HTTP or gRPC flavour), the tonic interceptor, and the one mapping of a
//! [`VerifyError`] to an HTTP answer or a gRPC status. No answer echoes the token.

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
};

use http::{HeaderMap, HeaderValue, StatusCode, header};
use tower_layer::Layer;
use tower_service::Service;

use crate::{Verifier, VerifyError};

/// The token of the request's `authorization: Bearer <token>` header. No header, or another
/// scheme, is `Missing`; two headers, a value that is not visible ASCII, or an empty token is
/// `Malformed`.
pub(crate) fn bearer(headers: &HeaderMap) -> Result<&str, VerifyError> {
    let mut values = headers.get_all(header::AUTHORIZATION).iter();
    let (Some(value), None) = (values.next(), values.next()) else {
        return Err(if headers.contains_key(header::AUTHORIZATION) {
            VerifyError::Malformed
        } else {
            VerifyError::Missing
        });
    };
    let value = value.to_str().map_err(|_| VerifyError::Malformed)?;
    let Some((scheme, token)) = value.split_once(' ') else {
        return Err(VerifyError::Missing);
    };
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(VerifyError::Missing);
    }
    let token = token.trim_start_matches(' ');
    if token.is_empty() || token.contains(' ') {
        return Err(VerifyError::Malformed);
    }
    Ok(token)
}

/// The HTTP answer to a refusal: 401 with a `WWW-Authenticate` challenge (RFC 6750: no error
/// code when no token was sent), or 503 with `Retry-After` when the verifier cannot judge.
pub(crate) fn http_refusal<B: Default>(error: VerifyError) -> http::Response<B> {
    let mut headers = HeaderMap::new();
    let status = if error.is_unavailable() {
        headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        let challenge = match error {
            VerifyError::Missing => HeaderValue::from_static("Bearer"),
            // Every Display is ASCII without quotes; the fallback cannot be reached.
            _ => HeaderValue::try_from(format!(
                r#"Bearer error="invalid_token", error_description="{error}""#
            ))
            .unwrap_or(HeaderValue::from_static(r#"Bearer error="invalid_token""#)),
        };
        headers.insert(header::WWW_AUTHENTICATE, challenge);
        StatusCode::UNAUTHORIZED
    };
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    let mut response = http::Response::new(B::default());
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    response
}

/// The gRPC status of a refusal: `UNAUTHENTICATED`, or `UNAVAILABLE` when the verifier cannot
/// judge (a client may retry).
pub(crate) fn grpc_status(error: VerifyError) -> tonic::Status {
    if error.is_unavailable() {
        tonic::Status::unavailable(error.to_string())
    } else {
        tonic::Status::unauthenticated(error.to_string())
    }
}

/// How refusals are answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Protocol {
    Http,
    Grpc,
}

impl Protocol {
    fn refusal<B: Default>(self, error: VerifyError) -> http::Response<B> {
        match self {
            Self::Http => http_refusal(error),
            Self::Grpc => grpc_status(error).into_http(),
        }
    }
}

/// Verifies each request's bearer token before the inner service sees it; see
/// [`Verifier::layer`] and [`Verifier::grpc_layer`].
#[derive(Debug, Clone)]
pub struct AuthLayer {
    verifier: Verifier,
    protocol: Protocol,
}

impl AuthLayer {
    pub(crate) fn new(verifier: Verifier, protocol: Protocol) -> Self {
        Self { verifier, protocol }
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = Auth<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Auth {
            inner,
            verifier: self.verifier.clone(),
            protocol: self.protocol,
        }
    }
}

/// The service [`AuthLayer`] wraps around another.
#[derive(Debug, Clone)]
pub struct Auth<S> {
    inner: S,
    verifier: Verifier,
    protocol: Protocol,
}

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for Auth<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    ReqBody: Send + 'static,
    ResBody: Default + Send + 'static,
{
    type Response = http::Response<ResBody>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<ReqBody>) -> Self::Future {
        // The service that was polled ready goes into the future; a clone takes its place.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let verifier = self.verifier.clone();
        let protocol = self.protocol;
        Box::pin(async move {
            let verified = match bearer(request.headers()) {
                Ok(token) => verifier.verify(token).await,
                Err(error) => Err(error),
            };
            match verified {
                Ok(session) => {
                    request.extensions_mut().insert(session);
                    inner.call(request).await
                }
                Err(error) => Ok(protocol.refusal(error)),
            }
        })
    }
}

/// A tonic interceptor that verifies the `authorization` metadata locally; see
/// [`Verifier::interceptor`].
#[derive(Debug, Clone)]
pub struct AuthInterceptor {
    verifier: Verifier,
}

impl AuthInterceptor {
    pub(crate) fn new(verifier: Verifier) -> Self {
        Self { verifier }
    }
}

impl tonic::service::Interceptor for AuthInterceptor {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        let session = bearer(request.metadata().as_ref())
            .and_then(|token| self.verifier.verify_local(token))
            .map_err(grpc_status)?;
        request.extensions_mut().insert(session);
        Ok(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(values: &[&'static str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for value in values {
            headers.append(header::AUTHORIZATION, HeaderValue::from_static(value));
        }
        headers
    }

    #[test]
    fn the_bearer_token_is_read_from_one_authorization_header() {
        assert_eq!(bearer(&headers(&["Bearer a.b.c"])), Ok("a.b.c"));
        assert_eq!(bearer(&headers(&["bearer a.b.c"])), Ok("a.b.c"));
        assert_eq!(bearer(&headers(&["BEARER   a.b.c"])), Ok("a.b.c"));
        assert_eq!(bearer(&headers(&[])), Err(VerifyError::Missing));
        assert_eq!(
            bearer(&headers(&["Basic dXNlcjpwdw=="])),
            Err(VerifyError::Missing)
        );
        assert_eq!(bearer(&headers(&["Bearer"])), Err(VerifyError::Missing));
        assert_eq!(bearer(&headers(&["Bearer "])), Err(VerifyError::Malformed));
        assert_eq!(
            bearer(&headers(&["Bearer a b"])),
            Err(VerifyError::Malformed)
        );
        assert_eq!(
            bearer(&headers(&["Bearer a.b.c", "Bearer d.e.f"])),
            Err(VerifyError::Malformed)
        );
        let mut binary = HeaderMap::new();
        binary.insert(
            header::AUTHORIZATION,
            HeaderValue::from_bytes(b"Bearer \xff").expect("a header value"),
        );
        assert_eq!(bearer(&binary), Err(VerifyError::Malformed));
    }

    #[test]
    fn a_refused_token_is_a_401_challenge_and_a_stale_verifier_a_503() {
        let missing: http::Response<()> = http_refusal(VerifyError::Missing);
        assert_eq!(missing.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(missing.headers()[header::WWW_AUTHENTICATE], "Bearer");
        let expired: http::Response<()> = http_refusal(VerifyError::Expired);
        assert_eq!(expired.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(
            expired.headers()[header::WWW_AUTHENTICATE],
            r#"Bearer error="invalid_token", error_description="token expired""#
        );
        for error in [VerifyError::Stale, VerifyError::Unavailable] {
            let response: http::Response<()> = http_refusal(error);
            assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
            assert!(!response.headers().contains_key(header::WWW_AUTHENTICATE));
        }
        assert_eq!(
            grpc_status(VerifyError::Revoked).code(),
            tonic::Code::Unauthenticated
        );
        assert_eq!(
            grpc_status(VerifyError::Stale).code(),
            tonic::Code::Unavailable
        );
    }
}
