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
//! app.on("@connection", |req| println!("connected: {}", req.id()));
//! app.on("/ping", |req| req.reply(&serde_json::json!({ "pong": true })));
//! app.on("/join", |req| {
//!     let _ = req.join("#chat");
//!     let _ = req.broadcast("/joined", &req.id().to_string(), BroadcastOpts::to("#chat"));
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

mod adapter;
mod connect;
mod envelope;
mod groups;
mod handler;
mod limits;
mod request;
mod router;
mod rpc;
mod socket;

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::ops::Deref;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

use serde::Serialize;

pub use adapter::{Adapter, BadSocketId, Cluster, Presence, Scope, SocketId, Target};
pub use connect::{After, Challenge, Connecting, Gone, PathRoute, Refusal};
pub use envelope::MAX_ID;
pub use groups::BroadcastOpts;
pub use handler::PROTOCOL;
pub use limits::{Limits, Policy, Rate};
pub use request::{DataError, ReplyHandle, Request};
pub use router::{Middleware, Next, Ns};
pub use rpc::{CallError, CallReply, CallResult, PendingCall};
pub use socket::{SocketData, SocketRef};

use connect::{Auth, ConnectFn};
use groups::{Delivery, Registry};
use handler::{AppMsg, AppWorker, Local};
use router::Router;
use rpc::{Done, StartCall};

use crate::proto::handshake::Request as HttpRequest;
use crate::proto::CloseCode;
use crate::runtime::{ConnId, HttpResponse, OriginPolicy, RunningServer, Server, ServerHandle, SharedFrame};

/// Close code: the server dropped the socket or its user ([`AppHandle::drop_user`]).
pub const CLOSE_DROPPED: CloseCode = CloseCode(4000);
/// Close code: authentication did not finish in time, or heartbeats went unanswered.
pub const CLOSE_TIMEOUT: CloseCode = CloseCode(4408);
/// Close code: the user has too many devices connected ([`DevicePolicy::RejectNew`]).
pub const CLOSE_TOO_MANY_DEVICES: CloseCode = CloseCode(4429);
/// Close code: a newer device of the same user took this one's place ([`DevicePolicy::DropOldest`]).
pub const CLOSE_REPLACED: CloseCode = CloseCode(4409);

/// What the app's API can fail with.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// The data does not serialize to JSON.
    Json(serde_json::Error),
    /// Group names start with `#` (rooms) or `*` (tags), 2 to 128 bytes.
    BadGroup(String),
    /// The socket is in as many groups as [`Limits::max_groups_per_socket`] allows.
    TooManyGroups,
    /// A cluster query got no answer from the cluster's store in time (the message says why).
    Unavailable(String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Json(e) => write!(f, "data does not serialize: {e}"),
            Error::BadGroup(name) => write!(f, "bad group name {name:?}: rooms start with '#', tags with '*'"),
            Error::TooManyGroups => f.write_str("the socket is in too many rooms and tags"),
            Error::Unavailable(why) => write!(f, "the cluster did not answer: {why}"),
        }
    }
}

impl std::error::Error for Error {}

impl From<serde_json::Error> for Error {
    fn from(e: serde_json::Error) -> Error {
        Error::Json(e)
    }
}

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
    setup: Setup,
    origins: Option<Vec<String>>,
}

/// What an app is made of, fixed once it listens.
#[derive(Default)]
struct Setup {
    router: Router,
    paths: Vec<PathRoute>,
    connect: Vec<ConnectFn>,
    auth: Auth,
    limits: Limits,
    heartbeat: Option<Duration>,
    devices: Option<(usize, DevicePolicy)>,
    adapter: Option<Arc<dyn Adapter>>,
    http: Option<HttpFn>,
}

/// Answers plain HTTP requests on the app's port.
type HttpFn = Arc<dyn Fn(&HttpRequest<'_>) -> Option<HttpResponse> + Send + Sync>;

impl fmt::Debug for App {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("App").field("limits", &self.setup.limits).field("heartbeat", &self.setup.heartbeat).finish()
    }
}

