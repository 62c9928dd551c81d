//! The server runtime: one single-threaded mio event loop per worker thread.
//!
//! ```text
//!  listener(s) ──accept──► worker 0 ─┐  each worker: Poll + Slab<connection>
//!   (SO_REUSEPORT)         worker 1 ─┤  + timer wheel + one read buffer
//!                             ...    │  + a pool of write queues
//!  ServerHandle ──channel + Waker────┘  (send, broadcast, close, shutdown)
//! ```
//!
//! A [`Handler`] (cloned once per worker) sees connections through [`Conn`].
//! Messages arrive as slices borrowed from the worker's read buffer; sends are
//! queued and written once per loop turn, with `writev`.

mod adopt;
mod conn;
mod conns;
mod handle;
mod health;
mod listen;
pub(crate) mod logs;
mod outbuf;
mod settings;
mod timer;
mod worker;

use std::any::Any;
use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;

pub use adopt::AdoptError;
pub use conn::{Conn, SendStatus};
pub use conns::Conns;
pub use handle::{ConnId, Drain, DrainError, ServerHandle, SharedFrame, Stats, DRAIN_CLOSE_CODE, MAX_REDIRECT_LEN};
pub use settings::{AcceptMode, BackpressurePolicy, Keepalive, OriginCheck, OriginPolicy, Settings};

use crate::proto::deflate::DeflateConfig;
use crate::proto::handshake::server::HttpRequest;
use crate::proto::{CloseCode, CloseReason, Message};

/// The application's side of a server: callbacks for each connection event.
///
/// Each worker thread gets its own clone, so a handler may keep per-worker
/// state without locks; share state across workers with `Arc`.
///
/// ```no_run
/// use emitws::runtime::{Conn, Handler, Server};
/// use emitws::proto::Message;
///
/// #[derive(Clone)]
/// struct Echo;
///
/// impl Handler for Echo {
///     type Data = ();
///     fn on_message(&mut self, conn: &mut Conn<'_, ()>, message: Message<'_>) {
///         match message {
///             Message::Text(text) => conn.send_text(text),
///             Message::Binary(bytes) => conn.send_binary(bytes),
///         };
///     }
/// }
///
/// let server = Server::new().start("127.0.0.1:9001", Echo)?;
/// server.join();
/// # Ok::<(), std::io::Error>(())
/// ```
pub trait Handler: Clone + Send + 'static {
    /// Per-connection state, created by [`on_upgrade`](Self::on_upgrade).
    type Data: Default + 'static;

    /// Decides on a valid upgrade request: accept (with data and, optionally,
    /// one of the offered subprotocols) or reject with an HTTP status.
    /// The default accepts with `Data::default()` and no subprotocol.
    fn on_upgrade(&mut self, request: &UpgradeRequest<'_>) -> Result<Accept<Self::Data>, Reject> {
        let _ = request;
        Ok(Accept::default())
    }

    /// The connection is open; sends are possible from here on.
    fn on_open(&mut self, conn: &mut Conn<'_, Self::Data>) {
        let _ = conn;
    }

    /// A complete message arrived. Its bytes are borrowed from the read buffer.
    fn on_message(&mut self, conn: &mut Conn<'_, Self::Data>, message: Message<'_>);

    /// Everything queued after a [`SendStatus::Buffered`] send has been written.
    fn on_drain(&mut self, conn: &mut Conn<'_, Self::Data>) {
        let _ = conn;
    }

    /// The connection closed, for `reason`: the peer's close frame, a
    /// protocol error, a timeout, an I/O error… ([`CloseReason::code`] gives
    /// the close code that applies: the peer's, the one the server failed
    /// the connection with, or 1006 when it just dropped).
    /// Called exactly once for every connection that was opened.
    fn on_close(&mut self, conn: &mut Conn<'_, Self::Data>, reason: &CloseReason) {
        let _ = (conn, reason);
    }

    /// An outgoing connection ([`ServerHandle::connect`]) failed before it
    /// opened: refused, timed out, or the server answered badly. Its data
    /// comes back with the reason. The default drops both.
    fn on_connect_error(&mut self, data: Self::Data, error: crate::dial::ClientError) {
        let _ = (data, error);
    }

    /// A plain HTTP request (not an upgrade). `None`, the default, answers
    /// 426 Upgrade Required.
    fn on_http(&mut self, request: &HttpRequest<'_>) -> Option<HttpResponse> {
        let _ = request;
        None
    }

    /// A pong arrived: the answer to a [`Conn::ping`] (its payload echoed),
    /// or one the peer sent unasked.
    fn on_pong(&mut self, conn: &mut Conn<'_, Self::Data>, payload: &[u8]) {
        let _ = (conn, payload);
    }

    /// A message posted to this worker with [`ServerHandle::notify`].
    fn on_notify(&mut self, conns: &mut Conns<'_, Self::Data>, message: Box<dyn Any + Send>) {
        let _ = (conns, message);
    }

    /// Whether `conn` still has work under way that a graceful shutdown
    /// should let finish before it closes the connection with 1001 (the
    /// event layer's deferred replies: a reply cannot follow a close
    /// frame). Asked when the shutdown begins and then every loop turn,
    /// until it says no or [`Settings::reply_grace`] has passed. The
    /// default: no work under way.
    fn pending_work(&mut self, conn: &mut Conn<'_, Self::Data>) -> bool {
        let _ = conn;
        false
    }

    /// Called once per loop turn, after input, commands and timers, before
    /// the turn's writes: the place for work batched over a turn and for
    /// application timers. Returns how long the loop may sleep before the
    /// next call (`None`, the default: until something else wakes it).
    fn on_turn(&mut self, conns: &mut Conns<'_, Self::Data>) -> Option<Duration> {
        let _ = conns;
        None
    }
}

