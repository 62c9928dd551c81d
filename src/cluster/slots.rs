//! Every Lua script and multi-key command of the adapter, run with the keys
//! the adapter gives it against a real Redis Cluster (three masters, three
//! replicas: tests/common/redis_cluster.rs), through redis's cluster client,
//! which sends each call to the master of its first key's slot: a call whose
//! keys are in several slots, or a script touching a key it was not given in
//! another slot, fails there (`CROSSSLOT`, or "Script attempted to access a
//! non local key"), as it would in production.

use std::time::Duration;

use redis::cluster::ClusterConnection;
use redis::{Commands, RedisResult, Value};

use super::history::{keys, publish_call, PUBLISH, READ};
use super::ids::{id_key, read_claim, release, IdClaim};
use super::link::{eval, node_key, ALIVE};
use super::sessions::{
    alias_key, claim, direct_key, record_key, Found, Record, END, HOLD, ORPHAN, ORPHAN_ALIAS, ROUTE, UNALIAS,
};
use super::test_redis_cluster::RedisCluster;
use super::users::{devices_key, grace_key, ADD, GRACE_OVER, REMOVE};
use super::wire::hex;
use super::writer::{BEAT, INDEX, UNLIST};
use crate::app::{ClaimOutcome, History, SocketId};
use crate::runtime::ConnId;

const P: &str = "emitws";

fn connect(cluster: &RedisCluster) -> ClusterConnection {
    cluster.client().get_connection().expect("cluster connection")
}

#[test]
fn keys_of_different_slots_in_one_call_are_refused() {
    // The check below is real: the cluster client does not split a script's
    // keys, and the cluster refuses them.
    let Some(cluster) = RedisCluster::start() else { return };
    let mut c = connect(&cluster);
    let (a, b) = (node_key(P, "aa", "sockets"), node_key(P, "bb", "sockets"));
    assert_ne!(cluster.slot(&a), cluster.slot(&b));
    let refused: RedisResult<Value> = eval(UNLIST, &[&a, &b]).arg("ann").query(&mut c);
    assert_eq!(refused.expect_err("keys in two slots").code(), Some("CROSSSLOT"));
    // The orphan script as it was (it read the records named in the node's
    // list without being given them) fails so too, for a record on another
    // master than the list. (On the same master Redis lets a script without
    // flags touch another slot's keys: slots move, so it must not count on it.)
    let list = node_key(P, "aa", "records");
    let record = (0..)
        .map(|i| record_key(P, &format!("{i:04x}")))
        .find(|record| cluster.master_of(record) != cluster.master_of(&list))
        .expect("a record on another master");
    let _: () = c.hset(&record, "w", 100).unwrap();
    let _: () = c.sadd(&list, &record).unwrap();
    const UNDECLARED: &str = "for _, key in ipairs(redis.call('SMEMBERS', KEYS[1])) do
        redis.call('HSET', key, 'away', '1') end return 0";
    let refused: RedisResult<Value> = eval(UNDECLARED, &[&list]).query(&mut c);
    assert!(refused.is_err(), "a script touching a key of another slot ran: {refused:?}");
}

