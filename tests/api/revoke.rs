use serde_json::json;
use sessiond::api::pb::{self, TokenStatus};
use tonic::Code;

use sessiond::{clock::Clock, domain::UserId, store::RevokedAfter};

use crate::{
    helpers::{Direct, MINUTE, assert_invalid_field, parts, sign},
    support::{
        app::{Store, spawn_app},
        rpc::tokens,
    },
};

async fn revoking_a_session_refuses_its_tokens_and_says_so_once(store: Store) {
    let app = spawn_app(store).await;
    let created = app.create("tara", "d").await;
    let (access, _) = tokens(&created.tokens);
    let id = created.session.expect("session").session_id;
    assert!(app.validate(&access).await.valid, "cached as live first");

    assert!(
        app.try_revoke(&id, "user signed out")
            .await
            .expect("revoked")
    );
    assert!(
        !app.try_revoke(&id, "again").await.expect("answered"),
        "already revoked"
    );

    assert_eq!(app.status_of(&access).await, TokenStatus::SessionRevoked);
    let session = app.get(&id).await.expect("still readable");
    assert_eq!(session.revoke_reason, "user signed out");
    assert!(session.revoked_at.is_some());
}

async fn revoking_an_unknown_session_is_not_found_and_a_bad_id_invalid(store: Store) {
    let app = spawn_app(store).await;
    let status = app
        .try_revoke(&uuid::Uuid::now_v7().to_string(), "")
        .await
        .expect_err("unknown");
    assert_eq!(status.code(), Code::NotFound);
    assert_invalid_field(
        &app.try_revoke("not-a-uuid", "").await.expect_err("bad id"),
        "session_id",
    );
    assert_invalid_field(
        &app.try_revoke("", "").await.expect_err("empty id"),
        "session_id",
    );
    let overlong = "r".repeat(129);
    let id = app
        .create("uma", "d")
        .await
        .session
        .expect("session")
        .session_id;
    assert_invalid_field(
        &app.try_revoke(&id, &overlong)
            .await
            .expect_err("long reason"),
        "reason",
    );
    // sessiond's own reasons, and text that would mislead whoever reads the audit trail.
    for reason in [
        "device_replaced",
        "session_limit",
        "refresh_token_reuse",
        "ok\u{202E}lam",
    ] {
        assert_invalid_field(
            &app.try_revoke(&id, reason).await.expect_err(reason),
            "reason",
        );
    }
    assert_eq!(
        app.get(&id).await.unwrap().revoked_at,
        None,
        "nothing revoked"
    );
}

async fn get_session_reads_a_session_and_refuses_unknown_ids(store: Store) {
    let app = spawn_app(store).await;
    let created = app.create("vera", "d").await.session.expect("session");
    assert_eq!(app.get(&created.session_id).await.expect("found"), created);
    let status = app
        .get(&uuid::Uuid::now_v7().to_string())
        .await
        .expect_err("unknown");
    assert_eq!(status.code(), Code::NotFound);
    assert_invalid_field(&app.get("nope").await.expect_err("bad id"), "session_id");
}

async fn signing_out_everywhere_revokes_every_session_of_the_user_only(store: Store) {
    let app = spawn_app(store).await;
    let phone = tokens(&app.create("walt", "phone").await.tokens).0;
    let laptop = tokens(&app.create("walt", "laptop").await.tokens).0;
    let someone_else = tokens(&app.create("xena", "phone").await.tokens).0;

    assert_eq!(app.revoke_user("walt", "").await.expect("revoked"), 2);

    assert_eq!(app.status_of(&phone).await, TokenStatus::SessionRevoked);
    assert_eq!(app.status_of(&laptop).await, TokenStatus::SessionRevoked);
    assert!(app.validate(&someone_else).await.valid);
    assert_eq!(app.revoke_user("walt", "").await.expect("answered"), 0);
}

async fn signing_out_other_devices_keeps_the_current_one(store: Store) {
    let app = spawn_app(store).await;
    let current = app.create("yuri", "phone").await;
    let others = [
        app.create("yuri", "laptop").await,
        app.create("yuri", "tablet").await,
    ];
    let current_id = current.session.expect("session").session_id;

    assert_eq!(
        app.revoke_user("yuri", &current_id).await.expect("revoked"),
        2
    );

    assert!(app.validate(&tokens(&current.tokens).0).await.valid);
    for other in others {
        assert_eq!(
            app.status_of(&tokens(&other.tokens).0).await,
            TokenStatus::SessionRevoked
        );
    }
    assert_invalid_field(
        &app.revoke_user("yuri", "junk").await.expect_err("bad id"),
        "except_session_id",
    );
    assert_invalid_field(
        &app.revoke_user("", "").await.expect_err("no user"),
        "user_id",
    );
}

