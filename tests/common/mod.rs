//! A real sessiond process for the tests that need one: signals, crashes, several replicas.
//! Each test binary that uses it declares `mod common;`.

#![allow(dead_code)] // Each test binary uses a different part of this harness.

use std::{
    fs::File,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    time::{Duration, Instant},
};

use tempfile::TempDir;
use tonic::transport::Channel;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

/// A sessiond child process, killed when dropped if it is still running.
pub struct SessiondProcess {
    pub addr: SocketAddr,
    pub ops_addr: SocketAddr,
    child: Option<Child>,
    log: PathBuf,
    _dir: TempDir,
}

impl SessiondProcess {
    /// Starts the sessiond binary with `env` (on top of a listen address, an ops address, a data
    /// folder and a log file of its own; every other `SESSIOND_*`/`OTEL_*` variable of the test's
    /// environment is removed), and waits until it reports SERVING.
    pub async fn start(env: &[(&str, String)]) -> Self {
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
            .envs(env.iter().map(|(name, value)| (name, value)))
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().unwrap())
            .stderr(log_file);
        let mut process = Self {
            addr,
            ops_addr,
            child: Some(command.spawn().unwrap()),
            log,
            _dir: dir,
        };
        process.wait_until_serving().await;
        process
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
        Channel::from_shared(format!("http://{}", self.addr))
            .unwrap()
            .connect()
            .await
            .unwrap()
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

/// A loopback address where nothing listens yet.
pub fn free_addr() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}

fn read_or_empty(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}
