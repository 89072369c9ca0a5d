//! sessiond's Redis tier on the topologies `SESSIOND_REDIS_URL` can name besides one plaintext
//! server: a three-master Redis Cluster (`redis-cluster://`), a master behind Sentinel
//! (`redis-sentinel://`), and one server over TLS (`rediss://`), which is never plaintext.
//!
//! Each test starts its own `redis-server` processes on free loopback ports, in its own temp
//! folder, and kills them when it ends (also when it fails). sessiond runs in-process over a fresh
//! Postgres database, with the in-process cache tier off, so what the tests see cached is in Redis.
//! The tests check through `redis-cli` where the keys landed, and that an erasure removes them.

// Tests may panic on a broken expectation; that is how they fail.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::{
    collections::{BTreeMap, BTreeSet},
    net::TcpListener,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use sessiond::api::pb::TokenStatus;
use support::{
    app::{Store, TestApp, spawn_app_with},
    metrics,
    redis::{
        REVOKED_RANK, redis_cli, redis_cli_tls_try, redis_cli_try, spawn_redis_server,
        throwaway_args,
    },
    rpc::token_and_id,
    sum_samples,
    tls::Ca,
};
use tempfile::TempDir;

/// How long to wait for Redis processes to come up, and the cluster to agree.
const STARTUP: Duration = Duration::from_secs(15);

// ---------------------------------------------------------------------------------------------
// Redis processes
// ---------------------------------------------------------------------------------------------

/// Redis processes this test started, in a temp folder; killed and reaped on drop, so a failing
/// test leaves nothing running.
struct RedisProcesses {
    children: Vec<(u16, Child)>,
    dir: TempDir,
}

impl RedisProcesses {
    fn new() -> Self {
        Self {
            children: Vec::new(),
            dir: TempDir::new().unwrap(),
        }
    }

    /// Starts `redis-server` with `args`, logging to `<dir>/redis-<port>.log`.
    fn spawn(&mut self, port: u16, args: &[&str]) {
        let child = spawn_redis_server(self.dir.path(), args, &self.log_path(port));
        self.children.push((port, child));
    }

    fn log_path(&self, port: u16) -> std::path::PathBuf {
        self.dir.path().join(format!("redis-{port}.log"))
    }

