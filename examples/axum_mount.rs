//! One port for an axum app and emitws (feature `axum`): axum serves
//! `GET /api/status` (JSON: the app's socket count and rooms), and `/` is
//! the emitws app's (`[1,id,"/echo",data]` is answered `[2,id,data]`, as
//! examples/app_echo.rs answers it): axum's route hands each connection on
//! it over to the app's workers, which answer the upgrade and own the
//! socket from then on.
//!
//! `cargo run --release --features axum --example axum_mount -- --addr 127.0.0.1:9001 --workers 1`,
//! then `curl http://127.0.0.1:9001/api/status`, or
//! `emitws-load echo --protocol emitws --url ws://127.0.0.1:9001/` to
//! compare with app_echo on its own port (docs/BENCHMARKS.md).

#[path = "support/logs.rs"]
mod logs;

use axum::routing::get;
use axum::{Json, Router};
use emitws::app::{App, EventLimits, Rate};
use emitws::runtime::Server;
use serde_json::json;

#[tokio::main]
async fn main() -> std::io::Result<()> {
    logs::init();
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
                eprintln!("usage: axum_mount [--addr HOST:PORT] [--workers N]");
                std::process::exit(2);
            }
        }
    }
    let mut app = App::new();
    // A load tool sends far more than the default 100 envelopes per second
    // per socket (the same setting as app_echo's, for a fair comparison).
    app.limits(EventLimits::default().rate(Some(Rate { per_second: 1e9, burst: 1e9 })));
    app.on("/echo", |req| {
        let data = req.raw_data();
        req.reply(&data);
    });
    // The app's workers, without a port: their sockets come from axum.
    let running = app.mount_with(server)?;
    let status = running.app();
    let router = Router::new()
        .route(
            "/api/status",
            get(move || {
                let answer = json!({ "sockets": status.socket_count(), "rooms": status.rooms() });
                async move { Json(answer) }
            }),
        )
        .route("/", emitws::axum::route(running.server().clone()));
    let listener = emitws::axum::Listener::bind(addr.as_str()).await?;
    println!("axum_mount on http://{0}/api/status and ws://{0}/", listener.local_addr()?);
    emitws::axum::serve(listener, router).await
}
