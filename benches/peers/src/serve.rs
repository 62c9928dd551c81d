//! What every peer server shares: signal handling, a one-thread tokio
//! runtime, and the accept loop. Included by each binary with `#[path]`.

use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};

#[path = "signals.rs"]
mod signals;

/// Listens on the address given as the first argument (or `default_addr`),
/// prints `NAME listening on ADDR`, and hands every accepted connection to
/// `accept`, which is expected to spawn a task for it. Never returns.
///
/// current_thread on purpose: the benchmark pins each server to a single core
/// with taskset, so a one-thread runtime is the fair comparison with emitws's
/// single event loop (a multi-thread runtime would only add cross-thread
/// wakeups and work-stealing overhead on one core). This is also the runtime
/// fastwebsockets' own echo_server example uses.
pub fn serve(name: &str, default_addr: &str, mut accept: impl FnMut(TcpStream)) {
    signals::exit_on_sigint_sigterm();
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| default_addr.to_owned());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("failed to build tokio runtime");

    rt.block_on(async move {
        let listener = TcpListener::bind(&addr)
            .await
            .unwrap_or_else(|e| panic!("bind {addr}: {e}"));
        println!("{name} listening on {}", listener.local_addr().unwrap());

        loop {
            match listener.accept().await {
                Ok((stream, _)) => accept(stream),
                Err(e) => {
                    // e.g. EMFILE: back off instead of spinning. Not a hot path.
                    eprintln!("accept error: {e}");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }
    });
}
