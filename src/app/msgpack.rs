//! MessagePack payloads (feature `msgpack`): typed data carried in the
//! payload of `emitws.v2` binary envelopes (PROTOCOL.md §10, "MessagePack
//! payloads (convention)"), as Socket.IO users know it from its MessagePack
//! parser.
//!
//! The wire does not change: a binary envelope's payload is raw bytes, and
//! MessagePack is only how the app and its clients agree to encode them. A
//! thin, typed layer over [`Request::binary`], [`Request::reply_binary`],
//! [`Request::emit_binary`] and the broadcasts: `emitws.v1` sockets get the
//! encoded bytes as `{"base64": "…"}`, as they get any binary payload.
//!
//! ```
//! use emitws::app::App;
//! #[derive(serde::Deserialize)]
//! struct Say { room: String, text: String }
//! #[derive(serde::Serialize)]
//! struct Said { id: u64, at_ms: u64 }
//!
//! let mut app = App::new();
//! app.on("/say", |req| {
//!     // A JSON envelope or bytes that are no `Say`: `bad_request`, with why.
//!     let Some(say) = req.expect_msgpack::<Say>() else { return };
//!     println!("{}: {}", say.room, say.text);
//!     req.reply_msgpack(&Said { id: 7, at_ms: 1_700_000_000_000 });
//! });
//! ```
//!
//! Values are encoded with named fields (see [`encode`]); decoding accepts
//! both named (maps) and positional (arrays) structs.

use std::fmt;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::envelope::ErrorCode;
use super::error::Error;
use super::groups::BroadcastOpts;
use super::handle::AppHandle;
use super::request::{ReplyHandle, Request};

/// Why typed MessagePack data could not be read, written or sent.
#[derive(Debug)]
#[non_exhaustive]
pub enum MsgpackError {
    /// The envelope carried JSON data (a text envelope, or any envelope of
    /// an `emitws.v1` socket), not a binary payload.
    NotBinary,
    /// The payload is not MessagePack, or not a `T`.
    Decode(rmp_serde::decode::Error),
    /// The value does not encode as MessagePack (its `Serialize` failed).
    Encode(rmp_serde::encode::Error),
    /// The encoded payload could not be sent: an event name a binary
    /// envelope cannot carry ([`Error::BinaryName`]).
    Send(Error),
}

impl fmt::Display for MsgpackError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MsgpackError::NotBinary => {
                f.write_str("expected MessagePack in a binary envelope (emitws.v2, PROTOCOL.md §10), got JSON data")
            }
            MsgpackError::Decode(e) => write!(f, "unexpected MessagePack data: {e}"),
            MsgpackError::Encode(e) => write!(f, "data does not encode as MessagePack: {e}"),
            MsgpackError::Send(e) => e.fmt(f),
        }
    }
}

/// No `source`: each variant's text already holds the error it wraps (as
/// [`DataError`](crate::app::DataError)'s does).
impl std::error::Error for MsgpackError {}

impl MsgpackError {
    /// The machine-readable code a handler would answer it with
    /// (`req.reply_err(e.code(), &e.to_string())`): `bad_request`, or the
    /// send error's own [`Error::code`].
    pub fn code(&self) -> &'static str {
        match self {
            MsgpackError::NotBinary | MsgpackError::Decode(_) | MsgpackError::Encode(_) => {
                ErrorCode::BadRequest.as_str()
            }
            MsgpackError::Send(e) => e.code(),
        }
    }
}

impl From<Error> for MsgpackError {
    fn from(e: Error) -> MsgpackError {
        MsgpackError::Send(e)
    }
}

/// Encodes `value` as this crate's MessagePack payloads are: structs as maps
/// with their field names (not rmp-serde's default positional arrays), so
/// that decoders in other languages (`@msgpack/msgpack` in JavaScript,
/// Python's `msgpack`) read objects with named fields, and a field added to
/// a struct does not shift the others; and sequences of `u8` (`Vec<u8>`,
/// `&[u8]`) as MessagePack `bin`, which those decoders read as bytes
/// (`Uint8Array`, `bytes`) and which takes one byte per byte where an array
/// of integers takes up to two. Decoding reads `bin` back into a `Vec<u8>`.
///
/// ```
/// #[derive(serde::Serialize)]
/// struct Hi { a: u8 }
/// // fixmap of 1, fixstr "a", positive fixint 1.
/// assert_eq!(emitws::app::msgpack::encode(&Hi { a: 1 })?, [0x81, 0xa1, b'a', 0x01]);
/// assert_eq!(emitws::app::msgpack::encode(&vec![7u8, 255])?, [0xc4, 2, 7, 255]);
/// # Ok::<(), rmp_serde::encode::Error>(())
/// ```
///
/// # Errors
///
/// The value's `Serialize` failing.
pub fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, rmp_serde::encode::Error> {
    let mut out = Vec::new();
    let mut serializer =
        rmp_serde::Serializer::new(&mut out).with_struct_map().with_bytes(rmp_serde::config::BytesMode::ForceIterables);
    value.serialize(&mut serializer)?;
    Ok(out)
}

