//! A real sessiond's life: shutdown under load (SIGTERM while calls are running: no call in flight
//! may fail, readiness must drop before the listener closes, and the process must exit 0 in
//! time), what survives a restart, and a TLS certificate renewed on SIGHUP.

// Tests fail by panicking.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::{
    future::Future,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use sessiond::api::pb::session_service_client::SessionServiceClient;
use support::{
    free_addr,
    process::SessiondProcess,
    rpc::{Client, create, token_and_id, try_create, try_validate, validate},
    tls::{Ca, TlsFiles, health, serves, tls_channel},
};
use tonic_health::pb::health_check_response::ServingStatus;

const DRAIN: Duration = Duration::from_secs(1);
const GRACE: Duration = Duration::from_secs(5);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_fails_no_call_in_flight_and_exits_zero() {
    // The embedded store: nothing else to start. The per-user create rate is off: eight workers
    // creating as fast as they can are the load, not abuse to refuse.
    let mut sessiond = SessiondProcess::start(&[
        ("SESSIOND_CREATE_RATE_PER_USER", "off".into()),
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

/// Nothing queued is lost on SIGTERM: activity noted just before it (still in the activity
/// writer's queue) is in the store once the process has exited.
#[tokio::test]
async fn activity_noted_just_before_sigterm_is_stored_before_exit() {
    const SESSIONS: usize = 20;
    let database = support::postgres::fresh_database().await;
    // Every Validate reads the store (no cache tier), so each one sees the backdated row below.
    let mut sessiond = SessiondProcess::start(&[
        ("SESSIOND_DATABASE_URL", database.clone()),
        ("SESSIOND_LOCAL_CACHE", "off".into()),
        ("SESSIOND_SHUTDOWN_DRAIN", "0s".into()),
    ])
    .await;
    let mut client = sessiond.client().await;
    let mut tokens = Vec::new();
    for device in 0..SESSIONS {
        let created = create(&mut client, "sigterm-activity", &format!("device-{device}")).await;
        tokens.push(token_and_id(&created).0);
    }
    // Last seen two minutes ago: a Validate now notes activity (written at most once a minute).
    let pool = sqlx::PgPool::connect(&database).await.unwrap();
    sqlx::query("UPDATE session SET last_seen_at = last_seen_at - interval '2 minutes'")
        .execute(&pool)
        .await
        .unwrap();

    for access_token in &tokens {
        assert!(validate(&mut client, access_token).await.valid);
    }
    let status = sessiond.terminate(Duration::from_secs(20)).await;
    assert!(status.success(), "{status}\n{}", sessiond.log());

    let recent: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM session WHERE last_seen_at > now() - interval '1 minute'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(
        recent,
        SESSIONS as i64,
        "activity noted before SIGTERM was lost\n{}",
        sessiond.log()
    );
}

/// Run as a new user runs it (no settings): the embedded store makes its keys once, in its data
/// folder, so a session survives a restart, and a `kill -9`, in every sense: its access token
/// still validates and its refresh token still rotates.
#[tokio::test]
async fn an_embedded_session_and_its_tokens_survive_a_restart_and_a_kill() {
    let data = tempfile::TempDir::new().unwrap();
    let env = [("SESSIOND_DATA_DIR", data.path().display().to_string())];
    let mut first = SessiondProcess::start_without_keys(&env).await;
    let created = create(&mut first.client().await, "restarted", "phone").await;
    let (access_token, _) = token_and_id(&created);
    let refresh_token = created.tokens.clone().unwrap().refresh_token;
    first.kill();

    let second = SessiondProcess::start_without_keys(&env).await;
    let mut client = second.client().await;
    assert!(
        validate(&mut client, &access_token).await.valid,
        "{}",
        second.log()
    );
    client
        .refresh(sessiond::api::pb::RefreshRequest { refresh_token })
        .await
        .expect("the refresh token still rotates");
    #[cfg(unix)]
    for key in ["signing.pem", "refresh.key"] {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(data.path().join(key))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "{key} is private: {mode:o}");
    }
}

/// Replicas on one Postgres must share keys: without any, sessiond refuses to start, naming the
/// setting that would let it.
#[tokio::test]
async fn postgres_without_keys_refuses_to_start_unless_told_to() {
    let database = support::postgres::fresh_database().await;
    let mut refused =
        SessiondProcess::spawn_with_keys(&[("SESSIOND_DATABASE_URL", database.clone())], None);
    let status = refused.wait(Duration::from_secs(30)).await;
    assert!(!status.success());
    assert!(
        refused.log().contains("SESSIOND_ALLOW_EPHEMERAL_KEYS"),
        "{}",
        refused.log()
    );

    let allowed = SessiondProcess::start_without_keys(&[
        ("SESSIOND_DATABASE_URL", database),
        ("SESSIOND_ALLOW_EPHEMERAL_KEYS", "true".into()),
    ])
    .await;
    create(&mut allowed.client().await, "ephemeral", "phone").await;
}

/// Polls `condition` every 100 ms for up to `within`; whether it came true.
async fn eventually<F: Future<Output = bool>>(within: Duration, condition: impl Fn() -> F) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if condition().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

#[tokio::test]
async fn sighup_serves_a_renewed_certificate_and_no_call_in_flight_fails() {
    let first = Ca::new();
    let files = TlsFiles::new(&first.server(), None);
    let sessiond = SessiondProcess::spawn(&[
        ("SESSIOND_TLS_CERT_FILE", files.cert().display().to_string()),
        ("SESSIOND_TLS_KEY_FILE", files.key().display().to_string()),
        ("SESSIOND_PROBE_ADDR", free_addr().to_string()),
        // No reload but the signal's, within the test.
        ("SESSIOND_KEY_RELOAD_INTERVAL", "1h".into()),
    ]);
    let addr = sessiond.addr;
    let (first_pem, renewed) = (first.pem(), Ca::new());
    let renewed_pem = renewed.pem();
    assert!(
        eventually(Duration::from_secs(60), || serves(addr, &first_pem)).await,
        "sessiond did not serve TLS\n{}",
        sessiond.log()
    );

    // Calls on a connection made before the renewal, until it is over.
    let open = tls_channel(addr, &first_pem, None).await.unwrap();
    let done = Arc::new(AtomicBool::new(false));
    let calls = tokio::spawn({
        let (open, done) = (open.clone(), done.clone());
        async move {
            let (mut made, mut failed) = (0, 0);
            while !done.load(Ordering::Relaxed) {
                made += 1;
                if health(open.clone()).await.is_err() {
                    failed += 1;
                }
            }
            (made, failed)
        }
    });

    files.replace(&renewed.server());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !serves(addr, &renewed_pem).await,
        "the new pair was served before the signal"
    );
    sessiond.signal("HUP");
    assert!(
        eventually(Duration::from_secs(10), || serves(addr, &renewed_pem)).await,
        "the renewed certificate was not served after SIGHUP\n{}",
        sessiond.log()
    );
    done.store(true, Ordering::Relaxed);
    let (made, failed) = calls.await.unwrap();
    assert!(made > 10, "only {made} calls were made during the renewal");
    assert_eq!(failed, 0, "{failed} of {made} calls in flight failed");
}
