//! `spawn_app`: sessiond in-process on port 0, one per test, with its own store (a fresh Postgres
//! database and Redis key prefix, or a fresh SQLite folder), keys and manual clock.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use chrono::{SubsecRound, Utc};
use clap::Parser;
use sessiond::{
    api::pb::{self, session_service_client::SessionServiceClient},
    clock::ManualClock,
    config::Settings,
    limits::Rate,
    startup::Application,
};
use sqlx::PgPool;
use tempfile::TempDir;
use tonic::{Status, transport::Channel};

use super::{channel, keys::Keys, postgres::fresh_migrated_database, redis::redis_url, rpc};

/// Which store a test's sessiond runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Store {
    /// Postgres, a fresh database per test, with the Redis tier over a fresh key prefix.
    Postgres,
    /// The embedded single-node store in a fresh temp folder, with no Redis.
    Sqlite,
}

/// A running sessiond and what a test needs to poke at it.
pub struct TestApp {
    pub client: SessionServiceClient<Channel>,
    pub addr: SocketAddr,
    /// The ops HTTP server: `/metrics`, `/.well-known/jwks.json`.
    pub ops_addr: SocketAddr,
    /// With TLS on, the plaintext health-only port.
    pub probe_addr: Option<SocketAddr>,
    /// With `forward_auth_addr` set, the forward-auth port.
    pub forward_auth_addr: Option<SocketAddr>,
    pub clock: ManualClock,
    /// A pool to the test's own database, when it has one.
    pub pool: Option<PgPool>,
    /// The key sessiond signs with, so tests can forge tokens.
    pub signing_key: ed25519_dalek::SigningKey,
    /// The embedded store's data folder (used only when the test runs on SQLite).
    pub data_dir: std::path::PathBuf,
    /// The prefix of every Redis key it writes.
    pub redis_key_prefix: String,
    /// The data folder; deleted when the test ends.
    _files: TempDir,
    /// The key files it reads (unless the test brought its own folders).
    pub keys: Keys,
}

/// Settings every test starts from: port 0, `database_url`, the shared Redis under a fresh prefix.
pub fn test_settings(database_url: &str) -> Settings {
    let mut settings = Settings::parse_from(["sessiond"]);
    settings.listen_addr = "127.0.0.1:0".parse().unwrap();
    settings.ops_addr = "127.0.0.1:0".parse().unwrap();
    settings.database_url = Some(database_url.into());
    settings.redis_url = Some(redis_url().into());
    settings.redis_key_prefix = format!("sessiond-test:{}:", uuid::Uuid::now_v7());
    // Tests create and refresh many times per user and session; a rate-limit test sets its own.
    settings.create_rate_per_user = Rate::OFF;
    settings.refresh_rate_per_session = Rate::OFF;
    settings
}

/// sessiond over a fresh `store`, with default settings.
pub async fn spawn_app(store: Store) -> TestApp {
    spawn_app_with(store, |_| {}).await
}

/// sessiond over a fresh `store`, with settings changed by `configure`.
pub async fn spawn_app_with(store: Store, configure: impl FnOnce(&mut Settings)) -> TestApp {
    match store {
        Store::Postgres => {
            let (url, pool) = fresh_migrated_database().await;
            let mut settings = test_settings(&url);
            configure(&mut settings);
            spawn(settings, Some(pool)).await
        }
        Store::Sqlite => {
            let mut settings = test_settings("");
            settings.database_url = None;
            settings.redis_url = None;
            configure(&mut settings);
            spawn(settings, None).await
        }
    }
}

