//! The in-process cache tier: `cargo bench --bench local_cache`.
//!
//! - `local_cache/session_hit`: a warm Validate's session lookup;
//! - `local_cache/token_hit`: a warm Validate's "has this exact token verified before?";
//! - `local_cache/session_miss`;
//! - and, printed before the benches, the heap bytes one cached session costs, measured with a
//!   counting allocator over 100 000 sessions shaped like real ones (device, user agent, two
//!   metadata entries).

// A benchmark's setup failing should stop it loudly, as a test's does.
#![allow(clippy::expect_used)]

use std::{
    alloc::{GlobalAlloc, Layout, System},
    hint::black_box,
    sync::{
        Arc,
        atomic::{AtomicIsize, Ordering},
    },
    time::Duration as StdDuration,
};

use chrono::{Duration, Utc};
use criterion::{Criterion, criterion_group, criterion_main};
use sessiond::{
    cache::{LocalSettings, LocalTier},
    clock::SystemClock,
    domain::{Device, Metadata, Session, SessionId, UserId},
    token::{AccessTokenSigner, SigningKey, VerifiedTokens},
};

/// Counts the bytes held on the heap, to measure what the cache keeps.
struct Counting;

static HELD: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        HELD.fetch_add(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        HELD.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn session(user: usize) -> Session {
    let now = Utc::now();
    Session {
        id: SessionId::generate(),
        user_id: UserId::try_from(format!("user-{user:08}")).expect("a valid user id"),
        device: Device::parse(
            format!("device-{user:08}"),
            "Ada's phone".into(),
            "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15".into(),
            "203.0.113.7",
        )
        .expect("a valid device"),
        metadata: Metadata::try_from(
            [
                ("app".to_owned(), "web".to_owned()),
                ("tenant".to_owned(), "acme".to_owned()),
            ]
            .into_iter()
            .collect::<std::collections::HashMap<_, _>>(),
        )
        .expect("valid metadata"),
        created_at: now,
        last_seen_at: now,
        expires_at: now + Duration::days(30),
        idle_expires_at: now + Duration::days(7),
        revoked_at: None,
        revoke_reason: None,
    }
}

fn settings() -> LocalSettings {
    LocalSettings {
        ttl: StdDuration::from_secs(600),
        max_entries: 1_000_000,
        max_bytes: 1 << 30,
    }
}

fn bytes_per_session() {
    const COUNT: usize = 100_000;
    let tier = LocalTier::new(&settings());
    let before = HELD.load(Ordering::Relaxed);
    let sessions: Vec<Arc<Session>> = (0..COUNT).map(|user| Arc::new(session(user))).collect();
    for session in &sessions {
        tier.put(session);
    }
    // Now the tier alone holds the sessions: what is left counts as its own.
    drop(sessions);
    tier.settle();
    let after = HELD.load(Ordering::Relaxed);
    println!(
        "local_cache/bytes_per_session: {} bytes ({} sessions, heap +{} bytes)",
        (after - before) / COUNT as isize,
        COUNT,
        after - before
    );
}

fn lookups(c: &mut Criterion) {
    bytes_per_session();

    let tier = LocalTier::new(&settings());
    let bounds = settings();
    let tokens = VerifiedTokens::new(bounds.max_entries, bounds.max_bytes, Arc::new(SystemClock));
    let warm = Arc::new(session(1));
    tier.put(&warm);
    let now = Utc::now();
    let signer = AccessTokenSigner::new(
        SigningKey::generate().expect("a key"),
        "sessiond".into(),
        "sessiond".into(),
    );
    let token = signer
        .issue(&warm, now, Duration::minutes(15))
        .expect("signs")
        .token;
    tokens.remember(
        &token,
        Arc::new(signer.verify(&token, now).expect("verifies")),
    );
    let cold = SessionId::generate();

    let mut group = c.benchmark_group("local_cache");
    group.bench_function("session_hit", |b| {
        b.iter(|| tier.get(black_box(&warm.user_id), black_box(warm.id)))
    });
    group.bench_function("token_hit", |b| {
        b.iter(|| tokens.get(black_box(&token), &signer))
    });
    group.bench_function("session_miss", |b| {
        b.iter(|| tier.get(black_box(&warm.user_id), black_box(cold)))
    });
    group.finish();
}

criterion_group!(benches, lookups);
criterion_main!(benches);
