//! Server-to-client calls: a request the server sends, answered by a
//! procedure the client registered (`register(name, fn)` in the JS client).
//!
//! Calls wait in their worker's table, keyed by socket and call id, with a
//! deadline the worker checks every turn; a socket's calls fail with
//! [`CallError::Disconnected`] when it closes.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::fmt;
use std::sync::{mpsc, OnceLock};
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::runtime::ConnId;

/// Why a call got no answer.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum CallError {
    /// No answer within the timeout.
    Timeout,
    /// The client has no procedure of that name (`not_registered`).
    NotRegistered(String),
    /// The client's procedure failed (`execution_failed`), with its message.
    ExecutionFailed(String),
    /// The socket closed before it answered (or was not open).
    Disconnected,
    /// The socket has too many calls waiting already (see [`EventLimits::max_pending`](super::EventLimits::max_pending)).
    TooMany,
    /// Another error code from the client.
    Remote {
        /// The machine-readable code.
        code: String,
        /// The client's message.
        message: String,
    },
}

impl fmt::Display for CallError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CallError::Timeout => f.write_str("the client did not answer in time"),
            CallError::NotRegistered(m) => write!(f, "no such procedure on the client: {m}"),
            CallError::ExecutionFailed(m) => write!(f, "the client's procedure failed: {m}"),
            CallError::Disconnected => f.write_str("the socket closed before answering"),
            CallError::TooMany => f.write_str("too many calls waiting on this socket"),
            CallError::Remote { code, message } => write!(f, "{code}: {message}"),
        }
    }
}

impl std::error::Error for CallError {}

impl CallError {
    /// The error an `[3, id, {code, message}]` answer stands for.
    pub(crate) fn from_wire(error: Option<&RawValue>) -> CallError {
        #[derive(Deserialize)]
        struct Body {
            code: String,
            #[serde(default)]
            message: String,
        }
        let body = error.and_then(|raw| serde_json::from_str::<Body>(raw.get()).ok());
        let Some(Body { code, message }) = body else {
            return CallError::Remote { code: "internal".into(), message: "malformed error reply".into() };
        };
        match code.as_str() {
            "not_registered" => CallError::NotRegistered(message),
            "execution_failed" => CallError::ExecutionFailed(message),
            "timeout" => CallError::Timeout,
            "disconnected" => CallError::Disconnected,
            _ => CallError::Remote { code, message },
        }
    }
}

/// A client's answer to a call: JSON, or the raw bytes of a binary reply
/// (an `emitws.v2` client's, PROTOCOL.md §10).
#[derive(Clone, Debug)]
pub struct CallReply(pub(crate) Answer);

/// What a [`CallReply`] holds.
#[derive(Clone, Debug)]
pub(crate) enum Answer {
    Json(Box<RawValue>),
    /// The bytes, and their JSON form `{"base64": …}` once asked for.
    Binary(Box<[u8]>, OnceLock<Box<RawValue>>),
}

impl CallReply {
    /// A JSON answer.
    pub(crate) fn json(json: Box<RawValue>) -> CallReply {
        CallReply(Answer::Json(json))
    }

    /// A binary answer.
    pub(crate) fn bytes(bytes: &[u8]) -> CallReply {
        CallReply(Answer::Binary(bytes.into(), OnceLock::new()))
    }

    /// The answer's JSON (`{"base64": …}` for a binary answer), as it goes
    /// between nodes.
    pub(crate) fn into_json(self) -> Box<RawValue> {
        match self.0 {
            Answer::Json(json) => json,
            Answer::Binary(..) => RawValue::from_string(self.raw().into()).expect("a base64 object is JSON"),
        }
    }

    /// A binary answer from its [JSON](Self::into_json) (another node's);
    /// JSON that is not `{"base64": …}`, which no node sends for bytes,
    /// stays JSON.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))] // called by the Redis adapter
    pub(crate) fn from_base64(json: Box<RawValue>) -> CallReply {
        match super::binary_v1::read_base64(json.get()) {
            Some(bytes) => CallReply(Answer::Binary(bytes.into(), OnceLock::from(json))),
            None => CallReply::json(json),
        }
    }

