//! Rooms and tags across workers: broadcasts encoded once reach every member
//! on every core, exactly once; membership is freed on disconnect.
#![cfg(feature = "app")]

#[path = "common/app.rs"]
mod app_client;
mod common;

use app_client::{eventually, AppClient};
use emitws::app::{App, BroadcastOpts, CallError, EventLimits, GroupOutcome, Running, SocketId};
use emitws::runtime::{AcceptMode, ConnId};
use serde_json::{json, Value};

/// An app where clients join groups and broadcast on request; two workers,
/// sockets dealt to them in turn so that every test spans both.
fn rooms_app(limits: EventLimits) -> Running {
    let mut app = App::new();
    app.limits(limits);
    app.on("@connection", |req| {
        let _ = req.emit("/id", &req.conn_id().0);
    });
    app.on("/join", |req| {
        let group: String = req.data().expect("a group");
        match req.join(&group) {
            Ok(()) => {
                let groups = req.groups();
                req.reply(&groups);
            }
            Err(e) => req.reply_err("forbidden", &e.to_string()),
        }
    });
    app.on("/leave", |req| {
        let group: String = req.data().expect("a group");
        let left = req.leave(&group);
        req.reply(&left);
    });
    app.on("/say", |req| {
        #[derive(serde::Deserialize)]
        struct Say {
            to: Vec<String>,
            text: String,
            #[serde(default)]
            include_self: bool,
            #[serde(default)]
            except: Vec<u64>,
        }
        let Some(say) = req.expect_data::<Say>() else { return };
        let mut opts = BroadcastOpts::all();
        for group in &say.to {
            opts = opts.and(group);
        }
        for id in say.except {
            opts = opts.except(ConnId(id));
        }
        if say.include_self {
            opts = opts.include_self();
        }
        let _ = req.broadcast("/said", &say.text, opts);
        req.reply(&true);
    });
    let server = common::quick_server().workers(2).accept_mode(AcceptMode::Acceptor);
    app.listen_with(server, "127.0.0.1:0").expect("start")
}

/// Connects `n` clients and returns them with their socket ids.
fn clients(running: &Running, n: usize) -> Vec<(AppClient, ConnId)> {
    (0..n)
        .map(|_| {
            let mut client = AppClient::connect(running.local_addr());
            let id = ConnId(client.expect_event("/id").as_u64().expect("numeric id"));
            (client, id)
        })
        .collect()
}

fn join(client: &mut AppClient, group: &str) {
    client.request("/join", json!(group)).unwrap_or_else(|e| panic!("join {group}: {e:?}"));
}

#[test]
fn a_room_broadcast_reaches_members_on_every_worker_once() {
    let running = rooms_app(EventLimits::default());
    let mut all = clients(&running, 6);
    let workers: std::collections::HashSet<usize> = all.iter().map(|(_, id)| id.worker()).collect();
    assert_eq!(workers.len(), 2, "the sockets span both workers");
    for (client, _) in &mut all[..4] {
        join(client, "#lobby");
    }
    assert_eq!(running.group_size("#lobby"), 4);
    let mut members: Vec<ConnId> = all[..4].iter().map(|(_, id)| *id).collect();
    members.sort();
    assert_eq!(running.group_members("#lobby"), members);

    // From a member: the others get it, the sender does not (by default).
    let (sender, rest) = all.split_first_mut().expect("clients");
    sender.0.request("/say", json!({ "to": ["#lobby"], "text": "hi" })).expect("say");
    for (client, _) in &mut rest[..3] {
        assert_eq!(client.expect_event("/said"), json!("hi"));
    }
    sender.0.request("/say", json!({ "to": ["#lobby"], "text": "me too", "include_self": true })).expect("say");
    assert_eq!(sender.0.expect_event("/said"), json!("me too"));
    for (client, _) in &mut rest[..3] {
        assert_eq!(client.expect_event("/said"), json!("me too"));
    }
    // From a non-member, with one member left out.
    let skipped = rest[0].1;
    rest[4].0.request("/say", json!({ "to": ["#lobby"], "text": "x", "except": [skipped.0] })).expect("say");
    assert_eq!(sender.0.expect_event("/said"), json!("x"));
    for (client, _) in &mut rest[1..3] {
        assert_eq!(client.expect_event("/said"), json!("x"));
    }
    // Nobody got anything else.
    for (client, _) in &mut all {
        client.expect_silence(common::ms(50));
    }
    for (client, _) in all {
        client.close();
    }
    running.close();
}

