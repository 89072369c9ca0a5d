//! The tower layer in front of every gRPC service: bounds on the SessionService calls in flight,
//! and the answer to an oversized request.
//!
//! Calls in flight: every SessionService call and Envoy's Check holds a permit of
//! `SESSIOND_MAX_CALLS_IN_FLIGHT` until its answer is ready, and every one but Validate and Check
//! also one of `SESSIOND_MAX_STORE_CALLS_IN_FLIGHT`, so calls that wait for the store cannot take
//! the room Validate needs. A call that finds no permit is refused at once, unstarted, with
//! RESOURCE_EXHAUSTED (`OVERLOADED`): queueing would only turn overload into timeouts for
//! everyone. Health and reflection are not bounded: an overloaded replica must still answer its
//! probes.
//!
//! Oversize: tonic's decoder refuses a message over the size limit with OUT_OF_RANGE, where gRPC
//! says RESOURCE_EXHAUSTED (the code clients and proxies treat as "too much", and do not retry
//! blindly). So this layer turns a trailers-only OUT_OF_RANGE answer, which is what the decoder's
//! refusal is, into RESOURCE_EXHAUSTED, naming the setting of the method's limit
//! (`SESSIOND_EXT_AUTHZ_MAX_REQUEST_BYTES` for Check); sessiond's own OUT_OF_RANGE (a WatchRevocations cursor the
//! log no longer holds) is told apart by the error details every sessiond error carries.

use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use http::{HeaderValue, Request, Response};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::{Code, Status};
use tower_layer::Layer;
use tower_service::Service;

use crate::{error::Error, metrics};

const GRPC_STATUS: &str = "grpc-status";
const GRPC_MESSAGE: &str = "grpc-message";
const GRPC_STATUS_DETAILS: &str = "grpc-status-details-bin";
const SESSION_SERVICE: &str = "/sessiond.v1.SessionService/";
const VALIDATE: &str = "/sessiond.v1.SessionService/Validate";
const CHECK: &str = "/envoy.service.auth.v3.Authorization/Check";

/// The layer; see the module doc.
#[derive(Debug, Clone)]
pub struct CallBounds {
    all: Arc<Semaphore>,
    store: Arc<Semaphore>,
    max_request_bytes: u32,
    max_check_bytes: u32,
}

/// The permits one call holds until its answer is ready.
struct Admitted {
    _all: OwnedSemaphorePermit,
    _store: Option<OwnedSemaphorePermit>,
}

impl CallBounds {
    /// At most `all` calls in flight, `store` of them store-bound; requests of at most
    /// `max_request_bytes`, a Check of at most `max_check_bytes`.
    pub fn new(all: u32, store: u32, max_request_bytes: u32, max_check_bytes: u32) -> Self {
        Self {
            all: Arc::new(Semaphore::new(all as usize)),
            store: Arc::new(Semaphore::new(store.min(all) as usize)),
            max_request_bytes,
            max_check_bytes,
        }
    }

    /// The permits a call of `path` needs, or its refusal. `Ok(None)` for what is not bounded.
    fn admit(&self, path: &str) -> Result<Option<Admitted>, Error> {
        if !path.starts_with(SESSION_SERVICE) && path != CHECK {
            return Ok(None);
        }
        let store = if path == VALIDATE || path == CHECK {
            None
        } else {
            Some(take(&self.store, "SESSIOND_MAX_STORE_CALLS_IN_FLIGHT")?)
        };
        let all = take(&self.all, "SESSIOND_MAX_CALLS_IN_FLIGHT")?;
        Ok(Some(Admitted {
            _all: all,
            _store: store,
        }))
    }
}

fn take(bound: &Arc<Semaphore>, setting: &'static str) -> Result<OwnedSemaphorePermit, Error> {
    bound.clone().try_acquire_owned().map_err(|_| {
        metrics::call_shed(setting);
        Error::Overloaded { setting }
    })
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
    S::Error: Send + 'static,
    B: Send + 'static,
    R: Default + Send + 'static,
{
    type Response = Response<R>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let admitted = match self.bounds.admit(request.uri().path()) {
            Ok(admitted) => admitted,
            Err(refusal) => {
                let answer = Status::from(refusal).into_http();
                return Box::pin(std::future::ready(Ok(answer)));
            }
        };
        // The clone is the one that was not polled ready: keep the ready one for this call.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let limit = if request.uri().path() == CHECK {
            (
                "SESSIOND_EXT_AUTHZ_MAX_REQUEST_BYTES",
                self.bounds.max_check_bytes,
            )
        } else {
            ("SESSIOND_MAX_REQUEST_BYTES", self.bounds.max_request_bytes)
        };
        Box::pin(async move {
            let mut response = inner.call(request).await?;
            drop(admitted);
            answer_oversize(&mut response, limit);
            Ok(response)
        })
    }
}

/// Turns the decoder's OUT_OF_RANGE (a trailers-only answer: the status is in the headers) into
/// RESOURCE_EXHAUSTED, with a message that names the setting.
fn answer_oversize<R>(response: &mut Response<R>, (setting, limit): (&str, u32)) {
    let headers = response.headers_mut();
    let out_of_range = (Code::OutOfRange as i32).to_string();
    if headers
        .get(GRPC_STATUS)
        .is_none_or(|status| status != out_of_range.as_str())
        || headers.contains_key(GRPC_STATUS_DETAILS)
    {
        return;
    }
    headers.insert(
        GRPC_STATUS,
        HeaderValue::from(Code::ResourceExhausted as i32),
    );
    // Percent-encoding (as grpc-message requires) leaves this ASCII text unchanged but for spaces.
    let message = format!("request larger than {setting} ({limit} bytes)");
    if let Ok(value) = HeaderValue::from_str(&message.replace(' ', "%20")) {
        headers.insert(GRPC_MESSAGE, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validate_and_check_take_no_store_permit_and_health_takes_none() {
        let bounds = CallBounds::new(2, 1, 1024, 1024);
        let write = bounds.admit("/sessiond.v1.SessionService/CreateSession");
        assert!(matches!(write, Ok(Some(_))));
        // The store bound is full: another write is refused, Validate is not.
        for write in ["Refresh", "DeleteUserSessions"] {
            assert!(matches!(
                bounds.admit(&format!("/sessiond.v1.SessionService/{write}")),
                Err(Error::Overloaded {
                    setting: "SESSIOND_MAX_STORE_CALLS_IN_FLIGHT"
                })
            ));
        }
        let check = bounds.admit(CHECK);
        assert!(matches!(check, Ok(Some(_))), "Check takes no store permit");
        drop(check);
        let validate = bounds.admit(VALIDATE);
        assert!(matches!(validate, Ok(Some(_))));
        // Both permits of the whole bound are held.
        assert!(matches!(
            bounds.admit(VALIDATE),
            Err(Error::Overloaded {
                setting: "SESSIOND_MAX_CALLS_IN_FLIGHT"
            })
        ));
        assert!(matches!(
            bounds.admit("/grpc.health.v1.Health/Check"),
            Ok(None)
        ));
        drop(write);
        assert!(matches!(
            bounds.admit("/sessiond.v1.SessionService/GetSession"),
            Ok(Some(_))
        ));
    }
}
