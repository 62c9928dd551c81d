//! Connecting: path routes and parameters, the query, connection middleware
//! (refusals and code at disconnect), identify hooks, first-message and
//! challenge-response auth, the origin allow-list and the heartbeat.
#![cfg(feature = "app")]

#[path = "common/app.rs"]
mod app_client;
mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use app_client::{eventually, start, AppClient};
use common::{http, upgrade_request, Frame};
use emitws::app::{plugins, After, App, Challenge, EventLimits, Refusal};
use emitws::runtime::HttpResponse;
use serde_json::{json, Value};

#[test]
fn path_routes_capture_parameters_and_refuse_other_paths() {
    let mut app = App::new();
    app.route("/chat/:room");
    app.route("/dm/:from/:to");
    app.on("/where", |req| {
        let answer = json!({
            "path": req.path(),
            "room": req.param("room"),
            "from": req.param("from"),
            "name": req.query("name"),
        });
        req.reply(&answer);
    });
    let running = start(app, 1);
    let addr = running.local_addr();
    let mut client = AppClient::connect_to(addr, "/chat/lobby?name=J%20D", &[]).expect("route matches");
    let answer = client.request("/where", Value::Null).expect("reply");
    assert_eq!(answer, json!({ "path": "/chat/lobby", "room": "lobby", "from": null, "name": "J D" }));
    client.close();
    let mut client = AppClient::connect_to(addr, "/dm/ann/bob", &[]).expect("route matches");
    assert_eq!(client.request("/where", Value::Null).expect("reply")["from"], "ann");
    client.close();
    for path in ["/", "/chat", "/chat/a/b", "/other"] {
        assert_eq!(AppClient::connect_to(addr, path, &[]).err().map(|r| r.status), Some(404), "{path}");
    }
    running.close();
}

#[test]
fn connection_middleware_refuses_stores_and_runs_code_at_disconnect() {
    let log = Arc::new(Mutex::new(Vec::<String>::new()));
    let mut app = App::new();
    let seen = log.clone();
    app.on_connect(move |conn| {
        if conn.header("x-banned").is_some() {
            return Err(Refusal::status(403, "banned"));
        }
        if conn.query_value("close").is_some() {
            return Err(Refusal::close(emitws::proto::CloseCode(4003), "not today"));
        }
        conn.set("agent", conn.header("user-agent").unwrap_or("none").to_string());
        seen.lock().unwrap().push("first in".into());
        let seen = seen.clone();
        Ok(After::disconnect(move |gone| seen.lock().unwrap().push(format!("first out {}", gone.code))))
    });
    let seen = log.clone();
    app.route("/rooms/:room").on_connect(move |conn| {
        seen.lock().unwrap().push(format!("route in {}", conn.param("room").unwrap_or("?")));
        let seen = seen.clone();
        Ok(After::disconnect(move |_| seen.lock().unwrap().push("route out".into())))
    });
    app.on("/agent", |req| {
        let agent = req.get::<String>("agent").cloned();
        req.reply(&agent);
    });
    let running = start(app, 1);
    let addr = running.local_addr();
    let refused = AppClient::connect_to(addr, "/rooms/a", &[("X-Banned", "1")]).err().expect("refused");
    assert_eq!((refused.status, refused.body_text().as_str()), (403, "banned"));
    let mut closed = AppClient::connect_to(addr, "/rooms/a?close=1", &[]).expect("upgraded");
    assert_eq!(closed.expect_close(4003), "not today");
    let mut client = AppClient::connect_to(addr, "/rooms/blue", &[("User-Agent", "tests")]).expect("upgraded");
    assert_eq!(client.request("/agent", Value::Null), Ok(json!("tests")));
    client.close();
    eventually("the disconnect code", || log.lock().unwrap().len() >= 4);
    // Code after `next` runs in reverse order; refused sockets never got that far.
    assert_eq!(*log.lock().unwrap(), ["first in", "route in blue", "route out", "first out 1000"]);
    running.close();
}

