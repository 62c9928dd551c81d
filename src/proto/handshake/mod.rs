//! The HTTP/1.1 upgrade handshake (RFC 6455 §4): [`server`] reads a request
//! and answers it, [`client`] writes a request and checks the answer.

pub mod client;
pub mod server;
