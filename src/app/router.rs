//! Event routes: handlers by name, middleware chains, namespaces.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use super::connect::PathRoute;
use super::handle::AppHandle;
use super::locks::{read, write};
use super::request::Request;
#[cfg(doc)]
use super::socket::SocketData;
use super::App;

/// An event handler, shared by every worker.
pub(crate) type EventHandler = Arc<dyn Fn(&mut Request<'_>) + Send + Sync>;

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
    /// Namespace middleware, each under its prefix: those whose prefix
    /// holds the event run, after the global ones.
    ns: &'a [(Box<str>, Middleware)],
    route: &'a [Middleware],
    handler: &'a EventHandler,
}

impl fmt::Debug for Next<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Next").field("left", &(self.global.len() + self.ns.len() + self.route.len())).finish()
    }
}

impl Next<'_> {
    /// Passes the request to the next middleware, or to the handler.
    #[inline]
    pub fn run(self, req: &mut Request<'_>) {
        // Most events have no middleware: straight to the handler, inlined
        // into the dispatch (callgrind: the chain's walk cost 40
        // instructions per message when it stood in the way).
        if self.global.is_empty() && self.ns.is_empty() && self.route.is_empty() {
            return (self.handler)(req);
        }
        self.run_chain(req);
    }

    /// [`run`](Self::run) with middleware left.
    #[inline(never)]
    fn run_chain(self, req: &mut Request<'_>) {
        if let Some((first, global)) = self.global.split_first() {
            first.call(req, Next { global, ..self });
        } else if let Some(at) = self.ns.iter().position(|(prefix, _)| in_namespace(req.event(), prefix)) {
            let ns = &self.ns[at + 1..];
            self.ns[at].1.call(req, Next { ns, ..self });
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
    handler: EventHandler,
    /// Its index among the route names the metrics count by.
    label: usize,
}

/// The handlers of each system event (`@connection`, `@disconnect`, …).
#[derive(Default)]
pub(crate) struct SystemHandlers {
    pub connection: Vec<EventHandler>,
    pub disconnect: Vec<EventHandler>,
    pub error: Vec<EventHandler>,
    pub any: Vec<EventHandler>,
    pub ping: Vec<EventHandler>,
}

/// Every route and middleware of an app.
#[derive(Default)]
pub(crate) struct Router {
    routes: HashMap<Box<str>, Route, BuildHasherDefault<NameHash>>,
    middleware: Vec<Middleware>,
    /// Namespace middleware ([`Ns::middleware`]), in the order added.
    ns_middleware: Vec<(Box<str>, Middleware)>,
    /// Routes taken away while the app runs ([`AppHandle::unregister`]).
    removed: Removed,
    pub system: SystemHandlers,
    /// The path routes' own tables ([`PathRoute`]), by the tag of
    /// [`SocketData::path_route`] less one; each one's middleware is the
    /// app's then its own, its system handlers but `@any` moved into the
    /// app's (see [`mount`](Self::mount)). Empty without path routes.
    paths: Vec<Router>,
    /// The names of events only path routes handle, labelled after the app's.
    path_names: Vec<Box<str>>,
}

/// The routes unregistered while the app runs. The route table is built
/// before listening and shared by every worker without a lock; this set is
/// beside it, read on each message only once something was unregistered
/// (one relaxed load until then), so workers see a removal at their next
/// message without the table being rebuilt.
#[derive(Default)]
struct Removed {
    any: AtomicBool,
    names: RwLock<HashSet<Box<str>>>,
}

impl Removed {
    fn has(&self, event: &str) -> bool {
        self.any.load(Ordering::Relaxed) && read(&self.names).contains(event)
    }
}

/// Whether `event` is under namespace `prefix`: `/chat/say` and `/chat`
/// are under `/chat`, `/chatter` is not.
fn in_namespace(event: &str, prefix: &str) -> bool {
    match event.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || rest.starts_with('/') || prefix.ends_with('/'),
        None => false,
    }
}

