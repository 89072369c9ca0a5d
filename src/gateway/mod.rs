//! Sessions checked at the edge, so that a proxy passes only requests of live sessions on, with the
//! user and session in headers:
//! - `envoy`: Envoy's external authorization, `envoy.service.auth.v3.Authorization/Check`, on the
//!   gRPC port (behind the callers policy, as permission `ExtAuthz`);
//! - `forward_auth`: `/auth/verify` for nginx `auth_request`, Caddy `forward_auth` and Traefik
//!   `ForwardAuth`, on a port of its own (`SESSIOND_FORWARD_AUTH_ADDR`).
//!
//! Both read the credential the same way ([`Gateway::credential`]), decide exactly as Validate
//! does ([`Gateway::decide`]: the same tiers, the same refusals), and answer with the same header
//! contract: the user and session headers on an allowed request, which overwrite any of the same
//! name the client sent; `401` with an RFC 6750 `WWW-Authenticate` on a refused one; `503` when
//! the store cannot say.

pub mod envoy;
pub mod forward_auth;

use std::{
    str::FromStr,
    sync::Arc,
    time::{Duration, Instant},
};

use http::HeaderName;
use tonic::Code;

use crate::{
    authority::{Authority, Verdict},
    config::Settings,
    domain::{SessionId, UserId},
    error::Refusal,
    metrics::{self, Rpc, RpcCalls},
};

/// How the gateways read a credential and name what they pass on (`SESSIOND_EXT_AUTHZ_*`).
#[derive(Debug, Clone)]
pub struct GatewaySettings {
    /// The cookie that carries the access token when no `authorization: Bearer` header does.
    pub cookie: Option<String>,
    pub user_header: HeaderName,
    pub session_header: HeaderName,
    /// Whether Envoy removes the credential before the request goes upstream.
    pub strip_credential: bool,
}

impl GatewaySettings {
    /// The gateway settings of `settings`; the error names the setting at fault.
    pub fn from_settings(settings: &Settings) -> Result<Self, String> {
        let header = |name: &str, value: &str| {
            let header = HeaderName::from_str(value)
                .map_err(|_| format!("{name} {value:?} is not an HTTP header name"))?;
            // Overwriting a header the proxy or the upstream reads for something else (the
            // credential itself, the host, the framing) would break the request or open a hole.
            if is_reserved(&header) {
                return Err(format!(
                    "{name} {value:?} names a header proxies and upstreams read themselves; choose \
                     a name of your own, such as x-sessiond-user-id"
                ));
            }
            Ok(header)
        };
        let user_header = header(
            "SESSIOND_EXT_AUTHZ_USER_HEADER",
            &settings.ext_authz_user_header,
        )?;
        let session_header = header(
            "SESSIOND_EXT_AUTHZ_SESSION_HEADER",
            &settings.ext_authz_session_header,
        )?;
        if user_header == session_header {
            return Err(
                "SESSIOND_EXT_AUTHZ_USER_HEADER and SESSIOND_EXT_AUTHZ_SESSION_HEADER must differ"
                    .into(),
            );
        }
        if let Some(cookie) = &settings.ext_authz_cookie
            && (cookie.is_empty() || !cookie.bytes().all(is_cookie_name_byte))
        {
            return Err(format!(
                "SESSIOND_EXT_AUTHZ_COOKIE {cookie:?} is not a cookie name (RFC 6265 token)"
            ));
        }
        Ok(Self {
            cookie: settings.ext_authz_cookie.clone(),
            user_header,
            session_header,
            strip_credential: settings.ext_authz_strip_credential,
        })
    }
}

fn is_reserved(header: &HeaderName) -> bool {
    use http::header;
    let reserved = [
        header::AUTHORIZATION,
        header::COOKIE,
        header::HOST,
        header::CONTENT_LENGTH,
        header::TRANSFER_ENCODING,
        header::CONNECTION,
        header::UPGRADE,
        header::TE,
        header::PROXY_AUTHORIZATION,
    ];
    reserved.contains(header) || header.as_str().starts_with(':')
}

/// RFC 6265 `token` characters (RFC 7230 tchar).
fn is_cookie_name_byte(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&byte)
}

/// Where a request's credential was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Authorization,
    Cookie,
}

