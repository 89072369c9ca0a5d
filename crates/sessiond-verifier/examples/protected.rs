//! An axum service with one protected route, `/me`, which answers the caller's session as JSON,
//! and `/healthz`, which says whether the verifier is synced. Configured by the environment:
//!
//! ```sh
//! SESSIOND_GRPC_URL=http://127.0.0.1:50051 \
//! SESSIOND_JWKS_URL=http://127.0.0.1:9090/.well-known/jwks.json \
//! SESSIOND_ISSUER=sessiond SESSIOND_AUDIENCE=sessiond SESSIOND_API_KEY=... \
//! cargo run -p sessiond-verifier --example protected
//! curl -H "authorization: Bearer $ACCESS_TOKEN" http://127.0.0.1:8080/me
//! ```
//!
//! `SESSIOND_ON_STALE=validate` asks sessiond's `Validate` while the revocation stream is stale
//! (the default refuses every token then); `LISTEN_ADDR` (default `127.0.0.1:8080`) is where it
//! listens.

use std::{env, time::Duration};

use axum::{Json, Router, http::StatusCode, routing::get};
use sessiond_verifier::{Authenticated, OnStale, Session, Verifier};
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .init();
    let var = |name: &str, default: &str| env::var(name).unwrap_or_else(|_| default.to_owned());

    let mut builder = Verifier::builder(
        var("SESSIOND_GRPC_URL", "http://127.0.0.1:50051"),
        var(
            "SESSIOND_JWKS_URL",
            "http://127.0.0.1:9090/.well-known/jwks.json",
        ),
    )
    .issuer(var("SESSIOND_ISSUER", "sessiond"))
    .audience(var("SESSIOND_AUDIENCE", "sessiond"));
    if let Ok(key) = env::var("SESSIOND_API_KEY") {
        builder = builder.api_key(key);
    }
    if var("SESSIOND_ON_STALE", "fail-closed") == "validate" {
        builder = builder.on_stale(OnStale::CallValidate);
    }
    let verifier = builder.start().await?;
    if let Err(error) = verifier.wait_synced(Duration::from_secs(10)).await {
        // Not fatal: tokens are refused until it syncs, and it keeps trying.
        tracing::warn!(%error, "the verifier is not synced yet");
    }

    let app = Router::new()
        .route("/me", get(me))
        .route("/healthz", get(healthz))
        .with_state(verifier.clone());
    let listener = tokio::net::TcpListener::bind(var("LISTEN_ADDR", "127.0.0.1:8080")).await?;
    tracing::info!(addr = %listener.local_addr()?, "serving /me");
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    verifier.shutdown().await;
    Ok(())
}

/// The caller's session; a refused token never reaches here (401, or 503 while stale).
async fn me(Authenticated(session): Authenticated) -> Json<Session> {
    Json(session)
}

/// 200 while tokens can be verified, 503 while they cannot.
async fn healthz(
    axum::extract::State(verifier): axum::extract::State<Verifier>,
) -> (StatusCode, &'static str) {
    if verifier.is_synced() {
        (StatusCode::OK, "synced\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not synced\n")
    }
}
