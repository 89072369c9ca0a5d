//! Who may call what: the callers file, API keys, the open mode, and `user_id` scoping.

use std::time::Duration;

use clap::Parser;
use sessiond::{api::pb, config::Settings, startup::Application};
use tonic::Code;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};
use tonic_types::StatusExt;

use crate::support::{
    app::{Store, TestApp, spawn_app, spawn_app_with},
    callers::{CallersFile, KeyedClient, key_caller, keyed_client},
    channel, metrics, rpc, sum_samples,
};

const EDGE_KEY: &str = "sessiond_edge-test-key-0123456789";
const ADMIN_KEY: &str = "sessiond_admin-test-key-9876543210";

/// sessiond with a callers file: `edge` may Validate, `admin` may call every method.
async fn spawn_with_callers(store: Store) -> (TestApp, CallersFile) {
    let file = CallersFile::new(&format!(
        "{}{}",
        key_caller("edge", EDGE_KEY, "\"Validate\""),
        key_caller("admin", ADMIN_KEY, "\"*\"")
    ));
    let path = file.path();
    let app = spawn_app_with(store, |settings| {
        settings.callers_file = Some(path);
        settings.key_reload_interval = Duration::from_millis(100);
    })
    .await;
    (app, file)
}

async fn client(app: &TestApp, key: &str) -> KeyedClient {
    keyed_client(channel(app.addr).await, key)
}

/// Every SessionService method but Validate, called by `client`: (method, status code, status).
async fn every_method_but_validate(client: &mut KeyedClient) -> Vec<(&'static str, tonic::Status)> {
    let sid = "0193a000-0000-7000-8000-000000000000".to_owned();
    vec![
        (
            "CreateSession",
            client
                .create_session(rpc::create_request("u", "d"))
                .await
                .expect_err("denied"),
        ),
        (
            "Refresh",
            client
                .refresh(pb::RefreshRequest {
                    refresh_token: "sdrt_x".into(),
                })
                .await
                .expect_err("denied"),
        ),
        (
            "RevokeSession",
            client
                .revoke_session(pb::RevokeSessionRequest {
                    session_id: sid.clone(),
                    ..Default::default()
                })
                .await
                .expect_err("denied"),
        ),
        (
            "RevokeUserSessions",
            client
                .revoke_user_sessions(pb::RevokeUserSessionsRequest {
                    user_id: "u".into(),
                    ..Default::default()
                })
                .await
                .expect_err("denied"),
        ),
        (
            "RevokeSessions",
            client
                .revoke_sessions(pb::RevokeSessionsRequest {
                    filter: Some(pb::SessionFilter {
                        user_id: "u".into(),
                        ..Default::default()
                    }),
                    ..Default::default()
                })
                .await
                .expect_err("denied"),
        ),
        (
            "WatchRevocations",
            client
                .watch_revocations(pb::WatchRevocationsRequest::default())
                .await
                .expect_err("denied"),
        ),
        (
            "DeleteUserSessions",
            client
                .delete_user_sessions(pb::DeleteUserSessionsRequest {
                    user_id: "u".into(),
                })
                .await
                .expect_err("denied"),
        ),
        (
            "ListUserSessions",
            client
                .list_user_sessions(pb::ListUserSessionsRequest {
                    user_id: "u".into(),
                    ..Default::default()
                })
                .await
                .expect_err("denied"),
        ),
        (
            "GetSession",
            client
                .get_session(pb::GetSessionRequest {
                    session_id: sid,
                    ..Default::default()
                })
                .await
                .expect_err("denied"),
        ),
    ]
}

#[tokio::test]
async fn a_validate_only_caller_is_denied_every_other_method_by_name() {
    let (app, _file) = spawn_with_callers(Store::Sqlite).await;
    let mut edge = client(&app, EDGE_KEY).await;
    let validated = edge
        .validate(pb::ValidateRequest {
            access_token: "not.a.token".into(),
        })
        .await
        .expect("Validate is allowed")
        .into_inner();
    assert!(!validated.valid);

    for (method, status) in every_method_but_validate(&mut edge).await {
        assert_eq!(
            status.code(),
            Code::PermissionDenied,
            "{method}: {status:?}"
        );
        let info = status.get_details_error_info().expect("an ErrorInfo");
        assert_eq!(info.reason, "CALLER_NOT_ALLOWED");
        assert_eq!(info.metadata["caller"], "edge", "{method}");
        assert_eq!(
            info.metadata["method"],
            format!("sessiond.v1.SessionService/{method}")
        );
    }
    let text = metrics(app.ops_addr).await;
    let denied = sum_samples(
        &text,
        "sessiond_rpc_requests_total",
        &[("caller", "edge"), ("code", "PermissionDenied")],
    );
    assert!(
        denied >= 9.0,
        "denied calls are counted under the caller: {denied}"
    );
}

