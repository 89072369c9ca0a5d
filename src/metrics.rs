//! Every metric sessiond exports, in one place: its name, its help text, and the one function that
//! records it. Served as Prometheus text on the ops port (`/metrics`).
//!
//! Labels are bounded: RPC methods and gRPC codes are fixed sets, callers are the names in the
//! callers file (plus `anonymous` and `unidentified`), and a caller's free-text revoke reason is
//! reported as `caller`, never as itself.

use std::{sync::OnceLock, time::Duration};

use metrics::{
    Counter, Histogram, counter, describe_counter, describe_gauge, describe_histogram, gauge,
    histogram,
};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::domain::RevokeReason;

const RPC_REQUESTS: &str = "sessiond_rpc_requests_total";
const RPC_DURATION: &str = "sessiond_rpc_duration_seconds";
const CACHE_LOOKUPS: &str = "sessiond_cache_lookups_total";
const REDIS_ERRORS: &str = "sessiond_redis_errors_total";
const STORE_ERRORS: &str = "sessiond_store_errors_total";
const SESSIONS_CREATED: &str = "sessiond_sessions_created_total";
const SESSIONS_REFRESHED: &str = "sessiond_sessions_refreshed_total";
const SESSIONS_REVOKED: &str = "sessiond_sessions_revoked_total";
const SESSIONS_ERASED: &str = "sessiond_sessions_erased_total";
const REFRESH_TOKEN_REUSE: &str = "sessiond_refresh_token_reuse_total";
const SIGNING_KEYS: &str = "sessiond_signing_keys";
const REVOCATIONS_IN_LEDGER: &str = "sessiond_revocations_in_ledger";
const REVOCATION_WATCHERS: &str = "sessiond_revocation_watchers";
const REDIS_BREAKER_OPEN: &str = "sessiond_redis_breaker_open";
const REDIS_WRITES_REFUSED: &str = "sessiond_redis_writes_refused_total";
const REDIS_TRUSTED: &str = "sessiond_redis_trusted";
const REDIS_RECONCILED: &str = "sessiond_redis_reconciled_sessions_total";
const SWEEPER_DELETED: &str = "sessiond_sweeper_deleted_total";
const CALLS_SHED: &str = "sessiond_calls_shed_total";
const RATE_LIMITED: &str = "sessiond_rate_limited_total";

/// The process-wide Prometheus recorder, installed on first use.
pub fn handle() -> Option<&'static PrometheusHandle> {
    static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Full(RPC_DURATION.into()),
                    &[
                        0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                        0.25, 1.0,
                    ],
                )
                .ok()?
                .install_recorder()
                .map_err(
                    |error| tracing::error!(%error, "metrics are off: cannot install the recorder"),
                )
                .ok()?;
            describe();
            Some(recorder)
        })
        .as_ref()
}

fn describe() {
    describe_counter!(
        RPC_REQUESTS,
        "Calls, by method (SessionService's, Check, ForwardAuth), gRPC code and caller (its name in the callers file). A gateway call is counted with the code its decision stands for: OK allowed, UNAUTHENTICATED refused, UNAVAILABLE unknown."
    );
    describe_histogram!(
        RPC_DURATION,
        metrics::Unit::Seconds,
        "Call latency, by method."
    );
    describe_counter!(
        CACHE_LOOKUPS,
        "Cache lookups, by tier (local, redis, token) and result (hit, miss)."
    );
    describe_counter!(
        REDIS_ERRORS,
        "Redis commands that failed or timed out (each fell back to the store)."
    );
    describe_counter!(
        STORE_ERRORS,
        "Store statements that failed, by kind (unavailable, internal)."
    );
    describe_counter!(SESSIONS_CREATED, "Sessions created.");
    describe_counter!(SESSIONS_REFRESHED, "Refresh-token rotations.");
    describe_counter!(
        SESSIONS_REVOKED,
        "Sessions revoked, by reason (caller for a caller's own reason)."
    );
    describe_counter!(
        SESSIONS_ERASED,
        "Session rows DeleteUserSessions erased (live or not), with their refresh tokens."
    );
    describe_counter!(
        REFRESH_TOKEN_REUSE,
        "Retired refresh tokens presented after the grace window."
    );
    describe_gauge!(SIGNING_KEYS, "Access-token verification keys loaded.");
    describe_gauge!(
        REVOCATIONS_IN_LEDGER,
        "Revocations (sessions and users' not-before instants) this replica holds from the revocation log, for as long as their tokens may live."
    );
    describe_gauge!(
        REVOCATION_WATCHERS,
        "WatchRevocations streams this replica serves."
    );
    describe_gauge!(
        REDIS_BREAKER_OPEN,
        "1 while the Redis circuit breaker is open (Redis skipped), else 0."
    );
    describe_counter!(
        REDIS_WRITES_REFUSED,
        "Cache writes (copies, revocations, write probes) that Redis refused or that failed; each puts Redis in doubt."
    );
    describe_gauge!(
        REDIS_TRUSTED,
        "1 while Redis's copies are read; 0 while Redis is in doubt (it may have lost a revocation) and the store answers instead."
    );
    describe_counter!(
        REDIS_RECONCILED,
        "Revoked sessions copied from the store into Redis to clear a doubt."
    );
    describe_counter!(
        CALLS_SHED,
        "Calls refused unstarted (RESOURCE_EXHAUSTED, OVERLOADED), by the setting whose bound was full."
    );
    describe_counter!(
        RATE_LIMITED,
        "Calls refused by a rate limit (RESOURCE_EXHAUSTED, RATE_LIMITED), by its setting."
    );
    describe_counter!(
        SWEEPER_DELETED,
        "Ended sessions (expired or revoked, past retention) the sweeper deleted."
    );
}

