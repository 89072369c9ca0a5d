//! The durable truth. Every write commits here before any cache is told.
//!
//! Two stores implement [`SessionStore`]: Postgres (the production store, shared by replicas) and
//! SQLite (the embedded store for a single node). The session suite in `tests/` runs against both.
//!
//! A store runs each operation in one transaction and knows no session rules: where a rule must
//! decide inside the transaction (the per-user limit, refresh rotation), the authority passes the
//! decision in as a function of what the store read.
//!
//! Both stores share one implementation, [`SqlStore`]: each operation is written once
//! (`operations.rs`), of statements written once (`statements.rs`); a database's `Dialect`
//! (`dialect.rs`, implemented in `postgres.rs` and `sqlite.rs`) holds only what differs.

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::sqlite::SqliteError;

use crate::{
    domain::{
        Cursor, Revocation, RevokeReason, Revoked, Session, SessionFilter, SessionId, UserId,
    },
    error::{Error, Result},
    token::TokenHash,
};

pub use operations::SqlStore;

/// Sessions in Postgres, shared by every replica.
pub type PostgresStore = SqlStore<sqlx::Postgres>;
/// Sessions in an embedded SQLite file, for a single node.
pub type SqliteStore = SqlStore<sqlx::Sqlite>;

/// Decides a refresh from what the store read under the session's lock.
pub type RefreshRule<'a> = &'a (dyn for<'s> Fn(RefreshState<'s>) -> RefreshDecision + Send + Sync);

/// Decides, from the number of live sessions the user holds, how many of the oldest to revoke
/// before a new one is added; an error refuses the new session.
pub type Admission<'a> = &'a (dyn Fn(i64) -> Result<i64> + Send + Sync);

/// A stored refresh token.
#[derive(Debug, Clone)]
pub struct StoredRefreshToken {
    pub session_id: SessionId,
    /// 0 for the token CreateSession issued, +1 per rotation.
    pub generation: i32,
    /// `None` while it is the session's current token.
    pub retired_at: Option<DateTime<Utc>>,
    /// The random value its successor was derived with, once it has one (see
    /// [`crate::token::RefreshToken::successor`]); `None` too for a token rotated by a release
    /// before it.
    pub successor_salt: Option<SuccessorSalt>,
}

/// The random value, one per rotation, that a refresh token's successor is derived with.
pub type SuccessorSalt = [u8; 16];

/// A session to insert, with its first refresh token, as decided at `now`.
#[derive(Debug, Clone)]
pub struct NewSession {
    pub session: Session,
    pub refresh_token: TokenHash,
    pub now: DateTime<Utc>,
}

/// A validator saw a live session in use: its idle deadline moves forward.
#[derive(Debug, Clone)]
pub struct Activity {
    pub session_id: SessionId,
    /// Becomes `last_seen_at`.
    pub seen_at: DateTime<Utc>,
    pub idle_expires_at: DateTime<Utc>,
    /// Written only if the stored `last_seen_at` is older than this.
    pub stale_before: DateTime<Utc>,
}

/// What a refresh decision sees, read under the session's lock.
#[derive(Debug)]
pub struct RefreshState<'a> {
    pub session: &'a Session,
    /// The presented token, as stored.
    pub presented: &'a StoredRefreshToken,
    /// The session's current token: its generation and hash.
    pub current: Option<(i32, TokenHash)>,
}

/// What to do with a refresh, decided from a [`RefreshState`].
#[derive(Debug)]
pub enum RefreshDecision {
    /// Retire the presented (current) token, keeping the salt its successor was derived with,
    /// and make `successor` current, recording activity.
    Rotate {
        successor: TokenHash,
        successor_salt: SuccessorSalt,
        idle_expires_at: DateTime<Utc>,
        /// Forget retired tokens of generations below this.
        forget_before: i32,
    },
    /// Change nothing: the presented token's successor, this one, derived with the presented
    /// token's salt, is already current (a retry).
    Repeat(TokenHash, SuccessorSalt),
    /// Revoke the session.
    Revoke(RevokeReason),
    /// Refuse, changing nothing.
    Refuse(crate::error::Error),
}

/// What a refresh did.
#[derive(Debug)]
pub enum RefreshOutcome {
    /// Rotated to this successor.
    Rotated(Session, TokenHash),
    /// A retry; the successor the first try got, and the salt it was derived with.
    Repeated(Session, TokenHash, SuccessorSalt),
    Revoked(Session),
}

