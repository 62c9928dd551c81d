//! What goes over Redis between nodes: node ids as 16 hex digits, every
//! payload behind its sender's line, the app messages' JSON header, and
//! requests to another node's socket with their answers.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::app::{CallError, CallReply, GroupOutcome, ReadyState, SocketAnswer, SocketAsk};

/// A node id as it appears in keys, channels and payloads.
pub(super) fn hex(node: u64) -> String {
    format!("{node:016x}")
}

/// A payload as published: the sender's id, a newline, then `parts`.
pub(super) fn with_sender(node: u64, parts: &[&[u8]]) -> Vec<u8> {
    let node = hex(node);
    let mut payload = Vec::with_capacity(node.len() + 1 + parts.iter().map(|p| p.len()).sum::<usize>());
    payload.extend_from_slice(node.as_bytes());
    payload.push(b'\n');
    parts.iter().for_each(|part| payload.extend_from_slice(part));
    payload
}

/// A received payload split at its first line: the sender's id as written,
/// that id read, and the rest. `None` when there is no sender line.
pub(super) fn split_sender(payload: &[u8]) -> Option<(&[u8], u64, &[u8])> {
    let at = payload.iter().position(|&b| b == b'\n')?;
    let sender = &payload[..at];
    let from = std::str::from_utf8(sender).ok().and_then(|f| u64::from_str_radix(f, 16).ok())?;
    Some((sender, from, &payload[at + 1..]))
}

/// Who an app message between nodes is for: the JSON line before the envelope.
#[derive(Serialize, Deserialize)]
pub(super) enum Header {
    /// The socket of this public id (node, conn), which answers at the
    /// receiving node (routed there by its alias, see `super::sessions`).
    #[serde(rename = "p")]
    Public(u64, u64),
    /// A resume elsewhere takes over this connection of the receiving node
    /// (of this user): close it with 4409, keeping its session.
    #[serde(rename = "t")]
    TakeOver(u64, Option<String>),
    /// The session lost with this connection of the receiving node was
    /// claimed by the sender: the receiver forgets it, and forwards what it
    /// sends to its public id, the second connection when it is one of the
    /// receiver's (a socket that came from a third node has that node's).
    #[serde(rename = "m")]
    Claimed(u64, Option<u64>),
    /// The session lost with this connection (the first number) of the
    /// receiving node was claimed by the sender, where its socket now
    /// answers under its public id (node, conn), with the direct messages
    /// numbered up to the last number replayed: the receiver forgets it,
    /// sends on those it kept after them, and forwards what it sends to
    /// that id from then on. Sent once the socket answers at the sender
    /// (nodes from before it send `Claimed`, at the claim).
    #[serde(rename = "mh")]
    ClaimedUpTo(u64, u64, u64, u64),
    /// A broadcast: its groups (none: everyone) and the sockets left out, as (node, conn).
    #[serde(rename = "b")]
    Broadcast(Vec<String>, Vec<(u64, u64)>),
    /// One connection of the receiving node.
    #[serde(rename = "s")]
    Socket(u64),
    /// A user's devices.
    #[serde(rename = "u")]
    User(String),
    /// Close one connection of the receiving node with a code; the reason follows.
    #[serde(rename = "cs")]
    CloseSocket(u64, u16),
    /// Close a user's devices with a code; the reason follows.
    #[serde(rename = "cu")]
    CloseUser(String, u16),
    /// A broadcast to a room with history, numbered in Redis: the room, its
    /// epoch and offset, and the sockets left out, as (node, conn). Written
    /// by the publish script (`history.rs`), delivered to every node, the
    /// sender included.
    #[serde(rename = "h")]
    History(String, String, u64, Vec<(u64, u64)>),
    /// This user's last device went with a dead node: the survivor that
    /// cleaned up after it runs the app's offline hook (see `super::users`).
    #[serde(rename = "uo")]
    UserOffline(String),
    /// A request to the socket of public id (node, conn) (routed by its
    /// alias, as `Public`): the asker's number for it, the asker's node,
    /// then the id; the [`WireAsk`] follows. Answered to the asker's node.
    #[serde(rename = "q")]
    Ask(u64, u64, u64, u64),
    /// The answer to the receiver's request of this number; the
    /// [`WireAnswer`] follows.
    #[serde(rename = "a")]
    Answer(u64),
    /// A newer claim of this generated id took it from the receiver's
    /// socket whose claim had this number (see `super::ids`): sent by the
    /// node that has it now, nothing follows.
    #[serde(rename = "gi")]
    IdTaken(String, u64),
}

