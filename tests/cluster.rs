//! The Redis link (under the app's adapter) against a real redis-server that each test starts on its
//! own port: messages between nodes, presence queries, a node that dies,
//! Redis going away and coming back, and what an app's node makes of
//! malformed messages. Without redis-server on the PATH these
//! tests fail, naming what to install, unless `EMITWS_SKIP=redis` leaves
//! them out.
#![cfg(feature = "redis")]

use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

#[path = "common/app.rs"]
mod app_client;
mod common;
#[path = "common/redis.rs"]
mod redis_server;

use app_client::AppClient;
use emitws::app::{App, Scope, SocketId};
use emitws::cluster::{ClusterError, Inbound, RedisAdapter, RedisLink, RedisOptions};
use emitws::runtime::ConnId;
use redis_server::{wait_for, Redis};

fn node(redis: &Redis, options: RedisOptions) -> (RedisLink, Receiver<Inbound>) {
    let (tx, rx) = mpsc::channel();
    let adapter = RedisLink::start(&redis.url(), options, move |message| {
        let _ = tx.send(message);
    })
    .unwrap();
    (adapter, rx)
}

fn quick() -> RedisOptions {
    RedisOptions::default().heartbeat_ttl(Duration::from_secs(1)).max_backoff(Duration::from_millis(200))
}

/// Waits until every node in `adapters` sees all of them alive.
fn wait_joined(adapters: &[&RedisLink]) {
    wait_for(Duration::from_secs(5), || adapters.iter().all(|a| a.nodes().is_ok_and(|n| n.len() == adapters.len())));
}

#[test]
fn messages_reach_other_nodes_and_never_their_sender() {
    let Some(redis) = Redis::start() else { return };
    let (a, a_inbox) = node(&redis, quick());
    let (b, b_inbox) = node(&redis, quick());
    let (c, c_inbox) = node(&redis, quick());
    wait_joined(&[&a, &b, &c]);
    // The subscriptions may lag the heartbeats a little: retry the first message.
    let deadline = Instant::now() + Duration::from_secs(5);
    let first = loop {
        a.publish_all(b"hello");
        if let Ok(message) = b_inbox.recv_timeout(Duration::from_millis(100)) {
            break message;
        }
        assert!(Instant::now() < deadline, "no broadcast arrived");
    };
    assert_eq!(first, Inbound { from: a.node(), direct: false, payload: b"hello".to_vec() });
    c.publish_to(b.node(), b"just you");
    let direct = b_inbox.recv_timeout(Duration::from_secs(2)).unwrap();
    let direct =
        if direct.payload == b"hello" { b_inbox.recv_timeout(Duration::from_secs(2)).unwrap() } else { direct };
    assert_eq!(direct, Inbound { from: c.node(), direct: true, payload: b"just you".to_vec() });
    assert!(c_inbox.recv_timeout(Duration::from_millis(300)).map_or(true, |m| m.payload == b"hello"));
    assert!(a_inbox.try_iter().all(|m| m.from != a.node()), "a node hears its own broadcast");
    for adapter in [a, b, c] {
        adapter.stop();
    }
}

