//! The sweeper: every `SESSIOND_SWEEP_INTERVAL`, deletes the sessions that ended more than
//! `SESSIOND_REVOKED_RETENTION` ago (revoked, or past either expiry), with their refresh tokens.
//!
//! It stays off the `Validate` path: it holds one pooled connection while it runs, deletes in
//! batches of `SESSIOND_SWEEP_BATCH_SIZE` rows (each its own short statement, through the expiry
//! and revocation indexes), and yields between batches. With Postgres, only the replica that takes
//! the sweep advisory lock sweeps; the others skip that round (see [`SessionStore::sweep`]).
//!
//! Redis needs no sweeping: it holds no per-user index, only one hash per session
//! (`<prefix>{u:<user>}:s:<sid>`), and every entry is written with a TTL of at most
//! `SESSIOND_CACHE_TTL` and never past the session's end (`RedisTier::entry_ttl`), so entries
//! expire by themselves. A revoked session's entry may last to its absolute expiry, capped by
//! the cache TTL; only with a cache TTL longer than the retention can it outlive the swept row, and
//! then it still only refuses the session's tokens (as revoked rather than not found).
//!
//! Rows deleted are logged (`swept`, with `deleted`) and counted in
//! `sessiond_sweeper_deleted_total`.

use std::{sync::Arc, time::Duration};

use tokio::time::MissedTickBehavior;

use crate::{clock::Clock, config::Settings, metrics, store::SessionStore};

/// What the sweeper is told.
#[derive(Debug, Clone, Copy)]
pub struct SweepSettings {
    /// Time between sweeps.
    pub interval: Duration,
    /// Most rows one delete statement removes.
    pub batch_size: i64,
    /// How long an ended session is kept before it is deleted.
    ///
    /// Expired sessions get the same retention as revoked ones, counted from `expires_at` or
    /// `idle_expires_at`: a session that has just expired then still reads as expired (GetSession,
    /// ListUserSessions with `include_revoked`) instead of vanishing into not-found at once.
    pub retention: chrono::Duration,
    /// How long a revocation event is kept: as long as a token it refuses may live, and a few
    /// minutes more, so that a subscriber that was briefly away resumes without a snapshot.
    pub revocation_retention: chrono::Duration,
}

/// Kept past the tokens' lifetime, for subscribers resuming after a short break.
const RESUME_MARGIN: chrono::Duration = chrono::Duration::minutes(5);

/// Most users' sign-outs one round finishes marking (left over by a replica that stopped).
const SIGN_OUTS_PER_ROUND: usize = 100;

/// Sessions one statement marks as revoked by their user's sign-out.
pub const MARK_BATCH: usize = 1_000;

impl SweepSettings {
    /// From the settings; revocations refuse tokens for `token_retention` (see
    /// [`crate::revocations::RevocationFeed::retention`]).
    pub fn from_settings(settings: &Settings, token_retention: chrono::Duration) -> Self {
        Self {
            interval: settings.sweep_interval,
            batch_size: i64::from(settings.sweep_batch_size),
            // Too long to represent: keep everything (the store refuses to subtract it).
            retention: chrono::Duration::from_std(settings.revoked_retention)
                .unwrap_or(chrono::Duration::MAX),
            revocation_retention: token_retention + RESUME_MARGIN,
        }
    }
}

/// Sweeps every `settings.interval`, first one interval after start, until the task is aborted.
/// Errors are logged and the next round tries again.
pub async fn run(store: Arc<dyn SessionStore>, clock: Arc<dyn Clock>, settings: SweepSettings) {
    let mut ticker = tokio::time::interval(settings.interval);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    // The first tick is immediate; start sweeping one interval in, not in the middle of startup.
    ticker.tick().await;
    loop {
        ticker.tick().await;
        sweep_once(store.as_ref(), clock.as_ref(), &settings).await;
    }
}

/// One round: sweeps, then logs and counts what it did.
#[tracing::instrument(name = "sweeper.sweep", skip_all)]
async fn sweep_once(store: &dyn SessionStore, clock: &dyn Clock, settings: &SweepSettings) {
    sweep_sessions(store, clock, settings).await;
    if let Err(error) = sweep_revocations(store, clock, settings).await {
        metrics::store_error(&error);
        tracing::warn!(error = %error.cause_chain(), "sweeping the revocation log failed; trying again next round");
    }
}

/// Deletes the revocation events no token needs any more, and finishes marking the sessions of
/// sign-outs a replica left unmarked.
async fn sweep_revocations(
    store: &dyn SessionStore,
    clock: &dyn Clock,
    settings: &SweepSettings,
) -> crate::error::Result<()> {
    let now = clock.now();
    let (Some(events_before), Some(sign_outs_before)) = (
        now.checked_sub_signed(settings.revocation_retention),
        now.checked_sub_signed(settings.retention),
    ) else {
        return Ok(());
    };
    let deleted = store
        .sweep_revocations(events_before, sign_outs_before)
        .await?;
    if deleted > 0 {
        tracing::info!(deleted, "swept revocation events");
    }
    for user_id in store.unmarked_sign_outs(SIGN_OUTS_PER_ROUND).await? {
        mark_sign_out(store, &user_id).await?;
    }
    Ok(())
}

/// Marks, batch by batch, every session the user's sign-out revoked (see
/// [`SessionStore::sign_out_user`]).
pub async fn mark_sign_out(
    store: &dyn SessionStore,
    user_id: &crate::domain::UserId,
) -> crate::error::Result<()> {
    while !store.mark_signed_out(user_id, MARK_BATCH).await? {
        tokio::task::yield_now().await;
    }
    Ok(())
}

/// Deletes the sessions that ended long enough ago.
async fn sweep_sessions(store: &dyn SessionStore, clock: &dyn Clock, settings: &SweepSettings) {
    match store
        .sweep(clock.now(), settings.retention, settings.batch_size)
        .await
    {
        Ok(Some(deleted)) => {
            if deleted > 0 {
                tracing::info!(deleted, "swept");
                metrics::sessions_swept(deleted);
            }
        }
        Ok(None) => tracing::debug!("another replica is sweeping; skipping this round"),
        Err(error) => {
            metrics::store_error(&error);
            tracing::warn!(error = %error.cause_chain(), "sweep failed; trying again next round")
        }
    }
}
