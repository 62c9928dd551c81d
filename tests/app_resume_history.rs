//! Recovery of room history on resume (PROTOCOL.md §13), from outside: raw
//! WebSocket clients written here by the spec alone join rooms with
//! history, read offsets, lose their TCP connection without a close frame,
//! come back with `emitws_resume=1` and `@resume` listing their offsets, and
//! check everything the server writes, in order.
#![cfg(feature = "app")]

#[path = "common/app.rs"]
mod app_client;
mod common;

use std::net::{Shutdown, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use app_client::{eventually, AppClient};
use common::{Frame, RecvError};
use emitws::app::{App, BroadcastOpts, EventLimits, History, Running, SocketId};
use emitws::runtime::AcceptMode;
use serde_json::{json, Value};

const TTL: Duration = Duration::from_secs(60);

/// A test app: `@connection` emits `/hello`, `@disconnect` is recorded,
/// `/join` and `/leave` a group, `/say [to, text]` broadcasts to one group leaving
/// the sender out. `setup` gives rooms their history.
struct Fixture {
    running: Running,
    /// Each `@disconnect`'s socket id and data.
    disconnects: Arc<Mutex<Vec<(String, Value)>>>,
}

impl Fixture {
    fn start(setup: impl FnOnce(&mut App)) -> Fixture {
        let disconnects = Arc::new(Mutex::new(Vec::new()));
        let mut app = App::new();
        app.limits(EventLimits::default().rate(None));
        app.on("@connection", |req| {
            let _ = req.emit("/hello", &json!({ "resumed": req.resumed() }));
        });
        let record = disconnects.clone();
        app.on("@disconnect", move |req| {
            let data: Value = req.data().expect("@disconnect data is JSON");
            record.lock().unwrap().push((req.socket_id().to_string(), data));
        });
        app.on("/join", |req| {
            let group: String = req.data().expect("a group");
            match req.join(&group) {
                Ok(()) => req.reply(&true),
                Err(e) => req.reply_err("forbidden", &e.to_string()),
            }
        });
        app.on("/leave", |req| {
            let group: String = req.data().expect("a group");
            let left = req.leave(&group);
            req.reply(&left);
        });
        app.on("/say", |req| {
            let (to, text): (String, String) = req.data().expect("[to, text]");
            let _ = req.broadcast("/said", &text, BroadcastOpts::to(&to));
            req.reply(&true);
        });
        setup(&mut app);
        let server = common::quick_server().workers(2).accept_mode(AcceptMode::Acceptor);
        let running = app.listen_with(server, "127.0.0.1:0").expect("start the app");
        Fixture { running, disconnects }
    }

    fn addr(&self) -> SocketAddr {
        self.running.local_addr()
    }

    /// Broadcasts `/said` `text` to `group` from outside the workers.
    fn broadcast(&self, group: &str, text: &str) {
        self.running.broadcast("/said", text, BroadcastOpts::to(group)).expect("serializes");
    }

    /// Shuts `client`'s TCP connection down without a close frame and waits
    /// until the server has run `@disconnect` for it, keeping its session.
    fn lose(&self, client: AppClient, socket: &str) {
        let seen_before = self.disconnects.lock().unwrap().iter().filter(|(s, _)| s == socket).count();
        client.ws.stream.shutdown(Shutdown::Both).expect("shut down");
        drop(client);
        let mut data = Value::Null;
        eventually("the server to notice the loss", || {
            let disconnects = self.disconnects.lock().unwrap();
            match disconnects.iter().filter(|(s, _)| s == socket).nth(seen_before) {
                Some((_, d)) => data = d.clone(),
                None => return false,
            }
            true
        });
        assert_eq!((&data["code"], &data["resumable"]), (&json!(1006), &json!(true)), "{data}");
    }

    fn close(self) {
        self.running.close();
    }
}

/// Connects, reads `/hello` and `@ready`: (client, socket id, resume token).
fn connect(addr: SocketAddr) -> (AppClient, String, String) {
    let mut client = AppClient::connect_to(addr, "/", &[]).expect("upgraded");
    let written = written_until_ready(&mut client);
    assert_eq!(written.len(), 2, "{written:?}");
    assert_eq!(written[0], json!([0, "/hello", { "resumed": false }]));
    let ready = &written[1][2];
    let socket = ready["socket"].as_str().expect("a socket id").to_string();
    let token = ready["resume"].as_str().unwrap_or_else(|| panic!("no resume token in {ready}")).to_string();
    (client, socket, token)
}

fn join(client: &mut AppClient, group: &str) {
    assert_eq!(client.request("/join", json!(group)), Ok(json!(true)), "join {group}");
}

/// Reads one envelope straight off the socket (answering pings).
fn read_envelope(client: &mut AppClient) -> Value {
    loop {
        match client.ws.try_recv() {
            Ok(Frame::Text(text)) => {
                return serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON: {text:?}: {e}"));
            }
            Ok(Frame::Ping(payload)) => client.ws.send(emitws::proto::OpCode::Pong, true, &payload),
            Ok(other) => panic!("expected an envelope, got {other:?}"),
            Err(RecvError::Timeout) => panic!("no envelope within {:?}", common::WAIT),
            Err(e) => panic!("connection failed: {e:?}"),
        }
    }
}

/// Everything the server writes up to and including the next `@ready`.
fn written_until_ready(client: &mut AppClient) -> Vec<Value> {
    let mut written = Vec::new();
    loop {
        let envelope = read_envelope(client);
        let ready = envelope[0] == 0 && envelope[1] == "@ready";
        written.push(envelope);
        if ready {
            return written;
        }
    }
}

/// Expects `/said` `text`; returns its fourth element (`Null` if none).
fn said(client: &mut AppClient, text: &str) -> Value {
    let envelope = read_envelope(client);
    assert!(
        envelope[0] == 0 && envelope[1] == "/said" && envelope[2] == text,
        "expected /said {text:?}, got {envelope}"
    );
    envelope.get(3).cloned().unwrap_or(Value::Null)
}

/// A `/said` delivery as the server first wrote it to a room with history.
fn delivery(text: &str, room: &str, epoch: &Value, offset: u64) -> Value {
    json!([0, "/said", text, { "room": room, "offset": offset, "epoch": epoch }])
}

/// A new connection that sends `@resume` with `token` and `rooms` at once;
/// returns it with what the server wrote up to `@ready`, and the request id.
fn resume(addr: SocketAddr, token: &str, rooms: Value) -> (AppClient, Vec<Value>, u64) {
    let mut client = AppClient::connect_to(addr, "/?emitws_resume=1", &[]).expect("upgraded");
    let id = client.send_request("@resume", json!({ "token": token, "rooms": rooms }));
    let written = written_until_ready(&mut client);
    (client, written, id)
}

/// Checks the frame of a resume's written envelopes: `/hello` (resumed)
/// first, the reply to `id` then `@ready` (same socket, resumed) last;
/// returns (what came between, the reply's data).
fn split_resume(written: &[Value], id: u64, socket: &str) -> (Vec<Value>, Value) {
    assert!(written.len() >= 3, "{written:?}");
    assert_eq!(written[0], json!([0, "/hello", { "resumed": true }]), "{written:?}");
    let (reply, ready) = (&written[written.len() - 2], &written[written.len() - 1]);
    assert!(reply[0] == 2 && reply[1] == id, "expected the reply to {id} before @ready: {written:?}");
    assert_eq!(reply[2]["resumed"], true, "{reply}");
    assert_eq!(reply[2]["socket"], socket, "{reply}");
    assert_eq!(reply[2]["direct"], json!({ "recovered": true }), "{reply}");
    assert_eq!((&ready[2]["socket"], &ready[2]["resumed"]), (&json!(socket), &json!(true)), "{ready}");
    assert!(ready[2]["resume"].is_string(), "{ready}");
    (written[1..written.len() - 2].to_vec(), reply[2].clone())
}

fn is_epoch(epoch: &Value) -> bool {
    epoch.as_str().is_some_and(|e| !e.is_empty())
}

#[test]
fn a_resumed_socket_gets_what_it_missed_after_its_offset_then_the_reply_then_ready_then_live() {
    let fixture = Fixture::start(|app| {
        app.history("#r", History::new(100, TTL));
    });
    let (mut ann, socket, token) = connect(fixture.addr());
    join(&mut ann, "#r");
    for text in ["1", "2", "3"] {
        fixture.broadcast("#r", text);
    }
    let first = said(&mut ann, "1");
    let epoch = first["epoch"].clone();
    assert!(is_epoch(&epoch), "{first}");
    assert_eq!(first, json!({ "room": "#r", "offset": 1, "epoch": epoch }));
    assert_eq!(said(&mut ann, "2"), json!({ "room": "#r", "offset": 2, "epoch": epoch }));
    assert_eq!(said(&mut ann, "3"), json!({ "room": "#r", "offset": 3, "epoch": epoch }));
    fixture.lose(ann, &socket);
    fixture.broadcast("#r", "4");
    let id_of_ann: SocketId = socket.parse().expect("a socket id");
    assert!(fixture.running.app().emit_to(id_of_ann, "/direct", "to ann").expect("serializes"));
    fixture.broadcast("#r", "5");

    let (mut back, written, id) = resume(fixture.addr(), &token, json!({ "#r": { "epoch": epoch, "offset": 3 } }));
    let (missed, reply) = split_resume(&written, id, &socket);
    // The room's missed broadcasts, then the direct messages (§13 step 4).
    let direct = json!([0, "/direct", "to ann"]);
    assert_eq!(missed, [delivery("4", "#r", &epoch, 4), delivery("5", "#r", &epoch, 5), direct]);
    assert_eq!(reply["rooms"], json!({ "#r": { "recovered": true, "epoch": epoch, "offset": 5 } }));
    fixture.broadcast("#r", "6");
    assert_eq!(read_envelope(&mut back), delivery("6", "#r", &epoch, 6));
    back.close();
    fixture.close();
}

#[test]
fn a_room_the_client_lists_no_offset_for_is_replayed_from_where_it_joined() {
    let fixture = Fixture::start(|app| {
        app.history("#r", History::new(100, TTL));
    });
    let (mut ann, socket, token) = connect(fixture.addr());
    fixture.broadcast("#r", "before 1");
    fixture.broadcast("#r", "before 2");
    join(&mut ann, "#r");
    fixture.lose(ann, &socket);
    fixture.broadcast("#r", "after 3");
    fixture.broadcast("#r", "after 4");

    let (back, written, id) = resume(fixture.addr(), &token, json!({}));
    let (missed, reply) = split_resume(&written, id, &socket);
    let epoch = reply["rooms"]["#r"]["epoch"].clone();
    assert!(is_epoch(&epoch), "{reply}");
    assert_eq!(missed, [delivery("after 3", "#r", &epoch, 3), delivery("after 4", "#r", &epoch, 4)]);
    assert_eq!(reply["rooms"], json!({ "#r": { "recovered": true, "epoch": epoch, "offset": 4 } }));
    back.close();
    fixture.close();
}

#[test]
fn when_the_history_no_longer_reaches_back_nothing_is_replayed_and_the_room_stays_joined() {
    let fixture = Fixture::start(|app| {
        app.history("#r", History::new(3, TTL));
    });
    let (mut ann, socket, token) = connect(fixture.addr());
    join(&mut ann, "#r");
    fixture.broadcast("#r", "1");
    let epoch = said(&mut ann, "1")["epoch"].clone();
    fixture.lose(ann, &socket);
    for n in 2..=7 {
        fixture.broadcast("#r", &n.to_string());
    }

    let (mut back, written, id) = resume(fixture.addr(), &token, json!({ "#r": { "epoch": epoch, "offset": 1 } }));
    let (missed, reply) = split_resume(&written, id, &socket);
    assert_eq!(missed, Vec::<Value>::new());
    assert_eq!(reply["rooms"], json!({ "#r": { "recovered": false, "epoch": epoch, "offset": 7 } }));
    fixture.broadcast("#r", "8");
    assert_eq!(read_envelope(&mut back), delivery("8", "#r", &epoch, 8));
    back.close();
    fixture.close();
}

#[test]
fn an_epoch_the_room_never_had_is_not_recovered() {
    let fixture = Fixture::start(|app| {
        app.history("#r", History::new(100, TTL));
    });
    let (mut ann, socket, token) = connect(fixture.addr());
    join(&mut ann, "#r");
    fixture.broadcast("#r", "1");
    let epoch = said(&mut ann, "1")["epoch"].clone();
    fixture.lose(ann, &socket);
    fixture.broadcast("#r", "2");

    let made_up = json!({ "#r": { "epoch": "not-an-epoch-of-this-room", "offset": 1 } });
    let (mut back, written, id) = resume(fixture.addr(), &token, made_up);
    let (missed, reply) = split_resume(&written, id, &socket);
    assert_eq!(missed, Vec::<Value>::new());
    assert_eq!(reply["rooms"], json!({ "#r": { "recovered": false, "epoch": epoch, "offset": 2 } }));
    fixture.broadcast("#r", "3");
    assert_eq!(read_envelope(&mut back), delivery("3", "#r", &epoch, 3));
    back.close();
    fixture.close();
}

#[test]
fn entries_older_than_the_ttl_are_not_recovered() {
    const SHORT: Duration = Duration::from_millis(200);
    let fixture = Fixture::start(|app| {
        app.history("#r", History::new(100, SHORT));
    });
    let (mut ann, socket, token) = connect(fixture.addr());
    join(&mut ann, "#r");
    fixture.broadcast("#r", "1");
    let epoch = said(&mut ann, "1")["epoch"].clone();
    fixture.lose(ann, &socket);
    fixture.broadcast("#r", "2");
    let sent = Instant::now();
    // Just past the time to live of "2", the newest entry.
    std::thread::sleep(SHORT.saturating_sub(sent.elapsed()) + Duration::from_millis(20));

    let (mut back, written, id) = resume(fixture.addr(), &token, json!({ "#r": { "epoch": epoch, "offset": 1 } }));
    let (missed, reply) = split_resume(&written, id, &socket);
    assert_eq!(missed, Vec::<Value>::new());
    let answer = &reply["rooms"]["#r"];
    assert_eq!(answer["recovered"], false, "{reply}");
    // The stream may have started anew (nobody was in the room): then a new
    // epoch; if not, the same epoch at offset 2. Either way the client takes them.
    assert!(is_epoch(&answer["epoch"]), "{reply}");
    if answer["epoch"] == epoch {
        assert_eq!(answer["offset"], 2, "{reply}");
    }
    fixture.broadcast("#r", "3");
    let live = said(&mut back, "3");
    assert_eq!(live["epoch"], answer["epoch"], "{live} after {reply}");
    assert_eq!(live["offset"], answer["offset"].as_u64().expect("an offset") + 1, "{live} after {reply}");
    back.close();
    fixture.close();
}

#[test]
fn a_broadcast_that_left_the_socket_out_is_not_replayed_to_it() {
    let fixture = Fixture::start(|app| {
        app.history("#r", History::new(100, TTL));
    });
    let (mut ann, socket, token) = connect(fixture.addr());
    let (mut bob, _, _) = connect(fixture.addr());
    join(&mut ann, "#r");
    join(&mut bob, "#r");
    // Ann's own broadcast leaves her out; then one that does not, which she
    // may or may not have read before the loss (she does not read it).
    assert_eq!(ann.request("/say", json!(["#r", "by ann"])), Ok(json!(true)));
    fixture.broadcast("#r", "to all");
    let epoch = said(&mut bob, "by ann")["epoch"].clone();
    assert_eq!(said(&mut bob, "to all")["offset"], 2);
    fixture.lose(ann, &socket);
    assert_eq!(bob.request("/say", json!(["#r", "by bob"])), Ok(json!(true)));

    let (back, written, id) = resume(fixture.addr(), &token, json!({}));
    let (missed, reply) = split_resume(&written, id, &socket);
    assert_eq!(missed, [delivery("to all", "#r", &epoch, 2), delivery("by bob", "#r", &epoch, 3)]);
    assert_eq!(reply["rooms"], json!({ "#r": { "recovered": true, "epoch": epoch, "offset": 3 } }));
    back.close();
    bob.close();
    fixture.close();
}

#[test]
fn each_room_with_history_is_answered_with_its_own_offsets_and_the_others_are_rejoined() {
    let fixture = Fixture::start(|app| {
        app.history("#a", History::new(100, TTL)).history("#b", History::new(100, TTL));
    });
    let (mut ann, socket, token) = connect(fixture.addr());
    for group in ["#a", "#b", "*t", "#plain"] {
        join(&mut ann, group);
    }
    fixture.broadcast("#a", "a1");
    fixture.broadcast("#a", "a2");
    fixture.broadcast("#b", "b1");
    let epoch_a = said(&mut ann, "a1")["epoch"].clone();
    assert_eq!(said(&mut ann, "a2")["offset"], 2);
    let epoch_b = said(&mut ann, "b1")["epoch"].clone();
    assert_ne!(epoch_a, epoch_b, "each room has its own stream");
    fixture.lose(ann, &socket);
    fixture.broadcast("#a", "a3");
    fixture.broadcast("#b", "b2");
    fixture.broadcast("#plain", "not kept");
    fixture.broadcast("*t", "not kept either");
    fixture.broadcast("#b", "b3");

    let listed = json!({
        "#a": { "epoch": epoch_a, "offset": 2 },
        "#b": { "epoch": epoch_b, "offset": 1 },
        "#plain": { "epoch": epoch_a, "offset": 1 },
    });
    let (mut back, written, id) = resume(fixture.addr(), &token, listed);
    let (missed, reply) = split_resume(&written, id, &socket);
    // Each room's missed broadcasts oldest first; the rooms in any order.
    let of = |room: &str| missed.iter().filter(|e| e[3]["room"] == room).cloned().collect::<Vec<_>>();
    assert_eq!(missed.len(), 3, "{missed:?}");
    assert_eq!(of("#a"), [delivery("a3", "#a", &epoch_a, 3)]);
    assert_eq!(of("#b"), [delivery("b2", "#b", &epoch_b, 2), delivery("b3", "#b", &epoch_b, 3)]);
    let expected = json!({
        "#a": { "recovered": true, "epoch": epoch_a, "offset": 3 },
        "#b": { "recovered": true, "epoch": epoch_b, "offset": 3 },
        "#plain": { "recovered": false },
    });
    assert_eq!(reply["rooms"], expected);
    // Every group is joined again.
    fixture.broadcast("#plain", "plain");
    assert_eq!(said(&mut back, "plain"), Value::Null);
    fixture.broadcast("*t", "tag");
    assert_eq!(said(&mut back, "tag"), Value::Null);
    fixture.broadcast("#b", "b4");
    assert_eq!(said(&mut back, "b4"), json!({ "room": "#b", "offset": 4, "epoch": epoch_b }));
    back.close();
    fixture.close();
}

/// The #5419 case: after a recovery, a second loss with nothing broadcast
/// meanwhile replays nothing when the client lists the offset the first
/// recovery's reply gave (a server that noted the socket's position only at
/// its first join would replay the first recovery again).
#[test]
fn a_second_recovery_with_nothing_new_replays_nothing() {
    let fixture = Fixture::start(|app| {
        app.history("#r", History::new(100, TTL));
    });
    let (mut ann, socket, token) = connect(fixture.addr());
    join(&mut ann, "#r");
    fixture.broadcast("#r", "1");
    let epoch = said(&mut ann, "1")["epoch"].clone();
    fixture.lose(ann, &socket);
    fixture.broadcast("#r", "2");
    fixture.broadcast("#r", "3");

    let (back, written, id) = resume(fixture.addr(), &token, json!({ "#r": { "epoch": epoch, "offset": 1 } }));
    let (missed, reply) = split_resume(&written, id, &socket);
    assert_eq!(missed, [delivery("2", "#r", &epoch, 2), delivery("3", "#r", &epoch, 3)]);
    let answer = reply["rooms"]["#r"].clone();
    assert_eq!(answer, json!({ "recovered": true, "epoch": epoch, "offset": 3 }));
    let token = written.last().expect("@ready")[2]["resume"].as_str().expect("a new token").to_string();
    fixture.lose(back, &socket);

    let listed = json!({ "#r": { "epoch": answer["epoch"], "offset": answer["offset"] } });
    let (mut again, written, id) = resume(fixture.addr(), &token, listed);
    let (missed, reply) = split_resume(&written, id, &socket);
    assert_eq!(missed, Vec::<Value>::new());
    assert_eq!(reply["rooms"], json!({ "#r": { "recovered": true, "epoch": epoch, "offset": 3 } }));
    fixture.broadcast("#r", "4");
    assert_eq!(read_envelope(&mut again), delivery("4", "#r", &epoch, 4));
    again.close();
    fixture.close();
}

#[test]
fn while_a_socket_resumes_a_room_broadcasting_all_along_reaches_it_without_gaps() {
    // Far more than the thread sends, so nothing falls out of the history.
    const MAX: u64 = 20_000;
    let fixture = Fixture::start(|app| {
        app.history("#r", History::new(MAX as usize, TTL));
    });
    let (mut ann, socket, token) = connect(fixture.addr());
    join(&mut ann, "#r");
    fixture.broadcast("#r", "0");
    let epoch = said(&mut ann, "0")["epoch"].clone();
    fixture.lose(ann, &socket);

    let handle = fixture.running.app();
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let broadcaster = {
        let (stop, sent) = (stop.clone(), sent.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) && sent.load(Ordering::Relaxed) < MAX - 1 {
                handle.broadcast("/said", "x", BroadcastOpts::to("#r")).expect("serializes");
                sent.fetch_add(1, Ordering::Relaxed);
                // Slow enough for the client to keep up.
                std::thread::sleep(Duration::from_micros(50));
            }
        })
    };
    eventually("some broadcasts while away", || sent.load(Ordering::Relaxed) >= 50);

    let (mut back, written, id) = resume(fixture.addr(), &token, json!({ "#r": { "epoch": epoch, "offset": 1 } }));
    let (missed, reply) = split_resume(&written, id, &socket);
    assert_eq!(reply["rooms"]["#r"]["recovered"], true, "{reply}");
    // Then some live deliveries while the thread still broadcasts.
    let mut deliveries = missed;
    let replayed = deliveries.len();
    for _ in 0..200 {
        deliveries.push(read_envelope(&mut back));
    }
    stop.store(true, Ordering::Relaxed);
    broadcaster.join().expect("no panic");
    let last = 1 + sent.load(Ordering::Relaxed);
    while deliveries.last().and_then(|e| e[3]["offset"].as_u64()) != Some(last) {
        deliveries.push(read_envelope(&mut back));
    }
    assert!(replayed > 0, "the resume came after 50 broadcasts at least");
    // A client drops a delivery whose offset is not above the last it has
    // (§13), so a replay overlapping live traffic would be allowed; but this
    // server joins the room under its stream's lock between two broadcasts,
    // so it sends no duplicate: counted, and expected to be none.
    let (mut seen, mut duplicates) = (1, 0);
    for envelope in &deliveries {
        assert_eq!((&envelope[1], &envelope[3]["epoch"]), (&json!("/said"), &epoch), "{envelope}");
        let offset = envelope[3]["offset"].as_u64().expect("an offset");
        if offset <= seen {
            duplicates += 1;
            continue;
        }
        assert_eq!(offset, seen + 1, "a gap after offset {seen} (the reply said {reply}): {envelope}");
        seen = offset;
    }
    assert_eq!(duplicates, 0, "deliveries a client would drop, of {}", deliveries.len());
    back.close();
    fixture.close();
}