/// What revoking one session did.
#[derive(Debug)]
pub enum RevokeOutcome {
    Revoked(Box<Session>),
    AlreadyRevoked,
    NotFound,
}

/// The next sessions DeleteUserSessions erases: some of a user's revoked sessions, in id order,
/// and the hashes of every refresh token they hold (whose rate-limit state goes with them).
#[derive(Debug, Default)]
pub struct ErasureBatch {
    pub sessions: Vec<SessionId>,
    pub refresh_tokens: Vec<TokenHash>,
}

/// A place in the walk through revoked sessions in the order they were revoked: just after this
/// revocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RevokedAfter {
    pub revoked_at: DateTime<Utc>,
    pub session_id: SessionId,
}

impl RevokedAfter {
    /// Before every session revoked at or after `since`.
    pub fn since(since: DateTime<Utc>) -> Self {
        Self {
            revoked_at: since,
            session_id: uuid::Uuid::nil().into(),
        }
    }

    /// Just after `session`, if it is revoked.
    pub fn past(session: &Session) -> Option<Self> {
        Some(Self {
            revoked_at: session.revoked_at?,
            session_id: session.id,
        })
    }
}

/// What signing a user out everywhere did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SignOut {
    /// Every session of the user created before this instant is revoked.
    pub not_before: DateTime<Utc>,
    /// How many sessions were live and are now revoked.
    pub revoked_count: u64,
}

/// One page of RevokeSessions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FilterPage {
    /// Live sessions of the page the filter matched.
    pub matched: u64,
    /// Of those, how many this call revoked.
    pub revoked: u64,
    /// Where the next page starts; `None` after the last.
    pub next: Option<SessionId>,
}

/// Where the revocation log stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogBounds {
    /// The sweeper deleted every event up to this cursor: a subscriber resuming below it missed
    /// some.
    pub swept_through: Cursor,
    /// The newest cursor committed (or `swept_through`, when nothing newer is kept).
    pub newest: Cursor,
    /// Just before the first event revoked at or after the instant asked about: where a
    /// subscriber with no cursor starts.
    pub before_since: Cursor,
}

