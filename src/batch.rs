//! Writes in batches: callers queue items one at a time, and one writer takes whatever is queued
//! and writes it together. The store's creates and the authority's activity both go this way,
//! because what a write costs the database is mostly paid once per statement and per commit.

use std::{sync::Arc, time::Duration};

use tokio::{
    sync::{Semaphore, mpsc},
    task::JoinSet,
};
use tokio_util::sync::CancellationToken;

/// How a queue is written.
#[derive(Debug, Clone, Copy)]
pub struct BatchShape {
    /// Most items written together.
    pub max_batch: usize,
    /// Most items waiting for the writer. What happens to one more is the caller's choice: wait
    /// (`send`) or drop it (`try_send`).
    pub queue_capacity: usize,
    /// Batches being written at once. More than one lets a batch fill while another waits for
    /// its commit.
    pub in_flight: usize,
    /// Least time between the starts of two batches, so that a trickle of items is written a
    /// batch per period rather than one by one. `None`: a batch starts as soon as a slot is free
    /// and something is queued, so an item alone goes out at once.
    pub period: Option<Duration>,
}

/// A queue of `T` to write in batches: items go in through the sender, and [`Batches::write`]
/// writes them.
pub fn queue<T>(shape: BatchShape) -> (mpsc::Sender<T>, Batches<T>) {
    let (sender, queued) = mpsc::channel(shape.queue_capacity);
    (sender, Batches { queued, shape })
}

/// The writer's side of a [`queue`].
pub struct Batches<T> {
    queued: mpsc::Receiver<T>,
    shape: BatchShape,
}

impl<T: Send + 'static> Batches<T> {
    /// Writes what is queued, each batch by a task of its own running `write`, until every sender
    /// is dropped or `stop` is cancelled. Then it writes what is still queued and waits for
    /// every batch in flight: when it returns, everything queued has been written.
    pub async fn write<W, F>(mut self, write: W, stop: CancellationToken)
    where
        W: Fn(Vec<T>) -> F + Clone + Send + 'static,
        F: Future<Output = ()> + Send + 'static,
    {
        let BatchShape {
            max_batch,
            in_flight,
            period,
            ..
        } = self.shape;
        let slots = Arc::new(Semaphore::new(in_flight.max(1)));
        let mut writing = JoinSet::new();
        let mut period = period.map(|period| {
            let mut interval = tokio::time::interval(period);
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            interval
        });
        let mut batch = Vec::with_capacity(max_batch);
        loop {
            if let Some(period) = &mut period {
                tokio::select! {
                    () = stop.cancelled() => break,
                    _ = period.tick() => {}
                }
            }
            let Ok(slot) = slots.clone().acquire_owned().await else {
                break;
            };
            tokio::select! {
                () = stop.cancelled() => break,
                received = self.queued.recv_many(&mut batch, max_batch) => if received == 0 { break },
            }
            let taken = std::mem::replace(&mut batch, Vec::with_capacity(max_batch));
            // The write's future is made inside its task, not here and then moved in: it is large
            // (it holds the database call's state), and each move is a copy of all of it.
            let write = write.clone();
            writing.spawn(async move {
                write(taken).await;
                drop(slot);
            });
            // Reap the finished batches, so the set does not grow.
            while writing.try_join_next().is_some() {}
        }
        // Stopping: nothing new is queued; what is, is written.
        self.queued.close();
        while self.queued.recv_many(&mut batch, max_batch).await > 0 {
            write(std::mem::take(&mut batch)).await;
        }
        writing.join_all().await;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    fn shape(max_batch: usize, period: Option<Duration>) -> BatchShape {
        BatchShape {
            max_batch,
            queue_capacity: 100,
            in_flight: 1,
            period,
        }
    }

    /// Each batch written, in order.
    type Written = Arc<Mutex<Vec<Vec<u32>>>>;

    /// Runs a writer that records each batch it is given.
    fn recording(
        batches: Batches<u32>,
        stop: CancellationToken,
    ) -> (tokio::task::JoinHandle<()>, Written) {
        let written = Arc::new(Mutex::new(Vec::new()));
        let record = written.clone();
        let writer = tokio::spawn(batches.write(
            move |batch| {
                let record = record.clone();
                async move { record.lock().unwrap().push(batch) }
            },
            stop,
        ));
        (writer, written)
    }

    #[tokio::test]
    async fn what_is_queued_together_is_written_together_up_to_the_batch_size() {
        let (sender, batches) = queue(shape(3, None));
        for item in 0..5 {
            sender.send(item).await.unwrap();
        }
        drop(sender);
        let (writer, written) = recording(batches, CancellationToken::new());
        writer.await.unwrap();
        assert_eq!(*written.lock().unwrap(), [vec![0, 1, 2], vec![3, 4]]);
    }

    #[tokio::test]
    async fn stopping_writes_what_is_still_queued_before_returning() {
        let (sender, batches) = queue(shape(10, Some(Duration::from_secs(3600))));
        let stop = CancellationToken::new();
        let (writer, written) = recording(batches, stop.clone());
        // The first tick is at once; the batch it takes is whatever is queued by then.
        tokio::task::yield_now().await;
        sender.send(1).await.unwrap();
        sender.send(2).await.unwrap();
        stop.cancel();
        writer.await.unwrap();
        let written: Vec<u32> = written.lock().unwrap().concat();
        assert_eq!(written, [1, 2]);
    }
}
