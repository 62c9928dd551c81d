//! Async handlers (feature `tokio`): [`App::on_async`] runs a handler's
//! future on a tokio runtime, and its result goes back as a deferred reply.
//!
//! ```text
//!  worker: envelope ─► middleware ─► on_async's handler: cap check, req.defer(),
//!          AsyncRequest (owned) ─► handler(req) = future ─► spawn ─┐
//!  tokio:  future.await ─► Ok(data) / Err(ReplyError) ─► ReplyHandle ─► the worker's inbox
//!  worker: [2,id,data] / [3,id,{code,message}] written to the socket
//! ```
//!
//! The workers never wait on the runtime: they spawn and go on. The futures
//! in flight are counted per socket in a side table that holds a socket only
//! while it has some (an idle socket costs nothing more), with their abort
//! handles, so that the socket's close drops them.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::hash::{BuildHasherDefault, Hasher};
use std::io;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::value::RawValue;
use tokio::runtime::{Builder, Handle, Runtime};
use tokio::task::AbortHandle;

use super::envelope::ErrorCode;
use super::handle::{AppHandle, SocketRef};
use super::locks::lock;
use super::request::{read_data, DataError, ReplyHandle, Request};
use super::router::{Middleware, Ns};
use super::socket_id::SocketId;
use super::App;
use crate::runtime::ConnId;

/// Async handlers one socket may have running at once, unless set ([`App::max_async_per_socket`]).
pub const DEFAULT_MAX_ASYNC_PER_SOCKET: usize = 16;
/// Threads of the runtime the app starts, unless set ([`App::async_threads`]).
pub const DEFAULT_ASYNC_THREADS: usize = 2;
/// The prefix of the names of the app-started runtime's threads (`emitws-async-0`, …).
pub const ASYNC_THREAD_NAME: &str = "emitws-async";

/// What a panicking async handler is answered.
const PANICKED: &str = "the handler panicked";
/// Shards of the in-flight table: workers and runtime threads rarely meet on one lock.
const SHARDS: usize = 16;

/// An event or request for an async handler: everything about it owned, so
/// the future can hold it across `.await`s on any thread (a [`Request`]
/// borrows the worker's frame and socket, which a future cannot keep).
///
/// ```
/// # #[cfg(feature = "tokio")] {
/// use emitws::app::{App, ReplyError};
/// #[derive(serde::Deserialize)]
/// struct Lookup { id: u64 }
///
/// let mut app = App::new();
/// app.on_async("/user", |req| async move {
///     let Lookup { id } = req.data()?; // bad data: `bad_request`
///     if id == 0 {
///         return Err(ReplyError::new("not_found", "no user 0"));
///     }
///     let _ = req.socket().emit("/progress", "looking up");
///     Ok(serde_json::json!({ "id": id, "asked_by": req.user() }))
/// });
/// # }
/// ```
#[derive(Debug)]
pub struct AsyncRequest {
    event: Arc<str>,
    id: Option<u64>,
    data: Option<Box<RawValue>>,
    conn: ConnId,
    socket_id: SocketId,
    user: Option<Box<str>>,
    socket: SocketRef,
}

impl AsyncRequest {
    /// The owned copy of `req`, for the route `route` (its name shared, not
    /// copied, unless the route is `@any`'s).
    fn new(req: &Request<'_>, route: &Arc<str>) -> AsyncRequest {
        AsyncRequest {
            event: match req.event() == &**route {
                true => route.clone(),
                false => req.event().into(),
            },
            id: req.request_id(),
            data: req.raw_data().map(ToOwned::to_owned),
            conn: req.conn_id(),
            socket_id: req.socket_id(),
            user: req.user().map(Into::into),
            socket: req.socket(),
        }
    }

    /// The event name.
    pub fn event(&self) -> &str {
        &self.event
    }

    /// The request's id when the client expects a reply; `None` for an event.
    pub fn request_id(&self) -> Option<u64> {
        self.id
    }

