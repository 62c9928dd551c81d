//! Clusters: the [`Adapter`] a transport implements (the Redis one of
//! [`crate::cluster`], say), cluster-unique socket ids, and the queries that
//! answer for every node ([`AppHandle::cluster`]).
//!
//! Without an adapter the app is a cluster of one: the same calls answer for
//! this server alone.

use std::fmt;
use std::str::FromStr;

use super::{lock, AppHandle, BroadcastOpts, Error, Request, Running};
use crate::proto::CloseCode;
use crate::runtime::{ConnId, SharedFrame};

/// A socket's id across a cluster: its node and its connection on that node.
///
/// Written `NODE-CONN` (both in hex, `0-…` when the app has no adapter),
/// which [`FromStr`] reads back, so an app can hand it to clients and take
/// it back from them. A bare [`ConnId`] converts to the id of that
/// connection on this node.
///
/// ```
/// use emitws::app::SocketId;
/// use emitws::runtime::ConnId;
/// let id = SocketId { node: 0x5eed, conn: ConnId(0x1a) };
/// assert_eq!(id.to_string(), "5eed-1a");
/// assert_eq!("5eed-1a".parse::<SocketId>(), Ok(id));
/// assert_eq!(SocketId::from(ConnId(7)).node, 0);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SocketId {
    /// The node's id ([`Adapter::node`]); 0 means this node.
    pub node: u64,
    /// The connection on that node.
    pub conn: ConnId,
}

impl From<ConnId> for SocketId {
    fn from(conn: ConnId) -> SocketId {
        SocketId { node: 0, conn }
    }
}

impl fmt::Display for SocketId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:x}-{}", self.node, self.conn)
    }
}

/// A socket id that does not read as `NODE-CONN` in hex.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BadSocketId;

impl fmt::Display for BadSocketId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a socket id is NODE-CONN, both in hex")
    }
}

impl std::error::Error for BadSocketId {}

impl FromStr for SocketId {
    type Err = BadSocketId;

    fn from_str(text: &str) -> Result<SocketId, BadSocketId> {
        let (node, conn) = text.split_once('-').ok_or(BadSocketId)?;
        let hex = |s: &str| u64::from_str_radix(s, 16).map_err(|_| BadSocketId);
        Ok(SocketId { node: hex(node)?, conn: ConnId(hex(conn)?) })
    }
}

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
        /// The socket.
        id: ConnId,
        /// Its user.
        user: Option<&'a str>,
    },
    /// A socket joined a room or took a tag.
    Joined {
        /// The socket.
        id: ConnId,
        /// The group.
        group: &'a str,
    },
    /// A socket left a room or dropped a tag.
    Left {
        /// The socket.
        id: ConnId,
        /// The group.
        group: &'a str,
    },
    /// A socket is gone, with the groups it was still in.
    Disconnected {
        /// The socket.
        id: ConnId,
        /// Its user.
        user: Option<&'a str>,
        /// The groups it was in.
        groups: &'a [Box<str>],
    },
}

/// Where a cluster transport plugs in ([`App::adapter`](super::App::adapter)):
/// it carries to the other nodes what this one sends beyond itself, follows
/// presence, answers cluster-wide queries, and hands what other nodes send to
/// [`AppHandle::deliver_remote`].
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
    fn close(&self, to: Target<'_>, code: u16, reason: &str) {
        let _ = (to, code, reason);
    }

    /// A socket's presence changed.
    fn presence(&self, change: Presence<'_>) {
        let _ = change;
    }

    /// The sockets in `scope` on every live node, sorted.
    fn sockets(&self, scope: Scope<'_>) -> Result<Vec<SocketId>, Error>;

    /// How many sockets `scope` has on every live node.
    fn count(&self, scope: Scope<'_>) -> Result<usize, Error>;

    /// Whether the socket is connected to a live node.
    fn socket_exists(&self, id: SocketId) -> Result<bool, Error>;

    /// The users with a socket on a live node, sorted.
    fn users(&self) -> Result<Vec<String>, Error>;
}

impl AppHandle {
    /// This node's id in the cluster (0 without an adapter).
    pub fn node(&self) -> u64 {
        self.0.setup.adapter.as_ref().map_or(0, |adapter| adapter.node())
    }

    /// Answers about every node of the cluster (this one alone without an
    /// adapter). Each call is a round trip to the cluster's store: from a
    /// handler, prefer [`Request::defer`] and another thread.
    pub fn cluster(&self) -> Cluster<'_> {
        Cluster { app: self }
    }

    /// The connection of `id`, if it is on this node.
    pub(crate) fn here(&self, id: SocketId) -> Option<ConnId> {
        (id.node == 0 || id.node == self.node()).then_some(id.conn)
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

    /// Delivers a message another node published (see [`Adapter`]) to this
    /// node's sockets.
    pub fn deliver_remote(&self, envelope: &str, to: Target<'_>) {
        if self.0.server.get().is_none() {
            return; // no socket has opened on this node yet
        }
        let frame = SharedFrame::text(envelope);
        match to {
            Target::Broadcast(opts) => {
                self.route(frame, &opts.clone().local(), self.local_ids(&opts.except), None);
            }
            Target::Socket(id) => {
                if let Some(conn) = self.here(id) {
                    self.server().send_frame(conn, &frame);
                }
            }
            Target::User(user) => self.server().broadcast(self.to_user(user).sockets(), &frame),
        }
    }

    /// Closes the sockets of this node that another node asked to close
    /// (see [`Adapter::close`]): one socket, or a user's devices.
    /// A code that may not be sent (see [`CloseCode::is_valid_on_wire`])
    /// closes nothing.
    pub fn deliver_close(&self, to: Target<'_>, code: u16, reason: &str) {
        if !CloseCode(code).is_valid_on_wire() || self.0.server.get().is_none() {
            return;
        }
        let sockets = match to {
            Target::Socket(id) => self.here(id).into_iter().collect(),
            Target::User(user) => self.to_user(user).sockets(),
            Target::Broadcast(_) => Vec::new(),
        };
        for conn in sockets {
            self.server().close(conn, CloseCode(code), reason);
        }
    }

    /// Hands a close for sockets of other nodes to the adapter, if any; says
    /// whether there was one.
    pub(crate) fn close_elsewhere(&self, to: Target<'_>, code: CloseCode, reason: &str) -> bool {
        let Some(adapter) = &self.0.setup.adapter else { return false };
        adapter.close(to, code.0, reason);
        true
    }

    /// Keeps this node's socket list when there is no adapter to ask.
    pub(crate) fn presence(&self, change: Presence<'_>) {
        match (&self.0.setup.adapter, change) {
            (Some(adapter), change) => adapter.presence(change),
            (None, Presence::Connected { id, .. }) => {
                lock(&self.0.connected).insert(id);
            }
            (None, Presence::Disconnected { id, .. }) => {
                lock(&self.0.connected).remove(&id);
            }
            (None, _) => {}
        }
    }
}

impl Request<'_> {
    /// This socket's cluster-wide id.
    pub fn socket_id(&self) -> SocketId {
        SocketId { node: self.app.node(), conn: self.id() }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(adapter) = &self.app.0.setup.adapter {
            adapter.detach();
        }
    }
}

