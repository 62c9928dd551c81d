//! What goes over Redis between nodes: node ids as 16 hex digits, every
//! payload behind its sender's line, and the app messages' JSON header.

use serde::{Deserialize, Serialize};

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
}
