//! Fresh databases on the shared Postgres (`DATABASE_URL`).

use sqlx::{Connection, Executor, PgConnection, PgPool};

/// The Postgres server tests make their databases on.
pub fn database_server_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// Creates an empty database `sessiond_test_<unix time>_<random>` on the shared Postgres (the
/// API tests' helper drops such databases once they are an hour old); its URL.
pub async fn fresh_database() -> String {
    let server = database_server_url();
    let mut admin = PgConnection::connect(&server)
        .await
        .expect("Postgres answers at DATABASE_URL");
    let name = format!(
        "sessiond_test_{}_{}",
        chrono::Utc::now().timestamp(),
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
    let store = sessiond::store::PostgresStore::new(pool.clone());
    sessiond::store::SessionStore::migrate(&store)
        .await
        .unwrap();
    (url, pool)
}
