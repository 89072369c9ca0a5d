//! Activity: using a session pushes its idle deadline forward. `Validate` only notes it; a
//! background writer stores what was noted, in batches, so a burst of cold validations costs the
//! store a statement per period rather than a transaction each.

use std::{sync::Arc, time::Duration};

use chrono::{DateTime, Utc};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::Policy;
use crate::{
    cache::SessionCache,
    clock::Clock,
    domain::{Session, SessionId},
    store::{Activity, SessionStore},
    tasks::{Stage, Tasks},
};

/// The writer stores at most one batch per period, however many validations come in.
const WRITE_PERIOD: Duration = Duration::from_millis(50);

/// Most activities written by one statement.
const MAX_BATCH: usize = 1_000;

/// Most activities waiting for the writer. Beyond it one is dropped; its claim stays, so it is
/// noted again after an interval (the idle deadline is days away: a minute's delay is harmless).
const QUEUE_CAPACITY: usize = 8 * MAX_BATCH;

/// Most stale copies remembered as noted; older claims are forgotten, at worst costing one
/// extra (harmless, conditional) write.
const MAX_CLAIMS: u64 = 100_000;

/// Notes activity and hands it to the background writer.
pub(super) struct ActivityRecorder {
    /// Stale copies already noted, keyed by session and `last_seen_at`: each is noted once per
    /// interval, however often it is validated, so a store outage does not pile up writes.
    claims: moka::sync::Cache<(SessionId, i64), ()>,
    queue: mpsc::Sender<Activity>,
}

impl ActivityRecorder {
    /// Starts the writer; at shutdown it writes what is still queued, then stops.
    pub(super) fn start(
        store: Arc<dyn SessionStore>,
        cache: SessionCache,
        clock: Arc<dyn Clock>,
        policy: &Policy,
        tasks: &Tasks,
    ) -> Self {
        let (queue, noted) = mpsc::channel(QUEUE_CAPACITY);
        tasks.spawn("activity writer", Stage::Flush, |stop| {
            write_batches(noted, store, cache, clock, stop)
        });
        Self {
            claims: moka::sync::Cache::builder()
                .max_capacity(MAX_CLAIMS)
                .time_to_live(
                    policy
                        .activity_write_interval
                        .to_std()
                        .unwrap_or(Duration::from_secs(60)),
                )
                .build(),
            queue,
        }
    }

    /// Notes that a live `session` was used at `now`, if its copy is older than the activity
    /// interval and was not noted already.
    pub(super) fn note(&self, session: &Session, now: DateTime<Utc>, policy: &Policy) {
        let stale_before = now - policy.activity_write_interval;
        if session.last_seen_at >= stale_before {
            return;
        }
        let claim = (session.id, session.last_seen_at.timestamp_micros());
        if !self.claims.entry(claim).or_insert(()).is_fresh() {
            return;
        }
        // A full queue drops the note (see QUEUE_CAPACITY).
        let _ = self.queue.try_send(Activity {
            session_id: session.id,
            seen_at: now,
            idle_expires_at: (now + policy.idle_timeout).min(session.expires_at),
            stale_before,
        });
    }
}

/// Writes what was noted, a batch per period, and caches the sessions written (their copies
/// carry the new deadline). Once asked to `stop` (every call has ended), writes what is still
/// queued and returns.
async fn write_batches(
    mut noted: mpsc::Receiver<Activity>,
    store: Arc<dyn SessionStore>,
    cache: SessionCache,
    clock: Arc<dyn Clock>,
    stop: CancellationToken,
) {
    let write = async |batch: &mut Vec<Activity>| {
        match store.record_activity(batch).await {
            Ok(written) => {
                let now = clock.now();
                for session in &written {
                    cache.put_in_background(session, now);
                }
            }
            Err(error) => {
                crate::metrics::store_error(&error);
                tracing::warn!(error = %error.cause_chain(), sessions = batch.len(), "could not record activity")
            }
        }
        batch.clear();
    };
    let mut period = tokio::time::interval(WRITE_PERIOD);
    period.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut batch = Vec::with_capacity(MAX_BATCH);
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            _ = period.tick() => {}
        }
        tokio::select! {
            () = stop.cancelled() => break,
            received = noted.recv_many(&mut batch, MAX_BATCH) => if received == 0 { return },
        }
        write(&mut batch).await;
    }
    // Shutting down: nothing new is noted; what is queued is written.
    noted.close();
    while noted.recv_many(&mut batch, MAX_BATCH).await > 0 {
        write(&mut batch).await;
    }
}
