//! Every example that reads text from its clients takes it however the
//! client's JSON encoder wrote it: with `\"`, `\\`, `\n`, `\t`, `\/`,
//! `\u00e9` and a surrogate pair (Python's `json.dumps` escapes everything
//! outside ASCII, PHP's `json_encode` escapes `/`). Each example binary runs
//! on a free port and gets the text as raw frames written here, and from the
//! JavaScript client (clients/js/test/escapes.test.js, run under node).
#![cfg(feature = "app")]

#[path = "common/app.rs"]
mod app_client;
mod common;
#[path = "common/examples.rs"]
mod examples;
#[path = "common/node.rs"]
mod node;

use std::net::SocketAddr;

use app_client::AppClient;
use common::Frame;
use examples::Example;
use serde_json::{json, Value};

/// Strings as a JSON encoder may write them (the body of a JSON string
/// literal), and the text they stand for.
const ESCAPED: [(&str, &str); 8] = [
    (r#"say \"hi\""#, "say \"hi\""),
    (r"back\\slash", "back\\slash"),
    (r"two\nlines", "two\nlines"),
    (r"tab\there", "tab\there"),
    (r"a\/b", "a/b"),
    (r"caf\u00e9", "café"),
    (r"smile \ud83d\ude00", "smile 😀"),
    (r#"all: \" \\ \n \t \/ \u00e9 \ud83d\ude00 end"#, "all: \" \\ \n \t / é 😀 end"),
];

/// The data of the next event named `name`; other envelopes (`@ready`,
/// presence, …) are skipped.
fn event(client: &mut AppClient, name: &str) -> Value {
    loop {
        let envelope = client.next();
        if envelope[0] == 0 && envelope[1] == name {
            return envelope.get(2).cloned().unwrap_or(Value::Null);
        }
    }
}

/// Sends `[1,id,event,data]` with `data` written as given, and returns the reply.
fn raw_request(client: &mut AppClient, id: u64, event: &str, data: &str) -> Result<Value, (String, String)> {
    client.send_raw(&format!(r#"[1,{id},"{event}",{data}]"#));
    client.reply_to(id)
}

/// The text of the reply to `id`, as it came; frames before it are skipped.
fn raw_reply(client: &mut AppClient, id: u64) -> String {
    let (ok, err) = (format!("[2,{id},"), format!("[3,{id},"));
    loop {
        match client.ws.recv() {
            Frame::Text(text) if text.starts_with(&ok) || text.starts_with(&err) => return text,
            Frame::Text(_) => {}
            other => panic!("expected the reply to {id}, got {other:?}"),
        }
    }
}

fn connect_chat(addr: SocketAddr) -> AppClient {
    AppClient::connect_to(addr, "/chat", &[]).unwrap_or_else(|reply| panic!("upgrade refused: {reply:?}"))
}

#[test]
fn chat_takes_escaped_names_rooms_and_messages() {
    let (_chat, addr) = Example::start("chat", &["--addr", "127.0.0.1:0"]);
    let mut ann = connect_chat(addr);
    // "\"ann\" é😀" with every character escaped that an encoder may escape.
    let name = r#"\"ann\"\t\u00e9\ud83d\ude00"#;
    let joined = raw_request(&mut ann, 1, "/chat/join", &format!(r#"{{"room":"gener\u0061l","name":"{name}"}}"#))
        .expect("ann joins");
    let ann_is = "\"ann\"\té😀";
    assert_eq!((&joined["room"], &joined["users"]), (&json!("general"), &json!([ann_is])));

    for (id, (written, text)) in (2..).zip(ESCAPED) {
        let said = raw_request(&mut ann, id, "/chat/say", &format!(r#"{{"room":"general","text":"{written}"}}"#));
        assert_eq!(said, Ok(json!(true)), "saying {written}");
        let message = event(&mut ann, "/chat/message");
        assert_eq!((&message["text"], &message["user"]), (&json!(text), &json!(ann_is)), "{written}");
    }

    // A later joiner gets the same text from the history.
    let mut bob = connect_chat(addr);
    let joined = raw_request(&mut bob, 1, "/chat/join", r#"{"room":"general","name":"b\u00f6b"}"#).expect("bob joins");
    let history: Vec<&Value> =
        joined["history"].as_array().expect("history").iter().map(|said| &said["text"]).collect();
    let expected: Vec<Value> = ESCAPED.iter().map(|(_, text)| json!(text)).collect();
    assert_eq!(history, expected.iter().collect::<Vec<_>>());
    assert_eq!(event(&mut ann, "/chat/presence")["joined"], "böb");

    // The typing event names its room with an escape too.
    bob.send_raw(r#"[0,"/chat/typing",{"room":"gener\u0061l"}]"#);
    assert_eq!(event(&mut ann, "/chat/typing"), json!({ "room": "general", "user": "böb" }));
}

#[test]
fn rooms_takes_escaped_names_rooms_and_messages() {
    let (_rooms, addr) = Example::start("rooms", &["127.0.0.1:0"]);
    let (mut ann, mut bob) = (AppClient::connect(addr), AppClient::connect(addr));
    let room = r"caf\u00e9 \/ \ud83d\ude00";
    let joined = raw_request(&mut ann, 1, "/join", &format!(r#"{{"username":"ann","room":"{room}"}}"#));
    assert_eq!(joined, Ok(json!({ "joined": "#café / 😀" })));
    let joined = raw_request(&mut bob, 1, "/join", &format!(r#"{{"username":"\"b\\\u00f6b\"\n","room":"{room}"}}"#));
    assert_eq!(joined, Ok(json!({ "joined": "#café / 😀" })));
    assert_eq!(event(&mut ann, "user-joined"), json!({ "username": "\"b\\öb\"\n" }));

    for (written, text) in ESCAPED {
        bob.send_raw(&format!(r#"[0,"/message",{{"text":"{written}"}}]"#));
        for client in [&mut ann, &mut bob] {
            assert_eq!(event(client, "message"), json!({ "username": "\"b\\öb\"\n", "text": text }), "{written}");
        }
    }
}

#[test]
fn app_echo_relays_escaped_data_as_written() {
    let (_echo, addr) = Example::start("app_echo", &["--addr", "127.0.0.1:0", "--workers", "1"]);
    let mut client = AppClient::connect(addr);
    assert_eq!(client.request("/join", Value::Null), Ok(json!(true)));
    for (id, (written, text)) in (100..).zip(ESCAPED) {
        // The reply carries the data exactly as it was written, escapes and all.
        client.send_raw(&format!(r#"[1,{id},"/echo","{written}"]"#));
        assert_eq!(raw_reply(&mut client, id), format!(r#"[2,{id},"{written}"]"#));
        client.send_raw(&format!(r#"[0,"/pub",{{"text":"{written}"}}]"#));
        assert_eq!(event(&mut client, "/pub"), json!({ "text": text }));
    }
}

#[test]
fn auth_takes_an_escaped_token() {
    let (_auth, addr) = Example::start("auth", &["127.0.0.1:0"]);
    let mut client = AppClient::connect(addr);
    assert_eq!(raw_request(&mut client, 1, "/login", r#""\u0072oot\u002dtoken""#), Ok(json!({ "user": "root" })));
    assert_eq!(client.request("/admin", Value::Null), Ok(json!({ "admin": true })));
    for (id, (written, _)) in (2..).zip(ESCAPED) {
        let refused = raw_request(&mut client, id, "/login", &format!(r#""{written}""#));
        assert_eq!(refused, Err(("unauthorized".into(), "unknown token".into())), "{written}");
    }
}

#[test]
fn the_javascript_client_sends_escaped_text_to_the_examples() {
    let (_chat, chat) = Example::start("chat", &["--addr", "127.0.0.1:0"]);
    let (_rooms, rooms) = Example::start("rooms", &["127.0.0.1:0"]);
    let (_echo, echo) = Example::start("app_echo", &["--addr", "127.0.0.1:0", "--workers", "1"]);
    let env = [
        ("EMITWS_CHAT_URL", format!("ws://{chat}/chat")),
        ("EMITWS_ROOMS_URL", format!("ws://{rooms}/")),
        ("EMITWS_APP_ECHO_URL", format!("ws://{echo}/")),
    ];
    node::run_node_tests("escapes.test.js", &env);
}
