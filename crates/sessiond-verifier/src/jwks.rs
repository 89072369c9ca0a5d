//! The signing keys: sessiond's JWKS, fetched over HTTP(S) and kept fresh. A background task
//! refetches it when its `Cache-Control: max-age` runs out (held between a floor and a ceiling),
//! retries with backoff while it cannot (keeping the keys it has: a key's removal also reaches
//! the verifier as a revocation event), and refetches at once when a token names a `kid` the set
//! does not hold, at most once per `min_refetch_interval`, so a flood of tokens with made-up kids
//! costs sessiond one request per interval.
//!
//! The HTTP client is hyper-util's, over hyper-rustls with ring: hyper, hyper-util, rustls and
//! ring are already in the workspace's graph (tonic, sessiond), and deny.toml allows one TLS
//! stack (rustls) on one crypto backend (ring). reqwest 0.13 defaults to aws-lc-rs, which that
//! policy bans, and without it wants a process-wide rustls provider, which a library should not
//! install; one GET of a small document needs none of its conveniences.

use std::{
    collections::HashMap,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use arc_swap::ArcSwapOption;
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use bytes::Bytes;
use http::{HeaderMap, StatusCode, Uri, header};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};
use serde::Deserialize;
use tokio::{
    sync::{Notify, watch},
    time::Instant,
};
use tokio_util::sync::CancellationToken;

use crate::BuildError;

/// The largest JWKS document read; sessiond's holds a few keys of about 150 bytes each.
const MAX_DOCUMENT_BYTES: usize = 64 * 1024;
/// How long one fetch (connect, request, body) may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// The refresh interval when the answer states no `max-age` (then held between floor and ceiling).
const DEFAULT_MAX_AGE: Duration = Duration::from_secs(60);
/// The first retry after a failed fetch; it doubles up to `RefreshPolicy::retry_ceiling`.
const FIRST_RETRY: Duration = Duration::from_secs(1);
/// The longest wait between two retries while no fetch has succeeded yet.
const FIRST_FETCH_RETRY_CEILING: Duration = Duration::from_secs(5);

/// The Ed25519 verification keys by `kid`.
#[derive(Debug, Default)]
pub(crate) struct KeySet {
    keys: HashMap<String, ed25519_dalek::VerifyingKey>,
}

