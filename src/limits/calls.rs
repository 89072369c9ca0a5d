//! The tower layer in front of every gRPC service.
//!
//! tonic's decoder refuses a message over the size limit with OUT_OF_RANGE, where gRPC says
//! RESOURCE_EXHAUSTED (the code clients and proxies treat as "too much", and do not retry
//! blindly). sessiond never answers OUT_OF_RANGE itself, so this layer turns a trailers-only
//! OUT_OF_RANGE answer, which is what the decoder's refusal is, into RESOURCE_EXHAUSTED.

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
};

use http::{HeaderValue, Request, Response};
use tonic::Code;
use tower_layer::Layer;
use tower_service::Service;

const GRPC_STATUS: &str = "grpc-status";
const GRPC_MESSAGE: &str = "grpc-message";

/// The layer; see the module doc.
#[derive(Debug, Clone)]
pub struct CallBounds {
    max_request_bytes: u32,
}

impl CallBounds {
    /// Bounds for requests of at most `max_request_bytes`.
    pub fn new(max_request_bytes: u32) -> Self {
        Self { max_request_bytes }
    }
}

impl<S> Layer<S> for CallBounds {
    type Service = Bounded<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Bounded {
            inner,
            bounds: self.clone(),
        }
    }
}

/// A service behind [`CallBounds`].
#[derive(Debug, Clone)]
pub struct Bounded<S> {
    inner: S,
    bounds: CallBounds,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

impl<S, B, R> Service<Request<B>> for Bounded<S>
where
    S: Service<Request<B>, Response = Response<R>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = Response<R>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        // The clone is the one that was not polled ready: keep the ready one for this call.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let limit = self.bounds.max_request_bytes;
        Box::pin(async move {
            let mut response = inner.call(request).await?;
            answer_oversize(&mut response, limit);
            Ok(response)
        })
    }
}

/// Turns the decoder's OUT_OF_RANGE (a trailers-only answer: the status is in the headers) into
/// RESOURCE_EXHAUSTED, with a message that names the setting.
fn answer_oversize<R>(response: &mut Response<R>, limit: u32) {
    let headers = response.headers_mut();
    let out_of_range = (Code::OutOfRange as i32).to_string();
    if headers
        .get(GRPC_STATUS)
        .is_none_or(|status| status != out_of_range.as_str())
    {
        return;
    }
    headers.insert(
        GRPC_STATUS,
        HeaderValue::from(Code::ResourceExhausted as i32),
    );
    // Percent-encoding (as grpc-message requires) leaves this ASCII text unchanged but for spaces.
    let message = format!("request larger than SESSIOND_MAX_REQUEST_BYTES ({limit} bytes)");
    if let Ok(value) = HeaderValue::from_str(&message.replace(' ', "%20")) {
        headers.insert(GRPC_MESSAGE, value);
    }
}
