//! A graceful shutdown of an event-layer server lets deferred replies go
//! out before each socket's 1001, for as long as the reply grace allows; a
//! drain lets them go out before the socket's 1012, until its deadline.
#![cfg(feature = "app")]

#[path = "common/app.rs"]
mod app_client;
mod common;

use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use app_client::AppClient;
use emitws::app::{App, ReplyHandle};
use serde_json::{json, Value};

/// `/slow` and `/never` defer their replies and hand the handles to the test.
fn deferring_app(grace: Duration) -> (emitws::app::Running, mpsc::Receiver<(String, ReplyHandle)>) {
    let (handles, deferred) = mpsc::channel();
    let mut app = App::new();
    for event in ["/slow", "/never"] {
        let handles = handles.clone();
        app.on(event, move |req| {
            let _ = handles.send((event.to_string(), req.defer()));
        });
    }
    let server = common::quick_server().workers(1).reply_grace(grace).shutdown_timeout(Duration::from_secs(5));
    (app.listen_with(server, "127.0.0.1:0").unwrap(), deferred)
}

#[test]
fn a_deferred_reply_goes_out_before_the_shutdowns_1001() {
    let (running, deferred) = deferring_app(Duration::from_secs(5));
    let mut client = AppClient::connect(running.local_addr());
    let mut idle = AppClient::connect(running.local_addr());
    let id = client.send_request("/slow", Value::Null);
    let (_, handle) = deferred.recv_timeout(common::WAIT).unwrap();

    let started = Instant::now();
    running.server().shutdown();
    // The socket without work under way is closed at once; the one
    // waiting for its reply is not, until the reply is sent.
    assert_eq!(idle.expect_close(1001), "server shutting down");
    client.ws.expect_silence(Duration::from_millis(200));
    handle.reply(&json!("done"));
    assert_eq!(client.reply_to(id), Ok(json!("done")));
    assert_eq!(client.expect_close(1001), "server shutting down");
    assert!(started.elapsed() < Duration::from_secs(5), "closed by the grace's end, not by the reply");
    drop(running);
}

#[test]
fn a_reply_that_never_comes_is_given_up_when_the_grace_ends() {
    let (running, deferred) = deferring_app(Duration::from_millis(300));
    let mut client = AppClient::connect(running.local_addr());
    client.send_request("/never", Value::Null);
    let (_, handle) = deferred.recv_timeout(common::WAIT).unwrap();

    let started = Instant::now();
    running.server().shutdown();
    assert_eq!(client.expect_close(1001), "server shutting down");
    assert!(started.elapsed() >= Duration::from_millis(300), "closed before the grace ended");
    // The late reply goes nowhere, and takes nothing down.
    handle.reply(&json!("too late"));
    thread::sleep(Duration::from_millis(50));
    drop(running);
}

#[test]
fn a_drain_closes_a_socket_after_its_deferred_reply() {
    let (running, deferred) = deferring_app(Duration::from_secs(5));
    let mut client = AppClient::connect(running.local_addr());
    let id = client.send_request("/slow", Value::Null);
    let (_, handle) = deferred.recv_timeout(common::WAIT).unwrap();

    // The only socket's turn comes at once, long before the deadline.
    let drain = running.drain(Duration::from_secs(20), Some("ws://127.0.0.1:1/next")).unwrap();
    client.ws.expect_silence(Duration::from_millis(300));
    handle.reply(&json!("done"));
    assert_eq!(client.reply_to(id), Ok(json!("done")));
    assert_eq!(client.expect_close(1012), "ws://127.0.0.1:1/next");
    assert!(drain.wait(Duration::from_secs(5)), "the drain counted the close");
    drop(running);
}

#[test]
fn a_drain_gives_up_a_reply_that_never_comes_at_its_deadline() {
    let (running, deferred) = deferring_app(Duration::from_secs(5));
    let mut stuck = AppClient::connect(running.local_addr());
    stuck.send_request("/never", Value::Null);
    let (_, never) = deferred.recv_timeout(common::WAIT).unwrap();

    let started = Instant::now();
    let _drain = running.drain(Duration::from_millis(500), None).unwrap();
    assert_eq!(stuck.expect_close(1012), "");
    assert!(started.elapsed() >= Duration::from_millis(500), "closed before the drain's deadline");
    drop(never);
    drop(running);
}