/// Where sessions live.
#[async_trait]
pub trait SessionStore: Send + Sync + 'static {
    /// Applies the migrations this store has not seen yet.
    async fn migrate(&self) -> Result<()>;

    /// Closes the store at shutdown, once nothing writes to it any more: waits for the
    /// connections in use to come back, and closes them all.
    async fn close(&self);

    /// Inserts the session with its first refresh token. First revokes the user's unrevoked
    /// session on the same device (reason `device_replaced`), then, under a per-user limit, lets
    /// `admit` decide from the user's live sessions (`None`: no limit, nothing to count). Returns
    /// the sessions it revoked.
    async fn create(
        &self,
        create: &NewSession,
        admit: Option<Admission<'_>>,
    ) -> Result<Vec<Session>>;

    /// Reads a session.
    async fn find(&self, id: SessionId) -> Result<Option<Session>>;

    /// Writes a batch of [`Activity`], each only to a live session last seen before its
    /// `stale_before`, never moving a time backwards. Best effort: a session another write holds
    /// locked may be skipped, and Postgres does not wait for the commit to be flushed (a crash
    /// may lose the last moment of activity, never a session or a revocation). Returns the
    /// sessions it wrote, as they now stand.
    async fn record_activity(&self, batch: &[Activity]) -> Result<Vec<Session>>;

    /// Looks up the refresh token `presented`, locks its session, and carries out what `decide`
    /// says. An unknown token is `RefreshRefused(Unknown)`.
    async fn refresh(
        &self,
        presented: &TokenHash,
        now: DateTime<Utc>,
        decide: RefreshRule<'_>,
    ) -> Result<RefreshOutcome>;

    /// Revokes one session.
    async fn revoke(
        &self,
        id: SessionId,
        now: DateTime<Utc>,
        reason: &RevokeReason,
    ) -> Result<RevokeOutcome>;

    /// Revokes at most `limit` unrevoked sessions of the user but `except`; returns them. Called
    /// until it returns fewer than `limit`, so that memory, statements and cache writes stay
    /// bounded however many sessions the user holds.
    async fn revoke_user(
        &self,
        user_id: &UserId,
        except: Option<SessionId>,
        now: DateTime<Utc>,
        reason: &RevokeReason,
        limit: usize,
    ) -> Result<Vec<Session>>;

    /// Signs the user out everywhere in O(1) of their sessions: records a not-before instant, at
    /// `now` or just after the newest session the user holds (so a replica whose clock is ahead
    /// cannot have made a session that escapes it), and never before the previous one. Every
    /// session created before it is revoked from the commit on (the reads below apply it);
    /// their rows are marked afterwards by [`SessionStore::mark_signed_out`]. Logged as one
    /// user-not-before revocation.
    async fn sign_out_user(
        &self,
        user_id: &UserId,
        now: DateTime<Utc>,
        reason: &RevokeReason,
    ) -> Result<SignOut>;

    /// Marks at most `limit` of the user's sessions that their not-before instant revoked;
    /// true once none is left (the sign-out is then marked done).
    async fn mark_signed_out(&self, user_id: &UserId, limit: usize) -> Result<bool>;

    /// At most `limit` users signed out everywhere whose sessions are not all marked yet (a
    /// replica stopped while marking them).
    async fn unmarked_sign_outs(&self, limit: usize) -> Result<Vec<UserId>>;

    /// Revokes (or with `dry_run`, only counts) the live sessions `filter` matches among the next
    /// `limit` live sessions its store-side conditions select, in id order after `after`. Called
    /// page by page until [`FilterPage::next`] is `None`, so that memory and each statement stay
    /// bounded however many sessions match; revoked sessions are logged one event each.
    async fn revoke_matching(
        &self,
        filter: &SessionFilter,
        now: DateTime<Utc>,
        reason: &RevokeReason,
        dry_run: bool,
        after: Option<SessionId>,
        limit: usize,
    ) -> Result<FilterPage>;

    /// Logs that a signing key was removed, unless another replica logged it first.
    async fn record_removed_signing_key(&self, key_id: &str, now: DateTime<Utc>) -> Result<()>;

    /// At most `limit` revocations after `after`, in cursor (commit) order.
    async fn revocations_after(&self, after: Cursor, limit: usize) -> Result<Vec<Revocation>>;

    /// Where the log stands, and where a subscriber interested in revocations made at or after
    /// `since` starts.
    async fn revocation_log(&self, since: DateTime<Utc>) -> Result<LogBounds>;

    /// Deletes the revocation events (and removed signing keys) recorded before `events_before`,
    /// moving [`LogBounds::swept_through`], and the fully marked sign-outs recorded before
    /// `sign_outs_before`. Returns how many events it deleted.
    async fn sweep_revocations(
        &self,
        events_before: DateTime<Utc>,
        sign_outs_before: DateTime<Utc>,
    ) -> Result<u64>;

    /// At most `limit` of the user's revoked sessions, lowest ids first, with the hashes of their
    /// refresh tokens: what DeleteUserSessions erases next. Called, with
    /// [`SessionStore::delete_revoked`], until it returns fewer than `limit`, so that memory,
    /// statements and cache deletes stay bounded however many sessions the user holds.
    async fn revoked_of_user(&self, user_id: &UserId, limit: usize) -> Result<ErasureBatch>;

    /// Deletes the user's revoked sessions up to `through` in id order (those
    /// [`SessionStore::revoked_of_user`] returned), with their refresh tokens; returns the ids of
    /// the sessions it deleted. A session revoked in between with an id below `through` (made
    /// during the erasure by a replica whose clock is behind) is deleted too. Also forgets the user
    /// in the revocation log (see the statement `forget_user_in_revocation_log`).
    async fn delete_revoked(&self, user_id: &UserId, through: SessionId) -> Result<Vec<SessionId>>;

    /// One page of the user's sessions, newest first, after `after`. Without `include_revoked`,
    /// only sessions live at `now`.
    async fn list(
        &self,
        user_id: &UserId,
        include_revoked: bool,
        now: DateTime<Utc>,
        after: Option<SessionId>,
        limit: i64,
    ) -> Result<Vec<Session>>;

    /// At most `limit` revoked sessions, in the order they were revoked, from just `after` on (by
    /// `session_revoked_at_idx`): what the Redis reconciler copies back into Redis.
    async fn revoked_since(&self, after: RevokedAfter, limit: i64) -> Result<Vec<Session>>;

    /// Deletes, with their refresh tokens, the sessions that ended more than `retention` before
    /// `now`: revoked before `now - retention`, or past `expires_at` or `idle_expires_at` by more
    /// than `retention`. Deletes `batch_size` rows per statement, each statement its own short
    /// transaction, until a batch comes back short. Returns how many it deleted, or `None` when
    /// another replica is sweeping (it holds [`SWEEP_LOCK_KEY`]).
    ///
    /// Expired sessions get the same retention as revoked ones so that a session that has just
    /// ended still reads as expired, not as not-found, for a while (GetSession,
    /// ListUserSessions with `include_revoked`).
    async fn sweep(
        &self,
        now: DateTime<Utc>,
        retention: chrono::Duration,
        batch_size: i64,
    ) -> Result<Option<u64>>;
}

