//! The verifier end to end, against a JWKS server and a fake sessiond on 127.0.0.1:0: the fake
//! serves `WatchRevocations` streams that each test drives event by event, and answers
//! `Validate` as the test says. The real sessiond is exercised by the root package's tests.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use chrono::Utc;
use tokio::sync::mpsc;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::{Request, Response, Status};
use uuid::Uuid;

use crate::{
    OnStale, Session, Verifier, VerifyError,
    pb::{
        self,
        session_service_server::{SessionService, SessionServiceServer},
    },
    testing::{JwksServer, TestKey, claims, header},
};

/// One `WatchRevocations` call: what it asked for, and the sender that feeds its stream.
struct Opened {
    after_cursor: String,
    authorization: Option<String>,
    events: mpsc::Sender<Result<pb::RevocationEvent, Status>>,
}

struct Fake {
    opened: mpsc::UnboundedSender<Opened>,
    validate: Mutex<Result<pb::ValidateResponse, Status>>,
    validate_calls: Mutex<usize>,
}

#[tonic::async_trait]
impl SessionService for Fake {
    async fn watch_revocations(
        &self,
        request: Request<pb::WatchRevocationsRequest>,
    ) -> Result<Response<tonic::codegen::BoxStream<pb::RevocationEvent>>, Status> {
        let authorization = request
            .metadata()
            .get("authorization")
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned);
        let (events, receiver) = mpsc::channel(1024);
        let _ = self.opened.send(Opened {
            after_cursor: request.into_inner().after_cursor,
            authorization,
            events,
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(receiver))))
    }

    async fn validate(
        &self,
        _request: Request<pb::ValidateRequest>,
    ) -> Result<Response<pb::ValidateResponse>, Status> {
        *self.validate_calls.lock().expect("lock") += 1;
        self.validate
            .lock()
            .expect("lock")
            .clone()
            .map(Response::new)
    }
}

struct Harness {
    verifier: Verifier,
    jwks: JwksServer,
    fake: Arc<Fake>,
    opened: mpsc::UnboundedReceiver<Opened>,
    key: TestKey,
}

impl Harness {
    /// A fake sessiond and a JWKS server with one key, and a verifier of both configured by
    /// `configure` (with a 1 s staleness bound, and an API key).
    async fn start(configure: impl FnOnce(crate::Builder) -> crate::Builder) -> Self {
        Self::start_with(|_| {}, configure).await
    }

    /// The same, with `prepare` done to the JWKS server before the verifier starts.
    async fn start_with(
        prepare: impl FnOnce(&JwksServer),
        configure: impl FnOnce(crate::Builder) -> crate::Builder,
    ) -> Self {
        let key = TestKey::new(1);
        let jwks = JwksServer::start(&[&key], "public, max-age=60").await;
        prepare(&jwks);
        let (opened_tx, opened) = mpsc::unbounded_channel();
        let fake = Arc::new(Fake {
            opened: opened_tx,
            validate: Mutex::new(Err(Status::unavailable("not configured"))),
            validate_calls: Mutex::new(0),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binds");
        let addr = listener.local_addr().expect("an address");
        let service = SessionServiceServer::from_arc(fake.clone());
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(TcpListenerStream::new(listener)),
        );
        let builder = Verifier::builder(format!("http://{addr}"), jwks.url.clone())
            .issuer("sessiond")
            .audience("api")
            .api_key("test-api-key")
            .staleness(Duration::from_secs(1))
            .stream_idle_timeout(Duration::from_secs(5))
            .jwks_refetch_interval(Duration::from_millis(200));
        let verifier = configure(builder).start().await.expect("starts");
        Self {
            verifier,
            jwks,
            fake,
            opened,
            key,
        }
    }

    /// The next `WatchRevocations` call the verifier makes.
    async fn next_stream(&mut self) -> Opened {
        tokio::time::timeout(Duration::from_secs(10), self.opened.recv())
            .await
            .expect("the verifier opens a stream in time")
            .expect("the fake is up")
    }

    /// A token of `user` in session `sid`, signed by the JWKS key.
    fn token(&self, sid: Uuid, user: &str) -> String {
        self.key
            .sign(&header(&self.key), &claims(sid, user, Utc::now(), 900))
    }
}

impl Opened {
    async fn send(&self, event: pb::RevocationEvent) {
        self.events
            .send(Ok(event))
            .await
            .expect("the stream is open");
    }

