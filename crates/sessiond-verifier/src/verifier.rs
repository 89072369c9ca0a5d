//! The verifier a service embeds: its configuration (`Builder`), the two background tasks it
//! owns (the JWKS refresher and the revocation follower), and the verification path that joins
//! the token checks, the revocation set and the staleness bound, with the optional `Validate`
//! fallback.

use std::{
    fmt,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use chrono::{DateTime, Utc};
use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;
use tokio::{task::JoinHandle, time::Instant};
use tokio_util::sync::CancellationToken;
use tonic::{
    metadata::{Ascii, MetadataValue},
    transport::{Channel, Endpoint},
};
use uuid::Uuid;

use crate::{
    BuildError, VerifyError,
    follower::{self, RevocationState},
    jwks::{self, Keys, RefreshPolicy},
    layer::{AuthInterceptor, AuthLayer, Protocol},
    memo::Memo,
    pb::{self, session_service_client::SessionServiceClient},
    revocations::{RevocationCounts, timestamp},
    token::{self, Expected, Refusal},
};

/// How long `verify` waits for the JWKS fetch that a token's unknown `kid` asked for.
const UNKNOWN_KID_WAIT: Duration = Duration::from_secs(1);
/// How often `wait_synced` looks again.
const SYNC_POLL: Duration = Duration::from_millis(20);

/// A verified token: who, which session, and until when the token is good.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct Session {
    /// The user (`sub`).
    pub user_id: String,
    /// The session (`sid`).
    pub session_id: Uuid,
    /// The token's expiry (`exp`); the session itself may last longer.
    pub expires_at: DateTime<Utc>,
}

/// What verification does while the revocation list is stale (the stream down or silent
/// longer than the staleness bound, or not synced yet).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnStale {
    /// Refuse every token with [`VerifyError::Stale`] (the default).
    #[default]
    FailClosed,
    /// Ask sessiond (`Validate`) about each token that passes the local checks, and take its
    /// answer; [`VerifyError::Unavailable`] when it does not answer in time.
    CallValidate,
}

/// Where sessiond's gRPC API is: a URL, or a tonic endpoint or channel configured by the caller
/// (TLS, mutual TLS, timeouts).
#[derive(Debug, Clone)]
pub enum GrpcTarget {
    /// `http://host:port` (h2c). For TLS, pass an [`Endpoint`] with a TLS config instead.
    Url(String),
    /// An endpoint, connected lazily (boxed: an `Endpoint` is large).
    Endpoint(Box<Endpoint>),
    /// A channel, used as it is.
    Channel(Channel),
}

impl From<&str> for GrpcTarget {
    fn from(url: &str) -> Self {
        Self::Url(url.to_owned())
    }
}

impl From<String> for GrpcTarget {
    fn from(url: String) -> Self {
        Self::Url(url)
    }
}

impl From<Endpoint> for GrpcTarget {
    fn from(endpoint: Endpoint) -> Self {
        Self::Endpoint(Box::new(endpoint))
    }
}

impl From<Channel> for GrpcTarget {
    fn from(channel: Channel) -> Self {
        Self::Channel(channel)
    }
}

/// The configuration of a [`Verifier`]; [`Builder::start`] starts it.
#[derive(Debug)]
#[must_use]
pub struct Builder {
    grpc: GrpcTarget,
    jwks_url: String,
    issuer: Option<String>,
    audience: Option<String>,
    api_key: Option<SecretString>,
    staleness: Duration,
    on_stale: OnStale,
    leeway: Duration,
    jwks_refresh_floor: Duration,
    jwks_refresh_ceiling: Duration,
    jwks_refetch_interval: Duration,
    jwks_tls: Option<rustls::ClientConfig>,
    stream_idle_timeout: Duration,
    validate_timeout: Duration,
    memo_capacity: u64,
}

impl Builder {
    /// The `iss` tokens must carry (sessiond's `SESSIOND_ISSUER`). Required.
    pub fn issuer(mut self, issuer: impl Into<String>) -> Self {
        self.issuer = Some(issuer.into());
        self
    }

    /// The `aud` tokens must carry (sessiond's `SESSIOND_AUDIENCE`). Required.
    pub fn audience(mut self, audience: impl Into<String>) -> Self {
        self.audience = Some(audience.into());
        self
    }

