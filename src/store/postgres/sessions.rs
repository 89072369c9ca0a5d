//! The `session` table.

use std::net::IpAddr;

use anyhow::Context;
use chrono::{DateTime, Utc};
use sqlx::{PgConnection, types::Json};
use uuid::Uuid;

use crate::{
    domain::{Device, Metadata, RevokeReason, Session, SessionId, UserId},
    error::Error,
};

/// Every column `SessionRow` reads. A macro, so that queries stay `&'static str` literals.
macro_rules! columns {
    () => {
        "session_id, user_id, device_id, device_name, user_agent, ip_address, metadata, \
         created_at, last_seen_at, expires_at, idle_expires_at, revoked_at, revoke_reason"
    };
}

/// "Live" in SQL: neither revoked nor past either expiry at `$now`. Keep in step with `Session::state`.
macro_rules! live_at {
    ($now:literal) => {
        concat!(
            "revoked_at IS NULL AND expires_at > ",
            $now,
            " AND idle_expires_at > ",
            $now
        )
    };
}

#[derive(sqlx::FromRow)]
struct SessionRow {
    session_id: Uuid,
    user_id: String,
    device_id: Option<String>,
    device_name: String,
    user_agent: String,
    ip_address: Option<String>,
    metadata: Json<Metadata>,
    created_at: DateTime<Utc>,
    last_seen_at: DateTime<Utc>,
    expires_at: DateTime<Utc>,
    idle_expires_at: DateTime<Utc>,
    revoked_at: Option<DateTime<Utc>>,
    revoke_reason: Option<String>,
}

impl TryFrom<SessionRow> for Session {
    type Error = Error;

    fn try_from(row: SessionRow) -> Result<Self, Self::Error> {
        let ip_address = row
            .ip_address
            .map(|ip| ip.parse::<IpAddr>())
            .transpose()
            .context("session.ip_address holds a bad address")
            .map_err(Error::Internal)?;
        Ok(Self {
            id: row.session_id.into(),
            user_id: UserId::try_from(row.user_id).map_err(|e| {
                Error::Internal(anyhow::anyhow!("session.user_id holds a bad id: {e}"))
            })?,
            device: Device {
                device_id: row.device_id,
                name: row.device_name,
                user_agent: row.user_agent,
                ip_address,
            },
            metadata: row.metadata.0,
            created_at: row.created_at,
            last_seen_at: row.last_seen_at,
            expires_at: row.expires_at,
            idle_expires_at: row.idle_expires_at,
            revoked_at: row.revoked_at,
            revoke_reason: row.revoke_reason,
        })
    }
}

fn into_sessions(rows: Vec<SessionRow>) -> Result<Vec<Session>, Error> {
    rows.into_iter().map(Session::try_from).collect()
}

/// Inserts a new session.
pub async fn insert(conn: &mut PgConnection, session: &Session) -> Result<(), Error> {
    sqlx::query(
        r#"
        INSERT INTO session (session_id, user_id, device_id, device_name, user_agent, ip_address, metadata,
                             created_at, last_seen_at, expires_at, idle_expires_at)
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
        "#,
    )
    .bind(session.id.as_uuid())
    .bind(session.user_id.as_str())
    .bind(session.device.device_id.as_deref())
    .bind(&session.device.name)
    .bind(&session.device.user_agent)
    .bind(session.device.ip_address.map(|ip| ip.to_string()))
    .bind(Json(&session.metadata))
    .bind(session.created_at)
    .bind(session.last_seen_at)
    .bind(session.expires_at)
    .bind(session.idle_expires_at)
    .execute(conn)
    .await?;
    Ok(())
}

/// Reads a session.
pub async fn find(conn: &mut PgConnection, id: SessionId) -> Result<Option<Session>, Error> {
    let sql = concat!("SELECT ", columns!(), " FROM session WHERE session_id = $1");
    let row: Option<SessionRow> = sqlx::query_as(sql)
        .bind(id.as_uuid())
        .fetch_optional(conn)
        .await?;
    row.map(Session::try_from).transpose()
}

/// Reads a session and locks it until the transaction ends, so concurrent rotations of its
/// refresh token take turns.
pub async fn find_for_update(
    conn: &mut PgConnection,
    id: SessionId,
) -> Result<Option<Session>, Error> {
    let sql = concat!(
        "SELECT ",
        columns!(),
        " FROM session WHERE session_id = $1 FOR UPDATE"
    );
    let row: Option<SessionRow> = sqlx::query_as(sql)
        .bind(id.as_uuid())
        .fetch_optional(conn)
        .await?;
    row.map(Session::try_from).transpose()
}

/// Serialises every session-count decision for one user until the transaction ends.
pub async fn lock_user(conn: &mut PgConnection, user_id: &UserId) -> Result<(), Error> {
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
        .bind(user_id.as_str())
        .execute(conn)
        .await?;
    Ok(())
}

/// Revokes one session unless it already is; returns it as revoked, or `None` if there was
/// nothing to revoke.
pub async fn revoke(
    conn: &mut PgConnection,
    id: SessionId,
    now: DateTime<Utc>,
    reason: &RevokeReason,
) -> Result<Option<Session>, Error> {
    let sql = concat!(
        "UPDATE session SET revoked_at = $2, revoke_reason = $3 \
         WHERE session_id = $1 AND revoked_at IS NULL RETURNING ",
        columns!()
    );
    let row: Option<SessionRow> = sqlx::query_as(sql)
        .bind(id.as_uuid())
        .bind(now)
        .bind(reason.as_str())
        .fetch_optional(conn)
        .await?;
    row.map(Session::try_from).transpose()
}

