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
//! script can write them all. Revoked (and erased) session ids are published on
//! `<prefix>invalidate`. The other keys are rate-limit counts (`rate.rs`) and each replica's
//! write-probe key (`<prefix>{probe}:<uuid>`, holding no session); there is no per-user index.
//!
//! Writers race (see the parent module), so every write goes through a script that keeps the
//! copy with the higher [`rank`].
//!
//! A write Redis refuses may be a lost revocation, so it puts Redis in doubt (see [`doubt`]): this
//! replica stops reading Redis until it has reconciled Redis with the store, and a revocation that
//! did not land is announced as unwritten, so every replica that hears it does the same.
//!
//! Files: this one is the tier (reads, writes, the write probe); `breaker.rs` the circuit breaker;
//! `doubt.rs` when Redis's copies may be read; `subscriber.rs` the invalidation channel.

mod breaker;
mod doubt;
mod rate;
mod subscriber;

use secrecy::{ExposeSecret, SecretString};
use std::{
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use chrono::{DateTime, Utc};
use fred::{
    prelude::{
        Builder, Client, ClientLike, Config, HashesInterface, KeysInterface, LuaInterface,
        PubsubInterface, ReconnectPolicy,
    },
    types::{
        config::{Options, TlsConnector},
        scripts::Script,
    },
};

use super::rank;
use crate::{
    domain::{Session, SessionId, UserId},
    metrics,
};
use breaker::{Breaker, ProbeSlot};
use doubt::Doubt;
pub use doubt::Doubted;
pub use rate::Gcra;
use rate::RateScripts;
pub use subscriber::Invalidation;

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

/// One run of the merge script: its keys, and (rank, data, ttl) per key.
#[derive(Debug, Clone, Default, PartialEq)]
struct MergeWrite {
    keys: Vec<String>,
    args: Vec<String>,
}

/// What a command is for: whether an open breaker skips it, and whether its failure may have lost
/// a revocation (and so raises a doubt).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Command {
    /// Reading a copy: skipped while the breaker is open.
    Read,
    /// Writing live copies: skipped while the breaker is open.
    Fill,
    /// Writing revoked copies: tried through an open breaker.
    Revocation,
    /// The write probe: tried through an open breaker.
    Probe,
    /// Publishing on the invalidation channel: tried through an open breaker.
    Announce,
    /// Counting a rate limit: skipped while the breaker is open (the replica counts alone).
    Rate,
    /// Deleting an erased user's copies and rate-limit state: tried through an open breaker.
    Erase,
}

impl Command {
    fn name(self) -> &'static str {
        match self {
            Self::Read => "read",
            Self::Fill | Self::Revocation | Self::Probe => "write",
            Self::Announce => "publish",
            Self::Rate => "rate limit",
            Self::Erase => "delete",
        }
    }

    /// Whether `error` means a revocation may be missing from Redis: a revocation that failed in
    /// any way (a timed-out write may still land, or not); a copy or probe that Redis refused or
    /// could not be sent, as a revocation would have been. A copy or probe that only timed out
    /// proves nothing lost: Redis was slow, which the breaker handles, and a doubt would make
    /// Redis unreadable through a Postgres outage for no reason. A failed delete leaves what was
    /// there: a revoked copy, or one the erasure refuses to delete the store's rows without.
    fn may_have_lost_a_revocation(self, error: &fred::error::Error) -> bool {
        match self {
            Self::Revocation => true,
            Self::Fill | Self::Probe => *error.kind() != fred::error::ErrorKind::Timeout,
            Self::Read | Self::Announce | Self::Rate | Self::Erase => false,
        }
    }
}

/// How long the write probe's own key lives.
const PROBE_TTL: Duration = Duration::from_secs(10);

/// Settings of the Redis tier.
#[derive(Debug, Clone)]
pub struct RedisSettings {
    /// May hold a password: `Debug` redacts it.
    pub url: SecretString,
    pub key_prefix: String,
    /// How long one command may take.
    pub timeout: Duration,
    /// How long an entry lives (capped by the session's expiry).
    pub ttl: Duration,
    /// With `rediss://`: the CAs (PEM) the server's certificate must chain to; `None`: the
    /// system's roots.
    pub tls_ca_file: Option<PathBuf>,
}

/// Sessions in Redis.
#[derive(Clone)]
pub struct RedisTier {
    client: Client,
    /// The same configuration, for the invalidation subscriber's own connection.
    builder: Arc<Builder>,
    options: Options,
    merge: Script,
    rate: Arc<RateScripts>,
    key_prefix: String,
    ttl: Duration,
    breaker: Arc<Breaker>,
    doubt: Arc<Doubt>,
    /// This process's own key for the write probe, and the probes sent: each probe's rank is
    /// higher than the last, so the merge script really writes.
    probe_key: String,
    probes: Arc<AtomicU64>,
}

