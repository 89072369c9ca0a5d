//! Integration tests: a real sessiond on port 0, real Postgres (a fresh database per test, made by
//! `#[sqlx::test]`) and real Redis (a fresh key prefix per test), called through a real tonic client.

// Tests may panic on a broken expectation; that is how they fail.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod create;
mod helpers;
mod limits;
mod list;
mod outages;
mod refresh;
mod revoke;
mod serving;
mod validate;
