//! Metrics served at `/metrics` by an app, scraped over HTTP while clients
//! connect, talk, join a room, misbehave and leave: the values follow.
#![cfg(feature = "app")]

#[path = "common/app.rs"]
mod app_client;
mod common;
#[cfg(feature = "redis")]
#[path = "common/redis.rs"]
mod redis_server;

use std::collections::HashMap;
use std::net::SocketAddr;

use app_client::{eventually, start, AppClient};
use emitws::app::{App, BroadcastOpts};
use emitws::proto::{encode_frame, OpCode};
use serde_json::Value;

/// One scrape: every sample by its series (`name{labels}` as written).
struct Scrape(HashMap<String, f64>);

impl Scrape {
    /// `GET /metrics` over a fresh connection. That connection is open
    /// while the app answers, so it counts among the open connections.
    fn take(addr: SocketAddr) -> Scrape {
        let (_, reply, _) = common::http(addr, b"GET /metrics HTTP/1.1\r\nHost: test\r\n\r\n");
        assert_eq!(reply.status, 200);
        assert!(reply.header("content-type").is_some_and(|t| t.starts_with("text/plain; version=0.0.4")));
        Scrape(parse(&reply.body_text()))
    }

    /// The value of `series`; a missing series fails the test.
    fn get(&self, series: &str) -> f64 {
        *self.0.get(series).unwrap_or_else(|| panic!("no {series} in the scrape"))
    }
}

/// Parses the text format by hand: comments skipped, each sample line is a
/// series (with its labels, which may hold escaped quotes and spaces) and a value.
fn parse(text: &str) -> HashMap<String, f64> {
    let mut samples = HashMap::new();
    for line in text.lines().filter(|l| !l.is_empty() && !l.starts_with('#')) {
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("no value in {line:?}"));
        let value = match value {
            "+Inf" => f64::INFINITY,
            v => v.parse().unwrap_or_else(|e| panic!("bad value in {line:?}: {e}")),
        };
        assert!(samples.insert(series.to_string(), value).is_none(), "{series} twice");
    }
    samples
}

