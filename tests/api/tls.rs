//! gRPC over TLS and mutual TLS: who may connect, the client certificate naming the caller, the
//! plaintext health-only probe port, and a renewed certificate served without a restart or a
//! dropped call (reread on the reload interval here; on SIGHUP in `tests/lifecycle.rs`).

use std::time::Duration;

use sessiond::api::pb::session_service_client::SessionServiceClient;
use tonic::{Code, transport::Channel};
use tonic_health::pb::health_check_response::ServingStatus;

use crate::support::{
    app::{Store, TestApp, spawn_app_with},
    callers::CallersFile,
    channel,
    rpc::{self, create_request},
    tls::{Ca, Pair, TlsFiles, health, serves, tls_channel},
};

const GATEWAY: &str = "spiffe://cluster.local/ns/edge/sa/gateway";

/// sessiond over TLS from `files`; requiring client certificates of `files`' client CA if
/// `mutual`; with `callers` (open mode without).
async fn spawn_tls(files: &TlsFiles, mutual: bool, callers: Option<&CallersFile>) -> TestApp {
    spawn_app_with(Store::Sqlite, |settings| {
        settings.tls_cert_file = Some(files.cert());
        settings.tls_key_file = Some(files.key());
        settings.tls_client_ca_file = mutual.then(|| files.client_ca());
        settings.callers_file = callers.map(CallersFile::path);
        settings.probe_addr = "127.0.0.1:0".parse().unwrap();
        settings.key_reload_interval = Duration::from_millis(100);
    })
    .await
}

/// The code a `Validate` by a client presenting `identity` fails with (`Unavailable` when it
/// cannot connect); `None` when it is served.
async fn validate_code(app: &TestApp, ca: &Ca, identity: Option<&Pair>) -> Option<Code> {
    let channel = match tls_channel(app.addr, &ca.pem(), identity).await {
        Ok(channel) => channel,
        // TLS 1.2 refuses a client certificate before the client's handshake ends.
        Err(_) => return Some(Code::Unavailable),
    };
    let mut client = SessionServiceClient::new(channel);
    rpc::try_validate(&mut client, "not-a-token")
        .await
        .err()
        .map(|status| status.code())
}

#[tokio::test]
async fn over_tls_a_client_trusting_the_ca_is_served_and_a_plaintext_one_is_not() {
    let ca = Ca::new();
    let files = TlsFiles::new(&ca.server(), None);
    let app = spawn_tls(&files, false, None).await;

    let secure = tls_channel(app.addr, &ca.pem(), None)
        .await
        .expect("connects");
    assert_eq!(
        health(secure.clone()).await.unwrap(),
        ServingStatus::Serving
    );
    rpc::try_validate(&mut SessionServiceClient::new(secure), "not-a-token")
        .await
        .expect("Validate is served over TLS");

    let plaintext = Channel::from_shared(format!("http://{}", app.addr))
        .unwrap()
        .connect_lazy();
    assert!(health(plaintext).await.is_err(), "h2c on the TLS port");
    assert!(
        !serves(app.addr, &Ca::new().pem()).await,
        "a client that does not trust the server's CA was served"
    );
}

#[tokio::test]
async fn with_a_client_ca_only_its_certificates_connect_and_the_spiffe_id_names_the_caller() {
    let ca = Ca::new();
    let files = TlsFiles::new(&ca.server(), Some(&ca));
    let callers = CallersFile::new(&format!(
        "[[caller]]\nname = \"edge-gateway\"\nspiffe_id = \"{GATEWAY}\"\nallow = [\"Validate\"]\n"
    ));
    let app = spawn_tls(&files, true, Some(&callers)).await;

    let gateway = ca.client(GATEWAY);
    assert_eq!(validate_code(&app, &ca, Some(&gateway)).await, None);
    let mut client = SessionServiceClient::new(
        tls_channel(app.addr, &ca.pem(), Some(&gateway))
            .await
            .expect("connects"),
    );
    let refused = client
        .create_session(create_request("ada", "d"))
        .await
        .expect_err("the gateway may only validate");
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");

    // A certificate of the CA that the callers file does not name: connected, but nobody.
    let unnamed = ca.client("spiffe://cluster.local/ns/edge/sa/other");
    assert_eq!(
        validate_code(&app, &ca, Some(&unnamed)).await,
        Some(Code::Unauthenticated)
    );
    // No certificate, or one of another CA: no connection at all.
    let other_ca = Ca::new();
    for identity in [None, Some(&other_ca.client(GATEWAY))] {
        let code = validate_code(&app, &ca, identity).await;
        assert!(
            matches!(code, Some(Code::Unavailable | Code::Unknown)),
            "presenting {:?}: {code:?}",
            identity.map(|_| "another CA's certificate")
        );
    }
}

#[tokio::test]
async fn the_probe_port_serves_health_in_plaintext_and_nothing_else() {
    let ca = Ca::new();
    let files = TlsFiles::new(&ca.server(), Some(&ca));
    let app = spawn_tls(&files, true, None).await;
    let probe_addr = app.probe_addr.expect("TLS is on: a probe port");

    assert_eq!(
        health(channel(probe_addr).await).await.unwrap(),
        ServingStatus::Serving
    );
    let mut session_service = SessionServiceClient::new(channel(probe_addr).await);
    let status = rpc::try_validate(&mut session_service, "not-a-token")
        .await
        .expect_err("SessionService is not served on the probe port");
    assert_eq!(status.code(), Code::Unimplemented, "{status:?}");
}

#[tokio::test]
async fn a_renewed_certificate_is_served_without_a_restart_and_a_broken_one_keeps_it() {
    let first = Ca::new();
    let files = TlsFiles::new(&first.server(), None);
    let app = spawn_tls(&files, false, None).await;
    assert!(serves(app.addr, &first.pem()).await);
    // A connection made before the renewal, with calls going on it throughout.
    let open = tls_channel(app.addr, &first.pem(), None)
        .await
        .expect("connects");
    let calls_on_open = {
        let open = open.clone();
        tokio::spawn(async move {
            let mut failures = 0;
            for _ in 0..100 {
                if health(open.clone()).await.is_err() {
                    failures += 1;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            failures
        })
    };

    let renewed = Ca::new();
    files.replace(&renewed.server());
    let mut served = false;
    for _ in 0..100 {
        if serves(app.addr, &renewed.pem()).await {
            served = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(served, "the renewed certificate was not served");
    assert_eq!(
        calls_on_open.await.unwrap(),
        0,
        "calls on a connection made before the renewal failed"
    );
    assert!(
        health(open).await.is_ok(),
        "the open connection was dropped"
    );
    assert!(
        !serves(app.addr, &first.pem()).await,
        "new connections still get the old one"
    );

    files.write("tls.crt", "not a certificate");
    // Several reload intervals pass: the pair read last stays.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(serves(app.addr, &renewed.pem()).await);
}