    /// The API key sent as `authorization: Bearer <key>` on `WatchRevocations` and `Validate`
    /// (its caller must be allowed both). Not needed with mutual TLS or in sessiond's open mode.
    pub fn api_key(mut self, key: impl Into<String>) -> Self {
        self.api_key = Some(SecretString::from(key.into()));
        self
    }

    /// How long the revocation stream may be down or silent before every token is refused (or,
    /// with [`OnStale::CallValidate`], checked with sessiond). Default 10 s; sessiond sends a
    /// heartbeat within 5 s of quiet, so a bound below that goes stale on a quiet stream.
    pub fn staleness(mut self, bound: Duration) -> Self {
        self.staleness = bound;
        self
    }

    /// What to do while stale. Default [`OnStale::FailClosed`].
    pub fn on_stale(mut self, on_stale: OnStale) -> Self {
        self.on_stale = on_stale;
        self
    }

    /// How long past `exp` a token is still taken, for clock skew. Default 0.
    pub fn leeway(mut self, leeway: Duration) -> Self {
        self.leeway = leeway;
        self
    }

    /// The bounds on the JWKS refresh interval, whatever its `Cache-Control: max-age` says.
    /// Default 10 s and 10 min.
    pub fn jwks_refresh(mut self, floor: Duration, ceiling: Duration) -> Self {
        self.jwks_refresh_floor = floor;
        self.jwks_refresh_ceiling = ceiling;
        self
    }

    /// The shortest interval between two JWKS fetches asked for by tokens with an unknown
    /// `kid`. Default 5 s.
    pub fn jwks_refetch_interval(mut self, interval: Duration) -> Self {
        self.jwks_refetch_interval = interval;
        self
    }

    /// The TLS configuration of an `https://` JWKS URL (a private CA, a client certificate).
    /// Default: rustls on ring, trusting the system's root certificates.
    pub fn jwks_tls(mut self, config: rustls::ClientConfig) -> Self {
        self.jwks_tls = Some(config);
        self
    }

    /// A revocation stream that delivers nothing (not even a heartbeat) this long is dropped
    /// and opened again. Default 15 s, three of sessiond's heartbeat intervals.
    pub fn stream_idle_timeout(mut self, timeout: Duration) -> Self {
        self.stream_idle_timeout = timeout;
        self
    }

    /// The deadline of a fallback `Validate` call. Default 2 s.
    pub fn validate_timeout(mut self, timeout: Duration) -> Self {
        self.validate_timeout = timeout;
        self
    }

    /// How many verified tokens are remembered, so that a token seen before skips the Ed25519
    /// verification (expiry, revocations and staleness are still judged every time). Default
    /// 10 000 (a few MB); 0 turns the memo off.
    pub fn memo_capacity(mut self, tokens: u64) -> Self {
        self.memo_capacity = tokens;
        self
    }

