//! The event client: named events, requests with replies and server-to-client
//! RPC over the `emitws.v1` subprotocol, with reconnection.
//!
//! Envelopes are JSON arrays in text frames: `[0, event, data]` an event,
//! `[1, id, event, data]` a request (either way), `[2, id, data]` a reply,
//! `[3, id, {"code", "message"}]` an error reply. User events start with `/`;
//! names starting with `@` are system events, dispatched locally:
//! - `@status` (`{"status", "previous"}`): the client moved between the
//!   [`Status`]es IDLE → CONNECTING → AUTHENTICATING → READY, RECONNECTING
//!   after a loss or a failed attempt, OFFLINE for good;
//! - `@connection` (`{"reconnected": bool}`): a socket opened (the client is
//!   AUTHENTICATING until the server's `@ready`);
//! - `@ready` (the server's welcome, at least `{"socket", "user"}`): the
//!   server admitted the socket (after the challenge or the
//!   [`auth`](AppOptions::auth) request, if any); the client is READY and
//!   sends what waited. The first one fires before [`AppClient::connect`]
//!   (or [`AppClient::open`]) returns, so listeners added afterwards see
//!   reconnections;
//! - `@reconnect` (`{}`): a reconnection became READY;
//! - `@resumed` (the server's reply to `@resume`: `{"resumed", "socket",
//!   "rooms", "direct"}`): the outcome of resuming the session after a loss,
//!   before that connection's `@ready` (see [Resume](#resume) below);
//! - `@disconnect` (`{"code", "reason"}`): an open socket closed;
//! - `@reconnecting` (`{"attempt", "delay_ms"}`): before each reconnect
//!   attempt, with its number (from 1) and the delay before it;
//! - `@jump` (`{"url", "by"}`): the client moves to another server at once,
//!   no delay: `by` is `"jump"` for [`AppClient::jump`], `"drain"` when the
//!   server closed with 1012 and a URL to go to (a node being drained,
//!   PROTOCOL.md §6). Listeners, procedures and queued envelopes stay; the
//!   new URL is the one every later reconnect uses, and the session is
//!   resumed there;
//! - `@reconnect_failed` (`{"attempts", "reason"}`): the client gave up (no
//!   reconnect, `max_retries` used up, or the server said not to retry: a
//!   4xxx close but 4408 and 4001, or an HTTP 4xx refusal but 408 and 429,
//!   PROTOCOL.md §6) and is OFFLINE: queued and new envelopes fail at once
//!   with [`AppError::Offline`];
//! - `@error` (`{"code", "message"}`): a failed connection attempt
//!   (`connect_failed`), a refused auth request, queued events dropped
//!   (`offline`), invalid JSON from the server;
//! - `@any` receives every event that has no listener of its own.
//!
//! [`emit`](AppClient::emit) and [`request`](AppClient::request) made before
//! READY (while connecting, authenticating or reconnecting) wait in a
//! bounded queue and go out once READY, a request for at most its timeout.
//! Procedures (such as the `@challenge` of challenge-response auth) and
//! listeners can be set before connecting, with [`AppClient::new`], then
//! [`AppClient::open`]:
//!
//! ```no_run
//! use emitws::client::app::{AppClient, AppOptions};
//! use serde_json::json;
//!
//! let client = AppClient::new("ws://127.0.0.1:9001/", AppOptions::default())?;
//! client.register("@challenge", |data| Ok(json!(["signature of", data["challenge"]])));
//! client.on("@status", |_, change| println!("now {}", change["status"]));
//! client.open()?; // READY: the challenge was answered
//! # Ok::<(), emitws::client::app::AppError>(())
//! ```
//!
//! The connection runs on one event-loop thread of the engine's runtime
//! ([`Server::start_dialer`]), so sends from any thread never wait for the
//! network, and listeners and procedures run on that thread: keep them short,
//! and do not call the blocking [`AppClient::request`] from them (it returns
//! [`AppError::WouldBlock`]; use [`AppClient::request_nowait`]).
//!
//! ```no_run
//! use std::time::Duration;
//! use emitws::client::app::{AppClient, AppOptions};
//! use serde_json::json;
//!
//! let client = AppClient::connect("ws://127.0.0.1:9001/", AppOptions::default())?;
//! client.on("/chat/message", |_, data| println!("message: {data}"));
//! client.on("@disconnect", |_, why| println!("lost the connection: {why}"));
//! client.register("/client/version", |_| Ok(json!("1.0")));
//! client.emit("/chat/say", json!({"room": "lobby", "text": "hi"}))?;
//! let rooms = client.request("/chat/rooms", json!(null), Duration::from_secs(5))?;
//! let chat = client.ns("/chat");
//! chat.emit("/typing", json!(true))?; // sends /chat/typing
//! client.close();
//! # Ok::<(), emitws::client::app::AppError>(())
//! ```
//!
//! # Resume
//!
//! When the server keeps sessions (PROTOCOL.md §13), its `@ready` carries a
//! resume token, which the client keeps in memory (it is taken out of the
//! `@ready` data and [`welcome`](AppClient::welcome), and never printed).
//! After a loss that neither side meant (the network, the server going away
//! or being drained, a [`jump`](AppClient::jump)), the client reconnects with
//! `emitws_resume=1` added to its URL's query and sends `@resume` first
//! (after the [`auth`](AppOptions::auth) request, if any): the server gives
//! back the same socket id, rooms and values, and replays the broadcasts
//! missed in rooms with history, then the direct messages. The reply fires
//! `@resumed`, then `@ready` and `@reconnect` follow as after any reconnect.
//! A close by the application ([`close`](AppClient::close)) or a close that
//! ends the session on the server (a drop, a refusal, bad input) is not
//! resumed: the next connection is a new socket.
//!
//! For each room with history the client keeps the epoch and the highest
//! offset of the broadcasts it received, and drops a delivery it already
//! had (a replay may overlap what came live), so a listener sees each
//! broadcast once. [`recovered`](AppClient::recovered) says, after a resume,
//! whether a room's missed broadcasts all came; when they could not (the
//! session expired: `"resumed": false`, or the room's history no longer
//! reaches back), refetch that room from the application's own store.
//! Requests in flight at the loss still fail with [`AppError::Disconnected`]:
//! the server does not keep replies.
//!
//! ```no_run
//! use emitws::client::app::{AppClient, AppOptions};
//!
//! let client = AppClient::connect("ws://127.0.0.1:9001/chat?user=ann", AppOptions::default())?;
//! let me = client.clone();
//! client.on("@resumed", move |_, outcome| {
//!     if outcome["resumed"] != true {
//!         println!("a new socket {:?}: join the rooms again and refetch them", outcome["socket"]);
//!     } else if me.recovered("#lobby") != Some(true) {
//!         println!("#lobby missed messages that are gone: refetch it");
//!     }
//! });
//! println!("socket {:?}", client.socket_id());
//! # Ok::<(), emitws::client::app::AppError>(())
//! ```

mod resume;

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TryRecvError};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, RwLock, Weak};
use std::thread::{self, ThreadId};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::{mask_rng, ClientBuilder, ClientError};
use crate::app::CLOSE_TIMEOUT;
use crate::proto::{CloseCode, CloseReason, MaskRng, Message};
use crate::runtime::{Conn, ConnId, Conns, Handler, RunningServer, Server, ServerHandle, DRAIN_CLOSE_CODE};
use resume::{meta_url, not_resumed, resume_url, Positions};

/// The WebSocket-style state [`AppClient::ready_state`] gives.
pub use crate::app::ReadyState;
/// The subprotocol the event client asks for (the server's, [`crate::app::PROTOCOL`]).
pub use crate::app::PROTOCOL;
/// The subprotocol the event client asks for with [`AppOptions::binary`].
pub use crate::app::PROTOCOL_V2;

/// Whether the server's close `code` says "do not reconnect" (PROTOCOL.md
/// §6): a drop, a refusal or a takeover — every 4xxx code but a timeout
/// (4408) and a move (4001), after which the session is kept for a resume.
fn refuses_retry(code: CloseCode) -> bool {
    (4000..5000).contains(&code.0) && code != CLOSE_TIMEOUT && code != crate::app::CLOSE_MOVING
}

/// Whether an upgrade refused with HTTP `status` says "do not reconnect"
/// (PROTOCOL.md §6): a 4xx but 408 (too slow) and 429 (too many, for now).
fn refuses_retry_status(status: u16) -> bool {
    (400..500).contains(&status) && status != 408 && status != 429
}

const EVENT: u64 = 0;
const REQUEST: u64 = 1;
const REPLY: u64 = 2;
const ERROR: u64 = 3;
/// The application-level ping, a request either side answers by itself (PROTOCOL.md §9.1).
const PING: &str = "@ping";

