//! The link's writing thread: it owns the writing connection, pipelines
//! queued publishes and presence updates, refreshes the heartbeat, replays
//! this node's presence after a lapse, and reconnects with backoff.
//! Besides the presence sets, it keeps each node's index of its groups
//! with their sizes (`n:NODE:groups`), written with every join and leave.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::Ordering;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::Weak;
use std::time::{Duration, Instant};

use redis::{Commands, RedisResult};

use super::routed::RedisConn;

use super::ids::{self, IdClaim};
use super::link::{eval, gone, node_key, LinkState, ThreadCtx};
use super::outage::{backoff, Outage};
use super::sessions::{orphan, rewrite, Record, HOLD, ROUTE};
use crate::app::ClusterEvent;

/// Work for the writing thread.
pub(super) enum WriterCommand {
    Publish {
        channel: String,
        payload: Vec<u8>,
    },
    /// A publish sent once the writes queued before it are done: on a
    /// Redis Cluster a batch runs master by master, so a publish could
    /// otherwise reach its readers before a write of another master that
    /// they are to find (a resumed socket's alias, say).
    PublishAfterWrites {
        channel: String,
        payload: Vec<u8>,
    },
    AddSocket(u64),
    RemoveSocket {
        id: u64,
        groups: Vec<String>,
        user: Option<String>,
    },
    Join {
        group: String,
        id: u64,
    },
    Leave {
        group: String,
        id: u64,
    },
    AddUser {
        user: String,
        id: u64,
    },
    /// A connected socket's user changed: attached, switched or detached.
    SetUser {
        id: u64,
        user: Option<String>,
        previous: Option<String>,
    },
    /// A user whose devices Redis may count wrong (see `super::users`).
    SyncDevices(String),
    /// Told once the writes queued before it are done (or kept for the
    /// replay, in an outage): see [`RedisLink::written`](super::RedisLink::written).
    Written(mpsc::SyncSender<()>),
    /// A message for a socket by public id, to the node its alias names
    /// (else the id's own): `alias` is the alias's key, `node` the id's node.
    PublishRouted {
        alias: String,
        node: String,
        payload: Vec<u8>,
    },
    /// A socket's session record (see [`super::sessions`]).
    AddRecord {
        id: u64,
        record: Record,
    },
    /// A group of a socket with a record, and the room's position.
    RecordJoin {
        id: u64,
        group: String,
        position: Option<(String, u64)>,
    },
    /// A shared value of a socket with a record (JSON text), or its removal.
    RecordStore {
        id: u64,
        key: String,
        value: Option<String>,
    },
    /// A direct message for an away socket's record (see [`super::sessions::HOLD`]).
    HoldDirect {
        record: String,
        list: String,
        envelope: Vec<u8>,
        cap: usize,
        /// Its number among the socket's (the record keeps the last).
        number: u64,
    },
    /// A socket with a record is gone: its session kept that long, or not.
    EndRecord {
        id: u64,
        kept: Option<Duration>,
    },
    /// A generated id given to a socket of this node (see [`super::ids`]):
    /// it takes the id from whoever has it.
    ClaimId(IdClaim),
    /// A socket of this node given a generated id is gone: the id's key is
    /// freed if claim `token` still has it.
    ReleaseId {
        key: String,
        token: u64,
    },
    Stop,
}

/// The writing thread: publishes, presence updates and the heartbeat.
pub(super) struct Writer {
    link: Weak<LinkState>,
    /// This node's presence, socket by socket (`g:GROUP`, `u:USER`), to write
    /// again after a reconnect or a lapsed heartbeat.
    presence: HashMap<u64, Vec<String>>,
    /// This node's sockets' session records, to write again likewise.
    records: HashMap<u64, Record>,
    /// The other live nodes at the last heartbeat, to log who joins and leaves.
    peers: BTreeSet<String>,
    /// Users whose devices on this node Redis is to count again, at the next heartbeat.
    unsynced: BTreeSet<String>,
    /// Whether a heartbeat went through yet: the peers the first one finds
    /// are logged, not announced to the app.
    beaten: bool,
    /// Until when, after a (re)connection, a node missing from the
    /// heartbeats is not taken for gone: after Redis restarted empty, every
    /// node's heartbeat takes up to a period to come back.
    settling_until: Option<Instant>,
    /// Publishing to a Redis Cluster: `SPUBLISH` (sharded pub/sub).
    sharded: bool,
    /// This node's sockets' generated ids, by key: the claim, and whether
    /// it was written (else it still takes the id when written, after an
    /// outage; one written is written again after a lapse only if nobody
    /// took the id meanwhile).
    ids: HashMap<String, (IdClaim, bool)>,
    /// Releases of ids an outage kept from Redis, by key and claim: written
    /// when Redis is back, before the claims (one per socket with an id
    /// that ended meanwhile: a claim may have reached Redis even when its
    /// write failed, so none is left out).
    unreleased: Vec<(String, u64)>,
}

