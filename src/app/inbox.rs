//! What other threads post to a worker: the one way into a worker's state
//! from outside its event loop.

use super::adapter::ClaimOutcome;
use super::cluster_event::ClusterEvent;
use super::connect::Refusal;
use super::groups::Delivery;
use super::history::Backfill;
use super::rpc::{GroupOutcome, StartCall};
use super::session::Session;
use super::socket_id::SocketId;
use super::ReadyState;
use crate::runtime::{ConnId, SharedFrame};
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
        /// The challenge's answer, when accepted: the socket's identity (PROTOCOL.md §14).
        identity: Option<Box<serde_json::value::RawValue>>,
    },
    /// Socket `waiter` of `user` resumes with the token of connection `old`,
    /// still open: close it with 4409 keeping its session, then tell the
    /// waiter (PROTOCOL.md §13, step 3). Not after `until`, the waiter's
    /// auth deadline, when it has stopped waiting. Without a waiter (a
    /// resume on another node, which claims again by itself), nobody is told.
    TakeOver {
        old: ConnId,
        user: Option<Arc<str>>,
        waiter: Option<ConnId>,
        until: Instant,
    },
    /// The claim of socket `waiter`'s session in the cluster's store is
    /// done. (Boxed, as the rest below: the deliveries of every broadcast
    /// are posted in this enum, which stays small.)
    Claimed {
        waiter: ConnId,
        outcome: Box<ClaimOutcome>,
    },
    /// The history the resume of socket `waiter` recovers from is at hand:
    /// restore `session` (of public id `public`).
    Prefetched {
        waiter: ConnId,
        session: Box<Session>,
        public: SocketId,
        backfill: Box<Backfill>,
    },
    /// The connection socket `waiter` takes over is gone (its session kept,
    /// or it was not one to take over): claim the session now, or come in as
    /// a new socket.
    TakenOver {
        waiter: ConnId,
    },
    /// A change in the cluster's health, for the app's hook (see
    /// [`AppHandle::deliver_cluster_event`](super::AppHandle::deliver_cluster_event)).
    Cluster(Box<ClusterEvent>),
    /// Socket `conn` joins (true) or leaves a group, asked from elsewhere
    /// ([`SocketRef::join`](super::SocketRef::join), maybe from another
    /// node); the outcome goes to the function.
    Membership {
        conn: ConnId,
        change: Box<MembershipChange>,
    },
    /// Socket `conn` is given a user (`None`: its user is cleared), asked
    /// from elsewhere ([`SocketRef::set_user`](super::SocketRef::set_user),
    /// maybe from another node); the outcome goes to the function once the
    /// device cap has had its say.
    UserChange {
        conn: ConnId,
        change: Box<UserChange>,
    },
    /// A binary event for socket `conn` from elsewhere
    /// ([`SocketRef::emit_binary`](super::SocketRef::emit_binary), maybe
    /// from another node): its `emitws.v2` frame and its `emitws.v1` one,
    /// the socket's worker sending the one its socket speaks.
    EmitBinary {
        conn: ConnId,
        frames: Box<(SharedFrame, SharedFrame)>,
    },
    /// Where socket `conn` is ([`SocketRef::ready_state`](super::SocketRef::ready_state)),
    /// for the function.
    ReadyState {
        conn: ConnId,
        done: Box<dyn FnOnce(ReadyState) + Send>,
    },
}

/// A socket's new user (`None`: none), and who learns the outcome.
pub(crate) type UserChange = (Option<String>, Box<dyn FnOnce(GroupOutcome) + Send>);

/// A group, whether to join it (else leave it), and who learns the outcome.
pub(crate) type MembershipChange = (String, bool, Box<dyn FnOnce(GroupOutcome) + Send>);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_is_no_bigger_than_a_call() {
        // A delivery of every broadcast is posted as one: the resume's
        // variants must not make each allocation bigger than a call made it.
        let (message, call) = (std::mem::size_of::<WorkerMsg>(), std::mem::size_of::<StartCall>());
        assert!(message <= call + std::mem::size_of::<usize>(), "{message} > {call} + a tag");
    }
}
