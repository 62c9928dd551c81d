//! The event framework: named events, requests and replies, rooms and tags,
//! users and devices, server-to-client calls — the emit.gg model on the
//! engine, speaking `emitws.v1` (PROTOCOL.md).
//!
//! ```text
//!  frame ─► envelope (borrowed: &str name, &RawValue data) ─► middleware ─► handler(req)
//!  req.reply / emit ─► one text frame written into the socket's output
//!  broadcast ─► SharedFrame (encoded once) ─► every worker with members ─► their sockets
//! ```
//!
//! ```no_run
//! use emitws::app::{App, BroadcastOpts};
//!
//! let mut app = App::new();
//! app.on("@connection", |req| println!("connected: {}", req.conn_id()));
//! app.on("/ping", |req| req.reply(&serde_json::json!({ "pong": true })));
//! app.on("/join", |req| {
//!     let _ = req.join("#chat");
//!     let _ = req.broadcast("/joined", &req.conn_id().to_string(), BroadcastOpts::to("#chat"));
//!     req.reply(&true);
//! });
//! let running = app.listen("127.0.0.1:3000")?;
//! running.broadcast("/news", "hello everyone", BroadcastOpts::all())?;
//! running.join();
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Handlers run on the worker that owns the socket and must not block it:
//! [`Request::defer`] hands the reply to another thread.

//!
//! # Modules
//!
//! Each file holds one idea; read top-down, each uses only files listed
//! below it (besides this file's configuration and close codes):
//!
//! ```text
//!  mod.rs           App and its AppConfig: routes, auth, rules, limits; listen
//!  └ handler        the runtime Handler: a socket's life, envelopes to handlers
//!    ├ router       routes, middleware, namespaces
//!    ├ request      Request, ReplyHandle: what a handler gets
//!    └ users        a user's devices: the cap, the cluster's count, presence hooks
//!      └ worker_state   one worker's own state: groups, calls, outbox, scratch
//!        └ handle   AppHandle, SocketRef, UserRef, Running: the app from any thread
//!          ├ cluster_view   queries for every node
//!          ├ cluster_event  ClusterEvent: the cluster's health, for on_cluster
//!          ├ adapter        the Adapter trait, targets, scopes, presence
//!          ├ session        sessions kept for resume, resume tokens
//!          └ inbox          what other threads post to a worker
//!            ├ connect      upgrades: Connecting, Refusal, path routes, Challenge;
//!            │              connection facts: proxies, metadata, identity, generated ids
//!            ├ groups       rooms and tags, broadcast deliveries
//!            ├ socket       SocketData, the per-socket state
//!            └ rpc, envelope, disconnect, socket_id, limits, error, locks
//! ```
//!
//! The edges that point up are type names only, where the app's state holds
//! callbacks that receive it: the configuration stores handlers taking a
//! `Request` and an `Adapter` whose `attach` takes an `AppHandle`;
//! `cluster_view`'s `ClusterView` borrows the `AppHandle` that makes it.
//! A `PathRoute` (connect) keeps a `Router` of its own handlers until the
//! app listens and the app's router takes them in.

mod adapter;
#[cfg(feature = "tokio")]
mod async_handler;
pub(crate) mod binary;
pub(crate) mod binary_v1;
mod cluster_event;
mod cluster_view;
mod connect;
mod disconnect;
mod envelope;
mod error;
mod groups;
mod handle;
mod handler;
pub mod health;
mod history;
mod inbox;
mod limits;
mod locks;
#[cfg(feature = "msgpack")]
pub mod msgpack;
mod request;
mod router;
mod rpc;
mod session;
mod socket;
mod socket_id;
mod users;
mod worker_state;

use std::fmt;
use std::io;
use std::net::ToSocketAddrs;
use std::sync::Arc;
use std::time::Duration;

pub use adapter::{
    Adapter, AskDone, ClaimDone, ClaimOutcome, ClaimedSession, DeviceChange, DeviceCount, DeviceDone, Presence, Scope,
    SessionClaim, SocketAnswer, SocketAsk, Target,
};
#[cfg(feature = "tokio")]
pub use async_handler::{
    AsyncRequest, ReplyError, ASYNC_THREAD_NAME, DEFAULT_ASYNC_THREADS, DEFAULT_MAX_ASYNC_PER_SOCKET,
};
pub use binary::{MAX_BINARY_NAME, PROTOCOL_V2};
pub use cluster_event::ClusterEvent;
pub use cluster_view::ClusterView;
pub use connect::{BadProxy, Challenge, Connecting, PathRoute, ProxyNet, Refusal, MAX_GENERATED_ID};
pub use disconnect::{After, Gone};
pub use envelope::MAX_ID;
pub use error::Error;
pub use groups::BroadcastOpts;
pub use handle::{AppHandle, PendingPing, PendingReadyState, ReadyState, Running, SocketRef, UserRef};
pub use handler::PROTOCOL;
pub use history::History;
pub use limits::{EventLimits, Policy, Rate};
pub use request::{DataError, ReplyHandle, Request};
pub use router::{Middleware, Next, Ns};
pub use rpc::{CallError, CallReply, CallResult, GroupOutcome, PendingCall, PendingOp};
pub use socket::SocketData;
pub use socket_id::{BadSocketId, SocketId};

