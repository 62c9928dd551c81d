//! Per-socket state, kept small: what every socket needs inline, the rest in
//! a box allocated on first use.

use super::disconnect::After;
use super::limits::Bucket;
use crate::runtime::ConnId;
use std::any::Any;
use std::sync::Arc;

/// Flag bits of [`SocketData::flags`].
pub(crate) mod flag {
    /// Not yet authenticated: only the auth event (or the challenge's answer) is accepted.
    pub const UNAUTHED: u8 = 1;
    /// `@connection` ran (and the socket is counted), so `@disconnect` is owed.
    pub const CONNECTED: u8 = 1 << 1;
    /// A `rate_limited` `@error` was sent since the bucket last let a message through.
    pub const RATE_NOTIFIED: u8 = 1 << 2;
    /// Connected with `emitws_resume=1`: not admitted until its `@resume` request arrives.
    pub const AWAIT_RESUME: u8 = 1 << 3;
    /// The socket resumed an earlier one (PROTOCOL.md §13).
    pub const RESUMED: u8 = 1 << 4;
    /// Its token's connection is still open: not admitted until that
    /// connection's worker has closed it and kept its session, or the auth
    /// deadline passes (PROTOCOL.md §13, step 3).
    pub const TAKING_OVER: u8 = 1 << 5;
    /// Speaks `emitws.v2`: its binary frames are envelopes, and binary
    /// payloads reach it as binary frames (PROTOCOL.md §10). The top bit,
    /// apart from the bits above that other flags take in turn.
    pub const V2: u8 = 1 << 7;
}

/// What the event layer keeps for each connection (the runtime's
/// [`Handler::Data`](crate::runtime::Handler::Data)). An idle socket that
/// joined nothing and stored nothing holds only this: about 24 bytes.
#[derive(Default)]
pub struct SocketData {
    pub(crate) state: Option<Box<SocketState>>,
    pub(crate) bucket: Bucket,
    /// Calls to the client waiting for its answer.
    pub(crate) calls: u16,
    pub(crate) flags: u8,
    /// Heartbeat pings sent without an answer.
    pub(crate) missed: u8,
    /// The path route the socket connected on, counted from 1 in the order
    /// declared ([`App::route`](super::App::route)); 0 without routes.
    pub(crate) path_route: u16,
}

impl std::fmt::Debug for SocketData {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SocketData").field("user", &self.user()).field("flags", &self.flags).finish()
    }
}

/// The rarer parts of a socket's state.
#[derive(Default)]
pub(crate) struct SocketState {
    pub user: Option<Arc<str>>,
    /// Rooms and tags joined.
    pub groups: Vec<Box<str>>,
    /// `req.set` values.
    pub store: Vec<(Box<str>, Box<dyn Any + Send>)>,
    /// The upgrade path, when not `/`.
    pub path: Option<Box<str>>,
    /// Path parameters of the matched route.
    pub params: Vec<(Box<str>, Box<str>)>,
    pub query: Option<Box<str>>,
    /// Connection middleware's code to run at disconnect, in connect order.
    pub after: Vec<After>,
    /// Ids of the requests waiting for a deferred reply.
    pub deferred: Vec<u64>,
    /// A resumed socket's public id: the connection it first had.
    pub public: Option<ConnId>,
    /// For each room with history it is in: the room's epoch and offset
    /// when it joined (or last recovered it), where a resume that lists no
    /// offset of its own replays from (PROTOCOL.md §13).
    pub positions: Vec<(Box<str>, Arc<str>, u64)>,
    /// A `@resume` request waiting for the authentication to finish.
    pub resume: Option<Box<ResumeRequest>>,
    /// Connection facts (PROTOCOL.md §14): the address behind a proxy,
    /// metadata, identity, generated id, and a refusal to carry out right
    /// after the upgrade; boxed, as most sockets have none.
    pub info: Option<Box<super::connect::ConnInfo>>,
}

/// A client's `@resume` request (PROTOCOL.md §13).
pub(crate) struct ResumeRequest {
    /// The request's id, for the reply.
    pub id: u64,
    /// The connection the token names, when the token is genuine (one that
    /// is not resumes nothing).
    pub token: Option<ConnId>,
    /// The rooms the client has offsets for: name, epoch and offset.
    pub rooms: Vec<(Box<str>, Box<str>, u64)>,
}

