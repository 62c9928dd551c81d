//! emit.gg's chat example: join a room under a name, then talk to it.
//!
//! `cargo run --example rooms`; clients send `/join {username, room}` (a
//! request) and `/message {text}` (an event); everyone in the room gets
//! `user-joined`, `message` and `user-left` events.

#[path = "support/logs.rs"]
mod logs;

use emitws::app::{App, BroadcastOpts};
use serde::Deserialize;
use serde_json::json;

// Owned strings: a `&str` cannot hold text the client wrote with JSON escapes
// (`\"`, `\n`, `\u00e9`, …), and every JSON encoder writes some.
#[derive(Deserialize)]
struct Join {
    username: String,
    room: String,
}

#[derive(Deserialize)]
struct Message {
    text: String,
}

fn main() -> std::io::Result<()> {
    logs::init();
    let addr = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:3000".into());
    let mut app = App::new();
    app.on("/join", |req| {
        let Some(Join { username, room }) = req.expect_data::<Join>() else { return };
        let room = format!("#{room}");
        if let Err(e) = req.join(&room) {
            return req.reply_err("forbidden", &e.to_string());
        }
        req.set("username", username.clone());
        req.set("room", room.clone());
        let _ = req.broadcast("user-joined", &json!({ "username": username }), BroadcastOpts::to(&room));
        req.reply(&json!({ "joined": room }));
    });
    app.on("/message", |req| {
        let Some(Message { text }) = req.expect_data::<Message>() else { return };
        let (Some(username), Some(room)) = (req.get::<String>("username"), req.get::<String>("room")) else {
            return req.reply_err("forbidden", "join a room first");
        };
        let message = json!({ "username": username, "text": text });
        let to = BroadcastOpts::to(room).include_self();
        let _ = req.broadcast("message", &message, to);
    });
    app.on("@disconnect", |req| {
        if let (Some(username), Some(room)) = (req.get::<String>("username"), req.get::<String>("room")) {
            let (left, to) = (json!({ "username": username }), BroadcastOpts::to(room));
            let _ = req.broadcast("user-left", &left, to);
        }
    });
    let running = app.listen(addr)?;
    println!("chat rooms on ws://{}", running.local_addr());
    running.stop_on_signals()?;
    running.join();
    Ok(())
}
