//! The client's error type: one variant per way a connection can fail.

use std::fmt;
use std::io;
use std::net::SocketAddr;

use super::UrlError;
use crate::proto::handshake::client::ResponseError;
use crate::proto::{CloseCode, CloseReason, ProtocolError};
#[cfg(feature = "tls")]
use crate::tls::TlsError;

/// Why connecting failed, or why an open connection ended.
#[derive(Debug)]
#[non_exhaustive]
pub enum ClientError {
    /// The URL does not parse.
    Url(UrlError),
    /// The host name did not resolve (or resolved to no address).
    Dns {
        /// The host that was looked up.
        host: String,
        /// What the resolver said.
        source: io::Error,
    },
    /// Every address of the host refused the connection.
    Refused {
        /// The last address tried.
        addr: SocketAddr,
    },
    /// TCP connect failed for another reason (unreachable network, …).
    Connect {
        /// The last address tried.
        addr: SocketAddr,
        /// The error.
        source: io::Error,
    },
    /// The connection and handshake took longer than the handshake timeout.
    Timeout,
    /// The TLS handshake failed (certificate not trusted, wrong name, …) or
    /// could not start (a host that is no valid TLS server name).
    #[cfg(feature = "tls")]
    Tls(TlsError),
    /// `wss://` was asked for, but this build has no `tls` cargo feature.
    TlsUnavailable,
    /// [`ServerHandle::connect`](crate::runtime::ServerHandle::connect) got
    /// connection data of another type than the handler's `Data`.
    WrongDataType,
    /// The server that was to dial is shutting down or has stopped.
    ServerStopped,
    /// The server answered with a status other than 101.
    Status {
        /// The HTTP status.
        status: u16,
        /// The start of the response body (at most 64 KiB).
        body: Vec<u8>,
    },
    /// The server's 101 answer breaks RFC 6455 §4.1 or does not fit our offer.
    Handshake(ResponseError),
    /// The server broke the protocol; we failed the connection with the
    /// error's close code.
    Protocol(ProtocolError),
    /// The connection is closed, and why: the server's close frame, a
    /// protocol error of the server's we failed it for, a close-handshake
    /// timeout, TCP ending without a close frame, or the socket error
    /// (kept). [`CloseReason::code`] gives the close code that applies.
    Closed(CloseReason),
    /// We sent a close frame and the connection has not ended yet: nothing
    /// more can be sent.
    Closing,
    /// A socket error.
    Io(io::Error),
}

impl ClientError {
    /// The close code that ended the connection, for [`Closed`](Self::Closed)
    /// and [`Protocol`](Self::Protocol).
    pub fn close_code(&self) -> Option<CloseCode> {
        match self {
            ClientError::Closed(reason) => Some(reason.code()),
            ClientError::Protocol(e) => Some(e.close_code()),
            _ => None,
        }
    }
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientError::Url(e) => write!(f, "bad URL: {e}"),
            ClientError::Dns { host, source } => write!(f, "cannot resolve {host:?}: {source}"),
            ClientError::Refused { addr } => write!(f, "connection refused by {addr}"),
            ClientError::Connect { addr, source } => write!(f, "cannot connect to {addr}: {source}"),
            ClientError::Timeout => f.write_str("the WebSocket handshake timed out"),
            #[cfg(feature = "tls")]
            ClientError::Tls(e) => write!(f, "TLS failed: {e}"),
            ClientError::TlsUnavailable => f.write_str("wss:// needs the `tls` cargo feature"),
            ClientError::WrongDataType => f.write_str("the connection data is not the handler's Data type"),
            ClientError::ServerStopped => f.write_str("the server is shutting down or has stopped"),
            ClientError::Status { status, body } => {
                write!(f, "the server refused the upgrade with {status}: {}", String::from_utf8_lossy(body))
            }
            ClientError::Handshake(e) => write!(f, "bad handshake response: {e}"),
            ClientError::Protocol(e) => write!(f, "the server broke the protocol: {e}"),
            ClientError::Closed(reason) => {
                write!(f, "the connection is closed ({} {})", reason.code(), reason.reason())
            }
            ClientError::Closing => f.write_str("the connection is closing"),
            ClientError::Io(e) => write!(f, "socket error: {e}"),
        }
    }
}

impl std::error::Error for ClientError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ClientError::Url(e) => Some(e),
            ClientError::Dns { source, .. } | ClientError::Connect { source, .. } | ClientError::Io(source) => {
                Some(source)
            }
            ClientError::Handshake(e) => Some(e),
            ClientError::Protocol(e) => Some(e),
            ClientError::Closed(reason) => Some(reason),
            #[cfg(feature = "tls")]
            ClientError::Tls(e) => Some(e),
            _ => None,
        }
    }
}

impl From<&CloseReason> for ClientError {
    /// [`Closed`](Self::Closed) with a copy of the reason.
    fn from(reason: &CloseReason) -> Self {
        ClientError::Closed(reason.clone())
    }
}

impl From<UrlError> for ClientError {
    fn from(e: UrlError) -> Self {
        ClientError::Url(e)
    }
}

impl From<ProtocolError> for ClientError {
    fn from(e: ProtocolError) -> Self {
        ClientError::Protocol(e)
    }
}

impl From<io::Error> for ClientError {
    fn from(e: io::Error) -> Self {
        match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => ClientError::Timeout,
            _ => ClientError::Io(e),
        }
    }
}
