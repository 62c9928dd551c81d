//! The event clients resume their session by themselves (PROTOCOL.md §13).
//!
//! The Rust client (`emitws::client::app`) against a scripted server of our
//! own that speaks the server's side of §13: `@ready` with a resume token,
//! room broadcasts with their `{"room", "offset", "epoch"}` element, and
//! `@resume` answered with a replay from the client's offset (optionally
//! overlapping it), the reply, then `@ready`. The JavaScript client's
//! scripted tests (clients/js/test/resume.test.js) run from here too.
//!
//! The end-to-end tests against the real server (module `end_to_end`)
//! need the server's side of §13 (`App::history`, `App::resume_window`).
#![cfg(feature = "app")]

mod common;
#[path = "common/node.rs"]
mod node;
#[path = "common/tcp_proxy.rs"]
mod tcp_proxy;

use std::fmt;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Instant;

use common::*;
use emitws::client::app::{AppClient, AppError, AppOptions, AuthRequest};
use emitws::proto::{CloseCode, CloseReason, Message};
use emitws::runtime::{Accept, Conn, ConnId, Handler, Reject, RunningServer, UpgradeRequest};
use serde_json::{json, Value};

/// The room with history the scripted server broadcasts to.
const ROOM: &str = "#lobby";

/// One connection as the scripted server saw it.
#[derive(Clone, Debug, Default)]
struct Seen {
    query: String,
    /// Every envelope the client sent on it, in order.
    envelopes: Vec<Value>,
    /// The close code, once closed.
    closed: Option<u16>,
    /// The offsets replayed to it after its `@resume`.
    replayed: Vec<u64>,
}

/// The scripted server's state and settings, shared with the test.
#[derive(Debug)]
struct Script {
    conns: Vec<Seen>,
    current: Option<ConnId>,
    /// The room's stream: its epoch and its latest offset (messages are `{"n": offset}`).
    epoch: String,
    published: u64,
    /// The token the latest `@ready` gave; tokens are `tok-1`, `tok-2`, …
    tokens: u64,
    /// The session's socket id, `s-1` at first; a refused resume makes a new one.
    socket: u64,
    /// Refuses connections (HTTP 503): the client stays away.
    offline: bool,
    /// Answers `@resume` with `"resumed": false`.
    refuse: bool,
    /// A replay starts this many offsets before the client's (a replay overlapping what it has).
    overlap: u64,
    /// First-message auth: `/auth` comes first and is answered `{"user": "ann"}`.
    auth: bool,
    /// How `@resume` is answered.
    answer: Answer,
}

/// How the scripted server answers `@resume`.
#[derive(Clone, Copy, Debug, Default)]
enum Answer {
    /// As §13 says.
    #[default]
    Spec,
    /// `@ready` (with no token) and no reply.
    ReadyOnly,
    /// An error reply, then `@ready`.
    Error,
}

impl Default for Script {
    fn default() -> Self {
        Script {
            conns: Vec::new(),
            current: None,
            epoch: "e1".to_string(),
            published: 0,
            tokens: 0,
            socket: 1,
            offline: false,
            refuse: false,
            overlap: 0,
            auth: false,
            answer: Answer::Spec,
        }
    }
}

impl Script {
    fn delivery(&self, offset: u64) -> String {
        json!([0, "/said", {"n": offset}, {"room": ROOM, "offset": offset, "epoch": self.epoch}]).to_string()
    }

    /// `@ready` with a new token.
    fn ready(&mut self, resumed: bool) -> String {
        self.tokens += 1;
        let mut welcome =
            json!({"socket": format!("s-{}", self.socket), "user": null, "resume": format!("tok-{}", self.tokens)});
        if resumed {
            welcome["resumed"] = json!(true);
        }
        json!([0, "@ready", welcome]).to_string()
    }

