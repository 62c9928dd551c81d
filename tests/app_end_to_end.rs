//! The Rust event client (`client::app`) against the real event framework
//! (`app::App`) over loopback: the two halves of emitws.v1 talking to each
//! other, the way an application uses them.
#![cfg(feature = "app")]

#[path = "common/auth_apps.rs"]
mod auth_apps;

use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use auth_apps::{challenge_app, first_message_app};
use emitws::app::{App, BroadcastOpts, CallError, SocketId};
use emitws::client::app::{AppClient, AppError, AppOptions, AuthRequest, PendingRequest, Status};
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
    app.on("/kick", |req| req.close(emitws::proto::CloseCode(4000), "kicked"));
    app.on("/cut", |req| req.close(emitws::proto::CloseCode(1013), "try again later"));
    app.on("@connection", |req| {
        let _ = req.emit("/welcome", &true);
    });
    app.listen("127.0.0.1:0").expect("listen")
}

/// [`challenge_app`] listening on a free port.
fn challenge_server() -> emitws::app::Running {
    challenge_app().listen("127.0.0.1:0").expect("listen")
}

/// A client of `url` that answers the challenge as `user`, not yet opened.
fn challenged_client(url: &str, user: &'static str, options: AppOptions) -> AppClient {
    let client = AppClient::new(url, options).expect("a client");
    client.register("@challenge", move |data| {
        let nonce = data["challenge"].as_str().ok_or("no challenge")?;
        Ok(json!([nonce.chars().rev().collect::<String>(), user]))
    });
    client
}

/// Records what listeners of `events` receive, in order.
fn record(client: &AppClient, events: &[&str]) -> Arc<Mutex<Vec<(String, Value)>>> {
    let log = Arc::new(Mutex::new(Vec::new()));
    for event in events {
        let log = log.clone();
        client.on(event, move |name, data| log.lock().unwrap().push((name.to_string(), data.clone())));
    }
    log
}

/// The `status` fields of the recorded `@status` events.
fn statuses(log: &Mutex<Vec<(String, Value)>>) -> Vec<String> {
    let log = log.lock().unwrap();
    log.iter().filter(|(e, _)| e == "@status").map(|(_, d)| d["status"].as_str().unwrap_or("?").to_string()).collect()
}

fn options() -> AppOptions {
    AppOptions::default().reconnect_delay(Duration::from_millis(20)).connect_timeout(WAIT)
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
    let pending = client.request_nowait("/cut", Value::Null, WAIT);
    assert!(matches!(pending.wait(), Err(AppError::Disconnected(_))));
    assert_eq!(next(&told), ("@disconnect".to_string(), json!({ "code": 1013, "reason": "try again later" })));
    assert_eq!(next(&told).0, "@reconnect");
    assert!(client.connected());
    assert_eq!(client.request("/echo", json!("again"), WAIT), Ok(json!("again")));
    client.close();
    running.close();
}

#[test]
fn a_drop_by_the_server_is_not_retried() {
    let running = server();
    let (tell, told) = mpsc::channel();
    let client = connect(&running);
    for event in ["@disconnect", "@reconnect_failed"] {
        let tell = tell.clone();
        client.on(event, move |name, data| tell.send((name.to_string(), data.clone())).expect("test waits"));
    }
    assert!(matches!(client.request("/kick", Value::Null, WAIT), Err(AppError::Disconnected(_))));
    assert_eq!(next(&told), ("@disconnect".to_string(), json!({ "code": 4000, "reason": "kicked" })));
    let (event, data) = next(&told);
    assert_eq!((event.as_str(), &data["attempts"]), ("@reconnect_failed", &json!(0)), "{data}");
    assert_eq!(client.status(), Status::Offline);
    assert!(matches!(client.request("/echo", json!("again"), WAIT), Err(AppError::Offline(_))));
    client.close();
    running.close();
}

#[test]
fn a_server_that_is_gone_gives_connect_failed() {
    let running = server();
    let url = format!("ws://{}/", running.local_addr());
    running.close();
    let options = AppOptions::default().reconnect(false).connect_timeout(Duration::from_secs(2));
    assert!(matches!(AppClient::connect(&url, options), Err(AppError::ConnectFailed(_))));
}

#[test]
fn challenge_auth_admits_a_hundred_sequential_connections_on_the_first_try() {
    let running = challenge_server();
    let url = format!("ws://{}/", running.local_addr());
    let once = options().reconnect(false);
    let mut refused = Vec::new();
    for i in 0..100 {
        let client = challenged_client(&url, "carol", once.clone());
        let disconnects = record(&client, &["@disconnect"]);
        match client.open() {
            // Right after `open` returns, a request is served as carol.
            Ok(()) => assert_eq!(client.request("/me", Value::Null, WAIT), Ok(json!("carol")), "connection {i}"),
            Err(e) => refused.push((i, e, disconnects.lock().unwrap().clone())),
        }
        client.close();
    }
    assert!(refused.is_empty(), "refused: {refused:?}");
    running.close();
}

#[test]
fn ready_carries_the_welcome_and_requests_made_before_it_wait_for_it() {
    let running = challenge_server();
    let url = format!("ws://{}/", running.local_addr());
    let client = challenged_client(&url, "dan", options());
    assert_eq!(client.status(), Status::Idle);
    let ready = record(&client, &["@ready"]);
    // Sent while IDLE: each waits for READY instead of being refused `unauthorized`.
    let early = client.request_nowait("/me", Value::Null, WAIT);
    client.emit("/nobody-listens", json!(1)).expect("queued");
    client.open().expect("open");
    assert_eq!(early.wait(), Ok(json!("dan")));
    let welcome = client.welcome().expect("READY has the welcome");
    assert_eq!(welcome["user"], "dan");
    welcome["socket"].as_str().and_then(|s| s.parse::<SocketId>().ok()).expect("a socket id");
    assert_eq!(ready.lock().unwrap().clone(), [("@ready".to_string(), welcome)]);
    client.close();
    running.close();
}

