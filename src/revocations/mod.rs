//! The revocation feed: every replica follows the store's revocation log (`revocation_event`,
//! written by the store in the same transaction as each revocation, in commit order), keeps what
//! is still in force in its [`Ledger`] for `Validate`, and passes each event on to its
//! WatchRevocations subscribers.
//!
//! The log is the truth and the invalidation channel only a wake-up: the feed reads the log when
//! a replica announces a revocation on Redis (or this one makes one), and every
//! [`POLL_INTERVAL`] whatever happens, so a lost announcement, or a Redis that takes no writes at
//! all, costs at most that much latency, never an event.

mod ledger;

use std::{
    sync::{
        Arc, Mutex, PoisonError, RwLock,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use chrono::{DateTime, TimeDelta, Utc};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, broadcast, mpsc};
use tokio_util::sync::CancellationToken;

pub use ledger::Ledger;

use crate::{
    clock::Clock,
    domain::{Cursor, Revocation, Session},
    error::{Error, Result},
    metrics,
    store::SessionStore,
    tasks::{Stage, Tasks},
};

/// How often the feed reads the log when nothing wakes it: the latency of a revocation whose
/// announcement was lost.
pub const POLL_INTERVAL: Duration = Duration::from_millis(500);

/// How long a WatchRevocations stream may stay quiet before it gets a heartbeat (it gets one
/// also as soon as it has caught up with the log).
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(5);

/// How recently the feed must have read the log to its end for a heartbeat to vouch for it.
const FRESH_FOR: Duration = Duration::from_secs(3);

/// Most events read from the log at a time.
const PAGE: usize = 500;

/// Events held for the subscribers between polls: a subscriber further behind is cut off.
const BACKLOG: usize = 4_096;

/// Events a subscriber's own stream holds before it waits for the client.
const STREAM_BUFFER: usize = 256;

/// Most WatchRevocations streams one replica serves at once.
pub const MAX_WATCHERS: usize = 1_024;

/// Added to the access-token lifetime for how long a revocation is kept: the replicas' clocks may
/// disagree a little on when a token was issued or when it expires.
const CLOCK_MARGIN: TimeDelta = TimeDelta::minutes(1);

/// What a WatchRevocations stream carries.
#[derive(Debug, Clone)]
pub enum Watched {
    Revocation(Arc<Revocation>),
    /// Nothing new through this cursor, as of a read of the log just now.
    Heartbeat(Cursor),
}

/// Where the feed stands in the log.
#[derive(Debug, Clone, Copy)]
struct Position {
    cursor: Cursor,
    /// When the feed last read the log to its end.
    caught_up_at: Option<Instant>,
}

/// One replica's view of the revocation log.
pub struct RevocationFeed {
    store: Arc<dyn SessionStore>,
    clock: Arc<dyn Clock>,
    /// How long after a revocation a token it refuses may still be presented.
    keep_for: TimeDelta,
    ledger: RwLock<Ledger>,
    events: broadcast::Sender<Arc<Revocation>>,
    wake: Notify,
    /// Held while the log is read: the follower and [`RevocationFeed::catch_up`] take turns.
    reading: tokio::sync::Mutex<()>,
    /// Whether the last read failed (so an outage is logged once).
    failing: AtomicBool,
    position: Mutex<Option<Position>>,
    watchers: Arc<Semaphore>,
    closing: CancellationToken,
}

impl RevocationFeed {
    /// A feed of `store`'s log, not yet following it (see [`RevocationFeed::follow_in`]). Tokens
    /// live at most `access_token_ttl`.
    pub fn new(
        store: Arc<dyn SessionStore>,
        clock: Arc<dyn Clock>,
        access_token_ttl: TimeDelta,
    ) -> Arc<Self> {
        Arc::new(Self {
            store,
            clock,
            keep_for: access_token_ttl + CLOCK_MARGIN,
            ledger: RwLock::default(),
            events: broadcast::channel(BACKLOG).0,
            wake: Notify::new(),
            reading: tokio::sync::Mutex::new(()),
            failing: AtomicBool::new(false),
            position: Mutex::new(None),
            watchers: Arc::new(Semaphore::new(MAX_WATCHERS)),
            closing: CancellationToken::new(),
        })
    }

    /// Follows the log in `tasks`, from once the store has been migrated (or tried to be): a
    /// read of a log the migrations have not made yet would only fail.
    pub fn follow_in(self: &Arc<Self>, tasks: &Tasks) {
        tasks.spawn_until_stopped("revocation feed", Stage::Serving, self.clone().follow());
    }

    /// How long revocation events are kept: as long as a token they refuse may live.
    pub fn retention(&self) -> TimeDelta {
        self.keep_for
    }

    /// A revocation was committed or announced: read the log now.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Whether a revocation read from the log refuses `session`, whatever its copy says.
    pub fn refuses(&self, session: &Session) -> bool {
        let ledger = self.ledger.read().unwrap_or_else(PoisonError::into_inner);
        !ledger.is_empty() && ledger.refuses(session.id, &session.user_id, session.created_at)
    }

    /// Ends every WatchRevocations stream (UNAVAILABLE, to resume elsewhere): at shutdown, once
    /// the drain is over, so the server's graceful stop does not wait for them.
    pub fn close(&self) {
        self.closing.cancel();
    }

    /// Reads the log to its end now: after a revocation this replica made, so that it refuses
    /// its tokens before the caller is answered. A failure is logged (the follower retries).
    pub async fn catch_up(&self) {
        let _turn = self.reading.lock().await;
        match self.read_log().await {
            Ok(()) => {
                if self.failing.swap(false, Ordering::Relaxed) {
                    tracing::info!("reading the revocation log again");
                }
            }
            Err(error) => {
                metrics::store_error(&error);
                // Once per outage, not once per poll.
                if !self.failing.swap(true, Ordering::Relaxed) {
                    tracing::warn!(error = %error.cause_chain(), "cannot read the revocation log; retrying every poll");
                }
            }
        }
    }

    /// Follows the log until the task is stopped.
    async fn follow(self: Arc<Self>) {
        loop {
            self.catch_up().await;
            tokio::select! {
                () = self.wake.notified() => {}
                () = tokio::time::sleep(POLL_INTERVAL) => {}
            }
        }
    }

    /// Reads the log from where the feed stands to its end; the first read starts with the
    /// revocations whose tokens may still be live.
    async fn read_log(&self) -> Result<()> {
        let now = self.clock.now();
        let mut cursor = match self.position() {
            Some(position) => position.cursor,
            None => {
                self.store
                    .revocation_log(now - self.keep_for)
                    .await?
                    .before_since
            }
        };
        loop {
            let page = self.store.revocations_after(cursor, PAGE).await?;
            if let Some(last) = page.last() {
                cursor = last.cursor;
            }
            {
                let mut ledger = self.ledger.write().unwrap_or_else(PoisonError::into_inner);
                ledger.prune(now);
                for revocation in &page {
                    ledger.apply(revocation, self.tokens_expire_before(revocation));
                }
                metrics::revocations_in_ledger(ledger.len());
            }
            for revocation in page.iter() {
                // No subscriber is no error.
                let _ = self.events.send(Arc::new(revocation.clone()));
            }
            let caught_up = page.len() < PAGE;
            self.set_position(Position {
                cursor,
                caught_up_at: caught_up.then(Instant::now).or(self.caught_up_at()),
            });
            if caught_up {
                return Ok(());
            }
        }
    }

    /// When no token `revocation` refuses can be live any more: the ledger forgets it then, and
    /// subscribers are told they may.
    pub fn tokens_expire_before(&self, revocation: &Revocation) -> DateTime<Utc> {
        revocation.revoked_at + self.keep_for
    }

    fn position(&self) -> Option<Position> {
        *self.position.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn set_position(&self, position: Position) {
        *self.position.lock().unwrap_or_else(PoisonError::into_inner) = Some(position);
    }

    fn caught_up_at(&self) -> Option<Instant> {
        self.position().and_then(|position| position.caught_up_at)
    }

    /// Whether this replica read the log to its end within [`FRESH_FOR`].
    fn fresh(&self) -> bool {
        self.caught_up_at()
            .is_some_and(|at| at.elapsed() <= FRESH_FOR)
    }

    /// A WatchRevocations stream: the events after `after` (`None`: every revocation whose tokens
    /// may still be live), then each new one, with heartbeats while quiet. Refused at once if
    /// `after` is out of the log, or too many streams are open.
    pub async fn watch(
        self: &Arc<Self>,
        after: Option<Cursor>,
    ) -> Result<mpsc::Receiver<Result<Watched>>> {
        let permit = self
            .watchers
            .clone()
            .try_acquire_owned()
            .map_err(|_| Error::Overloaded {
                setting: "WatchRevocations streams (at most 1024)",
            })?;
        // Subscribed before the log is read, so no event falls between the read and the tail.
        let live = self.events.subscribe();
        let now = self.clock.now();
        let bounds = self.store.revocation_log(now - self.keep_for).await?;
        let start = match after {
            None => bounds.before_since,
            Some(cursor) if cursor < bounds.swept_through || cursor > bounds.newest => {
                return Err(Error::CursorOutOfRange {
                    cursor: cursor.to_string(),
                    oldest: bounds.swept_through.to_string(),
                });
            }
            Some(cursor) => cursor,
        };
        let (sender, receiver) = mpsc::channel(STREAM_BUFFER);
        let feed = Arc::clone(self);
        tokio::spawn(async move {
            metrics::revocation_watchers(1.0);
            let end = feed.stream(start, live, &sender, permit).await;
            metrics::revocation_watchers(-1.0);
            // The client may be gone already; then nobody is told.
            let _ = sender.send(Err(end)).await;
        });
        Ok(receiver)
    }

    /// Sends the log from `cursor` on to `sender`, then the live tail, until the client goes, the
    /// subscriber falls behind or the server closes; returns why it ended.
    async fn stream(
        &self,
        mut cursor: Cursor,
        mut live: broadcast::Receiver<Arc<Revocation>>,
        sender: &mpsc::Sender<Result<Watched>>,
        _permit: OwnedSemaphorePermit,
    ) -> Error {
        // Catching up from the store, page by page.
        loop {
            let page = match self.store.revocations_after(cursor, PAGE).await {
                Ok(page) => page,
                Err(error) => return error,
            };
            let short = page.len() < PAGE;
            for revocation in page {
                cursor = revocation.cursor;
                if sender
                    .send(Ok(Watched::Revocation(Arc::new(revocation))))
                    .await
                    .is_err()
                {
                    return Error::ShuttingDown;
                }
            }
            if short {
                break;
            }
        }
        // Caught up: said at once, so a subscriber knows its view is complete from here.
        if sender.send(Ok(Watched::Heartbeat(cursor))).await.is_err() {
            return Error::ShuttingDown;
        }
        // The live tail; what the catch-up already sent comes again here, and is skipped.
        let mut last_sent = Instant::now();
        loop {
            let quiet_for = HEARTBEAT_INTERVAL.saturating_sub(last_sent.elapsed());
            let next = tokio::select! {
                () = self.closing.cancelled() => return Error::ShuttingDown,
                () = sender.closed() => return Error::ShuttingDown,
                received = live.recv() => match received {
                    Ok(revocation) if revocation.cursor > cursor => {
                        cursor = revocation.cursor;
                        Watched::Revocation(revocation)
                    }
                    Ok(_) => continue,
                    Err(broadcast::error::RecvError::Lagged(_)) => return Error::WatcherTooSlow,
                    Err(broadcast::error::RecvError::Closed) => return Error::ShuttingDown,
                },
                () = tokio::time::sleep(quiet_for) => {
                    // A replica that cannot read the log vouches for nothing: the subscriber
                    // sees the silence and knows its view may be stale.
                    if !self.fresh() {
                        last_sent = Instant::now();
                        continue;
                    }
                    Watched::Heartbeat(cursor)
                }
            };
            if sender.send(Ok(next)).await.is_err() {
                return Error::ShuttingDown;
            }
            last_sent = Instant::now();
        }
    }
}
