//! The request object every handler and middleware receives.

use std::any::Any;
use std::fmt;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::adapter::Presence;
use super::binary::{self, fits};
use super::binary_v1;
use super::envelope::{self, ErrorCode};
use super::error::Error;
use super::groups::BroadcastOpts;
use super::handle::{AppHandle, SocketRef};
use super::inbox::WorkerMsg;
use super::rpc::CallResult;
use super::socket::{query_value, SocketData};
use super::socket_id::SocketId;
use super::worker_state::WorkerState;
use crate::proto::CloseCode;
use crate::runtime::{Conn, ConnId};

/// An event or request from a socket (or a system event about it), with the
/// socket at hand: reply, emit, join rooms, store values, broadcast.
///
/// The event name and data borrow from the received frame; `data::<T>()`
/// deserializes on demand into owned values.
///
/// ```
/// use emitws::app::{App, BroadcastOpts};
/// #[derive(serde::Deserialize)]
/// struct Join { room: String }
///
/// let mut app = App::new();
/// app.on("/join", |req| {
///     let Some(Join { room }) = req.expect_data::<Join>() else { return };
///     let room = format!("#{room}");
///     if let Err(e) = req.join(&room) {
///         return req.reply_err("forbidden", &e.to_string());
///     }
///     let _ = req.broadcast("/joined", &req.conn_id().to_string(), BroadcastOpts::to(&room));
///     req.reply(&room);
/// });
/// ```
pub struct Request<'a> {
    pub(crate) event: &'a str,
    pub(crate) id: Option<u64>,
    pub(crate) data: Option<&'a RawValue>,
    /// A binary envelope's payload (PROTOCOL.md §10), borrowed from the frame.
    pub(crate) binary: Option<&'a [u8]>,
    pub(crate) conn: Conn<'a, SocketData>,
    pub(crate) local: &'a mut WorkerState,
    pub(crate) app: &'a AppHandle,
    /// Replied, or handed to a [`ReplyHandle`].
    pub(crate) answered: bool,
}

impl fmt::Debug for Request<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Request")
            .field("socket", &self.conn_id())
            .field("event", &self.event)
            .field("request_id", &self.id)
            .field("data", &self.data.map(RawValue::get))
            .field("binary_len", &self.binary.map(<[u8]>::len))
            .finish()
    }
}

/// Data that does not have the type a handler asked for.
#[derive(Debug)]
pub struct DataError(serde_json::Error);

impl fmt::Display for DataError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "unexpected data: {}", self.0)
    }
}

impl std::error::Error for DataError {}

/// An envelope's data read as a `T`; absent data reads as JSON `null`.
pub(crate) fn read_data<'a, T: Deserialize<'a>>(data: Option<&'a RawValue>) -> Result<T, DataError> {
    serde_json::from_str(data.map_or("null", RawValue::get)).map_err(DataError)
}

impl<'a> Request<'a> {
    /// The event name (`/chat/say`, or `@connection` and the like for system events).
    pub fn event(&self) -> &str {
        self.event
    }

    /// The socket's connection on this node (emit.gg's `req.id`); see
    /// [`socket_id`](Self::socket_id) for its id across a cluster.
    pub fn conn_id(&self) -> ConnId {
        self.conn.id()
    }

    /// This socket's cluster-wide id. A resumed socket keeps the id it had
    /// (PROTOCOL.md §13) while its connection, [`conn_id`](Self::conn_id), is new.
    pub fn socket_id(&self) -> SocketId {
        self.app.socket_id_of(self.conn.id(), self.conn.data())
    }

    /// Whether this socket resumed an earlier one (PROTOCOL.md §13): true in
    /// its `@connection` handlers and after, which then find its rooms, tags
    /// and stored values restored.
    pub fn resumed(&self) -> bool {
        self.conn.data().has(super::socket::flag::RESUMED)
    }

    /// The connection the socket's public id names (its first one).
    fn public_conn(&self) -> ConnId {
        self.conn.data().public(self.conn.id())
    }

