//! Connections another server accepted, handed over with the bytes it
//! already read from them: one port shared with an HTTP framework (see
//! `emitws::axum`, feature `axum`), or a front that looks at the request line
//! before it decides who serves the connection.

use std::fmt;
use std::io;
use std::sync::atomic::Ordering;
use std::sync::mpsc::SendError;

use super::handle::{Command, ServerHandle};

/// Why [`ServerHandle::adopt`] did not take a connection.
#[derive(Debug)]
#[non_exhaustive]
pub enum AdoptError {
    /// The server is draining or shutting down: the socket comes back,
    /// untouched, so that its owner can answer it (503, say).
    Stopping(std::net::TcpStream),
    /// The socket could not be made non-blocking (it is dropped: closed).
    Io(io::Error),
}

impl fmt::Display for AdoptError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AdoptError::Stopping(_) => f.write_str("the server is draining or shutting down: it takes no connection"),
            AdoptError::Io(e) => write!(f, "the socket could not be made non-blocking: {e}"),
        }
    }
}

impl std::error::Error for AdoptError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            AdoptError::Io(e) => Some(e),
            AdoptError::Stopping(_) => None,
        }
    }
}

impl ServerHandle {
    /// Takes over a connection that another server accepted, with `received`,
    /// the bytes that server already read from it: the start of an upgrade
    /// request (or all of it) and whatever followed it, frames included.
    /// Those bytes are handed to the worker as if it had read them from the
    /// socket, then the socket is read as usual; so the connection goes
    /// exactly the way of one accepted on the server's own port: the same
    /// request limits, origin check, [`Handler::on_upgrade`](super::Handler::on_upgrade)
    /// (and with it the event layer's paths, connection middleware and
    /// identify hook), `on_http` for a plain request, connection caps,
    /// handshake timeout and metrics. The worker writes the answer itself
    /// (the 101, or the refusal's status), on the socket, which it owns from
    /// then on: nothing is copied through the other server.
    ///
    /// The connection is plain TCP even if the server serves `wss://`: the
    /// bytes were read by a server that did not decrypt them with this
    /// server's identity (terminate TLS in front of both instead). Workers
    /// take adopted connections in turn. Works on any started server, one
    /// that listens on its own port too, or one started with
    /// [`Server::start_dialer`](super::Server::start_dialer) that has none.
    ///
    /// # Errors
    ///
    /// [`AdoptError::Stopping`] once the server drains or shuts down (the
    /// socket comes back), [`AdoptError::Io`] if the socket cannot be made
    /// non-blocking.
    ///
    /// ```no_run
    /// # #[derive(Clone)] struct Echo;
    /// # impl emitws::runtime::Handler for Echo {
    /// #     type Data = ();
    /// #     fn on_message(&mut self, _: &mut emitws::runtime::Conn<'_, ()>, _: emitws::proto::Message<'_>) {}
    /// # }
    /// use std::io::Read;
    /// let server = emitws::runtime::Server::new().start_dialer(Echo)?;
    /// let listener = std::net::TcpListener::bind("127.0.0.1:9002")?;
    /// for stream in listener.incoming() {
    ///     let mut stream = stream?;
    ///     let mut start = [0; 1024];
    ///     let read = stream.read(&mut start)?;
    ///     if start[..read].starts_with(b"GET /ws") {
    ///         // The worker parses the request from these bytes and answers it.
    ///         server.handle().adopt(stream, &start[..read])?;
    ///     } // else: serve it some other way
    /// }
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn adopt(&self, stream: std::net::TcpStream, received: &[u8]) -> Result<(), AdoptError> {
        if self.shared.stopping.load(Ordering::Acquire) {
            return Err(AdoptError::Stopping(stream));
        }
        stream.set_nonblocking(true).map_err(AdoptError::Io)?;
        let worker = self.shared.next_dialer.fetch_add(1, Ordering::Relaxed) % self.inboxes.len().max(1);
        let Some(inbox) = self.inboxes.get(worker) else { return Err(AdoptError::Stopping(stream)) };
        let command = Command::AdoptReceived(mio::net::TcpStream::from_std(stream), received.into());
        // The worker has exited (the server stopped since the check above).
        if let Err(SendError(Command::AdoptReceived(stream, _))) = inbox.sender.send(command) {
            return Err(AdoptError::Stopping(stream.into()));
        }
        let _ = inbox.waker.wake();
        Ok(())
    }
}