#[tokio::test]
async fn a_caller_with_the_right_key_is_served_and_counted_by_name() {
    let (app, _file) = spawn_with_callers(Store::Sqlite).await;
    let mut admin = client(&app, ADMIN_KEY).await;
    let created = admin
        .create_session(rpc::create_request("ada", "laptop"))
        .await
        .expect("admin may create")
        .into_inner();
    let access = created.tokens.expect("tokens").access_token;
    let mut edge = client(&app, EDGE_KEY).await;
    let validated = edge
        .validate(pb::ValidateRequest {
            access_token: access,
        })
        .await
        .expect("edge may validate")
        .into_inner();
    assert!(validated.valid);

    let text = metrics(app.ops_addr).await;
    let created = sum_samples(
        &text,
        "sessiond_rpc_requests_total",
        &[
            ("caller", "admin"),
            ("method", "CreateSession"),
            ("code", "Ok"),
        ],
    );
    assert!(created >= 1.0, "{text}");
}

/// DeleteUserSessions of `user_id` by `client`: how many sessions it erased.
async fn erase(client: &mut KeyedClient, user_id: &str) -> Result<u32, tonic::Status> {
    client
        .delete_user_sessions(pb::DeleteUserSessionsRequest {
            user_id: user_id.into(),
        })
        .await
        .map(|response| response.into_inner().deleted_count)
}

/// Erasing a user is granted by name (or by `"*"`), never by holding every other method: a caller
/// allowed all the rest, RevokeUserSessions included, is refused it, and nothing is erased.
#[tokio::test]
async fn delete_user_sessions_is_allowed_only_by_name_or_by_star() {
    const ACCOUNT_KEY: &str = "sessiond_account-test-key-0123456789";
    const PRIVACY_KEY: &str = "sessiond_privacy-test-key-0123456789";
    let file = CallersFile::new(&format!(
        "{}{}{}",
        key_caller(
            "account",
            ACCOUNT_KEY,
            "\"CreateSession\", \"Validate\", \"Refresh\", \"RevokeSession\", \
             \"RevokeUserSessions\", \"ListUserSessions\", \"GetSession\""
        ),
        key_caller("privacy", PRIVACY_KEY, "\"DeleteUserSessions\""),
        key_caller("admin", ADMIN_KEY, "\"*\"")
    ));
    let path = file.path();
    let app = spawn_app_with(Store::Sqlite, |settings| settings.callers_file = Some(path)).await;
    let mut account = client(&app, ACCOUNT_KEY).await;
    let created = account
        .create_session(rpc::create_request("ada", "phone"))
        .await
        .expect("account may create")
        .into_inner();
    let access = created.tokens.expect("tokens").access_token;

    let status = erase(&mut account, "ada").await.expect_err("not named");
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    let info = status.get_details_error_info().expect("an ErrorInfo");
    assert_eq!(info.reason, "CALLER_NOT_ALLOWED");
    assert_eq!(
        info.metadata["method"],
        "sessiond.v1.SessionService/DeleteUserSessions"
    );
    let validated = account
        .validate(pb::ValidateRequest {
            access_token: access,
        })
        .await
        .expect("account may validate")
        .into_inner();
    assert!(validated.valid, "nothing was erased");

    let mut privacy = client(&app, PRIVACY_KEY).await;
    let mut admin = client(&app, ADMIN_KEY).await;
    assert_eq!(erase(&mut privacy, "ada").await.expect("named"), 1);
    assert_eq!(erase(&mut admin, "ada").await.expect("\"*\""), 0);

    let text = metrics(app.ops_addr).await;
    let count = |caller, code| {
        sum_samples(
            &text,
            "sessiond_rpc_requests_total",
            &[
                ("caller", caller),
                ("method", "DeleteUserSessions"),
                ("code", code),
            ],
        )
    };
    assert!(count("account", "PermissionDenied") >= 1.0, "{text}");
    assert!(count("privacy", "Ok") >= 1.0, "{text}");
    assert!(count("admin", "Ok") >= 1.0, "{text}");
}

