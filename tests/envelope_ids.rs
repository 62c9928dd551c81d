//! Which id a refused request is answered under, over a real socket: a
//! request the server cannot parse is still answered `[3, id, …]` when its
//! text starts with `[1,<id>,`, but only when that id is one (PROTOCOL.md
//! §2: a plain integer) and the text is JSON up to there; otherwise the
//! refusal is an `@error` event. Found by the `envelope` fuzz target.
#![cfg(feature = "app")]

#[path = "common/app.rs"]
mod app_client;
mod common;

use app_client::{start, AppClient};
use emitws::app::App;
use serde_json::{json, Value};

/// The next envelope that is not `@ready` (sent once after the upgrade).
fn next_answer(client: &mut AppClient) -> Value {
    loop {
        let envelope = client.next();
        if envelope[0] != 0 || envelope[1] != "@ready" {
            return envelope;
        }
    }
}

#[test]
fn a_truncated_request_is_answered_under_its_id_only_if_the_id_is_one() {
    let mut app = App::new();
    app.on("/x", |req| req.reply(&"x"));
    let running = start(app, 1);
    let mut client = AppClient::connect(running.local_addr());
    let cases = [
        (r#"[1,5,"/x",{"#, Some(5)),
        (" \t\r\n[ 1 ,\n7 ,\"/x\",{", Some(7)),
        (r#"[1,5.5,"/x",{"#, None),
        (r#"[1,5e3,"/x",{"#, None),
        (r#"[1,5E3,"/x",{"#, None),
        // Not JSON whitespace, though Unicode calls them spaces.
        ("\u{a0}[1,5,\"/x\",{", None),
        ("\u{c}[1,5,\"/x\",{", None),
    ];
    for (text, id) in cases {
        client.send_raw(text);
        let answer = next_answer(&mut client);
        match id {
            Some(id) => assert_eq!(
                (&answer[0], &answer[1], &answer[2]["code"]),
                (&json!(3), &json!(id), &json!("bad_request")),
                "{text:?}: {answer}"
            ),
            None => assert_eq!(
                (&answer[0], &answer[1], &answer[2]["code"]),
                (&json!(0), &json!("@error"), &json!("bad_request")),
                "{text:?}: {answer}"
            ),
        }
    }
    assert_eq!(client.request("/x", Value::Null), Ok(json!("x")), "the socket lives on");
    client.close();
    running.close();
}
