//! Client-side echo throughput: how many messages emitws's client gets
//! echoed per second by a server (benches/client-compare.sh runs it against
//! the same server as tokio-tungstenite's client, benches/peers/).
//!
//! ```text
//! client_echo --url ws://127.0.0.1:9001/ [--mode runtime|blocking]
//!             [--connections N] [--payload BYTES] [--duration SECS] [--warmup SECS]
//! ```
//!
//! `runtime` (the default) opens the connections from one server worker
//! (`ServerHandle::connect`): one event loop for all of them, as a tokio
//! current-thread runtime runs all of its tasks. `blocking` runs one thread
//! per connection with [`emitws::client::Client`]. Each connection sends a
//! binary message, waits for its echo, checks its length, and sends again.
//! Prints one JSON line: `{"client":…,"connections":…,"payload":…,"msgs_per_sec":…}`.

#[path = "support/logs.rs"]
mod logs;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use emitws::client::{ClientBuilder, ClientError};
use emitws::proto::Message;
use emitws::runtime::{Conn, Handler, Server};

struct Options {
    url: String,
    blocking: bool,
    connections: usize,
    payload: usize,
    duration: f64,
    warmup: f64,
}

fn main() {
    logs::init();
    let options = parse_args();
    let echoed = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let payload: Arc<[u8]> = (0..options.payload).map(|i| (i % 251) as u8).collect();
    let (label, running) = if options.blocking {
        ("emitws-blocking", blocking(&options, &echoed, &stop, &payload))
    } else {
        ("emitws-runtime", runtime(&options, &echoed, &stop, &payload))
    };
    std::thread::sleep(Duration::from_secs_f64(options.warmup));
    let (start, before) = (Instant::now(), echoed.load(Ordering::Relaxed));
    std::thread::sleep(Duration::from_secs_f64(options.duration));
    let count = echoed.load(Ordering::Relaxed) - before;
    let rate = count as f64 / start.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    running();
    println!(
        r#"{{"client":"{label}","connections":{},"payload":{},"msgs_per_sec":{rate:.0}}}"#,
        options.connections, options.payload
    );
}

/// Counts echoes and sends the next message, on the worker's loop.
#[derive(Clone)]
struct Pinger {
    echoed: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    payload: Arc<[u8]>,
}

impl Handler for Pinger {
    type Data = ();

    fn on_open(&mut self, conn: &mut Conn<'_, ()>) {
        let _ = conn.send_binary(&self.payload);
    }

    fn on_message(&mut self, conn: &mut Conn<'_, ()>, message: Message<'_>) {
        assert_eq!(message.as_bytes().len(), self.payload.len(), "echo of another length");
        self.echoed.fetch_add(1, Ordering::Relaxed);
        if !self.stop.load(Ordering::Relaxed) {
            let _ = conn.send_binary(&self.payload);
        }
    }

    fn on_connect_error(&mut self, _: (), error: ClientError) {
        eprintln!("connect failed: {error}");
        std::process::exit(1);
    }
}

fn runtime(
    options: &Options,
    echoed: &Arc<AtomicU64>,
    stop: &Arc<AtomicBool>,
    payload: &Arc<[u8]>,
) -> Box<dyn FnOnce()> {
    let pinger = Pinger { echoed: echoed.clone(), stop: stop.clone(), payload: payload.clone() };
    let server = Server::new().workers(1).keepalive(None).start_dialer(pinger).expect("start the worker");
    let settings = ClientBuilder::new();
    for _ in 0..options.connections {
        server.handle().connect(&options.url, &settings, ()).expect("a valid URL");
    }
    Box::new(move || server.shutdown())
}

fn blocking(
    options: &Options,
    echoed: &Arc<AtomicU64>,
    stop: &Arc<AtomicBool>,
    payload: &Arc<[u8]>,
) -> Box<dyn FnOnce()> {
    let threads: Vec<_> = (0..options.connections)
        .map(|_| {
            let (url, echoed, stop, payload) = (options.url.clone(), echoed.clone(), stop.clone(), payload.clone());
            std::thread::spawn(move || {
                let mut client = emitws::client::connect(&url).expect("connect");
                while !stop.load(Ordering::Relaxed) {
                    client.send_binary(&payload).expect("send");
                    let echo = client.recv().expect("an echo");
                    assert_eq!(echo.as_bytes().len(), payload.len(), "echo of another length");
                    echoed.fetch_add(1, Ordering::Relaxed);
                }
                let _ = client.close(emitws::proto::CloseCode::NORMAL, "");
            })
        })
        .collect();
    Box::new(move || {
        for thread in threads {
            let _ = thread.join();
        }
    })
}

fn parse_args() -> Options {
    let mut options = Options {
        url: "ws://127.0.0.1:9001/".into(),
        blocking: false,
        connections: 1,
        payload: 20,
        duration: 10.0,
        warmup: 2.0,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let value = args.next().unwrap_or_default();
        let ok = match arg.as_str() {
            "--url" => {
                options.url = value;
                true
            }
            "--mode" => {
                options.blocking = value == "blocking";
                value == "blocking" || value == "runtime"
            }
            "--connections" => value.parse().map(|n| options.connections = n).is_ok(),
            "--payload" => value.parse().map(|n| options.payload = n).is_ok(),
            "--duration" => value.parse().map(|n| options.duration = n).is_ok(),
            "--warmup" => value.parse().map(|n| options.warmup = n).is_ok(),
            _ => false,
        };
        if !ok {
            eprintln!(
                "usage: client_echo --url URL [--mode runtime|blocking] [--connections N] [--payload BYTES] \
                 [--duration SECS] [--warmup SECS]"
            );
            std::process::exit(2);
        }
    }
    options
}
