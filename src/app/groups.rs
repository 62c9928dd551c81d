//! Rooms (`#name`) and tags (`*name`): who is in which group, on every
//! worker, and broadcasts to them.
//!
//! Membership is kept twice: each worker lists its own members of each group
//! (read without locks when it delivers), and the app-wide registry knows
//! every member and how many each worker has (so a broadcast wakes only the
//! workers that have members, and presence queries see everyone).

use std::cell::Cell;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};

use super::locks::{read, write};
use super::socket::{flag, SocketData};
use super::socket_id::SocketId;
use crate::runtime::{ConnId, Conns, SharedFrame};

/// Who a broadcast reaches. The default reaches every socket.
///
/// ```
/// use emitws::app::BroadcastOpts;
/// # let someone = emitws::runtime::ConnId(7);
/// let opts = BroadcastOpts::to("#general").and("*admin").except(someone).include_self();
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BroadcastOpts {
    pub(crate) to: Vec<Box<str>>,
    pub(crate) except: Vec<SocketId>,
    pub(crate) include_self: bool,
    pub(crate) local: bool,
}

impl BroadcastOpts {
    /// Every socket.
    pub fn all() -> BroadcastOpts {
        BroadcastOpts::default()
    }

    /// The members of one room (`#name`) or tag (`*name`).
    pub fn to(group: &str) -> BroadcastOpts {
        BroadcastOpts::all().and(group)
    }

    /// The members of another group too (each socket gets one copy).
    pub fn and(mut self, group: &str) -> BroadcastOpts {
        self.to.push(group.into());
        self
    }

    /// Leaves one socket out (of this node, or of any node by its [`SocketId`]).
    pub fn except(mut self, id: impl Into<SocketId>) -> BroadcastOpts {
        self.except.push(id.into());
        self
    }

    /// From a request: the sender gets it too (it is left out by default).
    pub fn include_self(mut self) -> BroadcastOpts {
        self.include_self = true;
        self
    }

    /// This server only, not the other nodes of a cluster.
    pub fn local(mut self) -> BroadcastOpts {
        self.local = true;
        self
    }

    /// The groups addressed (empty: everyone).
    pub fn groups(&self) -> &[Box<str>] {
        &self.to
    }

    /// The sockets left out.
    pub fn excepted(&self) -> &[SocketId] {
        &self.except
    }
}

/// A broadcast as a worker delivers it: the frame, encoded once, and who gets it.
#[derive(Clone, Debug)]
pub(crate) struct Delivery {
    pub frame: SharedFrame,
    /// For a binary broadcast, the frame `emitws.v1` sockets get instead
    /// of `frame` (PROTOCOL.md §10); `None` for JSON ones, which all get `frame`.
    pub v1: Option<SharedFrame>,
    /// Empty: every socket.
    pub groups: Arc<[Box<str>]>,
    pub except: Arc<[ConnId]>,
}

/// The broadcasts a worker's handlers address to that worker's own sockets,
/// delivered at the end of its turn instead of through its inbox.
#[derive(Debug)]
pub(crate) struct Outbox {
    /// The worker these deliveries are for (`usize::MAX` until it is known).
    pub worker: usize,
    pub deliveries: Vec<Delivery>,
}

impl Outbox {
    pub fn new() -> Outbox {
        Outbox { worker: usize::MAX, deliveries: Vec::new() }
    }
}

#[derive(Debug, Default)]
struct Group {
    members: HashSet<ConnId>,
    per_worker: Vec<u32>,
}

/// The app-wide view of every group.
#[derive(Debug, Default)]
pub(crate) struct GroupRegistry {
    groups: RwLock<HashMap<Box<str>, Group>>,
}

impl GroupRegistry {
    /// Adds `id` to group `name`, unless the group holds `cap` members
    /// already (false then): checked and added under one lock, so that
    /// sockets of several workers joining at once never go over the cap.
    pub fn join(&self, name: &str, id: ConnId, workers: usize, cap: Option<usize>) -> bool {
        let mut groups = write(&self.groups);
        let full = |group: &Group| cap.is_some_and(|cap| group.members.len() >= cap && !group.members.contains(&id));
        if groups.get(name).is_some_and(full) {
            return false;
        }
        let group = groups.entry(name.into()).or_default();
        if group.members.insert(id) {
            group.per_worker.resize(workers.max(id.worker() + 1), 0);
            group.per_worker[id.worker()] += 1;
        }
        true
    }

    pub fn leave(&self, name: &str, id: ConnId) {
        let mut groups = write(&self.groups);
        let Some(group) = groups.get_mut(name) else { return };
        if group.members.remove(&id) {
            group.per_worker[id.worker()] -= 1;
        }
        if group.members.is_empty() {
            groups.remove(name);
        }
    }

