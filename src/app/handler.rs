//! The event layer as a runtime [`Handler`]: one clone per worker, each with
//! its own lock-free state ([`WorkerState`]), all sharing the app's routes and
//! registries.

use std::any::Any;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::value::RawValue;

use super::adapter::{ClaimDone, ClaimOutcome, Presence, SessionClaim, Target};
use super::binary::{self, BinaryEnvelope, PROTOCOL_V2};
use super::connect::{self, Challenge, Connecting, Refusal, RefusalKind};
use super::disconnect::{After, Gone};
use super::envelope::{self, Envelope, ErrorCode};
use super::handle::{ready_state_of, AppHandle, ReadyState, PING_EVENT};
use super::history::Backfill;
use super::inbox::WorkerMsg;
use super::limits::{check_event_name, is_name_byte, Bucket, Policy, Rate};
use super::request::{Request, SharedValue};
use super::router::EventHandler;
use super::rpc::{CallError, CallReply, CallResult, Done, GroupOutcome};
use super::session::{keeps_session, record_key, Session, Unclaimed};
use super::socket::{flag, query_value, ResumeRequest, SocketData, SocketState};
use super::socket_id::SocketId;
use super::users;
use super::worker_state::{set_position, settle_call, WorkerState};
use super::{Auth, CLOSE_REPLACED, CLOSE_TIMEOUT};
use crate::proto::{CloseCode, CloseReason, Message, OpCode};
use crate::runtime::{Accept, Conn, ConnId, Conns, Handler, Reject, SharedFrame, UpgradeRequest};

/// The subprotocol the event layer speaks.
pub const PROTOCOL: &str = "emitws.v1";

/// The query parameter that makes a socket wait for its `@resume` request (PROTOCOL.md §13).
const RESUME_PARAM: &str = "emitws_resume";
/// The one system event a client may send (PROTOCOL.md §13).
const RESUME_EVENT: &str = "@resume";
/// The reason of the 4409 that closes a connection whose session another resumed.
const RESUMED_ELSEWHERE: &str = "resumed elsewhere";
/// How often, at least, a worker drops expired sessions while there are some.
const SWEEP_EVERY: Duration = Duration::from_secs(10);

/// The runtime handler of an app.
pub(crate) struct AppWorker {
    app: AppHandle,
    local: WorkerState,
}

impl AppWorker {
    pub fn new(app: AppHandle) -> AppWorker {
        AppWorker { app, local: WorkerState::new() }
    }
}

impl Clone for AppWorker {
    /// Each worker starts with empty state of its own.
    fn clone(&self) -> Self {
        AppWorker::new(self.app.clone())
    }
}

/// Milliseconds since the app started (wrapping), for buckets and heartbeats.
fn now_ms(app: &AppHandle) -> u32 {
    app.0.epoch.elapsed().as_millis() as u32
}

/// The close code for bad input when the policy is to close: 1007 (invalid
/// payload data) only for text that does not parse, 1008 (policy) otherwise.
/// Here rather than in `envelope`, which the fuzz harness compiles without
/// the engine.
fn close_code(code: ErrorCode) -> CloseCode {
    match code {
        ErrorCode::NotJson => CloseCode::INVALID_PAYLOAD,
        _ => CloseCode::POLICY_VIOLATION,
    }
}

/// Takes one token of the socket's bucket for a message (PROTOCOL.md §7);
/// false when it is empty. A message let through re-arms the one
/// `rate_limited` `@error` of the next flood.
#[inline]
fn within_rate(conn: &mut Conn<'_, SocketData>, rate: &Rate) -> bool {
    let now = conn.clock_ms();
    let data = conn.data_mut();
    if !data.bucket.take(rate, now) {
        return false;
    }
    data.flags &= !flag::RATE_NOTIFIED;
    true
}

/// What a panicking handler is answered, and reported to the `@error` hook.
const PANICKED: &str = "the handler panicked";

/// Runs handlers one after another on a request, a panicking one answered
/// `internal` instead of taking the worker down; whether one panicked.
fn run(handlers: &[EventHandler], req: &mut Request<'_>) -> bool {
    let mut panicked = false;
    for handler in handlers {
        if catch_unwind(AssertUnwindSafe(|| handler(req))).is_err() {
            crate::runtime::logs::panicked(req.conn_id(), req.event, "a handler");
            req.reply_err(ErrorCode::Internal.as_str(), PANICKED);
            panicked = true;
        }
    }
    panicked
}

impl AppWorker {
    /// Runs system handlers for a socket (no reply expected).
    fn system(
        &mut self,
        conn: &mut Conn<'_, SocketData>,
        handlers: &[EventHandler],
        event: &str,
        data: &impl Serialize,
    ) {
        if handlers.is_empty() {
            return;
        }
        let raw = serde_json::value::to_raw_value(data).ok();
        let mut req = Request {
            event,
            id: None,
            data: raw.as_deref(),
            binary: None,
            conn: conn.reborrow(),
            local: &mut self.local,
            app: &self.app,
            answered: false,
        };
        // A panicking `@error` hook is not reported to itself.
        if run(handlers, &mut req) && event != "@error" {
            self.report(conn, ErrorCode::Internal, PANICKED, Some(event));
        }
    }

    /// Runs the server's `@error` hook: `{code, message}`, and `event` when
    /// the error is about one.
    fn report(&mut self, conn: &mut Conn<'_, SocketData>, code: ErrorCode, message: &str, event: Option<&str>) {
        let app = self.app.clone();
        let hook = &app.0.setup.router.system.error;
        if hook.is_empty() {
            return;
        }
        let mut body = serde_json::json!({ "code": code.as_str(), "message": message });
        if let Some(event) = event {
            body["event"] = event.into();
        }
        self.system(conn, hook, "@error", &body);
    }

    /// Reports bad input to the `@error` hook and answers it by the app's policy.
    fn bad_input(
        &mut self,
        conn: &mut Conn<'_, SocketData>,
        id: Option<u64>,
        code: ErrorCode,
        message: &str,
        policy: Policy,
    ) {
        crate::runtime::logs::refused(conn.id(), || conn.peer_addr().ok(), code.as_str(), message);
        self.report(conn, code, message, None);
        match (policy, id) {
            (Policy::Close, _) => conn.close(close_code(code), message),
            (Policy::Reply, Some(id)) => {
                self.local.send_raw(conn, |out| envelope::write_error(out, id, code.as_str(), message))
            }
            (Policy::Reply, None) => self.local.emit_error(conn, code, message),
        }
    }

    /// A message over the socket's rate: a request is answered every time,
    /// other messages get one `@error` until the bucket lets a message
    /// through again, so that a flood cannot make the server flood back.
    fn over_rate(&mut self, conn: &mut Conn<'_, SocketData>, text: &str) {
        self.over_rate_with(conn, envelope::peek_request_id(text));
    }

    /// [`over_rate`](Self::over_rate) for a message whose request id (if any) was read.
    fn over_rate_with(&mut self, conn: &mut Conn<'_, SocketData>, id: Option<u64>) {
        const MESSAGE: &str = "too many messages";
        conn.metrics().rate_limited.inc();
        let policy = self.app.0.setup.limits.over_rate;
        if policy == Policy::Reply && id.is_none() {
            if conn.data().has(flag::RATE_NOTIFIED) {
                return self.report(conn, ErrorCode::RateLimited, MESSAGE, None);
            }
            conn.data_mut().flags |= flag::RATE_NOTIFIED;
        }
        self.bad_input(conn, id, ErrorCode::RateLimited, MESSAGE, policy);
    }

