//! The app's generated socket ids across a cluster (PROTOCOL.md §14,
//! "Across a cluster"): nodes sharing a real redis-server, raw clients. An
//! id given on one node is found from another, and a `SocketRef` found so
//! emits to and calls the socket's client on its node; a connection given
//! the id on another node takes it, as on one node (the older socket no
//! longer has it, and its going frees nothing); a socket's end frees its
//! id (a lost one's too, its session waiting for a resume), which another
//! node then gives again; a killed node's ids leave the
//! lookups with its heartbeat, and a survivor deletes them; with Redis
//! down, remote lookups fail (`Unavailable`) while local ones answer, and
//! an id taken meanwhile stays taken once Redis is back. The same on a
//! Redis Cluster. Without redis-server on the PATH these tests fail,
//! naming what to install, unless `EMITWS_SKIP=redis` leaves them out.
#![cfg(feature = "redis")]

#[path = "common/app.rs"]
mod app_client;
#[path = "common/child_node.rs"]
mod child_node;
mod common;
#[path = "common/redis_cluster.rs"]
mod redis_cluster;
// two_nodes reaches the single server's helpers as `crate::redis_server`.
use redis_cluster::single as redis_server;
#[path = "common/two_nodes.rs"]
mod two_nodes;

use std::net::SocketAddr;
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use app_client::{answer_calls, AppClient};
use emitws::app::{App, AppHandle, Error, Refusal, SocketId};
use emitws::cluster::RedisOptions;
use redis_cluster::RedisCluster;
use redis_server::{wait_for, Redis};
use serde_json::{json, Value};
use two_nodes::{options, serve_until_killed, wait_joined, Node};

/// How long a node waits for Redis's answer to a query.
const QUERY_TIMEOUT: Duration = Duration::from_millis(800);
/// The environment variable that makes [`killed_node`] run a node.
const CHILD_NODE: &str = "EMITWS_TEST_CHILD_NODE";
/// How long the tests wait for a claim to reach Redis, or a takeover's news a node.
const SETTLE: Duration = Duration::from_secs(5);

/// A node's options: heartbeats living `heartbeat`, answers awaited [`QUERY_TIMEOUT`].
fn node_options(heartbeat: Duration) -> RedisOptions {
    options(heartbeat).query_timeout(QUERY_TIMEOUT)
}

/// The test app: each socket is named `device-D` from `?device=D` (none:
/// 400); `/me` replies the socket's generated id (null once taken).
fn app() -> App {
    let mut app = App::new();
    app.generate_id(|conn| match conn.query_value("device") {
        Some(device) if !device.is_empty() => Ok(format!("device-{device}")),
        _ => Err(Refusal::status(400, "?device= is required")),
    });
    app.on("/me", |req| {
        let id = req.generated_id().map(str::to_owned);
        req.reply(&id);
    });
    app
}

/// Two nodes of the test app over `url` (heartbeats of 2 s), each seeing the other alive.
fn two_nodes(url: &str) -> (Node, Node) {
    let start = || Node::start(url, node_options(Duration::from_secs(2)), app());
    let (a, b) = (start(), start());
    wait_joined(&[&a, &b]);
    (a, b)
}

/// Connects as device `device`: the client and its socket id, after
/// checking that `@ready` names it `device-DEVICE`.
fn connect(addr: SocketAddr, device: &str) -> (AppClient, SocketId) {
    let mut client = AppClient::connect_to(addr, &format!("/?device={device}"), &[]).expect("upgraded");
    let ready = client.wait_ready();
    assert_eq!(ready["id"], json!(format!("device-{device}")), "{ready}");
    let socket = ready["socket"].as_str().expect("a socket id").parse().expect("a socket id");
    (client, socket)
}

/// The socket that `app` finds by generated id `id` across the cluster
/// (Redis answering).
fn lookup(app: &AppHandle, id: &str) -> Option<SocketId> {
    app.lookup_generated_id(id).expect("Redis answers").map(|socket| socket.id())
}

