//! Sessions in Redis (PROTOCOL.md §13, "Across a cluster"): one record per
//! socket, kept up to date from its presence by the writer, and claimed
//! atomically by any node on a resume.
//!
//! A record is one hash, `PREFIX:s:{KEY}` (KEY: the hex SHA-1 of the
//! socket's resume token; the braces put the keys of one record in one
//! slot of a Redis Cluster): `node` (hex) and `conn` (decimal) of the
//! connection it is on, `public` (its [`SocketId`] as text), `user` (when
//! it has one), `w` (its resume window in milliseconds), `away` (`1` once
//! its connection was lost: the record then expires with the window) and
//! one `g:GROUP` field per room or tag (`EPOCH OFFSET` for a room with
//! history, else empty), one `v:KEY` field per value shared across the
//! cluster (its JSON text), and `trimmed` once direct messages were dropped.
//! The direct messages sent to the socket while it is away are a list,
//! `PREFIX:d:{KEY}`, that expires with the record. The writer also lists each node's records in
//! `PREFIX:n:{NODE}:records`, so that a survivor starts the window of a dead
//! node's records (its process was killed: nobody else would), and of
//! their aliases (a record names its alias in `alias`): see [`orphan`].
//!
//! Every script here names every key it touches in KEYS, and the keys of
//! one call share a hash tag, so that each runs on one slot of a Redis
//! Cluster as it does on one Redis.
//!
//! A claim leaves a tombstone under the record's key for the record's
//! window: a hash with only `claimed`. The owner's writes are scripts that
//! refuse it ([`WRITE`], [`FIELD`], [`END`]), so a node cut off from Redis
//! while its socket lived, whose session was resumed elsewhere meanwhile,
//! cannot bring the spent token back when it heals: its rewrite is refused
//! and it closes that socket (4409) instead.
//!
//! A socket resumed on another node keeps its public id: that node writes
//! an alias, `PREFIX:a:PUBLIC` → its own node id, and a message for the
//! public id is routed through it by the sender's writer ([`ROUTE`]).

use std::time::Duration;

use std::collections::HashMap;

use redis::{Cmd, Commands, ConnectionLike, Pipeline, RedisResult};

use super::routed::RedisConn;

use super::link::{eval, node_key};
use super::wire::hex;
use crate::app::{ClaimOutcome, ClaimedSession, SocketId};
use crate::runtime::ConnId;

/// A socket's record as this node last wrote it, to write again after a lapse.
#[derive(Debug, Clone)]
pub(super) struct Record {
    /// The record's key (prefix included).
    pub key: String,
    /// Its fields, as written.
    pub fields: Vec<(String, String)>,
    /// The alias key of a socket resumed here from another node.
    pub alias: Option<String>,
    /// The socket's public id.
    pub public: SocketId,
}

impl Record {
    /// The record of a socket now connected at `conn` of `node`.
    pub fn new(
        p: &str,
        key: &str,
        (node, conn): (&str, u64),
        public: SocketId,
        user: Option<&str>,
        window: Duration,
    ) -> Record {
        let mut fields = vec![
            ("node".to_owned(), node.to_owned()),
            ("conn".to_owned(), conn.to_string()),
            ("public".to_owned(), public.to_string()),
            ("w".to_owned(), window.as_millis().max(1).to_string()),
        ];
        if let Some(user) = user {
            fields.push(("user".into(), user.into()));
        }
        let here = u64::from_str_radix(node, 16).ok();
        let alias = (Some(public.node) != here).then(|| alias_key(p, public));
        if let Some(alias) = &alias {
            // For a survivor to expire it with the record if this node dies.
            fields.push(("alias".into(), alias.clone()));
        }
        Record { key: record_key(p, key), fields, alias, public }
    }

    /// The write of one field (`Some` value) or its removal, unless the
    /// record was claimed ([`FIELD`]).
    pub fn field(&self, field: &str, value: Option<&str>) -> Cmd {
        let mut cmd = eval(FIELD, &[&self.key]);
        cmd.arg(field);
        if let Some(value) = value {
            cmd.arg(value);
        }
        cmd
    }

