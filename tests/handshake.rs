//! The upgrade handshake over real loopback sockets: accepting, negotiating,
//! rejecting, plain HTTP, and requests that are slow, huge or malformed.

mod common;

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use base64::Engine as _;
use common::*;
use emitws::proto::handshake::server::HttpRequest;
use emitws::proto::{Message, OpCode};
use emitws::runtime::{Accept, Conn, Handler, HttpResponse, OriginPolicy, Reject, UpgradeRequest};
use sha1::{Digest, Sha1};

/// Expects `request` to be answered with `status` and the connection then closed.
fn expect_refusal(addr: SocketAddr, request: &[u8], status: u16) -> HttpReply {
    let (mut stream, reply, rest) = http(addr, request);
    assert_eq!(reply.status, status, "reply to {:?}: {reply:?}", String::from_utf8_lossy(request));
    assert!(rest.is_empty(), "bytes after the response: {rest:?}");
    assert_eq!(reply.header("connection"), Some("close"));
    expect_closed_raw(&mut stream, WAIT);
    reply
}

#[test]
fn good_upgrade_gets_101_with_the_right_accept_key() {
    let echo = Echo::default();
    let server = quick_server().start("127.0.0.1:0", echo.clone()).unwrap();
    let addr = server.local_addr();

    // The RFC's own example key.
    let (stream, reply, rest) = http(addr, &upgrade_request("/chat", &[]));
    assert_eq!(reply.status, 101, "{reply:?}");
    assert_eq!(reply.header("sec-websocket-accept"), Some(SAMPLE_ACCEPT));
    assert!(reply.header("upgrade").is_some_and(|v| v.eq_ignore_ascii_case("websocket")));
    assert!(reply.header("connection").is_some_and(|v| v.eq_ignore_ascii_case("upgrade")));
    assert_eq!(reply.header("sec-websocket-protocol"), None, "no subprotocol was chosen");
    let mut client = Client::from_parts(stream, rest);
    client.echo("hello");

    // Another key, the expected answer computed here from scratch.
    let key = base64::engine::general_purpose::STANDARD.encode(*b"0123456789abcdef");
    let mut sha = Sha1::new();
    sha.update(key.as_bytes());
    sha.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    let expected = base64::engine::general_purpose::STANDARD.encode(sha.finalize());
    let request = format!(
        "GET / HTTP/1.1\r\nhost: x\r\nupgrade: WebSocket\r\nconnection: keep-alive, Upgrade\r\n\
         sec-websocket-key: {key}\r\nsec-websocket-version: 13\r\n\r\n"
    );
    let (stream, reply, rest) = http(addr, request.as_bytes());
    assert_eq!(reply.status, 101, "{reply:?}");
    assert_eq!(reply.header("sec-websocket-accept"), Some(expected.as_str()));
    Client::from_parts(stream, rest).echo("again");

    assert_eq!(echo.events.snapshot().opened.len(), 2);
    server.shutdown();
}

/// Accepts with the subprotocol `choice`, recording what the client offered.
#[derive(Clone)]
struct PickProtocol {
    choice: &'static str,
    offered: Arc<Mutex<Vec<String>>>,
}

impl Handler for PickProtocol {
    type Data = ();

    fn on_upgrade(&mut self, request: &UpgradeRequest<'_>) -> Result<Accept<()>, Reject> {
        *self.offered.lock().unwrap() = request.protocols().map(String::from).collect();
        Ok(Accept::new(()).protocol(self.choice))
    }

    fn on_message(&mut self, conn: &mut Conn<'_, ()>, message: Message<'_>) {
        let _ = conn.send_binary(message.as_bytes());
    }
}

