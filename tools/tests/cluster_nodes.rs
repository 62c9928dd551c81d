//! A cluster the way it runs: three `emitws-cluster-node` processes on their
//! own ports sharing a redis-server that each test starts, with WebSocket
//! clients on every node. Room and tag broadcasts, `emit_to` and `to_user`
//! across nodes, cluster-wide presence, a node killed outright, and Redis
//! killed and restarted. Without redis-server on the PATH these tests fail,
//! unless the Redis tests are left out on purpose (EMITWS_SKIP=redis).
//! The helpers are the library's test helpers (../tests/common), shared.
#![cfg(feature = "redis")]

#[path = "../../tests/common/app.rs"]
mod app_client;
#[path = "../../tests/common/mod.rs"]
mod common;
#[path = "../../tests/common/redis.rs"]
mod redis_server;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use app_client::AppClient;
use redis_server::{wait_for, Redis};
use serde_json::{json, Value};

/// One server process of the cluster; killed (if still running) on drop.
struct Node {
    child: Child,
    /// Closing it stops the node gracefully.
    stdin: Option<ChildStdin>,
    addr: SocketAddr,
    /// What the node wrote to stderr (its outage log).
    log: Arc<Mutex<Vec<String>>>,
}

impl Node {
    fn start(redis: &Redis, ttl_ms: u64) -> Node {
        let mut child = Command::new(env!("CARGO_BIN_EXE_emitws-cluster-node"))
            .args(["--redis", &redis.url(), "--ttl-ms", &ttl_ms.to_string(), "--workers", "2"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start emitws-cluster-node");
        let (tx, rx) = mpsc::channel();
        let stdout = BufReader::new(child.stdout.take().expect("piped"));
        std::thread::spawn(move || {
            for line in stdout.lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let log = Arc::new(Mutex::new(Vec::new()));
        let stderr = BufReader::new(child.stderr.take().expect("piped"));
        let lines = log.clone();
        std::thread::spawn(move || {
            for line in stderr.lines().map_while(Result::ok) {
                lines.lock().unwrap().push(line);
            }
        });
        let line = rx.recv_timeout(Duration::from_secs(10)).expect("the node says where it listens");
        let addr = line.split(' ').nth(2).and_then(|a| a.parse().ok()).unwrap_or_else(|| panic!("{line}"));
        Node { stdin: child.stdin.take(), child, addr, log }
    }

    fn connect(&self, user: &str) -> User {
        let client = AppClient::connect_to(self.addr, &format!("/?user={user}"), &[]).expect("upgrade");
        let mut user = User { client, id: String::new() };
        user.id = user.client.request("/whoami", Value::Null).unwrap()["id"].as_str().unwrap().to_string();
        user
    }

    /// Lines of the node's log containing `text`.
    fn logged(&self, text: &str) -> usize {
        self.log.lock().unwrap().iter().filter(|line| line.contains(text)).count()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.stdin.take();
        let deadline = Instant::now() + Duration::from_secs(3);
        while self.child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A connected client and its cluster-wide socket id.
struct User {
    client: AppClient,
    id: String,
}

impl User {
    fn join(&mut self, group: &str) {
        assert_eq!(self.client.request("/join", json!(group)).unwrap(), json!(self.id));
    }

    fn query(&mut self, what: &str, arg: &str) -> Result<Value, (String, String)> {
        self.client.request("/query", json!({ "what": what, "arg": arg }))
    }

    fn ask(&mut self, what: &str, arg: &str) -> Value {
        self.query(what, arg).unwrap_or_else(|e| panic!("{what}: {e:?}"))
    }

    fn say(&mut self, data: Value) {
        self.client.emit("/say", data);
    }

    fn expect(&mut self, event: &str) -> Value {
        self.client.expect_event(event)
    }

    fn silent(&mut self) {
        self.client.expect_silence(Duration::from_millis(300));
    }
}

/// Waits (up to 10 s) until `user`'s query answers `expected`.
fn until_answer(user: &mut User, what: &str, arg: &str, expected: Value) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let answer = user.query(what, arg);
        if answer.as_ref() == Ok(&expected) {
            return;
        }
        assert!(Instant::now() < deadline, "{what}({arg}) is {answer:?}, expected {expected}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn sorted(ids: &[&str]) -> Vec<String> {
    let mut ids: Vec<String> = ids.iter().map(|id| id.to_string()).collect();
    ids.sort();
    ids
}

/// A list of socket ids as a set (the server sorts them by number, not as text).
fn set(answer: Value) -> Vec<String> {
    let mut ids: Vec<String> = serde_json::from_value(answer).unwrap();
    ids.sort();
    ids
}

#[test]
fn rooms_direct_sends_users_and_presence_span_three_nodes() {
    let Some(redis) = Redis::start() else { return };
    let (a, b, c) = (Node::start(&redis, 10_000), Node::start(&redis, 10_000), Node::start(&redis, 10_000));
    let mut ann = a.connect("ann");
    let mut bob = b.connect("bob");
    let mut cat = c.connect("cat");
    let mut ann2 = c.connect("ann");
    for user in [&mut ann, &mut bob, &mut cat] {
        user.join("#lobby");
    }
    cat.join("*admin");
    until_answer(&mut bob, "group_size", "#lobby", json!(3));

    // A room broadcast reaches its members on the other nodes, once; not the sender.
    ann.say(json!({ "to": "#lobby", "text": "hi" }));
    for user in [&mut bob, &mut cat] {
        assert_eq!(user.expect("/said"), json!({ "from": "ann", "text": "hi" }));
    }
    // Everyone, on every node; with the sender (include_self) and one socket of another node left out.
    bob.say(json!({ "to": null, "text": "all", "echo": true, "except": cat.id }));
    for user in [&mut ann, &mut bob, &mut ann2] {
        assert_eq!(user.expect("/said"), json!({ "from": "bob", "text": "all" }));
    }
    // A tag.
    ann.say(json!({ "to": "*admin", "text": "admins" }));
    assert_eq!(cat.expect("/said")["text"], "admins");
    for user in [&mut ann, &mut bob, &mut cat, &mut ann2] {
        user.silent();
    }

    // emit_to a socket on another node, and on the same node.
    let cat_id = cat.id.clone();
    bob.client.emit("/dm", json!({ "to": cat_id, "text": "psst" }));
    assert_eq!(cat.expect("/dm"), json!({ "from": bob.id, "text": "psst" }));
    ann2.client.emit("/dm", json!({ "to": cat_id, "text": "neighbour" }));
    assert_eq!(cat.expect("/dm")["text"], "neighbour");
    // to_user: every device, wherever it is.
    bob.client.emit("/tell", json!({ "user": "ann", "text": "both of you" }));
    for user in [&mut ann, &mut ann2] {
        assert_eq!(user.expect("/told"), json!({ "from": "bob", "text": "both of you" }));
    }
    bob.silent();

    // Presence, asked on any node.
    assert_eq!(set(cat.ask("group_members", "#lobby")), sorted(&[&ann.id, &bob.id, &cat.id]));
    assert_eq!(ann.ask("group_members", "*admin"), json!([cat.id]));
    assert_eq!(bob.ask("socket_count", ""), json!(4));
    assert_eq!(set(bob.ask("sockets", "")), sorted(&[&ann.id, &bob.id, &cat.id, &ann2.id]));
    assert_eq!(set(bob.ask("user_sockets", "ann")), sorted(&[&ann.id, &ann2.id]));
    assert_eq!(ann.ask("users", ""), json!(["ann", "bob", "cat"]));
    assert_eq!(ann.ask("user_count", ""), json!(3));
    assert_eq!(ann.ask("user_online", "cat"), json!(true));
    assert_eq!(ann.ask("socket_exists", &cat_id), json!(true));

    // Leaving: presence follows everywhere.
    cat.client.close();
    until_answer(&mut ann, "socket_exists", &cat_id, json!(false));
    assert_eq!(ann.ask("group_size", "#lobby"), json!(2));
    assert_eq!(ann.ask("group_size", "*admin"), json!(0));
    assert_eq!(bob.ask("user_online", "cat"), json!(false));
    assert_eq!(bob.ask("users", ""), json!(["ann", "bob"]));
}

#[test]
fn a_killed_node_leaves_every_answer_within_its_ttl() {
    let Some(redis) = Redis::start() else { return };
    let ttl = 1_500;
    let (a, b) = (Node::start(&redis, ttl), Node::start(&redis, ttl));
    let mut c = Node::start(&redis, ttl);
    let mut ann = a.connect("ann");
    let mut bob = b.connect("bob");
    let mut cat = c.connect("cat");
    for user in [&mut ann, &mut bob, &mut cat] {
        user.join("#lobby");
    }
    until_answer(&mut ann, "group_size", "#lobby", json!(3));

    c.child.kill().unwrap();
    let killed = Instant::now();
    until_answer(&mut ann, "group_size", "#lobby", json!(2));
    let gone_after = killed.elapsed();
    assert!(gone_after <= Duration::from_millis(ttl + 500), "{gone_after:?}");
    assert_eq!(ann.ask("socket_exists", &cat.id), json!(false));
    assert_eq!(bob.ask("users", ""), json!(["ann", "bob"]));
    assert_eq!(bob.ask("socket_count", ""), json!(2));
    // The survivors go on.
    ann.say(json!({ "to": "#lobby", "text": "still here" }));
    assert_eq!(bob.expect("/said")["text"], "still here");
    drop(cat);
}

#[test]
fn redis_killed_and_restarted_is_survived() {
    let Some(redis) = Redis::start() else { return };
    let port = redis.port;
    let (a, b) = (Node::start(&redis, 2_000), Node::start(&redis, 2_000));
    let mut ann = a.connect("ann");
    let mut amy = a.connect("amy");
    let mut bob = b.connect("bob");
    for user in [&mut ann, &mut amy, &mut bob] {
        user.join("#lobby");
    }
    until_answer(&mut bob, "group_size", "#lobby", json!(3));
    drop(redis);
    // Local delivery goes on; messages for other nodes are lost, not queued without bound.
    for i in 0..20 {
        ann.say(json!({ "to": "#lobby", "text": i.to_string() }));
        assert_eq!(amy.expect("/said")["text"], i.to_string());
    }
    // A cluster query fails with a clear error within its timeout (2 s), never hangs.
    let asked = Instant::now();
    let (code, message) = bob.query("group_size", "#lobby").unwrap_err();
    assert!(asked.elapsed() < Duration::from_secs(3), "{:?}", asked.elapsed());
    assert_eq!(code, "unavailable");
    assert!(message.contains("Redis unavailable"), "{message}");

    let _redis = Redis::start_on(port).unwrap();
    // Presence is written again by its nodes, and delivery resumes by itself.
    until_answer(&mut bob, "group_size", "#lobby", json!(3));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        ann.say(json!({ "to": "#lobby", "text": "back" }));
        assert_eq!(amy.expect("/said")["text"], "back");
        if bob.client.ws.try_recv_within(Duration::from_millis(200)).is_ok() {
            break;
        }
        assert!(Instant::now() < deadline, "cross-node delivery did not resume");
    }
    // The outage was logged once per connection of each node (publisher,
    // subscriber), not per message, and so was the recovery.
    wait_for(Duration::from_secs(3), || a.logged("Redis back") == 2);
    assert_eq!(a.logged("Redis lost"), 2, "{:?}", a.log.lock().unwrap());
    assert_eq!(b.logged("Redis lost"), 2, "{:?}", b.log.lock().unwrap());
}
