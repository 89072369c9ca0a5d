//! What really differs between the two databases: how a time is stored, how writers take turns,
//! the batched writes, the sweep's delete, and the migrations. Everything else is written once,
//! in `statements.rs` (one statement each) and `operations.rs` (what each store operation does).

use std::{sync::Arc, time::Duration};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::{Database, Executor, IntoArguments, Pool, Transaction, pool::PoolConnection};

use super::{Activity, NewSession, StoredTime};
use crate::{
    domain::{RevokeReason, Session, UserId},
    error::{Error, Result},
};

/// A database sessiond can keep its sessions in.
#[async_trait]
pub(super) trait Dialect: Database<Arguments: IntoArguments<Self>> {
    /// A time as this database keeps it.
    type Time: StoredTime + Send + Sync + Unpin + 'static;

    /// `time` as this database keeps it.
    fn time(time: DateTime<Utc>) -> Self::Time;

    /// The connection `conn`, to run statements on.
    fn on(conn: &mut Self::Connection) -> impl Executor<'_, Database = Self>;

    /// How many rows a statement changed (sqlx has no trait for it).
    fn rows_affected(result: &Self::QueryResult) -> u64;

    /// `SELECT .. FROM session WHERE session_id = $1` that also locks the row until the
    /// transaction ends, so concurrent rotations of its refresh token take turns.
    const FIND_SESSION_FOR_UPDATE: &'static str;

    /// Starts a transaction on `conn` that will write.
    async fn begin_write(conn: &mut Self::Connection) -> Result<Transaction<'_, Self>>;

    /// Serialises every session-count decision for one user until the transaction ends.
    async fn lock_user(conn: &mut Self::Connection, user_id: &UserId) -> Result<()>;

    /// For each create: revokes the user's unrevoked session on the new session's device (when
    /// it names one), then inserts the session and its first refresh token. At most one create
    /// per (user, device). Returns the sessions each create revoked, in `creates`' order.
    async fn insert_replacing_devices(
        conn: &mut Self::Connection,
        creates: &[NewSession],
        reason: &RevokeReason,
    ) -> Result<Vec<Vec<Session>>>;

    /// CreateSession for a batch of creates when no per-user limit applies (nothing to count, so
    /// no per-user lock): [`Dialect::insert_replacing_devices`], atomically, in as few round trips
    /// as the database allows.
    async fn create_unlimited(
        pool: &Pool<Self>,
        batch: &[NewSession],
        reason: &RevokeReason,
    ) -> Result<Vec<Vec<Session>>>;

    /// [`super::SessionStore::record_activity`].
    async fn record_activity(pool: &Pool<Self>, batch: &[Activity]) -> Result<Vec<Session>>;

    /// Takes the sweep lock ([`super::SWEEP_LOCK_KEY`]) for this connection, without waiting;
    /// false if another connection holds it.
    async fn try_lock_sweep(conn: &mut Self::Connection) -> Result<bool>;

    /// Deletes at most `limit` sessions (their refresh tokens cascade) revoked before `cutoff` or
    /// past either expiry before `cutoff`; returns how many. One statement, run outside any
    /// transaction, so its locks last only as long as it does.
    async fn delete_ended_before(
        conn: &mut Self::Connection,
        cutoff: DateTime<Utc>,
        limit: i64,
    ) -> Result<u64>;

    /// Releases what [`Dialect::try_lock_sweep`] took.
    async fn unlock_sweep(conn: &mut Self::Connection) -> Result<()>;

    /// Applies this database's migrations.
    async fn migrate(pool: &Pool<Self>) -> Result<()>;
}

/// `migrator`, made to start on a database that a newer release has migrated further, as a
/// rollback does: every migration keeps the previous release working (README, Operations), so the
/// ones this build does not know are safe to leave alone.
pub(super) fn rollback_safe(mut migrator: sqlx::migrate::Migrator) -> sqlx::migrate::Migrator {
    migrator.set_ignore_missing(true);
    migrator
}

/// A connection of `pool`. sqlx's acquire future holds a whole connection attempt inline (about
/// 14 KB for Postgres): boxed, it leaves an operation's own future a few hundred bytes, and so
/// every move of that future by the layers above (the timeout, the boxed trait future), which
/// copied it whole, at some 95 k instructions of `memcpy` per CreateSession.
pub(super) async fn connection<DB: Database>(
    pool: &Pool<DB>,
) -> std::result::Result<PoolConnection<DB>, sqlx::Error> {
    Box::pin(pool.acquire()).await
}

/// A transaction on a connection of `pool` (boxed, as [`connection`] says why).
pub(super) async fn transaction<DB: Database>(
    pool: &Pool<DB>,
) -> std::result::Result<Transaction<'static, DB>, sqlx::Error> {
    Box::pin(pool.begin()).await
}

/// Runs `op`, failing it with UNAVAILABLE if it takes longer than `limit`.
pub(super) async fn bounded<T>(
    limit: Option<Duration>,
    op: impl Future<Output = Result<T>> + Send,
) -> Result<T> {
    match limit {
        None => op.await,
        Some(limit) => tokio::time::timeout(limit, op)
            .await
            .unwrap_or_else(|_| Err(Error::StoreUnavailable(Arc::new(super::TimedOut(limit))))),
    }
}
