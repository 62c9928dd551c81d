//! benches/async.sh's server (feature `tokio`): `[1,id,"/echo",data]` is
//! answered `[2,id,data]` by a sync handler (`--mode sync`, as
//! examples/app_echo) or by an async one (`--mode async`: the data goes to a
//! future on the app's tokio runtime and comes back as a deferred reply), so
//! the two compare with everything else equal.
//!
//! `cargo run --release --features tokio --example async_echo -- --mode async --addr 127.0.0.1:9001`,
//! then `emitws-load echo --protocol emitws`.

use emitws::app::{App, EventLimits, Rate};
use emitws::runtime::Server;

fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let (mut addr, mut server, mut asynchronous, mut threads) = ("127.0.0.1:9001".to_string(), Server::new(), false, 1);
    while let Some(arg) = args.next() {
        match (arg.as_str(), args.next()) {
            ("--addr", Some(value)) => addr = value,
            ("--workers", Some(value)) if value.parse::<usize>().is_ok() => {
                server = server.workers(value.parse().unwrap_or(1));
            }
            ("--mode", Some(value)) if value == "sync" || value == "async" => asynchronous = value == "async",
            ("--async-threads", Some(value)) if value.parse::<usize>().is_ok_and(|n| n > 0) => {
                threads = value.parse().unwrap_or(1);
            }
            _ => {
                eprintln!("usage: async_echo [--addr HOST:PORT] [--workers N] [--mode sync|async] [--async-threads N]");
                std::process::exit(2);
            }
        }
    }
    let mut app = App::new();
    // As examples/app_echo: the bucket stays on with a rate the load tool never hits.
    let limits = EventLimits::default().rate(Some(Rate { per_second: 1e9, burst: 1e9 }));
    app.limits(limits).async_threads(threads);
    if asynchronous {
        app.on_async("/echo", |req| async move { Ok(req.raw_data().map(ToOwned::to_owned)) });
    } else {
        app.on("/echo", |req| {
            let data = req.raw_data();
            req.reply(&data);
        });
    }
    let running = app.listen_with(server, addr.as_str())?;
    println!("async_echo ({}) on ws://{}/", if asynchronous { "async" } else { "sync" }, running.local_addr());
    running.stop_on_signals()?;
    running.join();
    Ok(())
}