impl Default for App {
    fn default() -> Self {
        App::new()
    }
}

impl App {
    /// An app with no routes and the default [`Limits`].
    pub fn new() -> App {
        App { setup: Setup::default(), origins: None }
    }

    /// Handles an event (`/name`) or a system event: `@connection`,
    /// `@disconnect` (data `{code, reason}`), `@error` (data `{code,
    /// message}` for bad input from a socket, every refused message
    /// included; `{code: "internal", message, event}` when a handler of
    /// `event` panicked), `@any` (events without a handler), `@ping`
    /// (heartbeat answers, data `{rtt_ms}`).
    pub fn on(&mut self, event: &str, handler: impl Fn(&mut Request<'_>) + Send + Sync + 'static) -> &mut Self {
        self.setup.router.add(event, Vec::new(), Arc::new(handler));
        self
    }

    /// Handles an event behind route middleware (one or a list), which run in order.
    pub fn on_with(
        &mut self,
        event: &str,
        middleware: impl IntoIterator<Item = Middleware>,
        handler: impl Fn(&mut Request<'_>) + Send + Sync + 'static,
    ) -> &mut Self {
        self.setup.router.add(event, middleware.into_iter().collect(), Arc::new(handler));
        self
    }

    /// Adds global middleware (emit.gg's `app.use`; `use` is a Rust keyword):
    /// it runs before every user event's handler, in the order added.
    /// Call `next.run(req)` to go on; return without it to stop the chain.
    pub fn middleware(&mut self, middleware: impl Fn(&mut Request<'_>, Next<'_>) + Send + Sync + 'static) -> &mut Self {
        self.setup.router.add_middleware(Middleware::new(middleware));
        self
    }

    /// Applies a plugin: any function of the app.
    pub fn plugin(&mut self, plugin: impl FnOnce(&mut App)) -> &mut Self {
        plugin(self);
        self
    }

    /// A namespace: events under `prefix`.
    pub fn ns(&mut self, prefix: &str) -> Ns<'_> {
        Ns { app: self, prefix: prefix.into() }
    }

    /// Accepts connections on a path pattern (`/chat/:room`). Once any route
    /// is declared, upgrades to other paths get 404.
    pub fn route(&mut self, pattern: &str) -> &mut PathRoute {
        self.setup.paths.push(PathRoute::new(pattern));
        self.setup.paths.last_mut().expect("just pushed")
    }

    /// Adds connection middleware, run at upgrade time for every path (before
    /// a route's own). It may refuse ([`Refusal`]) and may leave code to run
    /// at disconnect ([`After`]).
    pub fn on_connect(
        &mut self,
        middleware: impl Fn(&mut Connecting<'_>) -> Result<After, Refusal> + Send + Sync + 'static,
    ) -> &mut Self {
        self.setup.connect.push(Arc::new(middleware));
        self
    }

    /// Identifies users at upgrade time (a token from the query or a header):
    /// the hook returns the user id or a refusal.
    pub fn identify(
        &mut self,
        identify: impl Fn(&mut Connecting<'_>) -> Result<String, Refusal> + Send + Sync + 'static,
    ) -> &mut Self {
        self.setup.auth = Auth::Upgrade(Arc::new(identify));
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
        self.setup.auth = Auth::FirstMessage(event.into(), Arc::new(identify));
        self
    }

    /// Authenticates every socket by challenge-response (see [`Challenge`]).
    pub fn challenge(&mut self, challenge: Challenge) -> &mut Self {
        self.setup.auth = Auth::Challenge(challenge);
        self
    }

    /// Sets the abuse limits.
    pub fn limits(&mut self, limits: Limits) -> &mut Self {
        self.setup.limits = limits;
        self
    }

    /// Pings every socket every `interval` (a WebSocket ping whose pong runs
    /// `@ping`), closing with 4408 those that missed two. Replaces the
    /// engine's keepalive. Also available as [`plugins::heartbeat`].
    pub fn heartbeat(&mut self, interval: Option<Duration>) -> &mut Self {
        self.setup.heartbeat = interval;
        self
    }

    /// Caps the sockets one user may have open at once. In a cluster each
    /// node applies the cap to the devices it holds: checking the whole
    /// cluster would put a round trip to Redis in every connect.
    pub fn max_devices(&mut self, max: usize, policy: DevicePolicy) -> &mut Self {
        self.setup.devices = Some((max.max(1), policy));
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
        self.setup.http = Some(Arc::new(handler));
        self
    }

    /// Plugs in a cluster transport.
    pub fn adapter(&mut self, adapter: Arc<dyn Adapter>) -> &mut Self {
        self.setup.adapter = Some(adapter);
        self
    }

    /// Starts serving on `addr` with the engine's default settings.
    pub fn listen(self, addr: impl ToSocketAddrs) -> io::Result<Running> {
        self.listen_with(Server::new(), addr)
    }

    /// Starts serving on `addr` with these engine settings (workers, message
    /// size, TLS, …). The app's origins and heartbeat override the server's.
    pub fn listen_with(self, server: Server, addr: impl ToSocketAddrs) -> io::Result<Running> {
        let mut server = server;
        if let Some(origins) = &self.origins {
            server = server.origins(OriginPolicy::List(origins.clone()));
        }
        // PROTOCOL §6: a peer that stopped answering is closed with 4408,
        // whether the app's heartbeat or the engine's keepalive noticed.
        server = match self.setup.heartbeat {
            Some(_) => server.keepalive(None),
            None => server.keepalive_close_code(CLOSE_TIMEOUT),
        };
        let app = AppHandle(Arc::new(Shared {
            setup: self.setup,
            server: OnceLock::new(),
            epoch: Instant::now(),
            registry: Registry::default(),
            users: Mutex::new(HashMap::new()),
            sockets: AtomicUsize::new(0),
            connected: Mutex::default(),
        }));
        // Attached before the port accepts, so that the first sockets to join
        // a room miss nothing other nodes publish meanwhile.
        let adapter = app.0.setup.adapter.as_ref();
        if let Some(adapter) = adapter {
            adapter.attach(app.clone());
        }
        let running = server.start(addr, AppWorker::new(app.clone())).inspect_err(|_| {
            if let Some(adapter) = adapter {
                adapter.detach();
            }
        })?;
        app.0.server.get_or_init(|| running.handle());
        Ok(Running { app, server: Some(running) })
    }
}

/// Everything workers share.
pub(crate) struct Shared {
    setup: Setup,
    server: OnceLock<ServerHandle>,
    epoch: Instant,
    registry: Registry,
    users: Mutex<HashMap<Arc<str>, Vec<ConnId>>>,
    sockets: AtomicUsize,
    /// This node's sockets, kept when no adapter keeps them.
    connected: Mutex<BTreeSet<ConnId>>,
}

/// A running app, from any thread: broadcasts, sends to sockets and users,
/// presence. Cheap to clone.
#[derive(Clone)]
pub struct AppHandle(Arc<Shared>);

impl fmt::Debug for AppHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AppHandle").field("sockets", &self.socket_count()).finish()
    }
}

impl AppHandle {
    /// The engine's handle (raw frames, connection count, shutdown).
    pub fn server(&self) -> &ServerHandle {
        // Set by `listen` before it returns, or by the first socket's open
        // if that comes sooner; every handle is reached after one of them.
        self.0.server.get().expect("the app is running")
    }

