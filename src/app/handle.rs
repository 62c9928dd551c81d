//! The running app, seen from any thread: [`AppHandle`] (broadcasts, sends,
//! presence, the cluster), [`SocketRef`] (one socket), [`UserRef`] (one
//! user's devices) and [`Running`] (the started server).

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::net::SocketAddr;
use std::ops::Deref;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::value::RawValue;

use super::adapter::{Adapter, Presence, SocketAnswer, SocketAsk, Target};
use super::cluster_event::ClusterEvent;
use super::cluster_view::ClusterView;
use super::envelope;
use super::error::Error;
use super::groups::{BroadcastOpts, Delivery, GroupRegistry, Outbox};
use super::history::{new_epoch, History, RoomStreams};
use super::inbox::WorkerMsg;
use super::limits::{check_group_name, EventLimits};
use super::locks::lock;
use super::request::Request;
use super::rpc::{CallError, CallResult, GroupOutcome, PendingCall, PendingOp, StartCall};
use super::session::Sessions;
use super::socket::flag;
use super::socket_id::SocketId;
use super::{binary, binary_v1};
use super::{AppConfig, CLOSE_DROPPED};
use crate::proto::CloseCode;
use crate::runtime::{ConnId, Drain, DrainError, RunningServer, ServerHandle, SharedFrame};

/// The application-level ping: a request either side sends, which the other
/// side's library answers with its own data (PROTOCOL.md §9.1).
pub(crate) const PING_EVENT: &str = "@ping";

/// A running app's state, shared by its workers and handles: its fixed
/// configuration and the tables every worker reads and writes.
pub(crate) struct AppState {
    /// What the app was set up with (routes, auth, limits, adapter).
    pub(crate) setup: AppConfig,
    /// The engine's handle, set once the server runs.
    pub(crate) server: OnceLock<ServerHandle>,
    /// When the app started: the zero of socket buckets and heartbeat stamps.
    pub(crate) epoch: Instant,
    /// Every room and tag, and which workers have members.
    pub(crate) registry: GroupRegistry,
    /// Each user's sockets on this node, oldest first.
    pub(crate) users: Mutex<HashMap<Arc<str>, Vec<ConnId>>>,
    /// How many sockets are in (authenticated, not yet closed).
    pub(crate) sockets: AtomicUsize,
    /// This node's sockets, kept when no adapter keeps them.
    pub(crate) connected: Mutex<BTreeSet<ConnId>>,
    /// The streams of the rooms with history.
    pub(crate) streams: RoomStreams,
    /// Sessions kept for a resume, and the resumed sockets' connections.
    pub(crate) sessions: Sessions,
    /// The users whose last device went within the presence grace.
    pub(crate) grace: super::users::Grace,
}

/// A running app, from any thread: broadcasts, sends to sockets and users,
/// presence. Cheap to clone.
#[derive(Clone)]
pub struct AppHandle(pub(crate) Arc<AppState>);

impl fmt::Debug for AppHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AppHandle").field("sockets", &self.socket_count()).finish()
    }
}

impl AppHandle {
    /// A handle on a new app that is not serving yet.
    pub(crate) fn new(config: AppConfig) -> AppHandle {
        let mirror = config.adapter.as_ref().is_some_and(|adapter| adapter.keeps_history());
        AppHandle(Arc::new(AppState {
            setup: config,
            server: OnceLock::new(),
            epoch: Instant::now(),
            registry: GroupRegistry::default(),
            users: Mutex::new(HashMap::new()),
            sockets: AtomicUsize::new(0),
            connected: Mutex::default(),
            streams: RoomStreams::new(mirror),
            sessions: Sessions::new(),
            grace: Default::default(),
        }))
    }

    /// The engine's handle (raw frames, connection count, shutdown).
    pub fn server(&self) -> &ServerHandle {
        // Set by `listen` before it returns, or by the first socket's open
        // if that comes sooner; every handle is reached after one of them.
        self.0.server.get().expect("the app is running")
    }

    /// The limits in force.
    pub fn limits(&self) -> &EventLimits {
        &self.0.setup.limits
    }

    /// Broadcasts an event, encoded once, to the sockets `opts` selects, on
    /// every worker (and, unless local, every node of a cluster). Addressed
    /// to one room with [history](super::App::history) alone, it takes the
    /// room's next offset.
    ///
    /// # Errors
    ///
    /// [`Error::Json`] if `data` does not serialize to JSON; nothing is sent.
    pub fn broadcast<T: Serialize + ?Sized>(&self, event: &str, data: &T, opts: BroadcastOpts) -> Result<(), Error> {
        self.broadcast_from(event, data, &opts, self.local_ids(&opts.except), None)
    }

    /// Broadcasts a binary event to the sockets `opts` selects, on every
    /// node of a cluster unless `opts` is [local](BroadcastOpts::local).
    /// Sockets that speak `emitws.v2` get one binary frame, the bytes as
    /// they are; `emitws.v1` sockets get `[0, event, {"base64": "…"}]`
    /// (PROTOCOL.md §10). Addressed to one room with
    /// [history](super::App::history) alone, it takes the room's next
    /// offset as a JSON broadcast does, is kept and replayed to a resumed
    /// socket in the protocol it resumes with: `emitws.v2` sockets get it as
    /// an event with a room position (type 4), `emitws.v1` sockets with
    /// the position as a fourth element (PROTOCOL.md §13).
    ///
    /// ```no_run
    /// # fn demo(app: &emitws::app::AppHandle) -> Result<(), emitws::app::Error> {
    /// use emitws::app::BroadcastOpts;
    /// let frame = [0u8, 1, 2, 3];
    /// app.broadcast_binary("/video/frame", &frame, BroadcastOpts::to("#watchers"))?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::BinaryName`] for an event name longer than 255 bytes (or
    /// empty); nothing is sent.
    pub fn broadcast_binary(&self, event: &str, bytes: &[u8], opts: BroadcastOpts) -> Result<(), Error> {
        self.broadcast_binary_from(event, bytes, &opts, self.local_ids(&opts.except), None)
    }

    /// [`broadcast_binary`](Self::broadcast_binary) leaving out `except`,
    /// this worker's share going to `here`.
    pub(crate) fn broadcast_binary_from(
        &self,
        event: &str,
        bytes: &[u8],
        opts: &BroadcastOpts,
        except: Vec<ConnId>,
        here: Option<&mut Outbox>,
    ) -> Result<(), Error> {
        if !binary::fits(event) {
            return Err(Error::BinaryName(event.into()));
        }
        // Numbered as a JSON broadcast is (see `broadcast_from`), where a position fits a type-4 header.
        let numbered = self.numbered_in(opts).filter(|(room, ..)| binary_v1::position_fits(room));
        let Some((room, history, adapter)) = numbered else {
            if !opts.local && self.0.setup.adapter.is_some() {
                self.publish(&binary_v1::transport(event, bytes), Target::Broadcast(opts));
            }
            let (frame, v1) = binary_v1::event_frames(event, bytes);
            let delivery = Delivery { frame, v1: Some(v1), groups: opts.to.clone().into(), except: except.into() };
            self.route_here(delivery, here);
            return Ok(());
        };
        if let Some(adapter) = adapter {
            // The store keeps text: the transport form, to which the adapter adds the position.
            let envelope = binary_v1::transport(event, bytes);
            self.publish_numbered(adapter, (room, history), opts, envelope.payload(), &except);
            return Ok(());
        }
        let (kept, except) = self.kept_except(except);
        let now = Instant::now();
        // Both delivered frames are written with the kept one, under the stream's lock.
        let delivered = std::cell::Cell::new(None);
        self.with_stream(room, history, now, |stream| {
            stream.append(
                now,
                |epoch, offset| {
                    let (kept, frame, v1) = binary_v1::room_event_frames(event, bytes, room, offset, epoch);
                    delivered.set(Some((frame, v1)));
                    Ok::<_, Error>(kept)
                },
                kept,
                |_| {
                    let Some((frame, v1)) = delivered.take() else { return };
                    let delivery = Delivery { frame, v1: Some(v1), groups: opts.to.clone().into(), except };
                    self.route_here(delivery, None);
                },
            )
        })
    }