impl Writer {
    /// A writer for `link`, with no presence recorded yet.
    pub(super) fn new(link: Weak<LinkState>) -> Writer {
        Writer {
            link,
            presence: HashMap::new(),
            records: HashMap::new(),
            peers: BTreeSet::new(),
            unsynced: BTreeSet::new(),
            beaten: false,
            settling_until: None,
            sharded: false,
            ids: HashMap::new(),
            unreleased: Vec::new(),
        }
    }

    /// The thread's loop, until the link stops or is dropped.
    pub(super) fn run(mut self, queue: Receiver<WriterCommand>, (connector, options, node): ThreadCtx) {
        let p = options.prefix.clone();
        self.sharded = connector.is_cluster();
        let beat_every = options.heartbeat_ttl / 3;
        let mut conn: Option<RedisConn> = None;
        // The master's generation `conn` was opened under (see connect.rs).
        let mut generation = 0;
        let mut outage = Outage::watched("publisher", &node, &self.link);
        let mut wait = Duration::ZERO;
        let mut next_beat = Instant::now();
        let mut fresh = false;
        let mut batch: Vec<WriterCommand> = Vec::new();
        loop {
            let timeout = next_beat.saturating_duration_since(Instant::now());
            match queue.recv_timeout(timeout) {
                Ok(WriterCommand::Stop) | Err(RecvTimeoutError::Disconnected) => break,
                Ok(write) => {
                    batch.push(write);
                    // Pipeline everything already queued with it.
                    while let Ok(write) = queue.try_recv() {
                        if matches!(write, WriterCommand::Stop) {
                            let _ = self.flush(&mut conn, &mut batch, &p, &node);
                            return self.leave(conn, &p, &node);
                        }
                        batch.push(write);
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
            }
            if gone(&self.link) {
                break;
            }
            if conn.is_none() {
                // Waiting out the backoff: what comes meanwhile is not sent.
                if Instant::now() < next_beat {
                    self.drop_publishes(&mut batch, true);
                    continue;
                }
                match connector.open(options.query_timeout) {
                    Ok((c, opened_under)) => {
                        if let Some(inner) = self.link.upgrade() {
                            inner.writer_connections.fetch_add(1, Ordering::Relaxed);
                        }
                        conn = Some(c);
                        generation = opened_under;
                        next_beat = Instant::now();
                        fresh = true;
                    }
                    Err(e) => {
                        outage.failed(&e);
                        self.drop_publishes(&mut batch, true);
                        wait = backoff(wait, options.max_backoff);
                        next_beat = Instant::now() + wait;
                        continue;
                    }
                }
            }
            if Instant::now() >= next_beat {
                // A master demoted alive takes writes until reconfigured:
                // ask the sentinels (if any) whether it is still the master.
                connector.check_master(options.query_timeout);
                if generation != connector.generation() {
                    outage.failed(&"the Redis master moved");
                    conn = None;
                    continue;
                }
                let ttl = options.heartbeat_ttl.as_millis() as u64;
                let beat = conn.as_mut().map(|c| {
                    let (lapsed, live) = heartbeat(c, &p, &node, ttl)?;
                    // A lapse (Redis flushed, say) loses the others' heartbeats too, for a period.
                    self.membership(live.clone(), &node, (lapsed || fresh).then_some(options.heartbeat_ttl));
                    // Redis may have lost this node's presence (a restart, or
                    // survivors that took it for dead): write it again.
                    if lapsed || fresh {
                        self.replay(c, &p, &node)?;
                        self.replay_ids(c, &p, &node, &live)?;
                    }
                    self.sync_devices(c, &p, &node)?;
                    Ok::<_, redis::RedisError>(())
                });
                match beat {
                    Some(Ok(())) => {
                        outage.recovered();
                        wait = Duration::ZERO;
                        next_beat = Instant::now() + beat_every;
                        fresh = false;
                    }
                    Some(Err(e)) => {
                        // Connected but refused (Redis still loading, say): back off too.
                        outage.failed(&e);
                        conn = None;
                        wait = backoff(wait, options.max_backoff);
                        next_beat = Instant::now() + wait;
                        continue;
                    }
                    None => continue,
                }
            }
            if let Some(e) = self.flush(&mut conn, &mut batch, &p, &node) {
                // Lost while writing, or READONLY from a master demoted in a
                // failover: the outage starts now.
                outage.failed(&e);
            }
            if conn.is_none() {
                next_beat = Instant::now(); // Lost while writing: reconnect at once, then back off.
            }
        }
        self.leave(conn, &p, &node);
    }

    /// Takes the publishes out of the batch (written, or `lost` in an
    /// outage: counted with the dropped ones); presence is kept (and replayed).
    fn drop_publishes(&mut self, batch: &mut Vec<WriterCommand>, lost: bool) {
        if lost {
            // Written when Redis is back (see `replay_ids`).
            for write in batch.iter() {
                if let WriterCommand::ReleaseId { key, token } = write {
                    self.unreleased.push((key.clone(), *token));
                }
            }
        }
        let before = batch.len();
        batch.retain(|w| {
            !matches!(
                w,
                WriterCommand::Publish { .. }
                    | WriterCommand::PublishAfterWrites { .. }
                    | WriterCommand::PublishRouted { .. }
                    | WriterCommand::HoldDirect { .. }
            )
        });
        if let Some(inner) = self.link.upgrade() {
            inner.queued.fetch_sub(before - batch.len(), Ordering::Relaxed);
            if lost {
                inner.dropped.fetch_add((before - batch.len()) as u64, Ordering::Relaxed);
            }
        }
        self.remember(batch);
    }

    /// Applies presence writes to the state kept for replays.
    fn remember(&mut self, batch: &mut Vec<WriterCommand>) {
        for write in batch.drain(..) {
            self.apply_record(&write);
            self.note_id(&write);
            match write {
                WriterCommand::AddSocket(id) => {
                    self.presence.entry(id).or_default();
                }
                WriterCommand::Join { group, id } => self.presence.entry(id).or_default().push(format!("g:{group}")),
                WriterCommand::AddUser { user, id } => self.presence.entry(id).or_default().push(format!("u:{user}")),
                WriterCommand::Leave { group, id } => {
                    if let Some(sets) = self.presence.get_mut(&id) {
                        sets.retain(|set| set.strip_prefix("g:") != Some(&group));
                    }
                }
                WriterCommand::RemoveSocket { id, .. } => {
                    self.presence.remove(&id);
                }
                WriterCommand::SyncDevices(user) => {
                    self.unsynced.insert(user);
                }
                WriterCommand::Written(told) => {
                    let _ = told.try_send(());
                }
                WriterCommand::SetUser { id, user, previous } => {
                    let sets = self.presence.entry(id).or_default();
                    if let Some(previous) = previous {
                        sets.retain(|set| set.strip_prefix("u:") != Some(&previous));
                    }
                    sets.extend(user.map(|user| format!("u:{user}")));
                }
                WriterCommand::Publish { .. }
                | WriterCommand::PublishAfterWrites { .. }
                | WriterCommand::PublishRouted { .. }
                | WriterCommand::HoldDirect { .. }
                | WriterCommand::AddRecord { .. }
                | WriterCommand::RecordJoin { .. }
                | WriterCommand::RecordStore { .. }
                | WriterCommand::EndRecord { .. }
                | WriterCommand::ClaimId(_)
                | WriterCommand::ReleaseId { .. }
                | WriterCommand::Stop => {}
            }
        }
    }

    /// Applies a claim or a release of a generated id to the ids kept for
    /// replays; applying one twice changes nothing (claims are numbered:
    /// a release takes away its own claim only, a claim already noted stays
    /// as it is, written or not).
    fn note_id(&mut self, write: &WriterCommand) {
        match write {
            WriterCommand::ClaimId(claim)
                if !self.ids.get(&claim.key).is_some_and(|(kept, _)| kept.token == claim.token) =>
            {
                self.ids.insert(claim.key.clone(), (claim.clone(), false));
            }
            WriterCommand::ReleaseId { key, token }
                if self.ids.get(key).is_some_and(|(kept, _)| kept.token == *token) =>
            {
                self.ids.remove(key);
            }
            _ => {}
        }
    }

    /// Writes this node's generated ids again (after a reconnect or a
    /// lapse): first the releases an outage held back, then every claim,
    /// listed under the node. A claim written before takes its id back
    /// only if it is free, still this node's or held by a node not in
    /// `live`; else the socket loses it (the app is told, as by the node
    /// that has it). A claim never written takes its id from whoever has it.
    fn replay_ids(&mut self, c: &mut RedisConn, p: &str, node: &str, live: &[String]) -> RedisResult<()> {
        if self.ids.is_empty() && self.unreleased.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        for (key, token) in &self.unreleased {
            pipe.add_command(ids::release(key, node, *token)).ignore();
        }
        let mut claims = Vec::new();
        for (claim, written) in self.ids.values() {
            pipe.add_command(claim.claim(node, !written, live));
            pipe.sadd(node_key(p, node, "ids"), &claim.key).ignore();
            claims.push(claim.clone());
        }
        let answers: Vec<redis::Value> = pipe.query(c)?;
        self.unreleased.clear();
        self.settle_claims(c, p, node, &claims, &answers)
    }

    /// Reads what Redis answered to `claims` (one answer each, in order):
    /// a claim that took its id is written, and the other node whose
    /// socket had the id is told; one that did not loses its id here, and
    /// the app is told as if by the node that keeps it.
    fn settle_claims(
        &mut self,
        c: &mut RedisConn,
        p: &str,
        node: &str,
        claims: &[IdClaim],
        answers: &[redis::Value],
    ) -> RedisResult<()> {
        let here = u64::from_str_radix(node, 16).unwrap_or(0);
        let mut tell = redis::pipe();
        for (claim, answer) in claims.iter().zip(answers) {
            let (taken, other) = ids::read_claim(answer)?;
            let message = match (taken, other) {
                (true, Some((from, token, _))) if from != here => {
                    ids::taken(p, self.sharded, here, from, &claim.id, token)
                }
                (true, _) => None,
                (false, holder) => {
                    self.ids.remove(&claim.key);
                    let from = holder.map_or(here, |(from, ..)| from);
                    ids::taken(p, self.sharded, from, here, &claim.id, claim.token)
                }
            };
            if taken {
                if let Some((kept, written)) = self.ids.get_mut(&claim.key) {
                    *written |= kept.token == claim.token;
                }
            }
            if let Some(message) = message {
                tell.add_command(message).ignore();
            }
        }
        if !tell.is_empty() {
            let () = tell.query(c)?;
        }
        Ok(())
    }

    /// Applies a write to the records kept for replays. Applying one twice
    /// changes nothing (a flush applies them as it writes, then the batch
    /// is remembered): connection ids are not reused.
    fn apply_record(&mut self, write: &WriterCommand) {
        match write {
            WriterCommand::AddRecord { id, record } => {
                self.records.entry(*id).or_insert_with(|| record.clone());
            }
            WriterCommand::RecordJoin { id, group, position } => {
                if let Some(record) = self.records.get_mut(id) {
                    record.join(group, position.as_ref());
                }
            }
            WriterCommand::Leave { group, id } => {
                if let Some(record) = self.records.get_mut(id) {
                    record.leave(group);
                }
            }
            WriterCommand::RecordStore { id, key, value } => {
                if let Some(record) = self.records.get_mut(id) {
                    record.store(key, value.as_deref());
                }
            }
            WriterCommand::EndRecord { id, .. } => {
                self.records.remove(id);
            }
            WriterCommand::SetUser { id, user, .. } => {
                if let Some(record) = self.records.get_mut(id) {
                    record.set_user(user.as_deref());
                }
            }
            _ => {}
        }
    }

    /// Writes the batch; the error that closed the connection, if one did.
    fn flush(
        &mut self,
        conn: &mut Option<RedisConn>,
        batch: &mut Vec<WriterCommand>,
        p: &str,
        node: &str,
    ) -> Option<redis::RedisError> {
        if batch.is_empty() {
            return None;
        }
        let Some(c) = conn.as_mut() else {
            self.drop_publishes(batch, true);
            return None;
        };
        let publish = if self.sharded { "SPUBLISH" } else { "PUBLISH" };
        // On a Redis Cluster, a message by public id goes where its alias
        // says, read first: the alias and the node's channel are of two
        // slots, which no script can touch together.
        let mut routes = match self.aliases(c, batch) {
            Ok(routes) => routes.into_iter(),
            Err(e) => {
                *conn = None;
                self.drop_publishes(batch, true);
                return Some(e);
            }
        };
        let mut pipe = redis::pipe();
        let mut left_users = Vec::new();
        // The generated ids claimed in this batch, in order: their answers
        // are the pipeline's only ones.
        let mut claims = Vec::new();
        let mut after_writes = redis::pipe();
        for write in batch.iter() {
            match write {
                WriterCommand::Publish { channel, payload } => {
                    pipe.cmd(publish).arg(channel).arg(payload.as_slice()).ignore();
                }
                WriterCommand::PublishAfterWrites { channel, payload } => {
                    after_writes.cmd(publish).arg(channel).arg(payload.as_slice()).ignore();
                }
                WriterCommand::PublishRouted { node, payload, .. } if self.sharded => {
                    let to = routes.next().flatten().unwrap_or_else(|| node.clone());
                    pipe.cmd(publish).arg(format!("{p}:node:{to}")).arg(payload.as_slice()).ignore();
                }
                WriterCommand::PublishRouted { alias, node, payload } => {
                    let routed =
                        eval(ROUTE, &[alias]).arg(format!("{p}:node:")).arg(node).arg(payload.as_slice()).clone();
                    pipe.add_command(routed).ignore();
                }
                WriterCommand::HoldDirect { record, list, envelope, cap, number } => {
                    let hold = eval(HOLD, &[record, list]).arg(envelope.as_slice()).arg(*cap).arg(*number).clone();
                    pipe.add_command(hold).ignore();
                }
                WriterCommand::AddRecord { record, .. } => record.write(&mut pipe, p, node),
                WriterCommand::RecordJoin { id, group, position } => {
                    if let Some(record) = self.records.get_mut(id) {
                        let (field, value) = record.join(group, position.as_ref());
                        pipe.add_command(record.field(&field, Some(&value))).ignore();
                    }
                }
                WriterCommand::RecordStore { id, key, value } => {
                    if let Some(record) = self.records.get_mut(id) {
                        let (field, value) = record.store(key, value.as_deref());
                        pipe.add_command(record.field(&field, value.as_deref())).ignore();
                    }
                }
                WriterCommand::EndRecord { id, kept } => {
                    if let Some(record) = self.records.get(id) {
                        record.end(&mut pipe, p, node, *kept);
                    }
                }
                WriterCommand::AddSocket(id) => {
                    pipe.sadd(node_key(p, node, "sockets"), id).ignore();
                }
                WriterCommand::RemoveSocket { id, groups, user } => {
                    pipe.srem(node_key(p, node, "sockets"), id).ignore();
                    for group in groups {
                        pipe.srem(node_key(p, node, &format!("g:{group}")), id).ignore();
                        index_group(&mut pipe, p, node, group);
                    }
                    if let Some(user) = user {
                        pipe.srem(node_key(p, node, &format!("u:{user}")), id).ignore();
                        left_users.push(user);
                    }
                }
                WriterCommand::Join { group, id } => {
                    pipe.sadd(node_key(p, node, &format!("g:{group}")), id).ignore();
                    index_group(&mut pipe, p, node, group);
                }
                WriterCommand::Leave { group, id } => {
                    pipe.srem(node_key(p, node, &format!("g:{group}")), id).ignore();
                    index_group(&mut pipe, p, node, group);
                    if let Some(record) = self.records.get_mut(id) {
                        let field = record.leave(group);
                        pipe.add_command(record.field(&field, None)).ignore();
                    }
                }
                WriterCommand::AddUser { user, id } => {
                    pipe.sadd(node_key(p, node, &format!("u:{user}")), id).ignore();
                    pipe.sadd(node_key(p, node, "users"), user).ignore();
                }
                WriterCommand::SetUser { id, user, previous } => {
                    if let Some(previous) = previous {
                        pipe.srem(node_key(p, node, &format!("u:{previous}")), id).ignore();
                        left_users.push(previous);
                    }
                    if let Some(user) = user {
                        pipe.sadd(node_key(p, node, &format!("u:{user}")), id).ignore();
                        pipe.sadd(node_key(p, node, "users"), user).ignore();
                    }
                    if let Some(record) = self.records.get(id) {
                        pipe.add_command(record.field("user", user.as_deref())).ignore();
                    }
                }
                WriterCommand::ClaimId(claim) => {
                    claims.push(claim.clone());
                    pipe.add_command(claim.claim(node, true, &[]));
                    pipe.sadd(node_key(p, node, "ids"), &claim.key).ignore();
                }
                WriterCommand::ReleaseId { key, token } => {
                    pipe.add_command(ids::release(key, node, *token)).ignore();
                }
                WriterCommand::SyncDevices(_) | WriterCommand::Written(_) | WriterCommand::Stop => {}
            }
            self.apply_record(write);
            self.note_id(write);
            // Listed while this node has a claim of it (a newer socket here may).
            if let WriterCommand::ReleaseId { key, .. } = write {
                if !self.ids.contains_key(key) {
                    pipe.srem(node_key(p, node, "ids"), key).ignore();
                }
            }
        }
        // A user with no connection left on this node is no longer listed here
        // (the writes above ran first, in order, on this one connection).
        for user in left_users {
            // Both keys are the node's: one slot (see `node_key`).
            let keys = [&node_key(p, node, &format!("u:{user}"))[..], &node_key(p, node, "users")];
            pipe.add_command(eval(UNLIST, &keys).arg(user).clone()).ignore();
        }
        // (An empty pipeline is refused: a batch may hold nothing to write
        // now, only what comes after, or devices to count at the beat.)
        let result = if pipe.is_empty() { Ok(Vec::new()) } else { pipe.query::<Vec<redis::Value>>(c) };
        let result = match result {
            Ok(answers) if !after_writes.is_empty() => after_writes.query::<()>(c).map(|()| answers),
            result => result,
        };
        let written = result.is_ok();
        // The batch is written even if telling the nodes that lost ids fails.
        let result = result.and_then(|answers| self.settle_claims(c, p, node, &claims, &answers));
        if result.is_err() {
            *conn = None;
        }
        self.drop_publishes(batch, !written);
        result.err()
    }

    /// On a Redis Cluster, where each message of the batch sent by public
    /// id is to go: the node its alias names, if any (see [`ROUTE`]), in
    /// the batch's order; nothing to read on one Redis (the script reads it).
    fn aliases(&self, c: &mut RedisConn, batch: &[WriterCommand]) -> RedisResult<Vec<Option<String>>> {
        let mut reads = redis::pipe();
        for write in batch {
            if let WriterCommand::PublishRouted { alias, .. } = write {
                reads.get(alias);
            }
        }
        if !self.sharded || reads.is_empty() {
            return Ok(Vec::new());
        }
        reads.query(c)
    }

    /// Makes Redis count the devices of the users noted in `unsynced` as
    /// this node has them now (its presence is up to date with every
    /// change made before they were noted).
    fn sync_devices(&mut self, c: &mut RedisConn, p: &str, node: &str) -> RedisResult<()> {
        if self.unsynced.is_empty() {
            return Ok(());
        }
        let users: Vec<String> = self.unsynced.iter().cloned().collect();
        let mut devices = std::collections::BTreeMap::<&str, Vec<u64>>::new();
        for (id, sets) in &self.presence {
            for user in sets.iter().filter_map(|set| set.strip_prefix("u:")) {
                if self.unsynced.contains(user) {
                    devices.entry(user).or_default().push(*id);
                }
            }
        }
        let mut pipe = redis::pipe();
        super::users::sync_devices(&mut pipe, p, node, &devices, &users);
        let () = pipe.query(c)?;
        self.unsynced.clear();
        Ok(())
    }

    /// Writes this node's presence again, replacing whatever Redis has of
    /// it: the node's own keys in one transaction (one slot: see
    /// `node_key`), so that no query sees them half written; then its users'
    /// device counts and its records, each of a slot of its own. A record
    /// claimed elsewhere meanwhile is not written again but forgotten, and
    /// its socket reported to be closed.
    fn replay(&mut self, c: &mut RedisConn, p: &str, node: &str) -> RedisResult<()> {
        let stale = node_keys(c, p, node)?;
        let listed: Vec<String> = c.smembers(node_key(p, node, "users"))?;
        let mut pipe = redis::pipe();
        pipe.atomic();
        if !stale.is_empty() {
            pipe.del(stale).ignore();
        }
        for (id, sets) in &self.presence {
            pipe.sadd(node_key(p, node, "sockets"), id).ignore();
            for set in sets {
                match set.split_once(':') {
                    Some(("g", group)) => pipe.sadd(node_key(p, node, &format!("g:{group}")), id).ignore(),
                    Some((_, user)) => {
                        pipe.sadd(node_key(p, node, "users"), user).ignore();
                        pipe.sadd(node_key(p, node, &format!("u:{user}")), id).ignore()
                    }
                    None => continue,
                };
            }
        }
        let mut sizes: HashMap<&str, usize> = HashMap::new();
        for group in self.presence.values().flatten().filter_map(|set| set.strip_prefix("g:")) {
            *sizes.entry(group).or_default() += 1;
        }
        for (group, size) in sizes {
            pipe.hset(node_key(p, node, "groups"), group, size).ignore();
        }
        let () = pipe.query(c)?;
        let mut pipe = redis::pipe();
        // Each user's devices across the cluster, as this node has them now.
        let mut devices = std::collections::BTreeMap::<&str, Vec<u64>>::new();
        for (id, sets) in &self.presence {
            for user in sets.iter().filter_map(|set| set.strip_prefix("u:")) {
                devices.entry(user).or_default().push(*id);
            }
        }
        super::users::sync_devices(&mut pipe, p, node, &devices, &listed);
        if !pipe.is_empty() {
            let () = pipe.query(c)?;
        }
        for (id, socket) in rewrite(c, p, node, &self.records)? {
            self.records.remove(&id);
            tracing::info!(node, %socket, "a socket's session was resumed on another node while this one was cut off");
            if let Some(link) = self.link.upgrade() {
                link.health.report(ClusterEvent::SocketResumedElsewhere { socket });
            }
        }
        Ok(())
    }

    /// Logs the nodes that joined or left since the last heartbeat, and
    /// tells the link's health ([`ClusterEvent`]); counts the live nodes.
    /// `reconnected`: this beat is the first on a new connection, or this
    /// node's own heartbeat had lapsed; a missing node is then taken for
    /// gone only if still missing a heartbeat period (this long) later.
    fn membership(&mut self, live: Vec<String>, node: &str, reconnected: Option<Duration>) {
        let now = Instant::now();
        if let Some(ttl) = reconnected {
            self.settling_until = Some(now + ttl);
        }
        let settling = self.settling_until.is_some_and(|until| now < until);
        let announce = std::mem::replace(&mut self.beaten, true);
        let link = self.link.upgrade();
        if let Some(link) = &link {
            link.nodes_alive.store(live.len(), Ordering::Relaxed);
        }
        let report = |event: ClusterEvent| {
            if let (Some(link), true) = (&link, announce) {
                link.health.report(event);
            }
        };
        let id = |peer: &str| u64::from_str_radix(peer, 16).unwrap_or(0);
        let mut live: BTreeSet<String> = live.into_iter().filter(|other| other != node).collect();
        for joined in live.difference(&self.peers) {
            tracing::info!(node, peer = %joined, "cluster node joined");
            report(ClusterEvent::NodeJoined { node: id(joined) });
        }
        for left in self.peers.difference(&live) {
            if settling {
                continue;
            }
            tracing::info!(node, peer = %left, "cluster node left");
            report(ClusterEvent::NodeLeft { node: id(left) });
        }
        if settling {
            live.extend(std::mem::take(&mut self.peers));
        }
        self.peers = live;
    }

    /// Removes this node from the cluster on a clean stop.
    fn leave(&self, conn: Option<RedisConn>, p: &str, node: &str) {
        if let Some(mut c) = conn {
            let _: RedisResult<()> = c.zrem(format!("{p}:nodes"), node);
            // Its devices stop counting; a live peer runs the offline hooks.
            let _ = super::users::orphan_devices(&mut c, p, node, self.peers.iter().next().map(String::as_str));
            // Its sockets' generated ids are free (a newer claim elsewhere stays).
            let _ = ids::orphan(&mut c, p, node);
            let _ = delete_node_keys(&mut c, p, node);
        }
    }
}

/// Keeps the node's index of its groups (`n:NODE:groups`: group → members
/// on the node, for cluster-wide lists of rooms with their sizes) in step
/// with the group's set just written: an emptied group leaves it.
fn index_group(pipe: &mut redis::Pipeline, p: &str, node: &str, group: &str) {
    let keys = [&node_key(p, node, &format!("g:{group}"))[..], &node_key(p, node, "groups")];
    pipe.add_command(eval(INDEX, &keys).arg(group).clone()).ignore();
}

/// Writes a group's size on its node into the node's index of groups.
/// KEYS: the node's set of the group's connections, the node's index (one
/// slot: see `node_key`); ARGV: the group.
pub(super) const INDEX: &str = "local n = redis.call('SCARD', KEYS[1])
    if n == 0 then redis.call('HDEL', KEYS[2], ARGV[1]) else redis.call('HSET', KEYS[2], ARGV[1], n) end
    return 0";

/// Takes a user off a node's list when it has no connection left there.
/// KEYS: the node's set of the user's connections, the node's list of users
/// (one slot: see `node_key`); ARGV: the user.
pub(super) const UNLIST: &str =
    "if redis.call('SCARD', KEYS[1]) == 0 then redis.call('SREM', KEYS[2], ARGV[1]) end return 0";

/// Renews a node's heartbeat by Redis's clock. KEYS: the nodes' sorted set;
/// ARGV: the node, the heartbeat's ttl in ms. Answers whether the node's
/// heartbeat had lapsed (`1`), the dead nodes and the live ones.
pub(super) const BEAT: &str = "local t = redis.call('TIME')
    local now = t[1] * 1000 + math.floor(t[2] / 1000)
    local was = redis.call('ZSCORE', KEYS[1], ARGV[1])
    redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
    local lapsed = 1
    if was and tonumber(was) >= now then lapsed = 0 end
    return {lapsed, redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. now),
        redis.call('ZRANGEBYSCORE', KEYS[1], now, '+inf')}";

/// Refreshes this node's heartbeat (by Redis's clock) and forgets the nodes
/// whose heartbeat died. Whether this node's own heartbeat had lapsed, and
/// the live nodes (this one included).
fn heartbeat(c: &mut RedisConn, p: &str, node: &str, ttl_ms: u64) -> RedisResult<(bool, Vec<String>)> {
    let nodes = format!("{p}:nodes");
    let (lapsed, dead, live): (u8, Vec<String>, Vec<String>) = eval(BEAT, &[&nodes]).arg(node).arg(ttl_ms).query(c)?;
    for dead in dead {
        // Its sockets' sessions wait for a resume elsewhere, for their window.
        orphan(c, p, &dead)?;
        // Its devices stop counting; its users left with none went offline.
        super::users::orphan_devices(c, p, &dead, Some(node))?;
        // Its sockets' generated ids are free.
        ids::orphan(c, p, &dead)?;
        delete_node_keys(c, p, &dead)?;
        let _: () = c.zrem(&nodes, &dead)?;
    }
    Ok((lapsed == 1, live))
}

/// Every presence key of `node`: one slot (see `node_key`; braces are no
/// pattern characters to `SCAN MATCH`).
fn node_keys(c: &mut RedisConn, p: &str, node: &str) -> RedisResult<Vec<String>> {
    c.scan_match(node_key(p, node, "*"))?.collect()
}

fn delete_node_keys(c: &mut RedisConn, p: &str, node: &str) -> RedisResult<()> {
    let keys = node_keys(c, p, node)?;
    if !keys.is_empty() {
        let _: () = c.del(keys)?;
    }
    Ok(())
}
