//! Room history (PROTOCOL.md §13): each room given a [`History`] keeps a
//! stream of its recent broadcasts, numbered by offset, so that a resumed
//! socket gets back the ones it missed.
//!
//! One stream per room, each behind its own lock: a broadcast takes its
//! offset, is kept and is handed to the workers under that lock, so every
//! socket sees a room's broadcasts in offset order, and a recovery's replay
//! and join happen between two broadcasts, never across one. Unrelated rooms
//! share only the map's read lock, for the lookup.
//!
//! Lock order: the map, then a stream, then the group registry (a broadcast
//! reads it to find the workers; a recovery's join writes it). Nothing takes
//! the map while holding a stream.
//!
//! With an adapter that keeps history (a cluster's), the adapter numbers a
//! room's broadcasts and every node gets them back from it in one order
//! ([`AppHandle::deliver_history`]): each node's streams are then mirrors of
//! the cluster's, reaching back only as far as this node has followed the
//! room, and a recovery fills in the rest from what the adapter keeps
//! ([`AppHandle::prefetch_history`], [`Backfill`]).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::adapter::StoredHistory;
use super::handle::AppHandle;
use super::locks::{lock, read, write};
use super::socket_id::SocketId;
use crate::runtime::SharedFrame;

/// How much history a room keeps: its last `size` broadcasts, each for at
/// most `ttl`. Given to rooms with [`App::history`](super::App::history).
///
/// ```
/// use std::time::Duration;
/// use emitws::app::{App, History};
///
/// let mut app = App::new();
/// // The last 100 messages of the lobby, and of every `#game:…` room, for 2 minutes.
/// app.history("#lobby", History::new(100, Duration::from_secs(120)));
/// app.history("#game:*", History::new(100, Duration::from_secs(120)));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct History {
    size: usize,
    ttl: Duration,
}

impl History {
    /// The most broadcasts one room may keep.
    pub const MAX_SIZE: usize = 100_000;
    /// The longest a broadcast may be kept.
    pub const MAX_TTL: Duration = Duration::from_secs(24 * 60 * 60);

    /// Keeps the last `size` broadcasts of a room, each for `ttl`.
    ///
    /// # Panics
    ///
    /// If `size` is 0 or above [`MAX_SIZE`](Self::MAX_SIZE), or `ttl` is zero
    /// or above [`MAX_TTL`](Self::MAX_TTL): a setup mistake, found at start.
    pub fn new(size: usize, ttl: Duration) -> History {
        assert!((1..=Self::MAX_SIZE).contains(&size), "History::new: size {size} is not in 1..={}", Self::MAX_SIZE);
        assert!(!ttl.is_zero() && ttl <= Self::MAX_TTL, "History::new: ttl {ttl:?} is not in (0, {:?}]", Self::MAX_TTL);
        History { size, ttl }
    }

    /// How many broadcasts a room keeps.
    pub fn size(&self) -> usize {
        self.size
    }

    /// How long a broadcast is kept.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }
}

/// The rooms a [`History`] applies to: one room, or every room whose name
/// starts with a prefix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum RoomPattern {
    Exact(Box<str>),
    Prefix(Box<str>),
}

impl RoomPattern {
    /// `#name` or `#prefix*`.
    ///
    /// # Errors
    ///
    /// What is wrong with `pattern`: not a room (tags have no history), or a
    /// `*` elsewhere than at the end.
    pub fn parse(pattern: &str) -> Result<RoomPattern, String> {
        if !pattern.starts_with('#') {
            return Err(format!("history pattern {pattern:?}: history is for rooms (`#name` or `#prefix*`), not tags"));
        }
        if pattern.len() > 128 {
            return Err(format!("history pattern {pattern:?}: longer than a room name (128 bytes)"));
        }
        match pattern.strip_suffix('*') {
            _ if pattern[..pattern.len() - 1].contains('*') => {
                Err(format!("history pattern {pattern:?}: `*` may only end a pattern"))
            }
            Some(prefix) => Ok(RoomPattern::Prefix(prefix.into())),
            None if pattern.len() == 1 => Err(format!("history pattern {pattern:?}: the room name is empty")),
            None => Ok(RoomPattern::Exact(pattern.into())),
        }
    }

    pub(crate) fn matches(&self, room: &str) -> bool {
        match self {
            RoomPattern::Exact(name) => **name == *room,
            RoomPattern::Prefix(prefix) => room.starts_with(&**prefix),
        }
    }
}

/// The history rules of an app, in the order given: the first match wins.
pub(crate) type HistoryRules = Vec<(RoomPattern, History)>;

/// The history of `room` under `rules`, if any.
pub(crate) fn history_of<'a>(rules: &'a HistoryRules, room: &str) -> Option<&'a History> {
    rules.iter().find(|(pattern, _)| pattern.matches(room)).map(|(_, history)| history)
}

/// Where a socket is in a room's stream: the epoch and the latest offset it has.
pub(crate) type Position = (Arc<str>, u64);

