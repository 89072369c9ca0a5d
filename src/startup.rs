//! Builds the whole service from settings, and runs it until stopped. `main` and the tests both
//! go through `Application`.
//!
//! Two listeners: gRPC (the session API, Envoy's Check, health, reflection; over TLS when
//! configured) and the ops HTTP port (`/metrics`, `/.well-known/jwks.json`). With TLS, a third
//! serves health alone in plaintext, for probes that cannot speak TLS; with
//! `SESSIOND_FORWARD_AUTH_ADDR`, another serves HTTP forward-auth alone.
//!
//! Health: `liveness` reports SERVING from start until exit (is the process serving?);
//! `sessiond.v1.SessionService`, `envoy.service.auth.v3.Authorization` and `""` report readiness: SERVING once the store has answered
//! and been migrated, NOT_SERVING again from the moment shutdown begins.

use std::{future::Future, net::SocketAddr, pin::Pin, sync::Arc, time::Duration};

use anyhow::Context;
use axum::{Router, http::header, response::IntoResponse, routing::get};
use secrecy::ExposeSecret;
use tokio::{net::TcpListener, sync::watch};
use tonic::transport::{Server, server::TcpIncoming};
use tonic_health::{ServingStatus, server::HealthReporter};
use zeroize::Zeroizing;

use crate::{
    api::{SessionApi, pb, pb::session_service_server::SessionServiceServer},
    authority::{AtLimit, Authority, IpPrivacy, Policy},
    cache::{LocalSettings, LocalTier, RedisSettings, RedisTier, SessionCache},
    callers::{CallersLayer, PolicySource},
    clock::{Clock, SystemClock},
    config::{self, LimitPolicy, Settings},
    gateway::{
        Gateway, GatewaySettings,
        envoy::{AuthorizationServer, ExtAuthzApi},
        forward_auth,
    },
    limits::{CallBounds, Rates, http::HttpBounds},
    metrics,
    revocations::RevocationFeed,
    store::{PostgresStore, SessionStore, SqliteStore},
    sweeper::{self, SweepSettings},
    tasks::{Stage, Tasks},
    tls::ServerTls,
    token::{KeySource, Keys, RefreshKey, SigningKey, VerifiedTokens, create_key_file_if_missing},
};

/// The health service name the liveness probe asks for.
pub const LIVENESS: &str = "liveness";

/// Reset streams a connection may have pending before it gets a GOAWAY (h2's default).
const MAX_PENDING_ACCEPT_RESET_STREAMS: usize = 20;
/// Streams sessiond may reset for a peer's protocol errors before the connection gets a GOAWAY
/// (hyper's default).
const MAX_LOCAL_ERROR_RESET_STREAMS: usize = 1024;

/// How long to wait between attempts to reach the store at start.
const STORE_RETRY_INTERVAL: Duration = Duration::from_secs(1);

/// A built sessiond, bound to its ports but not yet serving.
pub struct Application {
    listener: TcpListener,
    /// Over TLS, the configuration in force; `None`: plaintext (h2c).
    tls: Option<Arc<ServerTls>>,
    /// With TLS, the plaintext health-only listener.
    probe_listener: Option<TcpListener>,
    local_addr: SocketAddr,
    ops_listener: TcpListener,
    ops_addr: SocketAddr,
    /// With `SESSIOND_FORWARD_AUTH_ADDR`, the forward-auth listener.
    forward_auth_listener: Option<TcpListener>,
    authority: Arc<Authority>,
    /// What Envoy's Check and forward-auth share.
    gateway: Arc<Gateway>,
    /// Ended at shutdown, so that WatchRevocations streams do not hold the graceful stop.
    revocations: Arc<RevocationFeed>,
    callers: PolicySource,
    store: Arc<dyn SessionStore>,
    cache: SessionCache,
    /// Every long-lived task, stopped in order at shutdown.
    tasks: Arc<Tasks>,
    /// The clock the authority reads, for the sweeper.
    clock: Arc<dyn Clock>,
    sweep: SweepSettings,
    /// Whether the store answered and is migrated.
    store_ready: bool,
    key_reload_interval: Duration,
    shutdown_drain: Duration,
    shutdown_grace: Duration,
    transport: Transport,
    ops_bounds: HttpBounds,
    forward_auth_bounds: HttpBounds,
}

