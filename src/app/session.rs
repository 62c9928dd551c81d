//! Sessions kept for resume (PROTOCOL.md §13): what a socket lost by
//! accident leaves behind under its resume token, the direct messages that
//! arrive for it while it is away, and the public ids of resumed sockets.
//!
//! [`Sessions`] is the one way in: a store shared by other nodes (Redis)
//! would take its place behind the same methods.

use std::any::Any;
use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use sha1::Sha1;

use super::locks::lock;
use super::socket_id::SocketId;
use crate::proto::CloseCode;
use crate::runtime::{ConnId, SharedFrame};

/// The resume window when the app does not set one (PROTOCOL.md §13).
pub(crate) const DEFAULT_WINDOW: Duration = Duration::from_secs(120);
/// Direct messages kept per away socket when the app does not say.
pub(crate) const DEFAULT_BUFFER: usize = 100;
/// The longest window an app may set: a session holds memory until it ends.
pub(crate) const MAX_WINDOW: Duration = Duration::from_secs(24 * 3600);
/// The most direct messages an app may have kept per away socket.
pub(crate) const MAX_BUFFER: usize = 10_000;
/// Sessions kept at once when the app does not say.
pub(crate) const DEFAULT_MAX_SESSIONS: usize = 100_000;

/// How an app keeps sessions for resume.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ResumeSettings {
    /// How long a session is kept after its connection was lost; `None`: not at all.
    pub window: Option<Duration>,
    /// Direct messages kept per away socket.
    pub buffer: usize,
    /// Sessions kept at once; past that, the oldest is dropped.
    pub max_sessions: usize,
}

impl Default for ResumeSettings {
    fn default() -> Self {
        ResumeSettings { window: Some(DEFAULT_WINDOW), buffer: DEFAULT_BUFFER, max_sessions: DEFAULT_MAX_SESSIONS }
    }
}

/// The bytes of a token that name its connection: a `ConnId`, big-endian.
const CONN_BYTES: usize = 8;
/// The bytes of a token's MAC kept: the first half of HMAC-SHA1's 20,
/// 128 bits to guess.
const MAC_BYTES: usize = 16;
/// A token's length as text: two lowercase hex digits per byte.
pub(crate) const TOKEN_LEN: usize = 2 * (CONN_BYTES + MAC_BYTES);

/// Signs and checks resume tokens. A token is derived, not stored: the
/// connection's id and a MAC of it under the app's secret (made once per
/// app) and the node's id, so that a socket costs no memory for its token
/// and a token names one connection of one node. A connection has one
/// token: it is spent because its session goes when claimed, and a resumed
/// socket gets the token of its new connection.
struct TokenKey([u8; 32]);

impl TokenKey {
    /// A new secret from the OS's generator; `None` if it fails (sockets
    /// then get no token and cannot resume).
    fn random() -> Option<TokenKey> {
        let mut secret = [0; 32];
        getrandom::getrandom(&mut secret).ok()?;
        Some(TokenKey(secret))
    }

    fn mac(&self, node: u64, conn: ConnId) -> Hmac<Sha1> {
        let mut mac = <Hmac<Sha1> as Mac>::new_from_slice(&self.0).expect("HMAC takes a key of any length");
        mac.update(&node.to_be_bytes());
        mac.update(&conn.0.to_be_bytes());
        mac
    }

    /// The token of connection `conn` of node `node`.
    fn token(&self, node: u64, conn: ConnId) -> String {
        let mac = self.mac(node, conn).finalize().into_bytes();
        let mut text = String::with_capacity(TOKEN_LEN);
        for byte in conn.0.to_be_bytes().iter().chain(&mac[..MAC_BYTES]) {
            let _ = write!(text, "{byte:02x}");
        }
        text
    }