    /// The answer to `@resume` (`data`), as §13 orders it: the replay, the reply, `@ready`.
    fn resume(&mut self, index: usize, id: &Value, data: &Value) -> Vec<String> {
        match self.answer {
            Answer::Spec => {}
            Answer::ReadyOnly => return vec![json!([0, "@ready", {"socket": "s-9", "user": null}]).to_string()],
            Answer::Error => {
                let refusal = json!([3, id, {"code": "bad_request", "message": "no"}]).to_string();
                return vec![refusal, self.ready(false)];
            }
        }
        if self.refuse || data["token"] != format!("tok-{}", self.tokens) {
            self.socket += 1;
            let reply = json!({"resumed": false, "socket": format!("s-{}", self.socket),
                "rooms": {ROOM: {"recovered": false}}, "direct": {"recovered": false}});
            return vec![json!([2, id, reply]).to_string(), self.ready(false)];
        }
        let kept = &data["rooms"][ROOM];
        let from = if kept["epoch"] == self.epoch.as_str() { kept["offset"].as_u64().unwrap_or(0) } else { 0 };
        let replay: Vec<u64> = (from.saturating_sub(self.overlap) + 1..=self.published).collect();
        let mut out: Vec<String> = replay.iter().map(|&offset| self.delivery(offset)).collect();
        self.conns[index].replayed = replay;
        let room = json!({"recovered": true, "epoch": self.epoch, "offset": self.published});
        let reply = json!({"resumed": true, "socket": format!("s-{}", self.socket), "rooms": {ROOM: room}, "direct": {"recovered": true}});
        out.push(json!([2, id, reply]).to_string());
        out.push(self.ready(true));
        out
    }
}

/// A value tests wait on: changed under its lock, waited for with a bound.
#[derive(Debug, Default)]
struct Watched<T> {
    value: Mutex<T>,
    changed: Condvar,
}

impl<T: fmt::Debug> Watched<T> {
    fn lock(&self) -> MutexGuard<'_, T> {
        self.value.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn update<R>(&self, f: impl FnOnce(&mut T) -> R) -> R {
        let out = f(&mut self.lock());
        self.changed.notify_all();
        out
    }

    /// Waits until `f` returns `Some`, failing the test after [`WAIT`].
    fn wait<R>(&self, what: &str, mut f: impl FnMut(&T) -> Option<R>) -> R {
        let deadline = Instant::now() + WAIT;
        let mut value = self.lock();
        loop {
            if let Some(out) = f(&value) {
                return out;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "timed out waiting for {what}; saw {:?}", *value);
            value = self.changed.wait_timeout(value, left).unwrap_or_else(|p| p.into_inner()).0;
        }
    }
}

/// The test's side of the scripted server: its state, waits, and broadcasts.
#[derive(Clone, Default)]
struct Shared(Arc<Watched<Script>>);

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Script> {
        self.0.lock()
    }

    fn update<T>(&self, f: impl FnOnce(&mut Script) -> T) -> T {
        self.0.update(f)
    }

    fn wait<T>(&self, what: &str, f: impl FnMut(&Script) -> Option<T>) -> T {
        self.0.wait(what, f)
    }

    fn conn(&self, index: usize) -> Seen {
        self.wait(&format!("connection {index}"), |s| s.conns.get(index).cloned())
    }

    /// Broadcasts the next message to the room: to the client if it is connected, else only into the history.
    fn publish(&self, server: &RunningServer) {
        let (current, text) = self.update(|s| {
            s.published += 1;
            (s.current.filter(|_| !s.offline), s.delivery(s.published))
        });
        if let Some(id) = current {
            server.handle().send_text(id, &text);
        }
    }

    /// Refuses new connections and drops the current one with `code`, as a network or a server going away would.
    fn cut(&self, server: &RunningServer, code: CloseCode) {
        let current = self.update(|s| {
            s.offline = true;
            s.current
        });
        server.handle().close(current.expect("a connection to cut"), code, "");
        self.wait("the close", |s| s.current.is_none().then_some(()));
    }

    /// Accepts connections again.
    fn online(&self) {
        self.update(|s| s.offline = false);
    }
}

/// Data of a connection: where it is in [`Script::conns`], and whether it came to resume (`emitws_resume=1`).
#[derive(Clone, Copy, Default)]
struct Resuming {
    index: usize,
    resuming: bool,
}

