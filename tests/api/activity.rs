//! The store's batched activity write, called directly on a store over the test app's own
//! database: what it writes, and (Postgres) that it skips what another write holds locked.

use std::time::Duration;

use chrono::{DateTime, SubsecRound, Utc};
use sessiond::{
    api::pb,
    clock::Clock,
    domain::{Session, SessionId},
    store::Activity,
};

use crate::{
    helpers::{DAY, Direct, MINUTE},
    support::{
        app::{Store, TestApp, spawn_app},
        rpc,
    },
};

fn session_id(created: &pb::CreateSessionResponse) -> SessionId {
    rpc::session_id(created).parse().expect("a session id")
}

/// Activity at the app's current time, written if the stored copy is over a minute old.
fn activity_now(app: &TestApp, ids: &[SessionId]) -> (DateTime<Utc>, Vec<Activity>) {
    let now = app.clock.now().trunc_subsecs(6);
    let batch = ids
        .iter()
        .map(|&session_id| Activity {
            session_id,
            seen_at: now,
            idle_expires_at: now + chrono::Duration::days(7),
            stale_before: now - chrono::Duration::minutes(1),
        })
        .collect();
    (now, batch)
}

/// The sessions' ids, in order, to compare as sets.
fn ids(sessions: &[Session]) -> Vec<SessionId> {
    sorted(sessions.iter().map(|session| session.id))
}

fn sorted(ids: impl IntoIterator<Item = SessionId>) -> Vec<SessionId> {
    let mut ids: Vec<_> = ids.into_iter().collect();
    ids.sort_by_key(SessionId::as_uuid);
    ids
}

async fn a_batch_writes_the_stale_live_sessions_and_nothing_else(store: Store) {
    let app = spawn_app(store).await;
    let direct = Direct::of(&app, store);
    let stale = session_id(&app.create("ann", "phone").await);
    let also_stale = session_id(&app.create("bo", "phone").await);
    let revoked = session_id(&app.create("ann", "laptop").await);
    app.revoke(&revoked.to_string()).await;
    app.advance(2 * MINUTE);
    let fresh = session_id(&app.create("ann", "tablet").await);

    let (now, batch) = activity_now(
        &app,
        &[stale, revoked, fresh, also_stale, SessionId::generate()],
    );
    let written = direct.store().record_activity(&batch).await.unwrap();

    assert_eq!(ids(&written), sorted([stale, also_stale]));
    for session in &written {
        assert_eq!(session.last_seen_at, now);
        assert_eq!(session.idle_expires_at, now + chrono::Duration::days(7));
    }
    assert!(
        direct
            .store()
            .record_activity(&batch)
            .await
            .unwrap()
            .is_empty(),
        "written once: no longer stale"
    );
}

/// A batch must never wait on a revocation or a refresh (nor deadlock with them): it leaves a
/// locked session for a later interval.
#[tokio::test]
async fn postgres_a_batch_skips_a_session_another_write_holds_locked() {
    let app = spawn_app(Store::Postgres).await;
    let direct = Direct::of(&app, Store::Postgres);
    let locked = session_id(&app.create("cal", "phone").await);
    let free = session_id(&app.create("cal", "laptop").await);
    app.advance(DAY);

    let mut holder = app.pool.as_ref().unwrap().begin().await.unwrap();
    sqlx::query("SELECT 1 FROM session WHERE session_id = $1 FOR UPDATE")
        .bind(locked.as_uuid())
        .execute(&mut *holder)
        .await
        .unwrap();
    let (_, batch) = activity_now(&app, &[locked, free]);
    let written = tokio::time::timeout(
        Duration::from_secs(5),
        direct.store().record_activity(&batch),
    )
    .await
    .expect("did not wait for the lock")
    .unwrap();
    assert_eq!(ids(&written), vec![free]);

    holder.rollback().await.unwrap();
    let written = direct.store().record_activity(&batch).await.unwrap();
    assert_eq!(ids(&written), vec![locked], "written once the lock is gone");
}

on_every_store!(a_batch_writes_the_stale_live_sessions_and_nothing_else);
