//! The one typed settings struct, read from flags and `SESSIOND_*` environment variables.
//!
//! Durations are written as in `10s`, `15m` or `30d`. Secrets are never read from here directly:
//! only the paths of files that hold them, so nothing secret reaches `--help`, `Debug` or the logs.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::{ArgAction, Parser, ValueEnum, builder::BoolishValueParser};

/// Everything sessiond can be told at start.
#[derive(Debug, Clone, Parser)]
#[command(name = "sessiond", version, about)]
pub struct Settings {
    /// Address the gRPC server listens on. Loopback by default: without a callers file anyone who
    /// reaches it may call everything.
    #[arg(long, env = "SESSIOND_LISTEN_ADDR", default_value = "127.0.0.1:50051")]
    pub listen_addr: SocketAddr,

    /// TOML file of the callers and what each may call (see the README). Reread on SIGHUP and
    /// every `SESSIOND_KEY_RELOAD_INTERVAL`. Unset: every caller may call everything (open mode).
    #[arg(long, env = "SESSIOND_CALLERS_FILE")]
    pub callers_file: Option<PathBuf>,

    /// Allows open mode (no `SESSIOND_CALLERS_FILE`) on a listen address that is not loopback.
    #[arg(long, env = "SESSIOND_ALLOW_UNAUTHENTICATED_CALLERS", default_value = "false", value_parser = BoolishValueParser::new(), action = ArgAction::Set)]
    pub allow_unauthenticated_callers: bool,

    /// Address of the ops HTTP server: `/metrics` (Prometheus) and `/.well-known/jwks.json`.
    #[arg(long, env = "SESSIOND_OPS_ADDR", default_value = "[::]:9090")]
    pub ops_addr: SocketAddr,

    /// After SIGTERM, how long to keep answering while readiness reports NOT_SERVING, so load
    /// balancers stop sending new calls before the listener closes.
    #[arg(long, env = "SESSIOND_SHUTDOWN_DRAIN", default_value = "5s", value_parser = parse_duration)]
    pub shutdown_drain: Duration,

    /// After the drain, how long calls in flight may take to finish before the process exits anyway.
    #[arg(long, env = "SESSIOND_SHUTDOWN_GRACE", default_value = "10s", value_parser = parse_duration)]
    pub shutdown_grace: Duration,

    /// Postgres URL, the shared source of truth. Unset: the embedded single-node store (SQLite)
    /// in `SESSIOND_DATA_DIR`.
    #[arg(long, env = "SESSIOND_DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,

    /// Folder of the embedded store's file, when `SESSIOND_DATABASE_URL` is unset.
    #[arg(long, env = "SESSIOND_DATA_DIR", default_value = "data")]
    pub data_dir: PathBuf,

    /// Most connections the Postgres pool opens.
    #[arg(long, env = "SESSIOND_DATABASE_MAX_CONNECTIONS", default_value_t = 16)]
    pub database_max_connections: u32,

    /// How long a request waits for Postgres (a pooled connection, or one statement) before it
    /// fails with UNAVAILABLE.
    #[arg(long, env = "SESSIOND_DATABASE_TIMEOUT", default_value = "3s", value_parser = parse_duration)]
    pub database_timeout: Duration,

    /// Redis URL for the shared cache (`redis://`, `rediss://`, `redis-cluster://`,
    /// `redis-sentinel://`). Unset: no shared cache, only the in-process tier.
    #[arg(long, env = "SESSIOND_REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<String>,

    /// Prefix of every Redis key, so several deployments can share one Redis. No braces.
    #[arg(long, env = "SESSIOND_REDIS_KEY_PREFIX", default_value = "sessiond:")]
    pub redis_key_prefix: String,

    /// How long one Redis command may take before the request falls back to Postgres.
    #[arg(long, env = "SESSIOND_REDIS_TIMEOUT", default_value = "100ms", value_parser = parse_duration)]
    pub redis_timeout: Duration,

    /// How long a session stays in Redis after it was last written there (capped by its expiry).
    #[arg(long, env = "SESSIOND_CACHE_TTL", default_value = "10m", value_parser = parse_duration)]
    pub cache_ttl: Duration,

