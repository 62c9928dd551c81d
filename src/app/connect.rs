//! Connecting: path routes with parameters, connection middleware (with code
//! that runs at disconnect), identification and challenge-response auth.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::sync::{Arc, Mutex, OnceLock};

use serde::Serialize;
use serde_json::value::RawValue;

use super::adapter::Adapter;
use super::disconnect::After;
use super::envelope;
use super::locks::lock;
use super::request::Request;
use super::router::{Middleware, Next, Router};
use super::rpc::CallReply;
use super::socket::{query_value, SocketData};
use super::socket_id::SocketId;
use crate::proto::CloseCode;
use crate::runtime::{Reject, UpgradeRequest};

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
    /// The app's tables of connection facts, for the facts this hook records.
    pub(crate) tables: Arc<ConnTables>,
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

    /// The client's address: the TCP peer's, or, when the peer is one of
    /// the app's [trusted proxies](super::App::trusted_proxies), the
    /// address its `X-Forwarded-For` names (PROTOCOL.md §14).
    pub fn peer_addr(&self) -> Option<SocketAddr> {
        self.data.info().and_then(|info| info.peer).or_else(|| self.request.peer_addr())
    }

    /// The metadata the client sent with its connection (PROTOCOL.md §14),
    /// as JSON text, if it sent any.
    pub fn meta(&self) -> Option<&RawValue> {
        self.data.info()?.meta.as_deref()
    }

    /// Records what identified this connection (a token's claims, a
    /// device's key), for handlers to read with
    /// [`Request::identity`](super::Request::identity). Values that do not
    /// serialize are refused with their error.
    pub fn set_identity<T: Serialize + ?Sized>(&mut self, identity: &T) -> Result<(), serde_json::Error> {
        let identity = serde_json::value::to_raw_value(identity)?;
        self.data.info_mut(&self.tables).identity = Some(identity);
        Ok(())
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
    /// Taken away while the app runs ([`AppHandle::unregister_path`]):
    /// upgrades to it get 404 from then on.
    removed: std::sync::atomic::AtomicBool,
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
        PathRoute { segments, middleware: Vec::new(), removed: Default::default(), events: Router::default() }
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
        if self.removed.load(std::sync::atomic::Ordering::Relaxed) {
            return None;
        }
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

// Connection facts (PROTOCOL.md §14): the client's address behind trusted
// proxies, the metadata it sent, what identified it, the app's own id for it.

/// The query parameter that carries a client's metadata (PROTOCOL.md §14).
pub(crate) const META_PARAM: &str = "emitws_meta";

/// The default of [`App::max_meta`](super::App::max_meta): 4 KiB of JSON.
pub(crate) const DEFAULT_MAX_META: usize = 4 << 10;

/// The longest id a [`generate_id`](super::App::generate_id) hook may give, in bytes.
pub const MAX_GENERATED_ID: usize = 128;

/// A proxy address, or a network of them (`10.0.0.0/8`, `fd00::/8`), as
/// [`App::trusted_proxies`](super::App::trusted_proxies) takes them.
///
/// ```
/// use emitws::app::ProxyNet;
/// let net: ProxyNet = "10.0.0.0/8".parse().unwrap();
/// assert!(net.contains("10.1.2.3".parse().unwrap()));
/// assert!(!net.contains("11.0.0.1".parse().unwrap()));
/// assert!("127.0.0.1".parse::<ProxyNet>().unwrap().contains("127.0.0.1".parse().unwrap()));
/// assert!("10.0.0.0/33".parse::<ProxyNet>().is_err());
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProxyNet {
    addr: IpAddr,
    prefix: u8,
}

impl ProxyNet {
    /// Whether `ip` is in this network (an IPv4 address written as IPv6,
    /// `::ffff:a.b.c.d`, counts as the IPv4 one).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => prefix_eq(&net.octets(), &ip.octets(), self.prefix),
            (IpAddr::V6(net), IpAddr::V6(ip)) => prefix_eq(&net.octets(), &ip.octets(), self.prefix),
            _ => false,
        }
    }
}

/// Whether the first `bits` bits of `a` and `b` are equal.
fn prefix_eq(a: &[u8], b: &[u8], bits: u8) -> bool {
    let (whole, rest) = (usize::from(bits / 8), bits % 8);
    if a[..whole] != b[..whole] {
        return false;
    }
    rest == 0 || (a[whole] ^ b[whole]) >> (8 - rest) == 0
}

/// A proxy address that does not read as an IP address or `ADDRESS/BITS`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BadProxy(String);

