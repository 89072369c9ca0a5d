//! Fresh databases on the shared Postgres (`DATABASE_URL`).
//!
//! Each test gets a database named `sessiond_test_<unix time>_<random>`. A test that drops it at
//! its end would race its own server's open connections, so instead the first fresh database a
//! test binary makes drops the test databases that earlier runs left more than an hour ago.

use chrono::Utc;
use sessiond::store::{PostgresStore, SessionStore};
use sqlx::{Connection, Executor, PgConnection, PgPool};

/// The Postgres server tests make their databases on.
pub fn database_server_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// Creates an empty database `sessiond_test_<unix time>_<random>` on the shared Postgres; its URL.
pub async fn fresh_database() -> String {
    let server = database_server_url();
    let mut admin = PgConnection::connect(&server)
        .await
        .expect("Postgres answers at DATABASE_URL");
    drop_old_test_databases(&mut admin).await;
    let name = format!(
        "sessiond_test_{}_{}",
        Utc::now().timestamp(),
        uuid::Uuid::now_v7().simple()
    );
    admin
        .execute(sqlx::AssertSqlSafe(format!(r#"CREATE DATABASE "{name}""#)))
        .await
        .unwrap();
    let _ = admin.close().await;
    let mut url = url::Url::parse(&server).unwrap();
    url.set_path(&name);
    url.to_string()
}

/// Like `fresh_database`, with sessiond's migrations applied; its URL and a pool to it.
pub async fn fresh_migrated_database() -> (String, PgPool) {
    let url = fresh_database().await;
    let pool = PgPool::connect(&url).await.unwrap();
    PostgresStore::new(pool.clone()).migrate().await.unwrap();
    (url, pool)
}

/// Once per test binary: drops the test databases made more than an hour ago.
async fn drop_old_test_databases(admin: &mut PgConnection) {
    static ONCE: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();
    ONCE.get_or_init(|| async {
        let cutoff = Utc::now().timestamp() - 3600;
        let names: Vec<String> = sqlx::query_scalar(
            "SELECT datname FROM pg_database WHERE datname LIKE 'sessiond\\_test\\_%'",
        )
        .fetch_all(&mut *admin)
        .await
        .unwrap();
        for name in names {
            let created = name.split('_').nth(2).and_then(|t| t.parse::<i64>().ok());
            if created.is_some_and(|created| created < cutoff) {
                let _ = admin
                    .execute(sqlx::AssertSqlSafe(format!(
                        r#"DROP DATABASE IF EXISTS "{name}" WITH (FORCE)"#
                    )))
                    .await;
            }
        }
    })
    .await;
}
