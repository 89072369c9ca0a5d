//! The session rules: create, validate, refresh (rotation and reuse detection), revoke, list.
//!
//! Writes commit in Postgres first, then the cache is told; a cache failure never fails a request.
//! Reads try the cache, then Postgres, and write what Postgres said back into the cache.

mod policy;

use std::sync::Arc;

use chrono::{DateTime, DurationRound, TimeDelta, Utc};
use sqlx::PgPool;

pub use policy::Policy;

use crate::{
    cache::SessionCache,
    clock::Clock,
    config::LimitPolicy,
    domain::{Device, Metadata, RevokeReason, Session, SessionId, SessionState, UserId},
    error::{Error, RefreshRefusal, Result},
    store::{refresh_tokens, sessions},
    token::{AccessTokens, RefreshKey, RefreshToken, TokenRejection},
};

/// How many generations of retired refresh tokens are kept, so that reuse of any of them is
/// recognised as theft. Older ones are forgotten and are then merely unknown.
const KEPT_REFRESH_GENERATIONS: i32 = 16;

/// What CreateSession needs.
#[derive(Debug)]
pub struct NewSession {
    pub user_id: UserId,
    pub device: Device,
    pub metadata: Metadata,
    /// Requested lifetime; capped by the policy.
    pub lifetime: Option<std::time::Duration>,
}

/// A session and the tokens just issued for it.
#[derive(Debug)]
pub struct Issued {
    pub session: Session,
    pub access_token: String,
    pub access_token_expires_at: DateTime<Utc>,
    pub refresh_token: RefreshToken,
    /// The refresh token works until the session ends, which activity may push forward.
    pub refresh_token_expires_at: DateTime<Utc>,
}

/// Why `Validate` refused a token. Not an error: the caller gets it as a normal answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    Token(TokenRejection),
    SessionRevoked,
    SessionExpired,
    SessionNotFound,
}

/// The answer of `Validate`.
#[derive(Debug)]
pub enum Verdict {
    Valid(Box<Session>),
    Refused(Refusal),
}

/// One page of a user's sessions.
#[derive(Debug)]
pub struct Page {
    pub sessions: Vec<Session>,
    /// Where the next page starts; `None` on the last page.
    pub next: Option<SessionId>,
}

/// The session authority.
pub struct Authority {
    pool: PgPool,
    cache: SessionCache,
    access_tokens: AccessTokens,
    refresh_key: RefreshKey,
    policy: Policy,
    clock: Arc<dyn Clock>,
}

impl Authority {
    /// An authority over these stores, keys and rules.
    pub fn new(
        pool: PgPool,
        cache: SessionCache,
        access_tokens: AccessTokens,
        refresh_key: RefreshKey,
        policy: Policy,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Self {
            pool,
            cache,
            access_tokens,
            refresh_key,
            policy,
            clock,
        }
    }

    /// Now, at the microsecond precision Postgres keeps, so cached and stored copies compare equal.
    fn now(&self) -> DateTime<Utc> {
        let now = self.clock.now();
        now.duration_trunc(TimeDelta::microseconds(1))
            .unwrap_or(now)
    }

    /// Starts a session: replaces the user's session on the same device, applies the per-user
    /// limit, and issues the first token pair.
    #[tracing::instrument(name = "authority.create", skip_all, fields(user_id = %new.user_id))]
    pub async fn create_session(&self, new: NewSession) -> Result<Issued> {
        let now = self.now();
        let lifetime = new
            .lifetime
            .and_then(|requested| TimeDelta::from_std(requested).ok())
            .map_or(self.policy.session_lifetime, |requested| {
                requested.min(self.policy.session_lifetime)
            });
        let expires_at = now + lifetime;
        let session = Session {
            id: SessionId::generate(),
            user_id: new.user_id,
            device: new.device,
            metadata: new.metadata,
            created_at: now,
            last_seen_at: now,
            expires_at,
            idle_expires_at: (now + self.policy.idle_timeout).min(expires_at),
            revoked_at: None,
            revoke_reason: None,
        };
        let refresh_token = RefreshToken::generate()?;

        let mut tx = self.pool.begin().await?;
        sessions::lock_user(&mut tx, &session.user_id).await?;
        let mut changed = Vec::new();
        if let Some(device_id) = &session.device.device_id {
            let reason = RevokeReason::internal(RevokeReason::DEVICE_REPLACED);
            changed.extend(
                sessions::revoke_device(&mut tx, &session.user_id, device_id, now, &reason).await?,
            );
        }
        let limit = self.policy.max_sessions_per_user;
        if limit > 0 {
            let excess =
                sessions::count_live(&mut tx, &session.user_id, now).await? + 1 - i64::from(limit);
            if excess > 0 {
                match self.policy.limit_policy {
                    // Dropping the transaction rolls back the device replacement too.
                    LimitPolicy::Deny => return Err(Error::SessionLimitReached { limit }),
                    LimitPolicy::EvictOldest => {
                        let reason = RevokeReason::internal(RevokeReason::SESSION_LIMIT);
                        changed.extend(
                            sessions::revoke_oldest_live(
                                &mut tx,
                                &session.user_id,
                                excess,
                                now,
                                &reason,
                            )
                            .await?,
                        );
                    }
                }
            }
        }
        sessions::insert(&mut tx, &session).await?;
        refresh_tokens::insert(&mut tx, &refresh_token.hash(), session.id, 0, now).await?;
        tx.commit().await?;

        changed.push(session.clone());
        self.cache.put(&changed, now).await;
        tracing::info!(session_id = %session.id, revoked = changed.len() - 1, "session created");
        self.issue(session, refresh_token, now)
    }

