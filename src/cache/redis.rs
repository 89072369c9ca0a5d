//! The shared tier: sessions copied into Redis (through fred), so `Validate` rarely reaches
//! Postgres.
//!
//! This tier never fails a request. Every call has a short timeout and fails fast while Redis is
//! disconnected; errors are logged and read as a miss.
//!
//! Layout: `<prefix>{u:<user_id>}:s:<session_id>` is a hash with `data` (the session as JSON) and
//! `rank`. All keys of one user share the hash tag, so they live in one Redis Cluster slot.
//!
//! Writers race (see the parent module), so every write goes through a script that keeps the
//! copy with the higher [`rank`].

use std::time::Duration;

use chrono::{DateTime, Utc};
use fred::{
    prelude::{
        Builder, Client, ClientLike, Config, HashesInterface, LuaInterface, ReconnectPolicy,
    },
    types::{config::Options, scripts::Script},
};

use super::rank;
use crate::domain::{Session, SessionId, UserId};

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
    options: Options,
    merge: Script,
    key_prefix: String,
    ttl: Duration,
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
        let client = Builder::from_config(config)
            .with_connection_config(|connection| {
                connection.connection_timeout = timeout.max(Duration::from_secs(1));
                connection.internal_command_timeout = timeout.max(Duration::from_secs(1));
                connection.max_command_attempts = 1;
                connection.tcp.nodelay = Some(true);
            })
            .with_performance_config(|performance| performance.default_command_timeout = timeout)
            .set_policy(ReconnectPolicy::new_exponential(0, 100, 5_000, 2))
            .build()
            .map_err(|e| anyhow::anyhow!("cannot configure the Redis client: {}", e.details()))?;
        drop(client.connect());
        Ok(Self {
            client,
            options: Options {
                timeout: Some(timeout),
                max_attempts: Some(1),
                fail_fast: true,
                ..Options::default()
            },
            merge: Script::from_lua(MERGE_LUA),
            key_prefix: settings.key_prefix.clone(),
            ttl: settings.ttl,
        })
    }

    fn key(&self, user_id: &UserId, session_id: SessionId) -> String {
        format!("{}{{u:{user_id}}}:s:{session_id}", self.key_prefix)
    }

    /// The cached copy of a session, or `None` on a miss or any Redis trouble.
    #[tracing::instrument(name = "cache.redis.get", skip_all)]
    pub async fn get(&self, user_id: &UserId, session_id: SessionId) -> Option<Session> {
        let key = self.key(user_id, session_id);
        let data: Option<String> = match self
            .client
            .with_options(&self.options)
            .hget(&key, "data")
            .await
        {
            Ok(data) => data,
            Err(error) => {
                crate::metrics::redis_error();
                tracing::warn!(error = %error, "redis read failed; falling back to the store");
                return None;
            }
        };
        let session: Session = match serde_json::from_str(&data?) {
            Ok(session) => session,
            Err(error) => {
                tracing::warn!(error = %error, "undecodable cache entry; reading postgres instead");
                return None;
            }
        };
        // The hash tag has the user, but a bug elsewhere must not hand one user another's session.
        (session.id == session_id && &session.user_id == user_id).then_some(session)
    }

    /// Merges these sessions, all of one user, into the cache. A copy that Redis already holds in a
    /// newer state is left alone. Errors are logged and dropped.
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
            let rank = rank(session);
            keys.push(self.key(&session.user_id, session.id));
            args.extend([rank.to_string(), data, ttl.as_millis().to_string()]);
        }
        if keys.is_empty() {
            return;
        }
        if let Err(error) = self.merge(keys, args).await {
            crate::metrics::redis_error();
            tracing::warn!(error = %error, "redis write failed; the cache may serve the old state until its ttl");
        }
    }

    async fn merge(&self, keys: Vec<String>, args: Vec<String>) -> Result<(), fred::error::Error> {
        let client = self.client.with_options(&self.options);
        match client
            .evalsha::<(), _, _, _>(self.merge.sha1().clone(), keys.clone(), args.clone())
            .await
        {
            Err(error) if error.details().contains("NOSCRIPT") => {
                // The script cache is empty after a Redis restart or failover: load it and retry once.
                client.eval(MERGE_LUA, keys, args).await
            }
            other => other,
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
}
