//! The statements both databases share, each written once. They use `$N` placeholders, which
//! SQLite reads as well as Postgres, and bind times through [`Dialect::time`].

use chrono::{DateTime, Utc};
use sqlx::{Database, Encode, FromRow, Type};
use uuid::Uuid;

use super::{
    RevokedAfter, StoredRefreshToken, StoredTime, SuccessorSalt, dialect::Dialect, session_from,
    sessions_from, token_hash,
};
use crate::{
    domain::{RevokeReason, Session, SessionId, UserId},
    error::{Error, Result},
    token::TokenHash,
};

/// A value sqlx can bind on `DB`.
pub(super) trait Bind<DB: Database>: for<'q> Encode<'q, DB> + Type<DB> + Send {}
impl<DB: Database, T: for<'q> Encode<'q, DB> + Type<DB> + Send> Bind<DB> for T {}

/// A row sqlx can read on `DB`.
pub(super) trait Read<DB: Database>: for<'r> FromRow<'r, DB::Row> + Send + Unpin {}
impl<DB: Database, T: for<'r> FromRow<'r, DB::Row> + Send + Unpin> Read<DB> for T {}

type SessionRow<DB> = super::SessionRow<<DB as Dialect>::Time>;

/// `session_id, generation, retired_at, successor_salt` of a `refresh_token` row.
pub(super) type RefreshTokenRow<DB> = (Uuid, i32, Option<<DB as Dialect>::Time>, Option<Vec<u8>>);

/// The user's (`$1`) revoked sessions up to `$2` in id order: one batch of an erasure, named the
/// same way by its reads and its delete. A range, not a list of ids, which SQLite cannot bind.
/// Only a session revoked after the batch was read and with an id below `$2` (made during the
/// erasure by a replica whose clock is behind) can join the batch in between; the delete returns
/// it, so it is erased with the batch.
macro_rules! revoked_of_user_through {
    () => {
        "SELECT session_id FROM session \
         WHERE user_id = $1 AND revoked_at IS NOT NULL AND session_id <= $2"
    };
}

/// One connection (usually inside a transaction), and the statements to run on it.
pub(super) struct Statements<'c, DB: Database>(pub &'c mut DB::Connection);

