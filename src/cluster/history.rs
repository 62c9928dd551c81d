//! Room history in Redis (PROTOCOL.md §13, "Across a cluster"): every
//! broadcast to a room with history is numbered, kept and published by one
//! Lua script, so a room's offsets and epoch are the cluster's; recoveries
//! read the kept broadcasts back, one read of a room per batch.
//!
//! Keys, per room (the `{room}` hash tag keeps both on one Redis Cluster
//! slot): `P:h:{ROOM}:meta`, a hash of the latest offset (`seq`) and the
//! `epoch`; `P:h:{ROOM}:stream`, a stream whose entry `OFFSET-1` holds the
//! frame as delivered (`f`), the sockets it left out (`x`, JSON
//! `[[node,conn],…]`) and when it was kept (`t`, Redis's clock in ms). Both
//! expire a ttl after the room's latest broadcast: the next one then starts
//! a new epoch at offset 1.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use redis::{Cmd, RedisResult, Value};

use super::routed::RedisConn;
use sha1::{Digest, Sha1};

use super::adapter::lock;
use super::link::{eval, RedisLink};
use super::wire::hex;
use crate::app::{History, SocketId};
use crate::runtime::ConnId;

/// Numbers, keeps and publishes one broadcast. KEYS: meta, stream. ARGV: a
/// fresh epoch (used if the room has none), the envelope without its final
/// `]`, the room as a JSON string, the size, the sockets left out (JSON),
/// the ttl in ms, the channel, the sender line, the publishing command
/// (`PUBLISH`, or `SPUBLISH` to the room's channel on a Redis Cluster: of
/// the keys' slot, see `RedisLink::group_channel`). Numbers are formatted with
/// `%d`: Redis would write a Lua number given as an argument as `1.7e+12`. The frame built here is
/// byte for byte what `envelope::write_room_event` writes (the epoch is hex:
/// nothing to escape), or for a binary broadcast's node-to-node text what
/// `binary_v1::room_event_frames` keeps.
pub(super) const PUBLISH: &str = r#"local seq = redis.call('HINCRBY', KEYS[1], 'seq', 1)
redis.call('HSETNX', KEYS[1], 'epoch', ARGV[1])
local epoch = redis.call('HGET', KEYS[1], 'epoch')
if seq == 1 then redis.call('DEL', KEYS[2]) end
local t = redis.call('TIME')
local ms = string.format('%d', t[1] * 1000 + math.floor(t[2] / 1000))
local offset = string.format('%d', seq)
local frame = ARGV[2] .. ',{"room":' .. ARGV[3] .. ',"offset":' .. offset .. ',"epoch":"' .. epoch .. '"}]'
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[4], offset .. '-1', 'f', frame, 'x', ARGV[5], 't', ms)
redis.call('PEXPIRE', KEYS[1], ARGV[6])
redis.call('PEXPIRE', KEYS[2], ARGV[6])
redis.call(ARGV[9], ARGV[7], ARGV[8] .. '{"h":[' .. ARGV[3] .. ',"' .. epoch .. '",' .. offset .. ',' .. ARGV[5] .. ']}\n' .. frame)
return seq"#;

/// The SHA-1 of [`PUBLISH`], in hex: what `EVALSHA` calls it by.
fn publish_sha() -> &'static str {
    static SHA: OnceLock<String> = OnceLock::new();
    SHA.get_or_init(|| Sha1::digest(PUBLISH).iter().map(|b| format!("{b:02x}")).collect())
}

/// Reads a room's position and its kept broadcasts from an offset on, with
/// Redis's clock. KEYS: meta, stream. ARGV: the first offset wanted.
pub(super) const READ: &str = r#"local meta = redis.call('HMGET', KEYS[1], 'epoch', 'seq')
local t = redis.call('TIME')
local ms = t[1] * 1000 + math.floor(t[2] / 1000)
if not meta[1] then return {false, 0, ms, {}} end
return {meta[1], tonumber(meta[2]), ms, redis.call('XRANGE', KEYS[2], ARGV[1] .. '-0', '+')}"#;

/// Publishes waiting for the background thread beyond which more are
/// dropped (Redis slow or down): memory stays bounded.
const MAX_WAITING: usize = 10_000;

/// The keys of `room`'s history under `prefix`: its meta hash and its
/// stream, one slot (the room is their hash tag).
pub(super) fn keys(prefix: &str, room: &str) -> [String; 2] {
    [format!("{prefix}:h:{{{room}}}:meta"), format!("{prefix}:h:{{{room}}}:stream")]
}

/// What is read of the rooms' streams (the app's `StoredHistory`, not
/// exported by `app`): room, epoch, latest offset, kept broadcasts.
pub(super) type StoredHistory = Vec<(Box<str>, Box<str>, u64, Vec<Kept>)>;