/// Queries answered for the whole cluster (see [`AppHandle::cluster`]).
/// They fail ([`Error::Unavailable`]) when the cluster's store does not
/// answer within the adapter's timeout; without an adapter they answer for
/// this node and never fail.
///
/// ```no_run
/// # fn demo(app: &emitws::app::AppHandle) -> Result<(), emitws::app::Error> {
/// let cluster = app.cluster();
/// println!("{} in #lobby, {} users online", cluster.group_size("#lobby")?, cluster.user_count()?);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Copy)]
pub struct Cluster<'a> {
    app: &'a AppHandle,
}

impl Cluster<'_> {
    fn ids(&self, conns: impl IntoIterator<Item = ConnId>) -> Vec<SocketId> {
        let node = self.app.node();
        let mut ids: Vec<SocketId> = conns.into_iter().map(|conn| SocketId { node, conn }).collect();
        ids.sort();
        ids
    }

    /// The sockets in `scope`, sorted.
    pub fn sockets_in(&self, scope: Scope<'_>) -> Result<Vec<SocketId>, Error> {
        if let Some(adapter) = &self.app.0.setup.adapter {
            return adapter.sockets(scope);
        }
        let app = self.app;
        Ok(match scope {
            Scope::All => self.ids(lock(&app.0.connected).iter().copied()),
            Scope::Group(group) => self.ids(app.group_members(group)),
            Scope::User(user) => self.ids(app.to_user(user).sockets()),
        })
    }

    /// How many sockets `scope` has.
    pub fn count(&self, scope: Scope<'_>) -> Result<usize, Error> {
        if let Some(adapter) = &self.app.0.setup.adapter {
            return adapter.count(scope);
        }
        Ok(match scope {
            Scope::All => lock(&self.app.0.connected).len(),
            Scope::Group(group) => self.app.group_size(group),
            Scope::User(user) => self.app.to_user(user).sockets().len(),
        })
    }

    /// How many sockets are in a room or tag.
    pub fn group_size(&self, group: &str) -> Result<usize, Error> {
        self.count(Scope::Group(group))
    }

    /// The sockets in a room or tag, sorted.
    pub fn group_members(&self, group: &str) -> Result<Vec<SocketId>, Error> {
        self.sockets_in(Scope::Group(group))
    }

    /// How many sockets are connected (after authentication, if any).
    pub fn socket_count(&self) -> Result<usize, Error> {
        self.count(Scope::All)
    }

    /// Every connected socket, sorted.
    pub fn sockets(&self) -> Result<Vec<SocketId>, Error> {
        self.sockets_in(Scope::All)
    }

    /// Whether a socket is connected.
    pub fn socket_exists(&self, id: SocketId) -> Result<bool, Error> {
        match &self.app.0.setup.adapter {
            Some(adapter) => adapter.socket_exists(id),
            None => Ok(self.app.here(id).is_some_and(|conn| lock(&self.app.0.connected).contains(&conn))),
        }
    }

    /// Whether `user` has a socket connected.
    pub fn user_online(&self, user: &str) -> Result<bool, Error> {
        Ok(self.count(Scope::User(user))? > 0)
    }

    /// The sockets of `user`, sorted.
    pub fn user_sockets(&self, user: &str) -> Result<Vec<SocketId>, Error> {
        self.sockets_in(Scope::User(user))
    }

    /// The users with a socket connected, sorted.
    pub fn users(&self) -> Result<Vec<String>, Error> {
        match &self.app.0.setup.adapter {
            Some(adapter) => adapter.users(),
            None => Ok(self.app.users()),
        }
    }

    /// How many users have a socket connected.
    pub fn user_count(&self) -> Result<usize, Error> {
        Ok(self.users()?.len())
    }
}