    async fn fail(&self, status: Status) {
        self.events
            .send(Err(status))
            .await
            .expect("the stream is open");
    }
}

fn ts(at: chrono::DateTime<Utc>) -> Option<prost_types::Timestamp> {
    Some(prost_types::Timestamp {
        seconds: at.timestamp(),
        nanos: i32::try_from(at.timestamp_subsec_nanos()).expect("nanos"),
    })
}

fn heartbeat(cursor: &str) -> pb::RevocationEvent {
    pb::RevocationEvent {
        cursor: cursor.into(),
        kind: pb::RevocationKind::Heartbeat.into(),
        ..Default::default()
    }
}

fn session_revoked(cursor: &str, sid: Uuid, ago: chrono::Duration) -> pb::RevocationEvent {
    let revoked_at = Utc::now() - ago;
    pb::RevocationEvent {
        cursor: cursor.into(),
        kind: pb::RevocationKind::Session.into(),
        session_id: sid.to_string(),
        user_id: "alice".into(),
        revoked_at: ts(revoked_at),
        reason: "user signed out".into(),
        token_expires_before: ts(revoked_at + chrono::Duration::minutes(15)),
        ..Default::default()
    }
}

/// Polls `verify` until it answers `expected` (revocations apply asynchronously).
async fn eventually(verifier: &Verifier, token: &str, expected: Result<(), VerifyError>) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let got = verifier.verify(token).await.map(|_| ());
        if got == expected {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "still {got:?}, expected {expected:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn every_token_is_refused_until_the_first_snapshot_is_in() {
    let mut h = Harness::start(|b| b).await;
    let (revoked, live) = (Uuid::now_v7(), Uuid::now_v7());
    let stream = h.next_stream().await;
    assert_eq!(
        stream.after_cursor, "",
        "a first stream asks for the snapshot"
    );
    assert_eq!(stream.authorization.as_deref(), Some("Bearer test-api-key"));

    // Keys arrive, the snapshot does not: stale, fail closed.
    let not_synced = h.verifier.wait_synced(Duration::from_millis(300)).await;
    assert!(matches!(
        not_synced,
        Err(VerifyError::Stale | VerifyError::Unavailable)
    ));
    assert!(!h.verifier.is_synced());
    let token = h.token(live, "alice");
    assert!(matches!(
        h.verifier.verify(&token).await,
        Err(VerifyError::Stale | VerifyError::Unavailable)
    ));

    // The snapshot: one old revocation, then the heartbeat that says it is complete.
    stream
        .send(session_revoked("c1", revoked, chrono::Duration::minutes(5)))
        .await;
    stream.send(heartbeat("c1")).await;
    h.verifier
        .wait_synced(Duration::from_secs(5))
        .await
        .expect("synced");
    let session = h.verifier.verify(&token).await.expect("verifies");
    assert_eq!(session.user_id, "alice");
    assert_eq!(session.session_id, live);
    assert_eq!(h.verifier.verify_local(&token), Ok(session));
    assert_eq!(
        h.verifier.verify(&h.token(revoked, "alice")).await,
        Err(VerifyError::Revoked)
    );
    let stats = h.verifier.stats();
    assert!(stats.synced);
    assert_eq!(stats.keys, Some(1));
    assert_eq!(stats.revocations.sessions, 1);
}

#[tokio::test]
async fn live_revocations_refuse_at_once_and_the_stream_resumes_from_its_cursor() {
    let mut h = Harness::start(|b| b).await;
    let stream = h.next_stream().await;
    stream.send(heartbeat("")).await;
    h.verifier
        .wait_synced(Duration::from_secs(5))
        .await
        .expect("synced");

    let (signed_out, other) = (Uuid::now_v7(), Uuid::now_v7());
    let token = h.token(signed_out, "alice");
    eventually(&h.verifier, &token, Ok(())).await;
    stream
        .send(session_revoked("c7", signed_out, chrono::Duration::zero()))
        .await;
    eventually(&h.verifier, &token, Err(VerifyError::Revoked)).await;
    assert!(h.verifier.verify(&h.token(other, "alice")).await.is_ok());

    // Signed out everywhere: sessions that started before the instant are refused, a newer one
    // is not.
    let not_before = Utc::now();
    stream
        .send(pb::RevocationEvent {
            cursor: "c8".into(),
            kind: pb::RevocationKind::UserNotBefore.into(),
            user_id: "bob".into(),
            not_before: ts(not_before),
            revoked_at: ts(not_before),
            token_expires_before: ts(not_before + chrono::Duration::minutes(15)),
            ..Default::default()
        })
        .await;
    let old_session = h.token(Uuid::now_v7(), "bob");
    eventually(&h.verifier, &old_session, Err(VerifyError::Revoked)).await;
    let mut newer = claims(Uuid::now_v7(), "bob", Utc::now(), 900);
    newer["sct"] = serde_json::json!(not_before.timestamp_micros() + 1);
    let newer = h.key.sign(&header(&h.key), &newer);
    assert!(h.verifier.verify(&newer).await.is_ok());

    // A heartbeat with an empty cursor keeps "c8"; the server closes the stream; the verifier
    // comes back after c8, still refusing what it knew.
    stream.send(heartbeat("")).await;
    drop(stream);
    let resumed = h.next_stream().await;
    assert_eq!(resumed.after_cursor, "c8");
    assert_eq!(h.verifier.verify(&token).await, Err(VerifyError::Revoked));
    resumed.send(heartbeat("c8")).await;

    // ABORTED (too slow): resume from the cursor too.
    resumed.fail(Status::aborted("subscriber too slow")).await;
    assert_eq!(h.next_stream().await.after_cursor, "c8");
}

#[tokio::test]
async fn out_of_range_restarts_from_a_fresh_snapshot_keeping_what_is_known() {
    let mut h = Harness::start(|b| b.staleness(Duration::from_secs(10))).await;
    let revoked = Uuid::now_v7();
    let stream = h.next_stream().await;
    stream
        .send(session_revoked("c1", revoked, chrono::Duration::seconds(1)))
        .await;
    stream.send(heartbeat("c1")).await;
    h.verifier
        .wait_synced(Duration::from_secs(5))
        .await
        .expect("synced");
    let token = h.token(revoked, "alice");
    assert_eq!(h.verifier.verify(&token).await, Err(VerifyError::Revoked));

    stream
        .fail(Status::out_of_range("the oldest cursor kept is c5"))
        .await;
    let fresh = h.next_stream().await;
    assert_eq!(fresh.after_cursor, "", "a fresh snapshot");
    // Meanwhile (the new snapshot not in yet) the old revocation still holds.
    assert_eq!(h.verifier.verify(&token).await, Err(VerifyError::Revoked));
    fresh.send(heartbeat("c9")).await;
    drop(fresh);
    assert_eq!(h.next_stream().await.after_cursor, "c9");
    assert_eq!(h.verifier.verify(&token).await, Err(VerifyError::Revoked));
}

#[tokio::test]
async fn a_silent_stream_goes_stale_and_fails_closed_until_a_heartbeat() {
    let mut h = Harness::start(|b| b.staleness(Duration::from_millis(400))).await;
    let stream = h.next_stream().await;
    stream.send(heartbeat("")).await;
    h.verifier
        .wait_synced(Duration::from_secs(5))
        .await
        .expect("synced");
    let token = h.token(Uuid::now_v7(), "alice");
    assert!(h.verifier.verify(&token).await.is_ok());

    // The partition: nothing arrives, and the verifier stops vouching for any token.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(h.verifier.verify(&token).await, Err(VerifyError::Stale));
    assert_eq!(h.verifier.verify_local(&token), Err(VerifyError::Stale));
    assert!(!h.verifier.stats().synced);
    // A token that is bad anyway still says why.
    assert_eq!(
        h.verifier.verify("not.a.token").await,
        Err(VerifyError::Malformed)
    );

    stream.send(heartbeat("")).await;
    eventually(&h.verifier, &token, Ok(())).await;
}

#[tokio::test]
async fn a_stream_that_stays_silent_is_dropped_and_opened_again() {
    let mut h = Harness::start(|b| b.stream_idle_timeout(Duration::from_millis(300))).await;
    let first = h.next_stream().await;
    first
        .send(session_revoked(
            "c3",
            Uuid::now_v7(),
            chrono::Duration::zero(),
        ))
        .await;
    // Then nothing, not even a heartbeat, though the server keeps the stream open: after
    // 300 ms the verifier gives up on it and resumes on a new one.
    let second = h.next_stream().await;
    assert_eq!(second.after_cursor, "c3");
    tokio::time::timeout(Duration::from_secs(5), first.events.closed())
        .await
        .expect("the silent stream was dropped");
}

#[tokio::test]
async fn a_stale_verifier_can_ask_validate_instead() {
    let mut h = Harness::start(|b| b.on_stale(OnStale::CallValidate)).await;
    let _stream = h.next_stream().await;
    let sid = Uuid::now_v7();
    let token = h.token(sid, "alice");
    // Let the keys arrive (the fallback runs after the local checks).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while h.verifier.stats().keys.is_none() {
        assert!(tokio::time::Instant::now() < deadline, "no keys");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    *h.fake.validate.lock().expect("lock") = Ok(pb::ValidateResponse {
        valid: true,
        status: pb::TokenStatus::Valid.into(),
        session: Some(pb::Session {
            session_id: sid.to_string(),
            user_id: "alice".into(),
            ..Default::default()
        }),
    });
    let session = h
        .verifier
        .verify(&token)
        .await
        .expect("sessiond vouches for it");
    assert_eq!(session.session_id, sid);
    // The local path never calls out.
    assert_eq!(h.verifier.verify_local(&token), Err(VerifyError::Stale));

    *h.fake.validate.lock().expect("lock") = Ok(pb::ValidateResponse {
        valid: false,
        status: pb::TokenStatus::SessionRevoked.into(),
        session: None,
    });
    assert_eq!(h.verifier.verify(&token).await, Err(VerifyError::Revoked));
    *h.fake.validate.lock().expect("lock") = Err(Status::unavailable("partitioned"));
    assert_eq!(
        h.verifier.verify(&token).await,
        Err(VerifyError::Unavailable)
    );
    // A token the local checks refuse costs no call.
    let calls = *h.fake.validate_calls.lock().expect("lock");
    assert_eq!(
        h.verifier.verify("x.y.z").await,
        Err(VerifyError::Malformed)
    );
    assert_eq!(*h.fake.validate_calls.lock().expect("lock"), calls);
    assert_eq!(calls, 3);
}

#[tokio::test]
async fn without_a_jwks_every_token_is_unavailable_until_one_is_fetched() {
    let mut h = Harness::start_with(
        |jwks| *jwks.status.lock().expect("lock") = http::StatusCode::SERVICE_UNAVAILABLE,
        |b| b,
    )
    .await;
    let stream = h.next_stream().await;
    stream.send(heartbeat("")).await;
    let token = h.token(Uuid::now_v7(), "alice");
    assert_eq!(
        h.verifier.wait_synced(Duration::from_millis(300)).await,
        Err(VerifyError::Unavailable)
    );
    assert_eq!(
        h.verifier.verify_local(&token),
        Err(VerifyError::Unavailable)
    );
    assert_eq!(h.verifier.stats().keys, None);

    // The JWKS answers again: the next token asks for it rather than waiting for the retry.
    *h.jwks.status.lock().expect("lock") = http::StatusCode::OK;
    tokio::time::sleep(Duration::from_millis(250)).await;
    stream.send(heartbeat("")).await;
    assert!(h.verifier.verify(&token).await.is_ok());
}

#[tokio::test]
async fn a_new_signing_key_is_fetched_when_a_token_names_it() {
    let mut h = Harness::start(|b| b).await;
    let stream = h.next_stream().await;
    stream.send(heartbeat("")).await;
    h.verifier
        .wait_synced(Duration::from_secs(5))
        .await
        .expect("synced");
    let fetched = h.jwks.hits();

    let rotated = TestKey::new(2);
    h.jwks.serve_keys(&[&h.key, &rotated]);
    let token = rotated.sign(
        &header(&rotated),
        &claims(Uuid::now_v7(), "alice", Utc::now(), 900),
    );
    // max-age=60 has not run out: the unknown kid is what makes the verifier look again.
    assert!(h.verifier.verify(&token).await.is_ok());
    assert_eq!(h.jwks.hits(), fetched + 1);

    // Made-up kids cost at most one fetch per interval (200 ms here).
    let forged = TestKey::new(3);
    let forged = forged.sign(
        &header(&forged),
        &claims(Uuid::now_v7(), "alice", Utc::now(), 900),
    );
    for _ in 0..50 {
        assert_eq!(
            h.verifier.verify_local(&forged),
            Err(VerifyError::BadSignature)
        );
    }
    assert_eq!(
        h.verifier.verify(&forged).await,
        Err(VerifyError::BadSignature)
    );
    assert!(
        h.jwks.hits() <= fetched + 3,
        "{} fetches",
        h.jwks.hits() - fetched
    );
}

#[tokio::test]
async fn a_removed_signing_key_refuses_its_tokens_and_the_jwks_is_fetched_again() {
    let mut h = Harness::start(|b| b).await;
    let stream = h.next_stream().await;
    stream.send(heartbeat("")).await;
    h.verifier
        .wait_synced(Duration::from_secs(5))
        .await
        .expect("synced");
    let token = h.token(Uuid::now_v7(), "alice");
    assert!(h.verifier.verify(&token).await.is_ok());
    let fetched = h.jwks.hits();

    let now = Utc::now();
    stream
        .send(pb::RevocationEvent {
            cursor: "c2".into(),
            kind: pb::RevocationKind::SigningKeyRemoved.into(),
            key_id: h.key.kid().into(),
            revoked_at: ts(now),
            token_expires_before: ts(now + chrono::Duration::minutes(15)),
            ..Default::default()
        })
        .await;
    eventually(&h.verifier, &token, Err(VerifyError::Revoked)).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while h.jwks.hits() == fetched {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the JWKS was not fetched again"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(h.verifier.stats().revocations.keys, 1);
}

#[tokio::test]
async fn a_remembered_token_still_expires_and_leaves_with_its_key() {
    let mut h = Harness::start(|b| b).await;
    let stream = h.next_stream().await;
    stream.send(heartbeat("")).await;
    h.verifier
        .wait_synced(Duration::from_secs(5))
        .await
        .expect("synced");

    let short = h.key.sign(
        &header(&h.key),
        &claims(Uuid::now_v7(), "alice", Utc::now(), 1),
    );
    assert!(h.verifier.verify(&short).await.is_ok());
    tokio::time::sleep(Duration::from_millis(2_100)).await;
    assert_eq!(h.verifier.verify(&short).await, Err(VerifyError::Expired));

    // The key is rotated out of the JWKS: its remembered tokens go with it.
    stream.send(heartbeat("")).await;
    let token = h.token(Uuid::now_v7(), "alice");
    eventually(&h.verifier, &token, Ok(())).await;
    let rotated = TestKey::new(2);
    h.jwks.serve_keys(&[&rotated]);
    let new = rotated.sign(
        &header(&rotated),
        &claims(Uuid::now_v7(), "alice", Utc::now(), 900),
    );
    assert!(
        h.verifier.verify(&new).await.is_ok(),
        "the new key was fetched"
    );
    assert_eq!(
        h.verifier.verify(&token).await,
        Err(VerifyError::BadSignature)
    );
}

#[tokio::test]
async fn shutdown_stops_the_tasks_and_the_verifier_goes_stale() {
    let mut h = Harness::start(|b| b.staleness(Duration::from_millis(300))).await;
    let stream = h.next_stream().await;
    stream.send(heartbeat("")).await;
    h.verifier
        .wait_synced(Duration::from_secs(5))
        .await
        .expect("synced");
    tokio::time::timeout(Duration::from_secs(5), h.verifier.shutdown())
        .await
        .expect("the tasks stop in time");
    // The follower's call was cancelled: sessiond sees its stream go.
    tokio::time::timeout(Duration::from_secs(5), stream.events.closed())
        .await
        .expect("the stream is closed");
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        h.verifier.verify(&h.token(Uuid::now_v7(), "alice")).await,
        Err(VerifyError::Stale)
    );
}

#[tokio::test]
async fn a_bad_configuration_is_refused_at_start() {
    let start = |b: crate::Builder| async move { b.start().await.map(|_| ()) };
    let base = || {
        Verifier::builder(
            "http://127.0.0.1:1",
            "http://127.0.0.1:1/.well-known/jwks.json",
        )
        .issuer("sessiond")
        .audience("api")
    };
    assert!(start(base()).await.is_ok());
    assert!(matches!(
        start(Verifier::builder("http://127.0.0.1:1", "http://127.0.0.1:1/").audience("a")).await,
        Err(crate::BuildError::MissingIssuer)
    ));
    assert!(matches!(
        start(base().audience("")).await,
        Err(crate::BuildError::MissingAudience)
    ));
    assert!(matches!(
        start(base().api_key("line\nbreak")).await,
        Err(crate::BuildError::ApiKey)
    ));
    assert!(matches!(
        start(base().staleness(Duration::ZERO)).await,
        Err(crate::BuildError::Setting(_))
    ));
    assert!(matches!(
        start(base().jwks_refresh(Duration::from_secs(60), Duration::from_secs(10))).await,
        Err(crate::BuildError::Setting(_))
    ));
    assert!(matches!(
        start(
            Verifier::builder("not a url", "http://127.0.0.1:1/")
                .issuer("i")
                .audience("a")
        )
        .await,
        Err(crate::BuildError::GrpcUrl(_))
    ));
    assert!(matches!(
        start(
            Verifier::builder("http://127.0.0.1:1", "jwks.json")
                .issuer("i")
                .audience("a")
        )
        .await,
        Err(crate::BuildError::JwksUrl(_))
    ));
}

mod requests {
    //! The layers, the interceptor and the extractor in front of a handler.

