//! The verified-token memo: the result of checking an access token's signature and claims, kept
//! by the token's exact bytes until its `exp`, so a token seen before costs a map lookup instead
//! of an Ed25519 verification.
//!
//! Unlike session copies, a verification never goes stale: the bytes and the keys decide it, and
//! the memo is emptied when a verification key is removed. So it stays on when the in-process
//! session tier is off, and is not dropped when the invalidation channel is.

use std::{sync::Arc, time::Duration};

use moka::{Expiry, sync::Cache};

use super::LocalSettings;
use crate::token::VerifiedAccessToken;

/// Verified access tokens, by their exact bytes.
#[derive(Clone)]
pub struct VerifiedTokens {
    tokens: Cache<Arc<str>, Arc<VerifiedAccessToken>>,
}

/// A verified token lives until its own `exp`.
struct UntilTokenExpiry;

impl Expiry<Arc<str>, Arc<VerifiedAccessToken>> for UntilTokenExpiry {
    fn expire_after_create(
        &self,
        _token: &Arc<str>,
        verified: &Arc<VerifiedAccessToken>,
        _created_at: std::time::Instant,
    ) -> Option<Duration> {
        Some(
            (verified.expires_at - chrono::Utc::now())
                .to_std()
                .unwrap_or_default(),
        )
    }
}

impl VerifiedTokens {
    /// An empty memo with these bounds (its entries live until their token's `exp`, not `ttl`).
    pub fn new(settings: &LocalSettings) -> Self {
        let floor = settings.weight_floor();
        Self {
            tokens: Cache::builder()
                .max_capacity(settings.max_bytes)
                .weigher(move |token: &Arc<str>, _| {
                    let size = token.len() + std::mem::size_of::<VerifiedAccessToken>() + 64;
                    u32::try_from(size).unwrap_or(u32::MAX).max(floor)
                })
                .expire_after(UntilTokenExpiry)
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
