//! DeleteUserSessions: a user's sessions erased, not revoked. Afterwards nothing of the user is
//! left in any table of the store or in any Redis key or value, their tokens are refused as
//! unknown, and other users are untouched.

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use serde_json::json;
use sessiond::api::pb::{self, TokenStatus};
use sha2::{Digest, Sha256};
use tonic::Code;
use tonic_types::StatusExt;

use crate::{
    helpers::{Direct, MINUTE, assert_invalid_field, parts, sign},
    support::{
        app::{Store, TestApp, spawn_app, spawn_app_with},
        redis::{keys_and_values, redis_url},
        rpc::{session_id, tokens},
    },
};

/// The user erased, and one kept. Distinctive, so that finding either in a row or a key means it.
const ERASED: &str = "erased-user-5e1f";
const KEPT: &str = "kept-user-7a2c";

/// sessiond with Redis on both stores (the embedded one too), so that what the erasure deletes
/// from Redis is looked for with each; and with rate limits on, so that their state exists. A
/// count lives one interval (`period / N`) past its last call: at 100 a day, long after the test.
async fn spawn_with_redis(store: Store) -> TestApp {
    spawn_app_with(store, |settings| {
        settings.redis_url = Some(redis_url().into());
        settings.create_rate_per_user = "100/1d".parse().unwrap();
        settings.refresh_rate_per_session = "100/1d".parse().unwrap();
    })
    .await
}

/// What would show that something of the erased user is left: their id; each session id, as text
/// and as the hex of its bytes (SQLite's BLOB); each refresh token's hash, as hex (the stores)
/// and in base64url (the Redis rate-limit key of the token).
struct Traces(Vec<String>);

impl Traces {
    fn of(user_id: &str, session_ids: &[String], refresh_tokens: &[String]) -> Self {
        let mut needles = vec![user_id.to_owned()];
        for id in session_ids {
            needles.push(id.clone());
            needles.push(id.replace('-', ""));
        }
        for token in refresh_tokens {
            let hash = Sha256::digest(token.as_bytes());
            needles.push(hash.iter().map(|byte| format!("{byte:02x}")).collect());
            needles.push(URL_SAFE_NO_PAD.encode(hash));
        }
        Self(needles.into_iter().map(|n| n.to_lowercase()).collect())
    }

    /// Whether `text` names the user (the first trace).
    fn user_found_in(&self, text: &str) -> Option<&str> {
        let user = self.0.first()?;
        text.to_lowercase()
            .contains(user.as_str())
            .then_some(user.as_str())
    }

    /// The first trace `text` holds, if any (hex is matched whatever its case).
    fn found_in(&self, text: &str) -> Option<&str> {
        let text = text.to_lowercase();
        self.0
            .iter()
            .find(|needle| text.contains(needle.as_str()))
            .map(String::as_str)
    }
}

/// Asserts that no row of any table of `app`'s store, and no Redis key or value under its prefix,
/// holds any of `traces`.
async fn assert_nothing_left(app: &TestApp, store: Store, traces: &Traces) {
    let direct = Direct::of(app, store);
    let tables = direct.tables().await;
    assert_eq!(
        tables,
        [
            "refresh_token",
            "removed_signing_key",
            "revocation_event",
            "revocation_log",
            "session",
            "user_not_before"
        ],
        "a table this test does not know: make DeleteUserSessions erase what it holds of a user, \
         then name it here"
    );
    for table in &tables {
        for row in direct.rows_as_text(table).await {
            // The revocation log keeps the erased sessions' ids, which refuse their tokens at
            // services that verify locally until those expire (README, Personal data); never the
            // user.
            let found = match table.as_str() {
                "revocation_event" => traces.user_found_in(&row),
                _ => traces.found_in(&row),
            };
            assert_eq!(found, None, "{table} still holds {row}");
        }
    }
    for (key, value) in keys_and_values(&app.redis_key_prefix).await {
        assert_eq!(traces.found_in(&key), None, "Redis key {key}");
        assert_eq!(traces.found_in(&value), None, "Redis {key} = {value}");
    }
}

