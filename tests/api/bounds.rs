//! The transport's bounds: request size, token length, streams per connection, calls in flight,
//! the call deadline, the connection age and keepalive. They do not depend on the store, so they
//! run once, on the embedded one (or on none).

use std::time::{Duration, Instant};

use sessiond::api::pb;
use tonic::Code;
use tonic_types::StatusExt;

use crate::support::{
    app::{Store, TestApp, spawn, spawn_app, spawn_app_with, test_settings},
    rpc::{create_request, try_create, try_validate},
};

#[tokio::test]
async fn a_one_mebibyte_request_is_refused_with_resource_exhausted() {
    let app = spawn_app(Store::Sqlite).await;
    let mut request = create_request("ivan", "");
    request
        .metadata
        .insert("padding".into(), "x".repeat(1024 * 1024));

    let status = app
        .client
        .clone()
        .create_session(request)
        .await
        .expect_err("over SESSIOND_MAX_REQUEST_BYTES");

    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(
        status.message().contains("SESSIOND_MAX_REQUEST_BYTES"),
        "{status:?}"
    );
    // The connection still serves: the refusal was of the call, not of the client.
    app.create("ivan", "").await;
}

#[tokio::test]
async fn a_request_just_under_the_limit_is_read_and_judged_by_its_fields() {
    let app = spawn_app(Store::Sqlite).await;
    let mut request = create_request("judy", "");
    request
        .metadata
        .insert("padding".into(), "x".repeat(12_000));

    let status = app
        .client
        .clone()
        .create_session(request)
        .await
        .expect_err("a metadata value that long is invalid");

    // Decoded and handed to the handler, which names the field: the size bound let it through.
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("metadata"), "{status:?}");
}

#[tokio::test]
async fn an_access_token_over_four_kib_is_malformed_like_any_other_malformed_token() {
    let app = spawn_app(Store::Sqlite).await;
    let issued = app.create("kim", "").await;
    let real = issued.tokens.expect("tokens").access_token;
    // Read, this would fail on its signature (BAD_SIGNATURE): MALFORMED shows that its length
    // refused it before it was decoded.
    let long = format!("{real}{}", "A".repeat(4 * 1024));

    let over = app.validate(&long).await;
    let garbage = app.validate("not-a-jwt").await;

    assert!(!over.valid);
    assert_eq!(over.status(), pb::TokenStatus::Malformed);
    assert_eq!(over, garbage);
    assert!(app.validate(&real).await.valid);
}

/// Sends `calls` concurrent Validate calls on the app's one channel (one HTTP/2 connection): the
/// statuses of those that failed.
async fn failures_among_concurrent_validates(app: &TestApp, calls: usize) -> Vec<tonic::Status> {
    // One call first, so the client has the server's SETTINGS (with the stream cap) before it
    // opens the rest; streams opened before them would be refused with REFUSED_STREAM.
    app.validate("not-a-jwt").await;
    let answers = futures::future::join_all((0..calls).map(|_| {
        let mut client = app.client.clone();
        async move { try_validate(&mut client, "not-a-jwt").await }
    }))
    .await;
    answers
        .into_iter()
        .filter_map(|answer| match answer {
            Ok(verdict) => {
                assert_eq!(verdict.status(), pb::TokenStatus::Malformed);
                None
            }
            Err(status) => Some(status),
        })
        .collect()
}

#[tokio::test]
async fn five_thousand_concurrent_streams_on_one_connection_are_held_to_the_stream_cap() {
    // In flight never exceeds the stream cap: if it did, the equal in-flight bound would refuse.
    let app = spawn_app_with(Store::Sqlite, |settings| {
        settings.max_concurrent_streams = 8;
        settings.max_calls_in_flight = 8;
    })
    .await;

    let failures = failures_among_concurrent_validates(&app, 5_000).await;
    assert!(failures.is_empty(), "{:?}", failures.first());
}

#[tokio::test]
async fn without_the_stream_cap_the_same_load_passes_the_in_flight_bound_and_is_shed() {
    // The control of the test above: the same calls, with streams uncapped, do exceed 8 in flight.
    let app = spawn_app_with(Store::Sqlite, |settings| {
        settings.max_concurrent_streams = 10_000;
        settings.max_calls_in_flight = 8;
    })
    .await;

    let failures = failures_among_concurrent_validates(&app, 5_000).await;
    // Some refusals reach the client as a broken pipe instead: the answer comes before the
    // request body is read, and the client's body write can fail first.
    assert!(
        failures
            .iter()
            .any(|status| status.code() == Code::ResourceExhausted
                && status
                    .get_details_error_info()
                    .is_some_and(|info| info.reason == "OVERLOADED")),
        "{} failures, none OVERLOADED: {:?}",
        failures.len(),
        failures.first()
    );
}

/// Accepts connections and never answers: a store that hangs.
async fn unresponsive_server() -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    addr
}

