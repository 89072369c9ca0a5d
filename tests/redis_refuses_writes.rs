//! A revocation Redis refuses is never lost: two real `sessiond` replicas (A and B) over one fresh
//! Postgres database and one `redis-server` the test owns, and Redis made to refuse the
//! revocation's write while it still serves the live copy:
//! - out of memory with `noeviction` (a full Redis);
//! - an ACL that denies write commands and scripts;
//! - the same ACL denying `PUBLISH` too, so the invalidation message is lost as well;
//! - a read-only replica (after a bad failover, the URL names a server that is now a replica);
//! - killed at the moment of the revocation, and restarted from a snapshot that holds the live
//!   copy (what a failover to a lagging replica looks like).
//!
//! Each test asserts that A refuses the session at once and B within 1 s of A's answer, and that
//! both keep refusing it for longer than the cache TTL (set short here), through the fault and
//! after it heals. Then that the cache heals: the revoked copy lands in Redis, both replicas read
//! Redis again, and a warm `Validate` is answered from the in-process tier with no Redis lookup.

// Tests may panic on a broken expectation; that is how they fail.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::{Duration, Instant};

use sessiond::api::pb::TokenStatus;
use support::{
    process::{SessiondProcess, local_hits, redis_hits},
    redis::{REVOKED_RANK, RedisServer},
    replicas::{Replicas, wait_until_revoked},
    rpc::{Client, create, revoke, token_and_id, validate},
};

/// The requirement: once A has acknowledged the revocation, B refuses the session within this.
const PROPAGATION_BOUND: Duration = Duration::from_secs(1);
/// `SESSIOND_CACHE_TTL` in these tests: how long a copy can live in Redis.
const CACHE_TTL: Duration = Duration::from_secs(6);
/// How long the cache may take to heal once Redis takes writes again.
const HEAL_BOUND: Duration = Duration::from_secs(10);

/// How Redis is made to refuse the revocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    OutOfMemory,
    AclDeniesWrites,
    AclDeniesWritesAndPublish,
    ReadOnlyReplica,
    Killed,
}

#[tokio::test]
async fn a_revocation_refused_by_a_full_redis_is_refused_everywhere() {
    revocation_holds_through(Fault::OutOfMemory).await;
}

#[tokio::test]
async fn a_revocation_refused_by_an_acl_is_refused_everywhere() {
    revocation_holds_through(Fault::AclDeniesWrites).await;
}

#[tokio::test]
async fn a_revocation_refused_with_its_invalidation_message_is_refused_everywhere() {
    revocation_holds_through(Fault::AclDeniesWritesAndPublish).await;
}

#[tokio::test]
async fn a_revocation_refused_by_a_read_only_replica_is_refused_everywhere() {
    revocation_holds_through(Fault::ReadOnlyReplica).await;
}

#[tokio::test]
async fn a_revocation_while_redis_is_killed_is_refused_everywhere_after_it_restarts_stale() {
    revocation_holds_through(Fault::Killed).await;
}

