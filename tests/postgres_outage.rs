//! Postgres outages, end to end: the real `sessiond` binary, started as a child process, over a
//! Postgres server this test owns (`support::postgres_server`: its own `initdb`, on its own port),
//! which the test stops and starts. The shared Postgres on 5432 is never touched; Redis is the
//! shared one (`SESSIOND_TEST_REDIS_URL`, default `redis://127.0.0.1:6379`) under a fresh key
//! prefix per sessiond.
//!
//! What is held:
//! - while Postgres is down, every RPC that needs it (writes, and reads of uncached sessions)
//!   fails with UNAVAILABLE / `STORE_UNAVAILABLE` within a bound, without leaking connection
//!   details, and a failed write changes nothing;
//! - `Validate` of sessions held in Redis or in the in-process tier keeps answering, fast;
//! - readiness and liveness stay SERVING (a store outage does not pull every replica out of the
//!   Service while `Validate` can still answer from the caches);
//! - once Postgres is back, writes succeed again within seconds;
//! - a session acknowledged to the caller survives `kill -9` of sessiond and a crash of Postgres;
//! - calls in flight when Postgres freezes, rather than exits, fail fast too.

// Tests may panic on a broken expectation; that is how they fail.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::{
    future::Future,
    io::Write as _,
    time::{Duration, Instant},
};

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use ed25519_dalek::Signer;
use serde_json::Value;
use sessiond::api::pb::{self, TokenStatus};
use support::{
    keys::Keys,
    percentiles,
    postgres_server::PostgresServer,
    process::SessiondProcess,
    redis::redis_url,
    rpc::{self, Client, get, refresh, session_id, tokens, try_create, try_revoke, validate},
};
use tonic::{Code, Status};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_types::StatusExt;

/// sessiond's `SESSIOND_DATABASE_TIMEOUT` in these tests (passed as "1s").
const DATABASE_TIMEOUT: Duration = Duration::from_secs(1);
/// How long an RPC that needs the store may take to fail while Postgres is down.
const FAIL_FAST_BOUND: Duration = Duration::from_secs(3);
/// Past this, an RPC is reported as hung (and the test fails) instead of waited for.
const HANG: Duration = Duration::from_secs(20);
/// The readiness service name, and the liveness one.
const READINESS: &str = "sessiond.v1.SessionService";
const LIVENESS: &str = "liveness";

