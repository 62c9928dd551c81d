//! MessagePack payloads (feature `msgpack`, PROTOCOL.md §10 "MessagePack
//! payloads (convention)") over real sockets: typed requests and replies
//! between the app and the Rust client (nested structs, non-ASCII strings,
//! bytes, options), events, a broadcast to a room reaching a v2 client as
//! MessagePack and a v1 client as base64, bad payloads and JSON envelopes
//! answered with clear errors on a socket that stays open. One reply is
//! checked byte by byte against the MessagePack spec, and one request is
//! written by hand, so that the test does not share the encoder it checks.
#![cfg(feature = "msgpack")]

#[path = "common/app.rs"]
mod app_client;
mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use app_client::{eventually, start, AppClient};
use common::{http, upgrade_request, Client, Frame, WAIT};
use emitws::app::msgpack::MsgpackError;
use emitws::app::{App, BroadcastOpts};
use emitws::client::app::{AppClient as RustClient, AppError, AppOptions};
use emitws::client::msgpack::MsgpackError as ClientMsgpackError;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Place {
    city: String,
    lat_lon: (f64, f64),
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Profile {
    name: String,
    tags: Vec<String>,
    avatar: Vec<u8>,
    home: Option<Place>,
    away: Option<Place>,
    scores: BTreeMap<String, i64>,
    big: u64,
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Seen {
    profile: Profile,
    avatar_sum: u64,
    by_v2: bool,
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Note {
    room: String,
    text: String,
}

/// A value whose `Serialize` fails, as a bad custom one would.
struct Unencodable;

impl Serialize for Unencodable {
    fn serialize<S: serde::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
        Err(serde::ser::Error::custom("this value refuses to be written"))
    }
}

fn profile() -> Profile {
    Profile {
        name: "Zoë 東京 🚀 \"quoted\"\n".into(),
        tags: vec!["ünïcödé".into(), String::new(), "x".repeat(40)],
        avatar: (0..=255u8).cycle().take(300).collect(),
        home: Some(Place { city: "Kraków".into(), lat_lon: (50.06, 19.94) }),
        away: None,
        scores: BTreeMap::from([("neg".to_string(), -70_000), ("zero".to_string(), 0)]),
        big: u64::MAX,
    }
}

fn msgpack_app() -> App {
    let mut app = App::new();
    app.on("/profile", |req| {
        let Some(profile) = req.expect_msgpack::<Profile>() else { return };
        let avatar_sum = profile.avatar.iter().map(|&b| u64::from(b)).sum();
        let by_v2 = req.speaks_binary();
        req.reply_msgpack(&Seen { profile, avatar_sum, by_v2 });
    });
    app.on("/profile-later", |req| {
        let profile = req.msgpack::<Profile>();
        let reply = req.defer();
        std::thread::spawn(move || match profile {
            Ok(profile) => reply.reply_msgpack(&profile),
            Err(e) => reply.reply_err(e.code(), &e.to_string()),
        });
    });
    // Checked against the spec byte by byte: x 1, y -1, label "é".
    app.on("/point", |req| {
        #[derive(Serialize, Deserialize)]
        struct Point {
            x: i8,
            y: i8,
            label: String,
        }
        match req.msgpack::<Point>() {
            Ok(point) => req.reply_msgpack(&Point { x: point.x + 1, y: point.y - 1, label: point.label + "é" }),
            Err(e) => req.reply_err(e.code(), &e.to_string()),
        }
    });
    app.on("/note", |req| {
        let Some(note) = req.expect_msgpack::<Note>() else { return };
        let _ = req.emit_msgpack("/noted", &note.text.chars().count());
        let _ = req.broadcast_msgpack("/note", &note, BroadcastOpts::to(&note.room));
    });
    app.on("/join", |req| {
        let room = req.data::<String>().unwrap_or_default();
        let joined = req.join(&room).is_ok();
        req.reply(&joined);
    });
    // Strings and bytes read borrowed from the frame, without a copy.
    app.on("/borrow", |req| {
        #[derive(Deserialize)]
        struct Borrowed<'a> {
            name: &'a str,
            avatar: &'a [u8],
        }
        let frame = req.binary().unwrap_or_default().as_ptr_range();
        match req.msgpack_borrowed::<Borrowed>() {
            Ok(Borrowed { name, avatar }) => {
                let in_frame = [name.as_bytes(), avatar].iter().all(|part| frame.contains(&part.as_ptr()));
                req.reply_msgpack(&(name.chars().count(), avatar.len(), in_frame))
            }
            Err(e) => req.reply_err(e.code(), &e.to_string()),
        }
    });
    app.on("/json", |req| req.reply(&json!({ "plain": "json" })));
    app.on("/unencodable", |req| req.reply_msgpack(&Unencodable));
    app.on("/refusals", |req| {
        let long = format!("/{}", "x".repeat(255));
        let emit = req.emit_msgpack(&long, &1);
        let encode = req.emit_msgpack("/x", &Unencodable);
        let broadcast = req.broadcast_msgpack(&long, &1, BroadcastOpts::all());
        let describe = |r: Result<(), MsgpackError>| match r {
            Err(MsgpackError::Send(e)) => format!("send {}", e.code()),
            Err(MsgpackError::Encode(e)) => format!("encode {e}"),
            other => format!("{other:?}"),
        };
        req.reply(&[describe(emit), describe(encode), describe(broadcast)]);
    });
    app
}

fn v2_client(addr: std::net::SocketAddr) -> RustClient {
    RustClient::connect(&format!("ws://{addr}/"), AppOptions::default().binary(true)).expect("connect")
}

/// A raw `emitws.v2` socket, past its `@ready`.
fn raw_v2(addr: std::net::SocketAddr) -> Client {
    let (stream, reply, rest) = http(addr, &upgrade_request("/", &[("Sec-WebSocket-Protocol", "emitws.v2")]));
    assert_eq!(reply.header("sec-websocket-protocol"), Some("emitws.v2"), "{reply:?}");
    let mut ws = Client::from_parts(stream, rest);
    let ready = text_of(&mut ws);
    assert_eq!(ready[1], "@ready", "{ready}");
    ws
}

fn text_of(ws: &mut Client) -> Value {
    match ws.recv() {
        Frame::Text(text) => serde_json::from_str(&text).expect("JSON"),
        other => panic!("expected a text envelope, got {other:?}"),
    }
}

fn binary_of(ws: &mut Client) -> Vec<u8> {
    match ws.recv() {
        Frame::Binary(bytes) => bytes,
        other => panic!("expected a binary envelope, got {other:?}"),
    }
}

/// A binary request with a one-byte id (below 128), by hand: type 1, id, name length, name, payload.
fn request_frame(id: u8, event: &str, payload: &[u8]) -> Vec<u8> {
    assert!(id < 0x80);
    [&[1u8, id, event.len() as u8][..], event.as_bytes(), payload].concat()
}

fn base64_of(data: &Value) -> Vec<u8> {
    use base64::Engine as _;
    let text = data["base64"].as_str().unwrap_or_else(|| panic!("not base64: {data}"));
    base64::engine::general_purpose::STANDARD.decode(text).expect("base64")
}

#[test]
fn typed_requests_and_replies_round_trip_between_the_app_and_the_rust_client() {
    let running = start(msgpack_app(), 1);
    let client = v2_client(running.local_addr());
    let sent = profile();
    let seen: Seen = client.request_msgpack("/profile", &sent, WAIT).expect("reply");
    let expected_sum = sent.avatar.iter().map(|&b| u64::from(b)).sum();
    assert_eq!(seen, Seen { profile: sent.clone(), avatar_sum: expected_sum, by_v2: true });
    // A deferred reply, from another thread.
    let later: Profile = client.request_msgpack("/profile-later", &sent, WAIT).expect("deferred reply");
    assert_eq!(later, sent);
    let borrowed: (usize, usize, bool) = client.request_msgpack("/borrow", &sent, WAIT).expect("borrowed");
    assert_eq!(borrowed, (sent.name.chars().count(), 300, true));
    // The server's errors and JSON replies reach the typed call as such.
    let json = client.request_msgpack::<_, Profile>("/json", &1, WAIT);
    assert!(matches!(&json, Err(ClientMsgpackError::NotBinary(v)) if *v == json!({ "plain": "json" })), "{json:?}");
    let wrong = client.request_msgpack::<_, Profile>("/profile", &"not a profile", WAIT);
    let Err(ClientMsgpackError::App(AppError::Remote { code, message })) = wrong else { panic!("{wrong:?}") };
    assert_eq!(code, "bad_request");
    assert!(message.starts_with("unexpected MessagePack data"), "{message}");
    let unencodable = client.request_msgpack::<_, Value>("/unencodable", &(), WAIT);
    let Err(ClientMsgpackError::App(AppError::Remote { code, message })) = unencodable else {
        panic!("{unencodable:?}")
    };
    assert_eq!(code, "internal");
    assert!(message.contains("this value refuses to be written"), "{message}");
    let not_sent = client.request_msgpack::<_, Value>("/profile", &Unencodable, WAIT);
    assert!(matches!(not_sent, Err(ClientMsgpackError::Encode(_))), "{not_sent:?}");
    let refusals = client.request("/refusals", Value::Null, WAIT).expect("refusals");
    assert_eq!(refusals[0], "send bad_request");
    assert!(refusals[1].as_str().is_some_and(|s| s.starts_with("encode ") && s.contains("refuses")), "{refusals}");
    assert_eq!(refusals[2], "send bad_request");
    // The socket went on through all of it.
    assert_eq!(client.request_msgpack::<_, Profile>("/profile-later", &sent, WAIT).expect("again"), sent);
    client.close();
    // A v1 client cannot send MessagePack: nothing is sent.
    let v1 = RustClient::connect(&format!("ws://{}/", running.local_addr()), AppOptions::default()).expect("connect");
    let refused = v1.request_msgpack::<_, Profile>("/profile", &sent, WAIT);
    assert!(matches!(refused, Err(ClientMsgpackError::App(AppError::NotBinary(_)))), "{refused:?}");
    assert!(matches!(v1.emit_msgpack("/note", &1), Err(ClientMsgpackError::App(AppError::NotBinary(_)))));
    v1.close();
    running.close();
}

#[test]
fn events_and_room_broadcasts_reach_v2_clients_as_msgpack_and_v1_clients_as_base64() {
    let running = start(msgpack_app(), 2);
    let addr = running.local_addr();
    let sender = v2_client(addr);
    let listener = v2_client(addr);
    let mut v1 = AppClient::connect(addr);
    for client in [&sender, &listener] {
        assert_eq!(client.request("/join", json!("#tea"), WAIT), Ok(json!(true)));
    }
    assert_eq!(v1.request("/join", json!("#tea")), Ok(json!(true)));
    let outsider = v2_client(addr);
    let noted = Arc::new(Mutex::new(Vec::new()));
    let notes = Arc::new(Mutex::new(Vec::new()));
    let stray = Arc::new(Mutex::new(Vec::new()));
    let sink = noted.clone();
    sender.on_msgpack("/noted", move |_, chars: Result<usize, _>| sink.lock().unwrap().push(chars.expect("usize")));
    let sink = notes.clone();
    listener.on_msgpack("/note", move |event, note: Result<Note, _>| {
        sink.lock().unwrap().push((event.to_string(), note.expect("a Note")))
    });
    let sink = stray.clone();
    outsider.on_binary("/note", move |_, bytes| sink.lock().unwrap().push(bytes.to_vec()));
    let note = Note { room: "#tea".into(), text: "Grüße, 世界".into() };
    sender.emit_msgpack("/note", &note).expect("emit");
    // The sender's own event: 9 characters.
    eventually("the sender got /noted", || noted.lock().unwrap().as_slice() == [9]);
    eventually("the listener got the note", || notes.lock().unwrap().len() == 1);
    assert_eq!(notes.lock().unwrap()[0], ("/note".to_string(), Note { room: "#tea".into(), text: note.text.clone() }));
    // The v1 socket gets the same MessagePack bytes, base64'd in JSON.
    let bytes = base64_of(&v1.expect_event("/note"));
    assert_eq!(rmp_serde::from_slice::<Note>(&bytes).expect("MessagePack"), note);
    // The app's own broadcast; a typed listener meeting bytes that are no Note.
    running.app().broadcast_msgpack("/note", &note, BroadcastOpts::to("#tea")).expect("broadcast");
    eventually("the listener got the app's note", || notes.lock().unwrap().len() == 2);
    assert_eq!(rmp_serde::from_slice::<Note>(&base64_of(&v1.expect_event("/note"))).expect("Note"), note);
    let errors = Arc::new(Mutex::new(Vec::new()));
    let sink = errors.clone();
    listener.on_msgpack("/odd", move |_, note: Result<Note, ClientMsgpackError>| {
        sink.lock().unwrap().push(note.expect_err("not a Note").to_string())
    });
    running.app().broadcast_binary("/odd", &[0xc1], BroadcastOpts::to("#tea")).expect("broadcast");
    eventually("the typed listener got the decode error", || errors.lock().unwrap().len() == 1);
    assert!(errors.lock().unwrap()[0].starts_with("unexpected MessagePack data"), "{:?}", errors.lock().unwrap());
    assert_eq!(v1.expect_event("/odd"), json!({ "base64": "wQ==" }));
    assert!(stray.lock().unwrap().is_empty(), "a socket outside the room got the broadcast");
    // An event whose payload is no Note: `@error`, and the socket goes on.
    let mut raw = raw_v2(addr);
    raw.send_binary(&[&[0u8, 5][..], b"/note", &[0x93, 1, 2, 3]].concat());
    let error = text_of(&mut raw);
    assert_eq!((&error[1], &error[2]["code"]), (&json!("@error"), &json!("bad_request")), "{error}");
    assert!(error[2]["message"].as_str().is_some_and(|m| m.starts_with("unexpected MessagePack data")), "{error}");
    raw.send_text(r#"[1,1,"/json"]"#);
    assert_eq!(text_of(&mut raw), json!([2, 1, { "plain": "json" }]));
    for client in [sender, listener, outsider] {
        client.close();
    }
    v1.close();
    running.close();
}

#[test]
fn bad_payloads_and_json_envelopes_get_clear_errors_and_the_socket_stays_open() {
    let running = start(msgpack_app(), 1);
    let addr = running.local_addr();
    let mut raw = raw_v2(addr);
    let expect_error = |raw: &mut Client, id: u64, starts: &str| {
        let reply = text_of(raw);
        assert_eq!(
            (&reply[0], &reply[1], &reply[2]["code"]),
            (&json!(3), &json!(id), &json!("bad_request")),
            "{reply}"
        );
        let message = reply[2]["message"].as_str().expect("message");
        assert!(message.starts_with(starts), "{message}");
    };
    // 0xc1 is the one marker MessagePack never uses; then a fixmap of 2 cut
    // short; then valid MessagePack of the wrong shape (a fixarray of 1).
    for (id, payload) in [(1, &[0xc1][..]), (2, &[0x82, 0xa1, b'x'][..]), (3, &[0x91, 0x01][..]), (4, &[][..])] {
        raw.send_binary(&request_frame(id, "/point", payload));
        expect_error(&mut raw, id.into(), "unexpected MessagePack data");
    }
    // A JSON envelope to a MessagePack handler, on v2 and on v1.
    raw.send_text(r#"[1,5,"/point",{"x":1,"y":2,"label":""}]"#);
    expect_error(&mut raw, 5, "expected MessagePack in a binary envelope");
    let mut v1 = AppClient::connect(addr);
    let refused = v1.request("/profile", json!({ "name": "json" }));
    let Err((code, message)) = refused else { panic!("{refused:?}") };
    assert_eq!(code, "bad_request");
    assert!(message.contains("expected MessagePack in a binary envelope") && message.contains("JSON"), "{message}");
    // Both sockets are still open and served.
    raw.send_binary(&request_frame(
        6,
        "/point",
        &[0x83, 0xa1, b'x', 0, 0xa1, b'y', 0, 0xa5, b'l', b'a', b'b', b'e', b'l', 0xa0],
    ));
    assert_eq!(binary_of(&mut raw)[..2], [2, 6]);
    assert_eq!(v1.request("/json", Value::Null), Ok(json!({ "plain": "json" })));
    v1.close();
    running.close();
}

#[test]
fn a_reply_reads_as_the_messagepack_spec_writes_it_without_the_encoder() {
    let running = start(msgpack_app(), 1);
    let mut raw = raw_v2(running.local_addr());
    // Written by hand from the spec: fixarray of 3 (a positional struct,
    // as other encoders may send), positive fixint 0, negative fixint -1
    // (0xff), fixstr of 1 "a"; then the named form with x as int8 (0xd0).
    raw.send_binary(&request_frame(9, "/point", &[0x93, 0x00, 0xff, 0xa1, b'a']));
    let reply = binary_of(&mut raw);
    // Type 2, id 9; fixmap of 3 (0x83): fixstr 1 "x" (0xa1 78) → positive
    // fixint 1; fixstr "y" → negative fixint -2 (0xfe); fixstr 5 "label"
    // (0xa5) → fixstr of 3 bytes (0xa3) "a" + "é" (C3 A9 in UTF-8).
    let expected =
        [&[0x02, 0x09, 0x83, 0xa1, b'x', 0x01, 0xa1, b'y', 0xfe, 0xa5][..], b"label", &[0xa3, b'a', 0xc3, 0xa9]]
            .concat();
    assert_eq!(reply, expected);
    raw.send_binary(&request_frame(10, "/point", &[0x82, 0xa1, b'x', 0xd0, 0x05, 0xa1, b'y', 0xd0, 0x80]));
    let reply = text_of(&mut raw);
    // A map without "label": the decoder says which field is missing.
    assert_eq!(reply[2]["code"], "bad_request", "{reply}");
    assert!(reply[2]["message"].as_str().is_some_and(|m| m.contains("label")), "{reply}");
    running.close();
}