#[test]
fn identify_at_upgrade_takes_a_token_from_the_query_or_a_header() {
    let mut app = App::new();
    app.identify(|conn| {
        let token = conn.query_value("token").or_else(|| conn.header("authorization").map(str::to_string));
        match token.as_deref() {
            Some("secret-ann") | Some("Bearer secret-ann") => Ok("ann".into()),
            _ => Err(Refusal::status(401, "bad token")),
        }
    });
    app.on("/me", |req| {
        let user = req.user().map(str::to_string);
        req.reply(&user);
    });
    let running = start(app, 1);
    let addr = running.local_addr();
    let mut client = AppClient::connect_to(addr, "/?token=secret-ann", &[]).expect("identified");
    assert_eq!(client.request("/me", Value::Null), Ok(json!("ann")));
    let mut other = AppClient::connect_to(addr, "/", &[("Authorization", "Bearer secret-ann")]).expect("by header");
    assert_eq!(other.request("/me", Value::Null), Ok(json!("ann")));
    assert_eq!(running.users(), ["ann"]);
    assert_eq!(AppClient::connect_to(addr, "/?token=wrong", &[]).err().map(|r| r.status), Some(401));
    client.close();
    other.close();
    running.close();
}

#[test]
fn identify_by_first_message() {
    let mut app = App::new();
    app.identify_by_message("/auth", |req| {
        #[derive(serde::Deserialize)]
        struct Token {
            token: String,
        }
        match req.data::<Token>() {
            Ok(Token { token }) if token == "t-bob" => Ok("bob".into()),
            _ => Err(Refusal::status(401, "unknown token")),
        }
    });
    app.on("@connection", |req| {
        let user = req.user().map(str::to_string);
        let _ = req.emit("/hello", &user);
    });
    app.on("/me", |req| {
        let user = req.user().map(str::to_string);
        req.reply(&user);
    });
    let running = start(app, 1);
    let addr = running.local_addr();
    let mut client = AppClient::connect_to(addr, "/", &[]).expect("upgraded");
    assert_eq!(client.request("/me", Value::Null).unwrap_err().0, "unauthorized");
    client.emit("/me", Value::Null);
    client.expect_error_event("unauthorized");
    assert_eq!(client.request("/auth", json!({ "token": "t-bob" })), Ok(json!({ "user": "bob" })));
    assert_eq!(client.expect_event("/hello"), json!("bob"));
    assert_eq!(client.request("/me", Value::Null), Ok(json!("bob")));
    client.close();

    let mut intruder = AppClient::connect_to(addr, "/", &[]).expect("upgraded");
    let (code, message) = intruder.request("/auth", json!({ "token": "nope" })).unwrap_err();
    assert_eq!((code.as_str(), message.as_str()), ("unauthorized", "unknown token"));
    assert_eq!(intruder.expect_close(4401), "unknown token");
    running.close();
}

#[test]
fn authentication_times_out() {
    let mut app = App::new();
    app.limits(EventLimits::default().auth_timeout(Duration::from_millis(100)));
    app.identify_by_message("/auth", |_| Ok("x".into()));
    let running = start(app, 1);
    let mut client = AppClient::connect_to(running.local_addr(), "/", &[]).expect("upgraded");
    assert_eq!(client.expect_close(4408), "authentication timeout");
    running.close();
}

