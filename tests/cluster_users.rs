//! Users across a cluster: nodes sharing a real redis-server, raw clients
//! that log in after connect (`set_user`). The per-user device cap holds
//! for the whole cluster (a device refused wherever it connects, or the
//! oldest closed on whichever node holds it); the user presence hooks run
//! once per change in the cluster, a node killed with SIGKILL included; a
//! user logged in after connect resumes as it on another node; a user given
//! to a socket of one node from another (`SocketRef::set_user`) is reached
//! from both and counted by the cap, and cleared the same way; with Redis
//! down each node applies the cap to its own devices. Without redis-server
//! on the PATH these tests fail, naming what to install, unless
//! `EMITWS_SKIP=redis` leaves them out.
#![cfg(feature = "redis")]

#[path = "common/app.rs"]
mod app_client;
#[path = "common/child_node.rs"]
mod child_node;
mod common;
#[path = "common/login.rs"]
mod login;
#[path = "common/redis.rs"]
mod redis_server;

use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use app_client::{eventually, AppClient};
use emitws::app::{App, DevicePolicy, GroupOutcome, Running, SocketId};
use emitws::cluster::{RedisAdapter, RedisOptions};
use emitws::runtime::ConnId;
use login::{
    login, login_routes, offline_after_the_grace, resume_as, resume_token, seen, socket_id, whoami, Transitions,
};
use redis_server::{wait_for, Redis};
use serde_json::{json, Value};

/// The environment variable that makes [`killed_users_node`] run a node.
const CHILD_NODE: &str = "EMITWS_TEST_CHILD_USERS_NODE";

/// A user name that needs quoting in JSON and is not ASCII.
const ODD: &str = "o'neil \"the\" é {x}";

/// One node of the test cluster: the login app (see `common/login.rs`).
struct Node {
    running: Running,
    adapter: Arc<RedisAdapter>,
    transitions: Transitions,
}

impl Node {
    fn start(url: &str, heartbeat: Duration, cap: Option<(usize, DevicePolicy)>) -> Node {
        Node::start_with(url, heartbeat, cap, None)
    }

    /// As [`start`](Self::start), with a presence grace.
    fn start_with(url: &str, heartbeat: Duration, cap: Option<(usize, DevicePolicy)>, grace: Option<Duration>) -> Node {
        let options = RedisOptions::default()
            .heartbeat_ttl(heartbeat)
            .max_backoff(Duration::from_millis(200))
            .query_timeout(Duration::from_millis(500));
        let adapter = RedisAdapter::new(url, options).expect("a good URL");
        let (mut app, transitions) = login_app(adapter.clone(), cap);
        if let Some(grace) = grace {
            app.presence_grace(grace);
        }
        let running = app_client::start(app, 2);
        assert!(adapter.link().ready(Duration::from_secs(5)), "the node listens to the cluster");
        Node { running, adapter, transitions }
    }

    fn addr(&self) -> SocketAddr {
        self.running.local_addr()
    }

    /// A client logged in here as `user`, kept by the node's own cap.
    fn device(&self, user: &str) -> AppClient {
        let mut client = AppClient::connect(self.addr());
        assert!(login(&mut client, user), "{user} logged in");
        client
    }

    fn close(self) {
        self.running.close();
        self.adapter.link().stop();
    }
}

/// The login app with sessions kept 30 s, on `adapter`, with a device cap.
fn login_app(adapter: Arc<RedisAdapter>, cap: Option<(usize, DevicePolicy)>) -> (App, Transitions) {
    let mut app = App::new();
    app.adapter(adapter);
    app.resume_window(Some(Duration::from_secs(30)));
    if let Some((max, policy)) = cap {
        app.max_devices(max, policy);
    }
    let transitions = login_routes(&mut app);
    (app, transitions)
}

/// Two nodes (heartbeats of 2 s) with the same cap, each seeing the other alive.
fn two_nodes(redis: &Redis, cap: Option<(usize, DevicePolicy)>) -> (Node, Node) {
    let heartbeat = Duration::from_secs(2);
    let (a, b) = (Node::start(&redis.url(), heartbeat, cap), Node::start(&redis.url(), heartbeat, cap));
    wait_alive(&[&a], 2);
    wait_alive(&[&b], 2);
    (a, b)
}