/// The Postgres advisory lock (session level) a replica holds while it sweeps, so only one sweeps
/// at a time. Fixed, and the same on every replica: "sessweep" in ASCII.
pub const SWEEP_LOCK_KEY: i64 = 0x7365_7373_7765_6570;

/// What the database said, in the domain's words.
impl From<sqlx::Error> for Error {
    /// Connection-level failures are UNAVAILABLE (the caller may retry elsewhere); anything else
    /// is a bug or a schema mismatch and is INTERNAL.
    fn from(error: sqlx::Error) -> Self {
        let unreachable = match &error {
            sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::WorkerCrashed
            | sqlx::Error::Protocol(_) => true,
            // SQLite: another writer held the database past the busy timeout (SQLITE_BUSY or
            // SQLITE_LOCKED, in any extended form).
            sqlx::Error::Database(db) if db.try_downcast_ref::<SqliteError>().is_some() => db
                .code()
                .and_then(|code| code.parse::<u32>().ok())
                .is_some_and(|code| matches!(code & 0xff, 5 | 6)),
            // Postgres. Class 08: connection exception; 57P0x: shutting down or starting up;
            // 53300: too many connections; 57014: our statement_timeout fired.
            sqlx::Error::Database(db) => db.code().is_some_and(|code| {
                code.starts_with("08")
                    || code.starts_with("57P0")
                    || code == "53300"
                    || code == "57014"
            }),
            _ => false,
        };
        if unreachable {
            Self::StoreUnavailable(Arc::new(error))
        } else {
            Self::StoreFailed(Arc::new(error))
        }
    }
}

/// An operation that took longer than its bound.
#[derive(Debug, thiserror::Error)]
#[error("the store did not answer within {0:?}")]
struct TimedOut(std::time::Duration);

/// A stored 32-byte hash column as a [`TokenHash`].
fn token_hash(bytes: Vec<u8>) -> Result<TokenHash> {
    let bytes: [u8; 32] = bytes.try_into().map_err(|_| {
        crate::error::Error::Internal(anyhow::anyhow!("refresh_token.token_hash is not 32 bytes"))
    })?;
    Ok(TokenHash(bytes))
}

/// A time as a store keeps it: Postgres as `timestamptz`, SQLite as microseconds.
trait StoredTime {
    fn into_time(self) -> Result<DateTime<Utc>>;
}

impl StoredTime for DateTime<Utc> {
    fn into_time(self) -> Result<DateTime<Utc>> {
        Ok(self)
    }
}

impl StoredTime for i64 {
    fn into_time(self) -> Result<DateTime<Utc>> {
        DateTime::from_timestamp_micros(self).ok_or_else(|| {
            crate::error::Error::Internal(anyhow::anyhow!("a stored time is out of range: {self}"))
        })
    }
}

/// Every column of `session`, in `SessionRow`'s order. A macro, so that queries stay
/// `&'static str` literals.
macro_rules! columns {
    () => {
        "session_id, user_id, device_id, device_name, user_agent, ip_address, metadata, \
         created_at, last_seen_at, expires_at, idle_expires_at, revoked_at, revoke_reason"
    };
}

/// Every column of `session` as in effect: `s`, joined (see [`in_effect`]) with its user's
/// not-before instant `u`, reads as revoked by it when created before it, whether or not its row
/// is marked yet. In `SessionRow`'s order.
macro_rules! columns_in_effect {
    () => {
        "s.session_id, s.user_id, s.device_id, s.device_name, s.user_agent, s.ip_address, \
         s.metadata, s.created_at, s.last_seen_at, s.expires_at, s.idle_expires_at, \
         CASE WHEN s.revoked_at IS NULL AND s.created_at < u.not_before \
           THEN u.not_before ELSE s.revoked_at END AS revoked_at, \
         CASE WHEN s.revoked_at IS NULL AND s.created_at < u.not_before \
           THEN u.reason ELSE s.revoke_reason END AS revoke_reason"
    };
}