    /// The write of the whole record, unless it was claimed: answers 1 if
    /// written, 0 if claimed ([`WRITE`]).
    pub fn put(&self) -> Cmd {
        let mut cmd = eval(WRITE, &[&self.key]);
        for (name, value) in &self.fields {
            cmd.arg(name).arg(value);
        }
        cmd
    }

    /// Lists the record under `node`, and writes its alias.
    fn list(&self, pipe: &mut Pipeline, p: &str, node: &str) {
        pipe.sadd(node_key(p, node, "records"), &self.key).ignore();
        if let Some(alias) = &self.alias {
            pipe.set(alias, node).ignore();
        }
    }

    /// Notes a group, with its stream's position for a room with history.
    pub fn join(&mut self, group: &str, position: Option<&(String, u64)>) -> (String, String) {
        let field =
            (format!("g:{group}"), position.map(|(epoch, offset)| format!("{epoch} {offset}")).unwrap_or_default());
        match self.fields.iter_mut().find(|(name, _)| *name == field.0) {
            Some(kept) => kept.1 = field.1.clone(),
            None => self.fields.push(field.clone()),
        }
        field
    }

    /// Notes a shared value (JSON text), or forgets it (`None`): the field
    /// and the value to write, or to delete.
    pub fn store(&mut self, key: &str, value: Option<&str>) -> (String, Option<String>) {
        let field = format!("v:{key}");
        self.fields.retain(|(name, _)| *name != field);
        if let Some(value) = value {
            self.fields.push((field.clone(), value.into()));
        }
        (field, value.map(Into::into))
    }

    /// Notes the socket's user (attached after connect), or its absence.
    pub fn set_user(&mut self, user: Option<&str>) {
        self.fields.retain(|(name, _)| name != "user");
        if let Some(user) = user {
            self.fields.push(("user".into(), user.into()));
        }
    }

    /// Forgets a group; the field to delete.
    pub fn leave(&mut self, group: &str) -> String {
        let field = format!("g:{group}");
        self.fields.retain(|(name, _)| *name != field);
        field
    }

    /// Writes the record (whole) and its alias into `pipe`, listed under `node`.
    /// A new record's key is its new connection's: nobody claimed it yet.
    pub fn write(&self, pipe: &mut Pipeline, p: &str, node: &str) {
        pipe.add_command(self.put()).ignore();
        self.list(pipe, p, node);
    }

    /// The socket is gone: its record waits `kept` for a claim, or goes.
    pub fn end(&self, pipe: &mut Pipeline, p: &str, node: &str, kept: Option<Duration>) {
        let window = kept.map_or(0, |window| window.as_millis().max(1) as u64);
        pipe.add_command(eval(END, &[&self.key]).arg(window).clone()).ignore();
        pipe.srem(node_key(p, node, "records"), &self.key).ignore();
        if let Some(alias) = &self.alias {
            pipe.add_command(eval(UNALIAS, &[alias]).arg(node).clone()).ignore();
        }
    }
}

/// Writes a whole record, unless a claim left its tombstone there (the
/// session was resumed elsewhere: the token stays spent). KEYS: the record;
/// ARGV: its fields, name and value in turn. Answers 1 if written, else 0.
pub(super) const WRITE: &str = "if redis.call('HEXISTS', KEYS[1], 'claimed') == 1 then return 0 end
    redis.call('DEL', KEYS[1])
    redis.call('HSET', KEYS[1], unpack(ARGV))
    return 1";

/// Writes one field of a record (ARGV: the field, then its value) or
/// deletes it (the field alone), if the record is there and not claimed
/// (only a record has `node`): a write after a claim or an expiry must not
/// leave a partial record without a deadline. KEYS: the record.
pub(super) const FIELD: &str = "if redis.call('HEXISTS', KEYS[1], 'node') == 0 then return 0 end
    if #ARGV == 2 then redis.call('HSET', KEYS[1], ARGV[1], ARGV[2]) else redis.call('HDEL', KEYS[1], ARGV[1]) end
    return 1";

