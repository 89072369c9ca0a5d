//! The production store's SQL: Postgres, shared by every replica. Concurrent decisions take turns
//! on locks: a per-user advisory lock for the session count, a row lock for token rotation.

use std::{str::FromStr, time::Duration};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::{
    Connection, PgConnection, PgPool, Postgres, Transaction,
    postgres::{PgConnectOptions, PgPoolOptions},
    types::Json,
};
use uuid::Uuid;

use super::{
    Activity, Backend, NewSession, PostgresStore, RevokedAfter, SWEEP_LOCK_KEY, Statements,
    StoredRefreshToken, dialect::rollback_safe, session_from, sessions_from, token_hash,
};
use crate::{
    domain::{RevokeReason, Session, SessionId, UserId},
    error::{Error, Result},
    token::TokenHash,
};

impl PostgresStore {
    /// A store over a pool to `url`. `timeout` bounds both waiting for a connection and each
    /// statement, so a stuck Postgres turns into UNAVAILABLE instead of a hung request. Connects
    /// lazily: a Postgres that is down at start is retried by each request, not fatal.
    pub fn connect_lazy(
        url: &str,
        max_connections: u32,
        timeout: Duration,
    ) -> Result<Self, sqlx::Error> {
        let options = PgConnectOptions::from_str(url)?
            .application_name("sessiond")
            .options([("statement_timeout", timeout.as_millis().to_string())]);
        // One timeout to get a connection, one for the work.
        Ok(Self::new(
            PgPoolOptions::new()
                .max_connections(max_connections)
                .acquire_timeout(timeout)
                .test_before_acquire(false)
                .before_acquire(|conn, meta| {
                    Box::pin(async move {
                        if meta.idle_for > PING_IF_IDLE_FOR {
                            conn.ping().await?;
                        }
                        Ok(true)
                    })
                })
                .connect_lazy_with(options),
        )
        .with_op_timeout(timeout * 2))
    }
}

/// A pooled connection idle for longer than this is pinged before use: it may have died with
/// Postgres (a restart, a failover) while it waited. sqlx pings every connection it takes back, so
/// a busier one was checked moments ago, and pinging it again would add a round trip to every
/// statement.
const PING_IF_IDLE_FOR: Duration = Duration::from_secs(1);

/// The unique index that keeps one unrevoked session per device.
const ONE_PER_DEVICE_INDEX: &str = "session_one_per_device_idx";

