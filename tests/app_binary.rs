//! emitws.v2 binary envelopes (PROTOCOL.md §10) over real sockets: the
//! subprotocol's negotiation, binary frames built here byte by byte from the
//! spec (never with the library's encoder), replies, events and broadcasts
//! to a mix of v1 and v2 sockets and the Rust client, limits, and bad headers;
//! the JavaScript client's clients/js/test/binary.test.js against this app;
//! with feature `redis`, a binary broadcast crossing two nodes over a real
//! redis-server (which must be installed unless `EMITWS_SKIP=redis`).
#![cfg(feature = "app")]

#[path = "common/app_includes.rs"]
mod app_includes;
use app_includes::*;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use app_client::{eventually, start, AppClient};
use common::{http, upgrade_request, Client, Frame, RecvError, WAIT};
use emitws::app::{App, BroadcastOpts, EventLimits, Policy, Rate, ReadyState, SocketId};
use emitws::client::app::{AppClient as RustClient, AppError, AppOptions, Payload};
use serde_json::{json, Value};

/// A raw emitws.v2 connection: text envelopes as JSON values, binary ones as bytes.
struct V2 {
    ws: Client,
    /// The `@ready` envelope.
    ready: Value,
}

impl V2 {
    /// Connects offering `protocols`, expects `emitws.v2` and reads `@ready`.
    fn connect(addr: std::net::SocketAddr, protocols: &str) -> V2 {
        let (stream, reply, rest) = http(addr, &upgrade_request("/", &[("Sec-WebSocket-Protocol", protocols)]));
        assert_eq!(reply.status, 101, "{reply:?}");
        assert_eq!(reply.header("sec-websocket-protocol"), Some("emitws.v2"), "offered {protocols}");
        let mut v2 = V2 { ws: Client::from_parts(stream, rest), ready: Value::Null };
        v2.ready = v2.text();
        assert_eq!(v2.ready[1], "@ready", "{}", v2.ready);
        v2
    }

    /// The socket's id, from its `@ready`.
    fn id(&self) -> SocketId {
        self.ready[2]["socket"].as_str().expect("a socket id").parse().expect("a socket id")
    }

    fn frame(&mut self) -> Frame {
        loop {
            match self.ws.recv() {
                Frame::Ping(payload) => self.ws.send(emitws::proto::OpCode::Pong, true, &payload),
                frame => return frame,
            }
        }
    }

    fn binary(&mut self) -> Vec<u8> {
        match self.frame() {
            Frame::Binary(bytes) => bytes,
            other => panic!("expected a binary envelope, got {other:?}"),
        }
    }

    fn text(&mut self) -> Value {
        match self.frame() {
            Frame::Text(text) => serde_json::from_str(&text).expect("JSON"),
            other => panic!("expected a text envelope, got {other:?}"),
        }
    }

    fn expect_silence(&mut self) {
        match self.ws.try_recv_within(common::ms(150)) {
            Err(RecvError::Timeout) => {}
            other => panic!("expected nothing, got {other:?}"),
        }
    }
}

/// `[type][id as LEB128][name length][name][payload]`, written out by hand.
fn envelope(kind: u8, id: &[u8], name: &str, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![kind];
    out.extend_from_slice(id);
    if !name.is_empty() {
        out.push(name.len() as u8);
        out.extend_from_slice(name.as_bytes());
    }
    out.extend_from_slice(payload);
    out
}

fn all_bytes() -> Vec<u8> {
    (0..=255u8).cycle().take(1000).collect()
}

fn binary_app() -> App {
    let mut app = App::new();
    app.on("/echo", |req| match req.binary().map(<[u8]>::to_vec) {
        Some(bytes) => req.reply_binary(&bytes),
        None => req.reply_err("bad_request", "binary only"),
    });
    app.on("/len", |req| {
        let len = req.binary().map(<[u8]>::len);
        req.reply(&json!({ "len": len, "v2": req.speaks_binary() }));
    });
    app.on("/later", |req| {
        let bytes = req.binary().unwrap_or_default().to_vec();
        let reply = req.defer();
        std::thread::spawn(move || reply.reply_binary(&bytes));
    });
    app.on("/join", |req| {
        let _ = req.join("#r");
        req.reply(&true);
    });
    app.on("/iam", |req| {
        let user: String = req.data().unwrap_or_default();
        let set = req.set_user(&user);
        req.reply(&set);
    });
    app.on("/share", |req| {
        let bytes = req.binary().unwrap_or(b"json").to_vec();
        let _ = req.broadcast_binary("/shared", &bytes, BroadcastOpts::to("#r"));
        let _ = req.emit_binary("/mine", &bytes);
    });
    app
}