/// Waits until every one of `nodes` sees `count` nodes alive.
fn wait_alive(nodes: &[&Node], count: usize) {
    wait_for(Duration::from_secs(5), || {
        nodes.iter().all(|n| n.adapter.link().nodes().is_ok_and(|alive| alive.len() == count))
    });
}

/// The devices Redis counts for `user`, oldest first.
fn counted(redis: &Redis, user: &str) -> Vec<String> {
    let client = redis::Client::open(redis.url()).expect("a good URL");
    let mut c = client.get_connection().expect("redis is up");
    redis::cmd("ZRANGE").arg(format!("emitws:u:{{{user}}}")).arg(0).arg(-1).query(&mut c).expect("ZRANGE")
}

/// Waits until Redis counts `n` devices of `user`.
fn wait_counted(redis: &Redis, user: &str, n: usize) {
    wait_for(Duration::from_secs(5), || counted(redis, user).len() == n);
}

/// Logs `client` in as `user`: the node's own cap keeps it, the cluster's
/// refuses it (closed with 4429).
fn refused(client: &mut AppClient, user: &str) {
    assert!(login(client, user), "kept by the node's own cap");
    assert_eq!(client.ws.expect_close(4429), "too many devices for this user");
}

#[test]
fn the_cap_refuses_a_device_over_it_wherever_it_connects() {
    let Some(redis) = Redis::start() else { return };
    let (a, b) = two_nodes(&redis, Some((2, DevicePolicy::RejectNew)));
    let on_a = a.device(ODD);
    let mut on_b = b.device(ODD);
    wait_counted(&redis, ODD, 2);
    for node in [&a, &b] {
        refused(&mut AppClient::connect(node.addr()), ODD);
    }
    assert_eq!(counted(&redis, ODD).len(), 2, "the refused devices are not counted");
    // Another user is not capped by this one's devices.
    let other = a.device("bob");
    wait_counted(&redis, "bob", 1);
    // A device gone frees its place, for a device on either node.
    on_a.close();
    wait_counted(&redis, ODD, 1);
    let mut again = a.device(ODD);
    wait_counted(&redis, ODD, 2);
    assert_eq!(whoami(&mut again), json!(ODD), "kept");
    // B's one device: the device B refused (4429, its client left without
    // answering the close) keeps no session waiting for a resume.
    assert_eq!(on_b.request("/dm", json!([ODD, "hi"])), Ok(json!(1)));
    assert_eq!(again.expect_event("/dm"), json!("hi"));
    assert_eq!(on_b.expect_event("/dm"), json!("hi"));
    for client in [again, on_b, other] {
        client.close();
    }
    a.close();
    b.close();
}

#[test]
fn the_cap_closes_the_oldest_device_on_the_node_that_holds_it() {
    let Some(redis) = Redis::start() else { return };
    let (a, b) = two_nodes(&redis, Some((2, DevicePolicy::DropOldest)));
    let mut oldest = a.device("ann");
    wait_counted(&redis, "ann", 1);
    let second = b.device("ann");
    wait_counted(&redis, "ann", 2);
    let third = b.device("ann");
    assert_eq!(oldest.expect_close(4409), "replaced by a newer device");
    eventually("node A drops it", || !a.running.to_user("ann").is_online());
    assert_eq!(counted(&redis, "ann").len(), 2);
    assert_eq!(b.running.to_user("ann").sockets().len(), 2);
    second.close();
    third.close();
    a.close();
    b.close();
}

