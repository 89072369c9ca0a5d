//! The Redis reconciler: probes that Redis takes writes and, after a doubt (Redis may have lost a
//! revocation: see `cache/redis/doubt.rs`), copies the store's recent revocations into Redis
//! before Redis is read again.
//!
//! Why from the store: the revocations Redis refused may have been made by any replica, even one
//! that has since died, and the store has every one of them. A doubt raised at `since` can hide
//! only revocations made shortly before `since` or later (the revoker raises its own doubt at once;
//! others within a probe interval, or on hearing it announced); and none older than the cache TTL
//! can still have a live copy in Redis. So a reconcile reads, in pages, the revocations of
//! `[max(since, now - ttl) - MARGIN, now]` (by `session_revoked_at_idx`) and merges their revoked
//! copies into Redis. Redis is trusted again only if no new doubt came in while it ran.

use std::{sync::Arc, time::Duration};

use chrono::{DateTime, TimeDelta, Utc};

use crate::{
    cache::RedisTier,
    clock::Clock,
    store::{RevokedAfter, SessionStore},
};

/// How often Redis is probed with a write, and a doubt retried: a replica that writes nothing
/// learns within this that Redis refuses writes.
pub(super) const PROBE_INTERVAL: Duration = Duration::from_millis(250);

/// How far before a doubt a lost revocation may have been stamped: a revocation's `revoked_at`
/// comes from its replica's clock before its commit and its Redis write (each bounded by a
/// timeout of seconds), and replicas' clocks may differ. Generous, since reading further back
/// costs little.
const MARGIN: TimeDelta = TimeDelta::minutes(1);

/// How long the first probe waits for Redis to connect (fred's longest reconnect delay).
const STARTUP_CONNECT_WAIT: Duration = Duration::from_secs(2);

/// Revoked sessions read from the store per page.
const PAGE: i64 = 500;

/// Probes and reconciles, until shutdown drops it.
pub(super) async fn run(store: Arc<dyn SessionStore>, redis: RedisTier, clock: Arc<dyn Clock>) {
    let cache_ttl = TimeDelta::from_std(redis.ttl()).unwrap_or(TimeDelta::MAX);
    // A replica starts in doubt: reconcile as soon as Redis is there, not a probe interval later.
    redis.connected(STARTUP_CONNECT_WAIT).await;
    let mut ticker = tokio::time::interval(PROBE_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        ticker.tick().await;
        // Read before the probe: a doubt raised after it is left for the next round.
        let doubted = redis.doubted();
        if !redis.probe().await {
            continue;
        }
        let Some(doubted) = doubted else { continue };
        let now = clock.now();
        let doubted_for = TimeDelta::from_std(doubted.since.elapsed()).unwrap_or(TimeDelta::MAX);
        let since = window_start(doubted_for, now, cache_ttl);
        match copy_revocations(store.as_ref(), &redis, since, now).await {
            Ok(copied) => {
                failing = false;
                if redis.reconciled(doubted) {
                    tracing::info!(
                        copied,
                        "Redis reconciled with the store: its copies are read again"
                    );
                }
            }
            Err(error) if !failing => {
                failing = true;
                tracing::warn!(
                    error = format!("{error:#}"),
                    "cannot reconcile Redis with the store yet; the store keeps answering"
                );
            }
            Err(_) => {}
        }
    }
}

/// The oldest revocation a reconcile must copy, in doubt for `doubted_for` until `now`.
fn window_start(doubted_for: TimeDelta, now: DateTime<Utc>, cache_ttl: TimeDelta) -> DateTime<Utc> {
    let since = now.checked_sub_signed(doubted_for).unwrap_or(now);
    let oldest_live_copy = now.checked_sub_signed(cache_ttl).unwrap_or(since);
    since.max(oldest_live_copy) - MARGIN
}

/// Merges the revoked copy of every session revoked since `since` into Redis, a page at a time;
/// how many. Fails on a store error or a write Redis refused.
async fn copy_revocations(
    store: &dyn SessionStore,
    redis: &RedisTier,
    since: DateTime<Utc>,
    now: DateTime<Utc>,
) -> anyhow::Result<usize> {
    let mut after = RevokedAfter::since(since);
    let mut copied = 0;
    loop {
        let page = store.revoked_since(after, PAGE).await.map_err(|error| {
            crate::metrics::store_error(&error);
            anyhow::anyhow!("the store: {}", error.cause_chain())
        })?;
        anyhow::ensure!(
            redis.rewrite_revoked(&page, now).await,
            "Redis refused a revoked copy"
        );
        copied += page.len();
        crate::metrics::redis_reconciled(page.len());
        match page.last().and_then(RevokedAfter::past) {
            Some(next) if page.len() as i64 == PAGE => after = next,
            _ => return Ok(copied),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_window_starts_a_margin_before_the_doubt_but_never_before_the_oldest_live_copy() {
        let now = DateTime::from_timestamp(1_800_000_000, 0).unwrap_or_default();
        let ttl = TimeDelta::minutes(10);
        assert_eq!(
            window_start(TimeDelta::seconds(30), now, ttl),
            now - TimeDelta::seconds(30) - MARGIN
        );
        assert_eq!(
            window_start(TimeDelta::hours(1), now, ttl),
            now - ttl - MARGIN
        );
    }
}
