//! Where a key lives in a Redis Cluster: its hash slot ([`key_slot`]), the
//! master serving each slot as `CLUSTER SLOTS` describes it ([`SlotMap`]),
//! and what a `MOVED` or `ASK` error says ([`Redirection`]).
//!
//! A sharded channel (`SSUBSCRIBE`, `SPUBLISH`) hashes like a key, so the
//! same map routes a room's channel and its history keys (same hash tag).
//! The slot is computed here rather than by the redis crate's `cluster`
//! feature, whose slot type gives no number out.

use redis::{ErrorKind, RedisError, RedisResult, ServerErrorKind, Value};

/// The number of hash slots of a Redis Cluster.
pub(super) const SLOTS: u16 = 16_384;

/// A Redis server's address: host and port.
pub(super) type NodeAddr = (String, u16);

/// The hash slot of `key` (or of a sharded channel): CRC16 (XMODEM) of its
/// hash tag, the part between the first `{` and the next `}` when that part
/// is not empty, else of the whole key; modulo [`SLOTS`].
pub(super) fn key_slot(key: &[u8]) -> u16 {
    let hashed = match key.iter().position(|&b| b == b'{') {
        Some(open) => match key[open + 1..].iter().position(|&b| b == b'}') {
            Some(len) if len > 0 => &key[open + 1..open + 1 + len],
            _ => key,
        },
        None => key,
    };
    crc16_xmodem(hashed) % SLOTS
}

/// CRC16-CCITT (XMODEM: polynomial 0x1021, initial value 0), as Redis
/// Cluster hashes keys.
fn crc16_xmodem(bytes: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &byte in bytes {
        crc ^= u16::from(byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 { (crc << 1) ^ 0x1021 } else { crc << 1 };
        }
    }
    crc
}

/// The masters of a Redis Cluster and the slots each serves, as one node
/// answered `CLUSTER SLOTS`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct SlotMap {
    /// Slot ranges (first, last, both included) and their master, sorted.
    ranges: Vec<(u16, u16, NodeAddr)>,
}

impl SlotMap {
    /// The map of a `CLUSTER SLOTS` reply from the node at `asked` (whose
    /// host stands in for a master announced with an empty or `?` host).
    pub(super) fn from_cluster_slots(reply: &Value, asked: &NodeAddr) -> RedisResult<SlotMap> {
        let bad = || RedisError::from((ErrorKind::Parse, "unexpected CLUSTER SLOTS reply", format!("{reply:?}")));
        let Value::Array(entries) = reply else { return Err(bad()) };
        let mut ranges = Vec::with_capacity(entries.len());
        for entry in entries {
            let Value::Array(fields) = entry else { return Err(bad()) };
            let (Some(Value::Int(first)), Some(Value::Int(last)), Some(Value::Array(master))) =
                (fields.first(), fields.get(1), fields.get(2))
            else {
                return Err(bad());
            };
            let host = match master.first() {
                Some(Value::BulkString(host)) => String::from_utf8_lossy(host).into_owned(),
                Some(Value::SimpleString(host)) => host.clone(),
                Some(Value::Nil) => String::new(),
                _ => return Err(bad()),
            };
            let host = if host.is_empty() || host == "?" { asked.0.clone() } else { host };
            let Some(Value::Int(port)) = master.get(1) else { return Err(bad()) };
            let in_range = |n: i64| u16::try_from(n).ok().filter(|&n| n < SLOTS);
            let (Some(first), Some(last), Ok(port)) = (in_range(*first), in_range(*last), u16::try_from(*port)) else {
                return Err(bad());
            };
            ranges.push((first, last, (host, port)));
        }
        ranges.sort();
        Ok(SlotMap { ranges })
    }

    /// The master serving `slot`, if any does.
    pub(super) fn master_of_slot(&self, slot: u16) -> Option<&NodeAddr> {
        let at = self.ranges.partition_point(|&(_, last, _)| last < slot);
        self.ranges.get(at).filter(|(first, _, _)| *first <= slot).map(|(_, _, master)| master)
    }

    /// The master serving `key`'s slot (or a sharded channel's), if any does.
    pub(super) fn master_of(&self, key: &[u8]) -> Option<&NodeAddr> {
        self.master_of_slot(key_slot(key))
    }

    /// Every master serving a slot, each once, in slot order.
    pub(super) fn masters(&self) -> Vec<&NodeAddr> {
        let mut masters: Vec<&NodeAddr> = Vec::new();
        for (_, _, master) in &self.ranges {
            if !masters.contains(&master) {
                masters.push(master);
            }
        }
        masters
    }