/// Decodes a MessagePack payload as a `T`, borrowing from `bytes` where `T`
/// does (`&str`, `&[u8]`).
///
/// # Errors
///
/// [`MsgpackError::Decode`] if the bytes are not MessagePack or not a `T`.
pub fn decode<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, MsgpackError> {
    rmp_serde::from_slice(bytes).map_err(MsgpackError::Decode)
}

impl<'a> Request<'a> {
    /// The binary payload decoded from MessagePack as a `T`.
    ///
    /// ```
    /// use emitws::app::App;
    /// #[derive(serde::Deserialize)]
    /// struct Move { x: i32, y: i32 }
    ///
    /// let mut app = App::new();
    /// app.on("/move", |req| match req.msgpack::<Move>() {
    ///     Ok(Move { x, y }) => req.reply_msgpack(&(x + y)),
    ///     Err(e) => req.reply_err(e.code(), &e.to_string()),
    /// });
    /// ```
    ///
    /// # Errors
    ///
    /// [`MsgpackError::NotBinary`] for a JSON envelope,
    /// [`MsgpackError::Decode`] for bytes that are not a `T` in MessagePack.
    pub fn msgpack<T: DeserializeOwned>(&self) -> Result<T, MsgpackError> {
        self.msgpack_borrowed()
    }

    /// [`msgpack`](Self::msgpack) borrowing from the received frame where
    /// `T` does: a `&str` or `&[u8]` field points into the payload, without
    /// a copy (MessagePack strings have no escapes, so a borrowed `&str`
    /// always reads).
    ///
    /// # Errors
    ///
    /// Those of [`msgpack`](Self::msgpack).
    pub fn msgpack_borrowed<T: Deserialize<'a>>(&self) -> Result<T, MsgpackError> {
        decode(self.binary.ok_or(MsgpackError::NotBinary)?)
    }

    /// The payload typed, or `None` after replying `bad_request` (to a
    /// request) or emitting `@error` (to an event) with the reason, as
    /// [`expect_data`](Self::expect_data) does for JSON.
    pub fn expect_msgpack<T: DeserializeOwned>(&mut self) -> Option<T> {
        let value = self.msgpack();
        self.or_bad_request(value)
    }

    /// Replies with `value` in MessagePack, as [`reply_binary`](Self::reply_binary)
    /// sends bytes (nothing happens for an event, or a second time). A value
    /// that does not encode is answered `internal`, with why.
    pub fn reply_msgpack<T: Serialize + ?Sized>(&mut self, value: &T) {
        if !self.is_request() || self.replied() {
            return;
        }
        match encode(value) {
            Ok(bytes) => self.reply_binary(&bytes),
            Err(e) => self.reply_err(ErrorCode::Internal.as_str(), &format!("the reply does not encode: {e}")),
        }
    }

    /// Sends an event to this socket with `value` in MessagePack, as
    /// [`emit_binary`](Self::emit_binary) sends bytes.
    ///
    /// # Errors
    ///
    /// [`MsgpackError::Encode`], or [`MsgpackError::Send`] for an event name
    /// a binary envelope cannot carry; nothing is sent.
    pub fn emit_msgpack<T: Serialize + ?Sized>(&mut self, event: &str, value: &T) -> Result<(), MsgpackError> {
        let bytes = encode(value).map_err(MsgpackError::Encode)?;
        Ok(self.emit_binary(event, &bytes)?)
    }

    /// Broadcasts an event with `value` in MessagePack (encoded once), as
    /// [`broadcast_binary`](Self::broadcast_binary) does bytes.
    ///
    /// # Errors
    ///
    /// Those of [`emit_msgpack`](Self::emit_msgpack); nothing is sent.
    pub fn broadcast_msgpack<T: Serialize + ?Sized>(
        &mut self,
        event: &str,
        value: &T,
        opts: BroadcastOpts,
    ) -> Result<(), MsgpackError> {
        let bytes = encode(value).map_err(MsgpackError::Encode)?;
        Ok(self.broadcast_binary(event, &bytes, opts)?)
    }
}