#[derive(Clone, Default)]
struct ResumeServer(Shared);

impl Handler for ResumeServer {
    type Data = Resuming;

    fn on_upgrade(&mut self, request: &UpgradeRequest<'_>) -> Result<Accept<Resuming>, Reject> {
        let query = request.query().unwrap_or_default().to_string();
        let resuming = query.split('&').any(|parameter| parameter == "emitws_resume=1");
        self.0.update(|s| match s.offline {
            true => Err(Reject::status(503)),
            false => {
                s.conns.push(Seen { query, ..Seen::default() });
                Ok(Accept::new(Resuming { index: s.conns.len() - 1, resuming }).protocol("emitws.v1"))
            }
        })
    }

    fn on_open(&mut self, conn: &mut Conn<'_, Resuming>) {
        let resuming = conn.data().resuming;
        let ready = self.0.update(|s| {
            s.current = Some(conn.id());
            (!resuming && !s.auth).then(|| s.ready(false))
        });
        if let Some(ready) = ready {
            let _ = conn.send_text(&ready);
        }
    }

    fn on_message(&mut self, conn: &mut Conn<'_, Resuming>, message: Message<'_>) {
        let Message::Text(text) = message else { return };
        let envelope: Value = serde_json::from_str(text).expect("the client sends JSON");
        let Resuming { index, resuming } = *conn.data();
        let out = self.0.update(|s| {
            s.conns[index].envelopes.push(envelope.clone());
            let id = &envelope[1];
            match (envelope[0].as_u64(), envelope[2].as_str()) {
                (Some(1), Some("@resume")) => s.resume(index, id, &envelope[3]),
                (Some(1), Some("/auth")) => {
                    let mut out = vec![json!([2, id, {"user": "ann"}]).to_string()];
                    out.extend((!resuming).then(|| s.ready(false)));
                    out
                }
                (Some(1), Some("/echo")) => vec![json!([2, id, envelope[3]]).to_string()],
                _ => vec![],
            }
        });
        for text in out {
            let _ = conn.send_text(&text);
        }
    }

    fn on_close(&mut self, conn: &mut Conn<'_, Resuming>, reason: &CloseReason) {
        let index = conn.data().index;
        self.0.update(|s| {
            if s.current == Some(conn.id()) {
                s.current = None;
            }
            s.conns[index].closed = Some(reason.code().0);
        });
    }
}

/// Every event the client's listeners got, in order, with bounded waits.
#[derive(Clone, Default)]
struct Inbox(Arc<Watched<Vec<(String, Value)>>>);

impl Inbox {
    /// Listens to `events` on `client`.
    fn listen(client: &AppClient, events: &[&str]) -> Inbox {
        let inbox = Inbox::default();
        for event in events {
            let inbox = inbox.clone();
            client.on(event, move |event, data| inbox.0.update(|got| got.push((event.to_string(), data.clone()))));
        }
        inbox
    }

    fn events(&self) -> Vec<(String, Value)> {
        self.0.lock().clone()
    }

    /// Waits for the `n`th (from 1) delivery of `event`.
    fn wait(&self, event: &str, n: usize) -> Value {
        let found =
            |got: &Vec<(String, Value)>| got.iter().filter(|(e, _)| e == event).nth(n - 1).map(|(_, d)| d.clone());
        self.0.wait(&format!("{event} #{n}"), found)
    }

    /// The `n` of every `/said` the application saw.
    fn said(&self) -> Vec<u64> {
        self.events().iter().filter(|(e, _)| e == "/said").map(|(_, data)| data["n"].as_u64().unwrap()).collect()
    }

    /// Where the `n`th (from 1) `event` is in the order of all.
    fn position(&self, event: &str, n: usize) -> usize {
        let events = self.events();
        let mut positions = events.iter().enumerate().filter(|(_, (e, _))| e == event).map(|(i, _)| i);
        positions.nth(n - 1).unwrap_or_else(|| panic!("no {event} #{n} in {events:?}"))
    }
}

const EVENTS: &[&str] = &["/said", "@resumed", "@ready", "@reconnect", "@disconnect"];

