//! Clusters: the [`Adapter`] a transport implements (the Redis one of
//! [`crate::cluster`], say), cluster-unique socket ids, and what an adapter
//! carries and is asked (targets, scopes, presence changes).

use std::fmt;
use std::str::FromStr;

use super::error::Error;
use super::groups::BroadcastOpts;
use super::handle::AppHandle;
use crate::proto::CloseCode;
use crate::runtime::ConnId;

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
    fn close(&self, to: Target<'_>, code: CloseCode, reason: &str) {
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
