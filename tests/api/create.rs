use futures::future::join_all;
use sessiond::api::pb;

use crate::helpers::{DAY, Store, assert_invalid_field, spawn_app, spawn_app_with};

async fn create_session_returns_a_live_session_and_a_token_pair(store: Store) {
    let app = spawn_app(store).await;

    let response = app.create("alice", "phone-1").await;

    let session = response.session.expect("a session");
    let tokens = response.tokens.expect("tokens");
    assert_eq!(session.user_id, "alice");
    let device = session.device.expect("a device");
    assert_eq!(device.device_id, "phone-1");
    assert_eq!(device.ip_address, "203.0.113.7");
    assert_eq!(
        session.metadata.get("app").map(String::as_str),
        Some("tests")
    );
    assert!(session.revoked_at.is_none());
    let created = session.created_at.expect("created_at").seconds;
    assert_eq!(
        session.expires_at.expect("expires_at").seconds - created,
        30 * 86_400
    );
    assert_eq!(
        session.idle_expires_at.expect("idle").seconds - created,
        7 * 86_400
    );
    assert_eq!(
        tokens.access_token_expires_at.expect("exp").seconds - created,
        15 * 60
    );
    assert!(tokens.refresh_token.starts_with("sdrt_"));
    assert_eq!(tokens.access_token.split('.').count(), 3);
    assert!(app.validate(&tokens.access_token).await.valid);
}

async fn a_new_session_on_the_same_device_revokes_the_previous_one(store: Store) {
    let app = spawn_app(store).await;
    let first = app.create("bob", "laptop").await;
    let other_device = app.create("bob", "phone").await;

    let second = app.create("bob", "laptop").await;

    let first_id = first.session.expect("session").session_id;
    let replaced = app.get(&first_id).await.expect("still readable");
    assert!(replaced.revoked_at.is_some());
    assert_eq!(replaced.revoke_reason, "device_replaced");
    let first_access = first.tokens.expect("tokens").access_token;
    assert_eq!(
        app.status_of(&first_access).await,
        pb::TokenStatus::SessionRevoked
    );
    assert!(
        app.validate(&second.tokens.expect("tokens").access_token)
            .await
            .valid
    );
    assert!(
        app.validate(&other_device.tokens.expect("tokens").access_token)
            .await
            .valid
    );
}

async fn racing_creates_on_one_device_leave_exactly_one_live_session(store: Store) {
    let app = spawn_app(store).await;

    // All succeed: a create that loses the race for the device replaces the winner's session.
    let created = join_all((0..12).map(|_| app.create("carol", "tablet"))).await;

    let mut live = Vec::new();
    for response in &created {
        let id = &response.session.as_ref().expect("session").session_id;
        let stored = app.get(id).await.expect("stored");
        match stored.revoked_at {
            None => live.push(id.clone()),
            Some(_) => assert_eq!(stored.revoke_reason, "device_replaced"),
        }
    }
    assert_eq!(live.len(), 1, "one live session on the device: {live:?}");
}

async fn sessions_without_a_device_id_never_replace_each_other(store: Store) {
    let app = spawn_app(store).await;
    let first = app.create("carol", "").await;
    let second = app.create("carol", "").await;
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
}

async fn a_requested_lifetime_is_kept_when_shorter_and_capped_when_longer(store: Store) {
    let app = spawn_app_with(store, |settings| settings.session_lifetime = 2 * DAY).await;
    let mut client = app.client.clone();
    for (requested, expected) in [(3600, 3600), (10 * 86_400, 2 * 86_400)] {
        let session = client
            .create_session(pb::CreateSessionRequest {
                user_id: "dave".into(),
                lifetime: Some(prost_types::Duration {
                    seconds: requested,
                    nanos: 0,
                }),
                ..Default::default()
            })
            .await
            .expect("created")
            .into_inner()
            .session
            .expect("session");
        let lifetime =
            session.expires_at.expect("exp").seconds - session.created_at.expect("created").seconds;
        assert_eq!(lifetime, expected, "requested {requested}s");
    }
}

async fn bad_create_requests_are_invalid_arguments_naming_the_field(store: Store) {
    let app = spawn_app(store).await;
    let valid = || pb::CreateSessionRequest {
        user_id: "erin".into(),
        ..Default::default()
    };
    let too_many_entries = (0..17).map(|i| (format!("k{i}"), "v".to_owned())).collect();
    let cases = [
        (
            pb::CreateSessionRequest {
                user_id: String::new(),
                ..valid()
            },
            "user_id",
        ),
        (
            pb::CreateSessionRequest {
                user_id: "u".repeat(129),
                ..valid()
            },
            "user_id",
        ),
        (
            pb::CreateSessionRequest {
                metadata: too_many_entries,
                ..valid()
            },
            "metadata",
        ),
        (
            pb::CreateSessionRequest {
                metadata: [("k".to_owned(), "v".repeat(257))].into(),
                ..valid()
            },
            "metadata",
        ),
        (
            pb::CreateSessionRequest {
                lifetime: Some(prost_types::Duration {
                    seconds: 0,
                    nanos: 0,
                }),
                ..valid()
            },
            "lifetime",
        ),
        (
            pb::CreateSessionRequest {
                lifetime: Some(prost_types::Duration {
                    seconds: -60,
                    nanos: 0,
                }),
                ..valid()
            },
            "lifetime",
        ),
        (
            pb::CreateSessionRequest {
                device: Some(pb::Device {
                    ip_address: "not-an-ip".into(),
                    ..Default::default()
                }),
                ..valid()
            },
            "device.ip_address",
        ),
        (
            pb::CreateSessionRequest {
                device: Some(pb::Device {
                    device_id: "d".repeat(129),
                    ..Default::default()
                }),
                ..valid()
            },
            "device.device_id",
        ),
    ];
    for (request, field) in cases {
        let status = app
            .client
            .clone()
            .create_session(request)
            .await
            .expect_err("must be refused");
        assert_invalid_field(&status, field);
    }

    // Nothing was stored by the refused requests.
    let listed = app
        .client
        .clone()
        .list_user_sessions(pb::ListUserSessionsRequest {
            user_id: "erin".into(),
            include_revoked: true,
            ..Default::default()
        })
        .await
        .expect("lists");
    assert!(listed.into_inner().sessions.is_empty());
}

on_every_store!(
    create_session_returns_a_live_session_and_a_token_pair,
    a_new_session_on_the_same_device_revokes_the_previous_one,
    racing_creates_on_one_device_leave_exactly_one_live_session,
    sessions_without_a_device_id_never_replace_each_other,
    a_requested_lifetime_is_kept_when_shorter_and_capped_when_longer,
    bad_create_requests_are_invalid_arguments_naming_the_field,
);
