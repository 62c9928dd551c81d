//! emit.gg's heartbeat plugin: a ping every 5 seconds here (30 is usual);
//! `@ping` runs on every answer; peers that miss two are closed (4408).
//!
//! `cargo run --example heartbeat`.

#[path = "support/logs.rs"]
mod logs;

use std::time::Duration;

use emitws::app::{plugins, App};

fn main() -> std::io::Result<()> {
    logs::init();
    let addr = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:3000".into());
    let mut app = App::new();
    app.plugin(plugins::heartbeat(Duration::from_secs(5)));
    app.on("@ping", |req| {
        let rtt = req.raw_data().map_or("?", |data| data.get()).to_string();
        println!("heartbeat: {} {rtt}", req.conn_id());
    });
    app.on("@disconnect", |req| {
        let why = req.raw_data().map_or("?", |data| data.get()).to_string();
        println!("gone: {} {why}", req.conn_id());
    });
    let running = app.listen(addr)?;
    println!("heartbeat example on ws://{}", running.local_addr());
    running.stop_on_signals()?;
    running.join();
    Ok(())
}
