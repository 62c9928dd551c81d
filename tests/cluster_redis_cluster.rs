//! The Redis adapter on a Redis Cluster (`redis+cluster://`), against real
//! redis-server processes the test starts (3 masters, 3 replicas: see
//! tests/common/redis_cluster.rs). Two app nodes share rooms whose channels
//! live on different masters: each room's broadcasts go over sharded
//! pub/sub on its own master only, listened to by the nodes with members
//! in it (checked with `PUBSUB SHARDNUMSUB` on every master); broadcasts to
//! everyone and to several rooms, messages to a socket and to a user,
//! queries, and history work as on one Redis. A master killed under a
//! room's channel is replaced by its replica, and that room's broadcasts
//! flow again (the gap is printed, not asserted), and a node listening
//! there tells the app (`StoreLost`, then `StoreBack`). Without redis-server on
//! the PATH these tests fail, unless `EMITWS_SKIP=redis` leaves them out.
//! A room's slot given to another master (the end of a resharding): the
//! nodes follow it there.
#![cfg(feature = "redis")]

use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

#[path = "common/app.rs"]
mod app_client;
mod common;
#[path = "common/redis_cluster.rs"]
mod redis_cluster;
// two_nodes reaches the single server's helpers as `crate::redis_server`.
use redis_cluster::single as redis_server;
#[path = "common/two_nodes.rs"]
mod two_nodes;

use app_client::{eventually, AppClient};
use common::WAIT;
use emitws::app::{App, BroadcastOpts, ClusterEvent, EventLimits, History, SocketId};
use redis_cluster::RedisCluster;
use serde_json::{json, Value};
use two_nodes::{options, wait_joined, Node};

/// The adapter's channel of a group (see `RedisLink::group_channel`).
fn channel(room: &str) -> String {
    format!("emitws:g:{{{room}}}")
}

/// `/login` sets the socket's user; `/join` and `/leave` a room; `/say`
/// `{room, text}` broadcasts `/said` to it (or to every room of `rooms`,
/// or to everyone), leaving the sender out; `/to` `{id, text}` emits
/// `/direct` to a socket by id; `/tell` `{user, text}` emits `/told` to a
/// user's devices; `/id` replies the socket's id. Rooms `#h…` keep history.
fn app() -> App {
    let mut app = App::new();
    app.limits(EventLimits::default().rate(None));
    app.history("#h*", History::new(100, Duration::from_secs(60)));
    app.on("/login", |req| {
        let user: String = req.data().expect("a user");
        req.set_user(&user);
        req.reply(&true);
    });
    app.on("/join", |req| {
        let room: String = req.data().expect("a room");
        req.join(&room).expect("may join");
        req.reply(&true);
    });
    app.on("/leave", |req| {
        let room: String = req.data().expect("a room");
        let left = req.leave(&room);
        req.reply(&left);
    });
    app.on("/say", |req| {
        let said: Value = req.data().expect("JSON");
        let mut opts = BroadcastOpts::all();
        for room in said["rooms"].as_array().into_iter().flatten().chain(said.get("room")) {
            opts = opts.and(room.as_str().expect("a room"));
        }
        let me = req.socket_id();
        req.broadcast("/said", &said["text"], opts.except(me)).expect("serializes");
        req.reply(&true);
    });
    app.on("/to", |req| {
        let to: Value = req.data().expect("JSON");
        let id: SocketId = to["id"].as_str().expect("an id").parse().expect("a socket id");
        req.app().emit_to(id, "/direct", &to["text"]).expect("serializes");
        req.reply(&true);
    });
    app.on("/tell", |req| {
        let tell: Value = req.data().expect("JSON");
        req.app().to_user(tell["user"].as_str().expect("a user")).emit("/told", &tell["text"]).expect("serializes");
        req.reply(&true);
    });
    app.on("/id", |req| {
        let id = req.socket_id().to_string();
        req.reply(&id);
    });
    app
}

/// The URL of the cluster, seeded with two of its nodes.
fn url(cluster: &RedisCluster) -> String {
    let seeds: Vec<String> = cluster.live_ports()[..2].iter().map(|p| format!("127.0.0.1:{p}")).collect();
    format!("redis+cluster://{}/", seeds.join(","))
}

/// Two app nodes on the cluster that see each other.
fn two_app_nodes(cluster: &RedisCluster) -> (Node, Node) {
    let start = || Node::start(&url(cluster), options(Duration::from_secs(2)), app());
    let (a, b) = (start(), start());
    wait_joined(&[&a, &b]);
    (a, b)
}

