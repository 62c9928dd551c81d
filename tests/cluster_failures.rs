//! What an app sees when Redis or a node fails (README.md, "When Redis or a
//! node fails"): two app nodes on a real redis-server, raw clients. Redis
//! killed and restarted empty on its port: local delivery goes on, the
//! other nodes' broadcasts are lost and counted, queries fail, `/readyz`
//! says why, one event when it is lost and one when it is back, then
//! presence is written again and messages flow. A node cut off from Redis
//! (a TCP proxy between them): the other sees it leave, its clients go on
//! locally, its sessions resume on the other node; healed, it comes back.
//! Without redis-server on the PATH these tests fail, naming what to
//! install, unless `EMITWS_SKIP=redis` leaves them out.
#![cfg(feature = "redis")]

#[path = "common/app.rs"]
mod app_client;
mod common;
#[path = "common/redis.rs"]
mod redis_server;
#[path = "common/tcp_proxy.rs"]
mod tcp_proxy;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use app_client::{eventually, AppClient};
use common::{http, HttpReply};
use emitws::app::{App, BroadcastOpts, ClusterEvent, Error, Running, Scope};
use emitws::cluster::{RedisAdapter, RedisOptions};
use emitws::metrics::{Metrics, Snapshot};
use redis_server::Redis;
use serde_json::json;
use tcp_proxy::Proxy;

/// How long a heartbeat lives: short, so that a node cut off leaves soon.
const HEARTBEAT: Duration = Duration::from_secs(1);
/// The time a cluster query is allowed.
const QUERY_TIMEOUT: Duration = Duration::from_millis(500);

/// One node of the test cluster, and the cluster events its app got.
struct Node {
    running: Running,
    adapter: Arc<RedisAdapter>,
    metrics: Metrics,
    events: Arc<Mutex<Vec<ClusterEvent>>>,
}

impl Node {
    /// A node on Redis at `url`: `?user=` auth, sessions kept 30 s, `/join`
    /// and `/say` ([room, text] to `/said`), `/readyz`, cluster events recorded.
    fn start(url: &str) -> Node {
        let options = RedisOptions::default()
            .heartbeat_ttl(HEARTBEAT)
            .query_timeout(QUERY_TIMEOUT)
            .max_backoff(Duration::from_millis(200));
        let adapter = RedisAdapter::new(url, options).expect("a good URL");
        let events: Arc<Mutex<Vec<ClusterEvent>>> = Arc::default();
        let mut app = App::new();
        app.adapter(adapter.clone());
        app.resume_window(Some(Duration::from_secs(30)));
        app.identify(|conn| Ok(conn.query_value("user").unwrap_or_else(|| "anon".into())));
        let seen = events.clone();
        app.on_cluster(move |_, event| seen.lock().unwrap().push(event.clone()));
        let probes = app.probes();
        app.on_http(move |request| probes.answer(request.path()));
        app.on("/join", |req| {
            let room: String = req.data().expect("a room");
            let joined = req.join(&room).is_ok();
            req.reply(&joined);
        });
        app.on("/say", |req| {
            let (room, text): (String, String) = req.data().expect("[room, text]");
            let _ = req.broadcast("/said", &text, BroadcastOpts::to(&room));
            req.reply(&true);
        });
        let metrics = app.metrics();
        let running = app_client::start(app, 2);
        assert!(adapter.link().ready(Duration::from_secs(5)), "the node listens to the cluster");
        Node { running, adapter, metrics, events }
    }

    fn addr(&self) -> SocketAddr {
        self.running.local_addr()
    }

    fn node(&self) -> u64 {
        self.adapter.link().node()
    }

    fn snapshot(&self) -> Snapshot {
        self.metrics.snapshot()
    }

    /// `/readyz`: (status, body).
    fn readyz(&self) -> (u16, String) {
        let reply: HttpReply = http(self.addr(), b"GET /readyz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").1;
        (reply.status, reply.body_text())
    }

    /// The cluster events so far, taken.
    fn take_events(&self) -> Vec<ClusterEvent> {
        std::mem::take(&mut *self.events.lock().unwrap())
    }