    /// The room with history a broadcast to `opts` is numbered in (one
    /// room with history alone; not a [local](BroadcastOpts::local) one
    /// with an adapter that keeps history: it cannot be numbered for the
    /// cluster), its history, and that adapter if there is one.
    fn numbered_in<'o>(&self, opts: &'o BroadcastOpts) -> Option<Numbered<'o, '_>> {
        let with_history = match &opts.to[..] {
            [room] => self.history(room).map(|history| (&**room, history)),
            _ => None,
        };
        // Asked of the streams (set at start), not of the adapter: no call per broadcast.
        let adapter = self.0.setup.adapter.as_ref().filter(|_| self.0.streams.is_mirror());
        let (room, history) = with_history.filter(|_| adapter.is_none() || !opts.local)?;
        Some((room, history, adapter))
    }

    /// Hands a broadcast to `room` to the adapter that numbers it for the
    /// cluster (`envelope`: without its position, which the adapter adds);
    /// `except`: this node's sockets it leaves out, with those of other
    /// nodes among `opts`' exceptions.
    fn publish_numbered(
        &self,
        adapter: &Arc<dyn Adapter>,
        (room, history): (&str, &History),
        opts: &BroadcastOpts,
        envelope: &[u8],
        except: &[ConnId],
    ) {
        let node = adapter.node();
        let here = except.iter().map(|conn| SocketId { node, conn: self.public(*conn) });
        let elsewhere = opts.except.iter().filter(|id| id.node != 0 && id.node != node).copied();
        let except: Vec<SocketId> = here.chain(elsewhere).collect();
        adapter.publish_history(room, history, &new_epoch(), envelope, &except);
    }

    /// The sockets a numbered broadcast leaves out, as its stream keeps
    /// them (with this node's id) and as its delivery skips them.
    fn kept_except(&self, except: Vec<ConnId>) -> (Arc<[SocketId]>, Arc<[ConnId]>) {
        let node = self.node();
        let kept = except.iter().map(|&conn| SocketId { node, conn }).collect();
        (kept, except.into())
    }

    /// Sends an event to one socket, on this node or another. False if the
    /// server has stopped, or the socket is on another node and there is no
    /// adapter; a socket on another node is not checked. A socket of this
    /// node that is away, waiting for its client to resume it, gets the
    /// event when it does (see [`App::resume_buffer`](super::App::resume_buffer)).
    ///
    /// # Errors
    ///
    /// [`Error::Json`] if `data` does not serialize to JSON; nothing is sent.
    pub fn emit_to<T: Serialize + ?Sized>(
        &self,
        id: impl Into<SocketId>,
        event: &str,
        data: &T,
    ) -> Result<bool, Error> {
        let frame = self.encode_event(event, data)?;
        Ok(self.send_to(id.into(), &Direct::Text(frame)))
    }

    /// Sends a binary event to one socket, on this node or another, as
    /// [`emit_to`](Self::emit_to) sends JSON: a binary frame if the socket
    /// speaks `emitws.v2`, `[0, event, {"base64": "…"}]` if it speaks
    /// `emitws.v1` (PROTOCOL.md §10). Kept for the socket while it is away,
    /// like any direct message, and sent in the protocol of the connection
    /// it resumes with. False if the server has stopped, or the socket is
    /// on another node and there is no adapter.
    ///
    /// ```no_run
    /// # fn demo(app: &emitws::app::AppHandle, id: emitws::app::SocketId) -> Result<(), emitws::app::Error> {
    /// let thumbnail: Vec<u8> = vec![0x89, b'P', b'N', b'G'];
    /// app.emit_binary_to(id, "/thumbnail", &thumbnail)?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::BinaryName`] for an event name longer than 255 bytes (or
    /// empty); nothing is sent.
    pub fn emit_binary_to(&self, id: impl Into<SocketId>, event: &str, bytes: &[u8]) -> Result<bool, Error> {
        Ok(self.send_to(id.into(), &Direct::binary(event, bytes)?))
    }

    /// Sends a direct message to the socket `id`: on this node, to one
    /// resumed here from another node, or through the adapter.
    fn send_to(&self, id: SocketId, direct: &Direct) -> bool {
        match (self.mine(id), self.0.sessions.arrived(id)) {
            (Some(public), _) => self.send_direct(public, direct),
            // Resumed here from another node.
            (None, Some(conn)) => self.send_now(conn, direct),
            (None, None) => {
                self.publish(direct.kept(), Target::Socket(id));
                self.0.setup.adapter.is_some()
            }
        }
    }

    /// A socket, by its id: a [`ConnId`] of this node, or a [`SocketId`]
    /// of any node of the cluster (a resumed socket's public id reaches it
    /// wherever it resumed, as [`emit_to`](Self::emit_to) does).
    pub fn socket(&self, id: impl Into<SocketId>) -> SocketRef {
        SocketRef { app: self.clone(), id: id.into() }
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
    /// (WSE's `drop` of one device); a socket of this node that is away,
    /// waiting for a resume, is ended instead. False if the socket is on
    /// this node and already gone, or on another node and there is no
    /// adapter; a socket on another node is not checked.
    ///
    /// ```no_run
    /// # fn demo(app: &emitws::app::AppHandle) {
    /// let id: emitws::app::SocketId = "1f-2".parse().unwrap();
    /// app.drop_socket(id, "signed in elsewhere");
    /// # }
    /// ```
    pub fn drop_socket(&self, id: impl Into<SocketId>, reason: &str) -> bool {
        let id = id.into();
        match self.mine(id) {
            Some(public) if self.0.sessions.discard_socket(public) => true,
            Some(public) => self.server().close(self.0.sessions.current(public), CLOSE_DROPPED, reason),
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

    /// The sockets of this node in a room or tag, sorted (by their public
    /// ids: a resumed socket's is its first connection's).
    pub fn group_members(&self, group: &str) -> Vec<ConnId> {
        let mut members: Vec<ConnId> = self.0.registry.members(group).into_iter().map(|c| self.public(c)).collect();
        members.sort();
        members
    }

    /// The cluster-wide id (PROTOCOL.md §12) of the socket at connection
    /// `conn` of this node, whose data is `data`: a resumed socket's is the
    /// one it first had, on this node or another.
    pub(crate) fn socket_id_of(&self, conn: ConnId, data: &super::socket::SocketData) -> SocketId {
        self.0.sessions.public_id(self.node(), conn, data.public(conn))
    }

    /// The public id of the socket at connection `conn` of this node.
    pub(crate) fn public(&self, conn: ConnId) -> ConnId {
        self.0.sessions.public(conn)
    }

    /// Every room and tag with members, sorted.
    pub fn groups(&self) -> Vec<String> {
        self.0.registry.names()
    }

    /// Every room and tag with members on this node, with how many, sorted
    /// by name ([`ClusterView::group_sizes`] for every node).
    pub fn group_sizes(&self) -> Vec<(String, usize)> {
        let sizes = self.0.registry.names().into_iter().map(|group| {
            let size = self.0.registry.size(&group);
            (group, size)
        });
        sizes.filter(|(_, size)| *size > 0).collect()
    }

    /// Every room with members on this node, with its size, sorted by name
    /// ([`ClusterView::rooms`] for every node).
    pub fn rooms(&self) -> Vec<(String, usize)> {
        rooms_of(self.group_sizes())
    }

    /// Stops gracefully: every socket is closed with 1001 (its `@disconnect`
    /// runs), then the workers exit. Does not wait; [`Running::close`] does.
    pub fn close(&self) {
        self.server().shutdown();
    }

    /// Takes this node out of service (WSE's node drain): it stops accepting
    /// at once, then closes every socket with 1012 and `redirect` (a
    /// `ws://` or `wss://` URL of another node, or none) as the reason, the
    /// closes spread evenly over `over` so the other nodes take the clients
    /// at a steady rate. Each socket's `@disconnect` runs as it closes. The
    /// emitws clients follow the redirect at once, or reconnect to their own
    /// URL after a short random delay without one (PROTOCOL.md §6). The
    /// node then keeps running, serving nobody, until [`close`](Self::close).
    ///
    /// # Errors
    ///
    /// As [`ServerHandle::drain`]: a redirect too long for a close reason or
    /// not a WebSocket URL, or a node already draining or closing.
    ///
    /// ```no_run
    /// # fn demo(running: emitws::app::Running) -> Result<(), emitws::runtime::DrainError> {
    /// use std::time::Duration;
    /// let drain = running.drain(Duration::from_secs(30), Some("ws://10.0.0.2:3000/chat"))?;
    /// drain.wait(Duration::from_secs(40));
    /// running.close();
    /// # Ok(()) }
    /// ```
    pub fn drain(&self, over: Duration, redirect: Option<&str>) -> Result<Drain, DrainError> {
        self.server().drain(over, redirect)
    }

    /// Closes the app gracefully on the first SIGINT or SIGTERM, as
    /// [`close`](Self::close) does (every socket gets 1001 and its
    /// `@disconnect` runs): [`Running::join`] then returns, and a `main`
    /// that returns after it exits 0. See [`ServerHandle::stop_on_signals`].
    ///
    /// # Errors
    ///
    /// The error of installing the signal handlers, or of starting their thread.
    ///
    /// ```no_run
    /// let running = emitws::app::App::new().listen("127.0.0.1:3000")?;
    /// running.stop_on_signals()?;
    /// running.join();
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn stop_on_signals(&self) -> std::io::Result<()> {
        self.server().stop_on_signals()
    }

    pub(crate) fn encode_event<T: Serialize + ?Sized>(&self, event: &str, data: &T) -> Result<SharedFrame, Error> {
        encode(|out| envelope::write_event(out, event, data))
    }

    /// Hands a broadcast to the workers that have sockets it addresses: the
    /// current worker's share goes to its outbox (`here`), the others' through
    /// their inboxes.
    pub(crate) fn route(
        &self,
        frame: SharedFrame,
        opts: &BroadcastOpts,
        except: Vec<ConnId>,
        here: Option<&mut Outbox>,
    ) {
        self.route_shared(frame, opts, except.into(), here);
    }

    /// [`route`](Self::route), with the sockets left out already shared.
    fn route_shared(&self, frame: SharedFrame, opts: &BroadcastOpts, except: Arc<[ConnId]>, here: Option<&mut Outbox>) {
        if !opts.local {
            self.publish(&frame, Target::Broadcast(opts));
        }
        self.route_here(Delivery { frame, v1: None, groups: opts.to.clone().into(), except }, here);
    }

    /// Hands a delivery to this node's workers that have sockets it
    /// addresses (see [`route`](Self::route)).
    fn route_here(&self, delivery: Delivery, here: Option<&mut Outbox>) {
        let server = self.server();
        let mut targets = vec![delivery.groups.is_empty(); server.workers()];
        if !delivery.groups.is_empty() {
            self.0.registry.workers_for(&delivery.groups, &mut targets);
        }
        let here_worker = here.as_ref().map(|outbox| outbox.worker);
        let mut here = here;
        for (worker, _) in targets.iter().enumerate().filter(|(_, wanted)| **wanted) {
            match here.as_deref_mut() {
                Some(outbox) if Some(worker) == here_worker => outbox.deliveries.push(delivery.clone()),
                _ => {
                    server.notify(worker, Box::new(WorkerMsg::Deliver(delivery.clone())));
                }
            }
        }
    }

    /// Encodes a broadcast and routes it (see [`route`](Self::route)). One
    /// addressed to a room with history alone is encoded with the room's
    /// next offset, kept in its stream and handed to the workers under the
    /// stream's lock, through every worker's inbox, this one's included:
    /// an inbox is delivered in the order it was filled, while this
    /// worker's outbox waits for the end of its turn, after broadcasts of
    /// lower offsets that other threads may have put in its inbox meanwhile.
    /// With an adapter that keeps history, such a broadcast goes to the
    /// adapter alone, which numbers it for the cluster and has every node,
    /// this one included, deliver it ([`deliver_history`](Self::deliver_history));
    /// a [local](BroadcastOpts::local) one cannot be numbered for the
    /// cluster and goes to this node's members without an offset.
    pub(crate) fn broadcast_from<T: Serialize + ?Sized>(
        &self,
        event: &str,
        data: &T,
        opts: &BroadcastOpts,
        except: Vec<ConnId>,
        here: Option<&mut Outbox>,
    ) -> Result<(), Error> {
        let Some((room, history, adapter)) = self.numbered_in(opts) else {
            let frame = self.encode_event(event, data)?;
            self.route(frame, opts, except, here);
            return Ok(());
        };
        if let Some(adapter) = adapter {
            let frame = self.encode_event(event, data)?;
            self.publish_numbered(adapter, (room, history), opts, frame.payload(), &except);
            return Ok(());
        }
        let (kept, except) = self.kept_except(except);
        let now = Instant::now();
        self.with_stream(room, history, now, |stream| {
            stream.append(
                now,
                |epoch, offset| encode(|out| envelope::write_room_event(out, event, data, room, offset, epoch)),
                kept,
                |frame| self.route_shared(frame.clone(), opts, except, None),
            )
        })
    }
}

/// Where a broadcast is numbered: its room, the room's history, and the
/// adapter that numbers it for the cluster, if any.
type Numbered<'o, 'a> = (&'o str, &'a History, Option<&'a Arc<dyn Adapter>>);

/// The rooms among groups with their sizes (tags are left out).
pub(crate) fn rooms_of(mut groups: Vec<(String, usize)>) -> Vec<(String, usize)> {
    groups.retain(|(group, _)| group.starts_with('#'));
    groups
}

/// A group change's outcome as an answer.
fn groups_answer(answer: Box<dyn FnOnce(SocketAnswer) + Send>) -> Box<dyn FnOnce(GroupOutcome) + Send> {
    Box::new(move |outcome| answer(SocketAnswer::Group(outcome)))
}

/// One text frame of what `write` writes (JSON: valid UTF-8).
fn encode(write: impl FnOnce(&mut Vec<u8>) -> serde_json::Result<()>) -> Result<SharedFrame, Error> {
    let mut text = Vec::new();
    write(&mut text)?;
    let text = String::from_utf8(text).map_err(|e| Error::Json(serde::ser::Error::custom(e)))?;
    Ok(SharedFrame::text(&text))
}

/// A socket reached from anywhere, on this node or another of the cluster:
/// emit to it, join it to rooms, give it a user, call it, close it. Cheap to clone and
/// `Send`; everything goes through the socket's worker, on the socket's node.
///
/// ```no_run
/// # fn demo(app: &emitws::app::AppHandle) -> Result<(), emitws::app::Error> {
/// use emitws::app::{GroupOutcome, SocketId};
/// // An id a client handed over: its socket may be on any node.
/// let id: SocketId = "5eed-1a".parse().expect("a socket id");
/// match app.socket(id).join("#vip")?.wait() {
///     GroupOutcome::Done { .. } => println!("{id} is in #vip"),
///     GroupOutcome::NotThere => println!("{id} is not connected"),
///     GroupOutcome::Refused { code, .. } => println!("refused: {code}"),
///     other => println!("no answer: {other:?}"),
/// }
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct SocketRef {
    pub(crate) app: AppHandle,
    pub(crate) id: SocketId,
}

impl SocketRef {
    /// The socket's id on its node (for a socket of this node, its
    /// [`SocketId::conn`]). For a resumed socket it is the public one, its
    /// first connection's.
    pub fn conn_id(&self) -> ConnId {
        self.id.conn
    }

    /// The socket's cluster-wide id (this node's id filled in for a socket
    /// named by its [`ConnId`]).
    pub fn id(&self) -> SocketId {
        match self.id.node {
            0 => SocketId { node: self.app.node(), conn: self.id.conn },
            _ => self.id,
        }
    }

    /// Sends an event to this socket (kept for it while it is away, as
    /// [`AppHandle::emit_to`]). False if the server has stopped, or the
    /// socket is on another node and there is no adapter.
    ///
    /// # Errors
    ///
    /// [`Error::Json`] if `data` does not serialize to JSON; nothing is sent.
    pub fn emit<T: Serialize + ?Sized>(&self, event: &str, data: &T) -> Result<bool, Error> {
        self.app.emit_to(self.id, event, data)
    }

    /// Sends a binary event to this socket, as
    /// [`AppHandle::emit_binary_to`]: raw bytes to an `emitws.v2` socket,
    /// base64 in JSON to an `emitws.v1` one, on any node.
    ///
    /// ```
    /// let mut app = emitws::app::App::new();
    /// app.on("/avatar", |req| {
    ///     let socket = req.socket();
    ///     // Later, from any thread:
    ///     std::thread::spawn(move || socket.emit_binary("/avatar/png", &[0x89, b'P', b'N', b'G']));
    /// });
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::BinaryName`] for an event name longer than 255 bytes (or
    /// empty); nothing is sent.
    pub fn emit_binary(&self, event: &str, bytes: &[u8]) -> Result<bool, Error> {
        self.app.emit_binary_to(self.id, event, bytes)
    }

    /// Joins the socket to a room (`#name`) or gives it a tag (`*name`), on
    /// its node, as its own [`Request::join`](super::Request::join) would
    /// (with the room's history position and the
    /// [`max_groups_per_socket`](super::EventLimits::max_groups_per_socket)
    /// limit); wait for the outcome with [`PendingOp::wait`] from any thread
    /// but a worker's. For a socket of another node the outcome comes back
    /// through the adapter, or [`GroupOutcome::TimedOut`] after its timeout
    /// (the Redis adapter's `RedisOptions::query_timeout`).
    ///
    /// ```no_run
    /// # fn demo(app: &emitws::app::AppHandle, id: emitws::app::SocketId) -> Result<(), emitws::app::Error> {
    /// use emitws::app::GroupOutcome;
    /// let outcome = app.socket(id).join("#match-42")?.wait();
    /// assert!(matches!(outcome, GroupOutcome::Done { .. } | GroupOutcome::NotThere | GroupOutcome::TimedOut));
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::BadGroup`] for a name that is no room or tag; nothing is asked.
    pub fn join(&self, group: &str) -> Result<PendingOp, Error> {
        let (pending, done) = PendingOp::new();
        self.join_then(group, done)?;
        Ok(pending)
    }

    /// [`join`](Self::join), with `done` run on the socket's worker (on
    /// the adapter's thread for a socket of another node) with the outcome:
    /// the form for a worker, which must not wait.
    ///
    /// # Errors
    ///
    /// [`Error::BadGroup`] for a name that is no room or tag; nothing is asked.
    pub fn join_then(&self, group: &str, done: impl FnOnce(GroupOutcome) + Send + 'static) -> Result<(), Error> {
        self.change_group(SocketAsk::Join(group.into()), done)
    }

    /// Takes the socket out of a room or tag, on its node, as its own
    /// [`Request::leave`](super::Request::leave) would; wait as for
    /// [`join`](Self::join) (`changed` is false if it was not in it).
    ///
    /// # Errors
    ///
    /// [`Error::BadGroup`] for a name that is no room or tag; nothing is asked.
    pub fn leave(&self, group: &str) -> Result<PendingOp, Error> {
        let (pending, done) = PendingOp::new();
        self.leave_then(group, done)?;
        Ok(pending)
    }

    /// [`leave`](Self::leave), with `done` run as [`join_then`](Self::join_then)'s.
    ///
    /// # Errors
    ///
    /// [`Error::BadGroup`] for a name that is no room or tag; nothing is asked.
    pub fn leave_then(&self, group: &str, done: impl FnOnce(GroupOutcome) + Send + 'static) -> Result<(), Error> {
        self.change_group(SocketAsk::Leave(group.into()), done)
    }

    /// Attaches the socket to `user`, on its node, as its own
    /// [`Request::set_user`](super::Request::set_user) would (emit.gg's
    /// `setUserOnline(user, socketId)` after a login handled elsewhere): it
    /// becomes one of the user's devices, reached by [`AppHandle::to_user`]
    /// from every node, counted by the cap of
    /// [`App::max_devices`](super::App::max_devices) (across the cluster
    /// with the Redis adapter), detached from another user first. Wait as
    /// for [`join`](Self::join): [`GroupOutcome::Done`] once the cap let it
    /// in (`changed` is false if it had that user already),
    /// [`GroupOutcome::Refused`] with `too_many_devices` when the cap
    /// ([`DevicePolicy::RejectNew`](super::DevicePolicy::RejectNew))
    /// refused it (it is being closed with 4429), [`GroupOutcome::NotThere`]
    /// or [`GroupOutcome::TimedOut`].
    ///
    /// ```no_run
    /// # fn demo(app: &emitws::app::AppHandle, id: emitws::app::SocketId) {
    /// use emitws::app::GroupOutcome;
    /// match app.socket(id).set_user("ana").wait() {
    ///     GroupOutcome::Done { .. } => println!("{id} is one of ana's devices"),
    ///     GroupOutcome::Refused { message, .. } => println!("refused: {message}"),
    ///     other => println!("not set: {other:?}"),
    /// }
    /// # }
    /// ```
    pub fn set_user(&self, user: &str) -> PendingOp {
        let (pending, done) = PendingOp::new();
        self.set_user_then(user, done);
        pending
    }

    /// [`set_user`](Self::set_user), with `done` run as [`join_then`](Self::join_then)'s.
    pub fn set_user_then(&self, user: &str, done: impl FnOnce(GroupOutcome) + Send + 'static) {
        self.ask(SocketAsk::SetUser(Some(user.into())), group_done(done));
    }

    /// Detaches the socket from its user, on its node, as its own
    /// [`Request::clear_user`](super::Request::clear_user) would (the user
    /// goes offline if it was its last device); wait as for
    /// [`join`](Self::join) (`changed` is false if it had no user).
    pub fn clear_user(&self) -> PendingOp {
        let (pending, done) = PendingOp::new();
        self.clear_user_then(done);
        pending
    }

    /// [`clear_user`](Self::clear_user), with `done` run as [`join_then`](Self::join_then)'s.
    pub fn clear_user_then(&self, done: impl FnOnce(GroupOutcome) + Send + 'static) {
        self.ask(SocketAsk::SetUser(None), group_done(done));
    }

    /// Asks a join or a leave, after checking the group's name here.
    fn change_group(&self, ask: SocketAsk, done: impl FnOnce(GroupOutcome) + Send + 'static) -> Result<(), Error> {
        let (SocketAsk::Join(group) | SocketAsk::Leave(group)) = &ask else { unreachable!("a group change") };
        if !check_group_name(group) {
            return Err(Error::BadGroup(group.clone()));
        }
        self.ask(ask, group_done(done));
        Ok(())
    }

    /// Calls procedure `name` on the client, on this node or another; wait
    /// for the answer with [`PendingCall::wait`] (from any thread but a
    /// worker's: blocking a worker would stop its sockets, this one's reply
    /// included). For a socket of another node the call starts on that
    /// node and its answer, or its error, comes back with the same
    /// [`CallResult`]; this node gives up with [`CallError::Timeout`] after
    /// `timeout` and the adapter's own timeout (the Redis adapter's
    /// `RedisOptions::query_timeout`), should
    /// that node die meanwhile.
    ///
    /// ```no_run
    /// # fn demo(app: &emitws::app::AppHandle, id: emitws::app::SocketId) -> Result<(), emitws::app::Error> {
    /// use std::time::Duration;
    /// // The client registered "/client/confirm"; its socket may be on any node.
    /// match app.socket(id).call("/client/confirm", &"Delete?", Duration::from_secs(5))?.wait() {
    ///     Ok(reply) => println!("answered {}", reply.raw()),
    ///     Err(why) => println!("no answer: {why}"),
    /// }
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::Json`] if `data` does not serialize to JSON; nothing is sent.
    pub fn call<T: Serialize + ?Sized>(&self, name: &str, data: &T, timeout: Duration) -> Result<PendingCall, Error> {
        let (pending, done) = PendingCall::new();
        self.call_then(name, data, timeout, done)?;
        Ok(pending)
    }

    /// Calls procedure `name` on the client; `done` runs on the socket's
    /// worker with the answer (or the reason there is none), or, for a
    /// socket of another node, on the adapter's thread.
    ///
    /// # Errors
    ///
    /// [`Error::Json`] if `data` does not serialize to JSON; nothing is sent.
    pub fn call_then<T: Serialize + ?Sized>(
        &self,
        name: &str,
        data: &T,
        timeout: Duration,
        done: impl FnOnce(CallResult) + Send + 'static,
    ) -> Result<(), Error> {
        let data = serde_json::value::to_raw_value(data)?;
        self.call_raw(name, data, timeout, done);
        Ok(())
    }

    /// [`call_then`](Self::call_then) with data that is JSON already.
    fn call_raw(
        &self,
        name: &str,
        data: Box<RawValue>,
        timeout: Duration,
        done: impl FnOnce(CallResult) + Send + 'static,
    ) {
        let call = SocketAsk::Call { name: name.into(), data, timeout };
        self.ask(
            call,
            Box::new(move |answer| {
                done(match answer {
                    Some(SocketAnswer::Call(result)) => result,
                    Some(_) => Err(mismatched_call()),
                    None => Err(CallError::Timeout),
                })
            }),
        );
    }

    /// Measures a round trip to the client at the application level
    /// (openspeed's `ws.ping()`): the server calls the client's built-in
    /// `@ping` procedure, which both clients answer at once (PROTOCOL.md
    /// §9.1), and the wait gives the time from this call to the answer —
    /// the network both ways, and the time the client's event loop took to
    /// answer, which a WebSocket ping does not show. For a socket of
    /// another node the time includes the hops through the cluster. Wait
    /// from any thread but a worker's; from a handler use
    /// [`ping_then`](Self::ping_then).
    ///
    /// ```no_run
    /// # fn demo(app: &emitws::app::AppHandle, id: emitws::app::SocketId) {
    /// use std::time::Duration;
    /// match app.socket(id).ping(Duration::from_secs(5)).wait() {
    ///     Ok(rtt) => println!("{id} answers in {rtt:?}"),
    ///     Err(why) => println!("{id} did not answer: {why}"),
    /// }
    /// # }
    /// ```
    pub fn ping(&self, timeout: Duration) -> PendingPing {
        let (sender, answer) = mpsc::sync_channel(1);
        self.ping_then(timeout, move |result| drop(sender.try_send(result)));
        PendingPing { answer }
    }

    /// [`ping`](Self::ping), with `done` run on the socket's worker (on the
    /// adapter's thread for a socket of another node) with the round trip,
    /// or why there is none ([`CallError::Timeout`] after `timeout`,
    /// [`CallError::Disconnected`], [`CallError::NotRegistered`] from a
    /// client that does not know `@ping`): the form for a handler.
    ///
    /// ```
    /// use std::time::Duration;
    /// let mut app = emitws::app::App::new();
    /// app.on("/lag", |req| {
    ///     let reply = req.defer();
    ///     req.socket().ping_then(Duration::from_secs(5), move |rtt| match rtt {
    ///         Ok(rtt) => reply.reply(&(rtt.as_micros() as u64)),
    ///         Err(why) => reply.reply_err("timeout", &why.to_string()),
    ///     });
    /// });
    /// ```
    pub fn ping_then(&self, timeout: Duration, done: impl FnOnce(Result<Duration, CallError>) + Send + 'static) {
        let started = Instant::now();
        let data = RawValue::NULL.to_owned();
        self.call_raw(PING_EVENT, data, timeout, move |result| done(result.map(|_| started.elapsed())));
    }

    /// Where the socket is (openspeed's `ws.readyState` of any socket, on
    /// any node), asked of its worker: [`Connecting`](ReadyState::Connecting)
    /// until it is admitted, and while it is away with its session kept
    /// for a resume; [`Open`](ReadyState::Open);
    /// [`Closing`](ReadyState::Closing) once its close has started;
    /// [`Closed`](ReadyState::Closed) once it is gone (or was never there).
    /// Wait from any thread but a worker's; from a handler use
    /// [`ready_state_then`](Self::ready_state_then).
    ///
    /// ```no_run
    /// # fn demo(app: &emitws::app::AppHandle, id: emitws::app::SocketId) {
    /// use emitws::app::ReadyState;
    /// match app.socket(id).ready_state().wait() {
    ///     Some(ReadyState::Open) => println!("{id} is open"),
    ///     Some(state) => println!("{id} is {state}"),
    ///     None => println!("{id}'s node did not answer"),
    /// }
    /// # }
    /// ```
    pub fn ready_state(&self) -> PendingReadyState {
        let (sender, answer) = mpsc::sync_channel(1);
        self.ready_state_then(move |state| {
            let _ = sender.try_send(state);
        });
        PendingReadyState { answer }
    }

    /// [`ready_state`](Self::ready_state), with `done` run on the socket's
    /// worker (on the adapter's thread for a socket of another node) with
    /// the state, or `None` when the socket's node did not answer within
    /// the adapter's timeout (it may have died): the form for a handler.
    pub fn ready_state_then(&self, done: impl FnOnce(Option<ReadyState>) + Send + 'static) {
        self.ask(
            SocketAsk::ReadyState,
            Box::new(move |answer| {
                done(match answer {
                    Some(SocketAnswer::ReadyState(state)) => Some(state),
                    Some(_) => Some(ReadyState::Closed),
                    None => None,
                })
            }),
        );
    }

    /// Has the socket's node do `ask`: this node's workers for a socket of
    /// this node (or resumed here), else the adapter, which routes it to
    /// the socket's node; without one, the socket is not there.
    fn ask(&self, ask: SocketAsk, done: super::adapter::AskDone) {
        let app = &self.app;
        if app.local_conn(self.id).is_some() {
            return app.deliver_ask(self.id, ask, Box::new(move |answer| done(Some(answer))));
        }
        let absent = ask.absent();
        // No socket has opened on this node yet: none of its own is there.
        if app.0.server.get().is_none() && app.mine(self.id).is_some() {
            return done(Some(absent));
        }
        let id = self.id();
        match &app.0.setup.adapter {
            Some(adapter) if id.node != 0 => {
                if let Err(done) = adapter.ask(id, ask, done) {
                    done(Some(absent));
                }
            }
            _ => done(Some(absent)),
        }
    }

    /// Closes the socket with code 4000 and `reason` (WSE's `drop`).
    pub fn drop_with(&self, reason: &str) -> bool {
        self.close(CLOSE_DROPPED, reason)
    }

    /// Starts the close handshake with `code` and `reason`: on this node,
    /// or on the socket's through the adapter (false without one).
    pub fn close(&self, code: CloseCode, reason: &str) -> bool {
        match self.app.local_conn(self.id) {
            Some(conn) => self.app.server().close(conn, code, reason),
            None => self.app.close_elsewhere(Target::Socket(self.id()), code, reason),
        }
    }
}

/// Where a connection is, in the four states of the browser's and
/// openspeed's `readyState`, with their numbers: [`Request::ready_state`]
/// on the server, `ready_state` on the Rust client
/// ([`AppClient::ready_state`](crate::client::app::AppClient::ready_state))
/// and `readyState` on the JavaScript one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum ReadyState {
    /// 0: not usable yet — connecting, authenticating, waiting for its
    /// resume, or (a client) reconnecting.
    Connecting = 0,
    /// 1: admitted: envelopes go both ways.
    Open = 1,
    /// 2: the close handshake has started.
    Closing = 2,
    /// 3: closed (or, a client, not opened yet or given up).
    Closed = 3,
}

impl ReadyState {
    /// The number, as the WebSocket API's `readyState` gives it.
    pub fn number(self) -> u8 {
        self as u8
    }

    /// The name, as the WebSocket API's constants spell it: `CONNECTING`, `OPEN`, `CLOSING`, `CLOSED`.
    pub fn as_str(self) -> &'static str {
        match self {
            ReadyState::Connecting => "CONNECTING",
            ReadyState::Open => "OPEN",
            ReadyState::Closing => "CLOSING",
            ReadyState::Closed => "CLOSED",
        }
    }
}

impl fmt::Display for ReadyState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Request<'_> {
    /// Where the socket is (openspeed's `ws.readyState`):
    /// [`Connecting`](ReadyState::Connecting) until it is admitted (the
    /// handler of a first-message identification sees this),
    /// [`Open`](ReadyState::Open) once admitted,
    /// [`Closing`](ReadyState::Closing) once its close has started (after
    /// [`Request::close`], say), [`Closed`](ReadyState::Closed) in
    /// `@disconnect` handlers, which run once it has closed.
    ///
    /// ```
    /// use emitws::app::{App, ReadyState};
    /// let mut app = App::new();
    /// app.on("/bye", |req| {
    ///     req.close(emitws::proto::CloseCode::NORMAL, "bye");
    ///     assert_eq!(req.ready_state(), ReadyState::Closing);
    /// });
    /// ```
    pub fn ready_state(&self) -> ReadyState {
        // User events start with `/`: this name is the system hook's.
        match self.event {
            "@disconnect" => ReadyState::Closed,
            _ => ready_state_of(self.conn.is_open(), self.conn.data()),
        }
    }
}

