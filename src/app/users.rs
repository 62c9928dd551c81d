//! A user's devices: this node's list of each user's sockets, the per-user
//! cap, the count an adapter keeps across the cluster, and the user
//! presence hooks ([`App::on_user_online`](super::App::on_user_online)).
//!
//! Without an adapter that counts devices, a user is online while this
//! node has a device of it, and the hooks follow this node's list. With
//! one, the adapter's answers say when a user's first device came and its
//! last went anywhere, and the hooks run on the node that made the change.
//!
//! With a presence grace ([`App::presence_grace`](super::App::presence_grace)),
//! a user whose last device went is offline only if none is back when the
//! grace is over ([`Grace`]): a socket that resumes (or reconnects) within
//! it fires neither hook.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use super::adapter::{DeviceChange, DeviceCount, Presence, Target};
use super::handle::AppHandle;
use super::locks::lock;
use super::socket::{flag, SocketData};
use super::socket_id::SocketId;
use super::{App, DevicePolicy, UserHook, CLOSE_REPLACED, CLOSE_TOO_MANY_DEVICES};
use crate::runtime::{Conn, ConnId};

/// The close reason of a device the cap refused.
const TOO_MANY: &str = "too many devices for this user";
/// The close reason of a device the cap dropped for a newer one.
const REPLACED: &str = "replaced by a newer device";
/// The longest presence grace an app may set.
pub(crate) const MAX_PRESENCE_GRACE: Duration = Duration::from_secs(3600);

impl App {
    /// Lets a user's last device be gone for `grace` before the user goes
    /// offline: [`on_user_offline`](Self::on_user_offline) runs only if no
    /// device of the user is back by then (anywhere in the cluster, with an
    /// adapter that counts devices), and a device back within the grace
    /// runs neither hook. So a socket lost by accident that resumes (or a
    /// page reload) is no offline-online pair. Default: none (the hooks
    /// follow each change at once); at most an hour (longer is cut to that).
    ///
    /// The grace is timed on the node whose device went last; if that node
    /// dies within it, that offline is not reported (the user stays online
    /// to the hooks until a later change).
    ///
    /// ```
    /// use std::time::Duration;
    /// let mut app = emitws::app::App::new();
    /// app.resume_window(Some(Duration::from_secs(60)));
    /// app.presence_grace(Duration::from_secs(10));
    /// app.on_user_offline(|_, user| println!("{user} left for good"));
    /// ```
    pub fn presence_grace(&mut self, grace: Duration) -> &mut Self {
        self.config.presence_grace = Some(grace.min(MAX_PRESENCE_GRACE)).filter(|grace| !grace.is_zero());
        self
    }
}

/// The users whose last device went less than the presence grace ago, and
/// the thread that times the grace. Each such user has a pending check,
/// named by a token: a device back on this node takes it away (no online,
/// no offline), a new last device replaces it.
#[derive(Default)]
pub(crate) struct Grace {
    /// Each user in its grace, by its check's token.
    pending: Mutex<HashMap<Arc<str>, u64>>,
    /// The next token.
    tokens: AtomicU64,
    /// Hands checks to the timing thread, started with the first one; it
    /// ends when the app goes (this sender with it).
    timer: Mutex<Option<Sender<Check>>>,
}

/// A grace to check when it is over: when, the token, the user, and the
/// connection of the device whose removal started it.
type Check = (Instant, u64, Arc<str>, ConnId);

/// Learns, once the cap has had its say (this node's at once, the
/// cluster's when the adapter answers), whether a socket given a user
/// stays: false when the cap refused it and it is being closed.
pub(crate) type Admitted = Box<dyn FnOnce(bool) + Send>;

/// Changes socket `conn`'s user, as [`Request::set_user`](super::Request::set_user)
/// (`Some`) and [`Request::clear_user`](super::Request::clear_user) (`None`)
/// do: detached from the user it had, attached to the new one as a device
/// (enforcing the cap), and the adapter told. Nothing changes for a socket
/// not yet connected (in its identify hook, say) or with that user already.
/// False when this node's cap refused the socket at once; `admitted`, if
/// any, learns the final word (see [`Admitted`]).
pub(crate) fn set_user(
    app: &AppHandle,
    conn: &mut Conn<'_, SocketData>,
    user: Option<&str>,
    admitted: Option<Admitted>,
) -> bool {
    if !conn.data().has(flag::CONNECTED) || conn.data().user() == user {
        return settle(admitted, true);
    }
    let previous = conn.data_mut().state.as_mut().and_then(|state| state.user.take());
    if let Some(previous) = &previous {
        detach(app, conn.id(), previous);
    }
    let conn_id = conn.id();
    let Some(user) = user else {
        app.presence(Presence::User { conn_id, user: None, previous: previous.as_deref() });
        return settle(admitted, true);
    };
    let user: Arc<str> = user.into();
    conn.data_mut().state().user = Some(user.clone());
    app.presence(Presence::User { conn_id, user: Some(&user), previous: previous.as_deref() });
    attach(app, conn, &user, admitted)
}