    /// Whether every slot has a master (the cluster can serve any key).
    pub(super) fn covers_all(&self) -> bool {
        let mut next = 0u32;
        for &(first, last, _) in &self.ranges {
            if u32::from(first) > next {
                return false;
            }
            next = next.max(u32::from(last) + 1);
        }
        next == u32::from(SLOTS)
    }
}

/// What a `MOVED` or `ASK` error tells: the slot, and the node serving it
/// now (`MOVED`: for good, refresh the map) or for the next command only
/// (`ASK`: a slot being migrated; send `ASKING` first).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Redirection {
    /// The slot has moved to another master.
    Moved {
        /// The slot of the command's key.
        slot: u16,
        /// Where it is served now.
        to: NodeAddr,
    },
    /// The key is being migrated: ask the other master, once.
    Ask {
        /// The slot of the command's key.
        slot: u16,
        /// Where to ask.
        to: NodeAddr,
    },
}

impl Redirection {
    /// The redirection `error` is, if it is one.
    pub(super) fn of(error: &RedisError) -> Option<Redirection> {
        let (address, slot) = error.redirect_node()?;
        let (host, port) = address.rsplit_once(':')?;
        let to = (host.trim_start_matches('[').trim_end_matches(']').to_owned(), port.parse().ok()?);
        match error.kind() {
            ErrorKind::Server(ServerErrorKind::Moved) => Some(Redirection::Moved { slot, to }),
            ErrorKind::Server(ServerErrorKind::Ask) => Some(Redirection::Ask { slot, to }),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_hash_the_hash_tag_as_redis_does() {
        // Values from the Redis Cluster specification and CLUSTER KEYSLOT.
        assert_eq!(crc16_xmodem(b"123456789"), 0x31c3);
        assert_eq!(key_slot(b"foo"), 12182);
        assert_eq!(key_slot(b"{user1000}.following"), key_slot(b"{user1000}.followers"));
        assert_ne!(key_slot(b"foo{}{bar}"), key_slot(b"bar"), "an empty tag hashes the whole key");
        assert_eq!(key_slot(b"foo{{bar}}zap"), key_slot(b"{bar"));
        assert_eq!(key_slot(b"foo{bar}{zap}"), key_slot(b"bar"));
    }

    fn slots_reply(ranges: &[(i64, i64, &str, i64)]) -> Value {
        Value::Array(
            ranges
                .iter()
                .map(|&(first, last, host, port)| {
                    let master = Value::Array(vec![
                        Value::BulkString(host.as_bytes().to_vec()),
                        Value::Int(port),
                        Value::BulkString(b"id".to_vec()),
                    ]);
                    Value::Array(vec![Value::Int(first), Value::Int(last), master])
                })
                .collect(),
        )
    }

    #[test]
    fn a_cluster_slots_reply_maps_every_slot_to_its_master() {
        let asked = ("10.0.0.9".to_owned(), 7000);
        let reply =
            slots_reply(&[(10_923, 16_383, "10.0.0.3", 7002), (0, 5460, "10.0.0.1", 7000), (5461, 10_922, "", 7001)]);
        let map = SlotMap::from_cluster_slots(&reply, &asked).unwrap();
        assert!(map.covers_all());
        assert_eq!(map.master_of_slot(0), Some(&("10.0.0.1".to_owned(), 7000)));
        assert_eq!(map.master_of_slot(5461), Some(&("10.0.0.9".to_owned(), 7001)), "empty host: the asked one's");
        assert_eq!(map.master_of_slot(16_383), Some(&("10.0.0.3".to_owned(), 7002)));
        assert_eq!(map.master_of(b"foo"), map.master_of_slot(12182));
        assert_eq!(map.masters().len(), 3);
        let partial = SlotMap::from_cluster_slots(&slots_reply(&[(0, 5460, "h", 1), (5462, 16_383, "h", 2)]), &asked);
        let partial = partial.unwrap();
        assert!(!partial.covers_all());
        assert_eq!(partial.master_of_slot(5461), None);
        assert_eq!(partial.masters(), [&("h".to_owned(), 1), &("h".to_owned(), 2)]);
        for bad in [Value::Int(1), slots_reply(&[(0, 16_384, "h", 1)]), slots_reply(&[(0, 1, "h", -1)])] {
            let error = SlotMap::from_cluster_slots(&bad, &asked).expect_err("a bad reply refused");
            assert!(error.to_string().contains("unexpected CLUSTER SLOTS reply"), "{error}");
        }
    }
}