/// Where a socket whose connection is there is: closing once it is no
/// longer open, else open once admitted.
pub(crate) fn ready_state_of(open: bool, data: &super::socket::SocketData) -> ReadyState {
    match open {
        false => ReadyState::Closing,
        true if data.has(flag::CONNECTED) => ReadyState::Open,
        true => ReadyState::Connecting,
    }
}

/// The answer of [`SocketRef::ready_state`], to wait for from a thread that is not a worker.
#[derive(Debug)]
pub struct PendingReadyState {
    answer: mpsc::Receiver<Option<ReadyState>>,
}

impl PendingReadyState {
    /// Blocks until the socket's worker answers (at most the adapter's
    /// timeout for a socket of another node): `None` when no answer came.
    pub fn wait(self) -> Option<ReadyState> {
        // A dropped sender: the server stopped before the worker took it.
        self.answer.recv().unwrap_or(Some(ReadyState::Closed))
    }

    /// The answer, if it has come.
    pub fn try_result(&self) -> Option<Option<ReadyState>> {
        match self.answer.try_recv() {
            Ok(state) => Some(state),
            Err(mpsc::TryRecvError::Empty) => None,
            Err(mpsc::TryRecvError::Disconnected) => Some(Some(ReadyState::Closed)),
        }
    }
}