/// For each create, replaces the device's session and inserts the new one with its first refresh
/// token; all in one statement (one round trip), whatever the number of creates. `created` reads
/// `replaced` so that the replacements run first: the unique index then sees the devices' old
/// sessions revoked. (No device: `device_id = NULL` matches nothing.) The refresh tokens' foreign
/// key is checked at the statement's end, when the sessions exist. At most one create per (user,
/// device): two would both escape the replacement and meet in the unique index.
///
/// The creates' columns are named `new_*`, so that they never shadow the session's own.
/// `user_id = ANY($2)` restricts `session` on its own, so that the plan can find the rows to
/// replace by index, whatever join it picks.
///
/// Not a prepared statement: Postgres plans it for each batch, knowing its size and the table's.
/// A plan cached once serves every later batch, and one cached while the table was small (a new
/// deployment, a benchmark) scans the whole table to replace sessions, a cost that grows with
/// it until the next ANALYZE. Planning costs Postgres CPU for each statement (figures in
/// docs/performance.md), which a batch shares.
async fn insert_replacing_devices<'a>(
    conn: &mut PgConnection,
    creates: impl Iterator<Item = (&'a Session, &'a TokenHash, DateTime<Utc>)>,
    reason: &RevokeReason,
) -> Result<Vec<SessionRow>, sqlx::Error> {
    let sql = concat!(
        "WITH new AS (\
            SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], \
                                 $6::text[], $7::jsonb[], $8::timestamptz[], $9::timestamptz[], \
                                 $10::timestamptz[], $11::timestamptz[], $12::bytea[], \
                                 $13::timestamptz[]) \
              AS new(new_session_id, new_user_id, new_device_id, new_device_name, \
                     new_user_agent, new_ip_address, new_metadata, new_created_at, \
                     new_last_seen_at, new_expires_at, new_idle_expires_at, new_token_hash, \
                     new_decided_at) \
        ), replaced AS (\
            UPDATE session SET revoked_at = new_decided_at, revoke_reason = $14 FROM new \
            WHERE user_id = ANY($2) AND user_id = new_user_id AND device_id = new_device_id \
              AND revoked_at IS NULL \
            RETURNING ",
        columns!(),
        "), created AS (\
            INSERT INTO session (session_id, user_id, device_id, device_name, user_agent, \
                                 ip_address, metadata, created_at, last_seen_at, expires_at, \
                                 idle_expires_at) \
            SELECT new_session_id, new_user_id, new_device_id, new_device_name, new_user_agent, \
                   new_ip_address, new_metadata, new_created_at, new_last_seen_at, \
                   new_expires_at, new_idle_expires_at \
            FROM new WHERE (SELECT count(*) FROM replaced) >= 0 \
            RETURNING session_id \
        ), token AS (\
            INSERT INTO refresh_token (token_hash, session_id, generation, issued_at) \
            SELECT new_token_hash, session_id, 0, new_decided_at \
            FROM created JOIN new ON session_id = new_session_id \
        ) SELECT * FROM replaced"
    );
    let (sessions, rest): (Vec<_>, Vec<_>) = creates
        .map(|(session, token, now)| (session, (token.0.as_slice(), now)))
        .unzip();
    let (tokens, decided_at): (Vec<_>, Vec<_>) = rest.into_iter().unzip();
    sqlx::query_as::<_, SessionRow>(sql)
        .persistent(false)
        .bind(each(&sessions, |s| s.id.as_uuid()))
        .bind(each(&sessions, |s| s.user_id.as_str()))
        .bind(each(&sessions, |s| s.device.device_id.as_deref()))
        .bind(each(&sessions, |s| s.device.name.as_str()))
        .bind(each(&sessions, |s| s.device.user_agent.as_str()))
        .bind(each(&sessions, |s| {
            s.device.ip_address.map(|ip| ip.to_string())
        }))
        .bind(each(&sessions, |s| Json(&s.metadata)))
        .bind(each(&sessions, |s| s.created_at))
        .bind(each(&sessions, |s| s.last_seen_at))
        .bind(each(&sessions, |s| s.expires_at))
        .bind(each(&sessions, |s| s.idle_expires_at))
        .bind(tokens)
        .bind(decided_at)
        .bind(reason.as_str())
        .fetch_all(conn)
        .await
}

/// One field of each session: an array parameter.
fn each<'a, T>(sessions: &[&'a Session], field: impl Fn(&'a Session) -> T) -> Vec<T> {
    sessions.iter().map(|session| field(session)).collect()
}