/// Revokes the user's unrevoked sessions on `device_id`; returns them.
pub async fn revoke_device(
    conn: &mut PgConnection,
    user_id: &UserId,
    device_id: &str,
    now: DateTime<Utc>,
    reason: &RevokeReason,
) -> Result<Vec<Session>, Error> {
    let sql = concat!(
        "UPDATE session SET revoked_at = $3, revoke_reason = $4 \
         WHERE user_id = $1 AND device_id = $2 AND revoked_at IS NULL RETURNING ",
        columns!()
    );
    let rows: Vec<SessionRow> = sqlx::query_as(sql)
        .bind(user_id.as_str())
        .bind(device_id)
        .bind(now)
        .bind(reason.as_str())
        .fetch_all(conn)
        .await?;
    into_sessions(rows)
}

/// Revokes every unrevoked session of the user but `except`; returns them.
pub async fn revoke_user(
    conn: &mut PgConnection,
    user_id: &UserId,
    except: Option<SessionId>,
    now: DateTime<Utc>,
    reason: &RevokeReason,
) -> Result<Vec<Session>, Error> {
    let sql = concat!(
        "UPDATE session SET revoked_at = $3, revoke_reason = $4 \
         WHERE user_id = $1 AND revoked_at IS NULL AND session_id IS DISTINCT FROM $2 RETURNING ",
        columns!()
    );
    let rows: Vec<SessionRow> = sqlx::query_as(sql)
        .bind(user_id.as_str())
        .bind(except.map(|id| id.as_uuid()))
        .bind(now)
        .bind(reason.as_str())
        .fetch_all(conn)
        .await?;
    into_sessions(rows)
}

/// Revokes the user's `count` oldest live sessions; returns them.
pub async fn revoke_oldest_live(
    conn: &mut PgConnection,
    user_id: &UserId,
    count: i64,
    now: DateTime<Utc>,
    reason: &RevokeReason,
) -> Result<Vec<Session>, Error> {
    let sql = concat!(
        "UPDATE session SET revoked_at = $2, revoke_reason = $3 WHERE session_id IN ( \
           SELECT session_id FROM session WHERE user_id = $1 AND ",
        live_at!("$2"),
        " ORDER BY session_id LIMIT $4) RETURNING ",
        columns!()
    );
    let rows: Vec<SessionRow> = sqlx::query_as(sql)
        .bind(user_id.as_str())
        .bind(now)
        .bind(reason.as_str())
        .bind(count)
        .fetch_all(conn)
        .await?;
    into_sessions(rows)
}

/// How many live sessions the user holds at `now`.
pub async fn count_live(
    conn: &mut PgConnection,
    user_id: &UserId,
    now: DateTime<Utc>,
) -> Result<i64, Error> {
    let sql = concat!(
        "SELECT count(*) FROM session WHERE user_id = $1 AND ",
        live_at!("$2")
    );
    Ok(sqlx::query_scalar(sql)
        .bind(user_id.as_str())
        .bind(now)
        .fetch_one(conn)
        .await?)
}

/// Records activity at `now`: `last_seen_at` moves to `now` and `idle_expires_at` to
/// `idle_expires_at`, never backwards. Only touches a live row whose `last_seen_at` is before
/// `stale_before`, which coalesces many validations into one write. Returns the updated row.
pub async fn record_activity(
    conn: &mut PgConnection,
    id: SessionId,
    now: DateTime<Utc>,
    idle_expires_at: DateTime<Utc>,
    stale_before: DateTime<Utc>,
) -> Result<Option<Session>, Error> {
    let sql = concat!(
        "UPDATE session SET last_seen_at = GREATEST(last_seen_at, $2), \
                            idle_expires_at = GREATEST(idle_expires_at, $3) \
         WHERE session_id = $1 AND last_seen_at < $4 AND ",
        live_at!("$2"),
        " RETURNING ",
        columns!()
    );
    let row: Option<SessionRow> = sqlx::query_as(sql)
        .bind(id.as_uuid())
        .bind(now)
        .bind(idle_expires_at)
        .bind(stale_before)
        .fetch_optional(conn)
        .await?;
    row.map(Session::try_from).transpose()
}

/// One page of the user's sessions, newest first, starting after `after`.
pub async fn list_for_user(
    conn: &mut PgConnection,
    user_id: &UserId,
    include_revoked: bool,
    now: DateTime<Utc>,
    after: Option<SessionId>,
    limit: i64,
) -> Result<Vec<Session>, Error> {
    let sql = concat!(
        "SELECT ",
        columns!(),
        " FROM session WHERE user_id = $1 AND ($2 OR (",
        live_at!("$3"),
        ")) AND ($4::uuid IS NULL OR session_id < $4) ORDER BY session_id DESC LIMIT $5"
    );
    let rows: Vec<SessionRow> = sqlx::query_as(sql)
        .bind(user_id.as_str())
        .bind(include_revoked)
        .bind(now)
        .bind(after.map(|id| id.as_uuid()))
        .bind(limit)
        .fetch_all(conn)
        .await?;
    into_sessions(rows)
}
