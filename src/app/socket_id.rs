//! Socket ids that are unique across a cluster, as text and back.

use std::fmt;
use std::str::FromStr;

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
    /// The node's id ([`Adapter::node`](super::Adapter::node)); 0 means this node.
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
