use std::time::{Duration, Instant};

use sessiond::api::pb::{self, TokenStatus};
use tonic::Code;
use tonic_types::StatusExt;

use crate::support::{
    app::{spawn, test_settings},
    postgres::fresh_migrated_database,
    redis::RedisServer,
    rpc::tokens,
};

/// A loopback address where nothing listens: bind a port, then let it go.
fn dead_address() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    format!("127.0.0.1:{port}")
}

#[tokio::test]
async fn every_rpc_works_from_postgres_when_redis_is_unreachable() {
    let (url, pool) = fresh_migrated_database().await;
    let mut settings = test_settings(&url);
    settings.redis_url = Some(format!("redis://{}", dead_address()).into());
    let app = spawn(settings, Some(pool)).await;
    let mut client = app.client.clone();

    let created = app.create("ada", "phone").await;
    let other = app.create("ada", "laptop").await;
    let id = created.session.clone().expect("session").session_id;
    let (access, refresh) = tokens(&created.tokens);
    assert!(app.validate(&access).await.valid);
    let refreshed = app.refresh(&refresh).await.expect("refresh works");
    assert!(app.validate(&tokens(&refreshed.tokens).0).await.valid);
    assert_eq!(app.get(&id).await.expect("get works").session_id, id);
    let listed = client
        .list_user_sessions(pb::ListUserSessionsRequest {
            user_id: "ada".into(),
            ..Default::default()
        })
        .await
        .expect("list works");
    assert_eq!(listed.into_inner().sessions.len(), 2);
    let revoked = app.try_revoke(&id, "").await.expect("revoke works");
    assert!(revoked);
    assert_eq!(app.status_of(&access).await, TokenStatus::SessionRevoked);
    let count = app.revoke_user("ada", "").await.expect("revoke-user works");
    assert_eq!(count, 1);
    assert_eq!(
        app.status_of(&tokens(&other.tokens).0).await,
        TokenStatus::SessionRevoked
    );
}

#[tokio::test]
async fn requests_fail_with_unavailable_within_the_timeout_when_postgres_is_unreachable() {
    let mut settings = test_settings(&format!("postgres://postgres@{}/postgres", dead_address()));
    settings.database_timeout = Duration::from_millis(500);
    let app = spawn(settings, None).await;

    let started = Instant::now();
    let status = app.try_create("bea", "").await.expect_err("no store");

    assert_eq!(status.code(), Code::Unavailable);
    assert!(
        !status.message().contains("127.0.0.1"),
        "no internal detail leaks: {}",
        status.message()
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
}

/// DeleteUserSessions deletes Redis's copies before the store's rows (a live copy Redis kept
/// could never be repaired once the rows are gone), so with Redis down it signs the user out,
/// answers UNAVAILABLE and keeps the rows; once Redis is back, a retry erases them.
#[tokio::test]
async fn erasing_a_user_while_redis_is_down_signs_them_out_and_a_retry_erases_them() {
    let mut redis = RedisServer::start();
    let (url, pool) = fresh_migrated_database().await;
    let mut settings = test_settings(&url);
    settings.redis_url = Some(redis.url().into());
    let app = spawn(settings, Some(pool)).await;
    let created = app.create("ada", "phone").await;
    let id = created.session.clone().expect("session").session_id;
    let access = tokens(&created.tokens).0;
    assert!(app.validate(&access).await.valid);

    redis.kill();
    let status = app.delete_user("ada").await.expect_err("Redis is down");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(
        status.get_details_error_info().expect("error info").reason,
        "CACHE_UNAVAILABLE"
    );
    assert_eq!(app.status_of(&access).await, TokenStatus::SessionRevoked);
    let kept = app.get(&id).await.expect("the row stays for the retry");
    assert_eq!(kept.revoke_reason, "erased");

    redis.restart();
    let deadline = Instant::now() + Duration::from_secs(10);
    let erased = loop {
        match app.delete_user("ada").await {
            Ok(erased) => break erased,
            Err(status) if status.code() == Code::Unavailable && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(status) => panic!("the retry failed: {status:?}"),
        }
    };
    assert_eq!(erased, 1);
    assert_eq!(
        app.get(&id).await.expect_err("erased").code(),
        Code::NotFound
    );
    assert_eq!(app.status_of(&access).await, TokenStatus::SessionNotFound);
}
