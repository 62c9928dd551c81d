//! Resume with room history across a cluster (PROTOCOL.md §13, "Across a
//! cluster"), driven from outside: app nodes over one real redis-server,
//! raw WebSocket clients. A socket in a room with history is lost on one
//! node and resumes on another: it gets exactly the broadcasts it missed,
//! from any node, in offset order, then live ones with no gap and no
//! duplicate; a broadcast that left it out stays out; a killed node's
//! sockets recover once its heartbeat expires; a flush of Redis is a clean
//! new socket or a new epoch, never a wrong replay; two outages in a row
//! replay nothing twice; a mass resume reads each room's history once per
//! batch. Without redis-server on the PATH these tests fail, naming what to
//! install, unless `EMITWS_SKIP=redis` leaves them out.
#![cfg(feature = "redis")]

#[path = "common/app.rs"]
mod app_client;
#[path = "common/child_node.rs"]
mod child_node;
mod common;
#[path = "common/redis.rs"]
mod redis_server;
#[path = "common/two_nodes.rs"]
mod two_nodes;

use std::net::{Shutdown, SocketAddr};
use std::thread;
use std::time::Duration;

use app_client::{eventually, AppClient};
use emitws::app::{App, BroadcastOpts, EventLimits, History};
use redis_server::{wait_for, Redis};
use serde_json::{json, Value};
use two_nodes::{options, serve_until_killed, two_nodes, wait_joined, Node};

/// The environment variable that makes [`killed_node`] run a node.
const CHILD_NODE: &str = "EMITWS_TEST_CHILD_NODE";

/// Every room `#r…` keeps this many broadcasts, for a minute.
const KEPT: usize = 1000;

/// The test app: `?user=NAME` auth; rooms `#r…` keep history; `/join ROOM`
/// replies the socket's id; `/say [ROOM, TEXT]` broadcasts `/said` to the
/// room, leaving the sender out.
fn app() -> App {
    let mut app = App::new();
    app.limits(EventLimits::default().rate(None));
    app.resume_window(Some(Duration::from_secs(30)));
    app.resume_buffer(10);
    app.history("#r*", History::new(KEPT, Duration::from_secs(60)));
    app.identify(|conn| Ok(conn.query_value("user").unwrap_or_else(|| "anon".into())));
    app.on("/join", |req| {
        let room: String = req.data().expect("a room");
        req.join(&room).expect("may join");
        req.reply(&req.socket_id().to_string());
    });
    app.on("/say", |req| {
        let (room, text): (String, String) = req.data().expect("[room, text]");
        req.broadcast("/said", &text, BroadcastOpts::to(&room)).expect("serializes");
        req.reply(&true);
    });
    app
}

/// A node of the test app over `redis`, its heartbeats living `heartbeat`.
fn start(redis: &Redis, heartbeat: Duration) -> Node {
    Node::start(&redis.url(), options(heartbeat), app())
}

/// Broadcasts `/said` `text` to `room` from `node`.
fn say(node: &Node, room: &str, text: &str) {
    node.running.broadcast("/said", text, BroadcastOpts::to(room)).expect("serializes");
}

/// Connects as `user` and joins `room`: (client, socket id, resume token).
fn member(addr: SocketAddr, user: &str, room: &str) -> (AppClient, String, String) {
    let mut client = AppClient::connect_to(addr, &format!("/?user={user}"), &[]).expect("upgraded");
    let ready = client.wait_ready();
    let token = ready["resume"].as_str().unwrap_or_else(|| panic!("no resume token in {ready}")).to_string();
    let socket = client.request("/join", json!(room)).expect("joined").as_str().expect("an id").to_string();
    assert_eq!(ready["socket"], socket.as_str());
    (client, socket, token)
}

/// The next `/said`: (text, its fourth element).
fn said(client: &mut AppClient) -> (String, Value) {
    let envelope = client.next();
    assert!(envelope[0] == 0 && envelope[1] == "/said", "expected /said, got {envelope}");
    (envelope[2].as_str().expect("a text").to_string(), envelope.get(3).cloned().unwrap_or(Value::Null))
}

