//! Reference Socket.IO echo server: socketioxide (Socket.IO v5 on tokio and
//! hyper), the peer of emitws's event layer for request/reply.
//!
//! Exists only to be benchmarked against emitws in the same run. Usage:
//!     echo-socketioxide [ADDR]     (default 127.0.0.1:9003)
//!
//! One handler, on the main namespace: the event `echo` is acknowledged with
//! its data (`42N["echo",DATA]` in, `43N[DATA]` out), the request/reply
//! emitws's `examples/app_echo` (`[1,N,"/echo",DATA]` → `[2,N,DATA]`) and
//! `examples/async_echo` serve; the event `bin`, whose data is one binary
//! attachment (`451-N["bin",{"_placeholder":true,"num":0}]` and a binary
//! frame), is acknowledged with the same bytes as an attachment
//! (`461-N[{"_placeholder":true,"num":0}]` and a binary frame), the peer
//! of an emitws.v2 binary request/reply. socketioxide 0.18's handlers are async only
//! (each event's handler is a future it spawns as a task), so it is the
//! peer of both the sync and the async emitws handler. Set up as
//! socketioxide's hyper echo example does: `SocketIo::new_svc()` served by
//! hyper's http1 connection with upgrades, on the same accept loop and
//! one-thread runtime as the other peers (src/serve.rs). Nothing is
//! logged. SIGINT/SIGTERM end the process (exit status 0).

use bytes::Bytes;
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use socketioxide::extract::{AckSender, Data, SocketRef};
use socketioxide::SocketIo;

#[path = "../serve.rs"]
mod serve;

const DEFAULT_ADDR: &str = "127.0.0.1:9003";

fn main() {
    let (service, io) = SocketIo::new_svc();
    io.ns("/", async |socket: SocketRef| {
        socket.on("echo", async |Data::<Value>(data), ack: AckSender| {
            ack.send(&data).ok();
        });
        // A binary attachment, acknowledged with the same bytes as one.
        socket.on("bin", async |Data::<Bytes>(data), ack: AckSender| {
            ack.send(&data).ok();
        });
    });
    serve::serve("echo-socketioxide", DEFAULT_ADDR, move |stream| {
        if stream.set_nodelay(true).is_err() {
            return;
        }
        let service = service.clone();
        tokio::spawn(async move {
            let conn = http1::Builder::new().serve_connection(TokioIo::new(stream), service).with_upgrades();
            // Broken handshakes and closed connections just end here.
            let _ = conn.await;
        });
    });
}