/// Event client settings; every one has a default. Change them with the
/// builder methods:
///
/// ```no_run
/// use std::time::Duration;
/// use emitws::client::app::{AppClient, AppOptions};
///
/// let options = AppOptions::default().max_retries(Some(10)).connect_timeout(Duration::from_secs(3));
/// let app = AppClient::connect("ws://127.0.0.1:9001/", options)?;
/// # Ok::<(), emitws::client::app::AppError>(())
/// ```
///
/// Its `Debug` output leaves out the credentials: the auth request's data
/// and the WebSocket connection's headers.
#[derive(Clone)]
#[non_exhaustive]
pub struct AppOptions {
    /// Reconnect after the connection drops or an attempt fails (default true).
    pub reconnect: bool,
    /// The first reconnect delay; it doubles per failed attempt, up to
    /// `max_reconnect_delay`, and each delay is jittered down by up to half
    /// so that clients of a restarted server do not return all at once
    /// (default 500 ms).
    pub reconnect_delay: Duration,
    /// The longest reconnect delay (default 30 s).
    pub max_reconnect_delay: Duration,
    /// Attempts after a failure before giving up; `None` (the default) never gives up.
    pub max_retries: Option<u32>,
    /// Time for each connection attempt: DNS, connect, TLS, upgrade (default 10 s).
    pub connect_timeout: Duration,
    /// Envelopes kept while not READY, sent once READY (default 1,000).
    pub max_queued: usize,
    /// A request sent first on every connection, for servers that identify
    /// users by their first message (`App::identify_by_message`); the
    /// server's `@ready` follows its success (default none). An error reply
    /// is reported as `@error` and the server closes the socket.
    pub auth: Option<AuthRequest>,
    /// Metadata sent with every connection (WSE's `meta`): the JSON value
    /// goes in the query parameter `emitws_meta` (PROTOCOL.md §14), where
    /// the server's handlers read it (`req.meta()`). Default none.
    pub meta: Option<Value>,
    /// Headers, origin, TLS roots, limits and permessage-deflate for the
    /// WebSocket connection (its subprotocol is set to [`PROTOCOL`], its
    /// timeout to `connect_timeout`). Compression pays for the large or
    /// repetitive envelopes JSON tends to make:
    ///
    /// ```no_run
    /// use emitws::client::app::{AppClient, AppOptions};
    /// use emitws::client::ClientBuilder;
    /// use emitws::proto::deflate::DeflateConfig;
    ///
    /// let client = ClientBuilder::new().deflate(Some(DeflateConfig::default())).max_message_size(1 << 20);
    /// let app = AppClient::connect("ws://127.0.0.1:9001/", AppOptions::default().client(client))?;
    /// # Ok::<(), emitws::client::app::AppError>(())
    /// ```
    pub client: ClientBuilder,
    /// Speak `emitws.v2` (PROTOCOL.md §10): binary events and requests
    /// ([`AppClient::emit_binary`], [`AppClient::request_binary`]) go as
    /// binary frames, and binary events and replies arrive as bytes
    /// ([`AppClient::on_binary`], [`Payload::Binary`]). The client then
    /// offers `emitws.v2` alone, so that it knows the server took it: a
    /// server that speaks only `emitws.v1` refuses the upgrade (HTTP 400).
    /// Default false (`emitws.v1`; binary sends fail with [`AppError::NotBinary`]).
    pub binary: bool,
}

impl Default for AppOptions {
    fn default() -> Self {
        AppOptions {
            reconnect: true,
            reconnect_delay: Duration::from_millis(500),
            max_reconnect_delay: Duration::from_secs(30),
            max_retries: None,
            connect_timeout: Duration::from_secs(10),
            max_queued: 1_000,
            auth: None,
            meta: None,
            client: ClientBuilder::new(),
            binary: false,
        }
    }
}

impl fmt::Debug for AppOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // `auth` prints its event alone (see `AuthRequest`'s Debug); `client`
        // is left out: its headers may carry a token.
        f.debug_struct("AppOptions")
            .field("reconnect", &self.reconnect)
            .field("reconnect_delay", &self.reconnect_delay)
            .field("max_reconnect_delay", &self.max_reconnect_delay)
            .field("max_retries", &self.max_retries)
            .field("connect_timeout", &self.connect_timeout)
            .field("max_queued", &self.max_queued)
            .field("auth", &self.auth)
            .field("meta", &self.meta)
            .field("binary", &self.binary)
            .finish_non_exhaustive()
    }
}

impl AppOptions {
    /// Sets `reconnect`: whether to reconnect after the connection drops or an attempt fails.
    pub fn reconnect(mut self, reconnect: bool) -> Self {
        self.reconnect = reconnect;
        self
    }

    /// Sets `reconnect_delay`: the first reconnect delay (it doubles per failed attempt).
    pub fn reconnect_delay(mut self, reconnect_delay: Duration) -> Self {
        self.reconnect_delay = reconnect_delay;
        self
    }

    /// Sets `max_reconnect_delay`: the longest reconnect delay.
    pub fn max_reconnect_delay(mut self, max_reconnect_delay: Duration) -> Self {
        self.max_reconnect_delay = max_reconnect_delay;
        self
    }

    /// Sets `max_retries`: attempts after a failure before giving up (`None`: never).
    pub fn max_retries(mut self, max_retries: Option<u32>) -> Self {
        self.max_retries = max_retries;
        self
    }

    /// Sets `connect_timeout`: the time for each connection attempt.
    pub fn connect_timeout(mut self, connect_timeout: Duration) -> Self {
        self.connect_timeout = connect_timeout;
        self
    }

    /// Sets `max_queued`: how many envelopes are kept while not READY.
    pub fn max_queued(mut self, max_queued: usize) -> Self {
        self.max_queued = max_queued;
        self
    }

    /// Sets `auth`: the request sent first on every connection.
    pub fn auth(mut self, auth: Option<AuthRequest>) -> Self {
        self.auth = auth;
        self
    }

    /// Sets `meta`: the metadata sent with every connection.
    ///
    /// ```no_run
    /// use emitws::client::app::{AppClient, AppOptions};
    /// let options = AppOptions::default().meta(Some(serde_json::json!({ "app": "1.4.2", "lang": "uk" })));
    /// let app = AppClient::connect("ws://127.0.0.1:9001/", options)?;
    /// # Ok::<(), emitws::client::app::AppError>(())
    /// ```
    pub fn meta(mut self, meta: Option<Value>) -> Self {
        self.meta = meta;
        self
    }

    /// Sets `client`: the WebSocket connection's settings.
    pub fn client(mut self, client: ClientBuilder) -> Self {
        self.client = client;
        self
    }

    /// Sets `binary`: whether to speak `emitws.v2`, with binary envelopes.
    pub fn binary(mut self, binary: bool) -> Self {
        self.binary = binary;
        self
    }
}

/// The first-message auth request of [`AppOptions::auth`]. Its `Debug`
/// output shows the event, not the credentials.
#[derive(Clone, PartialEq)]
pub struct AuthRequest {
    /// The server's auth event (`/auth`, …).
    pub event: String,
    /// Its data: the credentials.
    pub data: Value,
}

impl fmt::Debug for AuthRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthRequest").field("event", &self.event).field("data", &"<redacted>").finish()
    }
}

/// Where an event client is in its life; each change is a `@status` event.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Status {
    /// Made by [`AppClient::new`], not opened yet.
    Idle,
    /// The first connection attempt is under way.
    Connecting,
    /// A socket is open; the server has not sent `@ready` yet.
    Authenticating,
    /// Admitted: envelopes go out at once.
    Ready,
    /// The connection was lost or an attempt failed: waiting for the next attempt, or making it.
    Reconnecting,
    /// Closed for good, by [`AppClient::close`] or after giving up.
    Offline,
}

