//! Rate limits: GCRA over Redis, shared by every replica (the scripts are in
//! `cache/redis/rate.rs`), and the same algorithm in process while Redis is down or not
//! configured. Keys are arbitrary strings, so a new limit (per caller, say) is one more
//! [`Limit`] and one call.
//!
//! The in-process fallback counts per replica: with R replicas, a client spread over them gets up
//! to R times the rate while Redis is down. That is the price of failing open; failing closed
//! would turn a Redis outage into a sign-in outage.

use std::{
    str::FromStr,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use moka::{ops::compute::Op, sync::Cache};

use crate::{
    cache::{Gcra, RedisTier},
    error::Error,
};

/// Most keys the in-process fallback holds; beyond it the least used are forgotten (and so
/// allowed again), which bounds its memory whatever keys callers invent.
const LOCAL_MAX_KEYS: u64 = 100_000;

/// A rate: `count` calls per `period`, written `30/1m`; `off` is no limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate(Option<Gcra>);

impl Rate {
    /// No limit.
    pub const OFF: Self = Self(None);
}

impl FromStr for Rate {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        if text == "off" {
            return Ok(Self::OFF);
        }
        let (count, period) = text
            .split_once('/')
            .ok_or_else(|| format!("`{text}` is not `N/period` (as in `30/1m`) or `off`"))?;
        let count: u64 = count
            .trim()
            .parse()
            .ok()
            .filter(|count| *count > 0)
            .ok_or_else(|| format!("`{count}` is not a count above zero"))?;
        let period = humantime::parse_duration(period.trim()).map_err(|e| e.to_string())?;
        let period_ms = u64::try_from(period.as_millis()).unwrap_or(u64::MAX);
        if period_ms < count {
            return Err(format!(
                "`{text}`: at most one call per millisecond can be counted"
            ));
        }
        Ok(Self(Some(Gcra {
            interval_ms: period_ms / count,
            period_ms,
        })))
    }
}

/// What is limited; each names its setting, which a refusal names too.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    CreatePerUser,
    CreatePerCaller,
    RefreshPerSession,
}

impl Limit {
    fn setting(self) -> &'static str {
        match self {
            Self::CreatePerUser => "SESSIOND_CREATE_RATE_PER_USER",
            Self::CreatePerCaller => "SESSIOND_CREATE_RATE_PER_CALLER",
            Self::RefreshPerSession => "SESSIOND_REFRESH_RATE_PER_SESSION",
        }
    }

    /// The state's key of `key` (a user id, a token hash) under this limit: `<kind>:<key>`, where
    /// Redis adds its prefix and `rate:`.
    fn key(self, key: &str) -> String {
        let kind = match self {
            Self::CreatePerUser => "create-user",
            Self::CreatePerCaller => "create-caller",
            Self::RefreshPerSession => "refresh",
        };
        format!("{kind}:{key}")
    }
}

/// The rates in force.
#[derive(Debug, Clone, Copy)]
pub struct Rates {
    pub create_per_user: Rate,
    /// For a caller whose entry in the callers file gives no `create_rate` of its own.
    pub create_per_caller: Rate,
    pub refresh_per_session: Rate,
}

impl Rates {
    /// No limit at all.
    pub const OFF: Self = Self {
        create_per_user: Rate::OFF,
        create_per_caller: Rate::OFF,
        refresh_per_session: Rate::OFF,
    };

    fn of(&self, limit: Limit) -> Rate {
        match limit {
            Limit::CreatePerUser => self.create_per_user,
            Limit::CreatePerCaller => self.create_per_caller,
            Limit::RefreshPerSession => self.refresh_per_session,
        }
    }
}

/// A named caller asking for a session, as the per-caller CreateSession rate sees it.
#[derive(Debug, Clone, Copy)]
pub struct Requester<'a> {
    pub name: &'a str,
    /// Its own rate, if the callers file gives one; else `SESSIOND_CREATE_RATE_PER_CALLER`.
    pub create_rate: Option<Rate>,
}

/// The limiter: Redis when it answers, else the in-process count.
pub struct RateLimiter {
    rates: Rates,
    redis: Option<RedisTier>,
    /// TAT (ms since the epoch) by key, for the fallback.
    local: Cache<String, u64>,
}

impl RateLimiter {
    pub fn new(rates: Rates, redis: Option<RedisTier>) -> Self {
        // A caller's own rate may be longer: its local entries then live as long as this, which
        // only lets the fallback forget a busy caller's count early, never refuse wrongly.
        let longest = [
            rates.create_per_user,
            rates.create_per_caller,
            rates.refresh_per_session,
        ]
        .iter()
        .filter_map(|rate| rate.0)
        .map(|gcra| gcra.period_ms)
        .max()
        .unwrap_or(1);
        Self {
            rates,
            redis,
            // A TAT is never more than a period ahead, so an entry older than the longest period
            // says nothing.
            local: Cache::builder()
                .max_capacity(LOCAL_MAX_KEYS)
                .time_to_live(Duration::from_millis(longest))
                .build(),
        }
    }

    /// Counts one call of `limit` for `key`, or refuses it with RATE_LIMITED.
    pub async fn take(&self, limit: Limit, key: &str) -> Result<(), Error> {
        self.take_from(limit, key, 0).await
    }

    /// Counts one CreateSession of `requester`, at its own rate or the default.
    pub async fn take_for_caller(&self, requester: Requester<'_>) -> Result<(), Error> {
        let limit = Limit::CreatePerCaller;
        let rate = requester.create_rate.unwrap_or(self.rates.of(limit));
        self.count(limit, rate, requester.name, 0).await
    }

