//! Builds the whole service from settings; `main` and the tests both go through `Application`.

use std::{future::Future, net::SocketAddr, sync::Arc, time::Duration};

use anyhow::Context;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::Server;
use tonic_health::{ServingStatus, server::HealthReporter};

use crate::{
    api::{SessionApi, pb, pb::session_service_server::SessionServiceServer},
    authority::{Authority, Policy},
    cache::{LocalSettings, LocalTier, RedisSettings, RedisTier, SessionCache},
    clock::{Clock, SystemClock},
    config::Settings,
    store::{PostgresStore, SessionStore, SqliteStore},
    token::{AccessTokens, RefreshKey, SigningKey},
};

/// How long to wait between attempts to reach Postgres at start.
const STORE_RETRY_INTERVAL: Duration = Duration::from_secs(1);

/// A built sessiond, bound to its port but not yet serving.
pub struct Application {
    listener: TcpListener,
    local_addr: SocketAddr,
    api: SessionApi,
    store: Arc<dyn SessionStore>,
    /// Whether the store answered and is migrated.
    store_ready: bool,
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
        let policy = Policy::from_settings(&settings).map_err(anyhow::Error::msg)?;
        let signing_key = match &settings.signing_key_file {
            Some(path) => SigningKey::from_pem_file(path).context("SESSIOND_SIGNING_KEY_FILE")?,
            None => {
                tracing::warn!(
                    "SESSIOND_SIGNING_KEY_FILE is not set: signing with a random key. Access tokens die with \
                     this process, and other replicas will refuse them. Set it in production."
                );
                SigningKey::generate()?
            }
        };
        let refresh_key = match &settings.refresh_key_file {
            Some(path) => RefreshKey::from_file(path).context("SESSIOND_REFRESH_KEY_FILE")?,
            None => {
                tracing::warn!(
                    "SESSIOND_REFRESH_KEY_FILE is not set: using a random key. A refresh retried across a \
                     restart or another replica is refused. Set it in production."
                );
                RefreshKey::generate()?
            }
        };
        let (store, cache) = build_storage(&settings)?;
        let access_tokens = AccessTokens::new(
            signing_key,
            settings.issuer.clone(),
            settings.audience.clone(),
        );
        tracing::info!(
            kid = access_tokens.signing_key().kid(),
            "signing access tokens"
        );
        let authority = Authority::new(
            store.clone(),
            cache,
            access_tokens,
            refresh_key,
            policy,
            clock,
        );

        let listener = TcpListener::bind(settings.listen_addr)
            .await
            .with_context(|| {
                format!(
                    "cannot listen on SESSIOND_LISTEN_ADDR {}",
                    settings.listen_addr
                )
            })?;
        let local_addr = listener.local_addr()?;
        Ok(Self {
            listener,
            local_addr,
            api: SessionApi::new(Arc::new(authority)),
            store_ready: migrate(store.as_ref()).await,
            store,
        })
    }

    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Serves until `shutdown` resolves, then finishes the calls in flight.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send,
    ) -> anyhow::Result<()> {
        let (health, health_service) = tonic_health::server::health_reporter();
        if self.store_ready {
            set_health(&health, ServingStatus::Serving).await;
        } else {
            set_health(&health, ServingStatus::NotServing).await;
            tokio::spawn(prepare_store(self.store.clone(), health));
        }

        tracing::info!(addr = %self.local_addr, "serving sessiond.v1.SessionService");
        Server::builder()
            .add_service(health_service)
            .add_service(reflection().build_v1()?)
            .add_service(reflection().build_v1alpha()?)
            .add_service(SessionServiceServer::new(self.api))
            .serve_with_incoming_shutdown(TcpListenerStream::new(self.listener), shutdown)
            .await
            .context("the gRPC server failed")
    }
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
                url,
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
    let local = settings.local_cache.then(|| {
        LocalTier::new(&LocalSettings {
            ttl: local_ttl,
            max_entries: settings.local_cache_max_entries,
            max_bytes: settings.local_cache_max_bytes,
        })
    });
    let redis = settings
        .redis_url
        .as_ref()
        .map(|url| {
            RedisTier::connect(&RedisSettings {
                url: url.clone(),
                key_prefix: settings.redis_key_prefix.clone(),
                timeout: settings.redis_timeout,
                ttl: settings.cache_ttl,
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
            tracing::warn!(error = %error, "the store is not ready");
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
    set_health(&health, ServingStatus::Serving).await;
}

/// Reflection over sessiond's and health's protos, so grpcurl needs no proto files.
fn reflection() -> tonic_reflection::server::Builder<'static> {
    tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
}

/// Sets the status of the whole server ("") and of the session service.
async fn set_health(health: &HealthReporter, status: ServingStatus) {
    health.set_service_status("", status).await;
    health
        .set_service_status(
            <SessionServiceServer<SessionApi> as tonic::server::NamedService>::NAME,
            status,
        )
        .await;
}
