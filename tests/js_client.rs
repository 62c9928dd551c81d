//! The JavaScript client (clients/js) against real emitws apps: this test
//! serves the apps below on free ports and runs clients/js/test/server.test.js
//! under `node --test` with `EMITWS_URL` (no auth), `EMITWS_CHALLENGE_URL`
//! (challenge-response auth) and `EMITWS_AUTH_URL` (first-message auth)
//! pointing at them. Without node on the PATH it fails (unless
//! `EMITWS_SKIP=js`).
#![cfg(feature = "app")]

#[path = "common/auth_apps.rs"]
mod auth_apps;
#[path = "common/node.rs"]
mod node;

use std::time::Duration;

use auth_apps::{challenge_app, first_message_app};
use emitws::app::{App, BroadcastOpts, CallError};
use serde_json::{json, Value};

fn app() -> App {
    let mut app = App::new();
    app.on("/echo", |req| {
        let data: Value = req.data().unwrap_or(Value::Null);
        if req.is_request() {
            req.reply(&data);
        } else {
            let _ = req.emit("/echoed", &data);
        }
    });
    app.on("/fail", |req| req.reply_err("teapot", "I am a teapot"));
    app.on("/later", |req| {
        let reply = req.defer();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            reply.reply(&"later");
        });
    });
    app.ns("/room").on("/join", |req| {
        let joined = req.join("#js").is_ok();
        req.reply(&joined);
    });
    app.ns("/room").on("/say", |req| {
        let text: String = req.data().unwrap_or_default();
        let _ = req.broadcast("/room/said", &text, BroadcastOpts::to("#js").include_self());
    });
    // Server-to-client RPC: asks the client's procedure named in the data and
    // replies with its answer, or with the error the call came to.
    app.on("/ask", |req| {
        let Some((name, data)) = req.expect_data::<(String, Value)>() else { return };
        let reply = req.defer();
        let _ = reply.socket().call_then(&name, &data, Duration::from_millis(500), move |result| match result {
            Ok(answer) => reply.reply(&json!({ "answer": answer.data::<Value>().unwrap_or(Value::Null) })),
            Err(CallError::NotRegistered(_)) => reply.reply(&json!({ "error": "not_registered" })),
            Err(CallError::ExecutionFailed(message)) => {
                reply.reply(&json!({ "error": "execution_failed", "message": message }))
            }
            Err(CallError::Timeout) => reply.reply(&json!({ "error": "timeout" })),
            Err(other) => reply.reply(&json!({ "error": other.to_string() })),
        });
    });
    app.on("/kick", |req| req.close(emitws::proto::CloseCode(4000), "kicked"));
    app.on("/cut", |req| req.close(emitws::proto::CloseCode(1013), "try again later"));
    app
}

#[test]
fn javascript_client_against_a_real_server() {
    let apps =
        [("EMITWS_URL", app()), ("EMITWS_CHALLENGE_URL", challenge_app()), ("EMITWS_AUTH_URL", first_message_app())];
    let running: Vec<_> = apps.map(|(name, app)| (name, app.listen("127.0.0.1:0").expect("listen"))).into();
    let env: Vec<_> =
        running.iter().map(|(name, running)| (*name, format!("ws://{}/", running.local_addr()))).collect();
    node::run_node_tests("server.test.js", &env);
    for (_, running) in running {
        running.close();
    }
}
