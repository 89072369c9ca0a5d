//! The embedded store's SQL: one SQLite file, for a single node. Writers take the database's write
//! lock when their transaction begins (`BEGIN IMMEDIATE`), so concurrent decisions take turns
//! without per-row locks. Times are microseconds since the Unix epoch.

use std::{path::Path, time::Duration};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::{
    Connection, Executor, Sqlite, SqliteConnection, SqlitePool, Transaction,
    sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous},
    types::Json,
};

use super::{
    Activity, NewSession, SqliteStore,
    dialect::{Dialect, connection, rollback_safe},
    statements::Statements,
};
use crate::{
    domain::{RevokeReason, Session, UserId},
    error::{Error, Result},
};

/// The embedded store's file inside the data folder.
const FILE_NAME: &str = "sessiond.db";

impl SqliteStore {
    /// Opens (creating if needed) the store in `data_dir`. Every commit is flushed to disk before
    /// it is acknowledged (`synchronous = FULL`), so an answered request survives a crash.
    pub fn open(data_dir: &Path, timeout: Duration) -> anyhow::Result<Self> {
        std::fs::create_dir_all(data_dir).map_err(|e| {
            anyhow::anyhow!(
                "SESSIOND_DATA_DIR: cannot create {}: {e}",
                data_dir.display()
            )
        })?;
        let options = SqliteConnectOptions::new()
            .filename(data_dir.join(FILE_NAME))
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(timeout);
        Ok(Self::new(
            SqlitePoolOptions::new()
                .max_connections(4)
                .acquire_timeout(timeout)
                .connect_lazy_with(options),
        )
        .with_op_timeout(timeout * 2))
    }
}

#[async_trait]
impl Dialect for Sqlite {
    type Time = i64;

    fn time(time: DateTime<Utc>) -> i64 {
        time.timestamp_micros()
    }

    fn on(conn: &mut SqliteConnection) -> impl Executor<'_, Database = Sqlite> {
        conn
    }

    // The transaction's write lock already excludes every other writer.
    fn rows_affected(result: &sqlx::sqlite::SqliteQueryResult) -> u64 {
        result.rows_affected()
    }

    const FIND_SESSION_FOR_UPDATE: &'static str = concat!(
        "SELECT ",
        columns_in_effect!(),
        " FROM ",
        in_effect!(),
        " WHERE s.session_id = $1"
    );

    async fn begin_write(conn: &mut SqliteConnection) -> Result<Transaction<'_, Sqlite>> {
        Ok(conn.begin_with("BEGIN IMMEDIATE").await?)
    }

    async fn lock_user(_conn: &mut SqliteConnection, _user_id: &UserId) -> Result<()> {
        // `BEGIN IMMEDIATE` already holds the database's only write lock.
        Ok(())
    }

    /// Statement by statement: SQLite runs in-process, so round trips cost nothing.
    async fn insert_replacing_devices(
        conn: &mut SqliteConnection,
        creates: &[NewSession],
        reason: &RevokeReason,
    ) -> Result<Vec<Vec<Session>>> {
        let mut replaced = Vec::with_capacity(creates.len());
        for NewSession {
            session,
            refresh_token,
            now,
        } in creates
        {
            replaced.push(match &session.device.device_id {
                Some(device_id) => {
                    Statements::<Sqlite>(conn)
                        .revoke_device(&session.user_id, device_id, *now, reason)
                        .await?
                }
                None => Vec::new(),
            });
            sqlx::query(
                "INSERT INTO session (session_id, user_id, device_id, device_name, user_agent, \
                                      ip_address, metadata, created_at, last_seen_at, expires_at, \
                                      idle_expires_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
            )
            .bind(session.id.as_uuid())
            .bind(session.user_id.as_str())
            .bind(session.device.device_id.as_deref())
            .bind(&session.device.name)
            .bind(&session.device.user_agent)
            .bind(session.device.ip_address.map(|ip| ip.to_string()))
            .bind(Json(&session.metadata))
            .bind(Self::time(session.created_at))
            .bind(Self::time(session.last_seen_at))
            .bind(Self::time(session.expires_at))
            .bind(Self::time(session.idle_expires_at))
            .execute(&mut *conn)
            .await?;
            Statements::<Sqlite>(conn)
                .insert_refresh_token(refresh_token, session.id, 0, *now)
                .await?;
        }
        Ok(replaced)
    }

    /// One transaction for the whole batch: SQLite's cost is the commit.
    async fn create_unlimited(
        pool: &SqlitePool,
        batch: &[NewSession],
        reason: &RevokeReason,
    ) -> Result<Vec<Vec<Session>>> {
        let mut conn = connection(pool).await?;
        let mut tx = Self::begin_write(&mut conn).await?;
        let replaced = Self::insert_replacing_devices(&mut tx, batch, reason).await?;
        tx.commit().await?;
        Ok(replaced)
    }

    async fn record_activity(pool: &SqlitePool, batch: &[Activity]) -> Result<Vec<Session>> {
        let mut conn = connection(pool).await?;
        let mut tx = Self::begin_write(&mut conn).await?;
        let mut written = Vec::with_capacity(batch.len());
        for activity in batch {
            written.extend(
                Statements::<Sqlite>(&mut tx)
                    .record_activity(
                        activity.session_id,
                        activity.seen_at,
                        activity.idle_expires_at,
                        activity.stale_before,
                    )
                    .await?,
            );
        }
        tx.commit().await?;
        Ok(written)
    }

    async fn try_lock_sweep(_conn: &mut SqliteConnection) -> Result<bool> {
        // One node: nobody else sweeps.
        Ok(true)
    }

    async fn delete_ended_before(
        conn: &mut SqliteConnection,
        cutoff: DateTime<Utc>,
        limit: i64,
    ) -> Result<u64> {
        // One bounded index scan per condition (session_idle_expires_at_idx, session_revoked_at_idx),
        // deduplicated: the union holds min($2, rows to delete) ids, so a short batch means nothing
        // is left. A session past its absolute end is past its idle end too (idle_expires_at <=
        // expires_at), so the idle scan finds it.
        let sql = "DELETE FROM session WHERE session_id IN ( \
             SELECT session_id FROM (SELECT session_id FROM session WHERE idle_expires_at < $1 \
                                     ORDER BY idle_expires_at LIMIT $2) \
             UNION SELECT session_id FROM (SELECT session_id FROM session WHERE revoked_at < $1 \
                                           ORDER BY revoked_at LIMIT $2) \
             LIMIT $2)";
        Ok(sqlx::query(sql)
            .bind(Self::time(cutoff))
            .bind(limit)
            .execute(conn)
            .await?
            .rows_affected())
    }

    async fn unlock_sweep(_conn: &mut SqliteConnection) -> Result<()> {
        Ok(())
    }

    async fn migrate(pool: &SqlitePool) -> Result<()> {
        rollback_safe(sqlx::migrate!("./migrations/sqlite"))
            .run(pool)
            .await
            .map_err(|error| Error::Internal(error.into()))
    }
}