/// The round trip of [`SocketRef::ping`], to wait for from a thread that is not a worker.
#[derive(Debug)]
pub struct PendingPing {
    answer: mpsc::Receiver<Result<Duration, CallError>>,
}

impl PendingPing {
    /// Blocks until the client answers, or the ping's timeout.
    pub fn wait(self) -> Result<Duration, CallError> {
        // The call always completes; a dropped sender means the server stopped first.
        self.answer.recv().unwrap_or(Err(CallError::Disconnected))
    }

    /// The round trip, if the answer has come.
    pub fn try_result(&self) -> Option<Result<Duration, CallError>> {
        match self.answer.try_recv() {
            Ok(result) => Some(result),
            Err(mpsc::TryRecvError::Empty) => None,
            Err(mpsc::TryRecvError::Disconnected) => Some(Err(CallError::Disconnected)),
        }
    }
}

/// What the asker of a join, a leave or a user change makes of the answer
/// (none: the socket's node did not answer in time).
fn group_done(done: impl FnOnce(GroupOutcome) + Send + 'static) -> super::adapter::AskDone {
    Box::new(move |answer| {
        done(match answer {
            Some(SocketAnswer::Group(outcome)) => outcome,
            Some(_) => mismatched_group(),
            None => GroupOutcome::TimedOut,
        })
    })
}