    /// Whether the in-process tier (sessions and verified tokens in this process) is on.
    #[arg(long, env = "SESSIOND_LOCAL_CACHE", default_value = "on", value_parser = BoolishValueParser::new(), action = ArgAction::Set)]
    pub local_cache: bool,

    /// Longest this replica acts on an in-process copy without hearing from the store; bounds
    /// how late a revocation made on another replica is seen (usually far sooner, by pub/sub).
    #[arg(long, env = "SESSIOND_LOCAL_CACHE_MAX_STALENESS", default_value = "1s", value_parser = parse_duration)]
    pub local_cache_max_staleness: Duration,

    /// Most sessions (and, separately, verified tokens) the in-process tier holds.
    #[arg(
        long,
        env = "SESSIOND_LOCAL_CACHE_MAX_ENTRIES",
        default_value_t = 100_000
    )]
    pub local_cache_max_entries: u64,

    /// Most bytes the in-process tier holds for sessions (and, separately, for tokens), estimated.
    #[arg(long, env = "SESSIOND_LOCAL_CACHE_MAX_BYTES", default_value_t = 64 * 1024 * 1024)]
    pub local_cache_max_bytes: u64,

    /// Lifetime of an access token.
    #[arg(long, env = "SESSIOND_ACCESS_TOKEN_TTL", default_value = "15m", value_parser = parse_duration)]
    pub access_token_ttl: Duration,

    /// Absolute lifetime of a session; activity does not extend it. Also caps a requested lifetime.
    #[arg(long, env = "SESSIOND_SESSION_LIFETIME", default_value = "30d", value_parser = parse_duration)]
    pub session_lifetime: Duration,

    /// A session with no refresh or validate for this long ends.
    #[arg(long, env = "SESSIOND_IDLE_TIMEOUT", default_value = "7d", value_parser = parse_duration)]
    pub idle_timeout: Duration,

    /// How long a retired refresh token may be presented again and get the same answer.
    #[arg(long, env = "SESSIOND_REFRESH_REUSE_GRACE", default_value = "10s", value_parser = parse_duration)]
    pub refresh_reuse_grace: Duration,

    /// Most live sessions one user may hold; 0 means unlimited.
    #[arg(long, env = "SESSIOND_MAX_SESSIONS_PER_USER", default_value_t = 0)]
    pub max_sessions_per_user: u32,

    /// What a new session does when the user is at the limit.
    #[arg(long, env = "SESSIOND_SESSION_LIMIT_POLICY", value_enum, default_value_t = LimitPolicy::EvictOldest)]
    pub session_limit_policy: LimitPolicy,

    /// Ed25519 private key (PKCS#8 PEM) that signs access tokens. Without it or a keys folder, a
    /// random key is made at start: tokens then die with the process and replicas refuse each
    /// other's tokens.
    #[arg(long, env = "SESSIOND_SIGNING_KEY_FILE")]
    pub signing_key_file: Option<PathBuf>,

    /// Folder of Ed25519 private keys (PKCS#8 PEM), read in name order: the last signs, all verify.
    /// Rotate by adding a file; retire a key by removing its file. Reread on SIGHUP and every
    /// `SESSIOND_KEY_RELOAD_INTERVAL`.
    #[arg(long, env = "SESSIOND_SIGNING_KEYS_DIR")]
    pub signing_keys_dir: Option<PathBuf>,

    /// File holding at least 32 random bytes, the HMAC key that derives each next refresh token.
    /// Without it or a keys folder, a random key is made at start, and a retried refresh after a
    /// restart is refused.
    #[arg(long, env = "SESSIOND_REFRESH_KEY_FILE")]
    pub refresh_key_file: Option<PathBuf>,

    /// Folder of refresh keys, read in name order: the last derives new tokens, all recognise a
    /// retried refresh. Rotating it never invalidates a live refresh token.
    #[arg(long, env = "SESSIOND_REFRESH_KEYS_DIR")]
    pub refresh_keys_dir: Option<PathBuf>,

    /// How often key files are reread (as well as on SIGHUP).
    #[arg(long, env = "SESSIOND_KEY_RELOAD_INTERVAL", default_value = "30s", value_parser = parse_duration)]
    pub key_reload_interval: Duration,

    /// The `iss` claim of issued access tokens, and the only one accepted.
    #[arg(long, env = "SESSIOND_ISSUER", default_value = "sessiond")]
    pub issuer: String,

    /// The `aud` claim of issued access tokens, and the only one accepted.
    #[arg(long, env = "SESSIOND_AUDIENCE", default_value = "sessiond")]
    pub audience: String,

    /// Log format: `text` for people, `json` for collectors. The level comes from `RUST_LOG`.
    #[arg(long, env = "SESSIOND_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// How often the sweeper deletes ended sessions (one replica at a time).
    #[arg(long, env = "SESSIOND_SWEEP_INTERVAL", default_value = "1m", value_parser = parse_duration)]
    pub sweep_interval: Duration,

    /// Most sessions the sweeper deletes in one statement.
    #[arg(long, env = "SESSIOND_SWEEP_BATCH_SIZE", default_value_t = 500, value_parser = clap::value_parser!(u32).range(1..))]
    pub sweep_batch_size: u32,

    /// How long a revoked or expired session is kept (still readable by GetSession and
    /// ListUserSessions with include_revoked) before the sweeper deletes it.
    #[arg(long, env = "SESSIOND_REVOKED_RETENTION", default_value = "7d", value_parser = parse_duration)]
    pub revoked_retention: Duration,
}