#[test]
fn emitws_v2_is_chosen_whenever_offered_and_v1_stays_as_it_was() {
    let running = start(binary_app(), 1);
    let addr = running.local_addr();
    V2::connect(addr, "emitws.v2, emitws.v1");
    V2::connect(addr, "emitws.v1, emitws.v2");
    V2::connect(addr, "emitws.v2");
    let (_, reply, _) = http(addr, &upgrade_request("/", &[("Sec-WebSocket-Protocol", "emitws.v1")]));
    assert_eq!(reply.header("sec-websocket-protocol"), Some("emitws.v1"));
    let (_, reply, _) = http(addr, &upgrade_request("/", &[("Sec-WebSocket-Protocol", "chat")]));
    assert_eq!(reply.status, 400);
    let body = reply.body_text();
    assert!(body.contains("emitws.v1") && body.contains("emitws.v2"), "{body}");
    // A binary frame on v1: today's behaviour, an `@error` and the socket goes on.
    let mut v1 = AppClient::connect(addr);
    v1.ws.send_binary(&envelope(1, &[1], "/echo", b"x"));
    let message = v1.expect_error_event("bad_request");
    assert!(message.contains("emitws.v1"), "{message}");
    assert_eq!(v1.request("/len", Value::Null), Ok(json!({ "len": null, "v2": false })));
    v1.close();
    running.close();
}