/// What a join's asker makes of an answer of another kind (a node that misread it).
fn mismatched_group() -> GroupOutcome {
    GroupOutcome::Refused { code: "internal".into(), message: "the socket's node answered something else".into() }
}

/// What a call's asker makes of an answer of another kind.
fn mismatched_call() -> CallError {
    CallError::Remote { code: "internal".into(), message: "the socket's node answered something else".into() }
}

/// A direct message to one socket or one user's devices.
pub(crate) enum Direct {
    /// A JSON envelope, the text frame every socket gets.
    Text(SharedFrame),
    /// A binary event: its node-to-node text, kept for an away socket and
    /// published to other nodes (the store and the nodes carry text), and
    /// its frames for `emitws.v2` and `emitws.v1` sockets.
    Binary { transport: SharedFrame, frames: Box<(SharedFrame, SharedFrame)> },
}

impl Direct {
    /// A binary event's direct message.
    fn binary(event: &str, bytes: &[u8]) -> Result<Direct, Error> {
        if !binary::fits(event) {
            return Err(Error::BinaryName(event.into()));
        }
        let frames = Box::new(binary_v1::event_frames(event, bytes));
        Ok(Direct::Binary { transport: binary_v1::transport(event, bytes), frames })
    }

    /// A direct message another node published: a binary event in its
    /// transport form, or JSON.
    fn from_text(text: &str) -> Direct {
        match binary_v1::from_transport(text) {
            Some(frames) => Direct::Binary { transport: SharedFrame::text(text), frames: Box::new(frames) },
            None => Direct::Text(SharedFrame::text(text)),
        }
    }

