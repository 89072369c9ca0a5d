//! The durable truth: Postgres through sqlx. Every write commits here before any cache is told.
//!
//! Functions take a `&mut PgConnection` so the authority can group them in one transaction and
//! decide when to commit; they hold SQL only, no session rules.

pub mod refresh_tokens;
pub mod sessions;

use std::{str::FromStr, time::Duration};

use sqlx::{
    PgPool,
    postgres::{PgConnectOptions, PgPoolOptions},
};

/// Opens a pool to `url`. `timeout` bounds both waiting for a connection and each statement, so a
/// stuck Postgres turns into UNAVAILABLE instead of a hung request. Connects lazily: a Postgres
/// that is down at start is retried by each request, not fatal.
pub fn connect_lazy(
    url: &str,
    max_connections: u32,
    timeout: Duration,
) -> Result<PgPool, sqlx::Error> {
    let options = PgConnectOptions::from_str(url)?
        .application_name("sessiond")
        .options([("statement_timeout", timeout.as_millis().to_string())]);
    Ok(PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(timeout)
        .connect_lazy_with(options))
}

/// Applies the migrations in `migrations/` that this database has not seen yet.
pub async fn migrate(pool: &PgPool) -> Result<(), sqlx::migrate::MigrateError> {
    sqlx::migrate!("./migrations").run(pool).await
}