/// A valid upgrade request, as shown to [`Handler::on_upgrade`].
#[derive(Debug)]
pub struct UpgradeRequest<'a> {
    pub(crate) request: &'a HttpRequest<'a>,
    pub(crate) upgrade: &'a crate::proto::handshake::server::Upgrade<'a>,
    pub(crate) peer: Option<SocketAddr>,
}

impl<'a> UpgradeRequest<'a> {
    /// The request path, without the query.
    pub fn path(&self) -> &'a str {
        self.request.path()
    }

    /// The query string, if any (not decoded).
    pub fn query(&self) -> Option<&'a str> {
        self.request.query()
    }

    /// The first value of a header (case-insensitive name).
    pub fn header(&self, name: &str) -> Option<&'a [u8]> {
        self.request.header(name)
    }

    /// The whole request, with every header.
    pub fn request(&self) -> &HttpRequest<'a> {
        self.request
    }

    /// The subprotocols the client offered, in its order of preference.
    pub fn protocols(&self) -> impl Iterator<Item = &'a str> + '_ {
        self.upgrade.protocols()
    }

    /// The client's address.
    pub fn peer_addr(&self) -> Option<SocketAddr> {
        self.peer
    }
}

/// Acceptance of an upgrade: the connection's data and the chosen subprotocol.
#[derive(Debug, Default)]
pub struct Accept<D> {
    pub(crate) data: D,
    pub(crate) protocol: Option<String>,
}

impl<D> Accept<D> {
    /// Accepts with this per-connection data.
    pub fn new(data: D) -> Accept<D> {
        Accept { data, protocol: None }
    }

    /// Selects a subprotocol. It must be one the client offered; a protocol the
    /// client did not offer is left out of the response.
    pub fn protocol(mut self, protocol: impl Into<String>) -> Accept<D> {
        self.protocol = Some(protocol.into());
        self
    }
}

/// Refusal of an upgrade: an HTTP status and a short body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reject {
    /// The HTTP status, such as 401, 403 or 404.
    pub status: u16,
    /// The response body.
    pub body: String,
}

impl Reject {
    /// A refusal with this status and its standard reason phrase as the body.
    pub fn status(status: u16) -> Reject {
        Reject { status, body: crate::proto::handshake::server::reason_phrase(status).to_string() }
    }
}

/// A response to a plain HTTP request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpResponse {
    /// The status code.
    pub status: u16,
    /// Extra headers (Content-Length and Connection are added).
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// A response with a status, a content type and a body.
    pub fn new(status: u16, content_type: &str, body: impl Into<Vec<u8>>) -> HttpResponse {
        HttpResponse { status, headers: vec![("Content-Type".into(), content_type.into())], body: body.into() }
    }
}

/// Configures and starts a server. Every setting has a default; see [`Settings`].
///
/// ```no_run
/// # #[derive(Clone)] struct Echo;
/// # impl emitws::runtime::Handler for Echo { type Data = ();
/// #   fn on_message(&mut self, _: &mut emitws::runtime::Conn<'_, ()>, _: emitws::proto::Message<'_>) {} }
/// use std::time::Duration;
/// use emitws::runtime::Server;
/// let server = Server::new()
///     .workers(2)
///     .max_message_size(1 << 20)
///     .handshake_timeout(Duration::from_secs(2))
///     .start("127.0.0.1:0", Echo)?;
/// println!("listening on {}", server.local_addr());
/// server.shutdown();
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Clone, Debug, Default)]
pub struct Server {
    settings: Settings,
}

