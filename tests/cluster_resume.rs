//! Session resume across a cluster (PROTOCOL.md §13, "Across a cluster"):
//! nodes sharing a real redis-server, raw clients. A socket lost on one
//! node resumes on another with its id, user and rooms; one token presented
//! to two nodes at once resumes once; a session expires with its window
//! and stays for its own user; a connection still open on one node is taken
//! over from another (4409); a node killed with SIGKILL leaves its sockets'
//! sessions to the others once its heartbeat expires. Without redis-server
//! on the PATH these tests fail, naming what to install, unless
//! `EMITWS_SKIP=redis` leaves them out.
#![cfg(feature = "redis")]

#[path = "common/app.rs"]
mod app_client;
#[path = "common/child_node.rs"]
mod child_node;
mod common;
#[path = "common/redis.rs"]
mod redis_server;

use std::io::Write;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use app_client::{eventually, AppClient};
use emitws::app::{App, BroadcastOpts, Running, SocketId};
use emitws::cluster::{RedisAdapter, RedisOptions};
use redis_server::{wait_for, Redis};
use serde_json::{json, Value};

/// Direct messages kept per away socket.
const BUFFER: usize = 3;

/// The environment variable that makes [`killed_node`] run a node.
const CHILD_NODE: &str = "EMITWS_TEST_CHILD_NODE";

fn options(heartbeat: Duration) -> RedisOptions {
    RedisOptions::default().heartbeat_ttl(heartbeat).max_backoff(Duration::from_millis(200))
}

/// The test app: `?user=NAME` auth, `/join`, `/set`, `/say`, and a
/// `/hello` from `@connection` saying what the socket is.
fn app(adapter: Arc<RedisAdapter>, disconnects: Arc<Mutex<Vec<(String, Value)>>>, window: Duration) -> App {
    let mut app = App::new();
    app.adapter(adapter);
    app.resume_window(Some(window));
    app.resume_buffer(BUFFER);
    app.identify(|conn| Ok(conn.query_value("user").unwrap_or_else(|| "anon".into())));
    app.on("@connection", |req| {
        let hello = json!({
            "resumed": req.resumed(),
            "socket": req.socket_id().to_string(),
            "user": req.user(),
            "groups": req.groups(),
            "n": req.get::<u32>("n"),
            "seat": req.get_shared::<Value>("seat"),
        });
        let _ = req.emit("/hello", &hello);
    });
    app.on("@disconnect", move |req| {
        let data: Value = req.data().expect("@disconnect data is JSON");
        disconnects.lock().unwrap().push((req.socket_id().to_string(), data));
    });
    app.on("/join", |req| {
        let room: String = req.data().expect("a room");
        let joined = req.join(&room).is_ok();
        req.reply(&joined);
    });
    app.on("/set", |req| {
        let n: u32 = req.data().expect("a number");
        req.set("n", n);
        req.reply(&true);
    });
    app.on("/share", |req| {
        let seat: Value = req.data().expect("a seat");
        let shared = match seat {
            Value::Null => req.remove("seat").is_some(),
            seat => req.set_shared("seat", &seat).is_ok(),
        };
        req.reply(&shared);
    });
    app.on("/say", |req| {
        let (room, text): (String, String) = req.data().expect("[room, text]");
        let _ = req.broadcast("/said", &text, BroadcastOpts::to(&room));
        req.reply(&true);
    });
    app
}

/// One node of the test cluster.
struct Node {
    running: Running,
    adapter: Arc<RedisAdapter>,
    disconnects: Arc<Mutex<Vec<(String, Value)>>>,
}

impl Node {
    fn start(redis: &Redis, heartbeat: Duration, window: Duration) -> Node {
        let adapter = RedisAdapter::new(&redis.url(), options(heartbeat)).expect("a good URL");
        let disconnects = Arc::default();
        let app = app(adapter.clone(), Arc::clone(&disconnects), window);
        let running = app_client::start(app, 2);
        assert!(adapter.link().ready(Duration::from_secs(5)), "the node listens to the cluster");
        Node { running, adapter, disconnects }
    }

