//! The chat demo: a web page and its WebSocket endpoint on one port.
//!
//! `cargo run --release --example chat`, then open http://127.0.0.1:3000/ in
//! two browser windows. Rooms, a user list, a typing indicator, recent
//! history per room (in memory), and the connection state with reconnects,
//! all on the event framework (`emitws::app`) and the JavaScript client
//! (clients/js/emitws.js, served as /emitws.js).
//!
//! `--addr HOST:PORT` changes the address (port 0 picks a free one; the
//! address is printed either way).
//!
//! Events (all under the `/chat` namespace):
//! - request `/join {room, name}` → `{room, history, users, rooms}`; everyone
//!   gets `/presence {room, users, joined, rooms}`
//! - request `/say {room, text}` → `true`; the room gets `/message {room, user, text, ts}`
//! - event `/typing {room}`; the room gets `/typing {room, user}`
//! - a socket that leaves its room or disconnects: everyone gets `/presence {room, users, left, rooms}`

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use emitws::app::{App, BroadcastOpts, Request};
use emitws::runtime::{ConnId, HttpResponse};
use serde::{Deserialize, Serialize};
use serde_json::json;

const PAGE: &str = include_str!("index.html");
const CLIENT: &str = include_str!("../../clients/js/emitws.js");

/// Messages kept per room for people who join later.
const HISTORY: usize = 50;
/// Rooms kept at most; empty rooms beyond it are forgotten, and new ones refused.
const MAX_ROOMS: usize = 200;
const MAX_NAME: usize = 24;
const MAX_ROOM: usize = 32;
const MAX_TEXT: usize = 2000;

#[derive(Clone, Serialize)]
struct Said {
    room: String,
    user: String,
    text: String,
    ts: u64,
}

#[derive(Default)]
struct Room {
    members: Vec<(ConnId, String)>,
    history: VecDeque<Said>,
}

impl Room {
    /// Member names, each once, sorted.
    fn users(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.members.iter().map(|(_, name)| name.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        names
    }
}

/// Every room, shared by all workers.
#[derive(Default)]
struct Rooms(BTreeMap<String, Room>);

impl Rooms {
    fn summary(&self) -> Vec<serde_json::Value> {
        self.0.iter().map(|(name, room)| json!({ "name": name, "users": room.users().len() })).collect()
    }

    /// Removes a socket from its room; the room's name and the socket's name if it was there.
    fn remove(&mut self, id: ConnId, room: &str) -> Option<String> {
        let members = &mut self.0.get_mut(room)?.members;
        let at = members.iter().position(|(member, _)| *member == id)?;
        let (_, name) = members.remove(at);
        if self.0.len() > MAX_ROOMS {
            self.0.retain(|name, room| name == "general" || !room.members.is_empty());
        }
        Some(name)
    }
}

/// Where a socket is: stored on the socket with `req.set`.
struct Seat {
    room: String,
    name: String,
}

#[derive(Deserialize)]
struct Join<'a> {
    room: &'a str,
    name: &'a str,
}

#[derive(Deserialize)]
struct Say<'a> {
    room: &'a str,
    text: &'a str,
}

#[derive(Deserialize)]
struct Typing<'a> {
    room: &'a str,
}