/// The gRPC transport's bounds, from the settings.
#[derive(Debug, Clone)]
struct Transport {
    max_concurrent_streams: u32,
    keepalive_interval: Duration,
    keepalive_timeout: Duration,
    max_connection_age: Duration,
    max_request_bytes: u32,
    max_check_bytes: u32,
    request_timeout: Duration,
    max_calls_in_flight: u32,
    max_store_calls_in_flight: u32,
}

impl Transport {
    fn from_settings(settings: &Settings) -> Self {
        Self {
            max_concurrent_streams: settings.max_concurrent_streams,
            keepalive_interval: settings.http2_keepalive_interval,
            keepalive_timeout: settings.http2_keepalive_timeout,
            max_connection_age: settings.max_connection_age,
            max_request_bytes: settings.max_request_bytes,
            max_check_bytes: settings.ext_authz_max_request_bytes,
            request_timeout: settings.request_timeout,
            max_calls_in_flight: settings.max_calls_in_flight,
            max_store_calls_in_flight: settings.max_store_calls_in_flight,
        }
    }
}

impl Application {
    /// Builds sessiond on the wall clock.
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        Self::build_with_clock(settings, Arc::new(SystemClock)).await
    }

    /// Builds sessiond on `clock`; tests pass a `ManualClock`.
    pub async fn build_with_clock(
        settings: Settings,
        clock: Arc<dyn Clock>,
    ) -> anyhow::Result<Self> {
        settings.validate().map_err(anyhow::Error::msg)?;
        let policy = policy(&settings).map_err(anyhow::Error::msg)?;
        let gateway_settings =
            GatewaySettings::from_settings(&settings).map_err(anyhow::Error::msg)?;
        let callers = PolicySource::load(settings.callers_file.clone())?;
        if callers.is_open() {
            tracing::warn!(
                addr = %settings.listen_addr,
                "SESSIOND_CALLERS_FILE is not set: every caller may call every method (open mode)"
            );
        }
        let (signing, refresh) = key_sources(&settings)?;
        let keys = Keys::load(signing, refresh, settings.issuer.clone(), settings.audience.clone())
        .context("SESSIOND_SIGNING_KEY_FILE / SESSIOND_SIGNING_KEYS_DIR / SESSIOND_REFRESH_KEY_FILE / SESSIOND_REFRESH_KEYS_DIR")?;
        metrics::handle();
        metrics::signing_keys(keys.signer.verification_keys().len());
        tracing::info!(
            kid = keys.signer.signing_key().kid(),
            "signing access tokens"
        );

        let tasks = Arc::new(Tasks::default());
        let (store, cache) = build_storage(&settings)?;
        let revocations =
            RevocationFeed::new(store.clone(), clock.clone(), policy.access_token_ttl);
        let woken = revocations.clone();
        cache.listen_for_invalidations(&tasks, move || woken.wake())?;
        let verified = VerifiedTokens::new(
            settings.local_cache_max_entries,
            settings.local_cache_max_bytes,
            clock.clone(),
        );
        let authority = Authority::new(
            store.clone(),
            cache.clone(),
            revocations.clone(),
            verified,
            keys,
            policy,
            clock.clone(),
            &tasks,
        );

        let tls = settings
            .tls_files()
            .map(ServerTls::load)
            .transpose()?
            .map(Arc::new);
        let listener = bind("SESSIOND_LISTEN_ADDR", settings.listen_addr).await?;
        let ops_listener = bind("SESSIOND_OPS_ADDR", settings.ops_addr).await?;
        let probe_listener = match tls {
            Some(_) => Some(bind("SESSIOND_PROBE_ADDR", settings.probe_addr).await?),
            None => None,
        };
        let forward_auth_listener = match settings.forward_auth_addr {
            Some(addr) => Some(bind("SESSIOND_FORWARD_AUTH_ADDR", addr).await?),
            None => None,
        };
        let authority = Arc::new(authority);
        let gateway = Arc::new(Gateway::new(
            authority.clone(),
            gateway_settings,
            settings.request_timeout,
        ));
        let store_ready = migrate(store.as_ref()).await;
        revocations.follow_in(&tasks);
        Ok(Self {
            local_addr: listener.local_addr()?,
            ops_addr: ops_listener.local_addr()?,
            listener,
            tls,
            probe_listener,
            ops_listener,
            forward_auth_listener,
            authority,
            gateway,
            callers,
            store_ready,
            sweep: SweepSettings::from_settings(&settings, revocations.retention()),
            revocations,
            store,
            cache,
            tasks,
            clock,
            key_reload_interval: settings.key_reload_interval,
            shutdown_drain: settings.shutdown_drain,
            shutdown_grace: settings.shutdown_grace,
            transport: Transport::from_settings(&settings),
            ops_bounds: HttpBounds {
                port: "ops",
                max_connections_setting: "SESSIOND_OPS_MAX_CONNECTIONS",
                max_connections: settings.ops_max_connections,
                header_read_timeout: settings.ops_header_read_timeout,
                connection_timeout: settings.ops_connection_timeout,
            },
            forward_auth_bounds: HttpBounds {
                port: "forward-auth",
                max_connections_setting: "SESSIOND_FORWARD_AUTH_MAX_CONNECTIONS",
                max_connections: settings.forward_auth_max_connections,
                header_read_timeout: settings.ops_header_read_timeout,
                connection_timeout: settings.ops_connection_timeout,
            },
        })
    }

    /// The gRPC address actually bound (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The ops HTTP address actually bound.
    pub fn ops_addr(&self) -> SocketAddr {
        self.ops_addr
    }

    /// The forward-auth address actually bound, when `SESSIOND_FORWARD_AUTH_ADDR` is set.
    pub fn forward_auth_addr(&self) -> Option<SocketAddr> {
        self.forward_auth_listener
            .as_ref()
            .and_then(|listener| listener.local_addr().ok())
    }

    /// The plaintext health address actually bound, when TLS is on.
    pub fn probe_addr(&self) -> Option<SocketAddr> {
        self.probe_listener
            .as_ref()
            .and_then(|listener| listener.local_addr().ok())
    }

    /// Serves until `shutdown` resolves. Then: readiness goes NOT_SERVING, calls are still
    /// answered for the drain period, the listeners close, and calls in flight get the grace
    /// period to finish. Then the background tasks stop in order (see `tasks.rs`): what they hold
    /// is written, and the store closes.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let (health, health_service) = tonic_health::server::health_reporter();
        health
            .set_service_status(LIVENESS, ServingStatus::Serving)
            .await;
        if self.store_ready {
            set_readiness(&health, ServingStatus::Serving).await;
        } else {
            set_readiness(&health, ServingStatus::NotServing).await;
            self.tasks.spawn_until_stopped(
                "store preparer",
                Stage::Serving,
                prepare_store(self.store.clone(), health.clone()),
            );
        }
        let authority = self.authority.clone();
        let callers = self.callers.clone();
        let tls = self.tls.clone();
        self.tasks.spawn_until_stopped(
            "file reloader",
            Stage::Serving,
            reload_files(self.key_reload_interval, move || {
                if let Err(error) = authority.reload_keys() {
                    tracing::error!("key reload failed; keeping the keys in use: {error:#}");
                }
                if let Err(error) = callers.reload() {
                    tracing::error!(
                        "callers file reload failed; keeping the policy in force: {error:#}"
                    );
                }
                if let Some(Err(error)) = tls.as_ref().map(|tls| tls.reload()) {
                    tracing::error!(
                        "TLS files reload failed; keeping the certificate in use: {error:#}"
                    );
                }
            }),
        );
        self.tasks.spawn_until_stopped(
            "sweeper",
            Stage::Serving,
            sweeper::run(self.store.clone(), self.clock.clone(), self.sweep),
        );

        // `stopping` flips when the drain is over: the listeners close then.
        let (stopping_tx, stopping) = watch::channel(false);
        let drain = self.shutdown_drain;
        let draining_health = health.clone();
        let revocations = self.revocations.clone();
        self.tasks
            .spawn_until_stopped("shutdown drain", Stage::Serving, async move {
                shutdown.await;
                tracing::info!(drain = ?drain, "shutting down: NOT_SERVING, draining");
                set_readiness(&draining_health, ServingStatus::NotServing).await;
                tokio::time::sleep(drain).await;
                revocations.close();
                let _ = stopping_tx.send(true);
            });

        self.tasks.spawn_until_stopped(
            "ops server",
            Stage::Serving,
            serve_ops(
                self.ops_listener,
                self.ops_bounds,
                self.authority.clone(),
                stopped(stopping.clone()),
            ),
        );
        if let Some(listener) = self.forward_auth_listener {
            tracing::info!(addr = %listener.local_addr()?, "serving HTTP forward-auth on {}", forward_auth::VERIFY_PATH);
            self.tasks.spawn_until_stopped(
                "forward-auth server",
                Stage::Serving,
                forward_auth::serve(
                    listener,
                    self.gateway.clone(),
                    self.forward_auth_bounds,
                    stopped(stopping.clone()),
                ),
            );
        }
        let max_request = self.transport.max_request_bytes as usize;
        if let Some(listener) = self.probe_listener {
            let probe_addr = listener.local_addr()?;
            let probe = grpc_server(&self.transport)
                .add_service(
                    health_service
                        .clone()
                        .max_decoding_message_size(max_request),
                )
                .serve_with_incoming_shutdown(
                    TcpIncoming::from(listener).with_nodelay(Some(true)),
                    stopped(stopping.clone()),
                );
            self.tasks
                .spawn_until_stopped("probe server", Stage::Serving, async move {
                    tracing::info!(addr = %probe_addr, "serving grpc.health.v1.Health in plaintext for probes");
                    if let Err(error) = probe.await {
                        tracing::error!("the probe server failed: {error:#}");
                    }
                });
        }
        tracing::info!(
            addr = %self.local_addr,
            ops_addr = %self.ops_addr,
            tls = self.tls.is_some(),
            "serving sessiond.v1.SessionService"
        );
        let routes = grpc_server(&self.transport)
            .trace_fn(crate::telemetry::grpc_request_span)
            .layer(CallersLayer::new(self.callers))
            .layer(CallBounds::new(
                self.transport.max_calls_in_flight,
                self.transport.max_store_calls_in_flight,
                self.transport.max_request_bytes,
                self.transport.max_check_bytes,
            ))
            .add_service(health_service.max_decoding_message_size(max_request))
            .add_service(
                reflection()
                    .build_v1()?
                    .max_decoding_message_size(max_request),
            )
            .add_service(
                reflection()
                    .build_v1alpha()?
                    .max_decoding_message_size(max_request),
            )
            .add_service(
                SessionServiceServer::from_arc(Arc::new(SessionApi::new(self.authority)))
                    .max_decoding_message_size(max_request),
            )
            .add_service(
                AuthorizationServer::new(ExtAuthzApi::new(self.gateway))
                    .max_decoding_message_size(self.transport.max_check_bytes as usize),
            );
        // Without TCP_NODELAY, a response written while the previous one is still unacked waits
        // for the client's delayed ACK: up to 40 ms.
        let incoming = TcpIncoming::from(self.listener).with_nodelay(Some(true));
        let until = stopped(stopping.clone());
        let grpc: Pin<Box<dyn Future<Output = Result<(), tonic::transport::Error>> + Send>> =
            match self.tls {
                Some(tls) => {
                    Box::pin(routes.serve_with_incoming_shutdown(tls.accept(incoming), until))
                }
                None => Box::pin(routes.serve_with_incoming_shutdown(incoming, until)),
            };

        let grace = self.shutdown_grace;
        let served = tokio::select! {
            served = grpc => served.context("the gRPC server failed"),
            () = async { stopped(stopping).await; tokio::time::sleep(grace).await } => {
                tracing::warn!(grace = ?grace, "calls still in flight after the grace period; exiting anyway");
                Ok(())
            }
        };
        // No call is served any more: stop what serves, write what is held, close the store.
        self.tasks.stop(Stage::Serving).await;
        self.tasks.stop(Stage::Flush).await;
        self.cache.finish_background_writes().await;
        self.store.close().await;
        health
            .set_service_status(LIVENESS, ServingStatus::NotServing)
            .await;
        tracing::info!("stopped");
        served
    }
}

