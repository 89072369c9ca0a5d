//! Access tokens: short-lived EdDSA JWTs. `verify` judges signature, algorithm, key id, issuer,
//! audience and expiry, and says which one failed; whether the session is live is the authority's
//! question.

use std::{collections::HashMap, sync::Arc};

use arc_swap::ArcSwap;
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use chrono::{DateTime, Duration, Utc};
use jsonwebtoken::{Algorithm, Header, Validation, errors::ErrorKind};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::SigningKey;
use crate::{
    domain::{Session, SessionId, UserId},
    error::{Error, Refusal},
};

/// The longest access token looked at; a longer one is `Malformed` unread. sessiond's own are
/// about 400 bytes; 4 KiB leaves room for long user ids.
pub const MAX_ACCESS_TOKEN_BYTES: usize = 4 * 1024;

/// What a verified token says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedAccessToken {
    pub user_id: UserId,
    pub session_id: SessionId,
    pub expires_at: DateTime<Utc>,
    /// The key it verified under: a memoized verification holds only while that key is in the
    /// ring.
    pub kid: Arc<str>,
}

/// A freshly signed token.
#[derive(Debug, Clone)]
pub struct IssuedAccessToken {
    pub token: String,
    pub expires_at: DateTime<Utc>,
}

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    iss: String,
    aud: String,
    sub: String,
    sid: String,
    iat: i64,
    exp: i64,
    jti: String,
    /// When the session started, in microseconds since the epoch: what a local verifier compares
    /// with a user's not-before instant (a revocation event), exactly, where `iat` (seconds, and
    /// renewed by every refresh) cannot. Absent from tokens of releases before it.
    #[serde(default)]
    sct: i64,
}

/// Only the header fields sessiond judges, read before any signature work.
#[derive(Deserialize)]
struct HeaderFields {
    alg: String,
    kid: Option<String>,
}

/// The keys in use: the newest signs, every one verifies, each found by its `kid`.
struct KeyRing {
    signing: Arc<SigningKey>,
    by_kid: HashMap<String, Arc<SigningKey>>,
}

impl KeyRing {
    /// A ring of `keys`, oldest first; `None` when there is none.
    fn new(keys: Vec<SigningKey>) -> Option<Self> {
        let keys: Vec<_> = keys.into_iter().map(Arc::new).collect();
        let signing = keys.last()?.clone();
        let by_kid = keys
            .into_iter()
            .map(|key| (key.kid().to_owned(), key))
            .collect();
        Some(Self { signing, by_kid })
    }
}

/// How a key rotation changed the ring.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyChange {
    pub added: usize,
    /// The kids of the keys removed.
    pub removed: Vec<String>,
    /// The kid that signs from now on.
    pub signing_kid: String,
}

/// Signs with the newest key and verifies with every key of the ring, chosen by `kid`. The ring
/// can be replaced while requests run (key rotation without a restart).
pub struct AccessTokenSigner {
    keys: ArcSwap<KeyRing>,
    issuer: String,
    audience: String,
    validation: Validation,
}

impl std::fmt::Debug for AccessTokenSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessTokenSigner")
            .field("signing_kid", &self.keys.load().signing.kid())
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .finish_non_exhaustive()
    }
}

