//! Users and devices: a user's sockets on any worker, the per-user cap and
//! its policies, dropping a user or one device; users attached after
//! connect (`set_user`, `clear_user`, by the socket itself or through a
//! `SocketRef` from any thread), kept by a resume; the user presence hooks.
#![cfg(feature = "app")]

#[path = "common/app.rs"]
mod app_client;
mod common;
#[path = "common/login.rs"]
mod login;

use std::net::SocketAddr;
use std::time::Duration;

use app_client::{eventually, AppClient};
use emitws::app::{App, DevicePolicy, GroupOutcome, Refusal, Running, SocketId};
use emitws::runtime::AcceptMode;
use emitws::runtime::ConnId;
use login::{
    login, login_routes, offline_after_the_grace, resume_as, resume_token, seen, socket_id, whoami, Transitions,
};
use serde_json::{json, Value};

/// Users named by `?user=`; two workers, sockets dealt in turn.
fn users_app(cap: Option<(usize, DevicePolicy)>) -> Running {
    let mut app = App::new();
    app.identify(|conn| conn.query_value("user").ok_or_else(|| Refusal::status(401, "who?")));
    if let Some((max, policy)) = cap {
        app.max_devices(max, policy);
    }
    app.on("/dm", |req| {
        #[derive(serde::Deserialize)]
        struct Dm {
            to: String,
            text: String,
        }
        let Some(dm) = req.expect_data::<Dm>() else { return };
        let from = req.user().unwrap_or_default().to_string();
        let reached = req.app().to_user(&dm.to).emit("/dm", &json!({ "from": from, "text": dm.text }));
        req.reply(&reached.unwrap_or(0));
    });
    app.on("/ping", |req| req.reply(&"pong"));
    let server = common::quick_server().workers(2).accept_mode(AcceptMode::Acceptor);
    app.listen_with(server, "127.0.0.1:0").expect("start")
}

fn device(addr: SocketAddr, user: &str) -> AppClient {
    let mut client = AppClient::connect_to(addr, &format!("/?user={user}"), &[]).expect("connect");
    // A round trip: the socket is registered by the time it answers.
    assert_eq!(client.request("/ping", Value::Null), Ok(json!("pong")));
    client
}

#[test]
fn to_user_reaches_every_device_on_every_worker() {
    let running = users_app(None);
    let addr = running.local_addr();
    let mut phone = device(addr, "ann");
    let mut laptop = device(addr, "ann");
    let mut bob = device(addr, "bob");
    let ann = running.to_user("ann");
    let workers: std::collections::HashSet<usize> = ann.sockets().iter().map(|id| id.worker()).collect();
    assert_eq!(workers.len(), 2, "ann's devices are on both workers");
    assert_eq!(bob.request("/dm", json!({ "to": "ann", "text": "hi" })), Ok(json!(2)));
    for client in [&mut phone, &mut laptop] {
        assert_eq!(client.expect_event("/dm"), json!({ "from": "bob", "text": "hi" }));
    }
    assert_eq!(bob.request("/dm", json!({ "to": "nobody", "text": "?" })), Ok(json!(0)));
    assert_eq!(running.users(), ["ann", "bob"]);
    assert!(ann.is_online());
    phone.close();
    eventually("one device left", || ann.sockets().len() == 1);
    laptop.close();
    eventually("ann offline", || !ann.is_online());
    bob.close();
    running.close();
}

#[test]
fn the_cap_rejects_the_new_device() {
    let running = users_app(Some((2, DevicePolicy::RejectNew)));
    let addr = running.local_addr();
    let first = device(addr, "ann");
    let second = device(addr, "ann");
    let mut third = AppClient::connect_to(addr, "/?user=ann", &[]).expect("upgraded");
    assert_eq!(third.expect_close(4429), "too many devices for this user");
    assert_eq!(running.to_user("ann").sockets().len(), 2);
    first.close();
    eventually("a free slot", || running.to_user("ann").sockets().len() == 1);
    let fourth = device(addr, "ann");
    second.close();
    fourth.close();
    running.close();
}

#[test]
fn the_cap_drops_the_oldest_device() {
    let running = users_app(Some((2, DevicePolicy::DropOldest)));
    let addr = running.local_addr();
    let mut oldest = device(addr, "ann");
    let second = device(addr, "ann");
    let third = device(addr, "ann");
    assert_eq!(oldest.expect_close(4409), "replaced by a newer device");
    eventually("two devices", || running.to_user("ann").sockets().len() == 2);
    second.close();
    third.close();
    running.close();
}

