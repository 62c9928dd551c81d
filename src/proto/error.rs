//! The protocol core's error type: one variant per rule a peer can break.

use std::fmt;

use super::CloseCode;

/// A violation of RFC 6455 (or of a configured limit) by the peer.
///
/// Every variant maps to the close code the connection is failed with
/// ([`ProtocolError::close_code`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProtocolError {
    /// An opcode from the reserved ranges 0x3–0x7 or 0xB–0xF.
    ReservedOpcode(u8),
    /// RSV bits set that no negotiated extension claims (the bits, shifted to 0b0xyz).
    ReservedBits(u8),
    /// A client frame without a mask (RFC 6455 §5.1).
    UnmaskedFrame,
    /// A server frame with a mask (RFC 6455 §5.1).
    MaskedFrame,
    /// A 64-bit payload length with the most significant bit set.
    LengthOverflow,
    /// A payload length not encoded in the minimal number of bytes (RFC 6455 §5.2).
    NonMinimalLength,
    /// A control frame with more than 125 bytes of payload.
    ControlFrameTooLong,
    /// A control frame without the FIN bit.
    FragmentedControlFrame,
    /// A continuation frame with no message in progress.
    UnexpectedContinuation,
    /// A new text or binary frame while a fragmented message is in progress.
    ExpectedContinuation,
    /// A text message or close reason that is not valid UTF-8.
    InvalidUtf8,
    /// A close frame with a one-byte payload.
    InvalidCloseFrame,
    /// A close code that must not appear on the wire.
    InvalidCloseCode(u16),
    /// A data frame after the peer's close frame.
    DataAfterClose,
    /// A frame longer than the configured maximum frame size.
    FrameTooLarge,
    /// A message longer than the configured maximum message size.
    MessageTooLarge,
    /// A message made of more fragments than the configured maximum.
    TooManyFragments,
    /// A compressed message (permessage-deflate) that does not inflate.
    InvalidCompressedData,
}

impl ProtocolError {
    /// The close code to fail the connection with.
    ///
    /// ```
    /// use emitws::proto::{CloseCode, ProtocolError};
    /// assert_eq!(ProtocolError::InvalidUtf8.close_code(), CloseCode::INVALID_PAYLOAD);
    /// assert_eq!(ProtocolError::MessageTooLarge.close_code(), CloseCode::MESSAGE_TOO_BIG);
    /// ```
    pub fn close_code(self) -> CloseCode {
        match self {
            ProtocolError::InvalidUtf8 | ProtocolError::InvalidCompressedData => CloseCode::INVALID_PAYLOAD,
            ProtocolError::FrameTooLarge | ProtocolError::MessageTooLarge | ProtocolError::TooManyFragments => {
                CloseCode::MESSAGE_TOO_BIG
            }
            _ => CloseCode::PROTOCOL_ERROR,
        }
    }
}

impl fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProtocolError::ReservedOpcode(op) => write!(f, "reserved opcode {op:#x}"),
            ProtocolError::ReservedBits(bits) => write!(f, "reserved bits {bits:#05b} set without an extension"),
            ProtocolError::UnmaskedFrame => f.write_str("client frame is not masked"),
            ProtocolError::MaskedFrame => f.write_str("server frame is masked"),
            ProtocolError::LengthOverflow => f.write_str("64-bit payload length has its top bit set"),
            ProtocolError::NonMinimalLength => f.write_str("payload length not minimally encoded"),
            ProtocolError::ControlFrameTooLong => f.write_str("control frame payload over 125 bytes"),
            ProtocolError::FragmentedControlFrame => f.write_str("fragmented control frame"),
            ProtocolError::UnexpectedContinuation => f.write_str("continuation frame without a message in progress"),
            ProtocolError::ExpectedContinuation => f.write_str("new data frame inside a fragmented message"),
            ProtocolError::InvalidUtf8 => f.write_str("invalid UTF-8 in a text message or close reason"),
            ProtocolError::InvalidCloseFrame => f.write_str("close frame with a one-byte payload"),
            ProtocolError::InvalidCloseCode(code) => write!(f, "close code {code} is not allowed on the wire"),
            ProtocolError::DataAfterClose => f.write_str("frame received after the close frame"),
            ProtocolError::FrameTooLarge => f.write_str("frame exceeds the maximum frame size"),
            ProtocolError::MessageTooLarge => f.write_str("message exceeds the maximum message size"),
            ProtocolError::TooManyFragments => f.write_str("message exceeds the maximum fragment count"),
            ProtocolError::InvalidCompressedData => f.write_str("compressed message does not inflate"),
        }
    }
}

impl std::error::Error for ProtocolError {}