fn options() -> AppOptions {
    AppOptions::default()
        .reconnect_delay(ms(20))
        .max_reconnect_delay(ms(50))
        .max_retries(Some(200))
        .connect_timeout(ms(2000))
}

fn start(script: Script) -> (Shared, RunningServer) {
    let shared = Shared(Arc::new(Watched { value: Mutex::new(script), changed: Condvar::new() }));
    let server = quick_server().start("127.0.0.1:0", ResumeServer(shared.clone())).unwrap();
    (shared, server)
}

/// Takes the client through a loss and back: drops its connection with
/// `code`, runs `away` while it cannot reconnect, then waits for its next `@reconnect`.
fn outage(shared: &Shared, server: &RunningServer, inbox: &Inbox, code: CloseCode, away: impl FnOnce()) {
    let reconnects = inbox.events().iter().filter(|(event, _)| event == "@reconnect").count();
    shared.cut(server, code);
    away();
    shared.online();
    inbox.wait("@reconnect", reconnects + 1);
}

/// Connects a client to `path` on the scripted server, listening to [`EVENTS`].
fn open_client(server: &RunningServer, path: &str, options: AppOptions) -> (AppClient, Inbox) {
    let client = AppClient::new(&format!("ws://{}{path}", server.local_addr()), options).unwrap();
    let inbox = Inbox::listen(&client, EVENTS);
    client.open().unwrap();
    (client, inbox)
}

/// The `@resume` request's data, checked to be the connection's first envelope after the auth request (if any).
fn resume_request(seen: &Seen, after_auth: bool) -> Value {
    let first = usize::from(after_auth);
    if after_auth {
        assert_eq!(seen.envelopes[0][2], "/auth", "{seen:?}");
    }
    let request = &seen.envelopes[first];
    assert_eq!((&request[0], &request[2]), (&json!(1), &json!("@resume")), "{seen:?}");
    assert!(request[1].as_u64().is_some_and(|id| id > 0), "{seen:?}");
    request[3].clone()
}

#[test]
fn a_lost_connection_resumes_with_the_token_and_offsets_keeping_the_apps_query() {
    let (shared, server) = start(Script::default());
    let (client, inbox) = open_client(&server, "/chat?room=a&t=x", options());
    assert_eq!(client.socket_id().as_deref(), Some("s-1"));
    assert_eq!(inbox.wait("@ready", 1), json!({"socket": "s-1", "user": null}), "the token is not shown");
    assert_eq!(client.welcome(), Some(json!({"socket": "s-1", "user": null})));
    assert_eq!(client.recovered(ROOM), None, "a first connection resumed nothing");
    for _ in 0..3 {
        shared.publish(&server);
    }
    inbox.wait("/said", 3);
    let in_flight = client.request_nowait("/never", json!(null), WAIT);

    outage(&shared, &server, &inbox, CloseCode::GOING_AWAY, || {
        assert!(matches!(in_flight.wait(), Err(AppError::Disconnected(_))), "replies do not survive a resume");
        shared.publish(&server);
        shared.publish(&server);
    });

    let seen = shared.conn(1);
    assert_eq!(seen.query, "room=a&t=x&emitws_resume=1");
    assert_eq!(resume_request(&seen, false), json!({"token": "tok-1", "rooms": {ROOM: {"epoch": "e1", "offset": 3}}}));
    assert_eq!(seen.replayed, [4, 5]);
    assert_eq!(inbox.said(), [1, 2, 3, 4, 5]);
    let outcome = inbox.wait("@resumed", 1);
    assert_eq!(outcome["resumed"], true);
    assert_eq!(outcome["rooms"][ROOM], json!({"recovered": true, "epoch": "e1", "offset": 5}));
    assert!(inbox.position("/said", 5) < inbox.position("@resumed", 1), "the replay comes before the reply");
    assert!(inbox.position("@resumed", 1) < inbox.position("@ready", 2), "@resumed before that connection's @ready");
    assert!(inbox.position("@ready", 2) < inbox.position("@reconnect", 1));
    assert_eq!(client.recovered(ROOM), Some(true));
    assert_eq!(client.recovered("#elsewhere"), Some(false));
    assert_eq!(client.socket_id().as_deref(), Some("s-1"));
    assert_eq!(client.request("/echo", json!("again"), WAIT), Ok(json!("again")));
    client.close();
    server.shutdown();
}

