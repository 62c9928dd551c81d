//! Session resume in one process (PROTOCOL.md §13), over real sockets with
//! raw clients: a socket lost by accident comes back with `emitws_resume=1`
//! and `[1, id, "@resume", {"token"}]` — same socket id, user, rooms and
//! stored values, the direct messages sent meanwhile — within the window,
//! once per token, for the same user only; and taken over from a
//! connection the server still thinks open, which is closed with 4409.
#![cfg(feature = "app")]

#[path = "common/app.rs"]
mod app_client;
mod common;
#[path = "common/resume_app.rs"]
mod resume_app;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use app_client::{eventually, AppClient};
use emitws::app::{App, BroadcastOpts, Challenge, EventLimits, Refusal, ReplyHandle, Running, SocketId};
use emitws::proto::CloseCode;
use emitws::runtime::{AcceptMode, ConnId};
use resume_app::{connect, resume_routes};
use serde_json::{json, Value};

/// How the test app authenticates.
#[derive(Clone, Copy)]
enum Auth {
    /// Nobody is identified.
    None,
    /// `?user=NAME` at the upgrade (anonymous without it).
    Upgrade,
    /// `[1, id, "/auth", "NAME"]` first.
    FirstMessage,
    /// The `@challenge` call, answered with the name.
    Challenge,
}

/// What the app's handlers saw, for the tests to wait on.
#[derive(Default)]
struct Seen {
    /// Each `@disconnect`'s data, with the socket's id.
    disconnects: Vec<(String, Value)>,
    /// The reply of the last `/slow` request, kept unanswered.
    slow: Option<ReplyHandle>,
    /// Each `@connection`'s socket id and connection.
    connections: Vec<(String, ConnId)>,
}

struct Fixture {
    running: Running,
    seen: Arc<Mutex<Seen>>,
}

impl Fixture {
    fn start(auth: Auth, setup: impl FnOnce(&mut App)) -> Fixture {
        let seen = Arc::new(Mutex::new(Seen::default()));
        let mut app = App::new();
        match auth {
            Auth::None => {}
            Auth::Upgrade => {
                app.identify(|conn| Ok(conn.query_value("user").unwrap_or_else(|| "anon".into())));
            }
            Auth::FirstMessage => {
                app.identify_by_message("/auth", |req| {
                    req.data::<String>().map_err(|_| Refusal::status(401, "a name, please"))
                });
            }
            Auth::Challenge => {
                app.challenge(Challenge::new(
                    || "nonce".to_string(),
                    |_, answer| answer.data::<String>().map_err(|_| Refusal::status(401, "a name, please")),
                ));
            }
        }
        resume_routes(&mut app);
        let record = seen.clone();
        app.on("@connection", move |req| {
            record.lock().unwrap().connections.push((req.socket_id().to_string(), req.conn_id()));
        });
        let record = seen.clone();
        app.on("@disconnect", move |req| {
            let data: Value = req.data().expect("@disconnect data is JSON");
            record.lock().unwrap().disconnects.push((req.socket_id().to_string(), data));
        });
        let keep = seen.clone();
        app.on("/slow", move |req| keep.lock().unwrap().slow = Some(req.defer()));
        setup(&mut app);
        let server = common::quick_server().workers(2).accept_mode(AcceptMode::Acceptor);
        let running = app.listen_with(server, "127.0.0.1:0").expect("start the app");
        Fixture { running, seen }
    }

    fn addr(&self) -> SocketAddr {
        self.running.local_addr()
    }

    /// Waits for the first `@disconnect` of `socket`; returns its data.
    fn disconnect_of(&self, socket: &str) -> Value {
        self.nth_disconnect_of(socket, 0)
    }

    /// Waits for the `nth` (from 0) `@disconnect` of `socket` (one per connection it had).
    fn nth_disconnect_of(&self, socket: &str, nth: usize) -> Value {
        let mut data = Value::Null;
        eventually("the @disconnect", || {
            let seen = self.seen.lock().unwrap();
            match seen.disconnects.iter().filter(|(s, _)| s == socket).nth(nth) {
                Some((_, d)) => data = d.clone(),
                None => return false,
            }
            true
        });
        data
    }

