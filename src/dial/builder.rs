//! The settings of a client connection, blocking or dialed by a server.

use std::fmt;
use std::time::Duration;

use crate::proto::deflate::DeflateConfig;
use crate::proto::handshake::server::RequestLimits;
use crate::proto::Limits;
#[cfg(feature = "tls")]
use crate::tls::TlsConnector;

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
#[derive(Clone)]
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

impl fmt::Debug for ClientBuilder {
    /// Header values are left out: they may carry credentials (an
    /// `Authorization` token, a session cookie).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let headers: Vec<(&str, &str)> = self.headers.iter().map(|(name, _)| (name.as_str(), "<redacted>")).collect();
        let mut out = f.debug_struct("ClientBuilder");
        out.field("timeout", &self.timeout)
            .field("close_timeout", &self.close_timeout)
            .field("protocols", &self.protocols)
            .field("headers", &headers)
            .field("origin", &self.origin)
            .field("deflate", &self.deflate)
            .field("limits", &self.limits)
            .field("response_limits", &self.response_limits);
        #[cfg(feature = "tls")]
        out.field("tls", &self.tls);
        out.finish()
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
}