    /// Whether `text` answers one of the server's calls still waiting on this
    /// socket: such answers are never counted against the rate nor dropped.
    fn answers_pending_call(&self, conn: &Conn<'_, SocketData>, text: &str) -> bool {
        conn.data().calls > 0
            && envelope::peek_answer_id(text).is_some_and(|id| self.local.calls.is_pending(conn.id(), id))
    }

    /// Runs the handlers of an envelope: JSON `data`, or a binary one's
    /// `binary` payload (PROTOCOL.md §10).
    fn dispatch(
        &mut self,
        conn: &mut Conn<'_, SocketData>,
        id: Option<u64>,
        event: &str,
        data: Option<&RawValue>,
        binary: Option<&[u8]>,
    ) {
        let limits = &self.app.0.setup.limits;
        if let Err(why) = check_event_name(event, limits.max_event_name) {
            // The one system event a client may send, checked here, off the path of valid names.
            if conn.data().has(flag::AWAIT_RESUME) && event == RESUME_EVENT {
                return self.resume_request(conn, id, data);
            }
            if let (Some(id), PING_EVENT) = (id, event) {
                // Answered at once, in every state: no handler or middleware runs.
                let _ = self.local.send_json(conn, |out| envelope::write_reply(out, id, &data));
                return;
            }
            let policy = limits.on_bad_input;
            return self.bad_input(conn, id, ErrorCode::BadRequest, why, policy);
        }
        if let Some(id) = id.filter(|id| conn.data().deferred().contains(id)) {
            let message = format!("duplicate request id: request {id} is still waiting for its reply");
            let policy = limits.on_bad_input;
            return self.bad_input(conn, Some(id), ErrorCode::BadRequest, &message, policy);
        }
        // One test on the path of every admitted socket's envelopes.
        if conn.data().flags & (flag::UNAUTHED | flag::AWAIT_RESUME | flag::TAKING_OVER) != 0 {
            if conn.data().has(flag::UNAUTHED) {
                return self.unauthenticated(conn, id, event, data, binary);
            }
            let message = if conn.data().has(flag::AWAIT_RESUME) { "send @resume first" } else { "wait for @ready" };
            return self.bad_input(conn, id, ErrorCode::Unauthorized, message, Policy::Reply);
        }
        // Fields borrowed apart (no clone of the shared app: its reference
        // count would be written by every worker on every message).
        let AppWorker { app, local } = self;
        let mut req = Request { event, id, data, binary, conn: conn.reborrow(), local, app, answered: false };
        let started = app.0.setup.time_handlers.then(Instant::now);
        match catch_unwind(AssertUnwindSafe(|| app.0.setup.router.dispatch(event, &mut req))) {
            // A request nobody answered or deferred gets `null`, so the client is not left waiting.
            Ok(true) => req.reply(&()),
            Ok(false) => req.reply_err(ErrorCode::NoHandler.as_str(), &format!("no handler for {event}")),
            Err(_) => {
                crate::runtime::logs::panicked(req.conn_id(), event, "a handler");
                req.reply_err(ErrorCode::Internal.as_str(), PANICKED);
                self.report(conn, ErrorCode::Internal, PANICKED, Some(event));
            }
        }
        if let Some(started) = started {
            conn.metrics().handler_time(started.elapsed());
        }
    }

    /// An envelope from a socket that has not authenticated: only the auth request passes.
    fn unauthenticated(
        &mut self,
        conn: &mut Conn<'_, SocketData>,
        id: Option<u64>,
        event: &str,
        data: Option<&RawValue>,
        binary: Option<&[u8]>,
    ) {
        let app = self.app.clone();
        match &app.0.setup.auth {
            Auth::FirstMessage(auth_event, identify) if id.is_some() && **auth_event == *event => {
                let mut req = Request {
                    event,
                    id,
                    data,
                    binary,
                    conn: conn.reborrow(),
                    local: &mut self.local,
                    app: &app,
                    answered: false,
                };
                let outcome = catch_unwind(AssertUnwindSafe(|| identify(&mut req)));
                if outcome.is_err() {
                    crate::runtime::logs::panicked(req.conn_id(), event, "the identify hook")
                }
                let outcome = outcome.unwrap_or_else(|_| Err(Refusal::status(500, "the identify hook panicked")));
                match &outcome {
                    Ok(user) => {
                        // What identified the socket, for `req.identity()` (PROTOCOL.md §14).
                        let identity = data.map(|data| data.to_owned());
                        req.conn.data_mut().info_mut(&app.0.setup.conn.tables).identity = identity;
                        req.reply(&serde_json::json!({ "user": user }))
                    }
                    Err(refusal) => req.reply_err(ErrorCode::Unauthorized.as_str(), &refusal.as_close().1),
                }
                self.authenticated(conn, outcome);
            }
            _ => self.bad_input(conn, id, ErrorCode::Unauthorized, "authenticate first", Policy::Reply),
        }
    }

    /// The client answered one of our calls.
    fn answer_call(&mut self, conn: &mut Conn<'_, SocketData>, id: u64, result: CallResult) {
        if let Some(done) = self.local.calls.take(conn.id(), id) {
            let data = conn.data_mut();
            data.calls = data.calls.saturating_sub(1);
            settle_call(conn.metrics(), done, result);
        }
    }

    /// Authentication finished (by first message or challenge).
    fn authenticated(&mut self, conn: &mut Conn<'_, SocketData>, outcome: Result<String, Refusal>) {
        if !conn.data().has(flag::UNAUTHED) {
            return;
        }
        match outcome {
            Ok(user) => {
                conn.data_mut().flags &= !flag::UNAUTHED;
                conn.data_mut().state().user = Some(user.into());
                if !conn.data().has(flag::AWAIT_RESUME) {
                    self.admit(conn);
                }
            }
            Err(refusal) => {
                let (code, reason) = refusal.as_close();
                conn.close(code, &reason);
            }
        }
    }

    /// Adds the socket to its user's devices, enforcing the per-user cap;
    /// false when the cap refused it (it is being closed).
    fn register_user(&mut self, conn: &mut Conn<'_, SocketData>) -> bool {
        let Some(user) = conn.data().state.as_ref().and_then(|s| s.user.clone()) else { return true };
        users::attach(&self.app, conn, &user, None)
    }

    /// The socket authenticated and waits for nothing more: it resumes the
    /// session its `@resume` request named, or comes in as a new socket.
    fn admit(&mut self, conn: &mut Conn<'_, SocketData>) {
        match conn.data_mut().state.as_mut().and_then(|s| s.resume.take()) {
            Some(request) => self.resume(conn, *request, true),
            None => {
                if self.register_user(conn) {
                    self.connected(conn);
                }
            }
        }
    }

    /// The socket is in: `@connection` handlers run, then `@ready` goes.
    fn connected(&mut self, conn: &mut Conn<'_, SocketData>) {
        let token = self.enter(conn);
        self.run_connection_handlers(conn);
        self.send_ready(conn, token);
    }