/// What CreateSession does for a user who already holds the maximum number of live sessions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LimitPolicy {
    /// Revoke the user's oldest live sessions (reason "session_limit") to make room.
    #[value(name = "evict_oldest", alias = "evict-oldest")]
    EvictOldest,
    /// Refuse the new session with RESOURCE_EXHAUSTED.
    Deny,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

impl Settings {
    /// Checks what clap's types cannot: the message names the setting.
    pub fn validate(&self) -> Result<(), String> {
        let positive = [
            ("SESSIOND_DATABASE_TIMEOUT", self.database_timeout),
            ("SESSIOND_REDIS_TIMEOUT", self.redis_timeout),
            ("SESSIOND_CACHE_TTL", self.cache_ttl),
            (
                "SESSIOND_LOCAL_CACHE_MAX_STALENESS",
                self.local_cache_max_staleness,
            ),
            ("SESSIOND_ACCESS_TOKEN_TTL", self.access_token_ttl),
            ("SESSIOND_SESSION_LIFETIME", self.session_lifetime),
            ("SESSIOND_IDLE_TIMEOUT", self.idle_timeout),
            ("SESSIOND_SWEEP_INTERVAL", self.sweep_interval),
        ];
        if let Some((name, _)) = positive.iter().find(|(_, value)| value.is_zero()) {
            return Err(format!("{name} must be longer than zero"));
        }
        if self.local_cache_max_entries == 0 || self.local_cache_max_bytes == 0 {
            return Err("SESSIOND_LOCAL_CACHE_MAX_ENTRIES and SESSIOND_LOCAL_CACHE_MAX_BYTES must be above zero; \
                        set SESSIOND_LOCAL_CACHE=off to turn the tier off"
                .into());
        }
        if self.database_max_connections == 0 {
            return Err("SESSIOND_DATABASE_MAX_CONNECTIONS must be at least 1".into());
        }
        if self.redis_key_prefix.contains(['{', '}']) {
            return Err("SESSIOND_REDIS_KEY_PREFIX must not contain braces: they pick the Redis Cluster slot".into());
        }
        if self.issuer.is_empty() {
            return Err("SESSIOND_ISSUER must not be empty".into());
        }
        if self.audience.is_empty() {
            return Err("SESSIOND_AUDIENCE must not be empty".into());
        }
        if self.callers_file.is_none()
            && !self.listen_addr.ip().is_loopback()
            && !self.allow_unauthenticated_callers
        {
            return Err(format!(
                "SESSIOND_LISTEN_ADDR {} is not a loopback address and SESSIOND_CALLERS_FILE is not set: anyone \
                 who reaches it could create sessions for any user. Set SESSIOND_CALLERS_FILE, or \
                 SESSIOND_ALLOW_UNAUTHENTICATED_CALLERS=true if something else guards the port",
                self.listen_addr
            ));
        }
        Ok(())
    }
}