/// The socket.io #5419 case: offline and online twice with nothing published
/// in between; the second resume asks from where the first recovery got to,
/// and nothing reaches the application twice, even from a replay that
/// overlaps what the client has.
#[test]
fn overlapping_replays_are_dropped_and_a_second_resume_starts_where_the_first_ended() {
    let (shared, server) = start(Script { overlap: 2, ..Script::default() });
    let (client, inbox) = open_client(&server, "/", options());
    for _ in 0..3 {
        shared.publish(&server);
    }
    inbox.wait("/said", 3);
    outage(&shared, &server, &inbox, CloseCode::INTERNAL_ERROR, || {
        shared.publish(&server);
        shared.publish(&server);
    });
    assert_eq!(shared.conn(1).replayed, [2, 3, 4, 5], "the replay overlaps offsets 2 and 3");
    assert_eq!(inbox.said(), [1, 2, 3, 4, 5]);

    outage(&shared, &server, &inbox, CloseCode::SERVICE_RESTART, || {});
    let seen = shared.conn(2);
    assert_eq!(resume_request(&seen, false)["rooms"], json!({ROOM: {"epoch": "e1", "offset": 5}}));
    assert_eq!(resume_request(&seen, false)["token"], "tok-2", "each @ready's token replaces the last");
    assert_eq!(seen.replayed, [4, 5], "replayed again, overlapping");
    assert_eq!(inbox.said(), [1, 2, 3, 4, 5], "nothing twice");

    // The history was lost (a new epoch): its offsets start again, and are not duplicates.
    shared.update(|s| {
        s.epoch = "e2".into();
        s.published = 0;
    });
    shared.publish(&server);
    inbox.wait("/said", 6);
    assert_eq!(inbox.said(), [1, 2, 3, 4, 5, 1]);
    outage(&shared, &server, &inbox, CloseCode::GOING_AWAY, || {});
    assert_eq!(resume_request(&shared.conn(3), false)["rooms"], json!({ROOM: {"epoch": "e2", "offset": 1}}));
    assert_eq!(inbox.said(), [1, 2, 3, 4, 5, 1]);
    client.close();
    server.shutdown();
}

#[test]
fn a_refused_resume_forgets_the_offsets_and_tells_the_application() {
    let (shared, server) = start(Script { refuse: true, ..Script::default() });
    let (client, inbox) = open_client(&server, "/", options());
    shared.publish(&server);
    shared.publish(&server);
    inbox.wait("/said", 2);
    outage(&shared, &server, &inbox, CloseCode::GOING_AWAY, || {});
    assert_eq!(resume_request(&shared.conn(1), false)["rooms"][ROOM]["offset"], 2);
    let outcome = inbox.wait("@resumed", 1);
    assert_eq!(outcome["resumed"], false);
    assert_eq!(client.recovered(ROOM), Some(false));
    assert_eq!(client.socket_id().as_deref(), Some("s-2"), "a new socket");

    // The next resume presents the new session's token, and no offsets.
    shared.update(|s| s.refuse = false);
    outage(&shared, &server, &inbox, CloseCode::GOING_AWAY, || {});
    assert_eq!(resume_request(&shared.conn(2), false), json!({"token": "tok-2", "rooms": {}}));
    assert_eq!(client.recovered(ROOM), Some(true));
    client.close();
    server.shutdown();
}

#[test]
fn a_drop_a_refusal_or_a_takeover_is_not_retried() {
    // PROTOCOL.md §6: every 4xxx close but 4408 and 4001 means "do not reconnect".
    let (shared, server) = start(Script::default());
    for (n, code) in [4000, 4401, 4409, 4429, 4999].into_iter().enumerate() {
        let (client, inbox) = open_client(&server, "/", options());
        let failed = Inbox::listen(&client, &["@reconnect_failed"]);
        shared.cut(&server, CloseCode(code));
        shared.online();
        let why = failed.wait("@reconnect_failed", 1);
        assert!(why["reason"].as_str().is_some_and(|r| r.contains(&code.to_string())), "{code}: {why}");
        assert_eq!(client.status(), emitws::client::app::Status::Offline, "{code}");
        assert_eq!(shared.lock().conns.len(), n + 1, "{code}: no new connection");
        assert!(inbox.events().iter().all(|(event, _)| event != "@reconnect"), "{code}");
    }
    server.shutdown();
}

