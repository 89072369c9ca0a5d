//! The one implementation of [`SessionStore`]: what each operation does, written once over the
//! shared statements (`statements.rs`) and what each [`Dialect`] does its own way.

use std::{sync::OnceLock, time::Duration};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::{Database, Pool, pool::PoolConnection};
use uuid::Uuid;

use super::{
    Activity, Admission, ErasureBatch, FilterPage, LogBounds, NewSession, RefreshDecision,
    RefreshOutcome, RefreshRule, RefreshState, RevokeOutcome, RevokedAfter, SessionStore, SignOut,
    create_batch::CreateBatcher,
    dialect::{Dialect, bounded, connection},
    statements::{Bind, Read, RefreshTokenRow, Statements},
};
use crate::{
    domain::{Cursor, Revocation, RevokeReason, Session, SessionFilter, SessionId, UserId},
    error::{Error, Refusal, Result},
    token::TokenHash,
};

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

    /// `op`, cut at the operation timeout. Not an `async fn`: that would be one more layer holding
    /// (and moving) `op` whole.
    fn bounded<T>(
        &self,
        op: impl Future<Output = Result<T>> + Send,
    ) -> impl Future<Output = Result<T>> + Send {
        bounded(self.op_timeout, op)
    }
}

// The bounds of the shared statements (`statements.rs`), which Rust does not carry along.
#[async_trait]
impl<DB: Dialect> SessionStore for SqlStore<DB>
where
    Uuid: Bind<DB>,
    Option<Uuid>: Bind<DB>,
    for<'a> &'a str: Bind<DB>,
    for<'a> &'a [u8]: Bind<DB>,
    i64: Bind<DB>,
    i32: Bind<DB>,
    bool: Bind<DB>,
    DB::Time: Bind<DB>,
    super::SessionRow<DB::Time>: Read<DB>,
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
    super::statements::FilteredRow: Read<DB>,
    String: Bind<DB>,
    super::RevocationRow<DB::Time>: Read<DB>,
    super::statements::SignOutTally<DB::Time>: Read<DB>,
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
        create: &NewSession,
        admit: Option<Admission<'_>>,
    ) -> Result<Vec<Session>> {
        let Some(admit) = admit else {
            let batcher = self
                .batched_creates
                .get_or_init(|| CreateBatcher::start(self.pool.clone(), self.op_timeout));
            return self.bounded(batcher.create(create.clone())).await;
        };
        let NewSession { session, now, .. } = create;
        let now = *now;
        let replaced = RevokeReason::internal(RevokeReason::DEVICE_REPLACED);
        self.bounded(async {
            let mut conn = connection(&self.pool).await?;
            let mut tx = DB::begin_write(&mut conn).await?;
            DB::lock_user(&mut tx, &session.user_id).await?;
            let mut statements = Statements::<DB>(&mut tx);
            let mut revoked = Vec::new();
            // The limit counts the user's sessions once the device's own is replaced.
            if let Some(device_id) = &session.device.device_id {
                revoked.extend(
                    statements
                        .revoke_device(&session.user_id, device_id, now, &replaced)
                        .await?,
                );
            }
            // Returning early drops the transaction: a refusal rolls back the device replacement
            // too.
            let evict = admit(statements.count_live(&session.user_id, now).await?)?;
            if evict > 0 {
                let reason = RevokeReason::internal(RevokeReason::SESSION_LIMIT);
                revoked.extend(
                    statements
                        .revoke_oldest_live(&session.user_id, evict, now, &reason)
                        .await?,
                );
            }
            revoked.extend(
                DB::insert_replacing_devices(&mut tx, std::slice::from_ref(create), &replaced)
                    .await?
                    .concat(),
            );
            tx.commit().await?;
            Ok(revoked)
        })
        .await
    }

    #[tracing::instrument(name = "store.find", skip_all)]
    async fn find(&self, id: SessionId) -> Result<Option<Session>> {
        self.bounded(async move {
            Statements::<DB>(&mut *connection(&self.pool).await?)
                .find_session(id)
                .await
        })
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
            let unknown = || Error::RefreshRefused(Refusal::RefreshTokenUnknown);
            // An unknown token costs one indexed read on a pooled connection, and no write
            // transaction: guessing tokens cannot take the write lock (SQLite) or hold a
            // connection in a transaction (Postgres).
            let mut conn = connection(&self.pool).await?;
            let found = Statements::<DB>(&mut conn)
                .find_refresh_token(presented)
                .await?
                .ok_or_else(unknown)?;
            let mut tx = DB::begin_write(&mut conn).await?;
            let mut statements = Statements::<DB>(&mut tx);
            // Concurrent refreshes of one session take turns here. Read the token again under the
            // lock, since the one before us may have rotated it (or the sweeper deleted it).
            let session = statements
                .find_session_for_update(found.session_id)
                .await?
                .ok_or_else(unknown)?;
            let found = statements
                .find_refresh_token(presented)
                .await?
                .ok_or_else(unknown)?;
            let current = statements.current_refresh_token(session.id).await?;
            let decision = decide(RefreshState {
                session: &session,
                presented: &found,
                current,
            });
            let outcome = match decision {
                RefreshDecision::Refuse(error) => return Err(error),
                RefreshDecision::Repeat(successor, salt) => {
                    RefreshOutcome::Repeated(session, successor, salt)
                }
                RefreshDecision::Rotate {
                    successor,
                    successor_salt,
                    idle_expires_at,
                    forget_before,
                } => {
                    statements
                        .retire_current_refresh_token(session.id, now, &successor_salt)
                        .await?;
                    statements
                        .insert_refresh_token(&successor, session.id, found.generation + 1, now)
                        .await?;
                    statements
                        .forget_refresh_tokens_before(session.id, forget_before)
                        .await?;
                    // A refresh is activity, written every time rather than coalesced.
                    let updated = statements
                        .record_activity(session.id, now, idle_expires_at, DateTime::<Utc>::MAX_UTC)
                        .await?
                        .ok_or_else(|| {
                            Error::Internal(anyhow::anyhow!("a locked live session vanished"))
                        })?;
                    RefreshOutcome::Rotated(updated, successor)
                }
                RefreshDecision::Revoke(reason) => {
                    match statements.revoke(session.id, now, &reason).await? {
                        Some(revoked) => RefreshOutcome::Revoked(revoked),
                        None => return Err(Error::RefreshRefused(Refusal::SessionRevoked)),
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
    ) -> Result<RevokeOutcome> {
        self.bounded(async move {
            let mut conn = connection(&self.pool).await?;
            let mut statements = Statements::<DB>(&mut conn);
            Ok(match statements.revoke(id, now, reason).await? {
                Some(revoked) => RevokeOutcome::Revoked(Box::new(revoked)),
                None if statements.find_session(id).await?.is_some() => {
                    RevokeOutcome::AlreadyRevoked
                }
                None => RevokeOutcome::NotFound,
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
        limit: usize,
    ) -> Result<Vec<Session>> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.bounded(async move {
            Statements::<DB>(&mut *connection(&self.pool).await?)
                .revoke_user(user_id, except, now, reason, limit)
                .await
        })
        .await
    }

    #[tracing::instrument(name = "store.sign_out_user", skip_all)]
    async fn sign_out_user(
        &self,
        user_id: &UserId,
        now: DateTime<Utc>,
        reason: &RevokeReason,
    ) -> Result<SignOut> {
        let tick = chrono::TimeDelta::microseconds(1);
        self.bounded(async move {
            let mut conn = connection(&self.pool).await?;
            let mut tx = DB::begin_write(&mut conn).await?;
            // Counted creates take turns with it, so the count is of what exists at the commit.
            DB::lock_user(&mut tx, user_id).await?;
            let mut statements = Statements::<DB>(&mut tx);
            let previous = statements.not_before(user_id).await?;
            let (live, newest) = statements.sign_out_tally(user_id, now, previous).await?;
            let not_before = [
                Some(now),
                newest.map(|t| t + tick),
                previous.map(|t| t + tick),
            ]
            .into_iter()
            .flatten()
            .max()
            .unwrap_or(now);
            statements
                .record_not_before(user_id, not_before, reason, now)
                .await?;
            tx.commit().await?;
            Ok(SignOut {
                not_before,
                revoked_count: live.unsigned_abs(),
            })
        })
        .await
    }

    #[tracing::instrument(name = "store.mark_signed_out", skip_all)]
    async fn mark_signed_out(&self, user_id: &UserId, limit: usize) -> Result<bool> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.bounded(async move {
            let mut conn = connection(&self.pool).await?;
            let mut statements = Statements::<DB>(&mut conn);
            let Some((not_before, reason)) = statements.unmarked_sign_out(user_id).await? else {
                return Ok(true);
            };
            let marked = statements
                .mark_revoked_before(user_id, not_before, &reason, limit)
                .await?;
            if marked < limit.unsigned_abs() {
                statements.sign_out_marked(user_id, not_before).await?;
                return Ok(true);
            }
            Ok(false)
        })
        .await
    }

    #[tracing::instrument(name = "store.unmarked_sign_outs", skip_all)]
    async fn unmarked_sign_outs(&self, limit: usize) -> Result<Vec<UserId>> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.bounded(async move {
            Statements::<DB>(&mut *connection(&self.pool).await?)
                .unmarked_sign_outs(limit)
                .await
        })
        .await
    }

    #[tracing::instrument(name = "store.revoke_matching", skip_all)]
    async fn revoke_matching(
        &self,
        filter: &SessionFilter,
        now: DateTime<Utc>,
        reason: &RevokeReason,
        dry_run: bool,
        after: Option<SessionId>,
        limit: usize,
    ) -> Result<FilterPage> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.bounded(async move {
            let mut conn = connection(&self.pool).await?;
            let mut statements = Statements::<DB>(&mut conn);
            let page = statements.filter_page(filter, now, after, limit).await?;
            let next = (page.len() == limit.unsigned_abs() as usize)
                .then(|| page.last().map(|row| SessionId::from(row.session_id)))
                .flatten();
            let matched: Vec<SessionId> = page
                .into_iter()
                .filter(|row| {
                    let ip = row.ip_address.as_deref().and_then(|ip| ip.parse().ok());
                    filter.admits(ip, &row.metadata.0)
                })
                .map(|row| row.session_id.into())
                .collect();
            let revoked = match dry_run {
                true => 0,
                false => statements.revoke_ids(&matched, now, reason).await?,
            };
            Ok(FilterPage {
                matched: matched.len() as u64,
                revoked,
                next,
            })
        })
        .await
    }

    #[tracing::instrument(name = "store.record_removed_signing_key", skip_all)]
    async fn record_removed_signing_key(&self, key_id: &str, now: DateTime<Utc>) -> Result<()> {
        self.bounded(async move {
            Statements::<DB>(&mut *connection(&self.pool).await?)
                .record_removed_signing_key(key_id, now)
                .await
        })
        .await
    }

    #[tracing::instrument(name = "store.revocations_after", skip_all)]
    async fn revocations_after(&self, after: Cursor, limit: usize) -> Result<Vec<Revocation>> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.bounded(async move {
            Statements::<DB>(&mut *connection(&self.pool).await?)
                .revocations_after(after, limit)
                .await
        })
        .await
    }

    #[tracing::instrument(name = "store.revocation_log", skip_all)]
    async fn revocation_log(&self, since: DateTime<Utc>) -> Result<LogBounds> {
        self.bounded(async move {
            Statements::<DB>(&mut *connection(&self.pool).await?)
                .revocation_log(since)
                .await
        })
        .await
    }

    #[tracing::instrument(name = "store.sweep_revocations", skip_all)]
    async fn sweep_revocations(
        &self,
        events_before: DateTime<Utc>,
        sign_outs_before: DateTime<Utc>,
    ) -> Result<u64> {
        self.bounded(async move {
            let mut conn = connection(&self.pool).await?;
            let mut tx = DB::begin_write(&mut conn).await?;
            let mut statements = Statements::<DB>(&mut tx);
            // Deleted by cursor, not by time, so that `swept_through` covers exactly what went.
            let deleted = match statements.newest_revocation_before(events_before).await? {
                Some(through) => statements.delete_revocations_through(through).await?,
                None => 0,
            };
            statements
                .delete_old_revocation_state(events_before, sign_outs_before)
                .await?;
            tx.commit().await?;
            Ok(deleted)
        })
        .await
    }

    #[tracing::instrument(name = "store.revoked_of_user", skip_all)]
    async fn revoked_of_user(&self, user_id: &UserId, limit: usize) -> Result<ErasureBatch> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.bounded(async move {
            let mut conn = self.pool.acquire().await?;
            let mut statements = Statements::<DB>(&mut conn);
            let sessions = statements.revoked_session_ids(user_id, limit).await?;
            let refresh_tokens = match sessions.last() {
                Some(&through) => {
                    statements
                        .refresh_token_hashes_of_revoked(user_id, through)
                        .await?
                }
                None => Vec::new(),
            };
            Ok(ErasureBatch {
                sessions,
                refresh_tokens,
            })
        })
        .await
    }

    #[tracing::instrument(name = "store.delete_revoked", skip_all)]
    async fn delete_revoked(&self, user_id: &UserId, through: SessionId) -> Result<Vec<SessionId>> {
        self.bounded(async move {
            let mut conn = connection(&self.pool).await?;
            let mut statements = Statements::<DB>(&mut conn);
            let deleted = statements.delete_revoked(user_id, through).await?;
            statements.forget_user_in_revocation_log(user_id).await?;
            Ok(deleted)
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
            Statements::<DB>(&mut *connection(&self.pool).await?)
                .list_sessions(user_id, include_revoked, now, after, limit)
                .await
        })
        .await
    }

    #[tracing::instrument(name = "store.revoked_since", skip_all)]
    async fn revoked_since(&self, after: RevokedAfter, limit: i64) -> Result<Vec<Session>> {
        self.bounded(async move {
            Statements::<DB>(&mut *connection(&self.pool).await?)
                .revoked_since(after, limit)
                .await
        })
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
            conn: connection(&self.pool).await?,
            held: true,
        };
        if !DB::try_lock_sweep(&mut lock.conn).await? {
            lock.held = false;
            return Ok(None);
        }
        let mut deleted = 0;
        loop {
            let batch = DB::delete_ended_before(&mut lock.conn, cutoff, batch_size).await?;
            deleted += batch;
            if batch < batch_size.unsigned_abs() {
                break;
            }
            // Let requests have the pool and the runtime between batches.
            tokio::task::yield_now().await;
        }
        DB::unlock_sweep(&mut lock.conn).await?;
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
