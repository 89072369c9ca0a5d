//! The ops HTTP port: the JWKS, metrics, and key rotation without a restart.

use std::time::Duration;

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use jwt_simple::prelude::{
    Ed25519PublicKey, EdDSAPublicKeyLike, NoCustomClaims, VerificationOptions,
};
use serde_json::Value;
use sessiond::api::pb::TokenStatus;

use crate::support::{
    app::{Store, TestApp, spawn_app, spawn_app_with},
    http_get,
    keys::{random_bytes, write_new_signing_key},
    rpc::tokens,
};

async fn jwks(app: &TestApp) -> Value {
    let (status, body) = http_get(app.ops_addr, "/.well-known/jwks.json").await;
    assert_eq!(status, 200);
    serde_json::from_str(&body).unwrap()
}

fn kids(jwks: &Value) -> Vec<String> {
    jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|key| key["kid"].as_str().unwrap().to_owned())
        .collect()
}

fn kid_of(token: &str) -> String {
    let header = URL_SAFE_NO_PAD
        .decode(token.split('.').next().unwrap())
        .unwrap();
    serde_json::from_slice::<Value>(&header).unwrap()["kid"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// Polls the JWKS until it holds `count` keys: the reload runs on an interval.
async fn wait_for_key_count(app: &TestApp, count: usize) -> Value {
    for _ in 0..100 {
        let jwks = jwks(app).await;
        if kids(&jwks).len() == count {
            return jwks;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the JWKS never held {count} keys");
}

#[tokio::test]
async fn another_jwt_library_verifies_tokens_from_the_jwks_alone() {
    let app = spawn_app(Store::Sqlite).await;
    let (access, _) = tokens(&app.create("olga", "d").await.tokens);

    let jwks = jwks(&app).await;
    let key = &jwks["keys"][0];
    assert_eq!(
        (
            key["kty"].as_str(),
            key["crv"].as_str(),
            key["alg"].as_str()
        ),
        (Some("OKP"), Some("Ed25519"), Some("EdDSA"))
    );
    assert_eq!(key["kid"].as_str(), Some(kid_of(&access).as_str()));

    // jwt-simple, not the jsonwebtoken crate sessiond uses, from nothing but the JWKS entry.
    let x = URL_SAFE_NO_PAD.decode(key["x"].as_str().unwrap()).unwrap();
    let public_key = Ed25519PublicKey::from_bytes(&x).unwrap();
    let options = VerificationOptions {
        allowed_issuers: Some(["sessiond".to_owned()].into()),
        allowed_audiences: Some(["sessiond".to_owned()].into()),
        ..Default::default()
    };
    let claims = public_key
        .verify_token::<NoCustomClaims>(&access, Some(options))
        .expect("verifies");
    assert_eq!(claims.subject.as_deref(), Some("olga"));

    let mut tampered = access.clone();
    tampered.replace_range(tampered.len() - 4.., "AAAA");
    assert!(
        public_key
            .verify_token::<NoCustomClaims>(&tampered, None)
            .is_err()
    );
}

#[tokio::test]
async fn metrics_count_calls_and_sessions() {
    let app = spawn_app(Store::Sqlite).await;
    let (access, _) = tokens(&app.create("pete", "d").await.tokens);
    assert!(app.validate(&access).await.valid, "verifies the signature");
    assert!(
        app.validate(&access).await.valid,
        "recalls the verification"
    );

    let (status, body) = http_get(app.ops_addr, "/metrics").await;

    assert_eq!(status, 200);
    for expected in [
        "sessiond_rpc_requests_total{method=\"CreateSession\",code=\"Ok\",caller=\"anonymous\"}",
        "sessiond_rpc_duration_seconds_bucket{method=\"Validate\"",
        "sessiond_sessions_created_total",
        "sessiond_cache_lookups_total{tier=\"token\",result=\"hit\"}",
        "sessiond_signing_keys",
    ] {
        assert!(body.contains(expected), "missing {expected} in:\n{body}");
    }
}

#[tokio::test]
async fn signing_keys_rotate_without_a_restart() {
    let keys = tempfile::tempdir().unwrap();
    write_new_signing_key(&keys.path().join("0001.pem"));
    let dir = keys.path().to_owned();
    let app = spawn_app_with(Store::Sqlite, |settings| {
        settings.signing_keys_dir = Some(dir);
        settings.key_reload_interval = Duration::from_millis(50);
    })
    .await;
    let (old_token, _) = tokens(&app.create("quentin", "old").await.tokens);
    let old_kid = kid_of(&old_token);
    assert!(
        app.validate(&old_token).await.valid,
        "and now its verification is cached"
    );

    // Rotate: a newer key signs, the old one still verifies.
    write_new_signing_key(&keys.path().join("0002.pem"));
    wait_for_key_count(&app, 2).await;
    let (new_token, _) = tokens(&app.create("quentin", "new").await.tokens);
    assert_ne!(kid_of(&new_token), old_kid);
    assert!(app.validate(&old_token).await.valid);
    assert!(app.validate(&new_token).await.valid);

    // Retire the old key: its tokens stop validating at once, cached verification or not.
    std::fs::remove_file(keys.path().join("0001.pem")).unwrap();
    let jwks = wait_for_key_count(&app, 1).await;
    assert_eq!(kids(&jwks), [kid_of(&new_token)]);
    assert_eq!(app.status_of(&old_token).await, TokenStatus::BadSignature);
    assert!(app.validate(&new_token).await.valid);
}

#[tokio::test]
async fn a_bad_key_file_keeps_the_keys_in_use() {
    let keys = tempfile::tempdir().unwrap();
    write_new_signing_key(&keys.path().join("0001.pem"));
    let dir = keys.path().to_owned();
    let app = spawn_app_with(Store::Sqlite, |settings| {
        settings.signing_keys_dir = Some(dir);
        settings.key_reload_interval = Duration::from_millis(50);
    })
    .await;
    let (token, _) = tokens(&app.create("rosa", "d").await.tokens);

    std::fs::write(keys.path().join("0002.pem"), "not a key").unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;

    assert_eq!(kids(&jwks(&app).await), [kid_of(&token)]);
    assert!(app.validate(&token).await.valid);
}

#[tokio::test]
async fn refresh_keys_rotate_without_invalidating_live_refresh_tokens() {
    let refresh_keys = tempfile::tempdir().unwrap();
    std::fs::write(refresh_keys.path().join("0001.key"), random_bytes()).unwrap();
    // The signing folder changes together with the refresh folder, so the JWKS shows when the
    // reload (which reads both) has happened.
    let signing_keys = tempfile::tempdir().unwrap();
    write_new_signing_key(&signing_keys.path().join("0001.pem"));
    let (refresh_dir, signing_dir) = (
        refresh_keys.path().to_owned(),
        signing_keys.path().to_owned(),
    );
    let app = spawn_app_with(Store::Sqlite, |settings| {
        settings.refresh_keys_dir = Some(refresh_dir);
        settings.signing_keys_dir = Some(signing_dir);
        settings.key_reload_interval = Duration::from_millis(50);
    })
    .await;
    let (_, first) = tokens(&app.create("sven", "d").await.tokens);
    let (_, untouched) = tokens(&app.create("sven", "other").await.tokens);
    let second = tokens(&app.refresh(&first).await.expect("refreshed").tokens).1;

    std::fs::write(refresh_keys.path().join("0002.key"), random_bytes()).unwrap();
    write_new_signing_key(&signing_keys.path().join("0002.pem"));
    wait_for_key_count(&app, 2).await;

    // A retry of `first`, made under the old key, is still recognised.
    let retried = app.refresh(&first).await.expect("retry within grace");
    assert_eq!(tokens(&retried.tokens).1, second);
    // Tokens issued before the rotation still refresh, now under the new key.
    assert!(app.refresh(&second).await.is_ok());
    assert!(app.refresh(&untouched).await.is_ok());
}
