//! The app's generated socket ids across a cluster (PROTOCOL.md §14,
//! "Across a cluster"): one key per id, `PREFIX:id:{ID}` (the id is its
//! hash tag, so each id's key is of a slot of its own on a Redis Cluster,
//! and every script here names that one key), holding `NODE TOKEN PUBLIC`:
//! the node of the socket that has the id (hex), the number of its claim on
//! that node (which tells it from an older socket of that node given the
//! same id) and the socket's public id. Each node lists the keys of its
//! ids in `PREFIX:n:{NODE}:ids` (its presence, see `node_key`), so that a
//! survivor frees a dead node's ids, and a node that stops its own
//! ([`orphan`]); a lookup takes only an id whose node's heartbeat is alive.
//!
//! The writer claims and frees ids in the order the sockets did (see
//! `WriterCommand::ClaimId`). The newest claim takes an id wherever it was
//! ([`CLAIM`]), as on one node, and the node that had it is told
//! ([`Header::IdTaken`]): its socket has it no longer. A claim the writer
//! could not write (Redis unreachable) is written when Redis is back, still
//! taking the id; one already written is written again after a lapse only
//! if nobody else took the id meanwhile, and the socket loses it otherwise.

use redis::{Cmd, Commands, RedisResult};

use super::link::{eval, node_key};
use super::wire::{with_sender, Header};
use crate::app::SocketId;

/// A generated id given to a socket of this node.
#[derive(Debug, Clone)]
pub(super) struct IdClaim {
    /// The id's key (prefix included).
    pub key: String,
    /// The id.
    pub id: String,
    /// The claim's number on this node.
    pub token: u64,
    /// The socket's public id.
    pub public: SocketId,
}

/// The key of generated id `id`.
pub(super) fn id_key(p: &str, id: &str) -> String {
    format!("{p}:id:{{{id}}}")
}

/// The holder of an id as its key holds it: `NODE TOKEN PUBLIC`.
fn holder(node: &str, token: u64, public: SocketId) -> String {
    format!("{node} {token} {public}")
}

/// The start of the holder value of claim `token` of `node`, which a
/// release compares (the same with no token: any claim of the node).
fn owner(node: &str, token: Option<u64>) -> String {
    match token {
        Some(token) => format!("{node} {token} "),
        None => format!("{node} "),
    }
}

/// A holder's value read back (see [`Holder`]).
pub(super) fn parse_holder(value: &str) -> Option<Holder> {
    let mut parts = value.splitn(3, ' ');
    let node = u64::from_str_radix(parts.next()?, 16).ok()?;
    let token = parts.next()?.parse().ok()?;
    let public = parts.next()?.parse().ok()?;
    Some((node, token, public))
}

