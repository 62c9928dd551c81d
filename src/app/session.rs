//! Sessions kept for resume (PROTOCOL.md §13): what a socket lost by
//! accident leaves behind under its resume token, the direct messages that
//! arrive for it while it is away, and the public ids of resumed sockets.
//!
//! [`Sessions`] is the one way in: a store shared by other nodes (Redis)
//! would take its place behind the same methods.

use std::any::Any;
use std::collections::{HashMap, VecDeque};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::locks::lock;
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

/// A resume token: 128 random bits, written as 32 lowercase hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Token([u8; 16]);

impl Token {
    /// A fresh token from the OS's generator; `None` if it fails (the socket
    /// then gets no token and cannot resume).
    pub fn random() -> Option<Token> {
        let mut bytes = [0; 16];
        getrandom::getrandom(&mut bytes).ok()?;
        Some(Token(bytes))
    }

    /// Reads a token as a client sends it back; `None` for anything that is
    /// not one (which resumes nothing, as an unknown token).
    pub fn parse(text: &str) -> Option<Token> {
        if text.len() != 32 || !text.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
            return None;
        }
        let mut bytes = [0; 16];
        for (byte, pair) in bytes.iter_mut().zip(text.as_bytes().chunks(2)) {
            let pair = std::str::from_utf8(pair).ok()?;
            *byte = u8::from_str_radix(pair, 16).ok()?;
        }
        Some(Token(bytes))
    }

    pub fn to_hex(self) -> String {
        let mut text = String::with_capacity(32);
        for byte in self.0 {
            let _ = write!(text, "{byte:02x}");
        }
        text
    }
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
    /// For each room with history: its epoch and offset when the socket
    /// joined it (or last recovered it).
    pub positions: Vec<(Box<str>, Arc<str>, u64)>,
    /// When the session ends unclaimed.
    pub deadline: Instant,
    /// Direct messages that arrived while away, oldest first.
    pub direct: VecDeque<SharedFrame>,
    /// Whether none of those had to be dropped for room.
    pub direct_complete: bool,
}

/// Every kept session of this node, and the resumed sockets' connections.
#[derive(Default)]
pub(crate) struct Sessions {
    table: Mutex<Table>,
    /// Away sessions plus aliases: while 0, the send paths skip the lock.
    entries: AtomicUsize,
}

#[derive(Default)]
struct Table {
    by_token: HashMap<Token, Session>,
    /// The token of each away socket, by public id.
    away: HashMap<ConnId, Token>,
    /// The away sockets' tokens, by user.
    by_user: HashMap<Arc<str>, Vec<Token>>,
    /// Sessions in the order they were kept (deadlines grow with it when the
    /// window is fixed), for the sweep.
    order: VecDeque<(Instant, Token)>,
    /// A resumed socket's current connection, by public id.
    aliases: HashMap<ConnId, ConnId>,
    /// A resumed socket's public id, by current connection.
    publics: HashMap<ConnId, ConnId>,
}

impl Table {
    /// Removes a session and its indexes.
    fn take(&mut self, token: Token) -> Option<Session> {
        let session = self.by_token.remove(&token)?;
        self.away.remove(&session.public);
        if let Some(user) = &session.user {
            if let Some(tokens) = self.by_user.get_mut(user) {
                tokens.retain(|t| *t != token);
                if tokens.is_empty() {
                    self.by_user.remove(user);
                }
            }
        }
        Some(session)
    }

    fn len(&self) -> usize {
        self.by_token.len() + self.aliases.len()
    }

