//! The server the JavaScript client's tests run against
//! (clients/js/test/server.test.js): a little of everything in emitws.v1.
//! Prints its address on the first line of stdout.
//!
//! `cargo run --example protocol_server [ADDR]` (default 127.0.0.1:0).

use std::time::Duration;

use emitws::app::{App, BroadcastOpts};
use emitws::runtime::Server;
use serde_json::json;

fn main() -> std::io::Result<()> {
    let addr = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:0".into());
    let mut app = App::new();
    app.on("@connection", |req| {
        let _ = req.emit("/welcome", &json!({ "id": req.id().to_string() }));
    });
    app.on("/ping", |req| req.reply(&json!({ "pong": true })));
    app.ns("/math").on("/sum", |req| {
        let Some(numbers) = req.expect_data::<Vec<f64>>() else { return };
        req.reply(&numbers.iter().sum::<f64>());
    });
    app.on("/join", |req| {
        let Some(room) = req.expect_data::<String>() else { return };
        match req.join(&format!("#{room}")) {
            Ok(()) => req.reply(&true),
            Err(e) => req.reply_err("forbidden", &e.to_string()),
        }
    });
    app.on("/say", |req| {
        #[derive(serde::Deserialize)]
        struct Say {
            room: String,
            text: String,
        }
        let Some(Say { room, text }) = req.expect_data::<Say>() else { return };
        let _ = req.broadcast("/said", &text, BroadcastOpts::to(&format!("#{room}")).include_self());
    });
    // Asks the client (its registered `confirm`) and replies with its answer.
    app.on("/ask", |req| {
        let question: String = req.data().unwrap_or_default();
        let reply = req.defer();
        let asked = req.call("confirm", &question, Duration::from_secs(2), move |answer| match answer {
            Ok(answer) => reply.reply(&json!({ "answer": answer.data::<serde_json::Value>().ok() })),
            Err(e) => reply.reply_err("call_failed", &e.to_string()),
        });
        asked.expect("a string serializes");
    });
    app.on("/bye", |req| req.close(4000, "bye"));
    let running = app.listen_with(Server::new().workers(2), addr)?;
    println!("{}", running.local_addr());
    running.join();
    Ok(())
}
