//! A worker's own state ([`WorkerState`]) and what handlers do through it:
//! write envelopes into one reused buffer, join and leave groups, start
//! calls to a client.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::value::RawValue;

use super::adapter::Presence;
use super::envelope::{self, ErrorCode};
use super::error::Error;
use super::groups::{Delivery, Outbox, WorkerGroups};
use super::handle::AppHandle;
use super::limits::check_group_name;
use super::rpc::{CallError, CallResult, Calls, Done};
use super::socket::SocketData;
use crate::metrics::WorkerMetrics;
use crate::proto::OpCode;
use crate::runtime::{Conn, ConnId, Conns};

/// What one worker keeps for its own sockets, touched by that worker's
/// thread alone (no locks).
pub(crate) struct WorkerState {
    /// Reused for every envelope this worker writes.
    scratch: Vec<u8>,
    /// This worker's members of each room and tag.
    pub groups: WorkerGroups,
    /// Broadcasts to this worker's own sockets, delivered at the end of the turn.
    pub outbox: Outbox,
    /// The server's calls waiting for an answer from this worker's sockets.
    pub calls: Calls,
    /// Sockets that must authenticate by then, earliest first.
    pub auth_deadlines: VecDeque<(Instant, ConnId)>,
    pub next_heartbeat: Option<Instant>,
    /// The session record key of each socket whose `@resume` waits for its
    /// authentication, with an adapter that may keep sessions.
    pub records: HashMap<ConnId, String>,
    /// Sockets whose session is being claimed in the cluster's store (or
    /// its history fetched): they wait, until their auth deadline.
    pub claiming: HashSet<ConnId>,
    /// When this worker next drops expired resume sessions, while there are some.
    pub next_sweep: Option<Instant>,
    /// The worker's counters, taken from the first socket to open (a
    /// callback without a socket, `on_turn`, counts through them).
    pub metrics: Option<Arc<WorkerMetrics>>,
}

impl WorkerState {
    pub fn new() -> WorkerState {
        WorkerState {
            scratch: Vec::new(),
            groups: WorkerGroups::default(),
            outbox: Outbox::new(),
            calls: Calls::default(),
            auth_deadlines: VecDeque::new(),
            next_heartbeat: None,
            records: HashMap::new(),
            claiming: HashSet::new(),
            next_sweep: None,
            metrics: None,
        }
    }

    /// Writes an envelope into the reused buffer and sends it as one text frame.
    pub fn send_json(
        &mut self,
        conn: &mut Conn<'_, SocketData>,
        write: impl FnOnce(&mut Vec<u8>) -> serde_json::Result<()>,
    ) -> Result<(), Error> {
        self.scratch.clear();
        write(&mut self.scratch)?;
        let _ = conn.send(OpCode::Text, &self.scratch);
        Ok(())
    }

    /// [`send_json`](Self::send_json) for envelopes that cannot fail to serialize.
    pub fn send_raw(&mut self, conn: &mut Conn<'_, SocketData>, write: impl FnOnce(&mut Vec<u8>)) {
        self.scratch.clear();
        write(&mut self.scratch);
        let _ = conn.send(OpCode::Text, &self.scratch);
    }

    /// [`send_raw`](Self::send_raw) for a binary envelope (PROTOCOL.md §10).
    pub fn send_binary(&mut self, conn: &mut Conn<'_, SocketData>, write: impl FnOnce(&mut Vec<u8>)) {
        self.scratch.clear();
        write(&mut self.scratch);
        let _ = conn.send(OpCode::Binary, &self.scratch);
    }

    /// Sends `[0, "@error", {code, message}]`.
    pub fn emit_error(&mut self, conn: &mut Conn<'_, SocketData>, code: ErrorCode, message: &str) {
        self.send_raw(conn, |out| {
            out.extend_from_slice(b"[0,\"@error\",");
            envelope::write_error_body(out, code.as_str(), message);
            out.push(b']');
        });
    }

    /// Joins `group`; a room with history also notes where its stream is,
    /// for a resume to replay from (PROTOCOL.md §13).
    pub fn join(&mut self, app: &AppHandle, conn: &mut Conn<'_, SocketData>, group: &str) -> Result<(), Error> {
        // Read before the join, under the stream's lock (which the join must
        // not hold): a broadcast in between is replayed, never missed.
        let position = app.position(group);
        let noted = position.as_ref().map(|(epoch, offset)| (&**epoch, *offset));
        let joined = self.join_group_capped(app, conn, group, noted, app.room_cap(group))?;
        if let (true, Some((epoch, offset))) = (joined, position) {
            set_position(conn.data_mut(), group, epoch, offset);
        }
        Ok(())
    }