#[test]
fn subprotocol_chosen_from_the_offer_is_confirmed() {
    let handler = PickProtocol { choice: "superchat", offered: Arc::default() };
    let server = quick_server().start("127.0.0.1:0", handler.clone()).unwrap();
    let request =
        upgrade_request("/", &[("Sec-WebSocket-Protocol", "chat, superchat"), ("Sec-WebSocket-Protocol", "v3")]);
    let (stream, reply, rest) = http(server.local_addr(), &request);
    assert_eq!(reply.status, 101, "{reply:?}");
    assert_eq!(reply.header("sec-websocket-protocol"), Some("superchat"));
    assert_eq!(*handler.offered.lock().unwrap(), ["chat", "superchat", "v3"]);
    let mut client = Client::from_parts(stream, rest);
    client.send_binary(b"\x00\x01");
    assert_eq!(client.recv(), Frame::Binary(vec![0, 1]));
    server.shutdown();
}

#[test]
fn subprotocol_not_offered_is_left_out() {
    let handler = PickProtocol { choice: "mqtt", offered: Arc::default() };
    let server = quick_server().start("127.0.0.1:0", handler.clone()).unwrap();
    let request = upgrade_request("/", &[("Sec-WebSocket-Protocol", "chat, superchat")]);
    let (stream, reply, rest) = http(server.local_addr(), &request);
    assert_eq!(reply.status, 101, "the upgrade still succeeds: {reply:?}");
    assert_eq!(reply.header("sec-websocket-protocol"), None, "a protocol the client did not offer");
    Client::from_parts(stream, rest).send_binary(b"x");
    // Without any offer at all, the choice is left out too.
    let (_stream, reply, _) = http(server.local_addr(), &upgrade_request("/", &[]));
    assert_eq!(reply.status, 101);
    assert_eq!(reply.header("sec-websocket-protocol"), None);
    server.shutdown();
}

/// What `on_upgrade` saw of the request.
#[derive(Clone, Debug, Default, PartialEq)]
struct Seen {
    path: String,
    query: Option<String>,
    token: Option<String>,
    user_agent_headers: usize,
    peer: Option<SocketAddr>,
}

#[derive(Clone, Default)]
struct Inspect {
    seen: Arc<Mutex<Option<Seen>>>,
}

impl Handler for Inspect {
    type Data = String;

    fn on_upgrade(&mut self, request: &UpgradeRequest<'_>) -> Result<Accept<String>, Reject> {
        let token = request.header("X-Token").map(|v| String::from_utf8_lossy(v).into_owned());
        let seen = Seen {
            path: request.path().to_string(),
            query: request.query().map(String::from),
            token: token.clone(),
            user_agent_headers: request.request().header_values("user-agent").count(),
            peer: request.peer_addr(),
        };
        *self.seen.lock().unwrap() = Some(seen);
        Ok(Accept::new(token.unwrap_or_default()))
    }

    fn on_message(&mut self, conn: &mut Conn<'_, String>, _message: Message<'_>) {
        // Proves the accepted data reached the connection.
        let data = conn.data().clone();
        let _ = conn.send_text(&data);
    }
}

#[test]
fn path_query_and_headers_are_visible_in_on_upgrade() {
    let handler = Inspect::default();
    let server = quick_server().start("127.0.0.1:0", handler.clone()).unwrap();
    let request =
        upgrade_request("/rooms/42?user=ann&x=%20", &[("x-token", "s3cret"), ("User-Agent", "a"), ("User-Agent", "b")]);
    let (stream, reply, rest) = http(server.local_addr(), &request);
    assert_eq!(reply.status, 101, "{reply:?}");
    let local = stream.local_addr().unwrap();
    let mut client = Client::from_parts(stream, rest);
    client.send_text("whoami");
    assert_eq!(client.recv(), Frame::text("s3cret"), "Accept::new(data) is the connection's data");
    let seen = handler.seen.lock().unwrap().clone().expect("on_upgrade ran");
    assert_eq!(
        seen,
        Seen {
            path: "/rooms/42".into(),
            query: Some("user=ann&x=%20".into()),
            token: Some("s3cret".into()),
            user_agent_headers: 2,
            peer: Some(local),
        }
    );
    server.shutdown();
}