impl AccessTokenSigner {
    /// Tokens signed by `signing` for `issuer` and `audience`.
    pub fn new(signing: SigningKey, issuer: String, audience: String) -> Self {
        super::eddsa::install();
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.set_issuer(&[&issuer]);
        validation.set_audience(&[&audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        // Expiry is judged against the injected clock in `verify`, not the library's wall clock.
        validation.validate_exp = false;
        validation.leeway = 0;
        let signing = Arc::new(signing);
        let ring = KeyRing {
            by_kid: HashMap::from([(signing.kid().to_owned(), signing.clone())]),
            signing,
        };
        Self {
            keys: ArcSwap::from_pointee(ring),
            issuer,
            audience,
            validation,
        }
    }

    /// The key tokens are signed with now.
    pub fn signing_key(&self) -> Arc<SigningKey> {
        self.keys.load().signing.clone()
    }

    /// Whether the key `kid` still verifies tokens.
    pub fn verifies_with(&self, kid: &str) -> bool {
        self.keys.load().by_kid.contains_key(kid)
    }

    /// Every verification key, oldest first by kid.
    pub fn verification_keys(&self) -> Vec<Arc<SigningKey>> {
        let mut keys: Vec<_> = self.keys.load().by_kid.values().cloned().collect();
        keys.sort_by(|a, b| a.kid().cmp(b.kid()));
        keys
    }

    /// Replaces the ring with `keys` (oldest first; the last signs). Refuses an empty list.
    pub fn replace_keys(&self, keys: Vec<SigningKey>) -> Result<KeyChange, &'static str> {
        let ring = KeyRing::new(keys).ok_or("no signing key")?;
        let old = self.keys.load();
        let change = KeyChange {
            added: ring
                .by_kid
                .keys()
                .filter(|kid| !old.by_kid.contains_key(*kid))
                .count(),
            removed: old
                .by_kid
                .keys()
                .filter(|kid| !ring.by_kid.contains_key(*kid))
                .cloned()
                .collect(),
            signing_kid: ring.signing.kid().to_owned(),
        };
        self.keys.store(Arc::new(ring));
        Ok(change)
    }

    /// The public keys as a JSON Web Key Set (RFC 7517), for services that verify tokens locally.
    pub fn jwks(&self) -> serde_json::Value {
        let keys: Vec<_> = self
            .verification_keys()
            .iter()
            .map(|key| {
                serde_json::json!({
                    "kty": "OKP",
                    "crv": "Ed25519",
                    "x": URL_SAFE_NO_PAD.encode(key.public_key()),
                    "kid": key.kid(),
                    "use": "sig",
                    "alg": "EdDSA",
                })
            })
            .collect();
        serde_json::json!({ "keys": keys })
    }

    /// Signs a token for `session`, valid for `ttl` but never past the session's own expiry.
    pub fn issue(
        &self,
        session: &Session,
        now: DateTime<Utc>,
        ttl: Duration,
    ) -> Result<IssuedAccessToken, Error> {
        let expires_at = (now + ttl).min(session.expires_at);
        let claims = Claims {
            iss: self.issuer.clone(),
            aud: self.audience.clone(),
            sub: session.user_id.to_string(),
            sid: session.id.to_string(),
            iat: now.timestamp(),
            exp: expires_at.timestamp(),
            jti: Uuid::now_v7().to_string(),
            sct: session.created_at.timestamp_micros(),
        };
        let signing = self.signing_key();
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(signing.kid().to_owned());
        let token = jsonwebtoken::encode(&header, &claims, signing.encoding())
            .map_err(|e| Error::Internal(anyhow::anyhow!("signing an access token failed: {e}")))?;
        // `exp` has whole seconds; report what the token itself says.
        let expires_at = DateTime::from_timestamp(claims.exp, 0).unwrap_or(expires_at);
        Ok(IssuedAccessToken { token, expires_at })
    }

    /// Verifies `token` at `now`.
    pub fn verify(&self, token: &str, now: DateTime<Utc>) -> Result<VerifiedAccessToken, Refusal> {
        let header = read_header(token).ok_or(Refusal::Malformed)?;
        // Refuse `none`, HS256-with-the-public-key and every other algorithm before any key is used.
        if header.alg != "EdDSA" {
            return Err(Refusal::BadSignature);
        }
        let ring = self.keys.load();
        let key = header
            .kid
            .as_deref()
            .and_then(|kid| ring.by_kid.get(kid))
            .ok_or(Refusal::BadSignature)?;
        let claims = jsonwebtoken::decode::<Claims>(token, key.decoding(), &self.validation)
            .map_err(|e| rejection(e.kind()))?
            .claims;
        let expires_at = DateTime::from_timestamp(claims.exp, 0).ok_or(Refusal::Malformed)?;
        if now >= expires_at {
            return Err(Refusal::TokenExpired);
        }
        Ok(VerifiedAccessToken {
            user_id: UserId::try_from(claims.sub).map_err(|_| Refusal::Malformed)?,
            session_id: claims.sid.parse().map_err(|_| Refusal::Malformed)?,
            expires_at,
            kid: Arc::from(key.kid()),
        })
    }
}

fn read_header(token: &str) -> Option<HeaderFields> {
    let (encoded, _) = token.split_once('.')?;
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(encoded).ok()?).ok()
}

