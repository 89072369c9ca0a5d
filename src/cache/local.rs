//! The in-process tier: sessions and verified access tokens in a bounded moka cache, so a warm
//! `Validate` does no network I/O and no signature work.
//!
//! Entries live at most `ttl`, the longest this replica may act on a stale copy; revocations
//! from other replicas also evict entries at once through the invalidation channel.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use moka::{Expiry, future::Cache, ops::compute::Op};

use super::rank;
use crate::{
    domain::{Session, SessionId, UserId},
    token::VerifiedAccessToken,
};

/// Bounds of the in-process tier.
#[derive(Debug, Clone)]
pub struct LocalSettings {
    /// Longest an entry is trusted without hearing from the store.
    pub ttl: Duration,
    /// Most sessions and verified tokens held (each).
    pub max_entries: u64,
    /// Most bytes held (each, estimated).
    pub max_bytes: u64,
}

/// A cached session and its rank, so a stale write cannot replace a newer copy.
#[derive(Clone)]
struct Ranked {
    rank: i64,
    session: Arc<Session>,
}

/// Sessions and verified tokens in this process.
#[derive(Clone)]
pub struct LocalTier {
    sessions: Cache<SessionId, Ranked>,
    tokens: Cache<Arc<str>, Arc<VerifiedAccessToken>>,
    /// False while revocations made elsewhere could be missed (the invalidation channel is down):
    /// then sessions are neither served from here nor kept.
    trusted: Arc<AtomicBool>,
}

/// A verified token lives until its own `exp`, or the tier's TTL if sooner.
struct UntilTokenExpiry(Duration);

impl Expiry<Arc<str>, Arc<VerifiedAccessToken>> for UntilTokenExpiry {
    fn expire_after_create(
        &self,
        _token: &Arc<str>,
        verified: &Arc<VerifiedAccessToken>,
        _created_at: std::time::Instant,
    ) -> Option<Duration> {
        let until_exp = (verified.expires_at - chrono::Utc::now())
            .to_std()
            .unwrap_or_default();
        Some(until_exp.min(self.0))
    }
}

impl LocalTier {
    /// An empty tier with these bounds.
    pub fn new(settings: &LocalSettings) -> Self {
        // One weighted capacity bounds both: every entry weighs at least max_bytes / max_entries,
        // so no more than max_entries fit, and no more than max_bytes in all.
        let floor =
            u32::try_from(settings.max_bytes / settings.max_entries.max(1)).unwrap_or(u32::MAX);
        Self {
            sessions: Cache::builder()
                .max_capacity(settings.max_bytes)
                .weigher(move |_, ranked: &Ranked| estimated_size(&ranked.session).max(floor))
                .time_to_live(settings.ttl)
                .build(),
            tokens: Cache::builder()
                .max_capacity(settings.max_bytes)
                .weigher(move |token: &Arc<str>, _| {
                    let size = token.len() + std::mem::size_of::<VerifiedAccessToken>() + 64;
                    u32::try_from(size).unwrap_or(u32::MAX).max(floor)
                })
                .expire_after(UntilTokenExpiry(settings.ttl))
                .build(),
            trusted: Arc::new(AtomicBool::new(true)),
        }
    }

    /// Stops serving sessions from here; true if it was trusted until now.
    pub fn distrust(&self) -> bool {
        self.trusted.swap(false, Ordering::AcqRel)
    }

    /// Serves sessions from here again.
    pub fn trust(&self) {
        self.trusted.store(true, Ordering::Release);
    }

    /// The cached copy of a session of `user_id`.
    pub async fn get(&self, user_id: &UserId, session_id: SessionId) -> Option<Session> {
        if !self.trusted.load(Ordering::Acquire) {
            return None;
        }
        let ranked = self.sessions.get(&session_id).await?;
        (&ranked.session.user_id == user_id).then(|| Session::clone(&ranked.session))
    }

    /// Keeps `session` unless a copy of higher rank is already here.
    pub async fn put(&self, session: &Session) {
        if !self.trusted.load(Ordering::Acquire) {
            return;
        }
        let candidate = Ranked {
            rank: rank(session),
            session: Arc::new(session.clone()),
        };
        self.sessions
            .entry(session.id)
            .and_compute_with(|existing| async move {
                match existing {
                    Some(entry) if entry.value().rank >= candidate.rank => Op::Nop,
                    _ => Op::Put(candidate),
                }
            })
            .await;
    }

    /// Finishes moka's deferred bookkeeping (eviction order, weights), which otherwise runs a
    /// little later; for measurements that need the tier settled.
    pub async fn settle(&self) {
        self.sessions.run_pending_tasks().await;
        self.tokens.run_pending_tasks().await;
    }

    /// Drops a session, as told by another replica.
    pub async fn evict(&self, session_id: SessionId) {
        self.sessions.invalidate(&session_id).await;
    }

    /// Drops everything: after the invalidation channel was lost, nothing here can be trusted.
    pub fn clear(&self) {
        self.sessions.invalidate_all();
        self.tokens.invalidate_all();
    }

    /// Drops every verified token, as when a verification key is removed.
    pub fn forget_tokens(&self) {
        self.tokens.invalidate_all();
    }

    /// The verification of a token seen before.
    pub async fn verified_token(&self, token: &str) -> Option<Arc<VerifiedAccessToken>> {
        self.tokens.get(token).await
    }

    /// Remembers a token that verified.
    pub async fn remember_token(&self, token: &str, verified: VerifiedAccessToken) {
        self.tokens
            .insert(Arc::from(token), Arc::new(verified))
            .await;
    }
}

/// Bytes a cached session holds: the struct and its heap strings, plus moka's per-entry overhead.
fn estimated_size(session: &Session) -> u32 {
    let strings = session.user_id.as_str().len()
        + session.device.device_id.as_ref().map_or(0, String::len)
        + session.device.name.len()
        + session.device.user_agent.len()
        + session.revoke_reason.as_ref().map_or(0, String::len)
        + session
            .metadata
            .entries()
            .iter()
            .map(|(key, value)| key.len() + value.len() + 48)
            .sum::<usize>();
    u32::try_from(std::mem::size_of::<Session>() + strings + 128).unwrap_or(u32::MAX)
}
