//! The in-process tier: sessions in a bounded moka cache, so a warm `Validate` does no network
//! I/O.
//!
//! Entries live at most `ttl`, the longest this replica may act on a stale copy; revocations
//! from other replicas also evict entries at once through the invalidation channel.
//!
//! moka's synchronous cache is used from async code on purpose: a lookup is a lock-free map read
//! that never waits on I/O, and its futures-based twin makes every caller's future several times
//! larger (and so slower to move and poll) for no gain.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use moka::{ops::compute::Op, sync::Cache};

use super::rank;
use crate::domain::{Session, SessionId, UserId};

/// Bounds of the in-process tier (the verified-token memo is given the same numbers).
#[derive(Debug, Clone)]
pub struct LocalSettings {
    /// Longest an entry is trusted without hearing from the store.
    pub ttl: Duration,
    /// Most entries held.
    pub max_entries: u64,
    /// Most bytes held (estimated).
    pub max_bytes: u64,
}

impl LocalSettings {
    /// The least weight an entry counts for, so that one weighted capacity of `max_bytes` bounds
    /// both: no more than `max_entries` fit, and no more than `max_bytes` in all.
    pub(super) fn weight_floor(&self) -> u32 {
        u32::try_from(self.max_bytes / self.max_entries.max(1)).unwrap_or(u32::MAX)
    }
}

/// A cached session and its rank, so a stale write cannot replace a newer copy.
#[derive(Clone)]
struct Ranked {
    rank: i64,
    session: Arc<Session>,
}

/// Sessions in this process.
#[derive(Clone)]
pub struct LocalTier {
    sessions: Cache<SessionId, Ranked>,
    /// False while revocations made elsewhere could be missed (the invalidation channel is down):
    /// then sessions are neither served from here nor kept.
    trusted: Arc<AtomicBool>,
}

impl LocalTier {
    /// An empty tier with these bounds.
    pub fn new(settings: &LocalSettings) -> Self {
        let floor = settings.weight_floor();
        Self {
            sessions: Cache::builder()
                .max_capacity(settings.max_bytes)
                .weigher(move |_, ranked: &Ranked| estimated_size(&ranked.session).max(floor))
                .time_to_live(settings.ttl)
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
    pub fn get(&self, user_id: &UserId, session_id: SessionId) -> Option<Arc<Session>> {
        if !self.trusted.load(Ordering::Acquire) {
            return None;
        }
        let ranked = self.sessions.get(&session_id)?;
        (&ranked.session.user_id == user_id).then_some(ranked.session)
    }

    /// Keeps `session` unless a copy of higher rank is already here.
    pub fn put(&self, session: &Arc<Session>) {
        if !self.trusted.load(Ordering::Acquire) {
            return;
        }
        let candidate = Ranked {
            rank: rank(session),
            session: Arc::clone(session),
        };
        self.sessions
            .entry(session.id)
            .and_compute_with(|existing| match existing {
                Some(entry) if entry.value().rank >= candidate.rank => Op::Nop,
                _ => Op::Put(candidate),
            });
    }

    /// Finishes moka's deferred bookkeeping (eviction order, weights), which otherwise runs a
    /// little later; for measurements that need the tier settled.
    pub fn settle(&self) {
        self.sessions.run_pending_tasks();
    }

    /// Drops a session, as told by another replica.
    pub fn evict(&self, session_id: SessionId) {
        self.sessions.invalidate(&session_id);
    }

    /// Drops everything: after the invalidation channel was lost, nothing here can be trusted.
    pub fn clear(&self) {
        self.sessions.invalidate_all();
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