/// Opens a connection as `user` waiting for `@resume` and sends it with
/// `token` and `rooms`; returns the client and the request's id.
fn send_resume(addr: SocketAddr, user: &str, token: &str, rooms: Value) -> (AppClient, u64) {
    let mut client = AppClient::connect_to(addr, &format!("/?user={user}&emitws_resume=1"), &[]).expect("upgraded");
    let id = client.send_request("@resume", json!({ "token": token, "rooms": rooms }));
    (client, id)
}

/// Reads what follows a `@resume` up to `@ready`: (what came before the
/// reply, the reply, `@ready`).
fn read_resume(client: &mut AppClient, id: u64) -> (Vec<Value>, Value, Value) {
    let mut before = Vec::new();
    loop {
        let envelope = client.next();
        if envelope[0] == 2 && envelope[1] == id {
            let ready = client.wait_ready();
            let resumed = envelope[2]["resumed"] == true;
            assert_eq!(ready["resumed"] == true, resumed, "{ready} after {envelope}");
            return (before, envelope[2].clone(), ready);
        }
        before.push(envelope);
    }
}

fn resume(addr: SocketAddr, user: &str, token: &str, rooms: Value) -> (AppClient, Vec<Value>, Value, Value) {
    let (mut client, id) = send_resume(addr, user, token, rooms);
    let (before, reply, ready) = read_resume(&mut client, id);
    (client, before, reply, ready)
}

/// The `/said` texts among `envelopes`, with their fourth elements.
fn saids(envelopes: &[Value]) -> Vec<(String, Value)> {
    envelopes
        .iter()
        .filter(|e| e[0] == 0 && e[1] == "/said")
        .map(|e| (e[2].as_str().expect("a text").to_string(), e.get(3).cloned().unwrap_or(Value::Null)))
        .collect()
}

/// The next `count` `/said` a member of the room gets, in order.
fn watch(watcher: &mut AppClient, count: usize) -> Vec<(String, Value)> {
    (0..count).map(|_| said(watcher)).collect()
}

#[test]
fn a_socket_lost_on_one_node_recovers_on_another_what_three_nodes_broadcast_then_live_without_gap_or_duplicate() {
    recovers_then_live(false);
}

#[test]
fn the_same_on_a_node_started_while_the_socket_was_away_which_reads_what_it_missed_from_redis() {
    recovers_then_live(true);
}

/// Loses a socket in `#r` on node A; nodes A, B and C broadcast; it
/// resumes on B (or on a node started meanwhile: `on_new_node`) while C
/// broadcasts.
fn recovers_then_live(on_new_node: bool) {
    let Some(redis) = Redis::start() else { return };
    let heartbeat = Duration::from_secs(2);
    let (a, b, c) = (start(&redis, heartbeat), start(&redis, heartbeat), start(&redis, heartbeat));
    wait_joined(&[&a, &b, &c]);
    let (mut ann, socket, token) = member(a.addr(), "ann", "#r");
    let (mut cat, _, _) = member(b.addr(), "cat", "#r");
    say(&a, "#r", "0");
    let (_, first) = said(&mut ann);
    assert_eq!(watch(&mut cat, 1)[0].1, first);
    let epoch = first["epoch"].clone();
    a.lose(ann, &socket, 0);

    for n in 1..=3 {
        for (node, name) in [(&a, "a"), (&b, "b"), (&c, "c")] {
            say(node, "#r", &format!("{name}{n}"));
        }
    }
    // The cluster's order, as a member saw it.
    let missed = watch(&mut cat, 9);
    let d = on_new_node.then(|| start(&redis, heartbeat));
    if let Some(d) = &d {
        wait_joined(&[&a, &b, &c, d]);
    }
    let resume_on = d.as_ref().unwrap_or(&b);
    // Broadcasts from node C while the resume is in progress.
    const LIVE: usize = 30;
    let (mut back, before, reply, ready) = thread::scope(|scope| {
        let publisher = scope.spawn(|| {
            for n in 0..LIVE {
                say(&c, "#r", &format!("live{n}"));
                thread::sleep(Duration::from_millis(2));
            }
        });
        let resumed = resume(resume_on.addr(), "ann", &token, json!({ "#r": { "epoch": epoch, "offset": 1 } }));
        publisher.join().expect("published");
        resumed
    });
    assert_eq!((&reply["resumed"], &reply["socket"], &ready["socket"]), (&json!(true), &json!(socket), &json!(socket)));
    let room = &reply["rooms"]["#r"];
    assert_eq!((&room["recovered"], &room["epoch"]), (&json!(true), &epoch), "{reply}");
    let replayed = saids(&before);
    let latest = room["offset"].as_u64().expect("an offset") as usize;
    assert!((10..=10 + LIVE).contains(&latest), "{reply}");
    // Exactly what the socket missed up to the reply's offset, oldest first, as first delivered.
    assert_eq!(replayed.len(), latest - 1, "{before:?}");
    assert_eq!(replayed[..9], missed[..]);
    // Then the live ones: every offset once, none missing, to the last.
    let mut seen: Vec<(String, Value)> = replayed;
    seen.extend((latest..10 + LIVE).map(|_| said(&mut back)));
    let offsets: Vec<u64> = seen.iter().map(|(_, e)| e["offset"].as_u64().expect("an offset")).collect();
    assert_eq!(offsets, (2..=(10 + LIVE) as u64).collect::<Vec<_>>());
    assert!(seen.iter().all(|(_, e)| e["epoch"] == epoch && e["room"] == "#r"));
    let texts: Vec<&str> = seen[9..].iter().map(|(t, _)| t.as_str()).collect();
    assert_eq!(texts, (0..LIVE).map(|n| format!("live{n}")).collect::<Vec<_>>());
    back.expect_silence(common::ms(200));
    watch(&mut cat, LIVE);
    back.close();
    cat.close();
    for node in [Some(a), Some(b), Some(c), d].into_iter().flatten() {
        node.close();
    }
}

