//! The server the emitws.v1 conformance suite (`tests/protocol/`) talks to: an
//! application with one handler per behaviour PROTOCOL.md describes, and
//! flags for the settings the suite varies.
//!
//! `cargo run --example protocol_server -- [--addr 127.0.0.1:0]
//! [--policy reply|close] [--auth none|upgrade|message|challenge]
//! [--auth-timeout-ms N] [--heartbeat-ms N] [--rate none|PER_SECOND/BURST]
//! [--max-devices N/drop-oldest|N/reject-new] [--resume-window-ms N]
//! [--resume-buffer N]`
//!
//! `--resume-window-ms 0` keeps no sessions; without the flag the window is
//! the default one.
//!
//! It prints `listening 127.0.0.1:PORT` once it accepts connections.
//!
//! Events and requests it handles:
//! - `/echo`: a request is answered with its data, an event is sent back as
//!   `[0,"/echo",data]`, data in both cases exactly as the client wrote it
//!   (a binary envelope's bytes come back in a binary reply or event);
//! - `/silent`: does nothing (a request then gets `null`);
//! - `/hold`: defers the reply; `/release` answers every held request of the
//!   socket with its own data, then answers with how many it released;
//! - `/drop-reply`: defers the reply and drops it; `/panic`: panics;
//! - `/call {name, data, timeout_ms}`: calls the client's procedure and
//!   answers `{"ok": result}` or `{"error": {"code", "message"}}`;
//! - `/calls {n, timeout_ms}`: calls the client's `count` procedure `n` times
//!   (data 1..=n) and answers `{"answered": k, "errors": [codes]}`;
//! - `/ping-me {timeout_ms}`: pings this socket at the application level
//!   (PROTOCOL.md §9.1, `SocketRef::ping_then`) and answers `{"rtt_us": N}`
//!   (the round trip in microseconds) or `{"error": {"code", "message"}}`;
//! - `/emit {event, data}`: sends `[0,event,data]` to this socket;
//! - `/emit-to {socket, event, data}`: sends it to the socket whose id
//!   (PROTOCOL.md §12) is given, and answers whether it could;
//! - `/emit-binary-to {socket, event, bytes}`: the same with a binary event
//!   (PROTOCOL.md §10) whose payload is `bytes`, a JSON array of numbers;
//! - `/join {room}` and `/say {room, event, data}`: rooms and broadcasts;
//!   `/say-binary {room, event, bytes}`: a binary broadcast (PROTOCOL.md
//!   §10) of `bytes`, a JSON array of numbers; both leave the sender out;
//! - `/whoami`: `{"socket", "user"}`; `/drop-me`: the app drops the socket.
//!
//! Rooms named `#h:…` (`/join {"room": "h:…"}`) keep history (PROTOCOL.md
//! §13): their broadcasts carry offsets, and a resume replays the missed
//! ones. Sessions are kept for the default resume window.
//!
//! A query `?close=CODE` makes connection middleware refuse the socket after
//! the upgrade with that close code. Authentication: `upgrade` wants
//! `?token=user:NAME`; `message` wants `[1,id,"/auth",{"token":"user:NAME"}]`;
//! `challenge` wants the nonce answered with `"NONCE:NAME"`.

#[path = "support/logs.rs"]
mod logs;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use emitws::app::{
    App, BroadcastOpts, CallError, CallResult, Challenge, DevicePolicy, EventLimits, History, Policy, Rate, Refusal,
    ReplyHandle, Request, SocketId,
};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{json, Value};

/// The suite's settings, read from the command line.
struct Options {
    addr: String,
    policy: Policy,
    auth: String,
    auth_timeout: Option<Duration>,
    heartbeat: Option<Duration>,
    rate: Option<Rate>,
    devices: Option<(usize, DevicePolicy)>,
    /// `Some(None)`: keep no sessions; `None`: the default window.
    resume_window: Option<Option<Duration>>,
    resume_buffer: Option<usize>,
}