    /// The request's id when the client expects a reply; `None` for an event.
    pub fn request_id(&self) -> Option<u64> {
        self.id
    }

    /// Whether the client expects a reply.
    pub fn is_request(&self) -> bool {
        self.id.is_some()
    }

    /// The data, typed. Absent data reads as JSON `null` (so `Option<T>` and `()` accept it).
    ///
    /// Owned types only: every valid JSON string reads, escaped or not
    /// (`"a\"b"`, `"\u00e9"`). For zero-copy reading see
    /// [`data_borrowed`](Self::data_borrowed); a borrowed `&str` does not compile here:
    ///
    /// ```compile_fail
    /// let mut app = emitws::app::App::new();
    /// app.on("/x", |req| drop(req.data::<&str>()));
    /// ```
    ///
    /// # Errors
    ///
    /// [`DataError`] if the data does not read as a `T`.
    pub fn data<T: DeserializeOwned>(&self) -> Result<T, DataError> {
        self.data_borrowed()
    }

    /// The data typed, or `None` after replying `bad_request` (to a request)
    /// or emitting `@error` (to an event).
    pub fn expect_data<T: DeserializeOwned>(&mut self) -> Option<T> {
        let data = self.data();
        self.or_bad_request(data)
    }

    /// The value, or `None` after replying `bad_request` with the error
    /// (to a request) or emitting it as `@error` (to an event).
    pub(crate) fn or_bad_request<T, E: std::fmt::Display>(&mut self, read: Result<T, E>) -> Option<T> {
        let message = match read {
            Ok(value) => return Some(value),
            Err(e) => e.to_string(),
        };
        match self.id {
            Some(_) => self.reply_err(ErrorCode::BadRequest.as_str(), &message),
            None => self.local.emit_error(&mut self.conn, ErrorCode::BadRequest, &message),
        }
        None
    }