    /// Public id `public` no longer reaches connection `conn`.
    fn unalias(&mut self, public: ConnId, conn: ConnId) {
        if self.aliases.get(&public) == Some(&conn) {
            self.aliases.remove(&public);
            self.publics.remove(&conn);
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

    /// Keeps a session under `token` until its deadline, dropping the
    /// expired ones, and the oldest while `max` are kept; a resumed socket's
    /// public id no longer reaches its lost connection but the session.
    pub fn keep(&self, token: Token, session: Session, now: Instant, max: usize) {
        self.with(|table| {
            expire(table, now);
            while table.by_token.len() >= max.max(1) {
                let Some((_, oldest)) = table.order.pop_front() else { break };
                table.take(oldest);
            }
            table.unalias(session.public, session.conn);
            table.away.insert(session.public, token);
            if let Some(user) = &session.user {
                table.by_user.entry(user.clone()).or_default().push(token);
            }
            table.order.push_back((session.deadline, token));
            table.by_token.insert(token, session);
        });
    }

    /// Takes the session of `token` for a connection of `user` now at
    /// `conn`: at most one claim of a token succeeds. From then on the
    /// session's public id reaches `conn`.
    pub fn claim(&self, token: Token, user: Option<&str>, conn: ConnId, now: Instant) -> Result<Session, Unclaimed> {
        self.with(|table| {
            expire(table, now);
            let session = table.by_token.get(&token).ok_or(Unclaimed::NoSession)?;
            if session.user.as_deref() != user {
                return Err(Unclaimed::OtherUser);
            }
            let session = table.take(token).ok_or(Unclaimed::NoSession)?;
            table.aliases.insert(session.public, conn);
            table.publics.insert(conn, session.public);
            Ok(session)
        })
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
        self.with(|table| table.unalias(public, conn));
    }

    /// Keeps `frame` for the away socket `public`, if it is away; whether it was.
    pub fn hold_for_socket(&self, public: ConnId, frame: &SharedFrame, cap: usize) -> bool {
        if self.is_empty() {
            return false;
        }
        self.with(|table| {
            let Some(token) = table.away.get(&public).copied() else { return false };
            table.by_token.get_mut(&token).is_some_and(|session| {
                hold(session, frame, cap);
                true
            })
        })
    }

    /// Keeps `frame` for each away socket of `user`; how many.
    pub fn hold_for_user(&self, user: &str, frame: &SharedFrame, cap: usize) -> usize {
        if self.is_empty() {
            return 0;
        }
        self.with(|table| {
            let Table { by_user, by_token, .. } = table;
            let mut held = 0;
            for token in by_user.get(user).map_or(&[][..], |t| &t[..]) {
                if let Some(session) = by_token.get_mut(token) {
                    hold(session, frame, cap);
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
        self.with(|table| table.away.get(&public).copied().and_then(|token| table.take(token)).is_some())
    }

    /// Ends every away session of `user`; how many there were.
    pub fn discard_user(&self, user: &str) -> usize {
        if self.is_empty() {
            return 0;
        }
        self.with(|table| {
            let tokens = table.by_user.get(user).cloned().unwrap_or_default();
            tokens.into_iter().filter_map(|token| table.take(token)).count()
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
        lock(&self.table).by_token.len()
    }
}

/// Appends `frame` to an away session's direct messages, dropping the oldest past `cap`.
fn hold(session: &mut Session, frame: &SharedFrame, cap: usize) {
    session.direct.push_back(frame.clone());
    while session.direct.len() > cap {
        session.direct.pop_front();
        session.direct_complete = false;
    }
}

/// Drops the sessions past their deadline (a claimed one leaves a stale
/// entry in `order`, skipped here).
fn expire(table: &mut Table, now: Instant) {
    while let Some(&(deadline, token)) = table.order.front() {
        if deadline > now {
            break;
        }
        table.order.pop_front();
        if table.by_token.get(&token).is_some_and(|s| s.deadline <= now) {
            table.take(token);
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
            positions: Vec::new(),
            deadline,
            direct: VecDeque::new(),
            direct_complete: true,
        }
    }

    #[test]
    fn tokens_read_back_and_refuse_anything_else() {
        let token = Token::random().expect("the OS generator works");
        let hex = token.to_hex();
        assert_eq!(hex.len(), 32);
        assert!(Token::parse(&hex) == Some(token));
        for bad in ["", "00", &hex.to_uppercase(), &format!("{hex}0"), &hex.replace(&hex[..1], "g"), "é"] {
            assert!(Token::parse(bad).is_none(), "{bad:?}");
        }
        assert!(Token::random() != Token::random());
    }

    #[test]
    fn a_claim_succeeds_once_and_for_the_same_user_only() {
        let (sessions, now) = (Sessions::default(), Instant::now());
        let token = Token::random().expect("the OS generator works");
        sessions.keep(token, session(7, Some("ann"), now + Duration::from_secs(60)), now, 10);
        assert!(matches!(sessions.claim(token, Some("bob"), ConnId(9), now), Err(Unclaimed::OtherUser)));
        assert!(matches!(sessions.claim(token, None, ConnId(9), now), Err(Unclaimed::OtherUser)));
        assert_eq!(sessions.claim(token, Some("ann"), ConnId(9), now).ok().map(|s| s.public), Some(ConnId(7)));
        assert!(matches!(sessions.claim(token, Some("ann"), ConnId(10), now), Err(Unclaimed::NoSession)));
        assert_eq!((sessions.current(ConnId(7)), sessions.public(ConnId(9))), (ConnId(9), ConnId(7)));
        sessions.forget_alias(ConnId(7), ConnId(9));
        assert_eq!((sessions.current(ConnId(7)), sessions.public(ConnId(9))), (ConnId(7), ConnId(9)));
        assert_eq!(sessions.entries.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn expired_sessions_are_dropped() {
        let (sessions, now) = (Sessions::default(), Instant::now());
        let token = Token::random().expect("the OS generator works");
        sessions.keep(token, session(7, None, now + Duration::from_millis(5)), now, 10);
        assert_eq!(sessions.kept(), 1);
        sessions.expire(now + Duration::from_millis(5));
        assert_eq!(sessions.kept(), 0);
        assert!(matches!(sessions.claim(token, None, ConnId(9), now), Err(Unclaimed::NoSession)));
    }

    #[test]
    fn past_the_limit_the_oldest_session_goes() {
        let (sessions, now) = (Sessions::default(), Instant::now());
        let tokens: Vec<Token> = (0..3).map(|_| Token::random().expect("the OS generator works")).collect();
        for (n, token) in tokens.iter().enumerate() {
            sessions.keep(*token, session(n as u64, None, now + Duration::from_secs(60)), now, 2);
        }
        assert_eq!(sessions.kept(), 2);
        assert!(matches!(sessions.claim(tokens[0], None, ConnId(9), now), Err(Unclaimed::NoSession)));
        assert!(sessions.claim(tokens[2], None, ConnId(9), now).is_ok());
    }

    #[test]
    fn direct_messages_past_the_cap_drop_the_oldest() {
        let (sessions, now) = (Sessions::default(), Instant::now());
        let token = Token::random().expect("the OS generator works");
        sessions.keep(token, session(7, Some("ann"), now + Duration::from_secs(60)), now, 10);
        assert!(sessions.hold_for_socket(ConnId(7), &SharedFrame::text("1"), 2));
        assert!(!sessions.hold_for_socket(ConnId(8), &SharedFrame::text("x"), 2));
        assert_eq!(sessions.hold_for_user("ann", &SharedFrame::text("2"), 2), 1);
        assert_eq!(sessions.hold_for_user("bob", &SharedFrame::text("x"), 2), 0);
        let claimed = sessions.claim(token, Some("ann"), ConnId(9), now).ok().expect("kept");
        assert!(claimed.direct_complete);
        sessions.keep(token, session(7, Some("ann"), now + Duration::from_secs(60)), now, 10);
        for text in ["1", "2", "3"] {
            sessions.hold_for_socket(ConnId(7), &SharedFrame::text(text), 2);
        }
        let claimed = sessions.claim(token, Some("ann"), ConnId(9), now).ok().expect("kept");
        assert!(!claimed.direct_complete);
        assert_eq!(claimed.direct, [SharedFrame::text("2"), SharedFrame::text("3")]);
    }
}