impl Router {
    pub fn add(&mut self, event: &str, middleware: Vec<Middleware>, handler: EventHandler) {
        let system = &mut self.system;
        let list = match event {
            "@connection" => &mut system.connection,
            "@disconnect" => &mut system.disconnect,
            "@error" => &mut system.error,
            "@any" => &mut system.any,
            "@ping" => &mut system.ping,
            _ => {
                // A route set again keeps its label.
                let label = self.routes.get(event).map_or(self.routes.len(), |route| route.label);
                self.routes.insert(event.into(), Route { middleware, handler, label });
                return;
            }
        };
        list.push(match middleware.is_empty() {
            true => handler,
            // A system handler with middleware: the chain is folded into one handler.
            false => Arc::new(move |req: &mut Request<'_>| {
                Next { global: &[], ns: &[], route: &middleware, handler: &handler }.run(req)
            }),
        });
    }

    pub fn add_middleware(&mut self, middleware: Middleware) {
        self.middleware.push(middleware);
    }

    pub fn add_ns_middleware(&mut self, prefix: &str, middleware: Middleware) {
        self.ns_middleware.push((prefix.into(), middleware));
    }

    /// The route names, in label order (see [`Route::label`]).
    pub fn names(&self) -> Vec<Box<str>> {
        let mut names = vec![Box::<str>::default(); self.routes.len()];
        for (name, route) in &self.routes {
            names[route.label] = name.clone();
        }
        names.extend(self.path_names.iter().cloned());
        names
    }

    /// Takes the path routes' own handlers and middleware in, in their
    /// order (a socket's [`SocketData::path_route`] tag finds its route's),
    /// once, when the app listens: an event name only routes handle gets a
    /// metrics label after the app's; a route's middleware list becomes the
    /// app's then its own, so that a chain is walked as for the app's
    /// sockets; its `@connection`, `@disconnect`, `@error` and `@ping`
    /// handlers go before the app's, each run only for its own sockets.
    ///
    /// # Panics
    ///
    /// With more path routes than a tag counts (65,535): a setup mistake.
    pub fn mount(&mut self, paths: &mut [PathRoute]) {
        assert!(paths.len() <= usize::from(u16::MAX), "App::route: more than {} path routes", u16::MAX);
        let mut labels: HashMap<Box<str>, usize> =
            self.names().into_iter().enumerate().map(|(label, name)| (name, label)).collect();
        for (path, tag) in paths.iter_mut().zip(1..) {
            let mut own = std::mem::take(&mut path.events);
            for (name, route) in &mut own.routes {
                let next = labels.len();
                route.label = *labels.entry(name.clone()).or_insert_with(|| {
                    self.path_names.push(name.clone());
                    next
                });
            }
            own.middleware = self.middleware.iter().chain(&own.middleware).cloned().collect();
            let system = std::mem::take(&mut own.system);
            own.system.any = system.any;
            let app = &mut self.system;
            for (app, own) in [
                (&mut app.connection, system.connection),
                (&mut app.disconnect, system.disconnect),
                (&mut app.error, system.error),
                (&mut app.ping, system.ping),
            ] {
                app.splice(0..0, own.into_iter().map(|handler| only_on_path(tag, handler)));
            }
            self.paths.push(own);
        }
    }

    /// Runs the event's chain (or `@any`'s); false if nothing handles it.
    /// A socket of a path route has its route's handlers tried first.
    pub fn dispatch(&self, event: &str, req: &mut Request<'_>) -> bool {
        // One test of an empty list for apps without path routes.
        let path = match self.paths.is_empty() {
            true => None,
            false => usize::from(req.conn.data().path_route).checked_sub(1).and_then(|at| self.paths.get(at)),
        };
        let route = path.and_then(|path| path.routes.get(event)).or_else(|| self.routes.get(event));
        let route = route.filter(|_| !self.removed.has(event));
        req.conn.metrics().dispatched(route.map(|route| route.label), req.id.is_some());
        let global = path.map_or(&self.middleware, |path| &path.middleware);
        if let Some(route) = route {
            Next { global, ns: &self.ns_middleware, route: &route.middleware, handler: &route.handler }.run(req);
            return true;
        }
        let any = match path {
            Some(path) if !path.system.any.is_empty() => &path.system.any,
            _ => &self.system.any,
        };
        if any.is_empty() {
            return false;
        }
        for handler in any {
            Next { global, ns: &self.ns_middleware, route: &[], handler }.run(req);
        }
        true
    }
}

/// A path route's system handler, which runs only for the sockets connected on it.
fn only_on_path(tag: u16, handler: EventHandler) -> EventHandler {
    Arc::new(move |req: &mut Request<'_>| {
        if req.conn.data().path_route == tag {
            handler(req)
        }
    })
}

/// The route table's hash of event names, taken once per message: a
/// multiply per 8 bytes, and the last 1 to 8 bytes read as two overlapping
/// words, so a short name costs a few instructions. The table is fixed before
/// listening and clients cannot add keys to it, so a keyed hash buys nothing.
#[derive(Default)]
struct NameHash(u64);

impl NameHash {
    fn mix(&mut self, word: u64) {
        self.0 = (self.0 ^ word).wrapping_mul(0x9e37_79b9_7f4a_7c15).rotate_left(29);
    }
}