/// What a recovery found ([`AppHandle::recover`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Recovery {
    /// Every broadcast after the given offset was sent.
    pub recovered: bool,
    /// The room's stream now; `None` for a room without history.
    pub epoch: Option<Arc<str>>,
    /// The latest offset of the stream (0 without history, or before its first broadcast).
    pub offset: u64,
}

/// What a cluster's store holds of some rooms' streams, fetched for
/// recoveries ([`AppHandle::prefetch_history`]) to fill in what this node's
/// streams lack. Empty without an adapter that keeps history.
#[derive(Debug, Default)]
pub(crate) struct Backfill {
    rooms: HashMap<Box<str>, Arc<RoomBackfill>>,
}

/// One room's stream as the store had it.
#[derive(Debug)]
struct RoomBackfill {
    epoch: Arc<str>,
    /// The stream's latest offset then.
    latest: u64,
    /// Its kept broadcasts after the offset asked, oldest first.
    entries: Vec<Entry>,
}

impl Backfill {
    /// What an adapter read (`stored`, at `now`).
    fn new(stored: StoredHistory, now: Instant) -> Backfill {
        let rooms = stored
            .into_iter()
            .map(|(room, epoch, latest, kept)| {
                let entries = kept
                    .into_iter()
                    .map(|(offset, frame, except, age)| Entry {
                        frame: SharedFrame::text(&frame),
                        offset,
                        at: now.checked_sub(age).unwrap_or(now),
                        except: except.into(),
                    })
                    .collect();
                (room, Arc::new(RoomBackfill { epoch: epoch.into(), latest, entries }))
            })
            .collect();
        Backfill { rooms }
    }
}

/// One kept broadcast.
#[derive(Debug)]
struct Entry {
    frame: SharedFrame,
    offset: u64,
    at: Instant,
    /// The sockets it left out, on whichever node (an away socket left
    /// out by its public id is left out as that).
    except: Arc<[SocketId]>,
}

/// One room's stream.
#[derive(Debug)]
pub(crate) struct Stream {
    history: History,
    /// `None`: a mirror of a cluster's stream that has had no broadcast yet.
    epoch: Option<Arc<str>>,
    /// The latest offset given (0 before the first broadcast).
    offset: u64,
    /// When the stream was made or last written: once `ttl` has passed,
    /// every entry has expired.
    written: Instant,
    /// Offsets `offset - len + 1 ..= offset`, oldest first.
    entries: VecDeque<Entry>,
    /// What the cluster's store held when a recovery here last read it
    /// (a mirror's): the recoveries after it from the positions it serves
    /// need not read again, as when many sockets resume at once.
    filled: Option<Arc<RoomBackfill>>,
    /// Taken out of the map by a sweep: whoever locked it late looks again.
    removed: bool,
}

impl Stream {
    fn new(history: History, now: Instant, epoch: Option<Arc<str>>) -> Stream {
        Stream { history, epoch, offset: 0, written: now, entries: VecDeque::new(), filled: None, removed: false }
    }

    /// Whether the whole history has expired and nobody here is in the
    /// room: its stream is then lost (PROTOCOL.md §13, epoch).
    fn is_stale(&self, now: Instant, in_use: impl FnOnce() -> bool) -> bool {
        // Members are looked up only then: not on every broadcast.
        now.saturating_duration_since(self.written) >= self.history.ttl && !in_use()
    }

    /// Drops the entries older than the ttl.
    fn expire(&mut self, now: Instant) {
        while self.entries.front().is_some_and(|e| now.saturating_duration_since(e.at) >= self.history.ttl) {
            self.entries.pop_front();
        }
    }

    /// Gives the next offset to a broadcast: `encode` writes its frame for
    /// (epoch, offset), which is kept, then handed to `route`. Nothing is
    /// kept or routed if `encode` fails.
    pub fn append<E>(
        &mut self,
        now: Instant,
        encode: impl FnOnce(&str, u64) -> Result<SharedFrame, E>,
        except: Arc<[SocketId]>,
        route: impl FnOnce(&SharedFrame),
    ) -> Result<(), E> {
        let offset = self.offset + 1;
        let frame = encode(self.epoch.get_or_insert_with(new_epoch), offset)?;
        self.push(Entry { frame, offset, at: now, except }, route);
        Ok(())
    }

    /// Keeps `entry`, the stream's next, and hands it to `route`.
    fn push(&mut self, entry: Entry, route: impl FnOnce(&SharedFrame)) {
        self.offset = entry.offset;
        self.written = entry.at;
        if self.entries.len() == self.history.size {
            self.entries.pop_front();
        }
        route(&entry.frame);
        self.entries.push_back(entry);
    }

