//! What only the session suite uses, on top of the shared harness (`crate::support`): polling
//! for writes made off the request path, field violations, and a store over the app's own data.

use std::time::Duration;

use sessiond::{
    api::pb,
    domain::{RevokeReason, Session},
    store::{Backend, NewSession, PostgresStore, SessionStore, SqliteStore},
};
use tonic::{Code, Status};
use tonic_types::StatusExt;

use crate::support::app::{Store, TestApp};

impl TestApp {
    /// Polls GetSession until `done` holds for the stored session (writes made off the request
    /// path land a moment later); panics after five seconds.
    pub async fn wait_for_stored(
        &self,
        session_id: &str,
        done: impl Fn(&pb::Session) -> bool,
    ) -> pb::Session {
        for _ in 0..100 {
            let stored = self.get(session_id).await.unwrap();
            if done(&stored) {
                return stored;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("session {session_id} never reached the expected state");
    }
}

/// Asserts `status` is INVALID_ARGUMENT with a BadRequest violation of `field`.
pub fn assert_invalid_field(status: &Status, field: &str) {
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    let violations = status
        .get_details_bad_request()
        .expect("a BadRequest detail")
        .field_violations;
    assert!(
        violations.iter().any(|violation| violation.field == field),
        "expected a violation of {field}, got {violations:?}"
    );
}

pub const MINUTE: Duration = Duration::from_secs(60);
pub const DAY: Duration = Duration::from_secs(86_400);

/// A store over the same data as `app`, to call by hand.
pub enum Direct {
    Postgres(PostgresStore),
    Sqlite(SqliteStore),
}

impl Direct {
    pub fn of(app: &TestApp, store: Store) -> Self {
        match store {
            Store::Postgres => Self::Postgres(PostgresStore::new(
                app.pool.clone().expect("a Postgres test has a pool"),
            )),
            Store::Sqlite => Self::Sqlite(
                SqliteStore::open(&app.data_dir, Duration::from_secs(5)).expect("opens"),
            ),
        }
    }

    pub fn store(&self) -> &dyn SessionStore {
        match self {
            Self::Postgres(store) => store,
            Self::Sqlite(store) => store,
        }
    }

    /// Writes `batch` the way the store writes concurrent creates: one call to the database's
    /// [`Backend::create_unlimited`]. Returns the sessions each create replaced.
    pub async fn create_batch(&self, batch: &[NewSession]) -> Vec<Vec<Session>> {
        let replaced = RevokeReason::internal(RevokeReason::DEVICE_REPLACED);
        match self {
            Self::Postgres(store) => {
                sqlx::Postgres::create_unlimited(store.pool(), batch, &replaced).await
            }
            Self::Sqlite(store) => {
                sqlx::Sqlite::create_unlimited(store.pool(), batch, &replaced).await
            }
        }
        .unwrap()
    }

    /// Runs `sql`, which changes something, on the underlying database.
    pub async fn execute(&self, sql: &'static str) {
        match self {
            Self::Postgres(store) => sqlx::query(sql).execute(store.pool()).await.map(drop),
            Self::Sqlite(store) => sqlx::query(sql).execute(store.pool()).await.map(drop),
        }
        .unwrap()
    }

    /// Runs `SELECT count(*) ...` on the underlying database.
    pub async fn count(&self, sql: &'static str) -> i64 {
        match self {
            Self::Postgres(store) => sqlx::query_scalar(sql).fetch_one(store.pool()).await,
            Self::Sqlite(store) => sqlx::query_scalar(sql).fetch_one(store.pool()).await,
        }
        .unwrap()
    }
}