    /// Checks an access token, then that its session is live.
    #[tracing::instrument(name = "authority.validate", skip_all)]
    pub async fn validate(&self, access_token: &str) -> Result<Verdict> {
        let now = self.now();
        let claims = match self.access_tokens.verify(access_token, now) {
            Ok(claims) => claims,
            Err(rejection) => return Ok(Verdict::Refused(Refusal::Token(rejection))),
        };
        // A cached copy is trusted when it says live or revoked. "Expired" may only mean the copy
        // missed a newer idle deadline, so Postgres decides that.
        let cached = self
            .cache
            .get(&claims.user_id, claims.session_id)
            .await
            .filter(|session| session.state(now) != SessionState::Expired);
        let session = match cached {
            Some(session) => session,
            None => {
                let stored =
                    sessions::find(&mut *self.pool.acquire().await?, claims.session_id).await?;
                match stored.filter(|session| session.user_id == claims.user_id) {
                    Some(session) => {
                        self.cache.put(std::slice::from_ref(&session), now).await;
                        session
                    }
                    None => return Ok(Verdict::Refused(Refusal::SessionNotFound)),
                }
            }
        };
        Ok(match session.state(now) {
            SessionState::Revoked => Verdict::Refused(Refusal::SessionRevoked),
            SessionState::Expired => Verdict::Refused(Refusal::SessionExpired),
            SessionState::Live => {
                Verdict::Valid(Box::new(self.record_activity(session, now).await))
            }
        })
    }

    /// Pushes the idle deadline forward, writing at most once per activity interval. A failed
    /// write is logged and does not fail the validation: the session is live either way.
    async fn record_activity(&self, session: Session, now: DateTime<Utc>) -> Session {
        let stale_before = now - self.policy.activity_write_interval;
        if session.last_seen_at >= stale_before {
            return session;
        }
        let idle_expires_at = (now + self.policy.idle_timeout).min(session.expires_at);
        let written = async {
            let mut conn = self.pool.acquire().await?;
            match sessions::record_activity(
                &mut conn,
                session.id,
                now,
                idle_expires_at,
                stale_before,
            )
            .await?
            {
                Some(updated) => Ok(Some(updated)),
                // Another replica wrote it already and our copy is stale: refresh the copy.
                None => sessions::find(&mut conn, session.id).await,
            }
        };
        match written.await {
            Ok(Some(updated)) => {
                self.cache.put(std::slice::from_ref(&updated), now).await;
                updated
            }
            Ok(None) => session,
            Err(error) => {
                tracing::warn!(error = %error, session_id = %session.id, "could not record activity");
                session
            }
        }
    }

    /// Exchanges a refresh token for a new pair; see the module docs of `token::refresh`.
    #[tracing::instrument(name = "authority.refresh", skip_all)]
    pub async fn refresh(&self, presented: RefreshToken) -> Result<Issued> {
        let now = self.now();
        let hash = presented.hash();
        let unknown = Error::RefreshRefused(RefreshRefusal::Unknown);

        let mut tx = self.pool.begin().await?;
        let Some(found) = refresh_tokens::find(&mut tx, &hash).await? else {
            return Err(unknown);
        };
        // Concurrent refreshes of one session take turns here; re-read the token under the lock,
        // since the one before us may have rotated it.
        let Some(session) = sessions::find_for_update(&mut tx, found.session_id).await? else {
            return Err(unknown);
        };
        let found = refresh_tokens::find(&mut tx, &hash).await?.ok_or(unknown)?;
        let successor = presented.successor(&self.refresh_key);

        let Some(retired_at) = found.retired_at else {
            ensure_live(&session, now)?;
            let generation = found.generation + 1;
            refresh_tokens::retire_current(&mut tx, session.id, now).await?;
            refresh_tokens::insert(&mut tx, &successor.hash(), session.id, generation, now).await?;
            refresh_tokens::forget_before(
                &mut tx,
                session.id,
                generation - KEPT_REFRESH_GENERATIONS,
            )
            .await?;
            let idle_expires_at = (now + self.policy.idle_timeout).min(session.expires_at);
            let session = sessions::record_activity(
                &mut tx,
                session.id,
                now,
                idle_expires_at,
                DateTime::<Utc>::MAX_UTC,
            )
            .await?
            .ok_or_else(|| Error::Internal(anyhow::anyhow!("a locked live session vanished")))?;
            tx.commit().await?;
            self.cache.put(std::slice::from_ref(&session), now).await;
            return self.issue(session, successor, now);
        };

        if now - retired_at <= self.policy.refresh_reuse_grace {
            // A retry (a lost response, two tabs at once): answer with the same successor, if it is
            // still the current token. It is, exactly when its hash is the stored current one.
            let current = refresh_tokens::current(&mut tx, session.id).await?;
            let answered = current.is_some_and(|(generation, current_hash)| {
                generation == found.generation + 1 && current_hash == successor.hash()
            });
            if !answered {
                return Err(Error::RefreshRefused(RefreshRefusal::Superseded));
            }
            ensure_live(&session, now)?;
            tx.commit().await?;
            return self.issue(session, successor, now);
        }

        // A retired token after the grace window: whoever holds it stole it, or the client who was
        // robbed is now trying. Either way the session can no longer be trusted.
        ensure_live(&session, now)?;
        let reason = RevokeReason::internal(RevokeReason::REFRESH_TOKEN_REUSE);
        let revoked = sessions::revoke(&mut tx, session.id, now, &reason).await?;
        tx.commit().await?;
        tracing::warn!(
            session_id = %session.id,
            user_id = %session.user_id,
            generation = found.generation,
            "refresh token reused after rotation; session revoked"
        );
        if let Some(revoked) = revoked {
            self.cache.put(&[revoked], now).await;
        }
        Err(Error::RefreshRefused(RefreshRefusal::Reused))
    }