async fn erasing_a_user_leaves_nothing_of_them_in_any_table_or_redis_key(store: Store) {
    let app = spawn_with_redis(store).await;
    let mut session_ids = Vec::new();
    let mut refresh_tokens = Vec::new();
    // A validated (so cached) session rotated twice: retired tokens, and their rate-limit state.
    let phone = app.create(ERASED, "phone").await;
    session_ids.push(session_id(&phone));
    let (access, mut refresh) = tokens(&phone.tokens);
    assert!(app.validate(&access).await.valid);
    refresh_tokens.push(refresh.clone());
    for _ in 0..2 {
        let rotated = app.refresh(&refresh).await.expect("rotates");
        refresh = tokens(&rotated.tokens).1;
        refresh_tokens.push(refresh.clone());
    }
    // One the caller revoked, one replaced on its device, one on no device.
    for device in ["laptop", "tablet", "tablet", ""] {
        let created = app.create(ERASED, device).await;
        assert!(app.validate(&tokens(&created.tokens).0).await.valid);
        session_ids.push(session_id(&created));
        refresh_tokens.push(tokens(&created.tokens).1);
    }
    app.revoke(&session_ids[1]).await;
    // Someone else, cached and rotated too.
    let kept = app.create(KEPT, "phone").await;
    let kept_access = tokens(&kept.tokens).0;
    assert!(app.validate(&kept_access).await.valid);
    let kept = app.refresh(&tokens(&kept.tokens).1).await.expect("rotates");

    assert_eq!(
        app.delete_user(ERASED).await.expect("erased"),
        session_ids.len() as u32
    );

    assert_nothing_left(
        &app,
        store,
        &Traces::of(ERASED, &session_ids, &refresh_tokens),
    )
    .await;
    // The other user is untouched: their rows, their Redis copy, their session.
    let direct = Direct::of(&app, store);
    assert_eq!(direct.count("SELECT count(*) FROM session").await, 1);
    assert_eq!(
        direct.count("SELECT count(*) FROM refresh_token").await,
        2,
        "the kept session's current and retired tokens"
    );
    assert!(
        keys_and_values(&app.redis_key_prefix)
            .await
            .iter()
            .any(|(key, _)| key.contains(KEPT)),
        "the kept user's copy is still in Redis"
    );
    assert!(app.validate(&kept_access).await.valid);
    app.refresh(&tokens(&kept.tokens).1)
        .await
        .expect("the kept user's refresh token still works");
}

/// With Postgres, Redis too; the embedded store alone, where the in-process tier is the only
/// cache and keeps copies for the whole cache TTL.
async fn an_erased_users_tokens_are_refused_as_unknown(store: Store) {
    let app = spawn_app(store).await;
    let created = app.create(ERASED, "phone").await;
    let id = session_id(&created);
    let (first_access, first_refresh) = tokens(&created.tokens);
    // Validated, so its verification is memoized and its copy in process and in Redis.
    assert!(app.validate(&first_access).await.valid);
    let rotated = app.refresh(&first_refresh).await.expect("rotates");
    let (access, refresh) = tokens(&rotated.tokens);
    assert!(app.validate(&access).await.valid);
    let kept = app.create(KEPT, "phone").await;

    assert_eq!(app.delete_user(ERASED).await.expect("erased"), 1);

    for token in [&first_access, &access] {
        let verdict = app.validate(token).await;
        assert!(!verdict.valid);
        assert_eq!(verdict.status(), TokenStatus::SessionNotFound);
    }
    // The current token, the retired one within the grace window (a retry) and after it (which
    // before the erasure would have been taken for theft): unknown, all of them.
    for advance in [std::time::Duration::ZERO, MINUTE] {
        app.advance(advance);
        for token in [&refresh, &first_refresh] {
            let status = app.refresh(token).await.expect_err("refused");
            assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
            assert_eq!(
                status.get_details_error_info().expect("error info").reason,
                "REFRESH_TOKEN_UNKNOWN"
            );
        }
    }
    assert_eq!(app.get(&id).await.expect_err("gone").code(), Code::NotFound);
    let listed = app
        .client
        .clone()
        .list_user_sessions(pb::ListUserSessionsRequest {
            user_id: ERASED.into(),
            include_revoked: true,
            ..Default::default()
        })
        .await
        .expect("lists")
        .into_inner();
    assert!(listed.sessions.is_empty(), "{listed:?}");
    // Nobody else paid for it.
    assert!(app.validate(&tokens(&kept.tokens).0).await.valid);
    app.refresh(&tokens(&kept.tokens).1)
        .await
        .expect("the kept user's refresh token still works");
}

async fn erasing_needs_a_user_id_and_a_user_without_sessions_erases_nothing(store: Store) {
    let app = spawn_app(store).await;
    let kept = app.create(KEPT, "phone").await;
    for bad in [
        String::new(),
        "u".repeat(129),
        "bob\n".into(),
        "ok\u{202E}".into(),
    ] {
        assert_invalid_field(
            &app.delete_user(&bad).await.expect_err("refused"),
            "user_id",
        );
    }
    assert_eq!(app.delete_user("nobody-at-all").await.expect("answers"), 0);
    assert!(app.validate(&tokens(&kept.tokens).0).await.valid);
    assert_eq!(app.delete_user(KEPT).await.expect("erased"), 1);
    assert_eq!(app.delete_user(KEPT).await.expect("answers"), 0, "twice");
}

