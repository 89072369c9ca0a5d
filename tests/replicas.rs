//! Revocation reaches every replica, end to end: two real `sessiond` binaries (replicas A and B),
//! started as child processes over one fresh Postgres database and one Redis server that each test
//! owns (a `redis-server` child on a free loopback port, so cutting its pub/sub connections
//! disturbs nobody else).
//!
//! Both replicas run with `SESSIOND_LOCAL_CACHE_MAX_STALENESS=60s`, so the in-process tier's TTL
//! cannot be what makes B notice a revocation within the test: only the invalidation channel
//! (Redis pub/sub), or B distrusting its in-process tier while that channel is down, can.
//!
//! What is held:
//! - a session revoked on A is refused by B within 1 s, although B held it in its in-process tier;
//! - when B loses its subscription (`CLIENT KILL TYPE pubsub`), a revocation made meanwhile is
//!   still refused by B: B bypasses its in-process tier until resubscribed, and clears it then;
//! - once resubscribed, B serves from its in-process tier again;
//! - a user erased on A leaves no copy in B's in-process tier (nor in Redis).

// Tests may panic on a broken expectation; that is how they fail.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::{Duration, Instant};

use sessiond::api::pb::TokenStatus;
use support::{
    process::{SessiondProcess, local_hits},
    redis::RedisServer,
    replicas::{Replicas, SUBSCRIBED, wait_until_revoked},
    rpc::{Client, create, delete_user, revoke, token_and_id, validate},
};

/// The requirement: a revocation is refused by every replica within this.
const PROPAGATION_BOUND: Duration = Duration::from_secs(1);
/// What B logs when it loses the invalidation channel.
const LOST: &str = "lost the invalidation channel";

#[tokio::test]
async fn a_revocation_on_one_replica_is_refused_by_the_other_within_a_second() {
    let redis = RedisServer::start();
    let cluster = Replicas::start(
        &redis.url(),
        &[("SESSIOND_LOCAL_CACHE_MAX_STALENESS", "60s".into())],
    )
    .await;
    let (a, b) = (&cluster.a, &cluster.b);
    let (mut on_a, mut on_b) = (a.client().await, b.client().await);

    let created = create(&mut on_a, "replica-user-1", "phone").await;
    let (access, session_id) = token_and_id(&created);

    // B validates twice: the first reads Redis (A wrote the session there) and keeps the copy in
    // its in-process tier; the second is answered from that tier.
    let hits_before = local_hits(b).await;
    for _ in 0..2 {
        let verdict = validate(&mut on_b, &access).await;
        assert!(verdict.valid, "B: {verdict:?}\n{}", b.log());
    }
    let hits_after = local_hits(b).await;
    assert!(
        hits_after > hits_before,
        "B did not answer from its in-process tier (local hits {hits_before} -> {hits_after})\n{}",
        b.log()
    );

    let revoke_sent = Instant::now();
    revoke(&mut on_a, &session_id).await;
    let revoke_took = revoke_sent.elapsed();
    let (after_ack, stale_answers) = wait_until_revoked(&mut on_b, &access, b).await;
    let delay = revoke_took + after_ack;
    println!(
        "revocation on A (RevokeSession took {revoke_took:?}) refused by B {after_ack:?} after A \
         acknowledged it, {delay:?} after it was sent; {stale_answers} stale VALID answer(s) \
         before (local TTL 60s: this was the invalidation channel)"
    );
    assert!(
        delay < PROPAGATION_BOUND,
        "B accepted the session {delay:?} after A was asked to revoke it (bound \
         {PROPAGATION_BOUND:?})\n{}",
        b.log()
    );
    // And it stays refused (no stale copy comes back).
    for _ in 0..20 {
        assert_eq!(
            validate(&mut on_b, &access).await.status(),
            TokenStatus::SessionRevoked
        );
    }
}