/// Where the keys are read from. A kind of key with no file or folder set: the embedded store
/// keeps one in its data folder, made at the first start, so that a session and its tokens
/// survive a restart as the store does; with Postgres (several replicas, which must share keys)
/// start fails, unless `SESSIOND_ALLOW_EPHEMERAL_KEYS` allows keys that die with the process.
fn key_sources(settings: &Settings) -> anyhow::Result<(KeySource, KeySource)> {
    let signing = KeySource {
        file: settings.signing_key_file.clone(),
        dir: settings.signing_keys_dir.clone(),
    };
    let refresh = KeySource {
        file: settings.refresh_key_file.clone(),
        dir: settings.refresh_keys_dir.clone(),
    };
    Ok((
        kept_or_made(settings, signing, "signing.pem", SigningKey::generate_pem)?,
        kept_or_made(
            settings,
            refresh,
            "refresh.key",
            RefreshKey::generate_file_content,
        )?,
    ))
}

/// `configured`, or else (see [`key_sources`]) the key file `name` in the data folder.
fn kept_or_made(
    settings: &Settings,
    configured: KeySource,
    name: &str,
    generate: fn() -> anyhow::Result<Zeroizing<Vec<u8>>>,
) -> anyhow::Result<KeySource> {
    if configured.is_configured() || settings.allow_ephemeral_keys {
        return Ok(configured);
    }
    if settings.database_url.is_some() {
        anyhow::bail!(
            "no signing or refresh key is configured (SESSIOND_SIGNING_KEY_FILE or \
             SESSIOND_SIGNING_KEYS_DIR, SESSIOND_REFRESH_KEY_FILE or SESSIOND_REFRESH_KEYS_DIR): \
             replicas with random keys refuse each other's tokens. Configure the keys, or set \
             SESSIOND_ALLOW_EPHEMERAL_KEYS=true to try sessiond with keys that die with the process"
        );
    }
    let path = settings.data_dir.join(name);
    if create_key_file_if_missing(&path, generate)? {
        tracing::info!(path = %path.display(), "made a key for the embedded store; it is reused at every start");
    }
    Ok(KeySource {
        file: Some(path),
        dir: None,
    })
}

