//! A circuit breaker, so a dead or hung Redis costs one timeout per cool-down, not one per
//! request.

use std::{
    sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering},
    time::{Duration, Instant},
};

use crate::metrics;

/// Consecutive failures that open the breaker.
const BREAKER_TRIP_AFTER: u32 = 3;
/// How long an open breaker sends nothing to Redis before one probe may try again.
const BREAKER_COOL_DOWN: Duration = Duration::from_secs(1);

/// A circuit breaker: closed while Redis answers; open (nothing is sent) for a cool-down after
/// `BREAKER_TRIP_AFTER` failures in a row; then half-open, letting exactly one probe through,
/// whose outcome closes it or opens it again.
pub(super) struct Breaker {
    started: Instant,
    failures: AtomicU32,
    open_until_ms: AtomicU64,
    probing: AtomicBool,
}

impl Default for Breaker {
    fn default() -> Self {
        Self {
            started: Instant::now(),
            failures: AtomicU32::new(0),
            open_until_ms: AtomicU64::new(0),
            probing: AtomicBool::new(false),
        }
    }
}

impl Breaker {
    fn now_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Whether a command may be sent now.
    pub(super) fn allow(&self) -> bool {
        if self.failures.load(Ordering::Acquire) < BREAKER_TRIP_AFTER {
            return true;
        }
        if self.now_ms() < self.open_until_ms.load(Ordering::Acquire) {
            return false;
        }
        // Half-open: one probe at a time.
        self.probing
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    pub(super) fn success(&self) {
        if self.failures.swap(0, Ordering::AcqRel) >= BREAKER_TRIP_AFTER {
            tracing::info!("redis answers again: circuit closed");
            metrics::redis_breaker_open(false);
        }
        self.probing.store(false, Ordering::Release);
    }

    /// Records a failure; true when this one opened the circuit.
    pub(super) fn failure(&self) -> bool {
        let failures = self
            .failures
            .fetch_add(1, Ordering::AcqRel)
            .saturating_add(1);
        let opened = failures >= BREAKER_TRIP_AFTER;
        if opened {
            let cool_down = u64::try_from(BREAKER_COOL_DOWN.as_millis()).unwrap_or(u64::MAX);
            self.open_until_ms
                .store(self.now_ms().saturating_add(cool_down), Ordering::Release);
            metrics::redis_breaker_open(true);
        }
        self.probing.store(false, Ordering::Release);
        failures == BREAKER_TRIP_AFTER
    }
}

/// Frees the breaker's half-open slot when a guarded command ends, however it ends.
pub(super) struct ProbeSlot<'a>(pub(super) &'a Breaker);

impl Drop for ProbeSlot<'_> {
    fn drop(&mut self) {
        self.0.probing.store(false, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_breaker_opens_after_repeated_failures_and_lets_one_probe_through_after_the_cool_down() {
        let breaker = Breaker::default();
        for _ in 1..BREAKER_TRIP_AFTER {
            assert!(breaker.allow());
            assert!(!breaker.failure());
        }
        assert!(breaker.allow());
        assert!(breaker.failure(), "this failure opens it");
        assert!(!breaker.allow(), "open: nothing goes to redis");

        breaker.open_until_ms.store(0, Ordering::Release); // the cool-down has passed
        assert!(breaker.allow(), "half-open: one probe");
        assert!(!breaker.allow(), "and only one");
        breaker.success();
        assert!(breaker.allow() && breaker.allow(), "closed again");
    }

    #[test]
    fn a_failed_probe_opens_the_breaker_again() {
        let breaker = Breaker::default();
        for _ in 0..BREAKER_TRIP_AFTER {
            breaker.failure();
        }
        breaker.open_until_ms.store(0, Ordering::Release);
        assert!(breaker.allow());
        breaker.failure();
        assert!(!breaker.allow());
    }
}