    /// The text kept for an away socket and published to other nodes.
    fn kept(&self) -> &SharedFrame {
        match self {
            Direct::Text(frame) | Direct::Binary { transport: frame, .. } => frame,
        }
    }
}

/// One user's devices, reached from any thread.
#[derive(Clone, Debug)]
pub struct UserRef {
    app: AppHandle,
    user: String,
}

impl UserRef {
    /// The user's sockets on this node, oldest first (by their public ids,
    /// as [`AppHandle::group_members`]).
    pub fn sockets(&self) -> Vec<ConnId> {
        self.conns().into_iter().map(|conn| self.app.public(conn)).collect()
    }

    /// The connections of the user's sockets on this node, oldest first.
    pub(crate) fn conns(&self) -> Vec<ConnId> {
        lock(&self.app.0.users).get(self.user.as_str()).cloned().unwrap_or_default()
    }

    /// Whether the user has a socket open on this node.
    pub fn is_online(&self) -> bool {
        lock(&self.app.0.users).contains_key(self.user.as_str())
    }

    /// Sends an event (encoded once) to every device, on every node of a
    /// cluster; returns how many devices this node has, counting those away
    /// waiting for a resume (which get the event when they resume, as with
    /// [`AppHandle::emit_to`]).
    ///
    /// # Errors
    ///
    /// [`Error::Json`] if `data` does not serialize to JSON; nothing is sent.
    pub fn emit<T: Serialize + ?Sized>(&self, event: &str, data: &T) -> Result<usize, Error> {
        let frame = self.app.encode_event(event, data)?;
        Ok(self.send(&Direct::Text(frame)))
    }

