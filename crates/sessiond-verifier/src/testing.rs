//! Test helpers: Ed25519 keys made in the test, tokens signed as sessiond signs them, and the
//! JWKS document sessiond serves for them.

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use chrono::{DateTime, Utc};
use ed25519_dalek::Signer;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::jwks::KeySet;

/// A key pair with its kid.
pub(crate) struct TestKey {
    signing: ed25519_dalek::SigningKey,
    kid: String,
}

impl TestKey {
    /// A deterministic key: the same `seed` gives the same key.
    pub(crate) fn new(seed: u8) -> Self {
        Self {
            signing: ed25519_dalek::SigningKey::from_bytes(&[seed; 32]),
            kid: format!("test-key-{seed}"),
        }
    }

    pub(crate) fn kid(&self) -> &str {
        &self.kid
    }

    /// `header` and `claims`, encoded and signed as a compact JWS.
    pub(crate) fn sign(&self, header: &Value, claims: &Value) -> String {
        let input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let signature = self.signing.sign(input.as_bytes());
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature.to_bytes()))
    }

    /// The key as sessiond's JWKS lists it.
    pub(crate) fn jwk(&self) -> Value {
        json!({
            "kty": "OKP",
            "crv": "Ed25519",
            "x": URL_SAFE_NO_PAD.encode(self.signing.verifying_key().to_bytes()),
            "kid": self.kid,
            "use": "sig",
            "alg": "EdDSA",
        })
    }
}

/// The JWKS document of `keys`.
pub(crate) fn jwks(keys: &[&TestKey]) -> Value {
    json!({ "keys": keys.iter().map(|key| key.jwk()).collect::<Vec<_>>() })
}

impl KeySet {
    /// The key set of `keys`, through the JWKS parser.
    pub(crate) fn of(keys: &[&TestKey]) -> Self {
        Self::parse(jwks(keys).to_string().as_bytes()).expect("a JWKS")
    }
}

/// The header sessiond writes.
pub(crate) fn header(key: &TestKey) -> Value {
    json!({"typ": "JWT", "alg": "EdDSA", "kid": key.kid()})
}

/// The claims sessiond writes for session `sid` of `sub`, issued at `now` for `ttl` seconds, in a
/// session that started a minute before.
pub(crate) fn claims(sid: Uuid, sub: &str, now: DateTime<Utc>, ttl: i64) -> Value {
    json!({
        "iss": "sessiond",
        "aud": "api",
        "sub": sub,
        "sid": sid.to_string(),
        "iat": now.timestamp(),
        "exp": now.timestamp() + ttl,
        "jti": Uuid::now_v7().to_string(),
        "sct": now.timestamp_micros() - 60_000_000,
    })
}

/// A JWKS server on 127.0.0.1:0 whose document, status and Cache-Control the test changes, and
/// that counts the requests it answers.
pub(crate) struct JwksServer {
    pub(crate) url: String,
    state: std::sync::Arc<JwksState>,
}

pub(crate) struct JwksState {
    pub(crate) document: std::sync::Mutex<String>,
    pub(crate) cache_control: std::sync::Mutex<&'static str>,
    pub(crate) status: std::sync::Mutex<http::StatusCode>,
    hits: std::sync::atomic::AtomicUsize,
}

impl std::ops::Deref for JwksServer {
    type Target = JwksState;

    fn deref(&self) -> &JwksState {
        &self.state
    }
}

impl JwksServer {
    pub(crate) async fn start(keys: &[&TestKey], cache_control: &'static str) -> Self {
        use std::sync::{Arc, atomic::Ordering};

        use axum::{Router, extract::State, response::IntoResponse, routing::get};

        async fn serve(State(state): State<Arc<JwksState>>) -> impl IntoResponse {
            state.hits.fetch_add(1, Ordering::SeqCst);
            let status = *state.status.lock().expect("lock");
            let cache_control = *state.cache_control.lock().expect("lock");
            let document = state.document.lock().expect("lock").clone();
            (
                status,
                [(http::header::CACHE_CONTROL, cache_control)],
                document,
            )
        }

        let state = Arc::new(JwksState {
            document: jwks(keys).to_string().into(),
            cache_control: cache_control.into(),
            status: http::StatusCode::OK.into(),
            hits: 0.into(),
        });
        let app = Router::new()
            .route("/.well-known/jwks.json", get(serve))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binds");
        let url = format!(
            "http://{}/.well-known/jwks.json",
            listener.local_addr().expect("an address")
        );
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self { url, state }
    }

    /// How many requests it answered.
    pub(crate) fn hits(&self) -> usize {
        self.state.hits.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Serves the JWKS of `keys` from now on.
    pub(crate) fn serve_keys(&self, keys: &[&TestKey]) {
        *self.state.document.lock().expect("lock") = jwks(keys).to_string();
    }
}
