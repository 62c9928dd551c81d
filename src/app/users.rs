//! A user's devices: this node's list of each user's sockets, the per-user
//! cap, the count an adapter keeps across the cluster, and the user
//! presence hooks ([`App::on_user_online`](super::App::on_user_online)).
//!
//! Without an adapter that counts devices, a user is online while this
//! node has a device of it, and the hooks follow this node's list. With
//! one, the adapter's answers say when a user's first device came and its
//! last went anywhere, and the hooks run on the node that made the change.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use super::adapter::{DeviceChange, DeviceCount, Presence, Target};
use super::handle::AppHandle;
use super::locks::lock;
use super::socket::{flag, SocketData};
use super::socket_id::SocketId;
use super::{DevicePolicy, UserHook, CLOSE_REPLACED, CLOSE_TOO_MANY_DEVICES};
use crate::runtime::{Conn, ConnId};

/// The close reason of a device the cap refused.
const TOO_MANY: &str = "too many devices for this user";
/// The close reason of a device the cap dropped for a newer one.
const REPLACED: &str = "replaced by a newer device";

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
        DeviceChange::Removed { user, conn_id } => (user, conn_id, false),
    };
    let Some(adapter) = &app.0.setup.adapter else {
        if here {
            app.user_presence(user, online);
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
                    handle.user_presence(&owned, online);
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
            self.user_presence(user, false);
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