/// The methods sessiond serves, a fixed label set: SessionService's, then the gateways'.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rpc {
    CreateSession,
    Validate,
    Refresh,
    RevokeSession,
    RevokeUserSessions,
    RevokeSessions,
    WatchRevocations,
    DeleteUserSessions,
    ListUserSessions,
    GetSession,
    /// `envoy.service.auth.v3.Authorization/Check`.
    Check,
    /// `/auth/verify` on the forward-auth port.
    ForwardAuth,
}

impl Rpc {
    pub const COUNT: usize = 12;

    /// The `sessiond.v1.SessionService` methods.
    pub const SESSION_SERVICE: [Self; 10] = [
        Self::CreateSession,
        Self::Validate,
        Self::Refresh,
        Self::RevokeSession,
        Self::RevokeUserSessions,
        Self::RevokeSessions,
        Self::WatchRevocations,
        Self::DeleteUserSessions,
        Self::ListUserSessions,
        Self::GetSession,
    ];

    /// The SessionService method called `name` (as in the request path).
    pub fn session_method(name: &str) -> Option<Self> {
        Self::SESSION_SERVICE
            .into_iter()
            .find(|rpc| rpc.name() == name)
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::CreateSession => "CreateSession",
            Self::Validate => "Validate",
            Self::Refresh => "Refresh",
            Self::RevokeSession => "RevokeSession",
            Self::RevokeUserSessions => "RevokeUserSessions",
            Self::RevokeSessions => "RevokeSessions",
            Self::WatchRevocations => "WatchRevocations",
            Self::DeleteUserSessions => "DeleteUserSessions",
            Self::ListUserSessions => "ListUserSessions",
            Self::GetSession => "GetSession",
            Self::Check => "Check",
            Self::ForwardAuth => "ForwardAuth",
        }
    }
}

/// The cache tiers, a fixed label set.
#[derive(Debug, Clone, Copy)]
pub enum CacheTier {
    Local,
    Redis,
    Token,
}

impl CacheTier {
    const COUNT: usize = 3;

    fn name(self) -> &'static str {
        match self {
            Self::Local => "local",
            Self::Redis => "redis",
            Self::Token => "token",
        }
    }
}

/// gRPC codes 0 (OK) to 16 (UNAUTHENTICATED).
const GRPC_CODES: usize = 17;

// The metrics on every request's path are registered once and then recorded through their
// handles: the macros look a metric up by name and labels on each call, which costs more than the
// warm Validate it measures. Registering goes through `handle()`, so the recorder is installed
// first.
static RPC_LATENCY: [OnceLock<Histogram>; Rpc::COUNT] = [const { OnceLock::new() }; Rpc::COUNT];
static CACHE_LOOKUP_RESULTS: [[OnceLock<Counter>; 2]; CacheTier::COUNT] =
    [const { [const { OnceLock::new() }; 2] }; CacheTier::COUNT];

/// One caller's `sessiond_rpc_requests_total` counters, by method and code, registered on first
/// use. Each caller holds its own, so the hot path looks nothing up by name.
pub struct RpcCalls {
    caller: String,
    counters: [[OnceLock<Counter>; GRPC_CODES]; Rpc::COUNT],
}

impl RpcCalls {
    pub fn new(caller: &str) -> Self {
        Self {
            caller: caller.to_owned(),
            counters: [const { [const { OnceLock::new() }; GRPC_CODES] }; Rpc::COUNT],
        }
    }
}

