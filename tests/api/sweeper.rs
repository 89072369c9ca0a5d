//! The sweeper's store operation, called directly on a store over the test app's own database:
//! what it deletes, what it keeps, and that only one replica sweeps at a time.

use std::{sync::Arc, time::Duration};

use sessiond::{
    api::pb,
    clock::Clock,
    store::{PostgresStore, SWEEP_LOCK_KEY, SessionStore},
};
use tonic::Code;

use crate::{
    helpers::{DAY, Direct},
    support::{
        app::{Store, TestApp, spawn_app_with},
        http_get,
        rpc::tokens,
    },
};

const HOUR: Duration = Duration::from_secs(3600);

/// A sessiond whose own sweeper never runs during the test, so only the test sweeps.
async fn spawn(store: Store) -> TestApp {
    spawn_app_with(store, |settings| settings.sweep_interval = 365 * DAY).await
}

async fn create_for(app: &TestApp, user_id: &str, lifetime: Option<Duration>) -> String {
    let created = app
        .client
        .clone()
        .create_session(pb::CreateSessionRequest {
            user_id: user_id.into(),
            device: None,
            metadata: Default::default(),
            lifetime: lifetime.map(|lifetime| prost_types::Duration {
                seconds: lifetime.as_secs() as i64,
                nanos: 0,
            }),
        })
        .await
        .unwrap()
        .into_inner();
    created.session.expect("a session").session_id
}

async fn sweeping_deletes_ended_sessions_past_retention_and_keeps_the_rest(store: Store) {
    let app = spawn(store).await;
    let direct = Direct::of(&app, store);
    let retention = chrono::Duration::days(1);

    // t0. Ended early: two 1-hour sessions (one also revoked, so it matches every condition),
    // three revoked at once, two left idle (idle timeout 7d).
    let mut gone = vec![
        create_for(&app, "ada", Some(HOUR)).await,
        create_for(&app, "ada", Some(HOUR)).await,
    ];
    app.revoke(&gone[1]).await;
    for _ in 0..3 {
        let id = create_for(&app, "bob", None).await;
        app.revoke(&id).await;
        gone.push(id);
    }
    for _ in 0..2 {
        gone.push(create_for(&app, "cy", None).await);
    }
    // Kept alive by a refresh at t0 + 6d (it then holds two refresh tokens).
    let live = app.create("dee", "").await;
    let (_, live_refresh) = tokens(&live.tokens);
    let live = live.session.expect("session").session_id;

    app.advance(6 * DAY);
    app.refresh(&live_refresh).await.expect("refreshed");
    // Ends at t0 + 7d12h: expired at the sweep, but within retention.
    let just_expired = create_for(&app, "fay", Some(36 * HOUR)).await;

    app.advance(DAY + 13 * HOUR);
    // Revoked at t0 + 7d13h: within retention at the sweep.
    let recently_revoked = create_for(&app, "eve", None).await;
    app.revoke(&recently_revoked).await;

    // t0 + 8d1h: the cutoff is t0 + 7d1h.
    app.advance(12 * HOUR);
    let now = app.clock.now();
    assert_eq!(direct.count("SELECT count(*) FROM refresh_token").await, 11);

    // Batches of 3 for 7 rows: 3, 3, 1.
    let swept = direct.store().sweep(now, retention, 3).await.unwrap();

    for id in &gone {
        let status = app.get(id).await.expect_err("swept");
        assert_eq!(status.code(), Code::NotFound, "{id}: {status:?}");
    }
    let kept = [&live, &recently_revoked, &just_expired];
    for id in kept {
        app.get(id)
            .await
            .unwrap_or_else(|e| panic!("kept {id} of {kept:?}: {e:?}"));
    }
    assert_eq!(gone.len(), 7);
    assert_eq!(swept, Some(7));
    assert!(
        app.get(&just_expired)
            .await
            .unwrap()
            .expires_at
            .is_some_and(|at| at.seconds < now.timestamp()),
        "reads as expired, not as not-found"
    );
    // The swept sessions' refresh tokens went with them: the live one's two, one each for the rest.
    assert_eq!(direct.count("SELECT count(*) FROM session").await, 3);
    assert_eq!(direct.count("SELECT count(*) FROM refresh_token").await, 4);
    assert_eq!(
        direct
            .count(
                "SELECT count(*) FROM refresh_token \
                 WHERE session_id NOT IN (SELECT session_id FROM session)"
            )
            .await,
        0,
        "no orphaned refresh tokens"
    );

    // Nothing more to do; and once past retention, the rest of the ended ones go too.
    assert_eq!(
        direct.store().sweep(now, retention, 3).await.unwrap(),
        Some(0)
    );
    let later = now + chrono::Duration::days(2);
    assert_eq!(
        direct.store().sweep(later, retention, 1).await.unwrap(),
        Some(2),
        "the recently revoked and the just-expired sessions"
    );
    app.get(&live).await.expect("the live session stays");
}

