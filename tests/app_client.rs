//! The event client (`emitws::client::app`) against a scripted server of our
//! own that speaks the `emitws.v1` envelopes (the real event layer is built
//! elsewhere): requests and replies, error replies, events both ways,
//! server-to-client RPC, timeouts, namespaces, a dropped connection failing
//! pending requests and the automatic reconnect, giving up after the
//! retries, and close.
#![cfg(feature = "app")]

mod common;

use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use emitws::client::app::{AppClient, AppError, AppOptions, AuthRequest, Status};
use emitws::client::ClientBuilder;
use emitws::proto::{CloseCode, Message};
use emitws::runtime::{Accept, Conn, Handler, Reject, UpgradeRequest};
use serde_json::{json, Value};

/// A scripted emitws.v1 server:
/// - on open, `@ready` (unless `silent`: a server that never admits anyone);
/// - request `/echo` → reply with the data; `/fail` → error `forbidden`;
///   `/never` → no reply; `/drop` → close the connection (1001) instead;
///   anything else → error `no_handler`.
/// - event `/ping` → event `/pong` with the same data; `/call` → an RPC
///   request `[1, 7, data.name, data.args]` to the client, whose reply comes
///   back as event `/called` with `{"reply": …}` or `{"error": …}`.
#[derive(Clone, Default)]
struct Scripted {
    /// Every envelope received, in order.
    seen: Arc<Mutex<Vec<Value>>>,
    /// Never sends `@ready`.
    silent: bool,
}

impl Handler for Scripted {
    type Data = ();

    fn on_upgrade(&mut self, request: &UpgradeRequest<'_>) -> Result<Accept<()>, Reject> {
        match request.protocols().any(|p| p == "emitws.v1") {
            true => Ok(Accept::new(()).protocol("emitws.v1")),
            false => Err(Reject::status(400)),
        }
    }

    fn on_open(&mut self, conn: &mut Conn<'_, ()>) {
        if !self.silent {
            let _ = conn.send_text(&json!([0, "@ready", {"socket": "0-1", "user": null}]).to_string());
        }
    }

    fn on_message(&mut self, conn: &mut Conn<'_, ()>, message: Message<'_>) {
        let Message::Text(text) = message else { return };
        let envelope: Value = serde_json::from_str(text).expect("the client sends JSON");
        self.seen.lock().unwrap().push(envelope.clone());
        let reply = match (envelope[0].as_u64(), envelope[1].clone(), envelope[2].as_str()) {
            (Some(1), id, Some("/echo")) => json!([2, id, envelope[3]]),
            (Some(1), id, Some("/fail")) => json!([3, id, {"code": "forbidden", "message": "not you"}]),
            (Some(1), _, Some("/never")) => return,
            (Some(1), _, Some("/drop")) => return conn.close(CloseCode::GOING_AWAY, "dropping"),
            (Some(1), id, _) => json!([3, id, {"code": "no_handler", "message": "nobody"}]),
            (Some(0), name, _) if name == "/ping" => json!([0, "/pong", envelope[2]]),
            (Some(0), name, _) if name == "/call" => json!([1, 7, envelope[2]["name"], envelope[2]["args"]]),
            (Some(2), id, _) if id == 7 => json!([0, "/called", {"reply": envelope[2]}]),
            (Some(3), id, _) if id == 7 => json!([0, "/called", {"error": envelope[2]}]),
            _ => return,
        };
        let _ = conn.send_text(&reply.to_string());
    }
}

fn options() -> AppOptions {
    AppOptions::default()
        .reconnect_delay(ms(20))
        .max_reconnect_delay(ms(100))
        .max_retries(Some(20))
        .connect_timeout(ms(1000))
}

/// Collects what listeners receive, with bounded waits.
#[derive(Clone, Default)]
struct Inbox(Arc<Deliveries>);

#[derive(Default)]
struct Deliveries {
    got: Mutex<Vec<(String, Value)>>,
    changed: std::sync::Condvar,
}