    /// Counts the socket in and tells the presence; the connection's resume
    /// token, when the app keeps sessions, for its `@ready`. The token (an
    /// HMAC) is made here once and handed on, not kept: a socket stores no
    /// token (see [`Sessions::token`](super::session::Sessions::token)).
    fn enter(&mut self, conn: &mut Conn<'_, SocketData>) -> Option<String> {
        conn.data_mut().flags |= flag::CONNECTED;
        self.app.0.sockets.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let app = &self.app;
        let conn_id = conn.id();
        let public = app.socket_id_of(conn_id, conn.data());
        let window = app.0.setup.resume.window;
        let token = window.and_then(|_| app.0.sessions.token(app.node(), conn_id));
        let key = token.as_deref().filter(|_| app.0.setup.adapter.is_some()).map(record_key);
        let record = key.as_deref().zip(window);
        app.presence(Presence::Connected { conn_id, user: conn.data().user(), public, record });
        token
    }

    /// The key of connection `conn`'s session record in the cluster's
    /// store; `None` without an adapter, or when the app keeps no sessions.
    fn record_key(&self, conn: ConnId) -> Option<String> {
        let app = &self.app;
        app.0.setup.adapter.as_ref()?;
        app.0.setup.resume.window?;
        app.0.sessions.token(app.node(), conn).map(|token| record_key(&token))
    }

    fn run_connection_handlers(&mut self, conn: &mut Conn<'_, SocketData>) {
        let app = self.app.clone();
        self.system(conn, &app.0.setup.router.system.connection, "@connection", &());
    }

    /// Tells the client it is admitted and usable:
    /// `[0,"@ready",{"socket","user","resume"?,"resumed"?}]`, after the
    /// `@connection` handlers, unless one of them closed the socket.
    /// `resume` is the connection's own token, as [`enter`](Self::enter) made it.
    fn send_ready(&mut self, conn: &mut Conn<'_, SocketData>, resume: Option<String>) {
        if !conn.is_open() {
            return;
        }
        /// `@ready`'s data (PROTOCOL.md §4), its fields in this order.
        #[derive(Serialize)]
        struct Ready {
            socket: String,
            #[serde(skip_serializing_if = "Option::is_none")]
            resume: Option<String>,
            user: Option<String>,
            #[serde(skip_serializing_if = "std::ops::Not::not")]
            resumed: bool,
            /// The app's own id for the socket (PROTOCOL.md §14).
            #[serde(skip_serializing_if = "Option::is_none")]
            id: Option<String>,
        }
        if self.app.0.setup.resume.window.is_some() && resume.is_none() {
            crate::runtime::logs::no_resume_token(conn.id());
        }
        let (user, resumed) = (conn.data().user().map(str::to_owned), conn.data().has(flag::RESUMED));
        let socket = self.app.socket_id_of(conn.id(), conn.data());
        let id = connect::admitted(&self.app.0.setup.conn, socket, conn.data_mut()).map(|id| id.to_string());
        let ready = Ready { socket: socket.to_string(), resume, user, resumed, id };
        let _ = self.local.send_json(conn, |out| envelope::write_event(out, "@ready", &ready));
    }

    /// A `@resume` request from a socket waiting for one: kept until the
    /// socket has authenticated, then acted on.
    fn resume_request(&mut self, conn: &mut Conn<'_, SocketData>, id: Option<u64>, data: Option<&RawValue>) {
        #[derive(serde::Deserialize)]
        struct Body {
            token: String,
            #[serde(default)]
            rooms: std::collections::BTreeMap<String, Position>,
        }
        #[derive(serde::Deserialize)]
        struct Position {
            epoch: String,
            offset: u64,
        }
        conn.data_mut().flags &= !flag::AWAIT_RESUME;
        let policy = self.app.0.setup.limits.on_bad_input;
        let body = serde_json::from_str::<Body>(data.map_or("null", RawValue::get));
        match (id, body) {
            (Some(id), Ok(body)) => {
                let rooms = body.rooms.into_iter().map(|(room, at)| (room.into(), at.epoch.into(), at.offset));
                let token = self.app.0.sessions.verify(self.app.node(), &body.token);
                if self.app.0.setup.adapter.is_some() && self.app.0.setup.resume.window.is_some() {
                    self.local.records.insert(conn.id(), record_key(&body.token));
                }
                let request = ResumeRequest { id, token, rooms: rooms.collect() };
                conn.data_mut().state().resume = Some(Box::new(request));
            }
            (None, _) => self.bad_input(conn, None, ErrorCode::BadRequest, "@resume is a request", policy),
            (Some(id), Err(e)) => {
                let message = format!("@resume takes {{\"token\", \"rooms\"}}: {e}");
                self.bad_input(conn, Some(id), ErrorCode::BadRequest, &message, policy);
            }
        }
        // Without a request to act on, the socket comes in as a new one.
        if conn.is_open() && !conn.data().has(flag::UNAUTHED) {
            self.admit(conn);
        }
    }

    /// Resumes the session `request` names, or admits the socket as a new
    /// one when there is none to claim; then the reply and `@ready`, in the
    /// order of PROTOCOL.md §13. With an adapter that keeps sessions, the
    /// claim is the cluster's: the socket waits for it (see
    /// [`claimed`](Self::claimed)). Else, with `may_take_over`, a token
    /// whose connection has no session yet has that connection taken over:
    /// the socket waits (see [`end_takeover`](Self::end_takeover)).
    fn resume(&mut self, conn: &mut Conn<'_, SocketData>, request: ResumeRequest, may_take_over: bool) {
        let app = self.app.clone();
        let waiter = conn.id();
        if let (Some(record), Some(adapter)) = (self.local.records.remove(&waiter), &app.0.setup.adapter) {
            let user = conn.data().user().map(str::to_owned);
            let claim = SessionClaim { record, user, conn: waiter, until: self.auth_deadline(waiter) };
            let handle = app.clone();
            let done: ClaimDone = Box::new(move |outcome| {
                handle
                    .server()
                    .notify(waiter.worker(), Box::new(WorkerMsg::Claimed { waiter, outcome: Box::new(outcome) }));
            });
            if adapter.claim_session(claim, done).is_ok() {
                self.local.claiming.insert(waiter);
                conn.data_mut().flags |= flag::TAKING_OVER;
                conn.data_mut().state().resume = Some(Box::new(request));
                return;
            }
        }
        let claimed = match request.token {
            Some(lost) if app.0.setup.resume.window.is_some() => {
                match app.0.sessions.claim(lost, conn.data().user(), waiter, Instant::now()) {
                    Ok(session) => Some(session),
                    // The token's connection may still be open, its loss not
                    // noticed yet: its worker closes it keeping its session,
                    // then tells this socket to claim again.
                    Err(Unclaimed::NoSession) if may_take_over => {
                        let user = conn.data().state.as_ref().and_then(|s| s.user.clone());
                        let until = self.auth_deadline(waiter);
                        conn.data_mut().flags |= flag::TAKING_OVER;
                        conn.data_mut().state().resume = Some(Box::new(request));
                        let take_over = WorkerMsg::TakeOver { old: lost, user, waiter: Some(waiter), until };
                        app.server().notify(lost.worker(), Box::new(take_over));
                        return;
                    }
                    Err(_) => None,
                }
            }
            _ => None,
        };
        let node = app.node();
        let claimed = claimed.map(|session| (SocketId { node, conn: session.public }, session));
        self.restore(conn, request, claimed, &Backfill::default());
    }

