//! What only the session suite uses, on top of the shared harness (`crate::support`): polling
//! for writes made off the request path, field violations, and a store over the app's own data.

use std::time::Duration;

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use ed25519_dalek::Signer;
use serde_json::Value;

use sessiond::{
    api::pb,
    store::{PostgresStore, SessionStore, SqliteStore},
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

// Access tokens taken apart and put together again, to tamper with or to forge.

pub fn encode(value: &Value) -> String {
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(value).unwrap())
}

pub fn decode(part: &str) -> Value {
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).unwrap()).unwrap()
}

/// Header and claims of a real token, to tamper with.
pub fn parts(token: &str) -> (Value, Value) {
    let mut parts = token.split('.');
    (decode(parts.next().unwrap()), decode(parts.next().unwrap()))
}

/// A token with this header and these claims, signed by `key`.
pub fn sign(header: &Value, claims: &Value, key: &ed25519_dalek::SigningKey) -> String {
    let input = format!("{}.{}", encode(header), encode(claims));
    let signature = key.sign(input.as_bytes());
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature.to_bytes()))
}

pub const MINUTE: Duration = Duration::from_secs(60);
pub const DAY: Duration = Duration::from_secs(86_400);

/// A store over the same data as `app`, to call by hand, and a pool of its own to look
/// underneath.
pub struct Direct {
    store: Box<dyn SessionStore>,
    pool: Pool,
}

enum Pool {
    Postgres(sqlx::PgPool),
    Sqlite(sqlx::SqlitePool),
}

impl Direct {
    pub fn of(app: &TestApp, store: Store) -> Self {
        match store {
            Store::Postgres => {
                let pool = app.pool.clone().expect("a Postgres test has a pool");
                Self {
                    store: Box::new(PostgresStore::new(pool.clone())),
                    pool: Pool::Postgres(pool),
                }
            }
            Store::Sqlite => Self {
                store: Box::new(
                    SqliteStore::open(&app.data_dir, Duration::from_secs(5)).expect("opens"),
                ),
                pool: Pool::Sqlite(sqlx::SqlitePool::connect_lazy_with(
                    sqlx::sqlite::SqliteConnectOptions::new()
                        .filename(app.data_dir.join("sessiond.db"))
                        .foreign_keys(true),
                )),
            },
        }
    }

    pub fn store(&self) -> &dyn SessionStore {
        self.store.as_ref()
    }

    /// Runs `sql`, which changes something, on the underlying database.
    pub async fn execute(&self, sql: &'static str) {
        match &self.pool {
            Pool::Postgres(pool) => sqlx::query(sql).execute(pool).await.map(drop),
            Pool::Sqlite(pool) => sqlx::query(sql).execute(pool).await.map(drop),
        }
        .unwrap()
    }

    /// Runs `SELECT count(*) ...` on the underlying database.
    pub async fn count(&self, sql: &'static str) -> i64 {
        match &self.pool {
            Pool::Postgres(pool) => sqlx::query_scalar(sql).fetch_one(pool).await,
            Pool::Sqlite(pool) => sqlx::query_scalar(sql).fetch_one(pool).await,
        }
        .unwrap()
    }

    /// Every table of the store's schema (what its migrations made), by name, but sqlx's own
    /// record of the migrations applied.
    pub async fn tables(&self) -> Vec<String> {
        match &self.pool {
            Pool::Postgres(pool) => {
                sqlx::query_scalar(
                    "SELECT table_name::text FROM information_schema.tables \
                 WHERE table_schema = current_schema() AND table_type = 'BASE TABLE' \
                   AND table_name <> '_sqlx_migrations' ORDER BY 1",
                )
                .fetch_all(pool)
                .await
            }
            Pool::Sqlite(pool) => {
                sqlx::query_scalar(
                    "SELECT name FROM sqlite_master WHERE type = 'table' \
                   AND name NOT LIKE 'sqlite_%' AND name <> '_sqlx_migrations' ORDER BY 1",
                )
                .fetch_all(pool)
                .await
            }
        }
        .unwrap()
    }

    /// Every row of `table`, each as one text holding all its columns: Postgres's JSON of the
    /// row (uuids as text, bytea in hex), or for SQLite a JSON array of the columns with each
    /// BLOB (ids, hashes) in hex.
    pub async fn rows_as_text(&self, table: &str) -> Vec<String> {
        match &self.pool {
            Pool::Postgres(pool) => sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
                "SELECT row_to_json(t)::text FROM \"{table}\" t"
            )))
            .fetch_all(pool)
            .await
            .unwrap(),
            Pool::Sqlite(pool) => {
                let columns: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
                    "SELECT name FROM pragma_table_info('{table}')"
                )))
                .fetch_all(pool)
                .await
                .unwrap();
                let as_text: Vec<String> = columns
                    .iter()
                    .map(|c| {
                        format!(
                            "CASE WHEN typeof(\"{c}\") = 'blob' THEN hex(\"{c}\") ELSE \"{c}\" END"
                        )
                    })
                    .collect();
                sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
                    "SELECT json_array({}) FROM \"{table}\"",
                    as_text.join(", ")
                )))
                .fetch_all(pool)
                .await
                .unwrap()
            }
        }
    }
}
