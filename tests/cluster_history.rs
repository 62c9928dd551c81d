//! Room history across a cluster (PROTOCOL.md §13, "Across a cluster"):
//! two app nodes over one real redis-server, raw WebSocket clients in a
//! room with history on each. A room's offsets and epoch are the
//! cluster's, whichever node a broadcast came from; a flush of Redis starts
//! a new epoch; a socket resumed on its node recovers what the other node
//! published meanwhile. Without redis-server on the PATH these tests fail,
//! naming what to install, unless `EMITWS_SKIP=redis` leaves them out.
#![cfg(feature = "redis")]

#[path = "common/app.rs"]
mod app_client;
mod common;
#[path = "common/redis.rs"]
mod redis_server;
#[path = "common/two_nodes.rs"]
mod two_nodes;

use std::thread;
use std::time::Duration;

use app_client::{eventually, AppClient};
use emitws::app::{App, BroadcastOpts, EventLimits, History, Running, SocketId};
use redis_server::Redis;
use serde_json::{json, Value};
use two_nodes::{options, two_nodes, Node};

const TTL: Duration = Duration::from_secs(60);

/// The app of a node whose `#r` keeps `size` broadcasts: `/join` joins
/// `#r` and replies the socket's id; `/say` broadcasts `/said` to `#r`,
/// leaving the sender out.
fn history_app(size: usize) -> App {
    let mut app = App::new();
    app.limits(EventLimits::default().rate(None));
    app.history("#r", History::new(size, TTL));
    app.on("/join", |req| {
        req.join("#r").expect("may join");
        req.reply(&req.socket_id().to_string());
    });
    app.on("/say", |req| {
        let text: String = req.data().expect("a text");
        req.broadcast("/said", &text, BroadcastOpts::to("#r")).expect("serializes");
        req.reply(&true);
    });
    app
}

/// A client in `#r` on `running`: (client, socket id, resume token).
fn member(running: &Running) -> (AppClient, String, String) {
    let mut client = AppClient::connect(running.local_addr());
    let token = client.ready.as_ref().and_then(|r| r["resume"].as_str()).unwrap_or_default().to_string();
    let id = client.request("/join", Value::Null).expect("joined").as_str().expect("an id").to_string();
    (client, id, token)
}

/// The next `/said`: (text, its fourth element).
fn said(client: &mut AppClient) -> (String, Value) {
    let envelope = client.next();
    assert!(envelope[0] == 0 && envelope[1] == "/said", "expected /said, got {envelope}");
    (envelope[2].as_str().expect("a text").to_string(), envelope.get(3).cloned().unwrap_or(Value::Null))
}

fn broadcast(running: &Running, text: &str, opts: BroadcastOpts) {
    running.broadcast("/said", text, opts).expect("serializes");
}

#[test]
fn every_member_on_every_node_sees_one_order_of_offsets_whichever_node_published() {
    let Some(redis) = Redis::start() else { return };
    let (a, b) = two_nodes(&redis, || history_app(1000));
    let mut members: Vec<AppClient> = [&a, &a, &b, &b].iter().map(|n| member(n).0).collect();
    const EACH: usize = 50;
    thread::scope(|scope| {
        for (running, name) in [(&a, "a"), (&b, "b")] {
            scope.spawn(move || {
                (0..EACH).for_each(|n| broadcast(running, &format!("{name}{n}"), BroadcastOpts::to("#r")))
            });
        }
    });
    let seen: Vec<Vec<(String, Value)>> =
        members.iter_mut().map(|client| (0..2 * EACH).map(|_| said(client)).collect()).collect();
    let epoch = seen[0][0].1["epoch"].clone();
    assert!(epoch.as_str().is_some_and(|e| e.len() == 16), "{:?}", seen[0][0]);
    for (n, (_, element)) in seen[0].iter().enumerate() {
        assert_eq!(*element, json!({ "room": "#r", "offset": n + 1, "epoch": epoch }));
    }
    for other in &seen[1..] {
        assert_eq!(*other, seen[0], "the same deliveries in the same order on every node");
    }
    // Each node's broadcasts keep their own order within the cluster's.
    for name in ["a", "b"] {
        let texts: Vec<&str> = seen[0].iter().map(|(t, _)| t.as_str()).filter(|t| t.starts_with(name)).collect();
        assert_eq!(texts, (0..EACH).map(|n| format!("{name}{n}")).collect::<Vec<_>>());
    }
    members.into_iter().for_each(AppClient::close);
}

#[test]
fn a_broadcast_leaves_out_its_sender_and_the_sockets_excepted_on_other_nodes() {
    let Some(redis) = Redis::start() else { return };
    let (a, b) = two_nodes(&redis, || history_app(100));
    let (mut ann, _, _) = member(&a);
    let (mut bob, bob_id, _) = member(&b);
    let (mut cat, _, _) = member(&b);
    assert_eq!(ann.request("/say", json!("from ann")), Ok(json!(true)));
    let first = said(&mut bob);
    assert_eq!(first.0, "from ann");
    assert_eq!(said(&mut cat), first);
    let epoch = first.1["epoch"].clone();
    let bob_id: SocketId = bob_id.parse().expect("a socket id");
    broadcast(&a, "not bob", BroadcastOpts::to("#r").except(bob_id));
    broadcast(&a, "all", BroadcastOpts::to("#r"));
    assert_eq!(said(&mut ann), ("not bob".into(), json!({ "room": "#r", "offset": 2, "epoch": epoch })));
    assert_eq!(said(&mut cat).0, "not bob");
    // Bob's next delivery is offset 3: 2 left him out.
    assert_eq!(said(&mut bob), ("all".into(), json!({ "room": "#r", "offset": 3, "epoch": epoch })));
    assert_eq!(said(&mut ann).0, "all");
    assert_eq!(said(&mut cat).0, "all");
    for client in [ann, bob, cat] {
        client.close();
    }
}

