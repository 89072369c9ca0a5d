//! The `refresh_token` table: hashes of every session's current token and its recent ancestors.

use chrono::{DateTime, Utc};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::{domain::SessionId, error::Error, token::TokenHash};

/// A stored refresh token.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct StoredRefreshToken {
    #[sqlx(try_from = "Uuid")]
    pub session_id: SessionId,
    /// 0 for the token CreateSession issued, +1 per rotation.
    pub generation: i32,
    /// `None` while it is the session's current token.
    pub retired_at: Option<DateTime<Utc>>,
}

/// Stores the hash of a session's new current token.
pub async fn insert(
    conn: &mut PgConnection,
    hash: &TokenHash,
    session_id: SessionId,
    generation: i32,
    now: DateTime<Utc>,
) -> Result<(), Error> {
    sqlx::query("INSERT INTO refresh_token (token_hash, session_id, generation, issued_at) VALUES ($1, $2, $3, $4)")
        .bind(hash.0.as_slice())
        .bind(session_id.as_uuid())
        .bind(generation)
        .bind(now)
        .execute(conn)
        .await?;
    Ok(())
}

/// Looks a token up by its hash.
pub async fn find(
    conn: &mut PgConnection,
    hash: &TokenHash,
) -> Result<Option<StoredRefreshToken>, Error> {
    Ok(sqlx::query_as(
        "SELECT session_id, generation, retired_at FROM refresh_token WHERE token_hash = $1",
    )
    .bind(hash.0.as_slice())
    .fetch_optional(conn)
    .await?)
}

/// The generation and hash of the session's current token.
pub async fn current(
    conn: &mut PgConnection,
    session_id: SessionId,
) -> Result<Option<(i32, TokenHash)>, Error> {
    let row: Option<(i32, Vec<u8>)> =
        sqlx::query_as("SELECT generation, token_hash FROM refresh_token WHERE session_id = $1 AND retired_at IS NULL")
            .bind(session_id.as_uuid())
            .fetch_optional(conn)
            .await?;
    row.map(|(generation, hash)| {
        let hash: [u8; 32] = hash.try_into().map_err(|_| {
            Error::Internal(anyhow::anyhow!("refresh_token.token_hash is not 32 bytes"))
        })?;
        Ok((generation, TokenHash(hash)))
    })
    .transpose()
}

/// Retires the session's current token.
pub async fn retire_current(
    conn: &mut PgConnection,
    session_id: SessionId,
    now: DateTime<Utc>,
) -> Result<(), Error> {
    sqlx::query(
        "UPDATE refresh_token SET retired_at = $2 WHERE session_id = $1 AND retired_at IS NULL",
    )
    .bind(session_id.as_uuid())
    .bind(now)
    .execute(conn)
    .await?;
    Ok(())
}

/// Forgets the session's tokens older than `generation`.
pub async fn forget_before(
    conn: &mut PgConnection,
    session_id: SessionId,
    generation: i32,
) -> Result<(), Error> {
    sqlx::query("DELETE FROM refresh_token WHERE session_id = $1 AND generation < $2")
        .bind(session_id.as_uuid())
        .bind(generation)
        .execute(conn)
        .await?;
    Ok(())
}
