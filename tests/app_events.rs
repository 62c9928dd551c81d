//! Events, requests and replies, middleware, namespaces and system events,
//! over real sockets.
#![cfg(feature = "app")]

#[path = "common/app.rs"]
mod app_client;
mod common;

use std::sync::{Arc, Mutex};

use app_client::{eventually, start, AppClient};
use emitws::app::{App, Middleware};
use serde_json::{json, Value};

#[test]
fn requests_get_replies_and_events_reach_handlers() {
    let mut app = App::new();
    app.on("/ping", |req| req.reply(&json!({ "pong": true })));
    app.on("/echo", |req| {
        let data: Value = req.data().expect("any JSON");
        req.reply(&data);
    });
    app.on("/tell", |req| {
        let text: String = req.data().expect("a string");
        let _ = req.emit("/told", &text);
    });
    app.on("/silent", |_| {});
    let running = start(app, 1);
    let mut client = AppClient::connect(running.local_addr());
    assert_eq!(client.request("/ping", Value::Null), Ok(json!({ "pong": true })));
    let data = json!({ "nested": [1, "two", { "three": null }], "text": "é\"\\" });
    assert_eq!(client.request("/echo", data.clone()), Ok(data));
    client.emit("/tell", json!("hello"));
    assert_eq!(client.expect_event("/told"), json!("hello"));
    assert_eq!(client.request("/silent", Value::Null), Ok(Value::Null), "an unanswered request gets null");
    let (code, message) = client.request("/nope", Value::Null).unwrap_err();
    assert_eq!((code.as_str(), message.as_str()), ("no_handler", "no handler for /nope"));
    client.emit("/nope", Value::Null);
    client.expect_silence(common::ms(100));
    client.close();
    running.close();
}

#[test]
fn typed_data_and_bad_shapes_get_bad_request() {
    #[derive(serde::Deserialize)]
    struct Say {
        text: String,
        times: u8,
    }
    let mut app = App::new();
    app.on("/say", |req| {
        let Some(Say { text, times }) = req.expect_data::<Say>() else { return };
        req.reply(&text.repeat(times.into()));
    });
    let running = start(app, 1);
    let mut client = AppClient::connect(running.local_addr());
    assert_eq!(client.request("/say", json!({ "text": "ab", "times": 3 })), Ok(json!("ababab")));
    let (code, message) = client.request("/say", json!({ "text": "ab" })).unwrap_err();
    assert_eq!(code, "bad_request");
    assert!(message.contains("times"), "{message}");
    client.emit("/say", json!(7));
    client.expect_error_event("bad_request");
    client.close();
    running.close();
}

/// Middleware that lets a request through if `allow(user)`, else answers `code`.
fn guard(code: &'static str, allow: fn(Option<&str>) -> bool) -> Middleware {
    Middleware::new(move |req, next| match allow(req.get::<String>("user").map(String::as_str)) {
        true => next.run(req),
        false => req.reply_err(code, "not for you"),
    })
}

#[test]
fn middleware_runs_in_order_and_can_stop_the_chain() {
    let log = Arc::new(Mutex::new(Vec::new()));
    let mut app = App::new();
    let seen = log.clone();
    app.middleware(move |req, next| {
        seen.lock().unwrap().push(format!("global {}", req.event()));
        next.run(req);
    });
    let auth = guard("unauthorized", |user| user.is_some());
    let admin_only = guard("forbidden", |user| user == Some("root"));
    app.on("/login", |req| {
        let name: String = req.data().expect("a name");
        req.set("user", name);
        req.reply(&true);
    });
    app.on_with("/profile", [auth.clone()], |req| {
        let user = req.get::<String>("user").cloned();
        req.reply(&user);
    });
    app.on_with("/admin", [auth, admin_only], |req| req.reply(&"welcome"));
    let running = start(app, 1);
    let mut client = AppClient::connect(running.local_addr());
    assert_eq!(client.request("/profile", Value::Null).unwrap_err().0, "unauthorized");
    assert_eq!(client.request("/login", json!("ann")), Ok(json!(true)));
    assert_eq!(client.request("/profile", Value::Null), Ok(json!("ann")));
    assert_eq!(client.request("/admin", Value::Null).unwrap_err().0, "forbidden");
    assert_eq!(client.request("/login", json!("root")), Ok(json!(true)));
    assert_eq!(client.request("/admin", Value::Null), Ok(json!("welcome")));
    assert_eq!(log.lock().unwrap().len(), 6, "global middleware saw every event: {:?}", log.lock().unwrap());
    client.close();
    running.close();
}

