//! The WebSocket client.
//!
//! [`connect`] (or [`ClientBuilder::connect`] for settings) opens a blocking
//! [`Client`] over TCP or, for `wss://`, TLS. The handshake and the frames go
//! through the same sans-IO core as the server ([`crate::proto`]): the
//! request is [`proto::handshake::client`](crate::proto::handshake::client),
//! server frames are checked by a [`Decoder`](crate::proto::Decoder) with
//! [`Role::Client`](crate::proto::Role::Client) (a masked server frame fails
//! the connection with 1002), and every frame we send is masked with a fresh
//! key. A server can also dial out from its own workers, without a thread per
//! connection: see [`ServerHandle::connect`](crate::runtime::ServerHandle::connect).
//!
//! ```no_run
//! use emitws::proto::{CloseCode, Message};
//!
//! let mut client = emitws::client::connect("ws://127.0.0.1:9001/chat")?;
//! client.send_text("hello")?;
//! if let Message::Text(reply) = client.recv()? {
//!     println!("got {reply}"); // borrowed from the client's read buffer
//! }
//! client.close(CloseCode::NORMAL, "bye")?;
//! # Ok::<(), emitws::client::ClientError>(())
//! ```

#[cfg(feature = "app")]
pub mod app;
mod blocking;
#[cfg(feature = "msgpack")]
pub mod msgpack;
mod socket;

pub use crate::dial::{ClientBuilder, ClientError, Url, UrlError};
pub use blocking::{Client, Incoming};

use crate::dial::{mask_rng, start_upgrade};
use crate::proto::handshake::client::MAX_REFUSAL_BODY;

/// Opens a connection with the default settings (see [`ClientBuilder`]).
pub fn connect(url: &str) -> Result<Client, ClientError> {
    ClientBuilder::new().connect(url)
}

// The builder is shared with the runtime's dialing (crate::dial, below both);
// connecting with it from the calling thread is the blocking client's part.
impl ClientBuilder {
    /// Connects to a `ws://` or `wss://` URL and completes the handshake.
    pub fn connect(&self, url: &str) -> Result<Client, ClientError> {
        Client::connect(&Url::parse(url)?, self)
    }
}
