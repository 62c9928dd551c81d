//! Connecting: path routes with parameters, connection middleware (with code
//! that runs at disconnect), identification and challenge-response auth.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;

use super::disconnect::After;
use super::request::Request;
use super::router::{Middleware, Next, Router};
use super::rpc::CallReply;
use super::socket::{query_value, SocketData};
use crate::proto::CloseCode;
use crate::runtime::UpgradeRequest;

/// A refused connection: at upgrade time an HTTP status, or a close code
/// right after the upgrade (what browsers can see: they hide the status of
/// a failed upgrade).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    pub(crate) kind: RefusalKind,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum RefusalKind {
    Status(u16, String),
    Close(CloseCode, String),
}

impl Refusal {
    /// An HTTP status (401, 403, …) at upgrade time. After the upgrade (an
    /// identify by message, a challenge) it becomes close code 4000 + status.
    pub fn status(status: u16, body: &str) -> Refusal {
        Refusal { kind: RefusalKind::Status(status, body.into()) }
    }

    /// The upgrade completes, then the socket is closed with `code` (4000–4999
    /// for application codes) and `reason`.
    pub fn close(code: CloseCode, reason: &str) -> Refusal {
        Refusal { kind: RefusalKind::Close(code, reason.into()) }
    }

    /// The close code and reason this refusal comes to after the upgrade.
    pub(crate) fn as_close(&self) -> (CloseCode, String) {
        match &self.kind {
            RefusalKind::Status(status, body) => (CloseCode(4000 + status % 1000), body.clone()),
            RefusalKind::Close(code, reason) => (*code, reason.clone()),
        }
    }
}

/// A connection being upgraded, as identify hooks and connection middleware see it.
pub struct Connecting<'a> {
    pub(crate) request: &'a UpgradeRequest<'a>,
    pub(crate) data: &'a mut SocketData,
}

impl fmt::Debug for Connecting<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connecting").field("path", &self.path()).finish()
    }
}

impl Connecting<'_> {
    /// The request path, without the query.
    pub fn path(&self) -> &str {
        self.request.path()
    }

    /// A parameter of the matched route (`:room` in `/chat/:room`).
    pub fn param(&self, name: &str) -> Option<&str> {
        self.data.param(name)
    }

    /// The raw query string.
    pub fn query(&self) -> Option<&str> {
        self.request.query()
    }

    /// A query parameter, percent-decoded.
    pub fn query_value(&self, name: &str) -> Option<String> {
        query_value(self.request.query()?, name)
    }

    /// A request header (case-insensitive name), if it is UTF-8.
    pub fn header(&self, name: &str) -> Option<&str> {
        std::str::from_utf8(self.request.header(name)?).ok()
    }

    /// The client's address.
    pub fn peer_addr(&self) -> Option<SocketAddr> {
        self.request.peer_addr()
    }

    /// The user the identify hook gave, if any.
    pub fn user(&self) -> Option<&str> {
        self.data.user()
    }

    /// Stores a value on the socket, for `req.get` later (`Send`, as
    /// [`Request::set`](super::Request::set) says why).
    pub fn set<T: Send + 'static>(&mut self, key: &str, value: T) {
        self.data.set(key, value);
    }
}

