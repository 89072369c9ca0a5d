//! What each database provides: the statements an operation is made of ([`Statements`], on a
//! connection) and what differs beyond them ([`Backend`]: the write transaction, the batched
//! create and activity writes, migrations). `sql_store.rs` writes each operation once on top.

use std::{sync::Arc, time::Duration};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::{Database, Pool, Transaction};

use super::{Activity, NewSession, RevokedAfter, StoredRefreshToken};
use crate::{
    domain::{RevokeReason, Session, SessionId, UserId},
    error::{Error, Result},
    token::TokenHash,
};

/// `migrator`, made to start on a database that a newer release has migrated further, as a
/// rollback does: every migration keeps the previous release working (README, Operations), so the
/// ones this build does not know are safe to leave alone.
pub(super) fn rollback_safe(mut migrator: sqlx::migrate::Migrator) -> sqlx::migrate::Migrator {
    migrator.set_ignore_missing(true);
    migrator
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

/// The statements an operation is made of, run on one connection (usually inside a transaction).
#[async_trait]
pub trait Statements: Send {
    /// Serialises every session-count decision for one user until the transaction ends.
    async fn lock_user(&mut self, user_id: &UserId) -> Result<()>;
    /// Revokes the user's unrevoked session on the new session's device (when it names one), then
    /// inserts the session and its first refresh token; returns the revoked sessions.
    async fn insert_replacing_device(
        &mut self,
        session: &Session,
        refresh_token: &TokenHash,
        now: DateTime<Utc>,
        reason: &RevokeReason,
    ) -> Result<Vec<Session>>;
    async fn find_session(&mut self, id: SessionId) -> Result<Option<Session>>;
    /// Reads a session and locks it until the transaction ends, so concurrent rotations of its
    /// refresh token take turns.
    async fn find_session_for_update(&mut self, id: SessionId) -> Result<Option<Session>>;
    /// How many live sessions the user holds at `now`.
    async fn count_live(&mut self, user_id: &UserId, now: DateTime<Utc>) -> Result<i64>;
    /// Revokes one unrevoked session; returns it, or `None` if there was nothing to revoke.
    async fn revoke(
        &mut self,
        id: SessionId,
        now: DateTime<Utc>,
        reason: &RevokeReason,
    ) -> Result<Option<Session>>;
    /// Revokes the user's unrevoked sessions on `device_id`; returns them.
    async fn revoke_device(
        &mut self,
        user_id: &UserId,
        device_id: &str,
        now: DateTime<Utc>,
        reason: &RevokeReason,
    ) -> Result<Vec<Session>>;
    /// Revokes the user's `count` oldest live sessions; returns them.
    async fn revoke_oldest_live(
        &mut self,
        user_id: &UserId,
        count: i64,
        now: DateTime<Utc>,
        reason: &RevokeReason,
    ) -> Result<Vec<Session>>;
    /// Revokes every unrevoked session of the user but `except`; returns them.
    async fn revoke_user(
        &mut self,
        user_id: &UserId,
        except: Option<SessionId>,
        now: DateTime<Utc>,
        reason: &RevokeReason,
    ) -> Result<Vec<Session>>;
    /// Moves `last_seen_at` to `now` and `idle_expires_at` to `idle_expires_at`, never backwards,
    /// for a live session last seen before `stale_before`. Returns the updated row.
    async fn record_activity(
        &mut self,
        id: SessionId,
        now: DateTime<Utc>,
        idle_expires_at: DateTime<Utc>,
        stale_before: DateTime<Utc>,
    ) -> Result<Option<Session>>;
    /// One page of the user's sessions, newest first, after `after`.
    async fn list_sessions(
        &mut self,
        user_id: &UserId,
        include_revoked: bool,
        now: DateTime<Utc>,
        after: Option<SessionId>,
        limit: i64,
    ) -> Result<Vec<Session>>;
    /// At most `limit` revoked sessions in revocation order, just after `after`.
    async fn revoked_since(&mut self, after: RevokedAfter, limit: i64) -> Result<Vec<Session>>;
    async fn insert_refresh_token(
        &mut self,
        hash: &TokenHash,
        session_id: SessionId,
        generation: i32,
        now: DateTime<Utc>,
    ) -> Result<()>;
    async fn find_refresh_token(&mut self, hash: &TokenHash) -> Result<Option<StoredRefreshToken>>;
    /// The generation and hash of the session's current token.
    async fn current_refresh_token(
        &mut self,
        session_id: SessionId,
    ) -> Result<Option<(i32, TokenHash)>>;
    async fn retire_current_refresh_token(
        &mut self,
        session_id: SessionId,
        now: DateTime<Utc>,
    ) -> Result<()>;
    /// Forgets the session's tokens of generations below `generation`.
    async fn forget_refresh_tokens_before(
        &mut self,
        session_id: SessionId,
        generation: i32,
    ) -> Result<()>;
    /// Takes the sweep lock ([`super::SWEEP_LOCK_KEY`]) for this connection, without waiting;
    /// false if another connection holds it.
    async fn try_lock_sweep(&mut self) -> Result<bool>;
    /// Releases what [`Statements::try_lock_sweep`] took.
    async fn unlock_sweep(&mut self) -> Result<()>;
    /// Deletes at most `limit` sessions (their refresh tokens cascade) revoked before `cutoff` or
    /// past either expiry before `cutoff`; returns how many. One statement, run outside any
    /// transaction, so its locks last only as long as it does.
    async fn delete_ended_before(&mut self, cutoff: DateTime<Utc>, limit: i64) -> Result<u64>;
}

/// What differs between databases beyond their statements.
#[async_trait]
pub trait Backend: Database
where
    Self::Connection: Statements,
{
    /// Starts a transaction that will write.
    async fn begin_write(pool: &Pool<Self>) -> Result<Transaction<'static, Self>>;
    /// CreateSession for a batch of creates when no per-user limit applies (nothing to count, so
    /// no per-user lock): [`Statements::insert_replacing_device`] for each, atomically, in as few
    /// round trips as the database allows. The batch holds at most one create per (user,
    /// device). Returns the sessions each create replaced, in the batch's order.
    async fn create_unlimited(
        pool: &Pool<Self>,
        batch: &[NewSession],
        reason: &RevokeReason,
    ) -> Result<Vec<Vec<Session>>>;
    /// [`SessionStore::record_activity`].
    async fn record_activity(pool: &Pool<Self>, batch: &[Activity]) -> Result<Vec<Session>>;
    /// Applies this database's migrations.
    async fn migrate(pool: &Pool<Self>) -> Result<()>;
}
