//! Rate limits, on each store: with Postgres they are counted in Redis, on the embedded store
//! (no Redis) in process.

use std::time::Duration;

use sessiond::config::Settings;

use crate::support::{
    app::{Store, spawn_app_with},
    callers::{CallersFile, key_caller, keyed_client},
    channel,
    rpc::{create_request, rate_limit_delay},
};

/// These tests count in one place. A Redis command that times out falls back to the in-process
/// count (failing open, by design), which starts from zero, so on a loaded CI machine the default
/// 100 ms timeout would split a count in two and let a call through. Redis gets all the time it
/// needs here; falling back is tested in `tests/rate_limits.rs`.
fn patient_redis(settings: &mut Settings) {
    settings.redis_timeout = Duration::from_secs(10);
}

async fn a_user_over_the_create_rate_is_told_when_to_retry_and_another_user_is_not(store: Store) {
    let app = spawn_app_with(store, |settings| {
        patient_redis(settings);
        settings.create_rate_per_user = "2/1m".parse().unwrap();
    })
    .await;
    app.create("quinn", "a").await;
    app.create("quinn", "b").await;

    let refused = app
        .try_create("quinn", "c")
        .await
        .expect_err("over the rate");

    let delay = rate_limit_delay(&refused, "SESSIOND_CREATE_RATE_PER_USER");
    assert!(
        delay > Duration::from_secs(25) && delay <= Duration::from_secs(30),
        "{delay:?}"
    );
    app.create("rupert", "a").await;
}

async fn refresh_retries_within_the_grace_window_do_not_count(store: Store) {
    let app = spawn_app_with(store, |settings| {
        patient_redis(settings);
        settings.refresh_rate_per_session = "2/1m".parse().unwrap();
    })
    .await;
    let app = &app;
    let rotate = |token: String| async move {
        app.refresh(&token)
            .await
            .unwrap()
            .tokens
            .unwrap()
            .refresh_token
    };
    let first = app.create("sybil", "").await.tokens.unwrap().refresh_token;
    let second = rotate(first.clone()).await;
    // Lost answers, retried: each gets the same successor and is not counted.
    for _ in 0..5 {
        assert_eq!(rotate(first.clone()).await, second);
    }

    let third = app.refresh(&second).await.expect("the second rotation");
    let refused = app
        .refresh(&third.tokens.unwrap().refresh_token)
        .await
        .expect_err("a third rotation within the minute");

    rate_limit_delay(&refused, "SESSIOND_REFRESH_RATE_PER_SESSION");
    // Another session of the same user is counted on its own.
    let other = app.create("sybil", "").await.tokens.unwrap().refresh_token;
    app.refresh(&other).await.expect("another session");
}

async fn a_caller_over_its_create_rate_is_refused_whatever_the_user_and_another_caller_is_not(
    store: Store,
) {
    // `signup` has a rate of its own; `login` gets SESSIOND_CREATE_RATE_PER_CALLER.
    let signup = key_caller("signup", "signup-key", "\"CreateSession\"")
        .replace("allow =", "create_rate = \"2/1m\"\nallow =");
    let file = CallersFile::new(&format!(
        "{signup}{}",
        key_caller("login", "login-key", "\"CreateSession\"")
    ));
    let path = file.path();
    let app = spawn_app_with(store, |settings| {
        patient_redis(settings);
        settings.callers_file = Some(path);
        settings.create_rate_per_caller = "3/1m".parse().unwrap();
    })
    .await;
    let channel = channel(app.addr).await;
    let (mut signup, mut login) = (
        keyed_client(channel.clone(), "signup-key"),
        keyed_client(channel, "login-key"),
    );

    // Each for another user: the per-user rate is not what refuses.
    for (client, allowed, refused_user) in [(&mut signup, 2, "s-late"), (&mut login, 3, "l-late")] {
        for n in 0..allowed {
            client
                .create_session(create_request(&format!("{refused_user}-{n}"), ""))
                .await
                .expect("within the caller's rate");
        }
        let refused = client
            .create_session(create_request(refused_user, ""))
            .await
            .expect_err("over the caller's rate");
        rate_limit_delay(&refused, "SESSIOND_CREATE_RATE_PER_CALLER");
    }
}

on_every_store!(
    a_user_over_the_create_rate_is_told_when_to_retry_and_another_user_is_not,
    a_caller_over_its_create_rate_is_refused_whatever_the_user_and_another_caller_is_not,
    refresh_retries_within_the_grace_window_do_not_count,
);