    /// Revokes one session. `Ok(false)` when it already was revoked.
    #[tracing::instrument(name = "authority.revoke", skip_all, fields(session_id = %id))]
    pub async fn revoke_session(&self, id: SessionId, reason: RevokeReason) -> Result<bool> {
        let now = self.now();
        let mut conn = self.pool.acquire().await?;
        match sessions::revoke(&mut conn, id, now, &reason).await? {
            Some(revoked) => {
                self.cache.put(&[revoked], now).await;
                Ok(true)
            }
            None if sessions::find(&mut conn, id).await?.is_some() => Ok(false),
            None => Err(Error::SessionNotFound),
        }
    }

    /// Revokes every session of a user but `except`; returns how many were revoked.
    #[tracing::instrument(name = "authority.revoke_user", skip_all, fields(user_id = %user_id))]
    pub async fn revoke_user_sessions(
        &self,
        user_id: &UserId,
        except: Option<SessionId>,
        reason: RevokeReason,
    ) -> Result<usize> {
        let now = self.now();
        let revoked = sessions::revoke_user(
            &mut *self.pool.acquire().await?,
            user_id,
            except,
            now,
            &reason,
        )
        .await?;
        self.cache.put(&revoked, now).await;
        Ok(revoked.len())
    }

    /// One page of a user's sessions, newest first.
    #[tracing::instrument(name = "authority.list", skip_all, fields(user_id = %user_id))]
    pub async fn list_user_sessions(
        &self,
        user_id: &UserId,
        include_revoked: bool,
        page_size: u16,
        after: Option<SessionId>,
    ) -> Result<Page> {
        let now = self.now();
        let mut conn = self.pool.acquire().await?;
        // One row more than asked tells whether another page follows.
        let mut sessions = sessions::list_for_user(
            &mut conn,
            user_id,
            include_revoked,
            now,
            after,
            i64::from(page_size) + 1,
        )
        .await?;
        let next = (sessions.len() > usize::from(page_size)).then(|| {
            sessions.truncate(usize::from(page_size));
            sessions.last().map(|last| last.id)
        });
        Ok(Page {
            sessions,
            next: next.flatten(),
        })
    }

    /// Reads one session, live or not.
    #[tracing::instrument(name = "authority.get", skip_all, fields(session_id = %id))]
    pub async fn get_session(&self, id: SessionId) -> Result<Session> {
        sessions::find(&mut *self.pool.acquire().await?, id)
            .await?
            .ok_or(Error::SessionNotFound)
    }

    fn issue(
        &self,
        session: Session,
        refresh_token: RefreshToken,
        now: DateTime<Utc>,
    ) -> Result<Issued> {
        let access = self
            .access_tokens
            .issue(&session, now, self.policy.access_token_ttl)?;
        Ok(Issued {
            refresh_token_expires_at: session.idle_expires_at.min(session.expires_at),
            access_token: access.token,
            access_token_expires_at: access.expires_at,
            refresh_token,
            session,
        })
    }
}

/// Refuses a refresh of a session that is not live.
fn ensure_live(session: &Session, now: DateTime<Utc>) -> Result<()> {
    match session.state(now) {
        SessionState::Live => Ok(()),
        SessionState::Revoked => Err(Error::RefreshRefused(RefreshRefusal::SessionRevoked)),
        SessionState::Expired => Err(Error::RefreshRefused(RefreshRefusal::SessionExpired)),
    }
}