/// Ends a record whose socket is gone: keeps it away for ARGV[1] ms, or
/// deletes it (`0`); a claim's tombstone is left alone. KEYS: the record.
pub(super) const END: &str = "if redis.call('HEXISTS', KEYS[1], 'node') == 0 then return 0 end
    if ARGV[1] == '0' then return redis.call('DEL', KEYS[1]) end
    redis.call('HSET', KEYS[1], 'away', '1')
    redis.call('PEXPIRE', KEYS[1], ARGV[1])
    return 1";

/// Writes this node's records again (after a lapse: survivors may have
/// orphaned them, or Redis lost them), listing the written ones and their
/// aliases; the ids of the records a claim left its tombstone in (their
/// sockets were resumed elsewhere while this node was cut off), with their
/// sockets' public ids. Each record's script runs on its own slot.
pub(super) fn rewrite(
    c: &mut RedisConn,
    p: &str,
    node: &str,
    records: &HashMap<u64, Record>,
) -> RedisResult<Vec<(u64, SocketId)>> {
    if records.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<u64> = records.keys().copied().collect();
    let mut pipe = redis::pipe();
    for id in &ids {
        pipe.add_command(records[id].put());
    }
    let written: Vec<bool> = pipe.query(c)?;
    let (mut listed, mut refused) = (redis::pipe(), Vec::new());
    for (id, written) in ids.into_iter().zip(written) {
        match written {
            true => records[&id].list(&mut listed, p, node),
            false => refused.push((id, records[&id].public)),
        }
    }
    if !listed.is_empty() {
        let () = listed.query(c)?;
    }
    Ok(refused)
}

/// Deletes an alias if it still names the node. KEYS: the alias; ARGV: the
/// node. A later resume elsewhere keeps its own.
pub(super) const UNALIAS: &str =
    "if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end return 0";

/// The key of the record `key` names.
pub(super) fn record_key(p: &str, key: &str) -> String {
    format!("{p}:s:{{{key}}}")
}

/// The key of the direct messages kept for the record `key` names.
pub(super) fn direct_key(p: &str, key: &str) -> String {
    format!("{p}:d:{{{key}}}")
}

/// Keeps a direct message for an away socket, the latest ARGV[2] of them,
/// expiring with its record, which keeps the message's number (ARGV[3])
/// in `held`: a claim then tells which of the messages its socket's node
/// kept came too late for it. KEYS: the record, its messages; ARGV: the
/// message, the cap, its number. Nothing when the record is gone or not
/// away.
pub(super) const HOLD: &str = "local ttl = redis.call('PTTL', KEYS[1])
    if ttl <= 0 or redis.call('HGET', KEYS[1], 'away') ~= '1' then return 0 end
    redis.call('HSET', KEYS[1], 'held', ARGV[3])
    local cap = tonumber(ARGV[2])
    local n = redis.call('RPUSH', KEYS[2], ARGV[1])
    if n > cap then
        if cap == 0 then redis.call('DEL', KEYS[2]) else redis.call('LTRIM', KEYS[2], -cap, -1) end
        redis.call('HSET', KEYS[1], 'trimmed', '1')
    end
    redis.call('PEXPIRE', KEYS[2], ttl)
    return n";

/// The key of the alias of public id `public`.
pub(super) fn alias_key(p: &str, public: SocketId) -> String {
    format!("{p}:a:{public}")
}

/// Routes a payload to the node a public id answers at now: its alias's,
/// or the one it names. KEYS: the alias; ARGV: the channels' prefix, the
/// public id's node, the payload.
pub(super) const ROUTE: &str = "local to = redis.call('GET', KEYS[1]) or ARGV[2]
    return redis.call('PUBLISH', ARGV[1] .. to, ARGV[3])";

/// Starts the window of one record of a dead node, as if its socket had
/// been lost: its process could not. KEYS: the record. Answers the window
/// (ms) and the record's alias key (empty if none), or nil when the record
/// is gone (claimed, or expired).
pub(super) const ORPHAN: &str = "local w = redis.call('HGET', KEYS[1], 'w')
    if not w then return false end
    redis.call('HSET', KEYS[1], 'away', '1')
    redis.call('PEXPIRE', KEYS[1], w)
    return {w, redis.call('HGET', KEYS[1], 'alias') or ''}";

