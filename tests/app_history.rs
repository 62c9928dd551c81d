//! Room history over real sockets (PROTOCOL.md §13): broadcasts to one room
//! with history carry `{"room","offset","epoch"}` as a fourth element, with
//! offsets 1, 2, 3… in order on every socket, whichever threads broadcast;
//! other broadcasts are unchanged.
#![cfg(feature = "app")]

#[path = "common/app.rs"]
mod app_client;
mod common;

use std::time::Duration;

use app_client::{eventually, AppClient};
use emitws::app::{App, BroadcastOpts, EventLimits, History, Running};
use emitws::runtime::AcceptMode;
use serde_json::{json, Value};

const TTL: Duration = Duration::from_secs(60);

/// Rooms `#h` and `#p:…` have history, `#plain` none; two workers, sockets
/// dealt to them in turn so that every test spans both.
fn history_app() -> Running {
    let mut app = App::new();
    // The concurrency test sends faster than the default rate.
    app.limits(EventLimits::default().rate(None));
    app.history("#h", History::new(1000, TTL)).history("#p:*", History::new(10, TTL));
    app.on("/join", |req| {
        let group: String = req.data().expect("a group");
        match req.join(&group) {
            Ok(()) => req.reply(&true),
            Err(e) => req.reply_err("forbidden", &e.to_string()),
        }
    });
    app.on("/say", |req| {
        #[derive(serde::Deserialize)]
        struct Say {
            to: Vec<String>,
            text: String,
            #[serde(default)]
            include_self: bool,
        }
        let Some(say) = req.expect_data::<Say>() else { return };
        let mut opts = BroadcastOpts::all();
        for group in &say.to {
            opts = opts.and(group);
        }
        if say.include_self {
            opts = opts.include_self();
        }
        let _ = req.broadcast("/said", &say.text, opts);
        req.reply(&true);
    });
    // The data as the client wrote it, to `#h`, the sender included.
    app.on("/raw", |req| {
        let data = req.raw_data();
        let _ = req.broadcast("/raw", &data, BroadcastOpts::to("#h").include_self());
    });
    let server = common::quick_server().workers(2).accept_mode(AcceptMode::Acceptor);
    app.listen_with(server, "127.0.0.1:0").expect("start")
}

/// `n` clients, each in `groups`.
fn members(running: &Running, n: usize, groups: &[&str]) -> Vec<AppClient> {
    let clients: Vec<AppClient> = (0..n)
        .map(|_| {
            let mut client = AppClient::connect(running.local_addr());
            for group in groups {
                assert_eq!(client.request("/join", json!(group)), Ok(json!(true)), "join {group}");
            }
            client
        })
        .collect();
    for group in groups {
        eventually("every member joined", || running.group_size(group) >= n);
    }
    clients
}

/// Expects event `event` with data `text`; returns its fourth element (`Null` if none).
fn said(client: &mut AppClient, event: &str, text: &str) -> Value {
    let envelope = client.next();
    assert!(
        envelope[0] == 0 && envelope[1] == event && envelope[2] == text,
        "expected {event} {text:?}, got {envelope}"
    );
    assert!(envelope.as_array().expect("an array").len() <= 4, "{envelope}");
    envelope.get(3).cloned().unwrap_or(Value::Null)
}

fn say(client: &mut AppClient, to: &[&str], text: &str, include_self: bool) {
    let reply = client.request("/say", json!({ "to": to, "text": text, "include_self": include_self }));
    assert_eq!(reply, Ok(json!(true)));
}

fn is_epoch(epoch: &Value) -> bool {
    epoch.as_str().is_some_and(|e| e.len() == 16 && e.bytes().all(|b| b.is_ascii_hexdigit()))
}

