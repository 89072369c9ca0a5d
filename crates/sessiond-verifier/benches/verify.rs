//! Local verification, the work a service does on every request:
//! `cargo bench -p sessiond-verifier --bench verify`. Every case checks against 100 000 revoked
//! sessions.
//!
//! - `verify_local/warm`: a valid token seen before (the memo of verified tokens holds it: no
//!   signature check), as a client's token is on all its requests but the first;
//! - `verify_local/first_sight`: the same with the memo off: the Ed25519 (strict) verification
//!   and the claims' parse every time, as for a token the first time it is seen;
//! - `verify_local/revoked`: a warm token whose session is one of the revoked;
//! - `verify_local/bad_signature`: a token whose signature does not verify (never remembered).
//!
//! Each runs the whole local path: header, key lookup, signature or memo, claims, revocation
//! set, freshness. The JWKS and the revocations are loaded in memory: no sessiond.

// A benchmark's setup failing should stop it loudly, as a test's does.
#![allow(clippy::expect_used)]

use std::hint::black_box;

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use chrono::Utc;
use criterion::{Criterion, criterion_group, criterion_main};
use ed25519_dalek::Signer;
use serde_json::json;
use uuid::Uuid;

const REVOKED: usize = 100_000;

fn token(key: &ed25519_dalek::SigningKey, sid: Uuid) -> String {
    let now = Utc::now();
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(json!({"typ": "JWT", "alg": "EdDSA", "kid": "bench"}).to_string()),
        URL_SAFE_NO_PAD.encode(
            json!({
                "iss": "sessiond",
                "aud": "sessiond",
                "sub": "user-42",
                "sid": sid.to_string(),
                "iat": now.timestamp(),
                "exp": now.timestamp() + 3_600,
                "jti": Uuid::now_v7().to_string(),
                "sct": now.timestamp_micros(),
            })
            .to_string()
        )
    );
    let signature = key.sign(input.as_bytes());
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature.to_bytes()))
}

fn verify_local(c: &mut Criterion) {
    let key = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
    let jwks = json!({"keys": [{
        "kty": "OKP",
        "crv": "Ed25519",
        "x": URL_SAFE_NO_PAD.encode(key.verifying_key().to_bytes()),
        "kid": "bench",
        "use": "sig",
        "alg": "EdDSA",
    }]});
    let revoked: Vec<Uuid> = (0..REVOKED).map(|_| Uuid::now_v7()).collect();
    let verifier = |memo_capacity| {
        sessiond_verifier::__bench_verifier(
            "sessiond",
            "sessiond",
            jwks.to_string().as_bytes(),
            revoked.iter().copied(),
            memo_capacity,
        )
        .expect("a verifier")
    };
    let (warm, cold) = (verifier(10_000), verifier(0));
    assert_eq!(warm.stats().revocations.sessions, REVOKED);

    let live = token(&key, Uuid::now_v7());
    let revoked = token(&key, revoked[REVOKED / 2]);
    let mut bad_signature = live.clone();
    bad_signature.replace_range(bad_signature.len() - 4.., "AAAA");
    assert!(warm.verify_local(&live).is_ok() && cold.verify_local(&live).is_ok());
    assert!(warm.verify_local(&revoked).is_err());
    assert!(warm.verify_local(&bad_signature).is_err());

    let mut group = c.benchmark_group("verify_local");
    group.bench_function("warm", |b| b.iter(|| warm.verify_local(black_box(&live))));
    group.bench_function("first_sight", |b| {
        b.iter(|| cold.verify_local(black_box(&live)))
    });
    group.bench_function("revoked", |b| {
        b.iter(|| warm.verify_local(black_box(&revoked)))
    });
    group.bench_function("bad_signature", |b| {
        b.iter(|| warm.verify_local(black_box(&bad_signature)))
    });
    group.finish();
}

criterion_group!(benches, verify_local);
criterion_main!(benches);
