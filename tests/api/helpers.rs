//! `spawn_app`: one sessiond per test, with its own database, Redis prefix, keys and clock.
//!
//! Each test gets a database named `sessiond_test_<unix time>_<random>` on the server in
//! `DATABASE_URL`. A test that drops it at its end would race its own server's open connections,
//! so instead each run drops the test databases that earlier runs left more than an hour ago.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use chrono::{SubsecRound, Utc};
use clap::Parser;
use ed25519_dalek::pkcs8::{EncodePrivateKey, spki::der::pem::LineEnding};
use sessiond::{
    api::pb::{self, session_service_client::SessionServiceClient},
    clock::ManualClock,
    config::Settings,
    domain::{RevokeReason, Session},
    startup::Application,
    store::{Backend, NewSession, PostgresStore, SessionStore, SqliteStore},
};
use sqlx::{Connection, Executor, PgConnection, PgPool};
use tempfile::TempDir;
use tonic::{Code, Status, transport::Channel};
use tonic_types::StatusExt;

/// The Postgres server tests make their databases on.
pub fn database_server_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// Makes an empty, migrated database for one test and returns its URL and a pool to it.
pub async fn fresh_database() -> (String, PgPool) {
    let server = database_server_url();
    let mut admin = PgConnection::connect(&server)
        .await
        .expect("Postgres answers at DATABASE_URL");
    drop_old_test_databases(&mut admin).await;
    let now = Utc::now().timestamp();
    let name = format!("sessiond_test_{now}_{}", uuid::Uuid::now_v7().simple());
    admin
        .execute(sqlx::AssertSqlSafe(format!(r#"CREATE DATABASE "{name}""#)))
        .await
        .unwrap();
    let mut url = url::Url::parse(&server).unwrap();
    url.set_path(&name);
    let pool = PgPool::connect(url.as_str()).await.unwrap();
    let store = PostgresStore::new(pool.clone());
    store.migrate().await.unwrap();
    (url.to_string(), pool)
}

async fn drop_old_test_databases(admin: &mut PgConnection) {
    static ONCE: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();
    ONCE.get_or_init(|| async {
        let cutoff = Utc::now().timestamp() - 3600;
        let names: Vec<String> = sqlx::query_scalar(
            "SELECT datname FROM pg_database WHERE datname LIKE 'sessiond\\_test\\_%'",
        )
        .fetch_all(&mut *admin)
        .await
        .unwrap();
        for name in names {
            let created = name.split('_').nth(2).and_then(|t| t.parse::<i64>().ok());
            if created.is_some_and(|created| created < cutoff) {
                let _ = admin
                    .execute(sqlx::AssertSqlSafe(format!(
                        r#"DROP DATABASE IF EXISTS "{name}" WITH (FORCE)"#
                    )))
                    .await;
            }
        }
    })
    .await;
}

/// Where tests find Redis; `SESSIOND_TEST_REDIS_URL` overrides it.
pub fn redis_url() -> String {
    std::env::var("SESSIOND_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

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
    pub clock: ManualClock,
    /// A pool to the test's own database, when it has one.
    pub pool: Option<PgPool>,
    /// The key sessiond signs with, so tests can forge tokens.
    pub signing_key: ed25519_dalek::SigningKey,
    /// The embedded store's data folder (used only when the test runs on SQLite).
    pub data_dir: std::path::PathBuf,
    /// Keys and, for SQLite, the data folder; deleted when the test ends.
    _files: TempDir,
}

/// Settings every test starts from: port 0, a fresh Redis prefix, a short Redis timeout.
pub fn test_settings(database_url: &str) -> Settings {
    let mut settings = Settings::parse_from(["sessiond"]);
    settings.listen_addr = "127.0.0.1:0".parse().unwrap();
    settings.ops_addr = "127.0.0.1:0".parse().unwrap();
    settings.database_url = Some(database_url.to_owned());
    settings.redis_url = Some(redis_url());
    settings.redis_key_prefix = format!("sessiond-test:{}:", uuid::Uuid::now_v7());
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
            let (url, pool) = fresh_database().await;
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
    let keys = TempDir::new().unwrap();
    settings.data_dir = keys.path().join("data");
    let data_dir = settings.data_dir.clone();
    let signing_key = ed25519_dalek::SigningKey::from_bytes(&random_seed());
    // A test that brings its own key folders keeps them as they are.
    if settings.signing_keys_dir.is_none() {
        let key_file = keys.path().join("signing.pem");
        write_signing_key(&key_file, &signing_key);
        settings.signing_key_file = Some(key_file);
    }
    if settings.refresh_keys_dir.is_none() {
        let refresh_key_file = keys.path().join("refresh.key");
        std::fs::write(&refresh_key_file, random_seed()).unwrap();
        settings.refresh_key_file = Some(refresh_key_file);
    }

    // Start at the real time, so that in-process caches, which expire entries by the wall clock,
    // keep what the tests create.
    let clock = ManualClock::new(Utc::now().trunc_subsecs(0));
    let app = Application::build_with_clock(settings, Arc::new(clock.clone()))
        .await
        .unwrap();
    let addr = app.local_addr();
    let ops_addr = app.ops_addr();
    tokio::spawn(app.run_until_stopped(std::future::pending()));
    TestApp {
        client: SessionServiceClient::new(channel(addr).await),
        addr,
        ops_addr,
        clock,
        pool,
        signing_key,
        data_dir,
        _files: keys,
    }
}

/// A channel to sessiond at `addr`.
pub async fn channel(addr: SocketAddr) -> Channel {
    Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

/// Writes `key` as a PKCS#8 PEM file, as `openssl genpkey -algorithm ed25519` would.
pub fn write_signing_key(path: &std::path::Path, key: &ed25519_dalek::SigningKey) {
    std::fs::write(path, key.to_pkcs8_pem(LineEnding::LF).unwrap().as_bytes()).unwrap();
}

/// 32 random bytes.
pub fn random_seed() -> [u8; 32] {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).unwrap();
    seed
}

impl TestApp {
    /// A new session for `user_id` on `device_id` (empty for an unknown device).
    pub async fn create(&self, user_id: &str, device_id: &str) -> pb::CreateSessionResponse {
        self.client
            .clone()
            .create_session(pb::CreateSessionRequest {
                user_id: user_id.into(),
                device: Some(pb::Device {
                    device_id: device_id.into(),
                    name: "test device".into(),
                    user_agent: "tests/1.0".into(),
                    ip_address: "203.0.113.7".into(),
                }),
                metadata: [("app".to_owned(), "tests".to_owned())].into(),
                lifetime: None,
            })
            .await
            .unwrap()
            .into_inner()
    }

    pub async fn validate(&self, access_token: &str) -> pb::ValidateResponse {
        self.client
            .clone()
            .validate(pb::ValidateRequest {
                access_token: access_token.into(),
            })
            .await
            .unwrap()
            .into_inner()
    }

    /// The status `Validate` gives `access_token`.
    pub async fn status_of(&self, access_token: &str) -> pb::TokenStatus {
        self.validate(access_token).await.status()
    }

    pub async fn refresh(&self, refresh_token: &str) -> Result<pb::RefreshResponse, Status> {
        self.client
            .clone()
            .refresh(pb::RefreshRequest {
                refresh_token: refresh_token.into(),
            })
            .await
            .map(tonic::Response::into_inner)
    }

    /// Revokes a live session.
    pub async fn revoke(&self, session_id: &str) {
        let revoked = self
            .client
            .clone()
            .revoke_session(pb::RevokeSessionRequest {
                session_id: session_id.into(),
                reason: "test".into(),
            })
            .await
            .unwrap()
            .into_inner()
            .revoked;
        assert!(revoked);
    }

    pub async fn get(&self, session_id: &str) -> Result<pb::Session, Status> {
        self.client
            .clone()
            .get_session(pb::GetSessionRequest {
                session_id: session_id.into(),
            })
            .await
            .map(tonic::Response::into_inner)
    }

    /// Polls GetSession until `done` holds for the stored session (writes made off the request
    /// path land a moment later); panics after five seconds.
    pub async fn wait_for_stored(
        &self,
        session_id: &str,
        done: impl Fn(&pb::Session) -> bool,
    ) -> pb::Session {
        for _ in 0..100 {
            let stored = self.get(session_id).await.unwrap();
            if done(&stored) {
                return stored;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("session {session_id} never reached the expected state");
    }

    pub fn advance(&self, by: Duration) {
        self.clock.advance(by);
    }
}

/// GETs `path` from the ops server: its status code and body.
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, body.to_owned())
}

/// The access and refresh tokens of a response.
pub fn tokens(pair: &Option<pb::TokenPair>) -> (String, String) {
    let pair = pair.as_ref().expect("a token pair");
    (pair.access_token.clone(), pair.refresh_token.clone())
}

/// Asserts `status` is INVALID_ARGUMENT with a BadRequest violation of `field`.
pub fn assert_invalid_field(status: &Status, field: &str) {
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    let violations = status
        .get_details_bad_request()
        .expect("a BadRequest detail")
        .field_violations;
    assert!(
        violations.iter().any(|violation| violation.field == field),
        "expected a violation of {field}, got {violations:?}"
    );
}

pub const MINUTE: Duration = Duration::from_secs(60);
pub const DAY: Duration = Duration::from_secs(86_400);

/// A store over the same data as `app`, to call by hand.
pub enum Direct {
    Postgres(PostgresStore),
    Sqlite(SqliteStore),
}

impl Direct {
    pub fn of(app: &TestApp, store: Store) -> Self {
        match store {
            Store::Postgres => Self::Postgres(PostgresStore::new(
                app.pool.clone().expect("a Postgres test has a pool"),
            )),
            Store::Sqlite => Self::Sqlite(
                SqliteStore::open(&app.data_dir, Duration::from_secs(5)).expect("opens"),
            ),
        }
    }

    pub fn store(&self) -> &dyn SessionStore {
        match self {
            Self::Postgres(store) => store,
            Self::Sqlite(store) => store,
        }
    }

    /// Writes `batch` the way the store writes concurrent creates: one call to the database's
    /// [`Backend::create_unlimited`]. Returns the sessions each create replaced.
    pub async fn create_batch(&self, batch: &[NewSession]) -> Vec<Vec<Session>> {
        let replaced = RevokeReason::internal(RevokeReason::DEVICE_REPLACED);
        match self {
            Self::Postgres(store) => {
                sqlx::Postgres::create_unlimited(store.pool(), batch, &replaced).await
            }
            Self::Sqlite(store) => {
                sqlx::Sqlite::create_unlimited(store.pool(), batch, &replaced).await
            }
        }
        .unwrap()
    }

    /// Runs `sql`, which changes something, on the underlying database.
    pub async fn execute(&self, sql: &'static str) {
        match self {
            Self::Postgres(store) => sqlx::query(sql).execute(store.pool()).await.map(drop),
            Self::Sqlite(store) => sqlx::query(sql).execute(store.pool()).await.map(drop),
        }
        .unwrap()
    }

    /// Runs `SELECT count(*) ...` on the underlying database.
    pub async fn count(&self, sql: &'static str) -> i64 {
        match self {
            Self::Postgres(store) => sqlx::query_scalar(sql).fetch_one(store.pool()).await,
            Self::Sqlite(store) => sqlx::query_scalar(sql).fetch_one(store.pool()).await,
        }
        .unwrap()
    }
}
