//! The routes of the resume tests' app, the same in one process
//! (app_resume.rs) and across a cluster (cluster_resume.rs): a `/hello`
//! from `@connection` saying what the socket is, `/join ROOM`, `/set N`
//! (a value kept on this node), `/share SEAT` (a value shared across the
//! cluster; `null` removes it) and `/say [ROOM, TEXT]` (a broadcast of
//! `/said` to the room, leaving the sender out); and a client's connection
//! to it.

#![allow(dead_code)]

use std::net::SocketAddr;

use emitws::app::{App, BroadcastOpts};
use serde_json::{json, Value};

use crate::app_client::AppClient;

/// Adds the resume tests' routes to `app`.
pub fn resume_routes(app: &mut App) {
    app.on("@connection", |req| {
        let hello = json!({
            "resumed": req.resumed(),
            "socket": req.socket_id().to_string(),
            "user": req.user(),
            "groups": req.groups(),
            "n": req.get::<u32>("n"),
            "seat": req.get_shared::<Value>("seat"),
        });
        let _ = req.emit("/hello", &hello);
    });
    app.on("/join", |req| {
        let room: String = req.data().expect("a room");
        let joined = req.join(&room).is_ok();
        req.reply(&joined);
    });
    app.on("/set", |req| {
        let n: u32 = req.data().expect("a number");
        req.set("n", n);
        req.reply(&true);
    });
    app.on("/share", |req| {
        let seat: Value = req.data().expect("a seat");
        let shared = match seat {
            Value::Null => req.remove("seat").is_some(),
            seat => req.set_shared("seat", &seat).is_ok(),
        };
        req.reply(&shared);
    });
    app.on("/say", |req| {
        let (room, text): (String, String) = req.data().expect("[room, text]");
        let _ = req.broadcast("/said", &text, BroadcastOpts::to(&room));
        req.reply(&true);
    });
}

/// Connects a client (with upgrade auth, as `user`) and reads its `/hello`
/// and `@ready`: (client, socket id, resume token).
pub fn connect(addr: SocketAddr, user: &str) -> (AppClient, String, String) {
    let mut client = AppClient::connect_to(addr, &format!("/?user={user}"), &[]).expect("upgraded");
    let hello = client.expect_event("/hello");
    assert_eq!(hello["resumed"], false, "{hello}");
    let ready = client.wait_ready();
    let socket = ready["socket"].as_str().expect("a socket id").to_string();
    assert_eq!(hello["socket"], socket.as_str());
    let token = ready["resume"].as_str().unwrap_or_else(|| panic!("no resume token in {ready}")).to_string();
    (client, socket, token)
}