    /// The data typed, borrowing from the received frame where `T` does.
    ///
    /// A borrowed `&str` can only point into the frame's text as written, so
    /// it fails on any string that contains a JSON escape (`\"`, `\n`,
    /// `\u00e9`, …), which clients are free to send. Borrow strings as
    /// `Cow<'a, str>` with `#[serde(borrow)]` instead: borrowed when the text
    /// has no escape, owned when it does.
    ///
    /// ```
    /// use std::borrow::Cow;
    /// use emitws::app::App;
    /// #[derive(serde::Deserialize)]
    /// struct Say<'a> {
    ///     #[serde(borrow)]
    ///     text: Cow<'a, str>,
    /// }
    ///
    /// let mut app = App::new();
    /// app.on("/say", |req| match req.data_borrowed::<Say>() {
    ///     Ok(say) => println!("{}", say.text),
    ///     Err(e) => req.reply_err("bad_request", &e.to_string()),
    /// });
    /// ```
    ///
    /// # Errors
    ///
    /// [`DataError`] if the data does not read as a `T` (a borrowed `&str`
    /// meeting an escape, say).
    pub fn data_borrowed<T: Deserialize<'a>>(&self) -> Result<T, DataError> {
        read_data(self.data)
    }

    /// The data's JSON text, if any was sent.
    pub fn raw_data(&self) -> Option<&'a RawValue> {
        self.data
    }

    /// The payload of a binary envelope (an `emitws.v2` socket's binary
    /// frame, PROTOCOL.md §10), borrowed from the frame without a copy;
    /// `None` for a JSON envelope. A binary envelope has no JSON data:
    /// [`data`](Self::data) reads it as `null`.
    ///
    /// ```
    /// use emitws::app::App;
    /// let mut app = App::new();
    /// app.on("/upload", |req| match req.binary() {
    ///     Some(bytes) => {
    ///         let sum = bytes.iter().map(|&b| u64::from(b)).sum::<u64>();
    ///         req.reply(&sum)
    ///     }
    ///     None => req.reply_err("bad_request", "send the file as a binary frame"),
    /// });
    /// ```
    pub fn binary(&self) -> Option<&'a [u8]> {
        self.binary
    }

    /// Whether the socket speaks `emitws.v2`: binary payloads reach it as
    /// binary frames (else as `{"base64": …}` JSON, PROTOCOL.md §10).
    pub fn speaks_binary(&self) -> bool {
        self.conn.data().has(super::socket::flag::V2)
    }

    /// Replies to the request with raw bytes: a binary reply to an
    /// `emitws.v2` socket, `[2, id, {"base64": "…"}]` to an `emitws.v1`
    /// one (nothing happens for an event, or a second time).
    ///
    /// ```
    /// use emitws::app::App;
    /// let mut app = App::new();
    /// app.on("/thumbnail", |req| {
    ///     let image = req.binary().unwrap_or_default();
    ///     req.reply_binary(&image[..image.len().min(1024)]);
    /// });
    /// ```
    pub fn reply_binary(&mut self, bytes: &[u8]) {
        let Some(id) = self.take_reply() else { return };
        self.conn.metrics().replied(None);
        match self.speaks_binary() {
            true => {
                self.local.send_binary(&mut self.conn, |out| binary::write(out, binary::REPLY, Some(id), None, bytes))
            }
            false => self.local.send_raw(&mut self.conn, |out| binary_v1::write_reply(out, id, bytes)),
        }
    }

    /// Sends a binary event to this socket: a binary frame to an
    /// `emitws.v2` socket, `[0, event, {"base64": "…"}]` to an `emitws.v1` one.
    ///
    /// # Errors
    ///
    /// [`Error::BinaryName`] for a name that is empty or longer than 255
    /// bytes; nothing is sent.
    pub fn emit_binary(&mut self, event: &str, bytes: &[u8]) -> Result<(), Error> {
        if !fits(event) {
            return Err(Error::BinaryName(event.into()));
        }
        match self.speaks_binary() {
            true => self
                .local
                .send_binary(&mut self.conn, |out| binary::write(out, binary::EVENT, None, Some(event), bytes)),
            false => self.local.send_raw(&mut self.conn, |out| binary_v1::write_event(out, event, bytes)),
        }
        Ok(())
    }

    /// Broadcasts a binary event (see [`AppHandle::broadcast_binary`]) to
    /// the sockets `opts` selects; this socket is left out unless
    /// `opts.include_self()`.
    ///
    /// # Errors
    ///
    /// [`Error::BinaryName`] for a name that is empty or longer than 255
    /// bytes; nothing is sent.
    pub fn broadcast_binary(&mut self, event: &str, bytes: &[u8], opts: BroadcastOpts) -> Result<(), Error> {
        let mut except = self.app.local_ids(&opts.except);
        if !opts.include_self {
            except.push(self.conn_id());
        }
        self.app.broadcast_binary_from(event, bytes, &opts, except, Some(&mut self.local.outbox))
    }

    /// The app, for broadcasts and sends to other sockets and users.
    pub fn app(&self) -> &AppHandle {
        self.app
    }

    /// A `Send` handle to this socket, usable from any thread (by its
    /// public id, so it reaches the socket after a resume too).
    pub fn socket(&self) -> SocketRef {
        SocketRef { app: self.app.clone(), id: self.public_conn().into() }
    }

    /// The socket's user (from identify or authentication), if any.
    pub fn user(&self) -> Option<&str> {
        self.conn.data().user()
    }

    /// Attaches the socket to `user` (after a login request, say), as if it
    /// had connected as it: it becomes one of the user's devices (reached
    /// by [`AppHandle::to_user`], listed, counted by the cap of
    /// [`App::max_devices`](super::App::max_devices), here and with a Redis
    /// adapter across the cluster), [`user`](Self::user) says so at once,
    /// and a session kept for a resume keeps it: the socket resumes as it,
    /// on any node. A socket of another user is detached from that one
    /// first. False when the cap refused the socket
    /// ([`DevicePolicy::RejectNew`](super::DevicePolicy::RejectNew)): it is
    /// being closed, with 4429. In an identify hook the user is the one
    /// the hook returns; this changes nothing there.
    pub fn set_user(&mut self, user: &str) -> bool {
        super::users::set_user(self.app, &mut self.conn, Some(user), None)
    }

    /// Detaches the socket from its user, if any: it is no longer one of
    /// its devices (the user goes offline if it was the last), and
    /// [`user`](Self::user) answers `None` from now on.
    pub fn clear_user(&mut self) {
        super::users::set_user(self.app, &mut self.conn, None, None);
    }

    /// The path the socket connected to.
    pub fn path(&self) -> &str {
        self.conn.data().path()
    }

    /// A parameter of the socket's path route (`:room` in `/chat/:room`).
    pub fn param(&self, name: &str) -> Option<&str> {
        self.conn.data().param(name)
    }

    /// A query parameter of the socket's upgrade URL, percent-decoded.
    pub fn query(&self, name: &str) -> Option<String> {
        query_value(self.conn.data().query()?, name)
    }

    /// Sends an event to this socket.
    ///
    /// # Errors
    ///
    /// [`Error::Json`] if `data` does not serialize to JSON; nothing is sent.
    pub fn emit<T: Serialize + ?Sized>(&mut self, event: &str, data: &T) -> Result<(), Error> {
        self.local.send_json(&mut self.conn, |out| envelope::write_event(out, event, data))
    }

    /// Stores a value on the socket under `key` (replacing any value there).
    /// Values are `Send`: a session kept for a resume (PROTOCOL.md §13)
    /// holds them while the socket is away and hands them to its next
    /// connection, which may be on another worker. In a cluster they stay
    /// in the memory of this node: a socket resumed on another node comes
    /// back without them (a value that must follow it there is stored with
    /// [`set_shared`](Self::set_shared)).
    pub fn set<T: Any + Send>(&mut self, key: &str, value: T) {
        self.conn.data_mut().set(key, value);
    }

    /// Stores `value` on the socket under `key` as JSON, so that it comes
    /// back with the socket wherever it resumes: in a cluster, on any node
    /// (it is written to the socket's session record in Redis, a round trip
    /// the worker does not wait for). Read it with
    /// [`get_shared`](Self::get_shared); [`remove`](Self::remove) removes it.
    ///
    /// ```
    /// # use emitws::app::App;
    /// let mut app = App::new();
    /// app.on("/join", |req| {
    ///     let Some(name) = req.expect_data::<String>() else { return };
    ///     let _ = req.set_shared("name", &name);
    ///     req.reply(&true);
    /// });
    /// app.on("@connection", |req| {
    ///     if let Some(name) = req.get_shared::<String>("name") {
    ///         let _ = req.emit("/welcome-back", &name); // resumed, on this node or another
    ///     }
    /// });
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::Json`] if `value` does not serialize to JSON; nothing is stored.
    pub fn set_shared<T: Serialize + ?Sized>(&mut self, key: &str, value: &T) -> Result<(), Error> {
        let value = serde_json::to_value(value)?;
        if self.app.0.setup.adapter.is_some() {
            let text = value.to_string();
            self.app.presence(Presence::Stored { conn_id: self.conn.id(), key, value: Some(&text) });
        }
        self.conn.data_mut().set(key, SharedValue(value));
        Ok(())
    }

    /// The value stored under `key` with [`set_shared`](Self::set_shared),
    /// read as a `T`; `None` if there is none or it does not read as one.
    pub fn get_shared<T: DeserializeOwned>(&self, key: &str) -> Option<T> {
        self.get::<SharedValue>(key).and_then(|value| T::deserialize(&value.0).ok())
    }

    /// The value stored under `key`, if it has type `T`.
    pub fn get<T: Any>(&self, key: &str) -> Option<&T> {
        self.conn.data().get(key)
    }

    /// The value stored under `key`, mutably.
    pub fn get_mut<T: Any>(&mut self, key: &str) -> Option<&mut T> {
        self.conn.data_mut().get_mut(key)
    }

    /// Removes the value stored under `key`.
    pub fn remove(&mut self, key: &str) -> Option<Box<dyn Any + Send>> {
        let removed = self.conn.data_mut().remove(key)?;
        if removed.is::<SharedValue>() && self.app.0.setup.adapter.is_some() {
            self.app.presence(Presence::Stored { conn_id: self.conn.id(), key, value: None });
        }
        Some(removed)
    }

    /// Joins a room (`#name`) or takes a tag (`*name`).
    ///
    /// # Errors
    ///
    /// [`Error::BadGroup`] for a name that is no room or tag, and
    /// [`Error::TooManyGroups`] when the socket is in as many as
    /// [`EventLimits::max_groups_per_socket`](super::EventLimits::max_groups_per_socket) allows.
    pub fn join(&mut self, group: &str) -> Result<(), Error> {
        self.local.join(self.app, &mut self.conn, group)
    }

    /// Leaves a room or drops a tag; false if the socket was not in it.
    pub fn leave(&mut self, group: &str) -> bool {
        self.local.leave(self.app, &mut self.conn, group)
    }

    /// The rooms and tags the socket is in.
    pub fn groups(&self) -> Vec<String> {
        self.conn.data().groups().iter().map(|g| g.to_string()).collect()
    }

    /// Replies to the request (nothing happens for an event, or a second time).
    pub fn reply<T: Serialize + ?Sized>(&mut self, data: &T) {
        let Some(id) = self.take_reply() else { return };
        if let Err(e) = self.local.send_json(&mut self.conn, |out| envelope::write_reply(out, id, data)) {
            let message = format!("the reply does not serialize: {e}");
            let code = ErrorCode::Internal.as_str();
            self.conn.metrics().replied(Some(code));
            self.local.send_raw(&mut self.conn, |out| envelope::write_error(out, id, code, &message));
        } else {
            self.conn.metrics().replied(None);
        }
    }

    /// Replies with an error: a machine-readable `code` (see PROTOCOL.md) and a message.
    pub fn reply_err(&mut self, code: &str, message: &str) {
        let Some(id) = self.take_reply() else { return };
        self.conn.metrics().replied(Some(code));
        self.local.send_raw(&mut self.conn, |out| envelope::write_error(out, id, code, message));
    }

    /// Whether a reply was given (or deferred).
    pub fn replied(&self) -> bool {
        self.answered
    }

    /// Takes the reply out of the handler: answer later, from any thread,
    /// through the returned handle. The event loop goes on meanwhile.
    ///
    /// A socket may have [`EventLimits::max_pending`](super::EventLimits::max_pending)
    /// deferred replies outstanding; a request deferred over that is answered
    /// `rate_limited` at once, and its handle does nothing. While a request
    /// waits, a new request from the socket with the same id is refused
    /// `bad_request` ("duplicate request id") and the waiting one is unaffected.
    pub fn defer(&mut self) -> ReplyHandle {
        let over = self.conn.data().deferred().len() >= self.app.limits().max_pending;
        if over && !self.answered {
            self.reply_err(ErrorCode::RateLimited.as_str(), "too many requests waiting for a reply");
        }
        let id = self.take_reply();
        if let Some(id) = id {
            self.conn.data_mut().state().deferred.push(id);
        }
        ReplyHandle { app: self.app.clone(), conn: self.conn_id(), id }
    }

    fn take_reply(&mut self) -> Option<u64> {
        if self.answered {
            return None;
        }
        self.answered = true;
        self.id
    }

    /// Broadcasts an event (encoded once) to the sockets `opts` selects;
    /// this socket is left out unless `opts.include_self()`.
    ///
    /// # Errors
    ///
    /// [`Error::Json`] if `data` does not serialize to JSON; nothing is sent.
    pub fn broadcast<T: Serialize + ?Sized>(
        &mut self,
        event: &str,
        data: &T,
        opts: BroadcastOpts,
    ) -> Result<(), Error> {
        let mut except = self.app.local_ids(&opts.except);
        if !opts.include_self {
            except.push(self.conn_id());
        }
        self.app.broadcast_from(event, data, &opts, except, Some(&mut self.local.outbox))
    }

    /// Calls procedure `name` on this socket's client; `done` runs on this
    /// worker with the answer, or the reason there is none.
    ///
    /// # Errors
    ///
    /// [`Error::Json`] if `data` does not serialize to JSON; nothing is sent.
    pub fn call<T: Serialize + ?Sized>(
        &mut self,
        name: &str,
        data: &T,
        timeout: Duration,
        done: impl FnOnce(CallResult) + Send + 'static,
    ) -> Result<(), Error> {
        let data = serde_json::value::to_raw_value(data)?;
        self.local.begin_call(self.app, &mut self.conn, name, &data, timeout, Box::new(done));
        Ok(())
    }

    /// Closes the socket with `code` (a [`CloseCode`]; 4000–4999 for
    /// application codes) and `reason`.
    pub fn close(&mut self, code: CloseCode, reason: &str) {
        self.conn.close(code, reason);
    }
}