#[test]
fn binary_requests_reach_handlers_and_middleware_and_get_binary_replies() {
    let mut app = binary_app();
    let seen = Arc::new(AtomicUsize::new(0));
    let counted = seen.clone();
    app.middleware(move |req, next| {
        counted.fetch_add(req.binary().map_or(0, <[u8]>::len), Ordering::SeqCst);
        match req.binary() {
            Some([0xff, ..]) => req.reply_err("forbidden", "no 0xff first"),
            _ => next.run(req),
        }
    });
    let running = start(app, 1);
    let mut v2 = V2::connect(running.local_addr(), "emitws.v2, emitws.v1");
    let bytes = all_bytes();
    // Request 300 (LEB128 ac 02) to /echo: the reply is [2][ac 02][bytes].
    v2.ws.send_binary(&envelope(1, &[0xac, 0x02], "/echo", &bytes));
    assert_eq!(v2.binary(), [&[2u8, 0xac, 0x02][..], &bytes].concat());
    // A JSON reply to a binary request; an empty payload; a binary event.
    v2.ws.send_binary(&envelope(1, &[7], "/len", &[1, 2, 3]));
    assert_eq!(v2.text(), json!([2, 7, { "len": 3, "v2": true }]));
    v2.ws.send_binary(&envelope(1, &[8], "/len", &[]));
    assert_eq!(v2.text(), json!([2, 8, { "len": 0, "v2": true }]));
    // JSON envelopes are unchanged on v2.
    v2.ws.send_text(r#"[1,9,"/len"]"#);
    assert_eq!(v2.text(), json!([2, 9, { "len": null, "v2": true }]));
    // Middleware sees the bytes and may refuse them.
    v2.ws.send_binary(&envelope(1, &[10], "/echo", &[0xff, 0]));
    assert_eq!(v2.text()[2]["code"], "forbidden");
    eventually("the middleware counted every payload", || seen.load(Ordering::SeqCst) == 1000 + 3 + 2);
    // A deferred binary reply, from another thread.
    v2.ws.send_binary(&envelope(1, &[0x80, 0x01], "/later", b"late"));
    assert_eq!(v2.binary(), [&[2u8, 0x80, 0x01][..], b"late"].concat());
    // Nobody handles it: no_handler, with the id.
    v2.ws.send_binary(&envelope(1, &[11], "/nope", b"?"));
    assert_eq!(v2.text(), json!([3, 11, { "code": "no_handler", "message": "no handler for /nope" }]));
    running.close();
}

#[test]
fn binary_broadcasts_reach_v1_sockets_as_base64_and_v2_sockets_as_bytes() {
    let running = start(binary_app(), 2);
    let addr = running.local_addr();
    let mut v1 = AppClient::connect(addr);
    assert_eq!(v1.request("/join", Value::Null), Ok(json!(true)));
    let mut v2 = V2::connect(addr, "emitws.v2");
    v2.ws.send_text(r#"[1,1,"/join"]"#);
    assert_eq!(v2.text(), json!([2, 1, true]));
    let rust = RustClient::connect(&format!("ws://{addr}/"), AppOptions::default().binary(true)).expect("connect");
    let got = Arc::new(Mutex::new(Vec::new()));
    let sink = got.clone();
    rust.on_binary("/shared", move |event, bytes| sink.lock().unwrap().push((event.to_string(), bytes.to_vec())));
    assert_eq!(rust.request("/join", Value::Null, WAIT), Ok(json!(true)));
    // The v2 raw socket sends a binary event: the others in #r get it, the
    // sender gets its own `/mine`.
    let bytes = all_bytes();
    v2.ws.send_binary(&envelope(0, &[], "/share", &bytes));
    let mut mine = vec![0u8, 5];
    mine.extend_from_slice(b"/mine");
    mine.extend_from_slice(&bytes);
    assert_eq!(v2.binary(), mine);
    let shared = v1.expect_event("/shared");
    use base64::Engine as _;
    let decoded = base64::engine::general_purpose::STANDARD.decode(shared["base64"].as_str().expect("base64"));
    assert_eq!(decoded.as_deref(), Ok(&bytes[..]));
    eventually("the Rust client got the bytes", || got.lock().unwrap().len() == 1);
    assert_eq!(got.lock().unwrap()[0], ("/shared".to_string(), bytes.clone()));
    // The app broadcasts to everyone; the v1 sender's own event (JSON) too.
    running.app().broadcast_binary("/all", &[9, 9], BroadcastOpts::all()).expect("broadcast");
    assert_eq!(v2.binary(), [&[0u8, 4][..], b"/all", &[9, 9]].concat());
    assert_eq!(v1.expect_event("/all"), json!({ "base64": "CQk=" }));
    v1.emit("/share", Value::Null);
    assert_eq!(v1.expect_event("/mine"), json!({ "base64": "anNvbg==" }));
    assert_eq!(v2.binary(), [&[0u8, 7][..], b"/shared", b"json"].concat());
    // Names a binary header cannot carry are refused before anything is sent.
    let long = format!("/{}", "x".repeat(255));
    assert!(matches!(
        running.app().broadcast_binary(&long, &[1], BroadcastOpts::all()),
        Err(emitws::app::Error::BinaryName(_))
    ));
    v2.expect_silence();
    v1.close();
    rust.close();
    running.close();
}

#[test]
fn the_rust_client_sends_binary_requests_and_events() {
    let running = start(binary_app(), 1);
    let url = format!("ws://{}/", running.local_addr());
    let client = RustClient::connect(&url, AppOptions::default().binary(true)).expect("connect");
    let bytes = all_bytes();
    assert_eq!(client.request_binary("/echo", &bytes, WAIT), Ok(Payload::Binary(bytes.clone())));
    assert_eq!(client.request_binary("/later", b"abc", WAIT), Ok(Payload::Binary(b"abc".to_vec())));
    assert_eq!(client.request_binary("/len", &[1, 2], WAIT), Ok(Payload::Json(json!({ "len": 2, "v2": true }))));
    // `request` reads a binary reply as the v1 form.
    assert_eq!(client.request("/echo", Value::Null, WAIT).unwrap_err().code(), "bad_request");
    let mine = Arc::new(Mutex::new(Vec::new()));
    let sink = mine.clone();
    client.on_binary("/mine", move |_, bytes| sink.lock().unwrap().push(bytes.to_vec()));
    client.emit_binary("/share", &[1, 2, 3]).expect("emit");
    eventually("the client got /mine", || mine.lock().unwrap().as_slice() == [vec![1, 2, 3]]);
    // Without a binary listener, JSON listeners get `{"base64"}`.
    client.off_all("/mine");
    let json_seen = Arc::new(Mutex::new(Vec::new()));
    let sink = json_seen.clone();
    client.on("/mine", move |_, data| sink.lock().unwrap().push(data.clone()));
    client.emit_binary("/share", &[0xff]).expect("emit");
    eventually("a JSON listener got it", || json_seen.lock().unwrap().as_slice() == [json!({ "base64": "/w==" })]);
    assert!(matches!(client.emit_binary(&format!("/{}", "y".repeat(300)), &[]), Err(AppError::NotBinary(_))));
    client.close();
    // A v1 client cannot send binary; a binary reply to it reads as base64.
    let v1 = RustClient::connect(&url, AppOptions::default()).expect("connect");
    assert!(matches!(v1.emit_binary("/share", &[1]), Err(AppError::NotBinary(_))));
    assert!(matches!(v1.request_binary("/echo", &[1], WAIT), Err(AppError::NotBinary(_))));
    v1.close();
    running.close();
}

#[test]
fn deferred_and_direct_binary_replies_reach_v1_sockets_as_base64() {
    let mut app = binary_app();
    app.on("/bytes", |req| req.reply_binary(&[0, 1, 2]));
    app.on("/bytes-later", |req| {
        let reply = req.defer();
        std::thread::spawn(move || reply.reply_binary(&[3, 4]));
    });
    let running = start(app, 1);
    let mut v1 = AppClient::connect(running.local_addr());
    assert_eq!(v1.request("/bytes", Value::Null), Ok(json!({ "base64": "AAEC" })));
    assert_eq!(v1.request("/bytes-later", Value::Null), Ok(json!({ "base64": "AwQ=" })));
    v1.close();
    running.close();
}

#[test]
fn bad_binary_headers_get_bad_request_and_the_socket_goes_on() {
    let running = start(binary_app(), 1);
    let mut v2 = V2::connect(running.local_addr(), "emitws.v2");
    let error_event = |v2: &mut V2| {
        let got = v2.text();
        assert_eq!(
            (got[0].clone(), got[1].clone(), got[2]["code"].clone()),
            (json!(0), json!("@error"), json!("bad_request"))
        );
    };
    // No id can be read: `@error`.
    for junk in [&[][..], &[1], &[1, 0x80], &[1, 0x00, 1, b'/'], &[1, 0x81, 0x00, 1, b'/'], &[2, 0], &[3]] {
        v2.ws.send_binary(junk);
        error_event(&mut v2);
    }
    // An event's name outside visible ASCII: no id to answer.
    v2.ws.send_binary(&envelope(0, &[], "/a b", b"x"));
    error_event(&mut v2);
    // An id over 2^53 - 1: 8 bytes of 0xff then 0x7f is far above.
    v2.ws.send_binary(&[1, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f, 1, b'/']);
    error_event(&mut v2);
    // A request's id can be read: an error reply.
    for (junk, id) in [
        (vec![1, 5], 5),
        (vec![1, 6, 0], 6),
        (vec![1, 7, 9, b'/'], 7),
        (vec![1, 8, 1, 0xc3], 8),
        (envelope(1, &[9], "nope", b"x"), 9),
        (envelope(1, &[10], "@resume", b"x"), 10),
        (envelope(1, &[13], "/a b", b"x"), 13),
        (envelope(1, &[14], "/\"q", b"x"), 14),
        (envelope(1, &[15], "/é", b"x"), 15),
    ] {
        v2.ws.send_binary(&junk);
        let got = v2.text();
        assert_eq!(
            (got[0].clone(), got[1].clone(), got[2]["code"].clone()),
            (json!(3), json!(id), json!("bad_request"))
        );
    }
    // Later types are ignored; a reply to nothing too.
    v2.ws.send_binary(&[5, 1, 2, 3]);
    v2.ws.send_binary(&[0xff]);
    v2.ws.send_binary(&[2, 42, 1]);
    v2.expect_silence();
    v2.ws.send_binary(&envelope(1, &[12], "/echo", b"ok"));
    assert_eq!(v2.binary(), [&[2u8, 12][..], b"ok"].concat());
    running.close();
}

#[test]
fn binary_frames_count_against_the_size_limit_the_rate_and_the_close_policy() {
    let mut app = binary_app();
    app.limits(EventLimits::default().max_message(100).rate(Some(Rate { per_second: 0.5, burst: 2.0 })));
    let running = start(app, 1);
    let mut v2 = V2::connect(running.local_addr(), "emitws.v2");
    v2.ws.send_binary(&envelope(1, &[1], "/echo", &[0; 100]));
    assert_eq!(v2.text()[2]["code"], "too_large");
    v2.ws.send_binary(&envelope(1, &[2], "/echo", &[0; 10]));
    assert_eq!(v2.binary(), [&[2u8, 2][..], &[0; 10]].concat());
    v2.ws.send_binary(&envelope(1, &[3], "/echo", &[1]));
    let over = v2.text();
    assert_eq!(
        (over[0].clone(), over[1].clone(), over[2]["code"].clone()),
        (json!(3), json!(3), json!("rate_limited"))
    );
    running.close();

    let mut app = binary_app();
    app.limits(EventLimits::default().on_bad_input(Policy::Close));
    let running = start(app, 1);
    let mut v2 = V2::connect(running.local_addr(), "emitws.v2");
    v2.ws.send_binary(&[1, 0x80]);
    v2.ws.expect_close(1008);
    running.close();
}

#[test]
fn a_binary_answer_to_a_server_call_gives_its_bytes_and_reads_as_base64() {
    let answer = Arc::new(Mutex::new(None));
    let mut app = binary_app();
    let sink = answer.clone();
    app.on("/ask", move |req| {
        let sink = sink.clone();
        let _ = req.call("photo", &Value::Null, Duration::from_secs(2), move |result| {
            let answer = result.map(|reply| (reply.raw().to_string(), reply.binary().map(<[u8]>::to_vec)));
            *sink.lock().unwrap() = Some(answer.map_err(|e| e.to_string()));
        });
    });
    let running = start(app, 1);
    let mut v2 = V2::connect(running.local_addr(), "emitws.v2");
    v2.ws.send_text(r#"[0,"/ask"]"#);
    let call = v2.text();
    assert_eq!((call[0].clone(), call[2].clone()), (json!(1), json!("photo")));
    let id = call[1].as_u64().expect("an id");
    assert!(id < 128, "one LEB128 byte");
    v2.ws.send_binary(&[2, id as u8, 0xde, 0xad]);
    eventually("the call was answered", || answer.lock().unwrap().is_some());
    let bytes = Some(vec![0xde, 0xad]);
    assert_eq!(answer.lock().unwrap().clone(), Some(Ok((r#"{"base64":"3q0="}"#.to_string(), bytes))));
    running.close();
}

#[cfg(feature = "redis")]
#[test]
fn a_binary_broadcast_crosses_the_cluster_to_v1_and_v2_sockets() {
    let Some(redis) = redis_server::Redis::start() else { return };
    let (a, b) = two_nodes::two_nodes(&redis, binary_app);
    let mut v2_on_a = V2::connect(a.addr(), "emitws.v2");
    v2_on_a.ws.send_text(r#"[1,1,"/join"]"#);
    assert_eq!(v2_on_a.text(), json!([2, 1, true]));
    let mut v1_on_a = AppClient::connect(a.addr());
    assert_eq!(v1_on_a.request("/join", Value::Null), Ok(json!(true)));
    let mut v2_on_b = V2::connect(b.addr(), "emitws.v2");
    v2_on_b.ws.send_text(r#"[1,1,"/join"]"#);
    assert_eq!(v2_on_b.text(), json!([2, 1, true]));
    // From a socket of b: its own /mine, then a's sockets get /shared.
    let bytes = all_bytes();
    v2_on_b.ws.send_binary(&envelope(0, &[], "/share", &bytes));
    assert_eq!(v2_on_b.binary(), [&[0u8, 5][..], b"/mine", &bytes].concat());
    assert_eq!(v2_on_a.binary(), [&[0u8, 7][..], b"/shared", &bytes].concat());
    let shared = v1_on_a.expect_event("/shared");
    use base64::Engine as _;
    let decoded = base64::engine::general_purpose::STANDARD.decode(shared["base64"].as_str().expect("base64"));
    assert_eq!(decoded.as_deref(), Ok(&bytes[..]));
    // From node a's handle, to everyone: once each, on both nodes.
    a.app().broadcast_binary("/all", &[0, 1], BroadcastOpts::all()).expect("broadcast");
    assert_eq!(v2_on_b.binary(), [&[0u8, 4][..], b"/all", &[0, 1]].concat());
    assert_eq!(v2_on_a.binary(), [&[0u8, 4][..], b"/all", &[0, 1]].concat());
    assert_eq!(v1_on_a.expect_event("/all"), json!({ "base64": "AAE=" }));
    v2_on_a.expect_silence();
    v2_on_b.expect_silence();
    v1_on_a.close();
    a.close();
    b.close();
}

#[test]
fn javascript_client_sends_and_receives_binary() {
    let mut app = binary_app();
    app.on("/ask-bytes", |req| {
        let reply = req.defer();
        let _ = reply.socket().call_then("photo", &Value::Null, Duration::from_secs(2), move |result| match result {
            Ok(answer) => reply.reply(&answer.data::<Value>().unwrap_or(Value::Null)),
            Err(e) => reply.reply_err("failed", &e.to_string()),
        });
    });
    // 200 requests in flight at once: over the default burst of the rate limit.
    app.limits(EventLimits::default().rate(Some(Rate { per_second: 1000.0, burst: 1000.0 })));
    let running = start(app, 2);
    node::run_node_tests("binary.test.js", &[("EMITWS_BINARY_URL", format!("ws://{}/", running.local_addr()))]);
    running.close();
}

/// The id in an `@ready`'s data.
fn ready_id(ready: &Value) -> SocketId {
    ready["socket"].as_str().expect("a socket id").parse().expect("a socket id")
}

#[test]
fn binary_events_reach_one_socket_or_a_users_devices_in_the_protocol_each_speaks() {
    let running = start(binary_app(), 2);
    let (addr, app) = (running.local_addr(), running.app());
    let mut v2 = V2::connect(addr, "emitws.v2");
    let mut v1 = AppClient::connect(addr);
    let v1_id = ready_id(v1.ready.as_ref().expect("ready"));
    let bytes = all_bytes();
    assert!(app.emit_binary_to(v2.id(), "/direct", &bytes).expect("a name that fits"));
    assert_eq!(v2.binary(), envelope(0, &[], "/direct", &bytes));
    assert!(app.socket(v1_id).emit_binary("/direct", &[0xde, 0xad]).expect("a name that fits"));
    assert_eq!(v1.expect_event("/direct"), json!({ "base64": "3q0=" }));
    // A user with a device of each protocol: this node's devices count.
    v2.ws.send_text(r#"[1,1,"/iam","ada"]"#);
    assert_eq!(v2.text(), json!([2, 1, true]));
    assert_eq!(v1.request("/iam", json!("ada")), Ok(json!(true)));
    assert_eq!(app.to_user("ada").emit_binary("/sync", &[1, 2, 3]).expect("a name that fits"), 2);
    assert_eq!(v2.binary(), envelope(0, &[], "/sync", &[1, 2, 3]));
    assert_eq!(v1.expect_event("/sync"), json!({ "base64": "AQID" }));
    // Names a binary header cannot carry: refused, nothing sent.
    let long = format!("/{}", "x".repeat(255));
    assert!(matches!(app.emit_binary_to(v2.id(), &long, &[1]), Err(emitws::app::Error::BinaryName(_))));
    assert!(matches!(app.to_user("ada").emit_binary("", &[1]), Err(emitws::app::Error::BinaryName(_))));
    // Where each socket is, asked from outside the workers.
    assert_eq!(app.socket(v2.id()).ready_state().wait(), Some(ReadyState::Open));
    assert_eq!(app.socket(v1_id).ready_state().wait(), Some(ReadyState::Open));
    v1.close();
    eventually("the closed socket is CLOSED", || app.socket(v1_id).ready_state().wait() == Some(ReadyState::Closed));
    let never: SocketId = "0-999999".parse().expect("a socket id");
    assert_eq!(app.socket(never).ready_state().wait(), Some(ReadyState::Closed));
    v2.expect_silence();
    running.close();
}

/// Opens a connection offering `protocol` that resumes with `token`.
fn resume_as(addr: std::net::SocketAddr, protocol: &str, token: &str) -> Client {
    let path = "/?user=ann&emitws_resume=1";
    let (stream, reply, rest) = http(addr, &upgrade_request(path, &[("Sec-WebSocket-Protocol", protocol)]));
    assert_eq!(reply.header("sec-websocket-protocol"), Some(protocol), "{reply:?}");
    let mut ws = Client::from_parts(stream, rest);
    ws.send_text(&json!([1, 1, "@resume", { "token": token, "rooms": {} }]).to_string());
    ws
}

#[test]
fn binary_events_kept_for_an_away_socket_come_in_the_protocol_it_resumes_with() {
    let mut app = binary_app();
    app.identify(|conn| Ok(conn.query_value("user").unwrap_or_default()));
    let running = start(app, 1);
    let (addr, app) = (running.local_addr(), running.app());
    let mut ann = AppClient::connect_to(addr, "/?user=ann", &[]).expect("upgraded");
    let ready = ann.wait_ready();
    let (id, token) = (ready_id(&ready), ready["resume"].as_str().expect("a token").to_string());
    drop(ann); // lost without a close: its session is kept
    eventually("ann is away", || app.socket(id).ready_state().wait() == Some(ReadyState::Connecting));
    assert!(app.emit_binary_to(id, "/held", &[1, 2]).expect("a name that fits"));
    assert_eq!(app.to_user("ann").emit_binary("/held", &[3]).expect("a name that fits"), 1);
    assert!(app.emit_to(id, "/json", "x").expect("JSON"));
    // Away as a v1 socket, back as a v2 one: the kept messages, in order,
    // before the resume's reply, binary ones as binary envelopes.
    let mut back = V2 { ws: resume_as(addr, "emitws.v2", &token), ready: Value::Null };
    assert_eq!(back.binary(), envelope(0, &[], "/held", &[1, 2]));
    assert_eq!(back.binary(), envelope(0, &[], "/held", &[3]));
    assert_eq!(back.text(), json!([0, "/json", "x"]));
    let reply = back.text();
    assert_eq!((&reply[1], &reply[2]["resumed"]), (&json!(1), &json!(true)), "{reply}");
    back.ready = back.text();
    assert_eq!(back.id(), id);
    assert_eq!(app.socket(id).ready_state().wait(), Some(ReadyState::Open));
    let token = back.ready[2]["resume"].as_str().expect("a fresh token").to_string();
    // Away as v2, back as v1: base64 in JSON.
    drop(back);
    eventually("ann is away again", || app.socket(id).ready_state().wait() == Some(ReadyState::Connecting));
    assert!(app.socket(id).emit_binary("/held", &[0xff]).expect("a name that fits"));
    // (Read as text frames: a v1 connection gets no binary frame.)
    let mut v1 = V2 { ws: resume_as(addr, "emitws.v1", &token), ready: Value::Null };
    assert_eq!(v1.text(), json!([0, "/held", { "base64": "/w==" }]));
    let reply = v1.text();
    assert_eq!(reply[2]["resumed"], true, "{reply}");
    running.close();
}

#[cfg(feature = "redis")]
#[test]
fn binary_events_calls_and_ready_states_reach_sockets_on_another_node() {
    let Some(redis) = redis_server::Redis::start() else { return };
    let (a, b) = two_nodes::two_nodes(&redis, binary_app);
    let mut v2 = V2::connect(a.addr(), "emitws.v2");
    let mut v1 = AppClient::connect(a.addr());
    let v1_id = ready_id(v1.ready.as_ref().expect("ready"));
    let mut v2_on_b = V2::connect(b.addr(), "emitws.v2");
    // From node b to sockets of node a, by id.
    let bytes = all_bytes();
    assert!(b.app().emit_binary_to(v2.id(), "/direct", &bytes).expect("a name that fits"));
    assert_eq!(v2.binary(), envelope(0, &[], "/direct", &bytes));
    assert!(b.app().socket(v1_id).emit_binary("/direct", &[0xde, 0xad]).expect("a name that fits"));
    assert_eq!(v1.expect_event("/direct"), json!({ "base64": "3q0=" }));
    // A user with devices on both nodes: each gets it once, in its protocol.
    for (n, socket) in [&mut v2, &mut v2_on_b].into_iter().enumerate() {
        socket.ws.send_text(&format!(r#"[1,{},"/iam","ada"]"#, n + 1));
        assert_eq!(socket.text(), json!([2, n + 1, true]));
    }
    assert_eq!(v1.request("/iam", json!("ada")), Ok(json!(true)));
    assert_eq!(b.app().to_user("ada").emit_binary("/sync", &[7]).expect("a name that fits"), 1);
    for socket in [&mut v2, &mut v2_on_b] {
        assert_eq!(socket.binary(), envelope(0, &[], "/sync", &[7]));
    }
    assert_eq!(v1.expect_event("/sync"), json!({ "base64": "Bw==" }));
    // A call from node b answered with bytes by a's v2 socket.
    let pending = b.app().socket(v2.id()).call("photo", &Value::Null, Duration::from_secs(5)).expect("JSON");
    let call = v2.text();
    assert_eq!((&call[0], &call[2]), (&json!(1), &json!("photo")), "{call}");
    let id = call[1].as_u64().expect("an id");
    assert!(id < 128, "one LEB128 byte");
    v2.ws.send_binary(&[2, id as u8, 0xca, 0xfe]);
    let reply = pending.wait().expect("answered");
    assert_eq!((reply.binary(), reply.raw()), (Some(&[0xca, 0xfe][..]), r#"{"base64":"yv4="}"#));
    // Where a's sockets are, asked from b.
    assert_eq!(b.app().socket(v2.id()).ready_state().wait(), Some(ReadyState::Open));
    v1.close();
    eventually("a's closed socket is CLOSED from b", || {
        b.app().socket(v1_id).ready_state().wait() == Some(ReadyState::Closed)
    });
    v2.expect_silence();
    v2_on_b.expect_silence();
    a.close();
    b.close();
}

#[test]
fn the_rust_clients_binary_procedures_answer_server_calls_with_bytes() {
    let mut app = binary_app();
    // Calls the client's `photo` and answers what came: the bytes, or the JSON.
    app.on("/ask", |req| {
        let reply = req.defer();
        let _ = reply.socket().call_then("photo", &Value::Null, WAIT, move |result| match result {
            Ok(answer) => reply.reply(&json!({ "bytes": answer.binary(), "json": answer.raw() })),
            Err(e) => reply.reply_err("failed", &e.to_string()),
        });
    });
    let running = start(app, 1);
    let url = format!("ws://{}/", running.local_addr());
    for (binary, json) in [(true, r#"{"base64":"AP8="}"#), (false, r#"{"base64":"AP8="}"#)] {
        let client = RustClient::connect(&url, AppOptions::default().binary(binary)).expect("connect");
        client.register_binary("photo", |_| Ok(vec![0x00, 0xff]));
        let bytes = if binary { json!([0, 255]) } else { Value::Null };
        let answer = client.request("/ask", Value::Null, WAIT).expect("answered");
        assert_eq!(answer, json!({ "bytes": bytes, "json": json }), "binary {binary}");
        // A failing binary procedure is an execution_failed error, as a JSON one.
        client.register_binary("photo", |_| Err("no camera".into()));
        let failed = client.request("/ask", Value::Null, WAIT).expect_err("failed");
        assert!(failed.to_string().contains("no camera"), "{failed}");
        client.close();
    }
    running.close();
}
