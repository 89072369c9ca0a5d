//! The verified-token memo: the outcome of a token's signature and claim checks, kept by the
//! token's exact bytes, so that a token seen before (a client sends the same one for its whole
//! life) costs a map lookup instead of an Ed25519 verification, as in sessiond's own
//! `src/token/verified.rs`.
//!
//! Only tokens that verified are kept, so made-up tokens cannot fill it. A hit still counts
//! only while the key that verified it is in the key set, byte for byte (a key dropped from the
//! JWKS takes its tokens with it), and the caller still judges expiry, revocations and
//! freshness on every hit: the memo saves the signature, never a decision that can change.

use std::{sync::Arc, time::Duration};

use chrono::Utc;
use moka::{Expiry, sync::Cache};

use crate::{jwks::KeySet, token::Verified};

/// A verification, with the key it was made with.
#[derive(Debug)]
pub(crate) struct Entry {
    pub(crate) verified: Verified,
    key: [u8; 32],
}

/// Verified tokens by their exact bytes; `None` when turned off.
#[derive(Debug, Clone)]
pub(crate) struct Memo {
    tokens: Option<Cache<Arc<str>, Arc<Entry>>>,
}

/// An entry lives until its token's `exp` plus the leeway: after that it can only be refused.
struct UntilExpiry(chrono::Duration);

impl Expiry<Arc<str>, Arc<Entry>> for UntilExpiry {
    fn expire_after_create(
        &self,
        _token: &Arc<str>,
        entry: &Arc<Entry>,
        _created_at: std::time::Instant,
    ) -> Option<Duration> {
        let deadline = entry.verified.expires_at.checked_add_signed(self.0)?;
        Some((deadline - Utc::now()).to_std().unwrap_or_default())
    }
}

impl Memo {
    /// A memo of at most `capacity` tokens (0: none) taken until `leeway` past their `exp`.
    pub(crate) fn new(capacity: u64, leeway: chrono::Duration) -> Self {
        Self {
            tokens: (capacity > 0).then(|| {
                Cache::builder()
                    .max_capacity(capacity)
                    .expire_after(UntilExpiry(leeway))
                    .build()
            }),
        }
    }

    /// The verification of `token`, if it was verified before with a key `keys` still holds.
    pub(crate) fn get(&self, token: &str, keys: &KeySet) -> Option<Arc<Entry>> {
        self.tokens.as_ref()?.get(token).filter(|entry| {
            keys.get(&entry.verified.kid)
                .is_some_and(|key| key.as_bytes() == &entry.key)
        })
    }

    /// Remembers that `token` verified as `verified` with the key of its kid in `keys`.
    pub(crate) fn remember(&self, token: &str, verified: Verified, keys: &KeySet) -> Arc<Entry> {
        let key = keys
            .get(&verified.kid)
            .map_or([0; 32], |key| key.to_bytes());
        let entry = Arc::new(Entry { verified, key });
        if let Some(tokens) = &self.tokens {
            tokens.insert(Arc::from(token), entry.clone());
        }
        entry
    }
}

#[cfg(test)]
mod tests {
    use chrono::DateTime;
    use uuid::Uuid;

    use super::*;
    use crate::testing::TestKey;

    fn verified(kid: &str) -> Verified {
        Verified {
            user_id: "alice".into(),
            session_id: Uuid::now_v7(),
            expires_at: Utc::now() + chrono::Duration::minutes(15),
            session_started_micros: 0,
            kid: kid.into(),
        }
    }

    #[test]
    fn a_verified_token_is_remembered_while_its_key_is_in_the_set() {
        let (one, two) = (TestKey::new(1), TestKey::new(2));
        let keys = KeySet::of(&[&one]);
        let memo = Memo::new(100, chrono::Duration::zero());
        assert!(memo.get("t1", &keys).is_none());
        memo.remember("t1", verified(one.kid()), &keys);
        assert_eq!(
            memo.get("t1", &keys).map(|e| e.verified.kid.clone()),
            Some(one.kid().to_owned())
        );
        assert!(memo.get("t2", &keys).is_none(), "by exact bytes");
        assert!(
            memo.get("t1", &KeySet::of(&[&two])).is_none(),
            "the key is gone"
        );
        // The same kid now naming another key (a JWKS that changed under it) is not the same.
        let mut swapped = crate::testing::jwks(&[&two]);
        swapped["keys"][0]["kid"] = one.kid().into();
        let swapped = KeySet::parse(swapped.to_string().as_bytes()).expect("a JWKS");
        assert!(memo.get("t1", &swapped).is_none());
    }

    #[test]
    fn a_memo_of_no_capacity_remembers_nothing() {
        let one = TestKey::new(1);
        let keys = KeySet::of(&[&one]);
        let memo = Memo::new(0, chrono::Duration::zero());
        memo.remember("t1", verified(one.kid()), &keys);
        assert!(memo.get("t1", &keys).is_none());
    }

    #[test]
    fn an_expired_token_is_not_kept() {
        let one = TestKey::new(1);
        let keys = KeySet::of(&[&one]);
        let memo = Memo::new(100, chrono::Duration::zero());
        let mut expired = verified(one.kid());
        expired.expires_at = DateTime::from_timestamp(1, 0).expect("a time");
        memo.remember("old", expired, &keys);
        assert!(memo.get("old", &keys).is_none());
    }
}