    /// Sends a binary event to every device, on every node of a cluster,
    /// as [`emit`](Self::emit) sends JSON: a binary frame to those speaking
    /// `emitws.v2`, `[0, event, {"base64": "…"}]` to `emitws.v1` ones
    /// (PROTOCOL.md §10); returns how many devices this node has, counting
    /// those away waiting for a resume.
    ///
    /// ```no_run
    /// # fn demo(app: &emitws::app::AppHandle) -> Result<(), emitws::app::Error> {
    /// app.to_user("ada").emit_binary("/sync/chunk", &[1, 2, 3])?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::BinaryName`] for an event name longer than 255 bytes (or
    /// empty); nothing is sent.
    pub fn emit_binary(&self, event: &str, bytes: &[u8]) -> Result<usize, Error> {
        Ok(self.send(&Direct::binary(event, bytes)?))
    }

    /// Sends a direct message to every device, here and through the
    /// adapter; how many devices this node has.
    fn send(&self, direct: &Direct) -> usize {
        let here = self.send_here(direct);
        self.app.publish(direct.kept(), Target::User(&self.user));
        here
    }

    /// Sends a direct message to the devices on this node, keeping it for
    /// those away (the sending node keeps it only for the devices away on
    /// that node); how many there are.
    fn send_here(&self, direct: &Direct) -> usize {
        let sockets = self.conns();
        match direct {
            Direct::Text(frame) => self.app.server().broadcast(sockets.iter().copied(), frame),
            Direct::Binary { .. } => {
                for conn in &sockets {
                    self.app.send_now(*conn, direct);
                }
            }
        }
        let (buffer, kept) = (self.app.0.setup.resume.buffer, direct.kept());
        sockets.len() + self.app.0.sessions.hold_for_user(&self.user, kept, buffer, self.app.hold_in_cluster(kept))
    }

    /// Closes every device, on every node of a cluster, with 4000 and
    /// `reason`, and ends those away waiting for a resume; returns how many
    /// this node had open.
    pub fn drop_with(&self, reason: &str) -> usize {
        self.app.0.sessions.discard_user(&self.user);
        let sockets = self.conns();
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
    pub(crate) app: AppHandle,
    pub(crate) server: Option<RunningServer>,
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

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(adapter) = &self.app.0.setup.adapter {
            adapter.detach();
        }
    }
}

impl AppHandle {
    /// This node's id in the cluster (0 without an adapter).
    pub fn node(&self) -> u64 {
        self.0.setup.adapter.as_ref().map_or(0, |adapter| adapter.node())
    }