#[test]
fn presence_changes_fire_once_in_the_cluster_for_devices_on_two_nodes_at_once() {
    let Some(redis) = Redis::start() else { return };
    let (a, b) = two_nodes(&redis, None);
    let (mut on_a, mut on_b) = (AppClient::connect(a.addr()), AppClient::connect(b.addr()));
    let both = |what: &str| -> Vec<String> {
        let mut all = seen(&a.transitions);
        all.extend(seen(&b.transitions));
        all.retain(|t| t.starts_with(what));
        all
    };
    // Both log in at the same moment, one on each node.
    let (ida, idb) = (on_a.send_request("/login", json!(ODD)), on_b.send_request("/login", json!(ODD)));
    assert_eq!((on_a.reply_to(ida), on_b.reply_to(idb)), (Ok(json!(true)), Ok(json!(true))));
    wait_counted(&redis, ODD, 2);
    eventually("online", || !both("online").is_empty());
    // The second answer, if it were a change too, comes on its heels.
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(both("online"), [format!("online {ODD}")]);
    // Both log out at the same moment.
    let (ida, idb) = (on_a.send_request("/logout", Value::Null), on_b.send_request("/logout", Value::Null));
    assert_eq!((on_a.reply_to(ida), on_b.reply_to(idb)), (Ok(Value::Null), Ok(Value::Null)));
    wait_counted(&redis, ODD, 0);
    eventually("offline", || !both("offline").is_empty());
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(both("offline"), [format!("offline {ODD}")]);
    on_a.close();
    on_b.close();
    a.close();
    b.close();
}

#[test]
fn a_user_logged_in_after_connect_resumes_as_it_on_another_node() {
    let Some(redis) = Redis::start() else { return };
    let (a, b) = two_nodes(&redis, None);
    let mut phone = AppClient::connect(a.addr());
    let token = resume_token(&phone);
    assert!(login(&mut phone, ODD));
    wait_counted(&redis, ODD, 1);
    drop(phone);
    wait_counted(&redis, ODD, 0);
    let back = resume_as(b.addr(), &token, ODD);
    assert!(b.running.to_user(ODD).is_online());
    wait_counted(&redis, ODD, 1);
    back.close();
    a.close();
    b.close();
}

/// With a presence grace, a socket lost on one node that resumes on
/// another within it fires neither hook, anywhere; gone for good, its user
/// goes offline once, when the grace is over.
#[test]
fn within_the_presence_grace_a_resume_on_another_node_fires_neither_hook() {
    const GRACE: Duration = Duration::from_secs(2);
    let Some(redis) = Redis::start() else { return };
    let heartbeat = Duration::from_secs(2);
    let a = Node::start_with(&redis.url(), heartbeat, None, Some(GRACE));
    let b = Node::start_with(&redis.url(), heartbeat, None, Some(GRACE));
    wait_alive(&[&a, &b], 2);
    let both = || -> Vec<String> {
        let mut all = seen(&a.transitions);
        all.extend(seen(&b.transitions));
        all
    };
    let mut phone = AppClient::connect(a.addr());
    let token = resume_token(&phone);
    assert!(login(&mut phone, ODD));
    eventually("online", || !both().is_empty());

    // Lost on A, resumed on B within the grace.
    drop(phone);
    wait_counted(&redis, ODD, 0);
    let back = resume_as(b.addr(), &token, ODD);
    wait_counted(&redis, ODD, 1);
    std::thread::sleep(GRACE * 2);
    assert_eq!(both(), [format!("online {ODD}")], "neither hook for the resume");

    // Gone for good: offline once, when the grace is over.
    offline_after_the_grace(back, GRACE, 2, both);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(both(), [format!("online {ODD}"), format!("offline {ODD}")]);
    assert_eq!(seen(&b.transitions), [format!("offline {ODD}")], "on the node whose device went last");
    a.close();
    b.close();
}

