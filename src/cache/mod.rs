//! The hot path: in-process tier → Redis → (miss: the caller reads the store).
//!
//! Either tier may be off: the embedded single-node mode has no Redis, and the local tier can be
//! disabled. The cache never fails a request; a tier in trouble reads as a miss. Revocations are
//! written to every tier before the caller is answered; new sessions and copies read from the
//! store are written to Redis in the background.
//!
//! Writers race: a validator may read a live row from the store just before a revocation commits,
//! and write it back just after the revocation updated the cache. So both tiers keep, of two
//! copies, the one with the higher [`rank`]: a session's rank only grows (with `last_seen_at`),
//! and revoked is the highest. A stale copy can never replace a newer one, nor resurrect a
//! revoked one.

mod local;
mod redis;

use std::sync::Arc;

use chrono::{DateTime, Utc};

pub use local::{LocalSettings, LocalTier};
pub use redis::{Gcra, Invalidation, RedisSettings, RedisTier};

use crate::{
    domain::{Session, SessionId, UserId},
    metrics,
    tasks::Tasks,
};

/// The rank of a revoked session: above any `last_seen_at` in microseconds, and exact in Lua's
/// doubles (2^53 - 1).
const REVOKED_RANK: i64 = 9_007_199_254_740_991;

/// Orders copies of one session: newer activity ranks higher, revoked ranks highest.
fn rank(session: &Session) -> i64 {
    match session.revoked_at {
        Some(_) => REVOKED_RANK,
        None => session.last_seen_at.timestamp_micros(),
    }
}

/// Both tiers.
#[derive(Clone)]
pub struct SessionCache {
    local: Option<LocalTier>,
    redis: Option<RedisTier>,
    /// The Redis writes made in the background, so shutdown can wait for them.
    background_writes: tokio_util::task::TaskTracker,
}

impl SessionCache {
    /// A cache over these tiers.
    pub fn new(local: Option<LocalTier>, redis: Option<RedisTier>) -> Self {
        Self {
            local,
            redis,
            background_writes: tokio_util::task::TaskTracker::new(),
        }
    }

    /// With both tiers, other replicas revoke too: the in-process tier hears of it on Redis's
    /// invalidation channel, and is trusted only while subscribed. `announced` is told whenever a
    /// replica announces a revocation (or announcements may have been missed): the revocation
    /// feed's wake-up.
    pub fn listen_for_invalidations(
        &self,
        tasks: &Tasks,
        announced: impl Fn() + Send + 'static,
    ) -> anyhow::Result<()> {
        let (Some(local), Some(redis)) = (&self.local, &self.redis) else {
            return Ok(());
        };
        local.distrust();
        let local = local.clone();
        redis.subscribe(
            move |event| {
                if matches!(
                    event,
                    Invalidation::Dropped(_) | Invalidation::Subscribed | Invalidation::Missed
                ) {
                    announced();
                }
                local_hears(&local, event);
            },
            tasks,
        )
    }

    /// The cached copy of a session, from the nearest tier that has it.
    pub async fn get(&self, user_id: &UserId, session_id: SessionId) -> Option<Arc<Session>> {
        if let Some(local) = &self.local {
            let session = local.get(user_id, session_id);
            metrics::cache_lookup(metrics::CacheTier::Local, session.is_some());
            if session.is_some() {
                return session;
            }
        }
        // In doubt, Redis may serve a live copy of a revoked session: the store answers.
        let redis = self.redis.as_ref().filter(|redis| redis.readable())?;
        // Boxed, so that a local hit's future is not as large as a Redis command's.
        let session = Box::pin(redis.get(user_id, session_id)).await;
        metrics::cache_lookup(metrics::CacheTier::Redis, session.is_some());
        let session = Arc::new(session?);
        if let Some(local) = &self.local {
            local.put(&session);
        }
        Some(session)
    }

    /// Tells every tier about these sessions, all of one user.
    pub async fn put_before_answering(&self, sessions: &[Session], now: DateTime<Utc>) {
        for session in sessions {
            self.put_local(session);
        }
        if let Some(redis) = &self.redis {
            redis.put(sessions, now).await;
        }
    }

    /// Tells every replica that a revocation was logged that rewrote no copy (a user's sign-out
    /// everywhere), so that they read the revocation log now.
    pub async fn announce_logged(&self) {
        if let Some(redis) = &self.redis {
            redis.announce_logged().await;
        }
    }

    /// Deletes the Redis copies of these sessions, all of `user_id`; true if Redis took the delete
    /// (or there is no Redis). The erasure calls it before it deletes the store's rows: once they
    /// are gone, nothing could repair a live copy Redis kept (see `authority`).
    pub async fn delete_shared(&self, user_id: &UserId, sessions: &[SessionId]) -> bool {
        match &self.redis {
            Some(redis) => redis.delete(user_id, sessions).await,
            None => true,
        }
    }

    /// Deletes every copy of these sessions, all of `user_id`: in Redis, then in process (so a
    /// Validate in between cannot copy Redis's back), and, through the invalidation channel, in
    /// every other replica's process.
    pub async fn delete_everywhere(&self, user_id: &UserId, sessions: &[SessionId]) {
        if let Some(redis) = &self.redis {
            redis.delete(user_id, sessions).await;
        }
        if let Some(local) = &self.local {
            for &session in sessions {
                local.evict(session);
            }
        }
        if let Some(redis) = &self.redis {
            redis.announce_dropped(sessions).await;
        }
    }

    /// Keeps a live copy just created or read from the store: in process at once, and in Redis in
    /// the background, so the caller does not wait for it. (Ranks make a late write harmless: it
    /// cannot replace a newer copy or a revocation.)
    pub fn put_in_background(&self, session: &Session, now: DateTime<Utc>) {
        self.put_local(session);
        if let Some(redis) = &self.redis {
            let (redis, session) = (redis.clone(), session.clone());
            self.background_writes
                .spawn(async move { redis.put(std::slice::from_ref(&session), now).await });
        }
    }

    /// Waits for the background writes made so far (each bounded by the Redis timeout); at
    /// shutdown, after the last of them was started.
    pub async fn finish_background_writes(&self) {
        self.background_writes.close();
        self.background_writes.wait().await;
    }

    /// The Redis tier, if there is one (for the reconciler).
    pub fn redis(&self) -> Option<&RedisTier> {
        self.redis.as_ref()
    }

    /// Tells the in-process tier only about `session`.
    fn put_local(&self, session: &Session) {
        if let Some(local) = &self.local {
            local.put(&Arc::new(session.clone()));
        }
    }
}

/// What the in-process tier does with what the invalidation channel says.
fn local_hears(local: &LocalTier, event: Invalidation) {
    match event {
        Invalidation::Subscribed => {
            // Announcements made before this moment may be lost: start empty.
            local.clear();
            local.trust();
            tracing::info!("subscribed to invalidations; in-process tier trusted");
        }
        Invalidation::Lost(error) => {
            if local.distrust() {
                tracing::warn!(%error, "lost the invalidation channel; in-process tier bypassed until resubscribed");
            }
            local.clear();
        }
        Invalidation::Reconnecting => {
            local.distrust();
        }
        Invalidation::Dropped(sessions) => {
            for session in sessions {
                local.evict(session);
            }
        }
        // Copies read from Redis before a doubt may be stale, and missed announcements may have
        // named any copy.
        Invalidation::Missed | Invalidation::RedisDoubted => local.clear(),
    }
}