impl fmt::Display for BadProxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?} is not an IP address nor a network ADDRESS/BITS (10.0.0.0/8, fd00::/8)", self.0)
    }
}

impl std::error::Error for BadProxy {}

impl FromStr for ProxyNet {
    type Err = BadProxy;

    fn from_str(text: &str) -> Result<ProxyNet, BadProxy> {
        let bad = || BadProxy(text.into());
        let (addr, bits) = match text.split_once('/') {
            Some((addr, bits)) => (addr, Some(bits)),
            None => (text, None),
        };
        let addr: IpAddr = addr.trim().parse().map_err(|_| bad())?;
        let addr = addr.to_canonical();
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match bits {
            Some(bits) => bits.trim().parse::<u8>().ok().filter(|&b| b <= max).ok_or_else(bad)?,
            None => max,
        };
        Ok(ProxyNet { addr, prefix })
    }
}

/// Makes an app's own id for a connection at upgrade time.
pub(crate) type GenerateIdFn = Arc<dyn Fn(&Connecting<'_>) -> Result<String, Refusal> + Send + Sync>;

/// The app's settings for connection facts, and the tables they fill.
pub(crate) struct ConnSettings {
    /// Peers whose `X-Forwarded-For` is believed.
    pub proxies: Vec<ProxyNet>,
    /// The most sockets per client address (behind the proxies), if capped.
    pub max_per_ip: Option<usize>,
    /// The largest `emitws_meta`, in bytes of JSON.
    pub max_meta: usize,
    pub generate_id: Option<GenerateIdFn>,
    pub tables: Arc<ConnTables>,
}

impl Default for ConnSettings {
    fn default() -> Self {
        ConnSettings {
            proxies: Vec::new(),
            max_per_ip: None,
            max_meta: DEFAULT_MAX_META,
            generate_id: None,
            tables: Arc::default(),
        }
    }
}

/// What this node's sockets hold in common: counts per client address, the
/// generated ids in use, the first connection's metadata of each user.
/// Entries are given back by [`ConnInfo`]'s drop, whichever way the socket goes.
#[derive(Default)]
pub(crate) struct ConnTables {
    per_ip: Mutex<HashMap<IpAddr, usize>>,
    /// Generated ids, and which socket has each.
    ids: Mutex<HashMap<Arc<str>, IdOwner>>,
    /// The adapter that keeps generated ids for the whole cluster, if any
    /// ([`Adapter::keeps_generated_ids`]): each id claimed there once
    /// admitted, let go there with its socket.
    cluster: OnceLock<Arc<dyn Adapter>>,
    /// The next [`IdOwner::token`].
    next_token: std::sync::atomic::AtomicU64,
    /// Per user: the metadata of its first connection here that sent any.
    user_meta: Mutex<HashMap<Arc<str>, UserMeta>>,
}

/// The socket a generated id names: the latest connection given it.
struct IdOwner {
    /// Tells that connection from an older one given the same id.
    token: u64,
    /// Its socket's id, once admitted.
    socket: Option<SocketId>,
}

/// The metadata of a user's first connection on this node that sent any,
/// and how many of its connections with metadata count under it.
type UserMeta = (Arc<RawValue>, usize);

/// One socket's connection facts, boxed in its state when it has any: an
/// idle socket with none pays nothing.
pub(crate) struct ConnInfo {
    tables: Arc<ConnTables>,
    /// The client's address when a trusted proxy forwarded it.
    pub peer: Option<SocketAddr>,
    /// The address counted against the per-address cap.
    counted_ip: Option<IpAddr>,
    pub meta: Option<Arc<RawValue>>,
    pub identity: Option<Box<RawValue>>,
    /// The id the app's `generate_id` gave, and this connection's token in
    /// the table of ids (see [`IdOwner`]).
    generated_id: Option<(Arc<str>, u64)>,
    /// The user whose first-connection metadata this socket counts in.
    meta_user: Option<Arc<str>>,
    /// A refusal to carry out right after the upgrade (a close code).
    pub refusal: Option<(CloseCode, String)>,
}

impl ConnInfo {
    /// The id the app's `generate_id` gave this connection, unless a newer
    /// connection was given the same one since.
    pub(crate) fn generated_id(&self) -> Option<&str> {
        let (id, token) = self.generated_id.as_ref()?;
        let current = lock(&self.tables.ids).get(id).is_some_and(|owner| owner.token == *token);
        current.then_some(&**id)
    }

    fn new(tables: &Arc<ConnTables>) -> ConnInfo {
        ConnInfo {
            tables: tables.clone(),
            peer: None,
            counted_ip: None,
            meta: None,
            identity: None,
            generated_id: None,
            meta_user: None,
            refusal: None,
        }
    }
}

impl Drop for ConnInfo {
    fn drop(&mut self) {
        if let Some(ip) = self.counted_ip {
            let mut per_ip = lock(&self.tables.per_ip);
            if let Some(count) = per_ip.get_mut(&ip) {
                *count -= 1;
                if *count == 0 {
                    per_ip.remove(&ip);
                }
            }
        }
        if let Some((id, token)) = &self.generated_id {
            let mut ids = lock(&self.tables.ids);
            // A newer connection given the same id keeps it.
            if ids.get(id).is_some_and(|owner| owner.token == *token) {
                ids.remove(id);
            }
            drop(ids);
            // Even if taken since: the cluster's store frees it only while
            // this claim has it (a newer one, here or elsewhere, keeps it).
            if let Some(adapter) = self.tables.cluster.get() {
                adapter.release_generated_id(id, *token);
            }
        }
        if let Some(user) = &self.meta_user {
            let mut user_meta = lock(&self.tables.user_meta);
            if let Some(entry) = user_meta.get_mut(user) {
                entry.1 -= 1;
                if entry.1 == 0 {
                    user_meta.remove(user);
                }
            }
        }
    }
}

impl SocketData {
    pub(crate) fn info(&self) -> Option<&ConnInfo> {
        self.state.as_ref()?.info.as_deref()
    }

    pub(crate) fn info_mut(&mut self, tables: &Arc<ConnTables>) -> &mut ConnInfo {
        self.state().info.get_or_insert_with(|| Box::new(ConnInfo::new(tables)))
    }

    /// The metadata of the first connection of the socket's user on this
    /// node that sent any, counting this socket under its user first if it
    /// sent some and is not counted yet (so that the first device's own
    /// `@connection` handlers see its metadata). Sockets without metadata
    /// count for nothing: they cost no table entry nor connection facts.
    pub(crate) fn user_meta(&mut self, tables: &Arc<ConnTables>) -> Option<Arc<RawValue>> {
        let user = self.state.as_ref()?.user.clone()?;
        let mut user_meta = lock(&tables.user_meta);
        if let Some(info) = self.state.as_mut().and_then(|s| s.info.as_mut()) {
            // Counted under one user only: the one it had when first counted.
            if let (Some(meta), None) = (&info.meta, &info.meta_user) {
                info.meta_user = Some(user.clone());
                user_meta.entry(user.clone()).or_insert((meta.clone(), 0)).1 += 1;
            }
        }
        user_meta.get(&user).map(|(meta, _)| meta.clone())
    }
}

/// The client's address: `peer`, unless `peer` is a trusted proxy; then
/// the rightmost address of `X-Forwarded-For` that is not a trusted proxy
/// (the hops to its right are trusted to have appended truthfully), or the
/// leftmost when all are. An entry that does not read as an address ends the
/// walk at the last trusted hop: nothing left of it can be believed.
pub(crate) fn client_addr<'a>(
    proxies: &[ProxyNet],
    peer: SocketAddr,
    forwarded: impl Iterator<Item = &'a [u8]>,
) -> SocketAddr {
    let trusted = |ip: IpAddr| proxies.iter().any(|net| net.contains(ip));
    if !trusted(peer.ip()) {
        return peer;
    }
    let hops: Vec<&str> =
        forwarded.filter_map(|value| std::str::from_utf8(value).ok()).flat_map(|value| value.split(',')).collect();
    let mut client = peer;
    for hop in hops.iter().rev() {
        let Some(addr) = read_hop(hop.trim()) else { break };
        client = addr;
        if !trusted(addr.ip()) {
            break;
        }
    }
    client
}

