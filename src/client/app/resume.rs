//! The event client's side of session resume (PROTOCOL.md §13): the URL and
//! request that resume a session (and the URL's metadata, §14), and the per-room positions that
//! deduplicate replayed broadcasts.

use std::collections::HashMap;

use serde_json::{json, Map, Value};

/// The query parameter that tells the server a `@resume` request follows the open.
const RESUME_PARAMETER: &str = "emitws_resume=1";

/// The system event of the resume request.
pub(crate) const RESUME_EVENT: &str = "@resume";

/// `url` with `emitws_resume=1` added to its query, the application's own
/// parameters untouched.
pub(crate) fn resume_url(url: &str) -> String {
    with_parameter(url, RESUME_PARAMETER)
}

/// `url` with `parameter` (`name=value`, encoded) added to its query.
fn with_parameter(url: &str, parameter: &str) -> String {
    let separator = match url.find('?') {
        None => "?",
        Some(_) if url.ends_with(['?', '&']) => "",
        Some(_) => "&",
    };
    format!("{url}{separator}{parameter}")
}

/// `url` with the connection's metadata added to its query as
/// `emitws_meta=<JSON, percent-encoded>` (PROTOCOL.md §14).
pub(crate) fn meta_url(url: &str, meta: &Value) -> String {
    let mut encoded = String::from("emitws_meta=");
    for byte in meta.to_string().bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => encoded.push(char::from(byte)),
            _ => encoded.push_str(&format!("%{byte:02X}")),
        }
    }
    with_parameter(url, &encoded)
}

/// Where the client is in one room's stream: the epoch and the highest offset received.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Position {
    epoch: String,
    offset: u64,
}

impl Position {
    /// The `{"epoch", "offset"}` of a delivery's fourth element or of a room in the `@resume` reply.
    fn read(value: &Value) -> Option<(&str, u64)> {
        Some((value.get("epoch")?.as_str()?, value.get("offset")?.as_u64()?))
    }
}

/// Per room with history, the position the client reached: what a resume
/// asks for, and what tells a replayed duplicate from a new broadcast.
#[derive(Debug, Default)]
pub(crate) struct Positions {
    rooms: HashMap<String, Position>,
}

impl Positions {
    /// Takes a delivery's fourth element (`{"room", "offset", "epoch"}`) and
    /// says whether the delivery is new. A delivery of the kept epoch at or
    /// below the kept offset is a duplicate (a replay overlapping what
    /// already came); any other moves the room's position to its own. A
    /// delivery without a well-formed element is not tracked, and is new.
    pub(crate) fn accept(&mut self, meta: &Value) -> bool {
        let Some(room) = meta.get("room").and_then(Value::as_str) else { return true };
        let Some((epoch, offset)) = Position::read(meta) else { return true };
        match self.rooms.get_mut(room) {
            Some(kept) if kept.epoch == epoch => {
                if offset <= kept.offset {
                    return false;
                }
                kept.offset = offset;
            }
            Some(kept) => *kept = Position { epoch: epoch.to_string(), offset },
            None => {
                self.rooms.insert(room.to_string(), Position { epoch: epoch.to_string(), offset });
            }
        }
        true
    }

    /// Takes the reply to `@resume` (`{"resumed", "rooms", …}`). Not resumed:
    /// every position is forgotten (the socket is a new one). Resumed: each
    /// room the reply gives a position for takes it (the stream's latest
    /// offset, which a broadcast that left this socket out may have moved),
    /// never going back within one epoch; a room without one is forgotten,
    /// so that the next resume lets the server start it where it was.
    pub(crate) fn resumed(&mut self, reply: &Value) {
        if reply.get("resumed") != Some(&Value::Bool(true)) {
            self.rooms.clear();
            return;
        }
        let Some(rooms) = reply.get("rooms").and_then(Value::as_object) else { return };
        for (room, outcome) in rooms {
            match Position::read(outcome) {
                Some((epoch, offset)) => match self.rooms.get_mut(room) {
                    Some(kept) if kept.epoch == epoch => kept.offset = kept.offset.max(offset),
                    _ => {
                        self.rooms.insert(room.clone(), Position { epoch: epoch.to_string(), offset });
                    }
                },
                None => {
                    self.rooms.remove(room);
                }
            }
        }
    }

    /// Forgets every room: the session they belonged to is over.
    pub(crate) fn clear(&mut self) {
        self.rooms.clear();
    }

