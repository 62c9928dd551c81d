//! One port for an axum app and emitws (feature `axum`): axum serves its
//! routes, and the routes given to emitws hand their connection over to the
//! emitws workers, which answer the upgrade themselves and own the socket
//! from then on.
//!
//! ```text
//!  Listener ──accept──► hyper (axum's Router) ──/api/…──► axum handlers
//!   (each stream                    │
//!    records what                   └──/ws──► route(): the socket and the bytes
//!    hyper reads)                              hyper read ──► ServerHandle::adopt ──► a worker
//! ```
//!
//! [`Listener`] accepts for `axum::serve` and wraps each connection in a
//! [`Stream`] that keeps the bytes hyper reads from it since its last
//! response. When a request reaches [`route`] (or a handler calling
//! [`Connection::hand_over`]), the socket itself is taken out of hyper's
//! hands, with those bytes (the request head and whatever followed it in
//! the same reads, a first message say), and given to
//! [`ServerHandle::adopt`]: the worker parses the request from them and runs
//! the very code a connection on its own port runs (limits, origins,
//! `on_upgrade` and the event layer's paths, middleware and identify hook,
//! metrics), then writes the 101 or the refusal on the socket. hyper sees
//! the end of the stream and lets go; nothing of the connection passes
//! through tokio again: the worker's `epoll` reads its file descriptor.
//!
//! The connections are plain TCP (to serve `wss://`, terminate TLS in
//! front). An HTTP/2 request cannot be handed over (505).
//!
//! ```no_run
//! use axum::{routing::get, Json, Router};
//! use emitws::app::App;
//! use emitws::runtime::Server;
//!
//! # async fn run() -> std::io::Result<()> {
//! let mut app = App::new();
//! app.on("/echo", |req| {
//!     let data = req.raw_data();
//!     req.reply(&data);
//! });
//! // The app's workers, without a port of their own.
//! let running = app.mount_with(Server::new())?;
//! let router = Router::new()
//!     .route("/api/health", get(|| async { Json(serde_json::json!({ "ok": true })) }))
//!     .route("/ws", emitws::axum::route(running.server().clone()));
//! let listener = emitws::axum::Listener::bind("127.0.0.1:3000").await?;
//! emitws::axum::serve(listener, router).await
//! # }
//! ```

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{ready, Context, Poll};

use ::axum::extract::connect_info::{Connected, IntoMakeServiceWithConnectInfo};
use ::axum::extract::{ConnectInfo, Request};
use ::axum::http::{header, StatusCode, Version};
use ::axum::middleware::AddExtension;
use ::axum::response::{IntoResponse, Response};
use ::axum::routing::MethodRouter;
use ::axum::serve::{IncomingStream, Serve};
use ::axum::Router;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::runtime::{AdoptError, ServerHandle};

/// The most bytes a [`Stream`] keeps of what hyper read since its last
/// response, by default: 64 KiB, room for the longest request head the
/// engine accepts by default (8 KiB) and the messages sent right behind it.
pub const DEFAULT_MAX_HANDOVER_BYTES: usize = 64 << 10;

/// A kept read buffer larger than this is given back after a response.
const KEPT_RECORD_CAPACITY: usize = 8 << 10;

/// Accepts connections for `axum::serve`, each in a [`Stream`] that can be
/// handed over to emitws. Accept errors are handled as axum's own
/// `TcpListener` handles them (retried; after one that is not about a
/// single connection, such as running out of file descriptors, a pause).
#[derive(Debug)]
pub struct Listener {
    inner: tokio::net::TcpListener,
    max_handover_bytes: usize,
}

impl Listener {
    /// Binds `addr`.
    ///
    /// # Errors
    ///
    /// The I/O error of resolving or binding `addr`.
    pub async fn bind(addr: impl tokio::net::ToSocketAddrs) -> io::Result<Listener> {
        Ok(Listener::from_tokio(tokio::net::TcpListener::bind(addr).await?))
    }

    /// Accepts on a listener bound elsewhere.
    pub fn from_tokio(inner: tokio::net::TcpListener) -> Listener {
        Listener { inner, max_handover_bytes: DEFAULT_MAX_HANDOVER_BYTES }
    }

    /// The most bytes each connection keeps of what hyper read since its
    /// last response (default [`DEFAULT_MAX_HANDOVER_BYTES`]): a request
    /// whose head and following bytes came past it cannot be handed over
    /// (431). Every byte of an axum request is copied once into this record,
    /// up to this size, so a smaller one costs plain HTTP traffic less.
    pub fn max_handover_bytes(mut self, bytes: usize) -> Listener {
        self.max_handover_bytes = bytes;
        self
    }

    /// The bound address.
    ///
    /// # Errors
    ///
    /// The I/O error of asking the socket.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }
}

impl ::axum::serve::Listener for Listener {
    type Io = Stream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Stream, SocketAddr) {
        let (stream, peer) = ::axum::serve::Listener::accept(&mut self.inner).await;
        let tap = Tap { stream: Some(stream), record: Vec::new(), overflowed: false, limit: self.max_handover_bytes };
        (Stream { tap: Arc::new(Mutex::new(tap)), peer }, peer)
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }
}