    /// Waits until the server on `port` answers PING; false if it exited (say, its port was
    /// taken meanwhile) or did not answer in time.
    fn wait_ready(&mut self, port: u16) -> bool {
        let deadline = Instant::now() + STARTUP;
        while Instant::now() < deadline {
            if let Some((_, child)) = self.children.iter_mut().find(|(p, _)| *p == port)
                && child.try_wait().unwrap().is_some()
            {
                return false;
            }
            if redis_cli_try(port, &["ping"]).is_some_and(|out| out == "PONG") {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    /// The log of the server on `port`, for failure messages.
    fn log(&self, port: u16) -> String {
        std::fs::read_to_string(self.log_path(port)).unwrap_or_default()
    }

    fn kill_all(&mut self) {
        for (_, child) in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.children.clear();
    }
}

impl Drop for RedisProcesses {
    fn drop(&mut self) {
        self.kill_all();
    }
}

/// `count` distinct free loopback ports below 55000 whose port + 10000 (the cluster bus port) is
/// free too. Another process may take one before Redis binds it; callers retry on that.
fn free_ports(count: usize) -> Vec<u16> {
    let mut held = Vec::new();
    let mut ports = Vec::new();
    while ports.len() < count {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        if !(1024..55_000).contains(&port) {
            continue;
        }
        let Ok(bus) = TcpListener::bind(("127.0.0.1", port + 10_000)) else {
            continue;
        };
        // Hold them until all are picked, so no two picks collide.
        held.push(listener);
        held.push(bus);
        ports.push(port);
    }
    ports
}

/// Every key matching `<prefix>*` on the one server at `port` (no cluster redirection).
fn scan(port: u16, prefix: &str) -> BTreeSet<String> {
    redis_cli(port, &["--scan", "--pattern", &format!("{prefix}*")])
        .lines()
        .filter(|line| !line.is_empty())
        .map(str::to_owned)
        .collect()
}

/// A three-master cluster (no replicas) on fresh ports; its processes and ports.
fn start_cluster() -> (RedisProcesses, [u16; 3]) {
    for _attempt in 0..5 {
        let mut redis = RedisProcesses::new();
        let ports = free_ports(3);
        let dir = redis.dir.path().to_str().unwrap().to_owned();
        for &port in &ports {
            let port_text = port.to_string();
            let nodes_file = format!("nodes-{port}.conf");
            let cluster = [
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                &nodes_file,
            ];
            let args = [&throwaway_args(&port_text)[..], &cluster, &["--dir", &dir]].concat();
            redis.spawn(port, &args);
        }
        if !ports.iter().all(|&port| redis.wait_ready(port)) {
            // A port was taken between picking and binding: try fresh ones.
            continue;
        }
        let nodes: Vec<String> = ports
            .iter()
            .map(|port| format!("127.0.0.1:{port}"))
            .collect();
        let created = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&nodes)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(
            created.status.success(),
            "redis-cli --cluster create failed: {}{}",
            String::from_utf8_lossy(&created.stdout),
            String::from_utf8_lossy(&created.stderr)
        );
        let deadline = Instant::now() + STARTUP;
        loop {
            let ok = ports.iter().all(|&port| {
                redis_cli_try(port, &["cluster", "info"])
                    .is_some_and(|info| info.contains("cluster_state:ok"))
            });
            if ok {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the cluster did not reach cluster_state:ok; logs:\n{}",
                ports.iter().map(|&p| redis.log(p)).collect::<String>()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        return (redis, [ports[0], ports[1], ports[2]]);
    }
    panic!("could not start a Redis Cluster on free ports in 5 attempts");
}

/// One master and one sentinel monitoring it as `mymaster`; processes, master port, sentinel port.
fn start_sentinel() -> (RedisProcesses, u16, u16) {
    for _attempt in 0..5 {
        let mut redis = RedisProcesses::new();
        let ports = free_ports(2);
        let (master, sentinel) = (ports[0], ports[1]);
        let dir = redis.dir.path().to_str().unwrap().to_owned();
        let master_text = master.to_string();
        let args = [&throwaway_args(&master_text)[..], &["--dir", &dir]].concat();
        redis.spawn(master, &args);
        if !redis.wait_ready(master) {
            continue;
        }
        // Sentinel rewrites its config file, so it lives in the temp folder.
        let config = redis.dir.path().join("sentinel.conf");
        std::fs::write(
            &config,
            format!(
                "port {sentinel}\n\
                 bind 127.0.0.1\n\
                 daemonize no\n\
                 dir {dir}\n\
                 sentinel monitor mymaster 127.0.0.1 {master} 1\n\
                 sentinel down-after-milliseconds mymaster 1000\n"
            ),
        )
        .unwrap();
        redis.spawn(sentinel, &[config.to_str().unwrap(), "--sentinel"]);
        if !redis.wait_ready(sentinel) {
            continue;
        }
        let deadline = Instant::now() + STARTUP;
        loop {
            let answer = redis_cli_try(
                sentinel,
                &["sentinel", "get-master-addr-by-name", "mymaster"],
            );
            if answer.is_some_and(|a| a.lines().collect::<Vec<_>>() == ["127.0.0.1", &master_text])
            {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the sentinel does not name the master; log:\n{}",
                redis.log(sentinel)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        return (redis, master, sentinel);
    }
    panic!("could not start Redis and Sentinel on free ports in 5 attempts");
}

// ---------------------------------------------------------------------------------------------
// sessiond (the in-process harness, `support::app`)
// ---------------------------------------------------------------------------------------------

/// One session as the test knows it.
#[derive(Debug, Clone)]
struct Created {
    user_id: String,
    session_id: String,
    access_token: String,
}

impl Created {
    /// Its Redis key: `<prefix>{u:<user_id>}:s:<session_id>`.
    fn key(&self, prefix: &str) -> String {
        format!("{prefix}{{u:{}}}:s:{}", self.user_id, self.session_id)
    }
}

/// sessiond over a fresh database and this Redis URL, with a fresh key prefix and keys, a manual
/// clock, the in-process tier off, and a per-user create rate (whose counts, in keys without a
/// hash tag, land on any node).
async fn spawn_app(redis_url: String) -> TestApp {
    spawn_app_trusting(redis_url, None).await
}

/// [`spawn_app`], trusting the CA file `tls_ca_file` for `rediss://`.
async fn spawn_app_trusting(redis_url: String, tls_ca_file: Option<std::path::PathBuf>) -> TestApp {
    spawn_app_with(Store::Postgres, |settings| {
        settings.redis_url = Some(redis_url.into());
        settings.redis_tls_ca_file = tls_ca_file;
        settings.create_rate_per_user = "100/1d".parse().unwrap();
        // Only Redis caches: what Validate answers from a cache, it answers from Redis.
        settings.local_cache = false;
        // A loaded CI machine must not turn a slow cache write into a silently dropped one.
        settings.redis_timeout = Duration::from_secs(2);
    })
    .await
}

/// What only these tests ask of the app.
impl TestApp {
    /// A new session, as the test knows it.
    async fn create_tracked(&self, user_id: &str, device_id: &str) -> Created {
        let (access_token, session_id) = token_and_id(&self.create(user_id, device_id).await);
        Created {
            user_id: user_id.to_owned(),
            session_id,
            access_token,
        }
    }

    /// Deletes a user's rows from Postgres, so only the cache still knows their sessions.
    async fn delete_rows_of(&self, user_id: &str) -> u64 {
        sqlx::query("DELETE FROM session WHERE user_id = $1")
            .bind(user_id)
            .execute(self.pool.as_ref().expect("a Postgres test has a pool"))
            .await
            .unwrap()
            .rows_affected()
    }

    /// Waits until sessiond's Redis client has connected: a session's Validate (a cache miss,
    /// so a write-back) leaves its key in Redis, as `exists` (a redis-cli call) sees it; and
    /// until sessiond trusts Redis again, should a write have failed while it connected (a slow
    /// sentinel, say), so that what follows reads Redis's copies.
    async fn wait_for_redis(&self, exists: impl Fn(&str) -> bool) {
        let warm = self.create_tracked("warm-up", "").await;
        let key = warm.key(&self.redis_key_prefix);
        let deadline = Instant::now() + STARTUP;
        while !exists(&key) {
            assert!(
                Instant::now() < deadline,
                "sessiond never wrote to this Redis"
            );
            assert_eq!(self.status_of(&warm.access_token).await, TokenStatus::Valid);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        while sum_samples(&metrics(self.ops_addr).await, "sessiond_redis_trusted", &[]) != 1.0 {
            assert!(
                Instant::now() < deadline,
                "sessiond never trusted this Redis"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Asserts the cached copy under `key` (read through `hget(key, field)`) is the revoked one.
fn assert_cached_revoked(key: &str, hget: impl Fn(&str, &str) -> String) {
    assert_eq!(hget(key, "rank"), REVOKED_RANK, "rank of {key}");
    let data: serde_json::Value = serde_json::from_str(&hget(key, "data")).unwrap();
    assert!(
        data["revoked_at"].is_string(),
        "the cached copy of {key} is not revoked: {data}"
    );
}

// ---------------------------------------------------------------------------------------------
// The tests
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_three_master_cluster_caches_each_user_in_one_slot_keeps_revocations_and_erases() {
    let (redis, ports) = start_cluster();
    let [p1, p2, p3] = ports;
    let app = spawn_app(format!(
        "redis-cluster://127.0.0.1:{p1}?node=127.0.0.1:{p2}&node=127.0.0.1:{p3}"
    ))
    .await;
    let exists = |key: &str| redis_cli(p1, &["-c", "exists", key]) == "1";
    let hget = |key: &str, field: &str| redis_cli(p1, &["-c", "hget", key, field]);
    app.wait_for_redis(exists).await;

    // Several users; "ada" with three devices.
    let users = ["ada", "bob", "cy", "dee", "eli", "fay", "gus", "hal"];
    let mut sessions: Vec<Created> = Vec::new();
    for device in ["phone", "laptop", "tablet"] {
        sessions.push(app.create_tracked("ada", device).await);
    }
    for user in &users[1..] {
        sessions.push(app.create_tracked(user, "phone").await);
        sessions.push(app.create_tracked(user, "laptop").await);
    }
    for session in &sessions {
        assert_eq!(
            app.status_of(&session.access_token).await,
            TokenStatus::Valid,
            "{session:?}"
        );
    }

    // Every session key is in the cluster, on exactly one node; all of one user's keys are in one
    // slot (the slot of the hash tag `u:<user>`), and the users spread over the masters.
    let mut node_of_key: BTreeMap<String, u16> = BTreeMap::new();
    for port in ports {
        for key in scan(port, &app.redis_key_prefix) {
            assert!(
                node_of_key.insert(key.clone(), port).is_none(),
                "{key} is on two nodes"
            );
        }
    }
    let mut nodes_of_user: BTreeMap<&str, BTreeSet<u16>> = BTreeMap::new();
    let mut slots_of_user: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
    for session in &sessions {
        let key = session.key(&app.redis_key_prefix);
        let node = *node_of_key
            .get(&key)
            .unwrap_or_else(|| panic!("{key} is on no cluster node; found {node_of_key:?}"));
        nodes_of_user
            .entry(&session.user_id)
            .or_default()
            .insert(node);
        slots_of_user
            .entry(&session.user_id)
            .or_default()
            .insert(redis_cli(p1, &["cluster", "keyslot", &key]));
    }
    for user in users {
        let slots = &slots_of_user[user];
        assert_eq!(slots.len(), 1, "{user}'s keys are in slots {slots:?}");
        let tag_slot = redis_cli(p1, &["cluster", "keyslot", &format!("u:{user}")]);
        assert_eq!(
            slots.first(),
            Some(&tag_slot),
            "{user}'s slot is not its hash tag's"
        );
        assert_eq!(
            nodes_of_user[user].len(),
            1,
            "{user}'s keys are on several nodes"
        );
    }
    // Their hash tags fall in all three thirds of the slot space, so every master holds some.
    let nodes_used: BTreeSet<u16> = nodes_of_user.values().flatten().copied().collect();
    assert_eq!(
        nodes_used.len(),
        3,
        "the users landed on {nodes_used:?} only"
    );

    // Revoking ada's sessions row by row writes the three revoked copies (one EVALSHA, one slot).
    // (Without an exception, a sign-out everywhere writes no copy: each replica's ledger refuses
    // them; an exception that is none of ada's sessions takes the row-by-row path.)
    let not_adas = &sessions
        .iter()
        .find(|s| s.user_id != "ada")
        .unwrap()
        .session_id;
    assert_eq!(app.revoke_user("ada", not_adas).await.unwrap(), 3);
    let ada: Vec<&Created> = sessions.iter().filter(|s| s.user_id == "ada").collect();
    for session in &ada {
        assert_eq!(
            app.status_of(&session.access_token).await,
            TokenStatus::SessionRevoked
        );
        assert_cached_revoked(&session.key(&app.redis_key_prefix), hget);
    }
    // The other users are untouched.
    for session in sessions.iter().filter(|s| s.user_id != "ada") {
        assert_eq!(
            app.status_of(&session.access_token).await,
            TokenStatus::Valid
        );
    }

    // With Postgres' rows gone, only the cluster still knows ada's sessions are revoked.
    assert_eq!(app.delete_rows_of("ada").await, 3);
    for session in &ada {
        assert_eq!(
            app.status_of(&session.access_token).await,
            TokenStatus::SessionRevoked,
            "answered from the cluster"
        );
    }
    // Control: with both the rows and the cached copies gone, the same check says not found.
    assert_eq!(app.delete_rows_of("bob").await, 2);
    for session in sessions.iter().filter(|s| s.user_id == "bob") {
        redis_cli(p1, &["-c", "del", &session.key(&app.redis_key_prefix)]);
        assert_eq!(
            app.status_of(&session.access_token).await,
            TokenStatus::SessionNotFound
        );
    }

    // Erasing cy deletes both of its copies (one DEL, in the slot of its hash tag) and its
    // create-rate count (a key of another slot, maybe another node): no node holds any of them.
    let cy: Vec<&Created> = sessions.iter().filter(|s| s.user_id == "cy").collect();
    let mut keys: Vec<String> = cy.iter().map(|s| s.key(&app.redis_key_prefix)).collect();
    keys.push(format!("{}rate:create-user:cy", app.redis_key_prefix));
    for key in &keys {
        assert!(exists(key), "{key} before the erasure");
    }
    assert_eq!(app.delete_user("cy").await.unwrap(), 2);
    for key in &keys {
        assert!(!exists(key), "{key} after the erasure");
    }
    for session in &cy {
        assert_eq!(
            app.status_of(&session.access_token).await,
            TokenStatus::SessionNotFound
        );
    }
    drop(redis);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_behind_sentinel_caches_sessions_and_keeps_revocations() {
    let (redis, master, sentinel) = start_sentinel();
    let app = spawn_app(format!(
        "redis-sentinel://127.0.0.1:{sentinel}/0?sentinelServiceName=mymaster"
    ))
    .await;
    let exists = |key: &str| redis_cli(master, &["exists", key]) == "1";
    let hget = |key: &str, field: &str| redis_cli(master, &["hget", key, field]);
    app.wait_for_redis(exists).await;

    let mut sessions = Vec::new();
    for device in ["phone", "laptop", "tablet"] {
        sessions.push(app.create_tracked("ada", device).await);
    }
    sessions.push(app.create_tracked("bob", "phone").await);
    for session in &sessions {
        assert_eq!(
            app.status_of(&session.access_token).await,
            TokenStatus::Valid
        );
    }
    // The keys are in the master the sentinel names.
    let on_master = scan(master, &app.redis_key_prefix);
    for session in &sessions {
        let key = session.key(&app.redis_key_prefix);
        assert!(on_master.contains(&key), "{key} not in {on_master:?}");
    }

    // Row by row, as above, so the revoked copies are written.
    let not_adas = &sessions
        .iter()
        .find(|s| s.user_id != "ada")
        .unwrap()
        .session_id;
    assert_eq!(app.revoke_user("ada", not_adas).await.unwrap(), 3);
    let ada: Vec<&Created> = sessions.iter().filter(|s| s.user_id == "ada").collect();
    for session in &ada {
        assert_eq!(
            app.status_of(&session.access_token).await,
            TokenStatus::SessionRevoked
        );
        assert_cached_revoked(&session.key(&app.redis_key_prefix), hget);
    }
    assert_eq!(
        app.status_of(&sessions[3].access_token).await,
        TokenStatus::Valid
    );

    assert_eq!(app.delete_rows_of("ada").await, 3);
    for session in &ada {
        assert_eq!(
            app.status_of(&session.access_token).await,
            TokenStatus::SessionRevoked,
            "answered from the master behind the sentinel"
        );
    }
    drop(redis);
}

/// A Redis server on a free port that speaks only TLS, with a certificate of `ca` for 127.0.0.1;
/// returns its port once it answers.
fn spawn_tls_redis(redis: &mut RedisProcesses, ca: &Ca) -> u16 {
    let pair = ca.server();
    let dir = redis.dir.path().to_owned();
    for (name, text) in [
        ("tls.crt", &pair.cert),
        ("tls.key", &pair.key),
        ("ca.crt", &ca.pem()),
    ] {
        std::fs::write(dir.join(name), text).unwrap();
    }
    for _attempt in 0..5 {
        let port = free_ports(1)[0];
        let port_text = port.to_string();
        let mut args = throwaway_args("0").to_vec();
        args.extend([
            "--tls-port",
            &port_text,
            "--tls-cert-file",
            "tls.crt",
            "--tls-key-file",
            "tls.key",
            "--tls-ca-cert-file",
            "ca.crt",
            "--tls-auth-clients",
            "no",
        ]);
        redis.spawn(port, &args);
        let deadline = Instant::now() + STARTUP;
        while Instant::now() < deadline {
            if redis_cli_tls_try(&dir.join("ca.crt"), port, &["ping"]).as_deref() == Some("PONG") {
                return port;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    panic!("no TLS redis-server came up");
}

#[tokio::test]
async fn a_rediss_url_caches_over_tls_trusting_the_configured_ca() {
    let ca = Ca::new();
    let mut redis = RedisProcesses::new();
    let port = spawn_tls_redis(&mut redis, &ca);
    let dir = redis.dir.path().to_owned();
    let app = spawn_app_trusting(
        format!("rediss://127.0.0.1:{port}"),
        Some(dir.join("ca.crt")),
    )
    .await;

    app.wait_for_redis(|key| {
        redis_cli_tls_try(&dir.join("ca.crt"), port, &["exists", key]).as_deref() == Some("1")
    })
    .await;
    let session = app.create_tracked("tess", "").await;
    app.revoke(&session.session_id).await;
    assert_cached_revoked(&session.key(&app.redis_key_prefix), |key, field| {
        redis_cli_tls_try(&dir.join("ca.crt"), port, &["hget", key, field]).unwrap()
    });
}

#[tokio::test]
async fn a_rediss_url_never_talks_plaintext_to_a_server_without_tls() {
    let mut redis = RedisProcesses::new();
    let port = free_ports(1)[0];
    redis.spawn(port, &throwaway_args(&port.to_string()));
    assert!(redis.wait_ready(port), "{}", redis.log(port));
    let app = spawn_app(format!("rediss://127.0.0.1:{port}")).await;

    // Sessions are created, validated (each a cache miss, so a write-back) and revoked: each
    // would leave a key behind over plaintext.
    for device in ["a", "b", "c"] {
        let session = app.create_tracked("pia", device).await;
        assert_eq!(
            app.status_of(&session.access_token).await,
            TokenStatus::Valid
        );
        app.revoke(&session.session_id).await;
        assert_eq!(
            app.status_of(&session.access_token).await,
            TokenStatus::SessionRevoked
        );
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let pattern = format!("{}*", app.redis_key_prefix);
    assert_eq!(
        redis_cli(port, &["--scan", "--pattern", &pattern]),
        "",
        "sessiond wrote to Redis in plaintext"
    );
}
