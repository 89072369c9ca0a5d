//! Revocation reaches every replica, end to end: two real `sessiond` binaries (replicas A and B),
//! started as child processes over one fresh Postgres database and one Redis server that each test
//! owns (a `redis-server` child on a free loopback port, so cutting its pub/sub connections
//! disturbs nobody else).
//!
//! Both replicas run with `SESSIOND_LOCAL_CACHE_MAX_STALENESS=60s`, so the in-process tier's TTL
//! cannot be what makes B notice a revocation within the test: only the invalidation channel
//! (Redis pub/sub), or B distrusting its in-process tier while that channel is down, can.
//!
//! What is held:
//! - a session revoked on A is refused by B within 1 s, although B held it in its in-process tier;
//! - when B loses its subscription (`CLIENT KILL TYPE pubsub`), a revocation made meanwhile is
//!   still refused by B: B bypasses its in-process tier until resubscribed, and clears it then;
//! - once resubscribed, B serves from its in-process tier again.

// Tests may panic on a broken expectation; that is how they fail.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::{
    fs::File,
    net::{SocketAddr, TcpListener as StdTcpListener},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use ed25519_dalek::pkcs8::{EncodePrivateKey, spki::der::pem::LineEnding};
use sessiond::api::pb::{self, TokenStatus, session_service_client::SessionServiceClient};
use sqlx::{Connection, Executor, PgConnection};
use tempfile::TempDir;
use tonic::transport::Channel;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

/// The requirement: a revocation is refused by every replica within this.
const PROPAGATION_BOUND: Duration = Duration::from_secs(1);
/// What B logs each time its subscription to the invalidation channel is (re)established.
const SUBSCRIBED: &str = "subscribed to invalidations";
/// What B logs when it loses the invalidation channel.
const LOST: &str = "lost the invalidation channel";

#[tokio::test]
async fn a_revocation_on_one_replica_is_refused_by_the_other_within_a_second() {
    let redis = RedisServer::start();
    let cluster = Replicas::start(&redis).await;
    let (a, b) = (&cluster.a, &cluster.b);
    let (mut on_a, mut on_b) = (a.client().await, b.client().await);

    let created = create(&mut on_a, "replica-user-1", "phone").await;
    let (access, session_id) = token_and_id(&created);

    // B validates twice: the first reads Redis (A wrote the session there) and keeps the copy in
    // its in-process tier; the second is answered from that tier.
    let hits_before = local_hits(b).await;
    for _ in 0..2 {
        let verdict = validate(&mut on_b, &access).await;
        assert!(verdict.valid, "B: {verdict:?}\n{}", b.log());
    }
    let hits_after = local_hits(b).await;
    assert!(
        hits_after > hits_before,
        "B did not answer from its in-process tier (local hits {hits_before} -> {hits_after})\n{}",
        b.log()
    );

    let revoke_sent = Instant::now();
    revoke(&mut on_a, &session_id).await;
    let revoke_took = revoke_sent.elapsed();
    let (after_ack, stale_answers) = wait_until_revoked(&mut on_b, &access, b).await;
    let delay = revoke_took + after_ack;
    println!(
        "revocation on A (RevokeSession took {revoke_took:?}) refused by B {after_ack:?} after A \
         acknowledged it, {delay:?} after it was sent; {stale_answers} stale VALID answer(s) \
         before (local TTL 60s: this was the invalidation channel)"
    );
    assert!(
        delay < PROPAGATION_BOUND,
        "B accepted the session {delay:?} after A was asked to revoke it (bound \
         {PROPAGATION_BOUND:?})\n{}",
        b.log()
    );
    // And it stays refused (no stale copy comes back).
    for _ in 0..20 {
        assert_eq!(
            validate(&mut on_b, &access).await.status(),
            TokenStatus::SessionRevoked
        );
    }
}