impl Hasher for NameHash {
    fn write(&mut self, bytes: &[u8]) {
        let mut rest = bytes;
        while let Some((word, tail)) = rest.split_first_chunk::<8>() {
            self.mix(u64::from_le_bytes(*word));
            rest = tail;
        }
        let byte = |at: usize| u64::from(rest[at]);
        let word = match (rest.first_chunk::<4>(), rest.last_chunk::<4>()) {
            (Some(head), Some(tail)) => {
                u64::from(u32::from_le_bytes(*head)) << 32 | u64::from(u32::from_le_bytes(*tail))
            }
            _ if rest.is_empty() => return,
            _ => byte(0) << 16 | byte(rest.len() / 2) << 8 | byte(rest.len() - 1),
        };
        self.mix(word ^ (rest.len() as u64) << 56);
    }

    fn write_u8(&mut self, byte: u8) {
        self.mix(u64::from(byte));
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

    /// Adds middleware for this namespace's events only (egg-socket.io's
    /// namespace `packetMiddleware`): it runs for every event under the
    /// prefix (`/chat`, `/chat/…`; not `/chatter`), those of nested
    /// namespaces and events without a handler (`@any`) included. A
    /// chain runs the app-wide middleware ([`App::middleware`]) first, then
    /// the namespace middleware whose prefix holds the event, in the order
    /// added, then the route's own ([`on_with`](Self::on_with)), then the
    /// handler.
    ///
    /// ```
    /// use emitws::app::App;
    /// let mut app = App::new();
    /// app.ns("/admin")
    ///     .middleware(|req, next| {
    ///         if req.user() != Some("root") {
    ///             return req.reply_err("forbidden", "admins only");
    ///         }
    ///         next.run(req);
    ///     })
    ///     .on("/stats", |req| req.reply(&"all good")); // /admin/stats, admins only
    /// app.on("/public", |req| req.reply(&"anyone")); // not behind it
    /// ```
    pub fn middleware(&mut self, middleware: impl Fn(&mut Request<'_>, Next<'_>) + Send + Sync + 'static) -> &mut Self {
        self.app.config.router.add_ns_middleware(&self.prefix, Middleware::new(middleware));
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

impl AppHandle {
    /// Takes a route (an event or request handler, WSE's procedure) away
    /// while the app runs: from the next message on, on every worker, the
    /// event is handled as if it had no handler (`@any`, or the error
    /// `no_handler` for a request). True if the route was there. System
    /// events (`@connection`, …) are not routes. Routes are only added
    /// before [`App::listen`]; [`register_again`](Self::register_again)
    /// puts an unregistered one back.
    ///
    /// ```no_run
    /// let mut app = emitws::app::App::new();
    /// app.on("/beta", |req| req.reply(&"beta feature"));
    /// let running = app.listen("127.0.0.1:0")?;
    /// assert!(running.unregister("/beta")); // clients now get `no_handler`
    /// assert!(running.register_again("/beta"));
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn unregister(&self, event: &str) -> bool {
        let router = &self.0.setup.router;
        if !router.routes.contains_key(event) {
            return false;
        }
        let added = write(&router.removed.names).insert(event.into());
        router.removed.any.store(true, Ordering::Relaxed);
        added
    }

    /// Puts back a route taken away by [`unregister`](Self::unregister);
    /// true if it was taken away.
    pub fn register_again(&self, event: &str) -> bool {
        let removed = &self.0.setup.router.removed;
        let mut names = write(&removed.names);
        let was = names.remove(event);
        removed.any.store(!names.is_empty(), Ordering::Relaxed);
        was
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::hash::BuildHasher;

    #[test]
    fn namespaces_hold_their_prefix_and_names_below_it() {
        assert!(in_namespace("/chat", "/chat"));
        assert!(in_namespace("/chat/say", "/chat"));
        assert!(in_namespace("/chat/say", "/chat/"));
        assert!(!in_namespace("/chatter", "/chat"));
        assert!(!in_namespace("/cha", "/chat"));
        assert!(in_namespace("/anything", ""));
    }

    #[test]
    fn every_byte_of_a_name_moves_its_hash() {
        let hash = |name: &[u8]| BuildHasherDefault::<NameHash>::default().hash_one(std::str::from_utf8(name).unwrap());
        for len in 1..=20 {
            let name = vec![b'a'; len];
            for at in 0..len {
                let mut other = name.clone();
                other[at] = b'b';
                assert_ne!(hash(&name), hash(&other), "length {len}, byte {at}");
            }
            assert_ne!(hash(&name), hash(&name[1..]), "length {len} against {}", len - 1);
        }
    }
}