/// Tells `admitted`, if any, whether the socket stays; returns that.
fn settle(admitted: Option<Admitted>, stays: bool) -> bool {
    if let Some(admitted) = admitted {
        admitted(stays);
    }
    stays
}

/// Makes socket `conn` a device of `user`, enforcing this node's cap (and,
/// through the adapter, the cluster's, whose answer comes later and goes to
/// `admitted`). False: this node's cap refused it, and the socket is being
/// closed.
pub(crate) fn attach(
    app: &AppHandle,
    conn: &mut Conn<'_, SocketData>,
    user: &Arc<str>,
    admitted: Option<Admitted>,
) -> bool {
    let id = conn.id();
    let first_here = {
        let mut users = lock(&app.0.users);
        let devices = users.entry(user.clone()).or_default();
        if let Some((max, policy)) = app.0.setup.devices {
            if devices.len() >= max {
                match policy {
                    DevicePolicy::RejectNew => {
                        drop(users);
                        conn.close(CLOSE_TOO_MANY_DEVICES, TOO_MANY);
                        return settle(admitted, false);
                    }
                    DevicePolicy::DropOldest => {
                        let server = app.server();
                        for oldest in devices.drain(..=devices.len() - max) {
                            server.close(oldest, CLOSE_REPLACED, REPLACED);
                        }
                    }
                }
            }
        }
        let first = devices.is_empty();
        devices.push(id);
        first
    };
    let cap = app.0.setup.devices;
    count(app, DeviceChange::Added { user, conn_id: id, cap }, first_here, admitted);
    true
}

/// Socket `id` is no longer a device of `user` (gone, or its user cleared
/// or changed).
pub(crate) fn detach(app: &AppHandle, id: ConnId, user: &str) {
    let last_here = {
        let mut users = lock(&app.0.users);
        let Some(devices) = users.get_mut(user) else {
            // Dropped by the cap already, or refused by it: counted out then.
            drop(users);
            return count(app, DeviceChange::Removed { user, conn_id: id }, false, None);
        };
        let before = devices.len();
        devices.retain(|d| *d != id);
        let last = devices.is_empty() && before > 0;
        if devices.is_empty() {
            users.remove(user);
        }
        last
    };
    count(app, DeviceChange::Removed { user, conn_id: id }, last_here, None);
}

/// Hands `change` to the adapter to count across the cluster, and acts on
/// its answer; without one (or when its store is down) the change counts
/// on this node alone: `here` says whether it was the user's first device
/// (or last) on this node. `admitted` learns whether an added device stays.
fn count(app: &AppHandle, change: DeviceChange<'_>, here: bool, admitted: Option<Admitted>) {
    let (user, conn, online) = match change {
        DeviceChange::Added { user, conn_id, .. } => (user, conn_id, true),
        DeviceChange::Removed { user, conn_id } | DeviceChange::GraceOver { user, conn_id } => (user, conn_id, false),
    };
    let Some(adapter) = &app.0.setup.adapter else {
        if here {
            app.presence_here(user, online, conn);
        }
        settle(admitted, true);
        return;
    };
    let (handle, owned) = (app.clone(), user.to_owned());
    let done = Box::new(move |answer: Result<DeviceCount, super::Error>| {
        let stays = match answer {
            Ok(count) => {
                handle.counted(&owned, conn, &count);
                !count.refused
            }
            // The store is down (its thread logs the outage once), or the
            // adapter keeps no count: this node's own count serves.
            Err(_) => {
                if here {
                    handle.presence_here(&owned, online, conn);
                }
                true
            }
        };
        settle(admitted, stays);
    });
    if let Err(done) = adapter.count_device(change, done) {
        done(Err(super::Error::Unavailable("the adapter keeps no device count".into())));
    }
}

impl AppHandle {
    /// Acts on the cluster's answer about device `conn` of `user`: closes
    /// it if refused, closes the devices dropped for it wherever they are,
    /// and runs the presence hooks.
    fn counted(&self, user: &str, conn: ConnId, count: &DeviceCount) {
        if count.refused {
            self.server().close(conn, CLOSE_TOO_MANY_DEVICES, TOO_MANY);
        }
        for &dropped in &count.dropped {
            self.close_device(dropped);
        }
        if count.first {
            self.user_presence(user, true);
        }
        if count.last {
            match self.0.setup.presence_grace {
                // The cluster started the grace: it says when it is over.
                Some(grace) => self.start_grace(user, conn, grace),
                None => self.user_presence(user, false),
            }
        }
    }

    /// A user's first device came (`online`) or its last went, as this
    /// node alone counts them: the hooks run, unless a grace applies.
    fn presence_here(&self, user: &str, online: bool, conn: ConnId) {
        match self.0.setup.presence_grace {
            None => self.user_presence(user, online),
            Some(_) if online => {
                // Back within the grace: neither hook.
                if lock(&self.0.grace.pending).remove(user).is_none() {
                    self.user_presence(user, true);
                }
            }
            Some(grace) => self.start_grace(user, conn, grace),
        }
    }

