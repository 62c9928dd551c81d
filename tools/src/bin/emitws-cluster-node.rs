//! One node of an emitws cluster over Redis: the server the cluster tests
//! and benches/cluster.sh start several of, and a small demo of the API.
//!
//! `emitws-cluster-node [--redis redis://127.0.0.1:6379/ [--redis-ca FILE]] [--addr 127.0.0.1:0]
//! [--workers N] [--ttl-ms N] [--rate N] [--history PATTERN]... [--history-size N]
//! [--history-ttl S] [--resume-window S] [--resume-buffer N] [--resume-max-sessions N]`
//! prints `listening on ADDR node HEX`
//! once up and stops gracefully when its standard input closes, unless that
//! is /dev/null (then it runs until killed). Without `--redis` it is a server
//! on its own (node 0). `--rate` caps envelopes per second per socket (0: no
//! cap; the default is the app's). `--history` gives history to the rooms
//! a pattern names (`#lobby`, `#storm-*`: PROTOCOL.md §13), each keeping its
//! last `--history-size` broadcasts for `--history-ttl` seconds; the
//! `--resume-*` options are the app's resume settings (seconds for the
//! window, 0 to keep no sessions). Clients connect with `?user=NAME` (and
//! `&room=%23name` to join a room at once) and send:
//!
//! - `/join "#room"` (request): joins a room; replies this socket's cluster-wide id
//! - `/whoami` (request): `{"id": "NODE-CONN", "node": "HEX"}`
//! - `/say {"to": "#room" | null, "text": .., "except": "NODE-CONN"?, "echo": bool?}`:
//!   broadcasts `/said {"from", "text"}` to the room (or everyone) on every
//!   node, the sender left out unless `echo`
//! - `/dm {"to": "NODE-CONN", "text": ..}`: sends `/dm {"from", "text"}` to one socket
//! - `/tell {"user": .., "text": ..}`: sends `/told {"from", "text"}` to a user's devices
//! - `/query {"what": .., "arg": ..}` (request): a cluster-wide query, answered
//!   off the worker; `unavailable` if Redis does not answer in time

use std::io::{Read, Write};
use std::time::Duration;

use clap::Parser;
use emitws::app::{App, AppHandle, BroadcastOpts, Error, EventLimits, History, Rate, Refusal, SocketId, CLOSE_DROPPED};
use emitws::cluster::{RedisAdapter, RedisOptions};
use emitws::runtime::Server;
use serde::Deserialize;
use serde_json::{json, Value};

#[path = "../../../examples/support/logs.rs"]
mod logs;

#[derive(Deserialize)]
struct Say {
    to: Option<String>,
    text: String,
    /// A socket (`NODE-CONN`) to leave out.
    except: Option<String>,
    /// The sender gets it too.
    #[serde(default)]
    echo: bool,
}

#[derive(Deserialize)]
struct Direct {
    to: String,
    text: String,
}

#[derive(Deserialize)]
struct Tell {
    user: String,
    text: String,
}

#[derive(Deserialize)]
struct Query {
    what: String,
    #[serde(default)]
    arg: String,
}

