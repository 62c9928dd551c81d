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
mod error;
pub(crate) mod socket;
mod url;

use std::time::Duration;

pub use blocking::{Client, Incoming};
pub use error::ClientError;
pub use url::{Url, UrlError};

use crate::proto::deflate::{client_offer, DeflateConfig};
use crate::proto::handshake::client::{encode_key, Accepted, Offer, ResponseError, ResponseReader, UpgradeRequest};
use crate::proto::handshake::server::RequestLimits;
use crate::proto::{Limits, MaskRng};
#[cfg(feature = "tls")]
use crate::tls::TlsConnector;

/// Opens a connection with the default settings (see [`ClientBuilder`]).
pub fn connect(url: &str) -> Result<Client, ClientError> {
    ClientBuilder::new().connect(url)
}

/// Client settings; every one has a default.
///
/// ```no_run
/// use std::time::Duration;
/// use emitws::client::ClientBuilder;
/// use emitws::proto::deflate::DeflateConfig;
///
/// let client = ClientBuilder::new()
///     .timeout(Duration::from_secs(3))
///     .protocol("chat.v1")
///     .origin("https://example.com")
///     .header("Authorization", "Bearer 123")
///     .deflate(Some(DeflateConfig::default()))
///     .max_message_size(1 << 20)
///     .connect("wss://example.com/socket")?;
/// println!("subprotocol: {:?}", client.protocol());
/// # Ok::<(), emitws::client::ClientError>(())
/// ```
#[derive(Clone, Debug)]
pub struct ClientBuilder {
    pub(crate) timeout: Duration,
    pub(crate) close_timeout: Duration,
    pub(crate) protocols: Vec<String>,
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) origin: Option<String>,
    pub(crate) deflate: Option<DeflateConfig>,
    pub(crate) limits: Limits,
    pub(crate) response_limits: RequestLimits,
    #[cfg(feature = "tls")]
    pub(crate) tls: Option<TlsConnector>,
}

impl Default for ClientBuilder {
    fn default() -> Self {
        ClientBuilder {
            timeout: Duration::from_secs(10),
            close_timeout: Duration::from_secs(5),
            protocols: Vec::new(),
            headers: Vec::new(),
            origin: None,
            deflate: None,
            limits: Limits::default(),
            response_limits: RequestLimits::default(),
            #[cfg(feature = "tls")]
            tls: None,
        }
    }
}

impl ClientBuilder {
    /// The default settings.
    pub fn new() -> ClientBuilder {
        ClientBuilder::default()
    }

    /// Time for DNS, TCP connect, TLS and the upgrade together (default 10 s).
    pub fn timeout(mut self, timeout: Duration) -> ClientBuilder {
        self.timeout = timeout;
        self
    }

    /// Time the server has to answer our close frame and close TCP (default 5 s).
    pub fn close_timeout(mut self, timeout: Duration) -> ClientBuilder {
        self.close_timeout = timeout;
        self
    }

    /// Offers a subprotocol (call again for more, in order of preference).
    pub fn protocol(mut self, protocol: impl Into<String>) -> ClientBuilder {
        self.protocols.push(protocol.into());
        self
    }