    /// The answer, typed. A binary answer reads as the JSON an `emitws.v1`
    /// client would send for it, `{"base64": "…"}` (PROTOCOL.md §10).
    ///
    /// # Errors
    ///
    /// The JSON error if the answer does not read as a `T`.
    pub fn data<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_str(self.raw())
    }

    /// The answer's JSON text (`{"base64": "…"}` for a binary answer).
    pub fn raw(&self) -> &str {
        match &self.0 {
            Answer::Json(json) => json.get(),
            Answer::Binary(bytes, json) => json
                .get_or_init(|| {
                    let mut text = Vec::new();
                    super::binary_v1::write_base64(&mut text, bytes);
                    let text = String::from_utf8(text).expect("base64 in JSON is UTF-8");
                    RawValue::from_string(text).expect("a base64 object is JSON")
                })
                .get(),
        }
    }

    /// The bytes of a binary answer, as the client sent them; `None` for
    /// a JSON answer (an `emitws.v1` client's
    /// `{"base64": …}` included: read it with [`data`](Self::data)).
    ///
    /// ```no_run
    /// # fn demo(app: &emitws::app::AppHandle, id: emitws::app::SocketId) -> Result<(), Box<dyn std::error::Error>> {
    /// use std::time::Duration;
    /// let answer = app.socket(id).call("screenshot", &(), Duration::from_secs(5))?.wait()?;
    /// let png: &[u8] = answer.binary().ok_or("the client answered JSON")?;
    /// # Ok(()) }
    /// ```
    pub fn binary(&self) -> Option<&[u8]> {
        match &self.0 {
            Answer::Json(_) => None,
            Answer::Binary(bytes, _) => Some(bytes),
        }
    }
}

impl PartialEq for CallReply {
    fn eq(&self, other: &CallReply) -> bool {
        match (self.binary(), other.binary()) {
            (Some(bytes), Some(others)) => bytes == others,
            (None, None) => self.raw() == other.raw(),
            _ => false,
        }
    }
}

impl Eq for CallReply {}

/// What a call comes to.
pub type CallResult = Result<CallReply, CallError>;

/// A call's answer, to wait for from a thread that is not a worker.
#[derive(Debug)]
pub struct PendingCall {
    answer: mpsc::Receiver<CallResult>,
}

impl PendingCall {
    pub(crate) fn new() -> (PendingCall, impl FnOnce(CallResult) + Send + 'static) {
        let (sender, answer) = mpsc::sync_channel(1);
        (PendingCall { answer }, move |result| drop(sender.try_send(result)))
    }

    /// Blocks until the answer (or the call's timeout).
    pub fn wait(self) -> CallResult {
        // The worker always completes a call it took; a dropped sender means
        // the server stopped first.
        self.answer.recv().unwrap_or(Err(CallError::Disconnected))
    }

    /// The answer, if it has come.
    pub fn try_result(&self) -> Option<CallResult> {
        match self.answer.try_recv() {
            Ok(result) => Some(result),
            Err(mpsc::TryRecvError::Empty) => None,
            Err(mpsc::TryRecvError::Disconnected) => Some(Err(CallError::Disconnected)),
        }
    }
}

/// What runs when a call completes.
pub(crate) type Done = Box<dyn FnOnce(CallResult) + Send>;

/// When something started now with `timeout` runs out: a timeout too long
/// for the clock (`Duration::MAX`, or one that came from another node) is
/// a year, which no call outlives.
pub(crate) fn deadline_after(timeout: Duration) -> Instant {
    const YEAR: Duration = Duration::from_secs(365 * 24 * 3600);
    let now = Instant::now();
    now.checked_add(timeout.min(YEAR)).unwrap_or(now)
}

/// A call posted to a worker from elsewhere.
pub(crate) struct StartCall {
    pub conn: ConnId,
    pub name: String,
    pub data: Box<RawValue>,
    pub timeout: Duration,
    pub done: Done,
}

/// One worker's calls in flight.
#[derive(Default)]
pub(crate) struct Calls {
    pending: BTreeMap<(ConnId, u64), Done>,
    deadlines: BinaryHeap<Reverse<(Instant, ConnId, u64)>>,
    next_id: u64,
}

impl Calls {
    /// Registers a call; returns its id.
    pub fn start(&mut self, conn: ConnId, timeout: Duration, done: Done) -> u64 {
        self.next_id = self.next_id % super::envelope::MAX_ID + 1;
        let id = self.next_id;
        self.pending.insert((conn, id), done);
        self.deadlines.push(Reverse((deadline_after(timeout), conn, id)));
        id
    }

    /// Whether the call `id` of `conn` is still waiting.
    pub fn is_pending(&self, conn: ConnId, id: u64) -> bool {
        self.pending.contains_key(&(conn, id))
    }

    /// Takes the call `id` of `conn`, if it is still waiting.
    pub fn take(&mut self, conn: ConnId, id: u64) -> Option<Done> {
        self.pending.remove(&(conn, id))
    }

