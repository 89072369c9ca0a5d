//! The shared Redis, a `redis-server` child the test owns, and `redis-cli`.

use std::{
    fs::File,
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use tempfile::TempDir;

use super::free_addr;

/// The rank the cache gives a revoked copy (`REVOKED_RANK` in src/cache/mod.rs).
pub const REVOKED_RANK: &str = "9007199254740991";

/// Where tests find the shared Redis; `SESSIOND_TEST_REDIS_URL` overrides it.
pub fn redis_url() -> String {
    std::env::var("SESSIOND_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// Every key under `prefix` on the shared Redis, each with its value as text: a string's value,
/// a hash's fields and values. Panics on any other type, which sessiond does not write (a test
/// that meets one must learn to read it).
pub async fn keys_and_values(prefix: &str) -> Vec<(String, String)> {
    use fred::prelude::{ClientLike, Config, HashesInterface, KeysInterface};
    use futures::TryStreamExt;

    let client = fred::prelude::Builder::from_config(Config::from_url(&redis_url()).unwrap())
        .build()
        .unwrap();
    client.init().await.unwrap();
    let keys: Vec<fred::types::Key> = client
        .scan_buffered(format!("{prefix}*"), Some(1_000), None)
        .try_collect()
        .await
        .unwrap();
    let mut found = Vec::with_capacity(keys.len());
    for key in keys {
        let name = key.as_str_lossy().into_owned();
        let kind: String = client.r#type(&name).await.unwrap();
        let value = match kind.as_str() {
            "string" => client.get::<String, _>(&name).await.unwrap(),
            "hash" => {
                let fields: std::collections::HashMap<String, String> =
                    client.hgetall(&name).await.unwrap();
                format!("{fields:?}")
            }
            // Gone between the scan and the read.
            "none" => continue,
            other => panic!("{name} is a Redis {other}, which sessiond does not write"),
        };
        found.push((name, value));
    }
    client.quit().await.unwrap();
    found
}

/// The `redis-server` flags of a throwaway server: `port` on loopback, no persistence, in the
/// foreground.
pub fn throwaway_args(port: &str) -> [&str; 10] {
    [
        "--port",
        port,
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--daemonize",
        "no",
    ]
}

/// Starts `redis-server args...` in `dir`, its output going to the file `log`.
pub fn spawn_redis_server(dir: &Path, args: &[&str], log: &Path) -> Child {
    let log = File::create(log).unwrap();
    Command::new("redis-server")
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("redis-server is installed")
}

/// A `redis-server` child on a free loopback port, no persistence; killed (-9) on drop.
pub struct RedisServer {
    pub port: u16,
    child: Option<Child>,
    dir: TempDir,
}

impl RedisServer {
    pub fn start() -> Self {
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
        let port = self.port.to_string();
        let log = self.dir.path().join("redis.log");
        self.child = Some(spawn_redis_server(
            self.dir.path(),
            &throwaway_args(&port),
            &log,
        ));
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

    /// Starts it again on the same port: empty, unless a `SAVE` left a snapshot in its folder.
    pub fn restart(&mut self) {
        for _attempt in 0..50 {
            if self.spawn() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("could not restart redis-server on port {}", self.port);
    }

    /// What the server logged since it last started.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("redis.log")).unwrap_or_default()
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// SIGKILL, and reap it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn cli_try(&self, args: &[&str]) -> Option<String> {
        redis_cli_try(self.port, args)
    }

    pub fn cli(&self, args: &[&str]) -> String {
        redis_cli(self.port, args)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `redis-cli -p port args...`: its trimmed stdout, or `None` if it failed to run or exited
/// non-zero.
pub fn redis_cli_try(port: u16, args: &[&str]) -> Option<String> {
    run_redis_cli(Command::new("redis-cli"), port, args)
}

/// [`redis_cli_try`] over TLS, trusting the CA file `ca_file`.
pub fn redis_cli_tls_try(ca_file: &Path, port: u16, args: &[&str]) -> Option<String> {
    let mut command = Command::new("redis-cli");
    command.args(["--tls", "--cacert"]).arg(ca_file);
    run_redis_cli(command, port, args)
}

fn run_redis_cli(mut command: Command, port: u16, args: &[&str]) -> Option<String> {
    let output = command
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .ok()?;
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

/// `redis_cli_try`, panicking if it fails.
pub fn redis_cli(port: u16, args: &[&str]) -> String {
    redis_cli_try(port, args).unwrap_or_else(|| panic!("redis-cli -p {port} {args:?} failed"))
}
