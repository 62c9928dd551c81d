//! What connection middleware leaves for a socket's disconnect ([`After`]),
//! and what it is told then ([`Gone`]).

use std::fmt;

use crate::proto::CloseCode;
use crate::runtime::ConnId;

/// A socket that has gone, as connection middleware sees it at disconnect.
#[derive(Debug)]
pub struct Gone<'a> {
    /// The socket's connection on this node (as
    /// [`Request::conn_id`](super::Request::conn_id)).
    pub conn_id: ConnId,
    /// Its user, if identified.
    pub user: Option<&'a str>,
    /// The close code (1006 when the connection just dropped).
    pub code: CloseCode,
    /// The close reason.
    pub reason: &'a str,
}

/// What a connection middleware leaves for the socket's disconnect: the
/// "code after `next()`" of egg-socket.io, as a closure.
///
/// ```
/// use emitws::app::{After, App};
/// let mut app = App::new();
/// app.on_connect(|conn| {
///     let since = std::time::Instant::now();
///     println!("{} connected", conn.path());
///     Ok(After::disconnect(move |gone| println!("{} left after {:?}", gone.conn_id, since.elapsed())))
/// });
/// ```
#[must_use]
pub struct After(pub(crate) Option<AtDisconnect>);

/// Code a connection middleware left for the disconnect.
pub(crate) type AtDisconnect = Box<dyn FnOnce(&Gone<'_>)>;

impl After {
    /// Nothing to do at disconnect.
    pub fn nothing() -> After {
        After(None)
    }

    /// Runs `f` when the socket disconnects (in reverse order of the middleware).
    pub fn disconnect(f: impl FnOnce(&Gone<'_>) + 'static) -> After {
        After(Some(Box::new(f)))
    }
}

impl fmt::Debug for After {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_some() { "After(disconnect)" } else { "After(nothing)" })
    }
}