    /// The `@resume` request with the session's `token` and the kept positions.
    pub(crate) fn request(&self, id: u64, token: &str) -> String {
        let rooms: Map<String, Value> = self
            .rooms
            .iter()
            .map(|(room, at)| (room.clone(), json!({"epoch": at.epoch, "offset": at.offset})))
            .collect();
        json!([super::REQUEST, id, RESUME_EVENT, {"token": token, "rooms": rooms}]).to_string()
    }
}

/// The outcome reported when the server answered `@resume` with an error,
/// or admitted the socket without answering it: nothing was resumed.
pub(crate) fn not_resumed(socket: &Value) -> Value {
    json!({"resumed": false, "socket": socket, "rooms": {}, "direct": {"recovered": false}})
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delivery(room: &str, epoch: &str, offset: u64) -> Value {
        json!({"room": room, "epoch": epoch, "offset": offset})
    }

    #[test]
    fn duplicates_of_the_kept_epoch_are_dropped_and_another_epoch_resets_the_room() {
        let mut positions = Positions::default();
        assert!(positions.accept(&delivery("#a", "e1", 4)));
        assert!(positions.accept(&delivery("#a", "e1", 5)));
        assert!(!positions.accept(&delivery("#a", "e1", 5)), "the same offset again");
        assert!(!positions.accept(&delivery("#a", "e1", 3)), "an older one");
        assert!(positions.accept(&delivery("#b", "e1", 1)), "rooms are apart");
        assert!(positions.accept(&delivery("#a", "e2", 1)), "a new epoch starts again");
        assert!(!positions.accept(&delivery("#a", "e2", 1)));
        // Not tracked: no element, or one without a room, an epoch or an integer offset.
        for meta in [json!(null), json!({"room": "#a"}), json!({"room": "#a", "epoch": "e2", "offset": -1})] {
            assert!(positions.accept(&meta), "{meta}");
            assert!(positions.accept(&meta), "{meta}");
        }
        let request: Value = serde_json::from_str(&positions.request(9, "t")).unwrap();
        let rooms = json!({"#a": {"epoch": "e2", "offset": 1}, "#b": {"epoch": "e1", "offset": 1}});
        assert_eq!(request, json!([1, 9, "@resume", {"token": "t", "rooms": rooms}]));
    }

    #[test]
    fn the_resume_reply_moves_positions_forward_or_forgets_them() {
        let mut positions = Positions::default();
        positions.accept(&delivery("#a", "e1", 7));
        positions.accept(&delivery("#b", "e1", 2));
        positions.accept(&delivery("#c", "e1", 2));
        positions.resumed(&json!({"resumed": true, "rooms": {
            "#a": {"recovered": true, "epoch": "e1", "offset": 5},
            "#b": {"recovered": false, "epoch": "e9", "offset": 40},
            "#c": {"recovered": false},
            "#d": {"recovered": true, "epoch": "e1", "offset": 3},
        }}));
        let request: Value = serde_json::from_str(&positions.request(1, "t")).unwrap();
        let rooms = json!({
            "#a": {"epoch": "e1", "offset": 7},
            "#b": {"epoch": "e9", "offset": 40},
            "#d": {"epoch": "e1", "offset": 3},
        });
        assert_eq!(request[3]["rooms"], rooms);
        assert!(!positions.accept(&delivery("#b", "e9", 40)));
        positions.resumed(&json!({"resumed": false, "rooms": {"#a": {"recovered": false}}}));
        assert_eq!(serde_json::from_str::<Value>(&positions.request(2, "t")).unwrap()[3]["rooms"], json!({}));
    }

    #[test]
    fn the_resume_parameter_is_added_to_the_query() {
        assert_eq!(
            meta_url("ws://h/?a=1", &json!({"v": "1 é&"})),
            "ws://h/?a=1&emitws_meta=%7B%22v%22%3A%221%20%C3%A9%26%22%7D"
        );
        assert_eq!(resume_url("ws://h/"), "ws://h/?emitws_resume=1");
        assert_eq!(resume_url("ws://h"), "ws://h?emitws_resume=1");
        assert_eq!(resume_url("ws://h/chat?room=a&t=x"), "ws://h/chat?room=a&t=x&emitws_resume=1");
        assert_eq!(resume_url("ws://h/chat?"), "ws://h/chat?emitws_resume=1");
        assert_eq!(resume_url("ws://h/?a=1&"), "ws://h/?a=1&emitws_resume=1");
    }
}
