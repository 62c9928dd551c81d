//! What other threads post to a worker: the one way into a worker's state
//! from outside its event loop.

use super::connect::Refusal;
use super::groups::Delivery;
use super::rpc::StartCall;
use crate::runtime::ConnId;

/// Work posted to a worker from elsewhere.
pub(crate) enum WorkerMsg {
    Deliver(Delivery),
    Reply { conn: ConnId, id: u64, text: Vec<u8> },
    Call(StartCall),
    Authenticated { conn: ConnId, user: Result<String, Refusal> },
}