    /// The limits in force.
    pub fn limits(&self) -> &Limits {
        &self.0.setup.limits
    }

    /// Broadcasts an event, encoded once, to the sockets `opts` selects, on
    /// every worker (and, unless local, every node of a cluster).
    pub fn broadcast<T: Serialize + ?Sized>(&self, event: &str, data: &T, opts: BroadcastOpts) -> Result<(), Error> {
        let frame = self.encode_event(event, data)?;
        self.route(frame, &opts, self.local_ids(&opts.except), None);
        Ok(())
    }

    /// Sends an event to one socket, on this node or another. False if the
    /// server has stopped, or the socket is on another node and there is no
    /// adapter; a socket on another node is not checked.
    pub fn emit_to<T: Serialize + ?Sized>(
        &self,
        id: impl Into<SocketId>,
        event: &str,
        data: &T,
    ) -> Result<bool, Error> {
        let id = id.into();
        let frame = self.encode_event(event, data)?;
        match self.here(id) {
            Some(conn) => Ok(self.server().send_frame(conn, &frame)),
            None => {
                self.publish(&frame, Target::Socket(id));
                Ok(self.0.setup.adapter.is_some())
            }
        }
    }

    /// A socket, by id.
    pub fn socket(&self, id: ConnId) -> SocketRef {
        SocketRef { app: self.clone(), id }
    }