    /// Answers about every node of the cluster (this one alone without an
    /// adapter). Each call is a round trip to the cluster's store: from a
    /// handler, prefer [`Request::defer`](super::Request::defer) and another thread.
    pub fn cluster(&self) -> ClusterView<'_> {
        ClusterView { app: self }
    }

    /// The connection of `id` now, if it is on this node (a resumed
    /// socket's public id reaches its new connection).
    pub(crate) fn here(&self, id: SocketId) -> Option<ConnId> {
        match self.mine(id) {
            Some(public) => Some(self.0.sessions.current(public)),
            None => self.0.sessions.arrived(id),
        }
    }

    /// The connection of `id` now, if it answers on this node: this
    /// node's (unless another node took its session over) or one resumed
    /// here from another node. `None` before any socket opened.
    pub(crate) fn local_conn(&self, id: SocketId) -> Option<ConnId> {
        self.0.server.get()?;
        match self.mine(id) {
            Some(public) if self.0.sessions.is_departed(public) => None,
            Some(public) => Some(self.0.sessions.current(public)),
            None => self.0.sessions.arrived(id),
        }
    }

    /// Does what another node (or a [`SocketRef`] of this one) asks of the
    /// socket of public id `public` (see [`Adapter::ask`](super::Adapter::ask)):
    /// a join, a leave or a user change through the same code as the
    /// socket's own [`Request::join`](super::Request::join),
    /// [`Request::leave`](super::Request::leave) and
    /// [`Request::set_user`](super::Request::set_user), or a call; `answer` gets the outcome, from the socket's worker
    /// ([`GroupOutcome::NotThere`], or a call's [`CallError::Disconnected`],
    /// at once when the socket is not on this node). If the server stops
    /// first, `answer` is dropped uncalled.
    pub fn deliver_ask(&self, public: SocketId, ask: SocketAsk, answer: Box<dyn FnOnce(SocketAnswer) + Send>) {
        let Some(conn) = self.local_conn(public) else { return answer(ask.absent()) };
        let message = match ask {
            SocketAsk::Join(group) | SocketAsk::Leave(group) if !check_group_name(&group) => {
                return answer(SocketAnswer::Group(GroupOutcome::refused(&Error::BadGroup(group))));
            }
            SocketAsk::Join(group) => {
                WorkerMsg::Membership { conn, change: Box::new((group, true, groups_answer(answer))) }
            }
            SocketAsk::Leave(group) => {
                WorkerMsg::Membership { conn, change: Box::new((group, false, groups_answer(answer))) }
            }
            SocketAsk::Call { name, data, timeout } => {
                let done = Box::new(move |result| answer(SocketAnswer::Call(result)));
                WorkerMsg::Call(StartCall { conn, name, data, timeout, done })
            }
            SocketAsk::SetUser(user) => WorkerMsg::UserChange { conn, change: Box::new((user, groups_answer(answer))) },
            // Its connection is gone, its session kept: as a client
            // reconnecting is (PROTOCOL.md §1, readyState).
            SocketAsk::ReadyState if self.mine(public).is_some_and(|public| self.0.sessions.is_away(public)) => {
                return answer(SocketAnswer::ReadyState(ReadyState::Connecting));
            }
            SocketAsk::ReadyState => {
                WorkerMsg::ReadyState { conn, done: Box::new(move |state| answer(SocketAnswer::ReadyState(state))) }
            }
        };
        // If the worker is gone, the message (and `answer` in it) is dropped.
        self.server().notify(conn.worker(), Box::new(message));
    }

    /// The public id on this node of `id`, if it is on this node.
    fn mine(&self, id: SocketId) -> Option<ConnId> {
        (id.node == 0 || id.node == self.node()).then_some(id.conn)
    }

    /// Sends `frame` to the socket of public id `public` on this node, or
    /// keeps it for the socket if it is away; false if the server has stopped.
    /// One resumed on another node gets it there.
    fn send_direct(&self, public: ConnId, direct: &Direct) -> bool {
        let sessions = &self.0.sessions;
        let kept = direct.kept();
        if sessions.is_departed(public) {
            self.publish(kept, Target::Socket(SocketId { node: self.node(), conn: public }));
            return true;
        }
        sessions.hold_for_socket(public, kept, self.0.setup.resume.buffer, self.hold_in_cluster(kept))
            || self.send_now(sessions.current(public), direct)
    }

    /// Sends a direct message to connection `conn` of this node; false if
    /// the server has stopped. A binary event goes through the socket's
    /// worker, which knows the protocol the socket speaks.
    fn send_now(&self, conn: ConnId, direct: &Direct) -> bool {
        match direct {
            Direct::Text(frame) => self.server().send_frame(conn, frame),
            Direct::Binary { frames, .. } => {
                let message = WorkerMsg::EmitBinary { conn, frames: frames.clone() };
                self.server().notify(conn.worker(), Box::new(message))
            }
        }
    }

    /// Copies a direct message held for an away socket to the cluster's
    /// store, by the socket's record key, for a resume on any node.
    fn hold_in_cluster<'a>(&'a self, frame: &'a SharedFrame) -> impl FnMut(&str, u64) + 'a {
        move |record, number| {
            if let Some(adapter) = &self.0.setup.adapter {
                adapter.hold_direct(record, frame.payload(), self.0.setup.resume.buffer, number);
            }
        }
    }

    /// Delivers a message another node routed here for the socket of
    /// public id `public` (see [`Adapter::publish`](super::Adapter::publish)):
    /// this node's, or one resumed here from another node. Never sent on
    /// (it was routed here by the cluster's alias).
    #[cfg_attr(not(feature = "redis"), allow(dead_code))] // called by the Redis adapter
    pub(crate) fn deliver_to_public(&self, envelope: &str, public: SocketId) {
        if self.0.server.get().is_none() {
            return; // no socket has opened on this node yet
        }
        let direct = Direct::from_text(envelope);
        match self.mine(public) {
            Some(public) if !self.0.sessions.is_departed(public) => {
                self.send_direct(public, &direct);
            }
            Some(_) => {}
            None => {
                if let Some(conn) = self.0.sessions.arrived(public) {
                    self.send_now(conn, &direct);
                }
            }
        }
    }

    /// The connections of this node among `ids`.
    pub(crate) fn local_ids(&self, ids: &[SocketId]) -> Vec<ConnId> {
        ids.iter().filter_map(|id| self.here(*id)).collect()
    }

    /// Hands a message to the adapter, if any, with this node's ids made explicit.
    pub(crate) fn publish(&self, frame: &SharedFrame, to: Target<'_>) {
        let Some(adapter) = &self.0.setup.adapter else { return };
        let node = adapter.node();
        match to {
            Target::Broadcast(opts) if opts.except.iter().any(|id| id.node == 0) => {
                let mut opts = opts.clone();
                opts.except.iter_mut().filter(|id| id.node == 0).for_each(|id| id.node = node);
                adapter.publish(frame.payload(), Target::Broadcast(&opts));
            }
            Target::Socket(id) if id.node == 0 => {
                adapter.publish(frame.payload(), Target::Socket(SocketId { node, conn: id.conn }))
            }
            to => adapter.publish(frame.payload(), to),
        }
    }

    /// Hands a change in the cluster's health (an adapter reports it, from
    /// any thread, without waiting) to the app's hook ([`App::on_cluster`](super::App::on_cluster)):
    /// it runs on the app's first worker, after what was posted there
    /// before, as other nodes' messages reach sockets through the workers.
    /// Before the app listens, or without a hook, nothing runs.
    pub fn deliver_cluster_event(&self, event: ClusterEvent) {
        if let ClusterEvent::SocketResumedElsewhere { socket } = &event {
            self.socket_resumed_elsewhere(*socket);
        }
        if self.0.setup.cluster_events.is_none() {
            return;
        }
        let Some(server) = self.0.server.get() else { return };
        server.notify(0, Box::new(WorkerMsg::Cluster(Box::new(event))));
    }

    /// Runs the app's cluster hook (on a worker; see [`deliver_cluster_event`](Self::deliver_cluster_event)).
    /// A panic in it is logged, and the worker goes on.
    pub(crate) fn run_cluster_hook(&self, event: &ClusterEvent) {
        let Some(hook) = &self.0.setup.cluster_events else { return };
        if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| hook(self, event))).is_err() {
            tracing::error!(%event, "the cluster hook panicked");
        }
    }

    /// Delivers a message another node published (see [`Adapter`](super::Adapter)) to this
    /// node's sockets; one to a user is also kept for its devices away on this node.
    pub fn deliver_remote(&self, envelope: &str, to: Target<'_>) {
        if self.0.server.get().is_none() {
            return; // no socket has opened on this node yet
        }
        if let (Target::Broadcast(opts), Some((frame, v1))) = (&to, binary_v1::from_transport(envelope)) {
            let except = self.local_ids(&opts.except).into();
            let delivery = Delivery { frame, v1: Some(v1), groups: opts.to.clone().into(), except };
            return self.route_here(delivery, None);
        }
        match to {
            Target::Broadcast(opts) => {
                let frame = SharedFrame::text(envelope);
                self.route(frame, &opts.clone().local(), self.local_ids(&opts.except), None);
            }
            Target::Socket(id) => {
                if let Some(public) = self.mine(id) {
                    self.send_direct(public, &Direct::from_text(envelope));
                }
            }
            Target::User(user) => {
                let direct = Direct::from_text(envelope);
                self.to_user(user).send_here(&direct);
            }
        }
    }

    /// Delivers a broadcast to `room` that an adapter keeping history (see
    /// [`Adapter::keeps_history`](super::Adapter::keeps_history)) numbered
    /// for the cluster: `envelope` is the frame as delivered (with its
    /// room, `offset` and `epoch`; a binary broadcast's is its node-to-node
    /// text form, sent to sockets as PROTOCOL.md §13 says), `except` the sockets it leaves out, with
    /// their node ids. Under the lock of the room's stream, this node's
    /// stream takes it (the next offset of the same epoch is kept; another
    /// epoch starts the stream anew; after a gap the stream reaches back
    /// from this one only; an offset already had of the same epoch is a
    /// duplicate, ignored) and it goes to this node's members but `except`.
    /// An adapter calls it for every such broadcast, this node's own
    /// included, in the one order it numbered them.
    pub fn deliver_history(&self, room: &str, epoch: &str, offset: u64, envelope: &str, except: &[SocketId]) {
        let serving = self.0.server.get().is_some(); // no socket has opened on this node yet otherwise
        let frame = SharedFrame::text(envelope);
        // Kept as given, on whichever node: a recovery elsewhere leaves them out too.
        let kept: Arc<[SocketId]> = except.into();
        let except: Arc<[ConnId]> = self.local_ids(except).into();
        let opts = BroadcastOpts::to(room).local();
        // A binary broadcast, kept in its transport form, goes out in both its frames.
        let binary = binary_v1::from_transport(envelope);
        let route = |frame: &SharedFrame| match (serving, &binary) {
            (false, _) => {}
            (true, Some((frame, v1))) => {
                let groups = opts.to.clone().into();
                let delivery = Delivery { frame: frame.clone(), v1: Some(v1.clone()), groups, except: except.clone() };
                self.route_here(delivery, None);
            }
            (true, None) => self.route_shared(frame.clone(), &opts, except.clone(), None),
        };
        let Some(history) = self.history(room) else {
            return route(&frame); // no history for the room here: the nodes' setups differ
        };
        let now = Instant::now();
        self.with_stream(room, history, now, |stream| stream.take(epoch, offset, frame, now, kept, route));
    }

    /// Closes the sockets of this node that another node asked to close
    /// (see [`Adapter::close`](super::Adapter::close)): one socket, or a user's devices.
    /// A code that may not be sent (see [`CloseCode::is_valid_on_wire`])
    /// closes nothing.
    pub fn deliver_close(&self, to: Target<'_>, code: CloseCode, reason: &str) {
        if !code.is_valid_on_wire() || self.0.server.get().is_none() {
            return;
        }
        let sockets = match to {
            Target::Socket(id) => self.here(id).into_iter().collect(),
            Target::User(user) => self.to_user(user).conns(),
            Target::Broadcast(_) => Vec::new(),
        };
        for conn in sockets {
            self.server().close(conn, code, reason);
        }
    }

    /// Hands a close for sockets of other nodes to the adapter, if any; says
    /// whether there was one.
    pub(crate) fn close_elsewhere(&self, to: Target<'_>, code: CloseCode, reason: &str) -> bool {
        let Some(adapter) = &self.0.setup.adapter else { return false };
        adapter.close(to, code, reason);
        true
    }

    /// Keeps this node's socket list when there is no adapter to ask.
    pub(crate) fn presence(&self, change: Presence<'_>) {
        match (&self.0.setup.adapter, change) {
            (Some(adapter), change) => adapter.presence(change),
            (None, Presence::Connected { conn_id, .. }) => {
                lock(&self.0.connected).insert(conn_id);
            }
            (None, Presence::Disconnected { conn_id, .. }) => {
                lock(&self.0.connected).remove(&conn_id);
            }
            (None, _) => {}
        }
    }
}