#[tokio::test]
async fn a_wrong_key_and_no_key_are_unauthenticated() {
    let (app, _file) = spawn_with_callers(Store::Sqlite).await;
    let mut wrong = client(&app, "sessiond_not-a-key-the-file-names").await;
    let status = wrong
        .validate(pb::ValidateRequest {
            access_token: "x".into(),
        })
        .await
        .expect_err("a wrong key");
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert_eq!(
        status.get_details_error_info().expect("ErrorInfo").reason,
        "CALLER_UNIDENTIFIED"
    );
    // The harness client sends no key.
    let status = app.try_create("ada", "d").await.expect_err("no key");
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
}

#[tokio::test]
async fn health_needs_no_identity() {
    let (app, _file) = spawn_with_callers(Store::Sqlite).await;
    let mut health = HealthClient::new(channel(app.addr).await);
    let response = health
        .check(HealthCheckRequest {
            service: "sessiond.v1.SessionService".into(),
        })
        .await
        .expect("health answers without identity")
        .into_inner();
    assert_eq!(response.status(), ServingStatus::Serving);
}

#[tokio::test]
async fn the_open_mode_refuses_an_address_that_is_not_loopback() {
    let mut settings = Settings::parse_from(["sessiond"]);
    settings.listen_addr = "0.0.0.0:0".parse().unwrap();
    let error = Application::build(settings.clone())
        .await
        .err()
        .expect("refused");
    assert!(
        format!("{error:#}").contains("SESSIOND_ALLOW_UNAUTHENTICATED_CALLERS"),
        "{error:#}"
    );
}

#[tokio::test]
async fn a_new_callers_file_takes_effect_and_a_broken_one_keeps_the_policy() {
    let (app, file) = spawn_with_callers(Store::Sqlite).await;
    let mut edge = client(&app, EDGE_KEY).await;
    let creates = |mut edge: KeyedClient| async move {
        edge.create_session(rpc::create_request("ada", "d"))
            .await
            .map(drop)
            .map_err(|status| status.code())
    };
    assert_eq!(creates(edge.clone()).await, Err(Code::PermissionDenied));

    file.replace(&key_caller(
        "edge",
        EDGE_KEY,
        "\"Validate\", \"CreateSession\"",
    ));
    let mut allowed = false;
    for _ in 0..100 {
        if creates(edge.clone()).await.is_ok() {
            allowed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(allowed, "the new file was not applied");

    file.replace("[[caller]]\nname = \"edge\"\nallow = [\"Validate\"]\n# no identity: refused");
    // Several reload intervals pass: the policy read last stays.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(creates(edge.clone()).await, Ok(()));
    let status = edge
        .revoke_user_sessions(pb::RevokeUserSessionsRequest {
            user_id: "ada".into(),
            ..Default::default()
        })
        .await
        .expect_err("still not allowed");
    assert_eq!(status.code(), Code::PermissionDenied);
}

async fn get_session_with_another_users_id_is_not_found(store: Store) {
    let app = spawn_app(store).await;
    let sid = app
        .create("ada", "d")
        .await
        .session
        .expect("session")
        .session_id;
    let mut client = app.client.clone();
    let get = |user_id: &str| pb::GetSessionRequest {
        session_id: sid.clone(),
        user_id: user_id.into(),
    };
    let status = client.get_session(get("bob")).await.expect_err("not bob's");
    assert_eq!(status.code(), Code::NotFound);
    let session = client
        .get_session(get("ada"))
        .await
        .expect("ada's")
        .into_inner();
    assert_eq!(session.user_id, "ada");
}

async fn revoke_session_with_another_users_id_is_not_found_and_revokes_nothing(store: Store) {
    let app = spawn_app(store).await;
    let created = app.create("ada", "d").await;
    let sid = created.session.expect("session").session_id;
    let access = created.tokens.expect("tokens").access_token;
    let mut client = app.client.clone();
    let revoke = |user_id: &str| pb::RevokeSessionRequest {
        session_id: sid.clone(),
        reason: String::new(),
        user_id: user_id.into(),
    };
    let status = client
        .revoke_session(revoke("bob"))
        .await
        .expect_err("not bob's");
    assert_eq!(status.code(), Code::NotFound);
    assert_eq!(app.status_of(&access).await, pb::TokenStatus::Valid);

    let revoked = client.revoke_session(revoke("ada")).await.expect("ada's");
    assert!(revoked.into_inner().revoked);
    assert_eq!(
        app.status_of(&access).await,
        pb::TokenStatus::SessionRevoked
    );
}

on_every_store!(
    get_session_with_another_users_id_is_not_found,
    revoke_session_with_another_users_id_is_not_found_and_revokes_nothing,
);
