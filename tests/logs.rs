//! The library's log lines, captured by a subscriber installed for the
//! whole test process, over real sockets: a connection's debug lifecycle
//! with its id and peer, one warning per protocol violation, a flood of
//! violations bounded by the per-worker rate limit with a suppressed count,
//! and an error for a panicking handler.
//!
//! Tests run in parallel on one capture: each looks only at the lines of its
//! own connections (by their peer address) or its own event name.
#![cfg(feature = "app")]

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::{Mutex, Once};
use std::thread;
use std::time::{Duration, Instant};

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};

#[path = "common/app.rs"]
mod app_client;
mod common;
#[cfg(feature = "redis")]
#[path = "common/redis.rs"]
mod redis_server;

use app_client::AppClient;
use common::{quick_server, Client, Echo, WAIT};
use emitws::app::App;
use emitws::proto::OpCode;
use serde_json::Value;

/// One captured line: its level, message and other fields (as text).
#[derive(Clone, Debug)]
struct Line {
    level: Level,
    message: String,
    fields: HashMap<String, String>,
}

impl Line {
    fn field(&self, name: &str) -> Option<&str> {
        self.fields.get(name).map(String::as_str)
    }
}

static LINES: Mutex<Vec<Line>> = Mutex::new(Vec::new());

/// Keeps every line whose target is the library's.
struct Capture;

impl<S: Subscriber> Layer<S> for Capture {
    fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
        if !event.metadata().target().starts_with("emitws") {
            return;
        }
        let mut fields = Fields::default();
        event.record(&mut fields);
        let message = fields.0.remove("message").unwrap_or_default();
        let line = Line { level: *event.metadata().level(), message, fields: fields.0 };
        LINES.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).push(line);
    }
}

#[derive(Default)]
struct Fields(HashMap<String, String>);

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0.insert(field.name().into(), format!("{value:?}"));
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().into(), value.into());
    }
}

fn install() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        tracing::subscriber::set_global_default(tracing_subscriber::registry().with(Capture))
            .expect("no other subscriber in this test process");
    });
}

/// The lines so far that `keep` keeps.
fn lines(keep: impl Fn(&Line) -> bool) -> Vec<Line> {
    LINES.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).iter().filter(|l| keep(l)).cloned().collect()
}

/// Waits until the lines `keep` keeps satisfy `done`; returns them.
fn wait_lines(what: &str, keep: impl Fn(&Line) -> bool, done: impl Fn(&[Line]) -> bool) -> Vec<Line> {
    let deadline = Instant::now() + WAIT;
    loop {
        let found = lines(&keep);
        if done(&found) {
            return found;
        }
        assert!(Instant::now() < deadline, "no {what} within {WAIT:?}; captured: {found:#?}");
        thread::sleep(Duration::from_millis(10));
    }
}

fn from(peer: SocketAddr) -> impl Fn(&Line) -> bool {
    let peer = peer.to_string();
    move |line| line.field("peer") == Some(peer.as_str())
}

fn local(client: &Client) -> SocketAddr {
    client.stream.local_addr().expect("a connected socket")
}

/// A frame with RSV2 set, which nothing agreed to: a protocol violation.
fn bad_frame(client: &mut Client) {
    let mut frame = client.encode(OpCode::Text, true, b"x");
    frame[0] |= 0x20;
    client.write_raw(&frame);
}