impl Status {
    /// The name in `@status` events: `idle`, `connecting`, `authenticating`, `ready`, `reconnecting`, `offline`.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Idle => "idle",
            Status::Connecting => "connecting",
            Status::Authenticating => "authenticating",
            Status::Ready => "ready",
            Status::Reconnecting => "reconnecting",
            Status::Offline => "offline",
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why an event client call failed.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum AppError {
    /// The other side answered the request with an error reply.
    Remote {
        /// The machine-readable code (`no_handler`, `forbidden`, an application code…).
        code: String,
        /// The human-readable message.
        message: String,
    },
    /// No reply within the request's timeout.
    Timeout,
    /// The connection dropped before the reply came (or, for a send, there
    /// was no connection and the queue was full).
    Disconnected(String),
    /// The client was closed.
    Closed,
    /// The client gave up reconnecting (the last failure says why): it is OFFLINE for good.
    Offline(String),
    /// No connection could be opened (after the configured retries).
    ConnectFailed(String),
    /// A blocking request from a listener or procedure, which run on the
    /// client's I/O thread and would wait for their own thread.
    WouldBlock,
    /// An event name starting with `@` (system events are not sent).
    BadName(String),
    /// A URL to jump to that is not a `ws://` or `wss://` URL (why).
    BadUrl(String),
    /// A binary send on a client that does not speak `emitws.v2`
    /// ([`AppOptions::binary`]), or with an event name a binary envelope
    /// cannot carry (1 to 255 bytes).
    NotBinary(String),
}

impl AppError {
    /// The error code, as in the wire format's error replies.
    ///
    /// ```
    /// use emitws::client::app::AppError;
    /// assert_eq!(AppError::Timeout.code(), "timeout");
    /// assert_eq!(AppError::Remote { code: "forbidden".into(), message: String::new() }.code(), "forbidden");
    /// ```
    pub fn code(&self) -> &str {
        match self {
            AppError::Remote { code, .. } => code,
            AppError::Timeout => "timeout",
            AppError::Disconnected(_) => "disconnected",
            AppError::Closed => "closed",
            AppError::Offline(_) => "offline",
            AppError::ConnectFailed(_) => "connect_failed",
            AppError::WouldBlock => "would_block",
            AppError::BadName(_) | AppError::BadUrl(_) | AppError::NotBinary(_) => "bad_request",
        }
    }
}

impl fmt::Display for AppError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AppError::Remote { code, message } => write!(f, "{code}: {message}"),
            AppError::Timeout => f.write_str("no reply within the timeout"),
            AppError::Disconnected(why) => write!(f, "disconnected: {why}"),
            AppError::Closed => f.write_str("the client is closed"),
            AppError::Offline(why) => write!(f, "offline: gave up reconnecting ({why})"),
            AppError::ConnectFailed(why) => write!(f, "cannot connect: {why}"),
            AppError::WouldBlock => f.write_str("a blocking request on the client's I/O thread would never complete"),
            AppError::BadName(name) => write!(f, "{name:?}: system events (@…) are not sent"),
            AppError::BadUrl(why) => write!(f, "not a WebSocket URL: {why}"),
            AppError::NotBinary(why) => write!(f, "cannot send binary: {why}"),
        }
    }
}

impl std::error::Error for AppError {}

type Listener = Arc<dyn Fn(&str, &Value) + Send + Sync>;
/// A procedure the server may call, answering JSON or bytes.
#[derive(Clone)]
enum Procedure {
    Json(Arc<dyn Fn(Value) -> Result<Value, String> + Send + Sync>),
    Binary(Arc<dyn Fn(Value) -> Result<Vec<u8>, String> + Send + Sync>),
}
type BinaryListener = Arc<dyn Fn(&str, &[u8]) + Send + Sync>;
type ReplySender = SyncSender<Result<Payload, AppError>>;

/// What a reply carries: JSON data, or the bytes of a binary reply
/// (`emitws.v2`, PROTOCOL.md §10; see [`AppOptions::binary`]).
#[derive(Clone, Debug, PartialEq)]
pub enum Payload {
    /// A JSON reply's data.
    Json(Value),
    /// A binary reply's bytes.
    Binary(Vec<u8>),
}

impl Payload {
    /// The data as JSON: bytes read as `{"base64": "…"}`, the form an
    /// `emitws.v1` socket gets them in (PROTOCOL.md §10).
    pub fn into_json(self) -> Value {
        match self {
            Payload::Json(value) => value,
            Payload::Binary(bytes) => base64_json(&bytes),
        }
    }

    /// The bytes of a binary reply; `None` for JSON.
    pub fn as_binary(&self) -> Option<&[u8]> {
        match self {
            Payload::Binary(bytes) => Some(bytes),
            Payload::Json(_) => None,
        }
    }
}

/// `{"base64": "…"}`: bytes where JSON is expected (PROTOCOL.md §10).
fn base64_json(bytes: &[u8]) -> Value {
    use base64::Engine as _;
    json!({ "base64": base64::engine::general_purpose::STANDARD.encode(bytes) })
}

/// An envelope as sent: JSON text, or a binary envelope.
enum Outgoing {
    Text(String),
    Binary(Vec<u8>),
}

impl From<String> for Outgoing {
    fn from(text: String) -> Outgoing {
        Outgoing::Text(text)
    }
}

impl Outgoing {
    /// Sends it on `conn`, by the dialer or on the I/O thread; false if it could not be queued.
    fn send_on(&self, dialer: &ServerHandle, conn: ConnId) -> bool {
        match self {
            Outgoing::Text(text) => dialer.send_text(conn, text),
            Outgoing::Binary(bytes) => dialer.send_binary(conn, bytes),
        }
    }

    fn send_here(&self, conn: &mut Conn<'_, ()>) {
        let _ = match self {
            Outgoing::Text(text) => conn.send_text(text),
            Outgoing::Binary(bytes) => conn.send_binary(bytes),
        };
    }
}

/// A request waiting for its reply.
struct Pending {
    sender: ReplySender,
    /// Sent on the current connection (else still queued, waiting for READY).
    sent: bool,
}

/// An envelope waiting for READY.
struct Queued {
    frame: Outgoing,
    /// The id if it is a request: it is not sent once its caller stopped waiting.
    request: Option<u64>,
}

/// Identifies a listener, for [`AppClient::off`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ListenerId(u64);

/// An event client. Cloning is cheap and every clone is the same client;
/// the connection closes with [`close`](Self::close) or when the last clone is dropped.
#[derive(Clone)]
pub struct AppClient {
    inner: Arc<ClientCore>,
}

impl fmt::Debug for AppClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // One lock at a time: `jump` takes the session's before the URL's.
        let url = lock(&self.inner.url).clone();
        f.debug_struct("AppClient").field("url", &url).field("status", &self.status()).finish()
    }
}

/// What every clone of an [`AppClient`] shares: its settings, the I/O
/// thread, the session, listeners and procedures.
struct ClientCore {
    me: Weak<ClientCore>,
    /// Where the client connects: the URL it was made with, until a jump.
    url: Mutex<String>,
    options: AppOptions,
    client: ClientBuilder,
    dialer: ServerHandle,
    running: Mutex<Option<RunningServer>>,
    state: Mutex<Session>,
    /// Signalled when the first connection is READY or the client gives up.
    settled: Condvar,
    listeners: RwLock<Vec<(ListenerId, String, Listener)>>,
    /// Listeners of binary events ([`AppClient::on_binary`]).
    binary_listeners: RwLock<Vec<(ListenerId, String, BinaryListener)>>,
    procedures: RwLock<HashMap<String, Procedure>>,
    next_listener: AtomicU64,
    next_id: AtomicU64,
    /// [`AppClient::close`] is closing the socket and stopping the I/O thread.
    closing: AtomicBool,
}

/// The client's session with the server, behind one lock: status, the
/// current connection, requests waiting for replies, envelopes waiting for
/// READY, and the reconnect bookkeeping.
struct Session {
    status: Status,
    conn: Option<ConnId>,
    pending: HashMap<u64, Pending>,
    queue: Vec<Queued>,
    /// Why sends fail once OFFLINE: [`AppError::Closed`] or [`AppError::Offline`].
    gone: Option<AppError>,
    attempt: u32,
    ever_opened: bool,
    ever_ready: bool,
    /// The auth request on the current connection.
    auth_id: Option<u64>,
    /// While AUTHENTICATING: when the attempt is given up if no `@ready` came.
    ready_deadline: Option<Instant>,
    /// The data of the current connection's `@ready`.
    welcome: Option<Value>,
    /// The outcome of the first connection, once known.
    first: Option<Result<(), AppError>>,
    io_thread: Option<ThreadId>,
    jitter: MaskRng,
    /// A jump asked for while a connection (or an attempt) was under way:
    /// taken when it closes (or fails), to move at once.
    jumping: bool,
    /// An attempt is under way: dialed, neither open nor failed yet.
    dialing: bool,
    /// Counts jumps: a reconnect scheduled before the latest one is not made.
    jumps: u64,
    /// The session's resume token from the latest `@ready`: a secret, never
    /// shown. Kept across losses that keep the server's session.
    resume_token: Option<String>,
    /// The `@resume` request on the current connection, until it is answered.
    resume_id: Option<u64>,
    /// Per room with history, how far the client got.
    positions: Positions,
    /// The current connection's `@resume` reply; `None` if it did not resume (yet).
    resumed: Option<Value>,
}

impl Session {
    /// Moves to `to`; returns the `@status` event to dispatch once the lock is released.
    fn set_status(&mut self, to: Status) -> Option<Value> {
        let from = std::mem::replace(&mut self.status, to);
        (from != to).then(|| json!({"status": to.as_str(), "previous": from.as_str()}))
    }

    /// Fails the requests sent on the connection that ended (queued ones keep waiting).
    fn fail_sent(&mut self, error: &AppError) {
        self.pending.retain(|_, pending| {
            if pending.sent {
                let _ = pending.sender.send(Err(error.clone()));
            }
            !pending.sent
        });
    }

