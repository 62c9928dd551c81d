//! The chat demo (the built example binary) resumes a dropped client
//! (PROTOCOL.md §13) with raw clients: back without joining again, it gets
//! the room's messages it missed once, can talk at once, and the others see
//! it in the room again. A client that cannot resume finds itself in no room
//! and joins again, as the page then does.
#![cfg(feature = "app")]

#[path = "common/app.rs"]
mod app_client;
mod common;
#[path = "common/examples.rs"]
mod examples;

use std::net::SocketAddr;

use app_client::AppClient;
use examples::Example;
use serde_json::{json, Value};

/// A client admitted to the chat: (client, its `@ready` data).
fn connect(addr: SocketAddr) -> (AppClient, Value) {
    let mut client = AppClient::connect_to(addr, "/chat", &[]).expect("upgraded");
    let ready = client.wait_ready();
    (client, ready)
}

fn join(client: &mut AppClient, name: &str) -> Value {
    client.request("/chat/join", json!({ "room": "general", "name": name })).expect("joined")
}

fn say(client: &mut AppClient, text: &str) -> Result<Value, (String, String)> {
    client.request("/chat/say", json!({ "room": "general", "text": text }))
}

/// Reads envelopes until the `/chat/message` saying `last` (if given) and a
/// `/chat/presence` of `general` listing `users` (if given) have come, in
/// either order (a presence goes through the store's thread); returns the
/// texts of the `/chat/message` events read on the way.
fn until(client: &mut AppClient, mut last: Option<&str>, mut users: Option<Value>) -> Vec<String> {
    let mut said = Vec::new();
    while last.is_some() || users.is_some() {
        let envelope = client.next();
        if envelope[1] == "/chat/message" {
            said.push(text(&envelope));
            last = last.filter(|last| said.last().map(String::as_str) != Some(*last));
        } else if envelope[1] == "/chat/presence" && envelope[2]["room"] == "general" {
            users = users.filter(|users| envelope[2]["users"] != *users);
        }
    }
    said
}

/// The next `/chat/message` event, whole (its fourth element too).
fn next_message(client: &mut AppClient) -> Value {
    loop {
        let envelope = client.next();
        if envelope[1] == "/chat/message" {
            return envelope;
        }
    }
}

fn text(message: &Value) -> String {
    message[2]["text"].as_str().expect("a message's text").to_string()
}

/// Opens a connection that resumes with `token` and `rooms` (§13), and reads
/// what comes before the reply and `@ready`: (envelopes before the reply,
/// reply, `@ready` data).
fn resume(addr: SocketAddr, token: &Value, rooms: Value) -> (AppClient, Vec<Value>, Value, Value) {
    let mut client = AppClient::connect_to(addr, "/chat?emitws_resume=1", &[]).expect("upgraded");
    let id = client.send_request("@resume", json!({ "token": token, "rooms": rooms }));
    let mut before = Vec::new();
    loop {
        let envelope = client.next();
        if envelope[0] == 2 && envelope[1] == id {
            let ready = client.wait_ready();
            return (client, before, envelope[2].clone(), ready);
        }
        assert_ne!(envelope[0], 3, "@resume refused: {envelope}");
        before.push(envelope);
    }
}

#[test]
fn a_dropped_client_resumes_in_its_room_with_the_messages_it_missed_once() {
    let (_chat, addr) = Example::start("chat", &["--addr", "127.0.0.1:0"]);
    let (mut ann, ann_ready) = connect(addr);
    join(&mut ann, "ann");
    let (mut bob, _) = connect(addr);
    assert_eq!(join(&mut bob, "bob")["users"], json!(["ann", "bob"]));
    assert!(until(&mut ann, None, Some(json!(["ann", "bob"]))).is_empty());
    assert_eq!(say(&mut bob, "zero"), Ok(json!(true)));
    let zero = next_message(&mut ann);
    let position = &zero[3];
    assert_eq!(position["room"], "#general", "a message of a room with history has its place: {zero}");

    drop(ann); // No close frame: a network drop.
    assert_eq!(until(&mut bob, None, Some(json!(["bob"]))), ["zero"], "ann shows as gone while away");
    assert_eq!(say(&mut bob, "one"), Ok(json!(true)));
    assert_eq!(say(&mut bob, "two"), Ok(json!(true)));

    let rooms = json!({ "#general": { "epoch": position["epoch"], "offset": position["offset"] } });
    let (mut ann, before, reply, ready) = resume(addr, &ann_ready["resume"], rooms);
    assert_eq!((&reply["resumed"], &reply["socket"]), (&json!(true), &ann_ready["socket"]), "{reply}");
    assert_eq!(reply["rooms"]["#general"]["recovered"], true, "{reply}");
    assert_eq!(ready["resumed"], true, "{ready}");
    let both = json!(["ann", "bob"]);
    // Told who is there: in the resume's answer, or after it.
    let told = before.iter().any(|envelope| envelope[1] == "/chat/presence" && envelope[2]["users"] == both);
    let missed: Vec<Value> = before.into_iter().filter(|envelope| envelope[1] == "/chat/message").collect();
    assert_eq!(missed.iter().map(text).collect::<Vec<_>>(), ["one", "two"]);
    assert!(missed.iter().all(|message| message[3]["room"] == "#general"), "{missed:?}");

    // Still seated: it talks without joining again, and everyone sees it back.
    assert_eq!(say(&mut ann, "three"), Ok(json!(true)));
    assert_eq!(until(&mut bob, Some("three"), Some(both.clone())), ["one", "two", "three"]);
    let back = Some(both).filter(|_| !told);
    assert_eq!(until(&mut ann, Some("three"), back), ["three"], "nothing missed comes twice");
    assert_eq!(say(&mut bob, "four"), Ok(json!(true)));
    assert_eq!(until(&mut ann, Some("four"), None), ["four"]);

    // A page whose room was not recovered joins it again: no leave for the others.
    assert_eq!(join(&mut ann, "ann")["users"], json!(["ann", "bob"]));
    loop {
        let envelope = bob.next();
        if envelope[1] == "/chat/presence" {
            assert!(envelope[2]["left"].is_null(), "{envelope}");
            if envelope[2]["joined"] == "ann" {
                break;
            }
        }
    }
}

#[test]
fn a_client_that_cannot_resume_is_in_no_room_and_joins_again() {
    let (_chat, addr) = Example::start("chat", &["--addr", "127.0.0.1:0"]);
    let (mut ann, ann_ready) = connect(addr);
    join(&mut ann, "ann");
    assert_eq!(say(&mut ann, "hello"), Ok(json!(true)));
    let hello = next_message(&mut ann);
    let rooms = json!({ "#general": { "epoch": hello[3]["epoch"], "offset": hello[3]["offset"] } });
    drop(ann);

    let (mut ann, _, reply, ready) = resume(addr, &json!("not-a-token"), rooms);
    assert_eq!(reply["resumed"], false, "{reply}");
    assert_eq!(reply["rooms"]["#general"]["recovered"], false, "{reply}");
    assert_ne!(ready["socket"], ann_ready["socket"], "a new socket");
    assert_eq!(say(&mut ann, "again").map_err(|(code, _)| code), Err("forbidden".to_string()));
    let joined = join(&mut ann, "ann");
    assert_eq!(joined["history"][0]["text"], "hello", "the join brings what the resume could not: {joined}");
    assert_eq!(say(&mut ann, "again"), Ok(json!(true)));
}