#[test]
fn challenge_response_auth() {
    let mut app = App::new();
    app.challenge(Challenge::new(
        || "nonce-42".to_string(),
        |nonce, answer| {
            // The "signature" is the nonce reversed, followed by the user.
            let answer: (String, String) = answer.data().map_err(|_| Refusal::status(401, "bad answer"))?;
            match answer.0 == nonce.chars().rev().collect::<String>() {
                true => Ok(answer.1),
                false => Err(Refusal::status(403, "wrong signature")),
            }
        },
    ));
    app.on("/me", |req| {
        let user = req.user().map(str::to_string);
        req.reply(&user);
    });
    let running = start(app, 1);
    let addr = running.local_addr();
    let mut client = AppClient::connect_to(addr, "/", &[]).expect("upgraded");
    let call = client.next();
    assert_eq!(call[0], 1);
    assert_eq!(call[2], "@challenge");
    assert_eq!(call[3], json!({ "challenge": "nonce-42" }));
    assert_eq!(client.request("/me", Value::Null).unwrap_err().0, "unauthorized", "not before the answer");
    client.send_raw(&json!([2, call[1], ["24-ecnon", "carol"]]).to_string());
    eventually("carol to be in", || running.users() == ["carol"]);
    assert_eq!(client.request("/me", Value::Null), Ok(json!("carol")));
    client.close();

    let mut forger = AppClient::connect_to(addr, "/", &[]).expect("upgraded");
    let call = forger.next();
    forger.send_raw(&json!([2, call[1], ["forged", "mallory"]]).to_string());
    assert_eq!(forger.expect_close(4403), "wrong signature");

    let mut unprepared = AppClient::connect_to(addr, "/", &[]).expect("upgraded");
    let call = unprepared.next();
    unprepared.send_raw(&json!([3, call[1], { "code": "not_registered", "message": "no @challenge" }]).to_string());
    let reason = unprepared.expect_close(4401);
    assert!(reason.contains("no such procedure"), "{reason}");
    running.close();
}

#[test]
fn origins_outside_the_allow_list_get_403() {
    let mut app = App::new();
    app.origins(["https://chat.example"]);
    let running = start(app, 1);
    let addr = running.local_addr();
    let mut allowed = AppClient::connect_to(addr, "/", &[("Origin", "https://chat.example")]).expect("allowed");
    allowed.wait_ready();
    let refused = AppClient::connect_to(addr, "/", &[("Origin", "https://evil.example")]).err().expect("refused");
    assert_eq!(refused.status, 403);
    let no_origin = AppClient::connect(addr);
    allowed.close();
    no_origin.close();
    running.close();
}

#[test]
fn plain_http_is_served_on_the_same_port() {
    let mut app = App::new();
    app.on_http(|request| (request.path() == "/healthz").then(|| HttpResponse::new(200, "text/plain", "ok")));
    let running = start(app, 1);
    let addr = running.local_addr();
    let (_, reply, _) = http(addr, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!((reply.status, reply.body_text().as_str()), (200, "ok"));
    let (_, reply, _) = http(addr, b"GET /other HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(reply.status, 426);
    AppClient::connect(addr).close();
    running.close();
}

#[test]
fn subprotocol_is_selected_only_when_offered() {
    let running = start(App::new(), 1);
    let (_, reply, _) = http(running.local_addr(), &upgrade_request("/", &[]));
    assert_eq!(reply.status, 101);
    assert_eq!(reply.header("sec-websocket-protocol"), None);
    running.close();
}

#[test]
fn heartbeat_pings_runs_at_ping_and_closes_dead_peers() {
    let pings = Arc::new(Mutex::new(0));
    let mut app = App::new();
    app.plugin(plugins::heartbeat(Duration::from_millis(60)));
    let seen = pings.clone();
    app.on("@ping", move |req| {
        let data: Value = req.data().expect("rtt");
        assert!(data["rtt_ms"].is_u64());
        *seen.lock().unwrap() += 1;
    });
    let running = start(app, 1);
    let mut alive = AppClient::connect(running.local_addr());
    for _ in 0..2 {
        let Frame::Ping(payload) = alive.ws.recv() else { panic!("expected a heartbeat ping") };
        assert_eq!(payload.len(), 8);
        alive.ws.send(emitws::proto::OpCode::Pong, true, &payload);
    }
    eventually("two @ping", || *pings.lock().unwrap() == 2);
    let mut dead = AppClient::connect(running.local_addr());
    // It never answers: two pings, then the close.
    assert!(matches!(dead.ws.recv(), Frame::Ping(_)));
    assert!(matches!(dead.ws.recv(), Frame::Ping(_)));
    assert_eq!(dead.ws.expect_close(4408), "heartbeat timeout");
    drop(alive);
    running.close();
}