#[tokio::test]
async fn a_replica_that_lost_its_subscription_does_not_trust_its_in_process_tier() {
    let redis = RedisServer::start();
    let cluster = Replicas::start(&redis).await;
    let (a, b) = (&cluster.a, &cluster.b);
    let (mut on_a, mut on_b) = (a.client().await, b.client().await);

    // B holds S2 in its in-process tier.
    let s2 = create(&mut on_a, "replica-user-2", "phone").await;
    let (access2, id2) = token_and_id(&s2);
    cache_locally(&mut on_b, b, &access2).await;

    // The cut: kill every pub/sub connection (A's and B's subscribers), revoke at once, ask B.
    let killed = redis.cli(&["CLIENT", "KILL", "TYPE", "pubsub"]);
    let cut = Instant::now();
    println!("CLIENT KILL TYPE pubsub: {killed} connection(s) killed (A's and B's subscribers)");
    assert!(killed.parse::<u32>().unwrap() >= 2, "killed {killed}");
    revoke(&mut on_a, &id2).await;
    let verdict = validate(&mut on_b, &access2).await;
    println!(
        "S2 revoked on A and validated on B {:?} after the cut: {:?}",
        cut.elapsed(),
        verdict.status()
    );
    assert_eq!(
        verdict.status(),
        TokenStatus::SessionRevoked,
        "B accepted a session revoked on A right after its subscription was cut: {verdict:?}\n{}",
        b.log()
    );
    b.wait_for_log(LOST, 1).await;
    b.wait_for_log(SUBSCRIBED, 2).await;
    println!(
        "B logged the loss and resubscribed within {:?} of the cut",
        cut.elapsed()
    );
    for _ in 0..5 {
        assert_eq!(
            validate(&mut on_b, &access2).await.status(),
            TokenStatus::SessionRevoked
        );
    }

    // Recovery: after resubscribing, B serves from its in-process tier again...
    let s3 = create(&mut on_a, "replica-user-3", "phone").await;
    let (access3, id3) = token_and_id(&s3);
    cache_locally(&mut on_b, b, &access3).await;
    let hits_before = local_hits(b).await;
    for _ in 0..10 {
        assert!(validate(&mut on_b, &access3).await.valid);
    }
    let hits_after = local_hits(b).await;
    println!("after resubscribing, B's local hits {hits_before} -> {hits_after} over 10 Validates");
    assert!(
        hits_after >= hits_before + 10.0,
        "B did not serve from its in-process tier again after resubscribing \
         ({hits_before} -> {hits_after})\n{}",
        b.log()
    );

    // ...and the channel works again: a revocation on A reaches B's in-process tier quickly.
    let revoke_sent = Instant::now();
    revoke(&mut on_a, &id3).await;
    wait_until_revoked(&mut on_b, &access3, b).await;
    let delay = revoke_sent.elapsed();
    println!("after resubscribing, a revocation on A was refused by B after {delay:?}");
    assert!(delay < PROPAGATION_BOUND, "{delay:?}\n{}", b.log());
}

