use std::{collections::HashSet, time::Duration};

use futures::future::join_all;
use sessiond::api::pb::TokenStatus;
use tonic::Code;
use tonic_types::StatusExt;

use crate::{
    helpers::{DAY, MINUTE, assert_invalid_field},
    support::{
        app::{Store, spawn_app, spawn_app_with},
        rpc::tokens,
    },
};

const SECOND: Duration = Duration::from_secs(1);

fn reason_of(status: &tonic::Status) -> String {
    status.get_details_error_info().expect("error info").reason
}

async fn refresh_rotates_the_refresh_token_and_issues_a_new_access_token(store: Store) {
    let app = spawn_app(store).await;
    let created = app.create("leo", "d").await;
    let (access, refresh) = tokens(&created.tokens);
    app.advance(MINUTE);

    let refreshed = app.refresh(&refresh).await.expect("refreshed");

    let (new_access, new_refresh) = tokens(&refreshed.tokens);
    assert_ne!(new_refresh, refresh);
    assert_ne!(new_access, access);
    assert!(new_refresh.starts_with("sdrt_"));
    assert!(app.validate(&new_access).await.valid);
    let session = refreshed.session.expect("session");
    assert_eq!(
        Some(session.session_id.clone()),
        created.session.map(|s| s.session_id)
    );
    // The new token works in turn.
    app.advance(MINUTE);
    assert!(app.refresh(&new_refresh).await.is_ok());
}

async fn a_retry_within_the_grace_window_returns_the_same_refresh_token(store: Store) {
    let app = spawn_app(store).await;
    let (_, refresh) = tokens(&app.create("mia", "d").await.tokens);
    let first = app.refresh(&refresh).await.expect("refreshed");

    app.advance(9 * SECOND);
    let retry = app.refresh(&refresh).await.expect("a retry within grace");

    assert_eq!(tokens(&retry.tokens).1, tokens(&first.tokens).1);
    assert!(app.validate(&tokens(&retry.tokens).0).await.valid);
}

async fn reuse_after_the_grace_window_revokes_the_session(store: Store) {
    let app = spawn_app(store).await;
    let created = app.create("nina", "d").await;
    let (_, stolen) = tokens(&created.tokens);
    let rotated = app.refresh(&stolen).await.expect("refreshed");
    let (access, current) = tokens(&rotated.tokens);

    app.advance(11 * SECOND);
    let status = app.refresh(&stolen).await.expect_err("reuse is refused");

    assert_eq!(status.code(), Code::Unauthenticated);
    assert_eq!(reason_of(&status), "REFRESH_TOKEN_REUSED");
    let session = app
        .get(&created.session.expect("session").session_id)
        .await
        .expect("readable");
    assert_eq!(session.revoke_reason, "refresh_token_reuse");
    assert_eq!(app.status_of(&access).await, TokenStatus::SessionRevoked);
    let status = app
        .refresh(&current)
        .await
        .expect_err("the thief's victim is signed out too");
    assert_eq!(reason_of(&status), "SESSION_REVOKED");
}

async fn reuse_of_an_older_generation_is_detected_too(store: Store) {
    let app = spawn_app(store).await;
    let created = app.create("oscar", "d").await;
    let (_, generation_0) = tokens(&created.tokens);
    let generation_1 = tokens(&app.refresh(&generation_0).await.expect("rotated").tokens).1;
    app.advance(MINUTE);
    app.refresh(&generation_1).await.expect("rotated again");
    app.advance(MINUTE);

    let status = app.refresh(&generation_0).await.expect_err("reuse");

    assert_eq!(reason_of(&status), "REFRESH_TOKEN_REUSED");
}

async fn sixteen_racing_refreshes_of_one_token_yield_exactly_one_new_token(store: Store) {
    let app = spawn_app(store).await;
    let (_, refresh) = tokens(&app.create("pat", "d").await.tokens);

    let results = join_all((0..16).map(|_| app.refresh(&refresh))).await;

    let new_tokens: HashSet<String> = results
        .into_iter()
        .map(|result| tokens(&result.expect("every racer succeeds").tokens).1)
        .collect();
    assert_eq!(new_tokens.len(), 1, "{new_tokens:?}");
    assert!(!new_tokens.contains(&refresh));
    // And the one new token is the session's current token.
    let only = new_tokens.into_iter().next().unwrap();
    assert!(app.refresh(&only).await.is_ok());
}

async fn refresh_pushes_the_idle_deadline(store: Store) {
    let app = spawn_app(store).await;
    let (_, refresh) = tokens(&app.create("quinn", "d").await.tokens);
    app.advance(6 * DAY);
    let refreshed = app.refresh(&refresh).await.expect("refreshed");
    app.advance(6 * DAY);
    assert!(
        app.refresh(&tokens(&refreshed.tokens).1).await.is_ok(),
        "day 12 is within day 6 + 7"
    );
}