#[test]
fn namespaces_nest() {
    let mut app = App::new();
    let mut game = app.ns("/game");
    game.on("/move", |req| req.reply(&"moved"));
    game.ns("/lobby").on("/join", |req| req.reply(&req.event().to_string()));
    let running = start(app, 1);
    let mut client = AppClient::connect(running.local_addr());
    assert_eq!(client.request("/game/move", Value::Null), Ok(json!("moved")));
    assert_eq!(client.request("/game/lobby/join", Value::Null), Ok(json!("/game/lobby/join")));
    assert_eq!(client.request("/move", Value::Null).unwrap_err().0, "no_handler");
    client.close();
    running.close();
}

#[test]
fn system_events_connection_disconnect_any_and_error() {
    let log = Arc::new(Mutex::new(Vec::<String>::new()));
    let mut app = App::new();
    let seen = log.clone();
    app.on("@connection", move |req| {
        seen.lock().unwrap().push("connection".into());
        let _ = req.emit("/welcome", &req.conn_id().to_string());
    });
    let seen = log.clone();
    app.on("@disconnect", move |req| {
        let data: Value = req.data().expect("code and reason");
        seen.lock().unwrap().push(format!("disconnect {} {}", data["code"], data["reason"]));
    });
    let seen = log.clone();
    app.on("@any", move |req| {
        seen.lock().unwrap().push(format!("any {}", req.event()));
        req.reply(&"caught");
    });
    let seen = log.clone();
    app.on("@error", move |req| {
        let data: Value = req.data().expect("code and message");
        seen.lock().unwrap().push(format!("error {}", data["code"]));
    });
    let running = start(app, 1);
    let mut client = AppClient::connect(running.local_addr());
    let id = client.expect_event("/welcome");
    assert!(id.is_string());
    assert_eq!(client.request("/whatever", Value::Null), Ok(json!("caught")));
    client.send_raw("not json");
    client.expect_error_event("bad_request");
    client.ws.send_close(1000, "bye");
    client.ws.expect_close(1000);
    eventually("@disconnect", || log.lock().unwrap().len() == 4);
    assert_eq!(
        *log.lock().unwrap(),
        ["connection", "any /whatever", "error \"bad_request\"", "disconnect 1000 \"bye\""]
    );
    running.close();
}

#[test]
fn a_panicking_handler_answers_internal_and_the_socket_lives_on() {
    let mut app = App::new();
    app.on("/boom", |_| panic!("handler bug"));
    app.on("/ok", |req| req.reply(&1));
    let running = start(app, 1);
    let mut client = AppClient::connect(running.local_addr());
    assert_eq!(client.request("/boom", Value::Null).unwrap_err().0, "internal");
    assert_eq!(client.request("/ok", Value::Null), Ok(json!(1)));
    client.close();
    running.close();
}

#[test]
fn close_is_graceful_and_runs_disconnect() {
    let gone = Arc::new(Mutex::new(Vec::new()));
    let mut app = App::new();
    let seen = gone.clone();
    app.on("@disconnect", move |req| {
        let data: Value = req.data().expect("code");
        seen.lock().unwrap().push(data["code"].clone());
    });
    let running = start(app, 2);
    let mut a = AppClient::connect(running.local_addr());
    let mut b = AppClient::connect(running.local_addr());
    eventually("two sockets", || running.socket_count() == 2);
    let closing = std::thread::spawn(move || running.close());
    for client in [&mut a, &mut b] {
        client.ws.expect_close(1001);
        client.ws.send_close(1001, "");
    }
    closing.join().expect("close returns once the workers are done");
    assert_eq!(*gone.lock().unwrap(), [json!(1001), json!(1001)]);
}