#[test]
fn rooms_and_tags_together_deliver_one_copy_and_app_broadcasts_reach_everyone() {
    let running = rooms_app(EventLimits::default());
    let mut all = clients(&running, 4);
    join(&mut all[0].0, "#ops");
    join(&mut all[0].0, "*admin");
    join(&mut all[1].0, "*admin");
    join(&mut all[2].0, "#ops");
    running.broadcast("/alert", &json!({ "level": 2 }), BroadcastOpts::to("#ops").and("*admin")).expect("broadcast");
    for (client, _) in &mut all[..3] {
        assert_eq!(client.expect_event("/alert"), json!({ "level": 2 }));
    }
    running.broadcast("/news", "all", BroadcastOpts::all()).expect("broadcast");
    for (client, _) in &mut all {
        assert_eq!(client.expect_event("/news"), json!("all"));
    }
    let first = all[0].1;
    running.emit_to(first, "/direct", &1).expect("emit_to");
    assert_eq!(all[0].0.expect_event("/direct"), json!(1));
    running.socket(all[3].1).emit("/direct", &2).expect("emit");
    assert_eq!(all[3].0.expect_event("/direct"), json!(2));
    for (client, _) in &mut all {
        client.expect_silence(common::ms(50));
    }
    assert_eq!(running.groups(), ["#ops", "*admin"]);
    for (client, _) in all {
        client.close();
    }
    running.close();
}

#[test]
fn leaving_and_disconnecting_free_membership() {
    let running = rooms_app(EventLimits::default());
    let mut all = clients(&running, 3);
    for (client, _) in &mut all {
        join(client, "#room");
    }
    assert_eq!(all[0].0.request("/leave", json!("#room")), Ok(json!(true)));
    assert_eq!(all[0].0.request("/leave", json!("#room")), Ok(json!(false)));
    assert_eq!(running.group_size("#room"), 2);
    let (client, _) = all.pop().expect("three");
    client.close();
    eventually("the closed socket to leave", || running.group_size("#room") == 1);
    all[0].0.request("/say", json!({ "to": ["#room"], "text": "left?" })).expect("say");
    assert_eq!(all[1].0.expect_event("/said"), json!("left?"));
    all[0].0.expect_silence(common::ms(50));
    let (client, _) = all.pop().expect("two");
    client.close();
    eventually("the room to go", || running.groups().is_empty());
    all.pop().expect("one").0.close();
    running.close();
}

#[test]
fn group_names_and_the_per_socket_cap_are_enforced() {
    let running = rooms_app(EventLimits::default().max_groups_per_socket(2));
    let mut all = clients(&running, 1);
    let client = &mut all[0].0;
    let (code, message) = client.request("/join", json!("lobby")).unwrap_err();
    assert_eq!(code, "forbidden");
    assert!(message.contains("bad group name"), "{message}");
    assert_eq!(client.request("/join", json!("#a")), Ok(json!(["#a"])));
    assert_eq!(client.request("/join", json!("#a")), Ok(json!(["#a"])), "joining twice is a no-op");
    assert_eq!(client.request("/join", json!("*b")), Ok(json!(["#a", "*b"])));
    let (_, message) = client.request("/join", json!("#c")).unwrap_err();
    assert!(message.contains("too many"), "{message}");
    assert_eq!(client.request("/say", json!({ "to": ["#nobody"], "text": "?" })), Ok(Value::Bool(true)));
    all.pop().expect("one").0.close();
    running.close();
}

/// Records what a cluster transport would carry.
#[derive(Default)]
struct Recorder {
    published: std::sync::Mutex<Vec<(String, Vec<String>)>>,
    presence: std::sync::Mutex<Vec<String>>,
}

impl emitws::app::Adapter for Recorder {
    fn node(&self) -> u64 {
        7
    }

    fn publish(&self, envelope: &[u8], to: emitws::app::Target<'_>) {
        let emitws::app::Target::Broadcast(opts) = to else { return };
        let groups = opts.groups().iter().map(|g| g.to_string()).collect();
        self.published.lock().unwrap().push((String::from_utf8_lossy(envelope).into_owned(), groups));
    }

    fn sockets(&self, _: emitws::app::Scope<'_>) -> Result<Vec<emitws::app::SocketId>, emitws::app::Error> {
        Ok(Vec::new())
    }

    fn count(&self, _: emitws::app::Scope<'_>) -> Result<usize, emitws::app::Error> {
        Ok(0)
    }

    fn socket_exists(&self, _: emitws::app::SocketId) -> Result<bool, emitws::app::Error> {
        Ok(false)
    }

    fn users(&self) -> Result<Vec<String>, emitws::app::Error> {
        Ok(Vec::new())
    }

    fn presence(&self, change: emitws::app::Presence<'_>) {
        let text = match change {
            emitws::app::Presence::Connected { .. } => "connected".to_string(),
            emitws::app::Presence::Joined { group, .. } => format!("joined {group}"),
            emitws::app::Presence::Left { group, .. } => format!("left {group}"),
            emitws::app::Presence::Disconnected { groups, .. } => format!("disconnected {}", groups.len()),
            _ => "other".to_string(),
        };
        self.presence.lock().unwrap().push(text);
    }
}