    /// Checks the configuration and starts the verifier's two tasks: the JWKS refresher and
    /// the revocation follower. Returns at once, before anything is fetched: until the first
    /// JWKS and the first snapshot arrive every token is refused ([`Verifier::wait_synced`]
    /// waits for them). Must be called within a tokio runtime.
    pub async fn start(self) -> Result<Verifier, BuildError> {
        let issuer = self
            .issuer
            .filter(|issuer| !issuer.is_empty())
            .ok_or(BuildError::MissingIssuer)?;
        let audience = self
            .audience
            .filter(|audience| !audience.is_empty())
            .ok_or(BuildError::MissingAudience)?;
        if self.staleness.is_zero() {
            return Err(BuildError::Setting("the staleness bound must be positive"));
        }
        if self.stream_idle_timeout.is_zero() || self.validate_timeout.is_zero() {
            return Err(BuildError::Setting("timeouts must be positive"));
        }
        if self.jwks_refresh_floor.is_zero() || self.jwks_refresh_floor > self.jwks_refresh_ceiling
        {
            return Err(BuildError::Setting(
                "the JWKS refresh floor must be positive and at most its ceiling",
            ));
        }
        let leeway = chrono::Duration::from_std(self.leeway)
            .map_err(|_| BuildError::Setting("the leeway is out of range"))?;
        let authorization = self.api_key.map(|key| authorization(&key)).transpose()?;
        let channel = match self.grpc {
            GrpcTarget::Url(url) => Endpoint::from_shared(url)
                .map_err(|e| BuildError::GrpcUrl(e.to_string()))?
                .connect_timeout(Duration::from_secs(5))
                .http2_keep_alive_interval(Duration::from_secs(10))
                .keep_alive_timeout(Duration::from_secs(5))
                .connect_lazy(),
            GrpcTarget::Endpoint(endpoint) => endpoint.connect_lazy(),
            GrpcTarget::Channel(channel) => channel,
        };
        let fetcher = jwks::Fetcher::new(&self.jwks_url, self.jwks_tls)?;
        let client = SessionServiceClient::new(channel);
        let shared = Arc::new(Shared {
            expected: Expected {
                issuer,
                audience,
                leeway,
            },
            keys: Arc::new(Keys::new(self.jwks_refetch_interval)),
            memo: Memo::new(self.memo_capacity, leeway),
            revocations: Arc::new(RevocationState::new(self.staleness)),
            on_stale: self.on_stale,
            validate: Some(Validate {
                client: client.clone(),
                authorization: authorization.clone(),
                timeout: self.validate_timeout,
            }),
        });
        let policy = RefreshPolicy {
            floor: self.jwks_refresh_floor,
            ceiling: self.jwks_refresh_ceiling,
            retry_ceiling: self.jwks_refresh_floor.max(Duration::from_secs(30)),
        };
        let stream = follower::Stream {
            client,
            authorization,
            idle_timeout: self.stream_idle_timeout,
            leeway,
        };
        let tasks = Tasks::default();
        tasks.spawn(
            "jwks",
            jwks::refresh(shared.keys.clone(), fetcher, policy, tasks.cancel.clone()),
        );
        tasks.spawn(
            "revocations",
            follower::follow(
                shared.revocations.clone(),
                shared.keys.clone(),
                stream,
                tasks.cancel.clone(),
            ),
        );
        Ok(Verifier {
            shared,
            tasks: Arc::new(tasks),
        })
    }
}

/// `Bearer <key>`, marked sensitive so that HTTP/2 never indexes it (nor a log prints it).
fn authorization(key: &SecretString) -> Result<MetadataValue<Ascii>, BuildError> {
    let mut value = MetadataValue::try_from(format!("Bearer {}", key.expose_secret()))
        .map_err(|_| BuildError::ApiKey)?;
    value.set_sensitive(true);
    Ok(value)
}

/// The `Validate` fallback's client.
#[derive(Debug)]
struct Validate {
    client: SessionServiceClient<Channel>,
    authorization: Option<MetadataValue<Ascii>>,
    timeout: Duration,
}

/// What the verification path reads, and the tasks update.
#[derive(Debug)]
struct Shared {
    expected: Expected,
    keys: Arc<Keys>,
    memo: Memo,
    revocations: Arc<RevocationState>,
    on_stale: OnStale,
    validate: Option<Validate>,
}

/// The background tasks, cancelled when the last [`Verifier`] clone is dropped.
#[derive(Debug, Default)]
struct Tasks {
    cancel: CancellationToken,
    handles: Mutex<Vec<(&'static str, JoinHandle<()>)>>,
}

impl Tasks {
    fn spawn(
        &self,
        name: &'static str,
        task: impl std::future::Future<Output = ()> + Send + 'static,
    ) {
        let handle = tokio::spawn(tracing::Instrument::instrument(
            task,
            tracing::info_span!("sessiond_verifier", task = name),
        ));
        self.handles
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push((name, handle));
    }
}

impl Drop for Tasks {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// What the local checks concluded.
enum Local {
    Accepted(Session),
    Refused(Refusal),
    /// Every check passed, but the revocation list is stale.
    Stale(Session),
    /// No key set was fetched yet.
    NoKeys,
}

/// Verifies sessiond access tokens locally. Cheap to clone (one `Arc`); the background tasks
/// stop when the last clone is dropped, or at [`Verifier::shutdown`].
#[derive(Clone)]
pub struct Verifier {
    shared: Arc<Shared>,
    tasks: Arc<Tasks>,
}

impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Verifier")
            .field("issuer", &self.shared.expected.issuer)
            .field("audience", &self.shared.expected.audience)
            .field("on_stale", &self.shared.on_stale)
            .finish_non_exhaustive()
    }
}