#[test]
fn a_connections_life_is_logged_at_debug_with_its_id_and_peer() {
    install();
    let echo = Echo::default();
    let server = quick_server().start("127.0.0.1:0", echo.clone()).unwrap();
    let mut client = Client::connect_path(server.local_addr(), "/room");
    let peer = local(&client);
    let id = echo.events.wait_opened("/room");
    client.echo("hello");
    client.close(1000);
    echo.events.wait_closed(id);

    let life = wait_lines("closed line", from(peer), |found| found.iter().any(|l| l.message == "closed"));
    let messages: Vec<&str> = life.iter().map(|l| l.message.as_str()).collect();
    assert_eq!(messages, ["accepted", "upgraded", "closed"], "{life:#?}");
    for line in &life {
        assert_eq!(line.level, Level::DEBUG, "{line:?}");
        assert_eq!(line.field("conn"), Some(id.to_string().as_str()), "{line:?}");
    }
    assert_eq!(life[1].field("path"), Some("/room"));
    assert_eq!(life[2].field("code"), Some("1000"));

    // A plain HTTP request: answered (426 here), never upgraded.
    let (stream, reply, _) = common::http(server.local_addr(), b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
    assert_eq!(reply.status, 426);
    let answered = wait_lines("answered line", from(stream.local_addr().unwrap()), |found| {
        found.iter().any(|l| l.message == "answered without upgrading")
    });
    let messages: Vec<&str> = answered.iter().map(|l| l.message.as_str()).collect();
    assert_eq!(messages[..2], ["accepted", "answered without upgrading"], "{answered:#?}");
    assert_eq!(answered[0].field("conn"), answered[1].field("conn"));
    server.shutdown();
}

#[test]
fn a_protocol_violation_gives_one_warning() {
    install();
    let echo = Echo::default();
    let server = quick_server().start("127.0.0.1:0", echo.clone()).unwrap();
    let mut client = Client::connect(server.local_addr());
    let peer = local(&client);
    let id = echo.events.wait_opened("/");
    bad_frame(&mut client);
    client.expect_close(1002);
    echo.events.wait_closed(id);

    let closed = wait_lines("closed line", from(peer), |found| found.iter().any(|l| l.message == "closed"));
    let warnings: Vec<&Line> = closed.iter().filter(|l| l.level == Level::WARN).collect();
    assert_eq!(warnings.len(), 1, "{closed:#?}");
    assert_eq!(warnings[0].message, "protocol violation");
    assert_eq!(warnings[0].field("conn"), Some(id.to_string().as_str()));
    assert_eq!(warnings[0].field("suppressed"), Some("0"));
    assert!(warnings[0].field("error").is_some_and(|e| e.starts_with("reserved bits")), "{:?}", warnings[0]);
    server.shutdown();
}

#[test]
fn a_flood_of_violations_is_rate_limited_with_a_suppressed_count() {
    const FLOOD: usize = 40;
    install();
    let echo = Echo::default();
    // One worker: one rate limit for every connection.
    let server = quick_server().start("127.0.0.1:0", echo.clone()).unwrap();
    let mut clients: Vec<Client> = (0..FLOOD).map(|_| Client::connect(server.local_addr())).collect();
    let mut last = Client::connect(server.local_addr());
    let peers: Vec<String> = clients.iter().chain([&last]).map(|c| local(c).to_string()).collect();
    let ours =
        |line: &Line| line.level == Level::WARN && line.field("peer").is_some_and(|p| peers.iter().any(|q| q == p));
    echo.events.wait(&format!("{} opens", FLOOD + 1), |r| (r.opened.len() > FLOOD).then_some(()));

    let started = Instant::now();
    for client in &mut clients {
        bad_frame(client);
    }
    echo.events.wait_closes(FLOOD);
    let elapsed = started.elapsed();
    // Every violation was seen before its close was reported.
    let flood = lines(ours);
    // At most 10 a second: the flood spans at most elapsed + 1 windows.
    let windows = elapsed.as_secs() as usize + 1;
    assert!(!flood.is_empty() && flood.len() <= 10 * windows, "{} warnings in {elapsed:?}", flood.len());

    // A violation after the window: its warning counts what was suppressed.
    thread::sleep(Duration::from_millis(1100));
    bad_frame(&mut last);
    let all = wait_lines("the last warning", ours, |found| found.len() > flood.len());
    let suppressed = |l: &Line| l.field("suppressed").and_then(|n| n.parse::<usize>().ok()).expect("a count");
    assert_eq!(all.len(), flood.len() + 1, "{all:#?}");
    assert!(suppressed(&all[flood.len()]) > 0, "{all:#?}");
    // Every violation is either a line or counted in one.
    assert_eq!(all.iter().map(|l| 1 + suppressed(l)).sum::<usize>(), FLOOD + 1, "{all:#?}");
    server.shutdown();
}

#[test]
fn a_refused_envelope_gives_a_warning_and_a_panicking_handler_an_error() {
    install();
    let mut app = App::new();
    app.on("/logs-test-boom", |_| panic!("boom (this panic is the test's)"));
    let running = app_client::start(app, 1);
    let mut client = AppClient::connect(running.local_addr());
    let peer = local(&client.ws);

    client.send_raw("this is not an envelope");
    let refused = wait_lines("a refused message", from(peer), |found| found.iter().any(|l| l.level == Level::WARN));
    let warning = refused.iter().find(|l| l.level == Level::WARN).expect("waited for");
    assert_eq!(warning.message, "message refused");
    assert_eq!(warning.field("what"), Some("bad_request"));

    let answer = client.request("/logs-test-boom", Value::Null);
    assert_eq!(answer.map_err(|(code, _)| code), Err("internal".to_string()));
    let panics = wait_lines("a panic line", |l| l.field("event") == Some("/logs-test-boom"), |found| !found.is_empty());
    assert_eq!((panics.len(), panics[0].level), (1, Level::ERROR), "{panics:#?}");
    assert_eq!(panics[0].field("conn"), warning.field("conn"));
    running.close();
}

#[cfg(feature = "redis")]
#[test]
fn cluster_nodes_joining_and_leaving_are_logged_at_info() {
    use emitws::cluster::{RedisLink, RedisOptions};
    install();
    let Some(redis) = redis_server::Redis::start() else { return };
    let options = RedisOptions::default().heartbeat_ttl(Duration::from_millis(600));
    let a = RedisLink::start(&redis.url(), options.clone(), |_| {}).unwrap();
    let b = RedisLink::start(&redis.url(), options, |_| {}).unwrap();
    let (a_id, b_id) = (format!("{:016x}", a.node()), format!("{:016x}", b.node()));
    let about_b = |message: &'static str| {
        let (a_id, b_id) = (a_id.clone(), b_id.clone());
        move |line: &Line| {
            line.message == message && line.field("node") == Some(&a_id) && line.field("peer") == Some(&b_id)
        }
    };
    let joined = wait_lines("b joining, seen from a", about_b("cluster node joined"), |found| !found.is_empty());
    assert_eq!(joined[0].level, Level::INFO);
    b.stop();
    wait_lines("b leaving, seen from a", about_b("cluster node left"), |found| found.len() == 1);
    a.stop();
}
