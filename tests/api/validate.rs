use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use ed25519_dalek::pkcs8::{EncodePublicKey, spki::der::pem::LineEnding};
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sessiond::{api::pb::TokenStatus, clock::Clock};
use sha2::Sha256;

use crate::{
    helpers::{DAY, MINUTE, encode, parts, sign},
    support::{
        app::{Store, TestApp, spawn_app, spawn_app_with},
        redis::redis_url,
        rpc::tokens,
    },
};

async fn fresh_access_token(app: &TestApp) -> String {
    tokens(&app.create("mallory-target", "device").await.tokens).0
}

async fn a_fresh_token_is_valid_and_carries_its_session(store: Store) {
    let app = spawn_app(store).await;
    let created = app.create("ivan", "d").await;
    let (access, _) = tokens(&created.tokens);

    let response = app.validate(&access).await;

    assert!(response.valid);
    assert_eq!(response.status(), TokenStatus::Valid);
    assert_eq!(response.session, created.session);
}

async fn the_token_carries_the_standard_claims_and_a_kid(store: Store) {
    let app = spawn_app(store).await;
    let (header, claims) = parts(&fresh_access_token(&app).await);
    assert_eq!(header["alg"], "EdDSA");
    assert!(header["kid"].as_str().is_some_and(|kid| kid.len() == 43));
    for claim in ["iss", "aud", "sub", "sid", "iat", "exp", "jti"] {
        assert!(claims.get(claim).is_some(), "missing {claim}");
    }
}

async fn an_expired_token_is_refused(store: Store) {
    let app = spawn_app(store).await;
    let access = fresh_access_token(&app).await;
    app.advance(15 * MINUTE);
    assert_eq!(app.status_of(&access).await, TokenStatus::TokenExpired);
}

async fn alg_none_is_refused(store: Store) {
    let app = spawn_app(store).await;
    let (_, claims) = parts(&fresh_access_token(&app).await);
    let unsigned = format!(
        "{}.{}.",
        encode(&json!({"alg": "none", "typ": "JWT"})),
        encode(&claims)
    );
    assert_eq!(app.status_of(&unsigned).await, TokenStatus::BadSignature);
}

async fn hs256_signed_with_the_public_key_is_refused(store: Store) {
    let app = spawn_app(store).await;
    let (mut header, claims) = parts(&fresh_access_token(&app).await);
    header["alg"] = json!("HS256");
    let public = app.signing_key.verifying_key();
    let secrets = [
        public.to_bytes().to_vec(),
        public
            .to_public_key_pem(LineEnding::LF)
            .unwrap()
            .into_bytes(),
    ];
    for secret in secrets {
        let input = format!("{}.{}", encode(&header), encode(&claims));
        let mut mac = Hmac::<Sha256>::new_from_slice(&secret).unwrap();
        mac.update(input.as_bytes());
        let forged = format!(
            "{input}.{}",
            URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
        );
        assert_eq!(app.status_of(&forged).await, TokenStatus::BadSignature);
    }
}

async fn an_unknown_kid_or_a_foreign_key_is_refused(store: Store) {
    let app = spawn_app(store).await;
    let (mut header, claims) = parts(&fresh_access_token(&app).await);
    let stranger = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
    // Our kid, someone else's signature.
    assert_eq!(
        app.status_of(&sign(&header, &claims, &stranger)).await,
        TokenStatus::BadSignature
    );
    // An unknown kid, even with our signature.
    header["kid"] = json!("someone-elses-key");
    assert_eq!(
        app.status_of(&sign(&header, &claims, &app.signing_key))
            .await,
        TokenStatus::BadSignature
    );
    // No kid at all.
    header.as_object_mut().unwrap().remove("kid");
    assert_eq!(
        app.status_of(&sign(&header, &claims, &app.signing_key))
            .await,
        TokenStatus::BadSignature
    );
}

async fn a_wrong_issuer_or_audience_is_refused(store: Store) {
    let app = spawn_app(store).await;
    let (header, claims) = parts(&fresh_access_token(&app).await);
    for (claim, value) in [("iss", "evil-issuer"), ("aud", "another-service")] {
        let mut tampered = claims.clone();
        tampered[claim] = json!(value);
        let token = sign(&header, &tampered, &app.signing_key);
        assert_eq!(
            app.status_of(&token).await,
            TokenStatus::WrongIssuerOrAudience,
            "{claim}"
        );
    }
}

async fn an_altered_signature_or_payload_is_refused(store: Store) {
    let app = spawn_app(store).await;
    let token = fresh_access_token(&app).await;
    let (head, signature) = token.rsplit_once('.').unwrap();
    let mut bytes = URL_SAFE_NO_PAD.decode(signature).unwrap();
    bytes[10] ^= 0x01;
    let altered_signature = format!("{head}.{}", URL_SAFE_NO_PAD.encode(&bytes));
    assert_eq!(
        app.status_of(&altered_signature).await,
        TokenStatus::BadSignature
    );

    let (header, mut claims) = parts(&token);
    claims["sub"] = json!("someone-else");
    let altered_payload = format!("{}.{}.{signature}", encode(&header), encode(&claims));
    assert_eq!(
        app.status_of(&altered_payload).await,
        TokenStatus::BadSignature
    );
}

