//! emitws: a strict, fast WebSocket engine (RFC 6455).
//!
//! ```text
//!  bytes ─► proto::Decoder ─► Event (borrowed slices) ─► runtime::Handler
//!  Handler ─► Conn::send_* ─► write queue ─► one writev per loop turn
//! ```
//!
//! - [`proto`]: the sans-IO protocol core. No sockets, no clocks: bytes in,
//!   events out; frames out into caller-owned buffers.
//! - [`runtime`]: the server. One mio event loop per worker thread, a timer
//!   wheel, pooled buffers, backpressure, and a [`runtime::ServerHandle`] for
//!   other threads.
//! - [`client`]: the client, blocking ([`client::connect`]) or on the server's
//!   workers ([`runtime::ServerHandle::connect`]).
//! - `app` (feature `app`, on by default): the event framework on top (named
//!   events, requests, rooms, users, server-to-client calls), speaking
//!   `emitws.v1` (PROTOCOL.md). Without it the engine has no JSON dependency.
//! - [`tls`] (feature `tls`, on by default): rustls sessions for `wss://`.
//! - `cluster` (feature `redis`): scale-out over Redis. `RedisAdapter` makes
//!   an app one node of a cluster: broadcasts, direct sends, users and
//!   presence queries span every node.
//! - `axum` (feature `axum`): one port for an axum app and emitws; its
//!   routes hand connections over to the workers.
//!
//! Start with [`runtime::Server`] and [`runtime::Handler`]; README.md has a
//! complete example.
#![deny(missing_docs)]
// Unsafe code is allowed only where a module says why: proto/mask.rs (SIMD
// and word-at-a-time masking) and two zlib output calls in proto/deflate.rs.
#![deny(unsafe_code)]

#[cfg(feature = "app")]
pub mod app;
#[cfg(feature = "axum")]
pub mod axum;
pub mod client;
#[cfg(feature = "redis")]
pub mod cluster;
mod dial;
pub mod metrics;
pub mod proto;
pub mod runtime;
#[cfg(feature = "tls")]
pub mod tls;

/// README.md's Rust examples, compiled by `cargo test --doc` (with the
/// default features: they show the event framework and `wss://`).
#[cfg(all(doctest, feature = "app", feature = "tls"))]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
