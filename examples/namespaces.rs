//! emit.gg's namespaces: `/chat/message`, `/game/move`, `/game/lobby/join`.
//!
//! `cargo run --example namespaces`; from the JS client:
//! `client.ns('/game').ns('/lobby').request('/join')`.

#[path = "support/logs.rs"]
mod logs;

use emitws::app::App;
use serde_json::json;

fn main() -> std::io::Result<()> {
    logs::init();
    let addr = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:3000".into());
    let mut app = App::new();
    let mut chat = app.ns("/chat");
    chat.on("/message", |req| req.reply(&json!({ "handled": req.event() })));
    chat.on("/typing", |req| req.reply(&json!({ "handled": req.event() })));
    let mut game = app.ns("/game");
    game.on("/move", |req| req.reply(&json!({ "handled": req.event() })));
    game.ns("/lobby").on("/join", |req| req.reply(&json!({ "handled": req.event() })));
    let running = app.listen(addr)?;
    println!("namespaces on ws://{}", running.local_addr());
    running.stop_on_signals()?;
    running.join();
    Ok(())
}
