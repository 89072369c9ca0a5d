//! The one test harness every test binary shares. A binary in `tests/*.rs` declares `mod support;`;
//! the session suite (`tests/api/main.rs`) declares it with `#[path = "../support/mod.rs"]`.
//!
//! - `app`: sessiond in-process on port 0 (`TestApp`, `spawn_app`), over a fresh store.
//! - `process`: the real sessiond binary as a child process (`SessiondProcess`): signals, crashes.
//! - `proxies`: real nginx and Caddy in front of forward-auth, and the upstream they protect.
//! - `replicas`: two such processes over one database and one Redis.
//! - `callers`: callers files and API-key clients; `tls`: a test CA, certificates, TLS channels.
//! - `rpc`: the SessionService calls the tests make (CreateSession, Validate, Revoke, ...).
//! - `keys`: signing and refresh key files; `postgres`: a fresh database on the shared Postgres;
//!   `postgres_server`: a Postgres server a test owns (to stop, freeze, or serve over TLS);
//!   `redis`: the shared Redis, and `redis-server` children a test owns.
//! - Here: a channel to an address, a free loopback address, HTTP/1.1 requests (`http`, and the
//!   ops port's `http_get`, `metrics`, `sum_samples`), and latency percentiles.

#![allow(dead_code)] // Each test binary uses a different part of this harness.

pub mod app;
pub mod callers;
pub mod keys;
pub mod postgres;
pub mod postgres_server;
pub mod process;
pub mod proxies;
pub mod redis;
pub mod replicas;
pub mod rpc;
pub mod tls;

use std::{net::SocketAddr, path::Path, time::Duration};

use tonic::transport::Channel;

/// A channel to `addr`.
pub async fn channel(addr: SocketAddr) -> Channel {
    Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

/// A loopback address where nothing listens yet.
pub fn free_addr() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}

fn read_or_empty(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// GETs `path` over HTTP/1.1 (the ops port: `/metrics`, `/.well-known/jwks.json`): its status
/// code and body.
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let answer = http(addr, "GET", path, &[]).await;
    (answer.status, answer.body)
}

/// An HTTP/1.1 answer.
#[derive(Debug)]
pub struct HttpAnswer {
    pub status: u16,
    /// Its headers, names in lower case, in order.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl HttpAnswer {
    /// The value of header `name` (lower case), if it came once or more (the first).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }
}

/// Sends `method path` with `headers` over HTTP/1.1 to `addr` on a connection of its own.
pub async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> HttpAnswer {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut request = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 "), "{head}");
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_owned()))
        .collect();
    HttpAnswer {
        status,
        headers,
        body: body.to_owned(),
    }
}

/// The Prometheus text of the ops server at `addr` (panics unless `/metrics` answers 200).
pub async fn metrics(addr: SocketAddr) -> String {
    let (status, body) = http_get(addr, "/metrics").await;
    assert_eq!(status, 200, "GET /metrics: {body}");
    body
}

/// Sums the Prometheus text samples of `name` whose labels include every one of `labels`.
pub fn sum_samples(body: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
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

/// p50, p99 and max of `latencies` (sorted in place); zeros if there are none.
pub fn percentiles(latencies: &mut [Duration]) -> (Duration, Duration, Duration) {
    if latencies.is_empty() {
        return Default::default();
    }
    latencies.sort_unstable();
    let at = |q: f64| {
        latencies[((latencies.len() as f64 * q).ceil() as usize).clamp(1, latencies.len()) - 1]
    };
    (at(0.50), at(0.99), at(1.0))
}