#[test]
fn presence_is_answered_across_nodes() {
    let Some(redis) = Redis::start() else { return };
    let (a, _) = node(&redis, quick());
    let (b, _) = node(&redis, quick());
    wait_joined(&[&a, &b]);
    a.add_socket(1);
    a.join("#lobby", 1);
    a.add_user("ann", 1);
    b.add_socket(7);
    b.join("#lobby", 7);
    b.join("*admin", 7);
    b.add_user("bob", 7);
    b.add_socket(8);
    b.add_user("bob", 8);
    let on = |node: &RedisLink, id| SocketId { node: node.node(), conn: ConnId(id) };
    // Each node writes its updates in order, but the two nodes race: wait for
    // the last update of each (a's user, b's second device) before asking.
    wait_for(Duration::from_secs(3), || {
        a.count(Scope::All).unwrap() == 3
            && a.count(Scope::Group("#lobby")).unwrap() == 2
            && a.count(Scope::User("bob")).unwrap() == 2
            && a.users().unwrap().len() == 2
    });
    let mut lobby = vec![on(&a, 1), on(&b, 7)];
    lobby.sort();
    assert_eq!(b.sockets(Scope::Group("#lobby")).unwrap(), lobby);
    assert_eq!(a.count(Scope::Group("*admin")).unwrap(), 1);
    assert!(a.socket_exists(on(&b, 8)).unwrap());
    assert!(!a.socket_exists(on(&b, 9)).unwrap());
    assert_eq!(a.users().unwrap(), ["ann", "bob"]);
    assert_eq!(a.sockets(Scope::User("bob")).unwrap(), [on(&b, 7), on(&b, 8)]);
    b.remove_socket(7, vec!["#lobby".into(), "*admin".into()], Some("bob".into()));
    b.remove_socket(8, vec![], Some("bob".into()));
    wait_for(Duration::from_secs(3), || a.count(Scope::User("bob")).unwrap() == 0);
    assert_eq!(a.users().unwrap(), ["ann"]);
    assert_eq!(a.sockets(Scope::Group("#lobby")).unwrap(), [on(&a, 1)]);
    assert_eq!(a.count(Scope::All).unwrap(), 1);
    a.stop();
    b.stop();
}

#[test]
fn a_dead_node_leaves_every_answer_within_its_ttl() {
    let Some(redis) = Redis::start() else { return };
    let (a, _) = node(&redis, quick());
    wait_joined(&[&a]);
    // A node that crashed: its heartbeat runs out in 500 ms and nobody refreshes it.
    let mut raw = redis::Client::open(redis.url()).unwrap().get_connection().unwrap();
    let expires = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64 + 500;
    let _: () = redis::pipe()
        .zadd("emitws:nodes", "00000000deadbeef", expires)
        .sadd("emitws:n:{00000000deadbeef}:sockets", 5)
        .sadd("emitws:n:{00000000deadbeef}:g:#lobby", 5)
        .sadd("emitws:n:{00000000deadbeef}:users", "zed")
        .sadd("emitws:n:{00000000deadbeef}:u:zed", 5)
        .query(&mut raw)
        .unwrap();
    assert_eq!(a.count(Scope::User("zed")).unwrap(), 1);
    assert_eq!(a.count(Scope::Group("#lobby")).unwrap(), 1);
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(a.count(Scope::User("zed")).unwrap(), 0, "still online after its heartbeat expired");
    assert_eq!(a.count(Scope::Group("#lobby")).unwrap(), 0);
    assert_eq!(a.nodes().unwrap(), [a.node()]);
    // A survivor's heartbeat deletes what the dead node left behind.
    wait_for(Duration::from_secs(3), || {
        let keys: Vec<String> = redis::cmd("KEYS").arg("emitws:n:{00000000deadbeef}:*").query(&mut raw).unwrap();
        keys.is_empty()
    });
    a.stop();
}

#[test]
fn a_redis_restart_is_survived() {
    let Some(redis) = Redis::start() else { return };
    let port = redis.port;
    let (a, _) = node(&redis, quick());
    let (b, b_inbox) = node(&redis, quick());
    wait_joined(&[&a, &b]);
    a.add_socket(1);
    a.join("#lobby", 1);
    wait_for(Duration::from_secs(3), || b.count(Scope::Group("#lobby")).unwrap() == 1);
    drop(redis);
    // During the outage: publishing never blocks, queries fail within their timeout.
    let started = Instant::now();
    a.publish_all(b"lost");
    let outage = b.count(Scope::Group("#lobby")).unwrap_err();
    assert!(matches!(outage, ClusterError::Unavailable(_)), "{outage:?}");
    let cause = std::error::Error::source(&outage).expect("the Redis error is kept");
    assert!(cause.downcast_ref::<redis::RedisError>().is_some(), "{cause:?}");
    assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());
    let redis = Redis::start_on(port).unwrap();
    // Presence comes back (replayed by its node) and so does delivery.
    wait_for(Duration::from_secs(10), || b.count(Scope::Group("#lobby")).is_ok_and(|n| n == 1));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        a.publish_all(b"back");
        if b_inbox.recv_timeout(Duration::from_millis(200)).is_ok_and(|m| m.payload == b"back") {
            break;
        }
        assert!(Instant::now() < deadline, "delivery did not resume");
    }
    a.stop();
    b.stop();
    drop(redis);
}

