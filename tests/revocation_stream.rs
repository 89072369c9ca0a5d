//! Revocation everywhere, across replicas: two real `sessiond` binaries (A and B) over one fresh
//! Postgres database and a `redis-server` each test owns (see `support::replicas`).
//!
//! What is held:
//! - a WatchRevocations subscriber on B sees a revocation made on A, within a second of A's
//!   answer; it resumes after a disconnect and after B restarts, with no gap and no duplicate;
//! - an announcement lost on the way (Redis refuses PUBLISH) costs latency, never an event;
//! - Redis holding writes while A revokes a session B has cached, and A killed before any retry:
//!   B refuses the session within a second or two and from then on (the log is the truth);
//! - a user with 100 000 sessions is signed out in one call, and every token is then refused on
//!   both replicas, while a session started afterwards is valid.

// Tests may panic on a broken expectation; that is how they fail.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use clap::Parser;
use futures::{StreamExt, stream};
use sessiond::{
    api::pb::{self, RevocationKind, TokenStatus},
    config::Settings,
    domain::{Device, Metadata, Session, SessionId, UserId},
    token::{AccessTokenSigner, SigningKey},
};
use support::{
    redis::RedisServer,
    replicas::Replicas,
    rpc::{Client, create, revoke, revoke_user, token_and_id, validate},
};
use tonic::Streaming;

/// The requirement: a revocation reaches a subscriber of another replica within this.
const PROPAGATION_BOUND: Duration = Duration::from_secs(1);

async fn watch(client: &mut Client, cursor: &str) -> Streaming<pb::RevocationEvent> {
    client
        .watch_revocations(pb::WatchRevocationsRequest {
            after_cursor: cursor.into(),
        })
        .await
        .unwrap()
        .into_inner()
}

/// The stream's next message (heartbeats too), within `within`.
async fn next(
    stream: &mut Streaming<pb::RevocationEvent>,
    within: Duration,
) -> pb::RevocationEvent {
    tokio::time::timeout(within, stream.next())
        .await
        .expect("a message in time")
        .expect("the stream goes on")
        .expect("a message, not an error")
}

/// The events up to the next heartbeat (which says the subscriber is caught up), and its cursor.
async fn until_caught_up(
    stream: &mut Streaming<pb::RevocationEvent>,
) -> (Vec<pb::RevocationEvent>, String) {
    let mut events = Vec::new();
    loop {
        let event = next(stream, Duration::from_secs(10)).await;
        if event.kind() == RevocationKind::Heartbeat {
            return (events, event.cursor);
        }
        events.push(event);
    }
}

/// The next event that is not a heartbeat, within `within`.
async fn next_revocation(
    stream: &mut Streaming<pb::RevocationEvent>,
    within: Duration,
) -> pb::RevocationEvent {
    let deadline = Instant::now() + within;
    loop {
        let event = next(stream, deadline.saturating_duration_since(Instant::now())).await;
        if event.kind() != RevocationKind::Heartbeat {
            return event;
        }
    }
}

/// Creates a session for `user` on A and revokes it; its id, and when A answered.
async fn revoke_one(on_a: &mut Client, user: &str) -> (String, Instant) {
    let (_, id) = token_and_id(&create(on_a, user, "phone").await);
    revoke(on_a, &id).await;
    (id, Instant::now())
}

#[tokio::test]
async fn a_subscriber_of_another_replica_sees_revocations_and_resumes_without_gaps() {
    let redis = RedisServer::start();
    let mut cluster = Replicas::start(&redis.url(), &[]).await;
    let mut on_a = cluster.a.client().await;
    let mut stream = watch(&mut cluster.b.client().await, "").await;
    let (replayed, _) = until_caught_up(&mut stream).await;
    assert!(replayed.is_empty(), "{replayed:?}");

    let (first, acknowledged) = revoke_one(&mut on_a, "watched-1").await;
    let event = next_revocation(&mut stream, Duration::from_secs(5)).await;
    let delay = acknowledged.elapsed();
    assert_eq!(event.session_id, first);
    assert_eq!(event.kind(), RevocationKind::Session);
    println!("revocation acknowledged by A reached B's subscriber within {delay:?}");
    assert!(delay < PROPAGATION_BOUND, "{delay:?}\n{}", cluster.b.log());
    drop(stream);

    // Disconnected: two revocations go by; resuming from the last cursor gets both, in order.
    let (second, _) = revoke_one(&mut on_a, "watched-2").await;
    let (third, _) = revoke_one(&mut on_a, "watched-3").await;
    let mut stream = watch(&mut cluster.b.client().await, &event.cursor).await;
    let (resumed, caught_up_at) = until_caught_up(&mut stream).await;
    let resumed_ids: Vec<_> = resumed
        .iter()
        .map(|event| event.session_id.clone())
        .collect();
    assert_eq!(resumed_ids, [second, third]);
    assert_eq!(caught_up_at, resumed[1].cursor);
    drop(stream);

    // B restarts; one more revocation meanwhile; resuming on the new B misses nothing.
    cluster.restart_b().await;
    let (fourth, _) = revoke_one(&mut on_a, "watched-4").await;
    let mut stream = watch(&mut cluster.b.client().await, &caught_up_at).await;
    let (after_restart, _) = until_caught_up(&mut stream).await;
    let ids: Vec<_> = after_restart
        .iter()
        .map(|event| event.session_id.clone())
        .collect();
    assert_eq!(ids, [fourth]);
}