/// The sessions [`columns_in_effect`] reads: `session s` with its user's not-before `u`.
macro_rules! in_effect {
    () => {
        "session s LEFT JOIN user_not_before u ON u.user_id = s.user_id"
    };
}

/// "Live" in SQL: neither revoked nor past either expiry at the placeholder `$now`. Keep in step
/// with `Session::state`.
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

/// A `session` row as either store reads it, with times of type `T`.
#[derive(sqlx::FromRow)]
struct SessionRow<T> {
    session_id: uuid::Uuid,
    user_id: String,
    device_id: Option<String>,
    device_name: String,
    user_agent: String,
    ip_address: Option<String>,
    metadata: sqlx::types::Json<crate::domain::Metadata>,
    created_at: T,
    last_seen_at: T,
    expires_at: T,
    idle_expires_at: T,
    revoked_at: Option<T>,
    revoke_reason: Option<String>,
}

impl<T: StoredTime> TryFrom<SessionRow<T>> for Session {
    type Error = crate::error::Error;

    /// A column that does not parse is a corrupt row: INTERNAL, never a panic.
    fn try_from(row: SessionRow<T>) -> Result<Self> {
        use crate::error::Error;
        let ip_address = row
            .ip_address
            .map(|ip| ip.parse())
            .transpose()
            .map_err(|_| {
                Error::Internal(anyhow::anyhow!("session.ip_address holds a bad address"))
            })?;
        Ok(Self {
            id: row.session_id.into(),
            user_id: UserId::try_from(row.user_id).map_err(|e| {
                Error::Internal(anyhow::anyhow!("session.user_id holds a bad id: {e}"))
            })?,
            device: crate::domain::Device {
                device_id: row.device_id,
                name: row.device_name,
                user_agent: row.user_agent,
                ip_address,
            },
            metadata: row.metadata.0,
            created_at: row.created_at.into_time()?,
            last_seen_at: row.last_seen_at.into_time()?,
            expires_at: row.expires_at.into_time()?,
            idle_expires_at: row.idle_expires_at.into_time()?,
            revoked_at: row.revoked_at.map(StoredTime::into_time).transpose()?,
            revoke_reason: row.revoke_reason,
        })
    }
}

/// A `revocation_event` row as either store reads it, with times of type `T`.
#[derive(sqlx::FromRow)]
struct RevocationRow<T> {
    cursor: i64,
    kind: i32,
    session_id: Option<uuid::Uuid>,
    user_id: Option<String>,
    not_before: Option<T>,
    revoked_at: T,
    reason: String,
    key_id: Option<String>,
}

impl<T: StoredTime> TryFrom<RevocationRow<T>> for Revocation {
    type Error = Error;

    /// A row that does not parse is a corrupt row: INTERNAL, never a panic.
    fn try_from(row: RevocationRow<T>) -> Result<Self> {
        let corrupt = |what: &str| {
            Error::Internal(anyhow::anyhow!(
                "revocation_event {} holds {what}",
                row.cursor
            ))
        };
        let user_id = || {
            row.user_id
                .clone()
                .and_then(|id| UserId::try_from(id).ok())
                .ok_or_else(|| corrupt("no valid user_id"))
        };
        let revoked = match row.kind {
            1 => Revoked::Session {
                session_id: row
                    .session_id
                    .ok_or_else(|| corrupt("no session_id"))?
                    .into(),
                user_id: user_id()?,
            },
            2 => Revoked::UserBefore {
                user_id: user_id()?,
                not_before: row
                    .not_before
                    .ok_or_else(|| corrupt("no not_before"))?
                    .into_time()?,
            },
            3 => Revoked::SigningKey {
                key_id: row.key_id.clone().ok_or_else(|| corrupt("no key_id"))?,
            },
            _ => return Err(corrupt("an unknown kind")),
        };
        Ok(Self {
            cursor: Cursor(row.cursor),
            revoked,
            revoked_at: row.revoked_at.into_time()?,
            reason: row.reason,
        })
    }
}

/// At most one row, as a session.
fn session_from<T: StoredTime>(row: Option<SessionRow<T>>) -> Result<Option<Session>> {
    row.map(Session::try_from).transpose()
}

/// Rows, as sessions.
fn sessions_from<T: StoredTime>(rows: Vec<SessionRow<T>>) -> Result<Vec<Session>> {
    rows.into_iter().map(Session::try_from).collect()
}

mod create_batch;
mod dialect;
// Declared after the macros above, which they use.
mod operations;
mod postgres;
mod sqlite;
mod statements;
