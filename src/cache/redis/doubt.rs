//! Whether Redis's copies may be read.
//!
//! A revocation commits in the store, then its revoked copy is written to Redis. When Redis
//! refuses that write (out of memory, a read-only replica, an ACL, down), the live copy stays in
//! Redis, readable by every replica until its TTL. So any sign that a write may have been lost
//! raises a *doubt*: a write of this replica's failed, the write probe failed, the invalidation
//! channel was lost (announcements made meanwhile are gone), or another replica announced a
//! revocation it could not write. While in doubt, Redis is not read: the store answers. The doubt
//! clears only when the reconciler (`authority/reconcile.rs`) has copied into Redis every
//! revocation the store recorded since shortly before the doubt, with no new doubt meanwhile.

use std::{
    sync::{
        Mutex, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
    time::Instant,
};

use tokio::sync::Notify;

use crate::metrics;

/// Doubts raised and cleared: Redis is trusted while every doubt raised is cleared.
#[derive(Default)]
pub(super) struct Doubt {
    /// Bumped by every doubt.
    raised: AtomicU64,
    /// The `raised` count the last reconcile covered.
    cleared: AtomicU64,
    /// When the oldest doubt not yet cleared was raised.
    since: Mutex<Option<Instant>>,
    /// Wakes whoever must drop copies read from Redis before the doubt (the in-process tier).
    notify: Notify,
}

/// A doubt not yet cleared, as the reconciler saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Doubted {
    /// When it was raised: revocations from shortly before this on may be missing from Redis.
    pub since: Instant,
    /// Doubts raised until then; a reconcile clears them only if no other came in meanwhile.
    raised: u64,
}

impl Doubt {
    /// In doubt from the start: a replica that starts cannot know which revocations it missed.
    pub(super) fn starting() -> Self {
        let doubt = Self::default();
        doubt.raised.store(1, Ordering::Release);
        *doubt.since.lock().unwrap_or_else(PoisonError::into_inner) = Some(Instant::now());
        doubt
    }

    /// Raises a doubt: Redis is not read until a reconcile clears it.
    pub(super) fn raise(&self, why: &'static str) {
        let mut since = self.since.lock().unwrap_or_else(PoisonError::into_inner);
        self.raised.fetch_add(1, Ordering::AcqRel);
        if since.is_none() {
            *since = Some(Instant::now());
            metrics::redis_trusted(false);
            tracing::warn!(
                "{why}: Redis may hold copies of revoked sessions; reading the store until it is reconciled"
            );
        }
        drop(since);
        self.notify.notify_one();
    }

    /// The doubts raised so far, if Redis is trusted now: a read made while it was trusted is
    /// still good only if [`Self::unchanged`] says so after it.
    pub(super) fn trusted(&self) -> Option<u64> {
        let raised = self.raised.load(Ordering::Acquire);
        (raised == self.cleared.load(Ordering::Acquire)).then_some(raised)
    }

    /// True if no doubt was raised since [`Self::trusted`] returned `raised`.
    pub(super) fn unchanged(&self, raised: u64) -> bool {
        self.raised.load(Ordering::Acquire) == raised
    }

    /// The doubt not yet cleared, if any.
    pub(super) fn pending(&self) -> Option<Doubted> {
        let since = self.since.lock().unwrap_or_else(PoisonError::into_inner);
        since.map(|since| Doubted {
            since,
            raised: self.raised.load(Ordering::Acquire),
        })
    }

    /// Clears `doubted` after a reconcile that began after it was read; false (still in doubt) if
    /// another doubt came in meanwhile, since the reconcile may have missed its revocation.
    pub(super) fn clear(&self, doubted: Doubted) -> bool {
        let mut since = self.since.lock().unwrap_or_else(PoisonError::into_inner);
        if self.raised.load(Ordering::Acquire) != doubted.raised {
            return false;
        }
        self.cleared.store(doubted.raised, Ordering::Release);
        *since = None;
        metrics::redis_trusted(true);
        true
    }

    /// Resolves when a doubt is raised (or was raised since the last call).
    pub(super) async fn raised(&self) {
        self.notify.notified().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redis_is_trusted_until_a_doubt_and_again_once_it_is_cleared() {
        let doubt = Doubt::default();
        let before = doubt.trusted().expect("trusted at start");
        assert_eq!(doubt.pending(), None);

        doubt.raise("a write failed");
        assert_eq!(doubt.trusted(), None);
        assert!(!doubt.unchanged(before), "a read in flight is not trusted");
        let doubted = doubt.pending().expect("in doubt");

        assert!(doubt.clear(doubted));
        assert!(doubt.trusted().is_some());
        assert_eq!(doubt.pending(), None);
    }

    #[test]
    fn a_doubt_raised_during_a_reconcile_keeps_redis_in_doubt_from_the_first_one() {
        let doubt = Doubt::default();
        doubt.raise("a write failed");
        let doubted = doubt.pending().expect("in doubt");

        doubt.raise("another write failed"); // while the reconcile runs
        assert!(!doubt.clear(doubted), "the reconcile may have missed it");
        assert_eq!(doubt.trusted(), None);
        let again = doubt.pending().expect("still in doubt");
        assert_eq!(again.since, doubted.since, "from the oldest doubt on");
        assert!(doubt.clear(again));
        assert!(doubt.trusted().is_some());
    }
}
