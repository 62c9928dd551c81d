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

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

#[path = "../serve.rs"]
mod serve;

const DEFAULT_ADDR: &str = "127.0.0.1:9002";
/// 64 MiB for both a single frame and a whole message (tungstenite's default
/// frame limit is 16 MiB; raised so 16 MiB+ payloads in one frame work).
const MAX_SIZE: usize = 64 << 20;

fn main() {
    serve::serve("echo-tungstenite", DEFAULT_ADDR, |stream| {
        // Same runtime setup as echo-fastwebsockets (whose upstream echo
        // example runs connections `unconstrained`), so neither server
        // pays tokio's cooperative-budget yields and the two differ only
        // in the WebSocket library.
        tokio::spawn(tokio::task::unconstrained(handle(stream)));
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
