//! An app whose sockets log in after connect (`/login` attaches a user with
//! `set_user`, `/logout` detaches it, `/whoami` says who), recording the
//! user presence hooks, for the local and the cluster user tests.

#![allow(dead_code)]

use std::net::{Shutdown, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use emitws::app::{App, SocketId};
use serde_json::{json, Value};

use crate::app_client::AppClient;

/// The presence hooks' calls, in order: `online USER` / `offline USER`.
pub type Transitions = Arc<Mutex<Vec<String>>>;

/// Adds the login routes and presence hooks to `app`; the hooks' record.
pub fn login_routes(app: &mut App) -> Transitions {
    let transitions = Transitions::default();
    let (online, offline) = (transitions.clone(), transitions.clone());
    app.on_user_online(move |_, user| online.lock().unwrap().push(format!("online {user}")));
    app.on_user_offline(move |_, user| offline.lock().unwrap().push(format!("offline {user}")));
    app.on("/login", |req| {
        let user: String = req.data().expect("a user name");
        let kept = req.set_user(&user);
        req.reply(&kept);
    });
    app.on("/logout", |req| {
        req.clear_user();
        let user = req.user().map(str::to_owned);
        req.reply(&user);
    });
    app.on("/whoami", |req| {
        let user = req.user().map(str::to_owned);
        req.reply(&user);
    });
    app.on("/dm", |req| {
        let (to, text): (String, String) = req.data().expect("[to, text]");
        let reached = req.app().to_user(&to).emit("/dm", &text);
        req.reply(&reached.unwrap_or(0));
    });
    transitions
}

/// Logs `client` in as `user`; whether the socket was kept.
pub fn login(client: &mut AppClient, user: &str) -> bool {
    client.request("/login", json!(user)) == Ok(json!(true))
}

/// Who the server says `client` is.
pub fn whoami(client: &mut AppClient) -> Value {
    client.request("/whoami", Value::Null).expect("/whoami answers")
}

/// The hooks' calls so far.
pub fn seen(transitions: &Transitions) -> Vec<String> {
    transitions.lock().unwrap().clone()
}

/// The socket id the server gave `client` (in its `@ready`).
pub fn socket_id(client: &AppClient) -> SocketId {
    let ready = client.ready.as_ref().expect("a @ready");
    ready["socket"].as_str().expect("a socket id").parse().expect("a socket id")
}

/// The resume token in `client`'s `@ready` (PROTOCOL.md §13).
pub fn resume_token(client: &AppClient) -> String {
    let ready = client.ready.as_ref().expect("a @ready");
    ready["resume"].as_str().expect("a resume token").to_string()
}

/// Resumes the session of `token` on a new connection to `addr`
/// (PROTOCOL.md §13) and checks that its socket comes back logged in as
/// `user`; the resumed client, past its `@ready`.
pub fn resume_as(addr: SocketAddr, token: &str, user: &str) -> AppClient {
    let mut back = AppClient::connect_to(addr, "/?emitws_resume=1", &[]).expect("upgraded");
    let id = back.send_request("@resume", json!({ "token": token, "rooms": {} }));
    assert_eq!(back.reply_to(id).expect("a reply to @resume")["resumed"], true);
    back.wait_ready();
    assert_eq!(whoami(&mut back), json!(user));
    back
}

/// Loses `client` for good (TCP shut down, no close frame) and waits until
/// `transitions` holds `count` calls, the last its user's `offline`: that
/// must come once the presence `grace` is over, not before (nor 5 graces
/// later).
pub fn offline_after_the_grace(
    client: AppClient,
    grace: Duration,
    count: usize,
    transitions: impl Fn() -> Vec<String>,
) {
    let lost = Instant::now();
    let _ = client.ws.stream.shutdown(Shutdown::Both);
    drop(client);
    let deadline = lost + grace * 5;
    while transitions().len() < count {
        assert!(Instant::now() < deadline, "no offline: {:?}", transitions());
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(lost.elapsed() >= grace, "offline before the grace was over: {:?}", lost.elapsed());
    let seen = transitions();
    assert!(seen.last().is_some_and(|last| last.starts_with("offline ")), "{seen:?}");
}