/// A verifier's state, for health checks and metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Keys are loaded and the revocation list is within the staleness bound.
    pub synced: bool,
    /// How far behind the revocation list may be; `None` before the first snapshot.
    pub since_last_proof: Option<Duration>,
    /// Keys in the JWKS in use; `None` before the first fetch.
    pub keys: Option<usize>,
    /// The revocations held.
    pub revocations: RevocationCounts,
}

impl Verifier {
    /// A verifier of tokens from the sessiond at `grpc` (for `WatchRevocations` and
    /// `Validate`), whose JWKS is at `jwks_url` (sessiond's ops port:
    /// `http://host:9090/.well-known/jwks.json`).
    pub fn builder(grpc: impl Into<GrpcTarget>, jwks_url: impl Into<String>) -> Builder {
        Builder {
            grpc: grpc.into(),
            jwks_url: jwks_url.into(),
            issuer: None,
            audience: None,
            api_key: None,
            staleness: Duration::from_secs(10),
            on_stale: OnStale::FailClosed,
            leeway: Duration::ZERO,
            jwks_refresh_floor: Duration::from_secs(10),
            jwks_refresh_ceiling: Duration::from_secs(600),
            jwks_refetch_interval: Duration::from_secs(5),
            jwks_tls: None,
            stream_idle_timeout: Duration::from_secs(15),
            validate_timeout: Duration::from_secs(2),
            memo_capacity: 10_000,
        }
    }

    /// Verifies `token` (the JWT alone, without `Bearer `). Locally, with no network call,
    /// except: a `kid` the JWKS does not hold (or no JWKS yet) waits up to 1 s for a refetch, at
    /// most one per refetch interval; and with [`OnStale::CallValidate`], a stale verifier asks
    /// sessiond.
    pub async fn verify(&self, token: &str) -> Result<Session, VerifyError> {
        let mut local = self.check(token);
        if let Local::Refused(Refusal::UnknownKey) | Local::NoKeys = local
            && let Some(mut fetched) = self.shared.keys.request_refetch(Instant::now())
        {
            // Err: the fetch did not end in time, or the task is gone; the check says which.
            let _ = tokio::time::timeout(UNKNOWN_KID_WAIT, fetched.changed()).await;
            local = self.check(token);
        }
        match (local, self.shared.on_stale) {
            (Local::Stale(session), OnStale::CallValidate) => {
                self.validate(token, Some(session)).await
            }
            (Local::NoKeys, OnStale::CallValidate) => self.validate(token, None).await,
            (local, _) => local.into_result(),
        }
    }

    /// Verifies `token` with no network call and no wait: a stale verifier refuses it whatever
    /// [`OnStale`] says, and an unknown `kid` is refused (while a JWKS refetch is asked for).
    pub fn verify_local(&self, token: &str) -> Result<Session, VerifyError> {
        let local = self.check(token);
        if let Local::Refused(Refusal::UnknownKey) | Local::NoKeys = local {
            self.shared.keys.request_refetch(Instant::now());
        }
        local.into_result()
    }

    fn check(&self, token: &str) -> Local {
        let shared = &*self.shared;
        let keys = shared.keys.current();
        let Some(keys) = keys.as_deref() else {
            return Local::NoKeys;
        };
        let now = Utc::now();
        let entry = match shared.memo.get(token, keys) {
            Some(entry) if token::is_expired(entry.verified.expires_at, &shared.expected, now) => {
                return Local::Refused(VerifyError::Expired.into());
            }
            Some(entry) => entry,
            None => match token::verify(token, keys, &shared.expected, now) {
                Ok(verified) => shared.memo.remember(token, verified, keys),
                Err(refusal) => return Local::Refused(refusal),
            },
        };
        let verified = &entry.verified;
        // A known revocation refuses even when stale: stale means "may not know all of them".
        if shared.revocations.is_refused(verified) {
            return Local::Refused(VerifyError::Revoked.into());
        }
        let session = Session {
            user_id: verified.user_id.clone(),
            session_id: verified.session_id,
            expires_at: verified.expires_at,
        };
        if shared.revocations.freshness.is_fresh(Instant::now()) {
            Local::Accepted(session)
        } else {
            Local::Stale(session)
        }
    }