    /// The connection a token names, if this key signed it for node `node`;
    /// `None` for anything else (which resumes nothing, as an unknown token).
    fn verify(&self, node: u64, text: &str) -> Option<ConnId> {
        if text.len() != TOKEN_LEN || !text.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
            return None;
        }
        let mut bytes = [0; CONN_BYTES + MAC_BYTES];
        for (byte, pair) in bytes.iter_mut().zip(text.as_bytes().chunks(2)) {
            // Checked above: two hex digits.
            *byte = u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok()?;
        }
        let (conn, mac) = bytes.split_at(CONN_BYTES);
        let conn = ConnId(u64::from_be_bytes(conn.try_into().ok()?));
        // In constant time: a guess learns nothing from how long it took.
        self.mac(node, conn).verify_truncated_left(mac).ok()?;
        Some(conn)
    }
}

/// The key of the session record that `token` names in a cluster's store:
/// its SHA-1 in hex. Any node holding the token finds the record; the keys
/// give away neither the tokens nor, having no order, the sockets.
pub(crate) fn record_key(token: &str) -> String {
    use sha1::Digest;
    let mut text = String::with_capacity(40);
    for byte in Sha1::digest(token.as_bytes()) {
        let _ = write!(text, "{byte:02x}");
    }
    text
}

/// Whether a close with `code` leaves the socket's session for a resume:
/// the closes neither side meant, and a client's move to another server
/// (PROTOCOL.md §13). The server and the Rust client both ask this.
pub(crate) fn keeps_session(code: CloseCode) -> bool {
    matches!(code.0, 1001 | 1005 | 1006 | 1011 | 1012 | 1013 | 4408) || code == super::CLOSE_MOVING
}

/// What a socket lost by accident leaves for its resume.
pub(crate) struct Session {
    /// The socket's public id (the connection it first had on this node).
    pub public: ConnId,
    pub user: Option<Arc<str>>,
    /// Rooms and tags it was in.
    pub groups: Vec<Box<str>>,
    /// Its `req.set` values.
    pub store: Vec<(Box<str>, Box<dyn Any + Send>)>,
    /// The connection it had when it was lost.
    pub conn: ConnId,
    /// The node of `conn` (0 outside a cluster).
    pub node: u64,
    /// For each room with history: its epoch and offset when the socket
    /// joined it (or last recovered it).
    pub positions: Vec<(Box<str>, Arc<str>, u64)>,
    /// When the session ends unclaimed.
    pub deadline: Instant,
    /// Direct messages that arrived while away, oldest first.
    pub direct: VecDeque<SharedFrame>,
    /// Whether none of those had to be dropped for room.
    pub direct_complete: bool,
    /// The number of the last of `direct`: every direct message kept for
    /// the socket is numbered 1, 2, … (the record in a cluster's store
    /// keeps the number of the last one it took, so that the node a
    /// session was claimed from knows which came too late for the claim).
    pub held: u64,
    /// The key of its record in a cluster's store, which keeps its direct
    /// messages too (see [`record_key`]).
    pub record: Option<Box<str>>,
}

/// Every kept session of this node, by the connection it was lost with
/// (the one its token names), and the resumed sockets' connections.
pub(crate) struct Sessions {
    table: Mutex<Table>,
    /// Away sessions plus aliases: while 0, the send paths skip the lock.
    entries: AtomicUsize,
    /// Signs the tokens; `None` when the OS generator failed at start.
    key: Option<TokenKey>,
}

#[derive(Default)]
struct Table {
    /// Each session by the connection it was lost with.
    by_conn: HashMap<ConnId, Session>,
    /// The lost connection of each away socket, by public id.
    away: HashMap<ConnId, ConnId>,
    /// The away sockets' lost connections, by user.
    by_user: HashMap<Arc<str>, Vec<ConnId>>,
    /// Sessions in the order they were kept (deadlines grow with it when the
    /// window is fixed), for the sweep.
    order: VecDeque<(Instant, ConnId)>,
    /// A resumed socket's current connection, by public id.
    aliases: HashMap<ConnId, ConnId>,
    /// A resumed socket's public id, by current connection.
    publics: HashMap<ConnId, ConnId>,
    /// A socket resumed here from another node: its current connection, by public id.
    arrived: HashMap<SocketId, ConnId>,
    /// A socket resumed here from another node: its public id, by current connection.
    arrived_publics: HashMap<ConnId, SocketId>,
    /// The public ids of this node's sockets resumed on another node: what
    /// is sent to them here is forwarded.
    departed: HashSet<ConnId>,
    /// The same, oldest first, to remember a bounded number.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))] // called by the Redis adapter
    departed_order: VecDeque<ConnId>,
}

