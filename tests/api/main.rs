//! The session suite: a real sessiond in-process on port 0 (`support::app::spawn_app`), over real
//! Postgres (a fresh, migrated database per test, made by `support::postgres::fresh_database`) and
//! real Redis (a fresh key prefix per test), or over SQLite, called through a real tonic client.

// Tests may panic on a broken expectation; that is how they fail.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

/// Runs each listed `async fn(Store)` once per store, as `postgres::<name>` and `sqlite::<name>`,
/// so the session behaviour of both stores is held to one suite.
macro_rules! on_every_store {
    ($($test:ident),* $(,)?) => {
        mod postgres {
            $(
                #[tokio::test]
                async fn $test() {
                    super::$test(crate::support::app::Store::Postgres).await
                }
            )*
        }
        mod sqlite {
            $(
                #[tokio::test]
                async fn $test() {
                    super::$test(crate::support::app::Store::Sqlite).await
                }
            )*
        }
    };
}

mod activity;
mod bounds;
mod callers;
mod create;
mod erase;
mod gateway;
mod helpers;
mod limits;
mod list;
mod ops;
mod ops_bounds;
mod outages;
mod rates;
mod refresh;
mod revocations;
mod revoke;
mod serving;
#[path = "../support/mod.rs"]
mod support;
mod sweeper;
mod tls;
mod validate;
mod verifier;
