//! The openspeed and emit.gg features of issue 18 §4, over real sockets: a
//! path route's own handlers and middleware (openspeed's `app.ws('/chat/:room',
//! …)`), the application-level `@ping` both ways (PROTOCOL.md §9.1), the
//! `readyState` of sockets and clients, a room's member cap (`room_full`,
//! on one node and from another node of a cluster over a real
//! redis-server), and emit.gg's `app.plugin([a, b])`. The JavaScript
//! client's ping and `readyState` run under node (clients/js/test/ping_ready_state.test.js).
//! Without redis-server or node on the PATH the tests that need them fail,
//! naming what to install, unless `EMITWS_SKIP` leaves them out.
#![cfg(feature = "app")]

#[path = "common/app_includes.rs"]
mod app_includes;
use app_includes::*;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use app_client::{eventually, AppClient};
use emitws::app::{App, CallError, GroupOutcome, Middleware, ReadyState, Refusal, Request, Running, SocketId};
use emitws::client::app::{AppClient as EventClient, AppOptions};
use serde_json::{json, Value};

/// The order middleware and handlers ran in for one request, kept on the socket.
fn trail(req: &mut Request<'_>, step: &str) {
    match req.get_mut::<Vec<String>>("trail") {
        Some(trail) => trail.push(step.into()),
        None => req.set("trail", vec![step.to_string()]),
    }
}

/// The trail so far, cleared for the next request.
fn take_trail(req: &mut Request<'_>) -> Option<Vec<String>> {
    req.remove("trail").and_then(|t| t.downcast::<Vec<String>>().ok()).map(|t| *t)
}

/// Replies with the trail (and clears it) and who answered.
fn answer(req: &mut Request<'_>, who: &str) {
    trail(req, who);
    let trail = take_trail(req);
    let room = req.param("room").map(str::to_string);
    req.reply(&json!({ "trail": trail, "room": room }));
}

/// An app with app-wide handlers and two path routes with their own.
fn routed_app() -> Running {
    let mut app = App::new();
    app.middleware(|req, next| {
        trail(req, "app-mw");
        next.run(req);
    });
    app.on("/who", |req| answer(req, "app"));
    app.on("/only-app", |req| answer(req, "app"));
    app.on("@connection", |req| {
        let _ = req.emit("/hello", &"app");
    });
    app.route("/");
    let counted = Middleware::new(|req, next| {
        trail(req, "event-mw");
        next.run(req);
    });
    app.route("/chat/:room")
        .middleware(|req, next| {
            if req.param("room") == Some("closed") {
                return req.reply_err("forbidden", "this room is closed");
            }
            trail(req, "route-mw");
            next.run(req);
        })
        .on("/who", |req| answer(req, "route"))
        .on_with("/guarded", [counted], |req| answer(req, "route"))
        .on("@connection", |req| {
            let room = req.param("room").unwrap_or_default().to_string();
            let _ = req.emit("/hello", &format!("route {room}"));
        });
    app.route("/game/:id").on("@any", |req| {
        let reply = json!({ "any": req.event(), "id": req.param("id"), "trail": take_trail(req) });
        req.reply(&reply);
    });
    app_client::start(app, 2)
}

fn connect(running: &Running, path: &str) -> AppClient {
    let mut client = AppClient::connect_to(running.local_addr(), path, &[]).expect("upgraded");
    client.wait_ready();
    client
}