    /// Writes a resumed socket's shared values into its new session record
    /// (made by `enter`), so that they follow it again on its next resume.
    fn share_values(&self, conn: &mut Conn<'_, SocketData>) {
        if self.app.0.setup.adapter.is_none() {
            return;
        }
        let Some(state) = conn.data().state.as_ref() else { return };
        for (key, value) in &state.store {
            if let Some(SharedValue(value)) = value.downcast_ref::<SharedValue>() {
                let value = value.to_string();
                self.app.presence(Presence::Stored { conn_id: conn.id(), key, value: Some(&value) });
            }
        }
    }

    /// The auth deadline of a socket that waits for `@resume` (every one has one).
    fn auth_deadline(&self, waiter: ConnId) -> Instant {
        let until = self.local.auth_deadlines.iter().find(|(_, id)| *id == waiter).map(|(at, _)| *at);
        until.unwrap_or_else(Instant::now)
    }

    /// The cluster's claim for socket `waiter` is done: a session claimed
    /// has the history of its rooms fetched first (the socket still waits),
    /// anything else comes in as a new socket.
    fn claimed(&mut self, conn: &mut Conn<'_, SocketData>, outcome: ClaimOutcome) {
        let waiter = conn.id();
        let ClaimOutcome::Claimed(claimed) = outcome else {
            return self.end_takeover(conn);
        };
        let app = self.app.clone();
        // Its stored values and direct messages, when it was lost on this node.
        let here = claimed.lost.node == app.node();
        let local = here.then(|| app.0.sessions.take_lost(claimed.lost.conn)).flatten();
        let mut session = local.unwrap_or_else(|| Session {
            public: claimed.public.conn,
            user: claimed.user.as_deref().map(Into::into),
            groups: Vec::new(),
            // Only the shared values cross nodes, as JSON.
            store: claimed.values.iter().filter_map(|(key, json)| SharedValue::entry(key, json)).collect(),
            conn: claimed.lost.conn,
            node: claimed.lost.node,
            positions: Vec::new(),
            deadline: Instant::now(),
            direct: Default::default(),
            direct_complete: true,
            held: 0,
            record: None,
        });
        // The cluster's record is the socket's latest state, its direct
        // messages included (those this node kept are copies).
        session.direct = claimed.direct.iter().map(|text| SharedFrame::text(text)).collect();
        session.direct_complete = claimed.direct_complete;
        session.held = claimed.held;
        session.groups = claimed.groups.iter().map(|(group, _)| group.as_str().into()).collect();
        session.positions = claimed
            .groups
            .iter()
            .filter_map(|(room, at)| {
                at.as_ref().map(|(epoch, offset)| (room.as_str().into(), epoch.as_str().into(), *offset))
            })
            .collect();
        let listed = conn.data().state.as_ref().and_then(|s| s.resume.as_ref()).map_or(&[][..], |r| &r.rooms[..]);
        let rooms = session
            .groups
            .iter()
            .filter(|group| app.history(group).is_some())
            .map(|room| (room.clone(), since(room, listed, &session.positions).map(|(e, o)| (e.into(), o))))
            .collect();
        let (handle, public, session) = (app.clone(), claimed.public, Box::new(session));
        let done = Box::new(move |backfill| {
            let prefetched = WorkerMsg::Prefetched { waiter, session, public, backfill: Box::new(backfill) };
            handle.server().notify(waiter.worker(), Box::new(prefetched));
        });
        app.prefetch_history(rooms, done);
    }

    /// Restores `claimed` (its public id and session) on the socket, or
    /// admits the socket as a new one without; then the reply and
    /// `@ready`, in the order of PROTOCOL.md §13. `backfill` fills in what
    /// this node's room streams lack.
    fn restore(
        &mut self,
        conn: &mut Conn<'_, SocketData>,
        request: ResumeRequest,
        claimed: Option<(SocketId, Session)>,
        backfill: &Backfill,
    ) {
        let app = self.app.clone();
        let resumed = claimed.is_some();
        let mut direct_complete = false;
        let token;
        // Every room the client listed is answered; those the socket is in
        // again are answered below.
        let mut rooms = serde_json::Map::new();
        for (room, _epoch, _offset) in &request.rooms {
            rooms.insert(room.to_string(), serde_json::json!({ "recovered": false }));
        }
        if let Some((public, session)) = claimed {
            crate::runtime::logs::resumed(conn.id(), session.conn);
            app.0.sessions.adopt(app.node(), public, conn.id());
            let state = conn.data_mut().state();
            if public.node == app.node() {
                state.public = Some(public.conn);
            }
            // A user attached after connect (`set_user`) comes back with the session.
            if state.user.is_none() {
                state.user.clone_from(&session.user);
            }
            for (key, value) in session.store {
                match state.store.iter_mut().find(|(k, _)| *k == key) {
                    Some(entry) => entry.1 = value,
                    None => state.store.push((key, value)),
                }
            }
            conn.data_mut().flags |= flag::RESUMED;
            if !self.register_user(conn) {
                return;
            }
            token = self.enter(conn);
            self.share_values(conn);
            // Rooms with history are joined under their stream's lock, with
            // what the socket missed taken at the same time: sent after the
            // `@connection` handlers, before any later broadcast (those wait
            // in the worker's inbox until this callback is over).
            let mut missed = Vec::new();
            for group in &session.groups {
                let Some(_) = app.history(group) else {
                    // Joined before, so within the limits.
                    let _ = self.local.join_group(&app, conn, group, None);
                    continue;
                };
                let recovery = app.recover(
                    group,
                    since(group, &request.rooms, &session.positions),
                    backfill,
                    &[SocketId { node: session.node, conn: session.conn }, public],
                    |frame| missed.push(frame.clone()),
                    || {
                        let _ = self.local.join_group(&app, conn, group, None);
                    },
                );
                let mut answer = serde_json::json!({ "recovered": recovery.recovered });
                if let Some(epoch) = recovery.epoch {
                    let position = Some((&*epoch, recovery.offset));
                    app.presence(Presence::Joined { conn_id: conn.id(), group, position });
                    set_position(conn.data_mut(), group, epoch.clone(), recovery.offset);
                    (answer["epoch"], answer["offset"]) = (epoch.as_ref().into(), recovery.offset.into());
                }
                rooms.insert(group.to_string(), answer);
            }
            self.run_connection_handlers(conn);
            let v2 = conn.data().has(flag::V2);
            // A binary broadcast is kept as text: sent in this connection's protocol.
            for frame in &missed {
                let _ = conn.send_shared(&super::binary_v1::as_delivered(frame, v2));
            }
            for kept in &session.direct {
                let _ = conn.send_shared(&super::binary_v1::as_delivered(kept, v2));
            }
            direct_complete = session.direct_complete;
            // The socket answers here now (its alias is written first): the
            // node it was lost on forgets it, and sends on what it kept for
            // it after the claim.
            if let Some(adapter) = app.0.setup.adapter.as_ref().filter(|_| session.node != app.node()) {
                adapter.session_resumed(SocketId { node: session.node, conn: session.conn }, public, session.held);
            }
        } else {
            if !self.register_user(conn) {
                return;
            }
            token = self.enter(conn);
            self.run_connection_handlers(conn);
        }
        let reply = serde_json::json!({
            "resumed": resumed,
            "socket": self.app.socket_id_of(conn.id(), conn.data()).to_string(),
            "rooms": rooms,
            "direct": { "recovered": direct_complete },
        });
        let _ = self.local.send_json(conn, |out| envelope::write_reply(out, request.id, &reply));
        conn.metrics().replied(None);
        self.send_ready(conn, token);
    }