    /// Takes the calls whose deadline has passed.
    pub fn expired(&mut self, now: Instant) -> Vec<(ConnId, Done)> {
        let mut expired = Vec::new();
        while let Some(Reverse((at, conn, id))) = self.deadlines.peek().copied() {
            if at > now {
                break;
            }
            self.deadlines.pop();
            if let Some(done) = self.pending.remove(&(conn, id)) {
                expired.push((conn, done));
            }
        }
        expired
    }

    /// When the next call may time out.
    pub fn next_deadline(&mut self) -> Option<Instant> {
        while let Some(Reverse((at, conn, id))) = self.deadlines.peek().copied() {
            if self.pending.contains_key(&(conn, id)) {
                return Some(at);
            }
            self.deadlines.pop();
        }
        None
    }

    /// Takes every call of a socket that closed.
    pub fn take_all(&mut self, conn: ConnId) -> Vec<Done> {
        let ids: Vec<(ConnId, u64)> = self.pending.range((conn, 0)..=(conn, u64::MAX)).map(|(k, _)| *k).collect();
        ids.into_iter().filter_map(|key| self.pending.remove(&key)).collect()
    }
}

/// What a join, a leave or a user change of a socket reached from anywhere
/// ([`SocketRef::join`](super::SocketRef::join),
/// [`SocketRef::set_user`](super::SocketRef::set_user)) came to.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum GroupOutcome {
    /// Done: the socket is in the group now (a join) or out of it (a leave),
    /// or has the user now (a user change); `changed` is false when it
    /// already was or had.
    Done {
        /// Whether the socket's groups changed.
        changed: bool,
    },
    /// No such socket: it is not connected (on this node, or on its node of
    /// the cluster; without an adapter, a socket of another node never is).
    NotThere,
    /// The socket's node refused, as it would the socket's own join:
    /// `too_many_groups` (the socket is in as many groups as
    /// [`EventLimits::max_groups_per_socket`](super::EventLimits::max_groups_per_socket)
    /// allows), `bad_group` (no room or tag name), `room_full` (the room's
    /// cap, [`App::room_cap`](super::App::room_cap)) or, for a user change,
    /// `too_many_devices` (the device cap refused it: the socket is being
    /// closed), with a message.
    Refused {
        /// The machine-readable code.
        code: String,
        /// What was wrong.
        message: String,
    },
    /// The socket's node did not answer within the adapter's timeout (it
    /// may have died; the change may or may not have happened).
    TimedOut,
}

impl GroupOutcome {
    /// The refusal a join failed with on the socket's node.
    pub(crate) fn refused(error: &super::Error) -> GroupOutcome {
        GroupOutcome::Refused { code: error.code().into(), message: error.to_string() }
    }

    /// The refusal of a user change the device cap turned down.
    pub(crate) fn too_many_devices() -> GroupOutcome {
        let message = "the user has as many devices as the cap allows; the socket is being closed";
        GroupOutcome::Refused { code: "too_many_devices".into(), message: message.into() }
    }
}

/// The outcome of a join, a leave or a user change, to wait for from a thread that is not a worker.
#[derive(Debug)]
pub struct PendingOp {
    answer: mpsc::Receiver<GroupOutcome>,
}

impl PendingOp {
    pub(crate) fn new() -> (PendingOp, impl FnOnce(GroupOutcome) + Send + 'static) {
        let (sender, answer) = mpsc::sync_channel(1);
        (PendingOp { answer }, move |outcome| drop(sender.try_send(outcome)))
    }

    /// Blocks until the outcome (at most the adapter's timeout for a socket
    /// of another node).
    pub fn wait(self) -> GroupOutcome {
        // A dropped sender means the server stopped before the socket's worker took it.
        self.answer.recv().unwrap_or(GroupOutcome::NotThere)
    }

    /// The outcome, if it has come.
    pub fn try_result(&self) -> Option<GroupOutcome> {
        match self.answer.try_recv() {
            Ok(outcome) => Some(outcome),
            Err(mpsc::TryRecvError::Empty) => None,
            Err(mpsc::TryRecvError::Disconnected) => Some(GroupOutcome::NotThere),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_timeout_too_long_for_the_clock_is_a_year() {
        let mut calls = Calls::default();
        calls.start(ConnId(1), Duration::MAX, Box::new(|_| {}));
        let year = Instant::now() + Duration::from_secs(365 * 24 * 3600);
        assert!(calls.next_deadline().is_some_and(|at| at <= year));
        assert!(calls.expired(Instant::now()).is_empty());
    }
}