    fn addr(&self) -> SocketAddr {
        self.running.local_addr()
    }

    /// Drops `client`'s TCP connection without a close frame (1006) and
    /// waits until this node has kept its session.
    fn lose(&self, client: AppClient, socket: &str) {
        self.lose_again(client, socket, 0);
    }

    /// [`lose`](Self::lose) for a socket this node lost `before` times already.
    fn lose_again(&self, client: AppClient, socket: &str, before: usize) {
        drop(client);
        let mut data = Value::Null;
        eventually("the @disconnect", || {
            let seen = self.disconnects.lock().unwrap();
            let Some((_, d)) = seen.iter().filter(|(s, _)| s == socket).nth(before) else { return false };
            data = d.clone();
            true
        });
        assert_eq!((&data["code"], &data["resumable"]), (&json!(1006), &json!(true)), "{data}");
    }

    fn close(self) {
        self.running.close();
        self.adapter.link().stop();
    }
}

/// Two nodes (heartbeats of 2 s) keeping sessions for `window`, each seeing the other alive.
fn two_nodes(redis: &Redis, window: Duration) -> (Node, Node) {
    let (a, b) =
        (Node::start(redis, Duration::from_secs(2), window), Node::start(redis, Duration::from_secs(2), window));
    wait_joined(&[&a, &b]);
    (a, b)
}

/// Waits until every node sees all of them alive.
fn wait_joined(nodes: &[&Node]) {
    wait_for(Duration::from_secs(5), || {
        nodes.iter().all(|n| n.adapter.link().nodes().is_ok_and(|alive| alive.len() == nodes.len()))
    });
}

/// Connects (as `user`) and reads the `/hello` and `@ready`: (client, socket id, token).
fn connect(addr: SocketAddr, user: &str) -> (AppClient, String, String) {
    let mut client = AppClient::connect_to(addr, &format!("/?user={user}"), &[]).expect("upgraded");
    let hello = client.expect_event("/hello");
    assert_eq!(hello["resumed"], false, "{hello}");
    let ready = client.wait_ready();
    let socket = ready["socket"].as_str().expect("a socket id").to_string();
    let token = ready["resume"].as_str().unwrap_or_else(|| panic!("no resume token in {ready}")).to_string();
    (client, socket, token)
}

/// Opens a connection as `user` that waits for `@resume`, and sends it with `token`.
fn resume(addr: SocketAddr, user: &str, token: &str) -> (AppClient, u64) {
    let mut client = AppClient::connect_to(addr, &format!("/?user={user}&emitws_resume=1"), &[]).expect("upgraded");
    let id = client.send_request("@resume", json!({ "token": token, "rooms": {} }));
    (client, id)
}

/// Reads what follows a `@resume`: (hello, reply, ready).
fn read_resume(client: &mut AppClient, id: u64) -> (Value, Value, Value) {
    let hello = client.expect_event("/hello");
    let reply = client.reply_to(id).expect("a reply to @resume");
    let ready = client.wait_ready();
    assert_eq!(ready["socket"], reply["socket"], "{ready} after {reply}");
    (hello, reply, ready)
}

