//! Why a connection ended: one variant per cause, each with the close code
//! that applies and the text that goes with it.

use std::borrow::Cow;
use std::fmt;
use std::io;
use std::sync::Arc;

use super::{CloseCode, ProtocolError};

/// Why a connection ended, as reported to the server's
/// [`Handler::on_close`](crate::runtime::Handler::on_close) and kept by the clients.
///
/// [`code`](Self::code) and [`reason`](Self::reason) give the close code and
/// text that apply: the peer's for a close it sent, the one we sent when we
/// failed the connection, 1006 (never sent) when it ended without a close frame.
///
/// ```
/// use emitws::proto::{CloseCode, CloseReason, ProtocolError};
/// let peer = CloseReason::Peer { code: Some(CloseCode(4000)), reason: "bye".into() };
/// assert_eq!((peer.code(), &*peer.reason()), (CloseCode(4000), "bye"));
/// let broken = CloseReason::Protocol(ProtocolError::InvalidUtf8);
/// assert_eq!(broken.code(), CloseCode::INVALID_PAYLOAD);
/// assert!(std::error::Error::source(&broken).is_some());
/// ```
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum CloseReason {
    /// The peer sent a close frame (or answered ours).
    Peer {
        /// Its close code; `None` if it sent none (reported as 1005).
        code: Option<CloseCode>,
        /// Its reason, possibly empty.
        reason: String,
    },
    /// The peer broke the protocol (the error names the rule); we failed the
    /// connection with the rule's close code.
    Protocol(ProtocolError),
    /// The peer answered neither traffic nor our keepalive ping in time; we
    /// closed with this code.
    KeepaliveTimeout(CloseCode),
    /// The upgrade did not finish in time.
    HandshakeTimeout,
    /// The close handshake did not finish in time.
    CloseTimeout,
    /// The transport ended without a close frame.
    NoCloseFrame,
    /// Reading from the transport failed.
    ReadFailed(Arc<io::Error>),
    /// Writing to the transport failed (or waiting to write could not be arranged).
    WriteFailed(Arc<io::Error>),
    /// The application queued more than the connection's send budget; we
    /// failed the connection with 1008.
    SendBufferFull,
    /// The server shut down before the close handshake finished.
    Shutdown,
}

impl CloseReason {
    /// The close code that applies: the peer's (1005 if it sent none), the one
    /// we failed the connection with, or 1006 when no close frame settled it.
    pub fn code(&self) -> CloseCode {
        match self {
            CloseReason::Peer { code, .. } => code.unwrap_or(CloseCode::NO_STATUS),
            CloseReason::Protocol(error) => error.close_code(),
            CloseReason::KeepaliveTimeout(code) => *code,
            CloseReason::SendBufferFull => CloseCode::POLICY_VIOLATION,
            CloseReason::HandshakeTimeout
            | CloseReason::CloseTimeout
            | CloseReason::NoCloseFrame
            | CloseReason::ReadFailed(_)
            | CloseReason::WriteFailed(_)
            | CloseReason::Shutdown => CloseCode::ABNORMAL,
        }
    }

    /// The text that goes with [`code`](Self::code): the peer's reason, the
    /// reason of the close frame we sent, or a short description.
    pub fn reason(&self) -> Cow<'_, str> {
        Cow::Borrowed(match self {
            CloseReason::Peer { reason, .. } => reason,
            CloseReason::Protocol(error) => return Cow::Owned(error.to_string()),
            CloseReason::KeepaliveTimeout(_) => "keepalive timeout",
            CloseReason::HandshakeTimeout => "handshake timeout",
            CloseReason::CloseTimeout => "close timeout",
            CloseReason::NoCloseFrame => "connection closed without a close frame",
            CloseReason::ReadFailed(_) => "read error",
            CloseReason::WriteFailed(_) => "write error",
            CloseReason::SendBufferFull => "send buffer full",
            CloseReason::Shutdown => "server shut down",
        })
    }
}

impl fmt::Display for CloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CloseReason::Peer { code: None, .. } => f.write_str("the peer closed without a status code"),
            CloseReason::Peer { code: Some(code), reason } => write!(f, "the peer closed with {code} {reason:?}"),
            CloseReason::Protocol(error) => write!(f, "the peer broke the protocol: {error}"),
            CloseReason::KeepaliveTimeout(code) => write!(f, "keepalive timeout (closed with {code})"),
            CloseReason::HandshakeTimeout => f.write_str("the upgrade timed out"),
            CloseReason::CloseTimeout => f.write_str("the close handshake timed out"),
            CloseReason::NoCloseFrame => f.write_str("the connection closed without a close frame"),
            CloseReason::ReadFailed(error) => write!(f, "read error: {error}"),
            CloseReason::WriteFailed(error) => write!(f, "write error: {error}"),
            CloseReason::SendBufferFull => f.write_str("send buffer full (closed with 1008)"),
            CloseReason::Shutdown => f.write_str("the server shut down"),
        }
    }
}

impl std::error::Error for CloseReason {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            CloseReason::Protocol(error) => Some(error),
            CloseReason::ReadFailed(error) | CloseReason::WriteFailed(error) => Some(&**error),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_follow_the_cause() {
        let io = || Arc::new(io::Error::from(io::ErrorKind::BrokenPipe));
        let cases = [
            (CloseReason::Peer { code: None, reason: String::new() }, 1005, ""),
            (CloseReason::Protocol(ProtocolError::FrameTooLarge), 1009, "frame exceeds the maximum frame size"),
            (CloseReason::KeepaliveTimeout(CloseCode(4408)), 4408, "keepalive timeout"),
            (CloseReason::HandshakeTimeout, 1006, "handshake timeout"),
            (CloseReason::CloseTimeout, 1006, "close timeout"),
            (CloseReason::NoCloseFrame, 1006, "connection closed without a close frame"),
            (CloseReason::ReadFailed(io()), 1006, "read error"),
            (CloseReason::WriteFailed(io()), 1006, "write error"),
            (CloseReason::SendBufferFull, 1008, "send buffer full"),
            (CloseReason::Shutdown, 1006, "server shut down"),
        ];
        for (reason, code, text) in cases {
            assert_eq!((reason.code().0, &*reason.reason()), (code, text), "{reason}");
        }
    }

    #[test]
    fn io_errors_are_kept_as_the_source() {
        let reason = CloseReason::ReadFailed(Arc::new(io::Error::from(io::ErrorKind::ConnectionReset)));
        let source = std::error::Error::source(&reason).expect("an I/O error is the source");
        let error = source.downcast_ref::<io::Error>().expect("the io::Error itself");
        assert_eq!(error.kind(), io::ErrorKind::ConnectionReset);
    }
}