    /// Takes a broadcast the cluster numbered (see
    /// [`AppHandle::deliver_history`]) into this mirror and hands it to
    /// `route`; a duplicate (an offset not above the latest of the same
    /// epoch) is neither kept nor routed.
    pub fn take(
        &mut self,
        epoch: &str,
        offset: u64,
        frame: SharedFrame,
        now: Instant,
        except: Arc<[SocketId]>,
        route: impl FnOnce(&SharedFrame),
    ) {
        let entry = Entry { frame, offset, at: now, except };
        if self.epoch.as_deref() == Some(epoch) {
            if entry.offset <= self.offset {
                return;
            }
            if entry.offset != self.offset + 1 {
                self.entries.clear(); // a gap: the mirror reaches back from here only
            }
        } else {
            self.epoch = Some(epoch.into()); // the cluster's stream started anew
            self.entries.clear();
            self.filled = None;
        }
        self.push(entry, route);
    }

    /// Whether every entry after `offset` of `epoch` is here (this node's
    /// own, or kept from a read of the cluster's store).
    fn serves(&self, epoch: &str, offset: u64, now: Instant) -> bool {
        self.known(now).is_some_and(|(known, latest, entries)| {
            let first = entries.first().map_or(latest + 1, |e| e.offset);
            *known == *epoch && offset <= latest && offset + 1 >= first
        })
    }

    /// What is known of the stream: its epoch, latest offset and the
    /// entries that run unbroken up to it, oldest first. These are this
    /// node's entries, after those read from the cluster's store older than
    /// them (of the same epoch), or what was read alone when this node has
    /// had no broadcast of the room yet. `None`: nothing is known.
    fn known(&self, now: Instant) -> Option<(Arc<str>, u64, Vec<&Entry>)> {
        let (epoch, latest, older) = match (&self.epoch, self.filled.as_deref()) {
            (Some(epoch), Some(fill)) if *epoch == fill.epoch => (epoch.clone(), self.offset, &fill.entries[..]),
            (Some(epoch), _) => (epoch.clone(), self.offset, &[][..]),
            (None, Some(fill)) => (fill.epoch.clone(), fill.latest, &fill.entries[..]),
            (None, None) => return None,
        };
        // The backfill fills in below this node's entries (none: below what it read).
        let first_here = self.entries.front().map_or(latest + 1, |e| e.offset);
        // The history reaches back `size` broadcasts, and for `ttl`.
        let reach = latest.saturating_sub(self.history.size as u64);
        let older = older.iter().filter(|e| {
            e.offset > reach && e.offset < first_here && now.saturating_duration_since(e.at) < self.history.ttl
        });
        let mut known: Vec<&Entry> = older.chain(&self.entries).collect();
        // Only the entries that run unbroken up to the latest count.
        let mut unbroken = known.len();
        while unbroken > 0 && known[unbroken - 1].offset == latest - (known.len() - unbroken) as u64 {
            unbroken -= 1;
        }
        known.drain(..unbroken);
        Some((epoch, latest, known))
    }

    /// See [`AppHandle::recover`]. A `backfill` is kept for the recoveries after this one.
    fn recover(
        &mut self,
        since: Option<(&str, u64)>,
        backfill: Option<&Arc<RoomBackfill>>,
        was: &[SocketId],
        now: Instant,
        mut send: impl FnMut(&SharedFrame),
        join: impl FnOnce(),
    ) -> Recovery {
        if let Some(fill) = backfill {
            self.filled = Some(fill.clone());
        }
        let Some((epoch, latest, known)) = self.known(now) else {
            join();
            return Recovery { recovered: false, epoch: None, offset: 0 };
        };
        let first = known.first().map_or(latest + 1, |e| e.offset);
        let after = since.filter(|(since, offset)| *since == &*epoch && *offset <= latest && offset + 1 >= first);
        if let Some((_, offset)) = after {
            let missed = known.iter().filter(|e| e.offset > offset && !e.except.iter().any(|id| was.contains(id)));
            missed.for_each(|entry| send(&entry.frame));
        }
        join();
        Recovery { recovered: after.is_some(), epoch: Some(epoch), offset: latest }
    }
}

/// Every room's stream.
#[derive(Debug, Default)]
pub(crate) struct RoomStreams {
    rooms: RwLock<Rooms>,
    /// The streams mirror a cluster's: a new one has no epoch until its
    /// first broadcast comes (else it gets a new epoch at once).
    mirror: bool,
}

#[derive(Debug, Default)]
struct Rooms {
    streams: HashMap<Box<str>, Arc<Mutex<Stream>>>,
    /// How many streams the last sweep left: the next sweep comes when there
    /// are twice as many, so sweeping costs O(1) per stream made.
    after_sweep: usize,
}

/// Below this many streams, none is swept.
const SWEEP_FROM: usize = 64;

impl RoomStreams {
    /// No stream yet; `mirror`: see [`RoomStreams::mirror`].
    pub fn new(mirror: bool) -> RoomStreams {
        RoomStreams { rooms: RwLock::default(), mirror }
    }

    /// Whether the streams mirror a cluster's (the adapter keeps history).
    pub fn is_mirror(&self) -> bool {
        self.mirror
    }

    fn new_stream(&self, history: History, now: Instant) -> Stream {
        Stream::new(history, now, (!self.mirror).then(new_epoch))
    }

