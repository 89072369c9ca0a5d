use futures::future::join_all;
use sessiond::{
    api::pb,
    clock::Clock,
    domain::{Device, Metadata, Session, SessionId, UserId},
    error::Error,
    store::NewSession,
    token::TokenHash,
};

use crate::{
    helpers::{DAY, Direct, assert_invalid_field},
    support::{
        app::{Store, TestApp, spawn_app, spawn_app_with},
        keys::random_bytes,
        rpc::{create_request, session_id},
    },
};

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
        (
            pb::CreateSessionRequest {
                device: Some(pb::Device {
                    name: "Phone\u{202E}gnp.exe".into(),
                    ..Default::default()
                }),
                ..valid()
            },
            "device.name",
        ),
        (
            pb::CreateSessionRequest {
                user_id: "alice\u{2028}admin".into(),
                ..valid()
            },
            "user_id",
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

/// A session as CreateSession makes it, to hand to the store directly.
fn new_session(app: &TestApp, user_id: &str, device_id: Option<&str>) -> NewSession {
    let now = app.clock.now();
    NewSession {
        session: Session {
            id: SessionId::generate(),
            user_id: UserId::try_from(user_id.to_owned()).unwrap(),
            device: Device {
                device_id: device_id.map(str::to_owned),
                ..Device::default()
            },
            metadata: Metadata::default(),
            created_at: now,
            last_seen_at: now,
            expires_at: now + chrono::Duration::days(30),
            idle_expires_at: now + chrono::Duration::days(7),
            revoked_at: None,
            revoke_reason: None,
        },
        refresh_token: TokenHash(random_bytes()),
        now,
    }
}

/// Concurrent creates share one statement; each must replace its own device's session, and only
/// that one.
async fn a_batch_of_creates_replaces_each_devices_own_session(store: Store) {
    let app = spawn_app(store).await;
    let direct = Direct::of(&app, store);
    let old_phone = session_id(&app.create("dave", "phone").await);
    let old_laptop = session_id(&app.create("dave", "laptop").await);

    let batch = [
        new_session(&app, "dave", Some("laptop")),
        new_session(&app, "dave", Some("phone")),
        new_session(&app, "dave", None),
        new_session(&app, "erin", Some("phone")),
    ];
    // One batch: this test's runtime runs one task at a time, so the store's batch writer first
    // runs when all four are queued.
    let replaced = join_all(
        batch
            .iter()
            .map(|create| direct.store().create(create, None)),
    )
    .await
    .into_iter()
    .collect::<Result<Vec<_>, _>>()
    .expect("every create succeeds");

    let ids = |sessions: &Vec<Session>| sessions.iter().map(|s| s.id.to_string()).collect();
    assert_eq!(
        replaced.iter().map(ids).collect::<Vec<Vec<String>>>(),
        [
            vec![old_laptop.clone()],
            vec![old_phone.clone()],
            vec![],
            vec![]
        ]
    );
    for old in [&old_phone, &old_laptop] {
        assert_eq!(app.get(old).await.unwrap().revoke_reason, "device_replaced");
    }
    for create in &batch {
        let stored = direct.store().find(create.session.id).await.unwrap();
        assert_eq!(stored.expect("stored").revoked_at, None);
    }
    assert_eq!(
        direct.count("SELECT count(*) FROM refresh_token").await,
        6,
        "a first refresh token per session"
    );
}

/// Postgres refuses a NUL in text. Sessiond's own checks keep one out of any request; here it
/// stands for a value that fails its batch's statement, which must fail only its own create.
#[tokio::test]
async fn postgres_a_create_the_database_refuses_fails_alone() {
    let app = spawn_app(Store::Postgres).await;
    let direct = Direct::of(&app, Store::Postgres);
    let mut creates: Vec<_> = (0..20)
        .map(|user| new_session(&app, &format!("user-{user}"), Some("phone")))
        .collect();
    creates[7].session.device.name = "nul\0byte".into();

    // One batch: this test's runtime runs one task at a time, so the store's batch writer first
    // runs when all twenty are queued.
    let results = join_all(
        creates
            .iter()
            .map(|create| direct.store().create(create, None)),
    )
    .await;

    for (index, result) in results.iter().enumerate() {
        if index == 7 {
            // INTERNAL to the caller.
            assert!(matches!(result, Err(Error::StoreFailed(_))), "{result:?}");
        } else {
            assert!(result.is_ok(), "create {index}: {result:?}");
        }
    }
    assert_eq!(direct.count("SELECT count(*) FROM session").await, 19);
}

/// With `SESSIOND_IP_PRIVACY=truncate`, only the address's network is stored.
async fn ip_privacy_truncate_stores_only_the_network(store: Store) {
    let app = spawn_app_with(store, |settings| {
        settings.ip_privacy = sessiond::config::IpPrivacy::Truncate;
    })
    .await;
    for (given, stored) in [
        ("203.0.113.77", "203.0.113.0"),
        ("2001:db8:1234:5678::1", "2001:db8:1234::"),
    ] {
        let mut request = create_request("ines", given);
        request.device.as_mut().expect("a device").ip_address = given.into();
        let created = app
            .client
            .clone()
            .create_session(request)
            .await
            .expect("created")
            .into_inner();
        let id = session_id(&created);
        let read = app.get(&id).await.expect("found");
        assert_eq!(read.device.expect("a device").ip_address, stored, "{given}");
    }
}

on_every_store!(
    ip_privacy_truncate_stores_only_the_network,
    a_batch_of_creates_replaces_each_devices_own_session,
    create_session_returns_a_live_session_and_a_token_pair,
    a_new_session_on_the_same_device_revokes_the_previous_one,
    racing_creates_on_one_device_leave_exactly_one_live_session,
    sessions_without_a_device_id_never_replace_each_other,
    a_requested_lifetime_is_kept_when_shorter_and_capped_when_longer,
    bad_create_requests_are_invalid_arguments_naming_the_field,
);