    /// Joins `group` (true), or finds the socket in it already (false); a
    /// room with history at `position` of its stream.
    pub fn join_group(
        &mut self,
        app: &AppHandle,
        conn: &mut Conn<'_, SocketData>,
        group: &str,
        position: Option<(&str, u64)>,
    ) -> Result<bool, Error> {
        self.join_group_capped(app, conn, group, position, None)
    }

    /// [`join_group`](Self::join_group), refused with [`Error::RoomFull`]
    /// when the group has `cap` members on this node already.
    pub fn join_group_capped(
        &mut self,
        app: &AppHandle,
        conn: &mut Conn<'_, SocketData>,
        group: &str,
        position: Option<(&str, u64)>,
        cap: Option<usize>,
    ) -> Result<bool, Error> {
        if !check_group_name(group) {
            return Err(Error::BadGroup(group.into()));
        }
        let id = conn.id();
        let data = conn.data_mut();
        if data.groups().iter().any(|g| &**g == group) {
            return Ok(false);
        }
        if data.groups().len() >= app.0.setup.limits.max_groups_per_socket {
            return Err(Error::TooManyGroups);
        }
        if !app.0.registry.join(group, id, app.server().workers(), cap) {
            return Err(Error::RoomFull(group.into()));
        }
        conn.data_mut().state().groups.push(group.into());
        self.groups.join(group, id);
        app.presence(Presence::Joined { conn_id: id, group, position });
        Ok(true)
    }

    pub fn leave(&mut self, app: &AppHandle, conn: &mut Conn<'_, SocketData>, group: &str) -> bool {
        let id = conn.id();
        let Some(state) = conn.data_mut().state.as_mut() else { return false };
        let Some(at) = state.groups.iter().position(|g| &**g == group) else { return false };
        state.groups.swap_remove(at);
        state.positions.retain(|(room, ..)| &**room != group);
        self.groups.leave(group, id);
        app.0.registry.leave(group, id);
        app.presence(Presence::Left { conn_id: id, group });
        true
    }

    /// Sends a call to the socket's client and waits for its answer in the table.
    pub fn begin_call(
        &mut self,
        app: &AppHandle,
        conn: &mut Conn<'_, SocketData>,
        name: &str,
        data: &RawValue,
        timeout: Duration,
        done: Done,
    ) {
        if !conn.is_open() {
            return settle_call(conn.metrics(), done, Err(CallError::Disconnected));
        }
        if usize::from(conn.data().calls) >= app.0.setup.limits.max_pending {
            return settle_call(conn.metrics(), done, Err(CallError::TooMany));
        }
        let id = self.calls.start(conn.id(), timeout, done);
        conn.data_mut().calls += 1;
        self.send_raw(conn, |out| {
            // A string and raw JSON always serialize.
            let _ = envelope::write_request(out, id, name, data);
        });
    }
}

impl WorkerState {
    /// Sends a delivery to this worker's sockets it addresses, counted once.
    pub fn deliver(&mut self, conns: &mut Conns<'_, SocketData>, delivery: &Delivery) {
        // Without counters no socket opened on this worker: there is no one to send to.
        let Some(metrics) = self.metrics.clone() else { return };
        // The worker alone writes its counters, so the refusals during the
        // delivery are the difference.
        let refused = metrics.sends_refused.get();
        let tried = self.groups.deliver(conns, delivery);
        metrics.shared_out(&delivery.frame, tried - (metrics.sends_refused.get() - refused));
    }
}

/// Notes that the socket has room `room` of stream `epoch` up to `offset`.
pub(crate) fn set_position(data: &mut SocketData, room: &str, epoch: Arc<str>, offset: u64) {
    let positions = &mut data.state().positions;
    match positions.iter_mut().find(|(r, ..)| &**r == room) {
        Some(position) => (position.1, position.2) = (epoch, offset),
        None => positions.push((room.into(), epoch, offset)),
    }
}

/// Completes a server-to-client call with `result`, counted by its outcome.
pub(crate) fn settle_call(metrics: &WorkerMetrics, done: Done, result: CallResult) {
    let outcome = match &result {
        Ok(_) => "answered",
        Err(CallError::Timeout) => "timeout",
        Err(CallError::NotRegistered(_)) => "not_registered",
        Err(CallError::ExecutionFailed(_)) => "execution_failed",
        Err(CallError::Disconnected) => "disconnected",
        Err(CallError::TooMany) => "too_many",
        Err(CallError::Remote { .. }) => "remote_error",
    };
    metrics.call_settled(outcome);
    done(result);
}