impl SocketData {
    pub(crate) fn has(&self, bit: u8) -> bool {
        self.flags & bit != 0
    }

    /// The rare state, allocated now if it was not.
    pub(crate) fn state(&mut self) -> &mut SocketState {
        self.state.get_or_insert_with(Box::default)
    }

    /// The ids of the requests waiting for a deferred reply.
    pub(crate) fn deferred(&self) -> &[u64] {
        self.state.as_ref().map_or(&[], |s| &s.deferred)
    }

    pub(crate) fn user(&self) -> Option<&str> {
        self.state.as_ref()?.user.as_deref()
    }

    pub(crate) fn groups(&self) -> &[Box<str>] {
        self.state.as_ref().map_or(&[], |s| &s.groups)
    }

    pub(crate) fn param(&self, name: &str) -> Option<&str> {
        let params = &self.state.as_ref()?.params;
        params.iter().find(|(n, _)| &**n == name).map(|(_, v)| &**v)
    }

    pub(crate) fn path(&self) -> &str {
        self.state.as_ref().and_then(|s| s.path.as_deref()).unwrap_or("/")
    }

    pub(crate) fn query(&self) -> Option<&str> {
        self.state.as_ref()?.query.as_deref()
    }

    /// The socket's public id on this node: its first connection's, kept across resumes.
    pub(crate) fn public(&self, conn: ConnId) -> ConnId {
        self.state.as_ref().and_then(|s| s.public).unwrap_or(conn)
    }

    pub(crate) fn set<T: Any + Send>(&mut self, key: &str, value: T) {
        let store = &mut self.state().store;
        match store.iter_mut().find(|(k, _)| &**k == key) {
            Some(entry) => entry.1 = Box::new(value),
            None => store.push((key.into(), Box::new(value))),
        }
    }

    pub(crate) fn get<T: Any>(&self, key: &str) -> Option<&T> {
        let store = &self.state.as_ref()?.store;
        store.iter().find(|(k, _)| &**k == key)?.1.downcast_ref()
    }

    pub(crate) fn get_mut<T: Any>(&mut self, key: &str) -> Option<&mut T> {
        let store = &mut self.state.as_mut()?.store;
        store.iter_mut().find(|(k, _)| &**k == key)?.1.downcast_mut()
    }

    pub(crate) fn remove(&mut self, key: &str) -> Option<Box<dyn Any + Send>> {
        let store = &mut self.state.as_mut()?.store;
        let at = store.iter().position(|(k, _)| &**k == key)?;
        Some(store.swap_remove(at).1)
    }
}

/// The first value of `name` in a query string, percent-decoded (`+` is a space).
pub(crate) fn query_value(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        (decode(key) == name).then(|| decode(value))
    })
}

fn decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push((h * 16 + l) as u8);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_values_are_decoded() {
        let query = "token=a%2Bb&name=J+D&flag&bad=%zz&end=%4";
        assert_eq!(query_value(query, "token").as_deref(), Some("a+b"));
        assert_eq!(query_value(query, "name").as_deref(), Some("J D"));
        assert_eq!(query_value(query, "flag").as_deref(), Some(""));
        assert_eq!(query_value(query, "bad").as_deref(), Some("%zz"));
        assert_eq!(query_value(query, "end").as_deref(), Some("%4"));
        assert_eq!(query_value(query, "missing"), None);
    }

    #[test]
    fn idle_socket_data_is_small() {
        assert!(std::mem::size_of::<SocketData>() <= 24, "{}", std::mem::size_of::<SocketData>());
    }

    #[test]
    fn the_boxed_state_fits_a_240_byte_heap_block() {
        // glibc's malloc rounds a request up to a block of 16-byte steps with
        // 8 bytes of its own: 224 bytes take 240, 232 to 248 take 256.
        assert!(std::mem::size_of::<SocketState>() <= 224, "{}", std::mem::size_of::<SocketState>());
    }
}
