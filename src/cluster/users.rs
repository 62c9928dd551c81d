//! Each user's devices across the cluster, counted in Redis: the per-user
//! cap ([`App::max_devices`](crate::app::App::max_devices)) for the whole
//! cluster, and the user presence changes (first device anywhere, last
//! one gone everywhere), each seen by exactly one node.
//!
//! One sorted set per user, `PREFIX:u:{USER}` (one key, so one slot of a
//! Redis Cluster), holds its devices as `NODE:CONN` (NODE in hex), scored
//! by when they came (Redis's clock, in microseconds): the oldest first.
//! A script adds a device and answers what the cap implies ([`ADD`]);
//! another removes one and answers whether it was the last ([`REMOVE`]).
//! Both run on the link's background thread: a worker never waits for
//! Redis. The survivor that forgets a dead node (or a node that stops)
//! removes its devices from its users' sets ([`orphan_devices`]), the
//! users being listed under `PREFIX:n:{NODE}:users`; a user left with none
//! went offline, and one node alone is told ([`Header::UserOffline`]).
//! After a lapse (Redis restarted, or unreachable for a while) the writer
//! makes each user's set hold this node's devices again ([`sync_devices`]).
//!
//! With a presence grace ([`App::presence_grace`](crate::app::App::presence_grace)),
//! the removal of a user's last device leaves a marker, `PREFIX:ug:{USER}`
//! (the user's slot), naming that device, for twice the grace: a device
//! that comes back anywhere meanwhile takes it away and is no first one
//! (no online), and the node that removed the last device asks once the
//! grace is over whether its marker is still there ([`GRACE_OVER`]): only
//! then did the user go offline.

use std::collections::BTreeMap;
use std::time::Duration;

use redis::{Commands, Pipeline, RedisResult};

use super::routed::RedisConn;

use super::link::{eval, node_key, RedisLink};
use super::wire::{hex, Header};
use crate::app::{DeviceChange, DeviceCount, DeviceDone, DevicePolicy, Error, SocketId};
use crate::runtime::ConnId;

/// Adds a device. KEYS: the user's set, its grace marker; ARGV: the device
/// (`NODE:CONN`), the cap (0: none), the policy (`r`: refuse the new
/// device, `d`: drop the oldest). Answers `{'refused'}`, or `{first}` (`1`
/// when the set was empty and no grace was running: a device back within
/// the grace ends it) followed by the devices dropped, oldest first
/// (already removed).
pub(super) const ADD: &str = "local n = redis.call('ZCARD', KEYS[1])
    local max = tonumber(ARGV[2])
    if redis.call('ZSCORE', KEYS[1], ARGV[1]) then return {'0'} end
    if max > 0 and n >= max and ARGV[3] == 'r' then return {'refused'} end
    local t = redis.call('TIME')
    redis.call('ZADD', KEYS[1], tonumber(t[1]) * 1000000 + tonumber(t[2]), ARGV[1])
    local first = '0'
    if n == 0 and redis.call('DEL', KEYS[2]) == 0 then first = '1' end
    local out = {first}
    if max > 0 and n + 1 > max then
        local old = redis.call('ZRANGE', KEYS[1], 0, n - max)
        redis.call('ZREM', KEYS[1], unpack(old))
        for _, device in ipairs(old) do table.insert(out, device) end
    end
    return out";

/// Removes a device. KEYS: the user's set, its grace marker; ARGV: the
/// device, the presence grace in ms (0: none). Answers 1 when it was there
/// and was the user's last (only the removal that took it out can say so:
/// once in the cluster), else 0; the last one starts the grace, if any:
/// the marker names the device, for twice the grace.
pub(super) const REMOVE: &str =
    "if redis.call('ZREM', KEYS[1], ARGV[1]) == 1 and redis.call('ZCARD', KEYS[1]) == 0 then
        local grace = tonumber(ARGV[2])
        if grace > 0 then redis.call('SET', KEYS[2], ARGV[1], 'PX', 2 * grace) end
        return 1
    end
    return 0";