/// Waits until `app` finds generated id `id` at `socket` (none: finds nothing).
fn wait_found(app: &AppHandle, id: &str, socket: Option<SocketId>) {
    wait_for(SETTLE, || app.lookup_generated_id(id).is_ok_and(|found| found.map(|s| s.id()) == socket));
}

/// An id given on one node is found from the other, emits reach its
/// client; a connection on the other node given the id takes it; the
/// socket that lost it going frees nothing; the holder's going frees it,
/// for either node to give again.
fn ids_are_one_socket_s_across_the_cluster(a: &Node, b: &Node) {
    let (mut phone, on_a) = connect(a.addr(), "phone");
    assert_eq!(lookup(&a.running, "device-phone"), Some(on_a), "this node's, at once");
    wait_found(&b.running, "device-phone", Some(on_a));
    assert!(b.running.socket_by_generated_id("device-phone").is_none(), "the local lookup stays local");
    assert_eq!(lookup(&b.running, "device-none"), None);
    let found = b.running.lookup_generated_id("device-phone").expect("Redis answers").expect("found");
    found.emit("/hello", "from B").expect("JSON");
    assert_eq!(phone.expect_event("/hello"), json!("from B"));

    // The same device comes back through node B: the id is the new socket's, everywhere.
    let (mut again, on_b) = connect(b.addr(), "phone");
    assert_ne!(on_a, on_b);
    assert_eq!(lookup(&b.running, "device-phone"), Some(on_b));
    wait_found(&a.running, "device-phone", Some(on_b));
    wait_for(SETTLE, || a.running.socket_by_generated_id("device-phone").is_none());
    assert_eq!(phone.request("/me", Value::Null), Ok(Value::Null), "the older socket has no id now");
    assert_eq!(again.request("/me", Value::Null), Ok(json!("device-phone")));
    let found = a.running.lookup_generated_id("device-phone").expect("Redis answers").expect("found");
    found.emit("/hello", "from A").expect("JSON");
    assert_eq!(again.expect_event("/hello"), json!("from A"));

    // The socket that lost the id goes: the id stays the newer one's.
    phone.close();
    wait_for(SETTLE, || a.running.cluster().socket_exists(on_a).is_ok_and(|exists| !exists));
    thread::sleep(Duration::from_millis(200)); // any release has reached Redis
    assert_eq!(lookup(&a.running, "device-phone"), Some(on_b));
    // The holder goes: the id is free on every node, and A gives it again.
    again.close();
    wait_found(&a.running, "device-phone", None);
    wait_found(&b.running, "device-phone", None);
    let (mut third, on_a_again) = connect(a.addr(), "phone");
    wait_found(&b.running, "device-phone", Some(on_a_again));
    assert_eq!(third.request("/me", Value::Null), Ok(json!("device-phone")));
    // Lost without a close: its session waits for a resume, its id is free at once.
    a.lose(third, &on_a_again.to_string(), 0);
    wait_found(&b.running, "device-phone", None);
    wait_found(&a.running, "device-phone", None);
}

#[test]
fn an_id_is_one_sockets_across_nodes_found_from_any_and_freed_with_it() {
    let Some(redis) = Redis::start() else { return };
    let (a, b) = two_nodes(&redis.url());
    ids_are_one_socket_s_across_the_cluster(&a, &b);
    // The keys of ids are gone with their sockets; the node's list of them too.
    let mut c = redis::Client::open(redis.url()).and_then(|c| c.get_connection()).expect("Redis up");
    let keys: Vec<String> = redis::cmd("KEYS").arg("emitws:id:*").query(&mut c).expect("answered");
    assert!(keys.is_empty(), "{keys:?}");
    a.close();
    b.close();
}