#[async_trait]
impl Backend for Postgres {
    async fn begin_write(pool: &PgPool) -> Result<Transaction<'static, Postgres>> {
        Ok(pool.begin().await?)
    }

    /// One statement for the whole batch, outside any transaction: it is atomic on its own, and
    /// costs one round trip instead of four. Without the per-user lock, two creates on one device
    /// may race; the loser's insert then meets the winner's session in the unique index, and its
    /// retry, which sees that session, replaces it: the later create wins, as under the lock. Each
    /// conflict means another create committed, so retries make progress; the store's operation
    /// timeout bounds them.
    async fn create_unlimited(
        pool: &PgPool,
        batch: &[NewSession],
        reason: &RevokeReason,
    ) -> Result<Vec<Vec<Session>>> {
        let creates = batch
            .iter()
            .map(|create| (&create.session, &create.refresh_token, create.now));
        let mut conn = pool.acquire().await?;
        let rows = loop {
            match insert_replacing_devices(&mut conn, creates.clone(), reason).await {
                Err(sqlx::Error::Database(error))
                    if error.constraint() == Some(ONE_PER_DEVICE_INDEX) => {}
                rows => break rows?,
            }
        };
        // Each replaced session goes to the create on its device: there is one per device.
        let mut replaced = vec![Vec::new(); batch.len()];
        for session in sessions_from(rows)? {
            let create = batch.iter().position(|create| {
                create.session.user_id == session.user_id
                    && create.session.device.device_id == session.device.device_id
            });
            match create {
                Some(index) => replaced[index].push(session),
                None => {
                    return Err(Error::Internal(anyhow::anyhow!(
                        "a create replaced a session on another device"
                    )));
                }
            }
        }
        Ok(replaced)
    }

    /// One statement for the whole batch, in a transaction that does not wait for its commit to
    /// reach the disk: activity must not queue behind fsyncs, and losing its last moment in a
    /// crash only leaves an idle deadline a little earlier. Rows locked by another write (a
    /// revocation, a refresh, another replica's batch) are skipped, not waited for, so a batch
    /// never deadlocks with them, whatever order it locks its rows in.
    async fn record_activity(pool: &PgPool, batch: &[Activity]) -> Result<Vec<Session>> {
        let sql = concat!(
            "WITH batch AS ( \
               SELECT * FROM unnest($1::uuid[], $2::timestamptz[], $3::timestamptz[], $4::timestamptz[]) \
                 AS batch(id, seen_at, idle_until, stale_before)), \
             claimed AS ( \
               SELECT session_id FROM session JOIN batch ON session_id = batch.id \
               WHERE last_seen_at < batch.stale_before AND ",
            live_at!("batch.seen_at"),
            " FOR UPDATE OF session SKIP LOCKED) \
             UPDATE session SET last_seen_at = GREATEST(last_seen_at, batch.seen_at), \
                                idle_expires_at = GREATEST(idle_expires_at, batch.idle_until) \
             FROM batch WHERE session_id = batch.id AND session_id IN (SELECT session_id FROM claimed) \
             RETURNING ",
            columns!()
        );
        let column =
            |field: fn(&Activity) -> DateTime<Utc>| batch.iter().map(field).collect::<Vec<_>>();
        let mut tx = pool.begin().await?;
        sqlx::query("SET LOCAL synchronous_commit = off")
            .execute(&mut *tx)
            .await?;
        let written = sqlx::query_as::<_, SessionRow>(sql)
            .bind(
                batch
                    .iter()
                    .map(|activity| activity.session_id.as_uuid())
                    .collect::<Vec<_>>(),
            )
            .bind(column(|activity| activity.seen_at))
            .bind(column(|activity| activity.idle_expires_at))
            .bind(column(|activity| activity.stale_before))
            .fetch_all(&mut *tx)
            .await?;
        tx.commit().await?;
        sessions_from(written)
    }

    async fn migrate(pool: &PgPool) -> Result<()> {
        rollback_safe(sqlx::migrate!("./migrations/postgres"))
            .run(pool)
            .await
            .map_err(|error| match error {
                sqlx::migrate::MigrateError::Execute(error) => Error::from(error),
                other => Error::Internal(other.into()),
            })
    }
}

type SessionRow = super::SessionRow<DateTime<Utc>>;

#[async_trait]
impl Statements for PgConnection {
    async fn lock_user(&mut self, user_id: &UserId) -> Result<()> {
        sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
            .bind(user_id.as_str())
            .execute(self)
            .await?;
        Ok(())
    }

    async fn insert_replacing_device(
        &mut self,
        session: &Session,
        refresh_token: &TokenHash,
        now: DateTime<Utc>,
        reason: &RevokeReason,
    ) -> Result<Vec<Session>> {
        sessions_from(
            insert_replacing_devices(self, std::iter::once((session, refresh_token, now)), reason)
                .await?,
        )
    }

