//! jsonwebtoken's RustCrypto provider, with each Ed25519 signing key decoded once instead of once
//! per token: the stock signer decodes the PKCS#8 key and derives its public key (a scalar
//! multiplication, as costly as the signature itself) for every token it signs. Everything else,
//! verification included (its per-token decoding is cheap), is the stock provider's.

use std::{
    collections::HashMap,
    sync::{LazyLock, PoisonError, RwLock},
};

use ed25519_dalek::pkcs8::DecodePrivateKey;
use jsonwebtoken::{
    Algorithm, AlgorithmFamily, EncodingKey,
    crypto::{CryptoProvider, JwtSigner, rust_crypto},
    errors::{ErrorKind, Result},
    signature,
};

/// Makes this the process's provider. Call it before any token is signed or verified: once
/// jsonwebtoken has picked its stock provider, this one is refused (tokens stay correct, only
/// slower). Later calls do nothing.
pub(super) fn install() {
    static PROVIDER: LazyLock<CryptoProvider> = LazyLock::new(|| CryptoProvider {
        signer_factory: signer,
        ..rust_crypto::DEFAULT_PROVIDER.clone()
    });
    // Refused only when a provider is in place already: this one, from an earlier call.
    let _ = PROVIDER.install_default();
}

fn signer(algorithm: &Algorithm, key: &EncodingKey) -> Result<Box<dyn JwtSigner>> {
    if *algorithm != Algorithm::EdDSA || key.family() != AlgorithmFamily::Ed {
        return (rust_crypto::DEFAULT_PROVIDER.signer_factory)(algorithm, key);
    }
    Ok(Box::new(EdSigner(decoded(key.as_bytes())?)))
}

/// Decoded signing keys, by their PKCS#8 bytes.
static SIGNING_KEYS: LazyLock<RwLock<HashMap<Vec<u8>, ed25519_dalek::SigningKey>>> =
    LazyLock::new(Default::default);

/// Keys in use are few (one more per rotation); past this many, the memo starts over.
const MAX_DECODED_KEYS: usize = 64;

/// The signing key `der` decodes to, decoded once.
fn decoded(der: &[u8]) -> Result<ed25519_dalek::SigningKey> {
    if let Some(key) = SIGNING_KEYS
        .read()
        .unwrap_or_else(PoisonError::into_inner)
        .get(der)
    {
        return Ok(key.clone());
    }
    let key =
        ed25519_dalek::SigningKey::from_pkcs8_der(der).map_err(|_| ErrorKind::InvalidEddsaKey)?;
    let mut memo = SIGNING_KEYS.write().unwrap_or_else(PoisonError::into_inner);
    if memo.len() >= MAX_DECODED_KEYS {
        memo.clear();
    }
    memo.insert(der.to_vec(), key.clone());
    Ok(key)
}

struct EdSigner(ed25519_dalek::SigningKey);

impl signature::Signer<Vec<u8>> for EdSigner {
    fn try_sign(&self, message: &[u8]) -> std::result::Result<Vec<u8>, signature::Error> {
        Ok(self.0.sign(message).to_bytes().to_vec())
    }
}

impl JwtSigner for EdSigner {
    fn algorithm(&self) -> Algorithm {
        Algorithm::EdDSA
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::token::SigningKey;

    const MESSAGE: &[u8] = b"header.claims";

    fn stock_signature(key: &SigningKey) -> Vec<u8> {
        (rust_crypto::DEFAULT_PROVIDER.signer_factory)(&Algorithm::EdDSA, key.encoding())
            .expect("a stock signer")
            .try_sign(MESSAGE)
            .expect("signs")
    }

    #[test]
    fn signs_as_the_stock_provider_does() {
        let key = SigningKey::generate().expect("key");
        // Ed25519 signatures are deterministic: the same key and message give the same bytes.
        for _ in 0..2 {
            let signature = signer(&Algorithm::EdDSA, key.encoding())
                .expect("a signer")
                .try_sign(MESSAGE)
                .expect("signs");
            assert_eq!(signature, stock_signature(&key));
        }
        let memo = SIGNING_KEYS.read().unwrap_or_else(PoisonError::into_inner);
        assert!(
            memo.contains_key(key.encoding().as_bytes()),
            "decoded once, kept"
        );
    }

    #[test]
    fn other_algorithms_go_to_the_stock_provider() {
        let secret = EncodingKey::from_secret(b"secret");
        let hs256 = signer(&Algorithm::HS256, &secret).expect("a stock HMAC signer");
        assert_eq!(hs256.algorithm(), Algorithm::HS256);
        let key = SigningKey::generate().expect("key");
        assert!(
            signer(&Algorithm::HS256, key.encoding()).is_err(),
            "an Ed25519 key does not sign HS256"
        );
    }
}