/// Connection facts (PROTOCOL.md §14), readable in every handler and middleware.
///
/// ```
/// use emitws::app::App;
/// let mut app = App::new();
/// app.on("@connection", |req| {
///     let who = serde_json::json!({
///         "addr": req.peer_addr().map(|a| a.ip().to_string()),
///         "user": req.user(),
///         "identity": req.identity(),
///         "meta": req.meta(),
///         "first_meta": req.user_meta(),
///     });
///     println!("{who}");
/// });
/// ```
impl Request<'_> {
    /// The client's address: the TCP peer's, or the address a
    /// [trusted proxy](super::App::trusted_proxies) forwarded; `None` if
    /// the socket's address cannot be read any more.
    pub fn peer_addr(&self) -> Option<std::net::SocketAddr> {
        self.conn.data().info().and_then(|info| info.peer).or_else(|| self.conn.peer_addr().ok())
    }

    /// What identified the socket, as JSON: the data of its
    /// [`identify_by_message`](super::App::identify_by_message) request,
    /// the accepted answer to its [`challenge`](super::App::challenge), or
    /// what an upgrade hook recorded with [`Connecting::set_identity`](super::Connecting::set_identity).
    /// WSE's `conn.identity`; the user it came to is [`user`](Self::user).
    /// It may hold credentials: it lives in memory only, as long as the socket.
    pub fn identity(&self) -> Option<&RawValue> {
        self.conn.data().info()?.identity.as_deref()
    }

    /// The metadata the client sent with this connection (`emitws_meta`,
    /// PROTOCOL.md §14), as JSON; [`meta_as`](Self::meta_as) reads it typed.
    pub fn meta(&self) -> Option<&RawValue> {
        self.conn.data().info()?.meta.as_deref()
    }

    /// The connection's metadata, deserialized: `None` without any.
    ///
    /// # Errors
    ///
    /// [`DataError`] if the metadata is not a `T`.
    pub fn meta_as<T: DeserializeOwned>(&self) -> Option<Result<T, DataError>> {
        self.meta().map(|meta| serde_json::from_str(meta.get()).map_err(DataError))
    }

    /// The metadata of the first connection of this socket's user on this
    /// node that sent any (WSE's `client.meta`): it stays the same while
    /// the user has a socket with metadata here, even once that first one
    /// is gone, and is the next such connection's once all are. `None`
    /// without a user, or when none of its sockets here sent metadata. A
    /// socket counts under the user it has when it is admitted (or first
    /// asks); a later [`set_user`](Self::set_user) to another user does not
    /// move it. Sockets without metadata cost nothing for it.
    pub fn user_meta(&mut self) -> Option<Box<RawValue>> {
        let tables = &self.app.0.setup.conn.tables;
        self.conn.data_mut().user_meta(tables).map(|meta| (*meta).to_owned())
    }

    /// The socket's id from the app's [`generate_id`](super::App::generate_id)
    /// hook; `None` without one, or once a newer connection was given the same id.
    pub fn generated_id(&self) -> Option<&str> {
        self.conn.data().info()?.generated_id()
    }
}

