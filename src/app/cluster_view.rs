//! Queries answered for every node of a cluster ([`AppHandle::cluster`]):
//! through the adapter when there is one, from this node's tables otherwise.

use super::adapter::Scope;
use super::error::Error;
use super::handle::{rooms_of, AppHandle};
use super::locks::lock;
use super::socket_id::SocketId;
use crate::runtime::ConnId;

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
pub struct ClusterView<'a> {
    pub(super) app: &'a AppHandle,
}

impl ClusterView<'_> {
    /// The public ids of connections of this node, sorted.
    fn ids(&self, conns: impl IntoIterator<Item = ConnId>) -> Vec<SocketId> {
        let node = self.app.node();
        let mut ids: Vec<SocketId> =
            conns.into_iter().map(|conn| SocketId { node, conn: self.app.public(conn) }).collect();
        ids.sort();
        ids
    }

    /// The sockets in `scope`, sorted.
    ///
    /// # Errors
    ///
    /// [`Error::Unavailable`] when the cluster's store does not answer within
    /// the adapter's timeout (never without an adapter).
    pub fn sockets_in(&self, scope: Scope<'_>) -> Result<Vec<SocketId>, Error> {
        if let Some(adapter) = &self.app.0.setup.adapter {
            return adapter.sockets(scope);
        }
        let app = self.app;
        Ok(match scope {
            Scope::All => self.ids(lock(&app.0.connected).iter().copied()),
            Scope::Group(group) => self.ids(app.0.registry.members(group)),
            Scope::User(user) => self.ids(app.to_user(user).conns()),
        })
    }

    /// How many sockets `scope` has.
    ///
    /// # Errors
    ///
    /// [`Error::Unavailable`] when the cluster's store does not answer within
    /// the adapter's timeout (never without an adapter).
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
    ///
    /// # Errors
    ///
    /// [`Error::Unavailable`] when the cluster's store does not answer within
    /// the adapter's timeout (never without an adapter).
    pub fn group_size(&self, group: &str) -> Result<usize, Error> {
        self.count(Scope::Group(group))
    }

    /// The sockets in a room or tag, sorted.
    ///
    /// # Errors
    ///
    /// [`Error::Unavailable`] when the cluster's store does not answer within
    /// the adapter's timeout (never without an adapter).
    pub fn group_members(&self, group: &str) -> Result<Vec<SocketId>, Error> {
        self.sockets_in(Scope::Group(group))
    }

    /// How many sockets are connected (after authentication, if any).
    ///
    /// # Errors
    ///
    /// [`Error::Unavailable`] when the cluster's store does not answer within
    /// the adapter's timeout (never without an adapter).
    pub fn socket_count(&self) -> Result<usize, Error> {
        self.count(Scope::All)
    }

    /// Every connected socket, sorted.
    ///
    /// # Errors
    ///
    /// [`Error::Unavailable`] when the cluster's store does not answer within
    /// the adapter's timeout (never without an adapter).
    pub fn sockets(&self) -> Result<Vec<SocketId>, Error> {
        self.sockets_in(Scope::All)
    }

    /// Whether a socket is connected.
    ///
    /// # Errors
    ///
    /// [`Error::Unavailable`] when the cluster's store does not answer within
    /// the adapter's timeout (never without an adapter).
    pub fn socket_exists(&self, id: SocketId) -> Result<bool, Error> {
        match &self.app.0.setup.adapter {
            Some(adapter) => adapter.socket_exists(id),
            None => Ok(self.app.here(id).is_some_and(|conn| lock(&self.app.0.connected).contains(&conn))),
        }
    }

    /// Whether `user` has a socket connected.
    ///
    /// # Errors
    ///
    /// [`Error::Unavailable`] when the cluster's store does not answer within
    /// the adapter's timeout (never without an adapter).
    pub fn user_online(&self, user: &str) -> Result<bool, Error> {
        Ok(self.count(Scope::User(user))? > 0)
    }

    /// The sockets of `user`, sorted.
    ///
    /// # Errors
    ///
    /// [`Error::Unavailable`] when the cluster's store does not answer within
    /// the adapter's timeout (never without an adapter).
    pub fn user_sockets(&self, user: &str) -> Result<Vec<SocketId>, Error> {
        self.sockets_in(Scope::User(user))
    }

    /// The users with a socket connected, sorted.
    ///
    /// # Errors
    ///
    /// [`Error::Unavailable`] when the cluster's store does not answer within
    /// the adapter's timeout (never without an adapter).
    pub fn users(&self) -> Result<Vec<String>, Error> {
        match &self.app.0.setup.adapter {
            Some(adapter) => adapter.users(),
            None => Ok(self.app.users()),
        }
    }

    /// How many users have a socket connected.
    ///
    /// # Errors
    ///
    /// [`Error::Unavailable`] when the cluster's store does not answer within
    /// the adapter's timeout (never without an adapter).
    pub fn user_count(&self) -> Result<usize, Error> {
        Ok(self.users()?.len())
    }

    /// Every room and tag with members, with how many, sorted by name
    /// (through the adapter's [`group_sizes`](super::Adapter::group_sizes)).
    ///
    /// # Errors
    ///
    /// [`Error::Unavailable`] when the cluster's store does not answer within
    /// the adapter's timeout (never without an adapter).
    pub fn group_sizes(&self) -> Result<Vec<(String, usize)>, Error> {
        match &self.app.0.setup.adapter {
            Some(adapter) => adapter.group_sizes(self.app),
            None => Ok(self.app.group_sizes()),
        }
    }

    /// Every room with members, with its size (its members on every live
    /// node), sorted by name; tags are left out. A node that died leaves
    /// the answer with its heartbeat.
    ///
    /// ```no_run
    /// # fn demo(app: &emitws::app::AppHandle) -> Result<(), emitws::app::Error> {
    /// for (room, size) in app.cluster().rooms()? {
    ///     println!("{room}: {size}");
    /// }
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::Unavailable`] when the cluster's store does not answer within
    /// the adapter's timeout (never without an adapter).
    pub fn rooms(&self) -> Result<Vec<(String, usize)>, Error> {
        Ok(rooms_of(self.group_sizes()?))
    }
}
