//! Clusters: the [`Adapter`] a transport implements (the Redis one of
//! [`crate::cluster`], say), and what an adapter carries and is asked
//! (targets, scopes, presence changes).

use std::time::{Duration, Instant};

use super::error::Error;
use super::groups::BroadcastOpts;
use super::handle::AppHandle;
use super::history::History;
use super::rpc::{CallResult, GroupOutcome};
use super::socket_id::SocketId;
use super::DevicePolicy;
use crate::proto::CloseCode;
use crate::runtime::ConnId;

/// Who a message another node should deliver is for.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub enum Target<'a> {
    /// A broadcast (never [`local`](BroadcastOpts::local)); its excepted
    /// sockets carry their node ids.
    Broadcast(&'a BroadcastOpts),
    /// One socket.
    Socket(SocketId),
    /// Every device of a user.
    User(&'a str),
}

/// Which sockets a query counts or lists.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub enum Scope<'a> {
    /// Every socket.
    All,
    /// The members of a room or tag.
    Group(&'a str),
    /// A user's devices.
    User(&'a str),
}

/// A change of presence, for a cluster [`Adapter`].
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub enum Presence<'a> {
    /// A socket is in (after authentication, if any).
    Connected {
        /// The socket's connection on this node.
        conn_id: ConnId,
        /// Its user.
        user: Option<&'a str>,
        /// Its public id: its connection's, or, for a resumed socket, the
        /// one it first had (on this node or another).
        public: SocketId,
        /// The key of its session record, derived from its resume token
        /// (hex SHA-1: whoever holds the token finds the record, nobody
        /// can list them), and how long the session is kept after a loss;
        /// `None` when the app keeps no sessions.
        record: Option<(&'a str, Duration)>,
    },
    /// A socket joined a room or took a tag.
    Joined {
        /// The socket's connection on this node.
        conn_id: ConnId,
        /// The group.
        group: &'a str,
        /// For a room with history: its stream's epoch and offset when the
        /// socket joined it (or last recovered it), where a resume replays from.
        position: Option<(&'a str, u64)>,
    },
    /// A socket's value shared across the cluster was set (its JSON text)
    /// or removed (`None`): see [`Request::set_shared`](super::Request::set_shared).
    Stored {
        /// The socket's connection on this node.
        conn_id: ConnId,
        /// The value's key.
        key: &'a str,
        /// The value as JSON text; `None`: removed.
        value: Option<&'a str>,
    },
    /// A socket left a room or dropped a tag.
    Left {
        /// The socket's connection on this node.
        conn_id: ConnId,
        /// The group.
        group: &'a str,
    },
    /// A connected socket's user was attached, changed or detached
    /// ([`Request::set_user`](super::Request::set_user)): its user now, and before.
    User {
        /// The socket's connection on this node.
        conn_id: ConnId,
        /// Its user now.
        user: Option<&'a str>,
        /// Its user before.
        previous: Option<&'a str>,
    },
    /// A socket is gone, with the groups it was still in.
    Disconnected {
        /// The socket's connection on this node.
        conn_id: ConnId,
        /// Its user.
        user: Option<&'a str>,
        /// The groups it was in.
        groups: &'a [Box<str>],
        /// How long its session is kept for a resume; `None`: it ends.
        kept: Option<Duration>,
    },
}

/// A resume's claim of a session in the cluster's store
/// ([`Adapter::claim_session`]).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct SessionClaim {
    /// The session record's key (see [`Presence::Connected`]).
    pub record: String,
    /// The user the claiming connection authenticated as.
    pub user: Option<String>,
    /// The claiming connection, on this node.
    pub conn: ConnId,
    /// Its authentication deadline: a session still live on its node is
    /// taken over until then, no later.
    pub until: Instant,
}

/// A session taken from the cluster's store.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ClaimedSession {
    /// The node and connection it was lost with (or taken from).
    pub lost: SocketId,
    /// Its public id.
    pub public: SocketId,
    /// Its user.
    pub user: Option<String>,
    /// Its rooms and tags, with each room's position when it has history.
    pub groups: Vec<(String, Option<(String, u64)>)>,
    /// Its values shared across the cluster
    /// ([`Request::set_shared`](super::Request::set_shared)): key and JSON text.
    pub values: Vec<(String, String)>,
    /// The direct messages kept for it while it was away
    /// ([`Adapter::hold_direct`]), oldest first.
    pub direct: Vec<String>,
    /// Whether none of those had to be dropped for room.
    pub direct_complete: bool,
    /// The number ([`Adapter::hold_direct`]'s `number`) of the last direct
    /// message kept for it before the claim; 0 if none was. The node it
    /// was lost on passes on those it numbered after, once told
    /// ([`Adapter::session_resumed`]).
    pub held: u64,
}

/// What a session claim found.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ClaimOutcome {
    /// The session, now this claimer's alone.
    Claimed(ClaimedSession),
    /// No session: unknown, spent, expired, still live past the claimer's
    /// deadline, or the store could not be reached.
    NoSession,
    /// A session of another user (it stays for its own).
    OtherUser,
}