    /// A socket waiting to take a connection over stops waiting (that
    /// connection is gone, or the auth deadline passed): it claims the
    /// session now, or comes in as a new socket (as one whose claim in the
    /// cluster's store found nothing or did not end in time).
    fn end_takeover(&mut self, conn: &mut Conn<'_, SocketData>) {
        if !conn.data().has(flag::TAKING_OVER) {
            return;
        }
        conn.data_mut().flags &= !flag::TAKING_OVER;
        let claiming = self.local.claiming.remove(&conn.id());
        if let Some(request) = conn.data_mut().state.as_mut().and_then(|s| s.resume.take()) {
            match claiming {
                // The cluster's claim found nothing, or is too late now.
                true => self.restore(conn, *request, None, &Backfill::default()),
                false => self.resume(conn, *request, false),
            }
        }
    }

    /// Takes over connection `old` for socket `waiter` of `user`, which
    /// resumes with its token: an admitted socket of the same user is
    /// closed with 4409, its session kept at once (the close is the
    /// server's own, for this resume), and the waiter told either way.
    /// Past `until` the waiter has come in as a new socket (or is coming
    /// in, claiming what was kept before then): `old` stays.
    fn take_over(
        &mut self,
        conns: &mut Conns<'_, SocketData>,
        old: ConnId,
        user: Option<&str>,
        waiter: Option<ConnId>,
        until: Instant,
    ) {
        if let Some(mut conn) = conns.get(old).filter(|_| Instant::now() < until) {
            // A waiter with no user of its own (an app that attaches users
            // after connect, with `set_user`) gets the session's back.
            if conn.data().has(flag::CONNECTED) && (user.is_none() || conn.data().user() == user) {
                self.depart(&mut conn, CLOSE_REPLACED, RESUMED_ELSEWHERE, true);
                conn.close(CLOSE_REPLACED, RESUMED_ELSEWHERE);
            }
        }
        if let Some(waiter) = waiter {
            self.app.server().notify(waiter.worker(), Box::new(WorkerMsg::TakenOver { waiter }));
        }
    }

    /// Keeps the session of a socket closed by accident, under the
    /// connection its token names, for its client to resume within the
    /// window (PROTOCOL.md §13).
    fn keep_session(&self, conn: ConnId, state: &mut SocketState) {
        let settings = &self.app.0.setup.resume;
        let Some(window) = settings.window else { return };
        let now = Instant::now();
        let session = Session {
            public: state.public.unwrap_or(conn),
            user: state.user.take(),
            groups: std::mem::take(&mut state.groups),
            store: std::mem::take(&mut state.store),
            conn,
            node: self.app.node(),
            positions: std::mem::take(&mut state.positions),
            deadline: now + window,
            direct: Default::default(),
            direct_complete: true,
            held: 0,
            record: self.record_key(conn).map(Into::into),
        };
        self.app.0.sessions.keep(session, now, settings.max_sessions);
    }

    /// The socket is gone, closed with `code` and `reason` (or being closed
    /// so, taken over by a resume): its calls fail, `@disconnect` and the
    /// after hooks run, it leaves its groups and user devices, the presence
    /// is told, and its session is kept if `keep` and the app keeps
    /// sessions. Once only: it counts the socket out and takes its state.
    fn depart(&mut self, conn: &mut Conn<'_, SocketData>, code: CloseCode, reason: &str, keep: bool) {
        let app = self.app.clone();
        let id = conn.id();
        self.local.records.remove(&id);
        self.local.claiming.remove(&id);
        for done in self.local.calls.take_all(id) {
            settle_call(conn.metrics(), done, Err(CallError::Disconnected));
        }
        let connected = conn.data().has(flag::CONNECTED);
        // Only an admitted socket runs handlers; before `@disconnect`, whose
        // async handlers' futures run to their end (a socket taken over
        // departs twice, admitted the first time only).
        #[cfg(feature = "tokio")]
        if connected {
            app.0.setup.async_tasks.socket_gone(id);
        }
        let resumable = connected && keep && app.0.setup.resume.window.is_some() && app.0.sessions.signs();
        if connected {
            let body = serde_json::json!({ "code": code.0, "reason": reason, "resumable": resumable });
            self.system(conn, &app.0.setup.router.system.disconnect, "@disconnect", &body);
        }
        let data = conn.data_mut();
        if connected {
            data.flags &= !flag::CONNECTED;
            app.0.sockets.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        }
        let mut state = data.state.take();
        if let Some(state) = state.as_deref_mut() {
            let gone = Gone { conn_id: id, user: state.user.as_deref(), code, reason };
            for After(after) in state.after.drain(..).rev() {
                if let Some(after) = after {
                    if catch_unwind(AssertUnwindSafe(|| after(&gone))).is_err() {
                        crate::runtime::logs::panicked(id, "@disconnect", "an after hook");
                    }
                }
            }
            for group in &state.groups {
                self.local.groups.leave(group, id);
                app.0.registry.leave(group, id);
            }
            // Only an admitted socket was counted as a device.
            if let Some(user) = state.user.as_deref().filter(|_| connected) {
                users::detach(&app, id, user);
            }
        }
        if connected {
            // A socket that never joined a group nor had a user keeps no
            // state, and its presence goes all the same.
            let (user, groups) = state.as_deref().map_or((None, &[][..]), |s| (s.user.as_deref(), &s.groups[..]));
            let kept = app.0.setup.resume.window.filter(|_| resumable);
            app.presence(Presence::Disconnected { conn_id: id, user, groups, kept });
        }
        if resumable {
            // A socket that kept no state (no user, group nor value) is kept all the same.
            self.keep_session(id, &mut state.unwrap_or_default());
        } else if state.is_some() {
            // A resumed socket's public id, of this node or another, no longer reaches it.
            let public = state.and_then(|s| s.public).unwrap_or(id);
            app.0.sessions.forget_alias(public, id);
        }
    }

    fn start_challenge(&mut self, conn: &mut Conn<'_, SocketData>, challenge: &Challenge) {
        let nonce = (challenge.generate)();
        let (app, verify, id) = (self.app.clone(), challenge.verify.clone(), conn.id());
        let data = serde_json::json!({ "challenge": nonce });
        let Ok(data) = serde_json::value::to_raw_value(&data) else { return };
        // Longer than the auth deadline, so that running out of time always closes with 4408.
        let timeout = self.app.0.setup.limits.auth_timeout + Duration::from_secs(1);
        let done: Done = Box::new(move |result: CallResult| {
            let (user, identity) = match result {
                Ok(answer) => {
                    let user = verify(&nonce, &answer);
                    let identity = user.is_ok().then(|| answer.into_json());
                    (user, identity)
                }
                Err(e) => (Err(Refusal::status(401, &format!("challenge failed: {e}"))), None),
            };
            app.server().notify(id.worker(), Box::new(WorkerMsg::Authenticated { conn: id, user, identity }));
        });
        self.local.begin_call(&self.app.clone(), conn, Challenge::PROCEDURE, &data, timeout, done);
    }

