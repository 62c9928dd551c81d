//! Reference client: tokio-tungstenite's, for client-side echo throughput.
//!
//! Exists only to be benchmarked against emitws's client in the same run
//! (benches/client-compare.sh). Usage:
//!     client-tungstenite URL CONNECTIONS PAYLOAD DURATION WARMUP
//!
//! Each connection is a task on one current-thread runtime: it sends a binary
//! message, waits for its echo (`next()`), checks its length and sends again.
//! Prints one JSON line: {"client":"tokio-tungstenite","connections":…,"payload":…,"msgs_per_sec":…}.

use std::cell::Cell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::{Bytes, Message};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, url, connections, payload, duration, warmup] = &args[..] else {
        eprintln!("usage: client-tungstenite URL CONNECTIONS PAYLOAD DURATION WARMUP");
        std::process::exit(2);
    };
    let connections: usize = connections.parse().expect("CONNECTIONS");
    let payload_len: usize = payload.parse().expect("PAYLOAD");
    let duration = Duration::from_secs_f64(duration.parse().expect("DURATION"));
    let warmup = Duration::from_secs_f64(warmup.parse().expect("WARMUP"));
    let payload = Bytes::from((0..payload_len).map(|i| (i % 251) as u8).collect::<Vec<u8>>());

    // current_thread, like the peers' servers: one core, one loop, as
    // emitws's client runs its connections on one worker.
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime");
    let local = tokio::task::LocalSet::new();
    let echoed = Rc::new(Cell::new(0u64));
    let stop = Rc::new(Cell::new(false));
    let rate = local.block_on(&rt, async {
        for _ in 0..connections {
            let (url, payload, echoed, stop) = (url.clone(), payload.clone(), echoed.clone(), stop.clone());
            tokio::task::spawn_local(async move {
                let (mut ws, _) = tokio_tungstenite::connect_async(url.as_str()).await.expect("connect");
                while !stop.get() {
                    ws.send(Message::Binary(payload.clone())).await.expect("send");
                    match ws.next().await {
                        Some(Ok(Message::Binary(echo))) => assert_eq!(echo.len(), payload.len()),
                        other => panic!("expected an echo, got {other:?}"),
                    }
                    echoed.set(echoed.get() + 1);
                }
                let _ = ws.close(None).await;
            });
        }
        tokio::time::sleep(warmup).await;
        let (start, before) = (Instant::now(), echoed.get());
        tokio::time::sleep(duration).await;
        let rate = (echoed.get() - before) as f64 / start.elapsed().as_secs_f64();
        stop.set(true);
        rate
    });
    println!(r#"{{"client":"tokio-tungstenite","connections":{connections},"payload":{payload_len},"msgs_per_sec":{rate:.0}}}"#);
}