    /// Fails every request and drops the queue: the client is OFFLINE. Returns how many events were dropped.
    fn fail_all(&mut self, error: &AppError) -> usize {
        for (_, pending) in self.pending.drain() {
            let _ = pending.sender.send(Err(error.clone()));
        }
        let events = self.queue.iter().filter(|queued| queued.request.is_none()).count();
        self.queue.clear();
        events
    }
}

impl AppClient {
    /// Connects to `url` and returns once the first connection is READY
    /// (the server sent `@ready`), or with [`AppError::ConnectFailed`] once
    /// the retries are used up. [`new`](Self::new) then
    /// [`open`](Self::open) does the same with procedures and listeners set
    /// before connecting.
    ///
    /// # Errors
    ///
    /// [`AppError::ConnectFailed`] when no connection became READY within the
    /// retries (or the I/O thread could not start), [`AppError::Closed`] if the
    /// client was closed meanwhile.
    pub fn connect(url: &str, options: AppOptions) -> Result<AppClient, AppError> {
        let client = AppClient::new(url, options)?;
        client.open()?;
        Ok(client)
    }

    /// A client for `url` in status IDLE: nothing is sent until
    /// [`open`](Self::open), so that procedures (`@challenge`) and listeners
    /// are in place for the first connection. Fails only if the client's
    /// I/O thread cannot start.
    ///
    /// # Errors
    ///
    /// [`AppError::ConnectFailed`] if the I/O thread or the random source for
    /// the reconnect jitter cannot start.
    pub fn new(url: &str, options: AppOptions) -> Result<AppClient, AppError> {
        let protocol = if options.binary { PROTOCOL_V2 } else { PROTOCOL };
        let client = options.client.clone().timeout(options.connect_timeout).protocol(protocol);
        let failed = |e: &dyn fmt::Display| AppError::ConnectFailed(e.to_string());
        let jitter = mask_rng().map_err(|e| failed(&e))?;
        let link = Link { inner: Arc::new(OnceLock::new()) };
        let server = Server::new().workers(1).keepalive(None).shutdown_timeout(Duration::from_secs(2));
        let running = server.start_dialer(link.clone()).map_err(|e| failed(&e))?;
        let inner = Arc::new_cyclic(|me: &Weak<ClientCore>| ClientCore {
            me: me.clone(),
            url: Mutex::new(url.to_string()),
            options,
            client,
            dialer: running.handle(),
            running: Mutex::new(Some(running)),
            state: Mutex::new(Session {
                status: Status::Idle,
                conn: None,
                pending: HashMap::new(),
                queue: Vec::new(),
                gone: None,
                attempt: 0,
                ever_opened: false,
                ever_ready: false,
                auth_id: None,
                ready_deadline: None,
                welcome: None,
                first: None,
                io_thread: None,
                jitter,
                jumping: false,
                dialing: false,
                jumps: 0,
                resume_token: None,
                resume_id: None,
                positions: Positions::default(),
                resumed: None,
            }),
            settled: Condvar::new(),
            listeners: RwLock::new(Vec::new()),
            binary_listeners: RwLock::new(Vec::new()),
            procedures: RwLock::new(HashMap::new()),
            next_listener: AtomicU64::new(1),
            next_id: AtomicU64::new(1),
            closing: AtomicBool::new(false),
        });
        let _ = link.inner.set(Arc::downgrade(&inner));
        Ok(AppClient { inner })
    }

    /// Starts connecting a client made by [`new`](Self::new) and waits until
    /// it is READY, or fails with [`AppError::ConnectFailed`] once the
    /// retries are used up ([`AppError::Closed`] if it was closed). Called
    /// again, it waits for the same outcome.
    ///
    /// # Errors
    ///
    /// [`AppError::ConnectFailed`] once the retries are used up,
    /// [`AppError::Closed`] if the client was closed, [`AppError::WouldBlock`]
    /// from a listener or procedure (they run on the I/O thread).
    pub fn open(&self) -> Result<(), AppError> {
        let inner = &self.inner;
        if inner.on_io_thread() {
            return Err(AppError::WouldBlock);
        }
        let started = {
            let mut state = lock(&inner.state);
            match state.status {
                Status::Idle => state.set_status(Status::Connecting),
                _ => None,
            }
        };
        if let Some(change) = started {
            inner.dispatch("@status", &change);
            inner.dial();
        }
        let mut state = lock(&inner.state);
        while state.first.is_none() {
            state = inner.settled.wait(state).unwrap_or_else(|e| e.into_inner());
        }
        state.first.clone().expect("checked above")
    }

    /// Where the client is now (each change is also a `@status` event).
    pub fn status(&self) -> Status {
        lock(&self.inner.state).status
    }

    /// The data of the current connection's `@ready` (the server's welcome:
    /// `{"socket", "user", …}`, its resume token left out), `None` while not READY.
    pub fn welcome(&self) -> Option<Value> {
        lock(&self.inner.state).welcome.clone()
    }

    /// The socket's id as the server gave it in the current connection's
    /// `@ready` (the same one after a resume), `None` while not READY.
    pub fn socket_id(&self) -> Option<String> {
        let state = lock(&self.inner.state);
        Some(state.welcome.as_ref()?.get("socket")?.as_str()?.to_string())
    }

    /// Whether the current connection's resume recovered every broadcast
    /// `room` had while the client was away (PROTOCOL.md §13): `Some(true)`
    /// when the server replayed them all, `Some(false)` when it could not (the
    /// session was not resumed, the room's epoch changed or its history no
    /// longer reaches back, or the room has no history), so the application
    /// refetches the room. `None` when the current connection did not resume
    /// (the first one, or one after the session ended), or its resume was
    /// not answered yet.
    pub fn recovered(&self, room: &str) -> Option<bool> {
        let state = lock(&self.inner.state);
        let reply = state.resumed.as_ref()?;
        Some(reply["resumed"] == true && reply["rooms"][room]["recovered"] == true)
    }

    /// Where the client is, in the WebSocket API's four states (openspeed's
    /// `readyState`): [`Connecting`](ReadyState::Connecting) while CONNECTING,
    /// AUTHENTICATING or RECONNECTING, [`Open`](ReadyState::Open) when
    /// READY, [`Closing`](ReadyState::Closing) while [`close`](Self::close)
    /// runs (seen from another thread), [`Closed`](ReadyState::Closed) when
    /// IDLE or OFFLINE. [`status`](Self::status) tells more.
    ///
    /// ```no_run
    /// use emitws::client::app::{AppClient, ReadyState};
    /// let client = AppClient::connect("ws://127.0.0.1:9001/", Default::default())?;
    /// if client.ready_state() == ReadyState::Open {
    ///     println!("round trip: {:?}", client.ping(std::time::Duration::from_secs(5))?);
    /// }
    /// # Ok::<(), emitws::client::app::AppError>(())
    /// ```
    pub fn ready_state(&self) -> ReadyState {
        if self.inner.closing.load(Ordering::Relaxed) {
            return ReadyState::Closing;
        }
        match self.status() {
            Status::Connecting | Status::Authenticating | Status::Reconnecting => ReadyState::Connecting,
            Status::Ready => ReadyState::Open,
            Status::Idle | Status::Offline => ReadyState::Closed,
        }
    }

    /// Measures a round trip to the server at the application level: sends
    /// the `@ping` request, which the server answers at once without running
    /// any handler (PROTOCOL.md §9.1), and returns the time to its answer.
    /// Made before READY, it waits for READY as any request, and the time
    /// counts that wait. The client answers the server's `@ping` by itself.
    ///
    /// # Errors
    ///
    /// As [`request`](Self::request): [`AppError::Timeout`],
    /// [`AppError::Disconnected`], [`AppError::Offline`], [`AppError::Closed`].
    pub fn ping(&self, timeout: Duration) -> Result<Duration, AppError> {
        let started = Instant::now();
        self.send_request(PING, Value::Null, timeout).wait().map(|_| started.elapsed())
    }

    /// Whether a socket is open now (READY or still AUTHENTICATING).
    pub fn connected(&self) -> bool {
        lock(&self.inner.state).conn.is_some()
    }

    /// Sends an event. Before READY it waits in a bounded queue; OFFLINE it
    /// fails at once.
    ///
    /// # Errors
    ///
    /// [`AppError::BadName`] for an `@` name, [`AppError::Offline`] or
    /// [`AppError::Closed`] once the client is OFFLINE, [`AppError::Disconnected`]
    /// when the queue is full before READY.
    pub fn emit(&self, event: &str, data: Value) -> Result<(), AppError> {
        check_name(event)?;
        self.inner.send(json!([EVENT, event, data]).to_string(), None)
    }

    /// Sends a request and waits for the reply's data, or for an error: the
    /// other side's error reply, [`AppError::Timeout`] (the timeout counts
    /// the wait for READY), [`AppError::Disconnected`] if the connection
    /// drops after it was sent, [`AppError::Offline`] if the client gives up.
    ///
    /// # Errors
    ///
    /// Those above, plus [`AppError::BadName`] for an `@` name and
    /// [`AppError::WouldBlock`] from a listener or procedure.
    pub fn request(&self, event: &str, data: Value, timeout: Duration) -> Result<Value, AppError> {
        self.request_nowait(event, data, timeout).wait()
    }

