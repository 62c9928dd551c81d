//! The Rust event client (`client::app`) against the real event framework
//! (`app::App`) over loopback: the two halves of emitws.v1 talking to each
//! other, the way an application uses them.

use std::sync::mpsc;
use std::time::Duration;

use emitws::app::{App, BroadcastOpts, CallError};
use emitws::client::app::{AppClient, AppError, AppOptions};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(5);

fn server() -> emitws::app::Running {
    let mut app = App::new();
    app.on("/echo", |req| {
        let data: Value = req.data().unwrap_or(Value::Null);
        req.reply(&data);
    });
    app.on("/fail", |req| req.reply_err("teapot", "short and stout"));
    app.on("/later", |req| {
        let reply = req.defer();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            reply.reply(&"later");
        });
    });
    app.on("/silent", |req| drop(req.defer()));
    app.ns("/room").on("/join", |req| {
        let joined = req.join("#r").is_ok();
        req.reply(&joined);
    });
    app.ns("/room").on("/say", |req| {
        let text: String = req.data().unwrap_or_default();
        let _ = req.broadcast("/room/said", &text, BroadcastOpts::to("#r").include_self());
    });
    app.on("/ask", |req| {
        let Some((name, data)) = req.expect_data::<(String, Value)>() else { return };
        let reply = req.defer();
        let _ = reply.socket().call_then(&name, &data, Duration::from_millis(300), move |result| match result {
            Ok(answer) => reply.reply(&json!({ "answer": answer.data::<Value>().unwrap_or(Value::Null) })),
            Err(CallError::NotRegistered(_)) => reply.reply(&json!({ "error": "not_registered" })),
            Err(CallError::ExecutionFailed(message)) => {
                reply.reply(&json!({ "error": "execution_failed", "why": message }))
            }
            Err(other) => reply.reply(&json!({ "error": other.to_string() })),
        });
    });
    app.on("/kick", |req| req.close(4000, "kicked"));
    app.on("@connection", |req| {
        let _ = req.emit("/welcome", &true);
    });
    app.listen("127.0.0.1:0").expect("listen")
}

fn options() -> AppOptions {
    AppOptions { reconnect_delay: Duration::from_millis(20), connect_timeout: WAIT, ..AppOptions::default() }
}

fn connect(running: &emitws::app::Running) -> AppClient {
    AppClient::connect(&format!("ws://{}/", running.local_addr()), options()).expect("connect")
}

/// The next value a listener sends, or a test failure.
fn next<T>(events: &mpsc::Receiver<T>) -> T {
    events.recv_timeout(WAIT).expect("an event within the wait")
}

#[test]
fn requests_replies_errors_and_events() {
    let running = server();
    let client = connect(&running);
    assert!(client.connected());
    assert_eq!(client.request("/echo", json!({ "a": [1, "é"] }), WAIT), Ok(json!({ "a": [1, "é"] })));
    assert_eq!(client.request("/later", Value::Null, WAIT), Ok(json!("later")));
    let failed = client.request("/fail", Value::Null, WAIT);
    assert_eq!(failed, Err(AppError::Remote { code: "teapot".into(), message: "short and stout".into() }));
    assert_eq!(
        client.request("/nobody", Value::Null, WAIT).map_err(|e| e.code().to_string()),
        Err("no_handler".into())
    );
    assert_eq!(client.request("/silent", Value::Null, WAIT).map_err(|e| e.code().to_string()), Err("internal".into()));
    assert_eq!(client.request("/echo", Value::Null, Duration::ZERO), Err(AppError::Timeout));
    assert!(matches!(client.emit("@connection", Value::Null), Err(AppError::BadName(_))));

    // Many at once, without blocking: each reply finds its own request.
    let pending: Vec<_> = (0..100).map(|i| client.request_nowait("/echo", json!(i), WAIT)).collect();
    let replies: Vec<Value> = pending.into_iter().map(|p| p.wait().expect("reply")).collect();
    assert_eq!(replies, (0..100).map(|i| json!(i)).collect::<Vec<_>>());
    client.close();
    running.close();
}

#[test]
fn namespaces_rooms_and_listeners() {
    let running = server();
    let (a, b) = (connect(&running), connect(&running));
    let (heard, said) = mpsc::channel();
    let heard_b = heard.clone();
    a.ns("/room")
        .on("/said", move |event, data| heard.send(("a", event.to_string(), data.clone())).expect("test waits"));
    let listener =
        b.ns("/room").on("/said", move |_, data| heard_b.send(("b", String::new(), data.clone())).expect("test waits"));
    assert_eq!(a.ns("/room").request("/join", Value::Null, WAIT), Ok(json!(true)));
    assert_eq!(b.ns("/room").request("/join", Value::Null, WAIT), Ok(json!(true)));
    a.ns("/room").emit("/say", json!("hi all")).expect("emit");
    let mut got = [next(&said), next(&said)];
    got.sort_by_key(|(who, ..)| *who);
    assert_eq!(got[0], ("a", "/room/said".to_string(), json!("hi all")));
    assert_eq!(got[1].2, json!("hi all"));

    // Without its listener, b's copy goes to @any.
    b.off(listener);
    let (any, anything) = mpsc::channel();
    b.on("@any", move |event, data| any.send((event.to_string(), data.clone())).expect("test waits"));
    a.ns("/room").emit("/say", json!("again")).expect("emit");
    assert_eq!(next(&anything), ("/room/said".to_string(), json!("again")));
    a.close();
    b.close();
    running.close();
}

#[test]
fn the_server_calls_registered_procedures() {
    let running = server();
    let client = connect(&running);
    client.register("double", |n| Ok(json!(n.as_i64().unwrap_or(0) * 2)));
    client.register("broken", |_| Err("it broke".into()));
    assert_eq!(client.request("/ask", json!(["double", 21]), WAIT), Ok(json!({ "answer": 42 })));
    assert_eq!(client.request("/ask", json!(["missing", null]), WAIT), Ok(json!({ "error": "not_registered" })));
    assert_eq!(
        client.request("/ask", json!(["broken", null]), WAIT),
        Ok(json!({ "error": "execution_failed", "why": "it broke" }))
    );
    client.close();
    running.close();
}

#[test]
fn a_dropped_connection_fails_pending_requests_then_reconnects() {
    let running = server();
    let (tell, told) = mpsc::channel();
    let client = connect(&running);
    for event in ["@disconnect", "@reconnect"] {
        let tell = tell.clone();
        client.on(event, move |name, data| tell.send((name.to_string(), data.clone())).expect("test waits"));
    }
    let pending = client.request_nowait("/kick", Value::Null, WAIT);
    assert!(matches!(pending.wait(), Err(AppError::Disconnected(_))));
    assert_eq!(next(&told), ("@disconnect".to_string(), json!({ "code": 4000, "reason": "kicked" })));
    assert_eq!(next(&told).0, "@reconnect");
    assert!(client.connected());
    assert_eq!(client.request("/echo", json!("again"), WAIT), Ok(json!("again")));
    client.close();
    running.close();
}

#[test]
fn a_server_that_is_gone_gives_connect_failed() {
    let running = server();
    let url = format!("ws://{}/", running.local_addr());
    running.close();
    let options = AppOptions { reconnect: false, connect_timeout: Duration::from_secs(2), ..AppOptions::default() };
    assert!(matches!(AppClient::connect(&url, options), Err(AppError::ConnectFailed(_))));
}