impl AppHandle {
    /// Broadcasts an event with `value` in MessagePack (encoded once), as
    /// [`broadcast_binary`](Self::broadcast_binary) does bytes: on every
    /// node of a cluster unless `opts` is local, `{"base64": …}` to
    /// `emitws.v1` sockets.
    ///
    /// ```no_run
    /// # fn demo(app: &emitws::app::AppHandle) -> Result<(), emitws::app::msgpack::MsgpackError> {
    /// use emitws::app::BroadcastOpts;
    /// #[derive(serde::Serialize)]
    /// struct Score { team: &'static str, points: u32 }
    /// app.broadcast_msgpack("/score", &Score { team: "blue", points: 3 }, BroadcastOpts::to("#match"))?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// [`MsgpackError::Encode`], or [`MsgpackError::Send`] for an event name
    /// a binary envelope cannot carry; nothing is sent.
    pub fn broadcast_msgpack<T: Serialize + ?Sized>(
        &self,
        event: &str,
        value: &T,
        opts: BroadcastOpts,
    ) -> Result<(), MsgpackError> {
        let bytes = encode(value).map_err(MsgpackError::Encode)?;
        Ok(self.broadcast_binary(event, &bytes, opts)?)
    }
}

impl ReplyHandle {
    /// Replies with `value` in MessagePack, as [`reply_binary`](Self::reply_binary)
    /// does bytes. A value that does not encode is answered `internal`, with why.
    ///
    /// ```
    /// use emitws::app::App;
    /// let mut app = App::new();
    /// app.on("/report", |req| {
    ///     let reply = req.defer();
    ///     std::thread::spawn(move || reply.reply_msgpack(&vec!["done", "in the background"]));
    /// });
    /// ```
    pub fn reply_msgpack<T: Serialize + ?Sized>(self, value: &T) {
        match encode(value) {
            Ok(bytes) => self.reply_binary(&bytes),
            Err(e) => self.reply_err(ErrorCode::Internal.as_str(), &format!("the reply does not encode: {e}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Sample {
        name: String,
        bytes: Vec<u8>,
        maybe: Option<u16>,
    }

    #[test]
    fn structs_are_maps_and_byte_vectors_are_bin_and_both_read_back() {
        let sample = Sample { name: "é".into(), bytes: vec![0, 255], maybe: None };
        let bytes = encode(&sample).unwrap();
        // fixmap 3; "name" → fixstr 2 (C3 A9); "bytes" → bin8 2; "maybe" → nil.
        let mut expected = vec![0x83, 0xa4];
        expected.extend_from_slice(b"name");
        expected.extend_from_slice(&[0xa2, 0xc3, 0xa9, 0xa5]);
        expected.extend_from_slice(b"bytes");
        expected.extend_from_slice(&[0xc4, 0x02, 0x00, 0xff, 0xa5]);
        expected.extend_from_slice(b"maybe");
        expected.push(0xc0);
        assert_eq!(bytes, expected);
        assert_eq!(decode::<Sample>(&bytes).unwrap(), sample);
        // Positional structs (rmp-serde's default, other encoders' choice) read too.
        let positional = rmp_serde::to_vec(&sample).unwrap();
        assert_eq!(positional[0], 0x93, "a fixarray of 3");
        assert_eq!(decode::<Sample>(&positional).unwrap(), sample);
        // A borrowed `&[u8]` takes a `bin` whole, pointing into the payload.
        let bin = encode(&vec![1u8, 2, 3]).unwrap();
        let borrowed: &[u8] = decode(&bin).unwrap();
        assert_eq!((borrowed, borrowed.as_ptr()), (&[1, 2, 3][..], bin[2..].as_ptr()));
    }

    #[test]
    fn bad_bytes_are_decode_errors_with_a_code() {
        let e = decode::<Sample>(&[0xc1]).unwrap_err();
        assert!(matches!(e, MsgpackError::Decode(_)), "{e:?}");
        assert_eq!(e.code(), "bad_request");
        assert!(e.to_string().starts_with("unexpected MessagePack data: "), "{e}");
        assert!(decode::<Sample>(&[0x81, 0xa4, b'n', b'a', b'm', b'e']).is_err(), "truncated");
        assert_eq!(MsgpackError::Send(Error::BinaryName(String::new())).code(), "bad_request");
        assert!(MsgpackError::NotBinary.to_string().contains("got JSON data"));
    }
}
