//! jsonwebtoken's RustCrypto provider, with each Ed25519 key decoded once instead of once per
//! token. Its own factories decode the PKCS#8 private key and derive the public key (a scalar
//! multiplication, as costly as the signature itself) for every token signed, and decompress the
//! public point for every token verified. Every other algorithm goes to the stock provider.

use std::{
    collections::HashMap,
    sync::{LazyLock, PoisonError, RwLock},
};

use ed25519_dalek::{Signature, pkcs8::DecodePrivateKey};
use jsonwebtoken::{
    Algorithm, AlgorithmFamily, DecodingKey, EncodingKey,
    crypto::{CryptoProvider, JwtSigner, JwtVerifier, rust_crypto},
    errors::{ErrorKind, Result},
    signature,
};

/// Makes this the process's provider. Call it before any token is signed or verified: once
/// jsonwebtoken has picked its stock provider, this one is refused (tokens stay correct, only
/// slower). Later calls do nothing.
pub(super) fn install() {
    static PROVIDER: LazyLock<CryptoProvider> = LazyLock::new(|| CryptoProvider {
        signer_factory: signer,
        verifier_factory: verifier,
        key_utils: rust_crypto::DEFAULT_PROVIDER.key_utils.clone(),
    });
    // Refused only when a provider is in place already: this one, from an earlier call.
    let _ = PROVIDER.install_default();
}

fn signer(algorithm: &Algorithm, key: &EncodingKey) -> Result<Box<dyn JwtSigner>> {
    if *algorithm != Algorithm::EdDSA || key.family() != AlgorithmFamily::Ed {
        return (rust_crypto::DEFAULT_PROVIDER.signer_factory)(algorithm, key);
    }
    let key = decoded(&SIGNING_KEYS, key.as_bytes(), |der| {
        ed25519_dalek::SigningKey::from_pkcs8_der(der).ok()
    })?;
    Ok(Box::new(EdSigner(key)))
}

fn verifier(algorithm: &Algorithm, key: &DecodingKey) -> Result<Box<dyn JwtVerifier>> {
    if *algorithm != Algorithm::EdDSA || key.family() != AlgorithmFamily::Ed {
        return (rust_crypto::DEFAULT_PROVIDER.verifier_factory)(algorithm, key);
    }
    let public_key = key
        .try_get_as_bytes()?
        .get(..32)
        .ok_or(ErrorKind::InvalidEddsaKey)?;
    let key = decoded(&VERIFYING_KEYS, public_key, |raw| {
        ed25519_dalek::VerifyingKey::from_bytes(raw.try_into().ok()?).ok()
    })?;
    Ok(Box::new(EdVerifier(key)))
}

/// Decoded keys, by their encoded bytes.
type DecodedKeys<K> = LazyLock<RwLock<HashMap<Vec<u8>, K>>>;

static SIGNING_KEYS: DecodedKeys<ed25519_dalek::SigningKey> = LazyLock::new(Default::default);
static VERIFYING_KEYS: DecodedKeys<ed25519_dalek::VerifyingKey> = LazyLock::new(Default::default);

/// Keys in use are few (one more per rotation); past this many, the memo starts over.
const MAX_DECODED_KEYS: usize = 64;

/// The key `encoded` decodes to, decoded once.
fn decoded<K: Clone>(
    memo: &DecodedKeys<K>,
    encoded: &[u8],
    decode: impl FnOnce(&[u8]) -> Option<K>,
) -> Result<K> {
    if let Some(key) = memo
        .read()
        .unwrap_or_else(PoisonError::into_inner)
        .get(encoded)
    {
        return Ok(key.clone());
    }
    let key = decode(encoded).ok_or(ErrorKind::InvalidEddsaKey)?;
    let mut memo = memo.write().unwrap_or_else(PoisonError::into_inner);
    if memo.len() >= MAX_DECODED_KEYS {
        memo.clear();
    }
    memo.insert(encoded.to_vec(), key.clone());
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

struct EdVerifier(ed25519_dalek::VerifyingKey);

impl signature::Verifier<Vec<u8>> for EdVerifier {
    fn verify(
        &self,
        message: &[u8],
        signature: &Vec<u8>,
    ) -> std::result::Result<(), signature::Error> {
        self.0.verify(message, &Signature::from_slice(signature)?)
    }
}

impl JwtVerifier for EdVerifier {
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
    }

    #[test]
    fn verifies_what_the_stock_provider_signed_and_nothing_else() {
        let key = SigningKey::generate().expect("key");
        let other = SigningKey::generate().expect("key");
        let signature = stock_signature(&key);
        let verify = |key: &SigningKey, message: &[u8]| {
            verifier(&Algorithm::EdDSA, key.decoding())
                .expect("a verifier")
                .verify(message, &signature)
                .is_ok()
        };
        assert!(verify(&key, MESSAGE));
        assert!(!verify(&key, b"header.claimz"), "an altered message");
        assert!(!verify(&other, MESSAGE), "another key");
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