/// The grace started by the removal of device ARGV[1] is over. KEYS: the
/// user's set, its grace marker. Answers 1 if no device came back since
/// (the marker still names it: taken away now), so the user went offline;
/// else 0 (one came back, or left again and started a grace of its own).
pub(super) const GRACE_OVER: &str = "if redis.call('GET', KEYS[2]) ~= ARGV[1] then return 0 end
    redis.call('DEL', KEYS[2])
    if redis.call('ZCARD', KEYS[1]) == 0 then return 1 end
    return 0";

/// Removes every device of a dead node. KEYS: the user's set; ARGV: the
/// node's prefix (`NODE:`). Answers 1 when some were removed and none is
/// left (once, whichever survivors clean up at the same time), else 0.
const ORPHAN_DEVICES: &str = "local removed = 0
    for _, device in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
        if string.sub(device, 1, #ARGV[1]) == ARGV[1] then
            removed = removed + redis.call('ZREM', KEYS[1], device)
        end
    end
    if removed > 0 and redis.call('ZCARD', KEYS[1]) == 0 then return 1 end
    return 0";

/// Makes a user's set hold exactly the devices this node has of it (after
/// a lapse: Redis may have lost them, or missed removals). KEYS: the
/// user's set; ARGV: the node's prefix (`NODE:`), then its devices. Those
/// it no longer has go, those missing come back (as newest); no change is
/// a presence change (the node's own count served meanwhile).
const SYNC: &str = "local keep = {}
    for i = 2, #ARGV do keep[ARGV[i]] = true end
    for _, device in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
        if string.sub(device, 1, #ARGV[1]) == ARGV[1] and not keep[device] then
            redis.call('ZREM', KEYS[1], device)
        end
    end
    local t = redis.call('TIME')
    for i = 2, #ARGV do
        redis.call('ZADD', KEYS[1], 'NX', tonumber(t[1]) * 1000000 + tonumber(t[2]), ARGV[i])
    end
    return 0";

/// The key of `user`'s devices.
pub(super) fn devices_key(p: &str, user: &str) -> String {
    format!("{p}:u:{{{user}}}")
}

/// The key of `user`'s grace marker: in the slot of its devices.
pub(super) fn grace_key(p: &str, user: &str) -> String {
    format!("{p}:ug:{{{user}}}")
}

/// A device as its set holds it.
pub(super) fn device(node: u64, conn: ConnId) -> String {
    format!("{}:{}", hex(node), conn.0)
}

/// Reads a device back; `None` for a malformed one.
fn parse_device(text: &str) -> Option<SocketId> {
    let (node, conn) = text.split_once(':')?;
    Some(SocketId { node: u64::from_str_radix(node, 16).ok()?, conn: ConnId(conn.parse().ok()?) })
}

/// Counts a device of this node in or out on the link's background
/// thread, and hands `done` the answer (an error when Redis could not be
/// reached: the thread logs the outage once). `grace`: the app's presence
/// grace, started by the removal of a user's last device.
pub(super) fn count_device(link: &RedisLink, change: DeviceChange<'_>, grace: Option<Duration>, done: DeviceDone) {
    let (p, node) = (link.options().prefix.clone(), link.node());
    let (user, conn_id) = match change {
        DeviceChange::Added { user, conn_id, .. }
        | DeviceChange::Removed { user, conn_id }
        | DeviceChange::GraceOver { user, conn_id } => (user, conn_id),
    };
    let keys = [&devices_key(&p, user)[..], &grace_key(&p, user)];
    let command = match change {
        DeviceChange::Added { cap, .. } => {
            let (max, policy) =
                cap.map_or((0, "r"), |(max, policy)| (max, if policy == DevicePolicy::RejectNew { "r" } else { "d" }));
            eval(ADD, &keys).arg(device(node, conn_id)).arg(max).arg(policy).clone()
        }
        DeviceChange::Removed { .. } => {
            let grace = grace.map_or(0, |grace| grace.as_millis().max(1) as u64);
            eval(REMOVE, &keys).arg(device(node, conn_id)).arg(grace).clone()
        }
        DeviceChange::GraceOver { .. } => eval(GRACE_OVER, &keys).arg(device(node, conn_id)).clone(),
    };
    let adding = matches!(change, DeviceChange::Added { .. });
    let user = user.to_owned();
    let writer = link.clone();
    // Uncounted, or counted without an answer: the writer counts this
    // user's devices again once Redis answers.
    let failed = move |e: &redis::RedisError, done: DeviceDone| {
        writer.resync_devices(user);
        done(Err(Error::Unavailable(e.to_string().into())));
    };
    link.background(Box::new(move |conn| {
        let c = match conn {
            Ok(c) => c,
            Err(e) => {
                failed(e, done);
                return Ok(());
            }
        };
        let mut count = DeviceCount::default();
        let answered = if adding {
            command.query::<Vec<String>>(c).map(|answer| match answer.split_first() {
                Some((refused, _)) if refused == "refused" => count.refused = true,
                Some((first, dropped)) => {
                    count.first = first == "1";
                    count.dropped = dropped.iter().filter_map(|d| parse_device(d)).collect();
                }
                None => {}
            })
        } else {
            command.query::<u8>(c).map(|last| count.last = last == 1)
        };
        match answered {
            Ok(()) => {
                done(Ok(count));
                Ok(())
            }
            Err(e) => {
                failed(&e, done);
                Err(e)
            }
        }
    }));
}

/// Removes the devices of node `gone` (hex id: dead, or stopping) from its
/// users' sets, and tells node `tell` (hex; none when no node is left) of
/// each user that had none elsewhere: a message on that node's channel,
/// sent as if by the node gone (a node does not hear its own), which the
/// adapter turns into the app's offline hook. Run before the node's keys
/// go, by the survivor that forgets a dead node or by a node that stops.
pub(super) fn orphan_devices(c: &mut RedisConn, p: &str, gone: &str, tell: Option<&str>) -> RedisResult<()> {
    let users: Vec<String> = c.smembers(node_key(p, gone, "users"))?;
    let prefix = format!("{gone}:");
    for user in users {
        let last: u8 = eval(ORPHAN_DEVICES, &[&devices_key(p, &user)]).arg(&prefix).query(c)?;
        let Some(tell) = tell.filter(|_| last == 1) else { continue };
        let Ok(header) = serde_json::to_string(&Header::UserOffline(user)) else { continue };
        let _: () = c.publish(format!("{p}:node:{tell}"), format!("{gone}\n{header}\n"))?;
    }
    Ok(())
}

/// Adds to `pipe` the writes that make Redis count exactly this node's
/// devices (`node`, hex): `devices` by user, and none for the users Redis
/// listed for it before (`listed`) that it no longer has.
pub(super) fn sync_devices(
    pipe: &mut Pipeline,
    p: &str,
    node: &str,
    devices: &BTreeMap<&str, Vec<u64>>,
    listed: &[String],
) {
    let prefix = format!("{node}:");
    let gone = listed.iter().map(String::as_str).filter(|user| !devices.contains_key(user));
    let users = devices.iter().map(|(user, conns)| (*user, &conns[..])).chain(gone.map(|user| (user, &[][..])));
    for (user, conns) in users {
        let mut sync = eval(SYNC, &[&devices_key(p, user)]);
        sync.arg(&prefix);
        for conn in conns {
            sync.arg(format!("{prefix}{conn}"));
        }
        pipe.add_command(sync).ignore();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_read_back_and_malformed_ones_do_not() {
        let id = SocketId { node: 0xabc, conn: ConnId(42) };
        assert_eq!(parse_device(&device(id.node, id.conn)), Some(id));
        for bad in ["", "abc", "zz:1", "abc:x", ":1"] {
            assert_eq!(parse_device(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn a_users_key_is_one_slot_whatever_the_name() {
        assert_eq!(devices_key("P", "ann \"o'neil\" é"), "P:u:{ann \"o'neil\" é}");
    }
}