    /// The fallback: sessiond's own `Validate`. `local` is what the local checks verified, when
    /// they could run (keys were loaded).
    async fn validate(&self, token: &str, local: Option<Session>) -> Result<Session, VerifyError> {
        let validate = self
            .shared
            .validate
            .as_ref()
            .ok_or(VerifyError::Unavailable)?;
        let mut request = tonic::Request::new(pb::ValidateRequest {
            access_token: token.to_owned(),
        });
        request.set_timeout(validate.timeout);
        if let Some(authorization) = &validate.authorization {
            request
                .metadata_mut()
                .insert("authorization", authorization.clone());
        }
        let mut client = validate.client.clone();
        let answer = match tokio::time::timeout(validate.timeout, client.validate(request)).await {
            Ok(Ok(answer)) => answer.into_inner(),
            Ok(Err(status)) => {
                tracing::debug!(code = ?status.code(), "the Validate fallback failed");
                return Err(VerifyError::Unavailable);
            }
            Err(_) => {
                tracing::debug!(timeout = ?validate.timeout, "the Validate fallback timed out");
                return Err(VerifyError::Unavailable);
            }
        };
        if !answer.valid {
            return Err(refusal_of(answer.status));
        }
        let session = answer.session.ok_or(VerifyError::Unavailable)?;
        let session_id = session
            .session_id
            .parse::<Uuid>()
            .map_err(|_| VerifyError::Unavailable)?;
        match local {
            Some(local) if local.session_id == session_id && local.user_id == session.user_id => {
                Ok(local)
            }
            // sessiond vouched for another session than the token names: trust neither.
            Some(_) => Err(VerifyError::Unavailable),
            None => Ok(Session {
                expires_at: token::unverified_expiry(token)
                    .or_else(|| session.expires_at.as_ref().and_then(timestamp))
                    .ok_or(VerifyError::Unavailable)?,
                user_id: session.user_id,
                session_id,
            }),
        }
    }

    /// Waits until the JWKS is loaded and the revocation list is within the staleness bound
    /// (the first snapshot is in), or `timeout` passes: then [`VerifyError::Unavailable`]
    /// without keys, [`VerifyError::Stale`] without a snapshot.
    pub async fn wait_synced(&self, timeout: Duration) -> Result<(), VerifyError> {
        let deadline = Instant::now() + timeout;
        loop {
            let missing = self.unsynced();
            match missing {
                None => return Ok(()),
                Some(error) if Instant::now() >= deadline => return Err(error),
                Some(_) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    tokio::time::sleep(SYNC_POLL.min(left)).await;
                }
            }
        }
    }

    /// Whether the JWKS is loaded and the revocation list is within the staleness bound.
    pub fn is_synced(&self) -> bool {
        self.unsynced().is_none()
    }

    fn unsynced(&self) -> Option<VerifyError> {
        if self.shared.keys.current().is_none() {
            Some(VerifyError::Unavailable)
        } else if !self.shared.revocations.freshness.is_fresh(Instant::now()) {
            Some(VerifyError::Stale)
        } else {
            None
        }
    }

    /// The verifier's state now.
    pub fn stats(&self) -> Stats {
        Stats {
            synced: self.is_synced(),
            since_last_proof: self.shared.revocations.freshness.age(Instant::now()),
            keys: self.shared.keys.current().as_ref().map(|keys| keys.len()),
            revocations: self.shared.revocations.counts(),
        }
    }

    /// A tower layer for HTTP services (axum, hyper): it verifies `authorization: Bearer
    /// <jwt>`, puts the [`Session`] in the request's extensions, and answers a refused token
    /// with 401 and `WWW-Authenticate: Bearer error="invalid_token"`, a stale verifier with 503.
    pub fn layer(&self) -> AuthLayer {
        AuthLayer::new(self.clone(), Protocol::Http)
    }

    /// The same layer for gRPC services (tonic's `Server::builder().layer(..)`): refusals are
    /// `UNAUTHENTICATED`, a stale verifier `UNAVAILABLE`.
    pub fn grpc_layer(&self) -> AuthLayer {
        AuthLayer::new(self.clone(), Protocol::Grpc)
    }

    /// A tonic interceptor (`ServiceServer::with_interceptor`). Interceptors cannot wait, so it
    /// verifies with [`Verifier::verify_local`]: no `Validate` fallback, a stale verifier is
    /// `UNAVAILABLE`. Prefer [`Verifier::grpc_layer`] with [`OnStale::CallValidate`].
    pub fn interceptor(&self) -> AuthInterceptor {
        AuthInterceptor::new(self.clone())
    }

    /// Stops the background tasks and waits for them. The verifier goes stale afterwards.
    pub async fn shutdown(&self) {
        self.tasks.cancel.cancel();
        let handles = std::mem::take(
            &mut *self
                .tasks
                .handles
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        );
        for (name, handle) in handles {
            if let Err(error) = handle.await {
                tracing::error!(task = name, %error, "a verifier task ended abnormally");
            }
        }
    }
}