async fn garbage_is_malformed(store: Store) {
    let app = spawn_app(store).await;
    for garbage in ["", "hello", "a.b.c", "🦀.🦀.🦀"] {
        assert_eq!(
            app.status_of(garbage).await,
            TokenStatus::Malformed,
            "{garbage}"
        );
    }
}

async fn a_token_for_a_session_that_does_not_exist_is_refused(store: Store) {
    let app = spawn_app(store).await;
    let (header, mut claims) = parts(&fresh_access_token(&app).await);
    claims["sid"] = json!(uuid::Uuid::now_v7().to_string());
    let token = sign(&header, &claims, &app.signing_key);
    assert_eq!(app.status_of(&token).await, TokenStatus::SessionNotFound);
}

async fn a_session_of_another_user_is_not_found(store: Store) {
    let app = spawn_app(store).await;
    let (header, mut claims) = parts(&fresh_access_token(&app).await);
    claims["sub"] = json!("not-the-owner");
    let token = sign(&header, &claims, &app.signing_key);
    assert_eq!(app.status_of(&token).await, TokenStatus::SessionNotFound);
}

async fn an_idle_session_expires_and_activity_pushes_the_deadline(store: Store) {
    // Long-lived access tokens, so that the session's state is what decides.
    let app = spawn_app_with(store, |settings| settings.access_token_ttl = 30 * DAY).await;
    let active = fresh_access_token(&app).await;
    let idle = tokens(&app.create("idler", "d").await.tokens).0;

    app.advance(6 * DAY);
    let active_session = app.validate(&active).await.session.unwrap();
    app.wait_for_stored(&active_session.session_id, |stored| {
        stored.idle_expires_at != active_session.idle_expires_at
    })
    .await;
    app.advance(DAY + MINUTE);

    assert_eq!(app.status_of(&idle).await, TokenStatus::SessionExpired);
    assert!(
        app.validate(&active).await.valid,
        "activity at day 6 moved the deadline to day 13"
    );
    app.advance(7 * DAY);
    assert_eq!(app.status_of(&active).await, TokenStatus::SessionExpired);
}

async fn validate_writes_activity_at_most_once_a_minute(store: Store) {
    let app = spawn_app(store).await;
    let created = app.create("judy", "d").await;
    let (access, _) = tokens(&created.tokens);
    let session = created.session.unwrap();
    let created_at = session.last_seen_at.unwrap().seconds;

    app.advance(30 * std::time::Duration::from_secs(1));
    assert!(app.validate(&access).await.valid);
    app.advance(MINUTE);
    assert!(app.validate(&access).await.valid);

    // The write happens off the request path; the first one after a minute is what lands.
    let stored = app
        .wait_for_stored(&session.session_id, |stored| {
            stored.last_seen_at != session.last_seen_at
        })
        .await;
    assert_eq!(
        stored.last_seen_at.unwrap().seconds,
        created_at + 90,
        "not at +30s: coalesced"
    );
}