#[test]
fn closes_that_end_the_session_are_not_resumed() {
    let (shared, server) = start(Script::default());
    // The application's close: no reconnect at all.
    let (client, _) = open_client(&server, "/", options());
    client.close();
    assert_eq!(shared.wait("the close", |s| s.conns[0].closed), 1000);
    assert_eq!(shared.lock().conns.len(), 1, "closed for good");

    // A close for bad input (1008) ends the session: the reconnect is a new socket.
    let (client, inbox) = open_client(&server, "/?x=1", options());
    outage(&shared, &server, &inbox, CloseCode(1008), || {});
    let seen = shared.conn(2);
    assert_eq!(seen.query, "x=1");
    assert!(seen.envelopes.is_empty(), "no @resume: {seen:?}");
    assert_eq!(client.recovered(ROOM), None);
    assert!(inbox.events().iter().all(|(event, _)| event != "@resumed"));
    client.close();
    server.shutdown();
}

#[test]
fn with_first_message_auth_the_resume_request_follows_the_auth_request() {
    let (shared, server) = start(Script { auth: true, ..Script::default() });
    let auth = AuthRequest { event: "/auth".into(), data: json!({"token": "t-ann"}) };
    let (client, inbox) = open_client(&server, "/", options().auth(Some(auth)));
    shared.publish(&server);
    inbox.wait("/said", 1);
    outage(&shared, &server, &inbox, CloseCode(4408), || {});
    let seen = shared.conn(1);
    assert_eq!(resume_request(&seen, true), json!({"token": "tok-1", "rooms": {ROOM: {"epoch": "e1", "offset": 1}}}));
    assert_eq!(client.recovered(ROOM), Some(true));
    client.close();
    server.shutdown();
}

#[test]
fn a_jump_keeps_the_session_and_resumes_at_the_new_url() {
    let (shared, server) = start(Script::default());
    let (client, inbox) = open_client(&server, "/", options());
    shared.publish(&server);
    inbox.wait("/said", 1);
    client.jump(&format!("ws://{}/other?node=b", server.local_addr())).unwrap();
    inbox.wait("@reconnect", 1);
    assert_eq!(shared.conn(0).closed, Some(4001), "moving: the server keeps the session");
    let seen = shared.conn(1);
    assert_eq!(seen.query, "node=b&emitws_resume=1");
    assert_eq!(resume_request(&seen, false), json!({"token": "tok-1", "rooms": {ROOM: {"epoch": "e1", "offset": 1}}}));
    client.close();
    server.shutdown();
}

#[test]
fn ready_without_an_answer_to_resume_or_an_error_reply_is_not_resumed() {
    let (shared, server) = start(Script { answer: Answer::ReadyOnly, ..Script::default() });
    let (client, inbox) = open_client(&server, "/", options());
    let errors = Inbox::listen(&client, &["@error"]);
    shared.publish(&server);
    inbox.wait("/said", 1);
    outage(&shared, &server, &inbox, CloseCode::GOING_AWAY, || {});
    let nothing = json!({"resumed": false, "socket": "s-9", "rooms": {}, "direct": {"recovered": false}});
    assert_eq!(inbox.wait("@resumed", 1), nothing);
    assert_eq!((client.recovered(ROOM), client.socket_id().as_deref()), (Some(false), Some("s-9")));

    // That `@ready` gave no token: the next loss starts a new session.
    outage(&shared, &server, &inbox, CloseCode::GOING_AWAY, || {});
    assert!(shared.conn(2).envelopes.is_empty(), "no @resume without a token");

    // An error reply: reported, and nothing resumed.
    shared.update(|s| s.answer = Answer::Error);
    outage(&shared, &server, &inbox, CloseCode::GOING_AWAY, || {});
    assert_eq!(inbox.wait("@resumed", 2)["resumed"], false);
    assert_eq!(errors.wait("@error", 1)["code"], "bad_request");
    assert_eq!(client.recovered(ROOM), Some(false));
    client.close();
    server.shutdown();
}