#[test]
fn a_socket_lost_on_one_node_resumes_on_another_with_its_id_user_and_rooms() {
    let Some(redis) = Redis::start() else { return };
    let (a, b) = two_nodes(&redis, Duration::from_secs(30));
    let (mut ann, socket, token) = connect(a.addr(), "ann");
    assert!(ann.request("/join", json!("#lobby")).expect("joined") == true);
    ann.request("/set", json!(7)).expect("set");
    let (mut bob, _, _) = connect(a.addr(), "bob");
    bob.request("/join", json!("#lobby")).expect("joined");
    a.lose(ann, &socket);

    let (mut back, id) = resume(b.addr(), "ann", &token);
    let (hello, reply, ready) = read_resume(&mut back, id);
    // The stored value stays in the memory of node A.
    let expected =
        json!({ "resumed": true, "socket": socket, "user": "ann", "groups": ["#lobby"], "n": null, "seat": null });
    assert_eq!(hello, expected, "@connection runs on the restored socket");
    assert_eq!(reply, json!({ "resumed": true, "socket": socket, "rooms": {}, "direct": { "recovered": true } }));
    assert_eq!((&ready["user"], &ready["resumed"]), (&json!("ann"), &json!(true)), "{ready}");
    let fresh = ready["resume"].as_str().expect("a new token");
    assert_ne!(fresh, token);

    // A broadcast from node A reaches the room's member on node B.
    bob.request("/say", json!(["#lobby", "hi"])).expect("said");
    assert_eq!(back.expect_event("/said"), "hi", "the resumed socket is in its room again");
    // Its old id reaches it, from either node, and leaves it out of a broadcast.
    let id: SocketId = socket.parse().expect("a socket id");
    let (on_a, on_b) = (a.running.app(), b.running.app());
    assert!(on_a.emit_to(id, "/direct", &"from a").expect("sent"));
    assert_eq!(back.expect_event("/direct"), "from a");
    assert!(on_b.emit_to(id, "/direct", &"from b").expect("sent"));
    assert_eq!(back.expect_event("/direct"), "from b");
    on_a.broadcast("/news", "not for ann", BroadcastOpts::to("#lobby").except(id)).expect("sent");
    assert_eq!(bob.expect_event("/news"), "not for ann");
    back.expect_silence(common::ms(300));

    // The token was spent, on every node.
    for node in [&a, &b] {
        let (mut again, id) = resume(node.addr(), "ann", &token);
        let (hello, reply, _) = read_resume(&mut again, id);
        assert_eq!((&hello["resumed"], &reply["resumed"]), (&json!(false), &json!(false)), "{reply}");
        assert_ne!(reply["socket"], socket.as_str());
    }

    // Lost again on node B, it resumes on node A with its newest token and its id.
    let fresh = fresh.to_string();
    b.lose(back, &socket);
    let (mut home, id) = resume(a.addr(), "ann", &fresh);
    let (hello, reply, _) = read_resume(&mut home, id);
    assert_eq!((&hello["groups"], &reply["socket"]), (&json!(["#lobby"]), &json!(socket)), "{reply}");
    assert_eq!(hello["n"], Value::Null, "the values were on node B's socket");
    assert!(on_b.emit_to(id_of(&socket), "/direct", &"from b again").expect("sent"));
    assert_eq!(home.expect_event("/direct"), "from b again");
    // Lost and resumed on one node, its stored values come back too.
    home.request("/set", json!(8)).expect("set");
    let ready = home.ready.clone().expect("read");
    a.lose_again(home, &socket, 1);
    let (mut again, id) = resume(a.addr(), "ann", ready["resume"].as_str().expect("a token"));
    let (hello, reply, _) = read_resume(&mut again, id);
    assert_eq!((&hello["n"], &reply["socket"]), (&json!(8), &json!(socket)), "{reply}");
    a.close();
    b.close();
}

fn id_of(socket: &str) -> SocketId {
    socket.parse().expect("a socket id")
}

#[test]
fn one_token_presented_to_two_nodes_at_once_resumes_once() {
    let Some(redis) = Redis::start() else { return };
    let (a, b) = two_nodes(&redis, Duration::from_secs(30));
    for _ in 0..3 {
        let (ann, socket, token) = connect(a.addr(), "ann");
        a.lose(ann, &socket);
        let (mut on_a, id_a) = resume(a.addr(), "ann", &token);
        let (mut on_b, id_b) = resume(b.addr(), "ann", &token);
        let (_, reply_a, _) = read_resume(&mut on_a, id_a);
        let (_, reply_b, _) = read_resume(&mut on_b, id_b);
        let resumed = [&reply_a, &reply_b].iter().filter(|r| r["resumed"] == true).count();
        assert_eq!(resumed, 1, "{reply_a} {reply_b}");
        let winner = if reply_a["resumed"] == true { &reply_a } else { &reply_b };
        assert_eq!(winner["socket"], socket.as_str());
    }
    a.close();
    b.close();
}