impl Table {
    /// Removes a session and its indexes.
    fn take(&mut self, lost: ConnId) -> Option<Session> {
        let session = self.by_conn.remove(&lost)?;
        self.away.remove(&session.public);
        if let Some(user) = &session.user {
            if let Some(lost_conns) = self.by_user.get_mut(user) {
                lost_conns.retain(|c| *c != lost);
                if lost_conns.is_empty() {
                    self.by_user.remove(user);
                }
            }
        }
        Some(session)
    }

    fn len(&self) -> usize {
        self.by_conn.len() + self.aliases.len() + self.arrived.len() + self.departed.len()
    }

    /// Public id `public` no longer reaches connection `conn`.
    fn unalias(&mut self, public: ConnId, conn: ConnId) {
        if self.aliases.get(&public) == Some(&conn) {
            self.aliases.remove(&public);
            self.publics.remove(&conn);
        }
        if let Some(public) = self.arrived_publics.remove(&conn) {
            self.arrived.remove(&public);
        }
    }
}

/// Why a token resumed nothing.
pub(crate) enum Unclaimed {
    /// Unknown, spent or expired.
    NoSession,
    /// The session belongs to another user (it stays for its own).
    OtherUser,
}

impl Sessions {
    /// No session yet, and a new secret for the tokens.
    pub fn new() -> Sessions {
        Sessions { table: Mutex::default(), entries: AtomicUsize::new(0), key: TokenKey::random() }
    }

    /// The resume token of connection `conn` of node `node`; `None` when
    /// the app has no secret to sign it with.
    pub fn token(&self, node: u64, conn: ConnId) -> Option<String> {
        Some(self.key.as_ref()?.token(node, conn))
    }

    /// Whether tokens can be signed (the OS generator gave a secret).
    pub fn signs(&self) -> bool {
        self.key.is_some()
    }

    /// The connection a token of node `node` names, if it is genuine.
    pub fn verify(&self, node: u64, token: &str) -> Option<ConnId> {
        self.key.as_ref()?.verify(node, token)
    }

    fn with<R>(&self, f: impl FnOnce(&mut Table) -> R) -> R {
        let mut table = lock(&self.table);
        let result = f(&mut table);
        self.entries.store(table.len(), Ordering::Relaxed);
        result
    }

    /// Whether no session is kept and no socket resumed.
    pub fn is_empty(&self) -> bool {
        self.entries.load(Ordering::Relaxed) == 0
    }

    /// Keeps a session under its lost connection (its token's) until its
    /// deadline, dropping the expired ones, and the oldest while `max` are
    /// kept; a resumed socket's public id no longer reaches its lost
    /// connection but the session.
    pub fn keep(&self, session: Session, now: Instant, max: usize) {
        let lost = session.conn;
        self.with(|table| {
            expire(table, now);
            while table.by_conn.len() >= max.max(1) {
                let Some((_, oldest)) = table.order.pop_front() else { break };
                table.take(oldest);
            }
            table.unalias(session.public, session.conn);
            table.away.insert(session.public, lost);
            if let Some(user) = &session.user {
                table.by_user.entry(user.clone()).or_default().push(lost);
            }
            table.order.push_back((session.deadline, lost));
            table.by_conn.insert(lost, session);
        });
    }

    /// Takes the session lost with connection `lost` for a connection of
    /// `user` now at `conn`: at most one claim of a session succeeds. From
    /// then on the session's public id reaches `conn`.
    pub fn claim(&self, lost: ConnId, user: Option<&str>, conn: ConnId, now: Instant) -> Result<Session, Unclaimed> {
        self.with(|table| {
            expire(table, now);
            let session = table.by_conn.get(&lost).ok_or(Unclaimed::NoSession)?;
            // A claimer without a user of its own takes the session's
            // (attached after connect, with `set_user`): the token proves it.
            if user.is_some() && session.user.as_deref() != user {
                return Err(Unclaimed::OtherUser);
            }
            let session = table.take(lost).ok_or(Unclaimed::NoSession)?;
            table.aliases.insert(session.public, conn);
            table.publics.insert(conn, session.public);
            Ok(session)
        })
    }