#[test]
fn dropping_a_user_or_one_device() {
    let running = users_app(None);
    let addr = running.local_addr();
    let mut a1 = device(addr, "ann");
    let mut a2 = device(addr, "ann");
    let mut b = device(addr, "bob");
    let bob_socket = running.to_user("bob").sockets()[0];
    assert!(running.socket(bob_socket).drop_with("one device"));
    assert_eq!(b.expect_close(4000), "one device");
    assert_eq!(running.drop_user("ann", "banned"), 2);
    assert_eq!(a1.expect_close(4000), "banned");
    assert_eq!(a2.expect_close(4000), "banned");
    running.close();
}

/// Sockets that log in after connect (see `common/login.rs`); two workers.
fn login_app(cap: Option<(usize, DevicePolicy)>, window: Option<Duration>) -> (Running, Transitions) {
    let mut app = App::new();
    let transitions = login_routes(&mut app);
    if let Some((max, policy)) = cap {
        app.max_devices(max, policy);
    }
    app.resume_window(window);
    let server = common::quick_server().workers(2).accept_mode(AcceptMode::Acceptor);
    (app.listen_with(server, "127.0.0.1:0").expect("start"), transitions)
}

#[test]
fn a_user_attached_after_connect_is_reached_switched_and_detached() {
    let (running, transitions) = login_app(None, None);
    let addr = running.local_addr();
    let mut phone = AppClient::connect(addr);
    let mut bob = AppClient::connect(addr);
    assert_eq!(whoami(&mut phone), Value::Null);
    assert!(!running.to_user("ann").is_online());
    assert!(login(&mut phone, "ann"));
    assert!(login(&mut bob, "bob"));
    assert_eq!(whoami(&mut phone), json!("ann"));
    let ann = running.to_user("ann");
    assert!(ann.is_online());
    assert_eq!(ann.sockets().len(), 1);
    assert_eq!(running.users(), ["ann", "bob"]);
    assert_eq!(bob.request("/dm", json!(["ann", "hi"])), Ok(json!(1)));
    assert_eq!(phone.expect_event("/dm"), json!("hi"));
    // Logging in again as the same user changes nothing.
    assert!(login(&mut phone, "ann"));
    assert_eq!(ann.sockets().len(), 1);
    // Another user: detached from ann first.
    assert!(login(&mut phone, "cat"));
    assert_eq!(whoami(&mut phone), json!("cat"));
    assert!(!ann.is_online());
    assert_eq!(bob.request("/dm", json!(["ann", "lost"])), Ok(json!(0)));
    assert_eq!(bob.request("/dm", json!(["cat", "meow"])), Ok(json!(1)));
    assert_eq!(phone.expect_event("/dm"), json!("meow"));
    assert_eq!(phone.request("/logout", Value::Null), Ok(Value::Null));
    assert!(!running.to_user("cat").is_online());
    assert_eq!(running.users(), ["bob"]);
    // Each change once, in order, on the one node.
    let expected = ["online ann", "online bob", "offline ann", "online cat", "offline cat"];
    eventually("the hooks", || seen(&transitions).len() >= expected.len());
    assert_eq!(seen(&transitions), expected);
    phone.close();
    bob.close();
    running.close();
}

#[test]
fn presence_hooks_fire_once_per_change_of_a_user_with_two_devices() {
    let (running, transitions) = login_app(None, None);
    let addr = running.local_addr();
    let (mut phone, mut laptop) = (AppClient::connect(addr), AppClient::connect(addr));
    assert!(login(&mut phone, "ann"));
    assert!(login(&mut laptop, "ann"));
    assert_eq!(running.to_user("ann").sockets().len(), 2);
    phone.close();
    eventually("one device left", || running.to_user("ann").sockets().len() == 1);
    assert_eq!(seen(&transitions), ["online ann"]);
    laptop.close();
    eventually("ann offline", || seen(&transitions).len() == 2);
    assert_eq!(seen(&transitions), ["online ann", "offline ann"]);
    running.close();
}

#[test]
fn the_cap_applies_to_users_attached_after_connect() {
    let (running, _) = login_app(Some((1, DevicePolicy::RejectNew)), None);
    let addr = running.local_addr();
    let mut first = AppClient::connect(addr);
    assert!(login(&mut first, "ann"));
    let mut second = AppClient::connect(addr);
    second.send_request("/login", json!("ann"));
    assert_eq!(second.ws.expect_close(4429), "too many devices for this user");
    assert_eq!(running.to_user("ann").sockets().len(), 1);
    first.close();
    running.close();

    let (running, _) = login_app(Some((1, DevicePolicy::DropOldest)), None);
    let addr = running.local_addr();
    let mut oldest = AppClient::connect(addr);
    assert!(login(&mut oldest, "ann"));
    let mut newer = AppClient::connect(addr);
    assert!(login(&mut newer, "ann"));
    assert_eq!(oldest.expect_close(4409), "replaced by a newer device");
    eventually("one device", || running.to_user("ann").sockets().len() == 1);
    assert_eq!(whoami(&mut newer), json!("ann"));
    newer.close();
    running.close();
}

