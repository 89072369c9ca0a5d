//! Micro-benchmarks of the CPU work on sessiond's hot paths: `cargo bench --bench tokens`.
//!
//! - `access_token/verify`: what every Validate does before any cache is asked;
//! - `access_token/issue`: what CreateSession and Refresh do once;
//! - `refresh_token/hash`: what every Refresh does to find the presented token;
//! - `refresh_token/successor`: the HMAC that derives the next token in a Refresh.
//!
//! The in-process cache tier has its own: `cargo bench --bench local_cache`.

// A benchmark's setup failing should stop it loudly, as a test's does.
#![allow(clippy::expect_used)]

use std::hint::black_box;

use chrono::{Duration, Utc};
use criterion::{Criterion, criterion_group, criterion_main};
use sessiond::{
    domain::{Device, Metadata, Session, SessionId, UserId},
    token::{AccessTokenSigner, RefreshKey, RefreshToken, SigningKey},
};

fn session() -> Session {
    let now = Utc::now();
    Session {
        id: SessionId::generate(),
        user_id: UserId::try_from("user-42".to_owned()).expect("a valid user id"),
        device: Device::default(),
        metadata: Metadata::default(),
        created_at: now,
        last_seen_at: now,
        expires_at: now + Duration::days(30),
        idle_expires_at: now + Duration::days(7),
        revoked_at: None,
        revoke_reason: None,
    }
}

fn access_tokens(c: &mut Criterion) {
    let tokens = AccessTokenSigner::new(
        SigningKey::generate().expect("a key"),
        "sessiond".into(),
        "sessiond".into(),
    );
    let session = session();
    let now = Utc::now();
    let token = tokens
        .issue(&session, now, Duration::minutes(15))
        .expect("signs")
        .token;
    assert!(tokens.verify(&token, now).is_ok(), "the token must verify");

    let mut group = c.benchmark_group("access_token");
    group.bench_function("verify", |b| {
        b.iter(|| tokens.verify(black_box(&token), black_box(now)))
    });
    group.bench_function("issue", |b| {
        b.iter(|| tokens.issue(black_box(&session), black_box(now), Duration::minutes(15)))
    });
    group.finish();
}

fn refresh_tokens(c: &mut Criterion) {
    let token = RefreshToken::generate().expect("random");
    let key = RefreshKey::generate().expect("random");

    let mut group = c.benchmark_group("refresh_token");
    group.bench_function("hash", |b| b.iter(|| black_box(&token).hash()));
    group.bench_function("successor", |b| {
        b.iter(|| black_box(&token).successor(black_box(&key), black_box(&[7; 16])))
    });
    group.finish();
}

criterion_group!(benches, access_tokens, refresh_tokens);
criterion_main!(benches);
