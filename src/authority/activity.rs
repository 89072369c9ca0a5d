//! Activity: using a session pushes its idle deadline forward. `Validate` only notes it; a
//! background writer stores what was noted, in batches, so a burst of cold validations costs the
//! store a statement per period rather than a transaction each.

use std::{sync::Arc, time::Duration};

use chrono::{DateTime, Utc};
use tokio::sync::mpsc;

use super::Policy;
use crate::{
    batch::{self, BatchShape},
    cache::SessionCache,
    clock::Clock,
    domain::{Session, SessionId},
    store::{Activity, SessionStore},
    tasks::{Stage, Tasks},
};

const MAX_BATCH: usize = 1_000;

/// One statement at a time, at most one per period however many validations come in. A full
/// queue drops a note; its claim stays, so it is noted again after an interval (the idle deadline
/// is days away: a minute's delay is harmless).
const WRITES: BatchShape = BatchShape {
    max_batch: MAX_BATCH,
    queue_capacity: 8 * MAX_BATCH,
    in_flight: 1,
    period: Some(Duration::from_millis(50)),
};

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
        let (queue, noted) = batch::queue(WRITES);
        // At shutdown, after every call has ended, it writes what is still queued.
        tasks.spawn("activity writer", Stage::Flush, |stop| {
            noted.write(
                move |batch| write(store.clone(), cache.clone(), clock.clone(), batch),
                stop,
            )
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
        // A full queue drops the note (see WRITES).
        let _ = self.queue.try_send(Activity {
            session_id: session.id,
            seen_at: now,
            idle_expires_at: (now + policy.idle_timeout).min(session.expires_at),
            stale_before,
        });
    }
}

/// Writes one batch of what was noted, and caches the sessions written (their copies carry the
/// new deadline).
async fn write(
    store: Arc<dyn SessionStore>,
    cache: SessionCache,
    clock: Arc<dyn Clock>,
    batch: Vec<Activity>,
) {
    match store.record_activity(&batch).await {
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
}