#[tokio::test]
async fn writes_fail_fast_and_cached_validates_answer_while_postgres_is_down() {
    let mut postgres = PostgresServer::init_and_start();
    let keys = Keys::generate();
    let sessiond = start_sessiond(&postgres, &keys, &fresh_prefix()).await;
    let mut client = sessiond.client().await;

    // Sessions made and validated while Postgres is up: each is now in Redis (and, briefly, in the
    // in-process tier).
    let mut sessions = Vec::new();
    for i in 0..5 {
        let created = try_create(&mut client, &format!("outage-user-{i}"), "phone")
            .await
            .expect("CreateSession works while Postgres is up");
        let (access, _) = tokens(&created.tokens);
        assert!(validate(&mut client, &access).await.valid);
        sessions.push(created);
    }
    let forged = forge_unknown_session_token(&tokens(&sessions[0].tokens).0, &keys.signing);
    // The same measurement as below with Postgres down, for comparison.
    let up = percentiles(&mut validate_cached(&mut client, &sessions, "Postgres up").await);

    postgres.stop_immediate();

    // Health: liveness and readiness both stay SERVING.
    assert_eq!(
        health(&sessiond, READINESS).await,
        ServingStatus::Serving,
        "readiness with Postgres down\n{}",
        sessiond.log()
    );
    assert_eq!(health(&sessiond, LIVENESS).await, ServingStatus::Serving);

    // Every RPC that needs Postgres fails with UNAVAILABLE, fast.
    let revoked_id = session_id(&sessions[0]);
    let (_, unrotated_refresh) = tokens(&sessions[1].tokens);
    let mut report = Vec::new();
    let (result, took) = timed(try_create(&mut client, "outage-user-new", "phone")).await;
    assert_store_unavailable("CreateSession", result, took, &postgres, &sessiond);
    report.push(("CreateSession", took));
    let (result, took) = timed(try_revoke(
        &mut client,
        &revoked_id,
        "signed out during the outage",
    ))
    .await;
    assert_store_unavailable("RevokeSession", result, took, &postgres, &sessiond);
    report.push(("RevokeSession", took));
    let (result, took) = timed(refresh(&mut client, &unrotated_refresh)).await;
    assert_store_unavailable("Refresh", result, took, &postgres, &sessiond);
    report.push(("Refresh", took));
    let (result, took) = timed(rpc::revoke_user(&mut client, "outage-user-2", "")).await;
    assert_store_unavailable("RevokeUserSessions", result, took, &postgres, &sessiond);
    report.push(("RevokeUserSessions", took));
    let (result, took) = timed(get(&mut client, &session_id(&sessions[2]))).await;
    assert_store_unavailable("GetSession", result, took, &postgres, &sessiond);
    report.push(("GetSession", took));
    let (result, took) = timed(client.list_user_sessions(pb::ListUserSessionsRequest {
        user_id: "outage-user-3".into(),
        ..Default::default()
    }))
    .await;
    assert_store_unavailable("ListUserSessions", result, took, &postgres, &sessiond);
    report.push(("ListUserSessions", took));

    // More concurrent writes than the pool has connections (16): each still fails within the bound.
    let started = Instant::now();
    let concurrent = futures::future::join_all((0..40).map(|i| {
        let mut client = client.clone();
        async move { timed(try_create(&mut client, &format!("outage-burst-{i}"), "")).await }
    }))
    .await;
    for (result, took) in concurrent {
        assert_store_unavailable("CreateSession (burst)", result, took, &postgres, &sessiond);
    }
    report.push(("40 concurrent CreateSession, all", started.elapsed()));

    // Validate of the cached sessions keeps answering, from Redis or the in-process tier, about
    // as fast as with Postgres up.
    let down = percentiles(&mut validate_cached(&mut client, &sessions, "Postgres down").await);

    // A validly signed token whose session no tier holds must not get a guessed answer.
    let (result, took) = timed(client.validate(pb::ValidateRequest {
        access_token: forged.clone(),
    }))
    .await;
    assert_store_unavailable("Validate (uncached)", result, took, &postgres, &sessiond);
    report.push(("Validate of an uncached session", took));

    // Still SERVING after all those failures.
    assert_eq!(health(&sessiond, READINESS).await, ServingStatus::Serving);
    assert_eq!(health(&sessiond, LIVENESS).await, ServingStatus::Serving);

    // Recovery: Postgres comes back, and writes work again within seconds, with no restart.
    postgres.start();
    let back = Instant::now();
    let recovered = loop {
        match timed(try_create(&mut client, "outage-user-after", "phone")).await {
            (Ok(created), _) => break created,
            (Err(status), _) => assert!(
                back.elapsed() < Duration::from_secs(15),
                "CreateSession still fails {:?} after Postgres came back: {status:?}\n{}",
                back.elapsed(),
                sessiond.log()
            ),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let recovery = back.elapsed();
    assert!(
        validate(&mut client, &tokens(&recovered.tokens).0)
            .await
            .valid
    );

    // The failed writes changed nothing: the session is not revoked, and the refresh token that
    // failed to rotate is still the current one.
    let stored = get(&mut client, &revoked_id)
        .await
        .expect("GetSession works again");
    assert_eq!(
        stored.revoked_at, None,
        "a failed RevokeSession took effect"
    );
    assert!(
        validate(&mut client, &tokens(&sessions[0].tokens).0)
            .await
            .valid
    );
    let rotated = refresh(&mut client, &unrotated_refresh)
        .await
        .expect("the refresh token that failed to rotate during the outage still works");
    assert!(
        validate(&mut client, &tokens(&rotated.tokens).0)
            .await
            .valid
    );
    // And the uncached session, now that the store can answer, is a normal refusal.
    let response = validate(&mut client, &forged).await;
    assert!(!response.valid);
    assert_eq!(response.status(), TokenStatus::SessionNotFound);

    let mut text = format!(
        "postgres_outage: with Postgres down (SESSIOND_DATABASE_TIMEOUT={DATABASE_TIMEOUT:?}):\n"
    );
    for (what, took) in &report {
        text.push_str(&format!("  {what}: UNAVAILABLE after {took:?}\n"));
    }
    text.push_str(&format!(
        "  Validate of cached sessions, {VALIDATES} calls: p50 {:?}, p99 {:?}, max {:?} \
         (Postgres up: p50 {:?}, p99 {:?}, max {:?})\n\
         postgres_outage: CreateSession succeeded {recovery:?} after Postgres restarted\n",
        down.0, down.1, down.2, up.0, up.1, up.2
    ));
    report_line(&text);
    // Loose, since this machine is shared and noisy and the binary is a debug build: what matters
    // is that no Validate waited on the store, which would take SESSIOND_DATABASE_TIMEOUT.
    assert!(
        down.1 < DATABASE_TIMEOUT / 2,
        "p99 of cached Validates with Postgres down: {:?}",
        down.1
    );
}

#[tokio::test]
async fn an_acknowledged_session_survives_kill_9_of_sessiond_and_a_postgres_crash() {
    let mut postgres = PostgresServer::init_and_start();
    let keys = Keys::generate();
    let mut first = start_sessiond(&postgres, &keys, &fresh_prefix()).await;
    let mut client = first.client().await;

    let mut created = Vec::new();
    for i in 0..10 {
        created.push(
            try_create(&mut client, &format!("durable-user-{i}"), "phone")
                .await
                .expect("CreateSession works"),
        );
    }
    // The last one was acknowledged an instant ago: nothing had time to happen after it.
    first.kill();
    drop(client);
    postgres.stop_immediate();
    postgres.start();

    // A new sessiond on the same database and keys. A fresh Redis prefix: the answers below must
    // come from Postgres, not from what the first sessiond cached.
    let second = start_sessiond(&postgres, &keys, &fresh_prefix()).await;
    let mut client = second.client().await;
    for session in &created {
        let id = session_id(session);
        let stored = get(&mut client, &id)
            .await
            .unwrap_or_else(|status| panic!("acknowledged session {id} was lost: {status:?}"));
        assert_eq!(Some(&stored), session.session.as_ref());

        let (access, refresh_token) = tokens(&session.tokens);
        let validated = validate(&mut client, &access).await;
        assert!(validated.valid, "{validated:?}");
        assert_eq!(validated.session.map(|s| s.session_id), Some(id.clone()));

        let refreshed = refresh(&mut client, &refresh_token)
            .await
            .unwrap_or_else(|status| panic!("Refresh of {id} failed: {status:?}"));
        assert_eq!(refreshed.session.as_ref().map(|s| &s.session_id), Some(&id));
        assert!(
            validate(&mut client, &tokens(&refreshed.tokens).0)
                .await
                .valid
        );
    }
}

/// How many Validates are timed, each time.
const VALIDATES: usize = 200;

/// Validates the sessions' access tokens in turn, `VALIDATES` calls in all; every answer must be
/// valid and name its session. The latency of each call.
async fn validate_cached(
    client: &mut Client,
    sessions: &[pb::CreateSessionResponse],
    when: &str,
) -> Vec<Duration> {
    let mut latencies = Vec::with_capacity(VALIDATES);
    for i in 0..VALIDATES {
        let session = &sessions[i % sessions.len()];
        let started = Instant::now();
        let response = tokio::time::timeout(HANG, validate(client, &tokens(&session.tokens).0))
            .await
            .unwrap_or_else(|_| panic!("Validate hung ({when})"));
        latencies.push(started.elapsed());
        assert!(
            response.valid && response.status() == TokenStatus::Valid,
            "a cached session must validate ({when}): {response:?}"
        );
        assert_eq!(
            response.session.map(|s| s.session_id),
            Some(session_id(session)),
            "{when}"
        );
    }
    latencies
}

/// A Postgres that stops answering without closing its sockets (a hung host, a stuck disk, a
/// network partition): calls that were already talking to it must fail fast too, not only new ones.
///
/// `statement_timeout` is enforced by the server, so it cannot fire while the server is frozen:
/// sessiond bounds each store operation itself (`SqlStore::with_op_timeout`).
#[tokio::test]
async fn calls_in_flight_fail_fast_when_postgres_freezes() {
    use std::sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    };
    let mut postgres = PostgresServer::init_and_start();
    let keys = Keys::generate();
    let sessiond = start_sessiond(&postgres, &keys, &fresh_prefix()).await;
    let client = sessiond.client().await;

    // Writers keep calls in flight, so that some are mid-transaction when Postgres freezes.
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..8)
        .map(|writer| {
            let mut client = client.clone();
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut calls = Vec::new();
                for i in 0.. {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let started = Instant::now();
                    let user = format!("freeze-{writer}-{i}");
                    let result =
                        tokio::time::timeout(HANG / 2, try_create(&mut client, &user, "phone"))
                            .await;
                    calls.push((started, started.elapsed(), result.map(|r| r.map(|_| ()))));
                }
                calls
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let frozen_at = Instant::now();
    postgres.freeze();
    tokio::time::sleep(Duration::from_secs(5)).await;
    stop.store(true, Ordering::Relaxed);
    let mut slow = Vec::new();
    let mut overlapping = 0;
    for writer in writers {
        for (started, took, result) in writer.await.unwrap() {
            if started + took < frozen_at {
                continue;
            }
            overlapping += 1;
            let result = result.map(|r| r.map_err(|status| status.code()));
            // Done before the freeze took hold, or UNAVAILABLE: either is fine, if it is fast.
            let answered = matches!(result, Ok(Ok(()) | Err(Code::Unavailable)));
            if took >= FAIL_FAST_BOUND || !answered {
                slow.push(format!("CreateSession: {result:?} after {took:?}"));
            }
        }
    }
    postgres.thaw();
    report_line(&format!(
        "postgres_outage (freeze): {overlapping} calls overlapped the freeze; {} were not \
         UNAVAILABLE within {FAIL_FAST_BOUND:?}\n",
        slow.len()
    ));
    assert!(
        slow.is_empty(),
        "calls in flight when Postgres froze: {slow:#?}\n{}",
        sessiond.log()
    );
}

// --- RPCs ---------------------------------------------------------------------------------------

async fn health(sessiond: &SessiondProcess, service: &str) -> ServingStatus {
    sessiond
        .health(service)
        .await
        .expect("the health service answers")
}

/// Runs `call`, failing the test if it hangs; its result and how long it took.
async fn timed<T>(call: impl Future<Output = T>) -> (T, Duration) {
    let started = Instant::now();
    let result = tokio::time::timeout(HANG, call)
        .await
        .unwrap_or_else(|_| panic!("the call hung for {HANG:?}"));
    (result, started.elapsed())
}

/// `result` is UNAVAILABLE with reason STORE_UNAVAILABLE, arrived within the bound, and says
/// nothing about where Postgres is.
fn assert_store_unavailable<T: std::fmt::Debug>(
    what: &str,
    result: Result<T, Status>,
    took: Duration,
    postgres: &PostgresServer,
    sessiond: &SessiondProcess,
) {
    let status = match result {
        Ok(answer) => panic!("{what} succeeded with Postgres down: {answer:?}"),
        Err(status) => status,
    };
    assert_eq!(
        status.code(),
        Code::Unavailable,
        "{what}: {status:?}\n{}",
        sessiond.log()
    );
    let info = status
        .get_details_error_info()
        .unwrap_or_else(|| panic!("{what}: no ErrorInfo in {status:?}"));
    assert_eq!(info.reason, "STORE_UNAVAILABLE", "{what}");
    assert_eq!(info.domain, "sessiond", "{what}");
    assert!(
        took < FAIL_FAST_BOUND,
        "{what} took {took:?} to fail (bound {FAIL_FAST_BOUND:?})"
    );
    let port = postgres.port().to_string();
    let said = format!("{} {:?}", status.message(), info.metadata).to_lowercase();
    for detail in [
        "127.0.0.1",
        port.as_str(),
        "postgres",
        "refused",
        "pool",
        "sqlx",
        "timed out",
        "connect",
    ] {
        assert!(
            !said.contains(detail),
            "{what}: the error leaks {detail:?}: {said}"
        );
    }
}

// --- Tokens -------------------------------------------------------------------------------------

/// A token like `real` (same header, so same `kid`; same user), for a session that never
/// existed, properly signed with sessiond's key: only the store can say it is unknown.
fn forge_unknown_session_token(real: &str, key: &ed25519_dalek::SigningKey) -> String {
    let decode = |part: &str| -> Value {
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).unwrap()).unwrap()
    };
    let encode = |value: &Value| URL_SAFE_NO_PAD.encode(serde_json::to_vec(value).unwrap());
    let mut parts = real.split('.');
    let header = decode(parts.next().unwrap());
    let mut claims = decode(parts.next().unwrap());
    claims["sid"] = uuid::Uuid::now_v7().to_string().into();
    claims["jti"] = uuid::Uuid::now_v7().to_string().into();
    let input = format!("{}.{}", encode(&header), encode(&claims));
    let signature = key.sign(input.as_bytes());
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature.to_bytes()))
}

/// Writes to the real stderr, past the test harness's capture, so the measurements show in a plain
/// `cargo test` run.
fn report_line(text: &str) {
    let _ = std::io::stderr().write_all(text.as_bytes());
}

fn fresh_prefix() -> String {
    format!("sessiond-test:outage:{}:", uuid::Uuid::now_v7())
}

// --- The sessiond child -------------------------------------------------------------------------
/// Starts the real sessiond binary on `postgres`, with `keys` and Redis key prefix `prefix`, and
/// waits until readiness reports SERVING; killed (SIGKILL) when dropped.
async fn start_sessiond(postgres: &PostgresServer, keys: &Keys, prefix: &str) -> SessiondProcess {
    let mut env = vec![
        ("SESSIOND_DATABASE_URL", postgres.url()),
        ("SESSIOND_REDIS_URL", redis_url()),
        ("SESSIOND_REDIS_KEY_PREFIX", prefix.to_owned()),
        ("SESSIOND_DATABASE_TIMEOUT", "1s".into()),
        ("SESSIOND_SHUTDOWN_DRAIN", "0s".into()),
    ];
    env.extend(keys.env());
    SessiondProcess::start(&env).await
}
