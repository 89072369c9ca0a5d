//! Following `WatchRevocations`: a background task keeps one stream open, applies each event to
//! the revocation set, resumes from its cursor after any disconnect (with backoff), restarts
//! from a fresh snapshot when its cursor is too old (keeping what it knows meanwhile), and
//! records how recent a moment the verifier is known to have every revocation of: its
//! freshness, which the verification path compares with the staleness bound.
//!
//! What a message proves:
//! - a heartbeat: sessiond has nothing newer, as of a read of its log just now (it sends one as
//!   soon as a stream has caught up, then after 5 s of quiet, and none while it cannot read its
//!   log, so that a stalled sessiond looks like a silent one);
//! - an event: every revocation up to its `revoked_at` (never later than now) is known. Events
//!   come in cursor order, which is commit order, so a replay proves only as much as it has
//!   replayed, and a live event about as much as "now". This also keeps a busy stream, which
//!   may never be quiet long enough for a heartbeat, fresh; and a feed that lags behind its
//!   log, however many events it sends, goes stale. It assumes `revoked_at` follows commit order
//!   to within the clock skew of sessiond's replicas, small next to the staleness bound.

use std::{
    sync::{
        Arc, PoisonError, RwLock,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use chrono::{DateTime, Utc};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tonic::{
    Code, Status,
    metadata::{Ascii, MetadataValue},
    transport::Channel,
};

use crate::{
    jwks::Keys,
    pb::{self, session_service_client::SessionServiceClient},
    revocations::{Revocation, RevocationCounts, Revocations, timestamp},
    token::Verified,
};

/// How often entries past their `token_expires_before` are dropped.
const PRUNE_EVERY: Duration = Duration::from_secs(30);
/// The first wait before reconnecting; it doubles up to `MAX_BACKOFF`, with jitter.
const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// The most recent instant up to which every revocation is known.
#[derive(Debug)]
pub(crate) struct Freshness {
    epoch: Instant,
    /// Microseconds since `epoch`, plus one; 0 until something was proven.
    proven: AtomicU64,
    staleness: Duration,
}

impl Freshness {
    /// Nothing proven yet: stale.
    pub(crate) fn new(staleness: Duration) -> Self {
        Self {
            epoch: Instant::now(),
            proven: AtomicU64::new(0),
            staleness,
        }
    }

    /// Records that every revocation up to `until` is known. Never moves back.
    pub(crate) fn prove(&self, until: Instant) {
        let micros = self.micros(until).saturating_add(1);
        self.proven.fetch_max(micros, Ordering::AcqRel);
    }

    /// How long ago the last proven instant is, at `now`; `None` before anything was proven.
    pub(crate) fn age(&self, now: Instant) -> Option<Duration> {
        let proven = self.proven.load(Ordering::Acquire).checked_sub(1)?;
        Some(Duration::from_micros(
            self.micros(now).saturating_sub(proven),
        ))
    }

    /// Whether the last proven instant is within the staleness bound of `now`.
    pub(crate) fn is_fresh(&self, now: Instant) -> bool {
        self.age(now).is_some_and(|age| age <= self.staleness)
    }

    fn micros(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.epoch).as_micros()).unwrap_or(u64::MAX)
    }
}

/// The revocation set and its freshness, shared by the verification path and the follower.
#[derive(Debug)]
pub(crate) struct RevocationState {
    revocations: RwLock<Revocations>,
    pub(crate) freshness: Freshness,
}

/// What receiving one event did, for the follower to act on.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Received {
    Heartbeat,
    Applied,
    /// A signing key was removed: refetch the JWKS.
    KeyRemoved,
    /// The event could not be enforced (logged); the stream goes on.
    Skipped,
}

impl RevocationState {
    /// Nothing known, nothing proven.
    pub(crate) fn new(staleness: Duration) -> Self {
        Self {
            revocations: RwLock::new(Revocations::default()),
            freshness: Freshness::new(staleness),
        }
    }

