//! The gRPC server layer that decides, before any handler runs, who is calling and whether it may
//! call what the request path names. The caller it finds goes into the request's extensions.

use std::{
    future::Future,
    net::SocketAddr,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Instant,
};

use tonic::{Status, body::Body};
use tower_layer::Layer;
use tower_service::Service;

use super::{Caller, Credentials, PeerIdentity, Policy, PolicySource, Target, UNIDENTIFIED};
use crate::{
    error::Error,
    metrics::{self, RpcCalls},
};

/// What a connection tells about its peer: put in each request's extensions by tonic (as the
/// connection's `Connected::ConnectInfo`).
#[derive(Debug, Clone, Default)]
pub struct ConnectInfo {
    pub remote_addr: Option<SocketAddr>,
    /// The names of the verified client certificate, over mutual TLS.
    pub peer: Option<Arc<PeerIdentity>>,
}

/// Wraps the gRPC routes with the callers policy.
#[derive(Debug, Clone)]
pub struct CallersLayer {
    policy: PolicySource,
}

impl CallersLayer {
    pub fn new(policy: PolicySource) -> Self {
        Self { policy }
    }
}

impl<S> Layer<S> for CallersLayer {
    type Service = CallersService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        CallersService {
            inner,
            policy: self.policy.clone(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct CallersService<S> {
    inner: S,
    policy: PolicySource,
}

/// Why a call is refused before its handler.
struct Refusal {
    caller: Option<Arc<Caller>>,
    error: Error,
}

impl<S> CallersService<S> {
    /// The caller of `request`, or why it may not make it.
    fn decide(
        &self,
        request: &http::Request<Body>,
        target: Target,
    ) -> Result<Arc<Caller>, Refusal> {
        let identified = match &**self.policy.current() {
            Policy::Open => return Ok(Caller::anonymous()),
            Policy::Callers(callers) => callers.identify(Credentials {
                authorization: request
                    .headers()
                    .get(http::header::AUTHORIZATION)
                    .map(|value| value.as_bytes()),
                peer: request
                    .extensions()
                    .get::<ConnectInfo>()
                    .and_then(|info| info.peer.as_deref()),
            }),
        };
        match identified {
            Some(caller) if caller.may(target) => Ok(caller),
            Some(caller) => Err(Refusal {
                error: Error::CallerNotAllowed {
                    caller: caller.name().to_owned(),
                    method: request.uri().path().trim_start_matches('/').to_owned(),
                },
                caller: Some(caller),
            }),
            // Health is for probes and load balancers, which carry no identity.
            None if target == Target::Health => Ok(Caller::anonymous()),
            None => Err(Refusal {
                caller: None,
                error: Error::CallerUnidentified,
            }),
        }
    }
}

impl<S> Service<http::Request<Body>> for CallersService<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<Body>) -> Self::Future {
        let started = Instant::now();
        let target = Target::of(request.uri().path());
        let decision = self.decide(&request, target);
        // The clone that was made ready answers this call; the fresh one waits for the next.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        // The future runs inside the request's span (tonic enters it when polling); `call` does not.
        match decision {
            Ok(caller) => {
                let name = caller.name().to_owned();
                request.extensions_mut().insert(caller);
                let call = inner.call(request);
                Box::pin(async move {
                    tracing::Span::current().record("caller", name);
                    call.await
                })
            }
            Err(refusal) => Box::pin(async move {
                let name = refusal.caller.as_ref().map_or(UNIDENTIFIED, |c| c.name());
                tracing::Span::current().record("caller", name);
                tracing::info!(
                    caller = name,
                    error.code = refusal.error.code(),
                    "call refused: {}",
                    refusal.error
                );
                let status = Status::from(refusal.error);
                if let Target::Method(rpc) = target {
                    let calls = match &refusal.caller {
                        Some(caller) => caller.calls(),
                        None => unidentified_calls(),
                    };
                    metrics::rpc(calls, rpc, status.code(), started.elapsed());
                }
                Ok(status.into_http())
            }),
        }
    }
}

/// The counters of calls refused for want of an identity.
fn unidentified_calls() -> &'static RpcCalls {
    static CALLS: std::sync::OnceLock<RpcCalls> = std::sync::OnceLock::new();
    CALLS.get_or_init(|| RpcCalls::new(UNIDENTIFIED))
}