#[test]
fn a_broadcast_that_left_the_away_socket_out_by_its_id_is_not_replayed_to_it_after_either_of_two_losses() {
    let fixture = Fixture::start(|app| {
        app.history("#r", History::new(100, TTL));
    });
    let (mut ann, socket, token) = connect(fixture.addr());
    join(&mut ann, "#r");
    let id_of_ann: SocketId = socket.parse().expect("a socket id");
    let but_ann = || BroadcastOpts::to("#r").except(id_of_ann);
    let running = &fixture.running;
    fixture.lose(ann, &socket);
    running.broadcast("/said", "1 but ann", but_ann()).expect("serializes");
    fixture.broadcast("#r", "2");

    let (back, written, id) = resume(fixture.addr(), &token, json!({}));
    let (missed, reply) = split_resume(&written, id, &socket);
    let epoch = reply["rooms"]["#r"]["epoch"].clone();
    assert_eq!(missed, [delivery("2", "#r", &epoch, 2)]);
    let token = written.last().expect("@ready")[2]["resume"].as_str().expect("a new token").to_string();
    // Lost again: the socket's id now names its second connection.
    fixture.lose(back, &socket);
    running.broadcast("/said", "3 but ann", but_ann()).expect("serializes");
    fixture.broadcast("#r", "4");

    let (back, written, id) = resume(fixture.addr(), &token, json!({ "#r": { "epoch": epoch, "offset": 2 } }));
    let (missed, reply) = split_resume(&written, id, &socket);
    assert_eq!(missed, [delivery("4", "#r", &epoch, 4)]);
    assert_eq!(reply["rooms"], json!({ "#r": { "recovered": true, "epoch": epoch, "offset": 4 } }));
    back.close();
    fixture.close();
}