    /// Adds a header to the upgrade request (authorization, cookies, …).
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> ClientBuilder {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Sends an `Origin` header (none by default).
    pub fn origin(mut self, origin: impl Into<String>) -> ClientBuilder {
        self.origin = Some(origin.into());
        self
    }

    /// Offers permessage-deflate with these settings, or `None` (the default)
    /// not to. The server may decline; messages shorter than `min_size` are
    /// sent uncompressed either way.
    pub fn deflate(mut self, config: Option<DeflateConfig>) -> ClientBuilder {
        self.deflate = config;
        self
    }

    /// The largest message accepted, after inflating (default 16 MiB); larger
    /// ones fail the connection with 1009.
    pub fn max_message_size(mut self, bytes: u64) -> ClientBuilder {
        self.limits.max_message_size = bytes;
        self
    }

    /// The largest frame accepted (default 16 MiB); larger ones fail with 1009.
    pub fn max_frame_size(mut self, bytes: u64) -> ClientBuilder {
        self.limits.max_frame_size = bytes;
        self
    }

    /// The most fragments per message (default 131,072); more fail with 1009.
    pub fn max_fragments(mut self, fragments: u32) -> ClientBuilder {
        self.limits.max_fragments = fragments;
        self
    }

    /// The largest response head (default 8 KiB) and most response headers
    /// (default 64) accepted.
    pub fn response_limits(mut self, limits: RequestLimits) -> ClientBuilder {
        self.response_limits = limits;
        self
    }

    /// The roots `wss://` trusts (default: [`TlsConnector::webpki_roots`],
    /// Mozilla's root program).
    #[cfg(feature = "tls")]
    pub fn tls(mut self, connector: TlsConnector) -> ClientBuilder {
        self.tls = Some(connector);
        self
    }

    /// Connects to a `ws://` or `wss://` URL and completes the handshake.
    pub fn connect(&self, url: &str) -> Result<Client, ClientError> {
        Client::connect(&Url::parse(url)?, self)
    }
}

/// One upgrade in progress, the same for the blocking client and the
/// runtime's outgoing connections: the request to send, then the response.
#[derive(Debug)]
pub(crate) struct Upgrade {
    key: String,
    /// The request head to send.
    pub request: Vec<u8>,
    reader: ResponseReader,
}

impl Upgrade {
    pub fn new(url: &Url, settings: &ClientBuilder) -> Result<Upgrade, ClientError> {
        let key = encode_key(random_bytes()?);
        let extensions = settings.deflate.as_ref().map(client_offer);
        let mut request = Vec::new();
        UpgradeRequest {
            host: &url.host_header(),
            target: url.target(),
            key: &key,
            origin: settings.origin.as_deref(),
            protocols: &settings.protocols,
            extensions: extensions.as_deref(),
            headers: &settings.headers,
        }
        .write(&mut request);
        Ok(Upgrade { key, request, reader: ResponseReader::default() })
    }

    /// Feeds response bytes; `Some(used)` once the head is complete.
    pub fn push(&mut self, input: &[u8], settings: &ClientBuilder) -> Result<Option<usize>, ClientError> {
        self.reader.push(input, &settings.response_limits).map_err(ClientError::Handshake)
    }

    /// Checks the complete head. A refusal comes back as
    /// [`ClientError::Status`] with an empty body, and the `Content-Length`
    /// if any, for the caller to read the body.
    pub fn finish(&self, settings: &ClientBuilder) -> Result<Accepted, (ClientError, Option<usize>)> {
        let response =
            self.reader.response(&settings.response_limits).map_err(|e| (ClientError::Handshake(e), None))?;
        let offer = Offer { key: &self.key, protocols: &settings.protocols, deflate: settings.deflate.as_ref() };
        response.validate(&offer).map_err(|e| match e {
            ResponseError::NotSwitching(status) => {
                (ClientError::Status { status, body: Vec::new() }, response.content_length())
            }
            e => (ClientError::Handshake(e), None),
        })
    }
}

/// The most of a refusal's body kept in [`ClientError::Status`].
pub(crate) const MAX_REFUSAL_BODY: usize = 64 << 10;

/// A masking-key generator seeded from the OS CSPRNG.
pub(crate) fn mask_rng() -> Result<MaskRng, ClientError> {
    Ok(MaskRng::from_seed(u64::from_ne_bytes(random_bytes()?)))
}

fn random_bytes<const N: usize>() -> Result<[u8; N], ClientError> {
    let mut bytes = [0; N];
    getrandom::getrandom(&mut bytes).map_err(|e| ClientError::Io(std::io::Error::other(e.to_string())))?;
    Ok(bytes)
}