    /// Whether the client expects a reply.
    pub fn is_request(&self) -> bool {
        self.id.is_some()
    }

    /// The data, typed (absent data reads as JSON `null`), as
    /// [`Request::data`]; with `?` in the handler, a [`DataError`] becomes
    /// the `bad_request` reply.
    ///
    /// # Errors
    ///
    /// [`DataError`] if the data does not read as a `T`.
    pub fn data<T: DeserializeOwned>(&self) -> Result<T, DataError> {
        read_data(self.data.as_deref())
    }

    /// The data's JSON text, if any was sent.
    pub fn raw_data(&self) -> Option<&RawValue> {
        self.data.as_deref()
    }

    /// The socket's connection on this node.
    pub fn conn_id(&self) -> ConnId {
        self.conn
    }

    /// The socket's cluster-wide id (see [`Request::socket_id`]).
    pub fn socket_id(&self) -> SocketId {
        self.socket_id
    }

    /// The socket's user when the request came, if any.
    pub fn user(&self) -> Option<&str> {
        self.user.as_deref()
    }

    /// A handle to the socket: emit to it, join it to rooms, call its client.
    pub fn socket(&self) -> &SocketRef {
        &self.socket
    }

    /// The app, for broadcasts and sends to other sockets and users.
    pub fn app(&self) -> &AppHandle {
        &self.socket.app
    }
}

/// An async handler's error: the `[3,id,{code,message}]` reply to a request,
/// or the `@error` event `{code, message}` for an event. Any
/// `std::error::Error` converts with `?`: a [`DataError`] into `bad_request`
/// with its message, anything else into `internal` with the error's text
/// (map errors whose text must not reach clients with [`ReplyError::new`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplyError {
    code: String,
    message: String,
}

impl ReplyError {
    /// An error with a machine-readable `code` (PROTOCOL.md §5, or the app's own) and a message.
    pub fn new(code: impl Into<String>, message: impl Into<String>) -> ReplyError {
        ReplyError { code: code.into(), message: message.into() }
    }