impl Server {
    /// A server with default settings.
    pub fn new() -> Server {
        Server::default()
    }

    /// A server with these settings.
    pub fn with_settings(settings: Settings) -> Server {
        Server { settings }
    }

    /// The settings so far.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// The registry the server's workers will count into: serve it (see
    /// [`Metrics::http_response`](crate::metrics::Metrics::http_response)) or
    /// read it with [`Metrics::snapshot`](crate::metrics::Metrics::snapshot).
    pub fn metrics(&self) -> crate::metrics::Metrics {
        self.settings.metrics.clone()
    }

    /// Counts into `metrics` instead of the server's own registry.
    pub fn with_metrics(mut self, metrics: crate::metrics::Metrics) -> Server {
        self.settings.metrics = metrics;
        self
    }

    /// Worker threads (default: the number of cores; at least 1).
    pub fn workers(mut self, workers: usize) -> Server {
        self.settings.workers = workers.max(1);
        self
    }

    /// How connections reach workers (default [`AcceptMode::ReusePort`]).
    pub fn accept_mode(mut self, mode: AcceptMode) -> Server {
        self.settings.accept_mode = mode;
        self
    }

    /// The largest message accepted (default 16 MiB); larger ones close with 1009.
    pub fn max_message_size(mut self, bytes: u64) -> Server {
        self.settings.limits.max_message_size = bytes;
        self
    }

    /// The largest frame accepted (default 16 MiB); larger ones close with 1009.
    pub fn max_frame_size(mut self, bytes: u64) -> Server {
        self.settings.limits.max_frame_size = bytes;
        self
    }

    /// The most fragments per message (default 131,072); more close with 1009.
    pub fn max_fragments(mut self, fragments: u32) -> Server {
        self.settings.limits.max_fragments = fragments;
        self
    }

    /// The largest upgrade request head (default 8 KiB); larger ones get 431.
    pub fn max_request_bytes(mut self, bytes: usize) -> Server {
        self.settings.request_limits.max_bytes = bytes;
        self
    }

    /// The most request headers (default 64); more get 431.
    pub fn max_headers(mut self, headers: usize) -> Server {
        self.settings.request_limits.max_headers = headers;
        self
    }

    /// Time to complete the upgrade request (default 5 s).
    pub fn handshake_timeout(mut self, timeout: Duration) -> Server {
        self.settings.handshake_timeout = timeout;
        self
    }

    /// Keepalive pings, or `None` to turn them off (default: ping after 30 s
    /// of silence, close with 1001 after 30 s more).
    pub fn keepalive(mut self, keepalive: Option<Keepalive>) -> Server {
        self.settings.keepalive = keepalive;
        self
    }

    /// The close code a keepalive timeout sends, keeping the keepalive's
    /// times (nothing changes with keepalive off). For a layer on top that
    /// has its own code for it, as the event layer's 4408.
    pub fn keepalive_close_code(mut self, code: CloseCode) -> Server {
        if let Some(keepalive) = self.settings.keepalive.as_mut() {
            keepalive.close_code = code;
        }
        self
    }

    /// Time allowed for the close handshake (default 5 s).
    pub fn close_timeout(mut self, timeout: Duration) -> Server {
        self.settings.close_timeout = timeout;
        self
    }

    /// Outbound bytes a connection may queue (default 1 MiB), and what a send
    /// past that does (default [`BackpressurePolicy::Close`]).
    pub fn backpressure(mut self, max_buffered: usize, policy: BackpressurePolicy) -> Server {
        self.settings.max_buffered = max_buffered;
        self.settings.backpressure = policy;
        self
    }

    /// The most open connections in all (default unlimited).
    pub fn max_connections(mut self, max: usize) -> Server {
        self.settings.max_connections = Some(max);
        self
    }

    /// The most open connections per client IP (default unlimited).
    pub fn max_connections_per_ip(mut self, max: usize) -> Server {
        self.settings.max_connections_per_ip = Some(max);
        self
    }

    /// How long a graceful shutdown waits (default 10 s).
    pub fn shutdown_timeout(mut self, timeout: Duration) -> Server {
        self.settings.shutdown_timeout = timeout;
        self
    }

