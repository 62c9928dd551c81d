//! The event layer's benchmark server (benches/app-echo.sh, benches/fanout.sh,
//! benches/idle-memory.sh, benches/soak.sh), usable by hand as well:
//!
//! - `[1,id,"/echo",data]` is answered `[2,id,data]` (on emitws.v2 a binary
//!   request to `/echo` gets its bytes back in a binary reply);
//! - `[1,id,"/join"]` joins the socket to the room `#room` (reply `true`);
//! - `[0,"/pub",data]` broadcasts `[0,"/pub",data]` to `#room`, the sender included;
//!   with `--history SIZE` the room keeps its last SIZE broadcasts (for a
//!   minute), and each delivery carries its offset as a fourth element
//!   (`[0,"/pub",data,{"room":"#room","offset":n,"epoch":"…"}]`, PROTOCOL.md §13),
//!   to measure what history costs (benches/callgrind.sh with `HISTORY=1`).
//!
//! `cargo run --release --example app_echo -- --addr 127.0.0.1:9001 --workers 1`,
//! then for instance `emitws-load echo --protocol emitws` or
//! `emitws-load fanout --protocol emitws`.
//!
//! For long runs (benches/soak.sh): `--keepalive S` pings after S seconds of
//! silence (default: the engine's, 30 s); `--heartbeat S` adds the event
//! layer's heartbeat; `--stats S` prints a line of counts every S seconds, so
//! that a long run shows whether anything grows:
//!
//! ```text
//! stats secs=12 sockets=19000 room=150 connections=19000 slots=19200 timers=19003 timer_capacity=19040 pooled=3
//! ```
//!
//! Built with the feature `io-uring`, `--io-uring on` writes each loop turn's
//! sends with one io_uring submission.

#[path = "support/logs.rs"]
mod logs;

use std::time::{Duration, Instant};

use emitws::app::{plugins, App, AppHandle, BroadcastOpts, EventLimits, History, Rate};
use emitws::runtime::{Keepalive, Server};

/// The one room `/join` and `/pub` use.
const ROOM: &str = "#room";

fn main() -> std::io::Result<()> {
    logs::init();
    let mut args = std::env::args().skip(1);
    let mut addr = "127.0.0.1:9001".to_string();
    let mut server = Server::new();
    let (mut heartbeat, mut stats_every, mut history) = (None, None, None);
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
            // Sends through io_uring (feature `io-uring`): one submission per loop turn.
            #[cfg(all(feature = "io-uring", target_os = "linux"))]
            ("--io-uring", Some(value)) if value == "on" || value == "off" => {
                let mut settings = server.settings().clone();
                settings.io_uring_sends = value == "on";
                server = Server::with_settings(settings);
            }
            ("--heartbeat", Some(value)) if seconds(&value).is_some() => heartbeat = seconds(&value),
            ("--stats", Some(value)) if seconds(&value).is_some() => stats_every = seconds(&value),
            ("--history", Some(value))
                if value.parse::<usize>().is_ok_and(|n| (1..=History::MAX_SIZE).contains(&n)) =>
            {
                history = value.parse().ok();
            }
            _ => {
                eprintln!(
                    "usage: app_echo [--addr HOST:PORT] [--workers N] [--keepalive S] [--heartbeat S] [--stats S] \
                     [--history SIZE] [--io-uring on|off]"
                );
                std::process::exit(2);
            }
        }
    }
    let mut app = App::new();
    // A load tool sends far more than the default 100 envelopes per second per
    // socket; the bucket stays on (and costs what it costs) with a rate it never hits.
    app.limits(EventLimits::default().rate(Some(Rate { per_second: 1e9, burst: 1e9 })));
    if let Some(size) = history {
        app.history(ROOM, History::new(size, Duration::from_secs(60)));
    }
    if let Some(interval) = heartbeat {
        app.plugin(plugins::heartbeat(interval));
    }
    app.on("/echo", |req| {
        // emitws.v2: a binary request's bytes come back in a binary reply.
        if let Some(bytes) = req.binary() {
            return req.reply_binary(bytes);
        }
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
    if let Some(every) = stats_every {
        let handle = running.app();
        std::thread::spawn(move || print_stats(&handle, every));
    }
    running.stop_on_signals()?;
    running.join();
    Ok(())
}

/// Prints a line of counts every `every` until the server stops.
fn print_stats(handle: &AppHandle, every: Duration) {
    let start = Instant::now();
    loop {
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
    }
}