// What sqlx must be able to bind and read on `DB` for these statements. Rust does not carry
// such bounds along with `DB: Dialect`, so `operations.rs` states them again.
impl<DB: Dialect> Statements<'_, DB>
where
    Uuid: Bind<DB>,
    Option<Uuid>: Bind<DB>,
    for<'a> &'a str: Bind<DB>,
    for<'a> &'a [u8]: Bind<DB>,
    i64: Bind<DB>,
    i32: Bind<DB>,
    bool: Bind<DB>,
    DB::Time: Bind<DB>,
    SessionRow<DB>: Read<DB>,
    RefreshTokenRow<DB>: Read<DB>,
    (i32, Vec<u8>): Read<DB>,
    (i64,): Read<DB>,
    (Uuid,): Read<DB>,
    (Vec<u8>,): Read<DB>,
{
    pub async fn find_session(&mut self, id: SessionId) -> Result<Option<Session>> {
        let sql = concat!("SELECT ", columns!(), " FROM session WHERE session_id = $1");
        self.find_one(sql, id).await
    }

    /// Reads a session and locks it until the transaction ends (see
    /// [`Dialect::FIND_SESSION_FOR_UPDATE`]).
    pub async fn find_session_for_update(&mut self, id: SessionId) -> Result<Option<Session>> {
        self.find_one(DB::FIND_SESSION_FOR_UPDATE, id).await
    }

    async fn find_one(&mut self, sql: &'static str, id: SessionId) -> Result<Option<Session>> {
        session_from(
            sqlx::query_as::<DB, SessionRow<DB>>(sql)
                .bind(id.as_uuid())
                .fetch_optional(DB::on(self.0))
                .await?,
        )
    }

    /// How many live sessions the user holds at `now`.
    pub async fn count_live(&mut self, user_id: &UserId, now: DateTime<Utc>) -> Result<i64> {
        let sql = concat!(
            "SELECT count(*) FROM session WHERE user_id = $1 AND ",
            live_at!("$2")
        );
        let (count,) = sqlx::query_as::<DB, (i64,)>(sql)
            .bind(user_id.as_str())
            .bind(DB::time(now))
            .fetch_one(DB::on(self.0))
            .await?;
        Ok(count)
    }

    /// Revokes one unrevoked session; returns it, or `None` if there was nothing to revoke.
    pub async fn revoke(
        &mut self,
        id: SessionId,
        now: DateTime<Utc>,
        reason: &RevokeReason,
    ) -> Result<Option<Session>> {
        let sql = concat!(
            "UPDATE session SET revoked_at = $2, revoke_reason = $3 \
             WHERE session_id = $1 AND revoked_at IS NULL RETURNING ",
            columns!()
        );
        session_from(
            sqlx::query_as::<DB, SessionRow<DB>>(sql)
                .bind(id.as_uuid())
                .bind(DB::time(now))
                .bind(reason.as_str())
                .fetch_optional(DB::on(self.0))
                .await?,
        )
    }

    /// Revokes the user's unrevoked sessions on `device_id`; returns them.
    pub async fn revoke_device(
        &mut self,
        user_id: &UserId,
        device_id: &str,
        now: DateTime<Utc>,
        reason: &RevokeReason,
    ) -> Result<Vec<Session>> {
        let sql = concat!(
            "UPDATE session SET revoked_at = $3, revoke_reason = $4 \
             WHERE user_id = $1 AND device_id = $2 AND revoked_at IS NULL RETURNING ",
            columns!()
        );
        sessions_from(
            sqlx::query_as::<DB, SessionRow<DB>>(sql)
                .bind(user_id.as_str())
                .bind(device_id)
                .bind(DB::time(now))
                .bind(reason.as_str())
                .fetch_all(DB::on(self.0))
                .await?,
        )
    }

    /// Revokes the user's `count` oldest live sessions; returns them.
    pub async fn revoke_oldest_live(
        &mut self,
        user_id: &UserId,
        count: i64,
        now: DateTime<Utc>,
        reason: &RevokeReason,
    ) -> Result<Vec<Session>> {
        let sql = concat!(
            "UPDATE session SET revoked_at = $2, revoke_reason = $3 WHERE session_id IN ( \
               SELECT session_id FROM session WHERE user_id = $1 AND ",
            live_at!("$2"),
            " ORDER BY session_id LIMIT $4) RETURNING ",
            columns!()
        );
        sessions_from(
            sqlx::query_as::<DB, SessionRow<DB>>(sql)
                .bind(user_id.as_str())
                .bind(DB::time(now))
                .bind(reason.as_str())
                .bind(count)
                .fetch_all(DB::on(self.0))
                .await?,
        )
    }

    /// Revokes at most `limit` unrevoked sessions of the user but `except`; returns them. Called
    /// until it returns fewer than `limit`, so that no statement and no answer holds all of a
    /// user's sessions, however many there are.
    pub async fn revoke_user(
        &mut self,
        user_id: &UserId,
        except: Option<SessionId>,
        now: DateTime<Utc>,
        reason: &RevokeReason,
        limit: i64,
    ) -> Result<Vec<Session>> {
        let sql = concat!(
            "UPDATE session SET revoked_at = $3, revoke_reason = $4 WHERE session_id IN ( \
               SELECT session_id FROM session \
               WHERE user_id = $1 AND revoked_at IS NULL AND session_id IS DISTINCT FROM $2 \
               LIMIT $5) RETURNING ",
            columns!()
        );
        sessions_from(
            sqlx::query_as::<DB, SessionRow<DB>>(sql)
                .bind(user_id.as_str())
                .bind(except.map(|id| id.as_uuid()))
                .bind(DB::time(now))
                .bind(reason.as_str())
                .bind(limit)
                .fetch_all(DB::on(self.0))
                .await?,
        )
    }

    /// The ids of at most `limit` of the user's revoked sessions, lowest first.
    pub async fn revoked_session_ids(
        &mut self,
        user_id: &UserId,
        limit: i64,
    ) -> Result<Vec<SessionId>> {
        let ids = sqlx::query_scalar::<DB, Uuid>(
            "SELECT session_id FROM session WHERE user_id = $1 AND revoked_at IS NOT NULL \
             ORDER BY session_id LIMIT $2",
        )
        .bind(user_id.as_str())
        .bind(limit)
        .fetch_all(DB::on(self.0))
        .await?;
        Ok(ids.into_iter().map(SessionId::from).collect())
    }

    /// The hashes of the refresh tokens of the user's revoked sessions up to `through`.
    pub async fn refresh_token_hashes_of_revoked(
        &mut self,
        user_id: &UserId,
        through: SessionId,
    ) -> Result<Vec<TokenHash>> {
        let hashes = sqlx::query_scalar::<DB, Vec<u8>>(concat!(
            "SELECT token_hash FROM refresh_token WHERE session_id IN (",
            revoked_of_user_through!(),
            ")"
        ))
        .bind(user_id.as_str())
        .bind(through.as_uuid())
        .fetch_all(DB::on(self.0))
        .await?;
        hashes.into_iter().map(token_hash).collect()
    }

    /// Deletes the user's revoked sessions up to `through`; their refresh tokens cascade. Returns
    /// the ids of the sessions it deleted.
    pub async fn delete_revoked(
        &mut self,
        user_id: &UserId,
        through: SessionId,
    ) -> Result<Vec<SessionId>> {
        let deleted = sqlx::query_scalar::<DB, Uuid>(concat!(
            "DELETE FROM session WHERE session_id IN (",
            revoked_of_user_through!(),
            ") RETURNING session_id"
        ))
        .bind(user_id.as_str())
        .bind(through.as_uuid())
        .fetch_all(DB::on(self.0))
        .await?;
        Ok(deleted.into_iter().map(SessionId::from).collect())
    }

    /// Moves `last_seen_at` to `now` and `idle_expires_at` to `idle_expires_at`, never backwards,
    /// for a live session last seen before `stale_before`. Returns the updated row.
    pub async fn record_activity(
        &mut self,
        id: SessionId,
        now: DateTime<Utc>,
        idle_expires_at: DateTime<Utc>,
        stale_before: DateTime<Utc>,
    ) -> Result<Option<Session>> {
        let sql = concat!(
            "UPDATE session SET \
               last_seen_at = CASE WHEN last_seen_at < $2 THEN $2 ELSE last_seen_at END, \
               idle_expires_at = CASE WHEN idle_expires_at < $3 THEN $3 ELSE idle_expires_at END \
             WHERE session_id = $1 AND last_seen_at < $4 AND ",
            live_at!("$2"),
            " RETURNING ",
            columns!()
        );
        session_from(
            sqlx::query_as::<DB, SessionRow<DB>>(sql)
                .bind(id.as_uuid())
                .bind(DB::time(now))
                .bind(DB::time(idle_expires_at))
                .bind(DB::time(stale_before))
                .fetch_optional(DB::on(self.0))
                .await?,
        )
    }

    /// One page of the user's sessions, newest first, after `after`.
    pub async fn list_sessions(
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
            " FROM session WHERE user_id = $1 AND ($2 OR (",
            live_at!("$3"),
            ")) AND ($4 IS NULL OR session_id < $4) ORDER BY session_id DESC LIMIT $5"
        );
        sessions_from(
            sqlx::query_as::<DB, SessionRow<DB>>(sql)
                .bind(user_id.as_str())
                .bind(include_revoked)
                .bind(DB::time(now))
                .bind(after.map(|id| id.as_uuid()))
                .bind(limit)
                .fetch_all(DB::on(self.0))
                .await?,
        )
    }

    /// At most `limit` revoked sessions in revocation order, just after `after`.
    pub async fn revoked_since(&mut self, after: RevokedAfter, limit: i64) -> Result<Vec<Session>> {
        // `revoked_at >= $1` is what session_revoked_at_idx can seek to.
        let sql = concat!(
            "SELECT ",
            columns!(),
            " FROM session WHERE revoked_at >= $1 AND (revoked_at > $1 OR session_id > $2) \
             ORDER BY revoked_at, session_id LIMIT $3"
        );
        sessions_from(
            sqlx::query_as::<DB, SessionRow<DB>>(sql)
                .bind(DB::time(after.revoked_at))
                .bind(after.session_id.as_uuid())
                .bind(limit)
                .fetch_all(DB::on(self.0))
                .await?,
        )
    }

    pub async fn insert_refresh_token(
        &mut self,
        hash: &TokenHash,
        session_id: SessionId,
        generation: i32,
        now: DateTime<Utc>,
    ) -> Result<()> {
        sqlx::query::<DB>(
            "INSERT INTO refresh_token (token_hash, session_id, generation, issued_at) \
             VALUES ($1, $2, $3, $4)",
        )
        .bind(hash.0.as_slice())
        .bind(session_id.as_uuid())
        .bind(generation)
        .bind(DB::time(now))
        .execute(DB::on(self.0))
        .await?;
        Ok(())
    }

    pub async fn find_refresh_token(
        &mut self,
        hash: &TokenHash,
    ) -> Result<Option<StoredRefreshToken>> {
        let row = sqlx::query_as::<DB, RefreshTokenRow<DB>>(
            "SELECT session_id, generation, retired_at, successor_salt FROM refresh_token \
             WHERE token_hash = $1",
        )
        .bind(hash.0.as_slice())
        .fetch_optional(DB::on(self.0))
        .await?;
        row.map(|(session_id, generation, retired_at, salt)| {
            Ok(StoredRefreshToken {
                session_id: session_id.into(),
                generation,
                retired_at: retired_at.map(StoredTime::into_time).transpose()?,
                successor_salt: salt
                    .map(|salt| {
                        salt.try_into().map_err(|_| {
                            Error::Internal(anyhow::anyhow!(
                                "refresh_token.successor_salt is not 16 bytes"
                            ))
                        })
                    })
                    .transpose()?,
            })
        })
        .transpose()
    }

    /// The generation and hash of the session's current token.
    pub async fn current_refresh_token(
        &mut self,
        session_id: SessionId,
    ) -> Result<Option<(i32, TokenHash)>> {
        let row = sqlx::query_as::<DB, (i32, Vec<u8>)>(
            "SELECT generation, token_hash FROM refresh_token \
             WHERE session_id = $1 AND retired_at IS NULL",
        )
        .bind(session_id.as_uuid())
        .fetch_optional(DB::on(self.0))
        .await?;
        row.map(|(generation, hash)| Ok((generation, token_hash(hash)?)))
            .transpose()
    }

    /// Retires the session's current token, keeping the salt its successor is derived with.
    pub async fn retire_current_refresh_token(
        &mut self,
        session_id: SessionId,
        now: DateTime<Utc>,
        successor_salt: &SuccessorSalt,
    ) -> Result<()> {
        sqlx::query::<DB>(
            "UPDATE refresh_token SET retired_at = $2, successor_salt = $3 \
             WHERE session_id = $1 AND retired_at IS NULL",
        )
        .bind(session_id.as_uuid())
        .bind(DB::time(now))
        .bind(successor_salt.as_slice())
        .execute(DB::on(self.0))
        .await?;
        Ok(())
    }

    /// Forgets the session's tokens of generations below `generation`.
    pub async fn forget_refresh_tokens_before(
        &mut self,
        session_id: SessionId,
        generation: i32,
    ) -> Result<()> {
        sqlx::query::<DB>("DELETE FROM refresh_token WHERE session_id = $1 AND generation < $2")
            .bind(session_id.as_uuid())
            .bind(generation)
            .execute(DB::on(self.0))
            .await?;
        Ok(())
    }
}
