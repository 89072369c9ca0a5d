//! How much of the service one connection, call, user or session may take.
//!
//! - The HTTP/2 bounds (streams per connection, reset streams, keepalive, connection age), the
//!   request-size bound and the deadline are set on the tonic server in `startup.rs`.
//! - `calls`: the tower layer in front of the session service: calls in flight (fail fast rather
//!   than queue), and the answer to an oversized request.
//! - `rate`: rate limits per user, per caller and per session, shared by replicas through Redis.
//! - `http`: the ops HTTP port's connection bound and timeouts.

mod calls;
pub mod http;
mod rate;

pub use calls::CallBounds;
pub use rate::{Limit, Rate, RateLimiter, Rates, Requester};