impl Local {
    fn into_result(self) -> Result<Session, VerifyError> {
        match self {
            Self::Accepted(session) => Ok(session),
            Self::Refused(refusal) => Err(refusal.error()),
            Self::Stale(_) => Err(VerifyError::Stale),
            Self::NoKeys => Err(VerifyError::Unavailable),
        }
    }
}

/// The refusal a `Validate` status stands for.
fn refusal_of(status: i32) -> VerifyError {
    use pb::TokenStatus;
    match TokenStatus::try_from(status) {
        Ok(TokenStatus::Malformed) => VerifyError::Malformed,
        Ok(TokenStatus::BadSignature) => VerifyError::BadSignature,
        Ok(TokenStatus::TokenExpired) => VerifyError::Expired,
        Ok(TokenStatus::WrongIssuerOrAudience) => VerifyError::WrongIssuerOrAudience,
        Ok(
            TokenStatus::SessionRevoked
            | TokenStatus::SessionExpired
            | TokenStatus::SessionNotFound,
        ) => VerifyError::Revoked,
        // VALID with valid=false, UNSPECIFIED or a newer status: not an answer to act on.
        Ok(TokenStatus::Valid | TokenStatus::Unspecified) | Err(_) => VerifyError::Unavailable,
    }
}

/// For the benchmark only: a verifier of `issuer`/`audience` tokens with the JWKS `document`,
/// holding `revoked_sessions`, synced for a day, with no sessiond behind it, and a memo of
/// `memo_capacity` tokens. Not part of the API.
#[doc(hidden)]
pub fn __bench_verifier(
    issuer: &str,
    audience: &str,
    document: &[u8],
    revoked_sessions: impl IntoIterator<Item = Uuid>,
    memo_capacity: u64,
) -> Result<Verifier, BuildError> {
    let keys = Keys::new(Duration::from_secs(5));
    keys.replace(jwks::KeySet::parse(document).map_err(|e| BuildError::JwksUrl(e.to_string()))?);
    let revocations = RevocationState::new(Duration::from_secs(86_400));
    let forever = Some(prost_types::Timestamp {
        seconds: 253_402_300_799,
        nanos: 0,
    });
    let now = Instant::now();
    revocations.receive(
        &pb::RevocationEvent {
            kind: pb::RevocationKind::Heartbeat.into(),
            ..Default::default()
        },
        now,
        Utc::now(),
    );
    for session_id in revoked_sessions {
        let event = pb::RevocationEvent {
            kind: pb::RevocationKind::Session.into(),
            session_id: session_id.to_string(),
            token_expires_before: forever,
            ..Default::default()
        };
        revocations.receive(&event, now, Utc::now());
    }
    Ok(Verifier {
        shared: Arc::new(Shared {
            expected: Expected {
                issuer: issuer.into(),
                audience: audience.into(),
                leeway: chrono::Duration::zero(),
            },
            keys: Arc::new(keys),
            memo: Memo::new(memo_capacity, chrono::Duration::zero()),
            revocations: Arc::new(revocations),
            on_stale: OnStale::FailClosed,
            validate: None,
        }),
        tasks: Arc::new(Tasks::default()),
    })
}