#[test]
fn a_broadcast_an_at_connection_handler_makes_on_resume_comes_after_the_replay_in_offset_order() {
    let fixture = Fixture::start(|app| {
        app.history("#r", History::new(100, TTL));
        app.on("@connection", |req| {
            if req.resumed() {
                let _ = req.broadcast("/said", "back", BroadcastOpts::to("#r").include_self());
            }
        });
    });
    let (mut ann, socket, token) = connect(fixture.addr());
    join(&mut ann, "#r");
    fixture.broadcast("#r", "1");
    let epoch = said(&mut ann, "1")["epoch"].clone();
    fixture.lose(ann, &socket);
    fixture.broadcast("#r", "2");
    fixture.broadcast("#r", "3");

    let (mut back, written, id) = resume(fixture.addr(), &token, json!({ "#r": { "epoch": epoch, "offset": 1 } }));
    let (missed, reply) = split_resume(&written, id, &socket);
    // The handler's broadcast takes offset 4, after what the socket missed:
    // wherever it comes, it must come after 2 and 3, since a client drops a
    // delivery not above its offset (4 before 2 and 3 would lose them).
    let mut deliveries = missed;
    if !deliveries.iter().any(|e| e[2] == "back") {
        deliveries.push(read_envelope(&mut back));
    }
    let expected = [delivery("2", "#r", &epoch, 2), delivery("3", "#r", &epoch, 3), delivery("back", "#r", &epoch, 4)];
    assert_eq!(deliveries, expected, "the reply said {reply}");
    back.close();
    fixture.close();
}