impl Inbox {
    fn listener(&self) -> impl Fn(&str, &Value) + Send + Sync + 'static {
        let inbox = self.0.clone();
        move |event, data| {
            inbox.got.lock().unwrap().push((event.to_string(), data.clone()));
            inbox.changed.notify_all();
        }
    }

    /// Waits for the `n`th (from 1) delivery of `event`.
    fn wait(&self, event: &str, n: usize) -> Value {
        let deadline = Instant::now() + WAIT;
        let mut got = self.0.got.lock().unwrap();
        loop {
            if let Some((_, data)) = got.iter().filter(|(e, _)| e == event).nth(n - 1) {
                return data.clone();
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "no {event} #{n}; got {:?}", *got);
            got = self.0.changed.wait_timeout(got, left).unwrap().0;
        }
    }
}

#[test]
fn requests_events_namespaces_and_rpc() {
    let scripted = Scripted::default();
    let server = quick_server().start("127.0.0.1:0", scripted.clone()).unwrap();
    let inbox = Inbox::default();
    let client = AppClient::connect(&format!("ws://{}/", server.local_addr()), options()).unwrap();
    assert!(client.connected());
    let second = Duration::from_secs(1);
    assert_eq!(client.request("/echo", json!({"a": [1, 2]}), WAIT), Ok(json!({"a": [1, 2]})));
    let forbidden = AppError::Remote { code: "forbidden".into(), message: "not you".into() };
    assert_eq!(client.request("/fail", json!(null), WAIT), Err(forbidden));
    assert_eq!(client.request("/nobody", json!(null), WAIT).unwrap_err().code(), "no_handler");
    let started = Instant::now();
    assert_eq!(client.request("/never", json!(null), ms(200)), Err(AppError::Timeout));
    assert!(started.elapsed() < second, "the timeout took {:?}", started.elapsed());
    // The non-blocking form.
    let mut pending = client.request_nowait("/echo", json!("later"), WAIT);
    let result = loop {
        if let Some(result) = pending.try_result() {
            break result;
        }
        std::thread::sleep(ms(1));
    };
    assert_eq!(result, Ok(json!("later")));
    assert!(client.request_nowait("/never", json!(null), ms(50)).wait() == Err(AppError::Timeout));

    // Events both ways, @any for events without a listener of their own.
    client.on("/pong", inbox.listener());
    client.on("@any", inbox.listener());
    client.emit("/ping", json!(1)).unwrap();
    assert_eq!(inbox.wait("/pong", 1), json!(1));
    client.off_all("/pong");
    client.emit("/ping", json!(2)).unwrap();
    assert_eq!(inbox.wait("/pong", 2), json!(2), "@any gets the events without a listener");
    let chat = client.ns("/chat");
    chat.emit("/say", json!("hi")).unwrap();
    assert_eq!(chat.request("/x", json!(null), WAIT).unwrap_err().code(), "no_handler");
    assert_eq!(client.emit("@connection", json!(null)), Err(AppError::BadName("@connection".into())));

    // Server-to-client RPC: a registered procedure, a failing one, an unknown one.
    client.on("/called", inbox.listener());
    client.register("/sum", |args| {
        Ok(json!(args.as_array().map_or(0, |a| a.iter().filter_map(Value::as_i64).sum::<i64>())))
    });
    client.register("/boom", |_| Err("it broke".to_string()));
    client.emit("/call", json!({"name": "/sum", "args": [1, 2, 3]})).unwrap();
    assert_eq!(inbox.wait("/called", 1), json!({"reply": 6}));
    client.emit("/call", json!({"name": "/boom", "args": null})).unwrap();
    assert_eq!(inbox.wait("/called", 2), json!({"error": {"code": "execution_failed", "message": "it broke"}}));
    client.emit("/call", json!({"name": "/missing", "args": null})).unwrap();
    assert_eq!(inbox.wait("/called", 3)["error"]["code"], "not_registered");
    // A listener runs on the client's I/O thread: a blocking request there could never complete.
    let from_listener = Arc::new(Mutex::new(None));
    let (inner_client, slot) = (client.clone(), from_listener.clone());
    client.on("/pong", move |_, _| *slot.lock().unwrap() = Some(inner_client.request("/echo", json!(1), WAIT)));
    client.emit("/ping", json!(3)).unwrap();
    let deadline = Instant::now() + WAIT;
    while from_listener.lock().unwrap().is_none() && Instant::now() < deadline {
        std::thread::sleep(ms(1));
    }
    assert_eq!(from_listener.lock().unwrap().take(), Some(Err(AppError::WouldBlock)));
    let seen = scripted.seen.lock().unwrap().clone();
    assert!(seen.contains(&json!([0, "/chat/say", "hi"])), "{seen:?}");

    client.close();
    assert!(!client.connected());
    assert_eq!(client.emit("/ping", json!(2)), Err(AppError::Closed));
    assert_eq!(client.request("/echo", json!(1), WAIT), Err(AppError::Closed));
    server.shutdown();
}