#[test]
fn a_socket_that_lists_no_offsets_recovers_from_where_it_joined_on_another_node() {
    let Some(redis) = Redis::start() else { return };
    let (a, b) = two_nodes(&redis, app);
    let (mut cat, _, _) = member(b.addr(), "cat", "#r");
    let (mut bob, _, _) = member(a.addr(), "bob", "#r");
    say(&b, "#r", "before ann");
    // Node A has it (a member there saw it): the room's offset there at Ann's join is 1.
    assert_eq!(said(&mut bob).0, "before ann");
    said(&mut cat);
    let (ann, socket, token) = member(a.addr(), "ann", "#r");
    a.lose(ann, &socket, 0);
    for text in ["a1", "b1", "a2"] {
        let node = if text.starts_with('a') { &a } else { &b };
        say(node, "#r", text);
    }
    let missed = watch(&mut cat, 3);
    let (back, before, reply, _) = resume(b.addr(), "ann", &token, json!({}));
    assert_eq!(reply["resumed"], true, "{reply}");
    let epoch = &missed[0].1["epoch"];
    assert_eq!(reply["rooms"]["#r"], json!({ "recovered": true, "epoch": epoch, "offset": 4 }), "{reply}");
    assert_eq!(saids(&before), missed, "from the offset the room had at the join: 2, 3, 4");
    assert_eq!(missed[0].1["offset"], 2);
    assert_eq!(watch(&mut bob, 3), missed);
    back.close();
    bob.close();
    cat.close();
    a.close();
    b.close();
}

#[test]
fn a_broadcast_that_left_the_socket_out_on_its_node_is_not_replayed_on_another() {
    let Some(redis) = Redis::start() else { return };
    let (a, b) = two_nodes(&redis, app);
    let (mut ann, socket, token) = member(a.addr(), "ann", "#r");
    let (mut bob, _, _) = member(a.addr(), "bob", "#r");
    let (mut cat, _, _) = member(b.addr(), "cat", "#r");
    say(&b, "#r", "1");
    let (_, first) = said(&mut ann);
    said(&mut bob);
    assert_eq!(ann.request("/say", json!(["#r", "mine"])), Ok(json!(true)));
    assert_eq!(said(&mut bob).0, "mine");
    a.lose(ann, &socket, 0);
    say(&b, "#r", "3");
    assert_eq!(said(&mut bob).1["offset"], 3);
    // Node B has them all (a member there saw them).
    assert_eq!(watch(&mut cat, 3)[2].1["offset"], 3);

    let (back, before, reply, _) = resume(b.addr(), "ann", &token, json!({ "#r": first }));
    let epoch = &first["epoch"];
    assert_eq!(reply["rooms"]["#r"], json!({ "recovered": true, "epoch": epoch, "offset": 3 }), "{reply}");
    assert_eq!(saids(&before), [("3".to_string(), json!({ "room": "#r", "offset": 3, "epoch": epoch }))]);
    back.close();
    bob.close();
    cat.close();
    a.close();
    b.close();
}