    /// Waits for the cluster events to be `expected` (by kind and node; the
    /// error and the outage's length are checked apart), then for 3
    /// heartbeat periods more that no other comes; returns them.
    fn expect_events(&self, what: &str, expected: &[Expected]) -> Vec<ClusterEvent> {
        eventually(what, || self.events.lock().unwrap().len() >= expected.len());
        std::thread::sleep(HEARTBEAT * 3);
        let events = self.take_events();
        let kinds: Vec<Expected> = events.iter().map(Expected::of).collect();
        assert_eq!(kinds, expected, "{what}: {events:?}");
        events
    }

    fn close(self) {
        self.running.close();
        self.adapter.link().stop();
    }
}

/// A cluster event, as the tests compare them.
#[derive(Debug, PartialEq, Eq)]
enum Expected {
    Lost,
    Back,
    Joined(u64),
    Left(u64),
}

impl Expected {
    fn of(event: &ClusterEvent) -> Expected {
        match event {
            ClusterEvent::StoreLost { .. } => Expected::Lost,
            ClusterEvent::StoreBack { .. } => Expected::Back,
            ClusterEvent::NodeJoined { node } => Expected::Joined(*node),
            ClusterEvent::NodeLeft { node } => Expected::Left(*node),
            other => panic!("an event the test does not know: {other:?}"),
        }
    }
}

/// Waits until each node sees both alive.
fn wait_joined(a: &Node, b: &Node) {
    for node in [a, b] {
        eventually("both nodes alive", || node.adapter.link().nodes().is_ok_and(|alive| alive.len() == 2));
    }
}

/// Connects as `user` and joins `room`.
fn member(node: &Node, user: &str, room: &str) -> AppClient {
    let mut client = AppClient::connect_to(node.addr(), &format!("/?user={user}"), &[]).expect("upgraded");
    client.wait_ready();
    assert_eq!(client.request("/join", json!(room)), Ok(json!(true)));
    client
}

/// `speaker` says `text` in `room` until `listener` hears it (the
/// subscriptions may lag the heartbeats a little); other `/said` before it
/// are skipped only if they are `text` too.
fn say_until_heard(speaker: &mut AppClient, listener: &mut AppClient, room: &str, text: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        assert_eq!(speaker.request("/say", json!([room, text])), Ok(json!(true)));
        if listener.next_within(Duration::from_millis(200)).is_some_and(|e| e == json!([0, "/said", text])) {
            return;
        }
        assert!(Instant::now() < deadline, "{text:?} never heard across nodes");
    }
}

/// Reads the `/said` events that `client` gets within a short while.
fn said(client: &mut AppClient) -> Vec<String> {
    let mut heard = Vec::new();
    while let Some(envelope) = client.next_within(Duration::from_millis(300)) {
        assert_eq!(envelope[1], "/said", "{envelope}");
        heard.push(envelope[2].as_str().expect("text").to_string());
    }
    heard
}

