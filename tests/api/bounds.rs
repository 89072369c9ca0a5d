//! The transport's bounds: request size and token length. They do not depend on the store, so
//! they run once, on the embedded one.

use sessiond::api::pb;
use tonic::Code;

use crate::support::{
    app::{Store, spawn_app},
    rpc::create_request,
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