#[test]
fn every_script_and_multi_key_command_runs_on_one_slot() {
    let Some(cluster) = RedisCluster::start() else { return };
    let mut c = connect(&cluster);
    let node = hex(0xaa);

    // Heartbeat and live nodes: one key.
    let nodes = format!("{P}:nodes");
    let (lapsed, dead, live): (u8, Vec<String>, Vec<String>) =
        eval(BEAT, &[&nodes]).arg(&node).arg(10_000).query(&mut c).unwrap();
    assert_eq!((lapsed, dead, live), (1, vec![], vec![node.clone()]));
    let alive: Vec<String> = eval(ALIVE, &[&nodes]).query(&mut c).unwrap();
    assert_eq!(alive, std::slice::from_ref(&node));

    // A node's presence: one slot, so its scripts, and the DEL of all its
    // keys at once (sent to their master, not split by the client), run.
    let (user_set, users) = (node_key(P, &node, "u:ann"), node_key(P, &node, "users"));
    let _: () = c.sadd(node_key(P, &node, "sockets"), 7).unwrap();
    let _: () = c.sadd(node_key(P, &node, "g:#lobby"), 7).unwrap();
    let _: () = c.sadd(&users, "ann").unwrap();
    let _: () = eval(UNLIST, &[&user_set, &users]).arg("ann").query(&mut c).unwrap();
    assert!(!c.sismember::<_, _, bool>(&users, "ann").unwrap());
    let groups = node_key(P, &node, "groups");
    let _: () = eval(INDEX, &[&node_key(P, &node, "g:#lobby"), &groups]).arg("#lobby").query(&mut c).unwrap();
    assert_eq!(c.hget::<_, _, usize>(&groups, "#lobby").unwrap(), 1);
    let _: () = c.del(&groups).unwrap();
    let presence = [node_key(P, &node, "sockets"), node_key(P, &node, "g:#lobby"), users.clone()];
    let master = cluster.master_of(&presence[0]);
    let deleted: usize = cluster.connect(master).del(&presence).unwrap();
    assert_eq!(deleted, 2);

    // A session record, written as the writer does, orphaned by a survivor,
    // holding a direct message, routed to, and claimed.
    let public = SocketId { node: 0xbb, conn: ConnId(5) };
    let record = Record::new(P, "c0ffee", (&node, 9), public, Some("ann"), Duration::from_secs(60));
    let alias = record.alias.clone().expect("an alias: the public id is another node's");
    let mut pipe = redis::pipe();
    record.write(&mut pipe, P, &node);
    run_each(&mut c, &pipe);
    // What `orphan` runs, call by call (a plain pipeline is one connection's).
    let records: Vec<String> = c.smembers(node_key(P, &node, "records")).unwrap();
    assert_eq!(records, [record_key(P, "c0ffee")]);
    let (window, orphaned_alias): (u64, String) = eval(ORPHAN, &[&records[0]]).query(&mut c).unwrap();
    assert_eq!((window, &orphaned_alias), (60_000, &alias));
    let _: () = eval(ORPHAN_ALIAS, &[&alias]).arg(&node).arg(window).query(&mut c).unwrap();
    assert_eq!(c.hget::<_, _, String>(record_key(P, "c0ffee"), "away").unwrap(), "1");
    assert!(c.pttl::<_, i64>(&alias).unwrap() > 0, "the alias expires with its record");
    let held: u64 = eval(HOLD, &[&record_key(P, "c0ffee"), &direct_key(P, "c0ffee")])
        .arg(r#"[0,"/dm",1]"#)
        .arg(10)
        .arg(3)
        .query(&mut c)
        .unwrap();
    assert_eq!(held, 1);
    let receivers: u64 =
        eval(ROUTE, &[&alias]).arg(format!("{P}:node:")).arg(hex(public.node)).arg("payload").query(&mut c).unwrap();
    assert_eq!(receivers, 0);
    match claim(&mut c, P, "c0ffee", Some("ann"), &[0xaa]).unwrap() {
        Found::Outcome(ClaimOutcome::Claimed(session)) => {
            assert_eq!((session.public, session.direct), (public, vec![r#"[0,"/dm",1]"#.to_owned()]));
            assert_eq!(session.held, 3, "the number of the last message held");
        }
        other => panic!("not claimed: {other:?}"),
    }
    let _: () = eval(UNALIAS, &[&alias_key(P, public)]).arg(&node).query(&mut c).unwrap();
    assert!(!c.exists::<_, bool>(&alias).unwrap());
    // The claim left a tombstone for the window, which the owner's writes
    // (a node cut off meanwhile, healed) and a second claim leave alone.
    let key = record_key(P, "c0ffee");
    assert!(c.pttl::<_, i64>(&key).unwrap() > 0, "the tombstone expires");
    let written: u8 = record.put().query(&mut c).unwrap();
    let field: u8 = record.field("g:#lobby", Some("")).query(&mut c).unwrap();
    let ended: u8 = eval(END, &[&key]).arg(0).query(&mut c).unwrap();
    assert_eq!((written, field, ended), (0, 0, 0), "a claimed record is not written again");
    assert!(matches!(claim(&mut c, P, "c0ffee", Some("ann"), &[]).unwrap(), Found::Outcome(ClaimOutcome::NoSession)));
    // A record not claimed is written, field by field, and ended.
    let fresh = Record::new(P, "beef", (&node, 10), public, None, Duration::from_secs(60));
    let written: u8 = fresh.put().query(&mut c).unwrap();
    let field: u8 = fresh.field("g:#lobby", Some("")).query(&mut c).unwrap();
    let kept: u8 = eval(END, &[&fresh.key]).arg(500).query(&mut c).unwrap();
    assert_eq!((written, field, kept), (1, 1, 1));
    assert_eq!(c.hget::<_, _, String>(&fresh.key, "away").unwrap(), "1");
    let _: u8 = eval(END, &[&fresh.key]).arg(0).query(&mut c).unwrap();
    assert!(!c.exists::<_, bool>(&fresh.key).unwrap());

    // A user's devices and its presence grace: one slot. The last device
    // gone starts the grace; one back within it is no first device and
    // ends it; a grace over with nobody back says offline, once.
    let user = [&devices_key(P, "ann")[..], &grace_key(P, "ann")];
    assert_eq!(cluster.slot(user[0]), cluster.slot(user[1]));
    let added: Vec<String> = eval(ADD, &user).arg("aa:1").arg(0).arg("r").query(&mut c).unwrap();
    assert_eq!(added, ["1"], "the first device");
    let last: u8 = eval(REMOVE, &user).arg("aa:1").arg(1000).query(&mut c).unwrap();
    assert_eq!(last, 1);
    let back: Vec<String> = eval(ADD, &user).arg("bb:2").arg(0).arg("r").query(&mut c).unwrap();
    assert_eq!(back, ["0"], "back within the grace");
    let over: u8 = eval(GRACE_OVER, &user).arg("aa:1").query(&mut c).unwrap();
    assert_eq!(over, 0, "somebody came back");
    let _: u8 = eval(REMOVE, &user).arg("bb:2").arg(1000).query(&mut c).unwrap();
    let over: Vec<u8> = (0..2).map(|_| eval(GRACE_OVER, &user).arg("bb:2").query(&mut c).unwrap()).collect();
    assert_eq!(over, [1, 0], "offline, once");

    // Room history: the publish script (by its SHA, loaded on every master
    // as the node loads it on its Redis) and the read.
    for shard in cluster.shards() {
        let _: String =
            redis::cmd("SCRIPT").arg("LOAD").arg(PUBLISH).query(&mut cluster.connect(shard.master)).unwrap();
    }
    let history = History::new(100, Duration::from_secs(60));
    // Once to the history channel, once (as on a Redis Cluster) to the
    // room's sharded channel: a script may only SPUBLISH to its keys' slot.
    let room_channel = Some(format!("{P}:g:{{#lobby}}"));
    for (envelope, sharded) in [(&br#"[0,"/said","one"]"#[..], None), (br#"[0,"/said","two"]"#, room_channel)] {
        let call = publish_call(P, 0xaa, sharded, "#lobby", &history, "e1", envelope, &[]).expect("an envelope");
        let _: u64 = call.query(&mut c).unwrap();
    }
    let [meta, stream] = keys(P, "#lobby");
    let read: Value = eval(READ, &[&meta, &stream]).arg(2).query(&mut c).unwrap();
    let (epoch, latest, _, kept): (String, u64, u64, Vec<Value>) = redis::from_redis_value(read).unwrap();
    assert_eq!((&epoch[..], latest, kept.len()), ("e1", 2, 1));

    // A generated id: one key per call, claimed (taken back after a lapse
    // only from a node not live) and freed by its own claim only.
    let claim = IdClaim { key: id_key(P, "device-42"), id: "device-42".into(), token: 1, public };
    let answer: Value = claim.claim(&node, true, &[]).query(&mut c).unwrap();
    assert_eq!(read_claim(&answer).unwrap(), (true, None));
    let answer: Value = claim.claim(&node, false, std::slice::from_ref(&node)).query(&mut c).unwrap();
    assert_eq!(read_claim(&answer).unwrap(), (true, Some((0xaa, 1, public))));
    let freed: (u8, u8) =
        (release(&claim.key, &node, 2).query(&mut c).unwrap(), release(&claim.key, &node, 1).query(&mut c).unwrap());
    assert_eq!(freed, (0, 1));
}

/// Runs each command of `pipe` on its own: the cluster client routes each
/// by its keys' slot (its pipelines are another type).
fn run_each(c: &mut ClusterConnection, pipe: &redis::Pipeline) {
    for cmd in pipe.cmd_iter() {
        let _: Value =
            cmd.query(c).unwrap_or_else(|e| panic!("{:?}: {e}", String::from_utf8_lossy(&cmd.get_packed_command())));
    }
}