#[test]
fn a_resumed_socket_s_own_broadcast_is_not_replayed_to_it_after_its_next_loss() {
    let fixture = Fixture::start(|app| {
        app.history("#r", History::new(100, TTL));
    });
    let (mut ann, socket, token) = connect(fixture.addr());
    join(&mut ann, "#r");
    fixture.lose(ann, &socket);
    let (mut back, written, id) = resume(fixture.addr(), &token, json!({}));
    let (missed, reply) = split_resume(&written, id, &socket);
    assert_eq!(missed, Vec::<Value>::new());
    let epoch = reply["rooms"]["#r"]["epoch"].clone();
    let token = written.last().expect("@ready")[2]["resume"].as_str().expect("a new token").to_string();
    // From its second connection, the socket's own broadcast leaves it out.
    assert_eq!(back.request("/say", json!(["#r", "by ann"])), Ok(json!(true)));
    fixture.broadcast("#r", "2");
    fixture.lose(back, &socket);

    let (back, written, id) = resume(fixture.addr(), &token, json!({ "#r": { "epoch": epoch, "offset": 0 } }));
    let (missed, reply) = split_resume(&written, id, &socket);
    assert_eq!(missed, [delivery("2", "#r", &epoch, 2)]);
    assert_eq!(reply["rooms"], json!({ "#r": { "recovered": true, "epoch": epoch, "offset": 2 } }));
    back.close();
    fixture.close();
}