/// A connection as hyper reads and writes it: the TCP stream, and the bytes
/// read from it since the last response, until it is handed over; then an
/// ended stream (reads see its end, writes go nowhere), so that hyper lets go.
#[derive(Debug)]
pub struct Stream {
    tap: Arc<Mutex<Tap>>,
    peer: SocketAddr,
}

#[derive(Debug)]
struct Tap {
    /// `None` once handed over.
    stream: Option<TcpStream>,
    /// What hyper read since it last wrote: the current request, from its start.
    record: Vec<u8>,
    /// More than `limit` bytes came since the last response.
    overflowed: bool,
    limit: usize,
}

impl Tap {
    /// hyper answers: what it read so far was that request's.
    fn responding(&mut self) {
        if self.record.capacity() > KEPT_RECORD_CAPACITY {
            self.record = Vec::new();
        }
        self.record.clear();
        self.overflowed = false;
    }
}

fn lock(tap: &Mutex<Tap>) -> MutexGuard<'_, Tap> {
    tap.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl AsyncRead for Stream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let mut tap = lock(&self.tap);
        let Tap { stream, record, overflowed, limit } = &mut *tap;
        // Handed over: the end of the stream, for hyper.
        let Some(stream) = stream.as_mut() else { return Poll::Ready(Ok(())) };
        let before = buf.filled().len();
        ready!(Pin::new(stream).poll_read(cx, buf))?;
        let read = &buf.filled()[before..];
        if !*overflowed {
            if record.len() + read.len() > *limit {
                *overflowed = true;
                record.clear();
            } else {
                record.extend_from_slice(read);
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Stream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let mut tap = lock(&self.tap);
        tap.responding();
        match tap.stream.as_mut() {
            Some(stream) => Pin::new(stream).poll_write(cx, buf),
            None => Poll::Ready(Ok(buf.len())),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let mut tap = lock(&self.tap);
        tap.responding();
        match tap.stream.as_mut() {
            Some(stream) => Pin::new(stream).poll_write_vectored(cx, bufs),
            None => Poll::Ready(Ok(bufs.iter().map(|buf| buf.len()).sum())),
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match lock(&self.tap).stream.as_mut() {
            Some(stream) => Pin::new(stream).poll_flush(cx),
            None => Poll::Ready(Ok(())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match lock(&self.tap).stream.as_mut() {
            Some(stream) => Pin::new(stream).poll_shutdown(cx),
            // The socket is the worker's now: no FIN from here.
            None => Poll::Ready(Ok(())),
        }
    }
}

/// The connection a request came on, for handlers: the connect info of
/// [`Listener`]'s connections (`ConnectInfo<Connection>`, which [`serve`]
/// installs).
#[derive(Clone, Debug)]
pub struct Connection {
    tap: Arc<Mutex<Tap>>,
    peer: SocketAddr,
}

impl Connected<IncomingStream<'_, Listener>> for Connection {
    fn connect_info(stream: IncomingStream<'_, Listener>) -> Connection {
        let io = stream.io();
        Connection { tap: io.tap.clone(), peer: io.peer }
    }
}

impl Connection {
    /// The client's address.
    pub fn peer_addr(&self) -> SocketAddr {
        self.peer
    }

    /// Hands this connection over to `server`, which then answers `request`
    /// (the request hyper just read on it) from the bytes hyper read, and
    /// owns the socket: see [`ServerHandle::adopt`]. Once it succeeded,
    /// whatever the handler returns is never written.
    ///
    /// # Errors
    ///
    /// A [`HandOverError`] (which is a response: return it): the connection
    /// stays hyper's then, except after [`HandOverError::Io`].
    pub fn hand_over<B>(&self, request: &::axum::http::Request<B>, server: &ServerHandle) -> Result<(), HandOverError> {
        if !matches!(request.version(), Version::HTTP_10 | Version::HTTP_11) {
            return Err(HandOverError::NotHttp1(request.version()));
        }
        let mut tap = lock(&self.tap);
        if tap.overflowed {
            return Err(HandOverError::TooLong(tap.limit));
        }
        // The record must start with this request: hyper may have read
        // (pipelined) requests it has not answered yet, whose bytes would
        // come first and belong to hyper.
        let line = format!("{} {} ", request.method(), request.uri());
        if !tap.record.starts_with(line.as_bytes()) {
            return Err(HandOverError::NotFirst);
        }
        let Some(stream) = tap.stream.take() else { return Err(HandOverError::HandedOver) };
        let stream = stream.into_std().map_err(HandOverError::Io)?;
        let received = std::mem::take(&mut tap.record);
        match server.adopt(stream, &received) {
            Ok(()) => Ok(()),
            Err(AdoptError::Stopping(stream)) => {
                // Back to hyper, which answers the 503 (within a runtime,
                // as a handler is: outside one, `from_std` would panic).
                if tokio::runtime::Handle::try_current().is_ok() {
                    tap.stream = TcpStream::from_std(stream).ok();
                }
                tap.record = received;
                Err(HandOverError::Stopping)
            }
            Err(AdoptError::Io(e)) => Err(HandOverError::Io(e)),
        }
    }
}

/// Why [`Connection::hand_over`] did not hand a connection over. As a
/// response: its status (below) and the message as text.
#[derive(Debug)]
#[non_exhaustive]
pub enum HandOverError {
    /// The route is served without [`Listener`]'s connect info (500): serve
    /// the router with [`serve`], or `axum::serve` with a [`Listener`] and
    /// `into_make_service_with_connect_info::<Connection>()`.
    NotMounted,
    /// The request came over this HTTP version, not HTTP/1 (505).
    NotHttp1(Version),
    /// hyper read more than this many bytes since its last response (431):
    /// see [`Listener::max_handover_bytes`].
    TooLong(usize),
    /// hyper had read other requests on the connection before this one, and
    /// not answered them yet (pipelining; 400).
    NotFirst,
    /// The connection was handed over already (500).
    HandedOver,
    /// The server is draining or shutting down (503).
    Stopping,
    /// The socket failed while being taken out of tokio's hands (500): it is
    /// closed.
    Io(io::Error),
}

impl HandOverError {
    /// The HTTP status this refusal answers with.
    pub fn status(&self) -> StatusCode {
        match self {
            HandOverError::NotMounted | HandOverError::HandedOver | HandOverError::Io(_) => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
            HandOverError::NotHttp1(_) => StatusCode::HTTP_VERSION_NOT_SUPPORTED,
            HandOverError::TooLong(_) => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            HandOverError::NotFirst => StatusCode::BAD_REQUEST,
            HandOverError::Stopping => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

impl fmt::Display for HandOverError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HandOverError::NotMounted => f.write_str(
                "this route hands connections to emitws, and needs them accepted by emitws::axum::Listener and \
                 served with emitws::axum::serve (or into_make_service_with_connect_info::<emitws::axum::Connection>())",
            ),
            HandOverError::NotHttp1(version) => {
                write!(f, "a WebSocket upgrade is an HTTP/1.1 request, and this one came over {version:?}")
            }
            HandOverError::TooLong(limit) => {
                write!(f, "the request and what followed it are longer than the {limit} bytes a handover keeps")
            }
            HandOverError::NotFirst => {
                f.write_str("this request came behind others not yet answered on the connection (pipelined)")
            }
            HandOverError::HandedOver => f.write_str("the connection was already handed over"),
            HandOverError::Stopping => f.write_str("the WebSocket server is draining or shutting down"),
            HandOverError::Io(e) => write!(f, "taking the socket out of tokio failed: {e}"),
        }
    }
}

impl std::error::Error for HandOverError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            HandOverError::Io(e) => Some(e),
            _ => None,
        }
    }
}