/// One node of an emitws cluster over Redis (see the source's documentation for its events).
#[derive(Parser)]
#[command(name = "emitws-cluster-node")]
struct Args {
    /// The Redis server (redis://, rediss:// for TLS, redis+sentinel://host:port,.../MASTER,
    /// redis+cluster://host:port,host:port/);
    /// without it, a server on its own (node 0)
    #[arg(long, value_name = "URL")]
    redis: Option<String>,
    /// A PEM file of the CA certificates a rediss:// Redis is checked against [default: Mozilla's roots]
    #[arg(long, value_name = "FILE", requires = "redis")]
    redis_ca: Option<std::path::PathBuf>,
    /// Where to listen
    #[arg(long, value_name = "HOST:PORT", default_value = "127.0.0.1:0")]
    addr: String,
    /// Worker threads [default: the server's]
    #[arg(long, value_name = "N")]
    workers: Option<usize>,
    /// How long a silent node counts as alive, in milliseconds [default: the adapter's]
    #[arg(long, value_name = "N")]
    ttl_ms: Option<u64>,
    /// Envelopes per second per socket, 0 for no cap [default: the app's]
    #[arg(long, value_name = "N")]
    rate: Option<f32>,
    /// Give history to the rooms this names (`#room`, or `#prefix*`); repeat for more
    #[arg(long, value_name = "PATTERN")]
    history: Vec<String>,
    /// Broadcasts each history room keeps
    #[arg(long, value_name = "N", default_value = "1000")]
    history_size: usize,
    /// Seconds each kept broadcast lives
    #[arg(long, value_name = "S", default_value = "300")]
    history_ttl: u64,
    /// Seconds a lost socket's session is kept for a resume, 0 for none [default: the app's]
    #[arg(long, value_name = "S")]
    resume_window: Option<u64>,
    /// Direct messages kept per away socket [default: the app's]
    #[arg(long, value_name = "N")]
    resume_buffer: Option<usize>,
    /// Sessions kept at once [default: the app's]
    #[arg(long, value_name = "N")]
    resume_max_sessions: Option<usize>,
}

fn main() {
    logs::init();
    let args = Args::parse();
    let mut server = Server::new();
    if let Some(workers) = args.workers {
        server = server.workers(workers);
    }
    let mut limits = EventLimits::default();
    if let Some(per_second) = args.rate {
        limits = limits.rate((per_second > 0.0).then_some(Rate { per_second, burst: per_second }));
    }
    let mut options = RedisOptions::default();
    if let Some(ttl) = args.ttl_ms {
        options = options.heartbeat_ttl(Duration::from_millis(ttl));
    }
    if let Some(ca) = args.redis_ca {
        options = options.ca_file(ca);
    }
    let addr = args.addr;
    let adapter = args.redis.map(|url| {
        RedisAdapter::new(&url, options).unwrap_or_else(|e| match std::error::Error::source(&e) {
            Some(cause) => fail(&format!("{e}: {cause}")),
            None => fail(&e),
        })
    });
    let mut app = App::new();
    app.limits(limits);
    give_history(&mut app, &args.history, args.history_size, args.history_ttl);
    if let Some(seconds) = args.resume_window {
        app.resume_window((seconds > 0).then(|| Duration::from_secs(seconds)));
    }
    if let Some(messages) = args.resume_buffer {
        app.resume_buffer(messages);
    }
    if let Some(sessions) = args.resume_max_sessions {
        app.resume_max_sessions(sessions);
    }
    if let Some(adapter) = &adapter {
        app.adapter(adapter.clone());
    }
    app.identify(|c| c.query_value("user").ok_or_else(|| Refusal::status(401, "connect with ?user=NAME")));
    app.on("@connection", |req| {
        if let Some(room) = req.query("room") {
            if let Err(e) = req.join(&room) {
                req.close(CLOSE_DROPPED, &e.to_string());
            }
        }
    });
    app.on("/join", |req| {
        let Some(room) = req.expect_data::<String>() else { return };
        match req.join(&room) {
            Ok(()) => {
                let id = req.socket_id().to_string();
                req.reply(&id)
            }
            Err(e) => req.reply_err("forbidden", &e.to_string()),
        }
    });
    app.on("/whoami", |req| {
        let (id, node) = (req.socket_id(), format!("{:x}", req.app().node()));
        req.reply(&json!({ "id": id.to_string(), "node": node }));
    });
    app.on("/say", |req| {
        let Some(Say { to, text, except, echo }) = req.expect_data() else { return };
        let mut opts = to.as_deref().map_or_else(BroadcastOpts::all, BroadcastOpts::to);
        if let Some(id) = except.and_then(|id| id.parse::<SocketId>().ok()) {
            opts = opts.except(id);
        }
        if echo {
            opts = opts.include_self();
        }
        let said = json!({ "from": req.user(), "text": text });
        if let Err(e) = req.broadcast("/said", &said, opts) {
            req.reply_err("bad_request", &e.to_string());
        }
    });
    app.on("/dm", |req| {
        let Some(Direct { to, text }) = req.expect_data() else { return };
        let Ok(to) = to.parse::<SocketId>() else { return req.reply_err("bad_request", "to: NODE-CONN") };
        let _ = req.app().emit_to(to, "/dm", &json!({ "from": req.socket_id().to_string(), "text": text }));
    });
    app.on("/tell", |req| {
        let Some(Tell { user, text }) = req.expect_data() else { return };
        let _ = req.app().to_user(&user).emit("/told", &json!({ "from": req.user(), "text": text }));
    });
    app.on("/query", |req| {
        let Some(query) = req.expect_data::<Query>() else { return };
        // Queries wait for Redis: answered off the worker.
        let (reply, app) = (req.defer(), req.app().clone());
        std::thread::spawn(move || match answer(&app, &query) {
            Ok(value) => reply.reply(&value),
            Err(e) => reply.reply_err("unavailable", &e.to_string()),
        });
    });
    let running = app.listen_with(server, &addr).unwrap_or_else(|e| fail(&e));
    if adapter.is_some_and(|adapter| !adapter.link().ready(Duration::from_secs(5))) {
        eprintln!("emitws-cluster-node: not subscribed to Redis yet; serving anyway");
    }
    println!("listening on {} node {:x}", running.local_addr(), running.node());
    let _ = std::io::stdout().flush();
    // A background job's stdin is /dev/null: it runs until killed.
    if std::fs::read_link("/proc/self/fd/0").map_or(true, |path| path != std::path::Path::new("/dev/null")) {
        let app = running.app();
        std::thread::spawn(move || {
            let _ = std::io::stdin().read_to_end(&mut Vec::new());
            app.close();
        });
    }
    running.join();
}

