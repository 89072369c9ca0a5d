use std::collections::HashSet;

use sessiond::api::pb;

use crate::{
    helpers::assert_invalid_field,
    support::app::{Store, TestApp, spawn_app},
};

async fn list(
    app: &TestApp,
    user_id: &str,
    include_revoked: bool,
    page_size: i32,
    page_token: &str,
) -> pb::ListUserSessionsResponse {
    app.client
        .clone()
        .list_user_sessions(pb::ListUserSessionsRequest {
            user_id: user_id.into(),
            include_revoked,
            page_size,
            page_token: page_token.into(),
        })
        .await
        .expect("listed")
        .into_inner()
}

async fn pages_cover_every_session_once_newest_first(store: Store) {
    let app = spawn_app(store).await;
    let mut created = Vec::new();
    for device in 0..7 {
        created.push(
            app.create("zoe", &format!("device-{device}"))
                .await
                .session
                .expect("session")
                .session_id,
        );
    }
    app.create("someone-else", "d").await;

    let mut seen = Vec::new();
    let mut page_token = String::new();
    let mut pages = 0;
    loop {
        let page = list(&app, "zoe", false, 3, &page_token).await;
        pages += 1;
        assert!(page.sessions.len() <= 3);
        seen.extend(page.sessions.into_iter().map(|session| session.session_id));
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }

    assert_eq!(pages, 3);
    created.reverse();
    assert_eq!(seen, created, "every session once, newest first");
}

async fn revoked_sessions_are_listed_only_when_asked(store: Store) {
    let app = spawn_app(store).await;
    let kept = app
        .create("abe", "a")
        .await
        .session
        .expect("session")
        .session_id;
    let revoked = app
        .create("abe", "b")
        .await
        .session
        .expect("session")
        .session_id;
    app.client
        .clone()
        .revoke_session(pb::RevokeSessionRequest {
            session_id: revoked.clone(),
            reason: String::new(),
            user_id: String::new(),
        })
        .await
        .expect("revoked");

    let live: HashSet<_> = list(&app, "abe", false, 0, "")
        .await
        .sessions
        .into_iter()
        .map(|s| s.session_id)
        .collect();
    let all: HashSet<_> = list(&app, "abe", true, 0, "")
        .await
        .sessions
        .into_iter()
        .map(|s| s.session_id)
        .collect();

    assert_eq!(live, HashSet::from([kept.clone()]));
    assert_eq!(all, HashSet::from([kept, revoked]));
}

async fn bad_list_requests_name_the_field(store: Store) {
    let app = spawn_app(store).await;
    let mut client = app.client.clone();
    let cases = [
        (
            pb::ListUserSessionsRequest {
                user_id: "abe".into(),
                page_size: 501,
                ..Default::default()
            },
            "page_size",
        ),
        (
            pb::ListUserSessionsRequest {
                user_id: "abe".into(),
                page_size: -1,
                ..Default::default()
            },
            "page_size",
        ),
        (
            pb::ListUserSessionsRequest {
                user_id: "abe".into(),
                page_token: "%%%".into(),
                ..Default::default()
            },
            "page_token",
        ),
        (
            pb::ListUserSessionsRequest {
                user_id: String::new(),
                ..Default::default()
            },
            "user_id",
        ),
    ];
    for (request, field) in cases {
        assert_invalid_field(
            &client
                .list_user_sessions(request)
                .await
                .expect_err("refused"),
            field,
        );
    }
}

on_every_store!(
    pages_cover_every_session_once_newest_first,
    revoked_sessions_are_listed_only_when_asked,
    bad_list_requests_name_the_field,
);