/// A reply given later, from any thread (`Send`). Dropping it unanswered
/// replies `internal`, so the client is not left waiting.
///
/// ```
/// use emitws::app::App;
/// let mut app = App::new();
/// app.on("/slow", |req| {
///     let reply = req.defer();
///     std::thread::spawn(move || {
///         std::thread::sleep(std::time::Duration::from_millis(10)); // a database call, say
///         reply.reply(&"done");
///     });
/// });
/// ```
#[derive(Debug)]
pub struct ReplyHandle {
    app: AppHandle,
    conn: ConnId,
    /// `None` once answered, or for an event.
    id: Option<u64>,
}

impl ReplyHandle {
    /// The socket to reply to.
    pub fn socket(&self) -> SocketRef {
        SocketRef { app: self.app.clone(), id: self.conn.into() }
    }

    /// Replies with data.
    pub fn reply<T: Serialize + ?Sized>(mut self, data: &T) {
        let Some(id) = self.id.take() else { return };
        let mut text = Vec::new();
        let mut error = None;
        if let Err(e) = envelope::write_reply(&mut text, id, data) {
            text.clear();
            let message = format!("the reply does not serialize: {e}");
            error = Some(ErrorCode::Internal.as_str());
            envelope::write_error(&mut text, id, ErrorCode::Internal.as_str(), &message);
        }
        self.app.metrics().deferred_reply(error);
        self.send(id, text);
    }

