//! What other threads post to a worker: the one way into a worker's state
//! from outside its event loop.

use super::connect::Refusal;
use super::groups::Delivery;
use super::rpc::StartCall;
use crate::runtime::ConnId;
use std::sync::Arc;
use std::time::Instant;

/// Work posted to a worker from elsewhere.
pub(crate) enum WorkerMsg {
    Deliver(Delivery),
    Reply {
        conn: ConnId,
        id: u64,
        text: Vec<u8>,
    },
    Call(StartCall),
    Authenticated {
        conn: ConnId,
        user: Result<String, Refusal>,
    },
    /// Socket `waiter` of `user` resumes with the token of connection `old`,
    /// still open: close it with 4409 keeping its session, then tell the
    /// waiter (PROTOCOL.md §13, step 3). Not after `until`, the waiter's
    /// auth deadline, when it has stopped waiting.
    TakeOver {
        old: ConnId,
        user: Option<Arc<str>>,
        waiter: ConnId,
        until: Instant,
    },
    /// The connection socket `waiter` takes over is gone (its session kept,
    /// or it was not one to take over): claim the session now, or come in as
    /// a new socket.
    TakenOver {
        waiter: ConnId,
    },
}
