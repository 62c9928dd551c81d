//! One port for an axum app and emitws (feature `axum`): axum answers its
//! JSON route, and the routes given to `emitws::axum::route` hand their
//! connection over to the app's workers, which answer the upgrade with the
//! app's rules (paths, origins, connection middleware, identify, metrics)
//! exactly as on a port of their own. Over real sockets: raw HTTP and
//! frames, and the Rust client.
#![cfg(all(feature = "axum", feature = "app"))]

mod common;

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::time::Duration;

use axum::routing::get;
use axum::{Json, Router};
use common::{
    connect, http, masked_frame, quick_server, read_reply, upgrade_request, Client, Echo, Frame, HttpReply, WAIT,
};
use emitws::app::{After, App, Refusal, Running};
use emitws::axum::{route, serve, Listener};
use emitws::client::app::{AppClient, AppOptions};
use emitws::proto::OpCode;
use emitws::runtime::{AdoptError, Server};
use serde_json::{json, Value};

/// An app's workers mounted on an axum router served by a tokio runtime:
/// `/api/status` is axum's (JSON, with the app's socket count), `/ws` and
/// `/chat/{room}` are the app's. Dropping it stops both.
struct Mount {
    addr: SocketAddr,
    runtime: Option<tokio::runtime::Runtime>,
    running: Option<Running>,
}

fn mount(app: App) -> Mount {
    let running = app.mount_with(quick_server()).expect("start the app's workers");
    let handle = running.server().clone();
    let sockets = running.app();
    let router = Router::new()
        .route(
            "/api/status",
            get(move || {
                let count = sockets.socket_count();
                async move { Json(json!({ "ok": true, "sockets": count })) }
            }),
        )
        .route("/ws", route(handle.clone()))
        .route("/chat/{room}", route(handle));
    let runtime =
        tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("a tokio runtime");
    let listener = runtime.block_on(Listener::bind("127.0.0.1:0")).expect("bind");
    let addr = listener.local_addr().expect("bound address");
    runtime.spawn(async move { serve(listener, router).await });
    Mount { addr, runtime: Some(runtime), running: Some(running) }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_timeout(Duration::from_secs(1));
        }
        if let Some(running) = self.running.take() {
            running.close();
        }
    }
}

impl Mount {
    fn app(&self) -> &Running {
        self.running.as_ref().expect("running until dropped")
    }
}

/// The app of these tests: two paths, `/echo`, `/where` (the route's room)
/// and `/whoami`.
fn echo_app() -> App {
    let mut app = App::new();
    app.route("/ws");
    app.route("/chat/:room");
    app.on("/echo", |req| {
        let data = req.raw_data();
        req.reply(&data);
    });
    app.on("/where", |req| {
        let room = req.param("room").map(str::to_string);
        req.reply(&room);
    });
    app.on("/whoami", |req| {
        let user = req.user().map(str::to_string);
        req.reply(&user);
    });
    app
}

const PROTOCOL: (&str, &str) = ("Sec-WebSocket-Protocol", "emitws.v1");

/// The next text envelope on a raw client, parsed.
fn envelope(client: &mut Client) -> Value {
    match client.recv() {
        Frame::Text(text) => serde_json::from_str(&text).expect("JSON envelope"),
        other => panic!("expected an envelope, got {other:?}"),
    }
}

fn status_json(reply: &HttpReply) -> Value {
    assert_eq!(reply.status, 200, "{reply:?}");
    serde_json::from_slice(&reply.body).expect("a JSON body")
}