/// One `X-Forwarded-For` entry: `1.2.3.4`, `1.2.3.4:80`, `::1` or `[::1]:80`
/// (port 0 when it names none).
fn read_hop(hop: &str) -> Option<SocketAddr> {
    if let Ok(addr) = hop.parse::<SocketAddr>() {
        return Some(addr);
    }
    let ip = hop.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(hop);
    ip.parse::<IpAddr>().ok().map(|ip| SocketAddr::new(ip, 0))
}

/// Before the app's hooks see the upgrade: the client's address through
/// trusted proxies, and its metadata, refused with 400 when it is not JSON
/// or is too large or deep.
pub(crate) fn read_facts(
    settings: &ConnSettings,
    max_depth: usize,
    request: &UpgradeRequest<'_>,
    data: &mut SocketData,
) -> Result<(), Reject> {
    if let Some(peer) = request.peer_addr().filter(|_| !settings.proxies.is_empty()) {
        let forwarded = request.request().header_values("x-forwarded-for");
        let client = client_addr(&settings.proxies, peer, forwarded);
        if client != peer {
            data.info_mut(&settings.tables).peer = Some(client);
        }
    }
    if let Some(meta) = request.query().and_then(|query| query_value(query, META_PARAM)) {
        let bad = |why: String| Reject { status: 400, body: format!("{META_PARAM}: {why}") };
        if meta.len() > settings.max_meta {
            return Err(bad(format!("{} bytes, the limit is {}", meta.len(), settings.max_meta)));
        }
        if envelope::depth(&meta) > max_depth {
            return Err(bad(format!("JSON nested deeper than {max_depth}")));
        }
        let meta = serde_json::from_str::<Box<RawValue>>(&meta).map_err(|e| bad(format!("not JSON: {e}")))?;
        data.info_mut(&settings.tables).meta = Some(Arc::from(meta));
    }
    Ok(())
}

