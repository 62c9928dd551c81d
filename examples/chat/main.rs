//! The chat demo: a web page and its WebSocket endpoint on one port.
//!
//! `cargo run --release --example chat`, then open http://127.0.0.1:3000/ in
//! two browser windows. Rooms, a user list, a typing indicator, recent
//! history per room, and the connection state with reconnects, all on the
//! event framework (`emitws::app`) and the JavaScript client
//! (clients/js/emitws.js, served as /emitws.js).
//!
//! `--addr HOST:PORT` changes the address (port 0 picks a free one; the
//! address is printed either way). With the `redis` feature, `--redis URL`
//! makes this server one node of a cluster: rooms, user lists and history
//! live in Redis, and messages reach the members on every node
//! (`cargo run --release --features redis --example chat -- --redis
//! redis://127.0.0.1:6379/ --addr 127.0.0.1:3001`, and a second one on 3002).
//! The URL may be `rediss://` (TLS; `--redis-ca FILE` names the CA
//! certificates to trust), `redis+sentinel://host:port,.../MASTER` or a Redis
//! Cluster, `redis+cluster://host:port,host:port/`.
//!
//! Events (all under the `/chat` namespace):
//! - request `/join {room, name}` → `{room, history, users, rooms}`; everyone
//!   gets `/presence {room, users, joined, rooms}`
//! - request `/say {room, text}` → `true`; the room gets `/message {room, user, text, ts}`
//! - event `/typing {room}`; the room gets `/typing {room, user}`
//! - a socket that leaves its room or disconnects: everyone gets `/presence {room, users, left, rooms}`
//! - a socket that resumes after a lost connection (PROTOCOL.md §13), on
//!   whichever server it comes back to (another node of the cluster, or the
//!   same address after a restart), is back in its room without joining
//!   again, with the room's messages it missed as `/message` events:
//!   everyone, itself included, gets `/presence {room, users, joined, rooms}`
//!
//! Handlers never wait for the store: they keep what belongs to the socket
//! (its room, its name) on the worker and hand the rest to the store's own
//! thread, which replies and broadcasts when it is done.

#[allow(dead_code)] // tests/chat_cluster.rs includes this file for serve()
#[path = "../support/logs.rs"]
mod logs;

use std::collections::{BTreeMap, VecDeque};
use std::sync::mpsc::{self, Sender};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use emitws::app::{App, AppHandle, BroadcastOpts, History, Request, SocketId};
use emitws::runtime::HttpResponse;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

const PAGE: &str = include_str!("index.html");
const CLIENT: &str = include_str!("../../clients/js/emitws.js");

/// Messages kept per room for people who join later.
const HISTORY: usize = 50;
/// How long a lost connection may come back as the same socket, still in
/// its room; the rooms' resume history keeps broadcasts as long.
const RESUME_WINDOW: Duration = Duration::from_secs(120);
/// Rooms kept at most; new ones beyond it are refused.
const MAX_ROOMS: usize = 200;
const MAX_NAME: usize = 24;
const MAX_ROOM: usize = 32;
const MAX_TEXT: usize = 2000;

#[derive(Clone, Serialize, Deserialize)]
struct Said {
    room: String,
    user: String,
    text: String,
    ts: u64,
}

/// A room as a joiner sees it.
struct Joined {
    history: Vec<Said>,
    users: Vec<String>,
    rooms: Vec<Value>,
}

/// Where rooms, their members and their history are kept. Members are
/// cluster-wide socket ids (`NODE-CONN`).
trait Store: Send {
    /// Adds a member; `Err` says why not.
    fn join(&mut self, app: &AppHandle, room: &str, member: SocketId, name: &str) -> Result<Joined, String>;
    /// Removes a member: the room's users and the room list afterwards.
    fn leave(&mut self, app: &AppHandle, room: &str, member: SocketId) -> (Vec<String>, Vec<Value>);
    /// Keeps a message in its room's history.
    fn keep(&mut self, said: &Said);
}

/// Member names, each once, sorted.
fn distinct(names: impl IntoIterator<Item = String>) -> Vec<String> {
    let mut names: Vec<String> = names.into_iter().collect();
    names.sort_unstable();
    names.dedup();
    names
}

/// The store of a single server: everything in memory.
#[derive(Default)]
struct Memory(BTreeMap<String, Room>);