impl IntoResponse for HandOverError {
    fn into_response(self) -> Response {
        (self.status(), self.to_string()).into_response()
    }
}

/// A route for axum that hands every request on it over to `server` (any
/// method: emitws answers a plain request as its own port would, with
/// `on_http` or 426). Mount it on the paths the emitws app serves, say
/// `.route("/ws", route(handle))`, or `.route("/chat/{room}", route(handle))`
/// for an app route `/chat/:room`.
///
/// The response hyper gets after a handover (101 for an upgrade, 200
/// otherwise, with no body) is never written: axum layers that log
/// responses see it, while the client gets the worker's answer, which may
/// be a refusal (403 for an origin not allowed, say).
pub fn route<S: Clone + Send + Sync + 'static>(server: ServerHandle) -> MethodRouter<S> {
    ::axum::routing::any(move |request: Request| {
        let answer = match request.extensions().get::<ConnectInfo<Connection>>() {
            Some(ConnectInfo(connection)) => connection.hand_over(&request, &server),
            None => Err(HandOverError::NotMounted),
        };
        async move {
            match answer {
                Ok(()) if request.headers().contains_key(header::UPGRADE) => {
                    StatusCode::SWITCHING_PROTOCOLS.into_response()
                }
                Ok(()) => StatusCode::OK.into_response(),
                Err(e) => e.into_response(),
            }
        }
    })
}

/// What [`serve`] returns: axum's server future over a [`Listener`].
pub type Serving =
    Serve<Listener, IntoMakeServiceWithConnectInfo<Router, Connection>, AddExtension<Router, ConnectInfo<Connection>>>;

/// Serves `router` on `listener`, with the connect info [`route`] needs:
/// `axum::serve(listener, router.into_make_service_with_connect_info::<Connection>())`.
/// Await it, or add a graceful shutdown to it as to any `axum::serve`.
pub fn serve(listener: Listener, router: Router) -> Serving {
    ::axum::serve(listener, router.into_make_service_with_connect_info::<Connection>())
}