#[test]
fn a_user_given_from_another_node_is_reached_everywhere_capped_and_cleared() {
    let Some(redis) = Redis::start() else { return };
    let (a, b) = two_nodes(&redis, Some((2, DevicePolicy::RejectNew)));
    let mut phone = AppClient::connect(b.addr());
    let phone_ref = a.running.socket(socket_id(&phone));
    assert_eq!(phone_ref.set_user(ODD).wait(), GroupOutcome::Done { changed: true });
    assert_eq!(whoami(&mut phone), json!(ODD));
    wait_counted(&redis, ODD, 1);
    assert_eq!(phone_ref.set_user(ODD).wait(), GroupOutcome::Done { changed: false });
    // Reached as a device of the user from its node and from the asker's.
    assert_eq!(a.running.to_user(ODD).emit("/dm", "from a").expect("JSON"), 0);
    assert_eq!(phone.expect_event("/dm"), json!("from a"));
    assert_eq!(b.running.to_user(ODD).emit("/dm", "from b").expect("JSON"), 1);
    assert_eq!(phone.expect_event("/dm"), json!("from b"));
    // The cluster's cap counts it: a third device, alone on its node, is refused.
    let mut laptop = a.device(ODD);
    wait_counted(&redis, ODD, 2);
    let mut tablet = AppClient::connect(b.addr());
    match a.running.socket(socket_id(&tablet)).set_user(ODD).wait() {
        GroupOutcome::Refused { code, message } => assert_eq!(code, "too_many_devices", "{message}"),
        other => panic!("a third device was not refused: {other:?}"),
    }
    assert_eq!(tablet.ws.expect_close(4429), "too many devices for this user");
    assert_eq!(counted(&redis, ODD).len(), 2, "the refused device is not counted");
    // Its node lists it until its close is through.
    drop(tablet);
    eventually("the refused device gone", || b.running.to_user(ODD).sockets().len() == 1);
    // Cleared from the other node: no longer a device, counted out.
    assert_eq!(phone_ref.clear_user().wait(), GroupOutcome::Done { changed: true });
    wait_counted(&redis, ODD, 1);
    assert_eq!(whoami(&mut phone), Value::Null);
    assert!(!b.running.to_user(ODD).is_online());
    a.running.to_user(ODD).emit("/dm", "not yours").expect("JSON");
    let mut got = laptop.expect_event("/dm");
    if got == json!("from b") {
        // b's message to the user crossed to node a through Redis after the
        // laptop came in there: it was one of the user's devices by then.
        got = laptop.expect_event("/dm");
    }
    assert_eq!(got, json!("not yours"), "the user's other device");
    phone.expect_silence(Duration::from_millis(300));
    assert_eq!(phone_ref.clear_user().wait(), GroupOutcome::Done { changed: false });
    // A connection of no socket on a live node.
    let unknown = SocketId { node: b.running.node(), conn: ConnId(socket_id(&phone).conn.0 + 1000) };
    assert_eq!(a.running.socket(unknown).set_user(ODD).wait(), GroupOutcome::NotThere);
    phone.close();
    laptop.close();
    a.close();
    b.close();
}

/// A node of the killed-node test, in a child process (started with
/// [`CHILD_NODE`] set to the Redis URL): no cap. It prints its address,
/// then waits to be killed. Ignored, so that it does not show as a test
/// that passed.
#[test]
#[ignore = "the child node of the killed-node test, which runs it"]
fn killed_users_node() {
    let Ok(url) = std::env::var(CHILD_NODE) else { return };
    let node = Node::start(&url, Duration::from_millis(600), Some((2, DevicePolicy::RejectNew)));
    println!("node at {}", node.addr());
    std::io::stdout().flush().expect("the parent reads");
    std::thread::sleep(Duration::from_secs(60));
}

