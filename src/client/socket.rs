//! The blocking client's transport: DNS, TCP connect under a deadline, and
//! TLS for `wss://`.

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::{Duration, Instant};

use super::{ClientBuilder, ClientError, Url};
#[cfg(feature = "tls")]
use crate::dial::default_connector;
use crate::dial::{connect_error, resolve};
#[cfg(feature = "tls")]
use crate::tls::{TlsError, TlsStream};

/// A connected socket, plain or TLS.
pub(crate) enum Stream {
    Plain(TcpStream),
    #[cfg(feature = "tls")]
    Tls(TcpStream, Box<TlsStream>),
}

impl std::fmt::Debug for Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self {
            Stream::Plain(_) => "Plain",
            #[cfg(feature = "tls")]
            Stream::Tls(..) => "Tls",
        };
        f.debug_tuple(kind).field(&self.socket().peer_addr().ok()).finish()
    }
}

/// The time left before `deadline`, or a timeout error once it has passed.
pub(crate) fn time_left(deadline: Instant) -> Result<Duration, ClientError> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(ClientError::Timeout);
    }
    Ok(left)
}

impl Stream {
    /// Connects to the first address that answers, then (for `wss://`) runs
    /// the TLS handshake, all before `deadline`.
    pub fn connect(url: &Url, settings: &ClientBuilder, deadline: Instant) -> Result<Stream, ClientError> {
        let mut last = None;
        let mut socket = None;
        for addr in resolve(url)? {
            match TcpStream::connect_timeout(&addr, time_left(deadline)?) {
                Ok(connected) => {
                    socket = Some(connected);
                    break;
                }
                Err(e) => last = Some(connect_error(addr, e)),
            }
        }
        let Some(socket) = socket else { return Err(last.expect("at least one address was tried")) };
        socket.set_nodelay(true)?;
        if !url.is_secure() {
            return Ok(Stream::Plain(socket));
        }
        Stream::tls(socket, url, settings, deadline)
    }

    #[cfg(feature = "tls")]
    fn tls(
        mut socket: TcpStream,
        url: &Url,
        settings: &ClientBuilder,
        deadline: Instant,
    ) -> Result<Stream, ClientError> {
        let connector = settings.tls.clone().unwrap_or_else(default_connector);
        let mut tls = connector.session(url.host()).map_err(ClientError::Tls)?;
        let left = time_left(deadline)?;
        socket.set_read_timeout(Some(left))?;
        socket.set_write_timeout(Some(left))?;
        tls.handshake(&mut socket).map_err(|e| match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => ClientError::Timeout,
            _ => ClientError::Tls(TlsError::Handshake(e)),
        })?;
        Ok(Stream::Tls(socket, Box::new(tls)))
    }

    #[cfg(not(feature = "tls"))]
    fn tls(_: TcpStream, _: &Url, _: &ClientBuilder, _: Instant) -> Result<Stream, ClientError> {
        Err(ClientError::TlsUnavailable)
    }

    pub fn socket(&self) -> &TcpStream {
        match self {
            Stream::Plain(socket) => socket,
            #[cfg(feature = "tls")]
            Stream::Tls(socket, _) => socket,
        }
    }

    /// Sets the read timeout (`None`: block) and the write timeout alike.
    pub fn set_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        self.socket().set_read_timeout(timeout)?;
        self.socket().set_write_timeout(timeout)
    }

    pub fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(socket) => socket.read(buf),
            #[cfg(feature = "tls")]
            Stream::Tls(socket, tls) => tls.read(socket, buf),
        }
    }

    pub fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        match self {
            Stream::Plain(socket) => socket.write_all(bytes),
            #[cfg(feature = "tls")]
            Stream::Tls(socket, tls) => {
                let mut rest = bytes;
                while !rest.is_empty() {
                    let n = tls.write(socket, rest)?;
                    rest = &rest[n..];
                }
                tls.flush(socket)
            }
        }
    }

    /// Ends our side: a TLS close_notify, then a TCP FIN.
    pub fn shutdown(&mut self) {
        #[cfg(feature = "tls")]
        if let Stream::Tls(socket, tls) = self {
            tls.close();
            let _ = tls.flush(socket);
        }
        let _ = self.socket().shutdown(Shutdown::Write);
    }
}
