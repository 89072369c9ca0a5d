//! The session rules: create, validate, refresh (rotation and reuse detection), revoke, list.
//!
//! Writes commit in the store first, then the cache is told; a cache failure never fails a
//! request. Reads try the cache, then the store, and write what the store said back into the cache.

mod activity;
mod policy;
mod reconcile;
mod rules;

use std::sync::Arc;

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use chrono::{DateTime, DurationRound, TimeDelta, Utc};

use activity::ActivityRecorder;
pub use policy::{AtLimit, IpPrivacy, Policy};

use crate::{
    cache::SessionCache,
    clock::Clock,
    domain::{
        Device, Metadata, RevokeReason, Session, SessionFilter, SessionId, SessionState, UserId,
    },
    error::{Error, Refusal, Result},
    limits::{Limit, RateLimiter, Requester},
    metrics,
    revocations::RevocationFeed,
    store::{
        Admission, NewSession, RefreshOutcome, RefreshState, RevokeOutcome, SessionStore,
        SuccessorSalt,
    },
    tasks::{Stage, Tasks},
    token::{
        Keys, MAX_ACCESS_TOKEN_BYTES, RefreshToken, TokenHash, VerifiedAccessToken, VerifiedTokens,
    },
};

/// Most of one user's sessions RevokeUserSessions revokes, and DeleteUserSessions erases, and
/// each writes to (or deletes from) the caches, at a time.
const USER_SESSIONS_BATCH: usize = 1_000;

/// Live sessions RevokeSessions reads (and revokes) per statement.
const FILTER_PAGE: usize = 1_000;

/// What CreateSession needs.
#[derive(Debug)]
pub struct SessionRequest {
    pub user_id: UserId,
    pub device: Device,
    pub metadata: Metadata,
    /// Requested lifetime; capped by the policy.
    pub lifetime: Option<std::time::Duration>,
}

/// A session and the tokens just issued for it. `Debug` shows neither token.
pub struct Issued {
    pub session: Session,
    pub access_token: String,
    pub access_token_expires_at: DateTime<Utc>,
    pub refresh_token: RefreshToken,
    /// The refresh token works until the session ends, which activity may push forward.
    pub refresh_token_expires_at: DateTime<Utc>,
}

impl std::fmt::Debug for Issued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issued")
            .field("session", &self.session)
            .field("access_token", &"[redacted]")
            .field("access_token_expires_at", &self.access_token_expires_at)
            .field("refresh_token", &self.refresh_token)
            .field("refresh_token_expires_at", &self.refresh_token_expires_at)
            .finish()
    }
}

/// The answer of `Validate`.
#[derive(Debug)]
pub enum Verdict {
    Valid(Arc<Session>),
    /// Not an error: the caller gets it as a normal answer.
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
    store: Arc<dyn SessionStore>,
    cache: SessionCache,
    /// The revocations read from the store's log: what `Validate` refuses whatever a cached copy
    /// says, and what WatchRevocations streams.
    revocations: Arc<RevocationFeed>,
    /// Access tokens verified before, by their bytes.
    verified: VerifiedTokens,
    keys: Keys,
    policy: Policy,
    clock: Arc<dyn Clock>,
    /// Notes validated sessions' activity, for a background writer.
    activity: ActivityRecorder,
    limiter: RateLimiter,
}

