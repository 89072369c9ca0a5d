//! Refresh tokens: `sdrt_` followed by 256 bits in base64url. The prefix lets secret scanners find
//! leaked ones. Only the SHA-256 of a token is stored; a fast hash is enough because the token
//! itself is 256 random bits, so there is nothing to brute-force.

use std::fmt;

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::RefreshKey;
use crate::error::Error;

/// A refresh token held in memory only while a request needs it; `Debug` redacts it.
pub struct RefreshToken(SecretString);

impl RefreshToken {
    /// The fixed prefix of every refresh token.
    pub const PREFIX: &str = "sdrt_";
    /// Length of the whole token: the prefix and 32 bytes in unpadded base64url.
    const LEN: usize = Self::PREFIX.len() + 43;

    /// A fresh random token, for a new session.
    pub fn generate() -> Result<Self, Error> {
        Ok(Self::from_secret(&super::random_bytes::<32>()?))
    }

    /// The token that follows this one: `HMAC(key, this token's secret, salt)`, where the salt
    /// is random for each rotation and stored with this token. Deterministic given the salt, so a
    /// retried refresh gets the same successor; unguessable without the key; and not derivable
    /// from the key and an old token alone, without the salts the database holds.
    pub fn successor(&self, key: &RefreshKey, salt: &[u8; 16]) -> Self {
        let secret = &self.0.expose_secret()[Self::PREFIX.len()..];
        #[allow(clippy::expect_used)]
        // HMAC-SHA256 takes a key of any length; 32 bytes cannot fail.
        let mut mac =
            Hmac::<Sha256>::new_from_slice(key.bytes()).expect("HMAC accepts any key length");
        mac.update(secret.as_bytes());
        mac.update(salt);
        Self::from_secret(&mac.finalize().into_bytes().into())
    }

    /// A random salt for a rotation.
    pub fn new_salt() -> Result<[u8; 16], Error> {
        super::random_bytes()
    }

    fn from_secret(secret: &[u8; 32]) -> Self {
        Self(format!("{}{}", Self::PREFIX, URL_SAFE_NO_PAD.encode(secret)).into())
    }

    /// The hash under which the token is stored.
    pub fn hash(&self) -> TokenHash {
        TokenHash(Sha256::digest(self.0.expose_secret().as_bytes()).into())
    }

    /// The token's text, to hand to the client.
    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }
}

impl TryFrom<String> for RefreshToken {
    type Error = String;

    fn try_from(text: String) -> Result<Self, Self::Error> {
        let well_formed = text.len() == Self::LEN
            && text.starts_with(Self::PREFIX)
            && URL_SAFE_NO_PAD
                .decode(&text[Self::PREFIX.len()..])
                .is_ok_and(|secret| secret.len() == 32);
        if text.is_empty() {
            Err("must not be empty".into())
        } else if well_formed {
            Ok(Self(text.into()))
        } else {
            Err(format!(
                "must be a sessiond refresh token ({}…, {} characters)",
                Self::PREFIX,
                Self::LEN
            ))
        }
    }
}

impl fmt::Debug for RefreshToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RefreshToken([redacted])")
    }
}

/// SHA-256 of a refresh token. Compared in constant time.
#[derive(Clone, Copy)]
pub struct TokenHash(pub [u8; 32]);

impl PartialEq for TokenHash {
    fn eq(&self, other: &Self) -> bool {
        self.0.ct_eq(&other.0).into()
    }
}

impl Eq for TokenHash {}

impl fmt::Debug for TokenHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TokenHash({:02x}{:02x}…)", self.0[0], self.0[1])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generated_token_parses_back() {
        let token = RefreshToken::generate().expect("random");
        let parsed = RefreshToken::try_from(token.expose().to_owned()).expect("parses");
        assert_eq!(parsed.hash(), token.hash());
        assert!(token.expose().starts_with("sdrt_"));
    }

    #[test]
    fn the_successor_is_deterministic_and_depends_on_the_key_and_the_salt() {
        let token = RefreshToken::generate().expect("random");
        let key = RefreshKey::generate().expect("random");
        let salt = RefreshToken::new_salt().expect("random");
        let successor = |key, salt| token.successor(key, salt).hash();
        assert_eq!(successor(&key, &salt), successor(&key, &salt));
        assert_ne!(successor(&key, &salt), token.hash());
        let other_key = RefreshKey::generate().expect("random");
        assert_ne!(successor(&key, &salt), successor(&other_key, &salt));
        let other_salt = RefreshToken::new_salt().expect("random");
        assert_ne!(successor(&key, &salt), successor(&key, &other_salt));
    }

    #[test]
    fn malformed_tokens_are_refused() {
        let valid = RefreshToken::generate()
            .expect("random")
            .expose()
            .to_owned();
        for bad in [
            String::new(),
            "sdrt_short".into(),
            valid.replacen("sdrt_", "xxxx_", 1),
            format!("{valid}A"),
        ] {
            assert!(RefreshToken::try_from(bad.clone()).is_err(), "{bad}");
        }
    }

    #[test]
    fn debug_output_redacts_the_token() {
        let token = RefreshToken::generate().expect("random");
        assert!(!format!("{token:?}").contains(token.expose()));
    }
}
