//! The chat demo as an operator sees it (the built example binary): its
//! `/healthz` and `/readyz`, and its `/metrics` following the traffic as
//! clients join, talk and leave.
#![cfg(feature = "app")]

#[path = "common/app.rs"]
mod app_client;
mod common;
#[path = "common/examples.rs"]
mod examples;

use std::net::SocketAddr;

use app_client::{eventually, AppClient};
use examples::Example;
use serde_json::json;

/// `GET path` on a connection of its own: the status and the body.
fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let request = format!("GET {path} HTTP/1.1\r\nHost: chat\r\n\r\n");
    let (_, reply, _) = common::http(addr, request.as_bytes());
    (reply.status, reply.body_text())
}

/// The value of one series in a Prometheus text scrape (`name` or
/// `name{labels}`, exactly as written), read line by line.
fn sample(scrape: &str, series: &str) -> f64 {
    let line = scrape
        .lines()
        .find(|line| line.strip_prefix(series).is_some_and(|rest| rest.starts_with(' ')))
        .unwrap_or_else(|| panic!("no {series} in:\n{scrape}"));
    line[series.len() + 1..].parse().unwrap_or_else(|e| panic!("{line:?}: {e}"))
}

fn metric(addr: SocketAddr, series: &str) -> f64 {
    let (status, scrape) = get(addr, "/metrics");
    assert_eq!(status, 200);
    sample(&scrape, series)
}

fn join(client: &mut AppClient, name: &str) {
    let joined = client.request("/chat/join", json!({ "room": "general", "name": name })).expect("joined");
    assert_eq!(joined["room"], "general");
}

#[test]
fn the_chat_demo_answers_health_checks_and_its_metrics_follow_the_traffic() {
    let (_chat, addr) = Example::start("chat", &["--addr", "127.0.0.1:0"]);
    assert_eq!(get(addr, "/healthz"), (200, "ok".to_string()));
    assert_eq!(get(addr, "/readyz"), (200, "ready".to_string()));

    let before = metric(addr, "emitws_app_requests_total{name=\"/chat/join\"}");
    assert_eq!(before, 0.0);
    let connect = || AppClient::connect_to(addr, "/chat", &[]).expect("upgraded");
    let (mut ann, mut bob) = (connect(), connect());
    join(&mut ann, "ann");
    join(&mut bob, "bob");
    assert_eq!(bob.request("/chat/say", json!({ "room": "general", "text": "hi \"ann\"" })), Ok(json!(true)));
    // The joins and the say were all answered before these scrapes.
    assert_eq!(metric(addr, "emitws_app_requests_total{name=\"/chat/join\"}"), 2.0);
    assert_eq!(metric(addr, "emitws_app_requests_total{name=\"/chat/say\"}"), 1.0);
    assert_eq!(metric(addr, "emitws_app_rooms"), 1.0);
    assert_eq!(metric(addr, "emitws_app_room_members"), 2.0);
    // Two chat clients and the scrape's own connection, once the earlier
    // scrapes' connections are closed (a busy server may still be at it).
    eventually("the two chat clients and one scrape open", || metric(addr, "emitws_connections_open") == 3.0);

    drop(ann);
    drop(bob);
    eventually("both chat clients gone", || metric(addr, "emitws_connections_open") == 1.0);
    assert_eq!(metric(addr, "emitws_app_room_members"), 0.0);
    assert!(
        metric(addr, "emitws_connections_closed_total{reason=\"read_failed\"}")
            + metric(addr, "emitws_connections_closed_total{reason=\"no_close_frame\"}")
            >= 2.0
    );
}