    /// A user: all of their devices.
    pub fn to_user(&self, user: &str) -> UserRef {
        UserRef { app: self.clone(), user: user.into() }
    }

    /// Closes every socket of `user`, on every node of a cluster, with 4000
    /// and `reason`; returns how many this node had.
    pub fn drop_user(&self, user: &str, reason: &str) -> usize {
        self.to_user(user).drop_with(reason)
    }

    /// Closes one socket, on this node or another, with 4000 and `reason`
    /// (WSE's `drop` of one device). False if the socket is on this node and
    /// already gone, or on another node and there is no adapter; a socket on
    /// another node is not checked.
    ///
    /// ```no_run
    /// # fn demo(app: &emitws::app::AppHandle) {
    /// let id: emitws::app::SocketId = "1f-2".parse().unwrap();
    /// app.drop_socket(id, "signed in elsewhere");
    /// # }
    /// ```
    pub fn drop_socket(&self, id: impl Into<SocketId>, reason: &str) -> bool {
        let id = id.into();
        match self.here(id) {
            Some(conn) => self.server().close(conn, CLOSE_DROPPED, reason),
            None => self.close_elsewhere(Target::Socket(id), CLOSE_DROPPED, reason),
        }
    }

    /// Users with at least one socket on this node, sorted ([`cluster`](Self::cluster) for every node).
    pub fn users(&self) -> Vec<String> {
        let mut users: Vec<String> = lock(&self.0.users).keys().map(|u| u.to_string()).collect();
        users.sort();
        users
    }

    /// Sockets on this node (after authentication, if any, and before their close).
    pub fn socket_count(&self) -> usize {
        self.0.sockets.load(Ordering::Relaxed)
    }

    /// How many sockets of this node are in a room or tag, on every worker.
    pub fn group_size(&self, group: &str) -> usize {
        self.0.registry.size(group)
    }

    /// The sockets of this node in a room or tag, sorted.
    pub fn group_members(&self, group: &str) -> Vec<ConnId> {
        self.0.registry.members(group)
    }

    /// Every room and tag with members, sorted.
    pub fn groups(&self) -> Vec<String> {
        self.0.registry.names()
    }

    /// Stops gracefully: every socket is closed with 1001 (its `@disconnect`
    /// runs), then the workers exit. Does not wait; [`Running::close`] does.
    pub fn close(&self) {
        self.server().shutdown();
    }

    pub(crate) fn encode_event<T: Serialize + ?Sized>(&self, event: &str, data: &T) -> Result<SharedFrame, Error> {
        let mut text = Vec::new();
        envelope::write_event(&mut text, event, data)?;
        let text = String::from_utf8(text).map_err(|e| Error::Json(serde::ser::Error::custom(e)))?;
        Ok(SharedFrame::text(&text))
    }

