//! `envoy.service.auth.v3.Authorization/Check`: Envoy's (and Istio's) external authorization,
//! served on the gRPC port. The callers policy admits it as permission `ExtAuthz`; Envoy presents
//! its client certificate, or an API key in the gRPC call's own `authorization` metadata, while
//! the credential checked here travels inside the message, among the client request's headers.
//!
//! - allowed: `OkHttpResponse` sets the user and session headers, overwriting any of the same
//!   name the client sent (`OVERWRITE_IF_EXISTS_OR_ADD`), and with
//!   `SESSIOND_EXT_AUTHZ_STRIP_CREDENTIAL` removes the credential before the request goes on;
//! - refused: `DeniedHttpResponse` 401 with an RFC 6750 `WWW-Authenticate`;
//! - the store cannot say: `error_response` 503, which Envoy counts as an authorization failure,
//!   so its `failure_mode_allow` decides, as the operator chose.

use std::sync::Arc;

use tonic::{Code, Request, Response, Status};

use self::pb::envoy::{
    config::core::v3::{HeaderValue, HeaderValueOption, header_value_option::HeaderAppendAction},
    service::auth::v3::{
        CheckRequest, CheckResponse, DeniedHttpResponse, OkHttpResponse,
        attribute_context::HttpRequest, authorization_server::Authorization,
        check_response::HttpResponse,
    },
    r#type::v3::{HttpStatus, StatusCode},
};
use super::{Credential, Decision, Gateway, RETRY_AFTER_SECONDS, Source, cookie_pairs};
use crate::{api::caller_of, metrics::Rpc};

/// Code generated from Envoy's protos (`proto/vendor/`) by `build.rs`.
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod pb {
    include!(concat!(env!("OUT_DIR"), "/envoy_includes.rs"));

    /// The encoded descriptors of Envoy's external authorization API, served by reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("envoy_descriptor");
}

pub use pb::envoy::service::auth::v3::authorization_server::AuthorizationServer;

/// The `Authorization` service.
pub struct ExtAuthzApi {
    gateway: Arc<Gateway>,
}

impl ExtAuthzApi {
    pub fn new(gateway: Arc<Gateway>) -> Self {
        Self { gateway }
    }
}

#[tonic::async_trait]
impl Authorization for ExtAuthzApi {
    #[tracing::instrument(name = "rpc.Check", skip_all)]
    async fn check(
        &self,
        request: Request<CheckRequest>,
    ) -> Result<Response<CheckResponse>, Status> {
        let caller = caller_of(&request);
        let check = request.into_inner();
        let http = check
            .attributes
            .as_ref()
            .and_then(|attributes| attributes.request.as_ref())
            .and_then(|request| request.http.as_ref());
        let cookies = http
            .map(|http| header_values(http, "cookie"))
            .unwrap_or_default();
        let credential = self.gateway.credential(
            http.and_then(|http| header_values(http, "authorization").into_iter().next()),
            cookies.iter().copied(),
        );
        let decision = self
            .gateway
            .decide(caller.calls(), Rpc::Check, credential)
            .await;
        Ok(Response::new(self.answer(decision, credential, &cookies)))
    }
}

impl ExtAuthzApi {
    fn answer(
        &self,
        decision: Decision,
        credential: Option<Credential<'_>>,
        cookies: &[&str],
    ) -> CheckResponse {
        let settings = self.gateway.settings();
        let (code, http_response) = match decision {
            Decision::Allow {
                user_id,
                session_id,
            } => {
                let mut ok = OkHttpResponse {
                    headers: vec![
                        overwrite(settings.user_header.as_str(), user_id.as_str()),
                        overwrite(settings.session_header.as_str(), &session_id.to_string()),
                    ],
                    ..OkHttpResponse::default()
                };
                if settings.strip_credential
                    && let Some(credential) = credential
                {
                    strip(
                        &mut ok,
                        credential.source,
                        cookies,
                        settings.cookie.as_deref(),
                    );
                }
                (Code::Ok, HttpResponse::OkResponse(ok))
            }
            Decision::Deny(denial) => (
                Code::Unauthenticated,
                HttpResponse::DeniedResponse(DeniedHttpResponse {
                    status: Some(HttpStatus {
                        code: StatusCode::Unauthorized.into(),
                    }),
                    headers: vec![
                        overwrite("www-authenticate", &denial.challenge()),
                        overwrite("cache-control", "no-store"),
                    ],
                    body: String::new(),
                }),
            ),
            Decision::Unavailable => (
                Code::Unavailable,
                HttpResponse::ErrorResponse(DeniedHttpResponse {
                    status: Some(HttpStatus {
                        code: StatusCode::ServiceUnavailable.into(),
                    }),
                    headers: vec![overwrite("retry-after", RETRY_AFTER_SECONDS)],
                    body: String::new(),
                }),
            ),
        };
        CheckResponse {
            status: Some(pb::google::rpc::Status {
                code: code as i32,
                ..Default::default()
            }),
            http_response: Some(http_response),
            dynamic_metadata: None,
        }
    }
}