#[test]
fn a_session_ends_with_its_window_and_stays_for_its_own_user_only() {
    let Some(redis) = Redis::start() else { return };
    let window = Duration::from_millis(500);
    let (a, b) = two_nodes(&redis, window);
    let (ann, socket, token) = connect(a.addr(), "ann");
    a.lose(ann, &socket);
    // Bob cannot take Ann's session; she still can.
    let (mut bob, id) = resume(b.addr(), "bob", &token);
    let (_, reply, _) = read_resume(&mut bob, id);
    assert_eq!(reply["resumed"], false, "{reply}");
    let (mut back, id) = resume(b.addr(), "ann", &token);
    let (_, reply, ready) = read_resume(&mut back, id);
    assert_eq!((&reply["resumed"], &reply["socket"]), (&json!(true), &json!(socket)), "{reply}");

    // Lost again, past its window: a new socket on either node.
    let token = ready["resume"].as_str().expect("a token").to_string();
    b.lose(back, &socket);
    std::thread::sleep(window * 2);
    let (mut late, id) = resume(a.addr(), "ann", &token);
    let (_, reply, _) = read_resume(&mut late, id);
    assert_eq!(reply["resumed"], false, "{reply}");
    assert_ne!(reply["socket"], socket.as_str());
    a.close();
    b.close();
}

#[test]
fn a_connection_still_open_on_one_node_is_taken_over_from_another() {
    let Some(redis) = Redis::start() else { return };
    let (a, b) = two_nodes(&redis, Duration::from_secs(30));
    let (mut old, socket, token) = connect(a.addr(), "ann");
    old.request("/join", json!("#lobby")).expect("joined");
    let (mut back, id) = resume(b.addr(), "ann", &token);
    assert_eq!(old.expect_close(4409), "resumed elsewhere");
    let (hello, reply, ready) = read_resume(&mut back, id);
    let expected = (&json!(["#lobby"]), &json!(true), &json!(socket));
    assert_eq!((&hello["groups"], &reply["resumed"], &reply["socket"]), expected);
    // And on the node it is on now.
    let (mut again, id) = resume(b.addr(), "ann", ready["resume"].as_str().expect("a token"));
    assert_eq!(back.expect_close(4409), "resumed elsewhere");
    let (hello, reply, _) = read_resume(&mut again, id);
    assert_eq!((&hello["groups"], &reply["resumed"], &reply["socket"]), expected);
    a.close();
    b.close();
}

#[test]
fn direct_messages_sent_while_away_from_any_node_are_replayed_on_the_node_it_resumes_on() {
    let Some(redis) = Redis::start() else { return };
    let (a, b) = two_nodes(&redis, Duration::from_secs(30));
    let (on_a, on_b) = (a.running.app(), b.running.app());
    for (sent, complete) in [(BUFFER, true), (BUFFER + 2, false)] {
        let (ann, socket, token) = connect(a.addr(), "ann");
        a.lose(ann, &socket);
        let id = id_of(&socket);
        for n in 0..sent {
            match n % 3 {
                0 => assert!(on_b.emit_to(id, "/dm", &n).expect("sent")),
                1 => assert!(on_a.emit_to(id, "/dm", &n).expect("sent")),
                _ => assert_eq!(on_a.to_user("ann").emit("/dm", &n).expect("sent"), 1),
            }
            // One at a time: messages from two nodes have no order between them.
            std::thread::sleep(common::ms(50));
        }
        let (mut back, id) = resume(b.addr(), "ann", &token);
        let hello = back.expect_event("/hello");
        assert_eq!(hello["resumed"], true, "{hello}");
        let kept: Vec<Value> = (sent - BUFFER..sent).map(|n| json!(n)).collect();
        let replayed: Vec<Value> = (0..BUFFER).map(|_| back.expect_event("/dm")).collect();
        assert_eq!(replayed, kept, "the latest {BUFFER}, in order");
        let reply = back.reply_to(id).expect("a reply");
        assert_eq!(reply["direct"], json!({ "recovered": complete }), "{reply}");
        back.wait_ready();
        back.expect_silence(common::ms(200));
        back.close();
    }
    a.close();
    b.close();
}

