//! jsonwebtoken's crypto, for the one algorithm sessiond uses: Ed25519 through `ed25519-dalek`,
//! and nothing else. jsonwebtoken's stock RustCrypto provider would pull in RSA (with its
//! unfixed timing advisory, RUSTSEC-2023-0071), P-256 and P-384 for algorithms sessiond refuses
//! anyway; here every other algorithm fails as unsupported. Each signing key is also decoded once
//! instead of once per token: decoding a PKCS#8 key derives its public key, a scalar
//! multiplication as costly as the signature itself.

use std::{
    collections::HashMap,
    sync::{LazyLock, PoisonError, RwLock},
};

use ed25519_dalek::pkcs8::DecodePrivateKey;
use jsonwebtoken::{
    Algorithm, AlgorithmFamily, DecodingKey, EncodingKey,
    crypto::{CryptoProvider, JwtSigner, JwtVerifier, KeyUtils},
    errors::{ErrorKind, Result},
    signature,
};
use sha2::Digest;

/// Makes this the process's provider. Call it before any token is signed or verified. Later
/// calls do nothing.
pub(super) fn install() {
    static PROVIDER: LazyLock<CryptoProvider> = LazyLock::new(|| CryptoProvider {
        signer_factory: signer,
        verifier_factory: verifier,
        // sessiond writes its JWKS itself (`keys.rs`) and never asks jsonwebtoken for JWK
        // components. Should anything ask, it gets an error, not the panic of jsonwebtoken's
        // placeholder.
        key_utils: KeyUtils {
            rsa_pub_components_from_private_key: |_| Err(unsupported()),
            rsa_pub_components_from_public_key: |_| Err(unsupported()),
            ec_pub_components_from_private_key: |_, _| Err(unsupported()),
            ed_pub_components_from_private_key: |_, _| Err(unsupported()),
            compute_digest: |_, _| Err(unsupported()),
        },
    });
    // Refused only when a provider is in place already: this one, from an earlier call.
    let _ = PROVIDER.install_default();
}

fn unsupported() -> jsonwebtoken::errors::Error {
    ErrorKind::UnsupportedAlgorithm.into()
}

fn signer(algorithm: &Algorithm, key: &EncodingKey) -> Result<Box<dyn JwtSigner>> {
    if *algorithm != Algorithm::EdDSA {
        return Err(unsupported());
    }
    if key.family() != AlgorithmFamily::Ed {
        return Err(ErrorKind::InvalidKeyFormat.into());
    }
    Ok(Box::new(EdSigner(decoded(key.as_bytes())?)))
}

fn verifier(algorithm: &Algorithm, key: &DecodingKey) -> Result<Box<dyn JwtVerifier>> {
    if *algorithm != Algorithm::EdDSA {
        return Err(unsupported());
    }
    if key.family() != AlgorithmFamily::Ed {
        return Err(ErrorKind::InvalidKeyFormat.into());
    }
    let bytes: &[u8; 32] = key
        .try_get_as_bytes()?
        .try_into()
        .map_err(|_| ErrorKind::InvalidEddsaKey)?;
    Ok(Box::new(EdVerifier(
        ed25519_dalek::VerifyingKey::from_bytes(bytes).map_err(|_| ErrorKind::InvalidEddsaKey)?,
    )))
}

/// Decoded signing keys (which wipe themselves when dropped), by the SHA-256 of their PKCS#8
/// bytes: the memo holds no copy of those bytes that would outlive them unwiped.
static SIGNING_KEYS: LazyLock<RwLock<HashMap<[u8; 32], ed25519_dalek::SigningKey>>> =
    LazyLock::new(Default::default);

/// Keys in use are few (one more per rotation); past this many, the memo starts over.
const MAX_DECODED_KEYS: usize = 64;

/// The signing key `der` decodes to, decoded once.
fn decoded(der: &[u8]) -> Result<ed25519_dalek::SigningKey> {
    let fingerprint = memo_key(der);
    if let Some(key) = SIGNING_KEYS
        .read()
        .unwrap_or_else(PoisonError::into_inner)
        .get(&fingerprint)
    {
        return Ok(key.clone());
    }
    let key =
        ed25519_dalek::SigningKey::from_pkcs8_der(der).map_err(|_| ErrorKind::InvalidEddsaKey)?;
    let mut memo = SIGNING_KEYS.write().unwrap_or_else(PoisonError::into_inner);
    if memo.len() >= MAX_DECODED_KEYS {
        memo.clear();
    }
    memo.insert(fingerprint, key.clone());
    Ok(key)
}

fn memo_key(der: &[u8]) -> [u8; 32] {
    sha2::Sha256::digest(der).into()
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
        // Strict: also refuses the malleable and small-order forms RFC 8032 leaves open.
        self.0
            .verify_strict(message, &ed25519_dalek::Signature::from_slice(signature)?)
    }
}

impl JwtVerifier for EdVerifier {
    fn algorithm(&self) -> Algorithm {
        Algorithm::EdDSA
    }
}

#[cfg(test)]
mod tests {
    use ed25519_dalek::Signer;

    use super::*;
    use crate::token::SigningKey;

    const MESSAGE: &[u8] = b"header.claims";

    #[test]
    fn signs_and_verifies_ed25519_as_dalek_does() {
        let key = SigningKey::generate().expect("key");
        let dalek =
            ed25519_dalek::SigningKey::from_pkcs8_der(key.encoding().as_bytes()).expect("decodes");
        // Ed25519 signatures are deterministic: the same key and message give the same bytes.
        for _ in 0..2 {
            let signature = signer(&Algorithm::EdDSA, key.encoding())
                .expect("a signer")
                .try_sign(MESSAGE)
                .expect("signs");
            assert_eq!(signature, dalek.sign(MESSAGE).to_bytes().to_vec());
            let verifier = verifier(&Algorithm::EdDSA, key.decoding()).expect("a verifier");
            assert!(verifier.verify(MESSAGE, &signature).is_ok());
            assert!(verifier.verify(b"header.other", &signature).is_err());
        }
        let memo = SIGNING_KEYS.read().unwrap_or_else(PoisonError::into_inner);
        assert!(
            memo.contains_key(&memo_key(key.encoding().as_bytes())),
            "decoded once, kept"
        );
    }

    #[test]
    fn every_other_algorithm_is_unsupported() {
        let secret = EncodingKey::from_secret(b"secret");
        for algorithm in [Algorithm::HS256, Algorithm::RS256, Algorithm::ES256] {
            assert!(signer(&algorithm, &secret).is_err(), "{algorithm:?}");
            assert!(
                verifier(&algorithm, &DecodingKey::from_secret(b"secret")).is_err(),
                "{algorithm:?}"
            );
        }
    }
}
