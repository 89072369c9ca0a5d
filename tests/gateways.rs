//! Real proxies in front of sessiond: nginx (`auth_request`) and Caddy (`forward_auth`), each
//! running its `deploy/gateway/` file, in front of an upstream that echoes what reached it.
//! (Envoy cannot be installed here: `tests/api/gateway.rs` holds its `Check` to the same cases.)

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::{Duration, Instant};

use support::{
    app::{Store, TestApp, spawn_app_with},
    http,
    proxies::{EchoUpstream, Kind, Proxy, echoed},
    rpc::token_and_id,
};

const USER_HEADER: &str = "x-sessiond-user-id";
const SESSION_HEADER: &str = "x-sessiond-session-id";

/// sessiond with its forward-auth port, the echoing upstream, and `kind` between them.
async fn gateway(kind: Kind) -> (TestApp, EchoUpstream, Proxy) {
    let app = spawn_app_with(Store::Postgres, |settings| {
        settings.forward_auth_addr = Some("127.0.0.1:0".parse().unwrap());
    })
    .await;
    let upstream = EchoUpstream::start().await;
    let proxy = Proxy::start(kind, app.forward_auth_addr.unwrap(), upstream.addr).await;
    (app, upstream, proxy)
}

async fn through(proxy: &Proxy, headers: &[(&str, &str)]) -> support::HttpAnswer {
    http(proxy.addr, "GET", "/orders?page=2", headers).await
}

/// Every case the issue names, through `kind`.
async fn a_proxy_passes_live_sessions_alone(kind: Kind) {
    let (app, upstream, proxy) = gateway(kind).await;
    let (token, session_id) = token_and_id(&app.create("ada", "phone").await);
    let bearer = format!("Bearer {token}");

    // A live session reaches the upstream with its user and session, over what the client sent.
    let allowed = through(
        &proxy,
        &[
            ("Authorization", &bearer),
            ("X-Sessiond-User-Id", "mallory"),
            ("X-Sessiond-Session-Id", "forged"),
        ],
    )
    .await;
    assert_eq!(allowed.status, 200, "{allowed:?}\n{}", proxy.log());
    assert_eq!(
        echoed(&allowed.body, USER_HEADER),
        ["ada"],
        "{}",
        allowed.body
    );
    assert_eq!(
        echoed(&allowed.body, SESSION_HEADER),
        [session_id.as_str()],
        "{}",
        allowed.body
    );
    assert_eq!(upstream.hits(), 1);

    // Refused ones get sessiond's 401 and never reach it.
    let (signed, _) = token.rsplit_once('.').unwrap();
    let tampered = format!("Bearer {signed}.{}", "A".repeat(86));
    for (headers, description) in [
        (vec![], None),
        (vec![("X-Sessiond-User-Id", "mallory")], None),
        (
            vec![("Authorization", "Bearer not-a-jwt")],
            Some("token malformed"),
        ),
        (
            vec![("Authorization", tampered.as_str())],
            Some("bad signature"),
        ),
    ] {
        let denied = through(&proxy, &headers).await;
        assert_eq!(denied.status, 401, "{headers:?}: {denied:?}");
        let challenge = denied.header("www-authenticate").unwrap_or_default();
        assert!(challenge.starts_with("Bearer"), "{headers:?}: {denied:?}");
        if let Some(description) = description {
            assert!(challenge.contains(description), "{challenge}");
        }
    }
    assert_eq!(
        upstream.hits(),
        1,
        "no refused request reached the upstream"
    );

    // A revocation is refused by the proxy within a second.
    app.revoke(&session_id).await;
    let revoked_at = Instant::now();
    loop {
        let answer = through(&proxy, &[("Authorization", &bearer)]).await;
        if answer.status == 401 {
            break;
        }
        assert!(
            revoked_at.elapsed() < Duration::from_secs(1),
            "still {} a second after the revocation",
            answer.status
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(upstream.hits(), 1);

    // An expired token.
    let (live, _) = token_and_id(&app.create("ada", "laptop").await);
    let live = format!("Bearer {live}");
    assert_eq!(
        through(&proxy, &[("Authorization", &live)]).await.status,
        200
    );
    app.advance(Duration::from_secs(16 * 60));
    let expired = through(&proxy, &[("Authorization", &live)]).await;
    assert_eq!(expired.status, 401, "{expired:?}");
    assert!(
        expired
            .header("www-authenticate")
            .is_some_and(|challenge| challenge.contains("token expired")),
        "{expired:?}"
    );
    assert_eq!(upstream.hits(), 2);
}

#[tokio::test]
async fn nginx_passes_live_sessions_alone() {
    a_proxy_passes_live_sessions_alone(Kind::Nginx).await;
}

#[tokio::test]
async fn caddy_passes_live_sessions_alone() {
    a_proxy_passes_live_sessions_alone(Kind::Caddy).await;
}