#[test]
fn broadcasts_to_a_room_with_history_carry_offsets_from_one_and_one_epoch() {
    let running = history_app();
    let mut clients = members(&running, 3, &["#h"]);
    for text in ["a", "b", "c"] {
        say(&mut clients[0], &["#h"], text, false);
    }
    let mut epoch = Value::Null;
    for client in &mut clients[1..] {
        for (offset, text) in [(1, "a"), (2, "b"), (3, "c")] {
            let stream = said(client, "/said", text);
            assert_eq!(stream["room"], "#h");
            assert_eq!(stream["offset"], offset);
            assert!(is_epoch(&stream["epoch"]), "{stream}");
            if epoch.is_null() {
                epoch = stream["epoch"].clone();
            }
            assert_eq!(stream["epoch"], epoch);
        }
    }
    // The sender was left out of 1 to 3: the next thing it gets is offset 4.
    say(&mut clients[0], &["#h"], "d", true);
    for client in &mut clients {
        assert_eq!(said(client, "/said", "d"), json!({ "room": "#h", "offset": 4, "epoch": epoch }));
    }
    // From outside the workers, and local ones, the same stream.
    running.broadcast("/said", "e", BroadcastOpts::to("#h")).expect("serializes");
    running.broadcast("/said", "f", BroadcastOpts::to("#h").local()).expect("serializes");
    for client in &mut clients {
        assert_eq!(said(client, "/said", "e")["offset"], 5);
        assert_eq!(said(client, "/said", "f"), json!({ "room": "#h", "offset": 6, "epoch": epoch }));
    }
    running.close();
}

#[test]
fn other_broadcasts_carry_no_fourth_element_and_take_no_offset() {
    let running = history_app();
    let mut clients = members(&running, 2, &["#h", "#plain", "#p:1", "*t"]);
    say(&mut clients[0], &["#h", "#plain"], "several", true);
    say(&mut clients[0], &["#plain"], "plain", true);
    say(&mut clients[0], &[], "everyone", true);
    say(&mut clients[0], &["*t"], "tag", true);
    say(&mut clients[0], &["#p:1"], "prefix", true);
    say(&mut clients[0], &["#h"], "history", true);
    for client in &mut clients {
        for text in ["several", "plain", "everyone", "tag"] {
            assert_eq!(said(client, "/said", text), Value::Null, "{text}");
        }
        let prefix = said(client, "/said", "prefix");
        let history = said(client, "/said", "history");
        assert_eq!((&prefix["room"], &prefix["offset"]), (&json!("#p:1"), &json!(1)));
        assert_eq!((&history["room"], &history["offset"]), (&json!("#h"), &json!(1)));
        // Each room has its own stream.
        assert!(is_epoch(&prefix["epoch"]) && prefix["epoch"] != history["epoch"]);
    }
    running.close();
}

#[test]
fn concurrent_broadcasts_reach_every_member_in_offset_order_without_gaps() {
    const EACH: u64 = 300;
    let running = history_app();
    let mut clients = members(&running, 4, &["#h"]);
    // One thread broadcasts through the handle while a member's requests
    // broadcast from its worker, and the test thread through the handle too.
    let handle = running.app();
    let from_handle = std::thread::spawn(move || {
        for n in 0..EACH {
            handle.broadcast("/said", &format!("thread {n}"), BroadcastOpts::to("#h")).expect("serializes");
        }
    });
    for n in 0..EACH {
        let say = json!([0, "/say", { "to": ["#h"], "text": format!("worker {n}"), "include_self": true }]);
        clients[0].send_raw(&say.to_string());
        running.broadcast("/said", &format!("main {n}"), BroadcastOpts::to("#h")).expect("serializes");
    }
    from_handle.join().expect("no panic");
    for client in &mut clients {
        let mut epoch = Value::Null;
        for offset in 1..=3 * EACH {
            let envelope = client.next();
            assert_eq!(envelope[1], "/said", "{envelope}");
            assert_eq!(envelope[3]["offset"], offset, "{envelope}");
            if epoch.is_null() {
                epoch = envelope[3]["epoch"].clone();
            }
            assert_eq!(envelope[3]["epoch"], epoch);
        }
    }
    running.close();
}

#[test]
fn data_passes_unchanged_before_the_fourth_element() {
    let running = history_app();
    let mut clients = members(&running, 2, &["#h"]);
    let data = r#"{"t":"é \"q\" \u00e9 😀 \ud800","n":1e400, "x" : [ 0.10 ]}"#;
    clients[0].send_raw(&format!(r#"[0,"/raw",{data}]"#));
    let mut epoch = None;
    for client in &mut clients {
        let text = client.next_text();
        let (front, stream) = text.split_at(text.rfind(",{\"room\"").expect("a fourth element"));
        assert_eq!(front, format!(r#"[0,"/raw",{data}"#));
        let stream: Value =
            serde_json::from_str(stream.strip_prefix(',').and_then(|s| s.strip_suffix(']')).expect("]")).expect("JSON");
        assert_eq!((&stream["room"], &stream["offset"]), (&json!("#h"), &json!(1)));
        let epoch = epoch.get_or_insert_with(|| stream["epoch"].clone());
        assert_eq!(stream["epoch"], *epoch);
    }
    running.close();
}