#[test]
fn a_resumed_socket_comes_back_with_the_user_it_logged_in_as() {
    let (running, transitions) = login_app(None, Some(Duration::from_secs(30)));
    let addr = running.local_addr();
    let mut phone = AppClient::connect(addr);
    let token = resume_token(&phone);
    assert!(login(&mut phone, "ann"));
    // Lost without a close: away, its session kept, it is not a device.
    drop(phone);
    eventually("ann away", || !running.to_user("ann").is_online());
    let back = resume_as(addr, &token, "ann");
    assert!(running.to_user("ann").is_online());
    assert_eq!(seen(&transitions), ["online ann", "offline ann", "online ann"]);
    back.close();
    running.close();
}

#[test]
fn a_socket_ref_attaches_and_detaches_a_user_under_the_cap() {
    const ODD: &str = "o'neil \"the\" é {x}";
    let (running, transitions) = login_app(Some((1, DevicePolicy::RejectNew)), None);
    let addr = running.local_addr();
    let mut phone = AppClient::connect(addr);
    let mut bob = AppClient::connect(addr);
    let phone_ref = running.socket(socket_id(&phone));
    assert_eq!(phone_ref.set_user(ODD).wait(), GroupOutcome::Done { changed: true });
    assert_eq!(whoami(&mut phone), json!(ODD));
    assert_eq!(phone_ref.set_user(ODD).wait(), GroupOutcome::Done { changed: false });
    assert_eq!(running.to_user(ODD).sockets(), [socket_id(&phone).conn]);
    assert_eq!(bob.request("/dm", json!([ODD, "hi"])), Ok(json!(1)));
    assert_eq!(phone.expect_event("/dm"), json!("hi"));
    // The cap holds for a user given from outside: refused, and closed.
    let mut tablet = AppClient::connect(addr);
    match running.socket(socket_id(&tablet)).set_user(ODD).wait() {
        GroupOutcome::Refused { code, message } => assert_eq!(code, "too_many_devices", "{message}"),
        other => panic!("a second device was not refused: {other:?}"),
    }
    assert_eq!(tablet.ws.expect_close(4429), "too many devices for this user");
    assert_eq!(running.to_user(ODD).sockets().len(), 1);
    // Cleared: no longer reached, offline; clearing again changes nothing.
    assert_eq!(phone_ref.clear_user().wait(), GroupOutcome::Done { changed: true });
    assert_eq!(whoami(&mut phone), Value::Null);
    assert_eq!(bob.request("/dm", json!([ODD, "lost"])), Ok(json!(0)));
    assert_eq!(phone_ref.clear_user().wait(), GroupOutcome::Done { changed: false });
    assert_eq!(seen(&transitions), [format!("online {ODD}"), format!("offline {ODD}")]);
    // A socket that is not there.
    let gone = SocketId { node: 0, conn: ConnId(socket_id(&bob).conn.0 + 1000) };
    assert_eq!(running.socket(gone).set_user("ann").wait(), GroupOutcome::NotThere);
    phone.close();
    bob.close();
    running.close();
}

/// With a presence grace, a socket lost by accident that resumes within it
/// fires neither hook; gone for good, its user goes offline once the grace
/// is over, not before.
#[test]
fn within_the_presence_grace_a_resume_fires_neither_hook() {
    const GRACE: Duration = Duration::from_secs(2);
    let mut app = App::new();
    let transitions = login_routes(&mut app);
    app.resume_window(Some(Duration::from_secs(30)));
    app.presence_grace(GRACE);
    let server = common::quick_server().workers(2).accept_mode(AcceptMode::Acceptor);
    let running = app.listen_with(server, "127.0.0.1:0").expect("start");
    let addr = running.local_addr();
    let mut phone = AppClient::connect(addr);
    let token = resume_token(&phone);
    assert!(login(&mut phone, "ann"));
    drop(phone);
    eventually("ann away", || !running.to_user("ann").is_online());
    let back = resume_as(addr, &token, "ann");
    std::thread::sleep(GRACE * 2);
    assert_eq!(seen(&transitions), ["online ann"], "neither hook for the resume");

    offline_after_the_grace(back, GRACE, 2, || seen(&transitions));
    assert_eq!(seen(&transitions), ["online ann", "offline ann"]);
    running.close();
}