/// Why a JWKS document was not taken.
#[derive(Debug, thiserror::Error)]
pub(crate) enum FetchError {
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("request failed: {0}")]
    Request(#[from] hyper_util::client::legacy::Error),
    #[error("answered HTTP {0}")]
    Status(StatusCode),
    #[error("cannot read the body (or it is over {MAX_DOCUMENT_BYTES} bytes): {0}")]
    Body(String),
    #[error("not a JWKS document: {0}")]
    Document(#[from] serde_json::Error),
}

/// One entry of `keys`, with only the members judged here; anything else is ignored.
#[derive(Deserialize)]
struct Jwk {
    kty: String,
    crv: Option<String>,
    x: Option<String>,
    kid: Option<String>,
    alg: Option<String>,
    #[serde(rename = "use")]
    use_: Option<String>,
}

#[derive(Deserialize)]
struct Document {
    keys: Vec<serde_json::Value>,
}

impl KeySet {
    /// The Ed25519 signing keys of a JWKS document. Entries of other types or uses, without a
    /// kid, or whose `x` is not a valid (and not a small-order) Ed25519 point are skipped; a kid
    /// listed twice keeps its first key.
    pub(crate) fn parse(document: &[u8]) -> Result<Self, serde_json::Error> {
        let document: Document = serde_json::from_slice(document)?;
        let mut keys = HashMap::new();
        for entry in document.keys {
            let Ok(jwk) = serde_json::from_value::<Jwk>(entry) else {
                continue;
            };
            let usable = jwk.kty == "OKP"
                && jwk.crv.as_deref() == Some("Ed25519")
                && jwk.alg.as_deref().is_none_or(|alg| alg == "EdDSA")
                && jwk.use_.as_deref().is_none_or(|use_| use_ == "sig");
            let (true, Some(kid), Some(x)) = (usable, jwk.kid, jwk.x) else {
                continue;
            };
            let Some(key) = URL_SAFE_NO_PAD
                .decode(x)
                .ok()
                .and_then(|x| <[u8; 32]>::try_from(x).ok())
                .and_then(|x| ed25519_dalek::VerifyingKey::from_bytes(&x).ok())
                .filter(|key| !key.is_weak())
            else {
                tracing::warn!(
                    kid,
                    "skipping a JWKS entry whose x is not an Ed25519 public key"
                );
                continue;
            };
            if kid.is_empty() || keys.contains_key(&kid) {
                tracing::warn!(kid, "skipping a JWKS entry with an empty or repeated kid");
                continue;
            }
            keys.insert(kid, key);
        }
        Ok(Self { keys })
    }

    /// The key `kid` names.
    pub(crate) fn get(&self, kid: &str) -> Option<&ed25519_dalek::VerifyingKey> {
        self.keys.get(kid)
    }

    /// How many keys the set holds.
    pub(crate) fn len(&self) -> usize {
        self.keys.len()
    }
}

/// How long an answer may be used: its `max-age` less its `Age` (the time it spent in a cache on
/// the way); zero for `no-cache` or `no-store`; `None` when it says neither.
pub(crate) fn lifetime(headers: &HeaderMap) -> Option<Duration> {
    let mut max_age = None;
    for value in headers.get_all(header::CACHE_CONTROL) {
        let Ok(value) = value.to_str() else { continue };
        for directive in value.split(',').map(str::trim) {
            let (name, argument) = directive.split_once('=').unwrap_or((directive, ""));
            if name.eq_ignore_ascii_case("no-cache") || name.eq_ignore_ascii_case("no-store") {
                return Some(Duration::ZERO);
            }
            if name.eq_ignore_ascii_case("max-age") && max_age.is_none() {
                max_age = argument.trim_matches('"').parse::<u64>().ok();
            }
        }
    }
    let age = headers
        .get(header::AGE)
        .and_then(|age| age.to_str().ok()?.trim().parse::<u64>().ok())
        .unwrap_or(0);
    max_age.map(|max_age| Duration::from_secs(max_age.saturating_sub(age)))
}

/// When to fetch the JWKS again.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RefreshPolicy {
    /// The shortest interval between two scheduled fetches, whatever `max-age` says.
    pub(crate) floor: Duration,
    /// The longest interval between two scheduled fetches, whatever `max-age` says.
    pub(crate) ceiling: Duration,
    /// The longest wait between two retries of a failing fetch.
    pub(crate) retry_ceiling: Duration,
}

impl RefreshPolicy {
    /// The wait after a fetch whose answer may be used for `lifetime`.
    pub(crate) fn after_success(&self, lifetime: Option<Duration>) -> Duration {
        lifetime
            .unwrap_or(DEFAULT_MAX_AGE)
            .clamp(self.floor, self.ceiling)
    }

    /// The wait after the `failures`-th failed fetch in a row (1 for the first).
    pub(crate) fn after_failure(&self, failures: u32) -> Duration {
        FIRST_RETRY
            .saturating_mul(1 << failures.saturating_sub(1).min(16))
            .min(self.retry_ceiling)
    }
}

/// The keys in use, shared by the verification path (which reads them) and the refresh task
/// (which replaces them).
#[derive(Debug)]
pub(crate) struct Keys {
    current: ArcSwapOption<KeySet>,
    /// Wakes the refresh task for a fetch out of schedule.
    refetch: Notify,
    /// A fetch out of schedule was asked for and has not been attempted yet.
    refetch_pending: AtomicBool,
    /// When the last fetch out of schedule was asked for, in microseconds since `epoch`, plus
    /// one (0: never).
    last_refetch: AtomicU64,
    epoch: Instant,
    min_refetch_interval: Duration,
    /// Counts fetch attempts, so that a caller can wait for the next one.
    attempts: watch::Sender<u64>,
}

impl Keys {
    /// No keys yet.
    pub(crate) fn new(min_refetch_interval: Duration) -> Self {
        Self {
            current: ArcSwapOption::empty(),
            refetch: Notify::new(),
            refetch_pending: AtomicBool::new(false),
            last_refetch: AtomicU64::new(0),
            epoch: Instant::now(),
            min_refetch_interval,
            attempts: watch::Sender::new(0),
        }
    }

