//! Binary broadcasts in a room's history (PROTOCOL.md §10 type 4, §13) over
//! real sockets: raw `emitws.v2` and `emitws.v1` clients written here from
//! the spec (every binary frame built and checked byte by byte, never with
//! the library's encoder) see one room's JSON and binary broadcasts share
//! its offsets, lose their TCP connection without a close frame and resume
//! with their offset, getting what they missed in the protocol of the
//! connection they resume with; the Rust client resumes through a proxy and
//! its binary listener sees each broadcast once; with feature `redis`, two
//! nodes over a real redis-server (which must be installed unless
//! `EMITWS_SKIP=redis`) give the same offsets, and a socket resumes on
//! a node started since, from what Redis kept.
#![cfg(feature = "app")]

#[path = "common/app.rs"]
mod app_client;
mod common;
#[cfg(feature = "redis")]
#[path = "common/redis.rs"]
mod redis_server;
#[path = "common/tcp_proxy.rs"]
mod tcp_proxy;
#[cfg(feature = "redis")]
#[path = "common/two_nodes.rs"]
mod two_nodes;

use std::net::{Shutdown, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use app_client::{eventually, AppClient};
use common::{http, upgrade_request, Client, Frame, RecvError, WAIT};
use emitws::app::{App, BroadcastOpts, EventLimits, History, Running};
use serde_json::{json, Value};

const TTL: Duration = Duration::from_secs(60);

/// What a server writes: a JSON envelope, or a binary frame's bytes.
#[derive(Debug, PartialEq)]
enum Got {
    Json(Value),
    Bytes(Vec<u8>),
}

/// A raw `emitws.v2` connection.
struct V2 {
    ws: Client,
    next_id: u64,
}

impl V2 {
    /// Connects to `path` offering `emitws.v2` alone.
    fn connect_to(addr: SocketAddr, path: &str) -> V2 {
        let (stream, reply, rest) = http(addr, &upgrade_request(path, &[("Sec-WebSocket-Protocol", "emitws.v2")]));
        assert_eq!(reply.status, 101, "{reply:?}");
        assert_eq!(reply.header("sec-websocket-protocol"), Some("emitws.v2"));
        V2 { ws: Client::from_parts(stream, rest), next_id: 0 }
    }

    /// Connects, reads `@ready`: (connection, socket id, resume token).
    fn connect(addr: SocketAddr) -> (V2, String, String) {
        let mut v2 = V2::connect_to(addr, "/");
        let written = v2.until_ready();
        let Some(Got::Json(ready)) = written.last() else { panic!("{written:?}") };
        let socket = ready[2]["socket"].as_str().expect("a socket id").to_string();
        let token = ready[2]["resume"].as_str().unwrap_or_else(|| panic!("no resume token in {ready}")).to_string();
        (v2, socket, token)
    }

    fn got(&mut self) -> Got {
        loop {
            match self.ws.try_recv() {
                Ok(Frame::Text(text)) => return Got::Json(serde_json::from_str(&text).expect("JSON")),
                Ok(Frame::Binary(bytes)) => return Got::Bytes(bytes),
                Ok(Frame::Ping(payload)) => self.ws.send(emitws::proto::OpCode::Pong, true, &payload),
                Ok(other) => panic!("expected an envelope, got {other:?}"),
                Err(RecvError::Timeout) => panic!("no envelope within {WAIT:?}"),
                Err(e) => panic!("connection failed: {e:?}"),
            }
        }
    }

    /// Everything written up to and including `@ready`.
    fn until_ready(&mut self) -> Vec<Got> {
        let mut written = Vec::new();
        loop {
            let got = self.got();
            let ready = matches!(&got, Got::Json(e) if e[0] == 0 && e[1] == "@ready");
            written.push(got);
            if ready {
                return written;
            }
        }
    }

    /// Sends a JSON request; returns its id.
    fn send_request(&mut self, event: &str, data: Value) -> u64 {
        self.next_id += 1;
        self.ws.send_text(&json!([1, self.next_id, event, data]).to_string());
        self.next_id
    }

    /// Sends a request and expects its reply next.
    fn request(&mut self, event: &str, data: Value) -> Value {
        let id = self.send_request(event, data);
        match self.got() {
            Got::Json(reply) if reply[0] == 2 && reply[1] == id => reply[2].clone(),
            other => panic!("expected the reply to {id}, got {other:?}"),
        }
    }
}

/// `{"room":…,"offset":…,"epoch":…}` as the server writes it: compact, in that order.
fn position(room: &str, offset: u64, epoch: &str) -> String {
    format!(r#"{{"room":"{room}","offset":{offset},"epoch":"{epoch}"}}"#)
}

/// A type-4 envelope written out by hand: `04 | N | name | P | position | payload`.
fn event_at(name: &str, position: &str, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![4, name.len() as u8];
    out.extend_from_slice(name.as_bytes());
    out.push(position.len() as u8);
    out.extend_from_slice(position.as_bytes());
    out.extend_from_slice(payload);
    out
}

/// `[0,"/said",text,{position}]`.
fn said(text: &str, room: &str, offset: u64, epoch: &str) -> Value {
    json!([0, "/said", text, { "room": room, "offset": offset, "epoch": epoch }])
}

/// `[0,"/blob",{"base64":…},{position}]`: a binary broadcast to an `emitws.v1` socket.
fn blob_v1(base64: &str, room: &str, offset: u64, epoch: &str) -> Value {
    json!([0, "/blob", { "base64": base64 }, { "room": room, "offset": offset, "epoch": epoch }])
}

/// The epoch of a JSON delivery's fourth element.
fn epoch_of(got: &Got) -> String {
    match got {
        Got::Json(e) => e[3]["epoch"].as_str().unwrap_or_else(|| panic!("no epoch in {e}")).to_string(),
        other => panic!("expected a JSON delivery, got {other:?}"),
    }
}

/// The app: `#r` has history, `/join` joins the group its data names,
/// `@disconnect`s are recorded (socket id, data).
fn history_app(gone: &Arc<Mutex<Vec<(String, Value)>>>) -> App {
    let mut app = App::new();
    app.limits(EventLimits::default().rate(None));
    app.history("#r", History::new(100, TTL));
    app.resume_window(Some(Duration::from_secs(30)));
    app.on("/join", |req| {
        let group: String = req.data().expect("a group");
        let joined = req.join(&group).is_ok();
        req.reply(&joined);
    });
    let record = gone.clone();
    app.on("@disconnect", move |req| {
        let data: Value = req.data().expect("@disconnect data is JSON");
        record.lock().unwrap().push((req.socket_id().to_string(), data));
    });
    app
}

struct Fixture {
    running: Running,
    gone: Arc<Mutex<Vec<(String, Value)>>>,
}

impl Fixture {
    fn start() -> Fixture {
        let gone = Arc::default();
        let running = app_client::start(history_app(&gone), 2);
        Fixture { running, gone }
    }

    fn addr(&self) -> SocketAddr {
        self.running.local_addr()
    }

    fn say(&self, text: &str) {
        self.running.broadcast("/said", text, BroadcastOpts::to("#r")).expect("serializes");
    }

    fn blob(&self, bytes: &[u8]) {
        self.running.broadcast_binary("/blob", bytes, BroadcastOpts::to("#r")).expect("a short name");
    }

    /// Drops `v2`'s TCP connection (no close frame); waits until the server kept its session.
    fn lose(&self, v2: V2, socket: &str) {
        lose_and_wait(v2, socket, &self.gone);
    }
}

/// Drops `v2`'s TCP connection (no close frame) and waits for its
/// resumable `@disconnect` among `gone`.
fn lose_and_wait(v2: V2, socket: &str, gone: &Mutex<Vec<(String, Value)>>) {
    cut(v2);
    let mut data = Value::Null;
    eventually("the server to notice the loss", || {
        let seen = gone.lock().unwrap();
        let Some((_, d)) = seen.iter().find(|(s, _)| s == socket) else { return false };
        data = d.clone();
        true
    });
    assert_resumable(&data);
}

/// Drops `v2`'s TCP connection: no close frame either way.
fn cut(v2: V2) {
    v2.ws.stream.shutdown(Shutdown::Both).expect("shut down");
}

fn assert_resumable(disconnect: &Value) {
    assert_eq!((&disconnect["code"], &disconnect["resumable"]), (&json!(1006), &json!(true)), "{disconnect}");
}

/// A resume's writes up to `@ready` (v2): what came before the reply to
/// `@resume`, checked to be resumed as `socket` with `#r` recovered.
fn missed_v2(written: Vec<Got>, id: u64, socket: &str) -> Vec<Got> {
    let n = written.len();
    assert!(n >= 2, "{written:?}");
    let Got::Json(reply) = &written[n - 2] else { panic!("{written:?}") };
    assert!(reply[0] == 2 && reply[1] == id, "the reply to {id} before @ready: {written:?}");
    assert_eq!((&reply[2]["resumed"], &reply[2]["socket"]), (&json!(true), &json!(socket)), "{reply}");
    assert_eq!(reply[2]["rooms"]["#r"]["recovered"], true, "{reply}");
    written.into_iter().take(n - 2).collect()
}

#[test]
fn json_and_binary_broadcasts_share_a_rooms_offsets_in_each_sockets_protocol() {
    let fixture = Fixture::start();
    let (mut v2, _, _) = V2::connect(fixture.addr());
    let mut v1 = AppClient::connect(fixture.addr());
    assert_eq!(v2.request("/join", json!("#r")), json!(true));
    assert_eq!(v1.request("/join", json!("#r")), Ok(json!(true)));

    fixture.say("1");
    fixture.blob(&[0xde, 0xad, 0xbe, 0xef]);
    fixture.say("3");
    let first = v2.got();
    let epoch = epoch_of(&first);
    assert_eq!(first, Got::Json(said("1", "#r", 1, &epoch)));
    let expected = event_at("/blob", &position("#r", 2, &epoch), &[0xde, 0xad, 0xbe, 0xef]);
    assert_eq!(v2.got(), Got::Bytes(expected));
    assert_eq!(v2.got(), Got::Json(said("3", "#r", 3, &epoch)));
    assert_eq!(v1.next(), said("1", "#r", 1, &epoch));
    assert_eq!(v1.next(), blob_v1("3q2+7w==", "#r", 2, &epoch));
    assert_eq!(v1.next(), said("3", "#r", 3, &epoch));

    // To several groups: unnumbered, a type-0 event, and the room's offsets do not
    // move. Local is numbered on a server without a cluster (as JSON is).
    let app = fixture.running.app();
    app.broadcast_binary("/blob", &[1], BroadcastOpts::to("#r").and("#s")).expect("a short name");
    app.broadcast_binary("/blob", &[2], BroadcastOpts::to("#r").local()).expect("a short name");
    fixture.say("5");
    assert_eq!(v2.got(), Got::Bytes([&[0, 5][..], b"/blob", &[1]].concat()));
    assert_eq!(v2.got(), Got::Bytes(event_at("/blob", &position("#r", 4, &epoch), &[2])));
    assert_eq!(v2.got(), Got::Json(said("5", "#r", 5, &epoch)));
    assert_eq!(v1.next(), json!([0, "/blob", { "base64": "AQ==" }]));
    assert_eq!(v1.next(), blob_v1("Ag==", "#r", 4, &epoch));
    assert_eq!(v1.next(), said("5", "#r", 5, &epoch));

    // Type 4 is the server's: from a client, `@error` bad_request, and the socket goes on.
    v2.ws.send_binary(&event_at("/x", &position("#r", 9, &epoch), b"?"));
    match v2.got() {
        Got::Json(e) => assert_eq!((&e[1], &e[2]["code"]), (&json!("@error"), &json!("bad_request")), "{e}"),
        other => panic!("expected @error, got {other:?}"),
    }
    assert_eq!(v2.request("/join", json!("#r")), json!(true));
    v1.close();
    fixture.running.close();
}

#[test]
fn a_resumed_socket_gets_the_missed_binary_and_json_broadcasts_in_order_in_its_new_protocol() {
    let fixture = Fixture::start();
    // Resumed on emitws.v2: type-4 envelopes; on emitws.v1: base64 JSON with the position.
    for resume_v2 in [true, false] {
        let (mut v2, socket, token) = V2::connect(fixture.addr());
        assert_eq!(v2.request("/join", json!("#r")), json!(true));
        fixture.say("before");
        let before = v2.got();
        let (epoch, offset) = (
            epoch_of(&before),
            match &before {
                Got::Json(e) => e[3]["offset"].as_u64().expect("an offset"),
                _ => unreachable!(),
            },
        );
        fixture.lose(v2, &socket);
        fixture.blob(&[1, 2, 3]);
        fixture.say("json");
        fixture.blob(&[]);
        let rooms = json!({ "#r": { "epoch": epoch, "offset": offset } });
        let (a, b, c) = (offset + 1, offset + 2, offset + 3);
        if resume_v2 {
            let mut back = V2::connect_to(fixture.addr(), "/?emitws_resume=1");
            let id = back.send_request("@resume", json!({ "token": token, "rooms": rooms }));
            let missed = missed_v2(back.until_ready(), id, &socket);
            let expected = [
                Got::Bytes(event_at("/blob", &position("#r", a, &epoch), &[1, 2, 3])),
                Got::Json(said("json", "#r", b, &epoch)),
                Got::Bytes(event_at("/blob", &position("#r", c, &epoch), &[])),
            ];
            assert_eq!(missed, expected);
            // Live again, numbered after them.
            fixture.blob(&[9]);
            assert_eq!(back.got(), Got::Bytes(event_at("/blob", &position("#r", c + 1, &epoch), &[9])));
        } else {
            let mut back = AppClient::connect_to(fixture.addr(), "/?emitws_resume=1", &[]).expect("upgraded");
            let id = back.send_request("@resume", json!({ "token": token, "rooms": rooms }));
            let expected =
                [blob_v1("AQID", "#r", a, &epoch), said("json", "#r", b, &epoch), blob_v1("", "#r", c, &epoch)];
            for envelope in expected {
                assert_eq!(back.next(), envelope);
            }
            let reply = back.reply_to(id).expect("resumed");
            assert_eq!(
                (&reply["resumed"], &reply["rooms"]["#r"]["recovered"]),
                (&json!(true), &json!(true)),
                "{reply}"
            );
            back.wait_ready();
            back.close();
        }
    }
    fixture.running.close();
}

#[test]
fn the_rust_client_resumes_and_its_binary_listener_sees_each_broadcast_once() {
    use emitws::client::app::{AppClient as RustClient, AppOptions};

    let fixture = Fixture::start();
    let proxy = tcp_proxy::Proxy::start(fixture.addr());
    let options =
        AppOptions::default().binary(true).reconnect_delay(common::ms(20)).max_reconnect_delay(common::ms(100));
    let client = RustClient::new(&format!("ws://{}/", proxy.addr), options).unwrap();
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let record = seen.clone();
    client.on_binary("/blob", move |_, bytes| record.lock().unwrap().push(format!("blob {bytes:?}")));
    for event in ["/said", "@disconnect", "@resumed"] {
        let record = seen.clone();
        client.on(event, move |event, data| record.lock().unwrap().push(format!("{event} {data}")));
    }
    client.open().unwrap();
    assert_eq!(client.request("/join", json!("#r"), WAIT), Ok(json!(true)));
    let count = |what: &str| seen.lock().unwrap().iter().filter(|s| s.starts_with(what)).count();
    let wait = |what: &str, n: usize| eventually(&format!("{n} × {what}"), || count(what) >= n);
    fixture.blob(&[1]);
    fixture.say("2");
    wait("/said", 1);

    proxy.cut();
    wait("@disconnect", 1);
    fixture.blob(&[3]);
    fixture.say("4");
    fixture.blob(&[5]);
    proxy.online();
    wait("@resumed", 1);
    wait("blob", 3);
    assert_eq!(client.recovered("#r"), Some(true));

    // Again, nothing in between: nothing comes twice; then live.
    proxy.cut();
    wait("@disconnect", 2);
    proxy.online();
    wait("@resumed", 2);
    fixture.blob(&[6]);
    wait("blob", 4);
    let deliveries: Vec<String> =
        seen.lock().unwrap().iter().filter(|s| s.starts_with("blob") || s.starts_with("/said")).cloned().collect();
    assert_eq!(deliveries, ["blob [1]", "/said \"2\"", "blob [3]", "/said \"4\"", "blob [5]", "blob [6]"]);
    client.close();
    fixture.running.close();
}

#[cfg(feature = "redis")]
#[test]
fn across_nodes_the_offsets_are_the_clusters_and_a_socket_resumes_on_another_node_from_redis() {
    let Some(redis) = redis_server::Redis::start() else { return };
    // The nodes record their own `@disconnect`s (`Node::disconnect_of`).
    let (a, b) = two_nodes::two_nodes(&redis, || history_app(&Arc::default()));
    let (mut on_a, socket, token) = V2::connect(a.addr());
    let mut on_b = AppClient::connect(b.addr());
    assert_eq!(on_a.request("/join", json!("#r")), json!(true));
    assert_eq!(on_b.request("/join", json!("#r")), Ok(json!(true)));

    // From either node, one after the other: the cluster's offsets, on both.
    a.broadcast("/said", "1", BroadcastOpts::to("#r")).expect("serializes");
    let first = on_a.got();
    let epoch = epoch_of(&first);
    assert_eq!(first, Got::Json(said("1", "#r", 1, &epoch)));
    b.broadcast_binary("/blob", &[0xde, 0xad, 0xbe, 0xef], BroadcastOpts::to("#r")).expect("a short name");
    assert_eq!(on_a.got(), Got::Bytes(event_at("/blob", &position("#r", 2, &epoch), &[0xde, 0xad, 0xbe, 0xef])));
    a.broadcast_binary("/blob", &[7], BroadcastOpts::to("#r")).expect("a short name");
    assert_eq!(on_a.got(), Got::Bytes(event_at("/blob", &position("#r", 3, &epoch), &[7])));
    assert_eq!(on_b.next(), said("1", "#r", 1, &epoch));
    assert_eq!(on_b.next(), blob_v1("3q2+7w==", "#r", 2, &epoch));
    assert_eq!(on_b.next(), blob_v1("Bw==", "#r", 3, &epoch));

    // Local to node a: not numbered for the cluster, a type-0 event there alone.
    a.broadcast_binary("/blob", &[8], BroadcastOpts::to("#r").local()).expect("a short name");
    assert_eq!(on_a.got(), Got::Bytes([&[0, 5][..], b"/blob", &[8]].concat()));

    // Lost on node a, resumed on another.
    cut(on_a);
    assert_resumable(&a.disconnect_of(&socket, 0));
    // Each delivered before the next is sent: from two nodes, Redis numbers them as they come.
    b.broadcast_binary("/blob", &[4], BroadcastOpts::to("#r")).expect("a short name");
    assert_eq!(on_b.next(), blob_v1("BA==", "#r", 4, &epoch));
    a.broadcast("/said", "5", BroadcastOpts::to("#r")).expect("serializes");
    assert_eq!(on_b.next(), said("5", "#r", 5, &epoch));
    // On a node started since, which has only what Redis kept.
    let c =
        two_nodes::Node::start(&redis.url(), two_nodes::options(Duration::from_secs(2)), history_app(&Arc::default()));
    two_nodes::wait_joined(&[&a, &b, &c]);
    let mut back = V2::connect_to(c.addr(), "/?emitws_resume=1");
    let rooms = json!({ "#r": { "epoch": epoch, "offset": 3 } });
    let id = back.send_request("@resume", json!({ "token": token, "rooms": rooms }));
    let missed = missed_v2(back.until_ready(), id, &socket);
    let expected =
        [Got::Bytes(event_at("/blob", &position("#r", 4, &epoch), &[4])), Got::Json(said("5", "#r", 5, &epoch))];
    assert_eq!(missed, expected);
    on_b.close();
    for node in [a, b, c] {
        node.close();
    }
}