    /// The code.
    pub fn code(&self) -> &str {
        &self.code
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for ReplyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl<E: std::error::Error + Send + Sync + 'static> From<E> for ReplyError {
    fn from(error: E) -> ReplyError {
        let message = error.to_string();
        let error: Box<dyn std::error::Error + Send + Sync> = Box::new(error);
        let code = match error.is::<DataError>() {
            true => ErrorCode::BadRequest,
            false => ErrorCode::Internal,
        };
        ReplyError { code: code.as_str().into(), message }
    }
}

/// The sockets of one shard with futures in flight: each future's key and,
/// once spawned, its abort handle.
type InFlight = HashMap<ConnId, Vec<(u64, Option<AbortHandle>)>, BuildHasherDefault<ConnIdHash>>;

/// The in-flight table's hash of a connection id: a multiply. Clients do not
/// choose connection ids, so a keyed hash buys nothing (and costs three
/// SipHash runs per async request).
#[derive(Default)]
struct ConnIdHash(u64);

impl Hasher for ConnIdHash {
    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.write_u64(u64::from(byte));
        }
    }

    fn write_u64(&mut self, word: u64) {
        self.0 = (self.0 ^ word).wrapping_mul(0x9e37_79b9_7f4a_7c15).rotate_left(29);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// The async side of an app: its runtime (given or started on first use),
/// the per-socket cap, and the futures in flight.
pub(crate) struct AsyncTasks {
    /// The runtime the application gave ([`App::tokio_runtime`]).
    given: Option<Handle>,
    threads: usize,
    max_per_socket: usize,
    /// Whether any async handler is registered: without, a socket's close looks nothing up.
    used: bool,
    /// The runtime the app started, when none was given.
    started: Mutex<Option<Runtime>>,
    started_handle: OnceLock<Handle>,
    /// Each socket with futures in flight: their keys and abort handles.
    in_flight: [Mutex<InFlight>; SHARDS],
    next_key: AtomicU64,
}

impl Default for AsyncTasks {
    fn default() -> Self {
        AsyncTasks {
            given: None,
            threads: DEFAULT_ASYNC_THREADS,
            max_per_socket: DEFAULT_MAX_ASYNC_PER_SOCKET,
            used: false,
            started: Mutex::new(None),
            started_handle: OnceLock::new(),
            in_flight: Default::default(),
            next_key: AtomicU64::new(0),
        }
    }
}

impl Drop for AsyncTasks {
    /// The app is gone: the runtime it started stops. Without waiting, as
    /// the last handle on the app may be dropped on one of its threads.
    fn drop(&mut self) {
        if let Some(runtime) = lock(&self.started).take() {
            runtime.shutdown_background();
        }
    }
}

impl AsyncTasks {
    /// The runtime to spawn on: the one given, or the app's own, started now if it is not yet.
    fn runtime(&self) -> io::Result<&Handle> {
        if let Some(handle) = self.given.as_ref().or_else(|| self.started_handle.get()) {
            return Ok(handle);
        }
        let mut started = lock(&self.started);
        if let Some(handle) = self.started_handle.get() {
            return Ok(handle);
        }
        let next = AtomicUsize::new(0);
        let runtime = Builder::new_multi_thread()
            .worker_threads(self.threads)
            .thread_name_fn(move || format!("{ASYNC_THREAD_NAME}-{}", next.fetch_add(1, Ordering::Relaxed)))
            .enable_all()
            .build()?;
        let handle = self.started_handle.get_or_init(|| runtime.handle().clone());
        *started = Some(runtime);
        Ok(handle)
    }

    fn shard(&self, conn: ConnId) -> &Mutex<InFlight> {
        &self.in_flight[(conn.key() ^ conn.worker()) % SHARDS]
    }

    /// Counts one more future for `conn`: its key, or `None` when the socket
    /// has as many as it may.
    fn admit(&self, conn: ConnId) -> Option<u64> {
        let mut shard = lock(self.shard(conn));
        let tasks = shard.entry(conn).or_default();
        if tasks.len() >= self.max_per_socket {
            return None;
        }
        let key = self.next_key.fetch_add(1, Ordering::Relaxed);
        tasks.push((key, None));
        Some(key)
    }

    /// Keeps the abort handle of future `key`, unless it has already ended.
    fn spawned(&self, conn: ConnId, key: u64, abort: AbortHandle) {
        let mut shard = lock(self.shard(conn));
        let slot = shard.get_mut(&conn).and_then(|tasks| tasks.iter_mut().find(|(k, _)| *k == key));
        if let Some(slot) = slot {
            slot.1 = Some(abort);
        }
    }

    /// Future `key` of `conn` ended (or was dropped): it no longer counts.
    fn ended(&self, conn: ConnId, key: u64) {
        let mut shard = lock(self.shard(conn));
        let Some(tasks) = shard.get_mut(&conn) else { return };
        if let Some(at) = tasks.iter().position(|(k, _)| *k == key) {
            tasks.swap_remove(at);
        }
        if tasks.is_empty() {
            shard.remove(&conn);
        }
    }

    /// Socket `conn` is gone: its futures in flight are dropped (at their
    /// next `.await`, or at once when they wait).
    pub(crate) fn socket_gone(&self, conn: ConnId) {
        if !self.used {
            return;
        }
        let Some(tasks) = lock(self.shard(conn)).remove(&conn) else { return };
        for abort in tasks.into_iter().filter_map(|(_, abort)| abort) {
            abort.abort();
        }
    }
}

/// Takes future `key` of a socket out of the in-flight table when dropped:
/// on completion, on abort, and if making the future panicked.
struct Ended {
    app: AppHandle,
    conn: ConnId,
    key: u64,
}

impl Drop for Ended {
    fn drop(&mut self) {
        self.app.0.setup.async_tasks.ended(self.conn, self.key);
    }
}

/// A future whose panic is caught and returned, as the workers catch a sync handler's.
struct CatchPanic<'a, F>(Pin<&'a mut F>);