#[derive(Default)]
struct Room {
    members: BTreeMap<SocketId, String>,
    history: VecDeque<Said>,
}

impl Memory {
    fn users(&self, room: &str) -> Vec<String> {
        self.0.get(room).map(|r| distinct(r.members.values().cloned())).unwrap_or_default()
    }

    fn rooms(&self) -> Vec<Value> {
        self.0.iter().map(|(name, room)| json!({ "name": name, "users": room.members.len() })).collect()
    }
}

impl Store for Memory {
    fn join(&mut self, _: &AppHandle, room: &str, member: SocketId, name: &str) -> Result<Joined, String> {
        if !self.0.contains_key(room) && self.0.len() >= MAX_ROOMS {
            return Err("too many rooms".into());
        }
        let entry = self.0.entry(room.to_string()).or_default();
        entry.members.insert(member, name.to_string());
        let history = entry.history.iter().cloned().collect();
        Ok(Joined { history, users: self.users(room), rooms: self.rooms() })
    }

    fn leave(&mut self, _: &AppHandle, room: &str, member: SocketId) -> (Vec<String>, Vec<Value>) {
        if let Some(entry) = self.0.get_mut(room) {
            entry.members.remove(&member);
            if entry.members.is_empty() && entry.history.is_empty() && room != "general" {
                self.0.remove(room);
            }
        }
        (self.users(room), self.rooms())
    }

    fn keep(&mut self, said: &Said) {
        if let Some(room) = self.0.get_mut(&said.room) {
            if room.history.len() == HISTORY {
                room.history.pop_front();
            }
            room.history.push_back(said.clone());
        }
    }
}

/// The store of a cluster: rooms (`emitws-chat:rooms`), members
/// (`emitws-chat:members:ROOM`, socket id → name) and history
/// (`emitws-chat:history:ROOM`) in Redis, shared by every chat server. A
/// failed command drops the connection; the next one reconnects.
#[cfg(feature = "redis")]
struct Shared {
    /// The cluster link: connections open as its own do (any URL it takes,
    /// Sentinel and TLS included).
    link: emitws::cluster::RedisLink,
    connection: Option<redis::Connection>,
}

#[cfg(feature = "redis")]
impl Shared {
    const ROOMS: &'static str = "emitws-chat:rooms";

    fn members_key(room: &str) -> String {
        format!("emitws-chat:members:{room}")
    }

    fn history_key(room: &str) -> String {
        format!("emitws-chat:history:{room}")
    }

    fn with<T>(&mut self, f: impl FnOnce(&mut redis::Connection) -> redis::RedisResult<T>) -> redis::RedisResult<T> {
        let connection = match &mut self.connection {
            Some(connection) => connection,
            empty => {
                empty.insert(self.link.connection().map_err(|e| redis::RedisError::from(std::io::Error::other(e)))?)
            }
        };
        let result = f(connection);
        if result.is_err() {
            self.connection = None;
        }
        result
    }

    /// A room's members' names. Members of this server are trusted; those of
    /// other servers must still be connected (a server that died leaves its
    /// members behind, and they are swept out here).
    fn users(&mut self, app: &AppHandle, room: &str) -> redis::RedisResult<Vec<String>> {
        use redis::Commands;
        let key = Self::members_key(room);
        let members: BTreeMap<String, String> = self.with(|c| c.hgetall(&key))?;
        let live = app.cluster().sockets().unwrap_or_default();
        let mut names = Vec::new();
        for (member, name) in members {
            let Ok(id) = member.parse::<SocketId>() else { continue };
            if id.node == app.node() || live.contains(&id) {
                names.push(name);
            } else if !live.is_empty() {
                self.with(|c| c.hdel::<_, _, ()>(&key, &member))?;
            }
        }
        Ok(distinct(names))
    }

    fn rooms(&mut self) -> redis::RedisResult<Vec<Value>> {
        use redis::Commands;
        let names: Vec<String> = self.with(|c| c.smembers(Self::ROOMS))?;
        let mut rooms = Vec::new();
        for name in distinct(names) {
            let users: usize = self.with(|c| c.hlen(Self::members_key(&name)))?;
            rooms.push(json!({ "name": name, "users": users }));
        }
        Ok(rooms)
    }