#[test]
fn a_scrape_follows_connections_routes_rooms_and_closes() {
    let mut app = App::new();
    app.on("/ping", |req| req.reply(&"pong"));
    app.on("/note", |_| {});
    app.on("/join", |req| {
        let _ = req.join("#lobby");
    });
    app.on("/shout", |req| {
        let _ = req.broadcast("/shouted", "hey", BroadcastOpts::to("#lobby"));
    });
    let metrics = app.metrics();
    app.on_http(move |request| (request.path() == "/metrics").then(|| metrics.http_response()));
    let running = start(app, 2);
    let addr = running.local_addr();

    let first = Scrape::take(addr);
    assert_eq!(first.get("emitws_connections_open"), 1.0, "the scrape's own connection");
    assert_eq!(first.get("emitws_connections_opened_total"), 0.0);
    assert_eq!(first.get("emitws_app_requests_total{name=\"/ping\"}"), 0.0);

    // A plain request for another path is refused as a non-upgrade (426).
    let (_, reply, _) = common::http(addr, b"GET /elsewhere HTTP/1.1\r\nHost: test\r\n\r\n");
    assert_eq!(reply.status, 426);

    let mut a = AppClient::connect(addr);
    let mut b = AppClient::connect(addr);
    let mut c = AppClient::connect(addr);
    let connected = Scrape::take(addr);
    assert_eq!(connected.get("emitws_connections_open"), 4.0);
    assert_eq!(connected.get("emitws_connections_opened_total"), 3.0);
    // Two scrapes, the refused request and three clients.
    assert_eq!(connected.get("emitws_connections_accepted_total"), 6.0);
    assert_eq!(connected.get("emitws_handshakes_refused_total{status=\"426\"}"), 1.0);
    assert_eq!(connected.get("emitws_http_answered_total"), 1.0, "the first scrape");

    assert_eq!(a.request("/ping", Value::Null), Ok(Value::from("pong")));
    assert_eq!(a.request("/ping", Value::Null), Ok(Value::from("pong")));
    a.emit("/note", Value::Null);
    a.emit("/unheard", Value::Null);
    assert_eq!(a.request("/nope", Value::Null).unwrap_err().0, "no_handler");
    assert_eq!(b.request("/join", Value::Null), Ok(Value::Null));
    assert_eq!(c.request("/join", Value::Null), Ok(Value::Null));
    // `a`'s events came before its last request, so they are counted by now.
    let talked = Scrape::take(addr);
    assert_eq!(talked.get("emitws_app_requests_total{name=\"/ping\"}"), 2.0);
    assert_eq!(talked.get("emitws_app_requests_total{name=\"/join\"}"), 2.0);
    assert_eq!(talked.get("emitws_app_requests_total{name=\"/note\"}"), 0.0);
    assert_eq!(talked.get("emitws_app_requests_total{name=\"other\"}"), 1.0);
    assert_eq!(talked.get("emitws_app_events_total{name=\"/note\"}"), 1.0);
    assert_eq!(talked.get("emitws_app_events_total{name=\"other\"}"), 1.0);
    assert_eq!(talked.get("emitws_app_replies_total{code=\"ok\"}"), 4.0);
    assert_eq!(talked.get("emitws_app_replies_total{code=\"no_handler\"}"), 1.0);
    assert_eq!(talked.get("emitws_app_rooms"), 1.0);
    assert_eq!(talked.get("emitws_app_room_members"), 2.0);
    assert_eq!(talked.get("emitws_messages_in_total{kind=\"text\"}"), 7.0);
    assert_eq!(talked.get("emitws_messages_in_total{kind=\"binary\"}"), 0.0);
    // Each client's @ready, and the five replies.
    assert_eq!(talked.get("emitws_messages_out_total{kind=\"text\"}"), 8.0);
    assert!(talked.get("emitws_bytes_in_total{kind=\"text\"}") > 0.0);

    // A broadcast counts once per member it reaches.
    assert_eq!(a.request("/shout", Value::Null), Ok(Value::Null));
    assert_eq!(b.expect_event("/shouted"), Value::from("hey"));
    assert_eq!(c.expect_event("/shouted"), Value::from("hey"));
    let shouted = Scrape::take(addr);
    assert_eq!(shouted.get("emitws_messages_out_total{kind=\"text\"}"), 11.0, "the reply and two deliveries more");

    // An unmasked frame from a client breaks the protocol: 1002.
    let mut unmasked = Vec::new();
    encode_frame(&mut unmasked, OpCode::Text, true, None, b"[0,\"/note\"]");
    c.ws.write_raw(&unmasked);
    c.ws.expect_close(1002);
    drop(c);
    b.close();
    eventually("the protocol error and b's close to be counted", || {
        let s = Scrape::take(addr);
        s.get("emitws_connections_closed_total{reason=\"protocol\"}") == 1.0
            && s.get("emitws_connections_closed_total{reason=\"peer\"}") == 1.0
            && s.get("emitws_connections_open") == 2.0
    });
    let left = Scrape::take(addr);
    assert_eq!(left.get("emitws_app_rooms"), 0.0, "both members left");
    assert_eq!(left.get("emitws_app_room_members"), 0.0);
    assert_eq!(left.get("emitws_connections_closed_total{reason=\"shutdown\"}"), 0.0);

    a.close();
    eventually("every client to be gone", || Scrape::take(addr).get("emitws_connections_open") == 1.0);
    let last = Scrape::take(addr);
    assert_eq!(last.get("emitws_connections_closed_total{reason=\"peer\"}"), 2.0);
    assert_eq!(last.get("emitws_connections_opened_total"), 3.0);
    running.close();
}