/// An erasure on A reaches B's in-process tier too. B holds two of the user's sessions there: a
/// live one, and one revoked before (which the erasure's sign-out does not announce again, so
/// only the erasure's own announcement can drop it). Within a second, and from then on, B answers
/// SESSION_NOT_FOUND for both; a copy it kept, live or revoked, would answer otherwise for the
/// in-process TTL of 60 s.
#[tokio::test]
async fn an_erasure_on_one_replica_leaves_no_copy_on_the_other() {
    const USER: &str = "replica-user-erased";
    let redis = RedisServer::start();
    let cluster = Replicas::start(
        &redis.url(),
        &[("SESSIOND_LOCAL_CACHE_MAX_STALENESS", "60s".into())],
    )
    .await;
    let (a, b) = (&cluster.a, &cluster.b);
    let (mut on_a, mut on_b) = (a.client().await, b.client().await);
    let (live, _) = token_and_id(&create(&mut on_a, USER, "phone").await);
    cache_locally(&mut on_b, b, &live).await;
    let (revoked, revoked_id) = token_and_id(&create(&mut on_a, USER, "laptop").await);
    revoke(&mut on_a, &revoked_id).await;
    hold_locally(&mut on_b, b, &revoked, TokenStatus::SessionRevoked).await;

    let sent = Instant::now();
    assert_eq!(delete_user(&mut on_a, USER).await.expect("erased"), 2);
    for access in [&live, &revoked] {
        let mut stale = 0;
        loop {
            let status = validate(&mut on_b, access).await.status();
            if status == TokenStatus::SessionNotFound {
                break;
            }
            stale += 1;
            assert!(
                sent.elapsed() < PROPAGATION_BOUND,
                "B still answers {status:?} ({stale} times) {:?} after A was asked to erase\n{}",
                sent.elapsed(),
                b.log()
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        println!(
            "erasure on A: B answered SESSION_NOT_FOUND {:?} after it was sent ({stale} other \
             answer(s) before)",
            sent.elapsed()
        );
    }
    for _ in 0..20 {
        for access in [&live, &revoked] {
            assert_eq!(
                validate(&mut on_b, access).await.status(),
                TokenStatus::SessionNotFound
            );
        }
    }
    let keys = redis.cli(&["--scan", "--pattern", &format!("{}*", cluster.prefix)]);
    assert!(!keys.contains(USER), "Redis still holds {keys}");
}

#[tokio::test]
async fn a_replica_that_lost_its_subscription_does_not_trust_its_in_process_tier() {
    let redis = RedisServer::start();
    let cluster = Replicas::start(
        &redis.url(),
        &[("SESSIOND_LOCAL_CACHE_MAX_STALENESS", "60s".into())],
    )
    .await;
    let (a, b) = (&cluster.a, &cluster.b);
    let (mut on_a, mut on_b) = (a.client().await, b.client().await);

    // B holds S2 in its in-process tier.
    let s2 = create(&mut on_a, "replica-user-2", "phone").await;
    let (access2, id2) = token_and_id(&s2);
    cache_locally(&mut on_b, b, &access2).await;

    // The cut: kill every pub/sub connection (A's and B's subscribers), revoke at once, ask B.
    let killed = redis.cli(&["CLIENT", "KILL", "TYPE", "pubsub"]);
    let cut = Instant::now();
    println!("CLIENT KILL TYPE pubsub: {killed} connection(s) killed (A's and B's subscribers)");
    assert!(killed.parse::<u32>().unwrap() >= 2, "killed {killed}");
    revoke(&mut on_a, &id2).await;
    let verdict = validate(&mut on_b, &access2).await;
    println!(
        "S2 revoked on A and validated on B {:?} after the cut: {:?}",
        cut.elapsed(),
        verdict.status()
    );
    assert_eq!(
        verdict.status(),
        TokenStatus::SessionRevoked,
        "B accepted a session revoked on A right after its subscription was cut: {verdict:?}\n{}",
        b.log()
    );
    b.wait_for_log(LOST, 1).await;
    b.wait_for_log(SUBSCRIBED, 2).await;
    println!(
        "B logged the loss and resubscribed within {:?} of the cut",
        cut.elapsed()
    );
    for _ in 0..5 {
        assert_eq!(
            validate(&mut on_b, &access2).await.status(),
            TokenStatus::SessionRevoked
        );
    }

    // Recovery: after resubscribing, B serves from its in-process tier again...
    let s3 = create(&mut on_a, "replica-user-3", "phone").await;
    let (access3, id3) = token_and_id(&s3);
    cache_locally(&mut on_b, b, &access3).await;
    let hits_before = local_hits(b).await;
    for _ in 0..10 {
        assert!(validate(&mut on_b, &access3).await.valid);
    }
    let hits_after = local_hits(b).await;
    println!("after resubscribing, B's local hits {hits_before} -> {hits_after} over 10 Validates");
    assert!(
        hits_after >= hits_before + 10.0,
        "B did not serve from its in-process tier again after resubscribing \
         ({hits_before} -> {hits_after})\n{}",
        b.log()
    );

    // ...and the channel works again: a revocation on A reaches B's in-process tier quickly.
    let revoke_sent = Instant::now();
    revoke(&mut on_a, &id3).await;
    wait_until_revoked(&mut on_b, &access3, b).await;
    let delay = revoke_sent.elapsed();
    println!("after resubscribing, a revocation on A was refused by B after {delay:?}");
    assert!(delay < PROPAGATION_BOUND, "{delay:?}\n{}", b.log());
}

/// The cut held open: B's SUBSCRIBE is refused (`ACL SETUSER default -subscribe`), so B is not
/// subscribed and must keep bypassing its in-process tier, however long that lasts.
#[tokio::test]
async fn a_replica_whose_resubscription_is_refused_keeps_bypassing_its_in_process_tier() {
    let redis = RedisServer::start();
    let cluster = Replicas::start(
        &redis.url(),
        &[("SESSIOND_LOCAL_CACHE_MAX_STALENESS", "60s".into())],
    )
    .await;
    let (a, b) = (&cluster.a, &cluster.b);
    let (mut on_a, mut on_b) = (a.client().await, b.client().await);

    redis.cli(&["ACL", "SETUSER", "default", "-subscribe", "-psubscribe"]);
    let killed = redis.cli(&["CLIENT", "KILL", "TYPE", "pubsub"]);
    assert!(killed.parse::<u32>().unwrap() >= 2, "killed {killed}");
    b.wait_for_log(LOST, 1).await;
    // Long enough for B to try (and fail) to resubscribe, more than once.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        redis.cli(&["PUBSUB", "NUMSUB", &cluster.channel]),
        format!("{}\n0", cluster.channel),
        "nobody can be subscribed"
    );

    // B is not subscribed: a session it validates must not be served from its in-process tier.
    let s = create(&mut on_a, "replica-user-held", "phone").await;
    let (access, id) = token_and_id(&s);
    let hits_before = local_hits(b).await;
    for _ in 0..5 {
        assert!(validate(&mut on_b, &access).await.valid);
    }
    let hits_after = local_hits(b).await;
    revoke(&mut on_a, &id).await;
    let verdict = validate(&mut on_b, &access).await;
    println!(
        "unsubscribed B: local hits {hits_before} -> {hits_after}; after revocation on A, B says \
         {:?}",
        verdict.status()
    );
    assert_eq!(
        hits_after,
        hits_before,
        "B served from its in-process tier while not subscribed (PUBSUB NUMSUB is 0)\n{}",
        b.log()
    );
    assert_eq!(
        verdict.status(),
        TokenStatus::SessionRevoked,
        "B accepted a session revoked on A while not subscribed\n{}",
        b.log()
    );

    // SUBSCRIBE allowed again: B resubscribes by itself, and hears revocations again.
    redis.cli(&["ACL", "SETUSER", "default", "+subscribe", "+psubscribe"]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while redis.cli(&["PUBSUB", "NUMSUB", &cluster.channel]) != format!("{}\n2", cluster.channel) {
        assert!(
            Instant::now() < deadline,
            "A and B did not resubscribe within 10 s of SUBSCRIBE being allowed again\n{}",
            b.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let s = create(&mut on_a, "replica-user-held-2", "phone").await;
    let (access, id) = token_and_id(&s);
    cache_locally(&mut on_b, b, &access).await;
    revoke(&mut on_a, &id).await;
    let (delay, _) = wait_until_revoked(&mut on_b, &access, b).await;
    assert!(delay < PROPAGATION_BOUND, "{delay:?}\n{}", b.log());
}

/// Validates `access` on B until B answers from its in-process tier (B may still be subscribing).
async fn cache_locally(client: &mut Client, b: &SessiondProcess, access: &str) {
    hold_locally(client, b, access, TokenStatus::Valid).await;
}

/// Validates `access` on `b` until `b` answers it from its in-process tier, each answer `status`.
async fn hold_locally(client: &mut Client, b: &SessiondProcess, access: &str, status: TokenStatus) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let before = local_hits(b).await;
        let verdict = validate(client, access).await;
        assert_eq!(verdict.status(), status, "B: {verdict:?}\n{}", b.log());
        if local_hits(b).await > before {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "B never served the session from its in-process tier\n{}",
            b.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