    /// Drops `client`'s TCP connection without a close frame (1006) and
    /// waits until the server has kept its session.
    fn lose(&self, client: AppClient, socket: &str) {
        drop(client);
        let data = self.disconnect_of(socket);
        assert_eq!((&data["code"], &data["resumable"]), (&json!(1006), &json!(true)), "{data}");
    }

    fn close(self) {
        self.running.close();
    }
}

/// Opens a connection that waits for `@resume` (`query` is the app's own part).
fn reconnect(addr: SocketAddr, query: &str) -> AppClient {
    AppClient::connect_to(addr, &format!("/?{query}&emitws_resume=1"), &[]).expect("upgraded")
}

/// Sends `@resume` with `token` and the client's room offsets.
fn send_resume(client: &mut AppClient, token: &str, rooms: Value) -> u64 {
    client.send_request("@resume", json!({ "token": token, "rooms": rooms }))
}

/// Reads what follows a `@resume` — the `/hello` of `@connection`, the
/// envelopes replayed, the reply — and checks the `@ready` after it;
/// returns (hello, envelopes between hello and the reply, reply, ready).
fn read_resume(client: &mut AppClient, id: u64) -> (Value, Vec<Value>, Value, Value) {
    let hello = client.expect_event("/hello");
    let mut between = Vec::new();
    loop {
        let envelope = client.next();
        if envelope[0] == 2 && envelope[1] == id {
            let reply = envelope[2].clone();
            let ready = client.wait_ready();
            assert_eq!(ready["socket"], reply["socket"], "{ready} after {reply}");
            return (hello, between, reply, ready);
        }
        between.push(envelope);
    }
}

#[test]
fn a_socket_resumes_with_its_id_user_rooms_and_values_and_a_fresh_token() {
    let fixture = Fixture::start(Auth::Upgrade, |_| {});
    let addr = fixture.addr();
    let (mut ann, socket, token) = connect(addr, "ann");
    assert!(token.len() == 48 && token.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()), "{token}");
    assert!(ann.request("/join", json!("#lobby")).expect("joined") == true);
    ann.request("/set", json!(7)).expect("set");
    let (mut bob, _, _) = connect(addr, "bob");
    bob.request("/join", json!("#lobby")).expect("joined");
    fixture.lose(ann, &socket);
    assert_eq!(fixture.running.group_size("#lobby"), 1, "the lost socket left its room until it resumes");

    let mut back = reconnect(addr, "user=ann");
    let id = send_resume(&mut back, &token, json!({}));
    let (hello, between, reply, ready) = read_resume(&mut back, id);
    let expected =
        json!({ "resumed": true, "socket": socket, "user": "ann", "groups": ["#lobby"], "n": 7, "seat": null });
    assert_eq!(hello, expected, "@connection runs on the restored socket");
    assert_eq!(between, Vec::<Value>::new());
    assert_eq!(reply, json!({ "resumed": true, "socket": socket, "rooms": {}, "direct": { "recovered": true } }));
    assert_eq!((&ready["user"], &ready["resumed"]), (&json!("ann"), &json!(true)), "{ready}");
    let fresh = ready["resume"].as_str().expect("a new token");
    assert!(fresh != token && fresh.len() == 48, "{fresh}");

    bob.request("/say", json!(["#lobby", "hi"])).expect("said");
    assert_eq!(back.expect_event("/said"), "hi", "the resumed socket is in its room again");
    let id: SocketId = socket.parse().expect("a socket id");
    let app = fixture.running.app();
    assert!(app.group_members("#lobby").contains(&id.conn), "listed by its public id");
    assert_eq!(app.to_user("ann").sockets(), [id.conn], "the user has the device back");
    assert_eq!(app.cluster().user_sockets("ann").expect("one node"), [id]);
    // The old id reaches the new connection, and leaves it out of a broadcast.
    app.broadcast("/news", "not for ann", BroadcastOpts::to("#lobby").except(id)).expect("sent");
    assert!(app.emit_to(id, "/direct", &"for ann").expect("sent"));
    assert_eq!(back.expect_event("/direct"), "for ann");
    assert_eq!(bob.expect_event("/news"), "not for ann");

    // The token was spent: another try is a new socket.
    let mut again = reconnect(addr, "user=ann");
    let id = send_resume(&mut again, &token, json!({}));
    let (hello, _, reply, ready) = read_resume(&mut again, id);
    assert_eq!((&hello["resumed"], &reply["resumed"]), (&json!(false), &json!(false)));
    assert!(reply["socket"] != socket.as_str() && ready.get("resumed").is_none(), "{reply} {ready}");

    back.close();
    again.close();
    bob.close();
    let data = fixture.nth_disconnect_of(&socket, 1);
    assert_eq!((&data["code"], &data["resumable"]), (&json!(1000), &json!(false)), "a 1000 ends the session");
    fixture.close();
}