    fn try_join(
        &mut self,
        app: &AppHandle,
        room: &str,
        member: SocketId,
        name: &str,
    ) -> redis::RedisResult<Result<Joined, String>> {
        use redis::Commands;
        let (known, count): (bool, usize) =
            self.with(|c| Ok((c.sismember(Self::ROOMS, room)?, c.scard(Self::ROOMS)?)))?;
        if !known && count >= MAX_ROOMS {
            return Ok(Err("too many rooms".into()));
        }
        let history: Vec<String> = self.with(|c| {
            c.sadd::<_, _, ()>(Self::ROOMS, room)?;
            c.hset::<_, _, _, ()>(Self::members_key(room), member.to_string(), name)?;
            c.lrange(Self::history_key(room), 0, -1)
        })?;
        let history = history.iter().filter_map(|said| serde_json::from_str(said).ok()).collect();
        Ok(Ok(Joined { history, users: self.users(app, room)?, rooms: self.rooms()? }))
    }
}

#[cfg(feature = "redis")]
impl Store for Shared {
    fn join(&mut self, app: &AppHandle, room: &str, member: SocketId, name: &str) -> Result<Joined, String> {
        self.try_join(app, room, member, name).unwrap_or_else(|e| Err(format!("the store failed: {e}")))
    }

    fn leave(&mut self, app: &AppHandle, room: &str, member: SocketId) -> (Vec<String>, Vec<Value>) {
        use redis::Commands;
        let _ = self.with(|c| c.hdel::<_, _, ()>(Self::members_key(room), member.to_string()));
        (self.users(app, room).unwrap_or_default(), self.rooms().unwrap_or_default())
    }

    fn keep(&mut self, said: &Said) {
        let Ok(text) = serde_json::to_string(said) else { return };
        let key = Self::history_key(&said.room);
        let kept = self.with(|c| redis::pipe().rpush(&key, &text).ltrim(&key, -(HISTORY as isize), -1).query::<()>(c));
        if let Err(e) = kept {
            eprintln!("chat: history not kept: {e}");
        }
    }
}

/// Work for the store's thread.
type Job = Box<dyn FnOnce(&mut dyn Store, &AppHandle) + Send>;

/// The store's thread's inbox: each job with the app it works for (the
/// handle of the request that sent it, so the thread needs none of its own).
type Jobs = Sender<(AppHandle, Job)>;

/// Runs jobs against the store, one at a time, off the workers. It is started
/// before the app listens: a request that arrives with the upgrade finds it.
fn store_thread(mut store: Box<dyn Store>) -> Jobs {
    let (jobs, inbox) = mpsc::channel::<(AppHandle, Job)>();
    std::thread::spawn(move || {
        for (app, job) in inbox {
            job(store.as_mut(), &app);
        }
    });
    jobs
}

/// Hands `job` to the store's thread. The thread lives as long as the
/// process, so the job is never dropped unanswered.
fn submit(req: &Request<'_>, jobs: &Jobs, job: Job) {
    let _ = jobs.send((req.app().clone(), job));
}

/// Where a socket is: stored on the socket with `req.set_shared`, and
/// restored with it when the socket resumes, on whichever server.
#[derive(Clone, Serialize, Deserialize)]
struct Seat {
    room: String,
    name: String,
}

// Owned strings: a `&str` cannot hold text the client wrote with JSON escapes
// (`\"`, `\n`, `\u00e9`, …), and every JSON encoder writes some.
#[derive(Deserialize)]
struct Join {
    room: String,
    name: String,
}

#[derive(Deserialize)]
struct Say {
    room: String,
    text: String,
}

#[derive(Deserialize)]
struct Typing {
    room: String,
}