/// The tonic server with the transport's bounds.
fn grpc_server(transport: &Transport) -> Server {
    Server::builder()
        .max_concurrent_streams(transport.max_concurrent_streams)
        // tonic leaves hyper's caps on reset streams unset, which for locally reset streams means
        // none at all (CVE-2025-8671, "MadeYouReset"). These are hyper's and h2's own defaults:
        // past them the connection gets a GOAWAY.
        .http2_max_pending_accept_reset_streams(Some(MAX_PENDING_ACCEPT_RESET_STREAMS))
        .http2_max_local_error_reset_streams(Some(MAX_LOCAL_ERROR_RESET_STREAMS))
        .http2_keepalive_interval(Some(transport.keepalive_interval))
        .http2_keepalive_timeout(Some(transport.keepalive_timeout))
        // No `max_connection_age_grace`: with it, tonic 0.14 sends no GOAWAY at the age, and only
        // cuts the connection once the grace too has passed. Without it, a GOAWAY at the age, and
        // calls in flight finish.
        .max_connection_age(transport.max_connection_age)
        // Bounds the wait for the response (a server stream's answer comes at once, so its
        // messages are not cut), and honours a shorter `grpc-timeout`.
        .timeout(transport.request_timeout)
}

/// The session rules the settings describe; the error names the setting that does not fit.
fn policy(settings: &Settings) -> Result<Policy, String> {
    let duration = |name: &str, value: Duration| {
        chrono::Duration::from_std(value).map_err(|_| format!("{name} is too long"))
    };
    Ok(Policy {
        access_token_ttl: duration("SESSIOND_ACCESS_TOKEN_TTL", settings.access_token_ttl)?,
        session_lifetime: duration("SESSIOND_SESSION_LIFETIME", settings.session_lifetime)?,
        idle_timeout: duration("SESSIOND_IDLE_TIMEOUT", settings.idle_timeout)?,
        refresh_reuse_grace: duration(
            "SESSIOND_REFRESH_REUSE_GRACE",
            settings.refresh_reuse_grace,
        )?,
        max_sessions_per_user: settings.max_sessions_per_user,
        at_limit: match settings.session_limit_policy {
            LimitPolicy::EvictOldest => AtLimit::EvictOldest,
            LimitPolicy::Deny => AtLimit::Deny,
        },
        activity_write_interval: Policy::ACTIVITY_WRITE_INTERVAL,
        ip_privacy: match settings.ip_privacy {
            config::IpPrivacy::Full => IpPrivacy::Full,
            config::IpPrivacy::Truncate => IpPrivacy::Truncate,
        },
        rates: Rates {
            create_per_user: settings.create_rate_per_user,
            create_per_caller: settings.create_rate_per_caller,
            refresh_per_session: settings.refresh_rate_per_session,
        },
    })
}