    /// Marks the workers holding members of any of `names`.
    pub fn workers_for(&self, names: &[Box<str>], workers: &mut [bool]) {
        let groups = read(&self.groups);
        for group in names.iter().filter_map(|name| groups.get(name)) {
            for (worker, count) in group.per_worker.iter().enumerate() {
                if *count > 0 && worker < workers.len() {
                    workers[worker] = true;
                }
            }
        }
    }

    /// Rooms (not tags) with members, and their members summed.
    pub fn room_counts(&self) -> (u64, u64) {
        let groups = read(&self.groups);
        let rooms = groups.iter().filter(|(name, group)| name.starts_with('#') && !group.members.is_empty());
        rooms.fold((0, 0), |(count, members), (_, group)| (count + 1, members + group.members.len() as u64))
    }

    pub fn members(&self, name: &str) -> Vec<ConnId> {
        let groups = read(&self.groups);
        let mut members: Vec<ConnId> =
            groups.get(name).map(|g| g.members.iter().copied().collect()).unwrap_or_default();
        members.sort();
        members
    }

    pub fn size(&self, name: &str) -> usize {
        read(&self.groups).get(name).map_or(0, |g| g.members.len())
    }

    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = read(&self.groups).keys().map(|k| k.to_string()).collect();
        names.sort();
        names
    }
}

impl super::AppHandle {
    /// The member cap of `group` ([`App::room_cap`](super::App::room_cap)), if it has one.
    pub(crate) fn room_cap(&self, group: &str) -> Option<usize> {
        let caps = &self.0.setup.room_caps;
        caps.iter().find(|(pattern, _)| pattern.matches(group)).map(|(_, cap)| *cap)
    }
}

/// One worker's members of each group.
#[derive(Debug, Default)]
pub(crate) struct WorkerGroups {
    members: HashMap<Box<str>, Vec<ConnId>>,
    /// Reused to merge several groups' members.
    scratch: Vec<ConnId>,
}

impl WorkerGroups {
    pub fn join(&mut self, name: &str, id: ConnId) {
        self.members.entry(name.into()).or_default().push(id);
    }

    pub fn leave(&mut self, name: &str, id: ConnId) {
        let Some(list) = self.members.get_mut(name) else { return };
        if let Some(at) = list.iter().position(|m| *m == id) {
            list.swap_remove(at);
        }
        if list.is_empty() {
            self.members.remove(name);
        }
    }

    /// Sends a delivery to this worker's sockets it addresses; returns how
    /// many sends it made (refused ones included: the caller takes those off).
    pub fn deliver(&mut self, conns: &mut Conns<'_, SocketData>, delivery: &Delivery) -> u64 {
        // Chosen once, not per socket (callgrind: 9 instructions per
        // delivery): a JSON broadcast's one frame, or a binary one's frame
        // for `emitws.v2` sockets and its `v1` frame for the others.
        match &delivery.v1 {
            None => self.deliver_frames(conns, delivery, |_| &delivery.frame),
            Some(v1) => self.deliver_frames(conns, delivery, |socket| match socket.has(flag::V2) {
                true => &delivery.frame,
                false => v1,
            }),
        }
    }

    /// [`deliver`](Self::deliver), each socket getting `frame_for` it.
    fn deliver_frames<'d>(
        &mut self,
        conns: &mut Conns<'_, SocketData>,
        delivery: &'d Delivery,
        frame_for: impl Fn(&SocketData) -> &'d SharedFrame,
    ) -> u64 {
        let except = &delivery.except;
        // The sockets passed over are counted (rarely), not those sent to: a
        // count in the per-socket loop cost 5 to 10 instructions per delivery
        // under callgrind.
        let skipped = Cell::new(0);
        let skip = || skipped.set(skipped.get() + 1);
        let send = |conns: &mut Conns<'_, SocketData>, id: ConnId| match conns.get(id) {
            Some(mut conn) if !conn.data().has(flag::UNAUTHED) => {
                let _ = conn.queue_shared(frame_for(conn.data()));
            }
            _ => skip(),
        };
        let addressed = match &delivery.groups[..] {
            [] => {
                let mut sent = 0;
                conns.for_each(|conn| {
                    if !conn.data().has(flag::UNAUTHED) && !except.contains(&conn.id()) {
                        let _ = conn.queue_shared(frame_for(conn.data()));
                        sent += 1;
                    }
                });
                return sent;
            }
            [one] => {
                let members = self.members.get(one).map_or(&[][..], |members| &members[..]);
                for &id in members {
                    match except.contains(&id) {
                        true => skip(),
                        false => send(conns, id),
                    }
                }
                members.len()
            }
            several => {
                let mut ids = std::mem::take(&mut self.scratch);
                ids.clear();
                for name in several {
                    ids.extend(self.members.get(name).into_iter().flatten());
                }
                ids.sort_unstable();
                ids.dedup();
                for &id in &ids {
                    match except.contains(&id) {
                        true => skip(),
                        false => send(conns, id),
                    }
                }
                let addressed = ids.len();
                self.scratch = ids;
                addressed
            }
        };
        addressed as u64 - skipped.get()
    }
}