    use axum::{Extension, Json, Router, body::Body, routing::get};
    use http::{StatusCode, header};
    use tower::ServiceExt;

    use super::*;
    use crate::Authenticated;

    /// A synced verifier, and its stream (kept by the test: dropping it would reconnect).
    async fn synced() -> (Harness, Opened) {
        let mut h = Harness::start(|b| b).await;
        let stream = h.next_stream().await;
        stream.send(heartbeat("")).await;
        h.verifier
            .wait_synced(Duration::from_secs(5))
            .await
            .expect("synced");
        (h, stream)
    }

    fn get_me(authorization: Option<&str>) -> http::Request<Body> {
        let mut request = http::Request::get("/me");
        if let Some(value) = authorization {
            request = request.header(header::AUTHORIZATION, value);
        }
        request.body(Body::empty()).expect("a request")
    }

    async fn body(response: http::Response<Body>) -> String {
        let bytes = axum::body::to_bytes(response.into_body(), 64 * 1024)
            .await
            .expect("a body");
        String::from_utf8(bytes.to_vec()).expect("utf-8")
    }

    #[tokio::test]
    async fn the_http_layer_puts_the_session_in_the_request_or_answers_401() {
        let (h, _stream) = synced().await;
        let app = Router::new()
            .route(
                "/me",
                get(|Extension(session): Extension<Session>| async move { Json(session) }),
            )
            .layer(h.verifier.layer());
        let sid = Uuid::now_v7();
        let token = h.token(sid, "alice");

        let ok = app
            .clone()
            .oneshot(get_me(Some(&format!("Bearer {token}"))))
            .await
            .expect("answers");
        assert_eq!(ok.status(), StatusCode::OK);
        let json: serde_json::Value = serde_json::from_str(&body(ok).await).expect("json");
        assert_eq!(json["user_id"], "alice");
        assert_eq!(json["session_id"], sid.to_string());

        let missing = app.clone().oneshot(get_me(None)).await.expect("answers");
        assert_eq!(missing.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(missing.headers()[header::WWW_AUTHENTICATE], "Bearer");

        let tampered = format!("{}x", token);
        let refused = app
            .clone()
            .oneshot(get_me(Some(&format!("Bearer {tampered}"))))
            .await
            .expect("answers");
        assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
        let challenge = refused.headers()[header::WWW_AUTHENTICATE]
            .to_str()
            .expect("ascii")
            .to_owned();
        assert!(
            challenge.starts_with(r#"Bearer error="invalid_token""#),
            "{challenge}"
        );
        let text = body(refused).await;
        assert!(
            !challenge.contains(&tampered) && !text.contains(&tampered),
            "never echoed"
        );
    }

    #[tokio::test]
    async fn the_extractor_verifies_with_the_verifier_in_state() {
        let (h, _stream) = synced().await;
        let app = Router::new()
            .route(
                "/me",
                get(|Authenticated(session): Authenticated| async move { Json(session) }),
            )
            .with_state(h.verifier.clone());
        let token = h.token(Uuid::now_v7(), "alice");
        let ok = app
            .clone()
            .oneshot(get_me(Some(&format!("Bearer {token}"))))
            .await
            .expect("answers");
        assert_eq!(ok.status(), StatusCode::OK);
        assert!(body(ok).await.contains("alice"));
        let expired = h.key.sign(
            &header(&h.key),
            &claims(
                Uuid::now_v7(),
                "alice",
                Utc::now() - chrono::Duration::hours(1),
                60,
            ),
        );
        let refused = app
            .oneshot(get_me(Some(&format!("Bearer {expired}"))))
            .await
            .expect("answers");
        assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(
            refused.headers()[header::WWW_AUTHENTICATE],
            r#"Bearer error="invalid_token", error_description="token expired""#
        );
    }

    #[tokio::test]
    async fn the_grpc_layer_and_the_interceptor_answer_grpc_statuses() {
        let (h, _stream) = synced().await;
        let inner = tower::service_fn(|request: http::Request<Body>| async move {
            let user = request
                .extensions()
                .get::<Session>()
                .map(|session| session.user_id.clone())
                .unwrap_or_default();
            Ok::<_, std::convert::Infallible>(http::Response::new(user))
        });
        let service = tower::ServiceBuilder::new()
            .layer(h.verifier.grpc_layer())
            .service(inner);
        let refused = service
            .clone()
            .oneshot(get_me(None))
            .await
            .expect("answers");
        assert_eq!(
            refused.status(),
            StatusCode::OK,
            "gRPC errors travel in headers"
        );
        assert_eq!(refused.headers()["grpc-status"], "16");
        let token = h.token(Uuid::now_v7(), "alice");
        let ok = service
            .oneshot(get_me(Some(&format!("Bearer {token}"))))
            .await
            .expect("answers");
        assert!(!ok.headers().contains_key("grpc-status"));
        assert_eq!(ok.into_body(), "alice");

        let mut interceptor = h.verifier.interceptor();
        let mut request = tonic::Request::new(());
        request.metadata_mut().insert(
            "authorization",
            format!("Bearer {token}").parse().expect("metadata"),
        );
        let passed = tonic::service::Interceptor::call(&mut interceptor, request).expect("passes");
        assert_eq!(
            passed
                .extensions()
                .get::<Session>()
                .map(|s| s.user_id.as_str()),
            Some("alice")
        );
        let refused = tonic::service::Interceptor::call(&mut interceptor, tonic::Request::new(()))
            .expect_err("refused");
        assert_eq!(refused.code(), tonic::Code::Unauthenticated);
        assert_eq!(refused.message(), "no bearer token");
    }
}