/// How a [`ClaimOutcome`] gets back to the claimer (from another thread).
pub type ClaimDone = Box<dyn FnOnce(ClaimOutcome) + Send>;

/// A user's device came or went, for the count the cluster keeps of each
/// user's devices ([`Adapter::count_device`]).
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub enum DeviceChange<'a> {
    /// A socket of this node is now a device of `user` (it came in with
    /// the user, or was given it by [`Request::set_user`](super::Request::set_user)).
    Added {
        /// The user.
        user: &'a str,
        /// The socket's connection on this node.
        conn_id: ConnId,
        /// The app's cap ([`App::max_devices`](super::App::max_devices)), if any.
        cap: Option<(usize, DevicePolicy)>,
    },
    /// A socket of this node is no longer a device of `user` (it is gone,
    /// or its user was cleared or changed).
    Removed {
        /// The user.
        user: &'a str,
        /// The socket's connection on this node.
        conn_id: ConnId,
    },
    /// The presence grace ([`App::presence_grace`](super::App::presence_grace))
    /// that the [`Removed`](Self::Removed) of `user`'s last device
    /// `conn_id` started is over: [`DeviceCount::last`] says whether the
    /// user went offline (no device came back anywhere meanwhile), once in
    /// the cluster. An adapter that keeps no grace answers as for a
    /// removal that changed nothing.
    GraceOver {
        /// The user.
        user: &'a str,
        /// The connection on this node of the device whose removal started the grace.
        conn_id: ConnId,
    },
}

/// What the cluster answered to a [`DeviceChange`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct DeviceCount {
    /// The user had no device anywhere before this one came.
    pub first: bool,
    /// The user has no device anywhere now that this one went.
    pub last: bool,
    /// The cap refused the new device ([`DevicePolicy::RejectNew`]): it was not counted.
    pub refused: bool,
    /// Devices the cap drops ([`DevicePolicy::DropOldest`]), oldest first,
    /// by node and connection: no longer counted, to be closed.
    pub dropped: Vec<SocketId>,
}