/// Not a test of its own: the node that
/// [`a_killed_nodes_socket_resumes_on_another_with_its_rooms_and_what_it_missed`]
/// runs in a child process (it does nothing unless that test set
/// [`CHILD_NODE`] to the Redis URL). It prints its address, then waits to be
/// killed. Ignored, so that it does not show as a test that passed.
#[test]
#[ignore = "the child node of the killed-node test, which runs it"]
fn killed_node() {
    serve_until_killed(CHILD_NODE, options(Duration::from_millis(600)), app);
}

#[test]
fn a_killed_nodes_socket_resumes_on_another_with_its_rooms_and_what_it_missed() {
    let Some(redis) = Redis::start() else { return };
    let b = start(&redis, Duration::from_millis(600));
    let (mut child, addr) = child_node::spawn("killed_node", CHILD_NODE, &redis.url());
    wait_for(Duration::from_secs(5), || b.adapter.link().nodes().is_ok_and(|alive| alive.len() == 2));
    let (mut ann, socket, token) = member(addr, "ann", "#r");
    let (mut cat, _, _) = member(b.addr(), "cat", "#r");
    say(&b, "#r", "0");
    let (_, first) = said(&mut ann);
    said(&mut cat);
    // SIGKILL: no close, no presence cleanup, no session marked away.
    child.0.kill().expect("kill the node");
    child.0.wait().expect("reap it");
    drop(ann);
    for text in ["1", "2", "3"] {
        say(&b, "#r", text);
    }
    let missed = watch(&mut cat, 3);

    let (mut back, before, reply, _) = resume(b.addr(), "ann", &token, json!({ "#r": first }));
    assert_eq!((&reply["resumed"], &reply["socket"]), (&json!(true), &json!(socket)), "{reply}");
    let epoch = &first["epoch"];
    assert_eq!(reply["rooms"]["#r"], json!({ "recovered": true, "epoch": epoch, "offset": 4 }), "{reply}");
    assert_eq!(saids(&before), missed);
    // Back in its room.
    say(&b, "#r", "4");
    assert_eq!(said(&mut back), ("4".to_string(), json!({ "room": "#r", "offset": 5, "epoch": epoch })));
    said(&mut cat);
    back.close();
    cat.close();
    b.close();
}

fn redis_conn(redis: &Redis) -> redis::Connection {
    redis::Client::open(redis.url()).and_then(|c| c.get_connection()).expect("Redis up")
}

#[test]
fn a_flush_of_redis_while_away_is_a_clean_new_socket_or_with_the_session_kept_a_new_epoch() {
    let Some(redis) = Redis::start() else { return };
    let (a, b) = two_nodes(&redis, app);
    let mut raw = redis_conn(&redis);

    // FLUSHALL takes the session records too: a new socket, nothing replayed.
    let (mut ann, socket, token) = member(a.addr(), "ann", "#r");
    say(&b, "#r", "old");
    let (_, first) = said(&mut ann);
    a.lose(ann, &socket, 0);
    let _: () = redis::cmd("FLUSHALL").query(&mut raw).expect("flushed");
    let (mut cat, _, _) = member(b.addr(), "cat", "#r");
    say(&b, "#r", "after");
    let (_, after) = said(&mut cat);
    assert_eq!(after["offset"], 1);
    assert_ne!(after["epoch"], first["epoch"]);
    let (mut fresh, before, reply, ready) = resume(b.addr(), "ann", &token, json!({ "#r": first }));
    assert_eq!(reply["resumed"], false, "{reply}");
    assert_ne!(reply["socket"], socket.as_str());
    assert_eq!(reply["rooms"]["#r"]["recovered"], false, "{reply}");
    assert_eq!(reply["direct"], json!({ "recovered": false }), "{reply}");
    assert!(saids(&before).is_empty(), "nothing replayed to a new socket: {before:?}");
    assert_eq!(ready["socket"], reply["socket"]);
    // A new socket: in no room.
    say(&b, "#r", "not for a new socket");
    said(&mut cat);
    fresh.expect_silence(common::ms(200));
    fresh.close();

    // Only the history's keys deleted: the session survives, the epoch is new.
    let (mut bob, socket, token) = member(a.addr(), "bob", "#r");
    say(&b, "#r", "kept");
    let (_, first) = said(&mut bob);
    said(&mut cat);
    a.lose(bob, &socket, 0);
    let keys: Vec<String> = redis::cmd("KEYS").arg("emitws:h:*").query(&mut raw).expect("keys");
    assert!(!keys.is_empty(), "the history's keys");
    let _: () = redis::cmd("DEL").arg(&keys).query(&mut raw).expect("deleted");
    say(&b, "#r", "new epoch");
    let (_, renewed) = said(&mut cat);
    assert_eq!(renewed["offset"], 1);
    assert_ne!(renewed["epoch"], first["epoch"]);
    let (back, before, reply, _) = resume(b.addr(), "bob", &token, json!({ "#r": first }));
    assert_eq!((&reply["resumed"], &reply["socket"]), (&json!(true), &json!(socket)), "{reply}");
    let new_epoch = &renewed["epoch"];
    assert_eq!(reply["rooms"]["#r"], json!({ "recovered": false, "epoch": new_epoch, "offset": 1 }), "{reply}");
    // Nothing of the old epoch comes back.
    assert!(saids(&before).iter().all(|(_, e)| e["epoch"] == *new_epoch), "{before:?}");
    back.close();
    cat.close();
    a.close();
    b.close();
}

