//! The engine's log lines, through the `tracing` facade: a connection's
//! lifecycle at debug, the peer's protocol violations at warn (rate-limited
//! per worker), each line carrying the connection's id and peer address.
//!
//! No line is written on the per-message path except where a message is
//! refused, and nothing is kept per connection: a line's fields come, when
//! its level is enabled, from what the connection already has (its id, its
//! socket's peer address). Every function here is `#[cold]`: kept out of
//! line, off the paths that call it.

use std::cell::Cell;
use std::fmt;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::handle::ConnId;
use crate::proto::handshake::server::{HandshakeError, RequestLimits, RequestReader};
use crate::proto::CloseReason;

/// At most this many violation warnings per worker per [`WARN_WINDOW`];
/// the rest are counted, and the count goes with the next warning.
const WARNS_PER_WINDOW: u32 = 10;
/// The window of [`WARNS_PER_WINDOW`].
const WARN_WINDOW: Duration = Duration::from_secs(1);

/// A socket's peer address for a log line: `-` when the socket no longer has one
/// (reset by the peer).
struct Peer(Option<SocketAddr>);

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(addr) => addr.fmt(f),
            None => f.write_str("-"),
        }
    }
}

/// The peer of `socket`, read only when a line is written.
fn peer(socket: &mio::net::TcpStream) -> Peer {
    Peer(socket.peer_addr().ok())
}

/// A connection was accepted (its upgrade request is awaited).
#[cold]
pub(crate) fn accepted(id: ConnId, socket: &mio::net::TcpStream) {
    tracing::debug!(conn = %id, peer = %peer(socket), "accepted");
}

/// A connection was turned away: a connection cap (`reason`) is reached.
#[cold]
pub(crate) fn over_cap(socket: &mio::net::TcpStream, reason: &str) {
    tracing::debug!(peer = %peer(socket), reason, "refused");
}

/// A connection's upgrade was accepted: it is open, on `reader`'s path.
#[cold]
pub(crate) fn upgraded(id: ConnId, peer: Option<SocketAddr>, reader: &RequestReader, limits: &RequestLimits) {
    // The head is parsed again only when the line is written.
    tracing::debug!(
        conn = %id,
        peer = %Peer(peer),
        path = reader.request(limits).as_ref().map_or("", |r| r.path()),
        "upgraded"
    );
}

/// A connection's request was answered without an upgrade (plain HTTP, or
/// the upgrade refused): the connection ends once the answer is written.
#[cold]
pub(crate) fn answered(id: ConnId, peer: Option<SocketAddr>) {
    tracing::debug!(conn = %id, peer = %Peer(peer), "answered without upgrading");
}

/// A peer's upgrade request broke the rules (`conn` when the line can tell
/// which connection it was).
#[cold]
pub(crate) fn bad_upgrade(conn: Option<ConnId>, peer: impl FnOnce() -> Option<SocketAddr>, error: &HandshakeError) {
    violation(|suppressed| {
        let conn = conn.map(tracing::field::display);
        tracing::warn!(conn, peer = %Peer(peer()), %error, suppressed, "bad upgrade request");
    });
}

/// A peer's message was refused (`what`: a bad envelope, over its rate);
/// `peer` is asked only if the line is written.
#[cfg(feature = "app")]
#[cold]
pub(crate) fn refused(id: ConnId, peer: impl FnOnce() -> Option<SocketAddr>, what: &str, why: &str) {
    violation(|suppressed| {
        tracing::warn!(conn = %id, peer = %Peer(peer()), what, why, suppressed, "message refused");
    });
}

/// An app's handler (`what`: a handler, the identify hook) panicked on
/// `event`; the app answered `internal` and goes on.
#[cfg(feature = "app")]
#[cold]
pub(crate) fn panicked(id: ConnId, event: &str, what: &str) {
    tracing::error!(conn = %id, event, what, "handler panicked");
}

/// A connection resumed the session of the lost connection `was` (PROTOCOL.md §13).
#[cfg(feature = "app")]
#[cold]
pub(crate) fn resumed(id: ConnId, was: ConnId) {
    tracing::debug!(conn = %id, was = %was, "resumed");
}

/// The OS's random generator failed, so a socket got no resume token.
#[cfg(feature = "app")]
#[cold]
pub(crate) fn no_resume_token(id: ConnId) {
    tracing::warn!(conn = %id, "no resume token: the OS random generator failed");
}

/// A connection ended for `reason`; a protocol violation is also warned of.
#[cold]
pub(crate) fn closed(id: ConnId, socket: &mio::net::TcpStream, reason: &CloseReason) {
    tracing::debug!(conn = %id, peer = %peer(socket), code = reason.code().0, %reason, "closed");
    if let CloseReason::Protocol(error) = reason {
        violation(|suppressed| {
            tracing::warn!(conn = %id, peer = %peer(socket), %error, suppressed, "protocol violation");
        });
    }
}

/// A peer broke a rule (a bad frame, a bad upgrade request, a bad envelope):
/// `warn` writes the warning, given how many were suppressed since the last
/// one written, unless this worker wrote its [`WARNS_PER_WINDOW`] already.
#[cold]
pub(crate) fn violation(warn: impl FnOnce(u64)) {
    if !tracing::enabled!(tracing::Level::WARN) {
        return;
    }
    BUDGET.with(|budget| {
        let mut state = budget.get();
        let now = Instant::now();
        if state.window.map_or(true, |start| now.duration_since(start) >= WARN_WINDOW) {
            state.window = Some(now);
            state.written = 0;
        }
        if state.written < WARNS_PER_WINDOW {
            state.written += 1;
            let suppressed = std::mem::take(&mut state.suppressed);
            budget.set(state);
            warn(suppressed);
        } else {
            state.suppressed += 1;
            budget.set(state);
        }
    });
}

/// A worker's warnings of the current window.
#[derive(Clone, Copy, Default)]
struct Budget {
    /// When the window began; none before the first warning.
    window: Option<Instant>,
    /// Warnings written in the window.
    written: u32,
    /// Warnings not written since the last one written.
    suppressed: u64,
}

thread_local! {
    // Per thread is per worker: violations are seen on the worker that owns the connection.
    static BUDGET: Cell<Budget> = const { Cell::new(Budget { window: None, written: 0, suppressed: 0 }) };
}