/// How a [`DeviceCount`] gets back to the app (from another thread); an
/// error when the cluster's store could not be reached.
pub type DeviceDone = Box<dyn FnOnce(Result<DeviceCount, Error>) + Send>;
/// What a request to one socket asks of the socket's node
/// ([`Adapter::ask`], [`AppHandle::deliver_ask`]).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum SocketAsk {
    /// Join a room or take a tag, as the socket's own
    /// [`Request::join`](super::Request::join) would.
    Join(String),
    /// Leave a room or drop a tag, as [`Request::leave`](super::Request::leave) would.
    Leave(String),
    /// Call a procedure the socket's client registered, as
    /// [`SocketRef::call`](super::SocketRef::call) does on the socket's node.
    Call {
        /// The procedure's name.
        name: String,
        /// Its argument, as JSON.
        data: Box<serde_json::value::RawValue>,
        /// How long the socket's node waits for the client's answer.
        timeout: std::time::Duration,
    },
    /// Attach the socket to a user (`Some`), as the socket's own
    /// [`Request::set_user`](super::Request::set_user) would, or detach
    /// it (`None`), as [`Request::clear_user`](super::Request::clear_user)
    /// would; answered with a [`GroupOutcome`] once the device cap has had
    /// its say (see [`SocketRef::set_user`](super::SocketRef::set_user)).
    SetUser(Option<String>),
    /// Tell where the socket is, as [`SocketRef::ready_state`](super::SocketRef::ready_state) does.
    ReadyState,
}

impl SocketAsk {
    /// The answer when the socket is not there: [`GroupOutcome::NotThere`],
    /// a call's [`CallError::Disconnected`](super::CallError::Disconnected),
    /// or [`ReadyState::Closed`](super::ReadyState::Closed).
    pub(crate) fn absent(&self) -> SocketAnswer {
        match self {
            SocketAsk::Call { .. } => SocketAnswer::Call(Err(super::CallError::Disconnected)),
            SocketAsk::ReadyState => SocketAnswer::ReadyState(super::ReadyState::Closed),
            _ => SocketAnswer::Group(GroupOutcome::NotThere),
        }
    }
}

/// What the socket's node answered a [`SocketAsk`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SocketAnswer {
    /// The outcome of a join, a leave or a user change.
    Group(GroupOutcome),
    /// The outcome of a call.
    Call(CallResult),
    /// Where the socket is.
    ReadyState(super::ReadyState),
}

/// How a [`SocketAnswer`] gets back to the asker: `None` when none came
/// within the adapter's timeout (the socket's node may have died).
pub type AskDone = Box<dyn FnOnce(Option<SocketAnswer>) + Send>;

/// What a store holds of some rooms' history streams
/// ([`Adapter::read_history`]): per room, its epoch, its latest offset and
/// its kept broadcasts after the offset asked, oldest first, each as (offset,
/// frame as delivered, sockets it left out, age). A room the store has no
/// stream of is not listed.
pub type StoredHistory = Vec<(Box<str>, Box<str>, u64, Vec<(u64, Box<str>, Vec<SocketId>, Duration)>)>;

