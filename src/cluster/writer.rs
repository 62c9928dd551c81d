//! The link's writing thread: it owns the writing connection, pipelines
//! queued publishes and presence updates, refreshes the heartbeat, replays
//! this node's presence after a lapse, and reconnects with backoff.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Weak;
use std::time::{Duration, Instant};

use redis::{Commands, Connection, RedisResult};

use super::link::{eval, gone, node_key, LinkState, ThreadCtx};
use super::outage::{backoff, Outage};
use super::sessions::{orphan, Record, HOLD, ROUTE};

/// Work for the writing thread.
pub(super) enum WriterCommand {
    Publish {
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
    },
    /// A socket with a record is gone: its session kept that long, or not.
    EndRecord {
        id: u64,
        kept: Option<Duration>,
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
}

impl Writer {
    /// A writer for `link`, with no presence recorded yet.
    pub(super) fn new(link: Weak<LinkState>) -> Writer {
        Writer { link, presence: HashMap::new(), records: HashMap::new(), peers: BTreeSet::new() }
    }

    /// The thread's loop, until the link stops or is dropped.
    pub(super) fn run(mut self, queue: Receiver<WriterCommand>, (client, options, node): ThreadCtx) {
        let p = options.prefix.clone();
        let beat_every = options.heartbeat_ttl / 3;
        let mut conn: Option<Connection> = None;
        let mut outage = Outage::new("publisher");
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
                            self.flush(&mut conn, &mut batch, &p, &node);
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
                    self.drop_publishes(&mut batch);
                    continue;
                }
                match client.get_connection_with_timeout(options.query_timeout) {
                    Ok(c) => {
                        if let Some(inner) = self.link.upgrade() {
                            inner.writer_connections.fetch_add(1, Ordering::Relaxed);
                        }
                        let _ = c.set_read_timeout(Some(options.query_timeout));
                        let _ = c.set_write_timeout(Some(options.query_timeout));
                        conn = Some(c);
                        next_beat = Instant::now();
                        fresh = true;
                    }
                    Err(e) => {
                        outage.failed(&e);
                        self.drop_publishes(&mut batch);
                        wait = backoff(wait, options.max_backoff);
                        next_beat = Instant::now() + wait;
                        continue;
                    }
                }
            }
            if Instant::now() >= next_beat {
                let ttl = options.heartbeat_ttl.as_millis() as u64;
                let beat = conn.as_mut().map(|c| {
                    let (lapsed, live) = heartbeat(c, &p, &node, ttl)?;
                    self.membership(live, &node);
                    // Redis may have lost this node's presence (a restart, or
                    // survivors that took it for dead): write it again.
                    if lapsed || fresh {
                        self.replay(c, &p, &node)?;
                    }
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
            self.flush(&mut conn, &mut batch, &p, &node);
            if conn.is_none() {
                next_beat = Instant::now(); // Lost while writing: reconnect at once, then back off.
            }
        }
        self.leave(conn, &p, &node);
    }

    /// Takes the publishes out of the batch (written, or lost in an outage);
    /// presence is kept (and replayed).
    fn drop_publishes(&mut self, batch: &mut Vec<WriterCommand>) {
        let before = batch.len();
        batch.retain(|w| {
            !matches!(
                w,
                WriterCommand::Publish { .. } | WriterCommand::PublishRouted { .. } | WriterCommand::HoldDirect { .. }
            )
        });
        if let Some(inner) = self.link.upgrade() {
            inner.queued.fetch_sub(before - batch.len(), Ordering::Relaxed);
        }
        self.remember(batch);
    }

    /// Applies presence writes to the state kept for replays.
    fn remember(&mut self, batch: &mut Vec<WriterCommand>) {
        for write in batch.drain(..) {
            self.apply_record(&write);
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
                WriterCommand::Publish { .. }
                | WriterCommand::PublishRouted { .. }
                | WriterCommand::HoldDirect { .. }
                | WriterCommand::AddRecord { .. }
                | WriterCommand::RecordJoin { .. }
                | WriterCommand::RecordStore { .. }
                | WriterCommand::EndRecord { .. }
                | WriterCommand::Stop => {}
            }
        }
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
            _ => {}
        }
    }

    fn flush(&mut self, conn: &mut Option<Connection>, batch: &mut Vec<WriterCommand>, p: &str, node: &str) {
        if batch.is_empty() {
            return;
        }
        let Some(c) = conn.as_mut() else { return self.drop_publishes(batch) };
        let mut pipe = redis::pipe();
        let mut left_users = Vec::new();
        for write in batch.iter() {
            match write {
                WriterCommand::Publish { channel, payload } => {
                    pipe.publish(channel, payload.as_slice()).ignore();
                }
                WriterCommand::PublishRouted { alias, node, payload } => {
                    let routed =
                        eval(ROUTE, &[alias]).arg(format!("{p}:node:")).arg(node).arg(payload.as_slice()).clone();
                    pipe.add_command(routed).ignore();
                }
                WriterCommand::HoldDirect { record, list, envelope, cap } => {
                    pipe.add_command(eval(HOLD, &[record, list]).arg(envelope.as_slice()).arg(*cap).clone()).ignore();
                }
                WriterCommand::AddRecord { record, .. } => record.write(&mut pipe, p, node),
                WriterCommand::RecordJoin { id, group, position } => {
                    if let Some(record) = self.records.get_mut(id) {
                        let (field, value) = record.join(group, position.as_ref());
                        pipe.hset(&record.key, field, value).ignore();
                    }
                }
                WriterCommand::RecordStore { id, key, value } => {
                    if let Some(record) = self.records.get_mut(id) {
                        match record.store(key, value.as_deref()) {
                            (field, Some(value)) => pipe.hset(&record.key, field, value).ignore(),
                            (field, None) => pipe.hdel(&record.key, field).ignore(),
                        };
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
                    }
                    if let Some(user) = user {
                        pipe.srem(node_key(p, node, &format!("u:{user}")), id).ignore();
                        left_users.push(user);
                    }
                }
                WriterCommand::Join { group, id } => {
                    pipe.sadd(node_key(p, node, &format!("g:{group}")), id).ignore();
                }
                WriterCommand::Leave { group, id } => {
                    pipe.srem(node_key(p, node, &format!("g:{group}")), id).ignore();
                    if let Some(record) = self.records.get_mut(id) {
                        let field = record.leave(group);
                        pipe.hdel(&record.key, field).ignore();
                    }
                }
                WriterCommand::AddUser { user, id } => {
                    pipe.sadd(node_key(p, node, &format!("u:{user}")), id).ignore();
                    pipe.sadd(node_key(p, node, "users"), user).ignore();
                }
                WriterCommand::Stop => {}
            }
            self.apply_record(write);
        }
        // A user with no connection left on this node is no longer listed here
        // (the writes above ran first, in order, on this one connection).
        for user in left_users {
            // Both keys are the node's: one slot (see `node_key`).
            let keys = [&node_key(p, node, &format!("u:{user}"))[..], &node_key(p, node, "users")];
            pipe.add_command(eval(UNLIST, &keys).arg(user).clone()).ignore();
        }
        let result: RedisResult<()> = pipe.query(c);
        if result.is_err() {
            *conn = None;
        }
        self.drop_publishes(batch);
    }

    /// Writes this node's presence again, replacing whatever Redis has of it.
    fn replay(&self, c: &mut Connection, p: &str, node: &str) -> RedisResult<()> {
        let stale = node_keys(c, p, node)?;
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
        for record in self.records.values() {
            record.write(&mut pipe, p, node);
        }
        pipe.query(c)
    }

    /// Logs the nodes that joined or left since the last heartbeat.
    fn membership(&mut self, live: Vec<String>, node: &str) {
        let live: BTreeSet<String> = live.into_iter().filter(|other| other != node).collect();
        for joined in live.difference(&self.peers) {
            tracing::info!(node, peer = %joined, "cluster node joined");
        }
        for left in self.peers.difference(&live) {
            tracing::info!(node, peer = %left, "cluster node left");
        }
        self.peers = live;
    }

    /// Removes this node from the cluster on a clean stop.
    fn leave(&self, conn: Option<Connection>, p: &str, node: &str) {
        if let Some(mut c) = conn {
            let _: RedisResult<()> = c.zrem(format!("{p}:nodes"), node);
            let _ = delete_node_keys(&mut c, p, node);
        }
    }
}

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
fn heartbeat(c: &mut Connection, p: &str, node: &str, ttl_ms: u64) -> RedisResult<(bool, Vec<String>)> {
    let nodes = format!("{p}:nodes");
    let (lapsed, dead, live): (u8, Vec<String>, Vec<String>) = eval(BEAT, &[&nodes]).arg(node).arg(ttl_ms).query(c)?;
    for dead in dead {
        // Its sockets' sessions wait for a resume elsewhere, for their window.
        orphan(c, p, &dead)?;
        delete_node_keys(c, p, &dead)?;
        let _: () = c.zrem(&nodes, &dead)?;
    }
    Ok((lapsed == 1, live))
}

/// Every presence key of `node`: one slot (see `node_key`; braces are no
/// pattern characters to `SCAN MATCH`).
fn node_keys(c: &mut Connection, p: &str, node: &str) -> RedisResult<Vec<String>> {
    c.scan_match(node_key(p, node, "*"))?.collect()
}

fn delete_node_keys(c: &mut Connection, p: &str, node: &str) -> RedisResult<()> {
    let keys = node_keys(c, p, node)?;
    if !keys.is_empty() {
        let _: () = c.del(keys)?;
    }
    Ok(())
}