fn parse_args() -> Result<Options, String> {
    let mut options = Options {
        addr: "127.0.0.1:0".into(),
        policy: Policy::Reply,
        auth: "none".into(),
        auth_timeout: None,
        heartbeat: None,
        rate: EventLimits::default().rate,
        devices: None,
        resume_window: None,
        resume_buffer: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let millis = || value.parse::<u64>().map(Duration::from_millis).map_err(|e| format!("{flag} {value}: {e}"));
        match flag.as_str() {
            "--addr" => options.addr = value.clone(),
            "--policy" => {
                options.policy = match value.as_str() {
                    "reply" => Policy::Reply,
                    "close" => Policy::Close,
                    _ => return Err(format!("--policy {value}: reply or close")),
                }
            }
            "--auth" => match value.as_str() {
                "none" | "upgrade" | "message" | "challenge" => options.auth = value.clone(),
                _ => return Err(format!("--auth {value}: none, upgrade, message or challenge")),
            },
            "--auth-timeout-ms" => options.auth_timeout = Some(millis()?),
            "--heartbeat-ms" => options.heartbeat = Some(millis()?),
            "--rate" => options.rate = parse_rate(&value).ok_or_else(|| format!("--rate {value}: none or N/BURST"))?,
            "--max-devices" => {
                options.devices = Some(
                    parse_devices(&value)
                        .ok_or_else(|| format!("--max-devices {value}: N/drop-oldest or N/reject-new"))?,
                )
            }
            "--resume-window-ms" => options.resume_window = Some(Some(millis()?).filter(|window| !window.is_zero())),
            "--resume-buffer" => {
                options.resume_buffer = Some(value.parse().map_err(|e| format!("{flag} {value}: {e}"))?)
            }
            _ => return Err(format!("unknown flag {flag}")),
        }
    }
    Ok(options)
}

/// `none` or `PER_SECOND/BURST`; `Some(None)` is "no limit".
fn parse_rate(value: &str) -> Option<Option<Rate>> {
    if value == "none" {
        return Some(None);
    }
    let (per_second, burst) = value.split_once('/')?;
    Some(Some(Rate { per_second: per_second.parse().ok()?, burst: burst.parse().ok()? }))
}

fn parse_devices(value: &str) -> Option<(usize, DevicePolicy)> {
    let (max, policy) = value.split_once('/')?;
    let policy = match policy {
        "drop-oldest" => DevicePolicy::DropOldest,
        "reject-new" => DevicePolicy::RejectNew,
        _ => return None,
    };
    Some((max.parse().ok()?, policy))
}

/// The user a `user:NAME` token stands for.
fn user_of(token: &str) -> Result<String, Refusal> {
    match token.strip_prefix("user:") {
        Some(name) if !name.is_empty() => Ok(name.to_string()),
        _ => Err(Refusal::status(401, "unknown token")),
    }
}

/// Requests held by `/hold` until `/release`, per socket.
type Held = Mutex<HashMap<SocketId, Vec<(ReplyHandle, Box<RawValue>)>>>;

fn null() -> Box<RawValue> {
    RawValue::from_string("null".into()).expect("null is JSON")
}

/// The request's data exactly as the client wrote it.
fn raw(req: &Request<'_>) -> Box<RawValue> {
    req.raw_data().map_or_else(null, |data| data.to_owned())
}

#[derive(Serialize)]
struct WireError {
    code: String,
    message: String,
}

fn wire_error(error: &CallError) -> WireError {
    let code = match error {
        CallError::Timeout => "timeout",
        CallError::NotRegistered(_) => "not_registered",
        CallError::ExecutionFailed(_) => "execution_failed",
        CallError::Disconnected => "disconnected",
        CallError::TooMany => "too_many_calls",
        CallError::Remote { code, .. } => code,
        _ => "other",
    };
    WireError { code: code.into(), message: error.to_string() }
}

/// `{"ok": result}` or `{"error": {code, message}}`.
#[derive(Serialize)]
#[serde(rename_all = "lowercase")]
enum CallOutcome {
    Ok(Box<RawValue>),
    Error(WireError),
}

fn outcome(result: CallResult) -> CallOutcome {
    match result {
        Ok(reply) => CallOutcome::Ok(RawValue::from_string(reply.raw().to_string()).unwrap_or_else(|_| null())),
        Err(e) => CallOutcome::Error(wire_error(&e)),
    }
}

#[derive(Deserialize)]
struct Call {
    name: String,
    #[serde(default)]
    data: Option<Box<RawValue>>,
    timeout_ms: u64,
}

#[derive(Deserialize)]
struct Calls {
    n: usize,
    timeout_ms: u64,
}

#[derive(Deserialize)]
struct PingMe {
    timeout_ms: u64,
}

#[derive(Deserialize)]
struct Emit {
    event: String,
    #[serde(default)]
    data: Option<Box<RawValue>>,
}

#[derive(Deserialize)]
struct EmitTo {
    socket: String,
    event: String,
    #[serde(default)]
    data: Option<Box<RawValue>>,
}

#[derive(Deserialize)]
struct EmitBinaryTo {
    socket: String,
    event: String,
    bytes: Vec<u8>,
}