    /// The key set in use; `None` until a first fetch succeeded.
    pub(crate) fn current(&self) -> arc_swap::Guard<Option<Arc<KeySet>>> {
        self.current.load()
    }

    /// Puts `keys` in use.
    pub(crate) fn replace(&self, keys: KeySet) {
        self.current.store(Some(Arc::new(keys)));
    }

    /// Asks for a fetch now, unless one was asked for less than `min_refetch_interval` ago.
    /// Returns a receiver that changes after the next attempt when a fetch is pending (asked for
    /// now or a moment ago), `None` when the request was refused by the rate limit.
    pub(crate) fn request_refetch(&self, now: Instant) -> Option<watch::Receiver<u64>> {
        let attempts = self.attempts.subscribe();
        if self.refetch_pending.load(Ordering::Acquire) {
            return Some(attempts);
        }
        let now_micros = micros(now.saturating_duration_since(self.epoch)).saturating_add(1);
        let last = self.last_refetch.load(Ordering::Acquire);
        if last != 0 && now_micros < last.saturating_add(micros(self.min_refetch_interval)) {
            return None;
        }
        if self
            .last_refetch
            .compare_exchange(last, now_micros, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            self.refetch_pending.store(true, Ordering::Release);
            self.refetch.notify_one();
        }
        // Lost the race: another caller asked a moment ago, and its fetch is the one to wait for.
        Some(attempts)
    }

    /// Records that a fetch was attempted, and wakes whoever waits for one.
    fn attempted(&self) {
        self.refetch_pending.store(false, Ordering::Release);
        self.attempts.send_modify(|attempts| *attempts += 1);
    }
}

fn micros(duration: Duration) -> u64 {
    u64::try_from(duration.as_micros()).unwrap_or(u64::MAX)
}

/// Fetches one JWKS URL.
#[derive(Debug, Clone)]
pub(crate) struct Fetcher {
    client: Client<HttpsConnector<HttpConnector>, Empty<Bytes>>,
    url: Uri,
}

impl Fetcher {
    /// A fetcher of `url` (`http://` or `https://`). Over https, `tls` or else the system's root
    /// certificates are trusted.
    pub(crate) fn new(url: &str, tls: Option<rustls::ClientConfig>) -> Result<Self, BuildError> {
        let url: Uri = url
            .parse()
            .map_err(|e: http::uri::InvalidUri| BuildError::JwksUrl(e.to_string()))?;
        let https = match url.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => {
                return Err(BuildError::JwksUrl(
                    "it must be an absolute http:// or https:// URL".into(),
                ));
            }
        };
        if url.host().is_none() {
            return Err(BuildError::JwksUrl("it names no host".into()));
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut tls = match tls {
            Some(tls) => tls,
            None => {
                let builder = rustls::ClientConfig::builder_with_provider(provider)
                    .with_safe_default_protocol_versions()
                    .map_err(|e| BuildError::Tls(std::io::Error::other(e)))?;
                if https {
                    hyper_rustls::ConfigBuilderExt::with_native_roots(builder)
                        .map_err(BuildError::Tls)?
                        .with_no_client_auth()
                } else {
                    // Never used: the URL is plaintext. No root is loaded, so a machine without
                    // a CA bundle can still fetch an http:// JWKS.
                    builder
                        .with_root_certificates(rustls::RootCertStore::empty())
                        .with_no_client_auth()
                }
            }
        };
        // hyper-rustls sets ALPN itself, and refuses a config that already has some.
        tls.alpn_protocols.clear();
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(FETCH_TIMEOUT));
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        Ok(Self {
            client: Client::builder(TokioExecutor::new()).build(connector),
            url,
        })
    }

    /// Fetches the key set, with how long the answer may be used.
    pub(crate) async fn fetch(&self) -> Result<(KeySet, Option<Duration>), FetchError> {
        tokio::time::timeout(FETCH_TIMEOUT, self.fetch_unbounded())
            .await
            .map_err(|_| FetchError::Timeout(FETCH_TIMEOUT))?
    }

    async fn fetch_unbounded(&self) -> Result<(KeySet, Option<Duration>), FetchError> {
        let request = http::Request::get(self.url.clone())
            .header(header::ACCEPT, "application/json")
            .body(Empty::new())
            .map_err(|e| FetchError::Body(e.to_string()))?;
        let response = self.client.request(request).await?;
        if response.status() != StatusCode::OK {
            return Err(FetchError::Status(response.status()));
        }
        let lifetime = lifetime(response.headers());
        let body = Limited::new(response.into_body(), MAX_DOCUMENT_BYTES)
            .collect()
            .await
            .map_err(|e| FetchError::Body(e.to_string()))?
            .to_bytes();
        Ok((KeySet::parse(&body)?, lifetime))
    }

    /// The URL fetched, for logs.
    pub(crate) fn url(&self) -> &Uri {
        &self.url
    }
}

