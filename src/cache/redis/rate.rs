//! Rate-limit state in Redis, shared by every replica: GCRA (the generic cell rate algorithm),
//! one atomic script per step, on Redis's own clock so replicas' clocks need not agree.
//!
//! GCRA keeps one number per key, the theoretical arrival time (TAT, in ms since the epoch): a
//! call at `now` is allowed if `max(TAT, now) + interval - period <= now`, and then moves the TAT
//! to `max(TAT, now) + interval`. `interval` is `period / count`, so `count` calls fit in a burst
//! and then one per `interval`. The key expires when its TAT has passed: nothing is kept for an
//! idle key.

use fred::{prelude::KeysInterface, types::scripts::Script};

use super::{Command, RedisTier};

/// KEYS[1]; ARGV: interval ms, period ms, and a TAT to start from (0 for none). Allows and
/// counts a call (returns -1), or returns how many ms until one would be allowed.
const GCRA_LUA: &str = r#"
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local interval, period = tonumber(ARGV[1]), tonumber(ARGV[2])
local tat = math.max(tonumber(redis.call('GET', KEYS[1]) or ARGV[3]), tonumber(ARGV[3]), now)
local allowed_at = tat + interval - period
if allowed_at > now then
  return allowed_at - now
end
redis.call('SET', KEYS[1], tat + interval, 'PX', tat + interval - now)
return -1
"#;

/// KEYS[1]. The key's TAT (0 for none), and how many ms until a call would be allowed (-1: now).
const PEEK_LUA: &str = r#"
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local interval, period = tonumber(ARGV[1]), tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or 0)
local allowed_at = math.max(tat, now) + interval - period
if allowed_at > now then
  return {tat, allowed_at - now}
end
return {tat, -1}
"#;

/// A rate: `count` calls per `period_ms`, as GCRA's interval and period.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gcra {
    pub interval_ms: u64,
    pub period_ms: u64,
}

/// The scripts, loaded once per tier.
pub(super) struct RateScripts {
    gcra: Script,
    peek: Script,
}

impl Default for RateScripts {
    fn default() -> Self {
        Self {
            gcra: Script::from_lua(GCRA_LUA),
            peek: Script::from_lua(PEEK_LUA),
        }
    }
}

impl RedisTier {
    /// The Redis key of rate-limit `key`, under the configured prefix.
    fn rate_key(&self, key: &str) -> String {
        format!("{}rate:{key}", self.key_prefix)
    }

    /// Counts one call of `key` starting from TAT `from` (0: the key's own), if `rate` allows
    /// it: `Some(None)` allowed, `Some(Some(ms))` refused for `ms`, `None` if Redis did not
    /// answer (the caller falls back to its own count).
    pub async fn rate_take(&self, key: &str, rate: Gcra, from: u64) -> Option<Option<u64>> {
        let args = vec![
            rate.interval_ms.to_string(),
            rate.period_ms.to_string(),
            from.to_string(),
        ];
        let answer: i64 = self
            .guarded(
                Command::Rate,
                self.run_script(&self.rate.gcra, GCRA_LUA, vec![self.rate_key(key)], args),
            )
            .await?;
        Some(u64::try_from(answer).ok())
    }

    /// The TAT of `key` and, if `rate` would refuse a call now, for how many ms; `None` if Redis
    /// did not answer.
    pub async fn rate_peek(&self, key: &str, rate: Gcra) -> Option<(u64, Option<u64>)> {
        let args = vec![rate.interval_ms.to_string(), rate.period_ms.to_string()];
        let (tat, wait): (i64, i64) = self
            .guarded(
                Command::Rate,
                self.run_script(&self.rate.peek, PEEK_LUA, vec![self.rate_key(key)], args),
            )
            .await?;
        Some((u64::try_from(tat).unwrap_or(0), u64::try_from(wait).ok()))
    }

    /// Deletes the rate-limit state of these keys (an erased user's). One DEL per key, in one
    /// pipeline: the keys carry no hash tag, so in a Cluster each may live on another node. A
    /// failure is logged; a key left behind expires within its rate's period.
    pub async fn rate_forget(&self, keys: &[String]) {
        if keys.is_empty() {
            return;
        }
        let pipeline = self.client.pipeline();
        let deletes = async {
            for key in keys {
                pipeline.del::<(), _>(self.rate_key(key)).await?;
            }
            pipeline.all::<()>().await
        };
        self.guarded(Command::Erase, deletes).await;
    }
}