async fn a_batch_size_that_divides_the_total_still_deletes_everything(store: Store) {
    let app = spawn(store).await;
    let direct = Direct::of(&app, store);
    for _ in 0..4 {
        let id = create_for(&app, "gus", None).await;
        app.revoke(&id).await;
    }
    let live = create_for(&app, "gus", None).await;
    app.advance(2 * DAY);
    let now = app.clock.now();
    assert_eq!(
        direct
            .store()
            .sweep(now, chrono::Duration::days(1), 2)
            .await
            .unwrap(),
        Some(4)
    );
    assert_eq!(direct.count("SELECT count(*) FROM session").await, 1);
    app.get(&live).await.expect("kept");
}

/// The sweeper sessiond runs on its own: it deletes on its interval, and counts what it deleted.
async fn the_running_sweeper_deletes_and_counts(store: Store) {
    let app = spawn_app_with(store, |settings| {
        settings.sweep_interval = Duration::from_millis(100);
        settings.revoked_retention = DAY;
    })
    .await;
    let id = create_for(&app, "ivy", None).await;
    app.revoke(&id).await;
    app.get(&id).await.expect("kept within retention");
    app.advance(2 * DAY);
    for _ in 0..100 {
        if app.get(&id).await.is_err() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        app.get(&id).await.expect_err("swept").code(),
        Code::NotFound
    );
    let (_, metrics) = http_get(app.ops_addr, "/metrics").await;
    assert!(
        metrics.contains("sessiond_sweeper_deleted_total"),
        "{metrics}"
    );
}

on_every_store!(
    sweeping_deletes_ended_sessions_past_retention_and_keeps_the_rest,
    a_batch_size_that_divides_the_total_still_deletes_everything,
    the_running_sweeper_deletes_and_counts,
);

/// Two replicas never sweep at once: while another connection holds the sweep lock, a sweep
/// does nothing and says so; afterwards it runs, and does not keep the lock.
#[tokio::test]
async fn postgres_a_sweep_is_skipped_while_another_replica_holds_the_lock() {
    let app = spawn(Store::Postgres).await;
    let pool = app.pool.clone().expect("a pool");
    let store: Arc<dyn SessionStore> = Arc::new(PostgresStore::new(pool.clone()));
    let id = create_for(&app, "hal", None).await;
    app.revoke(&id).await;
    app.advance(2 * DAY);
    let now = app.clock.now();
    let retention = chrono::Duration::days(1);

    let mut other = pool.acquire().await.unwrap();
    sqlx::query("SELECT pg_advisory_lock($1)")
        .bind(SWEEP_LOCK_KEY)
        .execute(&mut *other)
        .await
        .unwrap();
    assert_eq!(store.sweep(now, retention, 10).await.unwrap(), None);
    app.get(&id).await.expect("not swept while locked out");

    let unlocked: bool = sqlx::query_scalar("SELECT pg_advisory_unlock($1)")
        .bind(SWEEP_LOCK_KEY)
        .fetch_one(&mut *other)
        .await
        .unwrap();
    assert!(unlocked);
    assert_eq!(store.sweep(now, retention, 10).await.unwrap(), Some(1));

    // The sweep let go of its lock: another connection can take it at once.
    let taken: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
        .bind(SWEEP_LOCK_KEY)
        .fetch_one(&mut *other)
        .await
        .unwrap();
    assert!(taken, "the sweep released its lock");
}