/// One kept broadcast: its offset, frame, the sockets it left out, its age.
type Kept = (u64, Box<str>, Vec<SocketId>, Duration);

/// A room to read, after an offset.
type RoomRead = (Box<str>, u64);

/// A read's caller's answer.
type Done = Box<dyn FnOnce(StoredHistory) + Send>;

/// A node's history work on the link's background thread.
pub(super) struct RedisHistory {
    link: RedisLink,
    /// Publishes waiting for the next publish job (one pipeline), and
    /// whether one is queued.
    publishes: Arc<Mutex<Publishes>>,
    /// Publishes dropped: Redis unreachable, or too many waiting.
    dropped: Arc<AtomicU64>,
    /// Reads waiting for the next read job, and whether one is queued.
    reads: Arc<Mutex<Reads>>,
}

#[derive(Default)]
struct Publishes {
    queued: Vec<Cmd>,
    job_queued: bool,
}

#[derive(Default)]
struct Reads {
    queued: Vec<(Vec<RoomRead>, Done)>,
    job_queued: bool,
}

/// A read job not run yet: dropped unrun (the link stopped), it answers
/// the reads queued for it with nothing, so that nobody is left waiting.
struct Unrun(Option<Arc<Mutex<Reads>>>);

impl Drop for Unrun {
    fn drop(&mut self) {
        let Some(reads) = self.0.take() else { return };
        let queued = {
            let mut reads = lock(&reads);
            reads.job_queued = false;
            std::mem::take(&mut reads.queued)
        };
        for (_, done) in queued {
            done(Vec::new());
        }
    }
}

impl RedisHistory {
    pub(super) fn new(link: RedisLink) -> RedisHistory {
        RedisHistory { link, publishes: Arc::default(), dropped: Arc::default(), reads: Arc::default() }
    }

    /// Adds the publishes that could not be numbered (Redis unreachable, or
    /// too many waiting) to the dropped publishes `metrics` reports (after
    /// the link's own count: see `RedisLink::count_into`).
    pub(super) fn count_into(&self, metrics: &crate::metrics::Metrics) {
        let dropped = Arc::downgrade(&self.dropped);
        metrics.add_gauges(move |snapshot| {
            if let Some(dropped) = dropped.upgrade() {
                snapshot.cluster_dropped += dropped.load(Ordering::Relaxed);
            }
        });
    }