#[test]
fn two_outages_in_a_row_on_different_nodes_replay_nothing_twice() {
    let Some(redis) = Redis::start() else { return };
    let (a, b) = two_nodes(&redis, app);
    let (mut ann, socket, token) = member(a.addr(), "ann", "#r");
    // Members on both nodes: each node has had a broadcast once they saw it.
    let (mut on_a, mut on_b) = (member(a.addr(), "cat", "#r").0, member(b.addr(), "dan", "#r").0);
    for text in ["1", "2", "3"] {
        say(&b, "#r", text);
    }
    let received = watch(&mut ann, 3);
    a.lose(ann, &socket, 0);
    for text in ["4", "5"] {
        say(&a, "#r", text);
    }
    assert_eq!(watch(&mut on_b, 5)[4].0, "5");
    let (mut back, before, reply, ready) = resume(b.addr(), "ann", &token, json!({ "#r": received[2].1 }));
    assert_eq!(saids(&before).iter().map(|(t, _)| t.as_str()).collect::<Vec<_>>(), ["4", "5"]);
    assert_eq!(reply["rooms"]["#r"]["offset"], 5, "{reply}");
    say(&b, "#r", "6");
    let (_, sixth) = said(&mut back);
    assert_eq!(sixth["offset"], 6);
    assert_eq!(watch(&mut on_a, 6)[5].1, sixth);
    said(&mut on_b);

    // Lost again, nothing published meanwhile: back on node A, nothing replayed,
    // whether the client lists its offset or not.
    let token = ready["resume"].as_str().expect("a token").to_string();
    b.lose(back, &socket, 0);
    let (again, before, reply, ready) = resume(a.addr(), "ann", &token, json!({ "#r": sixth }));
    let epoch = &sixth["epoch"];
    assert_eq!(reply["rooms"]["#r"], json!({ "recovered": true, "epoch": epoch, "offset": 6 }), "{reply}");
    assert!(saids(&before).is_empty(), "{before:?}");
    let token = ready["resume"].as_str().expect("a token").to_string();
    a.lose(again, &socket, 1);
    let (last, before, reply, _) = resume(b.addr(), "ann", &token, json!({}));
    assert_eq!(reply["resumed"], true, "{reply}");
    assert!(saids(&before).is_empty(), "what it was sent on other nodes is not replayed again: {before:?}");
    last.close();
    on_a.close();
    on_b.close();
    a.close();
    b.close();
}

#[test]
fn a_message_to_a_user_from_another_node_is_kept_for_its_device_away() {
    let Some(redis) = Redis::start() else { return };
    let (a, b) = two_nodes(&redis, app);
    // Resumed on the node it was lost on, then on the other one.
    for resume_on in [&a, &b] {
        let (ann, socket, token) = member(a.addr(), "ann", "#r");
        a.lose(ann, &socket, 0);
        let received = a.running.metrics().snapshot().cluster_received;
        assert_eq!(b.running.to_user("ann").emit("/dm", "from b").expect("sent"), 0, "none on node B");
        // Routed through Redis: node A has it before the resume.
        eventually("node A has the message", || a.running.metrics().snapshot().cluster_received > received);
        let (mut back, before, reply, _) = resume(resume_on.addr(), "ann", &token, json!({}));
        assert_eq!(reply["resumed"], true, "{reply}");
        let direct: Vec<&Value> = before.iter().filter(|e| e[1] == "/dm").map(|e| &e[2]).collect();
        assert_eq!(direct, ["from b"], "{before:?}");
        back.expect_silence(common::ms(100));
        back.close();
    }
    a.close();
    b.close();
}