    /// Runs `f` on `room`'s stream, under its lock: made if the room has
    /// none, expired entries dropped, and started anew (a new epoch) if it
    /// is stale. `in_use` says whether a room has members on this node.
    pub fn with_stream<R>(
        &self,
        room: &str,
        history: &History,
        now: Instant,
        in_use: impl Fn(&str) -> bool,
        f: impl FnOnce(&mut Stream) -> R,
    ) -> R {
        loop {
            let found = read(&self.rooms).streams.get(room).cloned();
            let stream = found.unwrap_or_else(|| self.make(room, history, now, &in_use));
            let mut stream = lock(&stream);
            if stream.removed {
                continue; // swept between the lookup and the lock
            }
            stream.expire(now);
            if stream.is_stale(now, || in_use(room)) {
                *stream = self.new_stream(*history, now);
            }
            return f(&mut stream);
        }
    }

    /// `room`'s stream, made if there is none, after sweeping the stale ones
    /// when there are many.
    fn make(&self, room: &str, history: &History, now: Instant, in_use: &impl Fn(&str) -> bool) -> Arc<Mutex<Stream>> {
        let mut rooms = write(&self.rooms);
        if let Some(stream) = rooms.streams.get(room) {
            return stream.clone(); // another thread made it first
        }
        if rooms.streams.len() >= (2 * rooms.after_sweep).max(SWEEP_FROM) {
            rooms.streams.retain(|room, stream| {
                // A stream locked right now is in use.
                let Ok(mut stream) = stream.try_lock() else { return true };
                stream.expire(now);
                let stale = stream.is_stale(now, || in_use(room));
                stream.removed = stale;
                !stale
            });
            rooms.after_sweep = rooms.streams.len();
        }
        let stream = Arc::new(Mutex::new(self.new_stream(*history, now)));
        rooms.streams.insert(room.into(), stream.clone());
        stream
    }

    /// How many streams are kept.
    #[cfg(test)]
    fn len(&self) -> usize {
        read(&self.rooms).streams.len()
    }
}

impl AppHandle {
    /// The history of `room`, if the app gave it one.
    pub(crate) fn history(&self, room: &str) -> Option<&History> {
        history_of(&self.0.setup.history, room)
    }

    /// Runs `f` under the lock of `room`'s stream at `now` (see [`RoomStreams::with_stream`]).
    pub(crate) fn with_stream<R>(
        &self,
        room: &str,
        history: &History,
        now: Instant,
        f: impl FnOnce(&mut Stream) -> R,
    ) -> R {
        let in_use = |room: &str| self.0.registry.size(room) > 0;
        self.0.streams.with_stream(room, history, now, in_use, f)
    }

    /// The position of `room`'s stream now, (epoch, latest offset), or
    /// `None` for a room without history: what a socket notes when it
    /// joins, to recover from later. Makes the stream if the
    /// room had none yet (offset 0), so that its first broadcasts are
    /// recoverable. With an adapter that keeps history, `None` too while
    /// this node has had no broadcast of the room: its position is then
    /// unknown here (asking the cluster's store would make a join wait for
    /// it), and the socket notes none.
    pub(crate) fn position(&self, room: &str) -> Option<(Arc<str>, u64)> {
        let history = self.history(room)?;
        self.with_stream(room, history, Instant::now(), |stream| Some((stream.epoch.clone()?, stream.offset)))
    }

    /// Recovers a socket's missed broadcasts of `room` under the room's
    /// lock. If `since` = (epoch, offset) is recoverable (the stream's
    /// epoch, and every entry after `offset` still kept and not expired),
    /// calls `send` with each entry after `offset`, oldest first, but those
    /// that left out any of `was` (the socket's connection when it was lost,
    /// and its public id: an away socket left out by its id is left out as
    /// that); then, in
    /// every case, calls `join`, still under the lock, so that no later
    /// broadcast of the room can reach the socket before the replay (a
    /// broadcast already on its way may arrive after it: the client drops
    /// the overlap by offset). Without `since` (the client listed no offset
    /// and there is no recorded one), and for a room without history, nothing
    /// is recovered. Entries of `backfill` (see [`prefetch_history`](Self::prefetch_history))
    /// fill in what the room's stream here lacks, and are kept for the recoveries after (a mirror's). Returns whether the replay was complete and the
    /// stream's epoch and latest offset.
    pub(crate) fn recover(
        &self,
        room: &str,
        since: Option<(&str, u64)>,
        backfill: &Backfill,
        was: &[SocketId],
        send: impl FnMut(&SharedFrame),
        join: impl FnOnce(),
    ) -> Recovery {
        match self.history(room) {
            Some(history) => {
                let now = Instant::now();
                let fill = backfill.rooms.get(room);
                self.with_stream(room, history, now, |stream| stream.recover(since, fill, was, now, send, join))
            }
            None => {
                join();
                Recovery { recovered: false, epoch: None, offset: 0 }
            }
        }
    }
}

