//! Close codes (RFC 6455 §7.4 and the IANA "WebSocket Close Code Number" registry).

use std::fmt;

/// A close status code as carried in the first two bytes of a close frame.
///
/// ```
/// use emitws::proto::CloseCode;
/// assert!(CloseCode::NORMAL.is_valid_on_wire());
/// assert!(!CloseCode(1005).is_valid_on_wire()); // "no status": never sent
/// assert!(CloseCode(4000).is_valid_on_wire()); // private use
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CloseCode(pub u16);

impl CloseCode {
    /// 1000: the purpose of the connection was fulfilled.
    pub const NORMAL: CloseCode = CloseCode(1000);
    /// 1001: the endpoint is going away (server shutdown, page navigation).
    pub const GOING_AWAY: CloseCode = CloseCode(1001);
    /// 1002: the peer broke the protocol.
    pub const PROTOCOL_ERROR: CloseCode = CloseCode(1002);
    /// 1003: a data type the endpoint cannot accept.
    pub const UNSUPPORTED_DATA: CloseCode = CloseCode(1003);
    /// 1005: no status code was present. Reported locally, never sent.
    pub const NO_STATUS: CloseCode = CloseCode(1005);
    /// 1006: the connection dropped without a close frame. Reported locally, never sent.
    pub const ABNORMAL: CloseCode = CloseCode(1006);
    /// 1007: a text message that was not UTF-8, or data inconsistent with its type.
    pub const INVALID_PAYLOAD: CloseCode = CloseCode(1007);
    /// 1008: a message that violates the endpoint's policy.
    pub const POLICY_VIOLATION: CloseCode = CloseCode(1008);
    /// 1009: a message too big to process.
    pub const MESSAGE_TOO_BIG: CloseCode = CloseCode(1009);
    /// 1010: the client expected an extension the server did not negotiate.
    pub const MANDATORY_EXTENSION: CloseCode = CloseCode(1010);
    /// 1011: the server met an unexpected condition.
    pub const INTERNAL_ERROR: CloseCode = CloseCode(1011);
    /// 1012: the service is restarting.
    pub const SERVICE_RESTART: CloseCode = CloseCode(1012);
    /// 1013: try again later (temporary overload).
    pub const TRY_AGAIN_LATER: CloseCode = CloseCode(1013);
    /// 1014: a gateway received an invalid response upstream.
    pub const BAD_GATEWAY: CloseCode = CloseCode(1014);

    /// Whether this code may appear in a close frame on the wire.
    ///
    /// Valid: 1000–1003, 1007–1014 (defined by the RFC and registered with
    /// IANA), 3000–3999 (registered for libraries and frameworks) and 4000–4999
    /// (private use). Everything else, including 1004–1006 and 1015, is a
    /// protocol error when received.
    pub fn is_valid_on_wire(self) -> bool {
        matches!(self.0, 1000..=1003 | 1007..=1014 | 3000..=4999)
    }
}

impl fmt::Display for CloseCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl From<u16> for CloseCode {
    fn from(code: u16) -> Self {
        CloseCode(code)
    }
}

/// A close frame's payload, ready to be framed (masked or not) by the caller.
#[derive(Clone, Copy)]
pub struct CloseFrame {
    payload: [u8; 125],
    len: u8,
}

impl CloseFrame {
    /// `code` and `reason` (cut at a character boundary to 123 bytes).
    pub fn new(code: CloseCode, reason: &str) -> CloseFrame {
        let (payload, len) = super::close_payload(code, reason);
        CloseFrame { payload, len: len as u8 }
    }

    /// The reply to a peer's close: its code echoed, or an empty payload if it sent none.
    fn echo(code: Option<CloseCode>) -> CloseFrame {
        let mut frame = CloseFrame { payload: [0; 125], len: 0 };
        if let Some(code) = code {
            frame.payload[..2].copy_from_slice(&code.0.to_be_bytes());
            frame.len = 2;
        }
        frame
    }

    /// The payload bytes.
    pub fn payload(&self) -> &[u8] {
        &self.payload[..self.len as usize]
    }
}