#[tokio::test]
async fn past_the_store_bound_a_call_is_refused_at_once_and_validate_still_answers() {
    let store = unresponsive_server().await;
    let mut settings = test_settings(&format!("postgres://postgres@{store}/hung"));
    settings.redis_url = None;
    settings.database_timeout = Duration::from_secs(2);
    settings.max_store_calls_in_flight = 2;
    let app = spawn(settings, None).await;
    // Two creates wait for the hung store, holding the store bound.
    let waiting: Vec<_> = (0..2)
        .map(|n| {
            let mut client = app.client.clone();
            tokio::spawn(async move { try_create(&mut client, &format!("lee{n}"), "").await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;

    let started = Instant::now();
    let refused = app
        .try_create("lee", "")
        .await
        .expect_err("the bound is full");
    let refused_after = started.elapsed();

    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert_eq!(
        refused.get_details_error_info().expect("error info").reason,
        "OVERLOADED"
    );
    assert!(
        refused
            .message()
            .contains("SESSIOND_MAX_STORE_CALLS_IN_FLIGHT"),
        "{refused:?}"
    );
    assert!(
        refused_after < Duration::from_millis(200),
        "refused after {refused_after:?}"
    );
    assert_eq!(app.status_of("not-a-jwt").await, pb::TokenStatus::Malformed);
    for waiting in waiting {
        let status = waiting.await.unwrap().expect_err("the store never answers");
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    }
}

#[tokio::test]
async fn a_call_past_the_request_timeout_is_cancelled_and_a_shorter_grpc_timeout_wins() {
    let store = unresponsive_server().await;
    let mut settings = test_settings(&format!("postgres://postgres@{store}/hung"));
    settings.redis_url = None;
    // The store would give up only after a minute: the deadline is what ends the call.
    settings.database_timeout = Duration::from_secs(30);
    settings.request_timeout = Duration::from_millis(500);
    let app = spawn(settings, None).await;

    let started = Instant::now();
    let cut = app
        .try_create("kim", "")
        .await
        .expect_err("the store never answers");
    let cut_after = started.elapsed();
    assert_eq!(cut.code(), Code::Cancelled, "{cut:?}");
    assert!(
        cut_after >= Duration::from_millis(500) && cut_after < Duration::from_secs(3),
        "cut after {cut_after:?}"
    );

    let mut request = tonic::Request::new(create_request("kim", ""));
    request.set_timeout(Duration::from_millis(100));
    let started = Instant::now();
    let cut = app
        .client
        .clone()
        .create_session(request)
        .await
        .expect_err("the store never answers");
    let cut_after = started.elapsed();
    assert_eq!(cut.code(), Code::Cancelled, "{cut:?}");
    assert!(
        cut_after < Duration::from_millis(500),
        "the caller's 100 ms deadline was not honoured: cut after {cut_after:?}"
    );
}

/// Whether sessiond (`app`) ends an HTTP/2 connection that stays open, idle, within `within`.
async fn ends_an_idle_connection_within(app: &TestApp, within: Duration) -> bool {
    let tcp = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    let (_client, connection) = h2::client::handshake(tcp).await.unwrap();
    // The connection future answers the server's pings, and ends when the server closes it.
    tokio::time::timeout(within, connection).await.is_ok()
}

#[tokio::test]
async fn a_connection_past_its_maximum_age_is_sent_away() {
    let aging = spawn_app_with(Store::Sqlite, |settings| {
        settings.max_connection_age = Duration::from_millis(300);
    })
    .await;
    assert!(
        ends_an_idle_connection_within(&aging, Duration::from_secs(5)).await,
        "a connection outlived SESSIOND_MAX_CONNECTION_AGE"
    );
    // The control: with the default age (30 minutes), the same connection stays.
    let lasting = spawn_app(Store::Sqlite).await;
    assert!(!ends_an_idle_connection_within(&lasting, Duration::from_secs(2)).await);
}

/// Whether sessiond (`app`) closes, within `within`, a connection whose peer sent the HTTP/2
/// preface and then stopped answering anything, pings included.
async fn drops_a_silent_peer_within(app: &TestApp, within: Duration) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    // The client preface and an empty SETTINGS frame (length 0, type 4, no flags, stream 0).
    tcp.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
        .await
        .unwrap();
    let mut sink = [0u8; 4096];
    let closed = async {
        // Read what the server sends (its SETTINGS, its pings), never answer, until it closes.
        while let Ok(read) = tcp.read(&mut sink).await {
            if read == 0 {
                return;
            }
        }
    };
    tokio::time::timeout(within, closed).await.is_ok()
}

#[tokio::test]
async fn a_peer_that_stops_answering_pings_is_disconnected() {
    let pinging = spawn_app_with(Store::Sqlite, |settings| {
        settings.http2_keepalive_interval = Duration::from_millis(200);
        settings.http2_keepalive_timeout = Duration::from_millis(200);
    })
    .await;
    assert!(
        drops_a_silent_peer_within(&pinging, Duration::from_secs(5)).await,
        "a peer that never answered a ping stayed connected"
    );
    // The control: with the default interval (30 s), the same silent peer is not dropped yet.
    let patient = spawn_app(Store::Sqlite).await;
    assert!(!drops_a_silent_peer_within(&patient, Duration::from_secs(2)).await);
}