#[test]
fn a_flush_of_redis_starts_a_new_epoch_at_offset_one() {
    let Some(redis) = Redis::start() else { return };
    let (a, b) = two_nodes(&redis, || history_app(100));
    let (mut ann, _, _) = member(&b);
    broadcast(&a, "1", BroadcastOpts::to("#r"));
    broadcast(&a, "2", BroadcastOpts::to("#r"));
    let (_, first) = said(&mut ann);
    assert_eq!(said(&mut ann).1["offset"], 2);
    let mut raw = redis::Client::open(redis.url()).and_then(|c| c.get_connection()).expect("Redis up");
    let _: () = redis::cmd("FLUSHALL").query(&mut raw).expect("flushed");
    broadcast(&a, "after", BroadcastOpts::to("#r"));
    let (text, element) = said(&mut ann);
    assert_eq!(text, "after");
    assert_eq!(element["offset"], 1);
    assert!(element["epoch"].is_string() && element["epoch"] != first["epoch"], "{element} after {first}");
    ann.close();
}

/// Resumes `token` on `running` with `#r` at (epoch, offset): what came
/// before the reply, and the reply's `#r`.
fn resume(running: &Running, token: &str, epoch: &Value, offset: u64) -> (AppClient, Vec<Value>, Value) {
    let mut client = AppClient::connect_to(running.local_addr(), "/?emitws_resume=1", &[]).expect("upgraded");
    let id = client
        .send_request("@resume", json!({ "token": token, "rooms": { "#r": { "epoch": epoch, "offset": offset } } }));
    let mut before = Vec::new();
    loop {
        let envelope = client.next();
        if envelope[0] == 2 && envelope[1] == id {
            assert_eq!(envelope[2]["resumed"], true, "{envelope}");
            client.wait_ready();
            return (client, before, envelope[2]["rooms"]["#r"].clone());
        }
        before.push(envelope);
    }
}

#[test]
fn a_socket_resumed_on_its_node_recovers_what_the_other_node_published_meanwhile() {
    let Some(redis) = Redis::start() else { return };
    let (a, b) = two_nodes(&redis, || history_app(100));
    let (mut ann, socket, token) = member(&a);
    let (mut cat, _, _) = member(&a);
    assert!(!token.is_empty(), "the app keeps sessions");
    broadcast(&b, "1", BroadcastOpts::to("#r"));
    let (_, first) = said(&mut ann);
    let epoch = first["epoch"].clone();
    a.lose(ann, &socket, 0);
    for text in ["2", "3", "4"] {
        broadcast(&b, text, BroadcastOpts::to("#r"));
    }
    // Node a has them all before the resume: another member there saw them.
    let offsets: Vec<Value> = (0..4).map(|_| said(&mut cat).1["offset"].clone()).collect();
    assert_eq!(offsets, [1, 2, 3, 4]);

    let (back, missed, room) = resume(&a, &token, &epoch, 1);
    let texts: Vec<&Value> = missed.iter().filter(|e| e[1] == "/said").map(|e| &e[2]).collect();
    assert_eq!(texts, ["2", "3", "4"]);
    assert_eq!(missed[0][3], json!({ "room": "#r", "offset": 2, "epoch": epoch }));
    assert_eq!(room, json!({ "recovered": true, "epoch": epoch, "offset": 4 }));
    back.close();
    cat.close();
}

#[test]
fn what_overflowed_the_history_is_not_recovered() {
    let Some(redis) = Redis::start() else { return };
    let (a, b) = two_nodes(&redis, || history_app(3));
    let (mut ann, socket, token) = member(&a);
    broadcast(&b, "0", BroadcastOpts::to("#r"));
    let (_, first) = said(&mut ann);
    let epoch = first["epoch"].clone();
    a.lose(ann, &socket, 0);
    let (mut cat, _, _) = member(&a);
    for n in 1..=10 {
        broadcast(&b, &n.to_string(), BroadcastOpts::to("#r"));
    }
    for _ in 1..=10 {
        said(&mut cat);
    }
    let (back, missed, room) = resume(&a, &token, &epoch, 1);
    assert!(missed.iter().all(|e| e[1] != "/said"), "{missed:?}");
    assert_eq!(room, json!({ "recovered": false, "epoch": epoch, "offset": 11 }));
    back.close();
    cat.close();
}

#[test]
fn with_redis_down_a_broadcast_to_a_room_with_history_is_dropped_and_counted() {
    let Some(redis) = Redis::start() else { return };
    let a = Node::start(&redis.url(), options(Duration::from_secs(1)), history_app(100));
    let (mut ann, _, _) = member(&a);
    broadcast(&a, "before", BroadcastOpts::to("#r"));
    assert_eq!(said(&mut ann).1["offset"], 1);
    let dropped = a.metrics().snapshot().cluster_dropped;
    drop(redis);
    broadcast(&a, "lost", BroadcastOpts::to("#r"));
    eventually("the broadcast counted as dropped", || a.metrics().snapshot().cluster_dropped > dropped);
    ann.expect_silence(common::ms(200));
    ann.close();
}
