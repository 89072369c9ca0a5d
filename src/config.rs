//! The one typed settings struct, read from flags and `SESSIOND_*` environment variables.
//!
//! Durations are written as in `10s`, `15m` or `30d`. Keys are never read from here directly: only
//! the paths of files that hold them. The database and Redis URLs, which may hold passwords, are
//! kept as secrets: `--help` does not show their values and `Debug` redacts them, so nothing secret
//! reaches the logs.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::{ArgAction, Parser, ValueEnum, builder::BoolishValueParser};
use secrecy::SecretString;

use crate::{limits::Rate, tls::TlsFiles};

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

    /// Server certificate chain (PEM, leaf first): with `SESSIOND_TLS_KEY_FILE`, gRPC is served
    /// over TLS. Both are reread on SIGHUP and every `SESSIOND_KEY_RELOAD_INTERVAL`; a bad pair
    /// keeps the one in use.
    #[arg(long, env = "SESSIOND_TLS_CERT_FILE")]
    pub tls_cert_file: Option<PathBuf>,

    /// The private key (PEM) of `SESSIOND_TLS_CERT_FILE`.
    #[arg(long, env = "SESSIOND_TLS_KEY_FILE")]
    pub tls_key_file: Option<PathBuf>,

    /// CA certificates (PEM bundle): every gRPC client must present a certificate that chains to
    /// one of them (mutual TLS). Needs `SESSIOND_TLS_CERT_FILE`.
    #[arg(long, env = "SESSIOND_TLS_CLIENT_CA_FILE")]
    pub tls_client_ca_file: Option<PathBuf>,

    /// With TLS on, where `grpc.health.v1.Health`, and nothing else, is also served in plaintext,
    /// for probes that cannot speak TLS (Kubernetes' `grpc:` probe).
    #[arg(long, env = "SESSIOND_PROBE_ADDR", default_value = "[::]:50052")]
    pub probe_addr: SocketAddr,

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

    /// Most concurrent HTTP/2 streams (calls) one gRPC connection may have open; the client queues
    /// the rest.
    #[arg(long, env = "SESSIOND_MAX_CONCURRENT_STREAMS", default_value_t = 128, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_concurrent_streams: u32,

    /// How often an idle gRPC connection is pinged (HTTP/2 PING), so a dead peer is noticed.
    #[arg(long, env = "SESSIOND_HTTP2_KEEPALIVE_INTERVAL", default_value = "30s", value_parser = parse_duration)]
    pub http2_keepalive_interval: Duration,

    /// How long a keepalive ping may go unanswered before the connection is closed.
    #[arg(long, env = "SESSIOND_HTTP2_KEEPALIVE_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub http2_keepalive_timeout: Duration,

    /// Age at which a gRPC connection is asked to go away (HTTP/2 GOAWAY; calls in flight finish),
    /// so clients reconnect and load spreads over replicas added since.
    #[arg(long, env = "SESSIOND_MAX_CONNECTION_AGE", default_value = "30m", value_parser = parse_duration)]
    pub max_connection_age: Duration,

    /// Largest request body, in bytes; a larger one is refused with RESOURCE_EXHAUSTED. The
    /// largest legal request is about 6 KB.
    #[arg(long, env = "SESSIOND_MAX_REQUEST_BYTES", default_value_t = 16 * 1024, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_request_bytes: u32,

    /// Server-side deadline of every unary call; a shorter `grpc-timeout` from the caller wins.
    #[arg(long, env = "SESSIOND_REQUEST_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub request_timeout: Duration,

    /// Most SessionService calls in flight in this process; past it a call is refused at once
    /// with RESOURCE_EXHAUSTED (`OVERLOADED`) rather than queued.
    #[arg(long, env = "SESSIOND_MAX_CALLS_IN_FLIGHT", default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_calls_in_flight: u32,

    /// Most calls in flight that need the store (every method but Validate), a part of
    /// `SESSIOND_MAX_CALLS_IN_FLIGHT`: writes cannot take the room Validate needs.
    #[arg(long, env = "SESSIOND_MAX_STORE_CALLS_IN_FLIGHT", default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_store_calls_in_flight: u32,

    /// CreateSession calls per user, written `N/period` (`30/1m`) or `off`; shared by every
    /// replica through Redis. Past it, RESOURCE_EXHAUSTED (`RATE_LIMITED`) with a `RetryInfo`.
    #[arg(long, env = "SESSIOND_CREATE_RATE_PER_USER", default_value = "30/1m")]
    pub create_rate_per_user: Rate,

    /// CreateSession calls per caller of the callers file (`N/period` or `off`); a caller's own
    /// `create_rate` there wins. Open mode has no callers to count.
    #[arg(long, env = "SESSIOND_CREATE_RATE_PER_CALLER", default_value = "off")]
    pub create_rate_per_caller: Rate,

    /// Refresh rotations per session (`N/period` or `off`). A retry within
    /// `SESSIOND_REFRESH_REUSE_GRACE`, which gets the same successor, does not count.
    #[arg(
        long,
        env = "SESSIOND_REFRESH_RATE_PER_SESSION",
        default_value = "10/1m"
    )]
    pub refresh_rate_per_session: Rate,

    /// Most connections the ops HTTP port holds at once; one more is closed as soon as accepted.
    #[arg(long, env = "SESSIOND_OPS_MAX_CONNECTIONS", default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..))]
    pub ops_max_connections: u32,

    /// How long an ops HTTP client may take to send a request's headers, and how long a
    /// kept-alive connection may wait for its next request; past it the connection is closed.
    #[arg(long, env = "SESSIOND_OPS_HEADER_READ_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub ops_header_read_timeout: Duration,

    /// Longest an ops HTTP connection lives, whatever it does (a client reading an answer slowly
    /// included): then it is closed after the request in flight.
    #[arg(long, env = "SESSIOND_OPS_CONNECTION_TIMEOUT", default_value = "60s", value_parser = parse_duration)]
    pub ops_connection_timeout: Duration,

    /// Address of the HTTP forward-auth port (`/auth/verify`, for nginx `auth_request`, Caddy
    /// `forward_auth`, Traefik `ForwardAuth`), and nothing else. It needs no caller identity:
    /// bind it where only the proxy reaches it. Unset: off.
    #[arg(long, env = "SESSIOND_FORWARD_AUTH_ADDR")]
    pub forward_auth_addr: Option<SocketAddr>,

    /// Most connections the forward-auth port holds at once (each proxy keeps a pool); one more
    /// is closed as soon as accepted. Its header-read and connection timeouts are the ops port's.
    #[arg(long, env = "SESSIOND_FORWARD_AUTH_MAX_CONNECTIONS", default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..))]
    pub forward_auth_max_connections: u32,

    /// A cookie the gateways (Envoy's Check, forward-auth) read the access token from when the
    /// request has no `authorization: Bearer` header. Unset: the header only.
    #[arg(long, env = "SESSIOND_EXT_AUTHZ_COOKIE")]
    pub ext_authz_cookie: Option<String>,

    /// The header the gateways pass the session's user id upstream in.
    #[arg(
        long,
        env = "SESSIOND_EXT_AUTHZ_USER_HEADER",
        default_value = "x-sessiond-user-id"
    )]
    pub ext_authz_user_header: String,

    /// The header the gateways pass the session id upstream in.
    #[arg(
        long,
        env = "SESSIOND_EXT_AUTHZ_SESSION_HEADER",
        default_value = "x-sessiond-session-id"
    )]
    pub ext_authz_session_header: String,

    /// Whether Envoy's Check removes the credential (the `authorization` header, or the session
    /// cookie) from the request it lets through, so the upstream never sees the token.
    #[arg(long, env = "SESSIOND_EXT_AUTHZ_STRIP_CREDENTIAL", default_value = "false", value_parser = BoolishValueParser::new(), action = ArgAction::Set)]
    pub ext_authz_strip_credential: bool,

    /// Largest `Check` request, in bytes: it carries the client request's headers (Envoy's own
    /// default cap on them is 60 KiB), so it has a bound of its own.
    #[arg(long, env = "SESSIOND_EXT_AUTHZ_MAX_REQUEST_BYTES", default_value_t = 96 * 1024, value_parser = clap::value_parser!(u32).range(1..))]
    pub ext_authz_max_request_bytes: u32,

    /// Postgres URL, the shared source of truth. Unset: the embedded single-node store (SQLite)
    /// in `SESSIOND_DATA_DIR`.
    #[arg(long, env = "SESSIOND_DATABASE_URL", hide_env_values = true, value_parser = secret)]
    pub database_url: Option<SecretString>,

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
    #[arg(long, env = "SESSIOND_REDIS_URL", hide_env_values = true, value_parser = secret)]
    pub redis_url: Option<SecretString>,

    /// With a `rediss://` URL: CA certificates (PEM bundle) the Redis server's certificate must
    /// chain to, instead of the system's roots.
    #[arg(long, env = "SESSIOND_REDIS_TLS_CA_FILE")]
    pub redis_tls_ca_file: Option<PathBuf>,

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

    /// Most live sessions one user may hold; 0 means unlimited. Finite by default, so one user
    /// cannot make RevokeUserSessions or ListUserSessions arbitrarily large.
    #[arg(long, env = "SESSIOND_MAX_SESSIONS_PER_USER", default_value_t = 100)]
    pub max_sessions_per_user: u32,

    /// What a new session does when the user is at the limit.
    #[arg(long, env = "SESSIOND_SESSION_LIMIT_POLICY", value_enum, default_value_t = LimitPolicy::EvictOldest)]
    pub session_limit_policy: LimitPolicy,

    /// How much of `device.ip_address` is stored: `full`, or `truncate` to its network (/24 for
    /// IPv4, /48 for IPv6), for deployments that must not keep subscribers' addresses.
    #[arg(long, env = "SESSIOND_IP_PRIVACY", value_enum, default_value_t = IpPrivacy::Full)]
    pub ip_privacy: IpPrivacy,

    /// Ed25519 private key (PKCS#8 PEM) that signs access tokens. Without it or a keys folder: the
    /// embedded store makes one once in `SESSIOND_DATA_DIR` and keeps it; with Postgres, start
    /// fails unless `SESSIOND_ALLOW_EPHEMERAL_KEYS` allows a random key for this process.
    #[arg(long, env = "SESSIOND_SIGNING_KEY_FILE")]
    pub signing_key_file: Option<PathBuf>,

    /// Folder of Ed25519 private keys (PKCS#8 PEM), read in name order: the last signs, all verify.
    /// Rotate by adding a file; retire a key by removing its file. Reread on SIGHUP and every
    /// `SESSIOND_KEY_RELOAD_INTERVAL`.
    #[arg(long, env = "SESSIOND_SIGNING_KEYS_DIR")]
    pub signing_keys_dir: Option<PathBuf>,

    /// File holding at least 32 random bytes, the HMAC key that derives each next refresh token.
    /// Without it or a keys folder: as for the signing key.
    #[arg(long, env = "SESSIOND_REFRESH_KEY_FILE")]
    pub refresh_key_file: Option<PathBuf>,

    /// Folder of refresh keys, read in name order: the last derives new tokens, all recognise a
    /// retried refresh. Rotating it never invalidates a live refresh token.
    #[arg(long, env = "SESSIOND_REFRESH_KEYS_DIR")]
    pub refresh_keys_dir: Option<PathBuf>,

    /// With Postgres and no key configured, start anyway with random keys that die with the
    /// process. Only for trying sessiond: replicas then refuse each other's tokens, and every
    /// token dies at a restart.
    #[arg(long, env = "SESSIOND_ALLOW_EPHEMERAL_KEYS", default_value = "false", value_parser = BoolishValueParser::new(), action = ArgAction::Set)]
    pub allow_ephemeral_keys: bool,

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

