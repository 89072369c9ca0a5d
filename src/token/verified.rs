//! The verified-token memo: the result of checking an access token's signature and claims, kept
//! by the token's exact bytes until its `exp`, so a token seen before costs a map lookup instead
//! of an Ed25519 verification.
//!
//! Unlike session copies, a verification never goes stale: the bytes and the keys decide it, and
//! the memo is emptied when a verification key is removed. So it lives here, beside the verifier,
//! not in the session cache: it stays on when the in-process session tier is off, and is not
//! dropped when the invalidation channel is. Every hit is still judged against the injected clock
//! by the caller; the memo's own expiry only frees memory.

use std::{sync::Arc, time::Duration};

use moka::{Expiry, sync::Cache};

use super::VerifiedAccessToken;
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

    /// The verification of a token seen before.
    pub fn get(&self, token: &str) -> Option<Arc<VerifiedAccessToken>> {
        self.tokens.get(token)
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