#[test]
fn a_dropped_connection_fails_pending_requests_then_reconnects() {
    let server = quick_server().start("127.0.0.1:0", Scripted::default()).unwrap();
    let inbox = Inbox::default();
    let options = options().reconnect_delay(ms(300)).max_reconnect_delay(ms(300));
    let client = AppClient::connect(&format!("ws://{}/", server.local_addr()), options).unwrap();
    client.on("@disconnect", inbox.listener());
    client.on("/pong", inbox.listener());
    client.on("@reconnect", inbox.listener());
    client.on("@connection", inbox.listener());
    let waiting = client.request_nowait("/never", json!(null), WAIT);
    match client.request("/drop", json!(null), WAIT) {
        Err(AppError::Disconnected(why)) => assert!(why.contains("1001"), "{why}"),
        other => panic!("expected the drop to fail the request, got {other:?}"),
    }
    assert!(matches!(waiting.wait(), Err(AppError::Disconnected(_))), "every pending request fails");
    // The reconnect waits at least 150 ms: this event is queued, and sent once connected.
    assert!(!client.connected());
    client.emit("/ping", json!("queued")).unwrap();
    assert_eq!(inbox.wait("/pong", 1), json!("queued"));
    assert_eq!(inbox.wait("@disconnect", 1), json!({"code": 1001, "reason": "dropping"}));
    inbox.wait("@reconnect", 1);
    assert_eq!(inbox.wait("@connection", 1), json!({"reconnected": true}));
    // Usable again without the user doing anything.
    assert_eq!(client.request("/echo", json!("again"), WAIT), Ok(json!("again")));
    client.close();
    server.shutdown();
}

#[test]
fn connecting_gives_up_after_the_retries() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let server = quick_server().start("127.0.0.1:0", Scripted::default()).unwrap();
    drop(listener);
    // Nothing listens at `addr`: connecting gives up after the retries.
    let options = options().max_retries(Some(2));
    let started = Instant::now();
    match AppClient::connect(&format!("ws://{addr}/"), options.clone()) {
        Err(AppError::ConnectFailed(why)) => assert!(why.contains("refused"), "{why}"),
        other => panic!("expected the connect to fail, got {other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(2), "took {:?}", started.elapsed());
    // Without reconnecting: one attempt.
    let once = options.reconnect(false);
    let wrong = AppClient::connect("ws://no-such-host.invalid/", once.clone());
    assert!(matches!(wrong, Err(AppError::ConnectFailed(_))), "{wrong:?}");
    let refused = AppClient::connect(&format!("ws://{}/private", server.local_addr()), once);
    assert!(refused.is_ok(), "the scripted server accepts emitws.v1 on any path");
    server.shutdown();
}

#[test]
fn a_server_that_never_sends_ready_fails_the_attempt_after_the_connect_timeout() {
    let server = quick_server().start("127.0.0.1:0", Scripted { silent: true, ..Scripted::default() }).unwrap();
    let inbox = Inbox::default();
    let options = options().reconnect(false).connect_timeout(ms(200));
    let client = AppClient::new(&format!("ws://{}/", server.local_addr()), options).unwrap();
    client.on("@disconnect", inbox.listener());
    client.on("@reconnect_failed", inbox.listener());
    assert!(matches!(client.open(), Err(AppError::ConnectFailed(_))));
    assert_eq!(inbox.wait("@disconnect", 1)["code"], 4408, "the client closed it");
    assert_eq!(inbox.wait("@reconnect_failed", 1)["attempts"], 0);
    assert_eq!(client.status(), Status::Offline);
    server.shutdown();
}

#[test]
fn options_debug_leaves_the_credentials_out() {
    let auth = AuthRequest { event: "/auth".into(), data: json!({ "token": "s3cret-token" }) };
    let client = ClientBuilder::new().header("Authorization", "Bearer s3cret-header");
    let options = AppOptions::default().auth(Some(auth)).client(client).max_queued(7);
    let printed = format!("{options:?}");
    assert!(!printed.contains("s3cret"), "{printed}");
    assert!(printed.contains("/auth") && printed.contains("max_queued: 7"), "{printed}");
}
