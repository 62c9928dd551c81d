//! The server's `@ready` event, read raw: `[0,"@ready",{"socket","user"}]`
//! once a socket is admitted — at once without auth (after the `@connection`
//! handlers), after the success reply with first-message auth, after the
//! accepted answer with challenge auth, never for a socket a `@connection`
//! handler closed.
#![cfg(feature = "app")]

#[path = "common/app.rs"]
mod app_client;
mod common;

use app_client::{start, AppClient};
use common::Frame;
use emitws::app::{App, Challenge, Refusal, SocketId};
use serde_json::{json, Value};

/// The next text frame as JSON, read straight from the socket.
fn next_envelope(client: &mut AppClient) -> Value {
    match client.ws.recv() {
        Frame::Text(text) => serde_json::from_str(&text).expect("the server sends JSON"),
        other => panic!("expected an envelope, got {other:?}"),
    }
}

/// Checks that `envelope` is `@ready` for `user`; returns its socket id.
fn expect_ready(envelope: &Value, user: Option<&str>) -> SocketId {
    assert_eq!((&envelope[0], &envelope[1]), (&json!(0), &json!("@ready")), "{envelope}");
    assert_eq!(envelope[2]["user"], json!(user), "{envelope}");
    let socket = envelope[2]["socket"].as_str().unwrap_or_else(|| panic!("no socket id in {envelope}"));
    socket.parse().unwrap_or_else(|_| panic!("{socket:?} is not a socket id"))
}

#[test]
fn without_auth_ready_is_the_first_envelope_and_follows_the_connection_handlers() {
    let mut app = App::new();
    app.on("@connection", |req| {
        if req.query("kick").is_some() {
            req.close(emitws::proto::CloseCode(4000), "not you");
        } else {
            let id = req.socket_id().to_string();
            let _ = req.emit("/welcome", &id);
        }
    });
    let running = start(app, 1);
    let addr = running.local_addr();
    let mut client = AppClient::connect_to(addr, "/", &[]).expect("upgraded");
    let welcome = next_envelope(&mut client);
    assert_eq!(welcome[1], "/welcome");
    let socket = expect_ready(&next_envelope(&mut client), None);
    assert_eq!(json!(socket.to_string()), welcome[2], "the same id the handlers see");
    client.close();

    let mut kicked = AppClient::connect_to(addr, "/?kick=1", &[]).expect("upgraded");
    assert_eq!(kicked.ws.expect_close(4000), "not you", "no @ready for a socket the handlers closed");
    running.close();
}

#[test]
fn with_first_message_auth_ready_follows_the_success_reply() {
    let mut app = App::new();
    app.identify_by_message("/auth", |req| match req.data::<String>().as_deref() {
        Ok("t-ann") => Ok("ann".into()),
        _ => Err(Refusal::status(401, "unknown token")),
    });
    let running = start(app, 1);
    let mut client = AppClient::connect_to(running.local_addr(), "/", &[]).expect("upgraded");
    client.send_raw(r#"[1,1,"/auth","t-ann"]"#);
    assert_eq!(next_envelope(&mut client), json!([2, 1, { "user": "ann" }]));
    expect_ready(&next_envelope(&mut client), Some("ann"));
    client.close();
    running.close();
}

#[test]
fn with_challenge_auth_ready_follows_the_accepted_answer() {
    let mut app = App::new();
    app.challenge(Challenge::new(
        || "n".to_string(),
        |_, answer| answer.data::<String>().map_err(|_| Refusal::status(401, "bad answer")),
    ));
    let running = start(app, 1);
    let mut client = AppClient::connect_to(running.local_addr(), "/", &[]).expect("upgraded");
    let call = next_envelope(&mut client);
    assert_eq!((&call[0], &call[2]), (&json!(1), &json!("@challenge")), "{call}");
    client.send_raw(&json!([2, call[1], "dora"]).to_string());
    expect_ready(&next_envelope(&mut client), Some("dora"));
    client.close();
    running.close();
}