/// Gives an alias the window of its orphaned record, if it still names the
/// dead node (a resume elsewhere since then wrote its own, which stays).
/// KEYS: the alias; ARGV: the dead node, the window in ms.
pub(super) const ORPHAN_ALIAS: &str =
    "if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end return 0";

/// Starts the window of every record of the dead `node`, and of their
/// aliases. The node's list is read here and each record handled by a
/// script of its own ([`ORPHAN`], then [`ORPHAN_ALIAS`]): a record, its
/// list and its alias are in three slots of a Redis Cluster, and a script
/// may touch only the keys it is given, of one slot. Each record is
/// changed atomically; nobody adds to a dead node's list.
pub(super) fn orphan(c: &mut RedisConn, p: &str, node: &str) -> RedisResult<()> {
    let records: Vec<String> = c.smembers(node_key(p, node, "records"))?;
    if records.is_empty() {
        return Ok(());
    }
    let mut pipe = redis::pipe();
    for record in &records {
        pipe.add_command(eval(ORPHAN, &[record]));
    }
    let started: Vec<Option<(u64, String)>> = pipe.query(c)?;
    let mut pipe = redis::pipe();
    for (window, alias) in started.into_iter().flatten().filter(|(_, alias)| !alias.is_empty()) {
        pipe.add_command(eval(ORPHAN_ALIAS, &[&alias]).arg(node).arg(window).clone()).ignore();
    }
    if pipe.is_empty() {
        return Ok(());
    }
    pipe.query(c)
}

/// Claims a record in one step, leaving its tombstone (`claimed`) for the
/// record's window. KEYS: the record, its direct messages;
/// ARGV: whether the claimer has a user (`1`/`0`), the user, then the live
/// nodes (a claimer without a user takes the record's, attached after
/// connect: the token proves it). Answers `none`, `other` (another user's: left alone), `live NODE
/// CONN` (its socket is connected to a live node: left alone) or `claimed`
/// and the record's fields, name and value in turn, then a `d` and a
/// message for each direct message (both deleted: nobody else gets them).
pub(super) const CLAIM: &str = "local r = redis.call('HGETALL', KEYS[1])
    if #r == 0 then return {'none'} end
    local f = {}
    for i = 1, #r, 2 do f[r[i]] = r[i + 1] end
    if f.claimed then return {'none'} end
    if ARGV[1] == '1' and f.user ~= ARGV[2] then return {'other'} end
    if f.away ~= '1' then
        for i = 3, #ARGV do
            if ARGV[i] == f.node then return {'live', f.node, f.conn} end
        end
    end
    local d = redis.call('LRANGE', KEYS[2], 0, -1)
    redis.call('DEL', KEYS[1], KEYS[2])
    redis.call('HSET', KEYS[1], 'claimed', '1')
    redis.call('PEXPIRE', KEYS[1], tonumber(f.w) or 1)
    table.insert(r, 1, 'claimed')
    for _, m in ipairs(d) do
        table.insert(r, 'd')
        table.insert(r, m)
    end
    return r";

/// What a claim found.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Found {
    /// Done: the session, or why there is none.
    Outcome(ClaimOutcome),
    /// The socket is still connected at this node and connection.
    Live(u64, ConnId),
}

/// Runs the claim of record `key` for `user`, given the live nodes.
pub(super) fn claim(
    c: &mut impl ConnectionLike,
    p: &str,
    key: &str,
    user: Option<&str>,
    live: &[u64],
) -> RedisResult<Found> {
    let mut cmd = eval(CLAIM, &[&record_key(p, key), &direct_key(p, key)]);
    cmd.arg(if user.is_some() { "1" } else { "0" }).arg(user.unwrap_or(""));
    for node in live {
        cmd.arg(hex(*node));
    }
    let answer: Vec<String> = cmd.query(c)?;
    Ok(read_answer(&answer))
}

