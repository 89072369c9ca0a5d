//! sessiond: a session authority. Backend services call it over gRPC to start a user's session on
//! a device, check access tokens, rotate refresh tokens and sign users out.
//!
//! Requests flow `api` (or `gateway`, for proxies) → `authority` → (`token`, `cache`, `store`); see the README for the map.

pub mod api;
pub mod authority;
pub mod batch;
pub mod cache;
pub mod callers;
pub mod clock;
pub mod config;
pub mod domain;
pub mod error;
pub mod gateway;
pub mod limits;
pub mod metrics;
pub mod revocations;
pub mod startup;
pub mod store;
pub mod sweeper;
pub mod tasks;
pub mod telemetry;
pub mod tls;
pub mod token;
