//! The invalidation subscriber: every replica hears on `<prefix>invalidate` which sessions were
//! revoked or erased, and passes it on to the cache module, which evicts them from its in-process
//! tier.
//!
//! An announcement is a comma-separated list of session ids, ending in [`UNWRITTEN`] when the
//! revoker could not write the revoked copies to Redis: then Redis may serve their live copies,
//! and every replica that hears it stops reading Redis until it is reconciled. (Replicas of an
//! older release skip the marker, which is not an id, and still evict the ids.) Every
//! announcement also wakes the revocation feed (`crate::revocations`), and [`LOGGED`] does only
//! that.

use std::time::{Duration, Instant};

use fred::{
    clients::SubscriberClient,
    prelude::{ClientLike, EventInterface, PubsubInterface},
};

use super::RedisTier;
use crate::{
    domain::SessionId,
    tasks::{Stage, Tasks},
};

/// What the invalidation channel tells the in-process tier's owner (the cache module decides what
/// that tier then trusts).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Invalidation {
    /// Subscribed, and a probe made the round trip: announcements arrive from now on, and those
    /// made before may have been missed.
    Subscribed,
    /// The channel is lost (the error, for the log): announcements are missed until
    /// [`Invalidation::Subscribed`].
    Lost(String),
    /// The channel reconnected; it is not subscribed again yet.
    Reconnecting,
    /// These sessions were revoked or erased: their in-process copies must go.
    Dropped(Vec<SessionId>),
    /// Some announcements were missed (the subscriber lagged behind).
    Missed,
    /// Redis was put in doubt: copies read from it before may be stale.
    RedisDoubted,
}

/// Ends an announcement whose revoked copies did not reach Redis.
pub(super) const UNWRITTEN: &str = "unwritten";

/// The whole of an announcement that names no session: a revocation was logged that rewrote no
/// copy (a user's sign-out everywhere), so replicas read the revocation log now. (It is not an
/// id, so replicas of an older release evict nothing.)
pub(super) const LOGGED: &str = "logged";

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
    /// Subscribes to the invalidation channel on a connection of its own, and tells `on_event`
    /// what it hears. A lost channel, or an announcement of a revocation its revoker could not
    /// write, also puts Redis itself in doubt.
    pub fn subscribe(
        &self,
        on_event: impl Fn(Invalidation) + Send + 'static,
        tasks: &Tasks,
    ) -> anyhow::Result<()> {
        let subscriber: SubscriberClient = self.builder.build_subscriber_client().map_err(|e| {
            anyhow::anyhow!("cannot configure the Redis subscriber: {}", e.details())
        })?;
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
                                state = Subscription::Up;
                                on_event(Invalidation::Subscribed);
                            } else {
                                let (revoked, unwritten) = parse_announcement(&text);
                                on_event(Invalidation::Dropped(revoked));
                                if unwritten {
                                    tier.doubt.raise("another replica could not write a revocation to Redis");
                                }
                            }
                        }
                        Err(_) => {
                            on_event(Invalidation::Missed);
                            tier.doubt.raise("missed invalidations");
                        }
                    },
                    error = errors.recv() => {
                        if let Ok((error, _)) = error {
                            on_event(Invalidation::Lost(error.to_string()));
                            tier.doubt.raise("lost the invalidation channel");
                            state = Subscription::Down;
                        }
                    },
                    // Also on the first connection, so not a doubt: a lost connection was already
                    // reported on `errors`, and raised one there.
                    _ = reconnects.recv() => {
                        on_event(Invalidation::Reconnecting);
                        state = Subscription::Down;
                    }
                    () = tier.doubt.raised() => on_event(Invalidation::RedisDoubted),
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

/// The sessions `announced`, and whether it ends in [`UNWRITTEN`].
fn parse_announcement(announced: &str) -> (Vec<SessionId>, bool) {
    let mut unwritten = false;
    let mut revoked = Vec::new();
    for item in announced.split(',') {
        if item == UNWRITTEN {
            unwritten = true;
        } else if let Ok(id) = item.parse::<SessionId>() {
            revoked.push(id);
        }
    }
    (revoked, unwritten)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_announcement_names_its_sessions_and_says_whether_they_reached_redis() {
        let (one, two) = (SessionId::generate(), SessionId::generate());
        assert_eq!(
            parse_announcement(&format!("{one},{two}")),
            (vec![one, two], false)
        );
        assert_eq!(
            parse_announcement(&format!("{one},{UNWRITTEN}")),
            (vec![one], true)
        );
        assert_eq!(parse_announcement("probe:x"), (vec![], false));
    }
}
