//! The statements both databases share, each written once. They use `$N` placeholders, which
//! SQLite reads as well as Postgres, and bind times through [`Dialect::time`].

use chrono::{DateTime, Utc};
use sqlx::{Database, Encode, FromRow, QueryBuilder, Type};
use uuid::Uuid;

use super::{
    LogBounds, RevocationRow, RevokedAfter, StoredRefreshToken, StoredTime, SuccessorSalt,
    dialect::Dialect, session_from, sessions_from, token_hash,
};
use crate::{
    domain::{
        Cursor, Metadata, Revocation, RevokeReason, Session, SessionFilter, SessionId, UserId,
    },
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

/// What [`Statements::filter_page`] reads of a session.
#[derive(FromRow)]
pub(super) struct FilteredRow {
    pub session_id: Uuid,
    pub ip_address: Option<String>,
    pub metadata: sqlx::types::Json<Metadata>,
}

/// What [`Statements::sign_out_tally`] reads.
#[derive(FromRow)]
pub(super) struct SignOutTally<T> {
    live: i64,
    newest: Option<T>,
}

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
    Option<DB::Time>: Bind<DB>,
    (DB::Time,): Read<DB>,
    (String,): Read<DB>,
    (Option<i64>,): Read<DB>,
    (DB::Time, String): Read<DB>,
    (i64, Option<i64>, Option<i64>): Read<DB>,
    FilteredRow: Read<DB>,
    String: Bind<DB>,
    super::RevocationRow<DB::Time>: Read<DB>,
    SignOutTally<DB::Time>: Read<DB>,
{
    /// Reads a session as in effect (revoked if its user was signed out after it started).
    pub async fn find_session(&mut self, id: SessionId) -> Result<Option<Session>> {
        let sql = concat!(
            "SELECT ",
            columns_in_effect!(),
            " FROM ",
            in_effect!(),
            " WHERE s.session_id = $1"
        );
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

    /// Forgets the user in the revocation log, as far as refusing their tokens allows: their
    /// sessions' events keep the session ids (which refuse those tokens until they expire) but no
    /// longer name the user, and their not-before instant goes (every session it revoked is
    /// revoked in its row by then). A sign-out-everywhere event names the user until it is swept:
    /// without the name it would refuse nothing.
    pub async fn forget_user_in_revocation_log(&mut self, user_id: &UserId) -> Result<()> {
        sqlx::query::<DB>(
            "UPDATE revocation_event SET user_id = NULL WHERE user_id = $1 AND kind = 1",
        )
        .bind(user_id.as_str())
        .execute(DB::on(self.0))
        .await?;
        sqlx::query::<DB>("DELETE FROM user_not_before WHERE user_id = $1")
            .bind(user_id.as_str())
            .execute(DB::on(self.0))
            .await?;
        Ok(())
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
            columns_in_effect!(),
            " FROM ",
            in_effect!(),
            " WHERE s.user_id = $1 AND ($2 OR (s.revoked_at IS NULL \
               AND (u.not_before IS NULL OR s.created_at >= u.not_before) \
               AND s.expires_at > $3 AND s.idle_expires_at > $3)) \
             AND ($4 IS NULL OR s.session_id < $4) ORDER BY s.session_id DESC LIMIT $5"
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

    /// One page of the live sessions the store's part of `filter` matches (all but the network and
    /// the metadata, which the caller judges from what this returns), in id order after `after`:
    /// their ids, addresses and metadata.
    pub async fn filter_page(
        &mut self,
        filter: &SessionFilter,
        now: DateTime<Utc>,
        after: Option<SessionId>,
        limit: i64,
    ) -> Result<Vec<FilteredRow>> {
        let mut query = QueryBuilder::<DB>::new(concat!(
            "SELECT s.session_id, s.ip_address, s.metadata FROM ",
            in_effect!(),
            " WHERE s.revoked_at IS NULL AND (u.not_before IS NULL OR s.created_at >= u.not_before)"
        ));
        query.push(" AND s.expires_at > ").push_bind(DB::time(now));
        query
            .push(" AND s.idle_expires_at > ")
            .push_bind(DB::time(now));
        if let Some(user_id) = &filter.user_id {
            query
                .push(" AND s.user_id = ")
                .push_bind(user_id.as_str().to_owned());
        }
        if let Some(device_id) = &filter.device_id {
            query
                .push(" AND s.device_id = ")
                .push_bind(device_id.clone());
        }
        if let Some(before) = filter.created_before {
            query
                .push(" AND s.created_at < ")
                .push_bind(DB::time(before));
        }
        if let Some(after) = filter.created_after {
            query
                .push(" AND s.created_at > ")
                .push_bind(DB::time(after));
        }
        if let Some(before) = filter.last_seen_before {
            query
                .push(" AND s.last_seen_at < ")
                .push_bind(DB::time(before));
        }
        if let Some(after) = after {
            query
                .push(" AND s.session_id > ")
                .push_bind(after.as_uuid());
        }
        query.push(" ORDER BY s.session_id LIMIT ").push_bind(limit);
        let rows = query
            .build_query_as::<FilteredRow>()
            .fetch_all(DB::on(self.0))
            .await?;
        Ok(rows)
    }

    /// Revokes those of `ids` not yet revoked; returns how many.
    pub async fn revoke_ids(
        &mut self,
        ids: &[SessionId],
        now: DateTime<Utc>,
        reason: &RevokeReason,
    ) -> Result<u64> {
        if ids.is_empty() {
            return Ok(0);
        }
        let mut query = QueryBuilder::<DB>::new("UPDATE session SET revoked_at = ");
        query.push_bind(DB::time(now));
        query
            .push(", revoke_reason = ")
            .push_bind(reason.as_str().to_owned());
        query.push(" WHERE revoked_at IS NULL AND session_id IN (");
        let mut listed = query.separated(", ");
        for id in ids {
            listed.push_bind(id.as_uuid());
        }
        query.push(")");
        let revoked = query.build().execute(DB::on(self.0)).await?;
        Ok(DB::rows_affected(&revoked))
    }

    /// The user's not-before instant, if they were ever signed out everywhere (and it is kept).
    pub async fn not_before(&mut self, user_id: &UserId) -> Result<Option<DateTime<Utc>>> {
        sqlx::query_scalar::<DB, DB::Time>(
            "SELECT not_before FROM user_not_before WHERE user_id = $1",
        )
        .bind(user_id.as_str())
        .fetch_optional(DB::on(self.0))
        .await?
        .map(StoredTime::into_time)
        .transpose()
    }

    /// Of the user's sessions: how many are live at `now` and not revoked by `previous` (the
    /// not-before instant in force), and when the newest started.
    pub async fn sign_out_tally(
        &mut self,
        user_id: &UserId,
        now: DateTime<Utc>,
        previous: Option<DateTime<Utc>>,
    ) -> Result<(i64, Option<DateTime<Utc>>)> {
        let sql = concat!(
            "SELECT COALESCE(SUM(CASE WHEN ",
            live_at!("$2"),
            " AND ($3 IS NULL OR created_at >= $3) THEN 1 ELSE 0 END), 0) AS live, \
             MAX(created_at) AS newest FROM session WHERE user_id = $1"
        );
        let tally = sqlx::query_as::<DB, SignOutTally<DB::Time>>(sql)
            .bind(user_id.as_str())
            .bind(DB::time(now))
            .bind(previous.map(DB::time))
            .fetch_one(DB::on(self.0))
            .await?;
        Ok((
            tally.live,
            tally.newest.map(StoredTime::into_time).transpose()?,
        ))
    }

    /// Records the user's not-before instant, replacing the previous one, as not yet marked.
    pub async fn record_not_before(
        &mut self,
        user_id: &UserId,
        not_before: DateTime<Utc>,
        reason: &RevokeReason,
        now: DateTime<Utc>,
    ) -> Result<()> {
        sqlx::query::<DB>(
            "INSERT INTO user_not_before (user_id, not_before, reason, recorded_at, marked) \
             VALUES ($1, $2, $3, $4, false) \
             ON CONFLICT (user_id) DO UPDATE SET not_before = excluded.not_before, \
               reason = excluded.reason, recorded_at = excluded.recorded_at, marked = false",
        )
        .bind(user_id.as_str())
        .bind(DB::time(not_before))
        .bind(reason.as_str())
        .bind(DB::time(now))
        .execute(DB::on(self.0))
        .await?;
        Ok(())
    }

    /// The user's sign-out still to be marked: its not-before instant and reason.
    pub async fn unmarked_sign_out(
        &mut self,
        user_id: &UserId,
    ) -> Result<Option<(DateTime<Utc>, String)>> {
        sqlx::query_as::<DB, (DB::Time, String)>(
            "SELECT not_before, reason FROM user_not_before WHERE user_id = $1 AND NOT marked",
        )
        .bind(user_id.as_str())
        .fetch_optional(DB::on(self.0))
        .await?
        .map(|(not_before, reason)| Ok((not_before.into_time()?, reason)))
        .transpose()
    }

    /// Marks at most `limit` unrevoked sessions of the user created before `not_before` as
    /// revoked by it (`revoked_at = not_before`, which its one logged event covers); returns how
    /// many.
    pub async fn mark_revoked_before(
        &mut self,
        user_id: &UserId,
        not_before: DateTime<Utc>,
        reason: &str,
        limit: i64,
    ) -> Result<u64> {
        let marked = sqlx::query::<DB>(
            "UPDATE session SET revoked_at = $2, revoke_reason = $3 WHERE session_id IN ( \
               SELECT session_id FROM session \
               WHERE user_id = $1 AND revoked_at IS NULL AND created_at < $2 LIMIT $4)",
        )
        .bind(user_id.as_str())
        .bind(DB::time(not_before))
        .bind(reason)
        .bind(limit)
        .execute(DB::on(self.0))
        .await?;
        Ok(DB::rows_affected(&marked))
    }

    /// Records that every session the sign-out at `not_before` revoked is marked (unless a newer
    /// sign-out replaced it meanwhile).
    pub async fn sign_out_marked(
        &mut self,
        user_id: &UserId,
        not_before: DateTime<Utc>,
    ) -> Result<()> {
        sqlx::query::<DB>(
            "UPDATE user_not_before SET marked = true WHERE user_id = $1 AND not_before = $2",
        )
        .bind(user_id.as_str())
        .bind(DB::time(not_before))
        .execute(DB::on(self.0))
        .await?;
        Ok(())
    }

    /// At most `limit` users whose sign-out is not marked yet.
    pub async fn unmarked_sign_outs(&mut self, limit: i64) -> Result<Vec<UserId>> {
        let users = sqlx::query_scalar::<DB, String>(
            "SELECT user_id FROM user_not_before WHERE NOT marked LIMIT $1",
        )
        .bind(limit)
        .fetch_all(DB::on(self.0))
        .await?;
        users
            .into_iter()
            .map(|user| {
                UserId::try_from(user).map_err(|e| {
                    Error::Internal(anyhow::anyhow!(
                        "user_not_before.user_id holds a bad id: {e}"
                    ))
                })
            })
            .collect()
    }

    /// Logs a removed signing key, once (the first replica to see it removed wins).
    pub async fn record_removed_signing_key(
        &mut self,
        key_id: &str,
        now: DateTime<Utc>,
    ) -> Result<()> {
        sqlx::query::<DB>(
            "INSERT INTO removed_signing_key (key_id, removed_at) VALUES ($1, $2) \
             ON CONFLICT (key_id) DO NOTHING",
        )
        .bind(key_id)
        .bind(DB::time(now))
        .execute(DB::on(self.0))
        .await?;
        Ok(())
    }

    /// At most `limit` revocations after `after`, in cursor order.
    pub async fn revocations_after(
        &mut self,
        after: Cursor,
        limit: i64,
    ) -> Result<Vec<Revocation>> {
        let rows = sqlx::query_as::<DB, RevocationRow<DB::Time>>(
            "SELECT cursor, CAST(kind AS integer) AS kind, session_id, user_id, not_before, \
               revoked_at, reason, key_id \
             FROM revocation_event WHERE cursor > $1 ORDER BY cursor LIMIT $2",
        )
        .bind(after.0)
        .bind(limit)
        .fetch_all(DB::on(self.0))
        .await?;
        rows.into_iter().map(Revocation::try_from).collect()
    }

    /// Where the log stands (see [`LogBounds`]).
    pub async fn revocation_log(&mut self, since: DateTime<Utc>) -> Result<LogBounds> {
        let (swept_through, newest, first_since) =
            sqlx::query_as::<DB, (i64, Option<i64>, Option<i64>)>(
                "SELECT swept_through, \
               (SELECT MAX(cursor) FROM revocation_event), \
               (SELECT MIN(cursor) FROM revocation_event WHERE revoked_at >= $1) \
             FROM revocation_log",
            )
            .bind(DB::time(since))
            .fetch_one(DB::on(self.0))
            .await?;
        let newest = newest.unwrap_or(swept_through).max(swept_through);
        Ok(LogBounds {
            swept_through: Cursor(swept_through),
            newest: Cursor(newest),
            before_since: Cursor(first_since.map_or(newest, |first| first - 1)),
        })
    }

    /// The newest cursor of an event recorded before `before`.
    pub async fn newest_revocation_before(&mut self, before: DateTime<Utc>) -> Result<Option<i64>> {
        Ok(sqlx::query_scalar::<DB, Option<i64>>(
            "SELECT MAX(cursor) FROM revocation_event WHERE revoked_at < $1",
        )
        .bind(DB::time(before))
        .fetch_one(DB::on(self.0))
        .await?)
    }

    /// Deletes the events up to `through`, and records that they are gone.
    pub async fn delete_revocations_through(&mut self, through: i64) -> Result<u64> {
        let deleted = sqlx::query::<DB>("DELETE FROM revocation_event WHERE cursor <= $1")
            .bind(through)
            .execute(DB::on(self.0))
            .await?;
        sqlx::query::<DB>("UPDATE revocation_log SET swept_through = $1 WHERE swept_through < $1")
            .bind(through)
            .execute(DB::on(self.0))
            .await?;
        Ok(DB::rows_affected(&deleted))
    }

    /// Deletes the removed signing keys recorded before `before`, and the marked sign-outs
    /// recorded before `sign_outs_before`.
    pub async fn delete_old_revocation_state(
        &mut self,
        before: DateTime<Utc>,
        sign_outs_before: DateTime<Utc>,
    ) -> Result<()> {
        sqlx::query::<DB>("DELETE FROM removed_signing_key WHERE removed_at < $1")
            .bind(DB::time(before))
            .execute(DB::on(self.0))
            .await?;
        sqlx::query::<DB>("DELETE FROM user_not_before WHERE marked AND recorded_at < $1")
            .bind(DB::time(sign_outs_before))
            .execute(DB::on(self.0))
            .await?;
        Ok(())
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