/// One room name per master, `prefix` then a number, each whose channel
/// that master serves.
fn room_per_master(cluster: &RedisCluster, prefix: &str) -> Vec<(String, u16)> {
    let mut rooms: Vec<(String, u16)> = Vec::new();
    for n in 0.. {
        let room = format!("{prefix}{n}");
        let master = cluster.master_of(&channel(&room));
        if !rooms.iter().any(|(_, m)| *m == master) {
            rooms.push((room, master));
        }
        if rooms.len() == cluster.shards().len() {
            return rooms;
        }
    }
    unreachable!()
}

/// How many subscribers `channel` has on the server at `port` (sharded pub/sub).
fn subscribers(cluster: &RedisCluster, port: u16, channel: &str) -> u64 {
    let reply: (String, u64) = redis::cmd("PUBSUB")
        .arg("SHARDNUMSUB")
        .arg(channel)
        .query(&mut cluster.connect(port))
        .expect("PUBSUB SHARDNUMSUB");
    reply.1
}

/// Waits until `channel` has `count` subscribers on its master and none elsewhere.
fn wait_listened(cluster: &RedisCluster, channel: &str, master: u16, count: u64) {
    let counts = || -> Vec<(u16, u64)> {
        cluster.shards().iter().map(|s| (s.master, subscribers(cluster, s.master, channel))).collect()
    };
    let deadline = Instant::now() + WAIT;
    loop {
        let now = counts();
        if now.iter().all(|&(port, n)| n == if port == master { count } else { 0 }) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{count} nodes on {channel}, on {master} only: subscribers by master {now:?}"
        );
        thread::sleep(Duration::from_millis(5));
    }
}

fn ask(client: &mut AppClient, event: &str, data: Value) -> Value {
    client.request(event, data).unwrap_or_else(|e| panic!("{event}: {e:?}"))
}

/// The next `/said` (its text, and its fourth element for a room with history).
fn said(client: &mut AppClient) -> (Value, Value) {
    let envelope = client.next();
    assert!(envelope[0] == 0 && envelope[1] == "/said", "expected /said, got {envelope}");
    (envelope[2].clone(), envelope.get(3).cloned().unwrap_or(Value::Null))
}

#[test]
fn two_nodes_share_rooms_sockets_users_and_history_over_a_redis_cluster() {
    let Some(cluster) = RedisCluster::start() else { return };
    let (a, b) = two_app_nodes(&cluster);
    let (mut ann, mut bob) = (AppClient::connect(a.addr()), AppClient::connect(b.addr()));
    assert_eq!(ask(&mut ann, "/login", json!("ann")), json!(true));
    assert_eq!(ask(&mut bob, "/login", json!("bob")), json!(true));
    let rooms = room_per_master(&cluster, "#r");
    for (room, master) in &rooms {
        ask(&mut ann, "/join", json!(room));
        ask(&mut bob, "/join", json!(room));
        // Each room's channel is listened to by both nodes, on its own master only.
        wait_listened(&cluster, &channel(room), *master, 2);
    }

    // A room's broadcast, on each master.
    for (room, _) in &rooms {
        ask(&mut ann, "/say", json!({ "room": room, "text": format!("to {room}") }));
        assert_eq!(said(&mut bob).0, json!(format!("to {room}")));
    }
    // To two rooms: one copy; to everyone: over every node's channel.
    ask(&mut ann, "/say", json!({ "rooms": [rooms[0].0, rooms[1].0], "text": "two rooms" }));
    assert_eq!(said(&mut bob).0, json!("two rooms"));
    ask(&mut bob, "/say", json!({ "text": "everyone" }));
    assert_eq!(said(&mut ann).0, json!("everyone"));
    bob.expect_silence(Duration::from_millis(300));

    // To a socket by id, and to a user, from the other node.
    let bob_id = ask(&mut bob, "/id", Value::Null);
    ask(&mut ann, "/to", json!({ "id": bob_id, "text": "just you" }));
    assert_eq!(bob.expect_event("/direct"), json!("just you"));
    ask(&mut bob, "/tell", json!({ "user": "ann", "text": "hi ann" }));
    assert_eq!(ann.expect_event("/told"), json!("hi ann"));

    // Queries read every node's presence, each in its own slot.
    let view = a.cluster();
    assert_eq!(view.socket_count().expect("count"), 2);
    assert_eq!(view.users().expect("users"), ["ann", "bob"]);
    let sizes = view.rooms().expect("rooms");
    for (room, _) in &rooms {
        assert!(sizes.contains(&(room.clone(), 2)), "{room} in {sizes:?}");
    }

    // History: numbered by the script on the room's master, which publishes
    // it on the room's channel: the sender's node delivers it too.
    let history = &room_per_master(&cluster, "#h")[0];
    ask(&mut ann, "/join", json!(history.0));
    ask(&mut bob, "/join", json!(history.0));
    wait_listened(&cluster, &channel(&history.0), history.1, 2);
    for n in 1..=2 {
        ask(&mut ann, "/say", json!({ "room": history.0, "text": n }));
        let (text, position) = said(&mut bob);
        assert_eq!((text, &position["room"], &position["offset"]), (json!(n), &json!(history.0), &json!(n)));
    }

    // The last member of a room on a node leaving: that node stops listening.
    assert_eq!(ask(&mut bob, "/leave", json!(rooms[1].0)), json!(true));
    wait_listened(&cluster, &channel(&rooms[1].0), rooms[1].1, 1);
    ask(&mut ann, "/say", json!({ "room": rooms[1].0, "text": "gone" }));
    bob.expect_silence(Duration::from_millis(300));
    ann.close();
    bob.close();
    a.close();
    b.close();
}