async fn revocation_holds_through(fault: Fault) {
    let mut redis = RedisServer::start();
    let cluster = Replicas::start(
        &redis.url(),
        &[
            ("SESSIOND_CACHE_TTL", format!("{}s", CACHE_TTL.as_secs())),
            ("SESSIOND_REDIS_TIMEOUT", "100ms".into()),
        ],
    )
    .await;
    let (a, b) = (&cluster.a, &cluster.b);
    let (mut on_a, mut on_b) = (a.client().await, b.client().await);
    for replica in [a, b] {
        wait_until_trusting_redis(replica).await;
    }

    // Both replicas answer VALID, and B read the live copy from Redis.
    let user = format!("refused-{fault:?}");
    let created = create(&mut on_a, &user, "phone").await;
    let (access, session_id) = token_and_id(&created);
    let key = format!("{}{{u:{user}}}:s:{session_id}", cluster.prefix);
    let redis_hits_before = redis_hits(b).await;
    assert!(validate(&mut on_a, &access).await.valid);
    wait_for(
        || async { !redis.cli(&["HGET", &key, "rank"]).is_empty() },
        "the live copy reached Redis",
    )
    .await;
    assert!(validate(&mut on_b, &access).await.valid, "{}", b.log());
    assert!(
        redis_hits(b).await > redis_hits_before,
        "B did not read the live copy from Redis\n{}",
        b.log()
    );

    // Redis refuses writes; its live copy stays readable.
    let mut primary = None;
    match fault {
        Fault::OutOfMemory => {
            redis.cli(&["CONFIG", "SET", "maxmemory-policy", "noeviction"]);
            redis.cli(&["CONFIG", "SET", "maxmemory", "1"]);
        }
        Fault::AclDeniesWrites => {
            redis.cli(&["ACL", "SETUSER", "default", "-@write", "-@scripting"]);
        }
        Fault::AclDeniesWritesAndPublish => {
            redis.cli(&[
                "ACL",
                "SETUSER",
                "default",
                "-@write",
                "-@scripting",
                "-publish",
            ]);
        }
        Fault::ReadOnlyReplica => primary = Some(demote_to_replica(&redis, &key).await),
        Fault::Killed => {
            // The snapshot the restarted server loads holds the live copy.
            assert_eq!(redis.cli(&["SAVE"]), "OK");
            redis.kill();
        }
    }
    if fault != Fault::Killed {
        let rank = redis.cli(&["HGET", &key, "rank"]);
        assert!(
            !rank.is_empty() && rank != REVOKED_RANK,
            "the set-up holds: Redis serves the live copy (rank {rank:?})"
        );
    }

    revoke(&mut on_a, &session_id).await;
    let acknowledged = Instant::now();
    assert_eq!(
        validate(&mut on_a, &access).await.status(),
        TokenStatus::SessionRevoked,
        "A accepted the session it had just revoked\n{}",
        a.log()
    );
    wait_until_revoked(&mut on_b, &access, b).await;
    let refused_by_b = acknowledged.elapsed();
    println!("{fault:?}: B refused the session {refused_by_b:?} after A acknowledged it");
    assert!(
        refused_by_b < PROPAGATION_BOUND,
        "B accepted the session {refused_by_b:?} after A acknowledged its revocation\n{}",
        b.log()
    );
    let clients = &mut [(&mut on_a, a), (&mut on_b, b)];
    hold_revoked(clients, &access, Duration::from_secs(1)).await;
    assert_eq!(
        a.metric("sessiond_redis_trusted", &[]).await,
        0.0,
        "A reads a Redis that refused its revocation"
    );
    if fault != Fault::Killed {
        assert!(a.metric("sessiond_redis_writes_refused_total", &[]).await > 0.0);
    }

    // The fault heals (the killed Redis comes back stale at once, and so is held longest).
    match fault {
        Fault::OutOfMemory => drop(redis.cli(&["CONFIG", "SET", "maxmemory", "0"])),
        Fault::AclDeniesWrites | Fault::AclDeniesWritesAndPublish => {
            drop(redis.cli(&["ACL", "SETUSER", "default", "+@all"]))
        }
        Fault::ReadOnlyReplica => drop(redis.cli(&["REPLICAOF", "NO", "ONE"])),
        Fault::Killed => {
            redis.restart();
            // Loaded from the snapshot, the live copy among them: Redis is back, stale.
            let log = redis.log();
            assert!(
                log.contains("Done loading RDB") && log.contains("keys expired: 0"),
                "the restarted Redis did not load the snapshot's live copy\n{log}"
            );
        }
    }
    // The cache heals: the revoked copy lands in Redis...
    let healing = Instant::now();
    wait_for(
        || async { redis.cli(&["HGET", &key, "rank"]) == REVOKED_RANK },
        "the revoked copy landed in Redis",
    )
    .await;
    println!(
        "{fault:?}: the revoked copy landed {:?} after the fault healed",
        healing.elapsed()
    );
    hold_revoked(clients, &access, CACHE_TTL + Duration::from_secs(1)).await;
    drop(primary);

    // ...and both replicas read Redis again.
    for replica in [a, b] {
        wait_until_trusting_redis(replica).await;
        assert!(
            replica
                .metric("sessiond_redis_reconciled_sessions_total", &[])
                .await
                >= 1.0
        );
    }
    let healed = create(&mut on_a, &format!("{user}-healed"), "phone").await;
    let (healed_access, _) = token_and_id(&healed);
    let healed_key = format!(
        "{}{{u:{user}-healed}}:s:{}",
        cluster.prefix,
        healed.session.as_ref().unwrap().session_id
    );
    wait_for(
        || async { !redis.cli(&["HGET", &healed_key, "rank"]).is_empty() },
        "a new session reached Redis",
    )
    .await;
    let before = redis_hits(b).await;
    assert!(validate(&mut on_b, &healed_access).await.valid);
    assert_eq!(
        redis_hits(b).await,
        before + 1.0,
        "B does not read Redis again"
    );
    // Warm: answered in process, no Redis lookup (hit or miss), no store read.
    let (lookups, hits) = (redis_lookups(b).await, local_hits(b).await);
    for _ in 0..20 {
        assert!(validate(&mut on_b, &healed_access).await.valid);
    }
    println!(
        "{fault:?}: after healing, 20 warm Validates on B: local hits +{}, Redis lookups +{}",
        local_hits(b).await - hits,
        redis_lookups(b).await - lookups
    );
    assert_eq!(local_hits(b).await, hits + 20.0);
    assert_eq!(redis_lookups(b).await, lookups);
}