#[test]
fn after_the_window_the_session_is_gone() {
    let fixture = Fixture::start(Auth::Upgrade, |app| {
        app.resume_window(Some(Duration::from_millis(50)));
    });
    let addr = fixture.addr();
    let (mut ann, socket, token) = connect(addr, "ann");
    ann.request("/join", json!("#lobby")).expect("joined");
    fixture.lose(ann, &socket);
    std::thread::sleep(Duration::from_millis(200));

    let mut late = reconnect(addr, "user=ann");
    let id = send_resume(&mut late, &token, json!({ "#lobby": { "epoch": "e1", "offset": 4 } }));
    let (hello, _, reply, _) = read_resume(&mut late, id);
    assert_eq!(hello["groups"], json!([]), "a new socket, in no room");
    let expected = json!({
        "resumed": false,
        "socket": hello["socket"],
        "rooms": { "#lobby": { "recovered": false } },
        "direct": { "recovered": false },
    });
    assert_eq!(reply, expected);
    assert!(reply["socket"] != socket.as_str());
    late.close();
    fixture.close();
}

/// Two connections of `user` resume with one token at once: exactly one
/// gets socket `socket` back.
fn race_to_resume(addr: SocketAddr, user: &str, token: &str, socket: &str) {
    let query = format!("user={user}");
    let (mut first, mut second) = (reconnect(addr, &query), reconnect(addr, &query));
    let ids = (send_resume(&mut first, token, json!({})), send_resume(&mut second, token, json!({})));
    let (_, _, one, _) = read_resume(&mut first, ids.0);
    let (_, _, other, _) = read_resume(&mut second, ids.1);
    let resumed: Vec<&Value> = [&one, &other].into_iter().filter(|r| r["resumed"] == true).collect();
    assert_eq!(resumed.len(), 1, "{one} {other}");
    assert_eq!(resumed[0]["socket"], socket);
    first.close();
    second.close();
}

#[test]
fn of_two_connections_with_one_token_exactly_one_resumes() {
    let fixture = Fixture::start(Auth::Upgrade, |_| {});
    let addr = fixture.addr();
    let (ann, socket, token) = connect(addr, "ann");
    fixture.lose(ann, &socket);

    race_to_resume(addr, "ann", &token, &socket);
    fixture.close();
}

#[test]
fn a_close_the_client_meant_keeps_no_session() {
    let fixture = Fixture::start(Auth::Upgrade, |_| {});
    let addr = fixture.addr();
    let (ann, socket, token) = connect(addr, "ann");
    ann.close();
    let data = fixture.disconnect_of(&socket);
    assert_eq!((&data["code"], &data["resumable"]), (&json!(1000), &json!(false)), "{data}");

    let mut back = reconnect(addr, "user=ann");
    let id = send_resume(&mut back, &token, json!({}));
    let (_, _, reply, _) = read_resume(&mut back, id);
    assert_eq!(reply["resumed"], false);
    back.close();
    fixture.close();
}

