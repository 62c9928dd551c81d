//! The server's wire rules of issue 12, over real sockets with raw frames:
//! escaped strings in data, close codes by error kind, what counts against
//! the rate, panics reported to `@error`, escaped names, the depth
//! boundary, short answers to calls, subprotocol refusal, duplicate request
//! ids, and data relayed exactly as written.
#![cfg(feature = "app")]

#[path = "common/app.rs"]
mod app_client;
mod common;

use std::borrow::Cow;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use app_client::{eventually, start, AppClient};
use common::{http, upgrade_request};
use emitws::app::{App, BroadcastOpts, EventLimits, Policy, Rate, ReplyHandle, Running};
use serde_json::{json, Value};

/// Every escape JSON has, in one string as a client may write it, and what it decodes to.
const ESCAPED: &str = r#""q\" b\\ n\n t\t s\/ e\u00e9 smile\ud83d\ude00""#;
const DECODED: &str = "q\" b\\ n\n t\t s/ e\u{e9} smile\u{1f600}";

#[test]
fn data_reads_every_escape_owned_and_borrowed_as_cow() {
    #[derive(serde::Deserialize)]
    struct Say<'a> {
        #[serde(borrow)]
        text: Cow<'a, str>,
    }
    let mut app = App::new();
    app.on("/owned", |req| {
        let Some(text) = req.expect_data::<String>() else { return };
        req.reply(&text);
    });
    app.on("/cow", |req| match req.data_borrowed::<Say>() {
        Ok(say) => req.reply(&json!({ "text": say.text, "borrowed": matches!(say.text, Cow::Borrowed(_)) })),
        Err(e) => req.reply_err("bad_request", &e.to_string()),
    });
    let running = start(app, 1);
    let mut client = AppClient::connect(running.local_addr());
    client.send_raw(&format!(r#"[1,1,"/owned",{ESCAPED}]"#));
    assert_eq!(client.reply_to(1), Ok(json!(DECODED)));
    client.send_raw(&format!(r#"[1,2,"/cow",{{"text":{ESCAPED}}}]"#));
    assert_eq!(client.reply_to(2), Ok(json!({ "text": DECODED, "borrowed": false })));
    client.send_raw(r#"[1,3,"/cow",{"text":"plain"}]"#);
    assert_eq!(client.reply_to(3), Ok(json!({ "text": "plain", "borrowed": true })));
    client.close();
    running.close();
}

/// Connects a client that sends `text` to an app closing on bad input, and returns the close reason.
fn close_for(app: &Running, text: Option<&str>, code: u16) -> String {
    let mut client = AppClient::connect(app.local_addr());
    match text {
        Some(text) => client.send_raw(text),
        None => client.ws.send_binary(b"[0,\"/x\"]"),
    }
    client.expect_close(code)
}

#[test]
fn with_policy_close_only_text_that_is_not_json_closes_1007() {
    let mut app = App::new();
    app.limits(EventLimits::default().on_bad_input(Policy::Close).max_depth(4));
    app.on("/x", |_| {});
    let running = start(app, 1);
    for no_envelope in ["{}", "5", "[]", "[\"0\",\"/x\"]", "[-1,\"/x\"]", "[1,0,\"/x\"]", "[0,\"x\"]", "[[[[[0]]]]]"] {
        close_for(&running, Some(no_envelope), 1008);
    }
    close_for(&running, None, 1008);
    for not_json in ["nope", "[0,\"/x\"", "[0,\"/x\"] trailing", "[\"0\",{", "{not json"] {
        let reason = close_for(&running, Some(not_json), 1007);
        assert!(reason.starts_with("malformed JSON"), "{not_json}: {reason}");
    }
    running.close();
}

#[test]
fn answers_to_the_servers_calls_never_count_against_the_rate() {
    let mut app = App::new();
    // No token comes back within the test: the burst is all there is.
    app.limits(EventLimits::default().rate(Some(Rate { per_second: 0.001, burst: 2.0 })));
    app.on("/ask", |req| {
        let reply = req.defer();
        let _ = req.call("confirm", &"sure?", Duration::from_secs(2), move |answer| match answer {
            Ok(answer) => reply.reply(&json!({ "answer": answer.data::<Value>().ok() })),
            Err(e) => reply.reply_err("failed", &e.to_string()),
        });
    });
    let running = start(app, 1);
    let mut client = AppClient::connect(running.local_addr());
    client.send_raw(r#"[1,1,"/ask"]"#);
    let call = client.next();
    assert_eq!(call[2], "confirm", "{call}");
    client.send_raw(r#"[0,"/nothing"]"#);
    // The bucket is empty now: the answer still goes through.
    client.send_raw(&format!("[2,{},true]", call[1]));
    assert_eq!(client.next(), json!([2, 1, { "answer": true }]));
    // An answer to no waiting call counts, and is over the rate.
    client.send_raw(&format!("[2,{},true]", call[1]));
    client.expect_error_event("rate_limited");
    client.close();
    running.close();
}

#[test]
fn a_flood_gets_one_rate_limited_error_event_until_a_message_passes() {
    let mut app = App::new();
    app.limits(EventLimits::default().rate(Some(Rate { per_second: 0.001, burst: 2.0 })));
    app.on("/e", |_| {});
    let running = start(app, 1);
    let mut client = AppClient::connect(running.local_addr());
    // Two pass; the rest are over the rate, binary frames too.
    for i in 0..10 {
        client.send_raw(r#"[0,"/e"]"#);
        if i >= 2 {
            client.ws.send_binary(b"binary frames count too");
        }
    }
    client.send_raw(r#"[9,"a later type"]"#);
    client.send_raw(r#"[1,77,"/e"]"#);
    client.expect_error_event("rate_limited");
    // Requests are still answered, each one: nothing else came before.
    let reply = client.next();
    assert_eq!(
        (reply[0].clone(), reply[1].clone(), reply[2]["code"].clone()),
        (json!(3), json!(77), json!("rate_limited"))
    );
    client.close();
    running.close();
}

#[test]
fn a_panicking_handler_reaches_the_error_hook_with_the_event_name() {
    let seen = Arc::new(Mutex::new(Vec::<Value>::new()));
    let mut app = App::new();
    app.on("/boom", |_| panic!("deliberate panic in a test handler"));
    app.on("@connection", |req| assert!(req.query("boom").is_none(), "deliberate panic in a test @connection"));
    let hook = seen.clone();
    app.on("@error", move |req| hook.lock().unwrap().push(req.data::<Value>().unwrap()));
    let running = start(app, 1);
    let mut client = AppClient::connect(running.local_addr());
    assert_eq!(client.request("/boom", Value::Null).unwrap_err().0, "internal");
    client.emit("/boom", json!(1));
    eventually("two reports", || seen.lock().unwrap().len() == 2);
    for report in seen.lock().unwrap().drain(..) {
        assert_eq!((&report["code"], &report["event"]), (&json!("internal"), &json!("/boom")), "{report}");
    }
    let mut system = AppClient::connect_to(running.local_addr(), "/?boom=1", &[]).expect("upgraded");
    eventually("the @connection report", || !seen.lock().unwrap().is_empty());
    assert_eq!(seen.lock().unwrap()[0]["event"], "@connection");
    assert_eq!(system.request("/boom", Value::Null).unwrap_err().0, "internal", "the socket goes on");
    system.close();
    client.close();
    running.close();
}

#[test]
fn names_written_with_escapes_are_refused_not_decoded() {
    let mut app = App::new();
    app.on("/ping", |req| req.reply(&"pong"));
    let running = start(app, 1);
    let mut client = AppClient::connect(running.local_addr());
    client.send_raw(r#"[1,1,"\/ping"]"#);
    let (code, message) = client.reply_to(1).unwrap_err();
    assert_eq!(code, "bad_request");
    assert!(message.contains("escape"), "{message}");
    client.send_raw(r#"[1,2,"/ping"]"#);
    assert_eq!(client.reply_to(2), Ok(json!("pong")));
    client.close();
    running.close();
}

/// A JSON array `levels` deep.
fn nested(levels: usize) -> String {
    "[".repeat(levels) + &"]".repeat(levels)
}

#[test]
fn the_depth_limit_counts_the_envelope() {
    let mut app = App::new();
    app.on("/echo", |req| {
        let data = req.raw_data().map(|d| d.get().to_string());
        req.reply(&data);
    });
    let running = start(app, 1);
    let mut client = AppClient::connect(running.local_addr());
    let deepest = nested(EventLimits::default().max_depth - 1);
    client.send_raw(&format!(r#"[1,1,"/echo",{deepest}]"#));
    assert_eq!(client.reply_to(1), Ok(json!(deepest)));
    client.send_raw(&format!(r#"[1,2,"/echo",{}]"#, nested(EventLimits::default().max_depth)));
    let (code, message) = client.reply_to(2).unwrap_err();
    assert_eq!(code, "bad_request");
    assert!(message.contains("deeper than 32"), "{message}");
    client.close();
    running.close();
}

#[test]
fn short_answers_to_calls_are_accepted() {
    let mut app = App::new();
    app.on("/ask", |req| {
        let reply = req.defer();
        let _ = req.call("confirm", &(), Duration::from_secs(2), move |answer| match answer {
            Ok(answer) => reply.reply(&json!({ "data": answer.raw() })),
            Err(e) => reply.reply(&json!({ "error": e.to_string() })),
        });
    });
    let running = start(app, 1);
    let mut client = AppClient::connect(running.local_addr());
    client.send_raw(r#"[1,1,"/ask"]"#);
    let call = client.next();
    client.send_raw(&format!("[2,{}]", call[1]));
    assert_eq!(client.reply_to(1), Ok(json!({ "data": "null" })));
    client.send_raw(r#"[1,2,"/ask"]"#);
    let call = client.next();
    client.send_raw(&format!(r#"[3,{},{{"code":"busy"}}]"#, call[1]));
    assert_eq!(client.reply_to(2), Ok(json!({ "error": "busy: " })));
    client.close();
    running.close();
}

#[test]
fn subprotocols_offered_without_emitws_v1_are_refused_400() {
    let running = start(App::new(), 1);
    let addr = running.local_addr();
    let (_stream, reply, _) = http(addr, &upgrade_request("/", &[("Sec-WebSocket-Protocol", "chat, superchat")]));
    assert_eq!(reply.status, 400);
    assert!(reply.body_text().contains("emitws.v1"), "{}", reply.body_text());
    let (_stream, reply, _) = http(addr, &upgrade_request("/", &[("Sec-WebSocket-Protocol", "chat, emitws.v1")]));
    assert_eq!((reply.status, reply.header("sec-websocket-protocol")), (101, Some("emitws.v1")));
    let (_stream, reply, _) = http(addr, &upgrade_request("/", &[]));
    assert_eq!((reply.status, reply.header("sec-websocket-protocol")), (101, None));
    running.close();
}

#[test]
fn a_request_id_still_waiting_for_its_reply_is_refused_as_a_duplicate() {
    let waiting = Arc::new(Mutex::new(Vec::<ReplyHandle>::new()));
    let mut app = App::new();
    let parked = waiting.clone();
    app.on("/slow", move |req| parked.lock().unwrap().push(req.defer()));
    let released = waiting.clone();
    app.on("/release", move |_| released.lock().unwrap().drain(..).for_each(|reply| reply.reply(&"late")));
    let running = start(app, 1);
    let mut client = AppClient::connect(running.local_addr());
    client.send_raw(r#"[1,5,"/slow"]"#);
    client.send_raw(r#"[1,5,"/slow"]"#);
    let (code, message) = client.reply_to(5).unwrap_err();
    assert_eq!(code, "bad_request");
    assert!(message.contains("duplicate request id"), "{message}");
    client.send_raw(r#"[1,6,"/release"]"#);
    assert_eq!(client.reply_to(5), Ok(json!("late")), "the earlier request still gets its reply");
    assert_eq!(client.reply_to(6), Ok(Value::Null));
    // Answered, the id is free again.
    client.send_raw(r#"[1,5,"/release"]"#);
    assert_eq!(client.reply_to(5), Ok(Value::Null));
    client.close();
    running.close();
}

#[test]
fn data_is_relayed_exactly_as_the_client_wrote_it() {
    let mut app = App::new();
    app.on("/echo", |req| {
        let data = req.raw_data();
        let _ = req.broadcast("/echoed", &data, BroadcastOpts::all().include_self());
        req.reply(&data);
    });
    let running = start(app, 1);
    let mut client = AppClient::connect(running.local_addr());
    for (id, data) in (1..).zip([r#"{ "a" :  [ 1 ,2 ] }"#, "1e400", r#""\ud800""#, r#"-0.0E+2"#, ESCAPED]) {
        client.send_raw(&format!(r#"[1,{id},"/echo",{data}]"#));
        let mut got = [client.next_text(), client.next_text()];
        got.sort();
        assert_eq!(got, [format!(r#"[0,"/echoed",{data}]"#), format!("[2,{id},{data}]")]);
    }
    client.close();
    running.close();
}

#[test]
fn a_panicking_error_hook_is_not_reported_to_itself() {
    let mut app = App::new();
    app.on("@error", |_| panic!("deliberate panic in a test error hook"));
    app.on("/ok", |req| req.reply(&true));
    let running = start(app, 1);
    let mut client = AppClient::connect(running.local_addr());
    client.send_raw("[0,42]");
    client.expect_error_event("bad_request");
    assert_eq!(client.request("/ok", Value::Null), Ok(json!(true)));
    client.close();
    running.close();
}

/// PROTOCOL §6: without the app's heartbeat, the engine's keepalive notices
/// a peer that stopped answering pings and closes it with 4408, a close frame
/// first.
#[test]
fn a_socket_that_answers_no_pings_is_closed_with_4408() {
    use emitws::runtime::{Keepalive, Server};
    let short = Duration::from_millis(50);
    let server = Server::new().keepalive(Some(Keepalive { idle: short, timeout: short, ..Keepalive::default() }));
    let running = App::new().listen_with(server, "127.0.0.1:0").expect("listen");
    let mut client = AppClient::connect(running.local_addr());
    let close = loop {
        match client.ws.recv() {
            common::Frame::Ping(_) => {} // never answered
            other => break other,
        }
    };
    assert!(matches!(close, common::Frame::Close(Some(4408), _)), "{close:?}");
    running.close();
}