/// Reads the claim script's answer; a record it cannot read counts as none.
fn read_answer(answer: &[String]) -> Found {
    let node = |text: &str| u64::from_str_radix(text, 16).ok();
    match answer {
        [status, node_text, conn] if status == "live" => match (node(node_text), conn.parse()) {
            (Some(node), Ok(conn)) => Found::Live(node, ConnId(conn)),
            _ => Found::Outcome(ClaimOutcome::NoSession),
        },
        [status, fields @ ..] if status == "claimed" => {
            let mut session = ClaimedSession {
                lost: SocketId { node: 0, conn: ConnId(0) },
                public: SocketId { node: 0, conn: ConnId(0) },
                user: None,
                groups: Vec::new(),
                values: Vec::new(),
                direct: Vec::new(),
                direct_complete: true,
                held: 0,
            };
            for pair in fields.chunks_exact(2) {
                let value = &pair[1];
                match &pair[0][..] {
                    "node" => session.lost.node = node(value).unwrap_or(0),
                    "conn" => session.lost.conn = ConnId(value.parse().unwrap_or(0)),
                    "public" => session.public = value.parse().unwrap_or(session.public),
                    "user" => session.user = Some(value.clone()),
                    "d" => session.direct.push(value.clone()),
                    "trimmed" => session.direct_complete = false,
                    "held" => session.held = value.parse().unwrap_or(0),
                    name => {
                        if let Some(group) = name.strip_prefix("g:") {
                            let position = value
                                .rsplit_once(' ')
                                .and_then(|(epoch, offset)| Some((epoch.to_owned(), offset.parse().ok()?)));
                            session.groups.push((group.to_owned(), position));
                        } else if let Some(key) = name.strip_prefix("v:") {
                            session.values.push((key.to_owned(), value.clone()));
                        }
                    }
                }
            }
            if session.lost.node == 0 || session.public.node == 0 {
                return Found::Outcome(ClaimOutcome::NoSession);
            }
            Found::Outcome(ClaimOutcome::Claimed(session))
        }
        [status] if status == "other" => Found::Outcome(ClaimOutcome::OtherUser),
        _ => Found::Outcome(ClaimOutcome::NoSession),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn answers_read_and_bad_ones_claim_nothing() {
        assert_eq!(read_answer(&strings(&["none"])), Found::Outcome(ClaimOutcome::NoSession));
        assert_eq!(read_answer(&strings(&["other"])), Found::Outcome(ClaimOutcome::OtherUser));
        assert_eq!(read_answer(&strings(&["live", "1f", "7"])), Found::Live(0x1f, ConnId(7)));
        assert_eq!(read_answer(&strings(&["live", "zz", "7"])), Found::Outcome(ClaimOutcome::NoSession));
        let claimed = read_answer(&strings(&[
            "claimed",
            "node",
            "1f",
            "conn",
            "9",
            "public",
            "1e-5",
            "user",
            "ann",
            "g:#a",
            "",
            "g:#b",
            "e1 42",
            "v:seat",
            "{\"room\":\"#b\"}",
            "w",
            "100",
            "trimmed",
            "1",
            "held",
            "7",
            "d",
            "[0,\"/a\",1]",
            "d",
            "[0,\"/b\",2]",
        ]));
        let expected = ClaimedSession {
            lost: SocketId { node: 0x1f, conn: ConnId(9) },
            public: SocketId { node: 0x1e, conn: ConnId(5) },
            user: Some("ann".into()),
            groups: vec![("#a".into(), None), ("#b".into(), Some(("e1".into(), 42)))],
            values: vec![("seat".into(), "{\"room\":\"#b\"}".into())],
            direct: vec!["[0,\"/a\",1]".into(), "[0,\"/b\",2]".into()],
            direct_complete: false,
            held: 7,
        };
        assert_eq!(claimed, Found::Outcome(ClaimOutcome::Claimed(expected)));
        // No node or public id: not a record this code wrote.
        assert_eq!(read_answer(&strings(&["claimed", "conn", "9"])), Found::Outcome(ClaimOutcome::NoSession));
        assert_eq!(read_answer(&strings(&[])), Found::Outcome(ClaimOutcome::NoSession));
    }
}