#[test]
fn a_path_route_s_handlers_and_middleware_come_before_the_app_s() {
    let running = routed_app();
    let mut chat = connect(&running, "/chat/lobby");
    // The route's @connection runs first, then the app's.
    assert_eq!(chat.expect_event("/hello"), json!("route lobby"));
    assert_eq!(chat.expect_event("/hello"), json!("app"));
    let who = chat.request("/who", json!(null)).expect("a reply");
    assert_eq!(who, json!({ "trail": ["app-mw", "route-mw", "route"], "room": "lobby" }));
    // An event the route does not handle falls to the app's handler, behind the route's middleware.
    let app_only = chat.request("/only-app", json!(null)).expect("a reply");
    assert_eq!(app_only, json!({ "trail": ["app-mw", "route-mw", "app"], "room": "lobby" }));
    let guarded = chat.request("/guarded", json!(null)).expect("a reply");
    assert_eq!(guarded["trail"], json!(["app-mw", "route-mw", "event-mw", "route"]));
    // Unknown everywhere: the usual error reply.
    let (code, message) = chat.request("/nobody", json!(null)).expect_err("no handler");
    assert_eq!((code.as_str(), message.as_str()), ("no_handler", "no handler for /nobody"));

    // A socket on `/` sees none of the route's handlers or middleware.
    let mut root = connect(&running, "/");
    assert_eq!(root.expect_event("/hello"), json!("app"));
    let who = root.request("/who", json!(null)).expect("a reply");
    assert_eq!(who, json!({ "trail": ["app-mw", "app"], "room": null }));
    assert_eq!(root.request("/guarded", json!(null)).expect_err("the route's only").0, "no_handler");

    // The route's middleware may stop the chain, for the app's handlers too.
    let mut closed = connect(&running, "/chat/closed");
    assert_eq!(closed.expect_event("/hello"), json!("route closed"));
    assert_eq!(closed.expect_event("/hello"), json!("app"));
    for event in ["/who", "/only-app"] {
        let (code, message) = closed.request(event, json!(null)).expect_err("refused");
        assert_eq!((code.as_str(), message.as_str()), ("forbidden", "this room is closed"));
    }

    // A route's @any catches its sockets' unknown events, with the path's parameters.
    let mut game = connect(&running, "/game/42");
    assert_eq!(game.expect_event("/hello"), json!("app"));
    assert_eq!(
        game.request("/move", json!(1)).expect("@any"),
        json!({ "any": "/move", "id": "42", "trail": ["app-mw"] })
    );
    // Its events the app handles still go to the app.
    assert_eq!(game.request("/who", json!(null)).expect("a reply")["trail"], json!(["app-mw", "app"]));
    // Other paths are refused, as before: once routes exist, only theirs upgrade.
    let refused = AppClient::connect_to(running.local_addr(), "/elsewhere", &[]).err().expect("refused");
    assert_eq!(refused.status, 404);
    for client in [chat, root, closed, game] {
        client.close();
    }
    running.close();
}