/// Makes `redis` a read-only replica that still holds `key`: a second server copies its data and
/// is promoted, then `redis` replicates from it (a failover that left the URL on the old primary).
/// Returns the new primary, which must outlive the fault.
async fn demote_to_replica(redis: &RedisServer, key: &str) -> RedisServer {
    let primary = RedisServer::start();
    // Full syncs at once, not after Redis's default wait of 5 s for more replicas: the live copy
    // must still be within its TTL at the end.
    for server in [redis, &primary] {
        server.cli(&["CONFIG", "SET", "repl-diskless-sync-delay", "0"]);
    }
    let started = Instant::now();
    primary.cli(&["REPLICAOF", "127.0.0.1", &redis.port.to_string()]);
    wait_for(
        || async { primary.cli(&["EXISTS", key]) == "1" },
        "the new primary copied the live copy",
    )
    .await;
    primary.cli(&["REPLICAOF", "NO", "ONE"]);
    redis.cli(&["REPLICAOF", "127.0.0.1", &primary.port.to_string()]);
    wait_for(
        || async {
            redis
                .cli(&["INFO", "replication"])
                .contains("master_link_status:up")
        },
        "the old primary replicates from the new one",
    )
    .await;
    assert!(
        redis
            .cli_try(&["SET", "probe", "1"])
            .is_none_or(|out| out.contains("READONLY")),
        "the old primary is read-only"
    );
    println!("ReadOnlyReplica: demoted in {:?}", started.elapsed());
    primary
}

/// Asserts, every 50 ms for `period`, that every replica refuses `access` as revoked.
async fn hold_revoked(
    clients: &mut [(&mut Client, &SessiondProcess)],
    access: &str,
    period: Duration,
) {
    let until = Instant::now() + period;
    while Instant::now() < until {
        for (client, replica) in clients.iter_mut() {
            let verdict = validate(client, access).await;
            assert_eq!(
                verdict.status(),
                TokenStatus::SessionRevoked,
                "a replica accepted a revoked session\n{}",
                replica.log()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until `replica` reads Redis (no doubt pending).
async fn wait_until_trusting_redis(replica: &SessiondProcess) {
    let deadline = Instant::now() + HEAL_BOUND;
    while replica.metric("sessiond_redis_trusted", &[]).await != 1.0 {
        assert!(
            Instant::now() < deadline,
            "the replica did not trust Redis again within {HEAL_BOUND:?}\n{}",
            replica.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits up to 10 s until `condition` holds.
async fn wait_for<F, Fut>(condition: F, what: &str)
where
    F: Fn() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(10);
    while !condition().await {
        assert!(Instant::now() < deadline, "not within 10 s: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn redis_lookups(sessiond: &SessiondProcess) -> f64 {
    sessiond
        .metric("sessiond_cache_lookups_total", &[("tier", "redis")])
        .await
}