#[test]
fn a_room_joined_before_its_first_broadcast_is_replayed_whole() {
    let fixture = Fixture::start(|app| {
        app.history("#r", History::new(100, TTL));
    });
    let (mut ann, socket, token) = connect(fixture.addr());
    join(&mut ann, "#r");
    fixture.lose(ann, &socket);
    fixture.broadcast("#r", "1");
    fixture.broadcast("#r", "2");

    let (back, written, id) = resume(fixture.addr(), &token, json!({}));
    let (missed, reply) = split_resume(&written, id, &socket);
    let epoch = reply["rooms"]["#r"]["epoch"].clone();
    assert_eq!(missed, [delivery("1", "#r", &epoch, 1), delivery("2", "#r", &epoch, 2)]);
    assert_eq!(reply["rooms"], json!({ "#r": { "recovered": true, "epoch": epoch, "offset": 2 } }));
    back.close();
    fixture.close();
}

#[test]
fn a_history_just_long_enough_is_recovered_and_one_broadcast_more_is_not() {
    let fixture = Fixture::start(|app| {
        app.history("#r", History::new(3, TTL));
    });
    let (mut ann, socket, token) = connect(fixture.addr());
    join(&mut ann, "#r");
    fixture.broadcast("#r", "1");
    let epoch = said(&mut ann, "1")["epoch"].clone();
    fixture.lose(ann, &socket);
    for n in 2..=4 {
        fixture.broadcast("#r", &n.to_string());
    }
    // Exactly the size missed: 2, 3 and 4 are kept.
    let (back, written, id) = resume(fixture.addr(), &token, json!({ "#r": { "epoch": epoch, "offset": 1 } }));
    let (missed, reply) = split_resume(&written, id, &socket);
    let expected = [delivery("2", "#r", &epoch, 2), delivery("3", "#r", &epoch, 3), delivery("4", "#r", &epoch, 4)];
    assert_eq!(missed, expected);
    assert_eq!(reply["rooms"], json!({ "#r": { "recovered": true, "epoch": epoch, "offset": 4 } }));
    let token = written.last().expect("@ready")[2]["resume"].as_str().expect("a new token").to_string();
    fixture.lose(back, &socket);
    for n in 5..=8 {
        fixture.broadcast("#r", &n.to_string());
    }
    // One more than the size: 5 fell out.
    let (back, written, id) = resume(fixture.addr(), &token, json!({ "#r": { "epoch": epoch, "offset": 4 } }));
    let (missed, reply) = split_resume(&written, id, &socket);
    assert_eq!(missed, Vec::<Value>::new());
    assert_eq!(reply["rooms"], json!({ "#r": { "recovered": false, "epoch": epoch, "offset": 8 } }));
    back.close();
    fixture.close();
}

