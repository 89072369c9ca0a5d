//! The one implementation of [`SessionStore`] over any database that provides [`Statements`].

use std::{
    sync::{Arc, OnceLock},
    time::Duration,
};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::{Database, Pool, Transaction, pool::PoolConnection};

use super::{
    Activity, Admission, NewSession, RefreshDecision, RefreshOutcome, RefreshRule, RefreshState,
    Revocation, RevokedAfter, SessionStore, StoredRefreshToken, create_batch::CreateBatcher,
};
use crate::{
    domain::{RevokeReason, Session, SessionId, UserId},
    error::{Error, RefreshRefusal, Result},
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

/// A [`SessionStore`] over a pool of `DB` connections.
pub struct SqlStore<DB: Database> {
    pool: Pool<DB>,
    /// Writes the creates no per-user limit applies to, in batches. Started by the first such
    /// create, so that the store can be built outside a Tokio runtime.
    batched_creates: OnceLock<CreateBatcher>,
    /// Bound on one whole operation, enforced here: the database's own statement timeout cannot
    /// fire while the server is frozen or cut off, and a call must not hang until it returns.
    op_timeout: Option<Duration>,
}

impl<DB: Database> SqlStore<DB> {
    /// A store over `pool`, with no bound of its own on an operation.
    pub fn new(pool: Pool<DB>) -> Self {
        Self {
            pool,
            batched_creates: OnceLock::new(),
            op_timeout: None,
        }
    }

    /// Fails any operation that takes longer than `limit` with UNAVAILABLE. If that happens
    /// during a commit, whether the write landed is unknown, as with any lost connection.
    pub fn with_op_timeout(mut self, limit: Duration) -> Self {
        self.op_timeout = Some(limit);
        self
    }

    async fn bounded<T>(&self, op: impl Future<Output = Result<T>> + Send) -> Result<T> {
        bounded(self.op_timeout, op).await
    }

    /// The pool, for tests and tools that need to look underneath.
    pub fn pool(&self) -> &Pool<DB> {
        &self.pool
    }
}

#[async_trait]
impl<DB: Backend> SessionStore for SqlStore<DB>
where
    DB::Connection: Statements,
{
    #[tracing::instrument(name = "store.migrate", skip_all)]
    async fn migrate(&self) -> Result<()> {
        DB::migrate(&self.pool).await
    }

    async fn close(&self) {
        self.pool.close().await;
    }

    #[tracing::instrument(name = "store.create", skip_all)]
    async fn create(
        &self,
        session: &Session,
        refresh_token: &TokenHash,
        admit: Option<Admission<'_>>,
        now: DateTime<Utc>,
    ) -> Result<Vec<Session>> {
        let Some(admit) = admit else {
            let batcher = self
                .batched_creates
                .get_or_init(|| CreateBatcher::start(self.pool.clone(), self.op_timeout));
            return self
                .bounded(batcher.create(NewSession {
                    session: session.clone(),
                    refresh_token: *refresh_token,
                    now,
                }))
                .await;
        };
        let replaced = RevokeReason::internal(RevokeReason::DEVICE_REPLACED);
        self.bounded(async {
            let mut tx = DB::begin_write(&self.pool).await?;
            let conn = &mut *tx;
            conn.lock_user(&session.user_id).await?;
            let mut revoked = Vec::new();
            // The limit counts the user's sessions once the device's own is replaced.
            if let Some(device_id) = &session.device.device_id {
                revoked.extend(
                    conn.revoke_device(&session.user_id, device_id, now, &replaced)
                        .await?,
                );
            }
            // Returning early drops the transaction: a refusal rolls back the device replacement
            // too.
            let evict = admit(conn.count_live(&session.user_id, now).await?)?;
            if evict > 0 {
                let reason = RevokeReason::internal(RevokeReason::SESSION_LIMIT);
                revoked.extend(
                    conn.revoke_oldest_live(&session.user_id, evict, now, &reason)
                        .await?,
                );
            }
            revoked.extend(
                conn.insert_replacing_device(session, refresh_token, now, &replaced)
                    .await?,
            );
            tx.commit().await?;
            Ok(revoked)
        })
        .await
    }

    #[tracing::instrument(name = "store.find", skip_all)]
    async fn find(&self, id: SessionId) -> Result<Option<Session>> {
        self.bounded(async move { self.pool.acquire().await?.find_session(id).await })
            .await
    }

    #[tracing::instrument(name = "store.record_activity", skip_all, fields(batch = batch.len()))]
    async fn record_activity(&self, batch: &[Activity]) -> Result<Vec<Session>> {
        self.bounded(DB::record_activity(&self.pool, batch)).await
    }

    #[tracing::instrument(name = "store.refresh", skip_all)]
    async fn refresh(
        &self,
        presented: &TokenHash,
        now: DateTime<Utc>,
        decide: RefreshRule<'_>,
    ) -> Result<RefreshOutcome> {
        self.bounded(async move {
            let unknown = || Error::RefreshRefused(RefreshRefusal::Unknown);
            let mut tx = DB::begin_write(&self.pool).await?;
            let conn = &mut *tx;
            let found = conn
                .find_refresh_token(presented)
                .await?
                .ok_or_else(unknown)?;
            // Concurrent refreshes of one session take turns here. Read the token again under the
            // lock, since the one before us may have rotated it.
            let session = conn
                .find_session_for_update(found.session_id)
                .await?
                .ok_or_else(unknown)?;
            let found = conn
                .find_refresh_token(presented)
                .await?
                .ok_or_else(unknown)?;
            let current = conn.current_refresh_token(session.id).await?;
            let decision = decide(RefreshState {
                session: &session,
                presented: &found,
                current,
            });
            let outcome = match decision {
                RefreshDecision::Refuse(error) => return Err(error),
                RefreshDecision::Repeat(successor) => RefreshOutcome::Repeated(session, successor),
                RefreshDecision::Rotate {
                    successor,
                    idle_expires_at,
                    forget_before,
                } => {
                    conn.retire_current_refresh_token(session.id, now).await?;
                    conn.insert_refresh_token(&successor, session.id, found.generation + 1, now)
                        .await?;
                    conn.forget_refresh_tokens_before(session.id, forget_before)
                        .await?;
                    // A refresh is activity, written every time rather than coalesced.
                    let updated = conn
                        .record_activity(session.id, now, idle_expires_at, DateTime::<Utc>::MAX_UTC)
                        .await?
                        .ok_or_else(|| {
                            Error::Internal(anyhow::anyhow!("a locked live session vanished"))
                        })?;
                    RefreshOutcome::Rotated(updated, successor)
                }
                RefreshDecision::Revoke(reason) => {
                    match conn.revoke(session.id, now, &reason).await? {
                        Some(revoked) => RefreshOutcome::Revoked(revoked),
                        None => return Err(Error::RefreshRefused(RefreshRefusal::SessionRevoked)),
                    }
                }
            };
            tx.commit().await?;
            Ok(outcome)
        })
        .await
    }

    #[tracing::instrument(name = "store.revoke", skip_all)]
    async fn revoke(
        &self,
        id: SessionId,
        now: DateTime<Utc>,
        reason: &RevokeReason,
    ) -> Result<Revocation> {
        self.bounded(async move {
            let mut conn = self.pool.acquire().await?;
            Ok(match conn.revoke(id, now, reason).await? {
                Some(revoked) => Revocation::Revoked(Box::new(revoked)),
                None if conn.find_session(id).await?.is_some() => Revocation::AlreadyRevoked,
                None => Revocation::NotFound,
            })
        })
        .await
    }

    #[tracing::instrument(name = "store.revoke_user", skip_all)]
    async fn revoke_user(
        &self,
        user_id: &UserId,
        except: Option<SessionId>,
        now: DateTime<Utc>,
        reason: &RevokeReason,
    ) -> Result<Vec<Session>> {
        self.bounded(async move {
            self.pool
                .acquire()
                .await?
                .revoke_user(user_id, except, now, reason)
                .await
        })
        .await
    }

    #[tracing::instrument(name = "store.list", skip_all)]
    async fn list(
        &self,
        user_id: &UserId,
        include_revoked: bool,
        now: DateTime<Utc>,
        after: Option<SessionId>,
        limit: i64,
    ) -> Result<Vec<Session>> {
        self.bounded(async move {
            self.pool
                .acquire()
                .await?
                .list_sessions(user_id, include_revoked, now, after, limit)
                .await
        })
        .await
    }

    #[tracing::instrument(name = "store.revoked_since", skip_all)]
    async fn revoked_since(&self, after: RevokedAfter, limit: i64) -> Result<Vec<Session>> {
        self.bounded(async move { self.pool.acquire().await?.revoked_since(after, limit).await })
            .await
    }

    #[tracing::instrument(name = "store.sweep", skip_all)]
    async fn sweep(
        &self,
        now: DateTime<Utc>,
        retention: chrono::Duration,
        batch_size: i64,
    ) -> Result<Option<u64>> {
        // A retention too long to subtract keeps everything.
        let Some(cutoff) = now.checked_sub_signed(retention) else {
            return Ok(Some(0));
        };
        let batch_size = batch_size.max(1);
        // From the lock attempt until the unlock, any way out (an error, a timeout, the task
        // aborted at shutdown) closes the connection rather than pooling it, and so drops the
        // lock with it.
        let mut lock = SweepLock {
            conn: self.pool.acquire().await?,
            held: true,
        };
        if !lock.conn.try_lock_sweep().await? {
            lock.held = false;
            return Ok(None);
        }
        let mut deleted = 0;
        loop {
            let batch = lock.conn.delete_ended_before(cutoff, batch_size).await?;
            deleted += batch;
            if batch < batch_size.unsigned_abs() {
                break;
            }
            // Let requests have the pool and the runtime between batches.
            tokio::task::yield_now().await;
        }
        lock.conn.unlock_sweep().await?;
        // Unlocked: the connection may go back to the pool.
        lock.held = false;
        Ok(Some(deleted))
    }
}

/// A pooled connection that may hold the sweep lock: dropped while `held`, the connection is
/// closed instead of pooled, which releases the lock.
struct SweepLock<DB: Database> {
    conn: PoolConnection<DB>,
    held: bool,
}

impl<DB: Database> Drop for SweepLock<DB> {
    fn drop(&mut self) {
        if self.held {
            self.conn.close_on_drop();
        }
    }
}