/// An app set up by `configure`, as a node over `redis` (2 workers), once
/// its subscriber listens.
fn clustered(redis: &Redis, configure: impl FnOnce(&mut App)) -> (emitws::app::Running, std::sync::Arc<RedisAdapter>) {
    let adapter = RedisAdapter::new(&redis.url(), quick()).unwrap();
    let mut app = App::new();
    app.adapter(adapter.clone());
    configure(&mut app);
    let running = app_client::start(app, 2);
    assert!(adapter.link().ready(Duration::from_secs(5)));
    (running, adapter)
}

#[test]
fn an_app_node_ignores_malformed_messages() {
    let Some(redis) = Redis::start() else { return };
    let (running, adapter) = clustered(&redis, |app| {
        app.on("/join", |req| {
            let _ = req.join("#lobby");
            req.reply(&true);
        });
    });
    let mut client = AppClient::connect(running.local_addr());
    client.request("/join", serde_json::Value::Null).unwrap();
    let mut raw = redis::Client::open(redis.url()).unwrap().get_connection().unwrap();
    let other = "00000000000000aa";
    let payloads: Vec<Vec<u8>> = vec![
        b"no sender line".to_vec(),
        b"zz\n{\"b\":[[],[]]}\n[0,\"/not-hex-sender\"]".to_vec(),
        format!("{:016x}\n{{\"b\":[[],[]]}}\n[0,\"/from-itself\"]", adapter.link().node()).into_bytes(),
        format!("{other}\nnot a header\n[0,\"/x\"]").into_bytes(),
        format!("{other}\n{{\"b\":[[],[]]}}").into_bytes(),
        format!("{other}\n{{\"b\":[[],[]]}}\n[0,\"/unfinished\"").into_bytes(),
        [format!("{other}\n{{\"b\":[[],[]]}}\n").as_bytes(), b"\xff\xfe"].concat(),
        format!("{other}\n{{\"s\":1}}\n[0,\"/direct-on-the-broadcast-channel\"]").into_bytes(),
        format!("{other}\n{{\"b\":[[\"#lobby\"],[]]}}\n[0,\"/ok\",1]").into_bytes(),
    ];
    for payload in payloads {
        let _: () = redis::cmd("PUBLISH").arg("emitws:all").arg(payload).query(&mut raw).unwrap();
    }
    // One subscriber delivers in order: the first event to arrive is the only well-formed one.
    assert_eq!(client.expect_event("/ok"), 1);
    client.expect_silence(Duration::from_millis(200));
    client.close();
    running.close();
}

/// One app node of the cluster at `redis`: users say who they are with
/// `?user=`; `/id` replies the socket's id, `/kick` drops a user everywhere,
/// `/drop` drops one socket by id.
fn app_node(redis: &Redis) -> (emitws::app::Running, std::sync::Arc<RedisAdapter>) {
    clustered(redis, |app| {
        app.identify(|c| c.query_value("user").ok_or(emitws::app::Refusal::status(401, "who?")));
        app.on("/id", |req| req.reply(&req.socket_id().to_string()));
        app.on("/kick", |req| {
            let dropped = req.app().drop_user(&req.data::<String>().unwrap(), "kicked");
            req.reply(&dropped);
        });
        app.on("/drop", |req| {
            let id: SocketId = req.data::<String>().unwrap().parse().unwrap();
            req.reply(&req.app().drop_socket(id, "one device"));
        });
    })
}

