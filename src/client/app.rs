//! The event client: named events, requests with replies and server-to-client
//! RPC over the `emitws.v1` subprotocol, with reconnection.
//!
//! Envelopes are JSON arrays in text frames: `[0, event, data]` an event,
//! `[1, id, event, data]` a request (either way), `[2, id, data]` a reply,
//! `[3, id, {"code", "message"}]` an error reply. User events start with `/`;
//! names starting with `@` are system events, dispatched locally:
//! `@connection` (`{"reconnected": bool}`; the first connection's fires
//! before [`AppClient::connect`] returns, so listeners added afterwards see
//! reconnections), `@disconnect` (`{"code", "reason"}`),
//! `@reconnect`, `@error` (`{"code", "message"}`), and `@any`, which receives
//! every event that has no listener of its own.
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

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TryRecvError};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, RwLock, Weak};
use std::thread::{self, ThreadId};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::{mask_rng, ClientBuilder, ClientError};
use crate::proto::{CloseCode, MaskRng, Message};
use crate::runtime::{Conn, ConnId, Handler, RunningServer, Server, ServerHandle};

/// The subprotocol the event client asks for (the server's, [`crate::app::PROTOCOL`]).
pub use crate::app::PROTOCOL;

const EVENT: u64 = 0;
const REQUEST: u64 = 1;
const REPLY: u64 = 2;
const ERROR: u64 = 3;

/// Event client settings; every one has a default.
#[derive(Clone, Debug)]
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
    /// Envelopes kept while disconnected, sent once connected again (default 1,000).
    pub max_queued: usize,
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
    /// let app = AppClient::connect("ws://127.0.0.1:9001/", AppOptions { client, ..AppOptions::default() })?;
    /// # Ok::<(), emitws::client::app::AppError>(())
    /// ```
    pub client: ClientBuilder,
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
            client: ClientBuilder::new(),
        }
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
    /// No connection could be opened (after the configured retries).
    ConnectFailed(String),
    /// A blocking request from a listener or procedure, which run on the
    /// client's I/O thread and would wait for their own thread.
    WouldBlock,
    /// An event name starting with `@` (system events are not sent).
    BadName(String),
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
            AppError::ConnectFailed(_) => "connect_failed",
            AppError::WouldBlock => "would_block",
            AppError::BadName(_) => "bad_request",
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
            AppError::ConnectFailed(why) => write!(f, "cannot connect: {why}"),
            AppError::WouldBlock => f.write_str("a blocking request on the client's I/O thread would never complete"),
            AppError::BadName(name) => write!(f, "{name:?}: system events (@…) are not sent"),
        }
    }
}

impl std::error::Error for AppError {}

type Listener = Arc<dyn Fn(&str, &Value) + Send + Sync>;
type Procedure = Arc<dyn Fn(Value) -> Result<Value, String> + Send + Sync>;
type ReplySender = SyncSender<Result<Value, AppError>>;

/// Identifies a listener, for [`AppClient::off`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ListenerId(u64);

/// An event client. Cloning is cheap and every clone is the same client;
/// the connection closes with [`close`](Self::close) or when the last clone is dropped.
#[derive(Clone)]
pub struct AppClient {
    inner: Arc<Inner>,
}

impl fmt::Debug for AppClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AppClient").field("url", &self.inner.url).field("connected", &self.connected()).finish()
    }
}

struct Inner {
    me: Weak<Inner>,
    url: String,
    options: AppOptions,
    client: ClientBuilder,
    dialer: ServerHandle,
    running: Mutex<Option<RunningServer>>,
    state: Mutex<State>,
    /// Signalled when the first connection opens or the client gives up.
    settled: Condvar,
    listeners: RwLock<Vec<(ListenerId, String, Listener)>>,
    procedures: RwLock<HashMap<String, Procedure>>,
    next_listener: AtomicU64,
}

struct State {
    conn: Option<ConnId>,
    pending: HashMap<u64, ReplySender>,
    next_id: u64,
    queue: Vec<String>,
    closed: bool,
    attempt: u32,
    ever_opened: bool,
    /// The outcome of the first connection, once known.
    first: Option<Result<(), AppError>>,
    io_thread: Option<ThreadId>,
    jitter: MaskRng,
}