impl Authority {
    /// An authority over these stores, keys and rules; its background writers run in `tasks`.
    #[allow(clippy::too_many_arguments)] // each is a part the authority is built of
    pub fn new(
        store: Arc<dyn SessionStore>,
        cache: SessionCache,
        revocations: Arc<RevocationFeed>,
        verified: VerifiedTokens,
        keys: Keys,
        policy: Policy,
        clock: Arc<dyn Clock>,
        tasks: &Tasks,
    ) -> Self {
        let limiter = RateLimiter::new(policy.rates, cache.redis().cloned());
        let activity =
            ActivityRecorder::start(store.clone(), cache.clone(), clock.clone(), &policy, tasks);
        if let Some(redis) = cache.redis() {
            tasks.spawn_until_stopped(
                "redis reconciler",
                Stage::Serving,
                reconcile::run(store.clone(), redis.clone(), clock.clone()),
            );
        }
        Self {
            store,
            cache,
            revocations,
            verified,
            keys,
            policy,
            clock,
            activity,
            limiter,
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
    pub async fn create_session(
        &self,
        new: SessionRequest,
        requester: Option<Requester<'_>>,
    ) -> Result<Issued> {
        if let Some(requester) = requester {
            self.limiter.take_for_caller(requester).await?;
        }
        self.limiter
            .take(Limit::CreatePerUser, new.user_id.as_str())
            .await?;
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
            device: match self.policy.ip_privacy {
                IpPrivacy::Full => new.device,
                IpPrivacy::Truncate => new.device.with_truncated_ip(),
            },
            metadata: new.metadata,
            created_at: now,
            last_seen_at: now,
            expires_at,
            idle_expires_at: (now + self.policy.idle_timeout).min(expires_at),
            revoked_at: None,
            revoke_reason: None,
        };
        let refresh_token = RefreshToken::generate()?;

        let admit = |live| rules::admission(&self.policy, live);
        let limited = self.policy.max_sessions_per_user > 0;
        let create = NewSession {
            session,
            refresh_token: refresh_token.hash(),
            now,
        };
        let revoked = self
            .store
            .create(&create, limited.then_some(&admit as Admission<'_>))
            .await?;
        let session = create.session;
        metrics::session_created();
        for revoked in &revoked {
            metrics::sessions_revoked(revoked.revoke_reason.as_deref().unwrap_or_default(), 1);
        }
        // Revocations reach every tier (and replica) before the answer. The new session reaches
        // Redis in the background: the caller need not wait, but it should be there when
        // Postgres is not, so that it keeps validating through an outage.
        if !revoked.is_empty() {
            self.cache.put_before_answering(&revoked, now).await;
            self.revocations.wake();
        }
        self.cache.put_in_background(&session, now);
        tracing::info!(session_id = %session.id, user_id = %session.user_id, revoked = revoked.len(), "session created");
        self.issue(session, refresh_token, now)
    }

    /// Checks an access token, then that its session is live.
    #[tracing::instrument(name = "authority.validate", skip_all)]
    pub async fn validate(&self, access_token: &str) -> Result<Verdict> {
        let now = self.now();
        let claims = match self.verify(access_token, now) {
            Ok(claims) => claims,
            Err(rejection) => return Ok(Verdict::Refused(rejection)),
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
            // Boxed: the store's future is large, and would make every warm call's future as
            // large (and as slow to move) if it were inline.
            None => match Box::pin(self.load(&claims, now)).await? {
                Some(session) => session,
                None => return Ok(Verdict::Refused(Refusal::SessionNotFound)),
            },
        };
        // A copy may predate a revocation the log holds (its Redis write lost, or its user signed
        // out everywhere, which rewrites no copy).
        if self.revocations.refuses(&session) {
            return Ok(Verdict::Refused(Refusal::SessionRevoked));
        }
        Ok(match session.state(now) {
            SessionState::Revoked => Verdict::Refused(Refusal::SessionRevoked),
            SessionState::Expired => Verdict::Refused(Refusal::SessionExpired),
            SessionState::Live => {
                self.activity.note(&session, now, &self.policy);
                Verdict::Valid(session)
            }
        })
    }

    /// Reads the token's session from the store, and copies it into the cache.
    async fn load(
        &self,
        claims: &VerifiedAccessToken,
        now: DateTime<Utc>,
    ) -> Result<Option<Arc<Session>>> {
        let stored = self.store.find(claims.session_id).await?;
        let Some(session) = stored.filter(|session| session.user_id == claims.user_id) else {
            return Ok(None);
        };
        self.cache.put_in_background(&session, now);
        Ok(Some(Arc::new(session)))
    }

    /// Verifies an access token, or recalls that its exact bytes verified before; either way,
    /// judges its expiry at `now`.
    fn verify(
        &self,
        access_token: &str,
        now: DateTime<Utc>,
    ) -> Result<Arc<VerifiedAccessToken>, Refusal> {
        // Refused before it is hashed, base64-decoded or parsed: sessiond's tokens are far shorter.
        if access_token.len() > MAX_ACCESS_TOKEN_BYTES {
            return Err(Refusal::Malformed);
        }
        let remembered = self.verified.get(access_token, &self.keys.signer);
        metrics::cache_lookup(metrics::CacheTier::Token, remembered.is_some());
        if let Some(verified) = remembered {
            return if now < verified.expires_at {
                Ok(verified)
            } else {
                Err(Refusal::TokenExpired)
            };
        }
        let verified = Arc::new(self.keys.signer.verify(access_token, now)?);
        self.verified.remember(access_token, Arc::clone(&verified));
        Ok(verified)
    }

    /// Exchanges a refresh token for its successor; see `rules::refresh` for the rotation rules.
    #[tracing::instrument(name = "authority.refresh", skip_all)]
    pub async fn refresh(&self, presented: RefreshToken) -> Result<Issued> {
        let now = self.now();
        // The presented token's successors under each key, newest first, derived with `salt`.
        let successors = |salt: &SuccessorSalt| {
            self.keys
                .refresh_keys
                .map_newest_first(|key| presented.successor(key, salt))
        };
        let successor_hashes =
            |salt: &SuccessorSalt| successors(salt).iter().map(RefreshToken::hash).collect();
        let new_salt = RefreshToken::new_salt()?;
        let decide = |state: RefreshState<'_>| {
            rules::refresh(&self.policy, &state, &successor_hashes, new_salt, now)
        };
        let issued_successor = |hash: TokenHash, salt: &SuccessorSalt| {
            successors(salt)
                .into_iter()
                .find(|successor| successor.hash() == hash)
                .ok_or_else(|| {
                    Error::Internal(anyhow::anyhow!(
                        "the store answered with an unknown successor"
                    ))
                })
        };
        // The per-session count travels with the token chain: a session has one current token,
        // so its chain is the session. It is read under the presented token's hash before the
        // store is touched (a limited refresh costs no write), and moved on to the successor
        // only when a rotation happened: a retry within the grace window, which gets the same
        // successor, is never counted.
        let presented_key = rate_key(&presented.hash());
        let tat = self
            .limiter
            .peek(Limit::RefreshPerSession, &presented_key)
            .await?;
        match self.store.refresh(&presented.hash(), now, &decide).await? {
            RefreshOutcome::Rotated(session, hash) => {
                // The rotation is committed and must be answered; a refusal here (the window
                // closed since the peek) only leaves the successor uncounted.
                let _ = self
                    .limiter
                    .take_from(Limit::RefreshPerSession, &rate_key(&hash), tat)
                    .await;
                metrics::session_refreshed();
                self.cache
                    .put_before_answering(std::slice::from_ref(&session), now)
                    .await;
                self.issue(session, issued_successor(hash, &new_salt)?, now)
            }
            RefreshOutcome::Repeated(session, hash, salt) => {
                self.issue(session, issued_successor(hash, &salt)?, now)
            }
            RefreshOutcome::Revoked(session) => {
                metrics::refresh_token_reuse();
                metrics::sessions_revoked(RevokeReason::REFRESH_TOKEN_REUSE, 1);
                tracing::warn!(
                    session_id = %session.id,
                    user_id = %session.user_id,
                    "refresh token reused after rotation; session revoked"
                );
                self.cache
                    .put_before_answering(std::slice::from_ref(&session), now)
                    .await;
                self.revocations.wake();
                Err(Error::RefreshRefused(Refusal::RefreshTokenReused))
            }
        }
    }

    /// Revokes one session. `Ok(false)` when it already was revoked. With `owner`, a session of
    /// another user is not found.
    #[tracing::instrument(name = "authority.revoke", skip_all, fields(session_id = %id))]
    pub async fn revoke_session(
        &self,
        id: SessionId,
        owner: Option<&UserId>,
        reason: RevokeReason,
    ) -> Result<bool> {
        if owner.is_some() {
            // A session's user never changes, so a check before the revoke cannot go stale.
            self.get_session(id, owner).await?;
        }
        let now = self.now();
        match self.store.revoke(id, now, &reason).await? {
            RevokeOutcome::Revoked(revoked) => {
                metrics::sessions_revoked(reason.as_str(), 1);
                self.cache.put_before_answering(&[*revoked], now).await;
                self.revocations.wake();
                Ok(true)
            }
            RevokeOutcome::AlreadyRevoked => Ok(false),
            RevokeOutcome::NotFound => Err(Error::SessionNotFound),
        }
    }

    /// Revokes every session of a user but `except`; returns how many live sessions it revoked.
    /// Without `except`, in O(1) of their number (see [`Authority::sign_out_everywhere`]); with
    /// it, row by row.
    #[tracing::instrument(name = "authority.revoke_user", skip_all, fields(user_id = %user_id))]
    pub async fn revoke_user_sessions(
        &self,
        user_id: &UserId,
        except: Option<SessionId>,
        reason: RevokeReason,
    ) -> Result<usize> {
        let now = self.now();
        if except.is_none() {
            return self.sign_out_everywhere(user_id, &reason, now).await;
        }
        let revoked = self
            .revoke_user_in_batches(user_id, except, &reason, now)
            .await?;
        self.revocations.wake();
        Ok(revoked)
    }

    /// Signs the user out everywhere by a not-before instant (see
    /// [`SessionStore::sign_out_user`]): this replica refuses their sessions before it answers,
    /// the others once they read the log (at the announcement, or their next poll). The rows are
    /// marked afterwards, batch by batch; a replica stopped part way leaves the rest to the
    /// sweeper, and until then the store's reads apply the instant.
    async fn sign_out_everywhere(
        &self,
        user_id: &UserId,
        reason: &RevokeReason,
        now: DateTime<Utc>,
    ) -> Result<usize> {
        let sign_out = self.store.sign_out_user(user_id, now, reason).await?;
        let revoked = usize::try_from(sign_out.revoked_count).unwrap_or(usize::MAX);
        metrics::sessions_revoked(reason.as_str(), revoked);
        self.revocations.catch_up().await;
        self.cache.announce_logged().await;
        tracing::info!(user_id = %user_id, revoked, not_before = %sign_out.not_before, "user signed out everywhere");
        let (store, user_id) = (self.store.clone(), user_id.clone());
        tokio::spawn(async move {
            if let Err(error) = crate::sweeper::mark_sign_out(store.as_ref(), &user_id).await {
                tracing::warn!(error = %error.cause_chain(), "marking a sign-out's sessions failed; the sweeper finishes it");
            }
        });
        Ok(revoked)
    }

    /// Revokes every live session `filter` matches (with `dry_run`, counts them); returns how
    /// many matched and how many this call revoked. Page by page, each revoked page logged and
    /// announced, so memory stays bounded; cut by the deadline part way, what it revoked stays
    /// revoked and a retry carries on. The caches are not rewritten: every replica refuses the
    /// sessions from the revocation log, which it reads at the announcement.
    #[tracing::instrument(name = "authority.revoke_matching", skip_all)]
    pub async fn revoke_sessions(
        &self,
        filter: &SessionFilter,
        reason: RevokeReason,
        dry_run: bool,
    ) -> Result<(u64, u64)> {
        let now = self.now();
        let (mut matched, mut revoked) = (0, 0);
        let mut after = None;
        loop {
            let page = self
                .store
                .revoke_matching(filter, now, &reason, dry_run, after, FILTER_PAGE)
                .await?;
            matched += page.matched;
            revoked += page.revoked;
            if page.revoked > 0 {
                metrics::sessions_revoked(
                    reason.as_str(),
                    usize::try_from(page.revoked).unwrap_or(usize::MAX),
                );
                self.revocations.catch_up().await;
                self.cache.announce_logged().await;
            }
            match page.next {
                Some(next) => after = Some(next),
                None => break,
            }
        }
        tracing::info!(matched, revoked, dry_run, "sessions revoked by filter");
        Ok((matched, revoked))
    }

    /// A WatchRevocations stream (see [`RevocationFeed::watch`]).
    pub async fn watch_revocations(
        &self,
        after: Option<crate::domain::Cursor>,
    ) -> Result<tokio::sync::mpsc::Receiver<Result<crate::revocations::Watched>>> {
        self.revocations.watch(after).await
    }

    /// When a token refused by `revocation` can no longer be live.
    pub fn tokens_expire_before(&self, revocation: &crate::domain::Revocation) -> DateTime<Utc> {
        self.revocations.tokens_expire_before(revocation)
    }

    /// Revokes every unrevoked session of a user but `except`, batch by batch, each revoked and
    /// then written to the caches (and announced to the other replicas), so that neither memory
    /// nor any one statement or Redis command grows with the number of sessions. A failure part
    /// way leaves the batches before it revoked; a retry revokes the rest.
    async fn revoke_user_in_batches(
        &self,
        user_id: &UserId,
        except: Option<SessionId>,
        reason: &RevokeReason,
        now: DateTime<Utc>,
    ) -> Result<usize> {
        let mut revoked_count = 0;
        loop {
            let revoked = self
                .store
                .revoke_user(user_id, except, now, reason, USER_SESSIONS_BATCH)
                .await?;
            metrics::sessions_revoked(reason.as_str(), revoked.len());
            self.cache.put_before_answering(&revoked, now).await;
            revoked_count += revoked.len();
            if revoked.len() < USER_SESSIONS_BATCH {
                return Ok(revoked_count);
            }
        }
    }

    /// Erases every session of a user, live or not: the rows with their refresh tokens, their
    /// cached copies in every tier and replica, and the user's and tokens' rate-limit state.
    /// Returns how many session rows it deleted.
    ///
    /// First the user is signed out everywhere, as RevokeUserSessions does. From then on every
    /// tier answers revoked, and a copy written back late by a call that read a session before
    /// (a Validate's fill, a Refresh that had just rotated) cannot replace the revoked one, which
    /// outranks it. A session created while this runs is kept: it is later than the erasure.
    ///
    /// Then, batch by batch, as bounded as the revocation: the Redis copies are deleted *before*
    /// the rows. A copy Redis failed to revoke (its write refused) may be live, and only the
    /// reconciler, reading the store's revoked row, would repair it; deleted rows leave it
    /// nothing to read. So if Redis does not take that delete, this stops with UNAVAILABLE and
    /// the batch's rows stay, revoked, for a retry. After the rows go, the copies are deleted
    /// again, in process too and on every replica: a call that read a (revoked) row before it
    /// went may have copied it back meanwhile. Not caught: a copy that a call read before the
    /// erasure began and writes to Redis only after its batch is gone (README, Personal data).
    #[tracing::instrument(name = "authority.erase_user", skip_all, fields(user_id = %user_id))]
    pub async fn delete_user_sessions(&self, user_id: &UserId) -> Result<usize> {
        let reason = RevokeReason::internal(RevokeReason::ERASED);
        self.revoke_user_in_batches(user_id, None, &reason, self.now())
            .await?;
        let mut erased_count = 0;
        loop {
            let batch = self
                .store
                .revoked_of_user(user_id, USER_SESSIONS_BATCH)
                .await?;
            let Some(&through) = batch.sessions.last() else {
                break;
            };
            if !self.cache.delete_shared(user_id, &batch.sessions).await {
                return Err(Error::CacheUnavailable);
            }
            let mut deleted = self.store.delete_revoked(user_id, through).await?;
            metrics::sessions_erased(deleted.len());
            erased_count += deleted.len();
            // The copies of the batch's sessions the sweeper deleted in between go too, and those
            // of a session that joined the batch (see `SessionStore::delete_revoked`).
            deleted.extend_from_slice(&batch.sessions);
            deleted.sort_unstable();
            deleted.dedup();
            self.cache.delete_everywhere(user_id, &deleted).await;
            let token_keys = batch.refresh_tokens.iter().map(rate_key);
            self.limiter
                .forget(Limit::RefreshPerSession, token_keys)
                .await;
            if batch.sessions.len() < USER_SESSIONS_BATCH {
                break;
            }
        }
        self.limiter
            .forget(Limit::CreatePerUser, [user_id.as_str()])
            .await;
        tracing::info!(user_id = %user_id, erased = erased_count, "user's sessions erased");
        Ok(erased_count)
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
        // One row more than asked tells whether another page follows.
        let mut sessions = self
            .store
            .list(
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

    /// Reads the key files again (key rotation). When a verification key is gone, forgets every
    /// cached token verification, so tokens it signed stop validating at once.
    pub fn reload_keys(&self) -> anyhow::Result<()> {
        if let Some(change) = self.keys.reload()? {
            metrics::signing_keys(self.keys.signer.verification_keys().len());
            if change.added > 0 || !change.removed.is_empty() {
                tracing::info!(added = change.added, removed = change.removed.len(), kid = %change.signing_kid, "signing keys rotated");
            }
            if !change.removed.is_empty() {
                self.verified.clear();
                self.log_removed_keys(change.removed);
            }
        }
        Ok(())
    }

    /// Logs the removed keys in the revocation log, in the background, so that services that
    /// verify tokens locally stop accepting what they signed (this replica already does). A
    /// failure is logged; another replica that reloads the same files logs them too.
    fn log_removed_keys(&self, removed: Vec<String>) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (store, revocations, now) = (self.store.clone(), self.revocations.clone(), self.now());
        runtime.spawn(async move {
            for kid in &removed {
                if let Err(error) = store.record_removed_signing_key(kid, now).await {
                    tracing::warn!(kid, error = %error.cause_chain(), "cannot log a removed signing key");
                }
            }
            revocations.wake();
        });
    }

    /// The public verification keys as a JSON Web Key Set.
    pub fn jwks(&self) -> serde_json::Value {
        self.keys.signer.jwks()
    }

    /// Reads one session, live or not. With `owner`, a session of another user is not found.
    #[tracing::instrument(name = "authority.get", skip_all, fields(session_id = %id))]
    pub async fn get_session(&self, id: SessionId, owner: Option<&UserId>) -> Result<Session> {
        self.store
            .find(id)
            .await?
            .filter(|session| owner.is_none_or(|owner| session.user_id == *owner))
            .ok_or(Error::SessionNotFound)
    }

    fn issue(
        &self,
        session: Session,
        refresh_token: RefreshToken,
        now: DateTime<Utc>,
    ) -> Result<Issued> {
        let access = self
            .keys
            .signer
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

/// The rate-limit key of a refresh token: its hash, never the token.
fn rate_key(hash: &TokenHash) -> String {
    URL_SAFE_NO_PAD.encode(hash.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_issued_pair_prints_without_its_tokens() {
        let now = Utc::now();
        let issued = Issued {
            session: Session::example(now),
            access_token: "eyJhbGciOiJFZERTQSJ9.claims.signature".into(),
            access_token_expires_at: now,
            refresh_token: RefreshToken::generate().expect("random"),
            refresh_token_expires_at: now,
        };
        let printed = format!("{issued:?}");
        assert!(!printed.contains("eyJ"), "{printed}");
        assert!(
            !printed.contains(issued.refresh_token.expose()),
            "{printed}"
        );
    }
}