impl AppHandle {
    /// Fetches what the cluster's store holds of `rooms` after the
    /// positions given (a room's (epoch, offset), or `None` when unknown),
    /// for recoveries from them, and calls `done` with it: at once, on this
    /// thread, with nothing, when the app's streams are all on this node or
    /// this node's mirrors serve every position; otherwise on the adapter's
    /// thread, once it has read (with nothing for the rooms it could not
    /// read: the store is down). Rooms without history, and unknown
    /// positions (nothing to recover from), are not read.
    // Called by the resume path once it recovers across nodes (handler.rs, another change).
    pub(crate) fn prefetch_history(
        &self,
        rooms: Vec<(Box<str>, Option<Position>)>,
        done: Box<dyn FnOnce(Backfill) + Send>,
    ) {
        let Some(adapter) = self.0.setup.adapter.as_ref().filter(|_| self.0.streams.is_mirror()) else {
            return done(Backfill::default());
        };
        let now = Instant::now();
        let reads: Vec<(Box<str>, u64)> = rooms
            .into_iter()
            .filter_map(|(room, since)| {
                let (epoch, offset) = since?;
                let history = self.history(&room)?;
                let served = self.with_stream(&room, history, now, |stream| stream.serves(&epoch, offset, now));
                (!served).then_some((room, offset))
            })
            .collect();
        if reads.is_empty() {
            return done(Backfill::default());
        }
        adapter.read_history(reads, Box::new(move |stored| done(Backfill::new(stored, Instant::now()))));
    }
}

