//! The cluster API on a server without an adapter: `app.cluster()` answers
//! for this server, socket ids read `0-CONN` and are taken back by
//! `emit_to` and `except`.
#![cfg(feature = "app")]

#[path = "common/app.rs"]
mod app_client;
mod common;

use app_client::{eventually, AppClient};
use emitws::app::{App, BroadcastOpts, SocketId};
use serde_json::{json, Value};

#[test]
fn without_an_adapter_the_cluster_is_this_server() {
    let mut app = App::new();
    app.identify(|c| c.query_value("user").ok_or(emitws::app::Refusal::status(401, "who?")));
    app.on("/id", |req| {
        let _ = req.join("#lobby");
        let id = req.socket_id().to_string();
        req.reply(&id);
    });
    app.on("/dm", |req| {
        let to: SocketId = req.data::<String>().unwrap().parse().unwrap();
        let _ = req.app().emit_to(to, "/dm", &"hi");
    });
    app.on("/say", |req| {
        let except: SocketId = req.data::<String>().unwrap().parse().unwrap();
        let _ = req.broadcast("/said", &1, BroadcastOpts::to("#lobby").except(except));
    });
    let running = app_client::start(app, 2);
    let connect = |user: &str| {
        let mut client = AppClient::connect_to(running.local_addr(), &format!("/?user={user}"), &[]).unwrap();
        let id = client.request("/id", Value::Null).unwrap().as_str().unwrap().to_string();
        (client, id)
    };
    let (mut ann, ann_id) = connect("ann");
    let (mut ann2, ann2_id) = connect("ann");
    let (mut bob, bob_id) = connect("bob");
    assert!(ann_id.starts_with("0-"), "{ann_id}");
    assert_eq!(running.node(), 0);

    let cluster = running.cluster();
    let mut all: Vec<SocketId> = [&ann_id, &ann2_id, &bob_id].iter().map(|id| id.parse().unwrap()).collect();
    all.sort();
    assert_eq!(cluster.sockets().unwrap(), all);
    assert_eq!(cluster.socket_count().unwrap(), 3);
    assert_eq!(cluster.group_members("#lobby").unwrap(), all);
    assert_eq!(cluster.group_size("#lobby").unwrap(), 3);
    assert_eq!(cluster.users().unwrap(), ["ann", "bob"]);
    assert_eq!(cluster.user_count().unwrap(), 2);
    assert_eq!(cluster.user_sockets("ann").unwrap().len(), 2);
    assert!(cluster.user_online("bob").unwrap());
    assert!(cluster.socket_exists(bob_id.parse().unwrap()).unwrap());
    let elsewhere = SocketId { node: 5, ..bob_id.parse().unwrap() };
    assert!(!cluster.socket_exists(elsewhere).unwrap());
    assert!(!running.emit_to(elsewhere, "/dm", &"nowhere to go").unwrap());

    ann.emit("/dm", json!(bob_id));
    assert_eq!(bob.expect_event("/dm"), "hi");
    ann.emit("/say", json!(ann2_id));
    assert_eq!(bob.expect_event("/said"), 1);
    ann2.expect_silence(common::ms(200));

    bob.close();
    eventually("bob's departure", || !running.cluster().user_online("bob").unwrap());
    assert_eq!(running.cluster().socket_count().unwrap(), 2);
    assert!(!running.cluster().socket_exists(bob_id.parse().unwrap()).unwrap());
    ann.close();
    ann2.close();
    running.close();
}

#[test]
fn a_socket_without_rooms_or_user_leaves_the_cluster_view_when_it_closes() {
    let running = app_client::start(App::new(), 1);
    let client = AppClient::connect(running.local_addr());
    assert_eq!(running.cluster().socket_count().unwrap(), 1);
    client.close();
    eventually("the socket gone", || running.cluster().socket_count().unwrap() == 0);
    running.close();
}
