//! Reference room fan-out server: tokio-tungstenite with a tokio broadcast channel.
//!
//! Exists only to be benchmarked against emitws in the same run (the room
//! fan-out benchmark, benches/fanout.sh). Usage:
//!     fanout-tungstenite [ADDR [READ_BUFFER]]     (default 127.0.0.1:9004, 131072)
//!
//! Every connection is a member of the one room: each text/binary message any
//! of them sends is forwarded, unchanged, to every connection (the sender
//! included). Written the way such a server usually is: one task per
//! connection, holding the stream's reading half and a receiver of a
//! `tokio::sync::broadcast` channel, selecting over both; `send()` writes and
//! flushes each forwarded message. A receiver that falls more than the
//! channel's capacity behind loses messages (tokio's `Lagged`); the load tool
//! counts what every member got, so such losses show as incomplete delivery.
//!
//! READ_BUFFER is tungstenite's `read_buffer_size` (default 128 KiB).
//! tungstenite zero-fills the free part of that buffer before every read
//! attempt, and `select!` polls the reading half each time the task wakes to
//! forward a message, so with the default every delivery pays a 128 KiB
//! memset; tungstenite's docs suggest 4 KiB for many connections.
//! SIGINT/SIGTERM end the process (exit status 0).

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::sync::broadcast;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;

#[path = "../serve.rs"]
mod serve;

const DEFAULT_ADDR: &str = "127.0.0.1:9004";
/// Messages a slow member may fall behind before it loses some.
const CHANNEL_CAPACITY: usize = 1024;

fn main() {
    let read_buffer = match std::env::args().nth(2) {
        Some(bytes) => bytes.parse().expect("READ_BUFFER: a number of bytes"),
        None => WebSocketConfig::default().read_buffer_size,
    };
    let config = WebSocketConfig::default().read_buffer_size(read_buffer);
    let (room, _) = broadcast::channel::<Message>(CHANNEL_CAPACITY);
    serve::serve("fanout-tungstenite", DEFAULT_ADDR, |stream| {
        tokio::spawn(member(stream, room.clone(), config));
    });
}

async fn member(stream: TcpStream, room: broadcast::Sender<Message>, config: WebSocketConfig) {
    // Errors (peer vanished, protocol violation, ...) just end the connection.
    let _ = serve(stream, room, config).await;
}

async fn serve(
    stream: TcpStream,
    room: broadcast::Sender<Message>,
    config: WebSocketConfig,
) -> Result<(), tokio_tungstenite::tungstenite::Error> {
    stream.set_nodelay(true)?;
    let ws = tokio_tungstenite::accept_async_with_config(stream, Some(config)).await?;
    let (mut sink, mut stream) = ws.split();
    let mut inbox = room.subscribe();
    loop {
        tokio::select! {
            received = stream.next() => match received {
                Some(Ok(msg)) if msg.is_text() || msg.is_binary() => {
                    // Err only when there are no receivers, and this member is one.
                    let _ = room.send(msg);
                }
                Some(Ok(_)) => {} // pings are answered by tungstenite; close ends the stream
                Some(Err(e)) => return Err(e),
                None => return Ok(()),
            },
            forwarded = inbox.recv() => match forwarded {
                Ok(msg) => sink.send(msg).await?,
                Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => return Ok(()),
            },
        }
    }
}