#[test]
fn two_hundred_sockets_lost_at_once_recover_exactly_on_a_new_node_with_reads_batched_per_room() {
    let Some(redis) = Redis::start() else { return };
    let (a, b) = two_nodes(&redis, app);
    const ROOMS: usize = 4;
    const SOCKETS: usize = 200;
    let room = |n: usize| format!("#r{}", n % ROOMS);
    let members: Vec<(AppClient, String, String)> =
        (0..SOCKETS).map(|n| member(a.addr(), &format!("u{n}"), &room(n))).collect();
    for r in 0..ROOMS {
        say(&b, &room(r), "first");
    }
    let mut lost = Vec::new();
    for (mut client, socket, token) in members {
        let (_, first) = said(&mut client);
        client.ws.stream.shutdown(Shutdown::Both).expect("shut down");
        lost.push((socket, token, first));
    }
    eventually("every loss noticed", || a.gone.lock().unwrap().len() == SOCKETS);
    // One after the other (broadcasts from two nodes have no order between
    // them), each in Redis before the resumes start reading it.
    let mut raw = redis_conn(&redis);
    for (node, text, kept) in [(&a, "second", 2), (&b, "third", 3)] {
        (0..ROOMS).for_each(|r| say(node, &room(r), text));
        wait_for(Duration::from_secs(5), || {
            (0..ROOMS).all(|r| {
                let stream = format!("emitws:h:{{{}}}:stream", room(r));
                redis::cmd("XLEN").arg(stream).query::<usize>(&mut raw).is_ok_and(|len| len == kept)
            })
        });
    }
    // A node started now has followed none of the rooms: every recovery
    // there reads Redis.
    let c = start(&redis, Duration::from_secs(2));
    wait_joined(&[&a, &b, &c]);
    let _: () = redis::cmd("CONFIG").arg("RESETSTAT").query(&mut raw).expect("reset");

    let resuming: Vec<(AppClient, u64)> = lost
        .iter()
        .enumerate()
        .map(|(n, (_, token, first))| send_resume(c.addr(), &format!("u{n}"), token, json!({ room(n): first })))
        .collect();
    for (n, (mut client, id)) in resuming.into_iter().enumerate() {
        let (before, reply, _) = read_resume(&mut client, id);
        assert_eq!((&reply["resumed"], &reply["socket"]), (&json!(true), &json!(lost[n].0)), "{reply}");
        let epoch = &lost[n].2["epoch"];
        assert_eq!(reply["rooms"][room(n)], json!({ "recovered": true, "epoch": epoch, "offset": 3 }), "{reply}");
        let expected = [("second", 2), ("third", 3)]
            .map(|(text, offset)| (text.to_string(), json!({ "room": room(n), "offset": offset, "epoch": epoch })));
        assert_eq!(saids(&before), expected);
    }
    // Each read of a room's history is one XRANGE (inside the read script;
    // nothing else here runs XRANGE). One read per resume would make 200.
    // Reads queued while one waits share it, one per room, and what a read
    // brought serves the node's later recoveries from the same positions:
    // one read per room, and a few more when resumes ask while a room's
    // first read is under way (4 or 5 measured; 28 to 102 when each batch
    // read again).
    let stats: String = redis::cmd("INFO").arg("commandstats").query(&mut raw).expect("stats");
    let xranges: usize = stats
        .lines()
        .find_map(|line| line.strip_prefix("cmdstat_xrange:calls="))
        .and_then(|rest| rest.split(',').next())
        .map_or(0, |calls| calls.parse().expect("a count"));
    assert!(
        (ROOMS..4 * ROOMS).contains(&xranges),
        "{xranges} reads of the rooms' history for {SOCKETS} resumes:\n{stats}"
    );
    for node in [a, b, c] {
        node.close();
    }
}