use connect::{ConnectFn, IdentifyFn};
use handler::AppWorker;
// The Redis adapter's requests to other nodes time out as calls do.
#[cfg_attr(not(feature = "redis"), allow(unused_imports))]
pub(crate) use rpc::deadline_after;
// The clients ask it too: which closes keep a session.
use router::Router;
pub(crate) use session::keeps_session;

use crate::metrics::Metrics;
use crate::proto::handshake::server::HttpRequest;
use crate::proto::CloseCode;
use crate::runtime::{HttpResponse, OriginPolicy, Server};

/// Close code: the server dropped the socket or its user ([`AppHandle::drop_user`]).
pub const CLOSE_DROPPED: CloseCode = CloseCode(4000);
/// Close code: authentication did not finish in time, or heartbeats went unanswered.
pub const CLOSE_TIMEOUT: CloseCode = CloseCode(4408);
/// Close code: the client moves to another server on purpose (its `jump`,
/// from the client): unlike its 1000, the session is kept for a resume.
pub const CLOSE_MOVING: CloseCode = CloseCode(4001);
/// Close code: the user has too many devices connected ([`DevicePolicy::RejectNew`]).
pub const CLOSE_TOO_MANY_DEVICES: CloseCode = CloseCode(4429);
/// Close code: a newer device of the same user took this one's place ([`DevicePolicy::DropOldest`]).
pub const CLOSE_REPLACED: CloseCode = CloseCode(4409);

/// What happens when a user connects one device more than allowed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DevicePolicy {
    /// The new socket is closed with 4429.
    RejectNew,
    /// The oldest socket is closed with 4409; the new one stays.
    DropOldest,
}

/// An app being set up: routes, middleware, plugins, connection rules,
/// limits. [`listen`](Self::listen) starts it.
pub struct App {
    config: AppConfig,
    origins: Option<Vec<String>>,
}

/// What an app is made of, fixed once it listens.
#[derive(Default)]
pub(crate) struct AppConfig {
    router: Router,
    paths: Vec<PathRoute>,
    connect: Vec<ConnectFn>,
    auth: Auth,
    limits: EventLimits,
    heartbeat: Option<Duration>,
    devices: Option<(usize, DevicePolicy)>,
    /// Runs when a user's first device comes in ([`App::on_user_online`]).
    user_online: Option<UserHook>,
    /// Runs when a user's last device is gone ([`App::on_user_offline`]).
    user_offline: Option<UserHook>,
    /// How long a user's last device may be gone before it goes offline
    /// ([`App::presence_grace`]).
    pub(crate) presence_grace: Option<Duration>,
    adapter: Option<Arc<dyn Adapter>>,
    http: Option<HttpFn>,
    /// Where the app and its server count.
    pub(crate) metrics: Metrics,
    /// Whether handler times go into the histogram (two clock reads per message).
    time_handlers: bool,
    /// The app's `/healthz` and `/readyz`, told the app when it listens.
    probes: health::Probes,
    /// Which rooms keep history, first match first.
    history: history::HistoryRules,
    /// How sockets lost by accident are kept for a resume.
    resume: session::ResumeSettings,
    /// The hook for the cluster's health ([`App::on_cluster`]).
    pub(crate) cluster_events: Option<cluster_event::ClusterEventFn>,
    /// Trusted proxies, the per-address cap, metadata, generated ids
    /// (PROTOCOL.md §14), and the tables they fill while the app runs.
    pub(crate) conn: connect::ConnSettings,
    /// Member caps of rooms, first match first ([`App::room_cap`]).
    room_caps: Vec<(history::RoomPattern, usize)>,
    /// The async handlers' runtime, cap and futures in flight ([`App::on_async`]).
    #[cfg(feature = "tokio")]
    pub(crate) async_tasks: async_handler::AsyncTasks,
}

/// How sockets authenticate, if they must.
#[derive(Clone, Default)]
pub(crate) enum Auth {
    #[default]
    None,
    Upgrade(IdentifyFn),
    FirstMessage(Box<str>, IdentifyMessageFn),
    Challenge(Challenge),
}