#[test]
fn direct_messages_while_away_are_replayed_in_order_up_to_the_buffer() {
    let fixture = Fixture::start(Auth::Upgrade, |app| {
        app.resume_buffer(3);
    });
    let (addr, app) = (fixture.addr(), fixture.running.app());
    let (ann, ann_socket, ann_token) = connect(addr, "ann");
    let (cid, cid_socket, cid_token) = connect(addr, "cid");
    fixture.lose(ann, &ann_socket);
    fixture.lose(cid, &cid_socket);

    let ann_id: SocketId = ann_socket.parse().expect("a socket id");
    assert!(app.emit_to(ann_id, "/direct", &1).expect("sent"));
    assert_eq!(app.to_user("ann").emit("/direct", &2).expect("sent"), 1, "the away device counts");
    assert!(app.socket(ann_id.conn).emit("/direct", &3).expect("sent"));
    let cid_id: SocketId = cid_socket.parse().expect("a socket id");
    for n in 1..=5 {
        app.emit_to(cid_id, "/direct", &n).expect("sent");
    }

    let mut ann = reconnect(addr, "user=ann");
    let id = send_resume(&mut ann, &ann_token, json!({}));
    let (_, between, reply, _) = read_resume(&mut ann, id);
    let direct: Vec<Value> = (1..=3).map(|n| json!([0, "/direct", n])).collect();
    assert_eq!(between, direct, "in order, before the reply");
    assert_eq!(reply["direct"], json!({ "recovered": true }));

    let mut cid = reconnect(addr, "user=cid");
    let id = send_resume(&mut cid, &cid_token, json!({}));
    let (_, between, reply, _) = read_resume(&mut cid, id);
    let newest: Vec<Value> = (3..=5).map(|n| json!([0, "/direct", n])).collect();
    assert_eq!(between, newest, "over the buffer, the newest are kept");
    assert_eq!(reply["direct"], json!({ "recovered": false }));

    // The old id reaches the new connection, and so does a drop.
    assert!(app.emit_to(ann_id, "/direct", &"live").expect("sent"));
    assert_eq!(ann.expect_event("/direct"), "live");
    assert!(app.drop_socket(cid_id, "bye"));
    assert_eq!(cid.expect_close(4000), "bye");
    ann.close();
    fixture.close();
}

#[test]
fn a_session_is_not_resumed_by_another_user() {
    let fixture = Fixture::start(Auth::Upgrade, |_| {});
    let addr = fixture.addr();
    let (ann, socket, token) = connect(addr, "ann");
    fixture.lose(ann, &socket);

    let mut eve = reconnect(addr, "user=eve");
    let id = send_resume(&mut eve, &token, json!({}));
    let (hello, _, reply, ready) = read_resume(&mut eve, id);
    assert_eq!((&reply["resumed"], &hello["user"], &ready["user"]), (&json!(false), &json!("eve"), &json!("eve")));
    assert!(reply["socket"] != socket.as_str());

    let mut ann = reconnect(addr, "user=ann");
    let id = send_resume(&mut ann, &token, json!({}));
    let (_, _, reply, _) = read_resume(&mut ann, id);
    assert_eq!((&reply["resumed"], &reply["socket"]), (&json!(true), &json!(socket)), "still there for its user");
    eve.close();
    ann.close();
    fixture.close();
}

#[test]
fn with_first_message_auth_resume_follows_the_auth_request() {
    let fixture = Fixture::start(Auth::FirstMessage, |_| {});
    let addr = fixture.addr();
    let mut ann = AppClient::connect_to(addr, "/", &[]).expect("upgraded");
    assert_eq!(ann.request("/auth", json!("ann")), Ok(json!({ "user": "ann" })));
    ann.expect_event("/hello");
    let ready = ann.wait_ready();
    let (socket, token) = (ready["socket"].as_str().expect("id").to_string(), ready["resume"].clone());
    ann.request("/set", json!(9)).expect("set");
    fixture.lose(ann, &socket);

    // The auth request and @resume back to back, without waiting.
    let mut back = reconnect(addr, "x=1");
    let auth = back.send_request("/auth", json!("ann"));
    let id = send_resume(&mut back, token.as_str().expect("a token"), json!({}));
    assert_eq!(back.reply_to(auth), Ok(json!({ "user": "ann" })));
    let (hello, _, reply, ready) = read_resume(&mut back, id);
    assert_eq!((&hello["resumed"], &hello["n"]), (&json!(true), &json!(9)));
    assert_eq!((&reply["resumed"], &ready["socket"]), (&json!(true), &json!(socket)));
    back.close();
    fixture.close();
}