    /// Hands a broadcast to the workers that have sockets it addresses: the
    /// current worker's share goes to its outbox (`here`), the others' through
    /// their inboxes.
    pub(crate) fn route(
        &self,
        frame: SharedFrame,
        opts: &BroadcastOpts,
        except: Vec<ConnId>,
        here: Option<&mut Local>,
    ) {
        let server = self.server();
        let mut targets = vec![opts.to.is_empty(); server.workers()];
        if !opts.to.is_empty() {
            self.0.registry.workers_for(&opts.to, &mut targets);
        }
        if !opts.local {
            self.publish(&frame, Target::Broadcast(opts));
        }
        let delivery = Delivery { frame, groups: opts.to.clone().into(), except: except.into() };
        let here_worker = here.as_ref().map(|local| local.worker);
        let mut here = here;
        for (worker, _) in targets.iter().enumerate().filter(|(_, wanted)| **wanted) {
            match here.as_deref_mut() {
                Some(local) if Some(worker) == here_worker => local.outbox.push(delivery.clone()),
                _ => {
                    server.notify(worker, Box::new(AppMsg::Deliver(delivery.clone())));
                }
            }
        }
    }

    pub(crate) fn start_call<T: Serialize + ?Sized>(
        &self,
        conn: ConnId,
        name: &str,
        data: &T,
        timeout: Duration,
        done: Done,
    ) -> Result<(), Error> {
        let data = serde_json::value::to_raw_value(data)?;
        let call = StartCall { conn, name: name.into(), data, timeout, done };
        // If the worker is gone, the message (and `done` in it) is dropped:
        // a waiting `PendingCall` then reads `Disconnected`.
        self.server().notify(conn.worker(), Box::new(AppMsg::Call(call)));
        Ok(())
    }
}

/// One user's devices, reached from any thread.
#[derive(Clone, Debug)]
pub struct UserRef {
    app: AppHandle,
    user: String,
}

impl UserRef {
    /// The user's sockets on this node, oldest first.
    pub fn sockets(&self) -> Vec<ConnId> {
        lock(&self.app.0.users).get(self.user.as_str()).cloned().unwrap_or_default()
    }

    /// Whether the user has a socket open on this node.
    pub fn is_online(&self) -> bool {
        lock(&self.app.0.users).contains_key(self.user.as_str())
    }

    /// Sends an event (encoded once) to every device, on every node of a
    /// cluster; returns how many devices this node has.
    pub fn emit<T: Serialize + ?Sized>(&self, event: &str, data: &T) -> Result<usize, Error> {
        let frame = self.app.encode_event(event, data)?;
        let sockets = self.sockets();
        self.app.server().broadcast(sockets.iter().copied(), &frame);
        self.app.publish(&frame, Target::User(&self.user));
        Ok(sockets.len())
    }

    /// Closes every device, on every node of a cluster, with 4000 and
    /// `reason`; returns how many this node had.
    pub fn drop_with(&self, reason: &str) -> usize {
        let sockets = self.sockets();
        for id in &sockets {
            self.app.server().close(*id, CLOSE_DROPPED, reason);
        }
        self.app.close_elsewhere(Target::User(&self.user), CLOSE_DROPPED, reason);
        sockets.len()
    }
}

/// A started app. Dereferences to its [`AppHandle`]; dropping it shuts the
/// server down gracefully.
#[derive(Debug)]
pub struct Running {
    app: AppHandle,
    server: Option<RunningServer>,
}

impl Running {
    /// The address the app listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.server.as_ref().map_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)), |s| s.local_addr())
    }

    /// A handle for other threads.
    pub fn app(&self) -> AppHandle {
        self.app.clone()
    }

    /// Closes gracefully and waits: every socket gets 1001 and its
    /// `@disconnect` runs, then the workers exit.
    pub fn close(mut self) {
        if let Some(server) = self.server.take() {
            server.shutdown();
        }
    }

    /// Waits until the app is closed from elsewhere ([`AppHandle::close`]).
    pub fn join(mut self) {
        if let Some(server) = self.server.take() {
            server.join();
        }
    }
}

impl Deref for Running {
    type Target = AppHandle;

    fn deref(&self) -> &AppHandle {
        &self.app
    }
}

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
    /// app.on("@ping", |req| println!("heartbeat from {}", req.id()));
    /// ```
    pub fn heartbeat(interval: Duration) -> impl FnOnce(&mut App) {
        move |app| {
            app.heartbeat(Some(interval));
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn read<T>(lock: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn write<T>(lock: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(|poisoned| poisoned.into_inner())
}
