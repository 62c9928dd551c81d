//! The event layer's benchmark server (benches/app-echo.sh, benches/fanout.sh,
//! benches/app-idle-memory.sh), usable by hand as well:
//!
//! - `[1,id,"/echo",data]` is answered `[2,id,data]`;
//! - `[1,id,"/join"]` joins the socket to the room `#room` (reply `true`);
//! - `[0,"/pub",data]` broadcasts `[0,"/pub",data]` to `#room`, the sender included.
//!
//! `cargo run --release --example app_echo -- --addr 127.0.0.1:9001 --workers 1`,
//! then for instance `emitws-load echo --protocol emitws` or
//! `emitws-load fanout --protocol emitws`.

use emitws::app::{App, BroadcastOpts, EventLimits, Rate};
use emitws::runtime::Server;

/// The one room `/join` and `/pub` use.
const ROOM: &str = "#room";

fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let mut addr = "127.0.0.1:9001".to_string();
    let mut server = Server::new();
    while let Some(arg) = args.next() {
        match (arg.as_str(), args.next()) {
            ("--addr", Some(value)) => addr = value,
            ("--workers", Some(value)) if value.parse::<usize>().is_ok() => {
                server = server.workers(value.parse().unwrap_or(1));
            }
            _ => {
                eprintln!("usage: app_echo [--addr HOST:PORT] [--workers N]");
                std::process::exit(2);
            }
        }
    }
    let mut app = App::new();
    // A load tool sends far more than the default 100 envelopes per second per
    // socket; the bucket stays on (and costs what it costs) with a rate it never hits.
    app.limits(EventLimits::default().rate(Some(Rate { per_second: 1e9, burst: 1e9 })));
    app.on("/echo", |req| {
        let data = req.raw_data();
        req.reply(&data);
    });
    app.on("/join", |req| match req.join(ROOM) {
        Ok(()) => req.reply(&true),
        Err(e) => req.reply_err("forbidden", &e.to_string()),
    });
    app.on("/pub", |req| {
        let data = req.raw_data();
        if let Err(e) = req.broadcast("/pub", &data, BroadcastOpts::to(ROOM).include_self()) {
            req.reply_err("bad_request", &e.to_string());
        }
    });
    let running = app.listen_with(server, addr.as_str())?;
    println!("app_echo on ws://{}/", running.local_addr());
    running.join();
    Ok(())
}
