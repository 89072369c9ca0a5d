//! One owner for every long-lived task (as kanidm's `server/core` does): each is started here,
//! with a name, a shutdown stage and a cancellation token, and at shutdown each is cancelled and
//! awaited, stage by stage, so nothing queued is lost and nothing writes after the store closes.
//!
//! Shutdown, in order (see `startup.rs`): the listeners stop taking calls; the [`Stage::Serving`]
//! tasks stop (ops server, file reloader, sweeper, store preparer, invalidation subscriber, Redis
//! reconciler); the [`Stage::Flush`] tasks write what they hold (the activity writer) and the
//! cache's background writes finish; then the store closes, and `main` flushes telemetry.

use std::{
    future::Future,
    sync::{Mutex, PoisonError},
    time::Duration,
};

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// When a task stops at shutdown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// With the listeners: it serves, or keeps serving fresh (keys, sweeping, the caches' trust).
    Serving,
    /// After every call has ended: it holds writes that must reach the store before it closes.
    Flush,
}

/// How long one task may take to stop before it is aborted.
const STOP_BOUND: Duration = Duration::from_secs(10);

struct Running {
    name: &'static str,
    stage: Stage,
    cancel: CancellationToken,
    handle: JoinHandle<()>,
}

/// The long-lived tasks of one sessiond.
#[derive(Default)]
pub struct Tasks {
    running: Mutex<Vec<Running>>,
}

impl Tasks {
    /// Starts `task` on the current runtime; it is given the token that asks it to stop.
    pub fn spawn<F>(
        &self,
        name: &'static str,
        stage: Stage,
        task: impl FnOnce(CancellationToken) -> F,
    ) where
        F: Future<Output = ()> + Send + 'static,
    {
        let cancel = CancellationToken::new();
        let handle = tokio::spawn(task(cancel.clone()));
        self.lock().push(Running {
            name,
            stage,
            cancel,
            handle,
        });
    }

    /// Starts `task`, which need not clean up: at shutdown it is dropped where it waits.
    pub fn spawn_until_stopped(
        &self,
        name: &'static str,
        stage: Stage,
        task: impl Future<Output = ()> + Send + 'static,
    ) {
        self.spawn(name, stage, |cancel| async move {
            cancel.run_until_cancelled(task).await;
        });
    }

    /// Stops every task of `stage`, in the order they were started, each awaited (aborted if it
    /// takes longer than [`STOP_BOUND`]).
    pub async fn stop(&self, stage: Stage) {
        let stopping: Vec<Running> = {
            let mut running = self.lock();
            let (stopping, staying) = running.drain(..).partition(|task| task.stage == stage);
            *running = staying;
            stopping
        };
        for task in &stopping {
            task.cancel.cancel();
        }
        for mut task in stopping {
            match tokio::time::timeout(STOP_BOUND, &mut task.handle).await {
                Ok(Ok(())) => tracing::debug!(task = task.name, "stopped"),
                Ok(Err(error)) => tracing::error!(task = task.name, %error, "task failed"),
                Err(_) => {
                    task.handle.abort();
                    tracing::warn!(task = task.name, bound = ?STOP_BOUND, "task did not stop in time; aborted");
                }
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Running>> {
        self.running.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    };

    use super::*;

    #[tokio::test]
    async fn a_stage_stops_its_own_tasks_and_waits_for_them_to_finish() {
        let tasks = Tasks::default();
        let flushed = Arc::new(AtomicBool::new(false));
        let flag = flushed.clone();
        tasks.spawn("flusher", Stage::Flush, |cancel| async move {
            cancel.cancelled().await;
            tokio::time::sleep(Duration::from_millis(20)).await; // the last batch
            flag.store(true, Ordering::Release);
        });
        tasks.spawn_until_stopped("server", Stage::Serving, std::future::pending());

        tasks.stop(Stage::Serving).await;
        assert!(
            !flushed.load(Ordering::Acquire),
            "the flush stage is still running"
        );
        tasks.stop(Stage::Flush).await;
        assert!(flushed.load(Ordering::Acquire), "stop waited for the flush");
    }
}