/// Rejects `/missing` with 404 and `/private` without the right token with 401.
#[derive(Clone, Default)]
struct Gate {
    events: Echo,
}

impl Handler for Gate {
    type Data = String;

    fn on_upgrade(&mut self, request: &UpgradeRequest<'_>) -> Result<Accept<String>, Reject> {
        match request.path() {
            "/missing" => Err(Reject::status(404)),
            "/private" if request.header("authorization") != Some(b"Bearer ok") => {
                Err(Reject { status: 401, body: "token required".into() })
            }
            path => Ok(Accept::new(path.to_string())),
        }
    }

    fn on_open(&mut self, conn: &mut Conn<'_, String>) {
        self.events.on_open(conn);
    }

    fn on_message(&mut self, conn: &mut Conn<'_, String>, message: Message<'_>) {
        self.events.on_message(conn, message);
    }

    fn on_close(&mut self, conn: &mut Conn<'_, String>, reason: &emitws::proto::CloseReason) {
        self.events.on_close(conn, reason);
    }
}

#[test]
fn on_upgrade_can_reject_with_404_and_401() {
    let gate = Gate::default();
    let server = quick_server().start("127.0.0.1:0", gate.clone()).unwrap();
    let addr = server.local_addr();

    let reply = expect_refusal(addr, &upgrade_request("/missing", &[]), 404);
    assert_eq!(reply.body_text(), "Not Found");
    let reply = expect_refusal(addr, &upgrade_request("/private", &[]), 401);
    assert_eq!(reply.body_text(), "token required");
    let reply = expect_refusal(addr, &upgrade_request("/private", &[("Authorization", "Bearer no")]), 401);
    assert_eq!(reply.header("content-length"), Some("14"));
    assert!(gate.events.events.snapshot().opened.is_empty(), "a rejected upgrade never opens");

    let (stream, reply, rest) = http(addr, &upgrade_request("/private", &[("Authorization", "Bearer ok")]));
    assert_eq!(reply.status, 101, "{reply:?}");
    Client::from_parts(stream, rest).echo("in");
    let record = gate.events.events.snapshot();
    assert_eq!(record.opened.iter().map(|(_, tag)| tag.as_str()).collect::<Vec<_>>(), ["/private"]);
    server.shutdown();
    assert!(gate.events.events.snapshot().closed.iter().all(|(id, _)| *id == record.opened[0].0));
}

#[test]
fn origin_outside_the_allow_list_gets_403() {
    let echo = Echo::default();
    let origins = OriginPolicy::List(vec!["https://good.example".into()]);
    let server = quick_server().origins(origins).start("127.0.0.1:0", echo.clone()).unwrap();
    let addr = server.local_addr();

    let reply = expect_refusal(addr, &upgrade_request("/", &[("Origin", "https://evil.example")]), 403);
    assert!(reply.body_text().contains("origin"), "{reply:?}");
    expect_refusal(addr, &upgrade_request("/", &[("Origin", "https://good.example.evil")]), 403);
    assert!(echo.events.snapshot().opened.is_empty());

    let (stream, reply, rest) = http(addr, &upgrade_request("/", &[("Origin", "https://GOOD.example")]));
    assert_eq!(reply.status, 101, "listed origins match ASCII case-insensitively: {reply:?}");
    Client::from_parts(stream, rest).echo("ok");
    let (stream, reply, rest) = http(addr, &upgrade_request("/", &[]));
    assert_eq!(reply.status, 101, "no Origin (a non-browser client) is allowed: {reply:?}");
    Client::from_parts(stream, rest).echo("ok");
    server.shutdown();
}

/// Serves `/healthz` over plain HTTP; anything else falls back to the default.
#[derive(Clone)]
struct Health;

impl Handler for Health {
    type Data = ();

    fn on_message(&mut self, _conn: &mut Conn<'_, ()>, _message: Message<'_>) {}

