//! [`RedisAdapter`]: the app's [`Adapter`] over a [`RedisLink`].

use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::time::{Duration, Instant};

use super::asks::Asks;
use super::error::ClusterError;
use super::history::{RedisHistory, StoredHistory};
use super::link::{alive_nodes, Inbound, LinkState, RedisLink};
use super::options::RedisOptions;
use super::sessions::{self, Found, Record};
use super::users;
use super::wire::{hex, Header, WireAnswer, WireAsk};
use crate::app::{
    self, Adapter, AppHandle, AskDone, BroadcastOpts, ClaimDone, ClaimOutcome, DeviceChange, DeviceDone, History,
    Presence, Scope, SessionClaim, SocketAnswer, SocketAsk, SocketId, Target,
};
use crate::proto::CloseCode;
use crate::runtime::ConnId;

/// The [`Adapter`] that makes an app one node of a cluster sharing a Redis.
///
/// Per node: one subscriber thread hands other nodes' messages to the
/// workers (through their wakers, never blocking them), one writer thread
/// pipelines publishes and presence and keeps the heartbeat. Messages go as
/// `NODE\n{"b":[groups,except]}\nENVELOPE` (or `{"p":[node,conn]}` to the
/// socket of that public id, on whichever node it answers at now,
/// `{"s":conn}` to one node's socket, `{"u":user}` to a user's devices),
/// and closes as `NODE\n{"cs":[conn,code]}\nREASON` or
/// `NODE\n{"cu":[user,code]}\nREASON`; a resume elsewhere sends
/// `{"t":[conn,user]}` (take that connection over) and `{"m":[conn,public]}`
/// (the session lost with it was claimed); a broadcast to a room with
/// history goes as `NODE\n{"h":[room,epoch,offset,except]}\nFRAME` on the
/// history channel, from Redis's script; the node that cleans up after a
/// dead one sends itself `DEAD\n{"uo":user}\n` for each user that went
/// offline with it (the `users` module); a request to a socket of another
/// node ([`Adapter::ask`]: a join, a leave, a call) as
/// `NODE\n{"q":[number,asker,node,conn]}\nASK`, routed as `{"p":…}` is,
/// and its answer as `NODE\n{"a":number}\nANSWER` to the asker's node,
/// which gives up after [`query_timeout`](RedisOptions::query_timeout) (a
/// call's timeout plus that, for a call); a generated id taken by a newer
/// claim as `NODE\n{"gi":[id,token]}\n` to the node whose socket had it
/// (the `ids` module); anything else is ignored.
///
/// Sessions kept for resume are records in Redis that any node claims
/// (see [`Adapter::claim_session`]): the layout is in the `sessions` module.
///
/// Rooms with [history](crate::app::App::history) are numbered and kept in
/// Redis (see the module's docs): a broadcast to one goes to Redis, which
/// gives it the room's next offset, keeps it and publishes it to every node,
/// this one included, so that all deliver the room's broadcasts in one order
/// with the same offsets, and any node recovers them. While Redis is
/// unreachable, such broadcasts cannot be numbered: they are dropped, and
/// counted with the dropped publishes (`cluster_dropped_total`), reaching
/// no socket, this node's included.
///
/// ```no_run
/// use emitws::app::App;
/// use emitws::cluster::{RedisAdapter, RedisOptions};
/// let mut app = App::new();
/// app.adapter(RedisAdapter::new("redis://127.0.0.1:6379/", RedisOptions::default())?);
/// # Ok::<(), emitws::cluster::ClusterError>(())
/// ```
pub struct RedisAdapter {
    link: RedisLink,
    history: RedisHistory,
    app: AppSlot,
    /// This node's requests to sockets of other nodes, waiting for answers.
    asks: Arc<Asks>,
}

/// The app the adapter delivers to, once attached.
type AppSlot = Arc<Mutex<Option<AppHandle>>>;

impl fmt::Debug for RedisAdapter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisAdapter").field("link", &self.link).finish_non_exhaustive()
    }
}