#[tokio::test]
async fn a_lost_announcement_costs_latency_never_an_event() {
    let redis = RedisServer::start();
    let cluster = Replicas::start(
        &redis.url(),
        &[("SESSIOND_LOCAL_CACHE_MAX_STALENESS", "60s".into())],
    )
    .await;
    let (mut on_a, mut on_b) = (cluster.a.client().await, cluster.b.client().await);
    let created = create(&mut on_a, "unannounced", "phone").await;
    let (access, id) = token_and_id(&created);
    for _ in 0..2 {
        assert!(
            validate(&mut on_b, &access).await.valid,
            "B holds it in process"
        );
    }
    let mut stream = watch(&mut on_b, "").await;
    until_caught_up(&mut stream).await;

    // No replica hears of the revocation on Redis: PUBLISH is refused.
    redis.cli(&["ACL", "SETUSER", "default", "-publish"]);
    revoke(&mut on_a, &id).await;
    let acknowledged = Instant::now();
    let event = next_revocation(&mut stream, Duration::from_secs(5)).await;
    assert_eq!(event.session_id, id);
    let mut refused_after = None;
    while acknowledged.elapsed() < Duration::from_secs(5) {
        if validate(&mut on_b, &access).await.status() == TokenStatus::SessionRevoked {
            refused_after = Some(acknowledged.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let refused_after = refused_after.expect("B refuses the session");
    println!(
        "with the announcement lost: event at B's subscriber and refusal by B within {refused_after:?}"
    );
    assert!(refused_after < Duration::from_secs(2), "{refused_after:?}");
}

#[tokio::test]
async fn when_redis_holds_writes_and_the_revoker_dies_the_log_still_revokes() {
    let redis = RedisServer::start();
    let mut cluster = Replicas::start(
        &redis.url(),
        &[
            ("SESSIOND_LOCAL_CACHE_MAX_STALENESS", "60s".into()),
            ("SESSIOND_REDIS_TIMEOUT", "100ms".into()),
        ],
    )
    .await;
    let (mut on_a, mut on_b) = (cluster.a.client().await, cluster.b.client().await);
    let created = create(&mut on_a, "double-fault", "phone").await;
    let (access, id) = token_and_id(&created);
    for _ in 0..2 {
        assert!(validate(&mut on_b, &access).await.valid, "B holds it");
    }

    // Redis holds every write (the revoked copy, the announcement) for 4 s; A revokes, and dies
    // before it could retry.
    assert_eq!(redis.cli(&["CLIENT", "PAUSE", "4000", "WRITE"]), "OK");
    let paused = Instant::now();
    revoke(&mut on_a, &id).await;
    let acknowledged = Instant::now();
    cluster.a.kill();

    let mut refused_after = None;
    while acknowledged.elapsed() < Duration::from_secs(5) {
        match validate(&mut on_b, &access).await.status() {
            TokenStatus::SessionRevoked => {
                refused_after = Some(acknowledged.elapsed());
                break;
            }
            TokenStatus::Valid => tokio::time::sleep(Duration::from_millis(10)).await,
            other => panic!("{other:?}\n{}", cluster.b.log()),
        }
    }
    let refused_after =
        refused_after.unwrap_or_else(|| panic!("B still accepts it\n{}", cluster.b.log()));
    println!("B refused the session {refused_after:?} after A's answer, Redis still paused");
    assert!(refused_after < Duration::from_secs(2), "{refused_after:?}");
    assert!(
        paused.elapsed() < Duration::from_secs(4),
        "the set-up holds: Redis still paused"
    );

    // And from then on: through the pause and after it, when Redis still holds the live copy.
    while paused.elapsed() < Duration::from_secs(7) {
        assert_eq!(
            validate(&mut on_b, &access).await.status(),
            TokenStatus::SessionRevoked,
            "{}",
            cluster.b.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Inserts `count` live sessions of `user` straight into the database; their ids and start.
async fn insert_sessions(
    database_url: &str,
    user: &str,
    count: i64,
) -> (Vec<uuid::Uuid>, DateTime<Utc>) {
    let pool = sqlx::PgPool::connect(database_url).await.unwrap();
    let rows: Vec<(uuid::Uuid, DateTime<Utc>)> = sqlx::query_as(
        "INSERT INTO session (session_id, user_id, created_at, last_seen_at, expires_at, idle_expires_at) \
         SELECT gen_random_uuid(), $1, now() - interval '1 minute', now() - interval '1 minute', \
                now() + interval '1 day', now() + interval '1 day' \
         FROM generate_series(1, $2) RETURNING session_id, created_at",
    )
    .bind(user)
    .bind(count)
    .fetch_all(&pool)
    .await
    .unwrap();
    let created_at = rows[0].1;
    (rows.into_iter().map(|(id, _)| id).collect(), created_at)
}

/// Access tokens for these sessions, signed with the replicas' key as sessiond signs them.
fn tokens_for(
    cluster: &Replicas,
    user: &str,
    ids: &[uuid::Uuid],
    created_at: DateTime<Utc>,
) -> Vec<String> {
    let defaults = Settings::parse_from(["sessiond"]);
    let signer = AccessTokenSigner::new(
        SigningKey::from_pem_file(&cluster.keys().signing_file()).unwrap(),
        defaults.issuer,
        defaults.audience,
    );
    let now = Utc::now();
    ids.iter()
        .map(|id| {
            let session = Session {
                id: SessionId::from(*id),
                user_id: UserId::try_from(user.to_owned()).unwrap(),
                device: Device::default(),
                metadata: Metadata::default(),
                created_at,
                last_seen_at: created_at,
                expires_at: now + chrono::Duration::days(1),
                idle_expires_at: now + chrono::Duration::days(1),
                revoked_at: None,
                revoke_reason: None,
            };
            signer
                .issue(&session, now, chrono::Duration::minutes(15))
                .unwrap()
                .token
        })
        .collect()
}

/// How many of `tokens` `client` answers each status for, 32 calls at a time.
async fn statuses(
    client: &Client,
    tokens: &[String],
) -> std::collections::HashMap<TokenStatus, usize> {
    let answers: Vec<TokenStatus> = stream::iter(tokens)
        .map(|token| {
            let mut client = client.clone();
            async move { validate(&mut client, token).await.status() }
        })
        .buffer_unordered(32)
        .collect()
        .await;
    let mut counts = std::collections::HashMap::new();
    for status in answers {
        *counts.entry(status).or_default() += 1;
    }
    counts
}

#[tokio::test]
async fn a_user_with_100_000_sessions_is_signed_out_in_one_call_on_every_replica() {
    const USER: &str = "crowd";
    const SESSIONS: usize = 100_000;
    let redis = RedisServer::start();
    let cluster = Replicas::start(&redis.url(), &[]).await;
    let (on_a, on_b) = (cluster.a.client().await, cluster.b.client().await);
    let (ids, created_at) = insert_sessions(cluster.database(), USER, SESSIONS as i64).await;
    let tokens = tokens_for(&cluster, USER, &ids, created_at);
    // Both replicas hold a thousand of them as live copies first.
    for client in [&on_a, &on_b] {
        let counts = statuses(client, &tokens[..1_000]).await;
        assert_eq!(counts.get(&TokenStatus::Valid), Some(&1_000), "{counts:?}");
    }

    let started = Instant::now();
    let revoked = revoke_user(&mut on_a.clone(), USER, "").await.unwrap();
    let took = started.elapsed();
    println!("RevokeUserSessions of {SESSIONS} sessions answered in {took:?}");
    assert_eq!(revoked as usize, SESSIONS);
    assert!(
        took < Duration::from_secs(5),
        "within the request timeout: {took:?}"
    );

    for (name, client) in [("A", &on_a), ("B", &on_b)] {
        let started = Instant::now();
        let counts = statuses(client, &tokens).await;
        println!(
            "{name} refused all {SESSIONS} tokens in {:?}",
            started.elapsed()
        );
        assert_eq!(
            counts.get(&TokenStatus::SessionRevoked),
            Some(&SESSIONS),
            "{name}: {counts:?}"
        );
    }
    let (after, _) = token_and_id(&create(&mut on_a.clone(), USER, "phone").await);
    for client in [&on_a, &on_b] {
        assert!(validate(&mut client.clone(), &after).await.valid);
    }
}