    fn on_http(&mut self, request: &HttpRequest<'_>) -> Option<HttpResponse> {
        (request.path() == "/healthz").then(|| {
            let mut response = HttpResponse::new(200, "text/plain", "ok");
            response.headers.push(("X-Served-By".into(), "emitws".into()));
            response
        })
    }
}

#[test]
fn plain_http_request_gets_the_on_http_response() {
    let server = quick_server().start("127.0.0.1:0", Health).unwrap();
    let reply = expect_refusal(server.local_addr(), b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n", 200);
    assert_eq!(reply.body_text(), "ok");
    assert_eq!(reply.header("content-type"), Some("text/plain"));
    assert_eq!(reply.header("x-served-by"), Some("emitws"));
    // on_http returning None falls back to 426.
    let reply = expect_refusal(server.local_addr(), b"GET /other HTTP/1.1\r\nHost: x\r\n\r\n", 426);
    assert_eq!(reply.header("upgrade"), Some("websocket"));
    server.shutdown();
}

#[test]
fn plain_http_request_without_on_http_gets_426() {
    let server = quick_server().start("127.0.0.1:0", Echo::default()).unwrap();
    let reply = expect_refusal(server.local_addr(), b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n", 426);
    assert_eq!(reply.header("upgrade"), Some("websocket"));
    assert_eq!(reply.header("sec-websocket-version"), Some("13"));
    server.shutdown();
}

#[test]
fn bytes_right_behind_the_request_are_not_lost() {
    let server = quick_server().start("127.0.0.1:0", Echo::default()).unwrap();
    let mut stream = connect(server.local_addr());
    // The request and three frames, all in one write.
    let mut bytes = upgrade_request("/", &[]);
    bytes.extend(masked_frame(OpCode::Text, true, b"early"));
    bytes.extend(masked_frame(OpCode::Ping, true, b"p"));
    bytes.extend(masked_frame(OpCode::Binary, true, &[7; 300]));
    stream.write_all(&bytes).unwrap();
    let (reply, rest) = read_reply(&mut stream);
    assert_eq!(reply.status, 101, "{reply:?}");
    let mut client = Client::from_parts(stream, rest);
    assert_eq!(client.recv(), Frame::text("early"));
    assert_eq!(client.recv(), Frame::Pong(b"p".to_vec()));
    assert_eq!(client.recv(), Frame::Binary(vec![7; 300]));
    client.close(1000);
    server.shutdown();
}

/// Greets (and names the peer) in `on_open`; closes on `bye`.
#[derive(Clone)]
struct Greeter;

impl Handler for Greeter {
    type Data = ();

    fn on_open(&mut self, conn: &mut Conn<'_, ()>) {
        let _ = conn.send_text("welcome");
        let peer = conn.peer_addr().map(|peer| peer.to_string()).unwrap_or_default();
        let _ = conn.send_binary(peer.as_bytes());
    }

    fn on_message(&mut self, conn: &mut Conn<'_, ()>, message: Message<'_>) {
        if message.as_bytes() == b"bye" {
            conn.close(emitws::proto::CloseCode(4000), "as you wish");
        }
    }
}

#[test]
fn on_open_sends_go_out_right_after_the_101() {
    let server = quick_server().start("127.0.0.1:0", Greeter).unwrap();
    // The request and a message in one write: the greeting still comes first.
    let mut stream = connect(server.local_addr());
    let mut bytes = upgrade_request("/", &[]);
    bytes.extend(masked_frame(OpCode::Text, true, b"bye"));
    stream.write_all(&bytes).unwrap();
    let (reply, rest) = read_reply(&mut stream);
    assert_eq!(reply.status, 101, "{reply:?}");
    let local = stream.local_addr().unwrap().to_string();
    let mut client = Client::from_parts(stream, rest);
    assert_eq!(client.recv(), Frame::text("welcome"));
    assert_eq!(client.recv(), Frame::Binary(local.into_bytes()), "Conn::peer_addr");
    assert_eq!(client.expect_close(4000), "as you wish");
    client.send_close(4000, "");
    client.expect_eof();
    server.shutdown();
}

// ---- slowloris and malformed requests ----

#[test]
fn silent_connection_is_closed_at_the_handshake_deadline() {
    let server = quick_server().handshake_timeout(ms(300)).start("127.0.0.1:0", Echo::default()).unwrap();
    let start = Instant::now();
    let mut stream = connect(server.local_addr());
    let handle = server.handle();
    wait_connection_count(&handle, 1);
    expect_closed_raw(&mut stream, WAIT);
    // The timer rounds to 10 ms ticks; never meaningfully early.
    assert!(start.elapsed() >= ms(250), "closed after {:?}, before the deadline", start.elapsed());
    wait_connection_count(&handle, 0);
    server.shutdown();
}

#[test]
fn trickled_request_is_closed_at_the_handshake_deadline() {
    let server = quick_server().handshake_timeout(ms(300)).start("127.0.0.1:0", Echo::default()).unwrap();
    let request = upgrade_request("/", &[("X-Padding", "a long header to take a long time to arrive")]);
    let mut stream = connect(server.local_addr());
    stream.set_read_timeout(Some(ms(15))).unwrap();
    let start = Instant::now();
    let mut sent = 0;
    // One byte per segment, ~15 ms apart: the whole request would take seconds.
    let closed = loop {
        if start.elapsed() > WAIT {
            break false;
        }
        if sent < request.len() {
            match stream.write(&request[sent..sent + 1]) {
                Ok(n) => sent += n,
                Err(_) => break true,
            }
        }
        let mut buf = [0; 256];
        match stream.read(&mut buf) {
            Ok(0) => break true,
            Ok(n) => panic!("unexpected reply to a partial request: {:?}", String::from_utf8_lossy(&buf[..n])),
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(_) => break true,
        }
    };
    assert!(closed, "the trickling connection was still open after {WAIT:?} ({sent} bytes sent)");
    assert!(sent < request.len(), "the whole request got out before the deadline; the test proves nothing");
    assert!(start.elapsed() >= ms(250), "closed after {:?}, before the deadline", start.elapsed());
    wait_connection_count(&server.handle(), 0);
    server.shutdown();
}

#[test]
fn partial_request_then_close_is_cleaned_up_at_once() {
    // A long handshake timeout: only noticing the FIN cleans these up in time.
    let server = quick_server().handshake_timeout(ms(60_000)).start("127.0.0.1:0", Echo::default()).unwrap();
    let handle = server.handle();
    for cut in [1, 20, 60] {
        let mut stream = connect(server.local_addr());
        stream.write_all(&upgrade_request("/", &[])[..cut]).unwrap();
        drop(stream);
    }
    wait_connection_count(&handle, 0);
    server.shutdown();
}

#[test]
fn oversized_request_head_gets_431() {
    let server = quick_server().max_request_bytes(1024).start("127.0.0.1:0", Echo::default()).unwrap();
    let big = "x".repeat(2000);
    expect_refusal(server.local_addr(), &upgrade_request("/", &[("X-Big", &big)]), 431);
    // Just under the limit is fine.
    let fits = "x".repeat(1024 - upgrade_request("/", &[("X-Big", "")]).len());
    let (_stream, reply, _) = http(server.local_addr(), &upgrade_request("/", &[("X-Big", &fits)]));
    assert_eq!(reply.status, 101, "{reply:?}");
    server.shutdown();
}

#[test]
fn too_many_headers_get_431() {
    let server = quick_server().max_headers(10).start("127.0.0.1:0", Echo::default()).unwrap();
    let names: Vec<String> = (0..20).map(|i| format!("X-Extra-{i}")).collect();
    let extra: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), "1")).collect();
    expect_refusal(server.local_addr(), &upgrade_request("/", &extra), 431);
    // The five upgrade headers plus five more make exactly ten.
    let (_stream, reply, _) = http(server.local_addr(), &upgrade_request("/", &extra[..5]));
    assert_eq!(reply.status, 101, "{reply:?}");
    server.shutdown();
}