    /// Starts the grace of `user`, whose last device `conn` went: checked
    /// when it is over ([`grace_over`](Self::grace_over)).
    fn start_grace(&self, user: &str, conn: ConnId, grace: Duration) {
        let grace_state = &self.0.grace;
        let token = grace_state.tokens.fetch_add(1, Ordering::Relaxed);
        let user: Arc<str> = user.into();
        lock(&grace_state.pending).insert(user.clone(), token);
        let mut timer = lock(&grace_state.timer);
        let check = (Instant::now() + grace, token, user, conn);
        // A thread that ended (it panicked) is started again.
        let check = match timer.as_ref() {
            Some(sender) => match sender.send(check) {
                Ok(()) => return,
                Err(mpsc::SendError(check)) => check,
            },
            None => check,
        };
        let (sender, checks) = mpsc::channel();
        let app = Arc::downgrade(&self.0);
        let started =
            std::thread::Builder::new().name("emitws-presence-grace".into()).spawn(move || time_graces(app, checks));
        if let Err(e) = started {
            // No thread: the user goes offline now rather than never.
            tracing::error!(error = %e, "the presence grace thread could not start");
            drop(timer);
            lock(&grace_state.pending).remove(&check.2);
            return self.user_presence(&check.2, false);
        }
        let _ = sender.send(check);
        *timer = Some(sender);
    }

    /// The grace `token` of `user` is over: the user went offline if no
    /// device came back meanwhile, as the adapter counts them (anywhere),
    /// or else as this node does.
    fn grace_over(&self, user: &str, token: u64, conn: ConnId) {
        {
            let mut pending = lock(&self.0.grace.pending);
            if pending.get(user) != Some(&token) {
                // Back here since, or a later grace replaced it.
                return;
            }
            pending.remove(user);
        }
        let Some(adapter) = &self.0.setup.adapter else {
            return self.user_presence(user, false);
        };
        let (handle, owned) = (self.clone(), user.to_owned());
        let done = Box::new(move |answer: Result<DeviceCount, super::Error>| match answer {
            Ok(count) if count.last => handle.user_presence(&owned, false),
            Ok(_) => {}
            // The store is down: this node's own count serves.
            Err(_) => {
                if !lock(&handle.0.users).contains_key(&owned[..]) {
                    handle.user_presence(&owned, false);
                }
            }
        });
        if let Err(done) = adapter.count_device(DeviceChange::GraceOver { user, conn_id: conn }, done) {
            done(Err(super::Error::Unavailable("the adapter keeps no device count".into())));
        }
    }

    /// Closes a device the cluster's cap dropped, on its node.
    fn close_device(&self, device: SocketId) {
        if device.node == self.node() {
            self.server().close(device.conn, CLOSE_REPLACED, REPLACED);
        } else {
            self.close_elsewhere(Target::Socket(device), CLOSE_REPLACED, REPLACED);
        }
    }

    /// Runs the app's hook for `user` coming online (or going offline).
    /// A hook that panics is logged; the app goes on.
    pub(crate) fn user_presence(&self, user: &str, online: bool) {
        let setup = &self.0.setup;
        let hook: Option<&UserHook> = if online { setup.user_online.as_ref() } else { setup.user_offline.as_ref() };
        if let Some(hook) = hook {
            if catch_unwind(AssertUnwindSafe(|| hook(self, user))).is_err() {
                let which = if online { "on_user_online" } else { "on_user_offline" };
                tracing::error!(user, hook = which, "a user presence hook panicked");
            }
        }
    }

    /// A user's last device went with a dead node, as the survivor that
    /// cleaned up after it found: runs the app's
    /// [`on_user_offline`](super::App::on_user_offline) hook, here only.
    /// For an [`Adapter`](super::Adapter) that counts devices.
    pub fn deliver_user_offline(&self, user: &str) {
        self.user_presence(user, false);
    }
}

/// The presence grace thread: runs each check when its grace is over,
/// until the app goes.
fn time_graces(app: Weak<super::handle::AppState>, checks: mpsc::Receiver<Check>) {
    let mut due: BinaryHeap<Reverse<Check>> = BinaryHeap::new();
    loop {
        let now = Instant::now();
        while due.peek().is_some_and(|Reverse((at, ..))| *at <= now) {
            let Some(Reverse((_, token, user, conn))) = due.pop() else { break };
            let Some(app) = app.upgrade() else { return };
            AppHandle(app).grace_over(&user, token, conn);
        }
        let next = match due.peek() {
            Some(Reverse((at, ..))) => checks.recv_timeout(at.saturating_duration_since(now)),
            None => checks.recv().map_err(|_| RecvTimeoutError::Disconnected),
        };
        match next {
            Ok(check) => due.push(Reverse(check)),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
    }
}
