//! Revocation everywhere, on one sessiond: signing a user out by not-before, revoking by filter,
//! and the WatchRevocations stream (resuming, heartbeats, cursors out of range).

use std::time::Duration;

use sessiond::api::pb::{self, RevocationKind, TokenStatus};
use tokio_stream::StreamExt;
use tonic::{Code, Streaming};

use crate::{
    helpers::{Direct, MINUTE, assert_invalid_field},
    support::{
        app::{Store, TestApp, spawn_app, spawn_app_with},
        rpc::{create_request, tokens},
    },
};

/// How long a test waits for a stream's next event.
const NEXT_EVENT: Duration = Duration::from_secs(5);

async fn signing_a_user_out_everywhere_revokes_every_session_at_once(store: Store) {
    let app = spawn_app(store).await;
    let mut before = Vec::new();
    for device in ["phone", "laptop", "tablet"] {
        let created = app.create("nora", device).await;
        let (access, refresh) = tokens(&created.tokens);
        assert!(app.validate(&access).await.valid, "cached as live first");
        before.push((access, refresh, created.session.unwrap().session_id));
    }
    let (other, _) = tokens(&app.create("olaf", "phone").await.tokens);

    assert_eq!(app.revoke_user("nora", "").await.unwrap(), 3);

    for (access, refresh, id) in &before {
        assert_eq!(app.status_of(access).await, TokenStatus::SessionRevoked);
        let refused = app.refresh(refresh).await.expect_err("refresh refused");
        assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");
        let stored = app.get(id).await.unwrap();
        assert!(stored.revoked_at.is_some(), "{stored:?}");
        assert_eq!(stored.revoke_reason, "password changed");
    }
    assert!(
        app.validate(&other).await.valid,
        "another user is untouched"
    );
    let listed = app
        .client
        .clone()
        .list_user_sessions(pb::ListUserSessionsRequest {
            user_id: "nora".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(listed.sessions.is_empty(), "{listed:?}");

    // The rows end up marked (revoked_at set), so every other statement sees them revoked.
    let direct = Direct::of(&app, store);
    wait_until_marked(&direct).await;

    // A session started afterwards (the test's clock stands still unless moved) is live, and the
    // next sign-out counts it alone.
    app.advance(Duration::from_millis(1));
    let (after, _) = tokens(&app.create("nora", "phone").await.tokens);
    assert!(app.validate(&after).await.valid);
    assert_eq!(app.revoke_user("nora", "").await.unwrap(), 1);
    assert_eq!(app.status_of(&after).await, TokenStatus::SessionRevoked);

    // Two sign-outs, two events, none per session.
    let events = watch_until_quiet(&app, "").await;
    let kinds: Vec<_> = events.iter().map(pb::RevocationEvent::kind).collect();
    assert_eq!(kinds, [RevocationKind::UserNotBefore; 2], "{events:?}");
    assert!(events.iter().all(|event| event.user_id == "nora"));
    wait_until_marked(&direct).await;
}

/// Waits until every session a sign-out revoked is marked so in its row.
async fn wait_until_marked(direct: &Direct) {
    for _ in 0..100 {
        if direct
            .count("SELECT count(*) FROM user_not_before WHERE NOT marked")
            .await
            == 0
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        direct
            .count("SELECT count(*) FROM user_not_before WHERE NOT marked")
            .await,
        0,
        "the sign-out is marked"
    );
    assert_eq!(
        direct
            .count(
                "SELECT count(*) FROM session s JOIN user_not_before u ON u.user_id = s.user_id \
                 WHERE s.revoked_at IS NULL AND s.created_at < u.not_before"
            )
            .await,
        0,
        "every row it revoked says so"
    );
}

/// One session per line, with what the filter tests tell them apart by.
struct Fixture {
    app: TestApp,
    /// (user, device, address, tenant) of each session, in creation order, a minute apart.
    ids: Vec<String>,
}

const SESSIONS: [(&str, &str, &str, &str); 5] = [
    ("fay", "phone", "203.0.113.7", "acme"),
    ("fay", "laptop", "198.51.100.4", "acme"),
    ("gus", "phone", "203.0.113.200", "globex"),
    ("gus", "laptop", "2001:db8::1", "acme"),
    ("hal", "phone", "192.0.2.1", "globex"),
];

async fn fixture(store: Store) -> Fixture {
    let app = spawn_app(store).await;
    let mut ids = Vec::new();
    for (user, device, ip, tenant) in SESSIONS {
        let mut request = create_request(user, device);
        request.device.as_mut().unwrap().ip_address = ip.into();
        request.metadata = [("tenant".to_owned(), tenant.to_owned())].into();
        let created = app
            .client
            .clone()
            .create_session(request)
            .await
            .unwrap()
            .into_inner();
        ids.push(created.session.unwrap().session_id);
        app.advance(MINUTE);
    }
    Fixture { app, ids }
}

impl Fixture {
    /// The creation time of the `index`th session.
    async fn created_at(&self, index: usize) -> prost_types::Timestamp {
        self.app
            .get(&self.ids[index])
            .await
            .unwrap()
            .created_at
            .unwrap()
    }

    async fn revoke(&self, filter: pb::SessionFilter, dry_run: bool) -> (u64, u64) {
        let answer = self
            .app
            .client
            .clone()
            .revoke_sessions(pb::RevokeSessionsRequest {
                filter: Some(filter),
                reason: "breach".into(),
                dry_run,
            })
            .await
            .unwrap()
            .into_inner();
        (answer.matched_count, answer.revoked_count)
    }

    /// Which sessions are revoked, by index.
    async fn revoked(&self) -> Vec<usize> {
        let mut revoked = Vec::new();
        for (index, id) in self.ids.iter().enumerate() {
            if self.app.get(id).await.unwrap().revoked_at.is_some() {
                revoked.push(index);
            }
        }
        revoked
    }
}

async fn each_filter_field_alone_and_combined_revokes_exactly_what_it_matches(store: Store) {
    let fixture = fixture(store).await;
    let third = fixture.created_at(2).await;
    let cases: Vec<(&str, pb::SessionFilter, Vec<usize>)> = vec![
        (
            "user_id",
            pb::SessionFilter {
                user_id: "fay".into(),
                ..Default::default()
            },
            vec![0, 1],
        ),
        (
            "device_id",
            pb::SessionFilter {
                device_id: "phone".into(),
                ..Default::default()
            },
            vec![0, 2, 4],
        ),
        (
            "created_before",
            pb::SessionFilter {
                created_before: Some(third),
                ..Default::default()
            },
            vec![0, 1],
        ),
        (
            "created_after",
            pb::SessionFilter {
                created_after: Some(third),
                ..Default::default()
            },
            vec![3, 4],
        ),
        (
            "ip network",
            pb::SessionFilter {
                ip_address: "203.0.113.0/24".into(),
                ..Default::default()
            },
            vec![0, 2],
        ),
        (
            "exact ip",
            pb::SessionFilter {
                ip_address: "2001:db8::1".into(),
                ..Default::default()
            },
            vec![3],
        ),
        (
            "metadata",
            pb::SessionFilter {
                metadata: Some(pb::MetadataMatch {
                    key: "tenant".into(),
                    value: "globex".into(),
                }),
                ..Default::default()
            },
            vec![2, 4],
        ),
        (
            "user_id and device_id",
            pb::SessionFilter {
                user_id: "gus".into(),
                device_id: "laptop".into(),
                ..Default::default()
            },
            vec![3],
        ),
        (
            "network, tenant and created_before",
            pb::SessionFilter {
                ip_address: "203.0.113.0/24".into(),
                metadata: Some(pb::MetadataMatch {
                    key: "tenant".into(),
                    value: "acme".into(),
                }),
                created_before: Some(third),
                ..Default::default()
            },
            vec![0],
        ),
    ];
    for (name, filter, expected) in cases {
        let count = expected.len() as u64;
        assert_eq!(
            fixture.revoke(filter.clone(), true).await,
            (count, 0),
            "{name}: dry run"
        );
        assert!(
            fixture.revoked().await.is_empty(),
            "{name}: a dry run changes nothing"
        );
        assert_eq!(
            fixture.revoke(filter.clone(), false).await,
            (count, count),
            "{name}"
        );
        assert_eq!(fixture.revoked().await, expected, "{name}");
        // Revoked sessions are no longer live, so nothing matches again.
        assert_eq!(fixture.revoke(filter, false).await, (0, 0), "{name}: again");
        // Live again for the next case: a fresh fixture would cost a server per case.
        let direct = Direct::of(&fixture.app, store);
        direct
            .execute("UPDATE session SET revoked_at = NULL, revoke_reason = NULL")
            .await;
    }
}

async fn last_seen_before_matches_sessions_idle_since(store: Store) {
    let fixture = fixture(store).await;
    // Each session was last seen when it was created, a minute after the one before.
    let filter = pb::SessionFilter {
        last_seen_before: Some(fixture.created_at(3).await),
        ..Default::default()
    };
    assert_eq!(fixture.revoke(filter, false).await, (3, 3));
    assert_eq!(fixture.revoked().await, vec![0, 1, 2]);
}

async fn an_empty_or_bad_filter_is_refused_and_revokes_nothing(store: Store) {
    let fixture = fixture(store).await;
    let mut client = fixture.app.client.clone();
    for request in [
        pb::RevokeSessionsRequest::default(),
        pb::RevokeSessionsRequest {
            filter: Some(pb::SessionFilter::default()),
            ..Default::default()
        },
    ] {
        let refused = client.revoke_sessions(request).await.expect_err("empty");
        assert_invalid_field(&refused, "filter");
    }
    let bad = |filter: pb::SessionFilter| pb::RevokeSessionsRequest {
        filter: Some(filter),
        ..Default::default()
    };
    for (field, filter) in [
        (
            "filter.ip_address",
            pb::SessionFilter {
                ip_address: "203.0.113.0/33".into(),
                ..Default::default()
            },
        ),
        (
            "filter.created_before",
            pb::SessionFilter {
                created_before: Some(prost_types::Timestamp {
                    seconds: 0,
                    nanos: -1,
                }),
                ..Default::default()
            },
        ),
        (
            "filter.metadata.key",
            pb::SessionFilter {
                metadata: Some(pb::MetadataMatch::default()),
                ..Default::default()
            },
        ),
        (
            "filter.user_id",
            pb::SessionFilter {
                user_id: "x".repeat(129),
                ..Default::default()
            },
        ),
    ] {
        let refused = client.revoke_sessions(bad(filter)).await.expect_err(field);
        assert_invalid_field(&refused, field);
    }
    assert!(fixture.revoked().await.is_empty());
}

/// Opens WatchRevocations after `cursor`.
async fn watch(app: &TestApp, cursor: &str) -> Streaming<pb::RevocationEvent> {
    app.client
        .clone()
        .watch_revocations(pb::WatchRevocationsRequest {
            after_cursor: cursor.into(),
        })
        .await
        .unwrap()
        .into_inner()
}

/// The stream's next event that is not a heartbeat.
async fn next_event(stream: &mut Streaming<pb::RevocationEvent>) -> pb::RevocationEvent {
    loop {
        let event = tokio::time::timeout(NEXT_EVENT, stream.next())
            .await
            .expect("an event in time")
            .expect("the stream goes on")
            .expect("an event, not an error");
        if event.kind() != RevocationKind::Heartbeat {
            return event;
        }
    }
}

/// Every event after `cursor` up to the first heartbeat (which says the stream is caught up).
async fn watch_until_quiet(app: &TestApp, cursor: &str) -> Vec<pb::RevocationEvent> {
    let mut stream = watch(app, cursor).await;
    let mut events = Vec::new();
    loop {
        let event = tokio::time::timeout(Duration::from_secs(10), stream.next())
            .await
            .expect("a heartbeat in time")
            .unwrap()
            .unwrap();
        if event.kind() == RevocationKind::Heartbeat {
            return events;
        }
        events.push(event);
    }
}

async fn the_stream_replays_what_is_in_force_then_follows_and_resumes(store: Store) {
    let app = spawn_app(store).await;
    let first = app.create("ivy", "phone").await.session.unwrap().session_id;
    app.revoke(&first).await;

    // An empty cursor: the revocation made before, then each new one as it commits.
    let mut stream = watch(&app, "").await;
    let replayed = next_event(&mut stream).await;
    assert_eq!(replayed.kind(), RevocationKind::Session);
    assert_eq!(replayed.session_id, first);
    assert_eq!(replayed.user_id, "ivy");
    assert_eq!(replayed.reason, "signed out");
    let revoked_at = replayed.revoked_at.unwrap();
    let expires = replayed.token_expires_before.unwrap();
    assert!(
        expires.seconds >= revoked_at.seconds + 15 * 60,
        "kept at least the access-token TTL: {replayed:?}"
    );

    let second = app
        .create("ivy", "laptop")
        .await
        .session
        .unwrap()
        .session_id;
    app.revoke(&second).await;
    let followed = next_event(&mut stream).await;
    assert_eq!(followed.session_id, second);
    assert!(followed.cursor.parse::<i64>().unwrap() > replayed.cursor.parse::<i64>().unwrap());
    drop(stream);

    // Resumed from the first cursor: the second alone, no duplicate.
    let resumed = watch_until_quiet(&app, &replayed.cursor).await;
    assert_eq!(resumed.len(), 1, "{resumed:?}");
    assert_eq!(resumed[0].session_id, second);
    assert!(watch_until_quiet(&app, &followed.cursor).await.is_empty());

    // A device replacement and a refresh-token theft are revocations too.
    app.create("ivy", "phone").await;
    let replacing = app.create("ivy", "phone").await;
    let (_, refresh) = tokens(&replacing.tokens);
    app.refresh(&refresh).await.unwrap();
    app.advance(MINUTE);
    assert!(
        app.refresh(&refresh).await.is_err(),
        "reuse after the grace window"
    );
    let reasons: Vec<_> = watch_until_quiet(&app, &followed.cursor)
        .await
        .into_iter()
        .map(|event| event.reason)
        .collect();
    assert_eq!(reasons, ["device_replaced", "refresh_token_reuse"]);
}

async fn a_cursor_the_log_does_not_hold_is_out_of_range_and_a_bad_one_invalid(store: Store) {
    let app = spawn_app(store).await;
    let id = app.create("jon", "phone").await.session.unwrap().session_id;
    app.revoke(&id).await;
    let events = watch_until_quiet(&app, "").await;
    let cursor = events[0].cursor.clone();

    let mut client = app.client.clone();
    let bad = client
        .watch_revocations(pb::WatchRevocationsRequest {
            after_cursor: "yesterday".into(),
        })
        .await
        .expect_err("not a cursor");
    assert_invalid_field(&bad, "after_cursor");
    let ahead = client
        .watch_revocations(pb::WatchRevocationsRequest {
            after_cursor: "999999999".into(),
        })
        .await
        .expect_err("never issued");
    assert_eq!(ahead.code(), Code::OutOfRange, "{ahead:?}");

    // Once the sweeper deleted the event, resuming before it is out of range, and the status
    // names the oldest cursor kept.
    let direct = Direct::of(&app, store);
    let later = chrono::Utc::now() + chrono::Duration::hours(1);
    assert_eq!(
        direct
            .store()
            .sweep_revocations(later, later)
            .await
            .unwrap(),
        1
    );
    let gone = client
        .watch_revocations(pb::WatchRevocationsRequest {
            after_cursor: "0".into(),
        })
        .await
        .expect_err("swept");
    assert_eq!(gone.code(), Code::OutOfRange, "{gone:?}");
    assert!(gone.message().contains(&cursor), "{}", gone.message());
    // From the newest cursor, nothing was missed.
    assert!(watch_until_quiet(&app, &cursor).await.is_empty());
}

on_every_store!(
    signing_a_user_out_everywhere_revokes_every_session_at_once,
    each_filter_field_alone_and_combined_revokes_exactly_what_it_matches,
    last_seen_before_matches_sessions_idle_since,
    an_empty_or_bad_filter_is_refused_and_revokes_nothing,
    the_stream_replays_what_is_in_force_then_follows_and_resumes,
    a_cursor_the_log_does_not_hold_is_out_of_range_and_a_bad_one_invalid,
);

/// A subscriber that does not read while 40 000 revocations go by (more than its HTTP/2 window,
/// about 2 MiB, and the replica's backlog of 4 096 hold) is ended with ABORTED (it resumes from its
/// cursor), rather than held in memory without bound.
#[tokio::test]
async fn a_subscriber_too_slow_to_keep_up_is_cut_off_and_resumes() {
    // 40 000 sessions revoked by one filter outlast the default deadline in a debug build.
    let app = spawn_app_with(Store::Postgres, |settings| {
        settings.request_timeout = Duration::from_secs(120);
    })
    .await;
    let direct = Direct::of(&app, Store::Postgres);
    direct
        .execute(
            "INSERT INTO session (session_id, user_id, created_at, last_seen_at, expires_at, \
                                  idle_expires_at) \
             SELECT gen_random_uuid(), 'slow', now(), now(), now() + interval '1 day', \
                    now() + interval '1 day' FROM generate_series(1, 40000)",
        )
        .await;
    let mut stream = watch(&app, "").await;
    assert_eq!(
        next_any(&mut stream).await.unwrap().kind(),
        RevocationKind::Heartbeat
    );

    let filter = pb::SessionFilter {
        user_id: "slow".into(),
        ..Default::default()
    };
    let started = std::time::Instant::now();
    let revoked = app
        .client
        .clone()
        .revoke_sessions(pb::RevokeSessionsRequest {
            filter: Some(filter),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    println!(
        "RevokeSessions of 40 000 sessions took {:?}",
        started.elapsed()
    );
    assert_eq!(revoked.revoked_count, 40_000);
    // Not reading for a moment, then reading: what was buffered, then the end.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut received = 0;
    let mut last_cursor = String::new();
    let ended = loop {
        match next_any(&mut stream).await {
            Ok(event) => {
                if event.kind() != RevocationKind::Heartbeat {
                    received += 1;
                }
                last_cursor = event.cursor;
            }
            Err(status) => break status,
        }
    };
    assert_eq!(ended.code(), Code::Aborted, "{ended:?}");
    assert!(received < 40_000, "cut off before the end: {received}");
    // Resumed from its last cursor, it gets the rest, and nothing twice.
    let rest = watch_until_quiet(&app, &last_cursor).await;
    assert_eq!(received + rest.len(), 40_000, "{received} + {}", rest.len());
}

/// The stream's next message or the status it ended with.
async fn next_any(
    stream: &mut Streaming<pb::RevocationEvent>,
) -> Result<pb::RevocationEvent, tonic::Status> {
    tokio::time::timeout(NEXT_EVENT, stream.next())
        .await
        .expect("a message in time")
        .expect("the stream ends with a status")
}