#[test]
fn the_server_answers_a_client_s_ping_itself_in_every_state() {
    let mut app = App::new();
    app.identify_by_message("/login", |req| req.data::<String>().map_err(|_| Refusal::status(401, "who?")));
    app.on("@any", |req| req.reply(&"a handler ran"));
    let running = app_client::start(app, 1);
    let mut client = AppClient::connect_to(running.local_addr(), "/", &[]).expect("upgraded");
    // Before authentication: answered, with the data as written.
    client.send_raw(r#"[1,5,"@ping",{"t": 1e400, "s":"\ud800"}]"#);
    assert_eq!(client.next_text(), r#"[2,5,{"t": 1e400, "s":"\ud800"}]"#);
    client.send_raw(r#"[1,6,"@ping"]"#);
    assert_eq!(client.next_text(), "[2,6,null]");
    // Other envelopes still wait for the login.
    assert_eq!(client.request("/x", json!(null)).expect_err("unauthorized").0, "unauthorized");
    assert_eq!(client.request("/login", json!("ana")).expect("logged in"), json!({ "user": "ana" }));
    client.wait_ready();
    client.send_raw(r#"[1,7,"@ping",[1,2]]"#);
    assert_eq!(client.next_text(), "[2,7,[1,2]]");
    // The event form is a system event from a client, refused as before.
    client.send_raw(r#"[0,"@ping"]"#);
    client.expect_error_event("bad_request");
    client.close();
    running.close();
}

/// An app whose `/lag` pings the asking socket from its handler and replies
/// with the round trip in microseconds, or the error's code.
fn ping_app() -> App {
    let mut app = App::new();
    app.on("/lag", |req| {
        let reply = req.defer();
        req.socket().ping_then(Duration::from_secs(5), move |rtt| match rtt {
            Ok(rtt) => reply.reply(&(rtt.as_micros() as u64)),
            Err(CallError::NotRegistered(message)) => reply.reply_err("not_registered", &message),
            Err(why) => reply.reply_err("no_answer", &why.to_string()),
        });
    });
    app
}

#[test]
fn socket_ping_measures_a_round_trip_through_the_client_s_answer() {
    let running = app_client::start(ping_app(), 2);
    // The Rust client answers the server's @ping by itself, and pings the server.
    let url = format!("ws://{}/", running.local_addr());
    let client = EventClient::connect(&url, AppOptions::default()).expect("connected");
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    client.on("@any", move |event, _| record.lock().unwrap().push(event.to_string()));
    let rtt = client.request("/lag", json!(null), Duration::from_secs(5)).expect("a round trip");
    assert!(rtt.as_u64().is_some(), "{rtt}");
    let rtt = client.ping(Duration::from_secs(5)).expect("the server answers");
    assert!(rtt < Duration::from_secs(5), "{rtt:?}");
    // From another thread, by the socket's id.
    let id: SocketId = client.socket_id().expect("ready").parse().expect("a socket id");
    let rtt = running.app().socket(id).ping(Duration::from_secs(5)).wait().expect("the client answers");
    assert!(rtt < Duration::from_secs(5), "{rtt:?}");
    // The answers reached no listener of the application.
    assert!(seen.lock().unwrap().is_empty(), "{:?}", seen.lock().unwrap());

    // A raw client sees the call on the wire and answers it as it likes.
    let mut raw = AppClient::connect(running.local_addr());
    let raw_id: SocketId = raw.ready.as_ref().expect("ready")["socket"].as_str().expect("text").parse().expect("an id");
    let pending = running.app().socket(raw_id).ping(Duration::from_secs(5));
    let call = raw.next();
    assert_eq!((&call[0], &call[2], &call[3]), (&json!(1), &json!("@ping"), &Value::Null), "{call}");
    assert_eq!(pending.try_result(), None, "answered before the client did");
    raw.send_raw(&json!([2, call[1], null]).to_string());
    assert!(pending.wait().is_ok());
    // A client that does not know @ping (an older one): the ping fails, typed.
    let pending = running.app().socket(raw_id).ping(Duration::from_secs(5));
    let call = raw.next();
    raw.send_raw(&json!([3, call[1], { "code": "not_registered", "message": "no procedure @ping" }]).to_string());
    assert_eq!(pending.wait(), Err(CallError::NotRegistered("no procedure @ping".into())));
    // One that never answers: the ping's timeout.
    let silent = running.app().socket(raw_id).ping(Duration::from_millis(100)).wait();
    assert_eq!(silent, Err(CallError::Timeout));
    let _late_call = raw.next();
    // A socket that is gone.
    raw.close();
    eventually("the raw socket gone", || running.app().socket_count() == 1);
    assert_eq!(running.app().socket(raw_id).ping(Duration::from_secs(1)).wait(), Err(CallError::Disconnected));
    client.close();
    running.close();
}

#[test]
fn ready_states_of_the_server_s_sockets_and_of_the_rust_client() {
    let states = Arc::new(Mutex::new(Vec::new()));
    let mut app = App::new();
    let (record, on_close) = (states.clone(), states.clone());
    app.on("@connection", move |req| record.lock().unwrap().push(("@connection", req.ready_state())));
    app.on("@disconnect", move |req| on_close.lock().unwrap().push(("@disconnect", req.ready_state())));
    app.on("/state", |req| req.reply(&req.ready_state().number()));
    let in_handler = states.clone();
    app.on("/close-then-state", move |req| {
        assert_eq!(req.ready_state(), ReadyState::Open);
        req.close(emitws::proto::CloseCode::NORMAL, "bye");
        in_handler.lock().unwrap().push(("/close-then-state", req.ready_state()));
    });
    let running = app_client::start(app, 1);
    let url = format!("ws://{}/", running.local_addr());
    let client = EventClient::new(&url, AppOptions::default()).expect("made");
    assert_eq!(client.ready_state(), ReadyState::Closed, "idle");
    client.open().expect("connected");
    assert_eq!(client.ready_state(), ReadyState::Open);
    assert_eq!(client.request("/state", json!(null), Duration::from_secs(5)).expect("a reply"), json!(1));
    client.close();
    assert_eq!(client.ready_state(), ReadyState::Closed, "offline");
    eventually("@disconnect", || states.lock().unwrap().len() == 2);
    assert_eq!(*states.lock().unwrap(), [("@connection", ReadyState::Open), ("@disconnect", ReadyState::Closed)]);

    // Closing from a handler: the socket is CLOSING for the rest of it.
    let mut raw = AppClient::connect(running.local_addr());
    raw.send_request("/close-then-state", json!(null));
    raw.expect_close(1000);
    eventually("@disconnect", || states.lock().unwrap().len() == 5);
    let expected = [
        ("@connection", ReadyState::Open),
        ("/close-then-state", ReadyState::Closing),
        ("@disconnect", ReadyState::Closed),
    ];
    assert_eq!(states.lock().unwrap()[2..], expected);
    assert_eq!((ReadyState::Connecting.number(), ReadyState::Closing.as_str()), (0, "CLOSING"));
    running.close();
}

#[test]
fn the_rust_client_is_connecting_while_it_reconnects() {
    let running = app_client::start(App::new(), 1);
    let addr = running.local_addr();
    let options = AppOptions::default().reconnect_delay(Duration::from_millis(20)).max_retries(None);
    let client = EventClient::connect(&format!("ws://{addr}/"), options).expect("connected");
    assert_eq!(client.ready_state(), ReadyState::Open);
    running.close();
    eventually("the loss noticed", || client.ready_state() == ReadyState::Connecting);
    client.close();
    assert_eq!(client.ready_state(), ReadyState::Closed);
}

/// An app whose `/join` joins the room in the data and replies with the
/// error's code when refused.
fn capped_app(app: &mut App) {
    app.room_cap("#duel:*", 2).room_cap("#race", 3);
    app.on("/join", |req| {
        let Some(room) = req.expect_data::<String>() else { return };
        match req.join(&room) {
            Ok(()) => req.reply(&true),
            Err(e) => req.reply_err(e.code(), &e.to_string()),
        }
    });
    app.on("/leave", |req| {
        let Some(room) = req.expect_data::<String>() else { return };
        let left = req.leave(&room);
        req.reply(&left);
    });
}

fn socket_id(client: &AppClient) -> SocketId {
    client.ready.as_ref().expect("ready")["socket"].as_str().expect("text").parse().expect("a socket id")
}

#[test]
fn a_join_over_a_room_s_cap_is_refused_room_full() {
    let mut app = App::new();
    capped_app(&mut app);
    let running = app_client::start(app, 2);
    let addr = running.local_addr();
    let mut clients: Vec<AppClient> = (0..3).map(|_| AppClient::connect(addr)).collect();
    let join = |client: &mut AppClient, room: &str| client.request("/join", json!(room));
    assert_eq!(join(&mut clients[0], "#duel:1"), Ok(json!(true)));
    assert_eq!(join(&mut clients[1], "#duel:1"), Ok(json!(true)));
    // Joining again is no new member.
    assert_eq!(join(&mut clients[1], "#duel:1"), Ok(json!(true)));
    let (code, message) = join(&mut clients[2], "#duel:1").expect_err("full");
    assert_eq!(code, "room_full");
    assert!(message.contains("#duel:1"), "{message}");
    // Each room of the pattern has its own cap; other rooms have none.
    assert_eq!(join(&mut clients[2], "#duel:2"), Ok(json!(true)));
    for client in &mut clients {
        assert_eq!(join(client, "#lobby"), Ok(json!(true)));
    }
    // A member leaves: its place is free.
    assert_eq!(clients[0].request("/leave", json!("#duel:1")), Ok(json!(true)));
    let third = socket_id(&clients[2]);
    assert_eq!(
        running.app().socket(third).join("#duel:1").expect("a room").wait(),
        GroupOutcome::Done { changed: true }
    );
    // Now full again, for a join asked from another thread too.
    let first = socket_id(&clients[0]);
    match running.app().socket(first).join("#duel:1").expect("a room").wait() {
        GroupOutcome::Refused { code, .. } => assert_eq!(code, "room_full"),
        other => panic!("expected room_full, got {other:?}"),
    }
    assert_eq!(running.app().group_size("#duel:1"), 2);
    // A member that disconnects frees its place.
    clients.remove(1).close();
    eventually("the place freed", || running.app().group_size("#duel:1") == 1);
    assert_eq!(join(&mut clients[0], "#duel:1"), Ok(json!(true)));
    for client in clients {
        client.close();
    }
    running.close();
}

#[test]
fn sockets_of_several_workers_joining_at_once_never_exceed_the_cap() {
    let mut app = App::new();
    capped_app(&mut app);
    let running = app_client::start(app, 2);
    let addr = running.local_addr();
    for round in 0..5 {
        let mut clients: Vec<AppClient> = (0..8).map(|_| AppClient::connect(addr)).collect();
        let room = format!("#race{}", if round == 0 { String::new() } else { format!(":{round}") });
        // Only `#race` is capped (at 3): the other rounds take everyone.
        let ids: Vec<u64> = clients.iter_mut().map(|c| c.send_request("/join", json!(room))).collect();
        let outcomes: Vec<_> = clients.iter_mut().zip(ids).map(|(c, id)| c.reply_to(id)).collect();
        let joined = outcomes.iter().filter(|o| o.is_ok()).count();
        let expected = if round == 0 { 3 } else { 8 };
        assert_eq!(joined, expected, "{room}: {outcomes:?}");
        assert!(outcomes.iter().all(|o| o.as_ref().map_or_else(|(code, _)| code == "room_full", |_| true)));
        assert_eq!(running.app().group_size(&room), expected);
        for client in clients {
            client.close();
        }
        eventually("everyone gone", || running.app().socket_count() == 0);
    }
    running.close();
}

#[test]
#[should_panic(expected = "App::room_cap: room pattern \"*admin\"")]
fn a_cap_on_a_tag_is_a_setup_mistake() {
    App::new().room_cap("*admin", 2);
}

#[cfg(feature = "redis")]
#[test]
fn a_room_cap_holds_for_joins_asked_from_another_node() {
    {
        use redis_server::Redis;
        let Some(redis) = Redis::start() else { return };
        let (a, b) = two_nodes::two_nodes(&redis, || {
            let mut app = App::new();
            capped_app(&mut app);
            app
        });
        let mut on_b: Vec<AppClient> = (0..3).map(|_| AppClient::connect(b.addr())).collect();
        let ids: Vec<SocketId> = on_b.iter().map(socket_id).collect();
        // From node a: the cap of node b's room holds, refused with its code.
        for id in &ids[..2] {
            assert_eq!(
                a.app().socket(*id).join("#duel:9").expect("a room").wait(),
                GroupOutcome::Done { changed: true }
            );
        }
        match a.app().socket(ids[2]).join("#duel:9").expect("a room").wait() {
            GroupOutcome::Refused { code, message } => {
                assert_eq!(code, "room_full");
                assert!(message.contains("#duel:9"), "{message}");
            }
            other => panic!("expected room_full, got {other:?}"),
        }
        assert_eq!(on_b[2].request("/join", json!("#duel:9")).expect_err("full").0, "room_full");
        // The cap is per node: node a's sockets fill their own share of the room.
        let mut on_a: Vec<AppClient> = (0..3).map(|_| AppClient::connect(a.addr())).collect();
        let outcomes: Vec<_> = on_a.iter_mut().map(|c| c.request("/join", json!("#duel:9"))).collect();
        assert_eq!(outcomes.iter().filter(|o| o.is_ok()).count(), 2, "{outcomes:?}");
        for client in on_a.into_iter().chain(on_b.drain(..)) {
            client.close();
        }
        a.close();
        b.close();
    }
}

fn hello(app: &mut App) {
    app.on("/hello", |req| req.reply(&"hello"));
}

fn bye(app: &mut App) {
    app.on("/bye", |req| req.reply(&"bye"));
}

#[test]
fn plugins_apply_from_lists_in_order() {
    let order = Arc::new(Mutex::new(Vec::new()));
    let step = |name: &'static str| {
        let order = order.clone();
        Box::new(move |_: &mut App| order.lock().unwrap().push(name)) as Box<dyn FnOnce(&mut App)>
    };
    let mut app = App::new();
    app.plugin([hello, bye]);
    let tuple = |app: &mut App| {
        app.on("/tuple", |req| req.reply(&1));
    };
    app.plugin((tuple, emitws::app::plugins::heartbeat(Duration::from_secs(30))));
    let boxed = Box::new(|app: &mut App| {
        app.on("/boxed", |req| req.reply(&2));
    });
    app.plugin(vec![step("first"), step("second"), boxed]);
    app.plugin(step("single"));
    assert_eq!(*order.lock().unwrap(), ["first", "second", "single"]);
    let running = app_client::start(app, 1);
    let mut client = AppClient::connect(running.local_addr());
    for (event, reply) in
        [("/hello", json!("hello")), ("/bye", json!("bye")), ("/tuple", json!(1)), ("/boxed", json!(2))]
    {
        assert_eq!(client.request(event, json!(null)), Ok(reply), "{event}");
    }
    client.close();
    running.close();
}

#[test]
fn javascript_client_ping_and_ready_state() {
    let running = app_client::start(ping_app(), 2);
    let url = format!("ws://{}/", running.local_addr());
    node::run_node_tests("ping_ready_state.test.js", &[("EMITWS_SEEDS_URL", url)]);
    // The node process is gone: so are its sockets.
    eventually("the JS sockets gone", || running.app().socket_count() == 0);
    running.close();
}