impl fmt::Debug for CloseFrame {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("CloseFrame").field(&self.payload()).finish()
    }
}

/// The close handshake (RFC 6455 §5.5.1, §7), shared by both ends: whether
/// each side's close frame has gone, and what to send when.
///
/// Each method returns the close frame to send, if one is due: at most one
/// close frame is ever sent. Data flows while [`is_open`](Self::is_open).
///
/// ```
/// use emitws::proto::{CloseCode, CloseHandshake};
/// let mut ours = CloseHandshake::default();
/// let frame = ours.start(CloseCode::NORMAL, "done").expect("the first close is sent");
/// assert_eq!(frame.payload(), b"\x03\xe8done");
/// assert!(ours.start(CloseCode::NORMAL, "again").is_none());
/// assert!(ours.receive(Some(CloseCode::NORMAL)).is_none()); // their answer: nothing more to send
/// assert!(ours.is_done());
///
/// let mut theirs = CloseHandshake::default();
/// let echo = theirs.receive(Some(CloseCode::GOING_AWAY)).expect("a close is echoed");
/// assert_eq!(echo.payload(), b"\x03\xe9");
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub enum CloseHandshake {
    /// No close frame either way.
    #[default]
    Open,
    /// Ours is sent; the peer's is awaited.
    Sent,
    /// Both are sent (or the connection was failed): nothing more goes out.
    Done,
}

impl CloseHandshake {
    /// Whether messages may still be sent and are still delivered.
    pub fn is_open(self) -> bool {
        self == CloseHandshake::Open
    }

    /// Whether the handshake is over: the transport may close.
    pub fn is_done(self) -> bool {
        self == CloseHandshake::Done
    }

    /// We begin the close; the frame to send, unless a close was already sent.
    pub fn start(&mut self, code: CloseCode, reason: &str) -> Option<CloseFrame> {
        self.advance(CloseHandshake::Sent, || CloseFrame::new(code, reason))
    }

    /// The peer's close frame arrived; the echo to send if we had not closed yet.
    pub fn receive(&mut self, code: Option<CloseCode>) -> Option<CloseFrame> {
        self.advance(CloseHandshake::Done, || CloseFrame::echo(code))
    }

    /// We fail the connection (a protocol error, a timeout): the close frame
    /// with `code` unless one was already sent; either way nothing more is sent.
    pub fn fail(&mut self, code: CloseCode, reason: &str) -> Option<CloseFrame> {
        self.advance(CloseHandshake::Done, || CloseFrame::new(code, reason))
    }

    fn advance(&mut self, next: CloseHandshake, frame: impl FnOnce() -> CloseFrame) -> Option<CloseFrame> {
        let was = *self;
        // The variants are in order: the handshake never goes back.
        *self = was.max(next);
        (was == CloseHandshake::Open).then(frame)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn at_most_one_close_frame_goes_out() {
        let mut failed = CloseHandshake::default();
        assert!(failed.fail(CloseCode::PROTOCOL_ERROR, "bad").is_some());
        assert!(failed.start(CloseCode::NORMAL, "").is_none());
        assert!(failed.receive(None).is_none());
        let mut closing = CloseHandshake::default();
        closing.start(CloseCode::NORMAL, "");
        assert!(!closing.is_open() && !closing.is_done());
        assert!(closing.fail(CloseCode::PROTOCOL_ERROR, "").is_none(), "no second close frame");
        assert!(closing.is_done());
        let mut answered = CloseHandshake::default();
        assert_eq!(answered.receive(None).unwrap().payload(), b"");
        assert!(answered.is_done() && answered.start(CloseCode::NORMAL, "").is_none());
    }

    #[test]
    fn wire_validity_follows_rfc_and_registry() {
        let valid = [1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014, 3000, 3999, 4000, 4999];
        let invalid = [0, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535];
        for code in valid {
            assert!(CloseCode(code).is_valid_on_wire(), "{code}");
        }
        for code in invalid {
            assert!(!CloseCode(code).is_valid_on_wire(), "{code}");
        }
    }
}
