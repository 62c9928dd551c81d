//! The echo server the Autobahn fuzzing client runs against.
//!
//! `cargo run --release --example autobahn_server -- 127.0.0.1:9001`
//!
//! Limits are raised as far as the suite needs: case 9.x sends messages of
//! up to 16 MiB, in up to 65,536 fragments. permessage-deflate is on, for
//! every message whatever its size, so cases 12.* and 13.* exercise the codec
//! on everything they send.

#[path = "support/echo_handler.rs"]
mod echo_handler;

#[path = "support/logs.rs"]
mod logs;

use echo_handler::Echo;
use emitws::proto::deflate::DeflateConfig;
use emitws::runtime::Server;

fn main() -> std::io::Result<()> {
    logs::init();
    let addr = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:9001".into());
    let server = Server::new()
        .max_message_size(64 << 20)
        .max_frame_size(64 << 20)
        .max_fragments(1 << 20)
        .backpressure(256 << 20, emitws::runtime::BackpressurePolicy::Close)
        .deflate(Some(DeflateConfig { min_size: 0, ..DeflateConfig::default() }))
        .start(addr.as_str(), Echo)?;
    println!("autobahn echo server listening on {}", server.local_addr());
    server.handle().stop_on_signals()?;
    server.join();
    Ok(())
}
