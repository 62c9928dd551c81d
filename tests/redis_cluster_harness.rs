//! The Redis Cluster harness (tests/common/redis_cluster.rs) against real
//! redis-server processes: the cluster comes up with three masters serving
//! every slot, a sharded publish reaches a sharded subscriber on the master
//! that owns the channel (and only there), and a killed master's replica
//! takes over within a bounded time and serves its channels. Without
//! redis-server on the PATH these tests fail, unless `EMITWS_SKIP=redis`
//! leaves them out.
#![cfg(feature = "redis")]

use std::time::Duration;

#[path = "common/redis_cluster.rs"]
mod redis_cluster;

use redis::{Connection, Value};
use redis_cluster::{RedisCluster, MASTERS};

/// A connection to `port` subscribed (SSUBSCRIBE) to `channel`.
fn shard_subscriber(cluster: &RedisCluster, port: u16, channel: &str) -> Connection {
    let mut conn = cluster.connect(port);
    conn.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    conn.send_packed_command(&redis::cmd("SSUBSCRIBE").arg(channel).get_packed_command()).unwrap();
    let confirmed = conn.recv_response().unwrap();
    assert_eq!(strings(&confirmed)[..2], ["ssubscribe".to_owned(), channel.to_owned()]);
    conn
}

/// The texts of an array reply (a pub/sub message: kind, channel, payload).
fn strings(value: &Value) -> Vec<String> {
    let Value::Array(items) = value else { panic!("not an array: {value:?}") };
    items
        .iter()
        .map(|item| match item {
            Value::BulkString(bytes) => String::from_utf8_lossy(bytes).into_owned(),
            Value::Int(n) => n.to_string(),
            other => format!("{other:?}"),
        })
        .collect()
}

/// SPUBLISHes `payload` on `channel` through the cluster client (routed by
/// the channel's slot); how many subscribers of its shard got it.
fn spublish(cluster: &RedisCluster, channel: &str, payload: &str) -> usize {
    let mut conn = cluster.client().get_connection().expect("cluster connection");
    redis::cmd("SPUBLISH").arg(channel).arg(payload).query(&mut conn).expect("SPUBLISH")
}

#[test]
fn the_cluster_comes_up_with_every_slot_served() {
    let Some(cluster) = RedisCluster::start() else { return };
    let shards = cluster.shards();
    assert_eq!(shards.len(), MASTERS, "{shards:?}");
    let mut served: u32 = 0;
    for shard in &shards {
        assert_eq!(shard.replicas.len(), 1, "one replica per master: {shard:?}");
        served += shard.slots.iter().map(|&(from, to)| u32::from(to - from) + 1).sum::<u32>();
    }
    assert_eq!(served, 16_384);
    // A hash tag puts keys in one slot, which one master serves.
    assert_eq!(cluster.slot("emitws:n:{1f}:sockets"), cluster.slot("emitws:n:{1f}:g:#lobby"));
    assert_eq!(cluster.slot("emitws:n:{1f}:sockets"), cluster.slot("1f"));
    let mut conn = cluster.client().get_connection().unwrap();
    let _: () = redis::cmd("SET").arg("emitws:probe").arg("yes").query(&mut conn).unwrap();
    let owner = cluster.master_of("emitws:probe");
    let got: String = redis::cmd("GET").arg("emitws:probe").query(&mut cluster.connect(owner)).unwrap();
    assert_eq!(got, "yes");
}

#[test]
fn a_sharded_publish_reaches_the_subscriber_on_the_owning_shard() {
    let Some(cluster) = RedisCluster::start() else { return };
    // Channels on at least two shards: each is served by its own master.
    let channels: Vec<String> = (0..16).map(|i| format!("emitws:r:{{#room{i}}}")).collect();
    let owners: Vec<u16> = channels.iter().map(|c| cluster.master_of(c)).collect();
    assert!(owners.iter().any(|o| *o != owners[0]), "16 rooms all on one shard: {owners:?}");
    for (channel, &owner) in channels.iter().zip(&owners).take(4) {
        let mut subscriber = shard_subscriber(&cluster, owner, channel);
        assert_eq!(spublish(&cluster, channel, "hello"), 1, "one subscriber on {channel}'s shard");
        let message = strings(&subscriber.recv_response().unwrap());
        assert_eq!(message, ["smessage", channel.as_str(), "hello"]);
    }
    // Another master refuses the channel: it is not its shard's.
    let (channel, owner) = (&channels[0], owners[0]);
    let elsewhere = *cluster
        .live_ports()
        .iter()
        .find(|p| cluster.shards().iter().any(|s| s.master == **p && **p != owner))
        .unwrap();
    let refused: redis::RedisResult<Value> =
        redis::cmd("SSUBSCRIBE").arg(channel).query(&mut cluster.connect(elsewhere));
    let error = refused.expect_err("SSUBSCRIBE on a shard that does not own the channel");
    assert_eq!(error.code(), Some("MOVED"), "{error}");
}

#[test]
fn a_killed_master_is_replaced_by_its_replica() {
    let Some(mut cluster) = RedisCluster::start() else { return };
    let channel = "emitws:r:{#failover}";
    let slot = cluster.slot(channel);
    let (killed, promoted) = cluster.fail_over(slot);
    assert_ne!(killed, promoted);
    assert!(!cluster.live_ports().contains(&killed));
    assert_eq!(cluster.shards().len(), MASTERS);
    // The promoted replica serves the slot's channels and keys.
    let mut subscriber = shard_subscriber(&cluster, promoted, channel);
    assert_eq!(spublish(&cluster, channel, "after"), 1);
    assert_eq!(strings(&subscriber.recv_response().unwrap()), ["smessage", channel, "after"]);
    let mut conn = cluster.client().get_connection().unwrap();
    let _: () = redis::cmd("SET").arg(channel).arg(1).query(&mut conn).unwrap();
    assert_eq!(cluster.master_of(channel), promoted);
}