async fn bind(setting: &str, addr: SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {setting} {addr}"))
}

/// Resolves once `stopping` has flipped to true.
async fn stopped(mut stopping: watch::Receiver<bool>) {
    let _ = stopping.wait_for(|stopping| *stopping).await;
}

/// The store the settings name, and the cache tiers that go with it.
///
/// Without `SESSIOND_DATABASE_URL` this is one node on the embedded store: every write passes
/// through this process, so its in-process copies stay true for the whole cache TTL. With
/// Postgres, other replicas write too, so in-process copies are trusted only briefly.
fn build_storage(settings: &Settings) -> anyhow::Result<(Arc<dyn SessionStore>, SessionCache)> {
    let (store, local_ttl): (Arc<dyn SessionStore>, _) = match &settings.database_url {
        Some(url) => {
            let store = PostgresStore::connect_lazy(
                url.expose_secret(),
                settings.database_max_connections,
                settings.database_timeout,
            )
            .context("SESSIOND_DATABASE_URL")?;
            (Arc::new(store), settings.local_cache_max_staleness)
        }
        None => {
            tracing::warn!(
                data_dir = %settings.data_dir.display(),
                "SESSIOND_DATABASE_URL is not set: single-node mode on the embedded store. Run exactly one \
                 replica on this data; set SESSIOND_DATABASE_URL (Postgres) to scale out."
            );
            let store = SqliteStore::open(&settings.data_dir, settings.database_timeout)?;
            (Arc::new(store), settings.cache_ttl)
        }
    };
    let local_settings = LocalSettings {
        ttl: local_ttl,
        max_entries: settings.local_cache_max_entries,
        max_bytes: settings.local_cache_max_bytes,
    };
    let local = settings
        .local_cache
        .then(|| LocalTier::new(&local_settings));
    let redis = settings
        .redis_url
        .as_ref()
        .map(|url| {
            RedisTier::connect(&RedisSettings {
                url: url.clone(),
                key_prefix: settings.redis_key_prefix.clone(),
                timeout: settings.redis_timeout,
                ttl: settings.cache_ttl,
                tls_ca_file: settings.redis_tls_ca_file.clone(),
            })
        })
        .transpose()?;
    Ok((store, SessionCache::new(local, redis)))
}