#[test]
fn a_rooms_broadcasts_flow_again_after_its_master_fails_over() {
    let Some(mut cluster) = RedisCluster::start() else { return };
    // Node b tells of its health: the outage of the failed master's channels.
    let events = Arc::new(Mutex::new(Vec::new()));
    let mut b_app = app();
    let seen = events.clone();
    b_app.on_cluster(move |_, event| seen.lock().unwrap().push(event.clone()));
    let a = Node::start(&url(&cluster), options(Duration::from_secs(2)), app());
    let b = Node::start(&url(&cluster), options(Duration::from_secs(2)), b_app);
    wait_joined(&[&a, &b]);
    let (mut ann, mut bob) = (AppClient::connect(a.addr()), AppClient::connect(b.addr()));
    let rooms = room_per_master(&cluster, "#f");
    for (room, master) in &rooms {
        ask(&mut ann, "/join", json!(room));
        ask(&mut bob, "/join", json!(room));
        wait_listened(&cluster, &channel(room), *master, 2);
    }
    let (room, _) = rooms[0].clone();
    let started = Instant::now();
    // Kills the master and waits for its replica to take over (the
    // cluster's node timeout), then the adapter finds the new map.
    let (killed, successor) = cluster.fail_over(cluster.slot(&channel(&room)));
    // Says numbered texts until one arrives: the outage of that room.
    let mut n = 0;
    let gap = loop {
        n += 1;
        assert!(started.elapsed() < Duration::from_secs(30), "{room}'s broadcasts never came back");
        ask(&mut ann, "/say", json!({ "room": room, "text": n }));
        if let Some(envelope) = bob.next_within(Duration::from_millis(100)) {
            assert_eq!(envelope[1], "/said", "{envelope}");
            break started.elapsed();
        }
    };
    println!("{room}: master {killed} failed over to {successor}; broadcasts back after {gap:?}");
    wait_listened(&cluster, &channel(&room), successor, 2);
    // The other rooms, and the queries, work on the new map.
    for (other, master) in &rooms[1..] {
        wait_listened(&cluster, &channel(other), *master, 2);
        ask(&mut bob, "/say", json!({ "room": other, "text": "still here" }));
        assert_eq!(said(&mut ann).0, json!("still here"));
    }
    eventually("both sockets counted", || a.cluster().socket_count().is_ok_and(|n| n == 2));
    // b lost the master under its channel, then heard every channel again.
    eventually("StoreLost then StoreBack on b", || {
        let events = events.lock().unwrap();
        let lost = events.iter().position(|e| matches!(e, ClusterEvent::StoreLost { .. }));
        lost.is_some_and(|at| events[at..].iter().any(|e| matches!(e, ClusterEvent::StoreBack { .. })))
    });
    ann.close();
    bob.close();
    a.close();
    b.close();
}

#[test]
fn a_rooms_channel_follows_its_slot_to_another_master() {
    let Some(cluster) = RedisCluster::start() else { return };
    let (a, b) = two_app_nodes(&cluster);
    let (mut ann, mut bob) = (AppClient::connect(a.addr()), AppClient::connect(b.addr()));
    let rooms = room_per_master(&cluster, "#m");
    let ((room, from), (_, to)) = (rooms[0].clone(), rooms[1].clone());
    ask(&mut ann, "/join", json!(room));
    ask(&mut bob, "/join", json!(room));
    wait_listened(&cluster, &channel(&room), from, 2);
    let started = Instant::now();
    cluster.give_slot(cluster.slot(&channel(&room)), to);
    // The old master unsubscribes the nodes (a push); they read the map
    // again and subscribe on the new one.
    wait_listened(&cluster, &channel(&room), to, 2);
    println!("{room}: subscribed on the new master after {:?}", started.elapsed());
    ask(&mut ann, "/say", json!({ "room": room, "text": "moved" }));
    assert_eq!(said(&mut bob).0, json!("moved"));
    eventually("both sockets counted", || b.cluster().socket_count().is_ok_and(|n| n == 2));
    ann.close();
    bob.close();
    a.close();
    b.close();
}
