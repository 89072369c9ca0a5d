//! Rate limits across processes: two real sessiond replicas share one count through Redis, and a
//! replica whose Redis (one this test owns, on its own port) is killed keeps limiting in process.
//! The per-call rules (RetryInfo, refresh retries not counted) are in `tests/api/rates.rs`.

// Tests may panic on a broken expectation; that is how they fail.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::Duration;

use support::{
    keys::Keys,
    postgres::fresh_database,
    process::SessiondProcess,
    redis::{RedisServer, redis_url},
    replicas::Replicas,
    rpc::{Client, rate_limit_delay, try_create},
};
use tonic::Status;

/// Asserts `status` is a refusal of CreateSession by `3/1m`: its RetryInfo is at most the
/// 20 s interval.
fn assert_rate_limited(status: &Status) {
    let delay = rate_limit_delay(status, "SESSIOND_CREATE_RATE_PER_USER");
    assert!(delay <= Duration::from_secs(20), "{delay:?}");
}

#[tokio::test]
async fn a_user_over_the_create_rate_is_refused_by_both_replicas_and_another_user_is_not() {
    let replicas = Replicas::start(
        &redis_url(),
        &[("SESSIOND_CREATE_RATE_PER_USER", "3/1m".into())],
    )
    .await;
    let (mut a, mut b) = (replicas.a.client().await, replicas.b.client().await);
    // Three in all, over both: the count is one.
    try_create(&mut a, "mallory", "").await.unwrap();
    try_create(&mut b, "mallory", "").await.unwrap();
    try_create(&mut a, "mallory", "").await.unwrap();

    for client in [&mut a, &mut b] {
        let refused = try_create(client, "mallory", "")
            .await
            .expect_err("over the rate");
        assert_rate_limited(&refused);
    }
    try_create(&mut a, "nina", "").await.unwrap();
    try_create(&mut b, "nina", "").await.unwrap();
}

async fn limited_replica(redis: &RedisServer, keys: &Keys) -> (SessiondProcess, Client) {
    let mut env = vec![
        ("SESSIOND_DATABASE_URL", fresh_database().await),
        ("SESSIOND_REDIS_URL", redis.url()),
        (
            "SESSIOND_REDIS_KEY_PREFIX",
            format!("sessiond-rates:{}:", uuid::Uuid::now_v7().simple()),
        ),
        ("SESSIOND_CREATE_RATE_PER_USER", "3/1m".into()),
        ("SESSIOND_SHUTDOWN_DRAIN", "0s".into()),
    ];
    env.extend(keys.env());
    let sessiond = SessiondProcess::start(&env).await;
    let client = sessiond.client().await;
    (sessiond, client)
}

#[tokio::test]
async fn with_its_redis_killed_a_replica_still_limits_a_user_in_process() {
    let mut redis = RedisServer::start();
    let keys = Keys::generate();
    let (sessiond, mut client) = limited_replica(&redis, &keys).await;
    // Counted in Redis first.
    try_create(&mut client, "oscar", "").await.unwrap();
    assert!(
        redis
            .cli(&["--scan", "--pattern", "*rate:*"])
            .contains("create-user:oscar")
    );

    redis.kill();
    // Counted in process from here on: three pass, the fourth is refused.
    for _ in 0..3 {
        try_create(&mut client, "oscar", "")
            .await
            .unwrap_or_else(|status| panic!("{status:?}\n{}", sessiond.log()));
    }
    let refused = try_create(&mut client, "oscar", "")
        .await
        .expect_err("over the rate, counted in process");
    assert_rate_limited(&refused);
    try_create(&mut client, "peggy", "").await.unwrap();
}
