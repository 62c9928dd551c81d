//! Event routes: handlers by name, middleware chains, namespaces.

use std::collections::HashMap;
use std::fmt;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;

use super::request::Request;
use super::App;

/// An event handler, shared by every worker.
pub(crate) type Handler = Arc<dyn Fn(&mut Request<'_>) + Send + Sync>;

/// A middleware: runs before a handler, and passes the request on with
/// [`Next::run`] or stops the chain (replying with an error, say).
///
/// ```
/// use emitws::app::{App, Middleware};
/// let auth = Middleware::new(|req, next| {
///     if req.get::<String>("user").is_none() {
///         return req.reply_err("unauthorized", "log in first");
///     }
///     next.run(req);
/// });
/// let mut app = App::new();
/// app.on_with("/profile", [auth], |req| {
///     let user = req.get::<String>("user").cloned();
///     req.reply(&user);
/// });
/// ```
#[derive(Clone)]
pub struct Middleware(Arc<MiddlewareFn>);

type MiddlewareFn = dyn Fn(&mut Request<'_>, Next<'_>) + Send + Sync;

impl Middleware {
    /// Wraps a middleware function.
    pub fn new(f: impl Fn(&mut Request<'_>, Next<'_>) + Send + Sync + 'static) -> Middleware {
        Middleware(Arc::new(f))
    }

    /// Runs it (for a middleware that wraps another).
    pub fn call(&self, req: &mut Request<'_>, next: Next<'_>) {
        (self.0)(req, next)
    }
}

impl fmt::Debug for Middleware {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Middleware")
    }
}

/// The rest of a middleware chain: the middleware after this one, then the handler.
pub struct Next<'a> {
    global: &'a [Middleware],
    route: &'a [Middleware],
    handler: &'a Handler,
}

impl fmt::Debug for Next<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Next").field("left", &(self.global.len() + self.route.len())).finish()
    }
}

impl Next<'_> {
    /// Passes the request to the next middleware, or to the handler.
    pub fn run(self, req: &mut Request<'_>) {
        if let Some((first, global)) = self.global.split_first() {
            first.call(req, Next { global, ..self });
        } else if let Some((first, route)) = self.route.split_first() {
            first.call(req, Next { route, ..self });
        } else {
            (self.handler)(req);
        }
    }
}

/// A route: its own middleware, then its handler.
pub(crate) struct Route {
    middleware: Vec<Middleware>,
    handler: Handler,
}

/// The system events an app can handle.
#[derive(Default)]
pub(crate) struct System {
    pub connection: Vec<Handler>,
    pub disconnect: Vec<Handler>,
    pub error: Vec<Handler>,
    pub any: Vec<Handler>,
    pub ping: Vec<Handler>,
}

/// Every route and middleware of an app.
#[derive(Default)]
pub(crate) struct Router {
    routes: HashMap<Box<str>, Route, BuildHasherDefault<Fnv>>,
    middleware: Vec<Middleware>,
    pub system: System,
}

impl Router {
    pub fn add(&mut self, event: &str, middleware: Vec<Middleware>, handler: Handler) {
        let system = &mut self.system;
        let list = match event {
            "@connection" => &mut system.connection,
            "@disconnect" => &mut system.disconnect,
            "@error" => &mut system.error,
            "@any" => &mut system.any,
            "@ping" => &mut system.ping,
            _ => {
                self.routes.insert(event.into(), Route { middleware, handler });
                return;
            }
        };
        list.push(match middleware.is_empty() {
            true => handler,
            // A system handler with middleware: the chain is folded into one handler.
            false => Arc::new(move |req: &mut Request<'_>| {
                Next { global: &[], route: &middleware, handler: &handler }.run(req)
            }),
        });
    }

    pub fn add_middleware(&mut self, middleware: Middleware) {
        self.middleware.push(middleware);
    }

    /// Runs the event's chain (or `@any`'s); false if nothing handles it.
    pub fn dispatch(&self, event: &str, req: &mut Request<'_>) -> bool {
        if let Some(route) = self.routes.get(event) {
            Next { global: &self.middleware, route: &route.middleware, handler: &route.handler }.run(req);
            return true;
        }
        if self.system.any.is_empty() {
            return false;
        }
        for handler in &self.system.any {
            Next { global: &self.middleware, route: &[], handler }.run(req);
        }
        true
    }
}

/// FNV-1a: one lookup per message in a table the app fixed before listening
/// (clients cannot add keys to it, so a keyed hash buys nothing here).
struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Fnv {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl Hasher for Fnv {
    fn write(&mut self, bytes: &[u8]) {
        let mut hash = self.0;
        for &b in bytes {
            hash = (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
        self.0 = hash;
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// Events under a prefix: `app.ns("/chat").on("/say", h)` handles `/chat/say`.
/// Namespaces nest.
///
/// ```
/// use emitws::app::App;
/// let mut app = App::new();
/// let mut game = app.ns("/game");
/// game.on("/move", |req| req.reply(&"moved"));
/// game.ns("/lobby").on("/join", |req| req.reply(&"joined")); // /game/lobby/join
/// ```
pub struct Ns<'a> {
    pub(crate) app: &'a mut App,
    pub(crate) prefix: String,
}

impl fmt::Debug for Ns<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ns").field("prefix", &self.prefix).finish()
    }
}

impl Ns<'_> {
    /// Handles `prefix + event`.
    pub fn on(&mut self, event: &str, handler: impl Fn(&mut Request<'_>) + Send + Sync + 'static) -> &mut Self {
        let name = format!("{}{event}", self.prefix);
        self.app.on(&name, handler);
        self
    }

    /// Handles `prefix + event` behind route middleware.
    pub fn on_with(
        &mut self,
        event: &str,
        middleware: impl IntoIterator<Item = Middleware>,
        handler: impl Fn(&mut Request<'_>) + Send + Sync + 'static,
    ) -> &mut Self {
        let name = format!("{}{event}", self.prefix);
        self.app.on_with(&name, middleware, handler);
        self
    }

    /// A namespace nested in this one.
    pub fn ns(&mut self, prefix: &str) -> Ns<'_> {
        Ns { prefix: format!("{}{prefix}", self.prefix), app: self.app }
    }

    /// The full prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }
}