/// Applies the store's migrations; false (and a warning) if the store cannot be reached.
async fn migrate(store: &dyn SessionStore) -> bool {
    match store.migrate().await {
        Ok(()) => true,
        Err(error) => {
            metrics::store_error(&error);
            tracing::warn!(error = %error.cause_chain(), "the store is not ready");
            false
        }
    }
}

/// Retries the migrations until the store answers, then reports SERVING. Until then requests that
/// need the store fail with UNAVAILABLE, and probes keep the replica out of the Service.
async fn prepare_store(store: Arc<dyn SessionStore>, health: HealthReporter) {
    while !migrate(store.as_ref()).await {
        tokio::time::sleep(STORE_RETRY_INTERVAL).await;
    }
    tracing::info!("the store is ready; serving");
    set_readiness(&health, ServingStatus::Serving).await;
}

/// Rereads the files sessiond reads at start (keys, callers) on SIGHUP and every `every`, through
/// `reload`; a bad file keeps what is in use.
async fn reload_files(every: Duration, reload: impl Fn() + Send) {
    #[cfg(unix)]
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .map_err(|error| tracing::error!(%error, "cannot listen for SIGHUP; files reload on the interval only"))
        .ok();
    let mut ticker = tokio::time::interval(every);
    ticker.tick().await;
    loop {
        #[cfg(unix)]
        let hangup_received = async {
            match hangup.as_mut() {
                Some(hangup) => drop(hangup.recv().await),
                None => std::future::pending().await,
            }
        };
        #[cfg(not(unix))]
        let hangup_received = std::future::pending::<()>();
        tokio::select! {
            () = hangup_received => tracing::info!("SIGHUP: rereading keys and callers"),
            _ = ticker.tick() => {}
        }
        reload();
    }
}

