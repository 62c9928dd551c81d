//! Why a cluster operation failed.

use std::fmt;
use std::path::PathBuf;

use crate::app;

/// Why a cluster operation failed. The Redis or I/O error is kept, as the
/// error's [`source`](std::error::Error::source).
#[derive(Debug)]
#[non_exhaustive]
pub enum ClusterError {
    /// The Redis URL does not parse.
    BadUrl(redis::RedisError),
    /// Redis did not answer in time, or refused.
    Unavailable(redis::RedisError),
    /// One of the link's threads could not be started.
    Spawn(std::io::Error),
    /// The CA file of [`RedisOptions::ca_file`](super::RedisOptions::ca_file)
    /// cannot be read, or holds no PEM certificate.
    CaFile {
        /// The file as given.
        path: PathBuf,
        /// Why it was refused.
        error: std::io::Error,
    },
}

impl fmt::Display for ClusterError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClusterError::BadUrl(_) => f.write_str("bad Redis URL"),
            ClusterError::Unavailable(_) => f.write_str("Redis unavailable"),
            ClusterError::Spawn(_) => f.write_str("could not start a thread of the Redis link"),
            ClusterError::CaFile { path, .. } => write!(f, "Redis CA file {} unusable", path.display()),
        }
    }
}

impl std::error::Error for ClusterError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ClusterError::BadUrl(e) | ClusterError::Unavailable(e) => Some(e),
            ClusterError::Spawn(e) | ClusterError::CaFile { error: e, .. } => Some(e),
        }
    }
}

impl From<ClusterError> for app::Error {
    fn from(e: ClusterError) -> app::Error {
        app::Error::Unavailable(Box::new(e))
    }
}
