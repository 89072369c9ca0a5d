//! The embedded store's SQL: one SQLite file, for a single node. Writers take the database's write
//! lock when their transaction begins (`BEGIN IMMEDIATE`), so concurrent decisions take turns
//! without per-row locks. Times are microseconds since the Unix epoch.

use std::{path::Path, time::Duration};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::{
    Sqlite, SqliteConnection, SqlitePool, Transaction,
    sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous},
    types::Json,
};
use uuid::Uuid;

use super::{
    Activity, Backend, NewSession, RevokedAfter, SqliteStore, Statements, StoredRefreshToken,
    StoredTime, dialect::rollback_safe, session_from, sessions_from, token_hash,
};
use crate::{
    domain::{RevokeReason, Session, SessionId, UserId},
    error::{Error, Result},
    token::TokenHash,
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
impl Backend for Sqlite {
    async fn begin_write(pool: &SqlitePool) -> Result<Transaction<'static, Sqlite>> {
        Ok(pool.begin_with("BEGIN IMMEDIATE").await?)
    }

    /// One transaction for the whole batch: SQLite's cost is the commit.
    async fn create_unlimited(
        pool: &SqlitePool,
        batch: &[NewSession],
        reason: &RevokeReason,
    ) -> Result<Vec<Vec<Session>>> {
        let mut tx = Self::begin_write(pool).await?;
        let mut replaced = Vec::with_capacity(batch.len());
        for create in batch {
            replaced.push(
                tx.insert_replacing_device(
                    &create.session,
                    &create.refresh_token,
                    create.now,
                    reason,
                )
                .await?,
            );
        }
        tx.commit().await?;
        Ok(replaced)
    }

    async fn record_activity(pool: &SqlitePool, batch: &[Activity]) -> Result<Vec<Session>> {
        let mut tx = Self::begin_write(pool).await?;
        let mut written = Vec::with_capacity(batch.len());
        for activity in batch {
            written.extend(
                tx.record_activity(
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

    async fn migrate(pool: &SqlitePool) -> Result<()> {
        rollback_safe(sqlx::migrate!("./migrations/sqlite"))
            .run(pool)
            .await
            .map_err(|error| Error::Internal(error.into()))
    }
}

fn micros(time: DateTime<Utc>) -> i64 {
    time.timestamp_micros()
}

type SessionRow = super::SessionRow<i64>;

#[async_trait]
impl Statements for SqliteConnection {
    async fn lock_user(&mut self, _user_id: &UserId) -> Result<()> {
        // `BEGIN IMMEDIATE` already holds the database's only write lock.
        Ok(())
    }

    async fn insert_replacing_device(
        &mut self,
        session: &Session,
        refresh_token: &TokenHash,
        now: DateTime<Utc>,
        reason: &RevokeReason,
    ) -> Result<Vec<Session>> {
        // Statement by statement: SQLite runs in-process, so round trips cost nothing.
        let replaced = match &session.device.device_id {
            Some(device_id) => {
                self.revoke_device(&session.user_id, device_id, now, reason)
                    .await?
            }
            None => Vec::new(),
        };
        sqlx::query(
            r#"
            INSERT INTO session (session_id, user_id, device_id, device_name, user_agent, ip_address, metadata,
                                 created_at, last_seen_at, expires_at, idle_expires_at)
            VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)
            "#,
        )
        .bind(session.id.as_uuid())
        .bind(session.user_id.as_str())
        .bind(session.device.device_id.as_deref())
        .bind(&session.device.name)
        .bind(&session.device.user_agent)
        .bind(session.device.ip_address.map(|ip| ip.to_string()))
        .bind(Json(&session.metadata))
        .bind(micros(session.created_at))
        .bind(micros(session.last_seen_at))
        .bind(micros(session.expires_at))
        .bind(micros(session.idle_expires_at))
        .execute(&mut *self)
        .await?;
        self.insert_refresh_token(refresh_token, session.id, 0, now)
            .await?;
        Ok(replaced)
    }

    async fn find_session(&mut self, id: SessionId) -> Result<Option<Session>> {
        let sql = concat!("SELECT ", columns!(), " FROM session WHERE session_id = ?1");
        session_from(
            sqlx::query_as::<_, SessionRow>(sql)
                .bind(id.as_uuid())
                .fetch_optional(self)
                .await?,
        )
    }

    async fn find_session_for_update(&mut self, id: SessionId) -> Result<Option<Session>> {
        // The transaction's write lock already excludes every other writer.
        self.find_session(id).await
    }

    async fn count_live(&mut self, user_id: &UserId, now: DateTime<Utc>) -> Result<i64> {
        let sql = concat!(
            "SELECT count(*) FROM session WHERE user_id = ?1 AND ",
            live_at!("?2")
        );
        Ok(sqlx::query_scalar(sql)
            .bind(user_id.as_str())
            .bind(micros(now))
            .fetch_one(self)
            .await?)
    }

    async fn revoke(
        &mut self,
        id: SessionId,
        now: DateTime<Utc>,
        reason: &RevokeReason,
    ) -> Result<Option<Session>> {
        let sql = concat!(
            "UPDATE session SET revoked_at = ?2, revoke_reason = ?3 \
             WHERE session_id = ?1 AND revoked_at IS NULL RETURNING ",
            columns!()
        );
        session_from(
            sqlx::query_as::<_, SessionRow>(sql)
                .bind(id.as_uuid())
                .bind(micros(now))
                .bind(reason.as_str())
                .fetch_optional(self)
                .await?,
        )
    }

    async fn revoke_device(
        &mut self,
        user_id: &UserId,
        device_id: &str,
        now: DateTime<Utc>,
        reason: &RevokeReason,
    ) -> Result<Vec<Session>> {
        let sql = concat!(
            "UPDATE session SET revoked_at = ?3, revoke_reason = ?4 \
             WHERE user_id = ?1 AND device_id = ?2 AND revoked_at IS NULL RETURNING ",
            columns!()
        );
        sessions_from(
            sqlx::query_as::<_, SessionRow>(sql)
                .bind(user_id.as_str())
                .bind(device_id)
                .bind(micros(now))
                .bind(reason.as_str())
                .fetch_all(self)
                .await?,
        )
    }

    async fn revoke_oldest_live(
        &mut self,
        user_id: &UserId,
        count: i64,
        now: DateTime<Utc>,
        reason: &RevokeReason,
    ) -> Result<Vec<Session>> {
        let sql = concat!(
            "UPDATE session SET revoked_at = ?2, revoke_reason = ?3 WHERE session_id IN ( \
               SELECT session_id FROM session WHERE user_id = ?1 AND ",
            live_at!("?2"),
            " ORDER BY session_id LIMIT ?4) RETURNING ",
            columns!()
        );
        sessions_from(
            sqlx::query_as::<_, SessionRow>(sql)
                .bind(user_id.as_str())
                .bind(micros(now))
                .bind(reason.as_str())
                .bind(count)
                .fetch_all(self)
                .await?,
        )
    }

    async fn revoke_user(
        &mut self,
        user_id: &UserId,
        except: Option<SessionId>,
        now: DateTime<Utc>,
        reason: &RevokeReason,
    ) -> Result<Vec<Session>> {
        let sql = concat!(
            "UPDATE session SET revoked_at = ?3, revoke_reason = ?4 \
             WHERE user_id = ?1 AND revoked_at IS NULL AND session_id IS NOT ?2 RETURNING ",
            columns!()
        );
        sessions_from(
            sqlx::query_as::<_, SessionRow>(sql)
                .bind(user_id.as_str())
                .bind(except.map(|id| id.as_uuid()))
                .bind(micros(now))
                .bind(reason.as_str())
                .fetch_all(self)
                .await?,
        )
    }

    async fn record_activity(
        &mut self,
        id: SessionId,
        now: DateTime<Utc>,
        idle_expires_at: DateTime<Utc>,
        stale_before: DateTime<Utc>,
    ) -> Result<Option<Session>> {
        let sql = concat!(
            "UPDATE session SET last_seen_at = max(last_seen_at, ?2), \
                                idle_expires_at = max(idle_expires_at, ?3) \
             WHERE session_id = ?1 AND last_seen_at < ?4 AND ",
            live_at!("?2"),
            " RETURNING ",
            columns!()
        );
        session_from(
            sqlx::query_as::<_, SessionRow>(sql)
                .bind(id.as_uuid())
                .bind(micros(now))
                .bind(micros(idle_expires_at))
                .bind(micros(stale_before))
                .fetch_optional(self)
                .await?,
        )
    }

    async fn list_sessions(
        &mut self,
        user_id: &UserId,
        include_revoked: bool,
        now: DateTime<Utc>,
        after: Option<SessionId>,
        limit: i64,
    ) -> Result<Vec<Session>> {
        let sql = concat!(
            "SELECT ",
            columns!(),
            " FROM session WHERE user_id = ?1 AND (?2 OR (",
            live_at!("?3"),
            ")) AND (?4 IS NULL OR session_id < ?4) ORDER BY session_id DESC LIMIT ?5"
        );
        sessions_from(
            sqlx::query_as::<_, SessionRow>(sql)
                .bind(user_id.as_str())
                .bind(include_revoked)
                .bind(micros(now))
                .bind(after.map(|id| id.as_uuid()))
                .bind(limit)
                .fetch_all(self)
                .await?,
        )
    }

    async fn revoked_since(&mut self, after: RevokedAfter, limit: i64) -> Result<Vec<Session>> {
        let sql = concat!(
            "SELECT ",
            columns!(),
            " FROM session WHERE revoked_at >= ?1 AND (revoked_at > ?1 OR session_id > ?2) \
             ORDER BY revoked_at, session_id LIMIT ?3"
        );
        sessions_from(
            sqlx::query_as::<_, SessionRow>(sql)
                .bind(micros(after.revoked_at))
                .bind(after.session_id.as_uuid())
                .bind(limit)
                .fetch_all(self)
                .await?,
        )
    }

    async fn insert_refresh_token(
        &mut self,
        hash: &TokenHash,
        session_id: SessionId,
        generation: i32,
        now: DateTime<Utc>,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO refresh_token (token_hash, session_id, generation, issued_at) VALUES (?1, ?2, ?3, ?4)",
        )
        .bind(hash.0.as_slice())
        .bind(session_id.as_uuid())
        .bind(generation)
        .bind(micros(now))
        .execute(self)
        .await?;
        Ok(())
    }

    async fn find_refresh_token(&mut self, hash: &TokenHash) -> Result<Option<StoredRefreshToken>> {
        let row: Option<(Uuid, i32, Option<i64>)> = sqlx::query_as(
            "SELECT session_id, generation, retired_at FROM refresh_token WHERE token_hash = ?1",
        )
        .bind(hash.0.as_slice())
        .fetch_optional(self)
        .await?;
        row.map(|(session_id, generation, retired_at)| {
            Ok(StoredRefreshToken {
                session_id: session_id.into(),
                generation,
                retired_at: retired_at.map(StoredTime::into_time).transpose()?,
            })
        })
        .transpose()
    }

    async fn current_refresh_token(
        &mut self,
        session_id: SessionId,
    ) -> Result<Option<(i32, TokenHash)>> {
        let row: Option<(i32, Vec<u8>)> = sqlx::query_as(
            "SELECT generation, token_hash FROM refresh_token WHERE session_id = ?1 AND retired_at IS NULL",
        )
        .bind(session_id.as_uuid())
        .fetch_optional(self)
        .await?;
        row.map(|(generation, hash)| Ok((generation, token_hash(hash)?)))
            .transpose()
    }

    async fn retire_current_refresh_token(
        &mut self,
        session_id: SessionId,
        now: DateTime<Utc>,
    ) -> Result<()> {
        sqlx::query(
            "UPDATE refresh_token SET retired_at = ?2 WHERE session_id = ?1 AND retired_at IS NULL",
        )
        .bind(session_id.as_uuid())
        .bind(micros(now))
        .execute(self)
        .await?;
        Ok(())
    }

    async fn forget_refresh_tokens_before(
        &mut self,
        session_id: SessionId,
        generation: i32,
    ) -> Result<()> {
        sqlx::query("DELETE FROM refresh_token WHERE session_id = ?1 AND generation < ?2")
            .bind(session_id.as_uuid())
            .bind(generation)
            .execute(self)
            .await?;
        Ok(())
    }

    async fn try_lock_sweep(&mut self) -> Result<bool> {
        // One node: nobody else sweeps.
        Ok(true)
    }

    async fn unlock_sweep(&mut self) -> Result<()> {
        Ok(())
    }

    async fn delete_ended_before(&mut self, cutoff: DateTime<Utc>, limit: i64) -> Result<u64> {
        // One bounded index scan per condition (session_idle_expires_at_idx,
        // session_revoked_at_idx), deduplicated: the union holds min(?2, rows to delete) ids, so
        // a short batch means nothing is left. A session past its absolute end is past its idle
        // end too (idle_expires_at <= expires_at), so the idle scan finds it.
        let sql = "DELETE FROM session WHERE session_id IN ( \
                     SELECT session_id FROM (SELECT session_id FROM session WHERE idle_expires_at < ?1 \
                                             ORDER BY idle_expires_at LIMIT ?2) \
                     UNION SELECT session_id FROM (SELECT session_id FROM session WHERE revoked_at < ?1 \
                                                   ORDER BY revoked_at LIMIT ?2) \
                     LIMIT ?2)";
        Ok(sqlx::query(sql)
            .bind(micros(cutoff))
            .bind(limit)
            .execute(self)
            .await?
            .rows_affected())
    }
}