#[test]
fn a_request_in_flight_when_the_connection_was_lost_gets_no_reply_on_the_new_one() {
    let fixture = Fixture::start(Auth::Upgrade, |_| {});
    let addr = fixture.addr();
    let (mut ann, socket, token) = connect(addr, "ann");
    ann.send_request("/slow", json!(null));
    eventually("the request to wait", || fixture.seen.lock().unwrap().slow.is_some());
    fixture.lose(ann, &socket);

    let mut back = reconnect(addr, "user=ann");
    let id = send_resume(&mut back, &token, json!({}));
    let (_, _, reply, _) = read_resume(&mut back, id);
    assert_eq!(reply["resumed"], true);
    let slow = fixture.seen.lock().unwrap().slow.take().expect("kept");
    slow.reply(&"late");
    back.expect_silence(Duration::from_millis(200));
    back.close();
    fixture.close();
}

#[test]
fn resume_is_refused_at_any_other_time_and_waiting_sockets_get_nothing_else_through() {
    let fixture = Fixture::start(Auth::Upgrade, |_| {});
    let addr = fixture.addr();
    let (mut ann, _, token) = connect(addr, "ann");
    let refused = ann.request("@resume", json!({ "token": token }));
    assert_eq!(refused.map_err(|(code, _)| code), Err("bad_request".to_string()));

    let mut waiting = reconnect(addr, "user=ann");
    assert_eq!(waiting.request("/set", json!(1)).map_err(|(code, _)| code), Err("unauthorized".to_string()));
    let id = send_resume(&mut waiting, "not a token", json!({}));
    let (_, _, reply, _) = read_resume(&mut waiting, id);
    assert_eq!(reply["resumed"], false);
    let again = waiting.request("@resume", json!({ "token": token }));
    assert_eq!(again.map_err(|(code, _)| code), Err("bad_request".to_string()), "once per connection");
    ann.close();
    waiting.close();
    fixture.close();
}

#[test]
fn without_a_window_there_is_no_token_and_nothing_resumes() {
    let fixture = Fixture::start(Auth::Upgrade, |app| {
        app.resume_window(None);
    });
    let addr = fixture.addr();
    let mut ann = AppClient::connect_to(addr, "/?user=ann", &[]).expect("upgraded");
    ann.expect_event("/hello");
    let ready = ann.wait_ready();
    assert!(ready.get("resume").is_none(), "{ready}");
    let socket = ready["socket"].as_str().expect("id").to_string();
    drop(ann);
    let data = fixture.disconnect_of(&socket);
    assert_eq!(data["resumable"], false, "{data}");

    let mut back = reconnect(addr, "user=ann");
    let id = send_resume(&mut back, "00000000000000000000000000000000", json!({}));
    let (_, _, reply, _) = read_resume(&mut back, id);
    assert_eq!(reply["resumed"], false);
    back.close();
    fixture.close();
}

#[test]
fn with_challenge_auth_resume_may_come_before_the_answer() {
    let fixture = Fixture::start(Auth::Challenge, |_| {});
    let addr = fixture.addr();
    /// Reads the server's `@challenge` call; returns its id.
    fn challenged(client: &mut AppClient) -> Value {
        let call = client.next();
        assert_eq!((&call[0], &call[2]), (&json!(1), &json!("@challenge")), "{call}");
        call[1].clone()
    }
    let mut ann = AppClient::connect_to(addr, "/", &[]).expect("upgraded");
    let call = challenged(&mut ann);
    ann.send_raw(&json!([2, call, "ann"]).to_string());
    ann.expect_event("/hello");
    let ready = ann.wait_ready();
    let (socket, token) = (ready["socket"].as_str().expect("id").to_string(), ready["resume"].clone());
    fixture.lose(ann, &socket);

    let mut back = reconnect(addr, "x=1");
    let call = challenged(&mut back);
    let id = send_resume(&mut back, token.as_str().expect("a token"), json!({}));
    back.expect_silence(Duration::from_millis(50));
    back.send_raw(&json!([2, call, "ann"]).to_string());
    let (hello, _, reply, ready) = read_resume(&mut back, id);
    assert_eq!((&hello["resumed"], &hello["user"]), (&json!(true), &json!("ann")));
    assert_eq!((&reply["resumed"], &ready["socket"]), (&json!(true), &json!(socket)));
    back.close();
    fixture.close();
}

