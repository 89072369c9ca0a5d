//! Tokens: access tokens (EdDSA JWTs, signed and verified here) and refresh tokens (opaque
//! secrets, of which only hashes are stored).

mod access;
mod eddsa;
mod keys;
mod refresh;
mod verified;

pub use access::{
    AccessTokenSigner, IssuedAccessToken, KeyChange, MAX_ACCESS_TOKEN_BYTES, VerifiedAccessToken,
};
pub use keys::{
    KeySource, RefreshKey, RefreshKeys, SigningKey, create_key_file_if_missing, read_secret_file,
};
pub use refresh::{RefreshToken, TokenHash};
pub use verified::VerifiedTokens;

/// Every key sessiond holds, and where they are reloaded from on rotation.
pub struct Keys {
    pub signer: AccessTokenSigner,
    pub refresh_keys: RefreshKeys,
    signing_source: KeySource,
    refresh_source: KeySource,
}

impl Keys {
    /// Loads both kinds of key. A kind with no file or folder set gets one random key that lives
    /// as long as the process, with a warning: fine to try sessiond, wrong for production.
    pub fn load(
        signing_source: KeySource,
        refresh_source: KeySource,
        issuer: String,
        audience: String,
    ) -> anyhow::Result<Self> {
        let signing = if signing_source.is_configured() {
            signing_source.load(SigningKey::from_pem_file)?
        } else {
            tracing::warn!(
                "no SESSIOND_SIGNING_KEY_FILE or SESSIOND_SIGNING_KEYS_DIR: signing with a random key. Access \
                 tokens die with this process, and other replicas refuse them. Set one in production."
            );
            vec![SigningKey::generate()?]
        };
        let refresh = if refresh_source.is_configured() {
            refresh_source.load(RefreshKey::from_file)?
        } else {
            tracing::warn!(
                "no SESSIOND_REFRESH_KEY_FILE or SESSIOND_REFRESH_KEYS_DIR: using a random refresh key. A \
                 refresh retried across a restart or on another replica is refused. Set one in production."
            );
            vec![RefreshKey::generate()?]
        };
        let signer = AccessTokenSigner::new(SigningKey::generate()?, issuer, audience);
        signer.replace_keys(signing).map_err(anyhow::Error::msg)?;
        Ok(Self {
            signer,
            refresh_keys: RefreshKeys::new(refresh)
                .ok_or_else(|| anyhow::anyhow!("no refresh key"))?,
            signing_source,
            refresh_source,
        })
    }

    /// Reads the configured key files again and swaps the new keys in. On any error the keys in
    /// use stay as they were. Returns how the signing keys changed, if they are configured.
    pub fn reload(&self) -> anyhow::Result<Option<KeyChange>> {
        // Read everything before replacing anything, so a bad file changes nothing.
        let signing = self
            .signing_source
            .is_configured()
            .then(|| self.signing_source.load(SigningKey::from_pem_file))
            .transpose()?;
        let refresh = self
            .refresh_source
            .is_configured()
            .then(|| self.refresh_source.load(RefreshKey::from_file))
            .transpose()?;
        if let Some(refresh) = refresh {
            self.refresh_keys
                .replace(refresh)
                .map_err(anyhow::Error::msg)?;
        }
        signing
            .map(|signing| {
                self.signer
                    .replace_keys(signing)
                    .map_err(anyhow::Error::msg)
            })
            .transpose()
    }
}

/// Fills a fixed-size array from the operating system's CSPRNG.
fn random_bytes<const N: usize>() -> Result<[u8; N], crate::error::Error> {
    let mut bytes = [0u8; N];
    getrandom::fill(&mut bytes).map_err(|e| {
        crate::error::Error::Internal(anyhow::anyhow!("the OS random source failed: {e}"))
    })?;
    Ok(bytes)
}