/// Removes the credential from the request Envoy passes on: the `authorization` header, or the
/// session cookie alone (the others stay).
fn strip(ok: &mut OkHttpResponse, source: Source, cookies: &[&str], cookie: Option<&str>) {
    match (source, cookie) {
        (Source::Authorization, _) => ok.headers_to_remove.push("authorization".to_owned()),
        (Source::Cookie, Some(name)) => {
            let others: Vec<String> = cookie_pairs(cookies.iter().copied())
                .filter(|(key, _)| *key != name)
                .map(|(key, value)| format!("{key}={value}"))
                .collect();
            if others.is_empty() {
                ok.headers_to_remove.push("cookie".to_owned());
            } else {
                ok.headers.push(overwrite("cookie", &others.join("; ")));
            }
        }
        (Source::Cookie, None) => {}
    }
}

/// A header that replaces every value of its name in the request (or is added).
fn overwrite(key: &str, value: &str) -> HeaderValueOption {
    HeaderValueOption {
        header: Some(HeaderValue {
            key: key.to_owned(),
            value: value.to_owned(),
            ..HeaderValue::default()
        }),
        append_action: HeaderAppendAction::OverwriteIfExistsOrAdd.into(),
        ..HeaderValueOption::default()
    }
}

/// The values of header `name` (lower case) in the checked request: from `headers`, where Envoy
/// has merged repeated headers into one, or from `header_map` with `encode_raw_headers`.
fn header_values<'a>(http: &'a HttpRequest, name: &str) -> Vec<&'a str> {
    if let Some(value) = http.headers.get(name) {
        return vec![value.as_str()];
    }
    let Some(map) = &http.header_map else {
        return Vec::new();
    };
    map.headers
        .iter()
        .filter(|header| header.key.eq_ignore_ascii_case(name))
        .filter_map(|header| {
            if header.raw_value.is_empty() {
                Some(header.value.as_str())
            } else {
                std::str::from_utf8(&header.raw_value).ok()
            }
        })
        .collect()
}

/// The checked request's `Debug`: its shape, without what may carry a credential (header values,
/// the path with its query, the body).
impl std::fmt::Debug for HttpRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        const REDACTED: &str = "[redacted]";
        let mut names: Vec<&str> = self.headers.keys().map(String::as_str).collect();
        if let Some(map) = &self.header_map {
            names.extend(map.headers.iter().map(|header| header.key.as_str()));
        }
        f.debug_struct("HttpRequest")
            .field("id", &self.id)
            .field("method", &self.method)
            .field("header_names", &names)
            .field("path", &REDACTED)
            .field("host", &self.host)
            .field("scheme", &self.scheme)
            .field("protocol", &self.protocol)
            .field("size", &self.size)
            .field("body", &REDACTED)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    #[test]
    fn a_printed_request_shows_no_credential() {
        let http = HttpRequest {
            headers: HashMap::from([("authorization".into(), "Bearer eyJ.secret".into())]),
            path: "/x?token=eyJ.secret".into(),
            body: "password=hunter2".into(),
            ..HttpRequest::default()
        };
        let printed = format!("{http:?}");
        assert!(!printed.contains("secret"), "{printed}");
        assert!(!printed.contains("hunter2"), "{printed}");
        assert!(printed.contains("authorization"), "{printed}");
    }

    #[test]
    fn raw_headers_are_read_with_every_repeat() {
        use pb::envoy::config::core::v3::HeaderMap;
        let http = HttpRequest {
            header_map: Some(HeaderMap {
                headers: vec![
                    HeaderValue {
                        key: "cookie".into(),
                        raw_value: b"a=1".to_vec(),
                        ..HeaderValue::default()
                    },
                    HeaderValue {
                        key: "Cookie".into(),
                        raw_value: b"sid=t".to_vec(),
                        ..HeaderValue::default()
                    },
                ],
            }),
            ..HttpRequest::default()
        };
        assert_eq!(header_values(&http, "cookie"), ["a=1", "sid=t"]);
        assert!(header_values(&http, "authorization").is_empty());
    }

    #[test]
    fn stripping_the_cookie_keeps_the_others() {
        let mut ok = OkHttpResponse::default();
        strip(&mut ok, Source::Cookie, &["a=1; sid=t", "b=2"], Some("sid"));
        let header = ok.headers[0].header.as_ref().expect("a header");
        assert_eq!(
            (header.key.as_str(), header.value.as_str()),
            ("cookie", "a=1; b=2")
        );

        let mut alone = OkHttpResponse::default();
        strip(&mut alone, Source::Cookie, &["sid=t"], Some("sid"));
        assert_eq!(alone.headers_to_remove, ["cookie"]);

        let mut bearer = OkHttpResponse::default();
        strip(&mut bearer, Source::Authorization, &[], None);
        assert_eq!(bearer.headers_to_remove, ["authorization"]);
    }
}
