//! The Redis adapter over TLS (`rediss://`) against a real redis-server
//! that takes TLS connections only, with a CA and a server certificate the
//! test makes: two app nodes trusting the CA file exchange a broadcast and
//! answer a cluster query; a node trusting another CA (or Mozilla's roots)
//! never connects, and says so; a missing CA file fails the start; the chat
//! example's servers share a room (their own keys too) over TLS. Without
//! redis-server on the PATH these tests fail, naming what to install,
//! unless `EMITWS_SKIP=redis` leaves them out.
#![cfg(feature = "redis")]

use std::sync::Arc;
use std::time::Duration;

#[path = "common/app.rs"]
mod app_client;
#[allow(dead_code)]
#[path = "../examples/chat/main.rs"]
mod chat;
mod common;
#[path = "common/redis_ha.rs"]
mod redis_ha;
#[path = "common/redis.rs"]
mod redis_server;

use app_client::AppClient;
use emitws::app::{Adapter, App, BroadcastOpts, Running};
use emitws::cluster::{ClusterError, RedisAdapter, RedisOptions};
use redis_ha::{Certificates, TempDir, TlsRedis};
use redis_server::wait_for;
use serde_json::Value;

fn quick() -> RedisOptions {
    RedisOptions::default()
        .heartbeat_ttl(Duration::from_secs(1))
        .max_backoff(Duration::from_millis(200))
        .query_timeout(Duration::from_secs(1))
}

/// An app node over `url`: `/join` joins `#r`, `/say` broadcasts `/said`
/// to `#r` (its sender left out).
fn node(url: &str, options: RedisOptions) -> (Running, Arc<RedisAdapter>) {
    let adapter = RedisAdapter::new(url, options).expect("a valid URL and CA file");
    let mut app = App::new();
    app.adapter(adapter.clone());
    app.on("/join", |req| {
        req.join("#r").expect("may join");
        req.reply(&true);
    });
    app.on("/say", |req| {
        let text: String = req.data().expect("a text");
        req.broadcast("/said", &text, BroadcastOpts::to("#r")).expect("serializes");
        req.reply(&true);
    });
    (app_client::start(app, 2), adapter)
}

#[test]
fn two_nodes_over_tls_exchange_broadcasts_and_answer_queries() {
    let Some(redis) = TlsRedis::start() else { return };
    let options = quick().ca_file(&redis.certificates.ca);
    let (a, adapter_a) = node(&redis.url(), options.clone());
    let (b, adapter_b) = node(&redis.url(), options);
    assert!(adapter_a.link().ready(Duration::from_secs(5)) && adapter_b.link().ready(Duration::from_secs(5)));
    wait_for(Duration::from_secs(5), || adapter_a.link().nodes().is_ok_and(|n| n.len() == 2));
    let mut on_a = AppClient::connect(a.local_addr());
    let mut on_b = AppClient::connect(b.local_addr());
    on_a.request("/join", Value::Null).unwrap();
    on_b.request("/join", Value::Null).unwrap();
    wait_for(Duration::from_secs(5), || a.cluster().socket_count().is_ok_and(|n| n == 2));
    assert_eq!(b.cluster().socket_count().unwrap(), 2);
    assert!(adapter_b.healthy().is_ok());
    on_a.request("/say", serde_json::json!("over TLS")).unwrap();
    assert_eq!(on_b.expect_event("/said"), "over TLS");
    on_b.request("/say", serde_json::json!("and back")).unwrap();
    assert_eq!(on_a.expect_event("/said"), "and back");
    on_a.close();
    on_b.close();
    a.close();
    b.close();
}

#[test]
fn a_server_certificate_from_another_ca_is_refused() {
    let Some(redis) = TlsRedis::start() else { return };
    let other_dir = TempDir::new("other-ca");
    let other = Certificates::make(&other_dir);
    // Another CA, then Mozilla's roots (no CA file): neither trusts the test's CA.
    for options in [quick().ca_file(&other.ca), quick()] {
        let (running, adapter) = node(&redis.url(), options);
        assert!(!adapter.link().ready(Duration::from_secs(1)), "connected through an untrusted certificate");
        assert_eq!(adapter.healthy(), Err("Redis unreachable".to_string()));
        let error = adapter.link().nodes().unwrap_err();
        assert!(matches!(error, ClusterError::Unavailable(_)), "{error:?}");
        let cause = std::error::Error::source(&error).expect("the Redis error is kept").to_string();
        assert!(cause.contains("certificate") || cause.contains("Certificate"), "{cause}");
        assert!(running.cluster().socket_count().is_err());
        running.close();
    }
}

#[test]
fn a_missing_ca_file_fails_the_start() {
    let dir = TempDir::new("no-ca");
    let missing = dir.0.join("absent.pem");
    let error = RedisAdapter::new("rediss://127.0.0.1:1/", quick().ca_file(&missing)).unwrap_err();
    match &error {
        ClusterError::CaFile { path, error } => {
            assert_eq!((path, error.kind()), (&missing, std::io::ErrorKind::NotFound));
        }
        other => panic!("{other:?}"),
    }
    assert!(error.to_string().starts_with(&format!("Redis CA file {}", missing.display())), "{error}");
    let not_tls = RedisAdapter::new("redis://127.0.0.1:1/", quick().ca_file(&missing)).unwrap_err();
    assert!(matches!(not_tls, ClusterError::CaFile { .. }), "the file is checked first: {not_tls:?}");
    let pem = dir.write("ca.pem", &rcgen::generate_simple_self_signed(vec!["x".into()]).unwrap().cert.pem());
    let not_tls = RedisAdapter::new("redis://127.0.0.1:1/", quick().ca_file(&pem)).unwrap_err();
    assert!(matches!(not_tls, ClusterError::BadUrl(_)), "{not_tls:?}");
}

#[test]
fn two_chat_servers_share_a_room_over_tls() {
    use emitws::client::app::{AppClient as Chatter, AppOptions};
    let Some(redis) = TlsRedis::start() else { return };
    let ca = Some(redis.certificates.ca.as_path());
    let one = chat::serve_with_ca("127.0.0.1:0", Some(&redis.url()), ca).expect("first server");
    let two = chat::serve_with_ca("127.0.0.1:0", Some(&redis.url()), ca).expect("second server");
    let wait = Duration::from_secs(10);
    let connect = |running: &Running| {
        Chatter::connect(&format!("ws://{}/chat", running.local_addr()), AppOptions::default()).expect("connect")
    };
    let (ann, bob) = (connect(&one), connect(&two));
    let joined = ann.request("/chat/join", serde_json::json!({ "room": "lobby", "name": "ann" }), wait).unwrap();
    assert_eq!(joined["users"], serde_json::json!(["ann"]));
    // The room's user list is the chat's own keys in Redis, read by the other server.
    let joined = bob.request("/chat/join", serde_json::json!({ "room": "lobby", "name": "bob" }), wait).unwrap();
    assert_eq!(joined["users"], serde_json::json!(["ann", "bob"]));
    drop((ann, bob));
    one.close();
    two.close();
}
