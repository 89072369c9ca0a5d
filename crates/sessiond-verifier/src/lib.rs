//! Verifies sessiond access tokens inside a Rust service, with no call to sessiond per request.
//!
//! A [`Verifier`] fetches sessiond's JWKS and keeps it fresh, checks each token locally (EdDSA
//! only, `kid`, `iss`, `aud`, `exp`), and follows sessiond's `WatchRevocations` stream in the
//! background, so that a revoked session, a user signed out everywhere or a removed signing key
//! is refused within moments. When that stream has been down or silent longer than the
//! staleness bound, the verifier fails closed (every token is [`VerifyError::Stale`]) or, if so
//! configured, asks sessiond's `Validate` per request: a partition never extends the life of a
//! revoked token.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//! use sessiond_verifier::{Authenticated, Verifier};
//!
//! let verifier = Verifier::builder(
//!     "http://sessiond:50051",
//!     "http://sessiond:9090/.well-known/jwks.json",
//! )
//! .issuer("sessiond")
//! .audience("sessiond")
//! .api_key(std::env::var("SESSIOND_API_KEY")?)
//! .start()
//! .await?;
//! verifier.wait_synced(Duration::from_secs(10)).await?;
//!
//! // One token, by hand...
//! let session = verifier.verify("eyJ...").await?;
//! // ...or every request of an axum router.
//! let app: axum::Router = axum::Router::new()
//!     .route(
//!         "/me",
//!         axum::routing::get(|Authenticated(s): Authenticated| async move { axum::Json(s) }),
//!     )
//!     .with_state(verifier);
//! # let _ = (session, app); Ok(()) }
//! ```
//!
//! Modules follow the data: the token checks (`token.rs`), the keys (`jwks.rs`), the memo of
//! verified tokens (`memo.rs`), the revocation set (`revocations.rs`) and the stream that fills
//! it (`follower.rs`), the verifier that joins them (`verifier.rs`), and where requests come in
//! (`layer.rs`, `extract.rs`). The crate's README says what is refused when.

mod error;
#[cfg(feature = "axum")]
mod extract;
mod follower;
mod jwks;
mod layer;
mod memo;
#[allow(dead_code, unreachable_pub)]
mod pb;
mod revocations;
#[cfg(test)]
mod testing;
#[cfg(test)]
mod tests;
mod token;
mod verifier;

pub use error::{BuildError, VerifyError};
#[cfg(feature = "axum")]
pub use extract::{AuthRejection, Authenticated};
pub use layer::{Auth, AuthInterceptor, AuthLayer};
pub use revocations::RevocationCounts;
#[doc(hidden)]
pub use verifier::__bench_verifier;
pub use verifier::{Builder, GrpcTarget, OnStale, Session, Stats, Verifier};