/// How much of a client's IP address is stored with its session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum IpPrivacy {
    /// The address as given.
    Full,
    /// Only its network: the /24 of an IPv4 address, the /48 of an IPv6 address.
    Truncate,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

impl Settings {
    /// The TLS files, if gRPC is served over TLS (checked by [`Settings::validate`]).
    pub fn tls_files(&self) -> Option<TlsFiles> {
        Some(TlsFiles {
            cert: self.tls_cert_file.clone()?,
            key: self.tls_key_file.clone()?,
            client_ca: self.tls_client_ca_file.clone(),
        })
    }

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
            (
                "SESSIOND_HTTP2_KEEPALIVE_INTERVAL",
                self.http2_keepalive_interval,
            ),
            (
                "SESSIOND_HTTP2_KEEPALIVE_TIMEOUT",
                self.http2_keepalive_timeout,
            ),
            ("SESSIOND_MAX_CONNECTION_AGE", self.max_connection_age),
            ("SESSIOND_REQUEST_TIMEOUT", self.request_timeout),
            (
                "SESSIOND_OPS_HEADER_READ_TIMEOUT",
                self.ops_header_read_timeout,
            ),
            (
                "SESSIOND_OPS_CONNECTION_TIMEOUT",
                self.ops_connection_timeout,
            ),
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
        match (&self.tls_cert_file, &self.tls_key_file) {
            (Some(_), None) => {
                return Err("SESSIOND_TLS_CERT_FILE is set without SESSIOND_TLS_KEY_FILE".into());
            }
            (None, Some(_)) => {
                return Err("SESSIOND_TLS_KEY_FILE is set without SESSIOND_TLS_CERT_FILE".into());
            }
            _ => {}
        }
        if self.tls_client_ca_file.is_some() && self.tls_cert_file.is_none() {
            return Err(
                "SESSIOND_TLS_CLIENT_CA_FILE needs SESSIOND_TLS_CERT_FILE and SESSIOND_TLS_KEY_FILE: \
                 client certificates are asked for only over TLS"
                    .into(),
            );
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

/// A setting that may hold a password.
fn secret(text: &str) -> Result<SecretString, std::convert::Infallible> {
    Ok(text.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Settings, clap::Error> {
        Settings::try_parse_from(std::iter::once("sessiond").chain(args.iter().copied()))
    }

    #[test]
    fn debug_output_shows_no_password() {
        let settings = parse(&[
            "--database-url",
            "postgres://sessiond:hunter2@db/sessiond",
            "--redis-url",
            "redis://:s3cret@cache:6379",
        ])
        .expect("parses");
        let printed = format!("{settings:?}");
        assert!(!printed.contains("hunter2"), "{printed}");
        assert!(!printed.contains("s3cret"), "{printed}");
        assert!(printed.contains("database_url"), "{printed}");
    }

    #[test]
    fn defaults_match_the_documented_policy() {
        let settings = parse(&[]).expect("defaults parse");
        assert_eq!(settings.access_token_ttl, Duration::from_secs(15 * 60));
        assert_eq!(settings.session_lifetime, Duration::from_secs(30 * 86_400));
        assert_eq!(settings.idle_timeout, Duration::from_secs(7 * 86_400));
        assert_eq!(settings.refresh_reuse_grace, Duration::from_secs(10));
        assert_eq!(settings.max_sessions_per_user, 100);
        assert_eq!(settings.session_limit_policy, LimitPolicy::EvictOldest);
        assert!(
            settings.database_url.is_none(),
            "the embedded store by default"
        );
        assert!(settings.redis_url.is_none());
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
    fn tls_needs_both_files_and_a_client_ca_needs_tls() {
        assert!(parse(&[]).expect("defaults parse").tls_files().is_none());
        for (args, named) in [
            (&["--tls-cert-file", "c.pem"][..], "SESSIOND_TLS_KEY_FILE"),
            (&["--tls-key-file", "k.pem"][..], "SESSIOND_TLS_CERT_FILE"),
            (
                &["--tls-client-ca-file", "ca.pem"][..],
                "SESSIOND_TLS_CLIENT_CA_FILE",
            ),
        ] {
            let error = parse(args)
                .expect("parses")
                .validate()
                .expect_err("must fail");
            assert!(error.contains(named), "{args:?}: {error}");
        }
        let mutual = parse(&[
            "--tls-cert-file",
            "c.pem",
            "--tls-key-file",
            "k.pem",
            "--tls-client-ca-file",
            "ca.pem",
        ])
        .expect("parses");
        assert!(mutual.validate().is_ok());
        let files = mutual.tls_files().expect("TLS is on");
        assert_eq!(files.client_ca, Some(PathBuf::from("ca.pem")));
    }

    #[test]
    fn a_prefix_with_braces_is_refused() {
        let settings = parse(&["--redis-key-prefix", "a{b}"]).expect("parses");
        assert!(settings.validate().is_err());
    }
}
