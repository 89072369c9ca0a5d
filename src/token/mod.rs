//! Tokens: access tokens (EdDSA JWTs, signed and verified here) and refresh tokens (opaque
//! secrets, of which only hashes are stored).

mod access;
mod keys;
mod refresh;

pub use access::{AccessTokens, IssuedAccessToken, TokenRejection, VerifiedAccessToken};
pub use keys::{RefreshKey, SigningKey};
pub use refresh::{RefreshToken, TokenHash};

/// Fills a fixed-size array from the operating system's CSPRNG.
fn random_bytes<const N: usize>() -> Result<[u8; N], crate::error::Error> {
    let mut bytes = [0u8; N];
    getrandom::fill(&mut bytes).map_err(|e| {
        crate::error::Error::Internal(anyhow::anyhow!("the OS random source failed: {e}"))
    })?;
    Ok(bytes)
}
