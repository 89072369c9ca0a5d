//! The local checks of an access token, in the order that costs an attacker the most and the
//! verifier the least: size, shape, header (EdDSA and a `kid`, before any key is touched), the
//! key, the Ed25519 signature, and only then the claims (issuer, audience, expiry). The claims
//! are never parsed before their signature verifies. Pure: the keys and `now` are parameters.
//!
//! Signatures are checked with `ed25519-dalek` directly rather than through jsonwebtoken. One
//! algorithm needs no algorithm dispatch, and jsonwebtoken 11 wants a process-wide crypto
//! provider, which a library must not install behind its host's back (the host may use
//! jsonwebtoken with a provider of its own; sessiond installs one in `src/token/eddsa.rs`).

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use chrono::{DateTime, Duration, Utc};
use serde::Deserialize;
use uuid::Uuid;

use crate::{VerifyError, jwks::KeySet};

/// The longest token looked at; a longer one is `Malformed` unread (sessiond's own: 4 KiB).
pub(crate) const MAX_TOKEN_BYTES: usize = 4 * 1024;

/// What a token must say to be accepted.
#[derive(Debug, Clone)]
pub(crate) struct Expected {
    pub(crate) issuer: String,
    pub(crate) audience: String,
    /// How long past `exp` a token is still taken: 0 unless configured.
    pub(crate) leeway: Duration,
}

/// The facts of a token whose signature and claims checked out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Verified {
    pub(crate) user_id: String,
    pub(crate) session_id: Uuid,
    pub(crate) expires_at: DateTime<Utc>,
    /// `sct`: when the session started, microseconds since the epoch (0 in older tokens).
    pub(crate) session_started_micros: i64,
    pub(crate) kid: String,
}

/// A refusal, or a `kid` the key set does not hold (which may be a key newer than the set).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    Refused(VerifyError),
    UnknownKey,
}

impl From<VerifyError> for Refusal {
    fn from(error: VerifyError) -> Self {
        Self::Refused(error)
    }
}

impl Refusal {
    /// What the caller is told: an unknown key is a bad signature.
    pub(crate) fn error(self) -> VerifyError {
        match self {
            Self::Refused(error) => error,
            Self::UnknownKey => VerifyError::BadSignature,
        }
    }
}

/// Only the header fields judged here; serde refuses a duplicate `alg` or `kid`.
#[derive(Deserialize)]
struct Header {
    alg: String,
    kid: Option<String>,
    /// RFC 7515 §4.1.11: a token naming extensions that must be understood is refused, as none
    /// is understood here.
    crit: Option<serde::de::IgnoredAny>,
}

/// The claims sessiond issues; `aud` must be one string, as sessiond writes it.
#[derive(Deserialize)]
struct Claims {
    iss: String,
    aud: String,
    sub: String,
    sid: String,
    exp: i64,
    #[serde(default)]
    sct: i64,
}

/// Verifies `token` against `keys` and `expected` at `now`.
pub(crate) fn verify(
    token: &str,
    keys: &KeySet,
    expected: &Expected,
    now: DateTime<Utc>,
) -> Result<Verified, Refusal> {
    if token.len() > MAX_TOKEN_BYTES {
        return Err(VerifyError::Malformed.into());
    }
    let mut segments = token.split('.');
    let (Some(header_segment), Some(claims_segment), Some(signature), None) = (
        segments.next(),
        segments.next(),
        segments.next(),
        segments.next(),
    ) else {
        return Err(VerifyError::Malformed.into());
    };
    let header: Header = decode_json(header_segment)?;
    // `none`, HS256 keyed with the public key, RS256, ES256...: refused before any key is used.
    if header.alg != "EdDSA" {
        return Err(VerifyError::BadSignature.into());
    }
    if header.crit.is_some() {
        return Err(VerifyError::Malformed.into());
    }
    let kid = header.kid.ok_or(VerifyError::BadSignature)?;
    let key = keys.get(&kid).ok_or(Refusal::UnknownKey)?;
    let signature = URL_SAFE_NO_PAD
        .decode(signature)
        .map_err(|_| VerifyError::Malformed)?;
    let signature =
        ed25519_dalek::Signature::from_slice(&signature).map_err(|_| VerifyError::BadSignature)?;
    // The signing input is the first two segments as sent, with the dot between them.
    let signed = token
        .get(..header_segment.len() + 1 + claims_segment.len())
        .ok_or(VerifyError::Malformed)?;
    // Strict: also refuses the malleable and small-order forms RFC 8032 leaves open.
    key.verify_strict(signed.as_bytes(), &signature)
        .map_err(|_| VerifyError::BadSignature)?;

    let claims: Claims = decode_json(claims_segment)?;
    if claims.iss != expected.issuer || claims.aud != expected.audience {
        return Err(VerifyError::WrongIssuerOrAudience.into());
    }
    let expires_at = DateTime::from_timestamp(claims.exp, 0).ok_or(VerifyError::Malformed)?;
    if is_expired(expires_at, expected, now) {
        return Err(VerifyError::Expired.into());
    }
    if claims.sub.is_empty() {
        return Err(VerifyError::Malformed.into());
    }
    let session_id = claims
        .sid
        .parse::<Uuid>()
        .map_err(|_| VerifyError::Malformed)?;
    Ok(Verified {
        user_id: claims.sub,
        session_id,
        expires_at,
        session_started_micros: claims.sct,
        kid,
    })
}

