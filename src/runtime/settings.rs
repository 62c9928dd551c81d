//! Server settings, each with a default and a builder method on [`Server`](super::Server).

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::proto::connection::Config;
pub use crate::proto::connection::Keepalive;
use crate::proto::deflate::DeflateConfig;
use crate::proto::handshake::server::RequestLimits;
use crate::proto::Limits;

/// How accepted sockets reach the workers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AcceptMode {
    /// Every worker listens on its own `SO_REUSEPORT` socket and the kernel
    /// spreads connections across them (the default: no hand-off, no shared queue).
    ReusePort,
    /// One acceptor thread accepts and hands sockets to workers in turn.
    Acceptor,
}

/// What happens when a send would take a connection past its outbound budget.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackpressurePolicy {
    /// The send is refused ([`SendStatus::Refused`](super::SendStatus::Refused)); the connection stays.
    Refuse,
    /// The send is refused and the connection is closed with 1008 (policy violation).
    Close,
}

/// A function deciding on an upgrade's `Origin` header (`None` when absent).
pub type OriginCheck = Arc<dyn Fn(Option<&str>) -> bool + Send + Sync>;

/// Which `Origin` headers an upgrade may carry.
#[derive(Clone, Default)]
pub enum OriginPolicy {
    /// Any origin, or none (the default).
    #[default]
    Any,
    /// Only these origins (exact, ASCII case-insensitive match); requests
    /// without an Origin header (non-browser clients) are allowed.
    List(Vec<String>),
    /// A function of the Origin header (`None` when absent).
    Check(OriginCheck),
}

impl OriginPolicy {
    /// Whether an upgrade with this `Origin` header may proceed.
    pub fn allows(&self, origin: Option<&str>) -> bool {
        match (self, origin) {
            (OriginPolicy::Any, _) => true,
            (OriginPolicy::List(_), None) => true,
            (OriginPolicy::List(list), Some(origin)) => list.iter().any(|o| o.eq_ignore_ascii_case(origin)),
            (OriginPolicy::Check(check), origin) => check(origin),
        }
    }
}

impl fmt::Debug for OriginPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OriginPolicy::Any => f.write_str("Any"),
            OriginPolicy::List(list) => f.debug_tuple("List").field(list).finish(),
            OriginPolicy::Check(_) => f.write_str("Check(..)"),
        }
    }
}

/// Every setting of a server. Build one through [`Server`](super::Server)'s methods.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Settings {
    /// Worker threads, each with its own event loop (default: the number of cores).
    pub workers: usize,
    /// How connections are spread over workers (default [`AcceptMode::ReusePort`]).
    pub accept_mode: AcceptMode,
    /// The listen backlog (default 1024).
    pub backlog: i32,
    /// Frame, message and fragment limits (defaults: 16 MiB, 16 MiB, 131,072).
    pub limits: Limits,
    /// Request head limits (defaults: 8 KiB, 64 headers).
    pub request_limits: RequestLimits,
    /// Time a client has to complete its upgrade request (default 5 s).
    pub handshake_timeout: Duration,
    /// Pings on idle connections; `None` turns keepalive off.
    pub keepalive: Option<Keepalive>,
    /// Time the peer has to answer our close frame, or to close TCP after the
    /// close handshake (default 5 s).
    pub close_timeout: Duration,
    /// Outbound bytes a connection may have queued (default 1 MiB).
    pub max_buffered: usize,
    /// What a send over [`max_buffered`](Self::max_buffered) does (default [`BackpressurePolicy::Close`]).
    pub backpressure: BackpressurePolicy,
    /// The most open connections, all workers together (default unlimited).
    pub max_connections: Option<usize>,
    /// The most open connections from one IP address (default unlimited).
    pub max_connections_per_ip: Option<usize>,
    /// How long a graceful shutdown waits for close handshakes (default 10 s).
    pub shutdown_timeout: Duration,
    /// How long a graceful shutdown lets connections finish work under way
    /// ([`Handler::pending_work`](super::Handler::pending_work), such as
    /// deferred replies) before sending their 1001 (default 5 s); the
    /// `shutdown_timeout` for the close handshakes runs after it.
    pub reply_grace: Duration,
    /// Bytes read from a socket at a time, from one buffer per worker (default 64 KiB).
    pub read_buffer_size: usize,
    /// Which origins may upgrade (default any).
    pub origins: OriginPolicy,
    /// permessage-deflate settings, or `None` (the default) not to compress.
    pub deflate: Option<DeflateConfig>,
    /// The TLS identity for `wss://`, or `None` (the default) for plain TCP.
    #[cfg(feature = "tls")]
    pub tls: Option<crate::tls::TlsAcceptor>,
    /// Whether each worker writes a loop turn's plain-TCP connections with
    /// one io_uring submission instead of a `send` each (default `false`:
    /// the `send`/`writev` path). TLS connections, and queues of several
    /// buffers, are written the usual way either way. Starting a server
    /// with it fails if the kernel refuses io_uring.
    #[cfg(all(feature = "io-uring", target_os = "linux"))]
    pub io_uring_sends: bool,
    /// Where the server's workers count (default: a registry of its own).
    /// Counting is always on: its cost per message is measured in
    /// docs/BENCHMARKS.md, "Metrics cost".
    pub metrics: crate::metrics::Metrics,
}

impl Settings {
    /// What the protocol machine of each accepted connection needs to know.
    pub(crate) fn connection_config(&self) -> Config {
        Config {
            limits: self.limits,
            keepalive: self.keepalive,
            handshake_timeout: self.handshake_timeout,
            close_timeout: self.close_timeout,
            max_buffered: self.max_buffered,
        }
    }
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            workers: std::thread::available_parallelism().map_or(1, |n| n.get()),
            accept_mode: AcceptMode::ReusePort,
            backlog: 1024,
            limits: Limits::default(),
            request_limits: RequestLimits::default(),
            handshake_timeout: Duration::from_secs(5),
            keepalive: Some(Keepalive::default()),
            close_timeout: Duration::from_secs(5),
            max_buffered: 1 << 20,
            backpressure: BackpressurePolicy::Close,
            max_connections: None,
            max_connections_per_ip: None,
            shutdown_timeout: Duration::from_secs(10),
            reply_grace: Duration::from_secs(5),
            read_buffer_size: 64 << 10,
            origins: OriginPolicy::Any,
            deflate: None,
            #[cfg(feature = "tls")]
            tls: None,
            #[cfg(all(feature = "io-uring", target_os = "linux"))]
            io_uring_sends: false,
            metrics: crate::metrics::Metrics::default(),
        }
    }
}