    /// Whether a call of `limit` for `key` would be allowed now, without counting it: the key's
    /// TAT (to carry on with [`RateLimiter::take_from`]), or the refusal.
    pub async fn peek(&self, limit: Limit, key: &str) -> Result<u64, Error> {
        let Some(gcra) = self.rates.of(limit).0 else {
            return Ok(0);
        };
        let key = limit.key(key);
        let redis = match &self.redis {
            Some(redis) => redis.rate_peek(&key, gcra).await,
            None => None,
        };
        let (tat, wait) = redis.unwrap_or_else(|| {
            let tat = self.local.get(&key).unwrap_or(0);
            (tat, wait(gcra, tat, now_ms()))
        });
        refuse_after(limit, wait).map(|()| tat)
    }

    /// Counts one call of `limit` for `key`, whose count starts at TAT `from` if that is later
    /// than its own (0: its own), or refuses it.
    pub async fn take_from(&self, limit: Limit, key: &str, from: u64) -> Result<(), Error> {
        self.count(limit, self.rates.of(limit), key, from).await
    }

    /// Counts one call of `limit` at `rate` for `key`, from TAT `from` (see `take_from`).
    async fn count(&self, limit: Limit, rate: Rate, key: &str, from: u64) -> Result<(), Error> {
        let Some(gcra) = rate.0 else {
            return Ok(());
        };
        let key = limit.key(key);
        let redis = match &self.redis {
            Some(redis) => redis.rate_take(&key, gcra, from).await,
            None => None,
        };
        let wait = match redis {
            Some(wait) => wait,
            None => self.take_locally(key, gcra, from),
        };
        refuse_after(limit, wait)
    }

    /// Forgets every count of `limit` for `keys` (an erased user's), in Redis and in this
    /// process, even with the limit off now: Redis may still hold counts made while it was on.
    /// Another replica's in-process count, kept only while Redis was down, expires within the
    /// rate's period.
    pub async fn forget(&self, limit: Limit, keys: impl IntoIterator<Item = impl AsRef<str>>) {
        let keys: Vec<String> = keys
            .into_iter()
            .map(|key| limit.key(key.as_ref()))
            .collect();
        for key in &keys {
            self.local.invalidate(key);
        }
        if let Some(redis) = &self.redis {
            redis.rate_forget(&keys).await;
        }
    }

    /// GCRA on the in-process map; one key's read and write are one atomic step.
    fn take_locally(&self, key: String, gcra: Gcra, from: u64) -> Option<u64> {
        let now = now_ms();
        let mut refused = None;
        self.local.entry(key).and_compute_with(|entry| {
            let tat = entry.map_or(0, |entry| entry.into_value()).max(from);
            match wait(gcra, tat, now) {
                Some(wait) => {
                    refused = Some(wait);
                    Op::Nop
                }
                None => Op::Put(tat.max(now) + gcra.interval_ms),
            }
        });
        refused
    }
}

/// How many ms until a call at `now` is allowed, given TAT `tat`; `None`: it is allowed now.
fn wait(gcra: Gcra, tat: u64, now: u64) -> Option<u64> {
    let allowed_at = (tat.max(now) + gcra.interval_ms).saturating_sub(gcra.period_ms);
    (allowed_at > now).then(|| allowed_at - now)
}

fn refuse_after(limit: Limit, wait: Option<u64>) -> Result<(), Error> {
    match wait {
        None => Ok(()),
        Some(ms) => {
            crate::metrics::rate_limited(limit.setting());
            Err(Error::RateLimited {
                setting: limit.setting(),
                retry_after: Duration::from_millis(ms),
            })
        }
    }
}

/// The wall clock in ms since the epoch, as Redis's TIME gives it.
fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| {
            u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gcra(text: &str) -> Gcra {
        text.parse::<Rate>().unwrap().0.unwrap()
    }

    #[test]
    fn rates_are_written_count_slash_period_or_off() {
        assert_eq!(
            gcra("30/1m"),
            Gcra {
                interval_ms: 2_000,
                period_ms: 60_000
            }
        );
        assert_eq!("off".parse::<Rate>(), Ok(Rate::OFF));
        for bad in ["30", "0/1m", "x/1m", "30/forever", "5000/1s"] {
            assert!(bad.parse::<Rate>().is_err(), "{bad}");
        }
    }

    #[test]
    fn a_burst_of_count_passes_then_one_per_interval() {
        let rate = gcra("3/3s");
        let now = 1_000_000;
        let mut tat = 0;
        for _ in 0..3 {
            assert_eq!(wait(rate, tat, now), None);
            tat = tat.max(now) + rate.interval_ms;
        }
        assert_eq!(wait(rate, tat, now), Some(1_000));
        assert_eq!(wait(rate, tat, now + 1_000), None);
    }

    #[tokio::test]
    async fn the_fallback_counts_each_key_alone_and_says_when_to_retry() {
        let limiter = RateLimiter::new(
            Rates {
                create_per_user: "2/1m".parse().unwrap(),
                ..Rates::OFF
            },
            None,
        );
        limiter.take(Limit::CreatePerUser, "a").await.unwrap();
        limiter.take(Limit::CreatePerUser, "a").await.unwrap();
        let refused = limiter.take(Limit::CreatePerUser, "a").await.unwrap_err();
        assert!(matches!(
            refused,
            Error::RateLimited { retry_after, .. }
                if retry_after > Duration::from_secs(29) && retry_after <= Duration::from_secs(30)
        ));
        limiter.take(Limit::CreatePerUser, "b").await.unwrap();
        // Off is off.
        for _ in 0..100 {
            limiter.take(Limit::RefreshPerSession, "s").await.unwrap();
        }
    }
}