/// A [`SocketAsk`] as it goes between nodes.
#[derive(Serialize, Deserialize)]
pub(super) enum WireAsk {
    #[serde(rename = "j")]
    Join(String),
    #[serde(rename = "l")]
    Leave(String),
    /// Procedure, argument, timeout in ms.
    #[serde(rename = "c")]
    Call(String, Box<RawValue>, u64),
    /// The socket's new user (none: cleared).
    #[serde(rename = "u")]
    SetUser(Option<String>),
    #[serde(rename = "s")]
    ReadyState,
}

impl From<SocketAsk> for WireAsk {
    fn from(ask: SocketAsk) -> WireAsk {
        match ask {
            SocketAsk::Join(group) => WireAsk::Join(group),
            SocketAsk::Leave(group) => WireAsk::Leave(group),
            SocketAsk::Call { name, data, timeout } => {
                WireAsk::Call(name, data, u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX))
            }
            SocketAsk::SetUser(user) => WireAsk::SetUser(user),
            SocketAsk::ReadyState => WireAsk::ReadyState,
        }
    }
}

impl From<WireAsk> for SocketAsk {
    fn from(ask: WireAsk) -> SocketAsk {
        match ask {
            WireAsk::Join(group) => SocketAsk::Join(group),
            WireAsk::Leave(group) => SocketAsk::Leave(group),
            WireAsk::Call(name, data, ms) => SocketAsk::Call { name, data, timeout: Duration::from_millis(ms) },
            WireAsk::SetUser(user) => SocketAsk::SetUser(user),
            WireAsk::ReadyState => SocketAsk::ReadyState,
        }
    }
}

/// A [`SocketAnswer`] as it goes between nodes.
#[derive(Serialize, Deserialize)]
pub(super) enum WireAnswer {
    /// A join or leave done; whether it changed the socket's groups.
    #[serde(rename = "d")]
    Done(bool),
    /// No such socket.
    #[serde(rename = "n")]
    NotThere,
    /// A join refused: code and message.
    #[serde(rename = "r")]
    Refused(String, String),
    /// A call answered, with the client's answer.
    #[serde(rename = "ok")]
    Reply(Box<RawValue>),
    /// A call answered with bytes, as `{"base64": …}`.
    #[serde(rename = "b")]
    Bytes(Box<RawValue>),
    /// Where the socket is: the [`ReadyState`]'s number.
    #[serde(rename = "s")]
    ReadyState(u8),
    /// A call failed: the kind (the [`CallError`] variant), a code and a message.
    #[serde(rename = "e")]
    Failed(String, String, String),
}

impl From<SocketAnswer> for WireAnswer {
    fn from(answer: SocketAnswer) -> WireAnswer {
        let failed =
            |kind: &str, code: &str, message: &str| WireAnswer::Failed(kind.into(), code.into(), message.into());
        match answer {
            SocketAnswer::Group(GroupOutcome::Done { changed }) => WireAnswer::Done(changed),
            SocketAnswer::Group(GroupOutcome::Refused { code, message }) => WireAnswer::Refused(code, message),
            // A timeout is the asker's to find: it never goes back.
            SocketAnswer::Group(_) => WireAnswer::NotThere,
            SocketAnswer::Call(Ok(reply)) => match reply.binary() {
                None => WireAnswer::Reply(reply.into_json()),
                Some(_) => WireAnswer::Bytes(reply.into_json()),
            },
            SocketAnswer::ReadyState(state) => WireAnswer::ReadyState(state.number()),
            SocketAnswer::Call(Err(error)) => match error {
                CallError::Timeout => failed("timeout", "", ""),
                CallError::NotRegistered(message) => failed("not_registered", "", &message),
                CallError::ExecutionFailed(message) => failed("execution_failed", "", &message),
                CallError::Disconnected => failed("disconnected", "", ""),
                CallError::TooMany => failed("too_many", "", ""),
                CallError::Remote { code, message } => failed("remote", &code, &message),
            },
        }
    }
}