fn valid_room(room: &str) -> bool {
    (1..=MAX_ROOM).contains(&room.len()) && room.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// Takes the socket out of its room (if it is in one) and tells everyone.
fn leave_room(req: &mut Request<'_>, jobs: &Jobs) {
    let Some(seat) = req.get_shared::<Seat>("seat") else { return };
    req.remove("seat");
    req.leave(&format!("#{}", seat.room));
    leave_store(req, jobs, seat);
}

/// Takes the socket's member out of the store's room and tells everyone.
fn leave_store(req: &Request<'_>, jobs: &Jobs, seat: Seat) {
    let member = req.socket_id();
    submit(
        req,
        jobs,
        Box::new(move |store, app| {
            let (users, rooms) = store.leave(app, &seat.room, member);
            let presence = json!({ "room": seat.room, "users": users, "left": seat.name, "rooms": rooms });
            let _ = app.broadcast("/chat/presence", &presence, BroadcastOpts::all().except(member));
        }),
    );
}

/// The chat app, its handlers handing the store's work to `jobs`.
fn chat_app(jobs: Jobs) -> App {
    let mut app = App::new();
    let metrics = app.metrics();
    let probes = app.probes();
    app.on_http(move |request| match request.path() {
        "/" | "/index.html" => Some(HttpResponse::new(200, "text/html; charset=utf-8", PAGE)),
        "/metrics" => Some(metrics.http_response()),
        "/emitws.js" => Some(HttpResponse::new(200, "text/javascript; charset=utf-8", CLIENT)),
        "/healthz" | "/readyz" => probes.answer(request.path()),
        _ => Some(HttpResponse::new(404, "text/plain", "not found")),
    });
    app.route("/chat");

    let mut chat = app.ns("/chat");
    let queue = jobs.clone();
    chat.on("/join", move |req| {
        let Some(Join { room, name }) = req.expect_data::<Join>() else { return };
        let name = name.trim().to_string();
        if !valid_room(&room) || name.is_empty() || name.chars().count() > MAX_NAME {
            return req
                .reply_err("bad_request", "a room is 1-32 ASCII letters, digits, - or _; a name 1-24 characters");
        }
        // Joining the room it is in (a page back from a resume that could not
        // recover the room fetches it again) is no leave: the others see the
        // same user list, without "left" and "joined" again.
        if req.get_shared::<Seat>("seat").is_some_and(|seat| seat.room != room) {
            leave_room(req, &queue);
        }
        if let Err(error) = req.join(&format!("#{room}")) {
            return req.reply_err("forbidden", &error.to_string());
        }
        let _ = req.set_shared("seat", &Seat { room: room.clone(), name: name.clone() });
        let (reply, member) = (req.defer(), req.socket_id());
        submit(
            req,
            &queue,
            Box::new(move |store, app| match store.join(app, &room, member, &name) {
                Ok(joined) => {
                    let Joined { history, users, rooms } = &joined;
                    reply.reply(&json!({ "room": room, "history": history, "users": users, "rooms": rooms }));
                    announce_join(app, &room, &name, &joined, BroadcastOpts::all().except(member));
                }
                Err(why) => reply.reply_err("forbidden", &why),
            }),
        );
    });

    let queue = jobs.clone();
    chat.on("/say", move |req| {
        let Some(Say { room, text }) = req.expect_data::<Say>() else { return };
        let Some(seat) = req.get_shared::<Seat>("seat").filter(|seat| seat.room == room) else {
            return req.reply_err("forbidden", "join the room first");
        };
        let text = text.trim();
        if text.is_empty() || text.chars().count() > MAX_TEXT {
            return req.reply_err("bad_request", "a message is 1-2000 characters");
        }
        let said = Said { room: seat.room.clone(), user: seat.name.clone(), text: text.into(), ts: now_ms() };
        let _ = req.broadcast("/chat/message", &said, BroadcastOpts::to(&format!("#{}", said.room)).include_self());
        req.reply(&true);
        submit(req, &queue, Box::new(move |store, _| store.keep(&said)));
    });

    chat.on("/typing", |req| {
        let Some(Typing { room }) = req.expect_data::<Typing>() else { return };
        let Some(seat) = req.get_shared::<Seat>("seat").filter(|seat| seat.room == room) else { return };
        let typing = json!({ "room": seat.room, "user": seat.name });
        let _ = req.broadcast("/chat/typing", &typing, BroadcastOpts::to(&format!("#{room}")));
    });

    // A resumed socket is back in its room (restored with its seat) but not
    // in the store, which it left at its disconnect: it is put back, and
    // told who is there now (presence changes while it was away went to
    // everyone, and are not replayed).
    let queue = jobs.clone();
    app.on("@connection", move |req| {
        let Some(Seat { room, name }) = req.get_shared::<Seat>("seat").filter(|_| req.resumed()) else { return };
        let member = req.socket_id();
        submit(
            req,
            &queue,
            Box::new(move |store, app| match store.join(app, &room, member, &name) {
                Ok(joined) => announce_join(app, &room, &name, &joined, BroadcastOpts::all()),
                Err(why) => eprintln!("chat: {name} resumed but is not back in #{room}: {why}"),
            }),
        );
    });

    // The member leaves the store either way, so the others see it gone while
    // it is away (nothing tells the app when a kept session expires). A
    // socket whose session is kept for a resume keeps its seat and its room:
    // its state is kept as this handler leaves it.
    app.on("@disconnect", move |req| {
        let resumable = req.data::<Value>().is_ok_and(|data| data["resumable"] == true);
        match req.get_shared::<Seat>("seat").filter(|_| resumable) {
            Some(seat) => leave_store(req, &jobs, seat),
            None => leave_room(req, &jobs),
        }
    });
    app
}

/// Tells `to` who is in `room` now that `name` has joined it.
fn announce_join(app: &AppHandle, room: &str, name: &str, joined: &Joined, to: BroadcastOpts) {
    let presence = json!({ "room": room, "users": joined.users, "joined": name, "rooms": joined.rooms });
    let _ = app.broadcast("/chat/presence", &presence, to);
}

fn usage() -> ! {
    eprintln!("usage: chat [--addr HOST:PORT] [--redis URL [--redis-ca FILE] (feature redis)]");
    std::process::exit(2);
}

/// Serves the chat on `addr`: alone, or as one node of a cluster that shares
/// `redis`. Everything is in place before the port opens.
pub fn serve(addr: &str, redis: Option<&str>) -> Result<emitws::app::Running, Box<dyn std::error::Error>> {
    serve_with_ca(addr, redis, None)
}

/// [`serve`], trusting the CA certificates of the PEM file `redis_ca` for a
/// `rediss://` Redis.
pub fn serve_with_ca(
    addr: &str,
    redis: Option<&str>,
    redis_ca: Option<&std::path::Path>,
) -> Result<emitws::app::Running, Box<dyn std::error::Error>> {
    #[cfg(feature = "redis")]
    let adapter = match redis {
        Some(url) => {
            let options = emitws::cluster::RedisOptions::default();
            let options = match redis_ca {
                Some(ca) => options.ca_file(ca),
                None => options,
            };
            Some(emitws::cluster::RedisAdapter::new(url, options)?)
        }
        None => None,
    };
    #[cfg(feature = "redis")]
    let shared = adapter
        .as_ref()
        .map(|adapter| Box::new(Shared { link: adapter.link().clone(), connection: None }) as Box<dyn Store>);
    #[cfg(not(feature = "redis"))]
    let shared: Option<Box<dyn Store>> = {
        let _ = (redis, redis_ca);
        None
    };
    let store = shared.unwrap_or_else(|| {
        let mut memory = Memory::default();
        memory.0.insert("general".into(), Room::default());
        Box::new(memory)
    });
    let mut app = chat_app(store_thread(store));
    app.resume_window(Some(RESUME_WINDOW));
    // Resumed sockets get the messages they missed from the rooms' history:
    // this server's memory alone, Redis's in a cluster (any node recovers
    // them). Typing events are kept too (they go to the room alone); the
    // page ignores replayed ones.
    app.history("#*", History::new(HISTORY, RESUME_WINDOW));
    #[cfg(feature = "redis")]
    if let Some(adapter) = adapter {
        app.adapter(adapter);
    }
    Ok(app.listen(addr)?)
}

#[allow(dead_code)] // tests/chat_cluster.rs includes this file for serve()
fn main() -> Result<(), Box<dyn std::error::Error>> {
    logs::init();
    let mut args = std::env::args().skip(1);
    let mut addr = "127.0.0.1:3000".to_string();
    let mut redis: Option<String> = None;
    let mut redis_ca: Option<std::path::PathBuf> = None;
    while let Some(arg) = args.next() {
        match (arg.as_str(), args.next()) {
            ("--addr", Some(value)) => addr = value,
            ("--redis", Some(value)) if cfg!(feature = "redis") => redis = Some(value),
            ("--redis-ca", Some(value)) if cfg!(feature = "redis") => redis_ca = Some(value.into()),
            _ => usage(),
        }
    }
    if redis_ca.is_some() && redis.is_none() {
        usage();
    }
    let running = serve_with_ca(&addr, redis.as_deref(), redis_ca.as_deref())?;
    println!("chat on http://{}/", running.local_addr());
    running.stop_on_signals()?;
    running.join();
    Ok(())
}
