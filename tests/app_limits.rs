//! Abuse limits and bad input: each limit's default behaviour and its
//! setting, malformed envelopes, bad ids, binary frames, system events from
//! clients. Nothing here may panic the server or hurt other sockets.
#![cfg(feature = "app")]

#[path = "common/app.rs"]
mod app_client;
mod common;

use app_client::{start, AppClient};
use emitws::app::{App, EventLimits, Policy, Rate};
use serde_json::{json, Value};

fn echo_app(limits: EventLimits) -> App {
    let mut app = App::new();
    app.limits(limits);
    app.on("/echo", |req| {
        if let Some(data) = req.expect_data::<Value>() {
            req.reply(&data);
        }
    });
    app
}

#[test]
fn malformed_envelopes_get_bad_request_and_the_socket_goes_on() {
    let running = start(echo_app(EventLimits::default()), 1);
    let mut client = AppClient::connect(running.local_addr());
    for junk in ["", "nope", "{}", "[]", "[\"0\"]", "[0]", "[0,42]", "[1]", "[1,\"x\",\"/echo\"]", "[0,\"/echo\"] x"] {
        client.send_raw(junk);
        client.expect_error_event("bad_request");
    }
    // An id that can be read gets an error reply instead.
    client.send_raw(r#"[1,5,"/echo",{"unterminated"#);
    let reply = client.next();
    assert_eq!(
        (reply[0].clone(), reply[1].clone(), reply[2]["code"].clone()),
        (json!(3), json!(5), json!("bad_request"))
    );
    client.send_raw(r#"[1,6,42]"#);
    assert_eq!(client.reply_to(6).unwrap_err().0, "bad_request");
    // Ids that are not safe positive integers.
    for id in ["0", "-1", "1.5", "9007199254740992", "\"7\"", "1e2", "null"] {
        client.send_raw(&format!("[1,{id},\"/echo\"]"));
        let message = client.expect_error_event("bad_request");
        assert!(message.contains("id"), "{id}: {message}");
    }
    client.send_raw(r#"[1,9007199254740991,"/echo",1]"#);
    assert_eq!(client.next(), json!([2, 9_007_199_254_740_991u64, 1]));
    // Later envelope types are ignored; extra elements too.
    client.send_raw(r#"[7,"future",{}]"#);
    assert_eq!(client.request("/echo", json!("still here")), Ok(json!("still here")));
    client.send_raw(r#"[1,77,"/echo","x","extra"]"#);
    assert_eq!(client.reply_to(77), Ok(json!("x")));
    client.close();
    running.close();
}

#[test]
fn names_binary_frames_and_system_events_from_clients_are_refused() {
    let running = start(echo_app(EventLimits::default().max_event_name(16)), 1);
    let mut client = AppClient::connect(running.local_addr());
    assert_eq!(client.request("@connection", Value::Null).unwrap_err().0, "bad_request");
    assert_eq!(client.request("echo", Value::Null).unwrap_err().0, "bad_request");
    assert_eq!(client.request("/a b", Value::Null).unwrap_err().0, "bad_request");
    let (code, message) = client.request("/a-very-long-event-name", Value::Null).unwrap_err();
    assert_eq!((code.as_str(), message.as_str()), ("bad_request", "event name too long"));
    client.send_raw(r#"[1,50,"/ech\u006f"]"#);
    assert_eq!(client.reply_to(50).unwrap_err().0, "bad_request", "escaped names are refused");
    client.ws.send_binary(b"\x00\x01");
    let message = client.expect_error_event("bad_request");
    assert!(message.contains("binary"), "{message}");
    assert_eq!(client.request("/echo", json!(1)), Ok(json!(1)));
    client.close();
    running.close();
}

#[test]
fn size_and_depth_limits() {
    let running = start(echo_app(EventLimits::default().max_message(100).max_depth(4)), 1);
    let mut client = AppClient::connect(running.local_addr());
    let big = "x".repeat(100);
    let (code, message) = client.request("/echo", json!(big)).unwrap_err();
    assert_eq!(code, "too_large");
    assert!(message.contains("the limit is 100"), "{message}");
    client.emit("/echo", json!(big));
    client.expect_error_event("too_large");
    assert_eq!(client.request("/echo", json!([[[1]]])), Ok(json!([[[1]]])), "depth 4 with the envelope");
    let (code, message) = client.request("/echo", json!([[[[1]]]])).unwrap_err();
    assert_eq!(code, "bad_request");
    assert!(message.contains("deeper than 4"), "{message}");
    // Strings that look like nesting do not count.
    assert_eq!(client.request("/echo", json!("[[[[[[")), Ok(json!("[[[[[[")));
    client.close();
    running.close();
}

#[test]
fn deep_nesting_far_past_serde_limits_does_not_hurt() {
    let running = start(echo_app(EventLimits::default().max_depth(10_000)), 1);
    let mut client = AppClient::connect(running.local_addr());
    let deep = format!("[1,1,\"/echo\",{}{}]", "[".repeat(5000), "]".repeat(5000));
    client.send_raw(&deep);
    // The envelope parses (serde_json skips raw values without recursing);
    // typed access then fails cleanly at serde_json's own recursion limit.
    assert_eq!(client.reply_to(1).unwrap_err().0, "bad_request");
    assert_eq!(client.request("/echo", json!(2)), Ok(json!(2)));
    client.close();
    running.close();
}

#[test]
fn the_rate_limit_answers_rate_limited_then_refills() {
    // Slow enough that no token comes back while the five requests arrive, even on a busy machine.
    let rate = Rate { per_second: 4.0, burst: 3.0 };
    let running = start(echo_app(EventLimits::default().rate(Some(rate))), 1);
    let mut client = AppClient::connect(running.local_addr());
    let ids: Vec<u64> = (0..5).map(|i| client.send_request("/echo", json!(i))).collect();
    let answers: Vec<_> = ids.iter().map(|id| client.reply_to(*id).map_err(|e| e.0)).collect();
    assert_eq!(answers[..3], [Ok(json!(0)), Ok(json!(1)), Ok(json!(2))]);
    assert_eq!(answers[3..], [Err("rate_limited".to_string()), Err("rate_limited".to_string())]);
    client.emit("/echo", Value::Null);
    client.expect_error_event("rate_limited");
    std::thread::sleep(common::ms(300));
    assert_eq!(client.request("/echo", json!("refilled")), Ok(json!("refilled")));
    client.close();
    running.close();
}

#[test]
fn policies_can_close_instead() {
    let limits = EventLimits::default()
        .rate(Some(Rate { per_second: 1.0, burst: 2.0 }))
        .over_rate(Policy::Close)
        .on_bad_input(Policy::Close);
    let running = start(echo_app(limits), 1);
    let addr = running.local_addr();
    let mut flooder = AppClient::connect(addr);
    for _ in 0..3 {
        flooder.emit("/echo", Value::Null);
    }
    assert_eq!(flooder.expect_close(1008), "too many messages");
    let mut garbler = AppClient::connect(addr);
    garbler.send_raw("{not json");
    let reason = garbler.expect_close(1007);
    assert!(reason.starts_with("malformed"), "{reason}");
    let mut rude = AppClient::connect(addr);
    rude.emit("@disconnect", Value::Null);
    rude.expect_close(1008);
    // Other sockets were not affected.
    let mut polite = AppClient::connect(addr);
    assert_eq!(polite.request("/echo", json!("ok")), Ok(json!("ok")));
    polite.close();
    running.close();
}
