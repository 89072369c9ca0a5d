//! Two sessiond replicas (A and B) as child processes over one fresh Postgres database, one Redis
//! and one key prefix, and waiting for a revocation to reach one.

use std::time::{Duration, Instant};

use sessiond::api::pb::TokenStatus;

use super::{
    keys::Keys,
    postgres::fresh_database,
    process::SessiondProcess,
    rpc::{Client, validate},
};

/// What a replica logs each time its subscription to the invalidation channel is (re)established.
pub const SUBSCRIBED: &str = "subscribed to invalidations";

/// Two replicas over one database, one Redis and one key prefix.
pub struct Replicas {
    pub a: SessiondProcess,
    pub b: SessiondProcess,
    /// The key prefix both use.
    pub prefix: String,
    /// The invalidation channel both subscribe to.
    pub channel: String,
    /// B's environment, to start it again.
    env_b: Vec<(&'static str, String)>,
    database: String,
    keys: Keys,
}

impl Replicas {
    /// Starts A, then B, on `redis_url`, with `env` on top of the defaults, and waits until both
    /// are subscribed to the invalidation channel.
    pub async fn start(redis_url: &str, extra: &[(&'static str, String)]) -> Self {
        let keys = Keys::generate();
        let database = fresh_database().await;
        let prefix = format!("sessiond-replicas:{}:", uuid::Uuid::now_v7().simple());
        let env = |name: &str| {
            let mut env = vec![
                ("SESSIOND_DATABASE_URL", database.clone()),
                ("SESSIOND_REDIS_URL", redis_url.to_owned()),
                ("SESSIOND_REDIS_KEY_PREFIX", prefix.clone()),
                ("SESSIOND_LOCAL_CACHE", "on".into()),
                ("SESSIOND_SHUTDOWN_DRAIN", "0s".into()),
                ("NO_COLOR", "1".into()),
                ("REPLICA", name.to_owned()),
            ];
            env.extend(keys.env());
            env.extend(extra.iter().cloned());
            env
        };
        // One after the other, so only one applies the migrations to the fresh database.
        let a = SessiondProcess::start(&env("A")).await;
        let env_b = env("B");
        let b = SessiondProcess::start(&env_b).await;
        a.wait_for_log(SUBSCRIBED, 1).await;
        b.wait_for_log(SUBSCRIBED, 1).await;
        Self {
            a,
            b,
            channel: format!("{prefix}invalidate"),
            prefix,
            env_b,
            database,
            keys,
        }
    }

    /// The URL of the database both use.
    pub fn database(&self) -> &str {
        &self.database
    }

    /// The key files both read.
    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// Stops B (SIGTERM) and starts it again, as a new process with the same settings.
    pub async fn restart_b(&mut self) {
        self.b.terminate(Duration::from_secs(20)).await;
        self.b = SessiondProcess::start(&self.env_b).await;
        self.b.wait_for_log(SUBSCRIBED, 1).await;
    }
}

/// Polls Validate of `access` on replica `b` until it says SESSION_REVOKED: how long that took,
/// and how many VALID answers came before. Gives up (panics) after 5 s.
pub async fn wait_until_revoked(
    client: &mut Client,
    access: &str,
    b: &SessiondProcess,
) -> (Duration, u32) {
    let started = Instant::now();
    let mut stale = 0;
    loop {
        let verdict = validate(client, access).await;
        match verdict.status() {
            TokenStatus::SessionRevoked => return (started.elapsed(), stale),
            TokenStatus::Valid => stale += 1,
            other => panic!("unexpected status {other:?}\n{}", b.log()),
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "B still accepts a revoked session after 5 s ({stale} VALID answers)\n{}",
            b.log()
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}
