//! The invalidation subscriber: every replica hears on `<prefix>invalidate` which sessions were
//! revoked, and evicts them from its in-process tier.
//!
//! An announcement is a comma-separated list of session ids, ending in [`UNWRITTEN`] when the
//! revoker could not write the revoked copies to Redis: then Redis may serve their live copies,
//! and every replica that hears it stops reading Redis until it is reconciled. (Replicas of an
//! older release skip the marker, which is not an id, and still evict the ids.)

use std::time::{Duration, Instant};

use fred::{
    clients::SubscriberClient,
    prelude::{ClientLike, EventInterface, PubsubInterface},
};

use super::RedisTier;
use crate::{
    cache::LocalTier,
    domain::SessionId,
    tasks::{Stage, Tasks},
};

/// Ends an announcement whose revoked copies did not reach Redis.
pub(super) const UNWRITTEN: &str = "unwritten";

/// How long to wait before subscribing again, or for a probe to come back.
const SUBSCRIBE_RETRY: Duration = Duration::from_secs(1);

/// Where the invalidation subscription stands.
enum Subscription {
    Down,
    /// Subscribed as far as the client knows; waiting for `nonce` to come back on the channel.
    Probing {
        nonce: String,
        since: Instant,
    },
    Up,
}

impl RedisTier {
    /// Subscribes to the invalidation channel on a connection of its own, and evicts every
    /// announced session from `local`. The local tier is trusted only while subscribed: on a lost
    /// connection it is cleared and bypassed until the subscription is back, since announcements
    /// made meanwhile are lost; and for the same reason Redis itself is in doubt. A doubt raised
    /// for any reason also clears the local tier, which may hold copies read from Redis.
    pub fn subscribe(&self, local: LocalTier, tasks: &Tasks) -> anyhow::Result<()> {
        let subscriber: SubscriberClient = self.builder.build_subscriber_client().map_err(|e| {
            anyhow::anyhow!("cannot configure the Redis subscriber: {}", e.details())
        })?;
        local.distrust();
        let tier = self.clone();
        let channel = self.channel();
        let mut messages = subscriber.message_rx();
        let mut errors = subscriber.error_rx();
        let mut reconnects = subscriber.reconnect_rx();
        tasks.spawn_until_stopped("invalidation subscriber", Stage::Serving, async move {
            drop(subscriber.connect());
            // Resubscribes after every reconnect.
            let _manager = subscriber.manage_subscriptions();
            let mut state = Subscription::Down;
            loop {
                if matches!(state, Subscription::Down)
                    && subscriber.subscribe(channel.as_str()).await.is_ok()
                {
                    // fred does not wait for Redis to accept SUBSCRIBE (an ACL may refuse it):
                    // trust the channel only once a probe sent on it has come back.
                    let nonce = format!("probe:{}", uuid::Uuid::now_v7());
                    tier.publish(nonce.clone()).await;
                    state = Subscription::Probing {
                        nonce,
                        since: Instant::now(),
                    };
                }
                tokio::select! {
                    message = messages.recv() => match message {
                        Ok(message) => {
                            let text = message.value.as_str().map(|text| text.to_string()).unwrap_or_default();
                            if matches!(&state, Subscription::Probing { nonce, .. } if *nonce == text) {
                                // Announcements made before this moment may be lost: start empty.
                                local.clear();
                                local.trust();
                                state = Subscription::Up;
                                tracing::info!("subscribed to invalidations; in-process tier trusted");
                            } else if evict_announced(&local, &text) {
                                tier.doubt.raise("another replica could not write a revocation to Redis");
                            }
                        }
                        // Lagged behind the channel: some announcements are lost.
                        Err(_) => {
                            local.clear();
                            tier.doubt.raise("missed invalidations");
                        }
                    },
                    error = errors.recv() => {
                        if let Ok((error, _)) = error {
                            if local.distrust() {
                                tracing::warn!(error = %error, "lost the invalidation channel; in-process tier bypassed until resubscribed");
                            }
                            local.clear();
                            tier.doubt.raise("lost the invalidation channel");
                            state = Subscription::Down;
                        }
                    },
                    _ = reconnects.recv() => {
                        local.distrust();
                        tier.doubt.raise("the invalidation channel reconnected");
                        state = Subscription::Down;
                    }
                    // Copies read from Redis before the doubt may be stale.
                    () = tier.doubt.raised() => local.clear(),
                    // Not subscribed yet, or the probe never came back: try again.
                    () = tokio::time::sleep(SUBSCRIBE_RETRY), if !matches!(state, Subscription::Up) => {
                        if matches!(state, Subscription::Probing { since, .. } if since.elapsed() >= SUBSCRIBE_RETRY) {
                            state = Subscription::Down;
                        }
                    }
                }
            }
        });
        Ok(())
    }
}

/// Evicts the sessions `announced`; true if it ends in [`UNWRITTEN`].
fn evict_announced(local: &LocalTier, announced: &str) -> bool {
    let mut unwritten = false;
    for item in announced.split(',') {
        if item == UNWRITTEN {
            unwritten = true;
        } else if let Ok(id) = item.parse::<SessionId>() {
            local.evict(id);
        }
    }
    unwritten
}