/// A request's credential: the access token and where it was.
#[derive(Clone, Copy)]
pub struct Credential<'a> {
    pub token: &'a str,
    pub source: Source,
}

/// What a gateway answers.
#[derive(Debug)]
pub enum Decision {
    /// A live session: pass the request on, with these.
    Allow {
        user_id: UserId,
        session_id: SessionId,
    },
    /// No credential, or one Validate refuses.
    Deny(Denial),
    /// The store could not say (Validate's UNAVAILABLE).
    Unavailable,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denial {
    /// The request carried no credential.
    Missing,
    Refused(Refusal),
}

impl Denial {
    /// The `WWW-Authenticate` of a 401 (RFC 6750 §3): a request without a credential gets the
    /// bare challenge; a refused one `invalid_token`, with the refusal's name. Never the token.
    pub fn challenge(self) -> String {
        match self {
            Self::Missing => r#"Bearer realm="sessiond""#.to_owned(),
            Self::Refused(refusal) => format!(
                r#"Bearer realm="sessiond", error="invalid_token", error_description="{}""#,
                refusal.code().to_ascii_lowercase().replace('_', " ")
            ),
        }
    }
}

/// The `Retry-After` of a `503`, in seconds: the store is retried at every request anyway.
pub const RETRY_AFTER_SECONDS: &str = "1";

/// What both gateways share: how to read a credential, and the authority that decides.
pub struct Gateway {
    authority: Arc<Authority>,
    settings: GatewaySettings,
    /// How long a decision may take (`SESSIOND_REQUEST_TIMEOUT`): past it, the store is taken
    /// for unavailable.
    deadline: Duration,
}

impl Gateway {
    pub fn new(authority: Arc<Authority>, settings: GatewaySettings, deadline: Duration) -> Self {
        Self {
            authority,
            settings,
            deadline,
        }
    }

    pub fn settings(&self) -> &GatewaySettings {
        &self.settings
    }

    /// The credential of a request with these headers (see [`credential`]).
    pub fn credential<'a>(
        &self,
        authorization: Option<&'a str>,
        cookies: impl IntoIterator<Item = &'a str>,
    ) -> Option<Credential<'a>> {
        credential(&self.settings, authorization, cookies)
    }

    /// Decides on `credential` as Validate would, and counts the call under `method` with the
    /// code the decision stands for (OK, UNAUTHENTICATED, UNAVAILABLE). Any failure of Validate
    /// is logged as the gRPC adapter logs it, and answered as the store's absence: the caller, a
    /// proxy, can only retry or fail the request either way.
    pub async fn decide(
        &self,
        calls: &RpcCalls,
        method: Rpc,
        credential: Option<Credential<'_>>,
    ) -> Decision {
        let started = Instant::now();
        let decision = match credential {
            None => Decision::Deny(Denial::Missing),
            Some(credential) => {
                match tokio::time::timeout(self.deadline, self.authority.validate(credential.token))
                    .await
                {
                    Ok(Ok(Verdict::Valid(session))) => Decision::Allow {
                        user_id: session.user_id.clone(),
                        session_id: session.id,
                    },
                    Ok(Ok(Verdict::Refused(refusal))) => Decision::Deny(Denial::Refused(refusal)),
                    Ok(Err(error)) => {
                        crate::api::note_failure(method, &error);
                        Decision::Unavailable
                    }
                    Err(_elapsed) => {
                        tracing::warn!(
                            rpc = method.name(),
                            "no decision within SESSIOND_REQUEST_TIMEOUT"
                        );
                        Decision::Unavailable
                    }
                }
            }
        };
        let code = match decision {
            Decision::Allow { .. } => Code::Ok,
            Decision::Deny(_) => Code::Unauthenticated,
            Decision::Unavailable => Code::Unavailable,
        };
        metrics::rpc(calls, method, code, started.elapsed());
        decision
    }
}