    async fn find_session(&mut self, id: SessionId) -> Result<Option<Session>> {
        let sql = concat!("SELECT ", columns!(), " FROM session WHERE session_id = $1");
        session_from(
            sqlx::query_as::<_, SessionRow>(sql)
                .bind(id.as_uuid())
                .fetch_optional(self)
                .await?,
        )
    }

    async fn find_session_for_update(&mut self, id: SessionId) -> Result<Option<Session>> {
        let sql = concat!(
            "SELECT ",
            columns!(),
            " FROM session WHERE session_id = $1 FOR UPDATE"
        );
        session_from(
            sqlx::query_as::<_, SessionRow>(sql)
                .bind(id.as_uuid())
                .fetch_optional(self)
                .await?,
        )
    }

    async fn count_live(&mut self, user_id: &UserId, now: DateTime<Utc>) -> Result<i64> {
        let sql = concat!(
            "SELECT count(*) FROM session WHERE user_id = $1 AND ",
            live_at!("$2")
        );
        Ok(sqlx::query_scalar(sql)
            .bind(user_id.as_str())
            .bind(now)
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
            "UPDATE session SET revoked_at = $2, revoke_reason = $3 \
             WHERE session_id = $1 AND revoked_at IS NULL RETURNING ",
            columns!()
        );
        session_from(
            sqlx::query_as::<_, SessionRow>(sql)
                .bind(id.as_uuid())
                .bind(now)
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
            "UPDATE session SET revoked_at = $3, revoke_reason = $4 \
             WHERE user_id = $1 AND device_id = $2 AND revoked_at IS NULL RETURNING ",
            columns!()
        );
        sessions_from(
            sqlx::query_as::<_, SessionRow>(sql)
                .bind(user_id.as_str())
                .bind(device_id)
                .bind(now)
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
            "UPDATE session SET revoked_at = $2, revoke_reason = $3 WHERE session_id IN ( \
               SELECT session_id FROM session WHERE user_id = $1 AND ",
            live_at!("$2"),
            " ORDER BY session_id LIMIT $4) RETURNING ",
            columns!()
        );
        sessions_from(
            sqlx::query_as::<_, SessionRow>(sql)
                .bind(user_id.as_str())
                .bind(now)
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
            "UPDATE session SET revoked_at = $3, revoke_reason = $4 \
             WHERE user_id = $1 AND revoked_at IS NULL AND session_id IS DISTINCT FROM $2 RETURNING ",
            columns!()
        );
        sessions_from(
            sqlx::query_as::<_, SessionRow>(sql)
                .bind(user_id.as_str())
                .bind(except.map(|id| id.as_uuid()))
                .bind(now)
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
            "UPDATE session SET last_seen_at = GREATEST(last_seen_at, $2), \
                                idle_expires_at = GREATEST(idle_expires_at, $3) \
             WHERE session_id = $1 AND last_seen_at < $4 AND ",
            live_at!("$2"),
            " RETURNING ",
            columns!()
        );
        session_from(
            sqlx::query_as::<_, SessionRow>(sql)
                .bind(id.as_uuid())
                .bind(now)
                .bind(idle_expires_at)
                .bind(stale_before)
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
            " FROM session WHERE user_id = $1 AND ($2 OR (",
            live_at!("$3"),
            ")) AND ($4::uuid IS NULL OR session_id < $4) ORDER BY session_id DESC LIMIT $5"
        );
        sessions_from(
            sqlx::query_as::<_, SessionRow>(sql)
                .bind(user_id.as_str())
                .bind(include_revoked)
                .bind(now)
                .bind(after.map(|id| id.as_uuid()))
                .bind(limit)
                .fetch_all(self)
                .await?,
        )
    }

