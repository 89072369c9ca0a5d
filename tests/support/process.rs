//! A real sessiond process for the tests that need one: signals, crashes, several replicas.

use std::{
    fs::File,
    net::SocketAddr,
    path::PathBuf,
    process::{Child, Command, ExitStatus, Stdio},
    time::{Duration, Instant},
};

use sessiond::api::pb::session_service_client::SessionServiceClient;
use tempfile::TempDir;
use tonic::transport::Channel;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

use super::{channel, free_addr, keys::Keys, metrics, read_or_empty, sum_samples};

/// A sessiond child process, killed when dropped if it is still running.
pub struct SessiondProcess {
    pub addr: SocketAddr,
    pub ops_addr: SocketAddr,
    child: Option<Child>,
    log: PathBuf,
    _dir: TempDir,
    _keys: Option<Keys>,
}

impl SessiondProcess {
    /// Starts the sessiond binary with `env` (see [`Self::spawn`]), and waits until it reports
    /// SERVING.
    pub async fn start(env: &[(&str, String)]) -> Self {
        let mut process = Self::spawn(env);
        process.wait_until_serving().await;
        process
    }

    /// Starts the sessiond binary with `env`, on top of a listen address, an ops address, a data
    /// folder, key files and a log file of its own; every other `SESSIOND_*`/`OTEL_*` variable of
    /// the test's environment is removed. Does not wait for it.
    pub fn spawn(env: &[(&str, String)]) -> Self {
        Self::spawn_with_keys(env, Some(Keys::generate()))
    }

    /// Starts the sessiond binary with `env` and no key configured, and waits until it reports
    /// SERVING: as a new user runs it.
    pub async fn start_without_keys(env: &[(&str, String)]) -> Self {
        let mut process = Self::spawn_with_keys(env, None);
        process.wait_until_serving().await;
        process
    }

    /// [`Self::spawn`], with `keys` configured (or none).
    pub fn spawn_with_keys(env: &[(&str, String)], keys: Option<Keys>) -> Self {
        let dir = TempDir::new().unwrap();
        let (addr, ops_addr) = (free_addr(), free_addr());
        let log = dir.path().join("sessiond.log");
        let log_file = File::create(&log).unwrap();
        let mut command = Command::new(env!("CARGO_BIN_EXE_sessiond"));
        for (name, _) in std::env::vars() {
            if name.starts_with("SESSIOND_") || name.starts_with("OTEL_") {
                command.env_remove(name);
            }
        }
        command
            .env("SESSIOND_LISTEN_ADDR", addr.to_string())
            .env("SESSIOND_OPS_ADDR", ops_addr.to_string())
            .env("SESSIOND_DATA_DIR", dir.path().join("data"))
            .env("RUST_LOG", "info")
            .envs(keys.iter().flat_map(Keys::env))
            .envs(env.iter().map(|(name, value)| (name, value)))
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().unwrap())
            .stderr(log_file);
        Self {
            addr,
            ops_addr,
            child: Some(command.spawn().unwrap()),
            log,
            _dir: dir,
            _keys: keys,
        }
    }

    async fn wait_until_serving(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("sessiond exited with {status} at start\n{}", self.log());
            }
            if self.health("sessiond.v1.SessionService").await == Some(ServingStatus::Serving) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "sessiond did not report SERVING\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// What `grpc.health.v1.Health/Check` says of `service`; `None` if it does not answer.
    pub async fn health(&self, service: &str) -> Option<ServingStatus> {
        let channel = Channel::from_shared(format!("http://{}", self.addr))
            .ok()?
            .connect()
            .await
            .ok()?;
        let request = HealthCheckRequest {
            service: service.into(),
        };
        let response = HealthClient::new(channel).check(request).await.ok()?;
        Some(response.into_inner().status())
    }

    /// A channel to its gRPC port.
    pub async fn channel(&self) -> Channel {
        channel(self.addr).await
    }

    /// A SessionService client on its gRPC port.
    pub async fn client(&self) -> SessionServiceClient<Channel> {
        SessionServiceClient::new(self.channel().await)
    }

    /// Sends `signal` (as `kill -<signal>` would).
    pub fn signal(&self, signal: &str) {
        let pid = self.child.as_ref().unwrap().id().to_string();
        assert!(
            Command::new("kill")
                .args([&format!("-{signal}"), &pid])
                .status()
                .unwrap()
                .success()
        );
    }

    /// Waits up to `within` for the process to exit.
    pub async fn wait(&mut self, within: Duration) -> ExitStatus {
        let deadline = Instant::now() + within;
        let child = self.child.as_mut().unwrap();
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                self.child = None;
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "sessiond did not exit within {within:?}\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Sends SIGTERM and waits up to `within` for the exit.
    pub async fn terminate(&mut self, within: Duration) -> ExitStatus {
        self.signal("TERM");
        self.wait(within).await
    }

    /// SIGKILL: no shutdown, no flush, nothing.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }

    /// The sum of the samples of metric `name` (on its ops port's `/metrics`) whose labels include
    /// `labels`; 0 if none.
    pub async fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        sum_samples(&metrics(self.ops_addr).await, name, labels)
    }

    /// Waits up to 10 s until `needle` has appeared `times` times in the log.
    pub async fn wait_for_log(&self, needle: &str, times: usize) {
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

    /// What it printed so far.
    pub fn log_text(&self) -> String {
        read_or_empty(&self.log)
    }

    /// What it printed, for failure messages.
    pub fn log(&self) -> String {
        format!(
            "--- sessiond log ({}) ---\n{}",
            self.log.display(),
            read_or_empty(&self.log)
        )
    }
}

impl Drop for SessiondProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The in-process tier's hits `sessiond` has counted.
pub async fn local_hits(sessiond: &SessiondProcess) -> f64 {
    sessiond
        .metric(
            "sessiond_cache_lookups_total",
            &[("tier", "local"), ("result", "hit")],
        )
        .await
}

/// The Redis tier's hits `sessiond` has counted.
pub async fn redis_hits(sessiond: &SessiondProcess) -> f64 {
    sessiond
        .metric(
            "sessiond_cache_lookups_total",
            &[("tier", "redis"), ("result", "hit")],
        )
        .await
}