/// Sends to the socket named `socket` with `send`; answers whether it could.
fn reply_sent(req: &mut Request<'_>, socket: &str, send: impl FnOnce(SocketId) -> Result<bool, emitws::app::Error>) {
    let Ok(id) = socket.parse::<SocketId>() else {
        return req.reply_err("bad_request", "socket is no socket id");
    };
    match send(id) {
        Ok(sent) => req.reply(&sent),
        Err(e) => req.reply_err("bad_request", &e.to_string()),
    }
}

#[derive(Deserialize)]
struct Say {
    room: String,
    event: String,
    #[serde(default)]
    data: Option<Box<RawValue>>,
}

#[derive(Deserialize)]
struct SayBinary {
    room: String,
    event: String,
    bytes: Vec<u8>,
}

#[derive(Deserialize)]
struct Join {
    room: String,
}

#[derive(Deserialize)]
struct Token {
    token: String,
}

/// How far `/calls` got: answers counted, error codes, and the reply to give
/// once every call has ended.
struct Tally {
    left: usize,
    answered: usize,
    errors: Vec<String>,
    reply: Option<ReplyHandle>,
}

fn handlers(app: &mut App) {
    let held: Arc<Held> = Arc::default();
    app.on("/echo", |req| {
        // On emitws.v2, bytes come back as bytes (PROTOCOL.md §10).
        if let Some(bytes) = req.binary() {
            match req.is_request() {
                true => req.reply_binary(bytes),
                false => drop(req.emit_binary("/echo", bytes)),
            }
            return;
        }
        let data = raw(req);
        if req.is_request() {
            req.reply(&data);
        } else {
            let _ = req.emit("/echo", &data);
        }
    });
    app.on("/silent", |_| {});
    let hold = held.clone();
    app.on("/hold", move |req| {
        let data = raw(req);
        let id = req.socket_id();
        let reply = req.defer();
        hold.lock().expect("held").entry(id).or_default().push((reply, data));
    });
    app.on("/release", move |req| {
        let released = held.lock().expect("held").remove(&req.socket_id()).unwrap_or_default();
        let count = released.len();
        for (reply, data) in released {
            reply.reply(&data);
        }
        req.reply(&count);
    });
    app.on("/drop-reply", |req| drop(req.defer()));
    app.on("/panic", |_| panic!("the /panic handler panics on purpose"));
    app.on("/call", |req| {
        let Some(call) = req.expect_data::<Call>() else { return };
        let reply = req.defer();
        let data = call.data.unwrap_or_else(null);
        let timeout = Duration::from_millis(call.timeout_ms);
        if let Err(e) = req.call(&call.name, &data, timeout, move |result| reply.reply(&outcome(result))) {
            eprintln!("/call {}: {e}", call.name);
        }
    });
    app.on("/calls", |req| {
        let Some(Calls { n, timeout_ms }) = req.expect_data::<Calls>() else { return };
        let tally = Arc::new(Mutex::new(Tally { left: n, answered: 0, errors: Vec::new(), reply: Some(req.defer()) }));
        for i in 1..=n {
            let tally = tally.clone();
            let done = move |result: CallResult| {
                let mut tally = tally.lock().expect("tally");
                match result {
                    Ok(_) => tally.answered += 1,
                    Err(e) => tally.errors.push(wire_error(&e).code),
                }
                tally.left -= 1;
                if tally.left == 0 {
                    let answer = json!({ "answered": tally.answered, "errors": tally.errors });
                    if let Some(reply) = tally.reply.take() {
                        reply.reply(&answer);
                    }
                }
            };
            if let Err(e) = req.call("count", &i, Duration::from_millis(timeout_ms), done) {
                eprintln!("/calls: {e}");
            }
        }
    });
    app.on("/ping-me", |req| {
        let Some(PingMe { timeout_ms }) = req.expect_data::<PingMe>() else { return };
        let reply = req.defer();
        req.socket().ping_then(Duration::from_millis(timeout_ms), move |rtt| match rtt {
            Ok(rtt) => reply.reply(&json!({ "rtt_us": u64::try_from(rtt.as_micros()).unwrap_or(u64::MAX) })),
            Err(e) => reply.reply(&json!({ "error": wire_error(&e) })),
        });
    });
    app.on("/emit", |req| {
        let Some(Emit { event, data }) = req.expect_data::<Emit>() else { return };
        let _ = req.emit(&event, &data.unwrap_or_else(null));
        req.reply(&Value::Null);
    });
    app.on("/emit-to", |req| {
        let Some(EmitTo { socket, event, data }) = req.expect_data::<EmitTo>() else { return };
        let app = req.app().clone();
        reply_sent(req, &socket, |id| app.emit_to(id, &event, &data.unwrap_or_else(null)));
    });
    app.on("/emit-binary-to", |req| {
        let Some(EmitBinaryTo { socket, event, bytes }) = req.expect_data::<EmitBinaryTo>() else { return };
        let app = req.app().clone();
        reply_sent(req, &socket, |id| app.emit_binary_to(id, &event, &bytes));
    });
    app.on("/join", |req| {
        let Some(Join { room }) = req.expect_data::<Join>() else { return };
        match req.join(&format!("#{room}")) {
            Ok(()) => req.reply(&Value::Null),
            Err(e) => req.reply_err("forbidden", &e.to_string()),
        }
    });
    app.on("/say", |req| {
        let Some(Say { room, event, data }) = req.expect_data::<Say>() else { return };
        let to = BroadcastOpts::to(&format!("#{room}"));
        match req.broadcast(&event, &data.unwrap_or_else(null), to) {
            Ok(()) => req.reply(&Value::Null),
            Err(e) => req.reply_err("forbidden", &e.to_string()),
        }
    });
    app.on("/say-binary", |req| {
        let Some(SayBinary { room, event, bytes }) = req.expect_data::<SayBinary>() else { return };
        match req.broadcast_binary(&event, &bytes, BroadcastOpts::to(&format!("#{room}"))) {
            Ok(()) => req.reply(&Value::Null),
            Err(e) => req.reply_err("forbidden", &e.to_string()),
        }
    });
    app.on("/whoami", |req| {
        let answer = json!({ "socket": req.socket_id().to_string(), "user": req.user() });
        req.reply(&answer);
    });
    app.on("/drop-me", |req| {
        let id = req.socket_id();
        req.app().drop_socket(id, "dropped by /drop-me");
    });
    app.on("@error", |req| {
        let data = req.raw_data().map_or("null", |data| data.get()).to_string();
        eprintln!("@error from {}: {data}", req.conn_id());
    });
}