impl AppClient {
    /// Connects to `url` and returns once the first connection is open, or
    /// with [`AppError::ConnectFailed`] once the retries are used up.
    pub fn connect(url: &str, options: AppOptions) -> Result<AppClient, AppError> {
        let client = options.client.clone().timeout(options.connect_timeout).protocol(PROTOCOL);
        let failed = |e: &dyn fmt::Display| AppError::ConnectFailed(e.to_string());
        let jitter = mask_rng().map_err(|e| failed(&e))?;
        let link = Link { inner: Arc::new(OnceLock::new()) };
        let server = Server::new().workers(1).keepalive(None).shutdown_timeout(Duration::from_secs(2));
        let running = server.start_dialer(link.clone()).map_err(|e| failed(&e))?;
        let inner = Arc::new_cyclic(|me: &Weak<Inner>| Inner {
            me: me.clone(),
            url: url.to_string(),
            options,
            client,
            dialer: running.handle(),
            running: Mutex::new(Some(running)),
            state: Mutex::new(State {
                conn: None,
                pending: HashMap::new(),
                next_id: 1,
                queue: Vec::new(),
                closed: false,
                attempt: 0,
                ever_opened: false,
                first: None,
                io_thread: None,
                jitter,
            }),
            settled: Condvar::new(),
            listeners: RwLock::new(Vec::new()),
            procedures: RwLock::new(HashMap::new()),
            next_listener: AtomicU64::new(1),
        });
        let _ = link.inner.set(Arc::downgrade(&inner));
        inner.dial();
        let mut state = lock(&inner.state);
        while state.first.is_none() {
            state = inner.settled.wait(state).unwrap_or_else(|e| e.into_inner());
        }
        let first = state.first.clone().expect("checked above");
        drop(state);
        first.map(|()| AppClient { inner })
    }

    /// Whether a connection is open now.
    pub fn connected(&self) -> bool {
        lock(&self.inner.state).conn.is_some()
    }

    /// Sends an event. While reconnecting it waits in a bounded queue.
    pub fn emit(&self, event: &str, data: Value) -> Result<(), AppError> {
        check_name(event)?;
        self.inner.send(json!([EVENT, event, data]).to_string())
    }

    /// Sends a request and waits for the reply's data, or for an error: the
    /// other side's error reply, [`AppError::Timeout`], or
    /// [`AppError::Disconnected`] if the connection drops first.
    pub fn request(&self, event: &str, data: Value, timeout: Duration) -> Result<Value, AppError> {
        self.request_nowait(event, data, timeout).wait()
    }

    /// Sends a request without waiting: the reply is taken from the
    /// returned [`PendingRequest`], by polling or by waiting.
    pub fn request_nowait(&self, event: &str, data: Value, timeout: Duration) -> PendingRequest {
        let (sender, receiver) = mpsc::sync_channel(1);
        let deadline = Instant::now() + timeout;
        let pending = |id| PendingRequest { receiver, id, deadline, inner: Arc::downgrade(&self.inner) };
        if let Err(e) = check_name(event) {
            let _ = sender.send(Err(e));
            return pending(0);
        }
        let id = {
            let mut state = lock(&self.inner.state);
            let id = state.next_id;
            state.next_id += 1;
            state.pending.insert(id, sender.clone());
            id
        };
        if let Err(e) = self.inner.send(json!([REQUEST, id, event, data]).to_string()) {
            lock(&self.inner.state).pending.remove(&id);
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
    }

    /// Removes every listener of `event`.
    pub fn off_all(&self, event: &str) {
        write(&self.inner.listeners).retain(|(_, name, _)| name != event);
    }

    /// Answers the server's requests (RPC) for `name`: `Ok` is the reply,
    /// `Err(message)` an `execution_failed` error reply. Requests for names
    /// without a procedure get `not_registered`.
    pub fn register(&self, name: &str, procedure: impl Fn(Value) -> Result<Value, String> + Send + Sync + 'static) {
        write(&self.inner.procedures).insert(name.to_string(), Arc::new(procedure));
    }

    /// Removes the procedure for `name`.
    pub fn unregister(&self, name: &str) {
        write(&self.inner.procedures).remove(name);
    }

    /// A view whose event names start with `prefix`.
    pub fn ns(&self, prefix: &str) -> Namespace {
        Namespace { client: self.clone(), prefix: prefix.to_string() }
    }

    /// Closes for good: no reconnect; pending requests fail with
    /// [`AppError::Closed`]; later calls fail the same way.
    pub fn close(&self) {
        self.inner.close();
    }
}

/// A request sent with [`AppClient::request_nowait`].
#[derive(Debug)]
pub struct PendingRequest {
    receiver: Receiver<Result<Value, AppError>>,
    id: u64,
    deadline: Instant,
    inner: Weak<Inner>,
}

impl PendingRequest {
    /// The outcome if it is known, without waiting: `None` while the reply
    /// may still come.
    pub fn try_result(&mut self) -> Option<Result<Value, AppError>> {
        match self.receiver.try_recv() {
            Ok(result) => Some(result),
            Err(TryRecvError::Disconnected) => Some(Err(AppError::Closed)),
            Err(TryRecvError::Empty) if Instant::now() >= self.deadline => Some(self.expire()),
            Err(TryRecvError::Empty) => None,
        }
    }