#[test]
fn a_killed_nodes_devices_stop_counting_and_its_users_go_offline_once() {
    let Some(redis) = Redis::start() else { return };
    let cap = Some((2, DevicePolicy::RejectNew));
    let (b, c) = (
        Node::start(&redis.url(), Duration::from_millis(600), cap),
        Node::start(&redis.url(), Duration::from_millis(600), cap),
    );
    let (mut child, addr) = child_node::spawn("killed_users_node", CHILD_NODE, &redis.url());
    wait_alive(&[&b, &c], 3);
    let ann = [AppClient::connect(addr), AppClient::connect(addr)].map(|mut client| {
        assert!(login(&mut client, ODD));
        client
    });
    let mut bob = AppClient::connect(addr);
    assert!(login(&mut bob, "bob"));
    let bob_here = b.device("bob");
    wait_counted(&redis, ODD, 2);
    wait_counted(&redis, "bob", 2);
    refused(&mut AppClient::connect(b.addr()), ODD);
    // SIGKILL: no close, no cleanup.
    child.0.kill().expect("kill the node");
    child.0.wait().expect("reap it");
    drop((ann, bob));
    wait_counted(&redis, ODD, 0);
    wait_counted(&redis, "bob", 1);
    let offline = |user: &str| {
        let mut all = seen(&b.transitions);
        all.extend(seen(&c.transitions));
        all.into_iter().filter(|t| *t == format!("offline {user}")).count()
    };
    eventually("ann offline", || offline(ODD) == 1);
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!((offline(ODD), offline("bob")), (1, 0), "once, on one survivor; bob is still on B");
    // The dead node's devices no longer count against the cap.
    let mut back = c.device(ODD);
    let also = b.device(ODD);
    wait_counted(&redis, ODD, 2);
    assert_eq!(whoami(&mut back), json!(ODD));
    for client in [back, also, bob_here] {
        client.close();
    }
    b.close();
    c.close();
}

#[test]
fn with_redis_down_each_node_applies_the_cap_to_its_own_devices_and_redis_back_counts_them_again() {
    let Some(redis) = Redis::start() else { return };
    let port = redis.port;
    let (a, b) = two_nodes(&redis, Some((1, DevicePolicy::RejectNew)));
    drop(redis);
    let mut on_a = a.device("ann");
    let mut on_b = b.device("ann");
    let gone = a.device("bob");
    // This node's own cap still refuses, at once.
    let mut over = AppClient::connect(a.addr());
    over.send_request("/login", json!("ann"));
    assert_eq!(over.ws.expect_close(4429), "too many devices for this user");
    // The devices that each node's cap kept stay, and their users are online there.
    assert_eq!(whoami(&mut on_a), json!("ann"));
    assert_eq!(whoami(&mut on_b), json!("ann"));
    for node in [&a, &b] {
        assert_eq!(node.running.to_user("ann").sockets().len(), 1);
        eventually("online on this node", || seen(&node.transitions).contains(&"online ann".to_string()));
    }
    gone.close();
    eventually("bob offline on A", || seen(&a.transitions).contains(&"offline bob".to_string()));
    // Redis is back, empty: each node counts its devices there again, the
    // ones it still has only.
    let redis = Redis::start_on(port).expect("redis-server again");
    wait_counted(&redis, "ann", 2);
    wait_counted(&redis, "bob", 0);
    // Then the cluster's cap holds again.
    on_a.close();
    wait_counted(&redis, "ann", 1);
    refused(&mut AppClient::connect(a.addr()), "ann");
    on_b.close();
    a.close();
    b.close();
}

#[test]
fn a_device_that_leaves_while_redis_does_not_answer_stops_counting_when_it_does() {
    let Some(redis) = Redis::start() else { return };
    let (a, b) = two_nodes(&redis, Some((1, DevicePolicy::RejectNew)));
    let bob = a.device("bob");
    wait_counted(&redis, "bob", 1);
    // Redis keeps its data but answers nobody for 2 s (longer than the
    // nodes' 500 ms timeouts): the removal cannot be counted then.
    let client = redis::Client::open(redis.url()).expect("a good URL");
    let mut c = client.get_connection().expect("redis is up");
    let () = redis::cmd("CLIENT").arg("PAUSE").arg(2000).arg("ALL").query(&mut c).expect("paused");
    bob.close();
    eventually("bob offline on A, by its own count", || seen(&a.transitions).contains(&"offline bob".to_string()));
    // Once Redis answers, node A's devices are counted as they are.
    wait_counted(&redis, "bob", 0);
    let mut again = b.device("bob");
    wait_counted(&redis, "bob", 1);
    assert_eq!(whoami(&mut again), json!("bob"), "not refused by the device gone");
    again.close();
    a.close();
    b.close();
}
