//! A handler that replies later, from a thread pool: the event loop never
//! waits for the (simulated) database. `/user {id}` is looked up by one of
//! four pool threads; `req.defer()` hands the reply over.
//!
//! `cargo run --example thread_pool`.

#[path = "support/logs.rs"]
mod logs;

use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use emitws::app::{App, ReplyHandle};
use serde_json::json;

/// A stand-in for a database query.
fn find_user(id: u64) -> Option<serde_json::Value> {
    std::thread::sleep(Duration::from_millis(20));
    (id < 1000).then(|| json!({ "id": id, "name": format!("user-{id}") }))
}

fn main() -> std::io::Result<()> {
    logs::init();
    let addr = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:3000".into());
    let (jobs, queue) = mpsc::channel::<(u64, ReplyHandle)>();
    let queue = Arc::new(Mutex::new(queue));
    for _ in 0..4 {
        let queue = queue.clone();
        std::thread::spawn(move || loop {
            let job = queue.lock().unwrap_or_else(|p| p.into_inner()).recv();
            let Ok((id, reply)) = job else { return };
            match find_user(id) {
                Some(user) => reply.reply(&user),
                None => reply.reply_err("not_found", &format!("no user {id}")),
            }
        });
    }
    let jobs = Mutex::new(jobs);
    let mut app = App::new();
    app.on("/user", move |req| {
        let Some(id) = req.expect_data::<u64>() else { return };
        let reply = req.defer();
        // If the pool is gone the handle is dropped, which answers `internal`.
        let _ = jobs.lock().unwrap_or_else(|p| p.into_inner()).send((id, reply));
    });
    let running = app.listen(addr)?;
    println!("thread pool example on ws://{}", running.local_addr());
    running.stop_on_signals()?;
    running.join();
    Ok(())
}