/// Claims an id. KEYS: the id's key; ARGV: the new holder, `1` to take it
/// from whoever has it or `0` to take it only if it is free, already this
/// node's (`ARGV[3]`, `NODE `) or held by a node not live (`ARGV[4..]`).
/// Answers `{1, the holder before or ''}` when taken, `{0, the holder}` when not.
pub(super) const CLAIM: &str = "local old = redis.call('GET', KEYS[1])
    if ARGV[2] == '0' and old and string.sub(old, 1, #ARGV[3]) ~= ARGV[3] then
        local holder = string.match(old, '^(%S+) ')
        for i = 4, #ARGV do
            if ARGV[i] == holder then return {0, old} end
        end
    end
    redis.call('SET', KEYS[1], ARGV[1])
    return {1, old or ''}";

/// Frees an id if its holder starts with `ARGV[1]` (a claim of one node, or
/// any of its claims). KEYS: the id's key.
pub(super) const RELEASE: &str = "local v = redis.call('GET', KEYS[1])
    if v and string.sub(v, 1, #ARGV[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
    return 0";

impl IdClaim {
    /// Writes the claim for `node` (hex): taking the id from whoever has it
    /// (`force`), or only if it is free, this node's, or held by a node not
    /// in `live`. Answers as [`CLAIM`].
    pub(super) fn claim(&self, node: &str, force: bool, live: &[String]) -> Cmd {
        let mut cmd = eval(CLAIM, &[&self.key]);
        cmd.arg(holder(node, self.token, self.public)).arg(if force { "1" } else { "0" }).arg(owner(node, None));
        for live in live {
            cmd.arg(live);
        }
        cmd
    }
}

/// Frees id key `key` if claim `token` of `node` (hex) still has it.
pub(super) fn release(key: &str, node: &str, token: u64) -> Cmd {
    eval(RELEASE, &[key]).arg(owner(node, Some(token))).clone()
}

/// A holder of an id as read back: its node, its claim's number on that
/// node and its socket's public id.
pub(super) type Holder = (u64, u64, SocketId);

/// What a claim answered: the holder it took the id from (taken), or the
/// one that keeps it (not taken), if any.
pub(super) fn read_claim(reply: &redis::Value) -> RedisResult<(bool, Option<Holder>)> {
    let (taken, other): (u8, String) = redis::from_redis_value(reply.clone())?;
    Ok((taken == 1, parse_holder(&other)))
}

/// The message that tells node `to` (id) that its socket's claim `token`
/// of `id` lost to a newer one, published as by `from` (hex: the node that
/// has the id now; a node does not hear its own messages) on `to`'s channel.
pub(super) fn taken(p: &str, sharded: bool, from: u64, to: u64, id: &str, token: u64) -> Option<Cmd> {
    let mut line = serde_json::to_vec(&Header::IdTaken(id.into(), token)).ok()?;
    line.push(b'\n');
    let mut cmd = redis::cmd(if sharded { "SPUBLISH" } else { "PUBLISH" });
    cmd.arg(format!("{p}:node:{to:016x}")).arg(with_sender(from, &[&line]));
    Some(cmd)
}

/// Frees every id node `gone` (hex: dead, or stopping) listed, unless a
/// newer claim of another node has it; the list goes with the node's keys.
pub(super) fn orphan(c: &mut super::routed::RedisConn, p: &str, gone: &str) -> RedisResult<()> {
    let keys: Vec<String> = c.smembers(node_key(p, gone, "ids"))?;
    if keys.is_empty() {
        return Ok(());
    }
    let mut pipe = redis::pipe();
    for key in &keys {
        pipe.add_command(eval(RELEASE, &[key]).arg(owner(gone, None)).clone()).ignore();
    }
    pipe.query(c)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::ConnId;

    #[test]
    fn holders_read_back_and_malformed_ones_do_not() {
        let public = SocketId { node: 0xabc, conn: ConnId(42) };
        let value = holder(&format!("{:016x}", 0xdefu64), 7, public);
        assert_eq!(parse_holder(&value), Some((0xdef, 7, public)));
        assert!(value.starts_with(&owner(&format!("{:016x}", 0xdefu64), Some(7))));
        for bad in ["", "abc", "zz 1 a-1", "abc x a-1", "abc 1", "abc 1 nope"] {
            assert_eq!(parse_holder(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn an_ids_key_is_one_slot_whatever_the_id() {
        assert_eq!(id_key("P", "device \"42\" é"), "P:id:{device \"42\" é}");
    }

    /// Claims over a real Redis: the newest takes an id; a replay keeps it
    /// only while nobody live took it; a release frees only its own claim.
    #[test]
    fn claims_take_ids_and_releases_free_only_their_own() {
        let Some(redis) = crate::cluster::test_redis::Redis::start() else { return };
        let mut c = super::super::routed::RedisConn::One(
            redis::Client::open(redis.url()).expect("a URL").get_connection().expect("connected"),
        );
        let (a, b) = (format!("{:016x}", 0xa), format!("{:016x}", 0xb));
        let claim = |token: u64| IdClaim {
            key: id_key("T", "dev"),
            id: "dev".into(),
            token,
            public: SocketId { node: 0xa, conn: ConnId(token) },
        };
        let run = |c: &mut super::super::routed::RedisConn, cmd: Cmd| -> (bool, Option<Holder>) {
            read_claim(&cmd.query::<redis::Value>(c).expect("answered")).expect("a claim's answer")
        };
        assert_eq!(run(&mut c, claim(1).claim(&a, true, &[])), (true, None));
        // B takes it; A's replay does not take it back while B is live, does once B is not.
        let mut on_b = claim(5);
        on_b.public = SocketId { node: 0xb, conn: ConnId(5) };
        assert_eq!(run(&mut c, on_b.claim(&b, true, &[])), (true, Some((0xa, 1, claim(1).public))));
        let live = [a.clone(), b.clone()];
        assert_eq!(run(&mut c, claim(1).claim(&a, false, &live)), (false, Some((0xb, 5, on_b.public))));
        // A's old claim's release leaves B's.
        let freed: u8 = release(&claim(1).key, &a, 1).query(&mut c).expect("answered");
        assert_eq!(freed, 0);
        assert_eq!(
            run(&mut c, claim(1).claim(&a, false, std::slice::from_ref(&a))),
            (true, Some((0xb, 5, on_b.public)))
        );
        let freed: u8 = release(&claim(1).key, &a, 1).query(&mut c).expect("answered");
        assert_eq!(freed, 1);
        let left: Option<String> = c.get(id_key("T", "dev")).expect("answered");
        assert_eq!(left, None);
    }
}