async fn refresh_of_an_expired_session_is_refused(store: Store) {
    let app = spawn_app_with(store, |settings| settings.session_lifetime = DAY).await;
    let (_, refresh) = tokens(&app.create("rita", "d").await.tokens);
    app.advance(DAY);
    let status = app.refresh(&refresh).await.expect_err("expired");
    assert_eq!(status.code(), Code::Unauthenticated);
    assert_eq!(reason_of(&status), "SESSION_EXPIRED");
}

async fn refresh_of_a_revoked_session_is_refused(store: Store) {
    let app = spawn_app(store).await;
    let created = app.create("sam", "d").await;
    let (_, refresh) = tokens(&created.tokens);
    app.client
        .clone()
        .revoke_session(sessiond::api::pb::RevokeSessionRequest {
            session_id: created.session.expect("session").session_id,
            reason: String::new(),
            user_id: String::new(),
        })
        .await
        .expect("revoked");
    let status = app.refresh(&refresh).await.expect_err("revoked");
    assert_eq!(status.code(), Code::Unauthenticated);
    assert_eq!(reason_of(&status), "SESSION_REVOKED");
}

async fn an_unknown_refresh_token_is_unauthenticated_and_a_malformed_one_invalid(store: Store) {
    let app = spawn_app(store).await;
    let unknown = format!("sdrt_{}", "A".repeat(43));
    let status = app.refresh(&unknown).await.expect_err("unknown");
    assert_eq!(status.code(), Code::Unauthenticated);
    assert_eq!(reason_of(&status), "REFRESH_TOKEN_UNKNOWN");

    for malformed in ["", "not-a-refresh-token", "sdrt_short"] {
        let status = app.refresh(malformed).await.expect_err("malformed");
        assert_invalid_field(&status, "refresh_token");
    }
}

/// An unknown refresh token costs one read and no write transaction, so guessed tokens cannot
/// take the write lock from real work. SQLite shows it: while another writer holds the database's
/// only write lock, an unknown token is still refused at once, not made to wait for the lock and
/// then answered UNAVAILABLE.
#[tokio::test]
async fn sqlite_an_unknown_refresh_token_takes_no_write_lock() {
    use sqlx::Connection;
    let app = spawn_app_with(Store::Sqlite, |settings| {
        settings.database_timeout = Duration::from_millis(500);
    })
    .await;
    app.create("wanda", "d").await;
    let mut writer = sqlx::SqliteConnection::connect_with(
        &sqlx::sqlite::SqliteConnectOptions::new().filename(app.data_dir.join("sessiond.db")),
    )
    .await
    .unwrap();
    let _write_lock = writer.begin_with("BEGIN IMMEDIATE").await.unwrap();

    let unknown = format!("sdrt_{}", "A".repeat(43));
    let status = app.refresh(&unknown).await.expect_err("unknown");

    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert_eq!(reason_of(&status), "REFRESH_TOKEN_UNKNOWN");

    // A write does wait for the lock, and past the timeout it is UNAVAILABLE, as a busy
    // Postgres is: worth a retry, not a bug.
    let status = app
        .try_create("wanda", "other")
        .await
        .expect_err("locked out");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
}

/// Each rotation mixes a random salt, kept only in the database, into the successor: whoever
/// holds the refresh key and an old token still cannot compute the next one offline, as they
/// could when the successor was `HMAC(key, token)` alone.
async fn the_refresh_key_and_a_token_alone_do_not_give_its_successor(store: Store) {
    use hmac::{Hmac, Mac};
    use sha2::{Digest, Sha256};
    let app = spawn_app(store).await;
    let (_, first) = tokens(&app.create("kim", "d").await.tokens);
    let key = Sha256::digest(std::fs::read(app.keys.refresh_file()).unwrap());
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).unwrap();
    mac.update(&first.as_bytes()["sdrt_".len()..]);
    let unsalted = format!(
        "sdrt_{}",
        base64::Engine::encode(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD,
            mac.finalize().into_bytes()
        )
    );

    let rotated = app.refresh(&first).await.expect("rotates");
    let (_, second) = tokens(&rotated.tokens);
    assert_ne!(second, unsalted, "the successor is not HMAC(key, token)");
    // A retry gets the same successor (the salt is read back), and the offline guess is unknown.
    assert_eq!(tokens(&app.refresh(&first).await.unwrap().tokens).1, second);
    let status = app.refresh(&unsalted).await.expect_err("unknown");
    assert_eq!(reason_of(&status), "REFRESH_TOKEN_UNKNOWN");
}

on_every_store!(
    the_refresh_key_and_a_token_alone_do_not_give_its_successor,
    refresh_rotates_the_refresh_token_and_issues_a_new_access_token,
    a_retry_within_the_grace_window_returns_the_same_refresh_token,
    reuse_after_the_grace_window_revokes_the_session,
    reuse_of_an_older_generation_is_detected_too,
    sixteen_racing_refreshes_of_one_token_yield_exactly_one_new_token,
    refresh_pushes_the_idle_deadline,
    refresh_of_an_expired_session_is_refused,
    refresh_of_a_revoked_session_is_refused,
    an_unknown_refresh_token_is_unauthenticated_and_a_malformed_one_invalid,
);