    fn on_app_message(&mut self, conns: &mut Conns<'_, SocketData>, message: WorkerMsg) {
        match message {
            WorkerMsg::Deliver(delivery) => self.local.deliver(conns, &delivery),
            WorkerMsg::Reply { conn, id, text } => {
                if let Some(mut conn) = conns.get(conn) {
                    let deferred = &mut conn.data_mut().state().deferred;
                    if let Some(at) = deferred.iter().position(|d| *d == id) {
                        deferred.swap_remove(at);
                    }
                    // A deferred binary reply (PROTOCOL.md §10): as is to an
                    // emitws.v2 socket, in JSON to an emitws.v1 one.
                    let _ = match binary::parse(&text) {
                        Ok(BinaryEnvelope::Reply { payload, .. }) if !conn.data().has(flag::V2) => {
                            let mut json = Vec::new();
                            super::binary_v1::write_reply(&mut json, id, payload);
                            conn.send(OpCode::Text, &json)
                        }
                        Ok(BinaryEnvelope::Reply { .. }) => conn.send(OpCode::Binary, &text),
                        _ => conn.send(OpCode::Text, &text),
                    };
                }
            }
            WorkerMsg::Call(call) => match conns.get(call.conn) {
                Some(mut conn) => {
                    let app = self.app.clone();
                    self.local.begin_call(&app, &mut conn, &call.name, &call.data, call.timeout, call.done);
                }
                None => (call.done)(Err(CallError::Disconnected)),
            },
            WorkerMsg::Authenticated { conn, user, identity } => {
                if let Some(mut conn) = conns.get(conn) {
                    if identity.is_some() && conn.data().has(flag::UNAUTHED) {
                        conn.data_mut().info_mut(&self.app.0.setup.conn.tables).identity = identity;
                    }
                    self.authenticated(&mut conn, user);
                }
            }
            WorkerMsg::TakeOver { old, user, waiter, until } => {
                self.take_over(conns, old, user.as_deref(), waiter, until)
            }
            WorkerMsg::TakenOver { waiter } => {
                if let Some(mut conn) = conns.get(waiter) {
                    self.end_takeover(&mut conn);
                }
            }
            WorkerMsg::Claimed { waiter, outcome } => {
                if let Some(mut conn) = conns.get(waiter).filter(|_| self.local.claiming.contains(&waiter)) {
                    self.claimed(&mut conn, *outcome);
                }
            }
            WorkerMsg::Cluster(event) => self.app.run_cluster_hook(&event),
            WorkerMsg::Membership { conn, change } => {
                let (group, join, done) = *change;
                let app = self.app.clone();
                let outcome = match conns.get(conn).filter(|c| c.data().has(flag::CONNECTED)) {
                    None => GroupOutcome::NotThere,
                    Some(mut conn) if join => {
                        let before = conn.data().groups().len();
                        match self.local.join(&app, &mut conn, &group) {
                            Ok(()) => GroupOutcome::Done { changed: conn.data().groups().len() != before },
                            Err(e) => GroupOutcome::refused(&e),
                        }
                    }
                    Some(mut conn) => GroupOutcome::Done { changed: self.local.leave(&app, &mut conn, &group) },
                };
                done(outcome);
            }
            WorkerMsg::UserChange { conn, change } => {
                let (user, done) = *change;
                let Some(mut conn) = conns.get(conn).filter(|c| c.data().has(flag::CONNECTED)) else {
                    return done(GroupOutcome::NotThere);
                };
                let changed = conn.data().user() != user.as_deref();
                let admitted: users::Admitted = Box::new(move |stays| {
                    done(if stays { GroupOutcome::Done { changed } } else { GroupOutcome::too_many_devices() })
                });
                users::set_user(&self.app, &mut conn, user.as_deref(), Some(admitted));
            }
            WorkerMsg::EmitBinary { conn, frames } => {
                if let Some(mut conn) = conns.get(conn) {
                    let frame = if conn.data().has(flag::V2) { &frames.0 } else { &frames.1 };
                    let _ = conn.send_shared(frame);
                }
            }
            WorkerMsg::ReadyState { conn, done } => {
                done(conns.get(conn).map_or(ReadyState::Closed, |conn| ready_state_of(conn.is_open(), conn.data())))
            }
            WorkerMsg::Prefetched { waiter, session, public, backfill } => {
                // Unless the socket stopped waiting (its auth deadline passed).
                let Some(mut conn) = conns.get(waiter).filter(|_| self.local.claiming.remove(&waiter)) else { return };
                conn.data_mut().flags &= !flag::TAKING_OVER;
                if let Some(request) = conn.data_mut().state.as_mut().and_then(|s| s.resume.take()) {
                    self.restore(&mut conn, *request, Some((public, *session)), &backfill);
                }
            }
        }
    }

    /// Drops expired sessions now and then while there are some (a claim
    /// drops them too): when the next sweep is due, if any.
    fn sweep_sessions(&mut self, now: Instant) -> Option<Instant> {
        let sessions = &self.app.0.sessions;
        if sessions.is_empty() {
            self.local.next_sweep = None;
            return None;
        }
        let window = self.app.0.setup.resume.window?;
        let next = *self.local.next_sweep.get_or_insert(now + window.min(SWEEP_EVERY));
        if now < next {
            return Some(next);
        }
        sessions.expire(now);
        let next = now + window.min(SWEEP_EVERY);
        self.local.next_sweep = Some(next);
        Some(next)
    }

    fn heartbeat(&mut self, conns: &mut Conns<'_, SocketData>, now: Instant) -> Option<Instant> {
        let interval = self.app.0.setup.heartbeat?;
        let next = *self.local.next_heartbeat.get_or_insert(now + interval);
        if now < next {
            return Some(next);
        }
        let stamp = u64::from(now_ms(&self.app)).to_be_bytes();
        conns.for_each(|conn| {
            if conn.data().missed >= 2 {
                conn.close(CLOSE_TIMEOUT, "heartbeat timeout");
            } else {
                conn.data_mut().missed += 1;
                let _ = conn.ping(&stamp);
            }
        });
        let next = now + interval;
        self.local.next_heartbeat = Some(next);
        Some(next)
    }
}

impl AppWorker {
    /// A binary frame of an `emitws.v2` socket: an envelope with a binary
    /// header (PROTOCOL.md §10), counted and limited as a text one is.
    fn on_binary(&mut self, conn: &mut Conn<'_, SocketData>, frame: &[u8]) {
        let limits = &self.app.0.setup.limits;
        let policy = limits.on_bad_input;
        if let Some(rate) = &limits.rate {
            let answers = conn.data().calls > 0
                && binary::peek_answer_id(frame).is_some_and(|id| self.local.calls.is_pending(conn.id(), id));
            if !answers && !within_rate(conn, rate) {
                return self.over_rate_with(conn, binary::peek_request_id(frame));
            }
        }
        if frame.len() > limits.max_message {
            let id = binary::peek_request_id(frame);
            let message = format!("envelope of {} bytes, the limit is {}", frame.len(), limits.max_message);
            return self.bad_input(conn, id, ErrorCode::TooLarge, &message, policy);
        }
        match binary::parse(frame) {
            // A client's names are those a JSON envelope may carry (PROTOCOL.md §2).
            Ok(BinaryEnvelope::Event { event, .. } | BinaryEnvelope::Request { event, .. })
                if !event.bytes().all(is_name_byte) =>
            {
                let message = "event names are strings of visible ASCII without quotes or backslashes";
                self.bad_input(conn, binary::peek_request_id(frame), ErrorCode::BadRequest, message, policy)
            }
            Ok(BinaryEnvelope::Event { event, payload }) => self.dispatch(conn, None, event, None, Some(payload)),
            Ok(BinaryEnvelope::Request { id, event, payload }) => {
                self.dispatch(conn, Some(id), event, None, Some(payload))
            }
            // A server's call answered with bytes: `CallReply::binary` has
            // them, and its JSON reads as an emitws.v1 socket's, `{"base64": …}`.
            Ok(BinaryEnvelope::Reply { id, payload }) => self.answer_call(conn, id, Ok(CallReply::bytes(payload))),
            Ok(BinaryEnvelope::Error { id, body }) => {
                let body = std::str::from_utf8(body).ok().and_then(|body| serde_json::from_str::<&RawValue>(body).ok());
                self.answer_call(conn, id, Err(CallError::from_wire(body)));
            }
            // Only a server numbers a room's broadcasts (PROTOCOL.md §10).
            Ok(BinaryEnvelope::EventAt { .. }) => {
                let message = "type 4 (an event with a room position) is sent by servers only";
                self.bad_input(conn, None, ErrorCode::BadRequest, message, policy)
            }
            Ok(BinaryEnvelope::Unknown) => {}
            Err(bad) => self.bad_input(conn, bad.id, ErrorCode::BadRequest, bad.message, policy),
        }
    }
}