/// With a CA file, `config` trusts that CA alone. A `rediss://` URL is TLS whatever this says:
/// fred is built with rustls, so it never falls back to plaintext (without a TLS feature it
/// would, with a mere warning).
fn trust_private_ca(config: &mut Config, ca_file: Option<&Path>) -> anyhow::Result<()> {
    let Some(ca_file) = ca_file else {
        return Ok(());
    };
    let Some(tls) = config.tls.as_mut() else {
        anyhow::bail!(
            "SESSIOND_REDIS_TLS_CA_FILE is set but SESSIOND_REDIS_URL is not TLS: use rediss://"
        );
    };
    tls.connector = TlsConnector::from(crate::tls::client_config_trusting(
        ca_file,
        "SESSIOND_REDIS_TLS_CA_FILE",
    )?);
    Ok(())
}

impl RedisTier {
    /// Starts connecting in the background and returns at once: a Redis that is down at start, or
    /// later, only costs cache misses. Fails only on a malformed URL.
    pub fn connect(settings: &RedisSettings) -> anyhow::Result<Self> {
        let mut config = Config::from_url(settings.url.expose_secret()).map_err(|e| {
            anyhow::anyhow!(
                "SESSIOND_REDIS_URL is not a valid Redis URL: {}",
                e.details()
            )
        })?;
        trust_private_ca(&mut config, settings.tls_ca_file.as_deref())?;
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
            rate: Arc::default(),
            key_prefix: settings.key_prefix.clone(),
            ttl: settings.ttl,
            breaker: Arc::new(Breaker::default()),
            // A replica that starts cannot know what it missed: it reconciles first.
            doubt: Arc::new(Doubt::starting()),
            probe_key: format!("{}{{probe}}:{}", settings.key_prefix, uuid::Uuid::now_v7()),
            probes: Arc::default(),
        })
    }

    fn key(&self, user_id: &UserId, session_id: SessionId) -> String {
        format!("{}{{u:{user_id}}}:s:{session_id}", self.key_prefix)
    }

    fn channel(&self) -> String {
        format!("{}invalidate", self.key_prefix)
    }

    /// Runs one command through the breaker: skipped while it is open (but for revocations and
    /// announcements), and counted. A failed write raises a doubt.
    async fn guarded<T>(
        &self,
        kind: Command,
        command: impl Future<Output = Result<T, fred::error::Error>>,
    ) -> Option<T> {
        let always = matches!(
            kind,
            Command::Revocation | Command::Probe | Command::Announce | Command::Erase
        );
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
                let what = kind.name();
                if self.breaker.failure() {
                    tracing::warn!(error = %error, "redis keeps failing: circuit open, reading the store directly");
                } else {
                    tracing::warn!(error = %error, "redis {what} failed; falling back to the store");
                }
                if matches!(kind, Command::Fill | Command::Revocation | Command::Probe) {
                    metrics::redis_write_refused();
                }
                if kind.may_have_lost_a_revocation(&error) {
                    self.doubt.raise("Redis refused a write");
                }
                None
            }
        }
    }

    /// Whether Redis's copies may be read now (no doubt is pending).
    pub fn readable(&self) -> bool {
        self.doubt.trusted().is_some()
    }

    /// The cached copy of a session, or `None` on a miss or any Redis trouble.
    #[tracing::instrument(name = "cache.redis.get", skip_all)]
    pub async fn get(&self, user_id: &UserId, session_id: SessionId) -> Option<Session> {
        let key = self.key(user_id, session_id);
        let client = self.client.with_options(&self.options);
        let trusted = self.doubt.trusted()?;
        // Boxed: fred's command futures are some 13 KB, which every future holding this one
        // would otherwise carry and copy on each move.
        let data = self
            .guarded(
                Command::Read,
                Box::pin(client.hget::<Option<String>, _, _>(&key, "data")),
            )
            .await;
        // A doubt raised while the read was in flight may be about this very copy.
        let data: String = data.filter(|_| self.doubt.unchanged(trusted))??;
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
    /// the invalidation channel. Errors are logged and dropped; a revocation that did not land
    /// is announced as unwritten, so that every replica hearing it stops reading Redis.
    #[tracing::instrument(name = "cache.redis.put", skip_all, fields(count = sessions.len()))]
    pub async fn put(&self, sessions: &[Session], now: DateTime<Utc>) {
        let revoked: Vec<String> = sessions
            .iter()
            .filter(|session| session.revoked_at.is_some())
            .map(|session| session.id.to_string())
            .collect();
        let kind = if revoked.is_empty() {
            Command::Fill
        } else {
            Command::Revocation
        };
        let written = self.write(sessions, kind, now).await;
        if !revoked.is_empty() {
            let mut announcement = revoked.join(",");
            if !written {
                announcement.push(',');
                announcement.push_str(subscriber::UNWRITTEN);
            }
            self.publish(announcement).await;
        }
    }

    /// Deletes the copies of these sessions, all of `user_id`, in one command (their keys share
    /// the user's hash tag, so one Cluster slot); false if Redis did not take it.
    #[tracing::instrument(name = "cache.redis.delete", skip_all, fields(count = sessions.len()))]
    pub async fn delete(&self, user_id: &UserId, sessions: &[SessionId]) -> bool {
        if sessions.is_empty() {
            return true;
        }
        let keys: Vec<String> = sessions.iter().map(|id| self.key(user_id, *id)).collect();
        let client = self.client.with_options(&self.options);
        self.guarded(Command::Erase, client.del::<i64, _>(keys))
            .await
            .is_some()
    }

    /// Tells every replica, on the invalidation channel, to drop its in-process copies of these
    /// sessions. Names the sessions only, never their user.
    pub async fn announce_dropped(&self, sessions: &[SessionId]) {
        if sessions.is_empty() {
            return;
        }
        let ids: Vec<String> = sessions.iter().map(ToString::to_string).collect();
        self.publish(ids.join(",")).await;
    }

    /// Tells every replica, on the invalidation channel, to read the revocation log (see
    /// [`subscriber::LOGGED`]).
    pub async fn announce_logged(&self) {
        self.publish(subscriber::LOGGED.to_owned()).await;
    }

    /// Writes the revoked copies of these sessions, of any users, without announcing them (the
    /// reconciler's job); false as soon as one write fails.
    pub async fn rewrite_revoked(&self, sessions: &[Session], now: DateTime<Utc>) -> bool {
        let mut by_user: Vec<&Session> = sessions.iter().collect();
        by_user.sort_by(|a, b| a.user_id.as_str().cmp(b.user_id.as_str()));
        for one_user in by_user.chunk_by(|a, b| a.user_id == b.user_id) {
            let one_user: Vec<Session> = one_user.iter().map(|&session| session.clone()).collect();
            if !self.write(&one_user, Command::Revocation, now).await {
                return false;
            }
        }
        true
    }

    /// Whether Redis takes a write now (through the same script as every copy): a replica that
    /// writes nothing else still learns that Redis refuses writes. A refusal raises a doubt.
    pub async fn probe(&self) -> bool {
        let write = MergeWrite {
            keys: vec![self.probe_key.clone()],
            args: vec![
                (self.probes.fetch_add(1, Ordering::Relaxed) + 1).to_string(),
                String::new(),
                PROBE_TTL.as_millis().to_string(),
            ],
        };
        self.guarded(Command::Probe, self.merge(&write))
            .await
            .is_some()
    }

    /// Waits up to `within` for the first connection to Redis; false if there is none yet.
    pub async fn connected(&self, within: Duration) -> bool {
        matches!(
            tokio::time::timeout(within, self.client.wait_for_connect()).await,
            Ok(Ok(()))
        )
    }

    /// How long a copy lives in Redis, at most.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// The doubt not yet cleared, if any (for the reconciler).
    pub fn doubted(&self) -> Option<Doubted> {
        self.doubt.pending()
    }

    /// Trusts Redis again after a reconcile that began after `doubted` was read; false if a new
    /// doubt came in meanwhile.
    pub fn reconciled(&self, doubted: Doubted) -> bool {
        self.doubt.clear(doubted)
    }

    /// Merges these sessions, all of one user; true if Redis took them (or none needed writing).
    async fn write(&self, sessions: &[Session], kind: Command, now: DateTime<Utc>) -> bool {
        let mut write = MergeWrite::default();
        for session in sessions {
            let Some(ttl) = self.entry_ttl(session, now) else {
                continue;
            };
            let Ok(data) = serde_json::to_string(session) else {
                continue;
            };
            write.keys.push(self.key(&session.user_id, session.id));
            write
                .args
                .extend([rank(session).to_string(), data, ttl.as_millis().to_string()]);
        }
        write.keys.is_empty() || self.guarded(kind, self.merge(&write)).await.is_some()
    }

    /// Publishes `message` on the invalidation channel.
    async fn publish(&self, message: String) {
        let client = self.client.with_options(&self.options);
        // Boxed, as in `get`.
        let announce = Box::pin(client.publish::<(), _, _>(self.channel(), message));
        self.guarded(Command::Announce, announce).await;
    }

    async fn merge(&self, write: &MergeWrite) -> Result<(), fred::error::Error> {
        self.run_script(
            &self.merge,
            MERGE_LUA,
            write.keys.clone(),
            write.args.clone(),
        )
        .await
    }

    /// Runs `script` (whose source is `lua`) by its hash, loading it first if Redis lost it.
    /// Boxed: inline, its future nests too deep for the compiler in every caller's future.
    fn run_script<T: fred::types::FromValue + Send + 'static>(
        &self,
        script: &Script,
        lua: &'static str,
        keys: Vec<String>,
        args: Vec<String>,
    ) -> std::pin::Pin<Box<dyn Future<Output = Result<T, fred::error::Error>> + Send + 'static>>
    {
        let client = self.client.with_options(&self.options);
        let sha = script.sha1().clone();
        Box::pin(async move {
            match client
                .evalsha::<T, _, _, _>(sha, keys.clone(), args.clone())
                .await
            {
                // The script cache is empty after a Redis restart or failover: EVAL loads it
                // again.
                Err(error) if error.details().contains("NOSCRIPT") => {
                    client.eval(lua, keys, args).await
                }
                other => other,
            }
        })
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