    /// Sends a request without waiting: the reply is taken from the
    /// returned [`PendingRequest`], by polling or by waiting.
    pub fn request_nowait(&self, event: &str, data: Value, timeout: Duration) -> PendingRequest {
        if let Err(e) = check_name(event) {
            let (sender, receiver) = mpsc::sync_channel(1);
            let _ = sender.send(Err(e));
            return PendingRequest { receiver, id: 0, deadline: Instant::now(), inner: Arc::downgrade(&self.inner) };
        }
        self.send_request(event, data, timeout)
    }

    /// Sends a request to `event`, a system one included.
    fn send_request(&self, event: &str, data: Value, timeout: Duration) -> PendingRequest {
        let (sender, receiver) = mpsc::sync_channel(1);
        let deadline = Instant::now() + timeout;
        let pending = |id| PendingRequest { receiver, id, deadline, inner: Arc::downgrade(&self.inner) };
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        if let Err(e) = self.inner.send(json!([REQUEST, id, event, data]).to_string(), Some((id, sender.clone()))) {
            let _ = sender.send(Err(e));
        }
        pending(id)
    }

    /// Calls `listener(event, data)` for each `event` received. System
    /// events work the same way; an `@any` listener receives every event
    /// that has no listener of its own.
    pub fn on(&self, event: &str, listener: impl Fn(&str, &Value) + Send + Sync + 'static) -> ListenerId {
        let id = ListenerId(self.inner.next_listener.fetch_add(1, Ordering::Relaxed));
        write(&self.inner.listeners).push((id, event.to_string(), Arc::new(listener)));
        id
    }

    /// Removes one listener.
    pub fn off(&self, id: ListenerId) {
        write(&self.inner.listeners).retain(|(listener, _, _)| *listener != id);
        write(&self.inner.binary_listeners).retain(|(listener, _, _)| *listener != id);
    }

    /// Removes every listener of `event` (binary ones too).
    pub fn off_all(&self, event: &str) {
        write(&self.inner.listeners).retain(|(_, name, _)| name != event);
        write(&self.inner.binary_listeners).retain(|(_, name, _)| name != event);
    }

    /// Calls `listener(event, bytes)` for each binary `event` received
    /// (`emitws.v2`, see [`AppOptions::binary`]). A binary event without a
    /// binary listener goes to the event's [`on`](Self::on) listeners as
    /// `{"base64": "…"}`, as an `emitws.v1` client would get it.
    ///
    /// ```no_run
    /// use emitws::client::app::{AppClient, AppOptions};
    /// let client = AppClient::connect("ws://127.0.0.1:9001/", AppOptions::default().binary(true))?;
    /// client.on_binary("/frame", |_, bytes| println!("{} bytes", bytes.len()));
    /// client.emit_binary("/upload", &[1, 2, 3])?;
    /// let reply = client.request_binary("/thumbnail", &[0xff; 4096], std::time::Duration::from_secs(5))?;
    /// println!("{:?}", reply.as_binary().map(<[u8]>::len));
    /// # Ok::<(), emitws::client::app::AppError>(())
    /// ```
    pub fn on_binary(&self, event: &str, listener: impl Fn(&str, &[u8]) + Send + Sync + 'static) -> ListenerId {
        let id = ListenerId(self.inner.next_listener.fetch_add(1, Ordering::Relaxed));
        write(&self.inner.binary_listeners).push((id, event.to_string(), Arc::new(listener)));
        id
    }

    /// Sends a binary event: one binary frame, `bytes` after a small header
    /// (PROTOCOL.md §10). Queued before READY as [`emit`](Self::emit) is.
    ///
    /// # Errors
    ///
    /// [`AppError::NotBinary`] without [`AppOptions::binary`] or for a name
    /// over 255 bytes, and those of [`emit`](Self::emit).
    pub fn emit_binary(&self, event: &str, bytes: &[u8]) -> Result<(), AppError> {
        let frame = self.binary_frame(crate::app::binary::EVENT, None, event, bytes)?;
        self.inner.send(frame, None)
    }

    /// Sends a binary request and waits for the reply: JSON data or, for a
    /// binary reply, its bytes.
    ///
    /// # Errors
    ///
    /// [`AppError::NotBinary`] without [`AppOptions::binary`] or for a name
    /// over 255 bytes, and those of [`request`](Self::request).
    pub fn request_binary(&self, event: &str, bytes: &[u8], timeout: Duration) -> Result<Payload, AppError> {
        self.request_binary_nowait(event, bytes, timeout).wait_payload()
    }

    /// Sends a binary request without waiting (see [`request_nowait`](Self::request_nowait)).
    pub fn request_binary_nowait(&self, event: &str, bytes: &[u8], timeout: Duration) -> PendingRequest {
        let (sender, receiver) = mpsc::sync_channel(1);
        let deadline = Instant::now() + timeout;
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let pending = |id| PendingRequest { receiver, id, deadline, inner: Arc::downgrade(&self.inner) };
        let sent = self
            .binary_frame(crate::app::binary::REQUEST, Some(id), event, bytes)
            .and_then(|frame| self.inner.send(frame, Some((id, sender.clone()))));
        if let Err(e) = sent {
            let _ = sender.send(Err(e));
        }
        pending(id)
    }

    /// A binary envelope, if this client speaks `emitws.v2` and the name fits.
    fn binary_frame(&self, kind: u8, id: Option<u64>, event: &str, bytes: &[u8]) -> Result<Outgoing, AppError> {
        check_name(event)?;
        if !self.inner.options.binary {
            return Err(AppError::NotBinary("the client speaks emitws.v1 (see AppOptions::binary)".into()));
        }
        if !crate::app::binary::fits(event) {
            return Err(AppError::NotBinary(format!("the event name {event:?} is longer than 255 bytes")));
        }
        let mut frame = Vec::new();
        crate::app::binary::write(&mut frame, kind, id, Some(event), bytes);
        Ok(Outgoing::Binary(frame))
    }

    /// Answers the server's requests (RPC) for `name`: `Ok` is the reply,
    /// `Err(message)` an `execution_failed` error reply. Requests for names
    /// without a procedure get `not_registered`. Procedures answer in every
    /// status: register `@challenge` before [`open`](Self::open) for
    /// challenge-response auth.
    pub fn register(&self, name: &str, procedure: impl Fn(Value) -> Result<Value, String> + Send + Sync + 'static) {
        write(&self.inner.procedures).insert(name.to_string(), Procedure::Json(Arc::new(procedure)));
    }

    /// Answers the server's calls of `name` with bytes, as
    /// [`register`](Self::register) answers with JSON: a binary reply when
    /// the client speaks `emitws.v2` ([`AppOptions::binary`]), else the
    /// bytes as `{"base64": "…"}` JSON (PROTOCOL.md §10). The server's
    /// application reads them with `CallReply::binary`.
    ///
    /// ```no_run
    /// use emitws::client::app::{AppClient, AppOptions};
    /// let app = AppClient::connect("ws://127.0.0.1:9001/", AppOptions::default().binary(true))?;
    /// app.register_binary("screenshot", |_| Ok(vec![0x89, b'P', b'N', b'G']));
    /// # Ok::<(), emitws::client::app::AppError>(())
    /// ```
    pub fn register_binary(
        &self,
        name: &str,
        procedure: impl Fn(Value) -> Result<Vec<u8>, String> + Send + Sync + 'static,
    ) {
        write(&self.inner.procedures).insert(name.to_string(), Procedure::Binary(Arc::new(procedure)));
    }

    /// Removes the procedure for `name`.
    pub fn unregister(&self, name: &str) {
        write(&self.inner.procedures).remove(name);
    }

    /// A view whose event names start with `prefix`.
    pub fn ns(&self, prefix: &str) -> Namespace {
        Namespace { client: self.clone(), prefix: prefix.to_string() }
    }

    /// Closes for good (OFFLINE): no reconnect; pending requests fail with
    /// [`AppError::Closed`]; later calls fail the same way.
    pub fn close(&self) {
        self.inner.close();
    }

