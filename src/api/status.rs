//! The one place a domain error becomes a gRPC `Status`. Internal causes are logged here with
//! their whole chain and the method that met them, and never sent: the caller sees only the
//! stable code and a safe message.

use std::collections::HashMap;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::{
    error::Error,
    metrics::{self, Rpc},
};

/// The `ErrorInfo.domain` of every error sessiond sends.
const ERROR_DOMAIN: &str = "sessiond";

impl From<Error> for Status {
    fn from(error: Error) -> Self {
        let code = match &error {
            Error::InvalidArgument { .. } => Code::InvalidArgument,
            Error::SessionNotFound => Code::NotFound,
            Error::RefreshRefused(_) | Error::CallerUnidentified => Code::Unauthenticated,
            Error::CallerNotAllowed { .. } => Code::PermissionDenied,
            Error::SessionLimitReached { .. }
            | Error::Overloaded { .. }
            | Error::RateLimited { .. } => Code::ResourceExhausted,
            Error::StoreUnavailable(_) | Error::CacheUnavailable | Error::ShuttingDown => {
                Code::Unavailable
            }
            Error::CursorOutOfRange { .. } => Code::OutOfRange,
            Error::WatcherTooSlow => Code::Aborted,
            Error::StoreFailed(_) | Error::Internal(_) => Code::Internal,
        };
        let metadata = match &error {
            Error::CallerNotAllowed { caller, method } => HashMap::from([
                ("caller".to_owned(), caller.clone()),
                ("method".to_owned(), method.clone()),
            ]),
            Error::CursorOutOfRange { oldest, .. } => {
                HashMap::from([("oldest_cursor".to_owned(), oldest.clone())])
            }
            _ => HashMap::new(),
        };
        let mut details = ErrorDetails::with_error_info(error.code(), ERROR_DOMAIN, metadata);
        if let Error::InvalidArgument { field, description } = &error {
            details.add_bad_request_violation(*field, description.clone());
        }
        if let Error::RateLimited { retry_after, .. } = &error {
            details.set_retry_info(Some(*retry_after));
        }
        Status::with_error_details(code, error.to_string(), details)
    }
}

/// The answer to a call of `rpc` that failed with `error`; a failure of sessiond or of the store
/// is logged.
pub fn answer(rpc: Rpc, error: Error) -> Status {
    note_failure(rpc, &error);
    Status::from(error)
}

/// Counts `error` if the store failed, and logs it if sessiond or the store did.
pub fn note_failure(rpc: Rpc, error: &Error) {
    metrics::store_error(error);
    if matches!(
        error,
        Error::StoreUnavailable(_) | Error::StoreFailed(_) | Error::Internal(_)
    ) {
        tracing::error!(rpc = rpc.name(), error.code = error.code(), error.cause_chain = %error.cause_chain(), "request failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Refusal;

    #[test]
    fn an_invalid_argument_names_its_field() {
        let status = Status::from(Error::invalid("user_id", "must not be empty"));
        assert_eq!(status.code(), Code::InvalidArgument);
        let violations = status
            .get_details_bad_request()
            .expect("bad request detail")
            .field_violations;
        assert_eq!(violations[0].field, "user_id");
        assert_eq!(
            status.get_details_error_info().expect("error info").reason,
            "INVALID_ARGUMENT"
        );
    }

    #[test]
    fn an_internal_error_does_not_leak_its_cause() {
        let status = Status::from(Error::Internal(anyhow::anyhow!(
            "password=hunter2 at db.internal"
        )));
        assert_eq!(status.code(), Code::Internal);
        assert!(!status.message().contains("hunter2"));
        assert_eq!(status.message(), "internal error");
    }

    #[test]
    fn a_rate_limited_call_says_when_to_retry() {
        let status = Status::from(Error::RateLimited {
            setting: "SESSIOND_CREATE_RATE_PER_USER",
            retry_after: std::time::Duration::from_millis(1500),
        });
        assert_eq!(status.code(), Code::ResourceExhausted);
        assert_eq!(
            status.get_details_error_info().expect("error info").reason,
            "RATE_LIMITED"
        );
        assert_eq!(
            status
                .get_details_retry_info()
                .expect("retry info")
                .retry_delay,
            Some(std::time::Duration::from_millis(1500))
        );
        assert!(status.message().contains("SESSIOND_CREATE_RATE_PER_USER"));
    }

    #[test]
    fn each_error_has_its_code() {
        let cases = [
            (Error::SessionNotFound, Code::NotFound),
            (Error::CallerUnidentified, Code::Unauthenticated),
            (
                Error::CallerNotAllowed {
                    caller: "edge".into(),
                    method: "CreateSession".into(),
                },
                Code::PermissionDenied,
            ),
            (
                Error::RefreshRefused(Refusal::RefreshTokenReused),
                Code::Unauthenticated,
            ),
            (
                Error::SessionLimitReached { limit: 3 },
                Code::ResourceExhausted,
            ),
            (
                Error::Overloaded {
                    setting: "SESSIOND_MAX_CALLS_IN_FLIGHT",
                },
                Code::ResourceExhausted,
            ),
            (
                Error::StoreUnavailable(std::sync::Arc::new(std::io::Error::other("down"))),
                Code::Unavailable,
            ),
            (Error::CacheUnavailable, Code::Unavailable),
        ];
        for (error, code) in cases {
            assert_eq!(Status::from(error).code(), code);
        }
    }
}