    /// How long a graceful shutdown lets connections finish work under way
    /// ([`Handler::pending_work`]) before closing them (default 5 s).
    pub fn reply_grace(mut self, grace: Duration) -> Server {
        self.settings.reply_grace = grace;
        self
    }

    /// Which origins may upgrade (default any); others get 403.
    pub fn origins(mut self, origins: OriginPolicy) -> Server {
        self.settings.origins = origins;
        self
    }

    /// Offers permessage-deflate (RFC 7692) with these settings, or `None`
    /// for no compression (the default: compression costs memory per
    /// connection and CPU per message, and pays off for larger, repetitive
    /// messages). See [`DeflateConfig`].
    /// Outgoing connections ([`ServerHandle::connect`]) take theirs from
    /// their [`ClientBuilder::deflate`](crate::client::ClientBuilder::deflate) instead.
    pub fn deflate(mut self, config: Option<DeflateConfig>) -> Server {
        self.settings.deflate = config;
        self
    }

    /// Serves `wss://`: every connection starts with a TLS handshake with
    /// this identity (see [`TlsAcceptor::from_pem_files`](crate::tls::TlsAcceptor::from_pem_files)).
    /// The handshake deadline covers the TLS handshake and the upgrade together.
    #[cfg(feature = "tls")]
    pub fn tls(mut self, acceptor: crate::tls::TlsAcceptor) -> Server {
        self.settings.tls = Some(acceptor);
        self
    }

    /// Writes each loop turn's plain-TCP connections with one io_uring
    /// submission instead of a `send` each (see
    /// [`Settings::io_uring_sends`]; off by default). Fan-out spends less
    /// CPU per delivery with it (docs/BENCHMARKS.md).
    #[cfg(all(feature = "io-uring", target_os = "linux"))]
    pub fn io_uring_sends(mut self, on: bool) -> Server {
        self.settings.io_uring_sends = on;
        self
    }

    /// Binds `addr`, starts the workers and returns at once.
    pub fn start<H: Handler>(self, addr: impl ToSocketAddrs, handler: H) -> io::Result<RunningServer> {
        let addr = addr
            .to_socket_addrs()?
            .next()
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no address to bind"))?;
        worker::start(self.settings, Some(addr), handler)
    }

    /// Starts workers that accept nothing: they only run outgoing
    /// connections opened with [`ServerHandle::connect`] (a client that
    /// drives many connections from one event loop, say).
    ///
    /// ```no_run
    /// # #[derive(Clone)] struct Feed;
    /// # impl emitws::runtime::Handler for Feed {
    /// #     type Data = ();
    /// #     fn on_message(&mut self, _: &mut emitws::runtime::Conn<'_, ()>, _: emitws::proto::Message<'_>) {}
    /// # }
    /// use emitws::client::ClientBuilder;
    /// let dialer = emitws::runtime::Server::new().workers(1).start_dialer(Feed)?;
    /// dialer.handle().connect("ws://127.0.0.1:9100/", &ClientBuilder::new(), ())?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn start_dialer<H: Handler>(self, handler: H) -> io::Result<RunningServer> {
        worker::start(self.settings, None, handler)
    }
}

/// A started server. Dropping it shuts the server down gracefully.
#[derive(Debug)]
pub struct RunningServer {
    pub(crate) handle: ServerHandle,
    pub(crate) local_addr: SocketAddr,
    pub(crate) threads: Vec<std::thread::JoinHandle<()>>,
}

impl RunningServer {
    /// The address the server listens on (useful after binding port 0);
    /// `0.0.0.0:0` for [`Server::start_dialer`].
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// A handle for sending, broadcasting and shutting down from any thread.
    pub fn handle(&self) -> ServerHandle {
        self.handle.clone()
    }

    /// Shuts down gracefully: stops accepting, closes every connection with
    /// 1001, waits up to the shutdown timeout, and returns when all workers exited.
    pub fn shutdown(mut self) {
        self.handle.shutdown();
        self.join_threads();
    }

    /// Waits until the server stops (after [`ServerHandle::shutdown`]).
    pub fn join(mut self) {
        self.join_threads();
    }

    fn join_threads(&mut self) {
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
        tracing::info!(addr = %self.local_addr, "stopped");
    }
}

impl Drop for RunningServer {
    fn drop(&mut self) {
        if !self.threads.is_empty() {
            self.handle.shutdown();
            self.join_threads();
        }
    }
}