    /// Whether a revocation refuses `token`.
    pub(crate) fn is_refused(&self, token: &Verified) -> bool {
        self.read().is_refused(token)
    }

    /// How many revocations of each kind are held.
    pub(crate) fn counts(&self) -> RevocationCounts {
        self.read().counts()
    }

    /// Applies `event`, received at `now` (`wall_now` on the wall clock), and records what it
    /// proves. The event is applied before its proof is recorded, so that a fresh verifier never
    /// lacks it.
    pub(crate) fn receive(
        &self,
        event: &pb::RevocationEvent,
        now: Instant,
        wall_now: DateTime<Utc>,
    ) -> Received {
        let received = match Revocation::from_event(event) {
            Ok(None) => Received::Heartbeat,
            Ok(Some(revocation)) => {
                let key_removed = matches!(revocation, Revocation::KeyRemoved { .. });
                self.revocations
                    .write()
                    .unwrap_or_else(PoisonError::into_inner)
                    .apply(revocation);
                if key_removed {
                    Received::KeyRemoved
                } else {
                    Received::Applied
                }
            }
            Err(error) => {
                tracing::warn!(
                    %error,
                    cursor = %event.cursor,
                    "skipping a revocation event this verifier cannot enforce"
                );
                Received::Skipped
            }
        };
        let heartbeat = received == Received::Heartbeat;
        if let Some(until) = proven_until(heartbeat, event, now, wall_now) {
            self.freshness.prove(until);
        }
        received
    }