#[test]
fn a_listed_room_the_socket_was_not_in_is_not_recovered_nor_joined() {
    let fixture = Fixture::start(|app| {
        app.history("#r", History::new(100, TTL)).history("#other", History::new(100, TTL));
    });
    let (mut ann, socket, token) = connect(fixture.addr());
    let (mut bob, _, _) = connect(fixture.addr());
    join(&mut ann, "#r");
    join(&mut bob, "#other");
    fixture.broadcast("#other", "1");
    let epoch = said(&mut bob, "1")["epoch"].clone();
    fixture.lose(ann, &socket);
    fixture.broadcast("#other", "2");

    let listed = json!({ "#other": { "epoch": epoch, "offset": 1 } });
    let (mut back, written, id) = resume(fixture.addr(), &token, listed);
    let (missed, reply) = split_resume(&written, id, &socket);
    assert_eq!(missed, Vec::<Value>::new());
    let r = &reply["rooms"]["#r"];
    assert_eq!(reply["rooms"]["#other"], json!({ "recovered": false }), "{reply}");
    assert_eq!((&r["recovered"], &r["offset"]), (&json!(true), &json!(0)), "{reply}");
    fixture.broadcast("#other", "3");
    fixture.broadcast("#r", "in #r");
    // "3" did not reach ann: the next thing she gets is #r's.
    assert_eq!(said(&mut back, "in #r"), json!({ "room": "#r", "offset": 1, "epoch": r["epoch"] }));
    assert_eq!(said(&mut bob, "2")["offset"], 2);
    assert_eq!(said(&mut bob, "3")["offset"], 3);
    back.close();
    bob.close();
    fixture.close();
}

