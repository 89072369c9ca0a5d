//! The production store's SQL: Postgres, shared by every replica. Concurrent decisions take turns
//! on locks: a per-user advisory lock for the session count, a row lock for token rotation.

use std::{str::FromStr, time::Duration};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::{
    Connection, Executor, PgConnection, PgPool, Postgres, Transaction,
    postgres::{PgConnectOptions, PgPoolOptions},
    types::Json,
};

use super::{
    Activity, NewSession, PostgresStore, SWEEP_LOCK_KEY,
    dialect::{Dialect, connection, rollback_safe, transaction},
    sessions_from,
};
use crate::{
    domain::{RevokeReason, Session, UserId},
    error::{Error, Result},
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
async fn insert_replacing_devices(
    conn: &mut PgConnection,
    creates: &[NewSession],
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
    let sessions: Vec<&Session> = creates.iter().map(|create| &create.session).collect();
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
        .bind(
            creates
                .iter()
                .map(|create| create.refresh_token.0.as_slice())
                .collect::<Vec<_>>(),
        )
        .bind(creates.iter().map(|create| create.now).collect::<Vec<_>>())
        .bind(reason.as_str())
        .fetch_all(conn)
        .await
}

/// One field of each session: an array parameter.
fn each<'a, T>(sessions: &[&'a Session], field: impl Fn(&'a Session) -> T) -> Vec<T> {
    sessions.iter().map(|session| field(session)).collect()
}

#[async_trait]
impl Dialect for Postgres {
    type Time = DateTime<Utc>;

    fn time(time: DateTime<Utc>) -> DateTime<Utc> {
        time
    }

    fn on(conn: &mut PgConnection) -> impl Executor<'_, Database = Postgres> {
        conn
    }

    fn rows_affected(result: &sqlx::postgres::PgQueryResult) -> u64 {
        result.rows_affected()
    }

    const FIND_SESSION_FOR_UPDATE: &'static str = concat!(
        "SELECT ",
        columns_in_effect!(),
        " FROM ",
        in_effect!(),
        " WHERE s.session_id = $1 FOR UPDATE OF s"
    );

    async fn begin_write(conn: &mut PgConnection) -> Result<Transaction<'_, Postgres>> {
        Ok(conn.begin().await?)
    }

    async fn lock_user(conn: &mut PgConnection, user_id: &UserId) -> Result<()> {
        sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
            .bind(user_id.as_str())
            .execute(conn)
            .await?;
        Ok(())
    }

    async fn insert_replacing_devices(
        conn: &mut PgConnection,
        creates: &[NewSession],
        reason: &RevokeReason,
    ) -> Result<Vec<Vec<Session>>> {
        let replaced = sessions_from(insert_replacing_devices(conn, creates, reason).await?)?;
        by_create(creates, replaced)
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
        let mut conn = connection(pool).await?;
        let rows = loop {
            match insert_replacing_devices(&mut conn, batch, reason).await {
                Err(sqlx::Error::Database(error))
                    if error.constraint() == Some(ONE_PER_DEVICE_INDEX) => {}
                rows => break rows?,
            }
        };
        by_create(batch, sessions_from(rows)?)
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
        let mut tx = transaction(pool).await?;
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

    async fn try_lock_sweep(conn: &mut PgConnection) -> Result<bool> {
        Ok(sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
            .bind(SWEEP_LOCK_KEY)
            .fetch_one(conn)
            .await?)
    }

    async fn delete_ended_before(
        conn: &mut PgConnection,
        cutoff: DateTime<Utc>,
        limit: i64,
    ) -> Result<u64> {
        // One bounded index scan per condition (session_idle_expires_at_idx, session_revoked_at_idx),
        // deduplicated: the union holds min($2, rows to delete) ids, so a short batch means nothing
        // is left. A session past its absolute end is past its idle end too (idle_expires_at <=
        // expires_at), so the idle scan finds it. ORDER BY and `= ANY(ARRAY(..))` keep even the
        // generic plan of this prepared statement on indexes (with `IN (..)` or ORed conditions it
        // seq-scans `session`).
        let sql = "DELETE FROM session WHERE session_id = ANY(ARRAY( \
             SELECT session_id FROM (SELECT session_id FROM session WHERE idle_expires_at < $1 \
                                     ORDER BY idle_expires_at LIMIT $2) AS i \
             UNION SELECT session_id FROM (SELECT session_id FROM session WHERE revoked_at < $1 \
                                           ORDER BY revoked_at LIMIT $2) AS r \
             LIMIT $2))";
        Ok(sqlx::query(sql)
            .bind(cutoff)
            .bind(limit)
            .execute(conn)
            .await?
            .rows_affected())
    }

    async fn unlock_sweep(conn: &mut PgConnection) -> Result<()> {
        let released: bool = sqlx::query_scalar("SELECT pg_advisory_unlock($1)")
            .bind(SWEEP_LOCK_KEY)
            .fetch_one(conn)
            .await?;
        if !released {
            tracing::warn!("the sweep lock was not held at unlock");
        }
        Ok(())
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

/// `replaced`, split by the create that replaced each: the one on its device (there is one per
/// device).
fn by_create(creates: &[NewSession], replaced: Vec<Session>) -> Result<Vec<Vec<Session>>> {
    let mut by_create = vec![Vec::new(); creates.len()];
    for session in replaced {
        let create = creates.iter().position(|create| {
            create.session.user_id == session.user_id
                && create.session.device.device_id == session.device.device_id
        });
        match create {
            Some(index) => by_create[index].push(session),
            None => {
                return Err(Error::Internal(anyhow::anyhow!(
                    "a create replaced a session on another device"
                )));
            }
        }
    }
    Ok(by_create)
}

type SessionRow = super::SessionRow<DateTime<Utc>>;