/// Locks `mutex`, through a poisoning (what it guards stays consistent at every step).
pub(super) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl RedisAdapter {
    /// Connects this node to the cluster at `url`: `redis://host:port/db`,
    /// `rediss://` (TLS), `redis+sentinel://host:port,host:port/MASTER/db`,
    /// or a Redis Cluster, `redis+cluster://host:port,host:port/` (see
    /// [`RedisLink::start`] for every form). Only a bad URL or CA file
    /// fails: Redis need not be up yet, the link connects by itself.
    ///
    /// # Errors
    ///
    /// As [`RedisLink::start`].
    pub fn new(url: &str, options: RedisOptions) -> Result<Arc<RedisAdapter>, ClusterError> {
        let app: AppSlot = Arc::default();
        let asks = Arc::new(Asks::new());
        // The link, for answers: held weakly by its own subscriber thread.
        let own_link: Arc<OnceLock<Weak<LinkState>>> = Arc::default();
        let (slot, answers, answer_link) = (app.clone(), asks.clone(), own_link.clone());
        let link = RedisLink::start(url, options, move |message| {
            let app = lock(&slot).clone();
            let link = answer_link.get().and_then(RedisLink::upgrade);
            if let (Some(app), Some(link)) = (app, link) {
                deliver(&app, &link, &answers, &message);
            }
        })?;
        let slot = app.clone();
        // From the link's threads: handing it to the app's worker does not block them.
        link.watch(move |event| {
            if let Some(app) = lock(&slot).clone() {
                app.deliver_cluster_event(event);
            }
        });
        let _ = own_link.set(link.downgrade());
        Ok(Arc::new(RedisAdapter { history: RedisHistory::new(link.clone()), link, app, asks }))
    }

    /// The link under the adapter.
    pub fn link(&self) -> &RedisLink {
        &self.link
    }

    /// Publishes `header` and `body` to one node, or to all of them.
    fn send(&self, header: &Header, node: Option<u64>, body: &[u8]) {
        send(&self.link, header, node, body);
    }
}

/// Publishes `header` and `body` over `link` to one node, or to all of them.
fn send(link: &RedisLink, header: &Header, node: Option<u64>, body: &[u8]) {
    let Some(line) = header_line(header) else { return };
    let channel = match (node, header) {
        (Some(node), _) => link.node_channel(node),
        (None, Header::Broadcast(groups, _)) => {
            link.channel_of_groups(&groups.iter().map(String::as_str).collect::<Vec<_>>())
        }
        (None, _) => link.all_channel(),
    };
    link.publish(channel, &[&line, body]);
}

/// A header as the line that goes before a body.
fn header_line(header: &Header) -> Option<Vec<u8>> {
    let mut line = serde_json::to_vec(header).ok()?;
    line.push(b'\n');
    Some(line)
}

/// How long a claim waits before it asks again for a session still live
/// on its node (taken over, or until that node's heartbeat expires).
const CLAIM_RETRY: Duration = Duration::from_millis(20);

/// Claims a session on the link's background thread (see
/// [`Adapter::claim_session`]): a session live on a live node is taken over
/// (`asked`: that was requested already) and claimed again until the
/// claimer's deadline.
fn claim_in_background(link: RedisLink, app: AppSlot, claim: SessionClaim, done: ClaimDone, asked: bool) {
    let again = link.clone();
    link.background(Box::new(move |conn| {
        // The claimer has stopped waiting: the session stays for another.
        if Instant::now() >= claim.until {
            done(ClaimOutcome::NoSession);
            return Ok(());
        }
        let c = match conn {
            Ok(c) => c,
            Err(_) => {
                done(ClaimOutcome::NoSession);
                return Ok(());
            }
        };
        let prefix = &again.options().prefix;
        let found = alive_nodes(c, prefix)
            .and_then(|live| sessions::claim(c, prefix, &claim.record, claim.user.as_deref(), &live));
        match found {
            Err(e) => {
                done(ClaimOutcome::NoSession);
                Err(e)
            }
            Ok(Found::Outcome(outcome)) => {
                // The node it was lost on is told once the socket answers
                // here (see `session_resumed`).
                done(outcome);
                Ok(())
            }
            Ok(Found::Live(node, old)) => {
                if !asked {
                    if node == again.node() {
                        if let Some(app) = lock(&app).clone() {
                            app.deliver_takeover(old, claim.user.as_deref());
                        }
                    } else {
                        send(&again, &Header::TakeOver(old.0, claim.user.clone()), Some(node), b"");
                    }
                }
                // Only this thread waits (a worker never does), between two claims.
                std::thread::sleep(CLAIM_RETRY);
                claim_in_background(again, app, claim, done, true);
                Ok(())
            }
        }
    }));
}