fn request_with(key: &str, version: &str, host: bool, connection: &str) -> Vec<u8> {
    let host = if host { "Host: 127.0.0.1\r\n" } else { "" };
    format!(
        "GET / HTTP/1.1\r\n{host}Upgrade: websocket\r\nConnection: {connection}\r\n\
         Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: {version}\r\n\r\n"
    )
    .into_bytes()
}

#[test]
fn bad_key_gets_400() {
    let server = quick_server().start("127.0.0.1:0", Echo::default()).unwrap();
    let addr = server.local_addr();
    for key in ["short", "dGhlIHNhbXBsZSBub25jZQ", "dGhlIHNhbXBsZSBub25jZXh4eA==", "!!!!!!!!!!!!!!!!!!!!!!=="] {
        let reply = expect_refusal(addr, &request_with(key, "13", true, "Upgrade"), 400);
        assert!(reply.body_text().contains("Key"), "{key}: {reply:?}");
    }
    // Two keys are refused too.
    expect_refusal(addr, &upgrade_request("/", &[("Sec-WebSocket-Key", SAMPLE_KEY)]), 400);
    server.shutdown();
}

#[test]
fn wrong_version_gets_426_naming_version_13() {
    let server = quick_server().start("127.0.0.1:0", Echo::default()).unwrap();
    for version in ["8", "12", "14", "abc"] {
        let reply = expect_refusal(server.local_addr(), &request_with(SAMPLE_KEY, version, true, "Upgrade"), 426);
        assert_eq!(reply.header("sec-websocket-version"), Some("13"), "{version}: {reply:?}");
    }
    server.shutdown();
}