fn authentication(app: &mut App, auth: &str) {
    match auth {
        "upgrade" => {
            app.identify(|conn| user_of(&conn.query_value("token").unwrap_or_default()));
        }
        "message" => {
            app.identify_by_message("/auth", |req| {
                let token = req.data::<Token>().map(|t| t.token).unwrap_or_default();
                user_of(&token)
            });
        }
        "challenge" => {
            let counter = AtomicU64::new(1);
            let generate = move || format!("nonce-{}", counter.fetch_add(1, Ordering::Relaxed));
            app.challenge(Challenge::new(generate, |nonce, answer| {
                let answer: String = answer.data().map_err(|_| Refusal::status(401, "the answer is no string"))?;
                match answer.strip_prefix(nonce).and_then(|rest| rest.strip_prefix(':')) {
                    Some(user) if !user.is_empty() => Ok(user.to_string()),
                    _ => Err(Refusal::status(401, "wrong answer")),
                }
            }));
        }
        _ => {}
    }
}

fn main() -> std::io::Result<()> {
    logs::init();
    let options = match parse_args() {
        Ok(options) => options,
        Err(e) => {
            eprintln!("protocol_server: {e}");
            std::process::exit(2);
        }
    };
    let mut app = App::new();
    let mut limits = EventLimits::default().rate(options.rate).on_bad_input(options.policy).over_rate(options.policy);
    if let Some(timeout) = options.auth_timeout {
        limits.auth_timeout = timeout;
    }
    app.limits(limits);
    app.heartbeat(options.heartbeat);
    if let Some((max, policy)) = options.devices {
        app.max_devices(max, policy);
    }
    app.on_connect(|conn| match conn.query_value("close").map(|code| code.parse::<u16>()) {
        Some(Ok(code)) => Err(Refusal::close(emitws::proto::CloseCode(code), "refused by ?close")),
        Some(Err(_)) => Err(Refusal::status(400, "?close wants a close code")),
        None => Ok(emitws::app::After::nothing()),
    });
    if let Some(window) = options.resume_window {
        app.resume_window(window);
    }
    if let Some(messages) = options.resume_buffer {
        app.resume_buffer(messages);
    }
    app.history("#h:*", History::new(100, Duration::from_secs(60)));
    authentication(&mut app, &options.auth);
    handlers(&mut app);
    let running = app.listen(&options.addr)?;
    println!("listening {}", running.local_addr());
    running.stop_on_signals()?;
    running.join();
    Ok(())
}