#[test]
fn redis_down_then_restarted_empty() {
    let Some(redis) = Redis::start() else { return };
    let port = redis.port;
    let (a, b) = (Node::start(&redis.url()), Node::start(&redis.url()));
    wait_joined(&a, &b);
    let (mut ann, mut carol) = (member(&a, "ann", "#lobby"), member(&a, "carol", "#lobby"));
    let mut bob = member(&b, "bob", "#lobby");
    say_until_heard(&mut bob, &mut ann, "#lobby", "before");
    let _ = (said(&mut ann), said(&mut carol), said(&mut bob));
    assert_eq!(a.readyz(), (200, "ready".into()));
    assert_eq!(a.snapshot().cluster_redis_up, 1);
    a.take_events();
    b.take_events();

    drop(redis);
    for node in [&a, &b] {
        eventually("the outage seen", || node.readyz() == (503, "not ready: Redis unreachable".into()));
        assert_eq!(node.snapshot().cluster_redis_up, 0);
        assert!(node.metrics.prometheus().contains("\nemitws_cluster_redis_up 0\n"));
        // A query fails at once (connection refused), well within its timeout.
        let asked = Instant::now();
        let count = node.running.app().cluster().count(Scope::All);
        assert!(matches!(count, Err(Error::Unavailable(_))), "{count:?}");
        assert!(asked.elapsed() < QUERY_TIMEOUT * 3, "{:?}", asked.elapsed());
    }
    // Local delivery goes on; what goes to the other node is dropped and counted.
    eventually("a's queue to empty", || a.snapshot().cluster_queue_depth == 0);
    let dropped = a.snapshot().cluster_dropped;
    assert_eq!(carol.request("/say", json!(["#lobby", "during"])), Ok(json!(true)));
    assert_eq!(said(&mut ann), ["during"]);
    eventually("the broadcast to be dropped", || a.snapshot().cluster_dropped == dropped + 1);
    assert_eq!(a.snapshot().cluster_queue_depth, 0, "nothing is held for later");

    // Redis comes back empty on its port: each node writes its presence again.
    let redis = Redis::start_on(port).expect("redis-server again");
    for node in [&a, &b] {
        let events = node.expect_events("lost, then back", &[Expected::Lost, Expected::Back]);
        let ClusterEvent::StoreBack { after } = &events[1] else { unreachable!() };
        assert!(*after > Duration::ZERO && *after < Duration::from_secs(30), "{after:?}");
        assert_eq!(node.readyz(), (200, "ready".into()));
        assert_eq!(node.snapshot().cluster_redis_up, 1);
        assert!(node.snapshot().cluster_reconnects >= 1);
        let app = node.running.app();
        let cluster = app.cluster();
        eventually("presence written again", || cluster.group_size("#lobby").is_ok_and(|n| n == 3));
        assert_eq!(cluster.count(Scope::All).expect("answered"), 3);
        assert_eq!(node.snapshot().cluster_nodes_alive, 2);
    }
    // Bob never gets what was said during the outage; what is said now flows both ways.
    assert_eq!(said(&mut bob), Vec::<String>::new());
    assert_eq!(ann.request("/say", json!(["#lobby", "after"])), Ok(json!(true)));
    assert_eq!(bob.expect_event("/said"), "after");
    assert_eq!(bob.request("/say", json!(["#lobby", "back"])), Ok(json!(true)));
    assert_eq!(said(&mut carol), ["after", "back"]);
    drop(redis);
    a.close();
    b.close();
}