fn parse_duration(text: &str) -> Result<Duration, humantime::DurationError> {
    humantime::parse_duration(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Settings, clap::Error> {
        Settings::try_parse_from(std::iter::once("sessiond").chain(args.iter().copied()))
    }

    #[test]
    fn defaults_match_the_documented_policy() {
        let settings = parse(&[]).expect("defaults parse");
        assert_eq!(settings.access_token_ttl, Duration::from_secs(15 * 60));
        assert_eq!(settings.session_lifetime, Duration::from_secs(30 * 86_400));
        assert_eq!(settings.idle_timeout, Duration::from_secs(7 * 86_400));
        assert_eq!(settings.refresh_reuse_grace, Duration::from_secs(10));
        assert_eq!(settings.max_sessions_per_user, 0);
        assert_eq!(settings.session_limit_policy, LimitPolicy::EvictOldest);
        assert_eq!(settings.database_url, None, "the embedded store by default");
        assert_eq!(settings.redis_url, None);
        assert!(settings.local_cache);
        assert!(settings.validate().is_ok());
    }

    #[test]
    fn durations_are_read_in_human_units() {
        let settings =
            parse(&["--idle-timeout", "36h", "--access-token-ttl", "90s"]).expect("parses");
        assert_eq!(settings.idle_timeout, Duration::from_secs(36 * 3600));
        assert_eq!(settings.access_token_ttl, Duration::from_secs(90));
    }

    #[test]
    fn a_bad_duration_names_the_setting() {
        let error = parse(&["--session-lifetime", "forever"]).expect_err("must fail");
        assert!(error.to_string().contains("--session-lifetime"), "{error}");
    }

    #[test]
    fn a_zero_duration_names_the_setting() {
        let settings = parse(&["--access-token-ttl", "0s"]).expect("parses");
        let error = settings.validate().expect_err("must fail");
        assert!(error.contains("SESSIOND_ACCESS_TOKEN_TTL"), "{error}");
    }

    #[test]
    fn the_local_tier_can_be_switched_off() {
        assert!(
            !parse(&["--local-cache", "off"])
                .expect("parses")
                .local_cache
        );
        assert!(parse(&["--local-cache", "on"]).expect("parses").local_cache);
    }

    #[test]
    fn the_sweeper_settings_default_and_refuse_zero() {
        let settings = parse(&[]).expect("defaults parse");
        assert_eq!(settings.sweep_interval, Duration::from_secs(60));
        assert_eq!(settings.sweep_batch_size, 500);
        assert_eq!(settings.revoked_retention, Duration::from_secs(7 * 86_400));
        let error = parse(&["--sweep-interval", "0s"])
            .expect("parses")
            .validate()
            .expect_err("must fail");
        assert!(error.contains("SESSIOND_SWEEP_INTERVAL"), "{error}");
        let error = parse(&["--sweep-batch-size", "0"]).expect_err("must fail");
        assert!(error.to_string().contains("--sweep-batch-size"), "{error}");
    }

    #[test]
    fn open_mode_is_refused_off_loopback_unless_allowed() {
        assert!(
            parse(&[])
                .expect("defaults parse")
                .listen_addr
                .ip()
                .is_loopback()
        );
        let error = parse(&["--listen-addr", "[::]:50051"])
            .expect("parses")
            .validate()
            .expect_err("must fail");
        assert!(
            error.contains("SESSIOND_ALLOW_UNAUTHENTICATED_CALLERS"),
            "{error}"
        );
        let allowed = parse(&[
            "--listen-addr",
            "[::]:50051",
            "--allow-unauthenticated-callers",
            "true",
        ])
        .expect("parses");
        assert!(allowed.validate().is_ok());
        let with_file =
            parse(&["--listen-addr", "[::]:50051", "--callers-file", "c.toml"]).expect("parses");
        assert!(with_file.validate().is_ok());
    }

    #[test]
    fn a_prefix_with_braces_is_refused() {
        let settings = parse(&["--redis-key-prefix", "a{b}"]).expect("parses");
        assert!(settings.validate().is_err());
    }
}