/// The cut held open: B's SUBSCRIBE is refused (`ACL SETUSER default -subscribe`), so B is not
/// subscribed and must keep bypassing its in-process tier, however long that lasts.
#[tokio::test]
async fn a_replica_whose_resubscription_is_refused_keeps_bypassing_its_in_process_tier() {
    let redis = RedisServer::start();
    let cluster = Replicas::start(&redis).await;
    let (a, b) = (&cluster.a, &cluster.b);
    let (mut on_a, mut on_b) = (a.client().await, b.client().await);

    redis.cli(&["ACL", "SETUSER", "default", "-subscribe", "-psubscribe"]);
    let killed = redis.cli(&["CLIENT", "KILL", "TYPE", "pubsub"]);
    assert!(killed.parse::<u32>().unwrap() >= 2, "killed {killed}");
    b.wait_for_log(LOST, 1).await;
    // Long enough for B to try (and fail) to resubscribe, more than once.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        redis.cli(&["PUBSUB", "NUMSUB", &cluster.channel]),
        format!("{}\n0", cluster.channel),
        "nobody can be subscribed"
    );

    // B is not subscribed: a session it validates must not be served from its in-process tier.
    let s = create(&mut on_a, "replica-user-held", "phone").await;
    let (access, id) = token_and_id(&s);
    let hits_before = local_hits(b).await;
    for _ in 0..5 {
        assert!(validate(&mut on_b, &access).await.valid);
    }
    let hits_after = local_hits(b).await;
    revoke(&mut on_a, &id).await;
    let verdict = validate(&mut on_b, &access).await;
    println!(
        "unsubscribed B: local hits {hits_before} -> {hits_after}; after revocation on A, B says \
         {:?}",
        verdict.status()
    );
    assert_eq!(
        hits_after,
        hits_before,
        "B served from its in-process tier while not subscribed (PUBSUB NUMSUB is 0)\n{}",
        b.log()
    );
    assert_eq!(
        verdict.status(),
        TokenStatus::SessionRevoked,
        "B accepted a session revoked on A while not subscribed\n{}",
        b.log()
    );

    // SUBSCRIBE allowed again: B resubscribes by itself, and hears revocations again.
    redis.cli(&["ACL", "SETUSER", "default", "+subscribe", "+psubscribe"]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while redis.cli(&["PUBSUB", "NUMSUB", &cluster.channel]) != format!("{}\n2", cluster.channel) {
        assert!(
            Instant::now() < deadline,
            "A and B did not resubscribe within 10 s of SUBSCRIBE being allowed again\n{}",
            b.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let s = create(&mut on_a, "replica-user-held-2", "phone").await;
    let (access, id) = token_and_id(&s);
    cache_locally(&mut on_b, b, &access).await;
    revoke(&mut on_a, &id).await;
    let (delay, _) = wait_until_revoked(&mut on_b, &access, b).await;
    assert!(delay < PROPAGATION_BOUND, "{delay:?}\n{}", b.log());
}

/// Validates `access` on B until B answers from its in-process tier (B may still be subscribing).
async fn cache_locally(client: &mut SessionServiceClient<Channel>, b: &Sessiond, access: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let before = local_hits(b).await;
        let verdict = validate(client, access).await;
        assert!(verdict.valid, "B: {verdict:?}\n{}", b.log());
        if local_hits(b).await > before {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "B never served the session from its in-process tier\n{}",
            b.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Polls Validate until it says SESSION_REVOKED: how long that took, and how many VALID answers
/// came before. Gives up (panics) after 5 s.
async fn wait_until_revoked(
    client: &mut SessionServiceClient<Channel>,
    access: &str,
    b: &Sessiond,
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

async fn local_hits(sessiond: &Sessiond) -> f64 {
    sessiond
        .metric(
            "sessiond_cache_lookups_total",
            &[("tier", "local"), ("result", "hit")],
        )
        .await
}

// ---------------------------------------------------------------------------------------------
// RPCs
// ---------------------------------------------------------------------------------------------

async fn create(
    client: &mut SessionServiceClient<Channel>,
    user_id: &str,
    device_id: &str,
) -> pb::CreateSessionResponse {
    client
        .create_session(pb::CreateSessionRequest {
            user_id: user_id.into(),
            device: Some(pb::Device {
                device_id: device_id.into(),
                name: "test device".into(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
}

async fn validate(
    client: &mut SessionServiceClient<Channel>,
    access: &str,
) -> pb::ValidateResponse {
    client
        .validate(pb::ValidateRequest {
            access_token: access.into(),
        })
        .await
        .unwrap()
        .into_inner()
}

async fn revoke(client: &mut SessionServiceClient<Channel>, session_id: &str) {
    client
        .revoke_session(pb::RevokeSessionRequest {
            session_id: session_id.into(),
            reason: "signed out".into(),
        })
        .await
        .unwrap();
}

fn token_and_id(created: &pb::CreateSessionResponse) -> (String, String) {
    let access = created.tokens.as_ref().unwrap().access_token.clone();
    let id = created.session.as_ref().unwrap().session_id.clone();
    (access, id)
}

// ---------------------------------------------------------------------------------------------
// Processes: Redis, Postgres database, keys, sessiond
// ---------------------------------------------------------------------------------------------

/// A `redis-server` child on a free loopback port, no persistence; killed (-9) on drop.
struct RedisServer {
    port: u16,
    child: Option<Child>,
    dir: TempDir,
}

impl RedisServer {
    fn start() -> Self {
        for _attempt in 0..5 {
            let mut server = Self {
                port: free_addr().port(),
                child: None,
                dir: TempDir::new().unwrap(),
            };
            if server.spawn() {
                return server;
            }
        }
        panic!("could not start redis-server on a free port");
    }

    /// Starts redis-server on `self.port`; false if it did not answer (say, the port was taken).
    fn spawn(&mut self) -> bool {
        let log = File::create(self.dir.path().join("redis.log")).unwrap();
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("redis-server is installed");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.child.as_mut().unwrap().try_wait().unwrap().is_some() {
                self.child = None;
                return false;
            }
            if self.cli_try(&["PING"]).as_deref() == Some("PONG") {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill();
        false
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn cli_try(&self, args: &[&str]) -> Option<String> {
        let output = Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .ok()?;
        output
            .status
            .success()
            .then(|| String::from_utf8_lossy(&output.stdout).trim().to_owned())
    }

    fn cli(&self, args: &[&str]) -> String {
        self.cli_try(args)
            .unwrap_or_else(|| panic!("redis-cli -p {} {args:?} failed", self.port))
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Creates an empty database `sessiond_test_<unix time>_<random>` on the shared Postgres (the
/// API tests' helper drops such databases once they are an hour old); its URL.
async fn fresh_database() -> String {
    let server = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let mut admin = PgConnection::connect(&server)
        .await
        .expect("Postgres answers at DATABASE_URL");
    let name = format!(
        "sessiond_test_{}_{}",
        chrono::Utc::now().timestamp(),
        uuid::Uuid::now_v7().simple()
    );
    admin
        .execute(sqlx::AssertSqlSafe(format!(r#"CREATE DATABASE "{name}""#)))
        .await
        .unwrap();
    let _ = admin.close().await;
    let mut url = url::Url::parse(&server).unwrap();
    url.set_path(&name);
    url.to_string()
}

/// The signing and refresh keys every replica shares.
struct Keys {
    dir: TempDir,
}

impl Keys {
    fn generate() -> Self {
        let dir = TempDir::new().unwrap();
        let signing = ed25519_dalek::SigningKey::from_bytes(&random_bytes());
        std::fs::write(
            dir.path().join("signing.pem"),
            signing.to_pkcs8_pem(LineEnding::LF).unwrap().as_bytes(),
        )
        .unwrap();
        std::fs::write(dir.path().join("refresh.key"), random_bytes()).unwrap();
        Self { dir }
    }

    fn signing_file(&self) -> PathBuf {
        self.dir.path().join("signing.pem")
    }

    fn refresh_file(&self) -> PathBuf {
        self.dir.path().join("refresh.key")
    }
}

fn random_bytes() -> [u8; 32] {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).unwrap();
    bytes
}

/// Two replicas over one database, one Redis and one key prefix.
struct Replicas {
    a: Sessiond,
    b: Sessiond,
    /// The invalidation channel both subscribe to.
    channel: String,
    _keys: Keys,
}

impl Replicas {
    async fn start(redis: &RedisServer) -> Self {
        let keys = Keys::generate();
        let database = fresh_database().await;
        let prefix = format!("sessiond-replicas:{}:", uuid::Uuid::now_v7().simple());
        let env = |name: &str| {
            vec![
                ("SESSIOND_DATABASE_URL".to_owned(), database.clone()),
                ("SESSIOND_REDIS_URL".to_owned(), redis.url()),
                ("SESSIOND_REDIS_KEY_PREFIX".to_owned(), prefix.clone()),
                (
                    "SESSIOND_LOCAL_CACHE_MAX_STALENESS".to_owned(),
                    "60s".into(),
                ),
                ("SESSIOND_LOCAL_CACHE".to_owned(), "on".into()),
                ("REPLICA".to_owned(), name.to_owned()),
            ]
        };
        // One after the other, so only one applies the migrations to the fresh database.
        let a = Sessiond::start(&keys, &env("A")).await;
        let b = Sessiond::start(&keys, &env("B")).await;
        a.wait_for_log(SUBSCRIBED, 1).await;
        b.wait_for_log(SUBSCRIBED, 1).await;
        Self {
            a,
            b,
            channel: format!("{prefix}invalidate"),
            _keys: keys,
        }
    }
}

/// The real sessiond binary as a child process; killed (-9) on drop, also when the test fails.
struct Sessiond {
    addr: SocketAddr,
    ops_addr: SocketAddr,
    child: Option<Child>,
    dir: TempDir,
}

impl Sessiond {
    /// Starts sessiond with the shared keys and `env`, and waits until it reports SERVING.
    async fn start(keys: &Keys, env: &[(String, String)]) -> Self {
        let dir = TempDir::new().unwrap();
        let addr = free_addr();
        let log = File::create(dir.path().join("sessiond.log")).unwrap();
        let mut command = Command::new(env!("CARGO_BIN_EXE_sessiond"));
        for (name, _) in std::env::vars() {
            if name.starts_with("SESSIOND_") || name.starts_with("OTEL_") {
                command.env_remove(name);
            }
        }
        command
            .env("SESSIOND_LISTEN_ADDR", addr.to_string())
            .env("SESSIOND_OPS_ADDR", "127.0.0.1:0")
            .env("SESSIOND_SIGNING_KEY_FILE", keys.signing_file())
            .env("SESSIOND_REFRESH_KEY_FILE", keys.refresh_file())
            .env("SESSIOND_SHUTDOWN_DRAIN", "0s")
            .env("SESSIOND_DATA_DIR", dir.path().join("data"))
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        let child = command
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let mut sessiond = Self {
            addr,
            ops_addr: addr,
            child: Some(child),
            dir,
        };
        sessiond.wait_until_serving().await;
        sessiond.ops_addr = sessiond.logged_ops_addr();
        sessiond
    }

    async fn wait_until_serving(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("sessiond exited with {status} at start\n{}", self.log());
            }
            if self.serving().await {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "sessiond did not report SERVING within 60 s\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn serving(&self) -> bool {
        let Ok(channel) = Channel::from_shared(format!("http://{}", self.addr))
            .unwrap()
            .connect()
            .await
        else {
            return false;
        };
        HealthClient::new(channel)
            .check(HealthCheckRequest {
                service: "sessiond.v1.SessionService".into(),
            })
            .await
            .is_ok_and(|response| response.into_inner().status() == ServingStatus::Serving)
    }

    /// The ops address from the log line `serving sessiond.v1.SessionService ... ops_addr=...`.
    fn logged_ops_addr(&self) -> SocketAddr {
        let log = self.log_text();
        let line = log
            .lines()
            .find(|line| line.contains("serving sessiond.v1.SessionService"))
            .unwrap_or_else(|| panic!("no serving line in the log\n{}", self.log()));
        let after = &line[line.find("ops_addr").expect("ops_addr logged") + "ops_addr".len()..];
        let addr: String = after
            .trim_start_matches(|c: char| !c.is_ascii_digit())
            .chars()
            .take_while(|c| c.is_ascii_digit() || *c == '.' || *c == ':')
            .collect();
        addr.parse()
            .unwrap_or_else(|_| panic!("unparsable ops_addr in {line:?}"))
    }

    async fn client(&self) -> SessionServiceClient<Channel> {
        let channel = Channel::from_shared(format!("http://{}", self.addr))
            .unwrap()
            .connect()
            .await
            .unwrap();
        SessionServiceClient::new(channel)
    }

    /// The sum of the samples of metric `name` whose labels include `labels`; 0 if none.
    async fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let body = http_get(self.ops_addr, "/metrics").await;
        sum_samples(&body, name, labels)
    }

    /// Waits up to 10 s until `needle` has appeared `times` times in the log.
    async fn wait_for_log(&self, needle: &str, times: usize) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.log_text().matches(needle).count() < times {
            assert!(
                Instant::now() < deadline,
                "{needle:?} not logged {times} time(s) within 10 s\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn log_text(&self) -> String {
        read_or_empty(&self.dir.path().join("sessiond.log"))
    }

    /// What sessiond printed, for failure messages.
    fn log(&self) -> String {
        format!("--- sessiond log ({}) ---\n{}", self.addr, self.log_text())
    }
}

impl Drop for Sessiond {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn read_or_empty(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// A loopback address nothing listens on right now.
fn free_addr() -> SocketAddr {
    let listener = StdTcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}

/// GETs `path` over HTTP/1.1: the body (panics unless 200).
async fn http_get(addr: SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    body.to_owned()
}

/// Sums the Prometheus text samples of `name` whose labels include every one of `labels`.
fn sum_samples(body: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    body.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (metric, label_text) = match series.split_once('{') {
                Some((metric, rest)) => (metric, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            (metric == name
                && labels
                    .iter()
                    .all(|(k, v)| label_text.split(',').any(|l| l == format!("{k}=\"{v}\""))))
            .then(|| value.parse::<f64>().ok())
            .flatten()
        })
        .fold(0.0, |sum, value| sum + value)
}