#[test]
fn a_node_cut_off_from_redis_leaves_and_comes_back() {
    let Some(redis) = Redis::start() else { return };
    let proxy = Proxy::start(SocketAddr::from(([127, 0, 0, 1], redis.port)));
    let a = Node::start(&format!("redis://{}/", proxy.addr));
    let b = Node::start(&redis.url());
    wait_joined(&a, &b);
    let (mut ann, mut dan) = (member(&a, "ann", "#lobby"), member(&a, "dan", "#lobby"));
    let mut bob = member(&b, "bob", "#lobby");
    say_until_heard(&mut bob, &mut ann, "#lobby", "before");
    say_until_heard(&mut ann, &mut bob, "#lobby", "before too");
    let _ = (said(&mut ann), said(&mut dan), said(&mut bob));
    let ann_token = ann.ready.as_ref().and_then(|r| r["resume"].as_str()).expect("a resume token").to_string();
    let ann_socket = ann.ready.as_ref().and_then(|r| r["socket"].as_str()).expect("a socket id").to_string();
    a.take_events();
    b.take_events();

    proxy.cut();
    // B sees A leave once its heartbeat expires: A's sockets leave B's answers.
    let left = b.expect_events("a leaving", &[Expected::Left(a.node())]);
    assert_eq!(left.len(), 1);
    assert_eq!(b.snapshot().cluster_nodes_alive, 1);
    assert_eq!(b.running.app().cluster().group_size("#lobby").expect("answered"), 1);
    assert_eq!(b.readyz(), (200, "ready".into()), "b itself is fine");
    // A is cut off: it says so, its queries fail, its clients go on among themselves.
    assert_eq!(a.expect_events("a cut off", &[Expected::Lost]).len(), 1);
    assert_eq!(a.readyz(), (503, "not ready: Redis unreachable".into()));
    assert!(matches!(a.running.app().cluster().count(Scope::All), Err(Error::Unavailable(_))));
    assert_eq!((a.snapshot().cluster_redis_up, b.snapshot().cluster_redis_up), (0, 1));
    let dropped = a.snapshot().cluster_dropped;
    assert_eq!(dan.request("/say", json!(["#lobby", "local"])), Ok(json!(true)));
    assert_eq!(said(&mut ann), ["local"]);
    eventually("a's broadcast for b to be dropped", || a.snapshot().cluster_dropped == dropped + 1);
    assert_eq!(bob.request("/say", json!(["#lobby", "lost for a"])), Ok(json!(true)));
    assert_eq!(said(&mut ann), Vec::<String>::new(), "b's broadcasts do not reach a");

    // Ann's connection to A drops too; her session is claimed on B.
    drop(ann);
    let mut back = AppClient::connect_to(b.addr(), "/?user=ann&emitws_resume=1", &[]).expect("upgraded");
    let id = back.send_request("@resume", json!({ "token": ann_token, "rooms": {} }));
    let reply = back.reply_to(id).expect("a reply to @resume");
    assert_eq!((&reply["resumed"], &reply["socket"]), (&json!(true), &json!(ann_socket)), "{reply}");
    back.wait_ready();
    assert_eq!(bob.request("/say", json!(["#lobby", "on b"])), Ok(json!(true)));
    assert_eq!(back.expect_event("/said"), "on b", "resumed in her room on b");
    let _ = said(&mut bob);

    // Healed: A writes its presence again, B sees it join, messages flow both ways.
    proxy.online();
    assert_eq!(a.expect_events("a back", &[Expected::Back]).len(), 1);
    assert_eq!(b.expect_events("a joining", &[Expected::Joined(a.node())]).len(), 1);
    for node in [&a, &b] {
        let app = node.running.app();
        let cluster = app.cluster();
        // Dan on A; Bob and Ann (resumed) on B.
        eventually("a's presence written again", || cluster.group_size("#lobby").is_ok_and(|n| n == 3));
        assert_eq!(node.readyz(), (200, "ready".into()));
    }
    assert_eq!(dan.request("/say", json!(["#lobby", "from a"])), Ok(json!(true)));
    assert_eq!(bob.expect_event("/said"), "from a");
    assert_eq!(back.expect_event("/said"), "from a");
    assert_eq!(bob.request("/say", json!(["#lobby", "from b"])), Ok(json!(true)));
    assert_eq!(said(&mut dan), ["from b"], "a request's broadcast leaves its sender out");
    a.close();
    b.close();
}