    /// Moves to the server at `url` (WSE's `jump`): the current connection
    /// closes (4001, [`CLOSE_MOVING`](crate::app::CLOSE_MOVING): the server
    /// keeps the session, which the client resumes on `url`), its sent requests fail with
    /// [`AppError::Disconnected`], and the client connects to `url` at once,
    /// with a `@jump` event (`{"url", "by": "jump"}`), keeping its
    /// listeners, procedures and queued envelopes; `url` is then the one
    /// every reconnect uses. An attempt under way is given up for it; an IDLE
    /// client only changes its URL. Returns without waiting for the new
    /// connection (`@ready` tells).
    ///
    /// # Errors
    ///
    /// [`AppError::BadUrl`] if `url` is not a `ws://` or `wss://` URL,
    /// [`AppError::Closed`] or [`AppError::Offline`] once the client is OFFLINE.
    ///
    /// ```no_run
    /// # let client = emitws::client::app::AppClient::connect("ws://127.0.0.1:9001/", Default::default())?;
    /// client.jump("ws://127.0.0.1:9002/")?;
    /// # Ok::<(), emitws::client::app::AppError>(())
    /// ```
    pub fn jump(&self, url: &str) -> Result<(), AppError> {
        crate::dial::Url::parse(url).map_err(|e| AppError::BadUrl(e.to_string()))?;
        let inner = &self.inner;
        let mut state = lock(&inner.state);
        if let Some(gone) = &state.gone {
            return Err(gone.clone());
        }
        *lock(&inner.url) = url.to_string();
        match (state.status, state.conn) {
            (Status::Idle, _) => {}
            (_, Some(id)) => {
                // From here on, sends wait in the queue for the new server.
                state.jumping = true;
                state.conn = None;
                let change = state.set_status(Status::Reconnecting);
                drop(state);
                inner.announce(change);
                // `on_close` moves on to the new URL.
                inner.dialer.close(id, crate::app::CLOSE_MOVING, "jump");
            }
            // An attempt in flight: it is closed if it opens (`on_open`),
            // and the jump made when it ends.
            _ if state.dialing => state.jumping = true,
            // Waiting for a reconnect's backoff: at once instead.
            _ => {
                drop(state);
                inner.jump_now("jump");
            }
        }
        Ok(())
    }
}

/// A request sent with [`AppClient::request_nowait`].
#[derive(Debug)]
pub struct PendingRequest {
    receiver: Receiver<Result<Payload, AppError>>,
    id: u64,
    deadline: Instant,
    inner: Weak<ClientCore>,
}

impl PendingRequest {
    /// The outcome if it is known, without waiting: `None` while the reply
    /// may still come.
    pub fn try_result(&mut self) -> Option<Result<Value, AppError>> {
        self.try_payload().map(|result| result.map(Payload::into_json))
    }

    /// [`try_result`](Self::try_result), a binary reply's bytes as they came.
    pub fn try_payload(&mut self) -> Option<Result<Payload, AppError>> {
        match self.receiver.try_recv() {
            Ok(result) => Some(result),
            Err(TryRecvError::Disconnected) => Some(Err(AppError::Closed)),
            Err(TryRecvError::Empty) if Instant::now() >= self.deadline => Some(self.expire()),
            Err(TryRecvError::Empty) => None,
        }
    }

    /// Waits for the outcome, until the request's deadline.
    ///
    /// # Errors
    ///
    /// The request's: [`AppError::Remote`], [`AppError::Timeout`],
    /// [`AppError::Disconnected`], [`AppError::Offline`], [`AppError::Closed`];
    /// [`AppError::WouldBlock`] on the client's I/O thread.
    pub fn wait(self) -> Result<Value, AppError> {
        self.wait_payload().map(Payload::into_json)
    }

    /// [`wait`](Self::wait), a binary reply's bytes as they came.
    ///
    /// # Errors
    ///
    /// Those of [`wait`](Self::wait).
    pub fn wait_payload(self) -> Result<Payload, AppError> {
        if let Ok(result) = self.receiver.try_recv() {
            return result;
        }
        if self.inner.upgrade().is_some_and(|inner| inner.on_io_thread()) {
            return Err(AppError::WouldBlock);
        }
        match self.receiver.recv_timeout(self.deadline.saturating_duration_since(Instant::now())) {
            Ok(result) => result,
            Err(RecvTimeoutError::Timeout) => self.expire(),
            Err(RecvTimeoutError::Disconnected) => Err(AppError::Closed),
        }
    }

    fn expire(&self) -> Result<Payload, AppError> {
        if let Some(inner) = self.inner.upgrade() {
            lock(&inner.state).pending.remove(&self.id);
        }
        // The reply may have come in between.
        self.receiver.try_recv().unwrap_or(Err(AppError::Timeout))
    }
}

/// Event names under a prefix (`client.ns("/chat").emit("/say", …)` sends
/// `/chat/say`); nestable.
#[derive(Clone, Debug)]
pub struct Namespace {
    client: AppClient,
    prefix: String,
}

impl Namespace {
    /// [`AppClient::emit`] under the prefix.
    ///
    /// # Errors
    ///
    /// As [`AppClient::emit`].
    pub fn emit(&self, event: &str, data: Value) -> Result<(), AppError> {
        self.client.emit(&self.name(event), data)
    }

    /// [`AppClient::request`] under the prefix.
    ///
    /// # Errors
    ///
    /// As [`AppClient::request`].
    pub fn request(&self, event: &str, data: Value, timeout: Duration) -> Result<Value, AppError> {
        self.client.request(&self.name(event), data, timeout)
    }

    /// [`AppClient::request_nowait`] under the prefix.
    pub fn request_nowait(&self, event: &str, data: Value, timeout: Duration) -> PendingRequest {
        self.client.request_nowait(&self.name(event), data, timeout)
    }

    /// [`AppClient::on`] under the prefix.
    pub fn on(&self, event: &str, listener: impl Fn(&str, &Value) + Send + Sync + 'static) -> ListenerId {
        self.client.on(&self.name(event), listener)
    }

    /// [`AppClient::unregister`] under the prefix.
    pub fn unregister(&self, name: &str) {
        self.client.unregister(&self.name(name))
    }

    /// [`AppClient::register`] under the prefix.
    pub fn register(&self, name: &str, procedure: impl Fn(Value) -> Result<Value, String> + Send + Sync + 'static) {
        self.client.register(&self.name(name), procedure)
    }

    /// [`AppClient::register_binary`] under the prefix.
    pub fn register_binary(
        &self,
        name: &str,
        procedure: impl Fn(Value) -> Result<Vec<u8>, String> + Send + Sync + 'static,
    ) {
        self.client.register_binary(&self.name(name), procedure)
    }

    /// A namespace under this one.
    pub fn ns(&self, prefix: &str) -> Namespace {
        Namespace { client: self.client.clone(), prefix: self.name(prefix) }
    }

    fn name(&self, event: &str) -> String {
        format!("{}{event}", self.prefix)
    }
}

fn check_name(event: &str) -> Result<(), AppError> {
    match event.starts_with('@') {
        true => Err(AppError::BadName(event.to_string())),
        false => Ok(()),
    }
}

impl ClientCore {
    /// Opens a connection attempt on the I/O thread.
    fn dial(&self) {
        let resuming = {
            let mut state = lock(&self.state);
            state.dialing = true;
            state.resume_token.is_some()
        };
        let url = lock(&self.url).clone();
        // The server then waits for the `@resume` request `on_open` sends.
        let url = if resuming { resume_url(&url) } else { url };
        let url = match &self.options.meta {
            Some(meta) => meta_url(&url, meta),
            None => url,
        };
        if let Err(e) = self.dialer.connect(&url, &self.client, ()) {
            // Refused before reaching the I/O thread (a bad URL, DNS): the same as a failed attempt.
            self.attempt_failed(&e);
        }
    }

    /// Sends an envelope if READY, else queues it; `reply` waits for a request's reply.
    fn send(&self, frame: impl Into<Outgoing>, reply: Option<(u64, ReplySender)>) -> Result<(), AppError> {
        let frame = frame.into();
        let mut state = lock(&self.state);
        if let Some(gone) = &state.gone {
            return Err(gone.clone());
        }
        let sent = match (state.status, state.conn) {
            (Status::Ready, Some(id)) if frame.send_on(&self.dialer, id) => true,
            (Status::Ready, Some(_)) => return Err(AppError::Closed),
            _ if state.queue.len() < self.options.max_queued => {
                state.queue.push(Queued { frame, request: reply.as_ref().map(|(id, _)| *id) });
                false
            }
            _ => return Err(AppError::Disconnected("not ready, and the send queue (max_queued) is full".into())),
        };
        if let Some((id, sender)) = reply {
            state.pending.insert(id, Pending { sender, sent });
        }
        Ok(())
    }

    /// The answer to the server's call `id` of procedure `name` (PROTOCOL.md §3).
    fn answer_call(&self, id: u64, name: &str, data: Value) -> Outgoing {
        let procedure = read(&self.procedures).get(name).cloned();
        let failed = |message: String| json!([ERROR, id, {"code": "execution_failed", "message": message}]);
        let answer = match procedure {
            // The server measures a round trip (PROTOCOL.md §9.1): answered at once, with its data.
            _ if name == PING => json!([REPLY, id, data]),
            None => json!([ERROR, id, {"code": "not_registered", "message": format!("no procedure {name}")}]),
            Some(Procedure::Json(procedure)) => {
                procedure(data).map_or_else(failed, |result| json!([REPLY, id, result]))
            }
            Some(Procedure::Binary(procedure)) => match procedure(data) {
                Ok(bytes) if self.options.binary => {
                    let mut frame = Vec::new();
                    crate::app::binary::write(&mut frame, crate::app::binary::REPLY, Some(id), None, &bytes);
                    return Outgoing::Binary(frame);
                }
                Ok(bytes) => json!([REPLY, id, base64_json(&bytes)]),
                Err(message) => failed(message),
            },
        };
        Outgoing::Text(answer.to_string())
    }