    async fn revoked_since(&mut self, after: RevokedAfter, limit: i64) -> Result<Vec<Session>> {
        // `revoked_at >= $1` is what session_revoked_at_idx can seek to.
        let sql = concat!(
            "SELECT ",
            columns!(),
            " FROM session WHERE revoked_at >= $1 AND (revoked_at > $1 OR session_id > $2) \
             ORDER BY revoked_at, session_id LIMIT $3"
        );
        sessions_from(
            sqlx::query_as::<_, SessionRow>(sql)
                .bind(after.revoked_at)
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
            "INSERT INTO refresh_token (token_hash, session_id, generation, issued_at) VALUES ($1, $2, $3, $4)",
        )
        .bind(hash.0.as_slice())
        .bind(session_id.as_uuid())
        .bind(generation)
        .bind(now)
        .execute(self)
        .await?;
        Ok(())
    }

    async fn find_refresh_token(&mut self, hash: &TokenHash) -> Result<Option<StoredRefreshToken>> {
        let row: Option<(Uuid, i32, Option<DateTime<Utc>>)> = sqlx::query_as(
            "SELECT session_id, generation, retired_at FROM refresh_token WHERE token_hash = $1",
        )
        .bind(hash.0.as_slice())
        .fetch_optional(self)
        .await?;
        Ok(
            row.map(|(session_id, generation, retired_at)| StoredRefreshToken {
                session_id: session_id.into(),
                generation,
                retired_at,
            }),
        )
    }

    async fn current_refresh_token(
        &mut self,
        session_id: SessionId,
    ) -> Result<Option<(i32, TokenHash)>> {
        let row: Option<(i32, Vec<u8>)> = sqlx::query_as(
            "SELECT generation, token_hash FROM refresh_token WHERE session_id = $1 AND retired_at IS NULL",
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
            "UPDATE refresh_token SET retired_at = $2 WHERE session_id = $1 AND retired_at IS NULL",
        )
        .bind(session_id.as_uuid())
        .bind(now)
        .execute(self)
        .await?;
        Ok(())
    }

    async fn forget_refresh_tokens_before(
        &mut self,
        session_id: SessionId,
        generation: i32,
    ) -> Result<()> {
        sqlx::query("DELETE FROM refresh_token WHERE session_id = $1 AND generation < $2")
            .bind(session_id.as_uuid())
            .bind(generation)
            .execute(self)
            .await?;
        Ok(())
    }

    async fn try_lock_sweep(&mut self) -> Result<bool> {
        Ok(sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
            .bind(SWEEP_LOCK_KEY)
            .fetch_one(self)
            .await?)
    }

    async fn unlock_sweep(&mut self) -> Result<()> {
        let released: bool = sqlx::query_scalar("SELECT pg_advisory_unlock($1)")
            .bind(SWEEP_LOCK_KEY)
            .fetch_one(self)
            .await?;
        if !released {
            tracing::warn!("the sweep lock was not held at unlock");
        }
        Ok(())
    }

    async fn delete_ended_before(&mut self, cutoff: DateTime<Utc>, limit: i64) -> Result<u64> {
        // One bounded index scan per condition (session_idle_expires_at_idx,
        // session_revoked_at_idx), deduplicated: the union holds min($2, rows to delete) ids, so
        // a short batch means nothing is left. A session past its absolute end is past its idle
        // end too (idle_expires_at <= expires_at), so the idle scan finds it. ORDER BY and
        // `= ANY(ARRAY(..))` keep even the generic plan of this prepared statement on indexes
        // (with `IN (..)` or ORed conditions it seq-scans `session`).
        let sql = "DELETE FROM session WHERE session_id = ANY(ARRAY( \
                     SELECT session_id FROM (SELECT session_id FROM session WHERE idle_expires_at < $1 \
                                             ORDER BY idle_expires_at LIMIT $2) AS i \
                     UNION SELECT session_id FROM (SELECT session_id FROM session WHERE revoked_at < $1 \
                                                   ORDER BY revoked_at LIMIT $2) AS r \
                     LIMIT $2))";
        Ok(sqlx::query(sql)
            .bind(cutoff)
            .bind(limit)
            .execute(self)
            .await?
            .rows_affected())
    }
}
