//! The shared tier: sessions copied into Redis (through fred), so `Validate` rarely reaches the
//! store, and the invalidation channel that tells every replica's in-process tier about
//! revocations.
//!
//! This tier never fails a request. Every command has a short timeout and fails fast while Redis
//! is disconnected; a circuit breaker stops sending commands to a Redis that keeps failing, so a
//! dead or hung Redis costs one timeout per cool-down, not one per request. Errors are logged,
//! counted, and read as a miss.
//!
//! Layout: `<prefix>{u:<user_id>}:s:<session_id>` is a hash with `data` (the session as JSON) and
//! `rank`. All keys of one user share the hash tag, so they live in one Redis Cluster slot and one
//! script can write them all. Revoked session ids are published on `<prefix>invalidate`.
//!
//! Writers race (see the parent module), so every write goes through a script that keeps the
//! copy with the higher [`rank`].

use std::{
    collections::VecDeque,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use chrono::{DateTime, Utc};
use fred::{
    clients::SubscriberClient,
    prelude::{
        Builder, Client, ClientLike, Config, EventInterface, HashesInterface, LuaInterface,
        PubsubInterface, ReconnectPolicy,
    },
    types::{config::Options, scripts::Script},
};

use super::{LocalTier, rank};
use crate::{
    domain::{Session, SessionId, UserId},
    metrics,
};

/// Keeps the copy with the higher rank. ARGV holds (rank, data, ttl in ms) per key.
const MERGE_LUA: &str = r#"
for i, key in ipairs(KEYS) do
  local rank, data, ttl = ARGV[3 * i - 2], ARGV[3 * i - 1], ARGV[3 * i]
  local current = redis.call('HGET', key, 'rank')
  if not current or tonumber(current) < tonumber(rank) then
    redis.call('HSET', key, 'rank', rank, 'data', data)
    redis.call('PEXPIRE', key, ttl)
  end
end
return 0
"#;

/// Most revocations kept for a retry while Redis refuses writes.
const MAX_PENDING_REVOCATIONS: usize = 10_000;

/// One run of the merge script: its keys, and (rank, data, ttl) per key.
#[derive(Debug, Clone, PartialEq)]
struct MergeWrite {
    keys: Vec<String>,
    args: Vec<String>,
}

/// Revocations whose write failed, for the retrier.
#[derive(Default)]
struct PendingRevocations {
    writes: VecDeque<MergeWrite>,
    /// A retrier is running.
    retrying: bool,
}

/// Consecutive failures that open the breaker.
const BREAKER_TRIP_AFTER: u32 = 3;
/// How long an open breaker sends nothing to Redis before one probe may try again.
const BREAKER_COOL_DOWN: Duration = Duration::from_secs(1);

/// Settings of the Redis tier.
#[derive(Debug, Clone)]
pub struct RedisSettings {
    pub url: String,
    pub key_prefix: String,
    /// How long one command may take.
    pub timeout: Duration,
    /// How long an entry lives (capped by the session's expiry).
    pub ttl: Duration,
}

/// Sessions in Redis.
#[derive(Clone)]
pub struct RedisTier {
    client: Client,
    /// The same configuration, for the invalidation subscriber's own connection.
    builder: Arc<Builder>,
    options: Options,
    merge: Script,
    key_prefix: String,
    ttl: Duration,
    breaker: Arc<Breaker>,
    pending: Arc<Mutex<PendingRevocations>>,
}

impl RedisTier {
    /// Starts connecting in the background and returns at once: a Redis that is down at start, or
    /// later, only costs cache misses. Fails only on a malformed URL.
    pub fn connect(settings: &RedisSettings) -> anyhow::Result<Self> {
        let mut config = Config::from_url(&settings.url).map_err(|e| {
            anyhow::anyhow!(
                "SESSIOND_REDIS_URL is not a valid Redis URL: {}",
                e.details()
            )
        })?;
        // Keep reconnecting instead of failing the first connection: Redis may come later.
        config.fail_fast = false;
        let timeout = settings.timeout;
        let mut builder = Builder::from_config(config);
        builder
            .with_connection_config(|connection| {
                connection.connection_timeout = timeout.max(Duration::from_secs(1));
                connection.internal_command_timeout = timeout.max(Duration::from_secs(1));
                connection.max_command_attempts = 1;
                connection.tcp.nodelay = Some(true);
            })
            .with_performance_config(|performance| performance.default_command_timeout = timeout)
            .set_policy(ReconnectPolicy::new_exponential(0, 100, 2_000, 2));
        let client = builder
            .build()
            .map_err(|e| anyhow::anyhow!("cannot configure the Redis client: {}", e.details()))?;
        drop(client.connect());
        Ok(Self {
            client,
            builder: Arc::new(builder),
            options: Options {
                timeout: Some(timeout),
                max_attempts: Some(1),
                fail_fast: true,
                ..Options::default()
            },
            merge: Script::from_lua(MERGE_LUA),
            key_prefix: settings.key_prefix.clone(),
            ttl: settings.ttl,
            breaker: Arc::new(Breaker::default()),
            pending: Arc::default(),
        })
    }

    fn key(&self, user_id: &UserId, session_id: SessionId) -> String {
        format!("{}{{u:{user_id}}}:s:{session_id}", self.key_prefix)
    }

    fn channel(&self) -> String {
        format!("{}invalidate", self.key_prefix)
    }

    /// Runs one command through the breaker: skipped while it is open (unless `always`), and
    /// counted.
    async fn guarded<T>(
        &self,
        what: &'static str,
        always: bool,
        command: impl Future<Output = Result<T, fred::error::Error>>,
    ) -> Option<T> {
        if !self.breaker.allow() && !always {
            return None;
        }
        // A probe whose caller gave up (its future dropped mid-command) must not hold the
        // half-open slot forever.
        let _probe = ProbeSlot(&self.breaker);
        match command.await {
            Ok(value) => {
                self.breaker.success();
                Some(value)
            }
            Err(error) => {
                metrics::redis_error();
                if self.breaker.failure() {
                    tracing::warn!(error = %error, "redis keeps failing: circuit open, reading the store directly");
                } else {
                    tracing::warn!(error = %error, "redis {what} failed; falling back to the store");
                }
                None
            }
        }
    }

    /// The cached copy of a session, or `None` on a miss or any Redis trouble.
    #[tracing::instrument(name = "cache.redis.get", skip_all)]
    pub async fn get(&self, user_id: &UserId, session_id: SessionId) -> Option<Session> {
        let key = self.key(user_id, session_id);
        let client = self.client.with_options(&self.options);
        let data: String = self
            .guarded(
                "read",
                false,
                client.hget::<Option<String>, _, _>(&key, "data"),
            )
            .await??;
        let session: Session = match serde_json::from_str(&data) {
            Ok(session) => session,
            Err(error) => {
                tracing::warn!(error = %error, "undecodable cache entry; reading the store instead");
                return None;
            }
        };
        // The hash tag has the user, but a bug elsewhere must not hand one user another's session.
        (session.id == session_id && &session.user_id == user_id).then_some(session)
    }

    /// Merges these sessions, all of one user, into the cache, and announces the revoked ones on
    /// the invalidation channel. Errors are logged and dropped.
    #[tracing::instrument(name = "cache.redis.put", skip_all, fields(count = sessions.len()))]
    pub async fn put(&self, sessions: &[Session], now: DateTime<Utc>) {
        let mut keys = Vec::with_capacity(sessions.len());
        let mut args = Vec::with_capacity(sessions.len() * 3);
        for session in sessions {
            let Some(ttl) = self.entry_ttl(session, now) else {
                continue;
            };
            let Ok(data) = serde_json::to_string(session) else {
                continue;
            };
            keys.push(self.key(&session.user_id, session.id));
            args.extend([rank(session).to_string(), data, ttl.as_millis().to_string()]);
        }
        let revoked: Vec<String> = sessions
            .iter()
            .filter(|session| session.revoked_at.is_some())
            .map(|session| session.id.to_string())
            .collect();
        // A revocation is tried even through an open breaker (bounded by the timeout), and kept
        // for a retry if it fails: until it lands, Redis may serve the live copy to every
        // replica, for as long as the copy's TTL.
        let revoking = !revoked.is_empty();
        if !keys.is_empty() {
            let write = MergeWrite { keys, args };
            let written = self
                .guarded("write", revoking, self.merge(&write))
                .await
                .is_some();
            if revoking && !written {
                self.retry_later(write);
            }
        }
        if revoking {
            let client = self.client.with_options(&self.options);
            let announce = client.publish::<(), _, _>(self.channel(), revoked.join(","));
            self.guarded("publish", true, announce).await;
        }
    }

    async fn merge(&self, write: &MergeWrite) -> Result<(), fred::error::Error> {
        let client = self.client.with_options(&self.options);
        let (keys, args) = (write.keys.clone(), write.args.clone());
        match client
            .evalsha::<(), _, _, _>(self.merge.sha1().clone(), keys.clone(), args.clone())
            .await
        {
            Err(error) if error.details().contains("NOSCRIPT") => {
                // The script cache is empty after a Redis restart or failover: EVAL loads it again.
                client.eval(MERGE_LUA, keys, args).await
            }
            other => other,
        }
    }

    /// Queues a revocation that did not reach Redis, and starts the retrier unless it runs.
    fn retry_later(&self, write: MergeWrite) {
        let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        if pending.writes.len() >= MAX_PENDING_REVOCATIONS {
            // The oldest copy expires first; the store still refuses it once the copy is gone.
            pending.writes.pop_front();
            tracing::warn!("too many revocations waiting for Redis; dropped the oldest");
        }
        pending.writes.push_back(write);
        if !pending.retrying {
            pending.retrying = true;
            let tier = self.clone();
            tokio::spawn(async move { tier.retry_pending().await });
        }
    }

    /// Writes the queued revocations, oldest first, once per cool-down, until none is left. A
    /// round stops at the first failure: Redis is still failing.
    async fn retry_pending(&self) {
        loop {
            tokio::time::sleep(BREAKER_COOL_DOWN).await;
            loop {
                let next = self
                    .pending
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .writes
                    .front()
                    .cloned();
                let Some(write) = next else { break };
                if self
                    .guarded("write", true, self.merge(&write))
                    .await
                    .is_none()
                {
                    break;
                }
                let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
                // Written: drop it, unless the queue overflowed meanwhile and dropped it already.
                if pending.writes.front() == Some(&write) {
                    pending.writes.pop_front();
                }
            }
            let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
            if pending.writes.is_empty() {
                pending.retrying = false;
                tracing::info!("revocations that had failed to reach Redis are written");
                return;
            }
        }
    }

    /// How long the entry may live: the cache TTL, but never past the session's end.
    fn entry_ttl(&self, session: &Session, now: DateTime<Utc>) -> Option<Duration> {
        // A revoked copy is kept to the absolute end: it is what refuses the session's tokens.
        let end = match session.revoked_at {
            Some(_) => session.expires_at,
            None => session.expires_at.min(session.idle_expires_at),
        };
        let until_end = (end - now).to_std().ok().filter(|ttl| !ttl.is_zero())?;
        Some(until_end.min(self.ttl))
    }

    /// Subscribes to the invalidation channel on a connection of its own, and evicts every
    /// announced session from `local`. The local tier is trusted only while subscribed: on a lost
    /// connection it is cleared and bypassed until the subscription is back, since announcements
    /// made meanwhile are lost.
    pub fn subscribe(&self, local: LocalTier) -> anyhow::Result<()> {
        let subscriber: SubscriberClient = self.builder.build_subscriber_client().map_err(|e| {
            anyhow::anyhow!("cannot configure the Redis subscriber: {}", e.details())
        })?;
        local.distrust();
        let publisher = self.clone();
        let channel = self.channel();
        let mut messages = subscriber.message_rx();
        let mut errors = subscriber.error_rx();
        let mut reconnects = subscriber.reconnect_rx();
        tokio::spawn(async move {
            drop(subscriber.connect());
            // Resubscribes after every reconnect.
            let _manager = subscriber.manage_subscriptions();
            let mut state = Subscription::Down;
            loop {
                if matches!(state, Subscription::Down)
                    && subscriber.subscribe(channel.as_str()).await.is_ok()
                {
                    // fred does not wait for Redis to accept SUBSCRIBE (an ACL may refuse it):
                    // trust the channel only once a probe sent on it has come back.
                    let nonce = format!("probe:{}", uuid::Uuid::now_v7());
                    let client = publisher.client.with_options(&publisher.options);
                    let _ = client
                        .publish::<(), _, _>(channel.as_str(), nonce.as_str())
                        .await;
                    state = Subscription::Probing {
                        nonce,
                        since: Instant::now(),
                    };
                }
                tokio::select! {
                    message = messages.recv() => match message {
                        Ok(message) => {
                            let text = message.value.as_str().map(|text| text.to_string()).unwrap_or_default();
                            if matches!(&state, Subscription::Probing { nonce, .. } if *nonce == text) {
                                // Announcements made before this moment may be lost: start empty.
                                local.clear();
                                local.trust();
                                state = Subscription::Up;
                                tracing::info!("subscribed to invalidations; in-process tier trusted");
                            } else {
                                evict_announced(&local, &text);
                            }
                        }
                        // Lagged behind the channel: some announcements are lost.
                        Err(_) => local.clear(),
                    },
                    error = errors.recv() => {
                        if let Ok((error, _)) = error {
                            if local.distrust() {
                                tracing::warn!(error = %error, "lost the invalidation channel; in-process tier bypassed until resubscribed");
                            }
                            local.clear();
                            state = Subscription::Down;
                        }
                    },
                    _ = reconnects.recv() => {
                        local.distrust();
                        state = Subscription::Down;
                    }
                    // Not subscribed yet, or the probe never came back: try again.
                    () = tokio::time::sleep(SUBSCRIBE_RETRY), if !matches!(state, Subscription::Up) => {
                        if matches!(state, Subscription::Probing { since, .. } if since.elapsed() >= SUBSCRIBE_RETRY) {
                            state = Subscription::Down;
                        }
                    }
                }
            }
        });
        Ok(())
    }
}

/// Where the invalidation subscription stands.
enum Subscription {
    Down,
    /// Subscribed as far as the client knows; waiting for `nonce` to come back on the channel.
    Probing {
        nonce: String,
        since: Instant,
    },
    Up,
}

/// How long to wait before subscribing again, or for a probe to come back.
const SUBSCRIBE_RETRY: Duration = Duration::from_secs(1);

/// Frees the breaker's half-open slot when a guarded command ends, however it ends.
struct ProbeSlot<'a>(&'a Breaker);

impl Drop for ProbeSlot<'_> {
    fn drop(&mut self) {
        self.0.probing.store(false, Ordering::Release);
    }
}

fn evict_announced(local: &LocalTier, announced: &str) {
    for id in announced.split(',') {
        if let Ok(id) = id.parse::<SessionId>() {
            local.evict(id);
        }
    }
}

/// A circuit breaker: closed while Redis answers; open (nothing is sent) for a cool-down after
/// `BREAKER_TRIP_AFTER` failures in a row; then half-open, letting exactly one probe through,
/// whose outcome closes it or opens it again.
struct Breaker {
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
    fn allow(&self) -> bool {
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

    fn success(&self) {
        if self.failures.swap(0, Ordering::AcqRel) >= BREAKER_TRIP_AFTER {
            tracing::info!("redis answers again: circuit closed");
            metrics::redis_breaker_open(false);
        }
        self.probing.store(false, Ordering::Release);
    }

    /// Records a failure; true when this one opened the circuit.
    fn failure(&self) -> bool {
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
