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
//! - [`app`]: the event framework on top (named events, requests, rooms,
//!   users, server-to-client calls), speaking `emitws.v1` (PROTOCOL.md).
//! - [`tls`] (feature `tls`, on by default): rustls sessions for `wss://`.
//! - `cluster` (feature `redis`): the Redis link that spreads broadcasts and
//!   presence over several servers.
//!
//! Start with [`runtime::Server`] and [`runtime::Handler`]; README.md has a
//! complete example.
#![deny(missing_docs)]

pub mod app;
pub mod client;
#[cfg(feature = "redis")]
pub mod cluster;
pub mod proto;
pub mod runtime;
#[cfg(feature = "tls")]
pub mod tls;

/// README.md's Rust examples, compiled by `cargo test --doc`.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
