//! MessagePack data for the event client (feature `msgpack`): typed values
//! sent and read as the payload of `emitws.v2` binary envelopes, encoded as
//! the server's [`crate::app::msgpack`] encodes them (structs as maps with
//! field names, byte vectors as `bin`). PROTOCOL.md §10, "MessagePack
//! payloads (convention)": the wire is the binary envelopes', unchanged.
//!
//! The client must speak `emitws.v2` ([`AppOptions::binary`](super::app::AppOptions::binary)).
//!
//! ```no_run
//! use std::time::Duration;
//! use emitws::client::app::{AppClient, AppOptions};
//! #[derive(serde::Serialize)]
//! struct Say<'a> { room: &'a str, text: &'a str }
//! #[derive(serde::Deserialize, Debug)]
//! struct Said { id: u64, at_ms: u64 }
//! #[derive(serde::Deserialize, Debug)]
//! struct Message { from: String, text: String }
//!
//! let client = AppClient::connect("ws://127.0.0.1:9001/", AppOptions::default().binary(true))?;
//! client.on_msgpack("/message", |_, message: Result<Message, _>| println!("{message:?}"));
//! let said: Said = client.request_msgpack("/say", &Say { room: "lobby", text: "hi" }, Duration::from_secs(5))?;
//! client.emit_msgpack("/typing", &true)?;
//! # Ok::<(), emitws::client::msgpack::MsgpackError>(())
//! ```

use std::fmt;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::app::{AppClient, AppError, ListenerId, Payload};
use crate::app::msgpack::encode;

/// Why a MessagePack send or request failed, or a payload did not read.
#[derive(Debug)]
#[non_exhaustive]
pub enum MsgpackError {
    /// The send or the request failed: [`AppError::NotBinary`] for a client
    /// without [`AppOptions::binary`](super::app::AppOptions::binary), a
    /// timeout, the server's error reply ([`AppError::Remote`])…
    App(AppError),
    /// The reply (or event) carried JSON data, not a binary payload: the
    /// JSON value, as it came.
    NotBinary(serde_json::Value),
    /// The payload is not MessagePack, or not the type asked for.
    Decode(rmp_serde::decode::Error),
    /// The value does not encode as MessagePack (its `Serialize` failed);
    /// nothing was sent.
    Encode(rmp_serde::encode::Error),
}

impl fmt::Display for MsgpackError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MsgpackError::App(e) => e.fmt(f),
            MsgpackError::NotBinary(value) => write!(f, "expected a MessagePack binary payload, got JSON {value}"),
            MsgpackError::Decode(e) => write!(f, "unexpected MessagePack data: {e}"),
            MsgpackError::Encode(e) => write!(f, "data does not encode as MessagePack: {e}"),
        }
    }
}

/// No `source`: each variant's text already holds the error it wraps (as
/// [`DataError`](crate::app::DataError)'s does).
impl std::error::Error for MsgpackError {}

impl MsgpackError {
    /// The error code: the [`AppError`]'s, or `bad_request` for data that
    /// does not read or encode.
    pub fn code(&self) -> &str {
        match self {
            MsgpackError::App(e) => e.code(),
            MsgpackError::NotBinary(_) | MsgpackError::Decode(_) | MsgpackError::Encode(_) => "bad_request",
        }
    }
}

impl From<AppError> for MsgpackError {
    fn from(e: AppError) -> MsgpackError {
        MsgpackError::App(e)
    }
}

/// `bytes` decoded from MessagePack as a `T`.
fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, MsgpackError> {
    rmp_serde::from_slice(bytes).map_err(MsgpackError::Decode)
}

impl Payload {
    /// A binary reply's bytes decoded from MessagePack as a `T`.
    ///
    /// ```
    /// use emitws::client::app::Payload;
    /// // fixmap 1: "ok" → true.
    /// let reply = Payload::Binary(vec![0x81, 0xa2, b'o', b'k', 0xc3]);
    /// #[derive(serde::Deserialize)]
    /// struct Done { ok: bool }
    /// assert!(reply.msgpack::<Done>()?.ok);
    /// assert!(Payload::Json(serde_json::json!({ "ok": true })).msgpack::<Done>().is_err());
    /// # Ok::<(), emitws::client::msgpack::MsgpackError>(())
    /// ```
    ///
    /// # Errors
    ///
    /// [`MsgpackError::NotBinary`] for a JSON reply, [`MsgpackError::Decode`]
    /// for bytes that are not a `T` in MessagePack.
    pub fn msgpack<T: DeserializeOwned>(&self) -> Result<T, MsgpackError> {
        match self {
            Payload::Binary(bytes) => decode(bytes),
            Payload::Json(value) => Err(MsgpackError::NotBinary(value.clone())),
        }
    }
}

impl AppClient {
    /// Sends an event with `value` in MessagePack, as
    /// [`emit_binary`](Self::emit_binary) sends bytes.
    ///
    /// # Errors
    ///
    /// [`MsgpackError::Encode`], and those of [`emit_binary`](Self::emit_binary)
    /// as [`MsgpackError::App`].
    pub fn emit_msgpack<T: Serialize + ?Sized>(&self, event: &str, value: &T) -> Result<(), MsgpackError> {
        let bytes = encode(value).map_err(MsgpackError::Encode)?;
        Ok(self.emit_binary(event, &bytes)?)
    }

    /// Sends a request with `value` in MessagePack and waits for its reply,
    /// decoded from MessagePack as a `Resp`.
    ///
    /// # Errors
    ///
    /// [`MsgpackError::Encode`] (nothing is sent), those of
    /// [`request_binary`](Self::request_binary) as [`MsgpackError::App`]
    /// (the server's error reply is [`AppError::Remote`]), and those of
    /// [`Payload::msgpack`] for the reply.
    pub fn request_msgpack<Req: Serialize + ?Sized, Resp: DeserializeOwned>(
        &self,
        event: &str,
        value: &Req,
        timeout: Duration,
    ) -> Result<Resp, MsgpackError> {
        let bytes = encode(value).map_err(MsgpackError::Encode)?;
        self.request_binary(event, &bytes, timeout)?.msgpack()
    }

    /// Calls `listener(event, value)` for each binary `event` received, its
    /// payload decoded from MessagePack as a `T` (or why it is not one), as
    /// [`on_binary`](Self::on_binary) listeners get bytes.
    pub fn on_msgpack<T: DeserializeOwned>(
        &self,
        event: &str,
        listener: impl Fn(&str, Result<T, MsgpackError>) + Send + Sync + 'static,
    ) -> ListenerId {
        self.on_binary(event, move |event, bytes| listener(event, decode(bytes)))
    }
}