    /// From now on public id `public` reaches connection `conn` of this
    /// node (`node`): a socket resumed here from a session claimed in the
    /// cluster's store.
    pub fn adopt(&self, node: u64, public: SocketId, conn: ConnId) {
        self.with(|table| {
            if public.node == node {
                // Back on this node (the stale entry in the order goes with its turn).
                table.departed.remove(&public.conn);
                table.aliases.insert(public.conn, conn);
                table.publics.insert(conn, public.conn);
            } else {
                table.arrived.insert(public, conn);
                table.arrived_publics.insert(conn, public);
            }
        });
    }

    /// The connection of this node that a socket resumed from another node
    /// answers at, by its public id.
    pub fn arrived(&self, public: SocketId) -> Option<ConnId> {
        if self.is_empty() {
            return None;
        }
        lock(&self.table).arrived.get(&public).copied()
    }

    /// The public id of the socket at connection `conn` of node `node`,
    /// whose public id on this node is `public`: the one it had on another
    /// node if it resumed from there.
    pub fn public_id(&self, node: u64, conn: ConnId, public: ConnId) -> SocketId {
        if self.is_empty() {
            return SocketId { node, conn: public };
        }
        lock(&self.table).arrived_publics.get(&conn).copied().unwrap_or(SocketId { node, conn: public })
    }

    /// Takes the session lost with connection `lost`, claimed in the
    /// cluster's store (which checked the user): its stored values and
    /// direct messages, if this node still has it.
    pub fn take_lost(&self, lost: ConnId) -> Option<Session> {
        self.with(|table| table.take(lost))
    }

    /// The session lost with connection `lost` was claimed by another
    /// node: it goes, and its public id `public`, when it is one of this
    /// node's, is forwarded from now on (the latest `max` such ids are
    /// remembered). Returns the session, if this node still had it.
    pub fn departed(&self, lost: ConnId, public: Option<ConnId>, max: usize) -> Option<Session> {
        self.with(|table| {
            let session = table.take(lost);
            let Some(public) = public else { return session };
            if let Some(conn) = table.aliases.get(&public).copied() {
                table.unalias(public, conn);
            }
            if table.departed.insert(public) {
                table.departed_order.push_back(public);
            }
            while table.departed.len() > max.max(1) {
                let Some(oldest) = table.departed_order.pop_front() else { break };
                table.departed.remove(&oldest);
            }
            session
        })
    }

    /// Whether public id `public` of this node was resumed on another node.
    pub fn is_departed(&self, public: ConnId) -> bool {
        !self.is_empty() && lock(&self.table).departed.contains(&public)
    }

    /// The connection that answers to public id `public` now.
    pub fn current(&self, public: ConnId) -> ConnId {
        if self.is_empty() {
            return public;
        }
        lock(&self.table).aliases.get(&public).copied().unwrap_or(public)
    }

    /// The public id of the socket at connection `conn` (the same unless it resumed).
    pub fn public(&self, conn: ConnId) -> ConnId {
        if self.is_empty() {
            return conn;
        }
        lock(&self.table).publics.get(&conn).copied().unwrap_or(conn)
    }

    /// A resumed socket at `conn` closed: its public id no longer reaches it.
    pub fn forget_alias(&self, public: ConnId, conn: ConnId) {
        if !self.is_empty() {
            self.with(|table| table.unalias(public, conn));
        }
    }

    /// Whether the socket of public id `public` is away, its session kept
    /// for a resume.
    pub fn is_away(&self, public: ConnId) -> bool {
        !self.is_empty() && lock(&self.table).away.contains_key(&public)
    }