#[test]
fn the_snapshot_and_the_text_agree() {
    let mut app = App::new();
    app.on("/say", |req| req.reply(&1));
    // Never reachable (names on the wire carry no escapes), but registered,
    // so it has a label: written escaped.
    app.on("/say \"hi\"", |req| req.reply(&2));
    let metrics = app.metrics();
    let running = start(app, 1);
    let mut client = AppClient::connect(running.local_addr());
    assert_eq!(client.request("/say", Value::Null), Ok(Value::from(1)));
    let snapshot = metrics.snapshot();
    assert_eq!(snapshot.requests["/say"], 1);
    assert_eq!(snapshot.requests["/say \"hi\""], 0);
    assert_eq!(snapshot.connections_opened, 1);
    let samples = parse(&metrics.prometheus());
    assert_eq!(samples["emitws_app_requests_total{name=\"/say\"}"], 1.0);
    assert_eq!(samples["emitws_app_requests_total{name=\"/say \\\"hi\\\"\"}"], 0.0);
    assert_eq!(samples["emitws_connections_opened_total"], 1.0);
    assert_eq!(running.metrics().snapshot().replies["ok"], 1);
    client.close();
    running.close();
}

/// Two nodes over Redis: a broadcast published by one is counted there, and
/// received by the other; a presence query finds both nodes alive.
#[cfg(feature = "redis")]
#[test]
fn the_cluster_counts_what_it_publishes_and_receives() {
    use emitws::cluster::{RedisAdapter, RedisOptions};

    let Some(redis) = redis_server::Redis::start() else { return };
    let node = || {
        let mut app = App::new();
        app.on("/say", |req| {
            let _ = req.broadcast("/said", "hi", BroadcastOpts::to("#lobby"));
        });
        app.on("/join", |req| {
            let _ = req.join("#lobby");
        });
        let options = RedisOptions::default().heartbeat_ttl(std::time::Duration::from_secs(1));
        app.adapter(RedisAdapter::new(&redis.url(), options).expect("a valid URL"));
        let metrics = app.metrics();
        (start(app, 1), metrics)
    };
    let ((a, a_metrics), (b, b_metrics)) = (node(), node());
    let mut listener = AppClient::connect(b.local_addr());
    assert_eq!(listener.request("/join", Value::Null), Ok(Value::Null));
    let mut speaker = AppClient::connect(a.local_addr());
    // The subscriptions may lag the heartbeats a little: say it until heard.
    eventually("b to receive a's broadcast", || {
        speaker.emit("/say", Value::Null);
        std::thread::sleep(common::ms(50));
        b_metrics.snapshot().cluster_received > 0
    });
    assert_eq!(listener.expect_event("/said"), Value::from("hi"));
    let published = a_metrics.snapshot().cluster_published;
    assert!(published > 0 && published >= b_metrics.snapshot().cluster_received, "{published}");
    assert_eq!(a_metrics.snapshot().cluster_dropped, 0);
    eventually("a query to see both nodes", || {
        let _ = a.cluster().count(emitws::app::Scope::All);
        a_metrics.snapshot().cluster_nodes_alive == 2
    });
    let text = a_metrics.prometheus();
    assert!(text.contains("\nemitws_cluster_nodes_alive 2\n"), "{text}");
    speaker.close();
    listener.close();
    a.close();
    b.close();
}

#[test]
fn the_frames_the_protocol_sends_by_itself_are_counted_as_control() {
    let metrics = emitws::metrics::Metrics::new();
    let server =
        common::quick_server().with_metrics(metrics.clone()).start("127.0.0.1:0", common::Echo::default()).unwrap();
    let mut client = common::Client::connect_path(server.local_addr(), "/control");
    let ping = client.encode(OpCode::Ping, true, b"are you there");
    client.write_raw(&ping);
    assert_eq!(client.recv(), common::Frame::Pong(b"are you there".to_vec()));
    // The close echo is the second frame the server sends by itself.
    client.close(1000);
    let counted = metrics.snapshot();
    assert_eq!(counted.messages_out.control, 2, "{counted:?}");
    // The running server's handle reads the same registry.
    assert_eq!(server.handle().metrics().snapshot().messages_out.control, 2);
    server.shutdown();
}
