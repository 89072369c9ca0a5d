//! Builds the whole service from settings; `main` and the tests both go through `Application`.

use std::{future::Future, net::SocketAddr, sync::Arc, time::Duration};

use anyhow::Context;
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::Server;
use tonic_health::{ServingStatus, server::HealthReporter};

use crate::{
    api::{SessionApi, pb, pb::session_service_server::SessionServiceServer},
    authority::{Authority, Policy},
    cache::{CacheSettings, SessionCache},
    clock::{Clock, SystemClock},
    config::Settings,
    store,
    token::{AccessTokens, RefreshKey, SigningKey},
};

/// How long to wait between attempts to reach Postgres at start.
const STORE_RETRY_INTERVAL: Duration = Duration::from_secs(1);

/// A built sessiond, bound to its port but not yet serving.
pub struct Application {
    listener: TcpListener,
    local_addr: SocketAddr,
    api: SessionApi,
    pool: PgPool,
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
        let pool = store::connect_lazy(
            &settings.database_url,
            settings.database_max_connections,
            settings.database_timeout,
        )
        .context("SESSIOND_DATABASE_URL")?;
        let cache = SessionCache::connect(&CacheSettings {
            url: settings.redis_url.clone(),
            key_prefix: settings.redis_key_prefix.clone(),
            timeout: settings.redis_timeout,
            ttl: settings.cache_ttl,
        })?;
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
            pool.clone(),
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
            pool,
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
        set_health(&health, ServingStatus::NotServing).await;
        tokio::spawn(prepare_store(self.pool.clone(), health));

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

/// Applies migrations as soon as Postgres answers, then reports SERVING. Until then requests that
/// need Postgres fail with UNAVAILABLE and probes keep the replica out of the Service.
async fn prepare_store(pool: PgPool, health: HealthReporter) {
    loop {
        match store::migrate(&pool).await {
            Ok(()) => break,
            Err(error) => {
                tracing::warn!(error = %error, "postgres is not ready; retrying");
                tokio::time::sleep(STORE_RETRY_INTERVAL).await;
            }
        }
    }
    tracing::info!("postgres is ready; serving");
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