fn valid_room(room: &str) -> bool {
    (1..=MAX_ROOM).contains(&room.len()) && room.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

fn lock(rooms: &Mutex<Rooms>) -> MutexGuard<'_, Rooms> {
    rooms.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Takes the socket out of its room and tells everyone.
fn leave_room(req: &mut Request<'_>, rooms: &Mutex<Rooms>) {
    let Some(seat) = req.remove("seat").and_then(|seat| seat.downcast::<Seat>().ok()) else { return };
    req.leave(&format!("#{}", seat.room));
    let mut rooms = lock(rooms);
    if rooms.remove(req.id(), &seat.room).is_some() {
        let users = rooms.0.get(&seat.room).map(Room::users).unwrap_or_default();
        let presence = json!({ "room": seat.room, "users": users, "left": seat.name, "rooms": rooms.summary() });
        drop(rooms);
        let _ = req.broadcast("/chat/presence", &presence, BroadcastOpts::all());
    }
}

fn chat_app() -> App {
    let rooms = Arc::new(Mutex::new(Rooms::default()));
    lock(&rooms).0.insert("general".into(), Room::default());
    let mut app = App::new();
    app.on_http(|request| match request.path() {
        "/" | "/index.html" => Some(HttpResponse::new(200, "text/html; charset=utf-8", PAGE)),
        "/emitws.js" => Some(HttpResponse::new(200, "text/javascript; charset=utf-8", CLIENT)),
        "/healthz" => Some(HttpResponse::new(200, "text/plain", "ok")),
        _ => Some(HttpResponse::new(404, "text/plain", "not found")),
    });
    app.route("/chat");

    let mut chat = app.ns("/chat");
    let state = rooms.clone();
    chat.on("/join", move |req| {
        let Some(Join { room, name }) = req.expect_data::<Join>() else { return };
        let name = name.trim();
        if !valid_room(room) || name.is_empty() || name.chars().count() > MAX_NAME {
            return req.reply_err("bad_request", "a room is 1-32 letters, digits, - or _; a name 1-24 characters");
        }
        let (room, name) = (room.to_string(), name.to_string());
        leave_room(req, &state);
        let mut rooms = lock(&state);
        if !rooms.0.contains_key(&room) && rooms.0.len() >= MAX_ROOMS {
            return req.reply_err("forbidden", "too many rooms");
        }
        if let Err(error) = req.join(&format!("#{room}")) {
            return req.reply_err("forbidden", &error.to_string());
        }
        rooms.0.entry(room.clone()).or_default().members.push((req.id(), name.clone()));
        let summary = rooms.summary();
        let joined = &rooms.0[&room];
        let users = joined.users();
        req.reply(&json!({ "room": room, "history": joined.history, "users": users, "rooms": summary }));
        let presence = json!({ "room": room, "users": users, "joined": name, "rooms": summary });
        drop(rooms);
        let _ = req.broadcast("/chat/presence", &presence, BroadcastOpts::all());
        req.set("seat", Seat { room, name });
    });

    let state = rooms.clone();
    chat.on("/say", move |req| {
        let Some(Say { room, text }) = req.expect_data::<Say>() else { return };
        let Some(seat) = req.get::<Seat>("seat").filter(|seat| seat.room == room) else {
            return req.reply_err("forbidden", "join the room first");
        };
        let text = text.trim();
        if text.is_empty() || text.chars().count() > MAX_TEXT {
            return req.reply_err("bad_request", "a message is 1-2000 characters");
        }
        let said = Said { room: seat.room.clone(), user: seat.name.clone(), text: text.into(), ts: now_ms() };
        if let Some(room) = lock(&state).0.get_mut(&said.room) {
            if room.history.len() == HISTORY {
                room.history.pop_front();
            }
            room.history.push_back(said.clone());
        }
        let _ = req.broadcast("/chat/message", &said, BroadcastOpts::to(&format!("#{}", said.room)).include_self());
        req.reply(&true);
    });

    chat.on("/typing", |req| {
        let Some(Typing { room }) = req.expect_data::<Typing>() else { return };
        let Some(seat) = req.get::<Seat>("seat").filter(|seat| seat.room == room) else { return };
        let typing = json!({ "room": seat.room, "user": seat.name });
        let _ = req.broadcast("/chat/typing", &typing, BroadcastOpts::to(&format!("#{room}")));
    });

    app.on("@disconnect", move |req| leave_room(req, &rooms));
    app
}

fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let mut addr = "127.0.0.1:3000".to_string();
    while let Some(arg) = args.next() {
        match (arg.as_str(), args.next()) {
            ("--addr", Some(value)) => addr = value,
            _ => {
                eprintln!("usage: chat [--addr HOST:PORT]");
                std::process::exit(2);
            }
        }
    }
    let running = chat_app().listen(addr.as_str())?;
    println!("chat on http://{}/", running.local_addr());
    running.join();
    Ok(())
}