/// The ops HTTP server: Prometheus metrics and the JWKS.
async fn serve_ops(
    listener: TcpListener,
    bounds: HttpBounds,
    authority: Arc<Authority>,
    stop: impl Future<Output = ()> + Send + 'static,
) {
    let app = Router::new()
        .route(
            "/metrics",
            get(|| async {
                let text = metrics::handle()
                    .map(|handle| handle.render())
                    .unwrap_or_default();
                ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text)
            }),
        )
        .route(
            "/.well-known/jwks.json",
            get(move || async move {
                // Short caching: a rotation reaches verifiers within a minute.
                (
                    [(header::CACHE_CONTROL, "public, max-age=60")],
                    axum::Json(authority.jwks()),
                )
                    .into_response()
            }),
        );
    crate::limits::http::serve(listener, app, bounds, stop).await;
}

/// Reflection over sessiond's, Envoy's Check and health's protos, so grpcurl needs no proto files.
fn reflection() -> tonic_reflection::server::Builder<'static> {
    tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(crate::gateway::envoy::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
}

/// Sets readiness: the whole server (""), the session service and Envoy's Check.
async fn set_readiness(health: &HealthReporter, status: ServingStatus) {
    health.set_service_status("", status).await;
    for service in [
        <SessionServiceServer<SessionApi> as tonic::server::NamedService>::NAME,
        <AuthorizationServer<ExtAuthzApi> as tonic::server::NamedService>::NAME,
    ] {
        health.set_service_status(service, status).await;
    }
}