/// After the app's hooks accepted the upgrade: the per-address cap (503
/// over it, as the server's own caps), then the app's id for the socket
/// (taken from any other socket here that has it: see App::generate_id).
pub(crate) fn admit_facts(settings: &ConnSettings, connecting: &mut Connecting<'_>) -> Result<(), Reject> {
    let tables = &settings.tables;
    if let (Some(max), Some(peer)) = (settings.max_per_ip, connecting.peer_addr()) {
        let ip = peer.ip().to_canonical();
        let mut per_ip = lock(&tables.per_ip);
        let count = per_ip.entry(ip).or_insert(0);
        if *count >= max {
            return Err(Reject { status: 503, body: "too many connections from this address".into() });
        }
        *count += 1;
        drop(per_ip);
        connecting.data.info_mut(tables).counted_ip = Some(ip);
    }
    if let Some(generate) = &settings.generate_id {
        let id = generate(connecting).map_err(|refusal| match refusal.kind {
            RefusalKind::Status(status, body) => Reject { status, body },
            RefusalKind::Close(code, reason) => Reject { status: 400, body: format!("{reason} ({code:?})") },
        })?;
        if id.is_empty() || id.len() > MAX_GENERATED_ID {
            let body = format!("generated socket id of {} bytes: 1 to {MAX_GENERATED_ID} allowed", id.len());
            return Err(Reject { status: 500, body });
        }
        let id: Arc<str> = id.into();
        let token = tables.next_token.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // The newest connection takes the id: most often the same device
        // back before its old socket's loss was noticed, which must not be
        // locked out until then (see App::generate_id).
        lock(&tables.ids).insert(id.clone(), IdOwner { token, socket: None });
        connecting.data.info_mut(tables).generated_id = Some((id, token));
    }
    Ok(())
}

/// The socket is admitted as `socket`: it counts under its user for the
/// first connection's metadata, and its generated id now finds it. The
/// generated id, for `@ready`.
pub(crate) fn admitted(settings: &ConnSettings, socket: SocketId, data: &mut SocketData) -> Option<Arc<str>> {
    if data.info().is_some_and(|info| info.meta.is_some()) {
        data.user_meta(&settings.tables);
    }
    let (id, token) = data.info()?.generated_id.clone()?;
    let mut ids = lock(&settings.tables.ids);
    let owner = ids.get_mut(&id).filter(|owner| owner.token == token)?;
    owner.socket = Some(socket);
    drop(ids);
    // Queued for the adapter's own thread: a worker never waits for the
    // cluster's store (PROTOCOL.md §14, "Across a cluster").
    if let Some(adapter) = settings.tables.cluster.get() {
        adapter.claim_generated_id(&id, token, socket);
    }
    Some(id)
}

/// Takes away (`removed`) or puts back every path route of `pattern` (as
/// declared: parameter names count); true if one changed.
pub(crate) fn remove_path(routes: &[PathRoute], pattern: &str, removed: bool) -> bool {
    let segments = PathRoute::new(pattern).segments;
    let ordering = std::sync::atomic::Ordering::Relaxed;
    let mut changed = false;
    // Every route of the pattern, should it be declared twice.
    for route in routes.iter().filter(|route| route.segments == segments) {
        changed |= route.removed.swap(removed, ordering) != removed;
    }
    changed
}

impl ConnTables {
    /// The socket a generated id names, once admitted.
    pub(crate) fn socket_of(&self, id: &str) -> Option<SocketId> {
        lock(&self.ids).get(id)?.socket
    }

