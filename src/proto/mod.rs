//! The sans-IO protocol core: handshakes (both ends), frames, masking, UTF-8,
//! close codes, close reasons and the close handshake, permessage-deflate,
//! and the connection state machine ([`connection`]) built from them.
//!
//! Nothing here touches a socket or reads a clock. Bytes go in, events come
//! out; frames to send are written into caller-owned buffers. The runtime
//! ([`crate::runtime`]) and the tests drive it the same way.

mod close;
mod close_reason;
pub(crate) mod compress;
pub mod connection;
mod decoder;
pub mod deflate;
mod error;
mod frame;
pub mod handshake;
mod mask;
mod message;
pub(crate) mod utf8;

pub use close::{CloseCode, CloseFrame, CloseHandshake};
pub use close_reason::CloseReason;
pub use decoder::{parse_close, Decoded, Decoder, Event, Limits, Polled, ReadyEvent, Role};
pub use error::ProtocolError;
pub use frame::{close_payload, encode_frame, encode_frame_with_rsv, FrameHeader, OpCode, MAX_HEADER_LEN};
pub use mask::{apply_mask, MaskRng};
pub use message::{Message, OwnedMessage};
pub use utf8::Utf8Validator;