#[test]
fn while_a_socket_resumes_another_socket_broadcasting_from_its_worker_reaches_it_without_gaps() {
    const SENT: u64 = 400;
    let fixture = Fixture::start(|app| {
        app.history("#r", History::new(1000, TTL));
    });
    let (mut ann, socket, token) = connect(fixture.addr());
    join(&mut ann, "#r");
    fixture.lose(ann, &socket);
    // Bob, not in the room, broadcasts to it from his worker (events: no replies).
    let (mut bob, _, _) = connect(fixture.addr());
    let sender = std::thread::spawn(move || {
        for n in 1..=SENT {
            bob.send_raw(&json!([0, "/say", ["#r", n.to_string()]]).to_string());
            std::thread::sleep(Duration::from_micros(200));
        }
        bob
    });
    let (mut back, written, id) = resume(fixture.addr(), &token, json!({}));
    let (mut deliveries, reply) = split_resume(&written, id, &socket);
    assert_eq!(reply["rooms"]["#r"]["recovered"], true, "{reply}");
    while deliveries.len() < SENT as usize {
        deliveries.push(read_envelope(&mut back));
    }
    // Every delivery in order, none twice: the texts are the offsets.
    let epoch = &reply["rooms"]["#r"]["epoch"];
    let expected: Vec<Value> = (1..=SENT).map(|n| delivery(&n.to_string(), "#r", epoch, n)).collect();
    assert_eq!(deliveries, expected);
    sender.join().expect("no panic").close();
    back.close();
    fixture.close();
}

