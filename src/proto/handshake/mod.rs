//! The HTTP/1.1 upgrade handshake (RFC 6455 §4): [`server`] reads a request
//! and answers it, [`client`] writes a request and checks the answer.
//!
//! The server side's items are also re-exported here, at the paths they had
//! before the two sides were split, for callers not yet moved to `server::`.

pub mod client;
pub mod server;

pub use server::*;

/// The HTTP request head, at its name before it became
/// [`HttpRequest`](server::HttpRequest) (the event layer has a `Request` of its own).
#[doc(hidden)]
pub type Request<'a> = server::HttpRequest<'a>;