    /// A binary event: to its binary listeners, or as `{"base64": …}` to
    /// its JSON ones if it has none.
    fn on_binary_event(&self, event: &str, payload: &[u8]) {
        let chosen: Vec<BinaryListener> = read(&self.binary_listeners)
            .iter()
            .filter(|(_, name, _)| name == event)
            .map(|(_, _, listener)| listener.clone())
            .collect();
        if chosen.is_empty() {
            return self.dispatch(event, &base64_json(payload));
        }
        for listener in chosen {
            listener(event, payload);
        }
    }

    /// A binary envelope from the server (PROTOCOL.md §10).
    fn on_binary(&self, conn: &mut Conn<'_, ()>, frame: &[u8]) {
        use crate::app::binary::{self, BinaryEnvelope};
        match binary::parse(frame) {
            // A broadcast of a room with history (PROTOCOL.md §13): tracked
            // as a JSON event's fourth element, dropped if it came already.
            Ok(BinaryEnvelope::EventAt { event, position, payload }) => {
                let position: Value = serde_json::from_str(position).unwrap_or_default();
                if lock(&self.state).positions.accept(&position) {
                    self.on_binary_event(event, payload);
                }
            }
            Ok(BinaryEnvelope::Event { event, payload }) => self.on_binary_event(event, payload),
            Ok(BinaryEnvelope::Reply { id, payload }) => {
                let pending = lock(&self.state).pending.remove(&id);
                if let Some(pending) = pending {
                    let _ = pending.sender.send(Ok(Payload::Binary(payload.to_vec())));
                }
            }
            Ok(BinaryEnvelope::Error { id, body }) => {
                let body: Value = serde_json::from_slice(body).unwrap_or_default();
                let code = body["code"].as_str().unwrap_or("internal").to_string();
                let message = body["message"].as_str().unwrap_or_default().to_string();
                let pending = lock(&self.state).pending.remove(&id);
                if let Some(pending) = pending {
                    let _ = pending.sender.send(Err(AppError::Remote { code, message }));
                }
            }
            // A call with bytes: the procedure reads them as `{"base64": …}`.
            Ok(BinaryEnvelope::Request { id, event, payload }) => {
                self.answer_call(id, event, base64_json(payload)).send_here(conn);
            }
            Ok(BinaryEnvelope::Unknown) => {}
            // Never answered (PROTOCOL.md §2): reported locally.
            Err(bad) => {
                let message = format!("the server sent a bad binary envelope: {}", bad.message);
                self.dispatch("@error", &json!({"code": "bad_request", "message": message}));
            }
        }
    }

    fn on_io_thread(&self) -> bool {
        lock(&self.state).io_thread == Some(thread::current().id())
    }

    /// Calls the listeners of `event` (or the `@any` listeners if it has none).
    fn dispatch(&self, event: &str, data: &Value) {
        let chosen: Vec<(String, Listener)> = {
            let listeners = read(&self.listeners);
            let mut chosen: Vec<_> =
                listeners.iter().filter(|(_, name, _)| name == event).map(|(_, n, l)| (n.clone(), l.clone())).collect();
            if chosen.is_empty() && !event.starts_with('@') {
                chosen = listeners
                    .iter()
                    .filter(|(_, name, _)| name == "@any")
                    .map(|(_, _, l)| (event.to_string(), l.clone()))
                    .collect();
            }
            chosen
        };
        for (name, listener) in chosen {
            listener(&name, data);
        }
    }

    /// A connection attempt failed: retry after a backoff, or give up (or
    /// jump, if one was asked for meanwhile).
    fn attempt_failed(&self, error: &ClientError) {
        self.dispatch("@error", &json!({"code": "connect_failed", "message": error.to_string()}));
        let jumping = {
            let mut state = lock(&self.state);
            state.dialing = false;
            std::mem::take(&mut state.jumping)
        };
        if jumping {
            return self.jump_now("jump");
        }
        let refused = matches!(error, ClientError::Status { status, .. } if refuses_retry_status(*status));
        self.retry(error.to_string(), refused);
    }

    /// Connects to the (new) URL at once, no backoff: a jump, `by` the
    /// user's [`AppClient::jump`] or a drain's redirect.
    fn jump_now(&self, by: &str) {
        let mut state = lock(&self.state);
        if state.gone.is_some() {
            return;
        }
        state.jumping = false;
        state.jumps += 1;
        state.attempt = 0;
        let change = state.set_status(Status::Reconnecting);
        drop(state);
        self.announce(change);
        let url = lock(&self.url).clone();
        self.dispatch("@jump", &json!({"url": url, "by": by}));
        self.dial();
    }

    /// The connection was lost or an attempt failed: announce and schedule
    /// the next attempt after a backoff, or give up and go OFFLINE (also at
    /// once when the server `refused`: PROTOCOL.md §6, "do not retry").
    fn retry(&self, why: String, refused: bool) {
        let mut state = lock(&self.state);
        if state.gone.is_some() {
            return;
        }
        let exhausted = self.options.max_retries.is_some_and(|max| state.attempt >= max);
        if refused || !self.options.reconnect || exhausted {
            let error = AppError::Offline(why.clone());
            state.gone = Some(error.clone());
            let change = state.set_status(Status::Offline);
            let dropped = state.fail_all(&error);
            state.first.get_or_insert(Err(AppError::ConnectFailed(why.clone())));
            self.settled.notify_all();
            let attempts = state.attempt;
            drop(state);
            self.announce(change);
            if dropped > 0 {
                let message = format!("{dropped} queued events dropped: gave up reconnecting ({why})");
                self.dispatch("@error", &json!({"code": "offline", "message": message}));
            }
            // Last: the event that says it is over.
            self.dispatch("@reconnect_failed", &json!({"attempts": attempts, "reason": why}));
            return;
        }
        let doubled = self.options.reconnect_delay.saturating_mul(1 << state.attempt.min(16));
        let ceiling = doubled.min(self.options.max_reconnect_delay);
        let jitter = 0.5 + (state.jitter.next_u64() >> 11) as f64 / (1u64 << 53) as f64 / 2.0;
        let delay = ceiling.mul_f64(jitter);
        state.attempt += 1;
        let (attempt, jumps) = (state.attempt, state.jumps);
        let change = state.set_status(Status::Reconnecting);
        drop(state);
        self.announce(change);
        self.dispatch("@reconnecting", &json!({"attempt": attempt, "delay_ms": delay.as_millis() as u64}));
        let me = self.me.clone();
        thread::spawn(move || {
            thread::sleep(delay);
            if let Some(inner) = me.upgrade() {
                let state = lock(&inner.state);
                // Not after a close, nor after a jump that already connected elsewhere.
                if state.gone.is_none() && state.jumps == jumps {
                    drop(state);
                    inner.dial();
                }
            }
        });
    }

    /// Dispatches a `@status` change, if there was one.
    fn announce(&self, change: Option<Value>) {
        if let Some(change) = change {
            self.dispatch("@status", &change);
        }
    }

    /// The server admitted the socket: READY, the queue goes out, then the
    /// listeners run. The resume token is kept, out of the welcome's sight.
    fn ready(&self, conn: &mut Conn<'_, ()>, data: &Value) {
        let mut welcome = data.clone();
        let token = welcome.as_object_mut().and_then(|fields| fields.remove("resume"));
        let mut state = lock(&self.state);
        if state.status != Status::Authenticating {
            drop(state);
            return self.dispatch("@ready", &welcome);
        }
        if state.resume_id.is_some() {
            // Admitted without an answer to `@resume` (its reply comes first):
            // nothing of the old session is known to be back.
            drop(state);
            self.resume_answered(not_resumed(&welcome["socket"]));
            state = lock(&self.state);
        }
        state.resume_token = token.and_then(|token| token.as_str().map(str::to_string));
        state.ready_deadline = None;
        state.attempt = 0;
        state.welcome = Some(welcome.clone());
        let change = state.set_status(Status::Ready);
        let reconnected = std::mem::replace(&mut state.ever_ready, true);
        let Session { queue, pending, .. } = &mut *state;
        for queued in queue.drain(..) {
            let waiting = queued.request.map(|id| pending.get_mut(&id));
            match waiting {
                // The caller stopped waiting (timeout): the request is not sent.
                Some(None) => continue,
                Some(Some(request)) => request.sent = true,
                None => {}
            }
            queued.frame.send_here(conn);
        }
        drop(state);
        self.announce(change);
        self.dispatch("@ready", &welcome);
        if reconnected {
            self.dispatch("@reconnect", &json!({}));
        }
        // Only now may `open` return: a listener added after it must not
        // see the first connection's events some of the time.
        lock(&self.state).first.get_or_insert(Ok(()));
        self.settled.notify_all();
    }

