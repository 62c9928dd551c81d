//! The server benches/soak.sh runs: examples/app_echo's three events, the
//! keepalive as a setting, and a line of counts on stdout every `--stats`
//! seconds, so that a long run shows whether anything grows:
//!
//! ```text
//! stats secs=12 sockets=19000 room=150 connections=19000 slots=19200 timers=19003 timer_capacity=19040 pooled=3
//! ```
//!
//! - `[1,id,"/echo",data]` is answered `[2,id,data]`;
//! - `[1,id,"/join"]` joins the socket to the room `#room` (reply `true`);
//! - `[0,"/pub",data]` broadcasts `[0,"/pub",data]` to `#room`, the sender included.
//!
//! `--keepalive S` pings after S seconds of silence (default 30, the engine's
//! default); `--heartbeat S` uses the event layer's heartbeat instead.

use std::time::{Duration, Instant};

use emitws::app::{plugins, App, BroadcastOpts, EventLimits, Rate};
use emitws::runtime::{Keepalive, Server};

const ROOM: &str = "#room";

fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let mut addr = "127.0.0.1:9001".to_string();
    let mut server = Server::new();
    let mut heartbeat = None;
    let mut every = Duration::from_secs(10);
    let seconds = |value: &str| value.parse::<f64>().ok().filter(|s| *s > 0.0).map(Duration::from_secs_f64);
    while let Some(arg) = args.next() {
        match (arg.as_str(), args.next()) {
            ("--addr", Some(value)) => addr = value,
            ("--workers", Some(value)) if value.parse::<usize>().is_ok() => {
                server = server.workers(value.parse().unwrap_or(1));
            }
            ("--keepalive", Some(value)) if seconds(&value).is_some() => {
                let idle = seconds(&value).unwrap_or_default();
                server = server.keepalive(Some(Keepalive { idle, ..Keepalive::default() }));
            }
            ("--heartbeat", Some(value)) if seconds(&value).is_some() => heartbeat = seconds(&value),
            ("--stats", Some(value)) if seconds(&value).is_some() => every = seconds(&value).unwrap_or(every),
            _ => {
                eprintln!("usage: soak [--addr HOST:PORT] [--workers N] [--keepalive S | --heartbeat S] [--stats S]");
                std::process::exit(2);
            }
        }
    }
    let mut app = App::new();
    // Load tools send far more than the default 100 envelopes per second per socket.
    app.limits(EventLimits::default().rate(Some(Rate { per_second: 1e9, burst: 1e9 })));
    if let Some(interval) = heartbeat {
        app.plugin(plugins::heartbeat(interval));
    }
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
    println!("soak server on ws://{}/", running.local_addr());
    let handle = running.app();
    let start = Instant::now();
    std::thread::spawn(move || loop {
        std::thread::sleep(every);
        let Some(stats) = handle.server().stats() else { return };
        println!(
            "stats secs={} sockets={} room={} connections={} slots={} timers={} timer_capacity={} pooled={}",
            start.elapsed().as_secs(),
            handle.socket_count(),
            handle.group_size(ROOM),
            stats.connections,
            stats.connection_slots,
            stats.timer_entries,
            stats.timer_capacity,
            stats.pooled_queues,
        );
    });
    running.join();
    Ok(())
}