/// Split brain after a partition: A is cut off from Redis while Ann's
/// socket lives on it; her client (another connection) resumes the session
/// on B with the token. Healed, A must not write the session's record
/// again (the spent token would resume again, and two sockets would answer
/// for one id): the claim's tombstone refuses the write, A reports it and
/// closes its socket with 4409, and messages for the id reach B's.
#[test]
fn a_socket_resumed_elsewhere_while_its_node_was_cut_off_is_closed_there_once_healed() {
    let Some(redis) = Redis::start() else { return };
    let proxy = Proxy::start(SocketAddr::from(([127, 0, 0, 1], redis.port)));
    let a = Node::start(&format!("redis://{}/", proxy.addr));
    let b = Node::start(&redis.url());
    wait_joined(&a, &b);
    let mut ann = member(&a, "ann", "#lobby");
    let mut bob = member(&b, "bob", "#lobby");
    say_until_heard(&mut bob, &mut ann, "#lobby", "before");
    let _ = (said(&mut ann), said(&mut bob));
    let token = ann.ready.as_ref().and_then(|r| r["resume"].as_str()).expect("a resume token").to_string();
    let socket = ann.ready.as_ref().and_then(|r| r["socket"].as_str()).expect("a socket id").to_string();
    a.take_events();
    b.take_events();

    proxy.cut();
    b.expect_events("a leaving", &[Expected::Left(a.node())]);
    a.expect_events("a cut off", &[Expected::Lost]);
    // Ann's socket still lives on A; her client resumes on B meanwhile.
    let mut back = AppClient::connect_to(b.addr(), "/?user=ann&emitws_resume=1", &[]).expect("upgraded");
    let id = back.send_request("@resume", json!({ "token": token, "rooms": {} }));
    let reply = back.reply_to(id).expect("a reply to @resume");
    assert_eq!((&reply["resumed"], &reply["socket"]), (&json!(true), &json!(socket)), "{reply}");
    back.wait_ready();

    proxy.online();
    let resumed = ClusterEvent::SocketResumedElsewhere { socket: socket.parse().expect("a socket id") };
    eventually("a told of the resume elsewhere", || a.events.lock().unwrap().contains(&resumed));
    assert_eq!(ann.expect_close(4409), "resumed elsewhere", "the socket on A is closed");
    eventually("a back", || a.events.lock().unwrap().iter().any(|e| matches!(e, ClusterEvent::StoreBack { .. })));
    let events = a.take_events();
    assert_eq!(events.iter().filter(|e| **e == resumed).count(), 1, "{events:?}");
    b.expect_events("a joining", &[Expected::Joined(a.node())]);

    // The id answers on B only, from either node.
    let id: emitws::app::SocketId = socket.parse().expect("a socket id");
    assert!(a.running.app().emit_to(id, "/direct", &"from a").expect("sent"));
    assert_eq!(back.expect_event("/direct"), "from a");
    assert!(b.running.app().emit_to(id, "/direct", &"from b").expect("sent"));
    assert_eq!(back.expect_event("/direct"), "from b");
    // The spent token resumes nothing, on either node.
    for node in [&a, &b] {
        let mut again = AppClient::connect_to(node.addr(), "/?user=ann&emitws_resume=1", &[]).expect("upgraded");
        let id = again.send_request("@resume", json!({ "token": token, "rooms": {} }));
        let reply = again.reply_to(id).expect("a reply to @resume");
        assert_eq!(reply["resumed"], false, "{reply}");
        assert_ne!(reply["socket"], json!(socket));
        again.wait_ready();
        again.close();
    }
    a.close();
    b.close();
}

#[test]
fn redis_flushed_under_the_nodes() {
    let Some(redis) = Redis::start() else { return };
    let (a, b) = (Node::start(&redis.url()), Node::start(&redis.url()));
    wait_joined(&a, &b);
    let mut ann = member(&a, "ann", "#lobby");
    let mut bob = member(&b, "bob", "#lobby");
    say_until_heard(&mut bob, &mut ann, "#lobby", "before");
    let _ = (said(&mut ann), said(&mut bob));
    // Past the nodes' first heartbeat period, when a missing node would count as gone.
    std::thread::sleep(HEARTBEAT * 2);
    a.take_events();
    b.take_events();

    let mut conn = redis::Client::open(redis.url()).and_then(|c| c.get_connection()).expect("a connection");
    let () = redis::cmd("FLUSHALL").query(&mut conn).expect("flushed");
    // Each node finds its heartbeat gone at its next beat and writes its presence again.
    for node in [&a, &b] {
        let app = node.running.app();
        let cluster = app.cluster();
        eventually("presence written again", || cluster.group_size("#lobby").is_ok_and(|n| n == 2));
        assert_eq!(node.readyz(), (200, "ready".into()));
    }
    // The connections stayed up, the nodes did not leave: nothing to announce.
    for node in [&a, &b] {
        std::thread::sleep(HEARTBEAT * 2);
        assert_eq!(node.take_events(), [], "no outage, no node left");
        assert_eq!(node.snapshot().cluster_nodes_alive, 2);
    }
    assert_eq!(ann.request("/say", json!(["#lobby", "after"])), Ok(json!(true)));
    assert_eq!(bob.expect_event("/said"), "after");
    a.close();
    b.close();
}
