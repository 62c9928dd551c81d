//! The egg-socket.io and WSE seed features (issue 18 §4), over real
//! sockets: namespace middleware, generated socket ids, trusted proxies
//! (the peer address and the per-address cap), client metadata (per
//! connection and the user's first), identity and peer address in
//! handlers, and unregistering procedures and routes on both sides (the
//! JavaScript client's part runs clients/js/test/meta_unregister.test.js under node).
#![cfg(feature = "app")]

#[path = "common/app.rs"]
mod app_client;
mod common;
#[path = "common/node.rs"]
mod node;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use app_client::{eventually, start, AppClient};
use emitws::app::{App, CallError, Refusal, Request};
use emitws::client::app::{AppClient as EventClient, AppOptions};
use serde_json::{json, Value};

/// A middleware that adds `name` to the request's trail.
fn mark(name: &'static str) -> impl Fn(&mut Request<'_>, emitws::app::Next<'_>) + Send + Sync + 'static {
    move |req, next| {
        let mut trail = req.get::<Vec<&str>>("trail").cloned().unwrap_or_default();
        trail.push(name);
        req.set("trail", trail);
        next.run(req);
    }
}

/// The trail of middleware the request went through, taken off the socket.
fn take_trail(req: &mut Request<'_>) -> Vec<&'static str> {
    req.remove("trail").and_then(|trail| trail.downcast::<Vec<&'static str>>().ok()).map_or_else(Vec::new, |t| *t)
}

/// Replies with the trail of middleware the request went through.
fn reply_trail(req: &mut Request<'_>) {
    let trail = take_trail(req);
    req.reply(&trail);
}

#[test]
fn namespace_middleware_runs_only_for_events_under_it_after_the_apps() {
    let mut app = App::new();
    app.middleware(mark("app"));
    app.ns("/chat").middleware(mark("chat")).on("/say", reply_trail);
    app.ns("/chat/room").middleware(mark("room")).on("/join", reply_trail);
    app.ns("/chat").ns("/room").on_with("/leave", [emitws::app::Middleware::new(mark("route"))], reply_trail);
    app.ns("/admin")
        .middleware(|req, next| {
            if req.query("key").as_deref() != Some("root") {
                return req.reply_err("forbidden", "admins only");
            }
            next.run(req);
        })
        .on("/stats", |req| req.reply(&"all good"));
    app.on("/chatter", reply_trail);
    app.on("/chat", reply_trail);
    app.on("@any", |req| {
        let trail = take_trail(req);
        let event = req.event().to_string();
        let _ = req.emit("/unhandled", &json!({ "event": event, "trail": trail }));
    });
    let running = start(app, 2);
    let addr = running.local_addr();
    let mut client = AppClient::connect(addr);
    assert_eq!(client.request("/chat/say", Value::Null), Ok(json!(["app", "chat"])));
    assert_eq!(client.request("/chat", Value::Null), Ok(json!(["app", "chat"])));
    assert_eq!(client.request("/chat/room/join", Value::Null), Ok(json!(["app", "chat", "room"])));
    assert_eq!(client.request("/chat/room/leave", Value::Null), Ok(json!(["app", "chat", "room", "route"])));
    // A name that merely starts with the prefix is not in the namespace.
    assert_eq!(client.request("/chatter", Value::Null), Ok(json!(["app"])));
    // Events without a handler go through the namespace's middleware too.
    client.emit("/chat/nobody", Value::Null);
    assert_eq!(client.expect_event("/unhandled"), json!({ "event": "/chat/nobody", "trail": ["app", "chat"] }));
    let refused = client.request("/admin/stats", Value::Null).expect_err("stopped by the namespace");
    assert_eq!(refused, ("forbidden".into(), "admins only".into()));
    client.close();
    let mut admin = AppClient::connect_to(addr, "/?key=root", &[]).expect("upgrade");
    admin.wait_ready();
    assert_eq!(admin.request("/admin/stats", Value::Null), Ok(json!("all good")));
    admin.close();
    running.close();
}

#[test]
fn generated_ids_name_sockets_in_ready_handlers_and_lookups_and_the_newest_takes_an_id() {
    let mut app = App::new();
    app.generate_id(|conn| match conn.query_value("device") {
        Some(device) if device == "long" => Ok("x".repeat(emitws::app::MAX_GENERATED_ID + 1)),
        Some(device) if !device.is_empty() => Ok(format!("device-{device}")),
        _ => Err(Refusal::status(400, "?device= is required")),
    });
    app.on("/me", |req| {
        let answer = json!({ "id": req.generated_id(), "socket": req.socket_id().to_string() });
        req.reply(&answer);
    });
    let running = start(app, 2);
    let addr = running.local_addr();
    let refused = AppClient::connect_to(addr, "/", &[]).err().expect("no device");
    assert_eq!((refused.status, refused.body_text().as_str()), (400, "?device= is required"));
    assert_eq!(AppClient::connect_to(addr, "/?device=long", &[]).err().map(|r| r.status), Some(500));

    let mut phone = AppClient::connect_to(addr, "/?device=phone", &[]).expect("upgrade");
    let ready = phone.wait_ready();
    assert_eq!(ready["id"], "device-phone", "{ready}");
    let me = phone.request("/me", Value::Null).expect("reply");
    assert_eq!(me["id"], "device-phone");
    // The cluster-wide socket id stays what routes messages.
    assert_eq!(me["socket"], ready["socket"]);

    let socket = running.socket_by_generated_id("device-phone").expect("found by its generated id");
    assert_eq!(socket.id().to_string(), ready["socket"].as_str().unwrap());
    assert!(socket.emit("/hello", "phone").expect("emits"));
    assert_eq!(phone.expect_event("/hello"), json!("phone"));
    assert!(running.socket_by_generated_id("device-tablet").is_none());

    // The same device back before its old socket is gone: the new one takes the id.
    let mut back = AppClient::connect_to(addr, "/?device=phone", &[]).expect("not locked out");
    let back_ready = back.wait_ready();
    assert_eq!(back_ready["id"], "device-phone");
    assert_ne!(back_ready["socket"], ready["socket"]);
    let found = running.socket_by_generated_id("device-phone").expect("found");
    assert_eq!(found.id().to_string(), back_ready["socket"].as_str().unwrap());
    assert_eq!(phone.request("/me", Value::Null).expect("reply")["id"], Value::Null, "the old socket has none");
    assert_eq!(back.request("/me", Value::Null).expect("reply")["id"], "device-phone");
    // The old socket going does not take the id from the new one.
    phone.close();
    std::thread::sleep(Duration::from_millis(50));
    let found = running.socket_by_generated_id("device-phone").expect("still the new one's");
    assert_eq!(found.id().to_string(), back_ready["socket"].as_str().unwrap());
    back.close();
    eventually("the id is free again", || running.socket_by_generated_id("device-phone").is_none());
    let mut again = AppClient::connect_to(addr, "/?device=phone", &[]).expect("upgrade");
    assert_eq!(again.wait_ready()["id"], "device-phone");
    again.close();

    // Without the hook, @ready has no "id".
    let running_plain = start(App::new(), 1);
    let plain = AppClient::connect(running_plain.local_addr());
    assert_eq!(plain.ready.as_ref().and_then(|r| r.get("id")), None);
    plain.close();
    running_plain.close();
    running.close();
}

/// An app that tells each socket its peer address, trusting `proxies`,
/// capping each address to one socket.
fn proxied_app(proxies: &[&str]) -> App {
    let mut app = App::new();
    app.trusted_proxies(proxies.iter().copied()).expect("valid proxies").max_sockets_per_ip(Some(1));
    app.on("/addr", |req| {
        let addr = req.peer_addr().map(|a| a.ip().to_string());
        req.reply(&addr);
    });
    app
}

#[test]
fn forwarded_for_is_believed_from_trusted_proxies_only() {
    // 127.0.0.1 is not a trusted proxy here: the header is the client's own say-so.
    let running = start(proxied_app(&["10.0.0.0/8"]), 1);
    let addr = running.local_addr();
    let mut spoofer = AppClient::connect_to(addr, "/", &[("X-Forwarded-For", "203.0.113.7")]).expect("upgrade");
    spoofer.wait_ready();
    assert_eq!(spoofer.request("/addr", Value::Null), Ok(json!("127.0.0.1")));
    // And the per-address cap counts 127.0.0.1, whatever the header says.
    let over = AppClient::connect_to(addr, "/", &[("X-Forwarded-For", "203.0.113.8")]).err().expect("over the cap");
    assert_eq!((over.status, over.body_text().as_str()), (503, "too many connections from this address"));
    spoofer.close();
    running.close();

    let running = start(proxied_app(&["127.0.0.1", "10.0.0.0/8"]), 2);
    let addr = running.local_addr();
    let mut first = AppClient::connect_to(addr, "/", &[("X-Forwarded-For", "203.0.113.7")]).expect("upgrade");
    first.wait_ready();
    assert_eq!(first.request("/addr", Value::Null), Ok(json!("203.0.113.7")));
    // The rightmost untrusted hop: what the client wrote on the left is not believed.
    let chain = "198.51.100.1, 203.0.113.9, 10.1.2.3";
    let mut second = AppClient::connect_to(addr, "/", &[("X-Forwarded-For", chain)]).expect("upgrade");
    second.wait_ready();
    assert_eq!(second.request("/addr", Value::Null), Ok(json!("203.0.113.9")));
    // The cap counts the forwarded addresses: 203.0.113.7 has its one socket.
    let over = AppClient::connect_to(addr, "/", &[("X-Forwarded-For", "203.0.113.7")]).err().expect("over the cap");
    assert_eq!(over.status, 503);
    first.close();
    let mut third = None;
    eventually("203.0.113.7's socket is uncounted", || {
        third = AppClient::connect_to(addr, "/", &[("X-Forwarded-For", "203.0.113.7")]).ok();
        third.is_some()
    });
    let mut third = third.expect("connected");
    third.wait_ready();
    assert_eq!(third.request("/addr", Value::Null), Ok(json!("203.0.113.7")));
    third.close();
    second.close();
    running.close();

    let mut app = App::new();
    assert_eq!(
        app.trusted_proxies(["127.0.0.1", "10.0.0.0/40"]).err().map(|e| e.to_string()),
        Some("\"10.0.0.0/40\" is not an IP address nor a network ADDRESS/BITS (10.0.0.0/8, fd00::/8)".to_string())
    );
}

/// An app whose users come from `?user=` and whose `/who` tells a socket
/// its metadata, its user's first connection's, its identity and address.
fn meta_app() -> App {
    let mut app = App::new();
    app.max_meta(64);
    app.identify(|conn| {
        let user = conn.query_value("user").unwrap_or_else(|| "anon".into());
        conn.set_identity(&json!({ "token": format!("t-{user}") })).expect("serializes");
        Ok(user)
    });
    let seen = Arc::new(Mutex::new(None::<Value>));
    let at_connection = seen.clone();
    app.on("@connection", move |req| {
        // Handlers of `@connection` see it as every other handler.
        let meta = req.meta().map(|m| serde_json::from_str::<Value>(m.get()).expect("JSON"));
        *at_connection.lock().unwrap() = meta;
    });
    app.on("/who", |req| {
        let raw = |value: Option<&serde_json::value::RawValue>| {
            value.map(|v| serde_json::from_str::<Value>(v.get()).unwrap())
        };
        let first = req.user_meta();
        let answer = json!({
            "meta": raw(req.meta()),
            "first": raw(first.as_deref()),
            "identity": raw(req.identity()),
            "user": req.user(),
            "addr": req.peer_addr().map(|a| a.ip().to_string()),
        });
        req.reply(&answer);
    });
    app
}

/// `emitws_meta` for a URL: the JSON, percent-encoded.
fn meta_query(meta: &Value) -> String {
    let text = meta.to_string();
    text.bytes()
        .map(|b| if b.is_ascii_alphanumeric() { char::from(b).to_string() } else { format!("%{b:02X}") })
        .collect()
}

#[test]
fn metadata_per_connection_and_per_user_and_identity_and_address_in_handlers() {
    let running = start(meta_app(), 2);
    let addr = running.local_addr();
    let connect = |user: &str, meta: &Value| {
        let mut client = AppClient::connect_to(addr, &format!("/?user={user}&emitws_meta={}", meta_query(meta)), &[])
            .expect("upgrade");
        client.wait_ready();
        client
    };
    let mut phone = connect("ann", &json!({ "device": "phone" }));
    let who = phone.request("/who", Value::Null).expect("reply");
    assert_eq!(
        who,
        json!({
            "meta": { "device": "phone" },
            "first": { "device": "phone" },
            "identity": { "token": "t-ann" },
            "user": "ann",
            "addr": "127.0.0.1",
        })
    );
    // A second device of ann: its own metadata, and the first one's as the user's.
    let mut laptop = connect("ann", &json!({ "device": "laptop" }));
    let who = laptop.request("/who", Value::Null).expect("reply");
    assert_eq!((&who["meta"], &who["first"]), (&json!({ "device": "laptop" }), &json!({ "device": "phone" })));
    // A socket of ann without metadata reads the user's all the same.
    let mut bare_ann = AppClient::connect_to(addr, "/?user=ann", &[]).expect("upgrade");
    bare_ann.wait_ready();
    let who = bare_ann.request("/who", Value::Null).expect("reply");
    assert_eq!((&who["meta"], &who["first"]), (&Value::Null, &json!({ "device": "phone" })));
    bare_ann.close();
    // The user's metadata stays the first's while ann has a socket with some here, even once that one left.
    phone.close();
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(laptop.request("/who", Value::Null).expect("reply")["first"], json!({ "device": "phone" }));
    laptop.close();
    // Once all are gone, the next connection is the first again.
    let mut tablet = None;
    eventually("ann's first connection is the next one", || {
        let mut client = connect("ann", &json!({ "device": "tablet" }));
        let first = client.request("/who", Value::Null).expect("reply")["first"].clone();
        let done = first == json!({ "device": "tablet" });
        match done {
            true => tablet = Some(client),
            false => client.close(),
        }
        done
    });
    tablet.expect("connected").close();
    // No metadata: none, for the socket and (it is bob's first) for the user.
    let mut bare = AppClient::connect_to(addr, "/?user=bob", &[]).expect("upgrade");
    bare.wait_ready();
    let who = bare.request("/who", Value::Null).expect("reply");
    assert_eq!((&who["meta"], &who["first"]), (&Value::Null, &Value::Null));
    bare.close();
    // Bad metadata is refused at the upgrade, saying why.
    let refused = AppClient::connect_to(addr, "/?emitws_meta=%7Bnope", &[]).err().expect("not JSON");
    assert_eq!(refused.status, 400);
    assert!(refused.body_text().starts_with("emitws_meta: not JSON"), "{}", refused.body_text());
    let big = json!({ "pad": "x".repeat(64) });
    let refused =
        AppClient::connect_to(addr, &format!("/?emitws_meta={}", meta_query(&big)), &[]).err().expect("too big");
    assert_eq!((refused.status, refused.body_text()), (400, "emitws_meta: 74 bytes, the limit is 64".to_string()));

    // The Rust event client sends its metadata on every connection.
    let url = format!("ws://{addr}/?user=cy");
    let options = AppOptions::default().meta(Some(json!({ "app": "1.4.2", "lang": "uk é" })));
    let client = EventClient::connect(&url, options).expect("connect");
    let who = client.request("/who", Value::Null, Duration::from_secs(3)).expect("reply");
    assert_eq!(who["meta"], json!({ "app": "1.4.2", "lang": "uk é" }));
    client.close();
    running.close();
}

#[test]
fn identity_is_the_first_message_that_identified_the_socket() {
    let mut app = App::new();
    app.identify_by_message("/login", |req| match req.data::<Value>() {
        Ok(data) if data["token"] == "t-erin" => Ok("erin".into()),
        _ => Err(Refusal::status(401, "bad token")),
    });
    app.on("/who", |req| {
        let identity = req.identity().map(|v| serde_json::from_str::<Value>(v.get()).unwrap());
        let answer =
            json!({ "user": req.user(), "identity": identity, "addr": req.peer_addr().map(|a| a.ip().to_string()) });
        req.reply(&answer);
    });
    let running = start(app, 1);
    let mut client = AppClient::connect_to(running.local_addr(), "/", &[]).expect("upgrade");
    assert_eq!(client.request("/login", json!({ "token": "t-erin", "device": "d1" })), Ok(json!({ "user": "erin" })));
    client.wait_ready();
    let who = client.request("/who", Value::Null).expect("reply");
    assert_eq!(who, json!({ "user": "erin", "identity": { "token": "t-erin", "device": "d1" }, "addr": "127.0.0.1" }));
    client.close();
    running.close();
}

#[test]
fn identity_is_the_accepted_answer_to_the_challenge() {
    let mut app = App::new();
    app.challenge(emitws::app::Challenge::new(
        || "nonce-7".to_string(),
        |nonce, answer| {
            let (signature, user): (String, String) = answer.data().map_err(|_| Refusal::status(401, "bad answer"))?;
            match signature == nonce.chars().rev().collect::<String>() {
                true => Ok(user),
                false => Err(Refusal::status(403, "wrong signature")),
            }
        },
    ));
    app.on("/who", |req| {
        let identity = req.identity().map(|v| serde_json::from_str::<Value>(v.get()).unwrap());
        req.reply(&json!({ "user": req.user(), "identity": identity }));
    });
    let running = start(app, 1);
    let client = EventClient::new(&format!("ws://{}/", running.local_addr()), AppOptions::default()).expect("client");
    client.register("@challenge", |data| {
        let nonce = data["challenge"].as_str().unwrap_or_default();
        Ok(json!([nonce.chars().rev().collect::<String>(), "dan"]))
    });
    client.open().expect("authenticated");
    let who = client.request("/who", Value::Null, Duration::from_secs(3)).expect("reply");
    assert_eq!(who, json!({ "user": "dan", "identity": ["7-ecnon", "dan"] }));
    client.close();
    running.close();
}

/// Asks the client's procedure named in the data, replying with its answer or error code.
fn ask(req: &mut Request<'_>) {
    let Some(name) = req.expect_data::<String>() else { return };
    let reply = req.defer();
    let _ = reply.socket().call_then(&name, &Value::Null, Duration::from_secs(2), move |result| match result {
        Ok(answer) => reply.reply(&json!({ "answer": answer.data::<Value>().unwrap_or(Value::Null) })),
        Err(CallError::NotRegistered(_)) => reply.reply(&json!({ "error": "not_registered" })),
        Err(other) => reply.reply(&json!({ "error": other.to_string() })),
    });
}

#[test]
fn procedures_and_routes_are_unregistered_on_both_sides() {
    let mut app = App::new();
    app.route("/");
    app.route("/beta");
    app.on("/feature", |req| req.reply(&"on"));
    app.on("/ask", ask);
    let running = start(app, 2);
    let addr = running.local_addr();
    let mut raw = AppClient::connect(addr);
    assert_eq!(raw.request("/feature", Value::Null), Ok(json!("on")));

    // Server side: the route goes, on every worker, for sockets already connected too.
    assert!(running.unregister("/feature"));
    assert!(!running.unregister("/feature"), "already taken away");
    assert!(!running.unregister("/never"), "no such route");
    let (code, _) = raw.request("/feature", Value::Null).expect_err("taken away");
    assert_eq!(code, "no_handler");
    let mut other = AppClient::connect(addr);
    assert_eq!(other.request("/feature", Value::Null).expect_err("taken away").0, "no_handler");
    assert!(running.register_again("/feature"));
    assert!(!running.register_again("/feature"));
    assert_eq!(other.request("/feature", Value::Null), Ok(json!("on")));
    other.close();

    // Path routes: new upgrades to a removed one get 404; its sockets stay.
    let mut beta = AppClient::connect_to(addr, "/beta", &[]).expect("route");
    beta.wait_ready();
    assert!(running.unregister_path("/beta", true));
    assert!(!running.unregister_path("/beta", true));
    assert!(!running.unregister_path("/gamma", true));
    assert_eq!(AppClient::connect_to(addr, "/beta", &[]).err().map(|r| r.status), Some(404));
    assert_eq!(beta.request("/feature", Value::Null), Ok(json!("on")));
    assert!(running.unregister_path("/beta", false));
    let mut back = AppClient::connect_to(addr, "/beta", &[]).expect("back");
    back.wait_ready();
    back.close();
    beta.close();
    raw.close();

    // Client side: the Rust client's procedure, then gone.
    let client = EventClient::connect(&format!("ws://{addr}/"), AppOptions::default()).expect("connect");
    client.register("/client/version", |_| Ok(json!("1.0")));
    client.ns("/client").register("/lang", |_| Ok(json!("uk")));
    let asked = |name: &str| client.request("/ask", json!(name), Duration::from_secs(3)).expect("reply");
    assert_eq!(asked("/client/version"), json!({ "answer": "1.0" }));
    assert_eq!(asked("/client/lang"), json!({ "answer": "uk" }));
    client.unregister("/client/version");
    client.ns("/client").unregister("/lang");
    assert_eq!(asked("/client/version"), json!({ "error": "not_registered" }));
    assert_eq!(asked("/client/lang"), json!({ "error": "not_registered" }));
    client.close();
    running.close();
}

#[test]
fn javascript_client_sends_metadata_and_unregisters_procedures() {
    let mut app = meta_app();
    app.on("/ask", ask);
    let running = app.listen("127.0.0.1:0").expect("listen");
    node::run_node_tests(
        "meta_unregister.test.js",
        &[("EMITWS_SEEDS_URL", format!("ws://{}/?user=js", running.local_addr()))],
    );
    running.close();
}