#[test]
fn upgrade_with_another_method_or_http_1_0_gets_400() {
    let server = quick_server().start("127.0.0.1:0", Echo::default()).unwrap();
    let good = String::from_utf8(upgrade_request("/", &[])).unwrap();
    for request in [good.replacen("GET", "POST", 1), good.replacen("HTTP/1.1", "HTTP/1.0", 1)] {
        expect_refusal(server.local_addr(), request.as_bytes(), 400);
    }
    expect_refusal(server.local_addr(), b"GARBAGE\r\n\r\n", 400);
    server.shutdown();
}

#[test]
fn missing_host_gets_400() {
    let server = quick_server().start("127.0.0.1:0", Echo::default()).unwrap();
    let reply = expect_refusal(server.local_addr(), &request_with(SAMPLE_KEY, "13", false, "Upgrade"), 400);
    assert!(reply.body_text().contains("Host"), "{reply:?}");
    server.shutdown();
}

#[test]
fn connection_header_without_the_upgrade_token_gets_400() {
    let server = quick_server().start("127.0.0.1:0", Echo::default()).unwrap();
    for connection in ["upgraded", "keep-alive", "upgrade-insecure"] {
        let reply = expect_refusal(server.local_addr(), &request_with(SAMPLE_KEY, "13", true, connection), 400);
        assert!(reply.body_text().contains("Connection"), "{connection}: {reply:?}");
    }
    // The token may sit in a list, in any case.
    let (_stream, reply, _) = http(server.local_addr(), &request_with(SAMPLE_KEY, "13", true, "keep-alive, UPGRADE"));
    assert_eq!(reply.status, 101, "{reply:?}");
    server.shutdown();
}

#[test]
fn refused_handshakes_leave_no_connection_behind() {
    let echo = Echo::default();
    let server = quick_server().start("127.0.0.1:0", echo.clone()).unwrap();
    let addr = server.local_addr();
    let mut streams = Vec::new();
    for request in [request_with("short", "13", true, "Upgrade"), b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec()] {
        let (stream, _, _) = http(addr, &request);
        streams.push(stream);
    }
    drop(streams);
    wait_connection_count(&server.handle(), 0);
    assert!(echo.events.snapshot().opened.is_empty() && echo.events.snapshot().closed.is_empty());
    server.shutdown();
}
