//! The Redis adapter's settings.

use std::path::PathBuf;
use std::time::Duration;

/// Settings of the Redis adapter; every one has a default. Change them with
/// the builder methods:
///
/// ```
/// use std::time::Duration;
/// use emitws::cluster::RedisOptions;
/// let options = RedisOptions::default().prefix("chat").heartbeat_ttl(Duration::from_secs(5));
/// assert_eq!(options.prefix, "chat");
/// ```
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct RedisOptions {
    /// Prefix of every key and channel (default `emitws`): several apps can
    /// share one Redis.
    pub prefix: String,
    /// How long a node's heartbeat lives (default 10 s); it is refreshed three
    /// times per period. A dead node leaves every answer within this time.
    pub heartbeat_ttl: Duration,
    /// Time allowed for a query, connection included (default 2 s).
    pub query_timeout: Duration,
    /// The longest wait between reconnection attempts (default 5 s).
    pub max_backoff: Duration,
    /// Publishes waiting for the writer at most (default 100,000): beyond
    /// it, when Redis cannot keep up, new ones are dropped and counted
    /// ([`RedisLink::dropped`](super::RedisLink::dropped)) rather than held in memory without bound.
    pub max_queued: usize,
    /// A PEM file of the CA certificates that `rediss://` connections trust
    /// (default none: Mozilla's roots, from the `webpki-roots` crate, as for
    /// wss://). Read when the link starts: a missing or empty file is
    /// [`ClusterError::CaFile`](super::ClusterError::CaFile) then.
    pub ca_file: Option<PathBuf>,
}

impl Default for RedisOptions {
    fn default() -> Self {
        RedisOptions {
            prefix: "emitws".into(),
            heartbeat_ttl: Duration::from_secs(10),
            query_timeout: Duration::from_secs(2),
            max_backoff: Duration::from_secs(5),
            max_queued: 100_000,
            ca_file: None,
        }
    }
}

impl RedisOptions {
    /// Sets `prefix`: the prefix of every key and channel.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// Sets `heartbeat_ttl`: how long a node's heartbeat lives.
    pub fn heartbeat_ttl(mut self, heartbeat_ttl: Duration) -> Self {
        self.heartbeat_ttl = heartbeat_ttl;
        self
    }

    /// Sets `query_timeout`: the time allowed for a query, connection included.
    pub fn query_timeout(mut self, query_timeout: Duration) -> Self {
        self.query_timeout = query_timeout;
        self
    }

    /// Sets `max_backoff`: the longest wait between reconnection attempts.
    pub fn max_backoff(mut self, max_backoff: Duration) -> Self {
        self.max_backoff = max_backoff;
        self
    }

    /// Sets `max_queued`: how many publishes may wait for the writer.
    pub fn max_queued(mut self, max_queued: usize) -> Self {
        self.max_queued = max_queued;
        self
    }

    /// Sets `ca_file`: the PEM file of the CA certificates `rediss://` trusts.
    pub fn ca_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.ca_file = Some(path.into());
        self
    }
}