    /// Numbers, keeps and publishes `envelope` (`[0,event,data]`, or a
    /// binary broadcast's `[64,event,{"base64":…}]`) to every
    /// node, this one included, on the background thread; `epoch` starts the
    /// room's stream if it has none. Dropped and counted when Redis cannot be
    /// reached.
    pub(super) fn publish(&self, room: &str, history: &History, epoch: &str, envelope: &[u8], except: &[SocketId]) {
        let node = self.link.node();
        let channel = self.link.is_cluster().then(|| self.link.group_channel(room));
        let prefix = &self.link.options().prefix;
        let Some(cmd) = publish_call(prefix, node, channel, room, history, epoch, envelope, except) else {
            return;
        };
        let mut queue = lock(&self.publishes);
        if queue.queued.len() >= MAX_WAITING {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        queue.queued.push(cmd);
        if queue.job_queued {
            return; // the queued job writes it with the others
        }
        queue.job_queued = true;
        drop(queue);
        let (publishes, dropped) = (self.publishes.clone(), self.dropped.clone());
        self.link.background(Box::new(move |conn| {
            let batch = {
                let mut queue = lock(&publishes);
                queue.job_queued = false;
                std::mem::take(&mut queue.queued)
            };
            let count = batch.len() as u64;
            let mut pipe = redis::pipe();
            // Loaded again with every batch (Redis may have restarted): the
            // script is then hashed once per batch, not sent and hashed per publish.
            pipe.cmd("SCRIPT").arg("LOAD").arg(PUBLISH).ignore();
            for cmd in batch {
                pipe.add_command(cmd).ignore();
            }
            let written = conn.map_err(Clone::clone).and_then(|conn| pipe.query::<()>(conn));
            if written.is_err() {
                // Counted whole, though some may have run (and been delivered) before the error.
                dropped.fetch_add(count, Ordering::Relaxed);
            }
            written
        }));
    }

    /// Reads what Redis keeps of `reads` (room, offset after which to
    /// read) and calls `done` with it on the background thread. Reads that
    /// come while a read job waits are served by that job, with one read
    /// per room from the lowest offset asked.
    pub(super) fn read(&self, reads: Vec<RoomRead>, done: Done) {
        let mut queue = lock(&self.reads);
        queue.queued.push((reads, done));
        if queue.job_queued {
            return;
        }
        queue.job_queued = true;
        drop(queue);
        let (link, mut unrun) = (self.link.clone(), Unrun(Some(self.reads.clone())));
        self.link.background(Box::new(move |conn| {
            let Some(reads) = unrun.0.take() else { return Ok(()) };
            let batch = {
                let mut queue = lock(&reads);
                queue.job_queued = false;
                std::mem::take(&mut queue.queued)
            };
            let conn = match conn {
                Ok(conn) => conn,
                Err(_) => {
                    batch.into_iter().for_each(|(_, done)| done(Vec::new()));
                    return Ok(());
                }
            };
            let mut lowest: HashMap<Box<str>, u64> = HashMap::new();
            for (room, after) in batch.iter().flat_map(|(reads, _)| reads) {
                let low = lowest.entry(room.clone()).or_insert(*after);
                *low = (*low).min(*after);
            }
            let read = read_rooms(conn, &link.options().prefix, &lowest);
            let streams = read.as_ref().ok();
            for (reads, done) in batch {
                let mut answer = StoredHistory::new();
                for (room, after) in &reads {
                    if let Some((epoch, latest, entries)) = streams.and_then(|s| s.get(&**room)) {
                        let entries = entries.iter().filter(|e| e.0 > *after).cloned().collect();
                        answer.push((room.clone(), epoch.clone(), *latest, entries));
                    }
                }
                done(answer);
            }
            read.map(drop)
        }));
    }
}

/// The call of [`PUBLISH`] (by its SHA) that numbers, keeps and publishes
/// `envelope` (`[0,event,data]`) for `room`, sent by `node` under `prefix`,
/// to the history channel, or with sharded pub/sub to `sharded` (the room's
/// channel on a Redis Cluster); None for an envelope that does not end in `]`.
#[allow(clippy::too_many_arguments)]
pub(super) fn publish_call(
    prefix: &str,
    node: u64,
    sharded: Option<String>,
    room: &str,
    history: &History,
    epoch: &str,
    envelope: &[u8],
    except: &[SocketId],
) -> Option<Cmd> {
    let (Some(open), Ok(room_json)) = (envelope.strip_suffix(b"]"), serde_json::to_string(room)) else { return None };
    let except: Vec<(u64, u64)> = except.iter().map(|id| (id.node, id.conn.0)).collect();
    let except = serde_json::to_string(&except).unwrap_or_else(|_| "[]".into());
    let [meta, stream] = keys(prefix, room);
    let mut cmd = redis::cmd("EVALSHA");
    cmd.arg(publish_sha())
        .arg(2)
        .arg(&meta)
        .arg(&stream)
        .arg(epoch)
        .arg(open)
        .arg(room_json)
        .arg(history.size())
        .arg(except)
        .arg(history.ttl().as_millis() as u64)
        .arg(sharded.as_deref().unwrap_or(&format!("{prefix}:history")))
        .arg(format!("{}\n", hex(node)))
        .arg(if sharded.is_some() { "SPUBLISH" } else { "PUBLISH" });
    Some(cmd)
}

/// One room as read: its epoch, latest offset and kept broadcasts.
type Read = (Box<str>, u64, Vec<Kept>);

/// The read script's reply: epoch (none: the room has no stream), latest
/// offset, Redis's clock in ms, and the stream's entries (id, fields).
type ReadReply = (Option<String>, u64, u64, Vec<(String, HashMap<String, String>)>);

/// Reads each room of `lowest` from its offset on, in one pipeline; rooms
/// without a stream are left out.
fn read_rooms(
    conn: &mut RedisConn,
    prefix: &str,
    lowest: &HashMap<Box<str>, u64>,
) -> RedisResult<HashMap<Box<str>, Read>> {
    let mut pipe = redis::pipe();
    for (room, after) in lowest {
        let [meta, stream] = keys(prefix, room);
        pipe.add_command(eval(READ, &[&meta, &stream]).arg(after + 1).clone());
    }
    let replies: Vec<Value> = pipe.query(conn)?;
    let mut rooms = HashMap::new();
    for (room, reply) in lowest.keys().zip(replies) {
        let (epoch, latest, now, entries): ReadReply = redis::from_redis_value(reply)?;
        let Some(epoch) = epoch else { continue };
        let entries = entries.into_iter().filter_map(|(id, fields)| entry(&id, &fields, now)).collect();
        rooms.insert(room.clone(), (epoch.into(), latest, entries));
    }
    Ok(rooms)
}

/// One kept broadcast: its offset, frame, the sockets it left out and its
/// age; `None` if malformed.
fn entry(id: &str, fields: &HashMap<String, String>, now: u64) -> Option<Kept> {
    let offset = id.split_once('-')?.0.parse().ok()?;
    let except: Vec<(u64, u64)> = serde_json::from_str(fields.get("x")?).ok()?;
    let except = except.into_iter().map(|(node, conn)| SocketId { node, conn: ConnId(conn) }).collect();
    let at: u64 = fields.get("t")?.parse().ok()?;
    Some((offset, fields.get("f")?.as_str().into(), except, Duration::from_millis(now.saturating_sub(at))))
}