#[test]
fn an_id_found_on_another_node_calls_its_client() {
    let Some(redis) = Redis::start() else { return };
    let (a, b) = two_nodes(&redis.url());
    let (client, on_b) = connect(b.addr(), "tablet");
    wait_found(&a.running, "device-tablet", Some(on_b));
    let (stop, until) = mpsc::channel::<()>();
    let answering = answer_calls(client, until);
    let socket = a.running.lookup_generated_id("device-tablet").expect("Redis answers").expect("found");
    let data = json!({ "text": "ping \"you\" — ünïcode ✓" });
    let echoed = socket.call("echo", &data, Duration::from_secs(2)).expect("JSON").wait().expect("answered");
    assert_eq!(echoed.data::<Value>().expect("JSON"), data);
    stop.send(()).expect("still answering");
    answering.join().expect("the client's thread");
    wait_found(&a.running, "device-tablet", None);
    a.close();
    b.close();
}

/// The child node of [`a_killed_nodes_ids_leave_with_its_heartbeat`].
#[test]
fn killed_node() {
    serve_until_killed(CHILD_NODE, node_options(Duration::from_millis(600)), app);
}

#[test]
fn a_killed_nodes_ids_leave_with_its_heartbeat() {
    let Some(redis) = Redis::start() else { return };
    let a = Node::start(&redis.url(), node_options(Duration::from_millis(600)), app());
    let (mut child, addr) = child_node::spawn("killed_node", CHILD_NODE, &redis.url());
    wait_for(SETTLE, || a.adapter.link().nodes().is_ok_and(|alive| alive.len() == 2));
    let (_watch, on_child) = connect(addr, "watch");
    wait_found(&a.running, "device-watch", Some(on_child));
    child.0.kill().expect("SIGKILL");
    let _ = child.0.wait();
    // No lookup finds it once the node's heartbeat is over; A deletes its key.
    wait_found(&a.running, "device-watch", None);
    let mut c = redis::Client::open(redis.url()).and_then(|c| c.get_connection()).expect("Redis up");
    wait_for(SETTLE, || redis::cmd("EXISTS").arg("emitws:id:{device-watch}").query::<u8>(&mut c) == Ok(0));
    // Free for this node to give.
    let (_watch, on_a) = connect(a.addr(), "watch");
    wait_found(&a.running, "device-watch", Some(on_a));
    a.close();
}

#[test]
fn with_redis_down_local_ids_answer_and_a_takeover_meanwhile_holds() {
    let Some(redis) = Redis::start() else { return };
    let port = redis.port;
    let (a, b) = two_nodes(&redis.url());
    let (mut phone, on_a) = connect(a.addr(), "phone");
    wait_found(&b.running, "device-phone", Some(on_a));
    drop(redis);
    // B cannot ask; A answers from its own table.
    wait_for(SETTLE, || matches!(b.running.lookup_generated_id("device-phone"), Err(Error::Unavailable(_))));
    assert_eq!(lookup(&a.running, "device-phone"), Some(on_a));
    // The device comes back through B meanwhile: B gives it the id.
    let (mut again, on_b) = connect(b.addr(), "phone");
    assert_eq!(lookup(&b.running, "device-phone"), Some(on_b));
    // Redis back, empty: each node writes its ids again; B's claim, newer, keeps the id.
    let _redis = Redis::start_on(port).expect("redis-server again");
    wait_found(&a.running, "device-phone", Some(on_b));
    wait_found(&b.running, "device-phone", Some(on_b));
    assert_eq!(phone.request("/me", Value::Null), Ok(Value::Null), "A's socket lost it");
    assert_eq!(again.request("/me", Value::Null), Ok(json!("device-phone")));
    a.close();
    b.close();
}

#[test]
fn on_a_redis_cluster_ids_are_one_sockets_across_nodes() {
    let Some(cluster) = RedisCluster::start() else { return };
    let seeds: Vec<String> = cluster.live_ports().iter().map(|port| format!("127.0.0.1:{port}")).collect();
    let (a, b) = two_nodes(&format!("redis+cluster://{}/", seeds.join(",")));
    ids_are_one_socket_s_across_the_cluster(&a, &b);
    a.close();
    b.close();
}