    /// Keeps `frame` for the away socket `public`, if it is away, and hands
    /// `copy` its record's key, if it has one, and the message's number
    /// there ([`Session::held`]); whether it was away.
    pub fn hold_for_socket(
        &self,
        public: ConnId,
        frame: &SharedFrame,
        cap: usize,
        copy: impl FnMut(&str, u64),
    ) -> bool {
        if self.is_empty() {
            return false;
        }
        self.with(|table| {
            let Some(lost) = table.away.get(&public).copied() else { return false };
            table.by_conn.get_mut(&lost).is_some_and(|session| {
                hold(session, frame, cap, copy);
                true
            })
        })
    }

    /// Keeps `frame` for each away socket of `user`, handing `copy` the
    /// key of each one's record and the message's number there; how many.
    pub fn hold_for_user(&self, user: &str, frame: &SharedFrame, cap: usize, mut copy: impl FnMut(&str, u64)) -> usize {
        if self.is_empty() {
            return 0;
        }
        self.with(|table| {
            let Table { by_user, by_conn, .. } = table;
            let mut held = 0;
            for lost in by_user.get(user).map_or(&[][..], |t| &t[..]) {
                if let Some(session) = by_conn.get_mut(lost) {
                    hold(session, frame, cap, &mut copy);
                    held += 1;
                }
            }
            held
        })
    }

    /// Ends the away socket `public`'s session; whether it had one.
    pub fn discard_socket(&self, public: ConnId) -> bool {
        if self.is_empty() {
            return false;
        }
        self.with(|table| table.away.get(&public).copied().and_then(|lost| table.take(lost)).is_some())
    }

    /// Ends every away session of `user`; how many there were.
    pub fn discard_user(&self, user: &str) -> usize {
        if self.is_empty() {
            return 0;
        }
        self.with(|table| {
            let lost = table.by_user.get(user).cloned().unwrap_or_default();
            lost.into_iter().filter_map(|lost| table.take(lost)).count()
        })
    }

    /// Drops the sessions whose window has passed.
    pub fn expire(&self, now: Instant) {
        if !self.is_empty() {
            self.with(|table| expire(table, now));
        }
    }

    /// How many sessions are kept.
    #[cfg(test)]
    fn kept(&self) -> usize {
        lock(&self.table).by_conn.len()
    }
}

/// Appends `frame` to an away session's direct messages, dropping the
/// oldest past `cap`, and hands `copy` the session's record key if any.
fn hold(session: &mut Session, frame: &SharedFrame, cap: usize, mut copy: impl FnMut(&str, u64)) {
    session.held += 1;
    if let Some(record) = &session.record {
        copy(record, session.held);
    }
    session.direct.push_back(frame.clone());
    while session.direct.len() > cap {
        session.direct.pop_front();
        session.direct_complete = false;
    }
}