#[test]
fn javascript_client_resumes_against_a_scripted_socket() {
    node::run_node_tests("resume.test.js", &[]);
}

/// The clients against the real server's side of §13: a room with history,
/// a connection cut under the client (a TCP proxy the test controls: no close
/// frame, as a network drop), broadcasts meanwhile, recovered exactly once,
/// twice in a row.
mod end_to_end {
    use std::time::Duration;

    use super::common::{ms, WAIT};
    use super::tcp_proxy::Proxy;
    use super::{node, Inbox, EVENTS};
    use emitws::app::{App, BroadcastOpts, History};
    use emitws::client::app::{AppClient, AppOptions};
    use serde_json::{json, Value};

    /// A room with history; `/join` joins it, `/publish` broadcasts `/said` with the request's data to it.
    fn resume_app() -> App {
        let mut app = App::new();
        app.history("#room", History::new(100, Duration::from_secs(60)));
        app.resume_window(Some(Duration::from_secs(30)));
        app.on("/join", |req| {
            let joined = req.join("#room").is_ok();
            req.reply(&joined);
        });
        app.on("/publish", |req| {
            let n: Value = req.data().unwrap_or(Value::Null);
            let sent = req.broadcast("/said", &json!({ "n": n }), BroadcastOpts::to("#room")).is_ok();
            req.reply(&sent);
        });
        app
    }

    #[test]
    fn the_rust_client_recovers_what_was_broadcast_while_it_was_cut_off_exactly_once() {
        let running = resume_app().listen("127.0.0.1:0").expect("listen");
        let proxy = Proxy::start(running.local_addr());
        let options = AppOptions::default().reconnect_delay(ms(20)).max_reconnect_delay(ms(100));
        let client = AppClient::new(&format!("ws://{}/?app=1", proxy.addr), options).unwrap();
        let inbox = Inbox::listen(&client, EVENTS);
        client.open().unwrap();
        assert_eq!(client.request("/join", Value::Null, WAIT), Ok(json!(true)));
        let socket = client.socket_id().expect("READY");
        let publish = |n: u64| running.broadcast("/said", &json!({ "n": n }), BroadcastOpts::to("#room")).unwrap();
        for n in 1..=3 {
            publish(n);
        }
        inbox.wait("/said", 3);

        proxy.cut();
        inbox.wait("@disconnect", 1);
        publish(4);
        publish(5);
        proxy.online();
        let outcome = inbox.wait("@resumed", 1);
        assert_eq!(outcome["resumed"], true, "{outcome}");
        inbox.wait("@reconnect", 1);
        assert_eq!(inbox.said(), [1, 2, 3, 4, 5]);
        assert_eq!(client.recovered("#room"), Some(true));
        assert_eq!(client.socket_id(), Some(socket.clone()), "the same socket");

        // Again, with nothing published in between: nothing is replayed twice.
        proxy.cut();
        inbox.wait("@disconnect", 2);
        proxy.online();
        inbox.wait("@reconnect", 2);
        assert_eq!(inbox.said(), [1, 2, 3, 4, 5]);
        assert_eq!(client.recovered("#room"), Some(true));
        publish(6);
        inbox.wait("/said", 6);
        assert_eq!(inbox.said(), [1, 2, 3, 4, 5, 6], "still in the room");
        client.close();
        running.close();
    }

    #[test]
    fn the_javascript_client_recovers_what_was_broadcast_while_it_was_cut_off_exactly_once() {
        let running = resume_app().listen("127.0.0.1:0").expect("listen");
        node::run_node_tests(
            "resume-server.test.js",
            &[("EMITWS_RESUME_URL", format!("ws://{}/", running.local_addr()))],
        );
        running.close();
    }
}
