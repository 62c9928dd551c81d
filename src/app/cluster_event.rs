//! The cluster's health as the app sees it: [`ClusterEvent`], handed to the
//! hook of [`App::on_cluster`](super::App::on_cluster).

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use super::handle::AppHandle;
use super::SocketId;

/// A change in the cluster's health, for [`App::on_cluster`](super::App::on_cluster).
///
/// An adapter reports them from its own threads; the app runs the hook on
/// its first worker, in the order they came, as it runs handlers (the hook
/// must not block: a worker serves sockets). While the cluster's store is
/// lost (between [`StoreLost`](Self::StoreLost) and
/// [`StoreBack`](Self::StoreBack)): local delivery goes on; messages for
/// other nodes are dropped (`cluster_dropped_total`), and theirs do not
/// come; cluster queries fail with [`Error::Unavailable`](super::Error::Unavailable);
/// `/readyz` answers 503. See README.md, "When Redis or a node fails".
///
/// ```no_run
/// use emitws::app::{App, BroadcastOpts, ClusterEvent};
///
/// let mut app = App::new();
/// app.on_cluster(|app, event| match event {
///     ClusterEvent::StoreLost { link, error } => eprintln!("cluster cut off ({link}: {error})"),
///     ClusterEvent::StoreBack { after } => {
///         // Other nodes' broadcasts of the outage never came: tell the clients to refresh.
///         let _ = app.broadcast("/resync", &after.as_secs_f64(), BroadcastOpts::all().local());
///     }
///     ClusterEvent::NodeJoined { node } => eprintln!("node {node:016x} joined"),
///     ClusterEvent::NodeLeft { node } => eprintln!("node {node:016x} left"),
///     _ => {}
/// });
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ClusterEvent {
    /// The cluster's store (Redis) stopped answering: `link` is the
    /// connection that noticed first (`publisher` or `subscriber` for the
    /// Redis adapter), `error` what it got. Once per outage, however many
    /// of the node's connections notice it; an outage shorter than a third
    /// of the heartbeat period may go unnoticed by the publisher until
    /// after the subscriber is back, and then makes a second, short pair.
    StoreLost {
        /// The connection that noticed.
        link: &'static str,
        /// What it got, as text.
        error: String,
    },
    /// The store answers again on every connection that lost it, `after`
    /// the [`StoreLost`](Self::StoreLost); this node's presence is written again.
    StoreBack {
        /// How long the outage lasted, as this node saw it.
        after: Duration,
    },
    /// Another node's heartbeat appeared. The nodes already there when this
    /// node first reached the store are not announced (ask
    /// [`ClusterView`](super::ClusterView)).
    NodeJoined {
        /// Its id.
        node: u64,
    },
    /// Another node's heartbeat is gone: it stopped, died, or was cut off
    /// from the store (the store then forgets its sockets; its sessions can
    /// be resumed on other nodes). After this node's own outage, a node
    /// still missing one heartbeat period later is announced so.
    NodeLeft {
        /// Its id.
        node: u64,
    },
    /// A socket of this node was resumed on another node while this node
    /// was cut off from the store (its client, taking the node for gone,
    /// reconnected there with its token): learned when the store came
    /// back, as this node wrote its sessions again. The session is the
    /// other node's now; the socket here has been closed with 4409
    /// (PROTOCOL.md §13, "Across a cluster"), and messages for its id
    /// follow it there.
    SocketResumedElsewhere {
        /// Its public id.
        socket: SocketId,
    },
}

impl fmt::Display for ClusterEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClusterEvent::StoreLost { link, error } => write!(f, "cluster store lost ({link}: {error})"),
            ClusterEvent::StoreBack { after } => write!(f, "cluster store back after {:.3}s", after.as_secs_f64()),
            ClusterEvent::NodeJoined { node } => write!(f, "node {node:016x} joined"),
            ClusterEvent::NodeLeft { node } => write!(f, "node {node:016x} left"),
            ClusterEvent::SocketResumedElsewhere { socket } => write!(f, "socket {socket} resumed on another node"),
        }
    }
}

/// The app's hook for cluster events.
pub(crate) type ClusterEventFn = Arc<dyn Fn(&AppHandle, &ClusterEvent) + Send + Sync>;
