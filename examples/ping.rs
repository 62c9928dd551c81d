//! emit.gg's quick start: `/ping` answers `{pong, time}`.
//!
//! `cargo run --example ping`, then from the JS client:
//! `await client.request('/ping')` → `{ pong: true, time: 1703602800000 }`.

#[path = "support/logs.rs"]
mod logs;

use std::time::{SystemTime, UNIX_EPOCH};

use emitws::app::App;
use serde_json::json;

fn main() -> std::io::Result<()> {
    logs::init();
    let addr = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:3000".into());
    let mut app = App::new();
    app.on("@connection", |req| println!("connected: {}", req.conn_id()));
    app.on("/ping", |req| {
        let time = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |t| t.as_millis() as u64);
        req.reply(&json!({ "pong": true, "time": time }));
    });
    let running = app.listen(addr)?;
    println!("listening on ws://{}", running.local_addr());
    running.stop_on_signals()?;
    running.join();
    Ok(())
}
