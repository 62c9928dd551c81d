//! An echo server with a small test page.
//!
//! `cargo run --release --example echo` then open http://127.0.0.1:9001/ in a
//! browser, or connect any WebSocket client to ws://127.0.0.1:9001/.
//! `--addr HOST:PORT` changes the address, `--workers N` the number of event loops
//! (default: one per core), `--accept reuseport|acceptor` how connections reach them,
//! `--deflate default|low-memory` turns permessage-deflate on, and
//! `--tls-cert FILE --tls-key FILE` (PEM) serves wss://; built with the feature
//! `io-uring`, `--io-uring on` writes each loop turn's sends with one io_uring submission.

#[path = "support/echo_handler.rs"]
mod echo_handler;

#[path = "support/logs.rs"]
mod logs;

use echo_handler::Echo;
use emitws::proto::deflate::DeflateConfig;
use emitws::runtime::{AcceptMode, Server};
use emitws::tls::TlsAcceptor;

fn main() -> std::io::Result<()> {
    logs::init();
    let mut args = std::env::args().skip(1);
    let mut addr = "127.0.0.1:9001".to_string();
    let mut server = Server::new();
    let (mut cert, mut key) = (None, None);
    while let Some(arg) = args.next() {
        match (arg.as_str(), args.next()) {
            ("--addr", Some(value)) => addr = value,
            ("--workers", Some(value)) if value.parse::<usize>().is_ok() => {
                server = server.workers(value.parse().unwrap_or(1));
            }
            ("--accept", Some(value)) if value == "reuseport" || value == "acceptor" => {
                let mode = if value == "acceptor" { AcceptMode::Acceptor } else { AcceptMode::ReusePort };
                server = server.accept_mode(mode);
            }
            ("--deflate", Some(value)) if value == "default" || value == "low-memory" => {
                let config = if value == "default" { DeflateConfig::default() } else { DeflateConfig::low_memory() };
                server = server.deflate(Some(config));
            }
            // Sends through io_uring (feature `io-uring`): one submission per loop turn.
            #[cfg(all(feature = "io-uring", target_os = "linux"))]
            ("--io-uring", Some(value)) if value == "on" || value == "off" => {
                let mut settings = server.settings().clone();
                settings.io_uring_sends = value == "on";
                server = Server::with_settings(settings);
            }
            ("--tls-cert", Some(value)) => cert = Some(value),
            ("--tls-key", Some(value)) => key = Some(value),
            _ => {
                eprintln!(
                    "usage: echo [--addr HOST:PORT] [--workers N] [--accept reuseport|acceptor] \
                     [--deflate default|low-memory] [--tls-cert FILE --tls-key FILE] [--io-uring on|off]"
                );
                std::process::exit(2);
            }
        }
    }
    let scheme = match (cert, key) {
        (Some(cert), Some(key)) => {
            let acceptor = TlsAcceptor::from_pem_files(cert, key).map_err(std::io::Error::other)?;
            server = server.tls(acceptor);
            "s"
        }
        (None, None) => "",
        _ => {
            eprintln!("--tls-cert and --tls-key go together");
            std::process::exit(2);
        }
    };
    let server = server.start(addr.as_str(), Echo)?;
    println!("echo server on ws{scheme}://{0}/ (test page: http{scheme}://{0}/)", server.local_addr());
    server.handle().stop_on_signals()?;
    server.join();
    Ok(())
}