/// The credential of a request with this `authorization` header and these `cookie` headers: a
/// Bearer token, or else the value of the configured cookie.
fn credential<'a>(
    settings: &GatewaySettings,
    authorization: Option<&'a str>,
    cookies: impl IntoIterator<Item = &'a str>,
) -> Option<Credential<'a>> {
    if let Some(token) = authorization.and_then(bearer) {
        return Some(Credential {
            token,
            source: Source::Authorization,
        });
    }
    let name = settings.cookie.as_deref()?;
    cookie_pairs(cookies).find_map(|(key, value)| {
        (key == name && !value.is_empty()).then_some(Credential {
            token: value.trim_matches('"'),
            source: Source::Cookie,
        })
    })
}

/// The `name=value` pairs of these `cookie` headers, in order.
fn cookie_pairs<'a>(
    headers: impl IntoIterator<Item = &'a str>,
) -> impl Iterator<Item = (&'a str, &'a str)> {
    headers
        .into_iter()
        .flat_map(|header| header.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
}

/// The token of an `authorization: Bearer <token>` header (the scheme in any case).
fn bearer(header: &str) -> Option<&str> {
    let (scheme, token) = header.split_at_checked(7)?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer ") && !token.is_empty()).then_some(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(cookie: Option<&str>) -> GatewaySettings {
        GatewaySettings {
            cookie: cookie.map(str::to_owned),
            user_header: HeaderName::from_static("x-sessiond-user-id"),
            session_header: HeaderName::from_static("x-sessiond-session-id"),
            strip_credential: false,
        }
    }

    fn read<'a>(
        settings: &GatewaySettings,
        authorization: Option<&'a str>,
        cookies: &[&'a str],
    ) -> Option<(&'a str, Source)> {
        credential(settings, authorization, cookies.iter().copied())
            .map(|credential| (credential.token, credential.source))
    }

    #[test]
    fn a_bearer_header_wins_over_the_cookie() {
        let settings = settings(Some("sid"));
        assert_eq!(
            read(&settings, Some("Bearer abc"), &["sid=def"]),
            Some(("abc", Source::Authorization))
        );
        assert_eq!(
            read(&settings, Some("bearer   abc "), &[]),
            Some(("abc", Source::Authorization))
        );
    }

    #[test]
    fn the_cookie_is_read_only_when_named() {
        let cookies = ["theme=dark; sid=tok.en.x", "other=1"];
        assert_eq!(
            read(&settings(Some("sid")), Some("Basic dXNlcg=="), &cookies),
            Some(("tok.en.x", Source::Cookie))
        );
        assert_eq!(read(&settings(None), None, &cookies), None);
        assert_eq!(read(&settings(Some("sid")), None, &["sid="]), None);
        assert_eq!(read(&settings(Some("sid")), None, &["xsid=1"]), None);
    }

    #[test]
    fn a_challenge_names_the_refusal_and_never_the_token() {
        assert_eq!(Denial::Missing.challenge(), r#"Bearer realm="sessiond""#);
        assert_eq!(
            Denial::Refused(Refusal::SessionRevoked).challenge(),
            r#"Bearer realm="sessiond", error="invalid_token", error_description="session revoked""#
        );
    }

    #[test]
    fn settings_that_would_open_a_hole_are_refused_by_name() {
        use clap::Parser;
        let parse = |args: &[&str]| {
            let settings =
                Settings::try_parse_from(std::iter::once("sessiond").chain(args.iter().copied()))
                    .expect("parses");
            GatewaySettings::from_settings(&settings)
        };
        assert!(parse(&[]).is_ok());
        for (args, named) in [
            (
                &["--ext-authz-user-header", "Authorization"][..],
                "SESSIOND_EXT_AUTHZ_USER_HEADER",
            ),
            (
                &["--ext-authz-session-header", "x-sessiond-user-id"][..],
                "must differ",
            ),
            (
                &["--ext-authz-user-header", "not a header"][..],
                "not an HTTP header name",
            ),
            (
                &["--ext-authz-cookie", "sid;x"][..],
                "SESSIOND_EXT_AUTHZ_COOKIE",
            ),
        ] {
            let error = parse(args).expect_err("refused");
            assert!(error.contains(named), "{args:?}: {error}");
        }
    }

    #[test]
    fn reserved_header_names_are_refused() {
        for name in ["authorization", "cookie", "host"] {
            assert!(is_reserved(&HeaderName::from_static(name)), "{name}");
        }
        assert!(!is_reserved(&HeaderName::from_static("x-sessiond-user-id")));
    }
}