/// Connection middleware.
pub(crate) type ConnectFn = Arc<dyn Fn(&mut Connecting<'_>) -> Result<After, Refusal> + Send + Sync>;
/// Identification at upgrade time.
pub(crate) type IdentifyFn = Arc<dyn Fn(&mut Connecting<'_>) -> Result<String, Refusal> + Send + Sync>;

/// WSE-style challenge-response authentication: on connect the server calls
/// the client's `@challenge` procedure with `{"challenge": <generate()>}` and
/// hands the answer to `verify`, which names the user or refuses.
#[derive(Clone)]
pub struct Challenge {
    pub(crate) generate: Arc<dyn Fn() -> String + Send + Sync>,
    pub(crate) verify: VerifyFn,
}

/// Checks a challenge's answer.
pub(crate) type VerifyFn = Arc<dyn Fn(&str, &CallReply) -> Result<String, Refusal> + Send + Sync>;

impl Challenge {
    /// The name of the client procedure the challenge calls.
    pub const PROCEDURE: &'static str = "@challenge";

    /// A challenge from a nonce generator and a verifier.
    pub fn new(
        generate: impl Fn() -> String + Send + Sync + 'static,
        verify: impl Fn(&str, &CallReply) -> Result<String, Refusal> + Send + Sync + 'static,
    ) -> Challenge {
        Challenge { generate: Arc::new(generate), verify: Arc::new(verify) }
    }
}

impl fmt::Debug for Challenge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Challenge")
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Segment {
    Literal(Box<str>),
    Param(Box<str>),
}

/// A path sockets may connect to, such as `/chat/:room` (openspeed's
/// `app.ws('/chat/:room', …)`), with its own connection middleware and its
/// own event handlers and middleware.
///
/// A socket connected on the path gets the route's handlers first:
///
/// - a user event runs the route's handler of that name if it has one,
///   else the app's, else the route's `@any`, else the app's `@any`; with
///   none of these a request is answered `no_handler`, as on any path;
/// - the app's middleware ([`App::middleware`](super::App::middleware))
///   runs first, then the route's ([`middleware`](Self::middleware)), then
///   the event's own (`on_with`), then the handler, whether the handler is
///   the route's or the app's;
/// - the route's `@connection`, `@disconnect`, `@error` and `@ping`
///   handlers run for its sockets, before the app's (which run too).
///
/// [`Request::param`](super::Request::param) reads the path's parameters in
/// all of them. Sockets on other paths never see the route's handlers.
///
/// ```
/// use emitws::app::{App, BroadcastOpts};
/// let mut app = App::new();
/// app.on("/whoami", |req| req.reply(&req.conn_id().0));
/// app.route("/chat/:room")
///     .middleware(|req, next| {
///         // Only the route's sockets pass here.
///         if req.param("room") == Some("closed") {
///             return req.reply_err("forbidden", "this room is closed");
///         }
///         next.run(req);
///     })
///     .on("@connection", |req| {
///         let room = format!("#{}", req.param("room").unwrap_or_default());
///         let _ = req.join(&room);
///     })
///     .on("/say", |req| {
///         let room = format!("#{}", req.param("room").unwrap_or_default());
///         let text = req.raw_data();
///         let _ = req.broadcast("/said", &text, BroadcastOpts::to(&room));
///     });
/// ```
pub struct PathRoute {
    segments: Vec<Segment>,
    pub(crate) middleware: Vec<ConnectFn>,
    /// Its own handlers and middleware, taken into the app's router when
    /// the app listens.
    pub(crate) events: Router,
}

impl fmt::Debug for PathRoute {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PathRoute").field("segments", &self.segments).finish()
    }
}

impl PathRoute {
    pub(crate) fn new(pattern: &str) -> PathRoute {
        let segments = pattern
            .split('/')
            .filter(|s| !s.is_empty())
            .map(|s| match s.strip_prefix(':') {
                Some(name) => Segment::Param(name.into()),
                None => Segment::Literal(s.into()),
            })
            .collect();
        PathRoute { segments, middleware: Vec::new(), events: Router::default() }
    }

    /// Handles an event (`/name`) or a system event (`@connection`,
    /// `@disconnect`, `@error`, `@any`, `@ping`, as
    /// [`App::on`](super::App::on)) for the sockets connected on this path,
    /// before the app's handlers (see [`PathRoute`]).
    pub fn on(&mut self, event: &str, handler: impl Fn(&mut Request<'_>) + Send + Sync + 'static) -> &mut Self {
        self.events.add(event, Vec::new(), Arc::new(handler));
        self
    }

    /// Handles an event for this path's sockets behind route middleware,
    /// as [`App::on_with`](super::App::on_with).
    pub fn on_with(
        &mut self,
        event: &str,
        middleware: impl IntoIterator<Item = Middleware>,
        handler: impl Fn(&mut Request<'_>) + Send + Sync + 'static,
    ) -> &mut Self {
        self.events.add(event, middleware.into_iter().collect(), Arc::new(handler));
        self
    }

    /// Adds middleware that runs before every user event's handler for this
    /// path's sockets — the route's handlers and the app's — after the app's
    /// own middleware, in the order added.
    pub fn middleware(&mut self, middleware: impl Fn(&mut Request<'_>, Next<'_>) + Send + Sync + 'static) -> &mut Self {
        self.events.add_middleware(Middleware::new(middleware));
        self
    }

    /// Adds connection middleware that runs for this path only, after the app's.
    pub fn on_connect(
        &mut self,
        middleware: impl Fn(&mut Connecting<'_>) -> Result<After, Refusal> + Send + Sync + 'static,
    ) -> &mut Self {
        self.middleware.push(Arc::new(middleware));
        self
    }

    /// The parameters if `path` matches.
    pub(crate) fn matches(&self, path: &str) -> Option<Vec<(Box<str>, Box<str>)>> {
        let mut parts = path.split('/').filter(|s| !s.is_empty());
        let mut params = Vec::new();
        for segment in &self.segments {
            let part = parts.next()?;
            match segment {
                Segment::Literal(literal) if **literal == *part => {}
                Segment::Literal(_) => return None,
                Segment::Param(name) => params.push((name.clone(), part.into())),
            }
        }
        parts.next().is_none().then_some(params)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_match_whole_paths_and_capture_parameters() {
        let route = PathRoute::new("/chat/:room");
        assert_eq!(route.matches("/chat/lobby"), Some(vec![("room".into(), "lobby".into())]));
        assert_eq!(route.matches("/chat/lobby/"), Some(vec![("room".into(), "lobby".into())]));
        assert_eq!(route.matches("/chat"), None);
        assert_eq!(route.matches("/chat/a/b"), None);
        assert_eq!(route.matches("/news/a"), None);
        assert_eq!(PathRoute::new("/").matches("/"), Some(vec![]));
    }

    #[test]
    fn refusals_map_to_close_codes_after_the_upgrade() {
        assert_eq!(Refusal::status(401, "who?").as_close(), (CloseCode(4401), "who?".into()));
        assert_eq!(Refusal::close(CloseCode(4003), "no").as_close(), (CloseCode(4003), "no".into()));
    }
}