/// Answers request `number` to socket `to` with `absent` when nobody can
/// answer it: `to`'s node is not alive and no alias routes its id to
/// another node (a socket resumed elsewhere). Checked on the link's
/// background thread, after the publish: a node that does answer settles
/// it first; one that cannot leaves the request to its timeout.
fn unless_reachable(link: &RedisLink, asks: &Arc<Asks>, to: SocketId, number: u64, absent: SocketAnswer) {
    let (asks, prefix) = (asks.clone(), link.options().prefix.clone());
    link.background(Box::new(move |conn| {
        let Ok(c) = conn else { return Ok(()) };
        if alive_nodes(c, &prefix)?.contains(&to.node) {
            return Ok(());
        }
        let alias: Option<String> = redis::Commands::get(c, sessions::alias_key(&prefix, to))?;
        if alias.is_none() {
            asks.settle(number, absent);
        }
        Ok(())
    }));
}

/// Hands a message from another node to the app (a request to one of its
/// sockets answered over `link`, an answer to one of `asks`); malformed
/// ones are dropped.
fn deliver(app: &AppHandle, link: &RedisLink, asks: &Asks, message: &Inbound) -> Option<()> {
    let at = message.payload.iter().position(|&b| b == b'\n')?;
    let header: Header = serde_json::from_slice(&message.payload[..at]).ok()?;
    let body = std::str::from_utf8(&message.payload[at + 1..]).ok()?;
    let here = |conn| SocketId { node: app.node(), conn: ConnId(conn) };
    let envelope = || serde_json::from_str::<serde::de::IgnoredAny>(body).ok().map(|_| body);
    match header {
        Header::Public(node, conn) if message.direct => {
            app.deliver_to_public(envelope()?, SocketId { node, conn: ConnId(conn) })
        }
        Header::TakeOver(conn, user) if message.direct => app.deliver_takeover(ConnId(conn), user.as_deref()),
        Header::Claimed(lost, public) if message.direct => {
            app.session_claimed_elsewhere(ConnId(lost), public.map(here), None)
        }
        Header::ClaimedUpTo(lost, node, conn, held) if message.direct => {
            app.session_claimed_elsewhere(ConnId(lost), Some(SocketId { node, conn: ConnId(conn) }), Some(held))
        }
        Header::Public(..) | Header::TakeOver(..) | Header::Claimed(..) | Header::ClaimedUpTo(..) => {}
        Header::Broadcast(groups, except) => {
            let mut opts = BroadcastOpts::all();
            opts.to = groups.into_iter().map(Into::into).collect();
            opts.except = except.into_iter().map(|(node, conn)| SocketId { node, conn: ConnId(conn) }).collect();
            app.deliver_remote(envelope()?, Target::Broadcast(&opts));
        }
        Header::Socket(conn) if message.direct => app.deliver_remote(envelope()?, Target::Socket(here(conn))),
        Header::User(user) => app.deliver_remote(envelope()?, Target::User(&user)),
        Header::CloseSocket(conn, code) if message.direct => {
            app.deliver_close(Target::Socket(here(conn)), CloseCode(code), body)
        }
        Header::CloseUser(user, code) => app.deliver_close(Target::User(&user), CloseCode(code), body),
        Header::History(room, epoch, offset, except) if !message.direct => {
            let except: Vec<SocketId> =
                except.into_iter().map(|(node, conn)| SocketId { node, conn: ConnId(conn) }).collect();
            app.deliver_history(&room, &epoch, offset, envelope()?, &except);
        }
        Header::UserOffline(user) if message.direct => app.deliver_user_offline(&user),
        Header::Ask(number, asker, node, conn) if message.direct => {
            let ask: WireAsk = serde_json::from_str(body).ok()?;
            let link = link.clone();
            let answer = Box::new(move |answer: SocketAnswer| {
                if let Ok(answer) = serde_json::to_vec(&WireAnswer::from(answer)) {
                    send(&link, &Header::Answer(number), Some(asker), &answer);
                }
            });
            app.deliver_ask(SocketId { node, conn: ConnId(conn) }, ask.into(), answer);
        }
        Header::Answer(number) if message.direct => {
            let answer: WireAnswer = serde_json::from_str(body).ok()?;
            asks.settle(number, answer.into());
        }
        Header::IdTaken(id, token) if message.direct => {
            app.deliver_generated_id_taken(&id, token);
        }
        Header::Socket(_)
        | Header::CloseSocket(..)
        | Header::History(..)
        | Header::UserOffline(_)
        | Header::Ask(..)
        | Header::Answer(_)
        | Header::IdTaken(..) => {}
    }
    Some(())
}