impl<F: Future> Future for CatchPanic<'_, F> {
    type Output = std::thread::Result<F::Output>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match catch_unwind(AssertUnwindSafe(|| self.0.as_mut().poll(cx))) {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(output)) => Poll::Ready(Ok(output)),
            Err(panic) => Poll::Ready(Err(panic)),
        }
    }
}

/// The `@error` event's data (PROTOCOL.md §5), for an async event handler's error.
#[derive(Serialize)]
struct ErrorBody<'a> {
    code: &'a str,
    message: &'a str,
}

/// Tells the socket about an error: the error reply to a request, the `@error` event for an event.
fn answer_error(reply: Option<ReplyHandle>, socket: &SocketRef, code: &str, message: &str) {
    match reply {
        Some(reply) => reply.reply_err(code, message),
        None => {
            let _ = socket.emit("@error", &ErrorBody { code, message });
        }
    }
}

/// Runs on the worker, after the middleware: the cap, the deferred reply,
/// and the handler's future handed to the runtime.
fn start<F, Fut, T>(req: &mut Request<'_>, route: &Arc<str>, handler: &F)
where
    F: Fn(AsyncRequest) -> Fut,
    Fut: Future<Output = Result<T, ReplyError>> + Send + 'static,
    T: Serialize,
{
    let app = req.app().clone();
    let tasks = &app.0.setup.async_tasks;
    let runtime = match tasks.runtime() {
        Ok(runtime) => runtime,
        Err(e) => {
            tracing::error!(error = %e, "the async handlers' runtime did not start");
            return fail(req, ErrorCode::Internal, "the async runtime did not start");
        }
    };
    let conn = req.conn_id();
    let Some(key) = tasks.admit(conn) else {
        return fail(req, ErrorCode::RateLimited, "too many async handlers running");
    };
    // Taken out now, so the guard frees the slot whatever happens below.
    let ended = Ended { app: app.clone(), conn, key };
    let request = AsyncRequest::new(req, route);
    let reply = match req.is_request() {
        true => match req.defer() {
            // Over `max_pending`: already answered `rate_limited`.
            reply if !reply.is_pending() => return,
            reply => Some(reply),
        },
        false => None,
    };
    let (socket, event) = (request.socket.clone(), request.event.clone());
    let future = handler(request);
    let task = runtime.spawn(async move {
        let _ended = ended;
        let future = pin!(future);
        match CatchPanic(future).await {
            Ok(Ok(data)) => {
                if let Some(reply) = reply {
                    reply.reply(&data);
                }
            }
            Ok(Err(e)) => answer_error(reply, &socket, &e.code, &e.message),
            Err(_) => {
                crate::runtime::logs::panicked(conn, &event, "an async handler");
                answer_error(reply, &socket, ErrorCode::Internal.as_str(), PANICKED);
            }
        }
    });
    tasks.spawned(conn, key, task.abort_handle());
}

/// Refuses an async handler's start: the error reply to a request, `@error` to an event.
fn fail(req: &mut Request<'_>, code: ErrorCode, message: &str) {
    match req.is_request() {
        true => req.reply_err(code.as_str(), message),
        false => req.local.emit_error(&mut req.conn, code, message),
    }
}

impl App {
    /// Handles an event or request with an async handler (feature `tokio`):
    /// `handler` gets an owned [`AsyncRequest`] and returns a future, run on
    /// the app's tokio runtime ([`tokio_runtime`](Self::tokio_runtime), or
    /// one the app starts). Its `Ok` data is the reply, its `Err` the error
    /// reply (see [`ReplyError`]); for an event the data is dropped and an
    /// error goes to the socket as `@error`. A future that panics is answered
    /// `internal`, as a sync handler that panics.
    ///
    /// Middleware runs first, on the worker, as for [`on`](Self::on). The
    /// reply travels as a [deferred](Request::defer) one (it counts against
    /// [`max_pending`](super::EventLimits::max_pending), and a graceful
    /// shutdown waits for it); a socket may have
    /// [`max_async_per_socket`](Self::max_async_per_socket) async handlers
    /// running, and over that the request is answered `rate_limited` (an
    /// event gets `@error`). When the socket closes, its futures still
    /// running are dropped; those of an async `@disconnect` handler, which
    /// start then, run to their end.
    ///
    /// ```no_run
    /// # #[cfg(feature = "tokio")] {
    /// use emitws::app::{App, ReplyError};
    /// let mut app = App::new();
    /// app.on_async("/weather", |req| async move {
    ///     let city: String = req.data()?;
    ///     let forecast = fetch_forecast(&city).await.map_err(|e| ReplyError::new("unavailable", e))?;
    ///     Ok(serde_json::json!({ "city": city, "forecast": forecast }))
    /// });
    /// # async fn fetch_forecast(city: &str) -> Result<String, String> { Ok(format!("sun over {city}")) }
    /// let running = app.listen("127.0.0.1:3000")?;
    /// running.join();
    /// # }
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn on_async<F, Fut, T>(&mut self, event: &str, handler: F) -> &mut Self
    where
        F: Fn(AsyncRequest) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<T, ReplyError>> + Send + 'static,
        T: Serialize,
    {
        self.on_async_with(event, [], handler)
    }

    /// [`on_async`](Self::on_async) behind route middleware, which runs in
    /// order on the worker before the handler's future starts.
    pub fn on_async_with<F, Fut, T>(
        &mut self,
        event: &str,
        middleware: impl IntoIterator<Item = Middleware>,
        handler: F,
    ) -> &mut Self
    where
        F: Fn(AsyncRequest) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<T, ReplyError>> + Send + 'static,
        T: Serialize,
    {
        self.config.async_tasks.used = true;
        let route: Arc<str> = event.into();
        self.on_with(event, middleware, move |req| start(req, &route, &handler))
    }

    /// Runs the async handlers' futures on this runtime (a handle of the
    /// application's own, from `tokio::runtime::Handle::current()` say).
    /// Without one, the app starts its own when the first async handler
    /// runs ([`async_threads`](Self::async_threads) threads named
    /// `emitws-async-N`), and stops it when the app is dropped.
    pub fn tokio_runtime(&mut self, handle: Handle) -> &mut Self {
        self.config.async_tasks.given = Some(handle);
        self
    }

    /// How many threads the runtime the app starts has (default 2, at least
    /// 1); no effect with [`tokio_runtime`](Self::tokio_runtime).
    pub fn async_threads(&mut self, threads: usize) -> &mut Self {
        self.config.async_tasks.threads = threads.max(1);
        self
    }

    /// How many async handlers one socket may have running at once (default
    /// 16, at least 1); more are answered `rate_limited`.
    pub fn max_async_per_socket(&mut self, max: usize) -> &mut Self {
        self.config.async_tasks.max_per_socket = max.max(1);
        self
    }
}

impl Ns<'_> {
    /// Handles `prefix + event` with an async handler (see [`App::on_async`]).
    pub fn on_async<F, Fut, T>(&mut self, event: &str, handler: F) -> &mut Self
    where
        F: Fn(AsyncRequest) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<T, ReplyError>> + Send + 'static,
        T: Serialize,
    {
        let name = format!("{}{event}", self.prefix);
        self.app.on_async(&name, handler);
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_convert_to_their_codes() {
        let data_error = read_data::<u8>(None).expect_err("null is no u8");
        let error = ReplyError::from(data_error);
        assert_eq!(error.code(), "bad_request");
        assert!(error.message().starts_with("unexpected data"), "{error}");
        let error = ReplyError::from(io::Error::other("disk on fire"));
        assert_eq!((error.code(), error.message()), ("internal", "disk on fire"));
        assert_eq!(ReplyError::new("not_found", "no such user").to_string(), "not_found: no such user");
    }
}