/// RevokeUserSessions signs a user with 100 000 sessions out in one call within the deadline
/// (a not-before instant: no row is rewritten before the answer), and every session is revoked:
/// for Validate at once (a sample of 1 000 tokens spread over them; `tests/revocation_stream.rs`
/// checks every one, on two replicas), and in the store's rows soon after.
async fn signing_out_a_user_with_a_hundred_thousand_sessions_revokes_every_one(store: Store) {
    const SESSIONS: usize = 100_000;
    // Within the default deadline (5 s), even in a debug build: a sign-out everywhere rewrites
    // no row before it answers.
    let app = spawn_app(store).await;
    let (header, mut claims) = parts(&tokens(&app.create("many", "first").await.tokens).0);
    let direct = Direct::of(&app, store);
    direct
        .execute(match store {
            Store::Postgres => {
                "INSERT INTO session (session_id, user_id, device_id, created_at, last_seen_at, \
                                      expires_at, idle_expires_at) \
                 SELECT gen_random_uuid(), 'many', 'device-' || n, now(), now(), \
                        now() + interval '30 days', now() + interval '7 days' \
                 FROM generate_series(2, 100000) AS n"
            }
            Store::Sqlite => {
                "WITH RECURSIVE n(i) AS (SELECT 2 UNION ALL SELECT i + 1 FROM n WHERE i < 100000) \
                 INSERT INTO session (session_id, user_id, device_id, created_at, last_seen_at, \
                                      expires_at, idle_expires_at) \
                 SELECT randomblob(16), 'many', 'device-' || i, unixepoch() * 1000000, \
                        unixepoch() * 1000000, (unixepoch() + 30 * 86400) * 1000000, \
                        (unixepoch() + 7 * 86400) * 1000000 \
                 FROM n"
            }
        })
        .await;
    let mut ids = Vec::with_capacity(SESSIONS);
    loop {
        let page = direct
            .store()
            .list(
                &UserId::try_from("many".to_owned()).unwrap(),
                false,
                app.clock.now(),
                ids.last().copied(),
                10_000,
            )
            .await
            .unwrap();
        if page.is_empty() {
            break;
        }
        ids.extend(page.iter().map(|session| session.id));
    }
    assert_eq!(ids.len(), SESSIONS, "all live before");

    assert_eq!(app.revoke_user("many", "").await.unwrap(), SESSIONS as u32);

    // Refused at once; the rows are marked afterwards, in batches.
    for id in ids.iter().step_by(SESSIONS / 1_000) {
        claims["sid"] = json!(id.to_string());
        let forged = sign(&header, &claims, &app.signing_key);
        assert_eq!(
            app.status_of(&forged).await,
            TokenStatus::SessionRevoked,
            "{id}"
        );
    }
    let unmarked = "SELECT count(*) FROM session WHERE user_id = 'many' AND revoked_at IS NULL";
    for _ in 0..600 {
        if direct.count(unmarked).await == 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(direct.count(unmarked).await, 0, "every row marked revoked");
}

/// What the Redis reconciler reads: revocations in the order they were made, from a point on, a
/// page at a time, ties on one instant broken by session id.
async fn the_store_walks_revocations_in_order_from_a_point_on(store: Store) {
    let app = spawn_app(store).await;
    let id = |created: pb::CreateSessionResponse| created.session.expect("session").session_id;
    let before = id(app.create("walt", "old").await);
    let (one, two, three) = (
        id(app.create("walt", "a").await),
        id(app.create("walt", "b").await),
        id(app.create("wanda", "c").await),
    );
    app.try_revoke(&before, "before the window").await.unwrap();
    app.advance(MINUTE);
    let since = app.clock.now();
    // Two at one instant (revoked row by row: with an exception, even an already revoked one),
    // then one a minute later.
    assert_eq!(app.revoke_user("walt", &before).await.unwrap(), 2);
    app.advance(MINUTE);
    app.try_revoke(&three, "later").await.unwrap();

    let direct = Direct::of(&app, store);
    let first = direct
        .store()
        .revoked_since(RevokedAfter::since(since), 2)
        .await
        .unwrap();
    let mut same_instant = [one, two];
    same_instant.sort();
    let ids = |page: &[sessiond::domain::Session]| -> Vec<String> {
        page.iter().map(|session| session.id.to_string()).collect()
    };
    assert_eq!(ids(&first), same_instant.to_vec(), "by instant, then id");
    let after = RevokedAfter::past(first.last().unwrap()).unwrap();
    let second = direct.store().revoked_since(after, 2).await.unwrap();
    assert_eq!(ids(&second), vec![three.clone()]);
    let after = RevokedAfter::past(second.last().unwrap()).unwrap();
    assert!(
        direct
            .store()
            .revoked_since(after, 2)
            .await
            .unwrap()
            .is_empty()
    );
}

on_every_store!(
    the_store_walks_revocations_in_order_from_a_point_on,
    revoking_a_session_refuses_its_tokens_and_says_so_once,
    revoking_an_unknown_session_is_not_found_and_a_bad_id_invalid,
    get_session_reads_a_session_and_refuses_unknown_ids,
    signing_out_everywhere_revokes_every_session_of_the_user_only,
    signing_out_other_devices_keeps_the_current_one,
    signing_out_a_user_with_a_hundred_thousand_sessions_revokes_every_one,
);