/// sessiond with exactly these settings, plus fresh keys, a manual clock and (for the embedded
/// store) a fresh data folder.
pub async fn spawn(mut settings: Settings, pool: Option<PgPool>) -> TestApp {
    // sessiond's warnings and errors, in the output of the test that met them (shown when it
    // fails): the cause of an INTERNAL answer is logged, never sent.
    let _ = tracing_subscriber::fmt()
        .with_env_filter("warn")
        .with_test_writer()
        .try_init();
    let files = TempDir::new().unwrap();
    settings.data_dir = files.path().join("data");
    let data_dir = settings.data_dir.clone();
    let keys = Keys::generate();
    // A test that brings its own key folders keeps them as they are.
    if settings.signing_keys_dir.is_none() {
        settings.signing_key_file = Some(keys.signing_file());
    }
    if settings.refresh_keys_dir.is_none() {
        settings.refresh_key_file = Some(keys.refresh_file());
    }
    let redis_key_prefix = settings.redis_key_prefix.clone();

    // Start at the real time, so that in-process caches, which expire entries by the wall clock,
    // keep what the tests create.
    let clock = ManualClock::new(Utc::now().trunc_subsecs(0));
    let app = Application::build_with_clock(settings, Arc::new(clock.clone()))
        .await
        .unwrap();
    let addr = app.local_addr();
    let ops_addr = app.ops_addr();
    let probe_addr = app.probe_addr();
    let forward_auth_addr = app.forward_auth_addr();
    tokio::spawn(app.run_until_stopped(std::future::pending()));
    // Over TLS a test makes its own channels (`support::tls`); this plaintext one is never used.
    let channel = match probe_addr {
        Some(_) => Channel::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect_lazy(),
        None => channel(addr).await,
    };
    TestApp {
        client: SessionServiceClient::new(channel),
        addr,
        ops_addr,
        probe_addr,
        forward_auth_addr,
        clock,
        pool,
        signing_key: keys.signing.clone(),
        data_dir,
        redis_key_prefix,
        _files: files,
        keys,
    }
}

impl TestApp {
    /// A new session for `user_id` on `device_id` (empty for an unknown device).
    pub async fn create(&self, user_id: &str, device_id: &str) -> pb::CreateSessionResponse {
        rpc::create(&mut self.client.clone(), user_id, device_id).await
    }

    /// [`TestApp::create`], returning the `Status` it fails with.
    pub async fn try_create(
        &self,
        user_id: &str,
        device_id: &str,
    ) -> Result<pb::CreateSessionResponse, Status> {
        rpc::try_create(&mut self.client.clone(), user_id, device_id).await
    }

    pub async fn validate(&self, access_token: &str) -> pb::ValidateResponse {
        rpc::validate(&mut self.client.clone(), access_token).await
    }

    /// The status `Validate` gives `access_token`.
    pub async fn status_of(&self, access_token: &str) -> pb::TokenStatus {
        self.validate(access_token).await.status()
    }

    pub async fn refresh(&self, refresh_token: &str) -> Result<pb::RefreshResponse, Status> {
        rpc::refresh(&mut self.client.clone(), refresh_token).await
    }

    /// Revokes a live session.
    pub async fn revoke(&self, session_id: &str) {
        assert!(rpc::revoke(&mut self.client.clone(), session_id).await);
    }

    /// RevokeSession with `reason`: whether it revoked a live session.
    pub async fn try_revoke(&self, session_id: &str, reason: &str) -> Result<bool, Status> {
        rpc::try_revoke(&mut self.client.clone(), session_id, reason).await
    }

    /// Revokes every session of `user_id` but `except` (empty for none): how many it revoked.
    pub async fn revoke_user(&self, user_id: &str, except: &str) -> Result<u32, Status> {
        rpc::revoke_user(&mut self.client.clone(), user_id, except).await
    }

    /// Erases every session of `user_id`: how many it erased.
    pub async fn delete_user(&self, user_id: &str) -> Result<u32, Status> {
        rpc::delete_user(&mut self.client.clone(), user_id).await
    }

    pub async fn get(&self, session_id: &str) -> Result<pb::Session, Status> {
        rpc::get(&mut self.client.clone(), session_id).await
    }

    pub fn advance(&self, by: Duration) {
        self.clock.advance(by);
    }
}
