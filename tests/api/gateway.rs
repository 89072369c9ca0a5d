//! The gateways through their real wire: Envoy's `Check` through a client generated from Envoy's
//! protos, and forward-auth over HTTP/1.1. (`tests/gateways.rs` puts real nginx and Caddy in
//! front.)

use std::{collections::HashMap, time::Duration};

use sessiond::gateway::envoy::pb::envoy::{
    config::core::v3::{HeaderValueOption, header_value_option::HeaderAppendAction},
    service::auth::v3::{
        AttributeContext, CheckRequest, CheckResponse, attribute_context,
        authorization_client::AuthorizationClient, check_response::HttpResponse,
    },
};
use tonic::Code;

use crate::{
    helpers::{parts, sign},
    support::{
        app::{Store, TestApp, spawn, spawn_app, spawn_app_with, test_settings},
        callers::{Bearer, CallersFile, key_caller, keyed_client},
        channel, http, http_get, metrics,
        rpc::{self, token_and_id, tokens},
        sum_samples,
    },
};

const USER_HEADER: &str = "x-sessiond-user-id";
const SESSION_HEADER: &str = "x-sessiond-session-id";

/// A Check of a request carrying `headers`, as Envoy sends it.
fn check_request(headers: &[(&str, &str)]) -> CheckRequest {
    CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(attribute_context::Request {
                http: Some(attribute_context::HttpRequest {
                    method: "GET".into(),
                    path: "/orders".into(),
                    host: "shop.example".into(),
                    headers: headers
                        .iter()
                        .map(|(name, value)| ((*name).to_owned(), (*value).to_owned()))
                        .collect(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
    }
}

async fn check(app: &TestApp, headers: &[(&str, &str)]) -> CheckResponse {
    AuthorizationClient::new(channel(app.addr).await)
        .check(check_request(headers))
        .await
        .expect("Check answers")
        .into_inner()
}

/// What a client presenting `key` sends with each call.
fn bearer_key(key: &str) -> Bearer {
    Bearer(format!("Bearer {key}").parse().unwrap())
}

/// The headers an allowed Check sets, as name → (value, how).
fn set_headers(options: &[HeaderValueOption]) -> HashMap<String, (String, HeaderAppendAction)> {
    options
        .iter()
        .map(|option| {
            let header = option.header.as_ref().expect("a header");
            (
                header.key.clone(),
                (header.value.clone(), option.append_action()),
            )
        })
        .collect()
}

/// The 401 a denied Check carries: its `WWW-Authenticate`.
fn denied_challenge(response: &CheckResponse) -> String {
    assert_eq!(
        response.status.as_ref().map(|status| status.code),
        Some(Code::Unauthenticated as i32)
    );
    let Some(HttpResponse::DeniedResponse(denied)) = &response.http_response else {
        panic!("a denied response: {response:?}");
    };
    assert_eq!(denied.status.as_ref().map(|status| status.code), Some(401));
    let headers = set_headers(&denied.headers);
    headers["www-authenticate"].0.clone()
}

async fn an_allowed_check_names_the_user_and_session_over_what_the_client_sent(store: Store) {
    let app = spawn_app(store).await;
    let (token, session_id) = token_and_id(&app.create("ada", "phone").await);
    let bearer = format!("Bearer {token}");

    let response = check(
        &app,
        &[
            ("authorization", &bearer),
            // A client trying to pass as another user.
            (USER_HEADER, "mallory"),
            (SESSION_HEADER, "forged"),
        ],
    )
    .await;

    assert_eq!(response.status.as_ref().map(|status| status.code), Some(0));
    let Some(HttpResponse::OkResponse(ok)) = &response.http_response else {
        panic!("an ok response: {response:?}");
    };
    let set = set_headers(&ok.headers);
    let overwrite = HeaderAppendAction::OverwriteIfExistsOrAdd;
    assert_eq!(set[USER_HEADER], ("ada".to_owned(), overwrite));
    assert_eq!(set[SESSION_HEADER], (session_id, overwrite));
    assert!(
        ok.headers_to_remove.is_empty(),
        "the credential stays unless asked"
    );
}

async fn every_bad_credential_is_denied_with_its_reason(store: Store) {
    let app = spawn_app(store).await;
    let (token, session_id) = token_and_id(&app.create("bea", "phone").await);
    let (header, claims) = parts(&token);
    let mut tampered_claims = claims.clone();
    tampered_claims["sub"] = "mallory".into();
    let (signed, _) = token.rsplit_once('.').expect("a JWT");
    let tampered = format!("{}.{}", signed, "A".repeat(86));
    let forged = sign(
        &header,
        &tampered_claims,
        &ed25519_dalek::SigningKey::from_bytes(&[7; 32]),
    );

    assert_eq!(
        denied_challenge(&check(&app, &[]).await),
        r#"Bearer realm="sessiond""#,
        "no credential: the bare challenge (RFC 6750 3.1)"
    );
    let invalid = |description: &str| {
        format!(
            r#"Bearer realm="sessiond", error="invalid_token", error_description="{description}""#
        )
    };
    for (credential, description) in [
        ("Bearer not-a-jwt".to_owned(), "token malformed"),
        (format!("Bearer {tampered}"), "bad signature"),
        (format!("Bearer {forged}"), "bad signature"),
    ] {
        let challenge = denied_challenge(&check(&app, &[("authorization", &credential)]).await);
        assert_eq!(challenge, invalid(description), "{description}");
        assert!(!challenge.contains(&token));
    }

    app.revoke(&session_id).await;
    let bearer = format!("Bearer {token}");
    assert_eq!(
        denied_challenge(&check(&app, &[("authorization", &bearer)]).await),
        invalid("session revoked")
    );

    let (live, _) = token_and_id(&app.create("bea", "laptop").await);
    app.advance(Duration::from_secs(16 * 60));
    let bearer = format!("Bearer {live}");
    assert_eq!(
        denied_challenge(&check(&app, &[("authorization", &bearer)]).await),
        invalid("token expired")
    );
}

on_every_store!(
    an_allowed_check_names_the_user_and_session_over_what_the_client_sent,
    every_bad_credential_is_denied_with_its_reason,
);

#[tokio::test]
async fn the_cookie_carries_the_token_and_is_stripped_alone() {
    let app = spawn_app_with(Store::Postgres, |settings| {
        settings.ext_authz_cookie = Some("sid".into());
        settings.ext_authz_strip_credential = true;
    })
    .await;
    let (token, _) = token_and_id(&app.create("cy", "phone").await);
    let cookie = format!("theme=dark; sid={token}; lang=en");

    let response = check(&app, &[("cookie", &cookie)]).await;

    let Some(HttpResponse::OkResponse(ok)) = &response.http_response else {
        panic!("an ok response: {response:?}");
    };
    let set = set_headers(&ok.headers);
    assert_eq!(set[USER_HEADER].0, "cy");
    assert_eq!(
        set["cookie"],
        (
            "theme=dark; lang=en".to_owned(),
            HeaderAppendAction::OverwriteIfExistsOrAdd
        ),
        "the other cookies go on"
    );

    let bearer = format!("Bearer {token}");
    let response = check(&app, &[("authorization", &bearer)]).await;
    let Some(HttpResponse::OkResponse(ok)) = &response.http_response else {
        panic!("an ok response: {response:?}");
    };
    assert_eq!(ok.headers_to_remove, ["authorization"]);
}

/// With the store unreachable and the session in no cache, the answer is Envoy's error response
/// (503), which its `failure_mode_allow` decides on, never an allow.
#[tokio::test]
async fn the_store_unreachable_is_an_error_response_503() {
    let working = spawn_app(Store::Postgres).await;
    let (token, _) = token_and_id(&working.create("dee", "phone").await);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead = listener.local_addr().unwrap();
    drop(listener);
    let mut settings = test_settings(&format!("postgres://postgres@{dead}/postgres"));
    settings.database_timeout = Duration::from_millis(300);
    settings.forward_auth_addr = Some("127.0.0.1:0".parse().unwrap());
    let app = spawn(settings, None).await;
    // The same claims, signed by this replica's key (named as its JWKS names it).
    let (mut header, claims) = parts(&token);
    let (_, jwks) = http_get(app.ops_addr, "/.well-known/jwks.json").await;
    let jwks: serde_json::Value = serde_json::from_str(&jwks).unwrap();
    header["kid"] = jwks["keys"][0]["kid"].clone();
    let bearer = format!("Bearer {}", sign(&header, &claims, &app.signing_key));

    let response = check(&app, &[("authorization", &bearer)]).await;

    assert_eq!(
        response.status.as_ref().map(|status| status.code),
        Some(Code::Unavailable as i32)
    );
    let Some(HttpResponse::ErrorResponse(error)) = &response.http_response else {
        panic!("an error response: {response:?}");
    };
    assert_eq!(error.status.as_ref().map(|status| status.code), Some(503));

    let verify = http(
        app.forward_auth_addr.unwrap(),
        "GET",
        "/auth/verify",
        &[("authorization", &bearer)],
    )
    .await;
    assert_eq!(verify.status, 503, "{verify:?}");
    assert_eq!(verify.header("retry-after"), Some("1"));
    assert_eq!(verify.header(USER_HEADER), None);
}

#[tokio::test]
async fn check_needs_the_ext_authz_permission() {
    let file = CallersFile::new(&format!(
        "{}\n{}",
        key_caller("envoy", "envoy-key", r#""ExtAuthz""#),
        key_caller("backend", "backend-key", r#""*""#)
    ));
    let app = spawn_app_with(Store::Postgres, |settings| {
        settings.callers_file = Some(file.path());
    })
    .await;
    let channel = channel(app.addr).await;
    let created = keyed_client(channel.clone(), "backend-key")
        .create_session(rpc::create_request("fay", ""))
        .await
        .expect("the backend creates")
        .into_inner();
    let bearer = format!("Bearer {}", tokens(&created.tokens).0);
    let request = || check_request(&[("authorization", &bearer)]);

    let allowed = AuthorizationClient::with_interceptor(channel.clone(), bearer_key("envoy-key"))
        .check(request())
        .await
        .expect("envoy may Check");
    assert!(matches!(
        allowed.into_inner().http_response,
        Some(HttpResponse::OkResponse(_))
    ));

    let refused = AuthorizationClient::with_interceptor(channel.clone(), bearer_key("backend-key"))
        .check(request())
        .await
        .expect_err("* is SessionService alone");
    assert_eq!(refused.code(), Code::PermissionDenied);
    let nobody = AuthorizationClient::new(channel)
        .check(request())
        .await
        .expect_err("no identity");
    assert_eq!(nobody.code(), Code::Unauthenticated);

    let text = metrics(app.ops_addr).await;
    let counted = |caller: &str, code: &str| {
        sum_samples(
            &text,
            "sessiond_rpc_requests_total",
            &[("method", "Check"), ("caller", caller), ("code", code)],
        )
    };
    assert!(counted("envoy", "Ok") >= 1.0, "{text}");
    assert!(counted("backend", "PermissionDenied") >= 1.0, "{text}");
}

#[tokio::test]
async fn forward_auth_answers_verify_alone() {
    let app = spawn_app_with(Store::Postgres, |settings| {
        settings.forward_auth_addr = Some("127.0.0.1:0".parse().unwrap());
        settings.ext_authz_cookie = Some("sid".into());
    })
    .await;
    let port = app.forward_auth_addr.expect("forward-auth is on");
    let (token, session_id) = token_and_id(&app.create("eve", "phone").await);
    let bearer = format!("Bearer {token}");

    for method in ["GET", "POST", "DELETE"] {
        let allowed = http(port, method, "/auth/verify", &[("authorization", &bearer)]).await;
        assert_eq!(allowed.status, 200, "{method}: {allowed:?}");
        assert_eq!(allowed.header(USER_HEADER), Some("eve"));
        assert_eq!(allowed.header(SESSION_HEADER), Some(session_id.as_str()));
        assert_eq!(allowed.header("cache-control"), Some("no-store"));
    }
    let cookie = format!("sid={token}");
    let by_cookie = http(port, "GET", "/auth/verify", &[("cookie", &cookie)]).await;
    assert_eq!(by_cookie.header(USER_HEADER), Some("eve"));

    let missing = http(port, "GET", "/auth/verify", &[]).await;
    assert_eq!(missing.status, 401);
    assert_eq!(
        missing.header("www-authenticate"),
        Some(r#"Bearer realm="sessiond""#)
    );

    app.revoke(&session_id).await;
    let revoked = http(port, "GET", "/auth/verify", &[("authorization", &bearer)]).await;
    assert_eq!(revoked.status, 401);
    let challenge = revoked.header("www-authenticate").unwrap_or_default();
    assert!(
        challenge.contains(r#"error_description="session revoked""#),
        "{challenge}"
    );
    assert!(!challenge.contains(&token));
    assert_eq!(revoked.header(USER_HEADER), None);

    for path in ["/metrics", "/.well-known/jwks.json", "/auth/verify/x", "/"] {
        assert_eq!(http(port, "GET", path, &[]).await.status, 404, "{path}");
    }
    let text = metrics(app.ops_addr).await;
    assert!(
        sum_samples(
            &text,
            "sessiond_rpc_requests_total",
            &[("method", "ForwardAuth"), ("code", "Unauthenticated")]
        ) >= 2.0,
        "{text}"
    );
}

/// A Check carries the client's headers, so it has a bound of its own, above SessionService's.
#[tokio::test]
async fn a_check_has_its_own_size_bound() {
    let app = spawn_app(Store::Sqlite).await;
    let (token, _) = token_and_id(&app.create("gus", "phone").await);
    let bearer = format!("Bearer {token}");
    let cookies_20k = "c=".to_owned() + &"x".repeat(20 * 1024);
    let within = check(
        &app,
        &[("authorization", &bearer), ("cookie", &cookies_20k)],
    )
    .await;
    assert!(
        matches!(within.http_response, Some(HttpResponse::OkResponse(_))),
        "20 KB of headers is over SESSIOND_MAX_REQUEST_BYTES but within Check's bound"
    );

    let cookies_100k = "c=".to_owned() + &"x".repeat(100 * 1024);
    let refused = AuthorizationClient::new(channel(app.addr).await)
        .check(check_request(&[
            ("authorization", &bearer),
            ("cookie", &cookies_100k),
        ]))
        .await
        .expect_err("over the bound");
    assert_eq!(refused.code(), Code::ResourceExhausted);
    assert!(
        refused
            .message()
            .contains("SESSIOND_EXT_AUTHZ_MAX_REQUEST_BYTES"),
        "{}",
        refused.message()
    );
}
