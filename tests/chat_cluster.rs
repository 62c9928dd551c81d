//! Two chat servers (examples/chat) sharing one Redis: a room spans both,
//! with its messages, its user list and its history, and a server that dies
//! leaves the user list. Needs redis-server (skipped loudly without it).
#![cfg(feature = "redis")]

#[allow(dead_code)]
#[path = "../examples/chat/main.rs"]
mod chat;
#[path = "common/redis.rs"]
mod redis_server;

use std::sync::mpsc;
use std::time::Duration;

use emitws::client::app::{AppClient, AppOptions};
use redis_server::Redis;
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(10);

fn user(running: &emitws::app::Running) -> (AppClient, mpsc::Receiver<(String, Value)>) {
    let url = format!("ws://{}/chat", running.local_addr());
    let client = AppClient::connect(&url, AppOptions::default()).expect("connect");
    let (tell, told) = mpsc::channel();
    for event in ["/chat/message", "/chat/presence"] {
        let tell = tell.clone();
        client.on(event, move |name, data| drop(tell.send((name.to_string(), data.clone()))));
    }
    (client, told)
}

/// The next event of this name (others are skipped).
fn next(events: &mpsc::Receiver<(String, Value)>, name: &str) -> Value {
    loop {
        let (event, data) = events.recv_timeout(WAIT).expect("an event within the wait");
        if event == name {
            return data;
        }
    }
}

#[test]
fn a_room_spans_two_chat_servers() {
    let Some(redis) = Redis::start() else { return };
    let one = chat::serve("127.0.0.1:0", Some(&redis.url())).expect("first server");
    let two = chat::serve("127.0.0.1:0", Some(&redis.url())).expect("second server");
    let (ann, ann_hears) = user(&one);
    let (bob, bob_hears) = user(&two);

    let joined = ann.request("/chat/join", json!({ "room": "lobby", "name": "ann" }), WAIT).expect("ann joins");
    assert_eq!(joined["users"], json!(["ann"]));
    let joined = bob.request("/chat/join", json!({ "room": "lobby", "name": "bob" }), WAIT).expect("bob joins");
    assert_eq!(joined["users"], json!(["ann", "bob"]), "bob, on the other server, sees ann");
    let presence = next(&ann_hears, "/chat/presence");
    assert_eq!((&presence["joined"], &presence["users"]), (&json!("bob"), &json!(["ann", "bob"])));

    // Text that JSON writes with escapes crosses servers and Redis intact.
    let said = "\"hi\" from\ttwo\n\\ / é😀";
    bob.request("/chat/say", json!({ "room": "lobby", "text": said }), WAIT).expect("bob says");
    assert_eq!(next(&ann_hears, "/chat/message")["text"], said);
    assert_eq!(next(&bob_hears, "/chat/message")["text"], said);

    // A third user, on the first server, gets the history written by the second.
    let (cat, _cat_hears) = user(&one);
    let joined = cat.request("/chat/join", json!({ "room": "lobby", "name": "cat" }), WAIT).expect("cat joins");
    assert_eq!(joined["history"][0]["text"], said);
    assert_eq!(joined["users"], json!(["ann", "bob", "cat"]));

    assert_eq!(next(&ann_hears, "/chat/presence")["joined"], "cat");

    // Bob leaves, then his server stops: everyone hears it, and the lists agree.
    bob.close();
    drop(bob_hears);
    let left = next(&ann_hears, "/chat/presence");
    assert_eq!((&left["left"], &left["users"]), (&json!("bob"), &json!(["ann", "cat"])));
    two.close();
    let users = cat.request("/chat/join", json!({ "room": "lobby", "name": "cat" }), WAIT).expect("cat rejoins");
    assert_eq!(users["users"], json!(["ann", "cat"]));
    ann.close();
    cat.close();
    one.close();
}

#[test]
fn a_conversation_goes_on_across_a_server_restart() {
    let Some(redis) = Redis::start() else { return };
    let one = chat::serve("127.0.0.1:0", Some(&redis.url())).expect("first server");
    let addr = one.local_addr();
    let two = chat::serve("127.0.0.1:0", Some(&redis.url())).expect("second server");
    let (ann, ann_hears) = user(&one);
    let (bob, bob_hears) = user(&two);
    ann.request("/chat/join", json!({ "room": "lobby", "name": "ann" }), WAIT).expect("ann joins");
    bob.request("/chat/join", json!({ "room": "lobby", "name": "bob" }), WAIT).expect("bob joins");
    bob.request("/chat/say", json!({ "room": "lobby", "text": "before" }), WAIT).expect("bob says");
    assert_eq!(next(&ann_hears, "/chat/message")["text"], "before");

    // Ann's server restarts: it goes away (1001: her session is kept, in
    // Redis), bob talks meanwhile, and a new process takes its address.
    one.close();
    bob.request("/chat/say", json!({ "room": "lobby", "text": "while you were away" }), WAIT).expect("bob says");
    let one = chat::serve(&addr.to_string(), Some(&redis.url())).expect("the server again");

    // Ann's client resumes there by itself and gets what she missed, once.
    assert_eq!(next(&ann_hears, "/chat/message")["text"], "while you were away");
    redis_server::wait_for(WAIT, || ann.recovered("#lobby") == Some(true));
    // Still seated (her seat is a shared value, in her session's record): she
    // talks without joining again, and the conversation goes on.
    ann.request("/chat/say", json!({ "room": "lobby", "text": "back" }), WAIT).expect("ann says");
    loop {
        let said = next(&bob_hears, "/chat/message");
        if said["text"] == "back" {
            assert_eq!(said["user"], "ann");
            break;
        }
    }
    assert!(ann_hears
        .try_iter()
        .all(|(event, data)| event != "/chat/message" || data["text"] != "while you were away"));
    ann.close();
    bob.close();
    one.close();
    two.close();
}