#[tokio::test]
async fn a_cached_session_is_served_from_redis() {
    let prefix = format!("sessiond-test:{}:", uuid::Uuid::now_v7());
    // Without the in-process tier, so that only Redis can answer below.
    let app = spawn_app_with(Store::Postgres, |settings| {
        settings.redis_key_prefix.clone_from(&prefix);
        settings.local_cache = false;
    })
    .await;
    let created = app.create("kim", "d").await;
    let (access, _) = tokens(&created.tokens);
    // A read that misses Redis copies the row there, in the background. Read until the copy is
    // there: on a loaded machine one copy may time out (and is then simply not made).
    let pattern = format!("{prefix}{{u:kim}}:s:*");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        assert!(app.validate(&access).await.valid);
        if !redis_keys(&pattern).is_empty() {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "never reached Redis");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }

    // Remove the row behind the cache's back: only Redis can still answer.
    sqlx::query("DELETE FROM session WHERE user_id = 'kim'")
        .execute(app.pool.as_ref().unwrap())
        .await
        .unwrap();

    // A replica starts with Redis in doubt, and reads it once its first reconcile is done
    // (normally before this point; polled so that a slow start cannot fail the test).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !app.validate(&access).await.valid {
        assert!(
            std::time::Instant::now() < deadline,
            "Redis never served the session"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// The keys of the test Redis matching `pattern`.
fn redis_keys(pattern: &str) -> String {
    let output = std::process::Command::new("redis-cli")
        .args(["-u", &redis_url(), "--scan", "--pattern", pattern])
        .output()
        .unwrap();
    assert!(output.status.success(), "redis-cli failed");
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

on_every_store!(
    a_fresh_token_is_valid_and_carries_its_session,
    the_token_carries_the_standard_claims_and_a_kid,
    an_expired_token_is_refused,
    alg_none_is_refused,
    hs256_signed_with_the_public_key_is_refused,
    an_unknown_kid_or_a_foreign_key_is_refused,
    a_wrong_issuer_or_audience_is_refused,
    an_altered_signature_or_payload_is_refused,
    garbage_is_malformed,
    a_token_for_a_session_that_does_not_exist_is_refused,
    a_session_of_another_user_is_not_found,
    an_idle_session_expires_and_activity_pushes_the_deadline,
    validate_writes_activity_at_most_once_a_minute,
);

/// Hostile access tokens, each built from a real one: every one gets the status the README's
/// "What the answers mean" gives it, and none upsets the server (it answers the next call).
#[tokio::test]
async fn hostile_tokens_each_get_their_status() {
    use TokenStatus::{BadSignature, Malformed, TokenExpired};
    let app = spawn_app(Store::Sqlite).await;
    let real = fresh_access_token(&app).await;
    let (header, claims) = parts(&real);
    let key = &app.signing_key;
    let with = |mut value: Value, field: &str, new: Value| {
        value[field] = new;
        value
    };
    let signed_raw = |header: &str, claims: &str| {
        let input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header),
            URL_SAFE_NO_PAD.encode(claims)
        );
        let signature = ed25519_dalek::Signer::sign(key, input.as_bytes());
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature.to_bytes()))
    };
    let (head, rest) = real.split_once('.').unwrap();
    let now = app.clock.now().timestamp();
    let cases: Vec<(&str, String, TokenStatus)> = vec![
        (
            "alg none",
            sign(&with(header.clone(), "alg", json!("none")), &claims, key),
            BadSignature,
        ),
        (
            "alg ES256",
            sign(&with(header.clone(), "alg", json!("ES256")), &claims, key),
            BadSignature,
        ),
        (
            "alg RS256",
            sign(&with(header.clone(), "alg", json!("RS256")), &claims, key),
            BadSignature,
        ),
        (
            "alg missing",
            sign(&json!({"typ": "JWT", "kid": header["kid"]}), &claims, key),
            Malformed,
        ),
        (
            "kid missing",
            sign(&json!({"alg": "EdDSA"}), &claims, key),
            BadSignature,
        ),
        (
            "kid unknown",
            sign(
                &with(header.clone(), "kid", json!("no-such-key")),
                &claims,
                key,
            ),
            BadSignature,
        ),
        (
            "kid path-like",
            sign(
                &with(header.clone(), "kid", json!("../../../etc/passwd")),
                &claims,
                key,
            ),
            BadSignature,
        ),
        (
            "exp equal to now",
            sign(&header, &with(claims.clone(), "exp", json!(now)), key),
            TokenExpired,
        ),
        (
            "aud as an array",
            sign(
                &header,
                &with(claims.clone(), "aud", json!([claims["aud"]])),
                key,
            ),
            Malformed,
        ),
        (
            "duplicate key in the claims",
            signed_raw(
                &serde_json::to_string(&header).unwrap(),
                &serde_json::to_string(&claims).unwrap().replacen(
                    '{',
                    "{\"sub\":\"someone-else\",",
                    1,
                ),
            ),
            Malformed,
        ),
        (
            "duplicate alg in the header",
            signed_raw(
                &serde_json::to_string(&header)
                    .unwrap()
                    .replacen('{', "{\"alg\":\"none\",", 1),
                &serde_json::to_string(&claims).unwrap(),
            ),
            Malformed,
        ),
        ("padded base64 header", format!("{head}=.{rest}"), Malformed),
        (
            "standard-alphabet base64",
            real.replace('-', "+").replace('_', "/") + "+",
            Malformed,
        ),
        ("an extra segment", format!("{real}.extra"), Malformed),
        (
            "two segments",
            real.rsplit_once('.').unwrap().0.to_owned(),
            Malformed,
        ),
        (
            "an 8 KiB header (past the 4 KiB token bound, within the request bound)",
            format!(
                "{}.{rest}",
                URL_SAFE_NO_PAD.encode("{".to_owned() + &" ".repeat(8 << 10) + "}")
            ),
            Malformed,
        ),
    ];
    for (what, token, expected) in cases {
        assert_eq!(app.status_of(&token).await, expected, "{what}");
    }
    // A 1 MB header makes the request itself too large: refused before it is decoded.
    let huge = format!(
        "{}.{rest}",
        URL_SAFE_NO_PAD.encode("{".to_owned() + &" ".repeat(1 << 20) + "}")
    );
    let refused = app
        .client
        .clone()
        .validate(sessiond::api::pb::ValidateRequest { access_token: huge })
        .await
        .expect_err("too large");
    assert_eq!(
        refused.code(),
        tonic::Code::ResourceExhausted,
        "{refused:?}"
    );
    assert!(app.validate(&real).await.valid, "the server still answers");
}