/// Gives every room `patterns` name a history of `size` broadcasts kept for
/// `ttl_secs`. `History::new` and `App::history` panic on a bad size, time
/// or pattern (a setup mistake in a program); here they come from the
/// command line, so their message ends the process with status 2, without
/// the panic's location or backtrace.
fn give_history(app: &mut App, patterns: &[String], size: usize, ttl_secs: u64) {
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|info| {
        let payload = info.payload();
        let message = payload.downcast_ref::<String>().map(String::as_str).or(payload.downcast_ref::<&str>().copied());
        eprintln!("emitws-cluster-node: {}", message.unwrap_or("bad --history settings"));
    }));
    let given = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        for pattern in patterns {
            app.history(pattern, History::new(size, Duration::from_secs(ttl_secs)));
        }
    }));
    std::panic::set_hook(hook);
    if given.is_err() {
        eprintln!("emitws-cluster-node: see --help for --history, --history-size and --history-ttl");
        std::process::exit(2);
    }
}

fn answer(app: &AppHandle, query: &Query) -> Result<Value, Error> {
    let cluster = app.cluster();
    let ids = |ids: Vec<SocketId>| ids.iter().map(ToString::to_string).collect::<Vec<_>>();
    let arg = query.arg.as_str();
    Ok(match query.what.as_str() {
        "group_size" => json!(cluster.group_size(arg)?),
        "group_members" => json!(ids(cluster.group_members(arg)?)),
        "socket_count" => json!(cluster.socket_count()?),
        "sockets" => json!(ids(cluster.sockets()?)),
        "socket_exists" => json!(arg.parse().map_or(Ok(false), |id| cluster.socket_exists(id))?),
        "user_online" => json!(cluster.user_online(arg)?),
        "user_sockets" => json!(ids(cluster.user_sockets(arg)?)),
        "user_count" => json!(cluster.user_count()?),
        "users" => json!(cluster.users()?),
        other => json!({ "unknown": other }),
    })
}

fn fail(e: &dyn std::fmt::Display) -> ! {
    eprintln!("emitws-cluster-node: {e}");
    std::process::exit(1);
}