#[test]
fn an_anonymous_socket_that_kept_nothing_resumes_too() {
    let fixture = Fixture::start(Auth::None, |_| {});
    let addr = fixture.addr();
    let mut anon = AppClient::connect_to(addr, "/", &[]).expect("upgraded");
    anon.expect_event("/hello");
    let ready = anon.wait_ready();
    let (socket, token) = (ready["socket"].as_str().expect("id").to_string(), ready["resume"].clone());
    assert_eq!(ready["user"], Value::Null);
    fixture.lose(anon, &socket);

    let mut back = reconnect(addr, "x=1");
    let id = send_resume(&mut back, token.as_str().expect("a token"), json!({}));
    let (hello, _, reply, _) = read_resume(&mut back, id);
    assert_eq!((&hello["resumed"], &hello["user"]), (&json!(true), &Value::Null));
    assert_eq!((&reply["resumed"], &reply["socket"]), (&json!(true), &json!(socket)));
    back.close();
    fixture.close();
}

#[test]
fn dropping_an_away_socket_or_its_user_ends_its_session() {
    let fixture = Fixture::start(Auth::Upgrade, |_| {});
    let (addr, app) = (fixture.addr(), fixture.running.app());
    let (ann, ann_socket, ann_token) = connect(addr, "ann");
    let (bob, bob_socket, bob_token) = connect(addr, "bob");
    fixture.lose(ann, &ann_socket);
    fixture.lose(bob, &bob_socket);
    assert!(app.drop_socket(ann_socket.parse::<SocketId>().expect("a socket id"), "gone"));
    assert_eq!(app.drop_user("bob", "gone"), 0, "no device open");

    for (user, token) in [("ann", ann_token), ("bob", bob_token)] {
        let mut back = reconnect(addr, &format!("user={user}"));
        let id = send_resume(&mut back, &token, json!({}));
        let (_, _, reply, _) = read_resume(&mut back, id);
        assert_eq!(reply["resumed"], false, "{user}");
        back.close();
    }
    fixture.close();
}

#[test]
fn a_socket_waiting_for_resume_is_held_to_the_auth_deadline() {
    let fixture = Fixture::start(Auth::Upgrade, |app| {
        app.limits(EventLimits::default().auth_timeout(Duration::from_millis(100)));
    });
    let mut waiting = reconnect(fixture.addr(), "user=ann");
    assert_eq!(waiting.expect_close(4408), "authentication timeout");
    fixture.close();
}

/// The connections socket `socket` had, in order.
fn connections_of(fixture: &Fixture, socket: &str) -> Vec<ConnId> {
    let seen = fixture.seen.lock().unwrap();
    seen.connections.iter().filter(|(s, _)| s == socket).map(|(_, conn)| *conn).collect()
}

/// `token` with its hex digit at `at` changed.
fn altered(token: &str, at: usize) -> String {
    let mut bytes = token.as_bytes().to_vec();
    bytes[at] = if bytes[at] == b'0' { b'1' } else { b'0' };
    String::from_utf8(bytes).expect("hex")
}