#[test]
fn an_at_connection_handler_joining_the_room_again_on_resume_changes_nothing() {
    let fixture = Fixture::start(|app| {
        app.history("#r", History::new(100, TTL));
        // A common pattern: every connection, resumed or not, joins the room.
        app.on("@connection", |req| {
            req.join("#r").expect("within the limits");
        });
    });
    let (mut ann, socket, token) = connect(fixture.addr());
    fixture.broadcast("#r", "1");
    let epoch = said(&mut ann, "1")["epoch"].clone();
    fixture.lose(ann, &socket);
    fixture.broadcast("#r", "2");

    let (mut back, written, id) = resume(fixture.addr(), &token, json!({ "#r": { "epoch": epoch, "offset": 1 } }));
    let (missed, reply) = split_resume(&written, id, &socket);
    assert_eq!(missed, [delivery("2", "#r", &epoch, 2)]);
    assert_eq!(reply["rooms"], json!({ "#r": { "recovered": true, "epoch": epoch, "offset": 2 } }));
    fixture.broadcast("#r", "3");
    fixture.broadcast("#r", "4");
    // Once each.
    assert_eq!(read_envelope(&mut back), delivery("3", "#r", &epoch, 3));
    assert_eq!(read_envelope(&mut back), delivery("4", "#r", &epoch, 4));
    back.expect_silence(Duration::from_millis(50));
    back.close();
    fixture.close();
}

#[test]
fn a_resume_that_takes_over_a_connection_still_open_recovers_what_it_missed() {
    let fixture = Fixture::start(|app| {
        app.history("#r", History::new(100, TTL));
    });
    let (mut ann, socket, token) = connect(fixture.addr());
    join(&mut ann, "#r");
    fixture.broadcast("#r", "1");
    let epoch = said(&mut ann, "1")["epoch"].clone();
    // The client stops hearing from its connection, which the server still
    // thinks open (a phone changing networks): it writes 2 and 3 to it.
    fixture.broadcast("#r", "2");
    fixture.broadcast("#r", "3");

    let (back, written, id) = resume(fixture.addr(), &token, json!({ "#r": { "epoch": epoch, "offset": 1 } }));
    let (missed, reply) = split_resume(&written, id, &socket);
    assert_eq!(missed, [delivery("2", "#r", &epoch, 2), delivery("3", "#r", &epoch, 3)]);
    assert_eq!(reply["rooms"], json!({ "#r": { "recovered": true, "epoch": epoch, "offset": 3 } }));
    assert_eq!(said(&mut ann, "2")["offset"], 2);
    assert_eq!(said(&mut ann, "3")["offset"], 3);
    ann.ws.expect_close(4409);
    back.close();
    fixture.close();
}

#[test]
fn a_room_left_before_the_loss_is_not_recovered_nor_joined_again() {
    let fixture = Fixture::start(|app| {
        app.history("#r", History::new(100, TTL));
    });
    let (mut ann, socket, token) = connect(fixture.addr());
    join(&mut ann, "#r");
    fixture.broadcast("#r", "1");
    let epoch = said(&mut ann, "1")["epoch"].clone();
    assert_eq!(ann.request("/leave", json!("#r")), Ok(json!(true)));
    fixture.lose(ann, &socket);
    fixture.broadcast("#r", "2");

    let (mut back, written, id) = resume(fixture.addr(), &token, json!({ "#r": { "epoch": epoch, "offset": 1 } }));
    let (missed, reply) = split_resume(&written, id, &socket);
    assert_eq!(missed, Vec::<Value>::new());
    assert_eq!(reply["rooms"], json!({ "#r": { "recovered": false } }));
    fixture.broadcast("#r", "3");
    back.expect_silence(Duration::from_millis(50));
    back.close();
    fixture.close();
}
