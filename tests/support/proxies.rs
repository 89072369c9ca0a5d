//! Real reverse proxies in front of sessiond's forward-auth, as child processes on free loopback
//! ports, each running its `deploy/gateway/` file with the addresses swapped in; and the upstream
//! they protect, which echoes the headers it received.
//!
//! They need Debian's `nginx-light` (nginx with `auth_request`) and `caddy` (`.ci/run` installs
//! both).

use std::{
    net::SocketAddr,
    path::Path,
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use axum::{Router, http::HeaderMap, routing::any};
use tempfile::TempDir;

use super::{free_addr, read_or_empty};

/// The addresses the `deploy/gateway/` files name, which a test replaces with its own.
const DEPLOYED_FORWARD_AUTH: &str = "sessiond-forward-auth.auth.svc.cluster.local:9191";
const DEPLOYED_APPLICATION: &str = "application.default.svc.cluster.local:8080";

/// The protected application: answers every request with the headers it received, one
/// `name: value` line each, and counts the requests that reached it.
pub struct EchoUpstream {
    pub addr: SocketAddr,
    hits: Arc<AtomicUsize>,
}

impl EchoUpstream {
    pub async fn start() -> Self {
        let hits = Arc::new(AtomicUsize::new(0));
        let counted = hits.clone();
        let app = Router::new().fallback(any(move |headers: HeaderMap| {
            counted.fetch_add(1, Ordering::SeqCst);
            async move {
                headers
                    .iter()
                    .map(|(name, value)| {
                        format!("{name}: {}\n", String::from_utf8_lossy(value.as_bytes()))
                    })
                    .collect::<String>()
            }
        }));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self { addr, hits }
    }

    /// How many requests reached it.
    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

/// The values of header `name` in an echoed body.
pub fn echoed<'a>(body: &'a str, name: &str) -> Vec<&'a str> {
    body.lines()
        .filter_map(|line| line.split_once(": "))
        .filter(|(key, _)| key.eq_ignore_ascii_case(name))
        .map(|(_, value)| value)
        .collect()
}

/// Which proxy.
#[derive(Debug, Clone, Copy)]
pub enum Kind {
    Nginx,
    Caddy,
}

/// A proxy child process, killed when dropped.
pub struct Proxy {
    pub addr: SocketAddr,
    child: Child,
    dir: TempDir,
}

impl Proxy {
    /// Starts `kind` on a free port with its `deploy/gateway/` file, checking requests with the
    /// forward-auth port `forward_auth` and passing them on to `upstream`; waits until it accepts.
    pub async fn start(kind: Kind, forward_auth: SocketAddr, upstream: SocketAddr) -> Self {
        let dir = TempDir::new().unwrap();
        let addr = free_addr();
        let deployed = |file: &str| {
            let path = Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("deploy/gateway")
                .join(file);
            std::fs::read_to_string(&path)
                .unwrap()
                .replace(DEPLOYED_FORWARD_AUTH, &forward_auth.to_string())
                .replace(DEPLOYED_APPLICATION, &upstream.to_string())
        };
        let mut command = match kind {
            Kind::Nginx => {
                let site =
                    deployed("nginx.conf").replace("listen 8080;", &format!("listen {addr};"));
                std::fs::write(dir.path().join("site.conf"), site).unwrap();
                let prefix = dir.path().display();
                // The main file a package's nginx.conf would be, kept inside the test's folder.
                std::fs::write(
                    dir.path().join("nginx.conf"),
                    format!(
                        "daemon off;\nworker_processes 1;\npid {prefix}/nginx.pid;\n\
                         error_log {prefix}/error.log warn;\nevents {{ worker_connections 256; }}\n\
                         http {{\n  access_log off;\n  client_body_temp_path {prefix}/body;\n  \
                         proxy_temp_path {prefix}/proxy;\n  fastcgi_temp_path {prefix}/fastcgi;\n  \
                         uwsgi_temp_path {prefix}/uwsgi;\n  scgi_temp_path {prefix}/scgi;\n  \
                         include {prefix}/site.conf;\n}}\n"
                    ),
                )
                .unwrap();
                let mut command = Command::new(binary("nginx", "nginx-light"));
                command
                    .arg("-p")
                    .arg(dir.path())
                    .arg("-c")
                    .arg(dir.path().join("nginx.conf"))
                    .stderr(log(dir.path()));
                command
            }
            Kind::Caddy => {
                let site = deployed("Caddyfile").replace(":8080 {", &format!("http://{addr} {{"));
                // Nothing but the site: no admin port, no certificates, no state outside the folder.
                let global = "{\n\tadmin off\n\tauto_https off\n}\n\n";
                std::fs::write(dir.path().join("Caddyfile"), format!("{global}{site}")).unwrap();
                let mut command = Command::new(binary("caddy", "caddy"));
                command
                    .args(["run", "--adapter", "caddyfile", "--config"])
                    .arg(dir.path().join("Caddyfile"))
                    .env("HOME", dir.path())
                    .env("XDG_CONFIG_HOME", dir.path())
                    .env("XDG_DATA_HOME", dir.path())
                    .stderr(log(dir.path()));
                command
            }
        };
        let child = command.stdout(Stdio::null()).spawn().unwrap();
        let mut proxy = Self { addr, child, dir };
        proxy.wait_until_accepting(kind).await;
        proxy
    }

    async fn wait_until_accepting(&mut self, kind: Kind) {
        let deadline = Instant::now() + Duration::from_secs(15);
        while tokio::net::TcpStream::connect(self.addr).await.is_err() {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("{kind:?} exited ({status}):\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "{kind:?} never listened:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// What the proxy wrote to stderr (and nginx to its error log).
    pub fn log(&self) -> String {
        read_or_empty(&self.dir.path().join("stderr.log"))
            + &read_or_empty(&self.dir.path().join("error.log"))
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn log(dir: &Path) -> std::fs::File {
    std::fs::File::create(dir.join("stderr.log")).unwrap()
}

/// The path of `name`, or a panic that says which Debian package brings it.
fn binary(name: &str, package: &str) -> std::path::PathBuf {
    ["/usr/sbin", "/usr/bin", "/usr/local/sbin", "/usr/local/bin"]
        .iter()
        .map(|dir| Path::new(dir).join(name))
        .find(|path| path.exists())
        .unwrap_or_else(|| {
            panic!("{name} is not installed: apt-get install {package} (.ci/run does)")
        })
}
