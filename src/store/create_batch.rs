//! CreateSession under load: concurrent creates share one statement and one commit.
//!
//! Most of what a single-row insert costs the database is paid once per statement and once per
//! commit (a round trip, parsing and planning, the commit's WAL flush), so a batch of many creates
//! costs it little more than one. A create never waits for a batch to fill: the writer sends what
//! is queued as soon as one of its slots (`WRITES.in_flight`) is free. Alone, a create goes out
//! at once, as it would unbatched; under load, the creates that arrive while earlier batches are
//! in flight go out together in the next.

use std::{collections::HashSet, time::Duration};

use sqlx::Pool;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::{
    NewSession,
    dialect::{Dialect, bounded},
};
use crate::{
    batch::{self, BatchShape},
    domain::{RevokeReason, Session},
    error::{Error, Result},
};

/// Four batches written at once, so that a batch is being filled while another waits for its
/// commit; few, so that each is large under load and the pool keeps connections for every other
/// operation. A create beyond the queue waits to be queued (still within its operation timeout).
const WRITES: BatchShape = BatchShape {
    max_batch: 256,
    queue_capacity: 16 * 256,
    in_flight: 4,
    period: None,
};

/// A create waiting for its batch, and where its answer goes: the sessions it replaced.
type Queued = (NewSession, oneshot::Sender<Result<Vec<Session>>>);

/// The handle the store's creates are queued through. The writer stops when it is dropped.
pub(super) struct CreateBatcher {
    queue: mpsc::Sender<Queued>,
}

impl CreateBatcher {
    /// Starts the writer on the current Tokio runtime. Each batch is bounded by `op_timeout`.
    pub(super) fn start<DB: Dialect>(pool: Pool<DB>, op_timeout: Option<Duration>) -> Self {
        let (queue, queued) = batch::queue(WRITES);
        tokio::spawn(queued.write(
            move |batch| write_queued(pool.clone(), batch, op_timeout),
            CancellationToken::new(),
        ));
        Self { queue }
    }

    /// Writes `create` with whatever else is queued; returns the sessions it replaced.
    pub(super) async fn create(&self, create: NewSession) -> Result<Vec<Session>> {
        let (answer, answered) = oneshot::channel();
        let writer_gone = || Error::Internal(anyhow::anyhow!("the create batch writer stopped"));
        self.queue
            .send((create, answer))
            .await
            .map_err(|_| writer_gone())?;
        answered.await.map_err(|_| writer_gone())?
    }
}

/// Writes what was queued together: one statement per create on a device, in queue order.
async fn write_queued<DB: Dialect>(
    pool: Pool<DB>,
    mut queued: Vec<Queued>,
    op_timeout: Option<Duration>,
) {
    // A caller that gave up (its operation timeout) was answered UNAVAILABLE: writing its
    // session now would leave one nobody holds tokens for.
    queued.retain(|(_, answer)| !answer.is_closed());
    while !queued.is_empty() {
        let (batch, held_back) = one_per_device(queued);
        write_batch(&pool, batch, op_timeout).await;
        queued = held_back;
    }
}

/// Splits `creates` into a batch with at most one create per (user, device), in queue order, and
/// the rest. Two creates on one device cannot share a statement: each would replace only the
/// sessions that were there before it, and the two new ones would meet in the unique index. The
/// later one goes in the next statement, which replaces the earlier one's session.
fn one_per_device(creates: Vec<Queued>) -> (Vec<Queued>, Vec<Queued>) {
    let mut devices = HashSet::with_capacity(creates.len());
    creates.into_iter().partition(|(create, _)| {
        let session = &create.session;
        match &session.device.device_id {
            // No device: it replaces nothing.
            None => true,
            Some(device_id) => devices.insert((session.user_id.clone(), device_id.clone())),
        }
    })
}

/// One call to the store for `creates`, bounded by `op_timeout`: the sessions each replaced.
async fn write_creates<DB: Dialect>(
    pool: &Pool<DB>,
    creates: &[NewSession],
    op_timeout: Option<Duration>,
) -> Result<Vec<Vec<Session>>> {
    let replaced_by = RevokeReason::internal(RevokeReason::DEVICE_REPLACED);
    let replaced = bounded(
        op_timeout,
        DB::create_unlimited(pool, creates, &replaced_by),
    )
    .await?;
    if replaced.len() != creates.len() {
        return Err(Error::Internal(anyhow::anyhow!(
            "the store answered {} creates of {}",
            replaced.len(),
            creates.len()
        )));
    }
    Ok(replaced)
}

/// Writes one batch and answers each of its creates.
#[tracing::instrument(name = "store.create_batch", skip_all, fields(batch = batch.len()))]
async fn write_batch<DB: Dialect>(
    pool: &Pool<DB>,
    batch: Vec<Queued>,
    op_timeout: Option<Duration>,
) {
    let (creates, answers): (Vec<_>, Vec<_>) = batch.into_iter().unzip();
    let write = |creates| write_creates(pool, creates, op_timeout);
    let outcomes: Vec<Result<Vec<Session>>> = match write(&creates).await {
        Ok(replaced) => replaced.into_iter().map(Ok).collect(),
        Err(error) if creates.len() == 1 => vec![Err(error)],
        // Postgres is out of reach: each create alone would fail the same way.
        Err(Error::StoreUnavailable(cause)) => creates
            .iter()
            .map(|_| Err(Error::StoreUnavailable(cause.clone())))
            .collect(),
        // Something in one create (a value the database refuses) fails the whole statement: each
        // create is tried alone, so that it fails only its own caller. (Rare: sessiond's checks
        // keep such values out of requests.)
        Err(_) => {
            let mut outcomes = Vec::with_capacity(creates.len());
            for create in creates.chunks(1) {
                outcomes.push(write(create).await.map(|replaced| replaced.concat()));
            }
            outcomes
        }
    };
    for (answer, outcome) in answers.into_iter().zip(outcomes) {
        // A caller that gave up (its timeout) has dropped its receiver; nothing to do.
        let _ = answer.send(outcome);
    }
}