#[test]
fn an_adapter_sees_non_local_broadcasts_and_presence_and_delivers_remote_ones() {
    let recorder = std::sync::Arc::new(Recorder::default());
    let mut app = App::new();
    app.adapter(recorder.clone());
    app.on("/join", |req| {
        let _ = req.join("#lobby");
        req.reply(&true);
    });
    let running = app.listen_with(common::quick_server().workers(2), "127.0.0.1:0").expect("start");
    let mut client = AppClient::connect(running.local_addr());
    assert_eq!(client.request("/join", Value::Null), Ok(json!(true)));
    running.broadcast("/news", &1, BroadcastOpts::to("#lobby")).expect("broadcast");
    running.broadcast("/local", &2, BroadcastOpts::to("#lobby").local()).expect("broadcast");
    assert_eq!(client.expect_event("/news"), json!(1));
    assert_eq!(client.expect_event("/local"), json!(2));
    assert_eq!(*recorder.published.lock().unwrap(), [(r#"[0,"/news",1]"#.to_string(), vec!["#lobby".to_string()])]);
    // What another node published reaches local members, and is not published again.
    running.deliver_remote(r#"[0,"/remote",3]"#, emitws::app::Target::Broadcast(&BroadcastOpts::to("#lobby")));
    assert_eq!(client.expect_event("/remote"), json!(3));
    assert_eq!(recorder.published.lock().unwrap().len(), 1);
    client.close();
    eventually("the disconnect", || recorder.presence.lock().unwrap().len() == 3);
    assert_eq!(*recorder.presence.lock().unwrap(), ["connected", "joined #lobby", "disconnected 1"]);
    running.close();
}

#[test]
fn the_app_joins_and_leaves_a_socket_by_its_id_with_the_sockets_own_limits() {
    let running = rooms_app(EventLimits::default().max_groups_per_socket(2));
    let mut all = clients(&running, 2);
    let (id, other) = (all[0].1, all[1].1);
    let socket = running.socket(id);
    assert_eq!(socket.conn_id(), id);
    assert_eq!(socket.join("#game").expect("a room").wait(), GroupOutcome::Done { changed: true });
    assert_eq!(socket.join("#game").expect("a room").wait(), GroupOutcome::Done { changed: false });
    assert_eq!(running.group_members("#game"), [id]);
    assert_eq!(running.rooms(), [("#game".to_string(), 1)]);
    running.broadcast("/news", "joined", BroadcastOpts::to("#game")).expect("broadcast");
    assert_eq!(all[0].0.expect_event("/news"), json!("joined"));
    // The socket sees the join as its own: its groups list it.
    assert_eq!(all[0].0.request("/join", json!("*tagged")), Ok(json!(["#game", "*tagged"])));
    match socket.join("#third").expect("a room").wait() {
        GroupOutcome::Refused { code, .. } => assert_eq!(code, "too_many_groups"),
        outcome => panic!("the limit did not hold: {outcome:?}"),
    }
    // The callback form, from the socket's worker; a tag as a room.
    let (sent, got) = std::sync::mpsc::channel();
    running.socket(other).join_then("*tagged", move |outcome| drop(sent.send(outcome))).expect("a tag");
    assert_eq!(got.recv_timeout(common::WAIT), Ok(GroupOutcome::Done { changed: true }));
    assert_eq!(running.group_sizes(), [("#game".to_string(), 1), ("*tagged".to_string(), 2)]);
    assert_eq!(running.cluster().rooms().expect("no adapter: this node"), [("#game".to_string(), 1)]);

    assert_eq!(socket.leave("#game").expect("a room").wait(), GroupOutcome::Done { changed: true });
    assert_eq!(socket.leave("#game").expect("a room").wait(), GroupOutcome::Done { changed: false });
    assert!(running.rooms().is_empty());
    running.broadcast("/news", "gone", BroadcastOpts::to("#game")).expect("broadcast");
    all[0].0.expect_silence(common::ms(100));

    // Without an adapter, a socket of another node is never there; nor a closed one.
    let elsewhere = running.socket(SocketId { node: 0x5eed, conn: id });
    assert_eq!(elsewhere.join("#game").expect("a room").wait(), GroupOutcome::NotThere);
    let call = elsewhere.call("x", &(), common::WAIT).expect("JSON").wait();
    assert_eq!(call, Err(CallError::Disconnected));
    let (client, _) = all.remove(0);
    client.close();
    eventually("the socket gone", || running.socket_count() == 1);
    assert_eq!(socket.join("#game").expect("a room").wait(), GroupOutcome::NotThere);
    for (client, _) in all {
        client.close();
    }
    running.close();
}