/// A new stream's epoch: 8 random bytes in hex. Epochs need only differ
/// from the ones before; if the OS has no randomness to give, the clock and
/// a counter do that.
pub(crate) fn new_epoch() -> Arc<str> {
    static MADE: AtomicU64 = AtomicU64::new(0);
    let mut bytes = [0u8; 8];
    if getrandom::getrandom(&mut bytes).is_err() {
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
        bytes = (nanos ^ MADE.fetch_add(1, Ordering::Relaxed).rotate_left(48)).to_be_bytes();
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect::<String>().into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::ConnId;

    const TTL: Duration = Duration::from_secs(60);

    fn frame(n: u64) -> SharedFrame {
        SharedFrame::text(&n.to_string())
    }

    fn text(frame: &SharedFrame) -> u64 {
        std::str::from_utf8(frame.payload()).expect("text").parse().expect("a number")
    }

    /// A stream of `size` entries with `count` broadcasts at `start`; the
    /// broadcast of offset `n` leaves out `ConnId(n)`.
    fn filled(streams: &RoomStreams, size: usize, count: u64, start: Instant) {
        let history = History::new(size, TTL);
        for _ in 0..count {
            streams.with_stream(
                "#r",
                &history,
                start,
                |_| true,
                |stream| {
                    let except: Arc<[SocketId]> = Arc::from([SocketId { node: 0, conn: ConnId(stream.offset + 1) }]);
                    stream.append(start, |_, offset| Ok::<_, ()>(frame(offset)), except, |_| {}).expect("encodes");
                },
            );
        }
    }

    /// Recovers `#r` from `since` for socket `was`: the offsets sent, whether
    /// `join` ran, and the result.
    fn recover(streams: &RoomStreams, since: Option<(&str, u64)>, was: u64, now: Instant) -> (Vec<u64>, Recovery) {
        let history = History::new(10, TTL);
        let mut sent = Vec::new();
        let mut joined = false;
        let recovery = streams.with_stream(
            "#r",
            &history,
            now,
            |_| false,
            |stream| stream.recover(since, None, &[ConnId(was).into()], now, |f| sent.push(text(f)), || joined = true),
        );
        assert!(joined, "join always runs");
        (sent, recovery)
    }

    fn epoch(streams: &RoomStreams) -> Arc<str> {
        read(&streams.rooms).streams["#r"].lock().expect("lock").epoch.clone().expect("a local stream has an epoch")
    }

    #[test]
    fn patterns() {
        assert_eq!(RoomPattern::parse("#lobby"), Ok(RoomPattern::Exact("#lobby".into())));
        assert_eq!(RoomPattern::parse("#game:*"), Ok(RoomPattern::Prefix("#game:".into())));
        assert_eq!(RoomPattern::parse("#*"), Ok(RoomPattern::Prefix("#".into())));
        for bad in ["*admin", "lobby", "#", "#a*b*", "#a*b", "", "*", &format!("#{}", "x".repeat(128))] {
            assert!(RoomPattern::parse(bad).is_err(), "{bad:?} accepted");
        }
        let rules: HistoryRules = vec![
            (RoomPattern::parse("#game:1").expect("valid"), History::new(1, TTL)),
            (RoomPattern::parse("#game:*").expect("valid"), History::new(2, TTL)),
        ];
        assert_eq!(history_of(&rules, "#game:1").map(History::size), Some(1));
        assert_eq!(history_of(&rules, "#game:2").map(History::size), Some(2));
        assert_eq!(history_of(&rules, "#game").map(History::size), None);
        assert_eq!(history_of(&rules, "*game:1").map(History::size), None);
    }

    #[test]
    #[should_panic(expected = "size 0")]
    fn empty_history_is_refused() {
        History::new(0, TTL);
    }

    #[test]
    #[should_panic(expected = "ttl 0ns")]
    fn zero_ttl_is_refused() {
        History::new(1, Duration::ZERO);
    }

    #[test]
    fn recovers_what_came_after_the_offset_but_what_left_the_socket_out() {
        let streams = RoomStreams::default();
        let now = Instant::now();
        filled(&streams, 10, 5, now);
        let epoch = epoch(&streams);
        assert_eq!(epoch.len(), 16);
        let (sent, recovery) = recover(&streams, Some((&epoch, 2)), 99, now);
        assert_eq!(sent, [3, 4, 5]);
        assert_eq!(recovery, Recovery { recovered: true, epoch: Some(epoch.clone()), offset: 5 });
        // Offset 4 left out socket 4: it is not sent again.
        assert_eq!(recover(&streams, Some((&epoch, 2)), 4, now).0, [3, 5]);
        // Up to date: nothing to send, recovered.
        let (sent, recovery) = recover(&streams, Some((&epoch, 5)), 99, now);
        assert!(sent.is_empty() && recovery.recovered);
        // From the start of the stream.
        assert_eq!(recover(&streams, Some((&epoch, 0)), 99, now).0, [1, 2, 3, 4, 5]);
    }

    #[test]
    fn does_not_recover_past_what_is_kept() {
        let streams = RoomStreams::default();
        let now = Instant::now();
        filled(&streams, 3, 10, now); // offsets 8, 9, 10 kept
        let epoch = epoch(&streams);
        let (sent, recovery) = recover(&streams, Some((&epoch, 6)), 99, now);
        assert!(sent.is_empty() && !recovery.recovered);
        assert_eq!(recovery.offset, 10);
        assert_eq!(recover(&streams, Some((&epoch, 7)), 99, now).0, [8, 9, 10]);
        // An offset the stream never reached, another epoch, or none.
        for since in [Some((&*epoch, 11)), Some(("0123456789abcdef", 9)), None] {
            let (sent, recovery) = recover(&streams, since, 99, now);
            assert!(sent.is_empty() && !recovery.recovered, "{since:?}");
            assert_eq!(recovery.epoch.as_deref(), Some(&*epoch));
        }
    }

    #[test]
    fn expired_entries_are_not_recovered_and_an_expired_empty_room_gets_a_new_epoch() {
        let streams = RoomStreams::default();
        let start = Instant::now();
        filled(&streams, 10, 3, start);
        let epoch = epoch(&streams);
        let history = History::new(10, TTL);
        let later = start + TTL / 2;
        streams
            .with_stream(
                "#r",
                &history,
                later,
                |_| true,
                |stream| stream.append(later, |_, offset| Ok::<_, ()>(frame(offset)), Arc::from([]), |_| {}),
            )
            .expect("encodes");
        // Offsets 1 to 3 expired, 4 not: recoverable from 3 only.
        let now = start + TTL;
        let in_use = |_: &str| true;
        let recovered = |since: u64| {
            streams.with_stream("#r", &history, now, in_use, |stream| {
                let mut sent = Vec::new();
                let recovery = stream.recover(
                    Some((&epoch, since)),
                    None,
                    &[ConnId(99).into()],
                    now,
                    |f| sent.push(text(f)),
                    || {},
                );
                (sent, recovery.recovered)
            })
        };
        assert_eq!(recovered(2), (vec![], false));
        assert_eq!(recovered(3), (vec![4], true));
        // Everything expired with members in the room: same stream, nothing to replay.
        let now = later + TTL;
        let position = streams.with_stream("#r", &history, now, in_use, |s| (s.epoch.clone(), s.offset));
        assert_eq!(position, (Some(epoch.clone()), 4));
        // ... and without members: the stream is lost.
        let (sent, recovery) = recover(&streams, Some((&epoch, 4)), 99, now);
        assert!(sent.is_empty() && !recovery.recovered);
        assert_eq!(recovery.offset, 0);
        assert_ne!(recovery.epoch.as_deref(), Some(&*epoch));
    }

    #[test]
    fn stale_streams_are_swept_when_many_are_made() {
        let streams = RoomStreams::default();
        let history = History::new(1, TTL);
        let start = Instant::now();
        for room in 0..SWEEP_FROM {
            streams.with_stream(&format!("#{room}"), &history, start, |_| false, |_| {});
        }
        assert_eq!(streams.len(), SWEEP_FROM);
        // One more, a ttl later: the others are stale (no members) and go, but #0 is in use.
        streams.with_stream("#new", &history, start + TTL, |room| room == "#0", |_| {});
        assert_eq!(streams.len(), 2);
    }

    #[test]
    #[should_panic(expected = "not tags")]
    fn tags_get_no_history() {
        crate::app::App::new().history("*admin", History::new(1, TTL));
    }

    #[test]
    fn position_and_recover_on_the_app() {
        let rules = vec![(RoomPattern::parse("#h").expect("valid"), History::new(10, TTL))];
        let app = AppHandle::new(crate::app::AppConfig { history: rules, ..Default::default() });
        assert_eq!(app.position("#plain"), None);
        let (epoch, offset) = app.position("#h").expect("a room with history");
        assert_eq!(offset, 0);
        // The stream position made is the one a broadcast and a recovery then use.
        let mut joined = 0;
        let recovery = app.recover(
            "#h",
            Some((&epoch, 0)),
            &Backfill::default(),
            &[ConnId(1).into()],
            |_| panic!("nothing to send"),
            || joined += 1,
        );
        assert_eq!(recovery, Recovery { recovered: true, epoch: Some(epoch), offset: 0 });
        let recovery = app.recover(
            "#plain",
            Some(("e", 0)),
            &Backfill::default(),
            &[ConnId(1).into()],
            |_| panic!("nothing kept"),
            || joined += 1,
        );
        assert_eq!(recovery, Recovery { recovered: false, epoch: None, offset: 0 });
        assert_eq!(joined, 2, "join runs with or without history");
    }

    #[test]
    fn offsets_follow_the_order_of_routing_under_concurrent_broadcasts() {
        let streams = Arc::new(RoomStreams::default());
        let routed = Arc::new(Mutex::new(Vec::new()));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let (streams, routed) = (streams.clone(), routed.clone());
                std::thread::spawn(move || {
                    let history = History::new(1000, TTL);
                    for _ in 0..250 {
                        streams
                            .with_stream(
                                "#r",
                                &history,
                                Instant::now(),
                                |_| true,
                                |stream| {
                                    let route = |f: &SharedFrame| lock(&routed).push(text(f));
                                    stream.append(
                                        Instant::now(),
                                        |_, offset| Ok::<_, ()>(frame(offset)),
                                        Arc::from([]),
                                        route,
                                    )
                                },
                            )
                            .expect("encodes");
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().expect("no panic");
        }
        let routed = lock(&routed);
        assert_eq!(*routed, (1..=1000).collect::<Vec<u64>>());
    }

    /// Prefetch and backfill against a real Redis: a node that was not
    /// there when a room's broadcasts were published recovers them.
    #[cfg(feature = "redis")]
    mod cluster {
        use std::sync::mpsc;

        use super::*;
        use crate::app::{AppConfig, BroadcastOpts};
        use crate::cluster::test_redis as redis_server;
        use crate::cluster::{RedisAdapter, RedisOptions};

        /// An app (not serving) of the cluster at `url` whose `#r` keeps `size` broadcasts.
        fn node(url: &str, size: usize) -> AppHandle {
            let adapter = RedisAdapter::new(url, RedisOptions::default().query_timeout(Duration::from_millis(500)))
                .expect("a valid url");
            let rules = vec![(RoomPattern::parse("#r").expect("valid"), History::new(size, TTL))];
            AppHandle::new(AppConfig { history: rules, adapter: Some(adapter), ..Default::default() })
        }

        /// What `app` recovers of `#r` after (epoch, offset), through a prefetch.
        fn recover(app: &AppHandle, epoch: &str, offset: u64) -> (Vec<String>, Recovery) {
            let (tx, rx) = mpsc::channel();
            let since = Some((Arc::from(epoch), offset));
            app.prefetch_history(
                vec![("#r".into(), since)],
                Box::new(move |backfill| tx.send(backfill).expect("waited for")),
            );
            let backfill = rx.recv_timeout(Duration::from_secs(5)).expect("the prefetch answers");
            let mut sent = Vec::new();
            let text = |f: &SharedFrame| String::from_utf8(f.payload().to_vec()).expect("text");
            let recovery = app.recover("#r", Some((epoch, offset)), &backfill, &[], |f| sent.push(text(f)), || {});
            (sent, recovery)
        }

        /// Publishes `count` broadcasts to `#r` from `app` and waits until Redis numbered them all.
        fn publish(app: &AppHandle, redis: &mut redis::Connection, count: u64) -> String {
            for n in 1..=count {
                app.broadcast("/said", &n, BroadcastOpts::to("#r")).expect("serializes");
            }
            redis_server::wait_for(Duration::from_secs(5), || {
                redis::cmd("HGET").arg("emitws:h:{#r}:meta").arg("seq").query::<Option<u64>>(redis).ok().flatten()
                    == Some(count)
            });
            redis::cmd("HGET").arg("emitws:h:{#r}:meta").arg("epoch").query(redis).expect("an epoch")
        }

        #[test]
        fn a_node_that_was_not_there_recovers_from_redis() {
            let Some(server) = redis_server::Redis::start() else { return };
            let mut redis = redis::Client::open(server.url()).and_then(|c| c.get_connection()).expect("Redis up");
            let publisher = node(&server.url(), 100);
            let epoch = publish(&publisher, &mut redis, 5);
            let late = node(&server.url(), 100);
            assert_eq!(late.position("#r"), None, "nothing seen here yet: no position");
            let (sent, recovery) = recover(&late, &epoch, 2);
            let frame = |n: u64| format!(r##"[0,"/said",{n},{{"room":"#r","offset":{n},"epoch":"{epoch}"}}]"##);
            assert_eq!(sent, [frame(3), frame(4), frame(5)], "byte for byte what a local stream writes");
            assert_eq!(recovery, Recovery { recovered: true, epoch: Some(epoch.as_str().into()), offset: 5 });
            // Up to date: nothing to send. Another epoch, or beyond the stream: not recovered.
            assert_eq!(
                recover(&late, &epoch, 5),
                (vec![], Recovery { recovered: true, epoch: Some(epoch.as_str().into()), offset: 5 })
            );
            assert!(!recover(&late, "0123456789abcdef", 2).1.recovered);
            assert!(!recover(&late, &epoch, 6).1.recovered);
        }

        #[test]
        fn what_a_read_brought_serves_the_recoveries_after_it_from_the_positions_it_covers() {
            let Some(server) = redis_server::Redis::start() else { return };
            let mut redis = redis::Client::open(server.url()).and_then(|c| c.get_connection()).expect("Redis up");
            let epoch = publish(&node(&server.url(), 100), &mut redis, 5);
            let late = node(&server.url(), 100);
            assert_eq!(recover(&late, &epoch, 2).0.len(), 3);
            drop(server); // nothing more to read: what was read serves
            let (sent, recovery) = recover(&late, &epoch, 3);
            assert_eq!((sent.len(), recovery.recovered, recovery.offset), (2, true, 5));
            // Reaching back past what was read needs the store, down.
            assert!(!recover(&late, &epoch, 1).1.recovered);
        }

        #[test]
        fn what_overflowed_the_history_is_not_recovered_even_if_redis_still_has_it() {
            let Some(server) = redis_server::Redis::start() else { return };
            let mut redis = redis::Client::open(server.url()).and_then(|c| c.get_connection()).expect("Redis up");
            let publisher = node(&server.url(), 3);
            let epoch = publish(&publisher, &mut redis, 10);
            let late = node(&server.url(), 3);
            let (sent, recovery) = recover(&late, &epoch, 6);
            assert!(sent.is_empty() && !recovery.recovered, "{sent:?}");
            assert_eq!(recovery.offset, 10);
            assert_eq!(recover(&late, &epoch, 7).0.len(), 3);
        }

        #[test]
        fn prefetches_queued_while_a_read_waits_share_one_read_per_room() {
            let Some(server) = redis_server::Redis::start() else { return };
            let mut redis = redis::Client::open(server.url()).and_then(|c| c.get_connection()).expect("Redis up");
            let adapter = RedisAdapter::new(&server.url(), RedisOptions::default()).expect("a valid url");
            let rules = vec![(RoomPattern::parse("#r").expect("valid"), History::new(100, TTL))];
            let late =
                AppHandle::new(AppConfig { history: rules, adapter: Some(adapter.clone()), ..Default::default() });
            let epoch = publish(&node(&server.url(), 100), &mut redis, 5);
            let _: () = redis::cmd("CONFIG").arg("RESETSTAT").query(&mut redis).expect("reset");
            // Hold the background thread until three prefetches are queued.
            let (release, held) = mpsc::channel::<()>();
            adapter.link().background(Box::new(move |_| {
                let _ = held.recv_timeout(Duration::from_secs(5));
                Ok(())
            }));
            let (tx, rx) = mpsc::channel();
            for offset in [3, 1, 4] {
                let tx = tx.clone();
                let since = Some((Arc::from(epoch.as_str()), offset));
                late.prefetch_history(
                    vec![("#r".into(), since)],
                    Box::new(move |b| tx.send((offset, b)).expect("waited for")),
                );
            }
            release.send(()).expect("the job waits");
            for _ in 0..3 {
                let (offset, backfill) = rx.recv_timeout(Duration::from_secs(5)).expect("answered");
                let mut sent = 0;
                let recovery = late.recover("#r", Some((&epoch, offset)), &backfill, &[], |_| sent += 1, || {});
                assert!(recovery.recovered, "from {offset}");
                assert_eq!(sent, 5 - offset, "from {offset}");
            }
            let stats: String = redis::cmd("INFO").arg("commandstats").query(&mut redis).expect("stats");
            let evals = stats.lines().find(|l| l.starts_with("cmdstat_eval:")).unwrap_or_default();
            assert!(evals.starts_with("cmdstat_eval:calls=1,"), "one read for the three: {stats}");
        }

        #[test]
        fn with_redis_down_a_prefetch_answers_with_nothing() {
            let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a port").port();
            let app = node(&format!("redis://127.0.0.1:{port}/"), 10);
            let (sent, recovery) = recover(&app, "0123456789abcdef", 1);
            assert!(sent.is_empty());
            assert_eq!(recovery, Recovery { recovered: false, epoch: None, offset: 0 });
        }
    }
}