#[test]
fn users_and_single_devices_are_dropped_on_every_node() {
    let Some(redis) = Redis::start() else { return };
    let (a, adapter_a) = app_node(&redis);
    let (b, adapter_b) = app_node(&redis);
    wait_joined(&[adapter_a.link(), adapter_b.link()]);
    let connect = |running: &emitws::app::Running, user: &str| {
        let mut client = AppClient::connect_to(running.local_addr(), &format!("/?user={user}"), &[]).unwrap();
        let id = client.request("/id", serde_json::Value::Null).unwrap().as_str().unwrap().to_string();
        (client, id)
    };
    let (mut admin, _) = connect(&a, "admin");
    let (mut ann_a, _) = connect(&a, "ann");
    let (mut ann_b, _) = connect(&b, "ann");
    let (mut bob_b, bob_id) = connect(&b, "bob");
    let (mut bob_a, _) = connect(&a, "bob");
    wait_for(Duration::from_secs(5), || a.cluster().user_sockets("ann").is_ok_and(|s| s.len() == 2));

    // Node a has one of ann's devices; the one on node b goes too.
    assert_eq!(admin.request("/kick", serde_json::json!("ann")).unwrap(), 1);
    assert_eq!(ann_a.expect_close(4000), "kicked");
    assert_eq!(ann_b.expect_close(4000), "kicked");

    // One device of bob's, on the other node, by its id.
    assert_eq!(admin.request("/drop", serde_json::json!(bob_id)).unwrap(), true);
    assert_eq!(bob_b.expect_close(4000), "one device");
    bob_a.expect_silence(Duration::from_millis(200));
    wait_for(Duration::from_secs(5), || a.cluster().user_sockets("bob").is_ok_and(|s| s.len() == 1));

    // A close another node asks for with a code that may not be sent closes nothing.
    let mut raw = redis::Client::open(redis.url()).unwrap().get_connection().unwrap();
    let forged = format!("{:016x}\n{{\"cu\":[\"bob\",1005]}}\nforged", 0xaa);
    let _: () = redis::cmd("PUBLISH").arg("emitws:all").arg(forged).query(&mut raw).unwrap();
    bob_a.expect_silence(Duration::from_millis(200));

    admin.close();
    bob_a.close();
    a.close();
    b.close();
}

#[test]
fn sockets_without_rooms_or_user_leave_the_presence_when_they_close() {
    let Some(redis) = Redis::start() else { return };
    let (running, _adapter) = clustered(&redis, |_| {});
    let clients: Vec<AppClient> = (0..4).map(|_| AppClient::connect(running.local_addr())).collect();
    wait_for(Duration::from_secs(5), || running.cluster().socket_count().is_ok_and(|n| n == 4));
    for client in clients {
        client.close();
    }
    wait_for(Duration::from_secs(5), || running.cluster().socket_count().is_ok_and(|n| n == 0));
    running.close();
}

#[test]
fn publishes_beyond_the_queue_cap_are_dropped_and_counted() {
    let Some(redis) = Redis::start() else { return };
    let (a, _) = node(&redis, quick().max_queued(0));
    let (b, b_inbox) = node(&redis, quick());
    wait_joined(&[&a, &b]);
    assert!(b.ready(Duration::from_secs(5)));
    for _ in 0..3 {
        a.publish_all(b"over the cap");
    }
    assert_eq!(a.dropped(), 3);
    assert!(b_inbox.recv_timeout(Duration::from_millis(300)).is_err());
    // Presence is never dropped.
    a.add_socket(1);
    wait_for(Duration::from_secs(3), || b.count(Scope::All).unwrap() == 1);
    a.stop();
    b.stop();
}

#[test]
fn a_bad_url_keeps_the_redis_error() {
    let error = RedisLink::start("nope://", RedisOptions::default(), |_| {}).unwrap_err();
    assert!(matches!(error, ClusterError::BadUrl(_)), "{error:?}");
    let cause = std::error::Error::source(&error).expect("the Redis error is kept");
    assert!(cause.downcast_ref::<redis::RedisError>().is_some(), "{cause:?}");
    let app_error = emitws::app::Error::from(error);
    assert_eq!(app_error.to_string(), "the cluster did not answer: bad Redis URL");
}