/// Connects `user`, joined to `#lobby` with a stored value, then resumes its
/// socket from a second connection while the first stays open, unread (a
/// phone that changed networks): the first gets 4409 and the second the
/// session. With `filler`, one more connection opens between the two (the
/// acceptor hands sockets to the workers in turn, so that moves the second
/// to the other worker). Returns the old and the new connection.
fn take_over(fixture: &Fixture, bob: &mut AppClient, user: &str, filler: bool) -> (ConnId, ConnId) {
    let addr = fixture.addr();
    let (mut old, socket, token) = connect(addr, user);
    old.request("/join", json!("#lobby")).expect("joined");
    old.request("/set", json!(7)).expect("set");
    let filler = filler.then(|| connect(addr, "filler").0);
    let mut back = reconnect(addr, &format!("user={user}"));
    let id = send_resume(&mut back, &token, json!({}));
    let (hello, between, reply, ready) = read_resume(&mut back, id);
    let expected =
        json!({ "resumed": true, "socket": socket, "user": user, "groups": ["#lobby"], "n": 7, "seat": null });
    assert_eq!(hello, expected);
    assert_eq!(between, Vec::<Value>::new());
    assert_eq!(reply, json!({ "resumed": true, "socket": socket, "rooms": {}, "direct": { "recovered": true } }));
    assert!(ready["resume"].as_str().is_some_and(|fresh| fresh != token), "{ready}");

    assert_eq!(old.expect_close(4409), "resumed elsewhere");
    let data = fixture.disconnect_of(&socket);
    assert_eq!(data, json!({ "code": 4409, "reason": "resumed elsewhere", "resumable": true }));
    bob.request("/say", json!(["#lobby", "hi"])).expect("said");
    assert_eq!(back.expect_event("/said"), "hi", "the broadcast reaches the new connection");
    let members = fixture.running.app().group_members("#lobby");
    let public = socket.parse::<SocketId>().expect("a socket id").conn;
    assert!(members.contains(&public), "listed by its public id");
    assert_eq!(members.len(), 2, "bob and the new connection, not the old one: {members:?}");
    back.close();
    if let Some(filler) = filler {
        filler.close();
    }
    let connections = connections_of(fixture, &socket);
    assert_eq!(connections.len(), 2, "{connections:?}");
    eventually("the new connection to leave #lobby", || fixture.running.group_size("#lobby") == 1);
    (connections[0], connections[1])
}

#[test]
fn a_connection_still_open_is_taken_over_on_the_same_worker_or_another() {
    let fixture = Fixture::start(Auth::Upgrade, |_| {});
    let (mut bob, _, _) = connect(fixture.addr(), "bob");
    bob.request("/join", json!("#lobby")).expect("joined");
    let (mut same, mut other) = (false, false);
    for (n, filler) in [false, true, false, true].into_iter().enumerate() {
        let (old, new) = take_over(&fixture, &mut bob, &format!("ann{n}"), filler);
        same |= old.worker() == new.worker();
        other |= old.worker() != new.worker();
    }
    assert!(same && other, "both cases seen");
    bob.close();
    fixture.close();
}

#[test]
fn of_two_resumes_racing_for_one_open_connection_exactly_one_wins() {
    let fixture = Fixture::start(Auth::Upgrade, |_| {});
    let addr = fixture.addr();
    let (mut ann, socket, token) = connect(addr, "ann");
    race_to_resume(addr, "ann", &token, &socket);
    assert_eq!(ann.expect_close(4409), "resumed elsewhere");
    fixture.close();
}

#[test]
fn an_altered_token_or_another_user_takes_nothing_over() {
    let fixture = Fixture::start(Auth::Upgrade, |_| {});
    let addr = fixture.addr();
    let (mut ann, socket, token) = connect(addr, "ann");
    // One hex digit changed in the connection's part, then in the MAC.
    for (user, token) in [("ann", altered(&token, 15)), ("ann", altered(&token, 16)), ("ann", altered(&token, 47))]
        .into_iter()
        .chain([("eve", token.clone())])
    {
        let mut forger = reconnect(addr, &format!("user={user}"));
        let id = send_resume(&mut forger, &token, json!({}));
        let (hello, _, reply, _) = read_resume(&mut forger, id);
        assert_eq!((&hello["resumed"], &reply["resumed"]), (&json!(false), &json!(false)), "{token} as {user}");
        assert!(reply["socket"] != socket.as_str(), "{reply}");
        forger.close();
    }
    // The open connection is untouched.
    assert_eq!(ann.request("/set", json!(1)), Ok(json!(true)));
    let id: SocketId = socket.parse().expect("a socket id");
    assert!(fixture.running.app().emit_to(id, "/direct", &"still here").expect("sent"));
    assert_eq!(ann.expect_event("/direct"), "still here");
    assert!(fixture.seen.lock().unwrap().disconnects.iter().all(|(s, _)| *s != socket));
    ann.close();
    fixture.close();
}

