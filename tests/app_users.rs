//! Users and devices: a user's sockets on any worker, the per-user cap and
//! its policies, dropping a user or one device.
#![cfg(feature = "app")]

#[path = "common/app.rs"]
mod app_client;
mod common;

use std::net::SocketAddr;

use app_client::{eventually, AppClient};
use emitws::app::{App, DevicePolicy, Refusal, Running};
use emitws::runtime::AcceptMode;
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
