use sessiond::{api::pb, config::LimitPolicy};
use tonic::Code;
use tonic_types::StatusExt;

use crate::support::app::{Store, spawn_app_with};

async fn evict_oldest_revokes_the_oldest_session_to_make_room(store: Store) {
    let app = spawn_app_with(store, |settings| {
        settings.max_sessions_per_user = 2;
        settings.session_limit_policy = LimitPolicy::EvictOldest;
    })
    .await;
    let oldest = app.create("frank", "a").await;
    let middle = app.create("frank", "b").await;

    let newest = app.create("frank", "c").await;

    let oldest_id = oldest.session.expect("session").session_id;
    assert_eq!(
        app.get(&oldest_id).await.expect("readable").revoke_reason,
        "session_limit"
    );
    assert_eq!(
        app.status_of(&oldest.tokens.expect("tokens").access_token)
            .await,
        pb::TokenStatus::SessionRevoked
    );
    assert!(
        app.validate(&middle.tokens.expect("tokens").access_token)
            .await
            .valid
    );
    assert!(
        app.validate(&newest.tokens.expect("tokens").access_token)
            .await
            .valid
    );
}

async fn deny_refuses_a_session_over_the_limit_and_changes_nothing(store: Store) {
    let app = spawn_app_with(store, |settings| {
        settings.max_sessions_per_user = 2;
        settings.session_limit_policy = LimitPolicy::Deny;
    })
    .await;
    let first = app.create("grace", "a").await;
    let second = app.create("grace", "b").await;

    let status = app
        .try_create("grace", "")
        .await
        .expect_err("over the limit");

    assert_eq!(status.code(), Code::ResourceExhausted);
    assert_eq!(
        status.get_details_error_info().expect("error info").reason,
        "SESSION_LIMIT_REACHED"
    );
    assert!(
        app.validate(&first.tokens.expect("tokens").access_token)
            .await
            .valid
    );
    assert!(
        app.validate(&second.tokens.expect("tokens").access_token)
            .await
            .valid
    );
    // Replacing a session on a known device does not grow the count, so it is allowed.
    let replaced = app.create("grace", "a").await;
    assert!(
        app.validate(&replaced.tokens.expect("tokens").access_token)
            .await
            .valid
    );
}

async fn revoked_sessions_do_not_count_toward_the_limit(store: Store) {
    let app = spawn_app_with(store, |settings| {
        settings.max_sessions_per_user = 1;
        settings.session_limit_policy = LimitPolicy::Deny;
    })
    .await;
    let first = app.create("heidi", "a").await;
    app.try_revoke(&first.session.expect("session").session_id, "signed out")
        .await
        .expect("revoked");

    let second = app.create("heidi", "b").await;
    assert!(
        app.validate(&second.tokens.expect("tokens").access_token)
            .await
            .valid
    );
}

on_every_store!(
    evict_oldest_revokes_the_oldest_session_to_make_room,
    deny_refuses_a_session_over_the_limit_and_changes_nothing,
    revoked_sessions_do_not_count_toward_the_limit,
);