impl std::fmt::Debug for RpcCalls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RpcCalls")
            .field("caller", &self.caller)
            .finish_non_exhaustive()
    }
}

/// One call by the caller counted in `calls` ended with `code` after `elapsed`.
pub fn rpc(calls: &RpcCalls, method: Rpc, code: tonic::Code, elapsed: Duration) {
    let by_code = &calls.counters[method as usize];
    let counter = by_code[(code as usize).min(GRPC_CODES - 1)].get_or_init(|| {
        handle();
        counter!(RPC_REQUESTS, "method" => method.name(), "code" => format!("{code:?}"), "caller" => calls.caller.clone())
    });
    counter.increment(1);
    RPC_LATENCY[method as usize]
        .get_or_init(|| {
            handle();
            histogram!(RPC_DURATION, "method" => method.name())
        })
        .record(elapsed.as_secs_f64());
}

/// A cache tier was asked.
pub fn cache_lookup(tier: CacheTier, hit: bool) {
    CACHE_LOOKUP_RESULTS[tier as usize][usize::from(hit)]
        .get_or_init(|| {
            handle();
            counter!(CACHE_LOOKUPS, "tier" => tier.name(), "result" => if hit { "hit" } else { "miss" })
        })
        .increment(1);
}

pub fn redis_error() {
    counter!(REDIS_ERRORS).increment(1);
}

/// The Redis circuit breaker opened (true) or closed (false).
pub fn redis_breaker_open(open: bool) {
    gauge!(REDIS_BREAKER_OPEN).set(if open { 1.0 } else { 0.0 });
}

/// Redis refused a cache write, or it failed.
pub fn redis_write_refused() {
    counter!(REDIS_WRITES_REFUSED).increment(1);
}

/// Redis's copies are read (true) or in doubt (false).
pub fn redis_trusted(trusted: bool) {
    gauge!(REDIS_TRUSTED).set(if trusted { 1.0 } else { 0.0 });
}

/// A reconcile copied `count` revoked sessions into Redis.
pub fn redis_reconciled(count: usize) {
    counter!(REDIS_RECONCILED).increment(count as u64);
}

/// Counts `error` if it is a store failure; called where an error is met (an RPC's answer, a
/// background writer's log line).
pub fn store_error(error: &crate::error::Error) {
    if let Some(kind) = error.store_failure() {
        counter!(STORE_ERRORS, "kind" => kind).increment(1);
    }
}

pub fn session_created() {
    counter!(SESSIONS_CREATED).increment(1);
}

pub fn session_refreshed() {
    counter!(SESSIONS_REFRESHED).increment(1);
}

/// `count` sessions were revoked for `reason`.
pub fn sessions_revoked(reason: &str, count: usize) {
    let reason = match reason {
        RevokeReason::DEVICE_REPLACED => RevokeReason::DEVICE_REPLACED,
        RevokeReason::SESSION_LIMIT => RevokeReason::SESSION_LIMIT,
        RevokeReason::REFRESH_TOKEN_REUSE => RevokeReason::REFRESH_TOKEN_REUSE,
        RevokeReason::ERASED => RevokeReason::ERASED,
        _ => "caller",
    };
    counter!(SESSIONS_REVOKED, "reason" => reason).increment(count as u64);
}

/// DeleteUserSessions erased `count` session rows.
pub fn sessions_erased(count: usize) {
    counter!(SESSIONS_ERASED).increment(count as u64);
}

pub fn refresh_token_reuse() {
    counter!(REFRESH_TOKEN_REUSE).increment(1);
}

/// A call was refused because the bound `setting` names was full.
pub fn call_shed(setting: &'static str) {
    counter!(CALLS_SHED, "bound" => setting).increment(1);
}

/// A call was refused by the rate limit `setting` names.
pub fn rate_limited(setting: &'static str) {
    counter!(RATE_LIMITED, "limit" => setting).increment(1);
}

/// The sweeper deleted `count` sessions.
pub fn sessions_swept(count: u64) {
    counter!(SWEEPER_DELETED).increment(count);
}

/// The key ring now holds `count` verification keys.
pub fn signing_keys(count: usize) {
    gauge!(SIGNING_KEYS).set(count as f64);
}

/// The ledger holds `count` revocations.
pub fn revocations_in_ledger(count: usize) {
    gauge!(REVOCATIONS_IN_LEDGER).set(count as f64);
}

/// A WatchRevocations stream opened (+1) or ended (-1).
pub fn revocation_watchers(change: f64) {
    gauge!(REVOCATION_WATCHERS).increment(change);
}