impl From<WireAnswer> for SocketAnswer {
    fn from(answer: WireAnswer) -> SocketAnswer {
        let group = SocketAnswer::Group;
        match answer {
            WireAnswer::Done(changed) => group(GroupOutcome::Done { changed }),
            WireAnswer::NotThere => group(GroupOutcome::NotThere),
            WireAnswer::Refused(code, message) => group(GroupOutcome::Refused { code, message }),
            WireAnswer::Reply(reply) => SocketAnswer::Call(Ok(CallReply::json(reply))),
            WireAnswer::Bytes(json) => SocketAnswer::Call(Ok(CallReply::from_base64(json))),
            WireAnswer::ReadyState(number) => SocketAnswer::ReadyState(match number {
                0 => ReadyState::Connecting,
                1 => ReadyState::Open,
                2 => ReadyState::Closing,
                _ => ReadyState::Closed,
            }),
            WireAnswer::Failed(kind, code, message) => SocketAnswer::Call(Err(match kind.as_str() {
                "timeout" => CallError::Timeout,
                "not_registered" => CallError::NotRegistered(message),
                "execution_failed" => CallError::ExecutionFailed(message),
                "disconnected" => CallError::Disconnected,
                "too_many" => CallError::TooMany,
                _ => CallError::Remote { code, message },
            })),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An answer as the asker reads it after the trip through JSON.
    fn round_trip(answer: SocketAnswer) -> SocketAnswer {
        let text = serde_json::to_string(&WireAnswer::from(answer)).expect("serializes");
        serde_json::from_str::<WireAnswer>(&text).expect("reads back").into()
    }

    #[test]
    fn every_answer_comes_back_as_it_went() {
        let reply = CallReply::json(RawValue::from_string(r#"{"s":"ünï \"q\""}"#.into()).unwrap());
        let errors = [
            CallError::Timeout,
            CallError::NotRegistered("n".into()),
            CallError::ExecutionFailed("é \"x\"".into()),
            CallError::Disconnected,
            CallError::TooMany,
            CallError::Remote { code: "busy".into(), message: "later".into() },
        ];
        let mut answers: Vec<SocketAnswer> = errors.into_iter().map(|e| SocketAnswer::Call(Err(e))).collect();
        answers.push(SocketAnswer::Call(Ok(reply)));
        answers.push(SocketAnswer::Call(Ok(CallReply::bytes(&[0, 255, b'"', 7]))));
        for state in [ReadyState::Connecting, ReadyState::Open, ReadyState::Closing, ReadyState::Closed] {
            answers.push(SocketAnswer::ReadyState(state));
        }
        for outcome in [
            GroupOutcome::Done { changed: true },
            GroupOutcome::Done { changed: false },
            GroupOutcome::NotThere,
            GroupOutcome::Refused { code: "too_many_groups".into(), message: "m".into() },
        ] {
            answers.push(SocketAnswer::Group(outcome));
        }
        for answer in answers {
            assert_eq!(round_trip(answer.clone()), answer);
        }
    }

    #[test]
    fn a_call_keeps_its_argument_and_timeout() {
        let data = RawValue::from_string(r#"["ü",{"a":null}]"#.into()).unwrap();
        let ask = SocketAsk::Call { name: "/p".into(), data, timeout: Duration::from_millis(1500) };
        let text = serde_json::to_string(&WireAsk::from(ask)).expect("serializes");
        match serde_json::from_str::<WireAsk>(&text).expect("reads back").into() {
            SocketAsk::Call { name, data, timeout } => {
                assert_eq!(
                    (name.as_str(), data.get(), timeout),
                    ("/p", r#"["ü",{"a":null}]"#, Duration::from_millis(1500))
                );
            }
            other => panic!("came back as {other:?}"),
        }
    }
}