    /// Replies with raw bytes, as [`Request::reply_binary`] does (the
    /// socket's worker writes the reply in the form its socket speaks).
    pub fn reply_binary(mut self, bytes: &[u8]) {
        let Some(id) = self.id.take() else { return };
        let mut frame = Vec::new();
        binary::write(&mut frame, binary::REPLY, Some(id), None, bytes);
        self.app.metrics().deferred_reply(None);
        self.send(id, frame);
    }

    /// Replies with an error.
    pub fn reply_err(mut self, code: &str, message: &str) {
        let Some(id) = self.id.take() else { return };
        let mut text = Vec::new();
        envelope::write_error(&mut text, id, code, message);
        self.app.metrics().deferred_reply(Some(code));
        self.send(id, text);
    }

    /// Whether a reply is still owed: false for an event, once answered, and
    /// for a request that [`Request::defer`] answered `rate_limited` at once.
    #[cfg_attr(not(feature = "tokio"), allow(dead_code))]
    pub(crate) fn is_pending(&self) -> bool {
        self.id.is_some()
    }

    fn send(&self, id: u64, text: Vec<u8>) {
        self.app.server().notify(self.conn.worker(), Box::new(WorkerMsg::Reply { conn: self.conn, id, text }));
    }
}

impl Drop for ReplyHandle {
    fn drop(&mut self) {
        if let Some(id) = self.id.take() {
            let mut text = Vec::new();
            envelope::write_error(&mut text, id, ErrorCode::Internal.as_str(), "the handler dropped its reply");
            self.app.metrics().deferred_reply(Some(ErrorCode::Internal.as_str()));
            self.send(id, text);
        }
    }
}

/// A value stored with [`Request::set_shared`]: its JSON, which a session
/// record carries to whichever node the socket resumes on.
#[derive(Debug)]
pub(crate) struct SharedValue(pub serde_json::Value);

impl SharedValue {
    /// A socket's store entry for the shared value `key` that another node
    /// kept as JSON text (a claimed session's); `None` for text that is not
    /// JSON, which a node never writes.
    pub(crate) fn entry(key: &str, json: &str) -> Option<(Box<str>, Box<dyn Any + Send>)> {
        let value = SharedValue(serde_json::from_str(json).ok()?);
        Some((key.into(), Box::new(value)))
    }
}