impl Handler for AppWorker {
    type Data = SocketData;

    fn on_http(
        &mut self,
        request: &crate::proto::handshake::server::HttpRequest<'_>,
    ) -> Option<crate::runtime::HttpResponse> {
        self.app.0.setup.http.as_ref().and_then(|http| http(request))
    }

    fn on_upgrade(&mut self, request: &UpgradeRequest<'_>) -> Result<Accept<SocketData>, Reject> {
        let mut offered = request.protocols().peekable();
        if offered.peek().is_some() && !offered.any(|p| p == PROTOCOL || p == PROTOCOL_V2) {
            let body = format!(
                "this server speaks the WebSocket subprotocol {PROTOCOL} (or {PROTOCOL_V2}), which the client did not offer"
            );
            return Err(Reject { status: 400, body });
        }
        let state = self.app.0.clone();
        let mut data = SocketData::default();
        let path = request.path();
        let mut route_middleware = &[][..];
        if !state.setup.paths.is_empty() {
            let mut routes = state.setup.paths.iter().zip(1..);
            let matched = routes.find_map(|(route, tag)| route.matches(path).map(|params| (route, tag, params)));
            let Some((route, tag, params)) = matched else { return Err(Reject::status(404)) };
            // Its own handlers (the router's table of path routes) are found by this tag.
            data.path_route = tag;
            if !params.is_empty() {
                data.state().params = params;
            }
            route_middleware = &route.middleware[..];
        }
        if path != "/" {
            data.state().path = Some(path.into());
        }
        if let Some(query) = request.query() {
            data.state().query = Some(query.into());
        }
        connect::read_facts(&state.setup.conn, state.setup.limits.max_depth, request, &mut data)?;
        let mut refusal = None;
        let tables = state.setup.conn.tables.clone();
        let mut connecting = Connecting { request, data: &mut data, tables };
        if let Auth::Upgrade(identify) = &state.setup.auth {
            match identify(&mut connecting) {
                Ok(user) => connecting.data.state().user = Some(user.into()),
                Err(e) => refusal = Some(e),
            }
        }
        if refusal.is_none() {
            for middleware in state.setup.connect.iter().chain(route_middleware) {
                match middleware(&mut connecting) {
                    Ok(After(Some(after))) => connecting.data.state().after.push(After(Some(after))),
                    Ok(After(None)) => {}
                    Err(e) => {
                        refusal = Some(e);
                        break;
                    }
                }
            }
        }
        if refusal.is_none() {
            connect::admit_facts(&state.setup.conn, &mut connecting)?;
        }
        match refusal.map(|r| r.kind) {
            Some(RefusalKind::Status(status, body)) => return Err(Reject { status, body }),
            Some(RefusalKind::Close(code, reason)) => {
                data.info_mut(&state.setup.conn.tables).refusal = Some((code, reason))
            }
            None => {}
        }
        // emitws.v2 whenever offered (PROTOCOL.md §1).
        let v2 = request.protocols().any(|p| p == PROTOCOL_V2);
        if v2 {
            data.flags |= flag::V2;
        }
        let accept = Accept::new(data);
        Ok(match (v2, request.protocols().any(|p| p == PROTOCOL)) {
            (true, _) => accept.protocol(PROTOCOL_V2),
            (false, true) => accept.protocol(PROTOCOL),
            (false, false) => accept,
        })
    }

    fn on_open(&mut self, conn: &mut Conn<'_, SocketData>) {
        let app = self.app.clone();
        app.0.server.get_or_init(|| conn.server().clone());
        self.local.outbox.worker = conn.id().worker();
        self.local.metrics.get_or_insert_with(|| conn.metrics().clone());
        let now = conn.clock_ms();
        let data = conn.data_mut();
        if let Some(rate) = &app.0.setup.limits.rate {
            data.bucket = Bucket::full(rate, now);
        }
        if let Some(refusal) = data.state.as_mut().and_then(|s| s.info.as_mut()?.refusal.take()) {
            return conn.close(refusal.0, &refusal.1);
        }
        let awaits_resume = data.query().and_then(|q| query_value(q, RESUME_PARAM)).is_some_and(|v| v == "1");
        if awaits_resume {
            data.flags |= flag::AWAIT_RESUME;
        }
        let authenticates = matches!(app.0.setup.auth, Auth::FirstMessage(..) | Auth::Challenge(_));
        if authenticates {
            conn.data_mut().flags |= flag::UNAUTHED;
        }
        if authenticates || awaits_resume {
            let deadline = Instant::now() + app.0.setup.limits.auth_timeout;
            self.local.auth_deadlines.push_back((deadline, conn.id()));
        }
        if let Auth::Challenge(challenge) = &app.0.setup.auth {
            self.start_challenge(conn, challenge);
        } else if !authenticates && !awaits_resume {
            self.admit(conn);
        }
    }

    fn on_message(&mut self, conn: &mut Conn<'_, SocketData>, message: Message<'_>) {
        // Borrowed, not copied: this runs for every envelope.
        let limits = &self.app.0.setup.limits;
        let policy = limits.on_bad_input;
        conn.data_mut().missed = 0;
        if let Message::Binary(frame) = message {
            if conn.data().has(flag::V2) {
                return self.on_binary(conn, frame);
            }
        }
        let text = match message {
            Message::Text(text) => Some(text),
            Message::Binary(_) => None,
        };
        if let Some(rate) = &limits.rate {
            if !text.is_some_and(|text| self.answers_pending_call(conn, text)) && !within_rate(conn, rate) {
                return self.over_rate(conn, text.unwrap_or_default());
            }
        }
        let Some(text) = text else {
            let message = "binary frames are not part of emitws.v1";
            return self.bad_input(conn, None, ErrorCode::BadRequest, message, policy);
        };
        if text.len() > limits.max_message {
            let id = envelope::peek_request_id(text);
            let message = format!("envelope of {} bytes, the limit is {}", text.len(), limits.max_message);
            return self.bad_input(conn, id, ErrorCode::TooLarge, &message, policy);
        }
        // The envelope array counts: data may be `max_depth - 1` deep.
        // Nesting n levels deep takes 2n bytes: short envelopes need no scan.
        if text.len() > 2 * limits.max_depth && envelope::depth(text) > limits.max_depth {
            let id = envelope::peek_request_id(text);
            let message = format!("JSON nested deeper than {} (the envelope counts)", limits.max_depth);
            return self.bad_input(conn, id, ErrorCode::BadRequest, &message, policy);
        }
        match envelope::parse(text) {
            Ok(Envelope::Event { event, data }) => self.dispatch(conn, None, event, data, None),
            Ok(Envelope::Request { id, event, data }) => self.dispatch(conn, Some(id), event, data, None),
            Ok(Envelope::Reply { id, data }) => {
                let data = data.map_or_else(|| RawValue::from_string("null".into()), |d| Ok(d.to_owned()));
                let result = data.map(CallReply::json).map_err(|_| CallError::Disconnected);
                self.answer_call(conn, id, result);
            }
            Ok(Envelope::Error { id, error }) => self.answer_call(conn, id, Err(CallError::from_wire(error))),
            Ok(Envelope::Unknown) => {}
            Err(malformed) => self.bad_input(conn, malformed.id, malformed.code, &malformed.message, policy),
        }
    }

