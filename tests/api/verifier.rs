//! `sessiond-verifier` against a real sessiond (in process, on port 0): a token verifies locally;
//! a revocation, a sign-out everywhere and a removed signing key reach it through
//! WatchRevocations; and with the stream cut past its staleness bound it fails closed.

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use clap::Parser;
use sessiond::{
    api::pb::{self, RevocationKind},
    config::Settings,
};
use sessiond_verifier::{Verifier, VerifyError};
use tokio::{net::TcpListener, task::JoinHandle};
use tokio_stream::StreamExt;

use crate::support::{
    app::{Store, TestApp, spawn_app, spawn_app_with},
    keys::write_new_signing_key,
    rpc::tokens,
};

/// The requirement: a revocation is refused by a verifier within this.
const REFUSAL_BOUND: Duration = Duration::from_secs(1);

/// A verifier of `app`'s tokens, reaching its gRPC port at `grpc` (the app's own, or a proxy's),
/// synced.
async fn verifier(app: &TestApp, grpc: SocketAddr, staleness: Duration) -> Verifier {
    let defaults = Settings::parse_from(["sessiond"]);
    let verifier = Verifier::builder(
        format!("http://{grpc}"),
        format!("http://{}/.well-known/jwks.json", app.ops_addr),
    )
    .issuer(defaults.issuer)
    .audience(defaults.audience)
    .staleness(staleness)
    .start()
    .await
    .unwrap();
    verifier
        .wait_synced(Duration::from_secs(10))
        .await
        .expect("synced with sessiond's revocation stream");
    verifier
}

/// Polls the verifier until `token` is refused: how long that took. Panics after `within`.
async fn until_refused(
    verifier: &Verifier,
    token: &str,
    within: Duration,
) -> (Duration, VerifyError) {
    let started = Instant::now();
    loop {
        match verifier.verify_local(token) {
            Err(refused) => return (started.elapsed(), refused),
            Ok(_) => {
                assert!(
                    started.elapsed() < within,
                    "still accepted after {within:?}"
                );
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    }
}

#[tokio::test]
async fn a_token_verifies_locally_and_is_refused_within_a_second_of_its_revocation() {
    let app = spawn_app(Store::Postgres).await;
    let verifier = verifier(&app, app.addr, Duration::from_secs(10)).await;
    let created = app.create("vera", "phone").await;
    let (access, _) = tokens(&created.tokens);
    let session = created.session.unwrap();

    let verified = verifier.verify_local(&access).expect("verifies locally");
    assert_eq!(verified.user_id, "vera");
    assert_eq!(verified.session_id.to_string(), session.session_id);

    let revoked_at = Instant::now();
    app.revoke(&session.session_id).await;
    let acknowledged = revoked_at.elapsed();
    let (after_ack, refused) = until_refused(&verifier, &access, Duration::from_secs(5)).await;
    println!(
        "refused by the verifier {after_ack:?} after RevokeSession answered ({acknowledged:?})"
    );
    assert_eq!(refused, VerifyError::Revoked);
    assert!(after_ack < REFUSAL_BOUND, "{after_ack:?}");
}

#[tokio::test]
async fn a_sign_out_everywhere_refuses_the_sessions_before_it_and_not_after() {
    let app = spawn_app(Store::Sqlite).await;
    let verifier = verifier(&app, app.addr, Duration::from_secs(10)).await;
    let (before, _) = tokens(&app.create("walt", "phone").await.tokens);
    assert!(verifier.verify_local(&before).is_ok());

    assert_eq!(app.revoke_user("walt", "").await.unwrap(), 1);
    let (_, refused) = until_refused(&verifier, &before, Duration::from_secs(5)).await;
    assert_eq!(refused, VerifyError::Revoked);
    app.advance(Duration::from_millis(1));
    let (after, _) = tokens(&app.create("walt", "laptop").await.tokens);
    assert!(
        verifier.verify_local(&after).is_ok(),
        "a session started after it"
    );
}

#[tokio::test]
async fn a_removed_signing_keys_tokens_are_refused() {
    let keys = tempfile::tempdir().unwrap();
    write_new_signing_key(&keys.path().join("0001.pem"));
    let dir = keys.path().to_owned();
    let app = spawn_app_with(Store::Sqlite, |settings| {
        settings.signing_keys_dir = Some(dir);
        settings.key_reload_interval = Duration::from_millis(50);
    })
    .await;
    let verifier = verifier(&app, app.addr, Duration::from_secs(10)).await;
    let (old, _) = tokens(&app.create("kim", "old").await.tokens);
    assert!(verifier.verify_local(&old).is_ok());

    write_new_signing_key(&keys.path().join("0002.pem"));
    tokio::time::sleep(Duration::from_millis(300)).await;
    std::fs::remove_file(keys.path().join("0001.pem")).unwrap();
    let (_, refused) = until_refused(&verifier, &old, Duration::from_secs(5)).await;
    assert!(
        matches!(refused, VerifyError::Revoked | VerifyError::BadSignature),
        "{refused:?}"
    );
    // The removal is logged, for every verifier (in the background of the reload: poll).
    let mut logged = false;
    for _ in 0..50 {
        logged = snapshot(&app).await.iter().any(|event| {
            event.kind() == RevocationKind::SigningKeyRemoved && !event.key_id.is_empty()
        });
        if logged {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(logged, "no SIGNING_KEY_REMOVED event");
    let (new, _) = tokens(&app.create("kim", "new").await.tokens);
    let started = Instant::now();
    while verifier.verify_local(&new).is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the new key is fetched"
        );
        let _ = verifier.verify(&new).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// What WatchRevocations replays from an empty cursor, up to its first heartbeat.
async fn snapshot(app: &TestApp) -> Vec<pb::RevocationEvent> {
    app.client
        .clone()
        .watch_revocations(pb::WatchRevocationsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .take_while(|event| {
            event
                .as_ref()
                .is_ok_and(|event| event.kind() != RevocationKind::Heartbeat)
        })
        .filter_map(Result::ok)
        .collect()
        .await
}

/// A TCP relay to `target` that a test can cut: every connection through it, and every later one,
/// is dropped.
struct Relay {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Relay {
    async fn to(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let mut relayed = tokio::task::JoinSet::new();
            while let Ok((mut inbound, _)) = listener.accept().await {
                relayed.spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        });
        Self { addr, task }
    }

    /// Drops every connection and stops listening (the JoinSet goes with the task).
    fn cut(&self) {
        self.task.abort();
    }
}

#[tokio::test]
async fn with_the_stream_cut_past_the_staleness_bound_it_fails_closed() {
    // Above the 5 s between heartbeats of a quiet stream, as any staleness bound must be.
    const STALENESS: Duration = Duration::from_secs(6);
    let app = spawn_app(Store::Sqlite).await;
    let relay = Relay::to(app.addr).await;
    let verifier = verifier(&app, relay.addr, STALENESS).await;
    let (access, _) = tokens(&app.create("cut", "phone").await.tokens);
    assert!(verifier.verify_local(&access).is_ok());

    relay.cut();
    let cut_at = Instant::now();
    let (after, refused) =
        until_refused(&verifier, &access, STALENESS + Duration::from_secs(5)).await;
    println!("with the stream cut, refused as {refused:?} after {after:?}");
    assert_eq!(refused, VerifyError::Stale);
    // The last proof of freshness came at most a heartbeat interval before the cut.
    assert!(
        cut_at.elapsed() + Duration::from_secs(5) >= STALENESS,
        "not before the bound: {:?}",
        cut_at.elapsed()
    );
}