    /// Waits for the outcome, until the request's deadline.
    pub fn wait(self) -> Result<Value, AppError> {
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

    fn expire(&self) -> Result<Value, AppError> {
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
    pub fn emit(&self, event: &str, data: Value) -> Result<(), AppError> {
        self.client.emit(&self.name(event), data)
    }

    /// [`AppClient::request`] under the prefix.
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

    /// [`AppClient::register`] under the prefix.
    pub fn register(&self, name: &str, procedure: impl Fn(Value) -> Result<Value, String> + Send + Sync + 'static) {
        self.client.register(&self.name(name), procedure)
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

impl Inner {
    /// Opens a connection attempt on the I/O thread.
    fn dial(&self) {
        if let Err(e) = self.dialer.connect(&self.url, &self.client, ()) {
            // Refused before reaching the I/O thread (a bad URL, DNS): the same as a failed attempt.
            self.attempt_failed(&e);
        }
    }

    fn send(&self, text: String) -> Result<(), AppError> {
        let mut state = lock(&self.state);
        if state.closed {
            return Err(AppError::Closed);
        }
        match state.conn {
            Some(id) if self.dialer.send_text(id, &text) => Ok(()),
            Some(_) => Err(AppError::Closed),
            None if state.queue.len() < self.options.max_queued => {
                state.queue.push(text);
                Ok(())
            }
            None => Err(AppError::Disconnected("not connected, and the send queue is full".into())),
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

    fn fail_pending(state: &mut State, error: &AppError) {
        for (_, sender) in state.pending.drain() {
            let _ = sender.send(Err(error.clone()));
        }
    }

    /// A connection attempt failed: retry after a backoff, or give up.
    fn attempt_failed(&self, error: &ClientError) {
        self.dispatch("@error", &json!({"code": "connect_failed", "message": error.to_string()}));
        self.retry(error.to_string());
    }

    fn retry(&self, why: String) {
        let mut state = lock(&self.state);
        if state.closed {
            return;
        }
        let give_up = !self.options.reconnect || self.options.max_retries.is_some_and(|max| state.attempt >= max);
        if give_up {
            state.queue.clear();
            state.first.get_or_insert(Err(AppError::ConnectFailed(why)));
            self.settled.notify_all();
            return;
        }
        let doubled = self.options.reconnect_delay.saturating_mul(1 << state.attempt.min(16));
        let ceiling = doubled.min(self.options.max_reconnect_delay);
        let jitter = 0.5 + (state.jitter.next_u64() >> 11) as f64 / (1u64 << 53) as f64 / 2.0;
        let delay = ceiling.mul_f64(jitter);
        state.attempt += 1;
        drop(state);
        let me = self.me.clone();
        thread::spawn(move || {
            thread::sleep(delay);
            if let Some(inner) = me.upgrade() {
                if !lock(&inner.state).closed {
                    inner.dial();
                }
            }
        });
    }

    fn close(&self) {
        let mut state = lock(&self.state);
        if !state.closed {
            state.closed = true;
            if let Some(id) = state.conn.take() {
                self.dialer.close(id, CloseCode::NORMAL, "");
            }
            Inner::fail_pending(&mut state, &AppError::Closed);
            state.queue.clear();
            state.first.get_or_insert(Err(AppError::Closed));
            self.settled.notify_all();
        }
        // Listeners and procedures may hold clones of the client: dropping
        // them here lets the client go.
        write(&self.listeners).clear();
        write(&self.procedures).clear();
        let on_io_thread = state.io_thread == Some(thread::current().id());
        drop(state);
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

impl Drop for Inner {
    fn drop(&mut self) {
        self.close();
    }
}

/// The connection's handler on the I/O thread. The client is set once it
/// exists (the I/O thread is started first); the handler does not keep it alive.
#[derive(Clone)]
struct Link {
    inner: Arc<OnceLock<Weak<Inner>>>,
}

impl Link {
    fn inner(&self) -> Option<Arc<Inner>> {
        self.inner.get()?.upgrade()
    }
}

impl Handler for Link {
    type Data = ();

    fn on_open(&mut self, conn: &mut Conn<'_, ()>) {
        let Some(inner) = self.inner() else { return };
        let mut state = lock(&inner.state);
        if state.closed {
            conn.close(CloseCode::NORMAL, "");
            return;
        }
        state.conn = Some(conn.id());
        state.attempt = 0;
        state.io_thread = Some(thread::current().id());
        let reconnected = std::mem::replace(&mut state.ever_opened, true);
        for text in state.queue.drain(..) {
            let _ = conn.send_text(&text);
        }
        drop(state);
        inner.dispatch("@connection", &json!({"reconnected": reconnected}));
        if reconnected {
            inner.dispatch("@reconnect", &json!({}));
        }
        // Only now may `connect` return: a listener added after it must not
        // see the first connection's event some of the time.
        lock(&inner.state).first.get_or_insert(Ok(()));
        inner.settled.notify_all();
    }

    fn on_message(&mut self, conn: &mut Conn<'_, ()>, message: Message<'_>) {
        let Some(inner) = self.inner() else { return };
        let Message::Text(text) = message else { return };
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
            Some(EVENT) => {
                if let Some(event) = part(1).as_str() {
                    inner.dispatch(event, part(2));
                }
            }
            Some(REQUEST) => {
                let (Some(id), Some(name)) = (part(1).as_u64(), part(2).as_str()) else { return };
                let procedure = read(&inner.procedures).get(name).cloned();
                let reply = match procedure {
                    None => json!([ERROR, id, {"code": "not_registered", "message": format!("no procedure {name}")}]),
                    Some(procedure) => match procedure(part(3).clone()) {
                        Ok(result) => json!([REPLY, id, result]),
                        Err(message) => json!([ERROR, id, {"code": "execution_failed", "message": message}]),
                    },
                };
                let _ = conn.send_text(&reply.to_string());
            }
            Some(kind @ (REPLY | ERROR)) => {
                let Some(id) = part(1).as_u64() else { return };
                let Some(sender) = lock(&inner.state).pending.remove(&id) else { return };
                let result = match kind {
                    REPLY => Ok(part(2).clone()),
                    _ => Err(AppError::Remote {
                        code: part(2)["code"].as_str().unwrap_or("internal").to_string(),
                        message: part(2)["message"].as_str().unwrap_or_default().to_string(),
                    }),
                };
                let _ = sender.send(result);
            }
            // Envelope types from later versions are ignored.
            _ => {}
        }
    }

    fn on_close(&mut self, _: &mut Conn<'_, ()>, code: CloseCode, reason: &str) {
        let Some(inner) = self.inner() else { return };
        {
            let mut state = lock(&inner.state);
            state.conn = None;
            Inner::fail_pending(&mut state, &AppError::Disconnected(format!("connection closed ({code} {reason})")));
        }
        inner.dispatch("@disconnect", &json!({"code": code.0, "reason": reason}));
        inner.retry(format!("connection closed ({code} {reason})"));
    }

    fn on_connect_error(&mut self, _: (), error: ClientError) {
        let Some(inner) = self.inner() else { return };
        inner.attempt_failed(&error);
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