/// Whether a token of `expires_at` is expired at `now`: at `exp` itself, as sessiond judges it,
/// or past the leeway.
pub(crate) fn is_expired(
    expires_at: DateTime<Utc>,
    expected: &Expected,
    now: DateTime<Utc>,
) -> bool {
    let deadline = expires_at
        .checked_add_signed(expected.leeway)
        .unwrap_or(DateTime::<Utc>::MAX_UTC);
    now >= deadline
}

/// The `exp` a token states, read without any check: only for a token sessiond itself has just
/// vouched for (the `Validate` fallback before any key was fetched).
pub(crate) fn unverified_expiry(token: &str) -> Option<DateTime<Utc>> {
    #[derive(Deserialize)]
    struct Expiry {
        exp: i64,
    }
    let claims = token.split('.').nth(1)?;
    let expiry: Expiry = decode_json(claims).ok()?;
    DateTime::from_timestamp(expiry.exp, 0)
}

/// A base64url (unpadded, canonical) segment holding a JSON object of type `T`.
fn decode_json<T: serde::de::DeserializeOwned>(segment: &str) -> Result<T, VerifyError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(segment)
        .map_err(|_| VerifyError::Malformed)?;
    serde_json::from_slice(&bytes).map_err(|_| VerifyError::Malformed)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::testing::{TestKey, claims, header};

    fn expected() -> Expected {
        Expected {
            issuer: "sessiond".into(),
            audience: "api".into(),
            leeway: Duration::zero(),
        }
    }

    fn now() -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000, 0).expect("a time")
    }

    fn refusal(token: &str, keys: &KeySet) -> VerifyError {
        verify(token, keys, &expected(), now())
            .expect_err("refused")
            .error()
    }

    #[test]
    fn a_token_signed_by_a_known_key_verifies_until_its_exp() {
        let key = TestKey::new(1);
        let keys = KeySet::of(&[&key]);
        let sid = Uuid::now_v7();
        let token = key.sign(&header(&key), &claims(sid, "user-42", now(), 900));
        let verified = verify(&token, &keys, &expected(), now()).expect("verifies");
        assert_eq!(verified.user_id, "user-42");
        assert_eq!(verified.session_id, sid);
        assert_eq!(verified.kid, key.kid());
        assert_eq!(verified.expires_at, now() + Duration::seconds(900));
        assert_eq!(
            verified.session_started_micros,
            now().timestamp_micros() - 60_000_000
        );

        let at_exp = now() + Duration::seconds(900);
        assert_eq!(
            verify(&token, &keys, &expected(), at_exp - Duration::seconds(1)).map(|v| v.user_id),
            Ok("user-42".into())
        );
        assert_eq!(
            verify(&token, &keys, &expected(), at_exp),
            Err(Refusal::Refused(VerifyError::Expired)),
            "expired at exp itself"
        );
        let lenient = Expected {
            leeway: Duration::seconds(5),
            ..expected()
        };
        assert!(verify(&token, &keys, &lenient, at_exp + Duration::seconds(4)).is_ok());
        assert_eq!(
            verify(&token, &keys, &lenient, at_exp + Duration::seconds(5)),
            Err(Refusal::Refused(VerifyError::Expired))
        );
    }

    #[test]
    fn every_algorithm_but_eddsa_is_refused_before_any_key_is_used() {
        let key = TestKey::new(1);
        let keys = KeySet::of(&[&key]);
        let body = claims(Uuid::now_v7(), "u", now(), 900);
        for alg in [
            "none", "HS256", "RS256", "ES256", "PS256", "EdDSA ", "eddsa", "ED25519",
        ] {
            let token = key.sign(&json!({"alg": alg, "kid": key.kid()}), &body);
            assert_eq!(refusal(&token, &keys), VerifyError::BadSignature, "{alg}");
        }
        // `none` with an empty signature, the classic.
        let unsigned = format!(
            "{}.{}.",
            URL_SAFE_NO_PAD.encode(json!({"alg": "none", "kid": key.kid()}).to_string()),
            URL_SAFE_NO_PAD.encode(body.to_string())
        );
        assert_eq!(refusal(&unsigned, &keys), VerifyError::BadSignature);
    }

    #[test]
    fn a_missing_or_unknown_kid_is_a_bad_signature() {
        let key = TestKey::new(1);
        let other = TestKey::new(2);
        let keys = KeySet::of(&[&key]);
        let body = claims(Uuid::now_v7(), "u", now(), 900);
        let no_kid = key.sign(&json!({"alg": "EdDSA"}), &body);
        assert_eq!(refusal(&no_kid, &keys), VerifyError::BadSignature);
        let unknown = other.sign(&header(&other), &body);
        assert_eq!(
            verify(&unknown, &keys, &expected(), now()),
            Err(Refusal::UnknownKey)
        );
        assert_eq!(refusal(&unknown, &keys), VerifyError::BadSignature);
        // Signed by another key under this key's kid.
        let forged = other.sign(&header(&key), &body);
        assert_eq!(refusal(&forged, &keys), VerifyError::BadSignature);
    }

    #[test]
    fn a_changed_claim_breaks_the_signature() {
        let key = TestKey::new(1);
        let keys = KeySet::of(&[&key]);
        let token = key.sign(&header(&key), &claims(Uuid::now_v7(), "alice", now(), 900));
        let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
        parts[1] =
            URL_SAFE_NO_PAD.encode(claims(Uuid::now_v7(), "mallory", now(), 900).to_string());
        assert_eq!(refusal(&parts.join("."), &keys), VerifyError::BadSignature);
        // A signature of the wrong length, and one that is not base64url.
        parts[1] = token.split('.').nth(1).expect("claims").to_owned();
        parts[2] = URL_SAFE_NO_PAD.encode([7u8; 63]);
        assert_eq!(refusal(&parts.join("."), &keys), VerifyError::BadSignature);
        parts[2] = "not*base64".into();
        assert_eq!(refusal(&parts.join("."), &keys), VerifyError::Malformed);
    }

    #[test]
    fn the_issuer_and_the_audience_must_be_the_configured_ones() {
        let key = TestKey::new(1);
        let keys = KeySet::of(&[&key]);
        let mut body = claims(Uuid::now_v7(), "u", now(), 900);
        body["iss"] = json!("someone-else");
        assert_eq!(
            refusal(&key.sign(&header(&key), &body), &keys),
            VerifyError::WrongIssuerOrAudience
        );
        let mut body = claims(Uuid::now_v7(), "u", now(), 900);
        body["aud"] = json!("other-api");
        assert_eq!(
            refusal(&key.sign(&header(&key), &body), &keys),
            VerifyError::WrongIssuerOrAudience
        );
        // An audience list is not what sessiond issues.
        body["aud"] = json!(["api"]);
        assert_eq!(
            refusal(&key.sign(&header(&key), &body), &keys),
            VerifyError::Malformed
        );
    }

    #[test]
    fn garbage_and_incomplete_tokens_are_malformed() {
        let key = TestKey::new(1);
        let keys = KeySet::of(&[&key]);
        for garbage in [
            "",
            "abc",
            "a.b",
            "a.b.c",
            "a.b.c.d",
            "not a token",
            "..",
            "....",
        ] {
            assert_eq!(
                refusal(garbage, &keys),
                VerifyError::Malformed,
                "{garbage:?}"
            );
        }
        let body = claims(Uuid::now_v7(), "u", now(), 900);
        for missing in ["iss", "aud", "sub", "sid", "exp"] {
            let mut incomplete = body.clone();
            incomplete.as_object_mut().expect("object").remove(missing);
            let token = key.sign(&header(&key), &incomplete);
            assert_eq!(refusal(&token, &keys), VerifyError::Malformed, "{missing}");
        }
        let mut bad_sid = body.clone();
        bad_sid["sid"] = json!("not-a-uuid");
        assert_eq!(
            refusal(&key.sign(&header(&key), &bad_sid), &keys),
            VerifyError::Malformed
        );
        let mut empty_sub = body.clone();
        empty_sub["sub"] = json!("");
        assert_eq!(
            refusal(&key.sign(&header(&key), &empty_sub), &keys),
            VerifyError::Malformed
        );
        let critical = key.sign(
            &json!({"alg": "EdDSA", "kid": key.kid(), "crit": ["exp"]}),
            &body,
        );
        assert_eq!(refusal(&critical, &keys), VerifyError::Malformed);
        let twice = format!(
            "{}.{}.{}",
            URL_SAFE_NO_PAD.encode(format!(
                r#"{{"alg":"EdDSA","alg":"EdDSA","kid":"{}"}}"#,
                key.kid()
            )),
            URL_SAFE_NO_PAD.encode(body.to_string()),
            URL_SAFE_NO_PAD.encode([0u8; 64])
        );
        assert_eq!(refusal(&twice, &keys), VerifyError::Malformed);
        let padded = key.sign(&header(&key), &body).replacen('.', "=.", 1);
        assert_eq!(refusal(&padded, &keys), VerifyError::Malformed);
        let long = format!("{}.{}.x", "a".repeat(MAX_TOKEN_BYTES), "b");
        assert_eq!(refusal(&long, &keys), VerifyError::Malformed);
    }

    #[test]
    fn a_token_of_an_older_release_without_sct_started_at_zero() {
        let key = TestKey::new(1);
        let keys = KeySet::of(&[&key]);
        let mut body = claims(Uuid::now_v7(), "u", now(), 900);
        body.as_object_mut().expect("object").remove("sct");
        let verified =
            verify(&key.sign(&header(&key), &body), &keys, &expected(), now()).expect("verifies");
        assert_eq!(verified.session_started_micros, 0);
    }
}