impl Adapter for RedisAdapter {
    fn node(&self) -> u64 {
        self.link.node()
    }

    fn attach(&self, app: AppHandle) {
        self.link.count_into(app.metrics());
        self.history.count_into(app.metrics());
        *lock(&self.app) = Some(app);
    }

    fn detach(&self) {
        self.asks.stop();
        self.link.stop();
        lock(&self.app).take();
    }

    fn publish(&self, envelope: &[u8], to: Target<'_>) {
        let (header, node) = match to {
            Target::Broadcast(opts) => {
                let groups = opts.groups().iter().map(|g| g.to_string()).collect();
                let except = opts.excepted().iter().map(|id| (id.node, id.conn.0)).collect();
                (Header::Broadcast(groups, except), None)
            }
            // Wherever the socket answers now: it may have resumed on another node.
            Target::Socket(id) => {
                let Some(header) = header_line(&Header::Public(id.node, id.conn.0)) else { return };
                return self.link.publish_routed(id, &[&header, envelope]);
            }
            Target::User(user) => (Header::User(user.into()), None),
        };
        self.send(&header, node, envelope);
    }

    fn close(&self, to: Target<'_>, code: CloseCode, reason: &str) {
        let (header, node) = match to {
            Target::Socket(id) => (Header::CloseSocket(id.conn.0, code.0), Some(id.node)),
            Target::User(user) => (Header::CloseUser(user.into(), code.0), None),
            Target::Broadcast(_) => return,
        };
        self.send(&header, node, reason.as_bytes());
    }

    fn presence(&self, change: Presence<'_>) {
        match change {
            Presence::Connected { conn_id, user, public, record } => {
                self.link.add_socket(conn_id.0);
                if let Some(user) = user {
                    self.link.add_user(user, conn_id.0);
                }
                if let Some((key, window)) = record {
                    let (prefix, node) = (&self.link.options().prefix, hex(self.node()));
                    let record = Record::new(prefix, key, (&node, conn_id.0), public, user, window);
                    self.link.add_record(conn_id.0, record);
                }
            }
            Presence::Joined { conn_id, group, position } => {
                self.link.join(group, conn_id.0);
                self.link.record_join(conn_id.0, group, position);
            }
            Presence::Stored { conn_id, key, value } => self.link.record_store(conn_id.0, key, value),
            Presence::Left { conn_id, group } => self.link.leave(group, conn_id.0),
            Presence::User { conn_id, user, previous } => {
                self.link.set_user(conn_id.0, user.map(Into::into), previous.map(Into::into));
            }
            Presence::Disconnected { conn_id, user, groups, kept } => {
                self.link.end_record(conn_id.0, kept);
                let groups = groups.iter().map(|g| g.to_string()).collect();
                self.link.remove_socket(conn_id.0, groups, user.map(Into::into));
            }
        }
    }