/// The refresh task: fetches at once, then on schedule and on request, until `cancel`.
pub(crate) async fn refresh(
    keys: Arc<Keys>,
    fetcher: Fetcher,
    policy: RefreshPolicy,
    cancel: CancellationToken,
) {
    let mut failures = 0;
    loop {
        let wait = match fetcher.fetch().await {
            Ok((set, lifetime)) => {
                if failures > 0 || keys.current().is_none() {
                    tracing::info!(url = %fetcher.url(), keys = set.len(), "fetched the JWKS");
                }
                if set.len() == 0 {
                    tracing::warn!(url = %fetcher.url(), "the JWKS holds no Ed25519 signing key");
                }
                keys.replace(set);
                failures = 0;
                policy.after_success(lifetime)
            }
            Err(error) => {
                failures += 1;
                let mut wait = policy.after_failure(failures);
                if keys.current().is_none() {
                    // Every token is refused until a first fetch succeeds: keep trying often.
                    wait = wait.min(FIRST_FETCH_RETRY_CEILING);
                }
                tracing::warn!(
                    url = %fetcher.url(),
                    %error,
                    retry_in = ?wait,
                    have_keys = keys.current().is_some(),
                    "cannot fetch the JWKS; keeping the keys in use"
                );
                wait
            }
        };
        keys.attempted();
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(wait) => {}
            () = keys.refetch.notified() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::testing::{JwksServer, TestKey, jwks};

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.append(*name, value.parse().expect("a header value"));
        }
        headers
    }

    #[test]
    fn only_ed25519_signing_keys_with_a_kid_are_taken() {
        let one = TestKey::new(1);
        let two = TestKey::new(2);
        let mut document = jwks(&[&one, &two]);
        let entries = document["keys"].as_array_mut().expect("keys");
        entries.push(json!({"kty": "RSA", "kid": "rsa", "n": "AQAB", "e": "AQAB"}));
        entries.push(json!({"kty": "OKP", "crv": "X25519", "kid": "x", "x": entries[0]["x"]}));
        entries.push(json!({"kty": "OKP", "crv": "Ed25519", "x": entries[0]["x"]}));
        entries.push(json!({"kty": "OKP", "crv": "Ed25519", "kid": "enc", "use": "enc", "x": entries[0]["x"]}));
        entries.push(json!({"kty": "OKP", "crv": "Ed25519", "kid": "short", "x": "AAAA"}));
        // The identity point: a small-order ("weak") key would accept forged signatures.
        let mut identity = [0u8; 32];
        identity[0] = 1;
        entries.push(json!({"kty": "OKP", "crv": "Ed25519", "kid": "weak", "x": URL_SAFE_NO_PAD.encode(identity)}));
        entries
            .push(json!({"kty": "OKP", "crv": "Ed25519", "kid": one.kid(), "x": two.jwk()["x"]}));
        entries.push(json!("not an object"));
        let set = KeySet::parse(document.to_string().as_bytes()).expect("parses");
        assert_eq!(set.len(), 2);
        assert!(set.get(one.kid()).is_some() && set.get(two.kid()).is_some());
        assert_eq!(
            set.get(one.kid()).map(|key| key.to_bytes()),
            Some(
                one.jwk()["x"]
                    .as_str()
                    .map(|x| URL_SAFE_NO_PAD.decode(x))
                    .expect("x")
                    .expect("b64")
                    .try_into()
                    .expect("32")
            ),
            "a repeated kid keeps its first key"
        );
        assert!(KeySet::parse(b"{}").is_err());
        assert!(KeySet::parse(b"not json").is_err());
        assert_eq!(
            KeySet::parse(br#"{"keys": []}"#).map(|s| s.len()).ok(),
            Some(0)
        );
    }

    #[test]
    fn the_lifetime_is_max_age_less_age() {
        assert_eq!(
            lifetime(&headers(&[("cache-control", "public, max-age=60")])),
            Some(Duration::from_secs(60))
        );
        assert_eq!(
            lifetime(&headers(&[("cache-control", "Max-Age=\"30\", public")])),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            lifetime(&headers(&[
                ("cache-control", "public"),
                ("cache-control", "max-age=10")
            ])),
            Some(Duration::from_secs(10))
        );
        assert_eq!(
            lifetime(&headers(&[("cache-control", "max-age=60"), ("age", "25")])),
            Some(Duration::from_secs(35))
        );
        assert_eq!(
            lifetime(&headers(&[("cache-control", "max-age=60"), ("age", "99")])),
            Some(Duration::ZERO)
        );
        assert_eq!(
            lifetime(&headers(&[("cache-control", "max-age=60, no-cache")])),
            Some(Duration::ZERO)
        );
        assert_eq!(
            lifetime(&headers(&[("cache-control", "no-store")])),
            Some(Duration::ZERO)
        );
        assert_eq!(
            lifetime(&headers(&[("cache-control", "max-age=soon")])),
            None
        );
        assert_eq!(
            lifetime(&headers(&[("cache-control", "s-maxage=60")])),
            None
        );
        assert_eq!(lifetime(&headers(&[])), None);
    }

    #[test]
    fn the_refresh_interval_is_held_between_floor_and_ceiling() {
        let policy = RefreshPolicy {
            floor: Duration::from_secs(10),
            ceiling: Duration::from_secs(600),
            retry_ceiling: Duration::from_secs(30),
        };
        assert_eq!(
            policy.after_success(Some(Duration::from_secs(60))),
            Duration::from_secs(60)
        );
        assert_eq!(
            policy.after_success(Some(Duration::ZERO)),
            Duration::from_secs(10)
        );
        assert_eq!(
            policy.after_success(Some(Duration::from_secs(86_400))),
            Duration::from_secs(600)
        );
        assert_eq!(policy.after_success(None), DEFAULT_MAX_AGE);
        let retries: Vec<_> = (1..=7).map(|n| policy.after_failure(n).as_secs()).collect();
        assert_eq!(retries, [1, 2, 4, 8, 16, 30, 30]);
        assert_eq!(policy.after_failure(u32::MAX), Duration::from_secs(30));
    }

    #[test]
    fn an_unknown_kid_asks_for_a_fetch_at_most_once_per_interval() {
        let keys = Keys::new(Duration::from_secs(5));
        let start = keys.epoch;
        assert!(
            keys.request_refetch(start).is_some(),
            "the first request is taken"
        );
        assert!(
            keys.request_refetch(start).is_some(),
            "pending: wait for the same fetch"
        );
        keys.attempted();
        assert!(
            keys.request_refetch(start + Duration::from_secs(1))
                .is_none(),
            "too soon"
        );
        assert!(
            keys.request_refetch(start + Duration::from_millis(4_999))
                .is_none()
        );
        assert!(
            keys.request_refetch(start + Duration::from_secs(5))
                .is_some(),
            "the interval passed"
        );
        keys.attempted();
        assert!(
            keys.request_refetch(start + Duration::from_secs(6))
                .is_none()
        );
    }

    fn policy(floor_ms: u64) -> RefreshPolicy {
        RefreshPolicy {
            floor: Duration::from_millis(floor_ms),
            ceiling: Duration::from_secs(600),
            retry_ceiling: Duration::from_millis(floor_ms),
        }
    }

    #[tokio::test]
    async fn a_fetch_reads_the_keys_and_the_cache_header() {
        let key = TestKey::new(1);
        let server = JwksServer::start(&[&key], "public, max-age=60").await;
        let fetcher = Fetcher::new(&server.url, None).expect("a fetcher");
        let (set, lifetime) = fetcher.fetch().await.expect("fetches");
        assert!(set.get(key.kid()).is_some());
        assert_eq!(lifetime, Some(Duration::from_secs(60)));

        *server.status.lock().expect("lock") = StatusCode::SERVICE_UNAVAILABLE;
        assert!(matches!(
            fetcher.fetch().await,
            Err(FetchError::Status(StatusCode::SERVICE_UNAVAILABLE))
        ));
        *server.status.lock().expect("lock") = StatusCode::OK;
        *server.document.lock().expect("lock") = "x".repeat(MAX_DOCUMENT_BYTES + 1);
        assert!(matches!(fetcher.fetch().await, Err(FetchError::Body(_))));
        *server.document.lock().expect("lock") = "<html>".into();
        assert!(matches!(
            fetcher.fetch().await,
            Err(FetchError::Document(_))
        ));
    }

    #[test]
    fn a_jwks_url_must_be_absolute_http_or_https() {
        for url in [
            "",
            "jwks.json",
            "/jwks.json",
            "ftp://host/jwks.json",
            "http://",
        ] {
            assert!(Fetcher::new(url, None).is_err(), "{url:?}");
        }
    }

    #[tokio::test]
    async fn the_refresh_task_honours_max_age_above_its_floor() {
        let key = TestKey::new(1);
        // max-age=0: refetched every floor (200 ms), never more often.
        let server = JwksServer::start(&[&key], "max-age=0").await;
        let keys = Arc::new(Keys::new(Duration::from_millis(300)));
        let cancel = CancellationToken::new();
        let task = tokio::spawn(refresh(
            keys.clone(),
            Fetcher::new(&server.url, None).expect("a fetcher"),
            policy(200),
            cancel.clone(),
        ));
        tokio::time::sleep(Duration::from_millis(1_100)).await;
        let hits = server.hits();
        assert!(
            (3..=8).contains(&hits),
            "{hits} fetches in 1.1 s with a 200 ms floor"
        );
        assert!(
            keys.current()
                .as_ref()
                .is_some_and(|set| set.get(key.kid()).is_some())
        );

        // max-age=60: no fetch for a minute.
        *server.cache_control.lock().expect("lock") = "public, max-age=60";
        tokio::time::sleep(Duration::from_millis(300)).await;
        let before = server.hits();
        tokio::time::sleep(Duration::from_millis(800)).await;
        assert_eq!(server.hits(), before, "max-age=60 is honoured");
        cancel.cancel();
        task.await.expect("the task ends when cancelled");
    }

    #[tokio::test]
    async fn a_new_kid_is_fetched_on_request_and_a_failing_fetch_keeps_the_old_keys() {
        let old = TestKey::new(1);
        let new = TestKey::new(2);
        let server = JwksServer::start(&[&old], "public, max-age=60").await;
        let keys = Arc::new(Keys::new(Duration::from_millis(300)));
        let cancel = CancellationToken::new();
        let task = tokio::spawn(refresh(
            keys.clone(),
            Fetcher::new(&server.url, None).expect("a fetcher"),
            policy(10_000),
            cancel.clone(),
        ));
        let mut attempts = keys.attempts.subscribe();
        attempts.changed().await.expect("a first fetch");
        assert_eq!(server.hits(), 1);

        server.serve_keys(&[&old, &new]);
        let mut next = keys.request_refetch(Instant::now()).expect("taken");
        tokio::time::timeout(Duration::from_secs(5), next.changed())
            .await
            .expect("fetched in time")
            .expect("the task runs");
        assert!(
            keys.current()
                .as_ref()
                .is_some_and(|set| set.get(new.kid()).is_some())
        );
        assert_eq!(server.hits(), 2);

        // A burst of requests within the interval costs no fetch.
        for _ in 0..100 {
            assert!(keys.request_refetch(Instant::now()).is_none());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(server.hits(), 2);

        // A failing fetch keeps the keys in use.
        *server.status.lock().expect("lock") = StatusCode::INTERNAL_SERVER_ERROR;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let mut failed = keys.request_refetch(Instant::now()).expect("taken");
        tokio::time::timeout(Duration::from_secs(5), failed.changed())
            .await
            .expect("attempted in time")
            .expect("the task runs");
        assert_eq!(server.hits(), 3);
        assert!(keys.current().as_ref().is_some_and(|set| set.len() == 2));
        cancel.cancel();
        task.await.expect("the task ends when cancelled");
    }
}
