//! Middleware auth, as in emit.gg's README: `/login` stores the user on the
//! socket; route middleware guards `/profile` and `/admin`; a global
//! middleware logs every event. A token in the query (`?token=…`) may log in
//! at connect time instead, through connection middleware.
//!
//! `cargo run --example auth`, then `ws://127.0.0.1:3000/?token=root-token`.

#[path = "support/logs.rs"]
mod logs;

use emitws::app::{After, App, Middleware};
use serde_json::json;

/// Tokens and their users (a real app asks its session store).
fn user_of(token: &str) -> Option<&'static str> {
    match token {
        "root-token" => Some("root"),
        "ann-token" => Some("ann"),
        _ => None,
    }
}

fn main() -> std::io::Result<()> {
    logs::init();
    let addr = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:3000".into());
    let mut app = App::new();
    app.on_connect(|conn| {
        if let Some(user) = conn.query_value("token").as_deref().and_then(user_of) {
            conn.set("user", user.to_string());
        }
        Ok(After::disconnect(|gone| println!("{} left ({})", gone.conn_id, gone.code)))
    });
    app.middleware(|req, next| {
        println!("{} -> {}", req.conn_id(), req.event());
        next.run(req);
    });
    let auth = Middleware::new(|req, next| {
        if req.get::<String>("user").is_none() {
            return req.reply_err("unauthorized", "log in first");
        }
        next.run(req);
    });
    let admin_only = Middleware::new(|req, next| {
        if req.get::<String>("user").map(String::as_str) != Some("root") {
            return req.reply_err("forbidden", "admins only");
        }
        next.run(req);
    });
    app.on("/login", |req| {
        let token: String = req.data().unwrap_or_default();
        match user_of(&token) {
            Some(user) => {
                req.set("user", user.to_string());
                req.reply(&json!({ "user": user }));
            }
            None => req.reply_err("unauthorized", "unknown token"),
        }
    });
    app.on_with("/profile", [auth.clone()], |req| {
        let user = req.get::<String>("user").cloned();
        req.reply(&json!({ "user": user }));
    });
    app.on_with("/admin", [auth, admin_only], |req| req.reply(&json!({ "admin": true })));
    let running = app.listen(addr)?;
    println!("auth example on ws://{}", running.local_addr());
    running.stop_on_signals()?;
    running.join();
    Ok(())
}