#[test]
fn the_json_route_and_the_app_share_one_port_and_one_connection() {
    let mount = mount(echo_app());
    // A keep-alive connection: first axum's JSON, then the upgrade on it.
    let mut stream = connect(mount.addr);
    stream.write_all(b"GET /api/status HTTP/1.1\r\nHost: x\r\n\r\n").expect("write");
    let (reply, rest) = read_reply(&mut stream);
    assert_eq!(status_json(&reply), json!({ "ok": true, "sockets": 0 }));
    assert!(rest.is_empty());
    stream.write_all(&upgrade_request("/chat/lobby", &[PROTOCOL])).expect("write");
    let (reply, rest) = read_reply(&mut stream);
    assert_eq!(reply.status, 101, "{reply:?}");
    assert_eq!(reply.header("sec-websocket-protocol"), Some("emitws.v1"));
    let mut ws = Client::from_parts(stream, rest);
    assert_eq!(envelope(&mut ws)[1], "@ready");
    ws.send_text(r#"[1,1,"/where"]"#);
    assert_eq!(envelope(&mut ws), json!([2, 1, "lobby"]));

    // The Rust client on its own connection; axum sees both sockets in the app.
    let url = format!("ws://{}/ws", mount.addr);
    let client = AppClient::connect(&url, AppOptions::default()).expect("the Rust client connects");
    let answer = client.request("/echo", json!({ "n": 1 }), Duration::from_secs(3)).expect("echo");
    assert_eq!(answer, json!({ "n": 1 }));
    let (_, reply, _) = http(mount.addr, b"GET /api/status HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    assert_eq!(status_json(&reply), json!({ "ok": true, "sockets": 2 }));
    client.close();
    ws.close(1000);
}

#[test]
fn messages_in_the_upgrade_packet_are_not_lost() {
    let mount = mount(echo_app());
    let mut stream = connect(mount.addr);
    // One write: the request head and two requests behind it, which hyper
    // reads with the head; the worker must get them from the handover.
    let mut packet = upgrade_request("/ws", &[PROTOCOL]);
    packet.extend(masked_frame(OpCode::Text, true, br#"[1,1,"/echo","in the upgrade's packet"]"#));
    packet.extend(masked_frame(OpCode::Text, true, br#"[1,2,"/echo","and the next"]"#));
    stream.write_all(&packet).expect("write");
    let (reply, rest) = read_reply(&mut stream);
    assert_eq!(reply.status, 101, "{reply:?}");
    let mut ws = Client::from_parts(stream, rest);
    assert_eq!(envelope(&mut ws)[1], "@ready");
    assert_eq!(envelope(&mut ws), json!([2, 1, "in the upgrade's packet"]));
    assert_eq!(envelope(&mut ws), json!([2, 2, "and the next"]));
    // And later messages come from the socket, read by the worker.
    ws.send_text(r#"[1,3,"/echo","later"]"#);
    assert_eq!(envelope(&mut ws), json!([2, 3, "later"]));
    ws.close(1000);
}

/// The app with an origin allow-list, a connection middleware that refuses,
/// and an identify hook.
fn guarded_app() -> App {
    let mut app = echo_app();
    app.origins(["http://good.example"]);
    app.on_connect(|conn| match conn.header("x-banned") {
        Some(_) => Err(Refusal::status(403, "banned")),
        None => Ok(After::nothing()),
    });
    app.identify(|conn| conn.query_value("user").ok_or_else(|| Refusal::status(401, "who are you?")));
    app
}

#[test]
fn refusals_get_the_status_and_body_of_the_standalone_port() {
    let standalone = guarded_app().listen_with(quick_server(), "127.0.0.1:0").expect("listen");
    let mount = mount(guarded_app());
    let cases: [(&str, &[(&str, &str)]); 3] = [
        ("/ws?user=ann", &[PROTOCOL, ("Origin", "http://evil.example")]),
        ("/ws?user=ann", &[PROTOCOL, ("X-Banned", "1")]),
        ("/ws", &[PROTOCOL]),
    ];
    let mut statuses = Vec::new();
    for (path, headers) in cases {
        let request = upgrade_request(path, headers);
        let (_, own, _) = http(standalone.local_addr(), &request);
        let (_, mounted, _) = http(mount.addr, &request);
        assert_eq!((mounted.status, mounted.body_text()), (own.status, own.body_text()), "{path} {headers:?}");
        statuses.push(mounted.status);
    }
    assert_eq!(statuses, [403, 403, 401]);
    let refused = mount.app().metrics().snapshot().handshakes_refused;
    assert_eq!((refused["403"], refused["401"]), (2, 1), "{refused:?}");

    // What is allowed gets through, with the user the identify hook gave.
    let request = upgrade_request("/ws?user=ann", &[PROTOCOL, ("Origin", "http://good.example")]);
    let (stream, reply, rest) = http(mount.addr, &request);
    assert_eq!(reply.status, 101, "{reply:?}");
    let mut ws = Client::from_parts(stream, rest);
    assert_eq!(envelope(&mut ws)[1], "@ready");
    ws.send_text(r#"[1,1,"/whoami"]"#);
    assert_eq!(envelope(&mut ws), json!([2, 1, "ann"]));
    ws.close(1000);
    standalone.close();
}

#[test]
fn a_plain_request_on_the_app_route_is_answered_by_the_app() {
    let mount = mount(echo_app());
    let (_, reply, _) = http(mount.addr, b"GET /ws HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(reply.status, 426, "{reply:?}");
    assert_eq!(reply.header("upgrade"), Some("websocket"));
}

#[test]
fn what_cannot_be_handed_over_gets_a_clear_status_from_axum() {
    let mount = mount(echo_app());
    // Pipelined: the upgrade came in the same read as a request axum had not
    // answered yet, so its bytes are not at the start of what hyper read.
    let mut stream = connect(mount.addr);
    let mut both = b"GET /api/status HTTP/1.1\r\nHost: x\r\n\r\n".to_vec();
    both.extend(upgrade_request("/ws", &[PROTOCOL]));
    stream.write_all(&both).expect("write");
    let (first, _) = read_reply(&mut stream);
    assert_eq!(status_json(&first)["ok"], true);
    let (second, _) = read_reply(&mut stream);
    assert_eq!(second.status, 400, "{second:?}");
    assert!(second.body_text().contains("pipelined"), "{}", second.body_text());

    // A draining app takes no connection: axum answers 503 on the socket
    // it got back.
    let _drain = mount.app().drain(Duration::from_secs(5), None).expect("drain");
    let (_, reply, _) = http(mount.addr, &upgrade_request("/ws", &[PROTOCOL]));
    assert_eq!(reply.status, 503, "{reply:?}");
    assert!(reply.body_text().contains("draining"), "{}", reply.body_text());
    let (_, reply, _) = http(mount.addr, b"GET /api/status HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(status_json(&reply)["ok"], true);
}

#[test]
fn a_route_served_without_the_listener_says_what_it_needs() {
    let running = echo_app().mount_with(quick_server()).expect("start");
    let router: Router = Router::new().route("/ws", route(running.server().clone()));
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("runtime");
    let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).expect("bind");
    let addr = listener.local_addr().expect("address");
    runtime.spawn(async move { axum::serve(listener, router).await });
    let (_, reply, _) = http(addr, &upgrade_request("/ws", &[PROTOCOL]));
    assert_eq!(reply.status, 500, "{reply:?}");
    assert!(reply.body_text().contains("emitws::axum::Listener"), "{}", reply.body_text());
    runtime.shutdown_timeout(Duration::from_secs(1));
    running.close();
}

/// The engine's own adoption, without axum: a front that read the whole
/// first packet (a head and a message longer than the worker's read buffer)
/// hands the socket over; the worker takes the bytes in read-sized pieces.
/// Once the server stops, the socket comes back to the front.
#[test]
fn adopt_feeds_bytes_longer_than_a_read_and_a_stopping_server_gives_the_socket_back() {
    let mut settings = quick_server().settings().clone();
    settings.read_buffer_size = 1024;
    let echo = Echo::default();
    let server = Server::with_settings(settings).start_dialer(echo.clone()).expect("start the workers");
    let front = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = front.local_addr().expect("address");

    let mut client = connect(addr);
    let long = "x".repeat(5000);
    let mut packet = upgrade_request("/adopted", &[]);
    packet.extend(masked_frame(OpCode::Text, true, long.as_bytes()));
    client.write_all(&packet).expect("write");
    let (mut accepted, _) = front.accept().expect("accept");
    accepted.set_read_timeout(Some(WAIT)).expect("timeout");
    let mut received = vec![0; packet.len()];
    accepted.read_exact(&mut received).expect("the whole packet");
    server.handle().adopt(accepted, &received).expect("adopted");
    let (reply, rest) = read_reply(&mut client);
    assert_eq!(reply.status, 101, "{reply:?}");
    let mut ws = Client::from_parts(client, rest);
    assert_eq!(ws.recv(), Frame::text(&long));
    echo.events.wait_opened("/adopted");
    ws.send_text("read from the socket");
    assert_eq!(ws.recv(), Frame::text("read from the socket"));

    server.handle().shutdown();
    let mut client = connect(addr);
    let (accepted, _) = front.accept().expect("accept");
    match server.handle().adopt(accepted, b"") {
        Err(AdoptError::Stopping(mut stream)) => {
            stream.write_all(b"HTTP/1.1 503 Service Unavailable\r\n\r\n").expect("write")
        }
        other => panic!("a stopping server adopted: {other:?}"),
    }
    let (reply, _) = read_reply(&mut client);
    assert_eq!(reply.status, 503);
    server.join();
}