    /// The outcome of `@resume` (the server's reply, or [`not_resumed`]):
    /// the kept positions follow it, then `@resumed` tells the application.
    fn resume_answered(&self, outcome: Value) {
        let mut state = lock(&self.state);
        state.resume_id = None;
        state.positions.resumed(&outcome);
        state.resumed = Some(outcome.clone());
        drop(state);
        self.dispatch("@resumed", &outcome);
    }

    fn close(&self) {
        self.closing.store(true, Ordering::Relaxed);
        self.close_now();
        self.closing.store(false, Ordering::Relaxed);
    }

    fn close_now(&self) {
        let mut state = lock(&self.state);
        let change = state.set_status(Status::Offline);
        state.gone = Some(AppError::Closed);
        state.resume_token = None;
        if let Some(id) = state.conn.take() {
            self.dialer.close(id, CloseCode::NORMAL, "");
        }
        state.fail_all(&AppError::Closed);
        state.first.get_or_insert(Err(AppError::Closed));
        self.settled.notify_all();
        let on_io_thread = state.io_thread == Some(thread::current().id());
        drop(state);
        self.announce(change);
        // Listeners and procedures may hold clones of the client: dropping
        // them here lets the client go.
        write(&self.listeners).clear();
        write(&self.procedures).clear();
        let running = lock(&self.running).take();
        if let Some(running) = running {
            if on_io_thread {
                // Joining the I/O thread from itself would never return: let it wind down alone.
                running.handle().shutdown();
                std::mem::forget(running);
            } else {
                running.shutdown();
            }
        }
    }
}

impl Drop for ClientCore {
    fn drop(&mut self) {
        self.close();
    }
}

/// The connection's handler on the I/O thread. The client is set once it
/// exists (the I/O thread is started first); the handler does not keep it alive.
#[derive(Clone)]
struct Link {
    inner: Arc<OnceLock<Weak<ClientCore>>>,
}

impl Link {
    fn inner(&self) -> Option<Arc<ClientCore>> {
        self.inner.get()?.upgrade()
    }
}

impl Handler for Link {
    type Data = ();

    /// A socket opened: AUTHENTICATING until the server's `@ready`, with the auth request (if any) sent first.
    fn on_open(&mut self, conn: &mut Conn<'_, ()>) {
        let Some(inner) = self.inner() else { return };
        let mut state = lock(&inner.state);
        if state.gone.is_some() {
            conn.close(CloseCode::NORMAL, "");
            return;
        }
        state.conn = Some(conn.id());
        state.dialing = false;
        if state.jumping {
            // Opened on the server the client is leaving: `on_close` jumps.
            conn.close(crate::app::CLOSE_MOVING, "jump");
            return;
        }
        state.io_thread = Some(thread::current().id());
        state.ready_deadline = Some(Instant::now() + inner.options.connect_timeout);
        let reconnected = std::mem::replace(&mut state.ever_opened, true);
        let change = state.set_status(Status::Authenticating);
        if let Some(auth) = &inner.options.auth {
            let id = inner.next_id.fetch_add(1, Ordering::Relaxed);
            state.auth_id = Some(id);
            let _ = conn.send_text(&json!([REQUEST, id, auth.event, auth.data]).to_string());
        }
        state.resumed = None;
        match &state.resume_token {
            // Right after the auth request, without waiting for `@ready`;
            // the connect timeout bounds the wait for its reply, which
            // comes before `@ready`.
            Some(token) => {
                let id = inner.next_id.fetch_add(1, Ordering::Relaxed);
                let _ = conn.send_text(&state.positions.request(id, token));
                state.resume_id = Some(id);
            }
            // A new session: the old one's positions mean nothing to it.
            None => state.positions.clear(),
        }
        drop(state);
        inner.announce(change);
        inner.dispatch("@connection", &json!({"reconnected": reconnected}));
    }

    fn on_message(&mut self, conn: &mut Conn<'_, ()>, message: Message<'_>) {
        let Some(inner) = self.inner() else { return };
        let text = match message {
            Message::Text(text) => text,
            Message::Binary(frame) => return inner.on_binary(conn, frame),
        };
        let envelope: Value = match serde_json::from_str(text) {
            Ok(envelope) => envelope,
            Err(e) => {
                let error = json!({"code": "bad_request", "message": format!("the server sent invalid JSON: {e}")});
                return inner.dispatch("@error", &error);
            }
        };
        let Some(parts) = envelope.as_array() else { return };
        let part = |i: usize| parts.get(i).unwrap_or(&Value::Null);
        match part(0).as_u64() {
            Some(EVENT) => match part(1).as_str() {
                Some("@ready") => inner.ready(conn, part(2)),
                // A broadcast of a room with history is dropped if it came already (a replay's overlap).
                Some(event) if parts.len() < 4 || lock(&inner.state).positions.accept(part(3)) => {
                    inner.dispatch(event, part(2))
                }
                _ => {}
            },
            Some(REQUEST) => {
                let (Some(id), Some(name)) = (part(1).as_u64(), part(2).as_str()) else { return };
                inner.answer_call(id, name, part(3).clone()).send_here(conn);
            }
            Some(kind @ (REPLY | ERROR)) => {
                let Some(id) = part(1).as_u64() else { return };
                let code = part(2)["code"].as_str().unwrap_or("internal");
                let message = part(2)["message"].as_str().unwrap_or_default();
                let mut state = lock(&inner.state);
                if state.resume_id == Some(id) {
                    drop(state);
                    let outcome = match kind {
                        REPLY => part(2).clone(),
                        _ => {
                            let message = format!("the resume request was refused: {message}");
                            inner.dispatch("@error", &json!({"code": code, "message": message}));
                            not_resumed(&Value::Null)
                        }
                    };
                    return inner.resume_answered(outcome);
                }
                if state.auth_id == Some(id) {
                    state.auth_id = None;
                    drop(state);
                    if kind == ERROR {
                        let message = format!("the auth request was refused: {message}");
                        inner.dispatch("@error", &json!({"code": code, "message": message}));
                    }
                    return;
                }
                let Some(pending) = state.pending.remove(&id) else { return };
                drop(state);
                let result = match kind {
                    REPLY => Ok(Payload::Json(part(2).clone())),
                    _ => Err(AppError::Remote { code: code.to_string(), message: message.to_string() }),
                };
                let _ = pending.sender.send(result);
            }
            // Envelope types from later versions are ignored.
            _ => {}
        }
    }

    fn on_close(&mut self, _: &mut Conn<'_, ()>, why: &CloseReason) {
        let (code, reason) = (why.code(), &*why.reason());
        let Some(inner) = self.inner() else { return };
        let jump = {
            let mut state = lock(&inner.state);
            state.conn = None;
            state.auth_id = None;
            state.resume_id = None;
            state.ready_deadline = None;
            state.welcome = None;
            state.fail_sent(&AppError::Disconnected(format!("connection closed ({code} {reason})")));
            let jump = if std::mem::take(&mut state.jumping) {
                Some("jump")
            } else if code == DRAIN_CLOSE_CODE && crate::dial::Url::parse(reason).is_ok() {
                // A drained node names the node to go to (PROTOCOL.md §6).
                *lock(&inner.url) = reason.to_string();
                Some("drain")
            } else {
                None
            };
            // A jump closes with 4001 by itself; a close that ends the
            // server's session leaves nothing to resume.
            if jump.is_none() && !crate::app::keeps_session(code) {
                state.resume_token = None;
            }
            jump
        };
        inner.dispatch("@disconnect", &json!({"code": code.0, "reason": reason}));
        match jump {
            Some(by) => inner.jump_now(by),
            None => inner.retry(format!("connection closed ({code} {reason})"), refuses_retry(code)),
        }
    }

    fn on_connect_error(&mut self, _: (), error: ClientError) {
        let Some(inner) = self.inner() else { return };
        inner.attempt_failed(&error);
    }

    /// Gives up on a socket that stays AUTHENTICATING past the connect timeout.
    fn on_turn(&mut self, conns: &mut Conns<'_, ()>) -> Option<Duration> {
        let inner = self.inner()?;
        let mut state = lock(&inner.state);
        let deadline = state.ready_deadline?;
        let left = deadline.saturating_duration_since(Instant::now());
        if !left.is_zero() {
            return Some(left);
        }
        state.ready_deadline = None;
        let id = state.conn?;
        drop(state);
        if let Some(mut conn) = conns.get(id) {
            conn.close(CLOSE_TIMEOUT, "no @ready within the connect timeout");
        }
        None
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(|poisoned| poisoned.into_inner())
}
