//! The examples' log output: the library's `tracing` events on stderr,
//! filtered by `RUST_LOG` (`info` when unset), so that
//! `RUST_LOG=emitws=debug cargo run --example chat` shows each connection's
//! life. What the examples print for their users (the address) stays on stdout.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// Installs the subscriber; a second call, or a bad `RUST_LOG`, is ignored
/// with a note on stderr.
pub fn init() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|e| {
        if std::env::var_os("RUST_LOG").is_some() {
            eprintln!("RUST_LOG ignored: {e}");
        }
        EnvFilter::new("info")
    });
    // Colors only for a person at a terminal, not in a CI log or a pipe.
    let ansi = std::io::stderr().is_terminal();
    let subscriber = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    if let Err(e) = subscriber.try_init() {
        eprintln!("no log output: {e}");
    }
}