#[test]
fn every_connection_has_its_own_token() {
    let fixture = Fixture::start(Auth::Upgrade, |_| {});
    let addr = fixture.addr();
    let clients: Vec<(AppClient, String, String)> = (0..4).map(|_| connect(addr, "ann")).collect();
    let tokens: std::collections::HashSet<&str> = clients.iter().map(|(_, _, token)| token.as_str()).collect();
    assert_eq!(tokens.len(), clients.len());
    for token in tokens {
        assert!(token.len() == 48 && token.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')), "{token}");
    }
    for (client, ..) in clients {
        client.close();
    }
    fixture.close();
}

#[test]
fn a_takeover_that_does_not_come_by_the_auth_deadline_leaves_the_old_connection_open() {
    // `/block` holds its worker until the test lets it go, so that the
    // request to take its socket over waits in that worker's inbox.
    let gates = Arc::new((std::sync::Barrier::new(2), std::sync::Barrier::new(2)));
    let held = gates.clone();
    let fixture = Fixture::start(Auth::Upgrade, move |app| {
        app.limits(EventLimits::default().auth_timeout(Duration::from_millis(300)));
        app.on("/block", move |req| {
            held.0.wait();
            held.1.wait();
            req.reply(&true);
        });
    });
    let addr = fixture.addr();
    // The acceptor hands connections to the workers in turn: the next one
    // lands on the other worker, which is not held.
    let (mut ann, socket, token) = connect(addr, "ann");
    let blocked = ann.send_request("/block", json!(null));
    gates.0.wait();
    let mut back = reconnect(addr, "user=ann");
    let id = send_resume(&mut back, &token, json!({}));
    let (hello, _, reply, _) = read_resume(&mut back, id);
    assert_eq!((&hello["resumed"], &reply["resumed"]), (&json!(false), &json!(false)), "{reply}");
    gates.1.wait();

    assert_eq!(ann.reply_to(blocked), Ok(json!(true)));
    assert_eq!(ann.request("/set", json!(1)), Ok(json!(true)), "the old connection stays");
    let old = connections_of(&fixture, &socket)[0];
    let new = connections_of(&fixture, reply["socket"].as_str().expect("a socket id"))[0];
    assert_ne!(old.worker(), new.worker());
    assert!(fixture.seen.lock().unwrap().disconnects.iter().all(|(s, _)| *s != socket));
    ann.close();
    back.close();
    fixture.close();
}

/// A close the server started decides the session's fate, whatever the
/// client does with it: a client that never answers a 4000 (the close
/// times out as 1006) keeps no session, and one that answers a 1012 with
/// a 1000 keeps its own.
#[test]
fn the_close_the_server_sent_decides_whether_the_session_is_kept() {
    let fixture = Fixture::start(Auth::Upgrade, |_| {});
    let (addr, app) = (fixture.addr(), fixture.running.app());

    // Kicked, the client ignores the close frame and keeps TCP open.
    let (mut kicked, socket, token) = connect(addr, "ann");
    assert!(app.drop_socket(socket.parse::<SocketId>().expect("a socket id"), "kicked"));
    assert_eq!(kicked.ws.recv(), common::Frame::Close(Some(4000), "kicked".into()), "the server's close frame");
    let data = fixture.disconnect_of(&socket);
    assert_eq!((&data["code"], &data["resumable"]), (&json!(1006), &json!(false)), "{data}");
    let mut back = reconnect(addr, "user=ann");
    let id = send_resume(&mut back, &token, json!({}));
    let (_, _, reply, _) = read_resume(&mut back, id);
    assert_eq!(reply["resumed"], false, "a kicked client that ignored the close does not resume: {reply}");
    back.close();
    drop(kicked);

    // The node asks the client to come back (1012); the client answers 1000.
    let (mut moved, socket, token) = connect(addr, "bob");
    assert!(app.socket(socket.parse::<SocketId>().expect("a socket id")).close(CloseCode(1012), "move"));
    assert_eq!(moved.ws.recv(), common::Frame::Close(Some(1012), "move".into()));
    moved.ws.send_close(1000, "");
    let data = fixture.disconnect_of(&socket);
    assert_eq!((&data["code"], &data["resumable"]), (&json!(1000), &json!(true)), "{data}");
    let mut back = reconnect(addr, "user=bob");
    let id = send_resume(&mut back, &token, json!({}));
    let (_, _, reply, _) = read_resume(&mut back, id);
    assert_eq!((&reply["resumed"], &reply["socket"]), (&json!(true), &json!(socket)), "{reply}");
    back.close();
    fixture.close();
}