/// Identification by the socket's first request.
pub(crate) type IdentifyMessageFn = Arc<dyn Fn(&mut Request<'_>) -> Result<String, Refusal> + Send + Sync>;

/// A user presence hook: the app, the user.
pub(crate) type UserHook = Arc<dyn Fn(&AppHandle, &str) + Send + Sync>;

/// Answers plain HTTP requests on the app's port.
type HttpFn = Arc<dyn Fn(&HttpRequest<'_>) -> Option<HttpResponse> + Send + Sync>;

impl fmt::Debug for App {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("App").field("limits", &self.config.limits).field("heartbeat", &self.config.heartbeat).finish()
    }
}

impl Default for App {
    fn default() -> Self {
        App::new()
    }
}

impl App {
    /// An app with no routes and the default [`EventLimits`].
    pub fn new() -> App {
        App { config: AppConfig::default(), origins: None }
    }

    /// Handles an event (`/name`) or a system event: `@connection`,
    /// `@disconnect` (data `{code, reason, resumable}`: `resumable` is
    /// true when the socket's session is kept for a resume), `@error` (data `{code,
    /// message}` for bad input from a socket, every refused message
    /// included; `{code: "internal", message, event}` when a handler of
    /// `event` panicked), `@any` (events without a handler), `@ping`
    /// (heartbeat answers, data `{rtt_ms}`).
    pub fn on(&mut self, event: &str, handler: impl Fn(&mut Request<'_>) + Send + Sync + 'static) -> &mut Self {
        self.config.router.add(event, Vec::new(), Arc::new(handler));
        self
    }

    /// Handles an event behind route middleware (one or a list), which run in order.
    pub fn on_with(
        &mut self,
        event: &str,
        middleware: impl IntoIterator<Item = Middleware>,
        handler: impl Fn(&mut Request<'_>) + Send + Sync + 'static,
    ) -> &mut Self {
        self.config.router.add(event, middleware.into_iter().collect(), Arc::new(handler));
        self
    }

    /// Adds global middleware (emit.gg's `app.use`; `use` is a Rust keyword):
    /// it runs before every user event's handler, in the order added.
    /// Call `next.run(req)` to go on; return without it to stop the chain.
    pub fn middleware(&mut self, middleware: impl Fn(&mut Request<'_>, Next<'_>) + Send + Sync + 'static) -> &mut Self {
        self.config.router.add_middleware(Middleware::new(middleware));
        self
    }

    /// Trusts these proxies (addresses or networks: `127.0.0.1`,
    /// `10.0.0.0/8`, `fd00::/8`) to say who their client is: a connection
    /// whose TCP peer is one of them takes its address from
    /// `X-Forwarded-For`, the rightmost entry that is not itself a trusted
    /// proxy. That address is what [`Connecting::peer_addr`],
    /// [`Request::peer_addr`] and the per-address cap
    /// ([`max_sockets_per_ip`](Self::max_sockets_per_ip)) see. From any
    /// other peer the header is ignored: a client cannot pick its own
    /// address. None by default. Each call replaces the list.
    ///
    /// # Errors
    ///
    /// [`BadProxy`] for the first entry that is neither an IP address nor
    /// `ADDRESS/BITS`; the list is then left as it was.
    ///
    /// ```
    /// let mut app = emitws::app::App::new();
    /// app.trusted_proxies(["127.0.0.1", "10.0.0.0/8"])?.max_sockets_per_ip(Some(20));
    /// app.on("/whoami", |req| {
    ///     let addr = req.peer_addr().map(|a| a.ip().to_string());
    ///     req.reply(&addr);
    /// });
    /// # Ok::<(), emitws::app::BadProxy>(())
    /// ```
    pub fn trusted_proxies(
        &mut self,
        proxies: impl IntoIterator<Item = impl AsRef<str>>,
    ) -> Result<&mut Self, BadProxy> {
        self.config.conn.proxies = proxies.into_iter().map(|p| p.as_ref().parse()).collect::<Result<_, _>>()?;
        Ok(self)
    }

    /// Caps the sockets open at once per client address (default `None`:
    /// no cap; at least 1), counted by the address behind
    /// [trusted proxies](Self::trusted_proxies) at upgrade time; over it
    /// the upgrade gets 503. The server's own
    /// [`max_connections_per_ip`](crate::runtime::Server::max_connections_per_ip)
    /// counts TCP peers before any header is read, so behind a proxy it
    /// counts the proxy: use this one there.
    pub fn max_sockets_per_ip(&mut self, max: Option<usize>) -> &mut Self {
        self.config.conn.max_per_ip = max.map(|max| max.max(1));
        self
    }

    /// The largest metadata a client may send with its connection
    /// (`emitws_meta`, PROTOCOL.md §14), in bytes of JSON (default 4 KiB;
    /// larger: the upgrade gets 400).
    pub fn max_meta(&mut self, bytes: usize) -> &mut Self {
        self.config.conn.max_meta = bytes;
        self
    }

    /// Gives each socket an id of the app's own at upgrade time
    /// (egg-socket.io's `generateId`): a device id, a session's, from the
    /// request. The socket keeps its cluster-wide [`SocketId`], which routes
    /// its messages; the generated id is sent to the client in `@ready`
    /// (`"id"`), read in handlers with [`Request::generated_id`], and finds
    /// the socket with [`AppHandle::socket_by_generated_id`]. It must be 1
    /// to [`MAX_GENERATED_ID`] bytes (else the upgrade gets 500); the hook
    /// may refuse the connection. An id is one socket's: a connection given
    /// an id another socket has takes it (the same device back before its
    /// old socket's loss was noticed, most often, which must not be locked
    /// out meanwhile): the id then finds the new socket, and the older one,
    /// left connected until the heartbeat, a resume's takeover or the app
    /// closes it, has none. With the Redis adapter this holds across the
    /// cluster: the newest claim of an id on any node takes it, and
    /// [`AppHandle::lookup_generated_id`] finds it from any node; without
    /// one, ids are this node's (PROTOCOL.md §14).
    ///
    /// ```
    /// use emitws::app::{App, Refusal};
    /// let mut app = App::new();
    /// app.generate_id(|conn| match conn.query_value("device") {
    ///     Some(device) if !device.is_empty() => Ok(format!("device-{device}")),
    ///     _ => Err(Refusal::status(400, "?device= is required")),
    /// });
    /// app.on("/me", |req| {
    ///     let id = req.generated_id().map(str::to_owned);
    ///     req.reply(&id);
    /// });
    /// ```
    pub fn generate_id(
        &mut self,
        generate: impl Fn(&Connecting<'_>) -> Result<String, Refusal> + Send + Sync + 'static,
    ) -> &mut Self {
        self.config.conn.generate_id = Some(Arc::new(generate));
        self
    }

    /// Applies a plugin — any function of the app — or a list of them, in
    /// order (emit.gg's `app.plugin([a, b])`): an array or a `Vec` of
    /// plugins of one type, a tuple of plugins of different types, or boxed
    /// ones (see [`Plugin`]). A closure written in place names its
    /// argument's type (`|app: &mut App| …`): the compiler infers it only
    /// for plugins made by functions, such as those of [`plugins`].
    ///
    /// ```
    /// use std::time::Duration;
    /// use emitws::app::{plugins, App};
    ///
    /// fn greeter(app: &mut App) {
    ///     app.on("/hello", |req| req.reply(&"hi"));
    /// }
    /// let mut app = App::new();
    /// app.plugin(plugins::heartbeat(Duration::from_secs(30)));
    /// app.plugin([greeter, greeter]);
    /// app.plugin((plugins::heartbeat(Duration::from_secs(30)), greeter));
    /// let list: Vec<Box<dyn FnOnce(&mut App)>> = vec![Box::new(greeter), Box::new(|app: &mut App| {
    ///     app.on("/bye", |req| req.reply(&"bye"));
    /// })];
    /// app.plugin(list);
    /// ```
    pub fn plugin(&mut self, plugin: impl Plugin) -> &mut Self {
        plugin.apply(self);
        self
    }

    /// A namespace: events under `prefix`.
    pub fn ns(&mut self, prefix: &str) -> Ns<'_> {
        Ns { app: self, prefix: prefix.into() }
    }

    /// Accepts connections on a path pattern (`/chat/:room`). Once any route
    /// is declared, upgrades to other paths get 404.
    pub fn route(&mut self, pattern: &str) -> &mut PathRoute {
        self.config.paths.push(PathRoute::new(pattern));
        self.config.paths.last_mut().expect("just pushed")
    }

    /// Adds connection middleware, run at upgrade time for every path (before
    /// a route's own). It may refuse ([`Refusal`]) and may leave code to run
    /// at disconnect ([`After`]).
    pub fn on_connect(
        &mut self,
        middleware: impl Fn(&mut Connecting<'_>) -> Result<After, Refusal> + Send + Sync + 'static,
    ) -> &mut Self {
        self.config.connect.push(Arc::new(middleware));
        self
    }

    /// Identifies users at upgrade time (a token from the query or a header):
    /// the hook returns the user id or a refusal.
    pub fn identify(
        &mut self,
        identify: impl Fn(&mut Connecting<'_>) -> Result<String, Refusal> + Send + Sync + 'static,
    ) -> &mut Self {
        self.config.auth = Auth::Upgrade(Arc::new(identify));
        self
    }

    /// Identifies users by their first request, to `event`: until it succeeds
    /// every other envelope gets `unauthorized`. The client's request gets
    /// `{"user": id}` back, or the error `unauthorized` and a close with the
    /// refusal's code.
    pub fn identify_by_message(
        &mut self,
        event: &str,
        identify: impl Fn(&mut Request<'_>) -> Result<String, Refusal> + Send + Sync + 'static,
    ) -> &mut Self {
        self.config.auth = Auth::FirstMessage(event.into(), Arc::new(identify));
        self
    }

    /// Authenticates every socket by challenge-response (see [`Challenge`]).
    pub fn challenge(&mut self, challenge: Challenge) -> &mut Self {
        self.config.auth = Auth::Challenge(challenge);
        self
    }

    /// Sets the abuse limits.
    pub fn limits(&mut self, limits: EventLimits) -> &mut Self {
        self.config.limits = limits;
        self
    }

    /// Pings every socket every `interval` (a WebSocket ping whose pong runs
    /// `@ping`), closing with 4408 those that missed two. Replaces the
    /// engine's keepalive. Also available as [`plugins::heartbeat`].
    pub fn heartbeat(&mut self, interval: Option<Duration>) -> &mut Self {
        self.config.heartbeat = interval;
        self
    }

    /// How long a socket lost by accident (a network drop, a 1001, a missed
    /// heartbeat: PROTOCOL.md §13) is kept for its client to resume it with
    /// the same socket id, user, rooms, tags and stored values, and the
    /// direct messages sent to it meanwhile. Default 2 minutes, at most 24
    /// hours (longer is cut to that); `None` keeps nothing, and `@ready`
    /// then carries no `resume` token.
    ///
    /// A kept session holds its stored values and direct messages (see
    /// [`resume_buffer`](Self::resume_buffer)) until it is resumed or its
    /// window ends.
    ///
    /// With an adapter that keeps sessions (the Redis one), the session is
    /// kept in the cluster's store too and any node resumes it, with its id,
    /// user, groups and shared values ([`Request::set_shared`]); its other
    /// stored values ([`Request::set`]) stay in the memory of the node it
    /// was on and come back only when it resumes there.
    ///
    /// ```
    /// use std::time::Duration;
    /// let mut app = emitws::app::App::new();
    /// app.resume_window(Some(Duration::from_secs(30)));
    /// app.on("@connection", |req| {
    ///     if req.resumed() {
    ///         println!("{} is back", req.socket_id());
    ///     }
    /// });
    /// ```
    pub fn resume_window(&mut self, window: Option<Duration>) -> &mut Self {
        self.config.resume.window = window.map(|w| w.min(session::MAX_WINDOW));
        self
    }

    /// How many direct messages ([`AppHandle::emit_to`], [`SocketRef::emit`],
    /// [`UserRef::emit`]) are kept for a socket while it is away (default
    /// 100, at most 10,000); past that the oldest are dropped and the resume
    /// reply says `"direct": {"recovered": false}`.
    pub fn resume_buffer(&mut self, messages: usize) -> &mut Self {
        self.config.resume.buffer = messages.min(session::MAX_BUFFER);
        self
    }

    /// How many sessions are kept for a resume at once (default 100,000, at
    /// least 1): when one more socket is lost, the oldest kept session ends
    /// (its client's `@resume` then answers `"resumed": false`). With the
    /// window and the buffer, it bounds the memory that sessions hold.
    pub fn resume_max_sessions(&mut self, sessions: usize) -> &mut Self {
        self.config.resume.max_sessions = sessions.max(1);
        self
    }

    /// Caps the sockets one user may have open at once (at least 1; no cap
    /// by default), counting those attached with [`Request::set_user`]
    /// too. Each node applies the cap to the devices it holds at once.
    ///
    /// With the Redis adapter the cap is also the cluster's: a script in
    /// Redis adds each device to its user's key, atomically, and answers
    /// what the policy implies — the new socket refused (closed with 4429)
    /// wherever the others are, or the oldest devices closed on whichever
    /// node holds them. The worker does not wait for Redis: the socket is
    /// in meanwhile, and closed if the answer says so. A dead node's
    /// devices stop counting when a survivor cleans up after it. While
    /// Redis cannot be reached only this node's cap applies (logged once
    /// per outage), and Redis counts this node's devices again as they are
    /// once it answers.
    pub fn max_devices(&mut self, max: usize, policy: DevicePolicy) -> &mut Self {
        self.config.devices = Some((max.max(1), policy));
        self
    }

    /// Runs `hook` when a user comes online: its first device is in, on
    /// this node or (with an adapter) anywhere in the cluster. In a cluster
    /// it runs on one node only, the one whose device made the change: an
    /// app that tells others broadcasts from the hook. A socket away for a
    /// resume does not count as a device (as for [`UserRef::is_online`]): a
    /// user whose only socket is lost goes offline, and online again when
    /// it resumes, unless it resumes within the
    /// [`presence_grace`](Self::presence_grace). The hook runs on a worker thread (with an adapter that
    /// counts devices, on the adapter's thread that got the cluster's
    /// answer) and must not block it.
    pub fn on_user_online(&mut self, hook: impl Fn(&AppHandle, &str) + Send + Sync + 'static) -> &mut Self {
        self.config.user_online = Some(Arc::new(hook));
        self
    }

    /// Runs `hook` when a user goes offline: its last device is gone, here
    /// or (with an adapter) everywhere in the cluster, a dead node's devices
    /// included (the survivor that cleans up after it runs the hook). Once
    /// per change, on one node; see [`on_user_online`](Self::on_user_online).
    pub fn on_user_offline(&mut self, hook: impl Fn(&AppHandle, &str) + Send + Sync + 'static) -> &mut Self {
        self.config.user_offline = Some(Arc::new(hook));
        self
    }

    /// Lets browsers connect only from these origins (others get 403;
    /// clients that send no Origin, which are not browsers, pass).
    pub fn origins(&mut self, origins: impl IntoIterator<Item = impl Into<String>>) -> &mut Self {
        self.origins = Some(origins.into_iter().map(Into::into).collect());
        self
    }

    /// Answers plain HTTP requests (not upgrades) on the app's port: a page
    /// and its scripts, a health check. `None` answers 426 Upgrade Required.
    ///
    /// ```
    /// use emitws::runtime::HttpResponse;
    /// let mut app = emitws::app::App::new();
    /// app.on_http(|request| match request.path() {
    ///     "/healthz" => Some(HttpResponse::new(200, "text/plain", "ok")),
    ///     _ => None,
    /// });
    /// ```
    pub fn on_http(
        &mut self,
        handler: impl Fn(&HttpRequest<'_>) -> Option<HttpResponse> + Send + Sync + 'static,
    ) -> &mut Self {
        self.config.http = Some(Arc::new(handler));
        self
    }

    /// Runs `hook` at every change in the cluster's health that the adapter
    /// reports ([`ClusterEvent`]: its store lost and back, nodes joining and
    /// leaving), on the app's first worker, in order; it must not block.
    /// Without an adapter nothing is reported.
    ///
    /// ```
    /// let mut app = emitws::app::App::new();
    /// app.on_cluster(|_app, event| eprintln!("cluster: {event}"));
    /// ```
    pub fn on_cluster(&mut self, hook: impl Fn(&AppHandle, &ClusterEvent) + Send + Sync + 'static) -> &mut Self {
        self.config.cluster_events = Some(Arc::new(hook));
        self
    }

    /// The app's metrics: its server's counters and its own (events and
    /// requests by route, replies by code, rooms, calls). It replaces the
    /// registry of the [`Server`] given to [`listen_with`](Self::listen_with).
    /// Take it before [`listen`](Self::listen) to serve it from [`on_http`](Self::on_http):
    ///
    /// ```
    /// let mut app = emitws::app::App::new();
    /// let metrics = app.metrics();
    /// app.on_http(move |request| (request.path() == "/metrics").then(|| metrics.http_response()));
    /// ```
    pub fn metrics(&self) -> Metrics {
        self.config.metrics.clone()
    }

    /// The app's health checks, `/healthz` and `/readyz` (see [`health`]):
    /// take them before [`listen`](Self::listen) to serve them from
    /// [`on_http`](Self::on_http); they follow the app once it listens.
    ///
    /// ```
    /// let mut app = emitws::app::App::new();
    /// let probes = app.probes();
    /// app.on_http(move |request| probes.answer(request.path()));
    /// ```
    pub fn probes(&self) -> health::Probes {
        self.config.probes.clone()
    }

    /// Times every event and request handler into the metrics' histogram
    /// (default off: the two clock reads per message cost more than the
    /// rest of the metrics together; see docs/BENCHMARKS.md, "Metrics cost").
    pub fn time_handlers(&mut self, on: bool) -> &mut Self {
        self.config.time_handlers = on;
        self
    }

    /// Plugs in a cluster transport.
    pub fn adapter(&mut self, adapter: Arc<dyn Adapter>) -> &mut Self {
        self.config.adapter = Some(adapter);
        self
    }

    /// Gives history to a room (`#lobby`), or to every room whose name
    /// starts with a prefix (`#game:*`): each broadcast addressed to such a
    /// room alone gets the room's next offset and is delivered with a fourth
    /// element `{"room","offset","epoch"}`, and the room keeps its last
    /// broadcasts so that a socket that resumes gets those it missed
    /// (PROTOCOL.md §13). Broadcasts to several groups at once, to
    /// everyone, or to other rooms are unchanged. Patterns are tried in the
    /// order given; the first that matches applies. Tags (`*name`) have no
    /// history.
    ///
    /// The history is kept in this process's memory: a room's stream starts
    /// anew, with a new epoch, when the server restarts, or when all its
    /// broadcasts have expired while nobody here is in the room. Expired
    /// broadcasts are dropped when the room is next used; the streams of
    /// rooms nobody uses any more, each time the number of streams has
    /// doubled, so memory stays within twice what the rooms in use need. In a
    /// cluster each node numbers the broadcasts made on it, and the other
    /// nodes relay them with those numbers: one stream per room across the
    /// nodes needs the cluster's store, which does not keep history yet.
    ///
    /// # Panics
    ///
    /// If `pattern` is not a room name or a room prefix ending in `*` (a
    /// tag, a name without `#`, a `*` elsewhere than at the end): a setup
    /// mistake, found at start.
    ///
    /// ```
    /// use std::time::Duration;
    /// use emitws::app::{App, BroadcastOpts, History};
    ///
    /// let mut app = App::new();
    /// app.history("#lobby", History::new(500, Duration::from_secs(300)))
    ///     .history("#game:*", History::new(50, Duration::from_secs(60)));
    /// app.on("/say", |req| {
    ///     // Delivered as [0,"/said",data,{"room":"#lobby","offset":n,"epoch":"…"}].
    ///     let data = req.raw_data();
    ///     let _ = req.broadcast("/said", &data, BroadcastOpts::to("#lobby"));
    /// });
    /// ```
    pub fn history(&mut self, pattern: &str, history: History) -> &mut Self {
        match history::RoomPattern::parse(pattern) {
            Ok(pattern) => self.config.history.push((pattern, history)),
            Err(e) => panic!("App::history: {e}"),
        }
        self
    }

    /// Caps the members of a room (`#lobby`), or of every room whose name
    /// starts with a prefix (`#duel:*`), at `members` (at least 1; rooms
    /// have no cap by default): a join over it — [`Request::join`],
    /// [`SocketRef::join`] from any node — is refused with
    /// [`Error::RoomFull`], code `room_full` (PROTOCOL.md §5). Patterns are
    /// tried in the order given; the first that matches applies, to each
    /// room on its own.
    ///
    /// The cap is per node: each node counts the members it holds, under
    /// one lock, so that on a node a room never holds more than `members`
    /// sockets, whichever workers they are on. In a cluster a room spread
    /// over `n` nodes may hold up to `n × members` (the cluster's room
    /// sizes, [`ClusterView`], are only eventually consistent, so no node
    /// can refuse on them exactly); to cap a room cluster-wide, keep its
    /// members on one node (join them there with [`SocketRef::join`]). A
    /// socket that resumes (PROTOCOL.md §13) gets its rooms back even if
    /// others filled them meanwhile: it held its place.
    ///
    /// # Panics
    ///
    /// If `pattern` is not a room name or a room prefix ending in `*`: a
    /// setup mistake, found at start.
    ///
    /// ```
    /// use emitws::app::App;
    /// let mut app = App::new();
    /// app.room_cap("#duel:*", 2).room_cap("#lobby", 500);
    /// app.on("/duel", |req| {
    ///     let Some(id) = req.expect_data::<u32>() else { return };
    ///     match req.join(&format!("#duel:{id}")) {
    ///         Ok(()) => req.reply(&true),
    ///         // The third player gets [3, id, {"code": "room_full", …}].
    ///         Err(e) => req.reply_err(e.code(), &e.to_string()),
    ///     }
    /// });
    /// ```
    pub fn room_cap(&mut self, pattern: &str, members: usize) -> &mut Self {
        match history::RoomPattern::parse(pattern) {
            Ok(pattern) => self.config.room_caps.push((pattern, members.max(1))),
            Err(e) => panic!("App::room_cap: {}", e.replacen("history pattern", "room pattern", 1)),
        }
        self
    }

    /// Starts serving on `addr` with the engine's default settings.
    ///
    /// # Errors
    ///
    /// As [`listen_with`](Self::listen_with).
    pub fn listen(self, addr: impl ToSocketAddrs) -> io::Result<Running> {
        self.listen_with(Server::new(), addr)
    }

    /// Starts serving on `addr` with these engine settings (workers, message
    /// size, TLS, …). The app's origins and heartbeat override the server's.
    ///
    /// # Errors
    ///
    /// The I/O error if `addr` does not resolve or cannot be bound, or a
    /// worker thread cannot start.
    pub fn listen_with(self, server: Server, addr: impl ToSocketAddrs) -> io::Result<Running> {
        self.start_with(server, |server, worker| server.start(addr, worker))
    }

    /// Starts the app's workers with these engine settings, without a port
    /// of their own: the sockets come from another server on the same port,
    /// handed over with [`ServerHandle::adopt`](crate::runtime::ServerHandle::adopt)
    /// (through `app.server()`), or with `emitws::axum` (feature `axum`)
    /// from an axum router. Every rule of the app applies to them as to
    /// sockets of [`listen`](Self::listen): paths, origins, connection
    /// middleware, identify, limits, metrics. [`Running::local_addr`] is
    /// `0.0.0.0:0`.
    ///
    /// # Errors
    ///
    /// The I/O error if a worker thread cannot start.
    ///
    /// ```no_run
    /// use emitws::app::App;
    /// use emitws::runtime::Server;
    /// let mut app = App::new();
    /// app.on("/echo", |req| {
    ///     let data = req.raw_data();
    ///     req.reply(&data);
    /// });
    /// let running = app.mount_with(Server::new().workers(2))?;
    /// let handle = running.server().clone(); // for `adopt`, or `emitws::axum::route`
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn mount_with(self, server: Server) -> io::Result<Running> {
        self.start_with(server, |server, worker| server.start_dialer(worker))
    }

    /// Applies the app's settings to `server` and starts it with `start`.
    fn start_with(
        mut self,
        server: Server,
        start: impl FnOnce(Server, AppWorker) -> io::Result<crate::runtime::RunningServer>,
    ) -> io::Result<Running> {
        self.config.router.mount(&mut self.config.paths);
        let mut server = server;
        if let Some(origins) = &self.origins {
            server = server.origins(OriginPolicy::List(origins.clone()));
        }
        // PROTOCOL §6: a peer that stopped answering is closed with 4408,
        // whether the app's heartbeat or the engine's keepalive noticed.
        server = match self.config.heartbeat {
            Some(_) => server.keepalive(None),
            None => server.keepalive_close_code(CLOSE_TIMEOUT),
        };
        let metrics = self.config.metrics.clone();
        metrics.set_names(self.config.router.names());
        server = server.with_metrics(metrics.clone());
        let app = AppHandle::new(self.config);
        app.count_gauges(&metrics);
        app.0.setup.probes.running(app.clone());
        // Attached before the port accepts, so that the first sockets to join
        // a room miss nothing other nodes publish meanwhile.
        let adapter = app.0.setup.adapter.as_ref();
        if let Some(adapter) = adapter {
            adapter.attach(app.clone());
            app.0.setup.conn.tables.keep_ids_in(adapter);
        }
        let running = start(server, AppWorker::new(app.clone())).inspect_err(|_| {
            if let Some(adapter) = adapter {
                adapter.detach();
            }
        })?;
        app.0.server.get_or_init(|| running.handle());
        Ok(Running { app, server: Some(running) })
    }
}

impl AppHandle {
    /// Takes a path route ([`App::route`](App::route)) away, or puts
    /// it back (`removed` false), while the app runs: upgrades to a removed
    /// route get 404, as paths that never had one; sockets already
    /// connected through it stay. `pattern` is the route's pattern as
    /// declared (parameter names count: `/chat/:room`). True if a route
    /// had that pattern and changed.
    ///
    /// ```no_run
    /// let mut app = emitws::app::App::new();
    /// app.route("/chat/:room");
    /// app.route("/beta");
    /// let running = app.listen("127.0.0.1:0")?;
    /// assert!(running.unregister_path("/beta", true)); // new sockets to /beta: 404
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn unregister_path(&self, pattern: &str, removed: bool) -> bool {
        connect::remove_path(&self.0.setup.paths, pattern, removed)
    }

    /// The socket on this node that the app's
    /// [`generate_id`](App::generate_id) named `id`, once admitted;
    /// its [`SocketRef`] then emits, calls and closes as
    /// any. Only this node's sockets are found, without waiting
    /// ([`lookup_generated_id`](Self::lookup_generated_id) finds those of
    /// every node of a cluster; PROTOCOL.md §14).
    ///
    /// ```no_run
    /// # fn demo(app: &emitws::app::AppHandle) {
    /// if let Some(socket) = app.socket_by_generated_id("device-42") {
    ///     let _ = socket.emit("/hello", "device 42");
    /// }
    /// # }
    /// ```
    pub fn socket_by_generated_id(&self, id: &str) -> Option<SocketRef> {
        Some(self.socket(self.0.setup.conn.tables.socket_of(id)?))
    }

    /// The socket that the app's [`generate_id`](App::generate_id) named
    /// `id`, on any node of the cluster: this node's, found without
    /// waiting as [`socket_by_generated_id`](Self::socket_by_generated_id)
    /// does, else, with an adapter that keeps ids for the cluster (the
    /// Redis one), the one its store names on a live node, asked as
    /// [`cluster`](Self::cluster)'s queries are (this call blocks for up to
    /// the adapter's timeout; in a handler, prefer an async one or a
    /// thread of your own). Its [`SocketRef`] emits, calls,
    /// joins and closes through the socket's node. Without such an
    /// adapter: this node's only.
    ///
    /// ```no_run
    /// # fn demo(app: &emitws::app::AppHandle) -> Result<(), emitws::app::Error> {
    /// if let Some(socket) = app.lookup_generated_id("device-42")? {
    ///     socket.emit("/hello", "device 42, wherever you are")?;
    /// }
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::Unavailable`] when the id is not this node's and the
    /// cluster's store does not answer within the adapter's timeout.
    pub fn lookup_generated_id(&self, id: &str) -> Result<Option<SocketRef>, Error> {
        if let Some(socket) = self.socket_by_generated_id(id) {
            return Ok(Some(socket));
        }
        match self.0.setup.conn.tables.cluster_ids() {
            Some(adapter) => Ok(adapter.generated_id(id)?.map(|socket| self.socket(socket))),
            None => Ok(None),
        }
    }

    /// For an [`Adapter`] that keeps generated ids for the cluster: a newer
    /// claim of `id` on another node took it from this node's socket whose
    /// claim was numbered `token` ([`Adapter::claim_generated_id`]). That
    /// socket no longer has it (a newer socket of this node given it since
    /// keeps it). Whether that socket had it.
    pub fn deliver_generated_id_taken(&self, id: &str, token: u64) -> bool {
        self.0.setup.conn.tables.taken_elsewhere(id, token)
    }
}

impl AppHandle {
    /// The app's metrics (see [`App::metrics`]).
    pub fn metrics(&self) -> &Metrics {
        &self.0.setup.metrics
    }

    /// Has `metrics` read the rooms at every snapshot, for as long as the app lives.
    fn count_gauges(&self, metrics: &Metrics) {
        let app = Arc::downgrade(&self.0);
        metrics.add_gauges(move |snapshot| {
            if let Some(app) = app.upgrade() {
                (snapshot.rooms, snapshot.room_members) = app.registry.room_counts();
            }
        });
    }
}

/// What [`App::plugin`] takes: a function of the app, or a list of them
/// (an array, a `Vec`, a tuple of up to 8), applied in order.
pub trait Plugin {
    /// Sets the plugin up on `app`.
    fn apply(self, app: &mut App);
}

impl<F: FnOnce(&mut App)> Plugin for F {
    fn apply(self, app: &mut App) {
        self(app)
    }
}

impl<P: Plugin, const N: usize> Plugin for [P; N] {
    fn apply(self, app: &mut App) {
        self.into_iter().for_each(|plugin| plugin.apply(app));
    }
}

impl<P: Plugin> Plugin for Vec<P> {
    fn apply(self, app: &mut App) {
        self.into_iter().for_each(|plugin| plugin.apply(app));
    }
}

/// Tuples of plugins of different types, applied left to right.
macro_rules! tuple_plugins {
    ($($name:ident)+) => {
        impl<$($name: Plugin),+> Plugin for ($($name,)+) {
            #[allow(non_snake_case)]
            fn apply(self, app: &mut App) {
                let ($($name,)+) = self;
                $($name.apply(app);)+
            }
        }
    };
}
tuple_plugins!(A B);
tuple_plugins!(A B C);
tuple_plugins!(A B C D);
tuple_plugins!(A B C D E);
tuple_plugins!(A B C D E F);
tuple_plugins!(A B C D E F G);
tuple_plugins!(A B C D E F G H);

/// Ready-made plugins.
pub mod plugins {
    use std::time::Duration;

    use super::App;

    /// emit.gg's heartbeat: a ping every `interval`; `@ping` handlers run on
    /// each answer; sockets that miss two are closed (4408).
    ///
    /// ```
    /// use std::time::Duration;
    /// let mut app = emitws::app::App::new();
    /// app.plugin(emitws::app::plugins::heartbeat(Duration::from_secs(30)));
    /// app.on("@ping", |req| println!("heartbeat from {}", req.conn_id()));
    /// ```
    pub fn heartbeat(interval: Duration) -> impl FnOnce(&mut App) {
        move |app| {
            app.heartbeat(Some(interval));
        }
    }
}
