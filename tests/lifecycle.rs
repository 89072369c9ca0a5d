//! Shutdown under load: SIGTERM to a real sessiond while calls are running. No call in flight
//! may fail, readiness must drop before the listener closes, and the process must exit 0 in time.

// Tests fail by panicking.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use sessiond::api::pb::session_service_client::SessionServiceClient;
use support::{
    process::SessiondProcess,
    rpc::{Client, try_create, try_validate},
};
use tonic_health::pb::health_check_response::ServingStatus;

const DRAIN: Duration = Duration::from_secs(1);
const GRACE: Duration = Duration::from_secs(5);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_fails_no_call_in_flight_and_exits_zero() {
    // The embedded store: nothing else to start.
    let mut sessiond = SessiondProcess::start(&[
        (
            "SESSIOND_SHUTDOWN_DRAIN",
            format!("{}ms", DRAIN.as_millis()),
        ),
        (
            "SESSIOND_SHUTDOWN_GRACE",
            format!("{}ms", GRACE.as_millis()),
        ),
    ])
    .await;
    let client = SessionServiceClient::new(sessiond.channel().await);

    // A load balancer's view: stop sending new calls once readiness says NOT_SERVING.
    let routable = Arc::new(AtomicBool::new(true));
    let (completed, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let workers: Vec<_> = (0..8)
        .map(|worker| {
            let (client, routable, completed, failed) = (
                client.clone(),
                routable.clone(),
                completed.clone(),
                failed.clone(),
            );
            tokio::spawn(async move {
                let mut errors = Vec::new();
                while routable.load(Ordering::Acquire) {
                    match call(client.clone(), worker).await {
                        Ok(()) => completed.fetch_add(1, Ordering::Relaxed),
                        Err(status) => {
                            errors.push(status);
                            failed.fetch_add(1, Ordering::Relaxed)
                        }
                    };
                }
                errors
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before_signal = completed.load(Ordering::Relaxed);

    sessiond.signal("TERM");
    let signalled = Instant::now();
    // Readiness drops at once; liveness stays up while draining; calls keep being answered.
    let mut readiness_dropped = None;
    while signalled.elapsed() < DRAIN {
        if sessiond.health("sessiond.v1.SessionService").await == Some(ServingStatus::NotServing) {
            readiness_dropped.get_or_insert(signalled.elapsed());
            assert_eq!(
                sessiond.health("liveness").await,
                Some(ServingStatus::Serving)
            );
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let readiness_dropped =
        readiness_dropped.expect("readiness reported NOT_SERVING during the drain");
    routable.store(false, Ordering::Release);
    let mut errors = Vec::new();
    for worker in workers {
        errors.extend(worker.await.unwrap());
    }

    let status = sessiond.wait(DRAIN + GRACE + Duration::from_secs(5)).await;
    let exited_after = signalled.elapsed();
    println!(
        "calls before SIGTERM: {before_signal}, in all: {}, failed: {}; readiness dropped after {readiness_dropped:?}; \
         exited after {exited_after:?}",
        completed.load(Ordering::Relaxed),
        failed.load(Ordering::Relaxed),
    );
    assert!(
        errors.is_empty(),
        "calls failed: {errors:?}\n{}",
        sessiond.log()
    );
    assert!(
        completed.load(Ordering::Relaxed) > before_signal,
        "calls were still answered while draining"
    );
    assert!(status.success(), "exit status {status}\n{}", sessiond.log());
    assert!(
        exited_after >= DRAIN,
        "the listener stayed open for the drain"
    );
    assert!(sessiond.log().contains("stopped"), "{}", sessiond.log());
}

/// One unit of load: a new session, then a validation of its token.
async fn call(mut client: Client, worker: usize) -> Result<(), tonic::Status> {
    let created = try_create(&mut client, &format!("load-{worker}"), "").await?;
    let access_token = created.tokens.unwrap().access_token;
    let validated = try_validate(&mut client, &access_token).await?;
    assert!(validated.valid);
    Ok(())
}