#[test]
fn the_auth_request_goes_first_and_a_request_right_after_connect_succeeds() {
    let running = first_message_app().listen("127.0.0.1:0").expect("listen");
    let url = format!("ws://{}/", running.local_addr());
    let auth = |token: &str| Some(AuthRequest { event: "/auth".into(), data: json!(token) });
    for _ in 0..20 {
        let client = AppClient::connect(&url, options().auth(auth("t-erin"))).expect("connect");
        assert_eq!(client.request("/me", Value::Null, WAIT), Ok(json!("erin")));
        client.close();
    }

    let options = options().auth(auth("forged")).reconnect(false);
    let client = AppClient::new(&url, options).expect("a client");
    let log = record(&client, &["@error", "@disconnect"]);
    assert!(matches!(client.open(), Err(AppError::ConnectFailed(_))));
    let log = log.lock().unwrap().clone();
    assert_eq!(log[0].1, json!({ "code": "unauthorized", "message": "the auth request was refused: unknown token" }));
    assert_eq!(log[1].1, json!({ "code": 4401, "reason": "unknown token" }));
    running.close();
}

#[test]
fn the_status_goes_through_a_reconnect_then_offline() {
    let running = challenge_server();
    let url = format!("ws://{}/", running.local_addr());
    let client = challenged_client(&url, "fay", options());
    let log = record(&client, &["@status", "@reconnecting", "@connection", "@ready", "@reconnect"]);
    client.open().expect("open");
    assert_eq!(client.status(), Status::Ready);
    let (tell, told) = mpsc::channel();
    client.on("@reconnect", move |_, _| tell.send(()).expect("test waits"));
    assert!(matches!(client.request("/cut", Value::Null, WAIT), Err(AppError::Disconnected(_))));
    next(&told);
    assert_eq!(client.request("/me", Value::Null, WAIT), Ok(json!("fay")));
    client.close();
    assert_eq!(client.status(), Status::Offline);
    let expected = ["connecting", "authenticating", "ready", "reconnecting", "authenticating", "ready", "offline"];
    assert_eq!(statuses(&log), expected);
    let log = log.lock().unwrap().clone();
    let names: Vec<&str> = log.iter().map(|(e, _)| e.as_str()).filter(|e| *e != "@status").collect();
    assert_eq!(names, ["@connection", "@ready", "@reconnecting", "@connection", "@ready", "@reconnect"]);
    let reconnecting = &log.iter().find(|(e, _)| e == "@reconnecting").expect("@reconnecting").1;
    assert_eq!(reconnecting["attempt"], 1);
    assert!(reconnecting["delay_ms"].as_u64().is_some(), "{reconnecting}");
    running.close();
}

#[test]
fn giving_up_is_announced_goes_offline_and_fails_envelopes_at_once() {
    let running = server();
    let url = format!("ws://{}/", running.local_addr());
    let options = options().max_retries(Some(2));
    let client = AppClient::new(&url, options).expect("a client");
    let log = record(&client, &["@reconnecting", "@reconnect_failed", "@error", "@status"]);
    // Made while RECONNECTING (from the listener, so surely before giving up):
    // a request and an event that wait for READY.
    let waiting: Arc<Mutex<Option<PendingRequest>>> = Arc::default();
    let (slot, me) = (waiting.clone(), client.clone());
    client.on("@reconnecting", move |_, data| {
        if data["attempt"] == 1 {
            *slot.lock().unwrap() = Some(me.request_nowait("/echo", json!("late"), WAIT));
            me.emit("/echo", json!("late")).expect("queued while reconnecting");
        }
    });
    let (tell, gave_up) = mpsc::channel();
    client.on("@reconnect_failed", move |_, _| tell.send(()).expect("test waits"));
    client.open().expect("open");
    // The server goes away for good: every reconnect attempt fails.
    running.close();
    next(&gave_up);
    assert_eq!(client.status(), Status::Offline);
    let request = waiting.lock().unwrap().take().expect("the request was made");
    assert!(matches!(request.wait(), Err(AppError::Offline(_))), "a queued request fails at once");
    assert!(matches!(client.emit("/echo", json!(1)), Err(AppError::Offline(_))));
    assert!(matches!(client.request("/echo", json!(1), WAIT), Err(AppError::Offline(_))));

    let log = log.lock().unwrap().clone();
    let attempts: Vec<&Value> = log.iter().filter(|(e, _)| e == "@reconnecting").map(|(_, d)| &d["attempt"]).collect();
    assert_eq!(attempts, [1, 2]);
    let failed = &log.iter().find(|(e, _)| e == "@reconnect_failed").expect("@reconnect_failed").1;
    assert_eq!(failed["attempts"], 2);
    let errors: Vec<&Value> = log.iter().filter(|(e, _)| e == "@error").map(|(_, d)| &d["code"]).collect();
    assert_eq!(errors, ["connect_failed", "connect_failed", "offline"], "{log:?}");
    assert_eq!(statuses(&Mutex::new(log)).last().map(String::as_str), Some("offline"));
    client.close();
}