fn rejection(kind: &ErrorKind) -> Refusal {
    match kind {
        ErrorKind::InvalidSignature
        | ErrorKind::InvalidAlgorithm
        | ErrorKind::InvalidAlgorithmName
        | ErrorKind::UnsupportedAlgorithm
        | ErrorKind::InvalidEddsaKey
        | ErrorKind::InvalidKeyFormat => Refusal::BadSignature,
        ErrorKind::ExpiredSignature => Refusal::TokenExpired,
        ErrorKind::InvalidIssuer | ErrorKind::InvalidAudience => Refusal::WrongIssuerOrAudience,
        _ => Refusal::Malformed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens() -> AccessTokenSigner {
        AccessTokenSigner::new(
            SigningKey::generate().expect("key"),
            "iss".into(),
            "aud".into(),
        )
    }

    #[test]
    fn an_issued_token_verifies_until_it_expires() {
        let tokens = tokens();
        let now = Utc::now();
        let session = Session::example(now);
        let issued = tokens
            .issue(&session, now, Duration::minutes(15))
            .expect("signs");
        let verified = tokens.verify(&issued.token, now).expect("verifies");
        assert_eq!(verified.session_id, session.id);
        assert_eq!(verified.user_id, session.user_id);
        assert_eq!(
            tokens.verify(&issued.token, issued.expires_at),
            Err(Refusal::TokenExpired)
        );
    }

    #[test]
    fn a_token_never_outlives_its_session() {
        let tokens = tokens();
        let now = Utc::now();
        let mut session = Session::example(now);
        session.expires_at = now + Duration::minutes(1);
        let issued = tokens
            .issue(&session, now, Duration::minutes(15))
            .expect("signs");
        assert!(issued.expires_at <= session.expires_at);
    }

    #[test]
    fn a_token_from_another_key_has_a_bad_signature() {
        let now = Utc::now();
        let issued = tokens()
            .issue(&Session::example(now), now, Duration::minutes(15))
            .expect("signs");
        assert_eq!(
            tokens().verify(&issued.token, now),
            Err(Refusal::BadSignature)
        );
    }

    #[test]
    fn after_rotation_old_tokens_verify_until_their_key_is_removed() {
        let now = Utc::now();
        let first = SigningKey::generate().expect("key");
        let second = SigningKey::generate().expect("key");
        let (first_kid, second_kid) = (first.kid().to_owned(), second.kid().to_owned());
        let tokens = AccessTokenSigner::new(first.clone(), "iss".into(), "aud".into());
        let old = tokens
            .issue(&Session::example(now), now, Duration::minutes(15))
            .expect("signs");

        let change = tokens
            .replace_keys(vec![first, second.clone()])
            .expect("rotates");
        assert_eq!(
            change,
            KeyChange {
                added: 1,
                removed: vec![],
                signing_kid: second_kid.clone()
            }
        );
        assert!(
            tokens.verify(&old.token, now).is_ok(),
            "the old key still verifies"
        );
        let new = tokens
            .issue(&Session::example(now), now, Duration::minutes(15))
            .expect("signs");
        assert_eq!(
            jsonwebtoken::decode_header(&new.token).expect("header").kid,
            Some(second_kid)
        );
        assert_eq!(tokens.jwks()["keys"].as_array().map(Vec::len), Some(2));

        let change = tokens.replace_keys(vec![second]).expect("rotates");
        assert_eq!(change.removed.len(), 1);
        assert_eq!(
            tokens.verify(&old.token, now),
            Err(Refusal::BadSignature),
            "{first_kid} is gone"
        );
        assert!(tokens.verify(&new.token, now).is_ok());
        assert!(
            tokens.replace_keys(Vec::new()).is_err(),
            "an empty ring is refused"
        );
    }

    #[test]
    fn garbage_is_malformed() {
        let tokens = tokens();
        for garbage in ["", "abc", "a.b.c", "not a token"] {
            assert_eq!(
                tokens.verify(garbage, Utc::now()),
                Err(Refusal::Malformed),
                "{garbage}"
            );
        }
    }
}
