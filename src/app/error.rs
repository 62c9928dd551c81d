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
    /// The room has as many members as its cap allows ([`App::room_cap`](super::App::room_cap));
    /// its code is `room_full`.
    RoomFull(String),
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
            Error::RoomFull(room) => write!(f, "room {room} is full: it has as many members as its cap allows"),
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
            Error::Json(_) | Error::BadGroup(_) | Error::TooManyGroups | Error::RoomFull(_) | Error::BinaryName(_) => {
                None
            }
        }
    }
}

impl Error {
    /// The machine-readable code of the error, as a handler would answer
    /// it (`req.reply_err(e.code(), &e.to_string())`) and as
    /// [`GroupOutcome::Refused`](super::GroupOutcome::Refused) carries it:
    /// `room_full`, `too_many_groups`, `bad_group`, `bad_request` (data that
    /// does not serialize) or `unavailable`.
    ///
    /// ```
    /// use emitws::app::App;
    /// let mut app = App::new();
    /// app.room_cap("#duel:*", 2);
    /// app.on("/join", |req| match req.join("#duel:1") {
    ///     Ok(()) => req.reply(&true),
    ///     Err(e) => req.reply_err(e.code(), &e.to_string()), // room_full for the third
    /// });
    /// ```
    pub fn code(&self) -> &'static str {
        match self {
            Error::Json(_) => "bad_request",
            Error::BadGroup(_) => "bad_group",
            Error::TooManyGroups => "too_many_groups",
            Error::RoomFull(_) => "room_full",
            Error::Unavailable(_) => "unavailable",
            Error::BinaryName(_) => "bad_request",
        }
    }
}

impl From<serde_json::Error> for Error {
    fn from(e: serde_json::Error) -> Error {
        Error::Json(e)
    }
}
