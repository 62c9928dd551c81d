//! `/healthz` and `/readyz` served from an app's `on_http` over real
//! sockets: ready while serving, not once shutdown began, and, with the Redis
//! adapter, not while redis-server is down and ready again when it is back.
#![cfg(feature = "app")]

use std::net::SocketAddr;

#[path = "common/app.rs"]
mod app_client;
mod common;
#[path = "common/redis.rs"]
mod redis_server;

use common::{http, HttpReply};
use emitws::app::health::{self, Probes};
use emitws::app::App;

/// An app answering `/healthz` and `/readyz` (404 elsewhere), and its probes.
fn app_with_probes() -> (App, Probes) {
    let probes = Probes::default();
    let mut app = App::new();
    let answer = probes.clone();
    app.on_http(move |request| {
        answer.answer(request.path()).or_else(|| Some(emitws::runtime::HttpResponse::new(404, "text/plain", "no")))
    });
    (app, probes)
}

fn get(addr: SocketAddr, path: &str) -> HttpReply {
    http(addr, format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").as_bytes()).1
}

#[test]
fn ready_while_serving_and_not_once_shutdown_began() {
    let (app, probes) = app_with_probes();
    let running = app_client::start(app, 2);
    let addr = running.local_addr();
    // Before the cell is filled the node says so.
    let early = get(addr, "/readyz");
    assert_eq!((early.status, early.body_text().as_str()), (503, "not ready: not started"));
    probes.running(running.app());

    let alive = get(addr, "/healthz");
    assert_eq!((alive.status, alive.body_text().as_str()), (200, "ok"));
    assert_eq!(alive.header("content-type"), Some("text/plain"));
    let ready = get(addr, "/readyz");
    assert_eq!((ready.status, ready.body_text().as_str()), (200, "ready"));
    assert!(running.server().is_accepting());
    assert_eq!(get(addr, "/other").status, 404);

    // Shutting down: the port no longer answers, so the probe is asked directly.
    running.server().shutdown();
    assert!(!running.server().is_accepting());
    let stopping = health::readyz(&running.app());
    assert_eq!(stopping.status, 503);
    assert_eq!(
        String::from_utf8_lossy(&stopping.body),
        "not ready: not accepting connections (shutting down or draining)"
    );
    running.close();
}

#[cfg(feature = "redis")]
#[test]
fn not_ready_while_redis_is_down() {
    use emitws::cluster::{RedisAdapter, RedisOptions};
    use redis_server::{wait_for, Redis};
    use std::time::Duration;

    let Some(redis) = Redis::start() else { return };
    let port = redis.port;
    // The app's own probes follow it without being told.
    let mut app = App::new();
    let probes = app.probes();
    app.on_http(move |request| probes.answer(request.path()));
    let options = RedisOptions::default().heartbeat_ttl(Duration::from_secs(1)).max_backoff(Duration::from_millis(200));
    app.adapter(RedisAdapter::new(&redis.url(), options).unwrap());
    let running = app_client::start(app, 1);
    let addr = running.local_addr();
    let status = || get(addr, "/readyz").status;

    wait_for(Duration::from_secs(5), || status() == 200);
    drop(redis);
    wait_for(Duration::from_secs(5), || status() == 503);
    let down = get(addr, "/readyz");
    assert_eq!(down.body_text(), "not ready: Redis unreachable");
    // Alive all the while: only readiness follows Redis.
    assert_eq!(get(addr, "/healthz").status, 200);

    let redis = Redis::start_on(port).unwrap();
    wait_for(Duration::from_secs(10), || status() == 200);
    running.close();
    drop(redis);
}