    /// Keeps generated ids in `adapter` from now on, if it keeps them for
    /// the cluster (before the port accepts: every socket's id is claimed).
    pub(crate) fn keep_ids_in(&self, adapter: &Arc<dyn Adapter>) {
        if adapter.keeps_generated_ids() {
            let _ = self.cluster.set(adapter.clone());
        }
    }

    /// The adapter that keeps generated ids for the cluster, if any.
    pub(crate) fn cluster_ids(&self) -> Option<&Arc<dyn Adapter>> {
        self.cluster.get()
    }

    /// A newer claim of `id` on another node took it from this node's
    /// socket whose claim was numbered `token`: that socket has it no
    /// longer (a newer socket of this node given it keeps it); whether it had it.
    pub(crate) fn taken_elsewhere(&self, id: &str, token: u64) -> bool {
        let mut ids = lock(&self.ids);
        let had = ids.get(id).is_some_and(|owner| owner.token == token);
        if had {
            ids.remove(id);
        }
        had
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
    fn the_client_is_the_rightmost_hop_that_is_not_a_trusted_proxy() {
        let proxies: Vec<ProxyNet> =
            ["127.0.0.1", "10.0.0.0/8", "fd00::/8"].iter().map(|p| p.parse().unwrap()).collect();
        let addr = |text: &str| -> SocketAddr { text.parse().unwrap() };
        let via =
            |peer: &str, headers: &[&str]| client_addr(&proxies, addr(peer), headers.iter().map(|h| h.as_bytes()));
        // An untrusted peer's header is ignored.
        assert_eq!(via("192.0.2.1:5000", &["203.0.113.7"]), addr("192.0.2.1:5000"));
        assert_eq!(via("127.0.0.1:5000", &["203.0.113.7"]), addr("203.0.113.7:0"));
        assert_eq!(via("127.0.0.1:5000", &["1.1.1.1, 203.0.113.7:81, 10.0.0.2"]), addr("203.0.113.7:81"));
        // Several header lines read as one list, in order.
        assert_eq!(via("127.0.0.1:5000", &["1.1.1.1, 203.0.113.7", "10.0.0.2"]), addr("203.0.113.7:0"));
        assert_eq!(via("[::ffff:127.0.0.1]:5000", &["[2001:db8::1]:443"]), addr("[2001:db8::1]:443"));
        assert_eq!(via("127.0.0.1:5000", &["2001:db8::1, fd00::5"]), addr("[2001:db8::1]:0"));
        // All trusted: the leftmost; an unreadable hop stops at the last trusted one; no header: the peer.
        assert_eq!(via("127.0.0.1:5000", &["10.0.0.9, 10.0.0.2"]), addr("10.0.0.9:0"));
        assert_eq!(via("127.0.0.1:5000", &["203.0.113.7, unknown, 10.0.0.2"]), addr("10.0.0.2:0"));
        assert_eq!(via("127.0.0.1:5000", &[]), addr("127.0.0.1:5000"));
    }

    #[test]
    fn proxy_networks_parse_and_match_by_prefix() {
        let net = |text: &str| text.parse::<ProxyNet>();
        let ip = |text: &str| text.parse::<IpAddr>().unwrap();
        assert!(net("10.0.0.0/8").unwrap().contains(ip("10.255.0.1")));
        assert!(!net("10.0.0.0/9").unwrap().contains(ip("10.128.0.1")));
        assert!(net("0.0.0.0/0").unwrap().contains(ip("8.8.8.8")));
        assert!(net("fd00::/8").unwrap().contains(ip("fd12::1")));
        assert!(!net("fd00::/8").unwrap().contains(ip("10.0.0.1")));
        assert!(net("::ffff:10.0.0.1").unwrap().contains(ip("10.0.0.1")));
        for bad in ["", "10.0.0.0/", "10.0.0.0/33", "fd00::/129", "localhost", "10.0.0/8"] {
            assert_eq!(net(bad), Err(BadProxy(bad.into())), "{bad}");
        }
    }

    #[test]
    fn connection_facts_fit_a_192_byte_heap_block() {
        // Allocated only for sockets that have some (see `ConnInfo`).
        assert!(std::mem::size_of::<ConnInfo>() <= 184, "{}", std::mem::size_of::<ConnInfo>());
    }

    #[test]
    fn refusals_map_to_close_codes_after_the_upgrade() {
        assert_eq!(Refusal::status(401, "who?").as_close(), (CloseCode(4401), "who?".into()));
        assert_eq!(Refusal::close(CloseCode(4003), "no").as_close(), (CloseCode(4003), "no".into()));
    }
}