    fn on_pong(&mut self, conn: &mut Conn<'_, SocketData>, payload: &[u8]) {
        conn.data_mut().missed = 0;
        let Ok(stamp) = <[u8; 8]>::try_from(payload) else { return };
        let app = self.app.clone();
        let rtt = u64::from(now_ms(&app)).wrapping_sub(u64::from_be_bytes(stamp)) & u64::from(u32::MAX);
        self.system(conn, &app.0.setup.router.system.ping, "@ping", &serde_json::json!({ "rtt_ms": rtt }));
    }

    fn on_close(&mut self, conn: &mut Conn<'_, SocketData>, why: &CloseReason) {
        // A close this node started decides the session's fate, answered or
        // not: a kicked client that ignores the frame (1006 at the close
        // timeout) or answers another code must not keep a resumable session.
        let meant = conn.close_sent().unwrap_or(why.code());
        self.depart(conn, why.code(), &why.reason(), keeps_session(meant));
    }

    /// A shutdown lets deferred replies go out before the socket's 1001.
    fn pending_work(&mut self, conn: &mut Conn<'_, SocketData>) -> bool {
        !conn.data().deferred().is_empty()
    }

    fn on_notify(&mut self, conns: &mut Conns<'_, SocketData>, message: Box<dyn Any + Send>) {
        if let Ok(message) = message.downcast::<WorkerMsg>() {
            self.on_app_message(conns, *message);
        }
    }

    fn on_turn(&mut self, conns: &mut Conns<'_, SocketData>) -> Option<Duration> {
        if self.local.outbox.worker == usize::MAX {
            self.local.outbox.worker = conns.worker();
        }
        while !self.local.outbox.deliveries.is_empty() {
            for delivery in std::mem::take(&mut self.local.outbox.deliveries) {
                self.local.deliver(conns, &delivery);
            }
        }
        let now = Instant::now();
        for (id, done) in self.local.calls.expired(now) {
            if let Some(mut conn) = conns.get(id) {
                let data = conn.data_mut();
                data.calls = data.calls.saturating_sub(1);
            }
            match &self.local.metrics {
                Some(metrics) => settle_call(metrics, done, Err(CallError::Timeout)),
                // No socket opened on this worker, so none made a call.
                None => done(Err(CallError::Timeout)),
            }
        }
        while let Some(&(at, id)) = self.local.auth_deadlines.front() {
            if at > now {
                break;
            }
            self.local.auth_deadlines.pop_front();
            if let Some(mut conn) = conns.get(id) {
                if conn.data().flags & (flag::UNAUTHED | flag::AWAIT_RESUME) != 0 {
                    conn.close(CLOSE_TIMEOUT, "authentication timeout");
                } else {
                    self.end_takeover(&mut conn);
                }
            }
        }
        let heartbeat = self.heartbeat(conns, now);
        let sweep = self.sweep_sessions(now);
        if !self.local.outbox.deliveries.is_empty() {
            return Some(Duration::ZERO);
        }
        let auth = self.local.auth_deadlines.front().map(|(at, _)| *at);
        let next = [self.local.calls.next_deadline(), auth, heartbeat, sweep].into_iter().flatten().min()?;
        Some(next.saturating_duration_since(now))
    }
}

/// Where a resume replays `room` from: the client's position when it
/// listed the room, else the socket's when it joined (or last recovered it).
fn since<'a>(
    room: &str,
    listed: &'a [(Box<str>, Box<str>, u64)],
    noted: &'a [(Box<str>, Arc<str>, u64)],
) -> Option<(&'a str, u64)> {
    let listed = listed.iter().find(|(r, ..)| &**r == room).map(|(_, epoch, offset)| (&**epoch, *offset));
    listed.or_else(|| noted.iter().find(|(r, ..)| &**r == room).map(|(_, epoch, offset)| (&**epoch, *offset)))
}

#[cfg_attr(not(feature = "redis"), allow(dead_code))] // called by the Redis adapter
impl AppHandle {
    /// A resume on another node takes over connection `old` of this node
    /// (of `user`): it is closed with 4409, its session kept, if it is
    /// still open (that node claims again by itself).
    pub(crate) fn deliver_takeover(&self, old: ConnId, user: Option<&str>) {
        if self.0.server.get().is_none() {
            return; // no socket has opened on this node yet
        }
        let until = Instant::now() + self.0.setup.limits.auth_timeout;
        let take_over = WorkerMsg::TakeOver { old, user: user.map(Into::into), waiter: None, until };
        self.server().notify(old.worker(), Box::new(take_over));
    }

    /// Another node claimed the session lost with connection `lost` of
    /// this node: it goes here, and what this node sends to its public id
    /// `public` (None: not known) follows it there. With `held` (the number
    /// of the last direct message the claim took from the store; None from
    /// a node that does not say), the ones kept here after it are sent on.
    pub(crate) fn session_claimed_elsewhere(&self, lost: ConnId, public: Option<SocketId>, held: Option<u64>) {
        let own = public.filter(|id| id.node == self.node()).map(|id| id.conn);
        let session = self.0.sessions.departed(lost, own, self.0.setup.resume.max_sessions);
        // What was kept here after the claim took the store's copies (those
        // numbered past `held`) follows the socket by its public id (the
        // node it resumed on wrote its alias before it told this one).
        let (Some(session), Some(public), Some(held)) = (session, public, held) else { return };
        let late = session.held.saturating_sub(held).min(session.direct.len() as u64) as usize;
        for frame in session.direct.iter().skip(session.direct.len() - late) {
            self.publish(frame, Target::Socket(public));
        }
    }

    /// The socket of public id `socket`, open here, had its session claimed
    /// on another node while this node was cut off from the cluster's store
    /// (learned when it came back): the session is that node's, so the
    /// socket here is closed with 4409 and its id followed there.
    pub(crate) fn socket_resumed_elsewhere(&self, socket: SocketId) {
        let Some(conn) = self.local_conn(socket) else { return };
        let public = (socket.node == self.node()).then_some(socket.conn);
        self.0.sessions.departed(conn, public, self.0.setup.resume.max_sessions);
        self.server().close(conn, CLOSE_REPLACED, RESUMED_ELSEWHERE);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_text_that_is_not_json_closes_1007() {
        assert_eq!(close_code(ErrorCode::NotJson), CloseCode(1007));
        assert_eq!(close_code(ErrorCode::BadRequest), CloseCode(1008));
        assert_eq!(close_code(ErrorCode::RateLimited), CloseCode(1008));
    }
}