/// Not a test of its own: the node that
/// [`a_killed_nodes_sockets_resume_on_another_once_its_heartbeat_expires`]
/// runs in a child process (it does nothing unless that test set
/// [`CHILD_NODE`] to the Redis URL). It prints its address, then waits to be
/// killed. Ignored, so that it does not show as a test that passed.
#[test]
#[ignore = "the child node of the killed-node test, which runs it"]
fn killed_node() {
    let Ok(url) = std::env::var(CHILD_NODE) else { return };
    let adapter = RedisAdapter::new(&url, options(Duration::from_millis(600))).expect("a good URL");
    let running = app_client::start(app(adapter.clone(), Arc::default(), Duration::from_secs(30)), 2);
    assert!(adapter.link().ready(Duration::from_secs(5)));
    println!("node at {}", running.local_addr());
    std::io::stdout().flush().expect("the parent reads");
    std::thread::sleep(Duration::from_secs(60));
}

#[test]
fn a_killed_nodes_sockets_resume_on_another_once_its_heartbeat_expires() {
    let Some(redis) = Redis::start() else { return };
    let b = Node::start(&redis, Duration::from_millis(600), Duration::from_secs(30));
    let (mut child, addr) = child_node::spawn("killed_node", CHILD_NODE, &redis.url());
    wait_for(Duration::from_secs(5), || b.adapter.link().nodes().is_ok_and(|alive| alive.len() == 2));
    let (mut ann, socket, token) = connect(addr, "ann");
    ann.request("/join", json!("#lobby")).expect("joined");
    let (mut bob, _, _) = connect(b.addr(), "bob");
    bob.request("/join", json!("#lobby")).expect("joined");
    // SIGKILL: no close, no presence cleanup, no session marked away.
    child.0.kill().expect("kill the node");
    child.0.wait().expect("reap it");
    drop(ann);

    let (mut back, id) = resume(b.addr(), "ann", &token);
    let (hello, reply, _) = read_resume(&mut back, id);
    assert_eq!((&reply["resumed"], &reply["socket"]), (&json!(true), &json!(socket)), "{reply}");
    assert_eq!(hello["groups"], json!(["#lobby"]));
    bob.request("/say", json!(["#lobby", "still here"])).expect("said");
    assert_eq!(back.expect_event("/said"), "still here");
    b.close();
}

#[test]
fn shared_values_follow_a_socket_to_every_node_it_resumes_on() {
    let Some(redis) = Redis::start() else { return };
    let (a, b) = two_nodes(&redis, Duration::from_secs(30));
    let (mut ann, socket, token) = connect(a.addr(), "ann");
    let seat = json!({ "room": "#lobby", "name": "Ann \"the\" é" });
    assert_eq!(ann.request("/share", seat.clone()).expect("shared"), true);
    ann.request("/set", json!(7)).expect("set");
    a.lose(ann, &socket);

    // On node B: the shared value is back, the plain one stayed on A.
    let (mut back, id) = resume(b.addr(), "ann", &token);
    let (hello, _, ready) = read_resume(&mut back, id);
    assert_eq!((&hello["resumed"], &hello["seat"], &hello["n"]), (&json!(true), &seat, &Value::Null), "{hello}");
    // ... and it follows the socket on: lost on B, back on A.
    b.lose(back, &socket);
    let (mut home, id) = resume(a.addr(), "ann", ready["resume"].as_str().expect("a token"));
    let (hello, _, ready) = read_resume(&mut home, id);
    assert_eq!(hello["seat"], seat, "{hello}");

    // Removed, it is gone from the record too.
    assert_eq!(home.request("/share", Value::Null).expect("removed"), true);
    a.lose_again(home, &socket, 1);
    let (mut again, id) = resume(b.addr(), "ann", ready["resume"].as_str().expect("a token"));
    let (hello, _, _) = read_resume(&mut again, id);
    assert_eq!((&hello["resumed"], &hello["seat"]), (&json!(true), &Value::Null), "{hello}");
    a.close();
    b.close();
}
