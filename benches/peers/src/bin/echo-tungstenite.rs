//! Reference echo server: tokio-tungstenite.
//!
//! Exists only to be benchmarked against emitws in the same run. Usage:
//!     echo-tungstenite [ADDR]        (default 127.0.0.1:9002)
//!
//! Echoes every text/binary message back with the same opcode. Pings are
//! answered by tungstenite itself (the pong is queued on read and flushed on
//! the next read/write), and the close handshake is completed by tungstenite
//! (it queues the close reply; the stream then ends). Nothing is logged per
//! message or per connection. SIGINT/SIGTERM end the process (exit status 0).

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

const DEFAULT_ADDR: &str = "127.0.0.1:9002";
/// 64 MiB for both a single frame and a whole message (tungstenite's default
/// frame limit is 16 MiB; raised so 16 MiB+ payloads in one frame work).
const MAX_SIZE: usize = 64 << 20;

fn main() {
    exit_on_sigint_sigterm();
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| DEFAULT_ADDR.to_owned());

    // current_thread on purpose: the benchmark pins each server to a single
    // core with taskset, so a one-thread runtime is the fair comparison with
    // emitws's single event loop (a multi-thread runtime would only add
    // cross-thread wakeups and work-stealing overhead on one core).
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("failed to build tokio runtime");

    rt.block_on(async move {
        let listener = TcpListener::bind(&addr)
            .await
            .unwrap_or_else(|e| panic!("bind {addr}: {e}"));
        println!(
            "echo-tungstenite listening on {}",
            listener.local_addr().unwrap()
        );

        loop {
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // e.g. EMFILE: back off instead of spinning. Not a hot path.
                    eprintln!("accept error: {e}");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            };
            // Same runtime setup as echo-fastwebsockets (whose upstream echo
            // example runs connections `unconstrained`), so neither server
            // pays tokio's cooperative-budget yields and the two differ only
            // in the WebSocket library.
            tokio::spawn(tokio::task::unconstrained(handle(stream)));
        }
    });
}

async fn handle(stream: TcpStream) {
    // Errors (peer vanished, protocol violation, ...) just end the
    // connection; nothing is logged on this path.
    let _ = serve(stream).await;
}

async fn serve(stream: TcpStream) -> Result<(), tokio_tungstenite::tungstenite::Error> {
    stream.set_nodelay(true)?;
    let config = WebSocketConfig::default()
        .max_message_size(Some(MAX_SIZE))
        .max_frame_size(Some(MAX_SIZE));
    let mut ws = tokio_tungstenite::accept_async_with_config(stream, Some(config)).await?;

    // The canonical tokio-tungstenite echo loop (as in its autobahn-server
    // example): `next()` yields whole (defragmented, UTF-8-checked) messages,
    // `send()` writes and flushes. Ping/Pong/Close/raw Frame are not echoed;
    // tungstenite answers pings and closes on its own. `next()` returns None
    // once the close handshake is done or the connection is gone.
    while let Some(msg) = ws.next().await {
        let msg = msg?;
        if msg.is_text() || msg.is_binary() {
            ws.send(msg).await?;
        }
    }
    Ok(())
}

/// Makes SIGINT and SIGTERM end the process at once with exit status 0.
///
/// Installed explicitly rather than relying on the default disposition
/// because a server started as a background job (`server &`) from a
/// non-interactive shell inherits SIGINT as *ignored*. Done with a plain
/// signal handler that calls `_exit(0)` rather than a tokio signal future:
/// connection tasks run `unconstrained`, so under a continuous flood the
/// runtime might not poll a signal future until the load stops. Called first
/// thing in main, so nothing can signal before it is in place.
fn exit_on_sigint_sigterm() {
    use signal_hook::consts::{SIGINT, SIGTERM};
    for sig in [SIGINT, SIGTERM] {
        // SAFETY: the action only calls `_exit`, which is async-signal-safe.
        unsafe { signal_hook::low_level::register(sig, || signal_hook::low_level::exit(0)) }
            .expect("install signal handler");
    }
}