/// DeleteUserSessions works batch by batch (1 000 sessions each), so a user with more sessions
/// than a batch holds, in every state, is erased whole, with the tokens of each session.
async fn erasing_a_user_with_more_sessions_than_a_batch_erases_every_one(store: Store) {
    const SESSIONS: i64 = 2_500;
    let app = spawn_app(store).await;
    let (header, mut claims) = parts(&tokens(&app.create("many", "first").await.tokens).0);
    let kept = app.create(KEPT, "phone").await;
    let direct = Direct::of(&app, store);
    // 2 499 more sessions with a refresh token each; a third of them revoked, a third expired.
    let statements: [&'static str; 2] = match store {
        Store::Postgres => [
            "INSERT INTO session (session_id, user_id, device_id, created_at, last_seen_at, \
                                  expires_at, idle_expires_at, revoked_at, revoke_reason) \
             SELECT gen_random_uuid(), 'many', 'device-' || n, now(), now(), \
                    now() + interval '30 days', \
                    CASE WHEN n % 3 = 1 THEN now() - interval '1 day' \
                         ELSE now() + interval '7 days' END, \
                    CASE WHEN n % 3 = 0 THEN now() END, CASE WHEN n % 3 = 0 THEN 'gone' END \
             FROM generate_series(2, 2500) AS n",
            "INSERT INTO refresh_token (token_hash, session_id, generation, issued_at) \
             SELECT sha256(session_id::text::bytea), session_id, 0, now() FROM session \
             WHERE user_id = 'many' AND device_id <> 'first'",
        ],
        Store::Sqlite => [
            "WITH RECURSIVE n(i) AS (SELECT 2 UNION ALL SELECT i + 1 FROM n WHERE i < 2500) \
             INSERT INTO session (session_id, user_id, device_id, created_at, last_seen_at, \
                                  expires_at, idle_expires_at, revoked_at, revoke_reason) \
             SELECT randomblob(16), 'many', 'device-' || i, unixepoch() * 1000000, \
                    unixepoch() * 1000000, (unixepoch() + 30 * 86400) * 1000000, \
                    CASE WHEN i % 3 = 1 THEN (unixepoch() - 86400) * 1000000 \
                         ELSE (unixepoch() + 7 * 86400) * 1000000 END, \
                    CASE WHEN i % 3 = 0 THEN unixepoch() * 1000000 END, \
                    CASE WHEN i % 3 = 0 THEN 'gone' END \
             FROM n",
            "INSERT INTO refresh_token (token_hash, session_id, generation, issued_at) \
             SELECT randomblob(32), session_id, 0, unixepoch() * 1000000 FROM session \
             WHERE user_id = 'many' AND device_id <> 'first'",
        ],
    };
    for sql in statements {
        direct.execute(sql).await;
    }
    let ids = direct
        .store()
        .list(
            &sessiond::domain::UserId::try_from("many".to_owned()).unwrap(),
            true,
            chrono::Utc::now(),
            None,
            SESSIONS,
        )
        .await
        .unwrap();
    assert_eq!(ids.len() as i64, SESSIONS, "all there before");

    assert_eq!(
        app.delete_user("many").await.expect("erased"),
        SESSIONS as u32
    );

    assert_eq!(
        direct
            .count("SELECT count(*) FROM session WHERE user_id = 'many'")
            .await,
        0
    );
    assert_eq!(
        direct.count("SELECT count(*) FROM refresh_token").await,
        1,
        "only the kept user's token"
    );
    for session in ids.iter().step_by(100) {
        claims["sid"] = json!(session.id.to_string());
        let forged = sign(&header, &claims, &app.signing_key);
        assert_eq!(
            app.status_of(&forged).await,
            TokenStatus::SessionNotFound,
            "{}",
            session.id
        );
    }
    assert!(app.validate(&tokens(&kept.tokens).0).await.valid);
}

/// The user's rate-limit state goes too: a user at their CreateSession limit may sign in again
/// at once after the erasure. Counted in Redis with Postgres, in process with the embedded store.
async fn erasing_a_user_forgets_their_rate_limit_counts(store: Store) {
    let app = spawn_app_with(store, |settings| {
        settings.create_rate_per_user = "2/1d".parse().unwrap();
    })
    .await;
    app.create(ERASED, "a").await;
    app.create(ERASED, "b").await;
    let status = app.try_create(ERASED, "c").await.expect_err("limited");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    app.try_create(KEPT, "a")
        .await
        .expect("another user's count");

    assert_eq!(app.delete_user(ERASED).await.expect("erased"), 2);

    app.try_create(ERASED, "c")
        .await
        .expect("the count was forgotten");
    app.try_create(KEPT, "b")
        .await
        .expect("another user's count");
    let status = app.try_create(KEPT, "c").await.expect_err("still counted");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
}

on_every_store!(
    erasing_a_user_leaves_nothing_of_them_in_any_table_or_redis_key,
    an_erased_users_tokens_are_refused_as_unknown,
    erasing_needs_a_user_id_and_a_user_without_sessions_erases_nothing,
    erasing_a_user_with_more_sessions_than_a_batch_erases_every_one,
    erasing_a_user_forgets_their_rate_limit_counts,
);