    fn claim_session(&self, claim: SessionClaim, done: ClaimDone) -> Result<(), ClaimDone> {
        claim_in_background(self.link.clone(), self.app.clone(), claim, done, false);
        Ok(())
    }

    fn count_device(&self, change: DeviceChange<'_>, done: DeviceDone) -> Result<(), DeviceDone> {
        let grace = lock(&self.app).as_ref().and_then(|app| app.0.setup.presence_grace);
        users::count_device(&self.link, change, grace, done);
        Ok(())
    }

    fn hold_direct(&self, record: &str, envelope: &[u8], cap: usize, number: u64) {
        self.link.hold_direct(record, envelope, cap, number);
    }

    fn session_resumed(&self, lost: SocketId, public: SocketId, held: u64) {
        let told = Header::ClaimedUpTo(lost.conn.0, public.node, public.conn.0, held);
        if let Some(line) = header_line(&told).filter(|_| lost.node != self.node()) {
            // After the socket's alias, which what the old node sends on goes by.
            self.link.publish_after_writes(self.link.node_channel(lost.node), &[&line]);
        }
    }

    fn sockets(&self, scope: Scope<'_>) -> Result<Vec<SocketId>, app::Error> {
        Ok(self.link.sockets(scope)?)
    }

    fn count(&self, scope: Scope<'_>) -> Result<usize, app::Error> {
        Ok(self.link.count(scope)?)
    }

    fn socket_exists(&self, id: SocketId) -> Result<bool, app::Error> {
        let id = SocketId { node: if id.node == 0 { self.node() } else { id.node }, ..id };
        Ok(self.link.socket_exists(id)?)
    }

    fn users(&self) -> Result<Vec<String>, app::Error> {
        Ok(self.link.users()?)
    }

    fn group_sizes(&self, _app: &AppHandle) -> Result<Vec<(String, usize)>, app::Error> {
        Ok(self.link.group_sizes()?)
    }

    fn ask(&self, to: SocketId, ask: SocketAsk, done: AskDone) -> Result<(), AskDone> {
        // The asker gives up after the call's own timeout (enforced on the
        // socket's node) and a query's, for the way there and back.
        let mut within = self.link.options().query_timeout;
        if let SocketAsk::Call { timeout, .. } = &ask {
            within = within.saturating_add(*timeout);
        }
        let absent = ask.absent();
        let Ok(body) = serde_json::to_vec(&WireAsk::from(ask)) else { return Err(done) };
        let number = self.asks.start(within, done)?;
        let Some(header) = header_line(&Header::Ask(number, self.node(), to.node, to.conn.0)) else {
            return Ok(()); // a header of numbers always serializes; else it times out
        };
        self.link.publish_routed(to, &[&header, &body]);
        unless_reachable(&self.link, &self.asks, to, number, absent);
        Ok(())
    }

    /// Healthy while the subscriber listens (it notices a lost connection
    /// at once) and the writer is not in an outage (it notices one at its
    /// next write or heartbeat: Redis refusing writes, say).
    fn healthy(&self) -> Result<(), String> {
        if self.link.reaches_redis() {
            Ok(())
        } else {
            Err("Redis unreachable".into())
        }
    }

    fn keeps_history(&self) -> bool {
        true
    }

    fn publish_history(&self, room: &str, history: &History, epoch: &str, envelope: &[u8], except: &[SocketId]) {
        self.history.publish(room, history, epoch, envelope, except);
    }

    fn read_history(&self, reads: Vec<(Box<str>, u64)>, done: Box<dyn FnOnce(StoredHistory) + Send>) {
        self.history.read(reads, done);
    }

    fn keeps_generated_ids(&self) -> bool {
        true
    }

    fn claim_generated_id(&self, id: &str, token: u64, socket: SocketId) {
        self.link.claim_id(id, token, socket);
    }

    fn release_generated_id(&self, id: &str, token: u64) {
        self.link.release_id(id, token);
    }

    fn generated_id(&self, id: &str) -> Result<Option<SocketId>, app::Error> {
        Ok(self.link.generated_id(id)?)
    }
}