/// Where a cluster transport plugs in ([`App::adapter`](super::App::adapter)):
/// it carries to the other nodes what this one sends beyond itself, follows
/// presence, answers cluster-wide queries, and hands what other nodes send to
/// [`AppHandle::deliver_remote`], and the changes of the cluster's health
/// (its store lost and back, nodes joining and leaving) to
/// [`AppHandle::deliver_cluster_event`].
///
/// Publishing and presence run on the workers and must not block; queries
/// block their caller for at most the adapter's timeout.
pub trait Adapter: Send + Sync + 'static {
    /// This node's id: unique in the cluster, never 0.
    fn node(&self) -> u64;

    /// The app is starting (its port does not accept yet): deliver other
    /// nodes' messages to it from now on.
    fn attach(&self, app: AppHandle) {
        let _ = app;
    }

    /// The app has stopped: leave the cluster and let go of the app.
    fn detach(&self) {}

    /// Carries a message (the envelope's JSON text) to the other nodes.
    fn publish(&self, envelope: &[u8], to: Target<'_>);

    /// Asks the other nodes to close sockets of theirs with `code` and
    /// `reason`: one socket ([`Target::Socket`]) or a user's devices
    /// ([`Target::User`]); they do it through [`AppHandle::deliver_close`].
    /// An adapter that cannot carries nothing (the default), and drops then
    /// reach this node's sockets only.
    fn close(&self, to: Target<'_>, code: CloseCode, reason: &str) {
        let _ = (to, code, reason);
    }

    /// A socket's presence changed.
    fn presence(&self, change: Presence<'_>) {
        let _ = change;
    }

    /// Claims a session in the cluster's store, without blocking the
    /// caller: `done` gets the outcome later, from another thread. At most
    /// one claim of a record succeeds, on any node. A session still live
    /// on its node is taken over (closed there with 4409, its session
    /// kept) and claimed then, until the claim's deadline.
    ///
    /// # Errors
    ///
    /// `done` back when the adapter keeps no sessions (the default): the
    /// app's own, on this node, serve.
    fn claim_session(&self, claim: SessionClaim, done: ClaimDone) -> Result<(), ClaimDone> {
        let _ = claim;
        Err(done)
    }

    /// Counts a user's device in or out across the cluster, without blocking
    /// the caller: `done` gets the answer later, from another thread. The
    /// changes of one node are counted in the order they were made; an
    /// adding answers whether the device is the user's first anywhere and
    /// what the cap implies, a removal whether it was the last.
    ///
    /// # Errors
    ///
    /// `done` back when the adapter keeps no count (the default): this
    /// node's own devices are all the app counts.
    fn count_device(&self, change: DeviceChange<'_>, done: DeviceDone) -> Result<(), DeviceDone> {
        let _ = change;
        Err(done)
    }

    /// Keeps a direct message (an envelope's JSON text) in the cluster's
    /// store for the away socket of session record `record`, the latest
    /// `cap` of them, for whichever node claims it; `number` is its number
    /// among the socket's (1, 2, …), of which the store keeps the last
    /// ([`ClaimedSession::held`]). The default keeps nothing (the app
    /// keeps them on this node).
    fn hold_direct(&self, record: &str, envelope: &[u8], cap: usize, number: u64) {
        let _ = (record, envelope, cap, number);
    }

    /// The session lost with `lost` (a connection of another node), claimed
    /// by this node, now answers here under its public id `public`, with
    /// the direct messages numbered up to `held` replayed: tell `lost`'s
    /// node, which forgets it and sends on what it kept for it after those.
    /// Told only now, when the
    /// socket answers here, so that what is sent on reaches it. The
    /// default tells nobody (without a cluster there is no other node).
    fn session_resumed(&self, lost: SocketId, public: SocketId, held: u64) {
        let _ = (lost, public, held);
    }

    /// The sockets in `scope` on every live node, sorted.
    fn sockets(&self, scope: Scope<'_>) -> Result<Vec<SocketId>, Error>;

    /// How many sockets `scope` has on every live node.
    fn count(&self, scope: Scope<'_>) -> Result<usize, Error>;

    /// Whether the socket is connected to a live node.
    fn socket_exists(&self, id: SocketId) -> Result<bool, Error>;

    /// The users with a socket on a live node, sorted.
    fn users(&self) -> Result<Vec<String>, Error>;

    /// Every room and tag with members on a live node, with how many, sorted
    /// by name. The default answers for this node only, from `app`'s tables
    /// (for an adapter that keeps no index of the cluster's groups).
    ///
    /// # Errors
    ///
    /// [`Error::Unavailable`] when the cluster's store does not answer in time.
    fn group_sizes(&self, app: &AppHandle) -> Result<Vec<(String, usize)>, Error> {
        Ok(app.group_sizes())
    }

    /// Asks the node of socket `to` (wherever it answers now: a resumed
    /// socket's public id is routed to its node) to do `ask` on it, without
    /// blocking the caller: that node does it through
    /// [`AppHandle::deliver_ask`], and `done` gets the answer, from another
    /// thread, or `None` when none came within the adapter's own timeout
    /// (a call's timeout, plus that, for a call), enforced on this node.
    ///
    /// # Errors
    ///
    /// `done` back when the adapter cannot carry requests to other nodes
    /// (the default): the asker then answers that the socket is not there.
    fn ask(&self, to: SocketId, ask: SocketAsk, done: AskDone) -> Result<(), AskDone> {
        let _ = (to, ask);
        Err(done)
    }

    /// Whether the transport reaches the other nodes now, for a readiness
    /// check ([`AppHandle::readiness`]). The default: always.
    ///
    /// # Errors
    ///
    /// A short reason why it does not (its store is unreachable, say).
    fn healthy(&self) -> Result<(), String> {
        Ok(())
    }

    /// Whether the adapter numbers and keeps the broadcasts to rooms with
    /// [history](super::App::history), for the whole cluster. Then a
    /// broadcast to such a room goes to [`publish_history`](Self::publish_history)
    /// only, and every node, this one included, gets it back through
    /// [`AppHandle::deliver_history`], in the one order the adapter gave.
    /// The default: no, each node numbers its own rooms' broadcasts.
    fn keeps_history(&self) -> bool {
        false
    }

    /// Numbers a broadcast to `room` (the envelope `[0,event,data]`, or a
    /// binary broadcast's node-to-node text `[64,event,{"base64":…}]`: the
    /// position is added to either as a fourth element), keeps
    /// it per `history`, and has every node deliver it with its offset
    /// ([`AppHandle::deliver_history`]); `epoch` names the room's stream if
    /// the adapter has none for it. `except`: the sockets it leaves out, with
    /// their node ids. Called only when [`keeps_history`](Self::keeps_history);
    /// an adapter that cannot number it (its store is down) drops it.
    fn publish_history(&self, room: &str, history: &History, epoch: &str, envelope: &[u8], except: &[SocketId]) {
        let _ = (room, history, epoch, envelope, except);
    }

    /// Reads what the adapter keeps of rooms' histories, each after an
    /// offset (`reads`: room, offset), and calls `done` with it, from any
    /// thread, without blocking the caller: with nothing for the rooms it
    /// could not read (its store is down). The default: nothing kept.
    fn read_history(&self, reads: Vec<(Box<str>, u64)>, done: Box<dyn FnOnce(StoredHistory) + Send>) {
        let _ = reads;
        done(Vec::new());
    }

    /// Whether the adapter keeps the app's [generated ids](super::App::generate_id)
    /// for the whole cluster: then this node's sockets' ids are claimed
    /// ([`claim_generated_id`](Self::claim_generated_id)) and let go
    /// ([`release_generated_id`](Self::release_generated_id)) through it,
    /// and [`AppHandle::lookup_generated_id`] asks it
    /// ([`generated_id`](Self::generated_id)) for an id this node does not
    /// have. The default: no, ids are each node's own.
    fn keeps_generated_ids(&self) -> bool {
        false
    }

    /// Socket `socket` (its public id) of this node was given the
    /// generated id `id`, its claim numbered `token` on this node; without
    /// blocking the caller. The newest claim of an id, on any node, takes
    /// it: the node whose socket had it is told through
    /// [`AppHandle::deliver_generated_id_taken`] with that socket's token.
    /// Called only when [`keeps_generated_ids`](Self::keeps_generated_ids).
    fn claim_generated_id(&self, id: &str, token: u64, socket: SocketId) {
        let _ = (id, token, socket);
    }

    /// The socket of this node whose claim of `id` was numbered `token`
    /// is gone: the id is free, unless a newer claim took it meanwhile.
    /// Without blocking the caller; called only when
    /// [`keeps_generated_ids`](Self::keeps_generated_ids).
    fn release_generated_id(&self, id: &str, token: u64) {
        let _ = (id, token);
    }

    /// The socket (its public id) that generated id `id` names on a live
    /// node of the cluster, if any; blocks for at most the adapter's
    /// timeout. The default: none.
    ///
    /// # Errors
    ///
    /// [`Error::Unavailable`] when the cluster's store does not answer in time.
    fn generated_id(&self, id: &str) -> Result<Option<SocketId>, Error> {
        let _ = id;
        Ok(None)
    }
}
