//! The error the app's API returns.

use std::fmt;

/// What the app's API can fail with.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// The data does not serialize to JSON.
    Json(serde_json::Error),
    /// Group names start with `#` (rooms) or `*` (tags), 2 to 128 bytes.
    BadGroup(String),
    /// The socket is in as many groups as [`EventLimits::max_groups_per_socket`](super::EventLimits::max_groups_per_socket) allows.
    TooManyGroups,
    /// A cluster query got no answer from the cluster's store in time; the
    /// adapter's error (a [`ClusterError`](crate::cluster::ClusterError) for
    /// the Redis one) says why.
    Unavailable(Box<dyn std::error::Error + Send + Sync>),
    /// An event name a binary envelope cannot carry: 1 to
    /// [`MAX_BINARY_NAME`](super::MAX_BINARY_NAME) bytes (PROTOCOL.md §10).
    BinaryName(String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Json(e) => write!(f, "data does not serialize: {e}"),
            Error::BadGroup(name) => write!(f, "bad group name {name:?}: rooms start with '#', tags with '*'"),
            Error::TooManyGroups => f.write_str("the socket is in too many rooms and tags"),
            Error::Unavailable(why) => write!(f, "the cluster did not answer: {why}"),
            Error::BinaryName(name) => write!(f, "event name {name:?} does not fit a binary envelope (1 to 255 bytes)"),
        }
    }
}

impl std::error::Error for Error {
    /// For [`Error::Unavailable`], the adapter error's own source (the Redis
    /// error): the adapter error's text is already in this one's.
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Unavailable(e) => e.source(),
            Error::Json(_) | Error::BadGroup(_) | Error::TooManyGroups | Error::BinaryName(_) => None,
        }
    }
}

impl From<serde_json::Error> for Error {
    fn from(e: serde_json::Error) -> Error {
        Error::Json(e)
    }
}