    /// Drops what can no longer refuse an unexpired token.
    pub(crate) fn prune(&self, now: DateTime<Utc>, leeway: chrono::Duration) -> usize {
        self.revocations
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .prune(now, leeway)
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Revocations> {
        self.revocations
            .read()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// The instant up to which a message received at `now` proves every revocation known: `now` for
/// a heartbeat, else the event's `revoked_at` (capped at `now`); `None` when it proves nothing.
fn proven_until(
    heartbeat: bool,
    event: &pb::RevocationEvent,
    now: Instant,
    wall_now: DateTime<Utc>,
) -> Option<Instant> {
    if heartbeat {
        return Some(now);
    }
    let revoked_at = event.revoked_at.as_ref().and_then(timestamp)?;
    let behind = (wall_now - revoked_at).to_std().unwrap_or(Duration::ZERO);
    now.checked_sub(behind)
}

/// How one stream ended.
#[derive(Debug)]
pub(crate) enum End {
    /// The server closed it (a restart, a connection's maximum age).
    Finished,
    /// Nothing arrived within the idle timeout: a silent partition or a stalled server.
    Idle,
    /// The call failed or the stream ended with an error.
    Failed(Status),
}

/// What to do after a stream ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Plan {
    /// Drop the cursor: the next stream starts with a fresh snapshot.
    pub(crate) restart: bool,
    /// How long to wait before the next stream (before jitter).
    pub(crate) wait: Duration,
    /// Streams in a row that ended without a message, this one included.
    pub(crate) failures: u32,
}

/// The plan after a stream that ended as `end`, having received a message or not, after
/// `failures` streams in a row that received none.
pub(crate) fn plan(end: &End, received: bool, failures: u32) -> Plan {
    let failures = if received {
        1
    } else {
        failures.saturating_add(1)
    };
    let code = match end {
        End::Failed(status) => Some(status.code()),
        End::Finished | End::Idle => None,
    };
    let restart = code == Some(Code::OutOfRange);
    // The server's own instructions (a fresh snapshot; too slow: resume) are followed at once,
    // the first time; anything that repeats backs off.
    let immediate = failures == 1 && matches!(code, Some(Code::OutOfRange | Code::Aborted));
    let wait = if immediate {
        Duration::ZERO
    } else {
        MIN_BACKOFF
            .saturating_mul(1 << (failures - 1).min(16))
            .min(MAX_BACKOFF)
    };
    Plan {
        restart,
        wait,
        failures,
    }
}

/// `wait`, less up to half of it, at random: replicas of a service that lost sessiond together
/// do not all come back in the same instant.
fn jitter(wait: Duration) -> Duration {
    use std::hash::{BuildHasher, Hasher};
    let random = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    let half = wait / 2;
    half + Duration::from_nanos(random % u64::try_from(half.as_nanos()).unwrap_or(1).max(1))
}

/// The stream's connection and its settings.
#[derive(Debug, Clone)]
pub(crate) struct Stream {
    pub(crate) client: SessionServiceClient<Channel>,
    pub(crate) authorization: Option<MetadataValue<Ascii>>,
    /// A stream silent this long is dropped and opened again.
    pub(crate) idle_timeout: Duration,
    /// The verifier's expiry leeway, which pruning must honour.
    pub(crate) leeway: chrono::Duration,
}

/// The follower task: streams until `cancel`.
pub(crate) async fn follow(
    state: Arc<RevocationState>,
    keys: Arc<Keys>,
    stream: Stream,
    cancel: CancellationToken,
) {
    let mut cursor = String::new();
    let mut failures = 0;
    let mut prune = tokio::time::interval(PRUNE_EVERY);
    prune.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let (received, end) = tokio::select! {
            () = cancel.cancelled() => return,
            ended = stream.follow_one(&state, &keys, &mut cursor, &mut prune) => ended,
        };
        let next = plan(&end, received, failures);
        failures = next.failures;
        log_end(&end, &next, &state);
        if next.restart {
            cursor.clear();
        }
        if !next.wait.is_zero() {
            tokio::select! {
                () = cancel.cancelled() => return,
                () = tokio::time::sleep(jitter(next.wait)) => {}
            }
        }
    }
}

fn log_end(end: &End, next: &Plan, state: &RevocationState) {
    let age = state.freshness.age(Instant::now());
    match end {
        End::Failed(status) if status.code() == Code::OutOfRange => tracing::warn!(
            kept = ?state.counts(),
            "the revocation cursor is older than sessiond keeps: restarting from a fresh snapshot, keeping what is known meanwhile"
        ),
        End::Failed(status) if status.code() == Code::Aborted => {
            tracing::warn!("sessiond ended the revocation stream as too slow: resuming");
        }
        End::Failed(status)
            if matches!(
                status.code(),
                Code::Unauthenticated | Code::PermissionDenied
            ) =>
        {
            tracing::error!(
                code = ?status.code(),
                retry_in = ?next.wait,
                "sessiond refuses WatchRevocations to this caller: check the API key or the client certificate, and that the callers file allows WatchRevocations"
            );
        }
        End::Failed(status) => tracing::warn!(
            code = ?status.code(),
            message = status.message(),
            retry_in = ?next.wait,
            since_last_proof = ?age,
            "the revocation stream failed"
        ),
        End::Idle => tracing::warn!(
            retry_in = ?next.wait,
            since_last_proof = ?age,
            "the revocation stream went silent: reconnecting"
        ),
        End::Finished => {
            tracing::info!(retry_in = ?next.wait, "sessiond closed the revocation stream")
        }
    }
}

impl Stream {
    /// Opens one stream after `cursor` and follows it until it ends. Returns whether any message
    /// arrived, and how it ended.
    async fn follow_one(
        &self,
        state: &RevocationState,
        keys: &Keys,
        cursor: &mut String,
        prune: &mut tokio::time::Interval,
    ) -> (bool, End) {
        let mut request = tonic::Request::new(pb::WatchRevocationsRequest {
            after_cursor: cursor.clone(),
        });
        if let Some(authorization) = &self.authorization {
            request
                .metadata_mut()
                .insert("authorization", authorization.clone());
        }
        let mut client = self.client.clone();
        let mut messages = match tokio::time::timeout(
            self.idle_timeout,
            client.watch_revocations(request),
        )
        .await
        {
            Err(_) => return (false, End::Idle),
            Ok(Err(status)) => return (false, End::Failed(status)),
            Ok(Ok(response)) => response.into_inner(),
        };
        tracing::debug!(
            resuming = !cursor.is_empty(),
            "following sessiond's revocations"
        );
        let (mut received, mut caught_up) = (false, false);
        let mut deadline = Instant::now() + self.idle_timeout;
        loop {
            let message = tokio::select! {
                _ = prune.tick() => {
                    state.prune(Utc::now(), self.leeway);
                    continue;
                }
                message = tokio::time::timeout_at(deadline, messages.message()) => message,
            };
            let event = match message {
                Err(_) => return (received, End::Idle),
                Ok(Err(status)) => return (received, End::Failed(status)),
                Ok(Ok(None)) => return (received, End::Finished),
                Ok(Ok(Some(event))) => event,
            };
            let now = Instant::now();
            received = true;
            deadline = now + self.idle_timeout;
            match state.receive(&event, now, Utc::now()) {
                Received::Heartbeat => {
                    if !caught_up {
                        tracing::debug!("the revocation stream is caught up");
                    }
                    caught_up = true;
                }
                Received::KeyRemoved => {
                    keys.request_refetch(now);
                }
                Received::Applied | Received::Skipped => {}
            }
            // An empty cursor (a heartbeat before any event) keeps the one held.
            if !event.cursor.is_empty() {
                *cursor = event.cursor;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(time: DateTime<Utc>) -> Option<prost_types::Timestamp> {
        Some(prost_types::Timestamp {
            seconds: time.timestamp(),
            nanos: i32::try_from(time.timestamp_subsec_nanos()).expect("nanos"),
        })
    }

    fn heartbeat(cursor: &str) -> pb::RevocationEvent {
        pb::RevocationEvent {
            cursor: cursor.into(),
            kind: pb::RevocationKind::Heartbeat.into(),
            ..Default::default()
        }
    }

    fn session_event(revoked_at: DateTime<Utc>) -> pb::RevocationEvent {
        pb::RevocationEvent {
            cursor: "c".into(),
            kind: pb::RevocationKind::Session.into(),
            session_id: uuid::Uuid::now_v7().to_string(),
            revoked_at: ts(revoked_at),
            token_expires_before: ts(revoked_at + chrono::Duration::minutes(15)),
            ..Default::default()
        }
    }

    #[test]
    fn nothing_is_fresh_before_a_proof_and_a_proof_lasts_the_staleness_bound() {
        let freshness = Freshness::new(Duration::from_secs(10));
        let start = freshness.epoch;
        assert!(!freshness.is_fresh(start));
        assert_eq!(freshness.age(start), None);
        freshness.prove(start + Duration::from_secs(1));
        assert!(freshness.is_fresh(start + Duration::from_secs(11)));
        assert!(!freshness.is_fresh(start + Duration::from_secs(11) + Duration::from_micros(1)));
        freshness.prove(start);
        assert_eq!(
            freshness.age(start + Duration::from_secs(3)),
            Some(Duration::from_secs(2)),
            "an older proof does not move it back"
        );
    }

    #[test]
    fn a_heartbeat_proves_now() {
        let state = RevocationState::new(Duration::from_secs(10));
        let (now, wall) = (Instant::now(), Utc::now());
        assert!(!state.freshness.is_fresh(now));
        assert_eq!(
            state.receive(&heartbeat(""), now, wall),
            Received::Heartbeat
        );
        assert_eq!(state.freshness.age(now), Some(Duration::ZERO));
        assert!(state.freshness.is_fresh(now + Duration::from_secs(10)));
        assert!(!state.freshness.is_fresh(now + Duration::from_secs(11)));
    }

    #[test]
    fn an_event_proves_only_its_revoked_at() {
        let state = RevocationState::new(Duration::from_secs(10));
        let (now, wall) = (Instant::now() + Duration::from_secs(3600), Utc::now());
        let minutes = chrono::Duration::minutes;
        let seconds = chrono::Duration::seconds;
        // A snapshot's old revocation: the verifier is as far behind as it is old.
        state.receive(&session_event(wall - minutes(5)), now, wall);
        assert_eq!(state.freshness.age(now), Some(Duration::from_secs(300)));
        assert!(!state.freshness.is_fresh(now));
        // The replay reaches the recent past: fresh, with no heartbeat (a busy stream).
        state.receive(&session_event(wall - seconds(2)), now, wall);
        assert_eq!(state.freshness.age(now), Some(Duration::from_secs(2)));
        assert!(state.freshness.is_fresh(now));
        // A revoked_at ahead of this clock proves no more than now.
        state.receive(&session_event(wall + seconds(30)), now, wall);
        assert_eq!(state.freshness.age(now), Some(Duration::ZERO));
        // A lagging feed's old events, however many, do not keep the verifier fresh.
        let (later, wall_later) = (now + Duration::from_secs(60), wall + seconds(60));
        for _ in 0..10 {
            state.receive(&session_event(wall_later - seconds(30)), later, wall_later);
        }
        assert_eq!(state.freshness.age(later), Some(Duration::from_secs(30)));
        assert!(!state.freshness.is_fresh(later));
        assert_eq!(state.counts().sessions, 13);
    }

    #[test]
    fn an_event_that_cannot_be_enforced_is_skipped_and_proves_nothing_by_itself() {
        let state = RevocationState::new(Duration::from_secs(10));
        let mut unknown = session_event(Utc::now());
        unknown.kind = 99;
        unknown.revoked_at = None;
        assert_eq!(
            state.receive(&unknown, Instant::now(), Utc::now()),
            Received::Skipped
        );
        assert_eq!(state.freshness.age(Instant::now()), None);
        assert_eq!(state.counts(), RevocationCounts::default());
        let mut removed = session_event(Utc::now());
        removed.kind = pb::RevocationKind::SigningKeyRemoved.into();
        removed.key_id = "k".into();
        assert_eq!(
            state.receive(&removed, Instant::now(), Utc::now()),
            Received::KeyRemoved
        );
    }

    #[test]
    fn out_of_range_restarts_from_a_snapshot_at_once_and_aborted_resumes_at_once() {
        let out_of_range = End::Failed(Status::out_of_range("cursor too old"));
        assert_eq!(
            plan(&out_of_range, true, 0),
            Plan {
                restart: true,
                wait: Duration::ZERO,
                failures: 1
            }
        );
        let aborted = End::Failed(Status::aborted("too slow"));
        assert_eq!(
            plan(&aborted, false, 0),
            Plan {
                restart: false,
                wait: Duration::ZERO,
                failures: 1
            }
        );
        // Repeated without any message in between: backs off like any failure.
        assert_eq!(plan(&aborted, false, 1).wait, MIN_BACKOFF * 2);
        assert!(plan(&out_of_range, false, 3).restart);
    }

    #[test]
    fn failures_back_off_exponentially_up_to_a_ceiling_and_a_message_resets_them() {
        let unavailable = End::Failed(Status::unavailable("down"));
        let mut failures = 0;
        let mut waits = Vec::new();
        for _ in 0..10 {
            let next = plan(&unavailable, false, failures);
            assert!(!next.restart, "a failure keeps the cursor");
            failures = next.failures;
            waits.push(next.wait.as_millis());
        }
        assert_eq!(
            waits,
            [
                100, 200, 400, 800, 1_600, 3_200, 6_400, 10_000, 10_000, 10_000
            ]
        );
        assert_eq!(plan(&End::Idle, true, failures).wait, MIN_BACKOFF);
        assert_eq!(plan(&End::Finished, true, 7).failures, 1);
        for _ in 0..100 {
            let wait = jitter(Duration::from_secs(2));
            assert!(
                wait >= Duration::from_secs(1) && wait <= Duration::from_secs(2),
                "{wait:?}"
            );
        }
        assert_eq!(jitter(Duration::ZERO), Duration::ZERO);
    }
}
