//! The verified-token memo: the result of checking an access token's signature and claims, kept
//! by the token's exact bytes until its `exp`, so a token seen before costs a map lookup instead
//! of an Ed25519 verification.
//!
//! Unlike session copies, a verification never goes stale: the bytes and the keys decide it. The
//! memo is emptied when a verification key is removed, and each entry also names its key, checked
//! against the ring on every hit: a verification that finished just after a removal, and was
//! remembered after the memo was emptied, is never served. So it lives here, beside the verifier,
//! not in the session cache: it stays on when the in-process session tier is off, and is not
//! dropped when the invalidation channel is. Every hit is still judged against the injected clock
//! by the caller; the memo's own expiry only frees memory.

use std::{sync::Arc, time::Duration};

use moka::{Expiry, sync::Cache};

use super::{AccessTokenSigner, VerifiedAccessToken};
use crate::clock::Clock;

/// Verified access tokens, by their exact bytes.
#[derive(Clone)]
pub struct VerifiedTokens {
    tokens: Cache<Arc<str>, Arc<VerifiedAccessToken>>,
}

/// A verified token lives until its own `exp`, as the injected clock tells it.
struct UntilTokenExpiry(Arc<dyn Clock>);

impl Expiry<Arc<str>, Arc<VerifiedAccessToken>> for UntilTokenExpiry {
    fn expire_after_create(
        &self,
        _token: &Arc<str>,
        verified: &Arc<VerifiedAccessToken>,
        _created_at: std::time::Instant,
    ) -> Option<Duration> {
        Some(
            (verified.expires_at - self.0.now())
                .to_std()
                .unwrap_or_default(),
        )
    }
}

impl VerifiedTokens {
    /// An empty memo of at most `max_entries` tokens and `max_bytes` (estimated); its entries
    /// live until their token's `exp` on `clock`.
    pub fn new(max_entries: u64, max_bytes: u64, clock: Arc<dyn Clock>) -> Self {
        // The least weight an entry counts for, so that one weighted capacity bounds both.
        let floor = u32::try_from(max_bytes / max_entries.max(1)).unwrap_or(u32::MAX);
        Self {
            tokens: Cache::builder()
                .max_capacity(max_bytes)
                .weigher(move |token: &Arc<str>, _| {
                    let size = token.len() + std::mem::size_of::<VerifiedAccessToken>() + 64;
                    u32::try_from(size).unwrap_or(u32::MAX).max(floor)
                })
                .expire_after(UntilTokenExpiry(clock))
                .build(),
        }
    }

    /// The verification of a token seen before, if the key it verified under is still one of
    /// `signer`'s.
    pub fn get(&self, token: &str, signer: &AccessTokenSigner) -> Option<Arc<VerifiedAccessToken>> {
        self.tokens
            .get(token)
            .filter(|verified| signer.verifies_with(&verified.kid))
    }

    /// Remembers a token that verified.
    pub fn remember(&self, token: &str, verified: Arc<VerifiedAccessToken>) {
        self.tokens.insert(Arc::from(token), verified);
    }

    /// Drops every verification, as when a verification key is removed.
    pub fn clear(&self) {
        self.tokens.invalidate_all();
    }
}

#[cfg(test)]
mod tests {
    use chrono::{Duration, Utc};

    use super::*;
    use crate::{clock::ManualClock, domain::Session, token::SigningKey};

    /// The race the kid check closes: a verification that started before its key was removed
    /// is remembered after the memo was emptied.
    #[test]
    fn a_verification_under_a_removed_key_is_never_served() {
        let now = Utc::now();
        let signer = AccessTokenSigner::new(
            SigningKey::generate().expect("key"),
            "iss".into(),
            "aud".into(),
        );
        let memo = VerifiedTokens::new(100, 1 << 20, Arc::new(ManualClock::new(now)));
        let token = signer
            .issue(&Session::example(now), now, Duration::minutes(15))
            .expect("signs")
            .token;
        let verified = Arc::new(signer.verify(&token, now).expect("verifies"));
        memo.remember(&token, verified.clone());
        assert_eq!(memo.get(&token, &signer), Some(verified.clone()));

        signer
            .replace_keys(vec![SigningKey::generate().expect("key")])
            .expect("replaced");
        memo.remember(&token, verified);

        assert_eq!(memo.get(&token, &signer), None);
    }
}