/// Drops the sessions past their deadline (a claimed one leaves a stale
/// entry in `order`, skipped here).
fn expire(table: &mut Table, now: Instant) {
    while let Some(&(deadline, lost)) = table.order.front() {
        if deadline > now {
            break;
        }
        table.order.pop_front();
        if table.by_conn.get(&lost).is_some_and(|s| s.deadline <= now) {
            table.take(lost);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn closes_that_keep_the_session() {
        for kept in [1001, 1005, 1006, 1011, 1012, 1013, 4001, 4408] {
            assert!(keeps_session(CloseCode(kept)), "{kept}");
        }
        for ended in [1000, 1002, 1007, 1008, 1009, 4000, 4401, 4409, 4429, 4999] {
            assert!(!keeps_session(CloseCode(ended)), "{ended}");
        }
    }

    fn session(public: u64, user: Option<&str>, deadline: Instant) -> Session {
        Session {
            public: ConnId(public),
            user: user.map(Into::into),
            groups: Vec::new(),
            store: Vec::new(),
            conn: ConnId(public),
            node: 0,
            positions: Vec::new(),
            deadline,
            direct: VecDeque::new(),
            direct_complete: true,
            held: 0,
            record: None,
        }
    }

    #[test]
    fn tokens_verify_and_refuse_anything_else() {
        let sessions = Sessions::new();
        let token = sessions.token(3, ConnId(0x0100_0002_0000_0005)).expect("the OS generator works");
        assert_eq!(token.len(), TOKEN_LEN);
        assert!(token.starts_with("0100000200000005"));
        assert_eq!(sessions.verify(3, &token), Some(ConnId(0x0100_0002_0000_0005)));
        assert_ne!(sessions.token(3, ConnId(6)), Some(token.clone()));
        let flip = |at: usize| {
            let mut bytes = token.clone().into_bytes();
            bytes[at] = if bytes[at] == b'0' { b'1' } else { b'0' };
            String::from_utf8(bytes).expect("hex")
        };
        for bad in [
            String::new(),
            "00".into(),
            token.to_uppercase(),
            format!("{token}0"),
            token.replace(&token[..1], "g"),
            "é".repeat(24),
            flip(15),
            flip(16),
            flip(TOKEN_LEN - 1),
        ] {
            assert_eq!(sessions.verify(3, &bad), None, "{bad:?}");
        }
        // Another node, or another app (its own secret), does not take it.
        assert_eq!(sessions.verify(4, &token), None);
        assert_eq!(Sessions::new().verify(3, &token), None);
    }

    #[test]
    fn a_claim_succeeds_once_and_for_the_same_user_only() {
        let (sessions, now) = (Sessions::new(), Instant::now());
        sessions.keep(session(7, Some("ann"), now + Duration::from_secs(60)), now, 10);
        assert!(matches!(sessions.claim(ConnId(7), Some("bob"), ConnId(9), now), Err(Unclaimed::OtherUser)));
        assert_eq!(sessions.claim(ConnId(7), Some("ann"), ConnId(9), now).ok().map(|s| s.public), Some(ConnId(7)));
        assert!(matches!(sessions.claim(ConnId(7), Some("ann"), ConnId(10), now), Err(Unclaimed::NoSession)));
        assert_eq!((sessions.current(ConnId(7)), sessions.public(ConnId(9))), (ConnId(9), ConnId(7)));
        sessions.forget_alias(ConnId(7), ConnId(9));
        assert_eq!((sessions.current(ConnId(7)), sessions.public(ConnId(9))), (ConnId(7), ConnId(9)));
        assert_eq!(sessions.entries.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn a_claimer_without_a_user_gets_the_sessions() {
        let (sessions, now) = (Sessions::new(), Instant::now());
        sessions.keep(session(7, Some("ann"), now + Duration::from_secs(60)), now, 10);
        let claimed = sessions.claim(ConnId(7), None, ConnId(9), now).ok().expect("claimed");
        assert_eq!(claimed.user.as_deref(), Some("ann"));
    }

    #[test]
    fn expired_sessions_are_dropped() {
        let (sessions, now) = (Sessions::new(), Instant::now());
        sessions.keep(session(7, None, now + Duration::from_millis(5)), now, 10);
        assert_eq!(sessions.kept(), 1);
        sessions.expire(now + Duration::from_millis(5));
        assert_eq!(sessions.kept(), 0);
        assert!(matches!(sessions.claim(ConnId(7), None, ConnId(9), now), Err(Unclaimed::NoSession)));
    }

    #[test]
    fn past_the_limit_the_oldest_session_goes() {
        let (sessions, now) = (Sessions::new(), Instant::now());
        for n in 0..3 {
            sessions.keep(session(n, None, now + Duration::from_secs(60)), now, 2);
        }
        assert_eq!(sessions.kept(), 2);
        assert!(matches!(sessions.claim(ConnId(0), None, ConnId(9), now), Err(Unclaimed::NoSession)));
        assert!(sessions.claim(ConnId(2), None, ConnId(9), now).is_ok());
    }

    #[test]
    fn direct_messages_past_the_cap_drop_the_oldest() {
        let (sessions, now) = (Sessions::new(), Instant::now());
        sessions.keep(session(7, Some("ann"), now + Duration::from_secs(60)), now, 10);
        assert!(sessions.hold_for_socket(ConnId(7), &SharedFrame::text("1"), 2, |_, _| {}));
        assert!(!sessions.hold_for_socket(ConnId(8), &SharedFrame::text("x"), 2, |_, _| {}));
        assert_eq!(sessions.hold_for_user("ann", &SharedFrame::text("2"), 2, |_, _| {}), 1);
        assert_eq!(sessions.hold_for_user("bob", &SharedFrame::text("x"), 2, |_, _| {}), 0);
        let claimed = sessions.claim(ConnId(7), Some("ann"), ConnId(9), now).ok().expect("kept");
        assert!(claimed.direct_complete);
        sessions.keep(session(7, Some("ann"), now + Duration::from_secs(60)), now, 10);
        for text in ["1", "2", "3"] {
            sessions.hold_for_socket(ConnId(7), &SharedFrame::text(text), 2, |_, _| {});
        }
        let claimed = sessions.claim(ConnId(7), Some("ann"), ConnId(9), now).ok().expect("kept");
        assert!(!claimed.direct_complete);
        assert_eq!(claimed.direct, [SharedFrame::text("2"), SharedFrame::text("3")]);
        assert_eq!(claimed.held, 3, "the number of the last");
    }

    #[test]
    fn direct_messages_are_numbered_for_the_store_and_come_back_with_a_departed_session() {
        let (sessions, now) = (Sessions::new(), Instant::now());
        let mut kept = session(7, Some("ann"), now + Duration::from_secs(60));
        kept.record = Some("r7".into());
        sessions.keep(kept, now, 10);
        let mut copied = Vec::new();
        sessions
            .hold_for_socket(ConnId(7), &SharedFrame::text("1"), 10, |record, n| copied.push((record.to_owned(), n)));
        sessions.hold_for_user("ann", &SharedFrame::text("2"), 10, |record, n| copied.push((record.to_owned(), n)));
        assert_eq!(copied, [("r7".to_owned(), 1), ("r7".to_owned(), 2)]);
        let departed = sessions.departed(ConnId(7), Some(ConnId(7)), 10).expect("this node had it");
        assert_eq!((departed.held, departed.direct.len()), (2, 2));
        assert!(sessions.departed(ConnId(7), Some(ConnId(7)), 10).is_none(), "gone");
    }

    #[test]
    fn sockets_that_move_between_nodes_keep_their_public_ids() {
        let (sessions, now) = (Sessions::new(), Instant::now());
        let from_a = SocketId { node: 0xa, conn: ConnId(5) };
        // Node b: a socket of node a resumed at connection 9.
        sessions.adopt(0xb, from_a, ConnId(9));
        assert_eq!(sessions.arrived(from_a), Some(ConnId(9)));
        assert_eq!(sessions.public_id(0xb, ConnId(9), ConnId(9)), from_a);
        assert_eq!(sessions.public_id(0xb, ConnId(8), ConnId(8)), SocketId { node: 0xb, conn: ConnId(8) });
        sessions.forget_alias(ConnId(9), ConnId(9));
        assert_eq!(sessions.arrived(from_a), None);
        // Node a: its socket's session, claimed by another node, goes; its id is forwarded.
        sessions.keep(session(5, Some("ann"), now + Duration::from_secs(60)), now, 10);
        sessions.departed(ConnId(5), Some(ConnId(5)), 2);
        assert!(sessions.is_departed(ConnId(5)));
        assert!(matches!(sessions.claim(ConnId(5), Some("ann"), ConnId(9), now), Err(Unclaimed::NoSession)));
        // Back on node a, it is no longer forwarded; past `max`, the oldest is forgotten.
        sessions.adopt(0xa, SocketId { node: 0xa, conn: ConnId(5) }, ConnId(12));
        assert!(!sessions.is_departed(ConnId(5)));
        assert_eq!(sessions.current(ConnId(5)), ConnId(12));
        for public in [6, 7, 8] {
            sessions.departed(ConnId(public), Some(ConnId(public)), 2);
        }
        assert!(!sessions.is_departed(ConnId(6)) && sessions.is_departed(ConnId(7)) && sessions.is_departed(ConnId(8)));
    }

    #[test]
    fn a_record_key_is_the_tokens_sha1_in_hex() {
        assert_eq!(record_key("abc"), "a9993e364706816aba3e25717850c26c9cd0d89d");
    }
}
