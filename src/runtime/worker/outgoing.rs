//! Outgoing connections: a worker dials out, upgrades as the client, then
//! drives the connection through the same [`Handler`] as accepted ones.

use std::any::Any;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;

use mio::net::TcpStream;
use mio::{Interest, Token};

use super::{
    flag, Config, DeflateState, Handler, Machine, RareState, Transport, Worker, WorkerConn, WorkerState, FIRST_CONN,
    NO_ENTRY,
};
use crate::dial::{connect_error, mask_rng, resolve, start_upgrade, ClientBuilder, ClientError, Url};
use crate::proto::handshake::client::{PendingUpgrade, ResponseError, MAX_REFUSAL_BODY};
use crate::proto::{MaskRng, Role};
use crate::runtime::conn::{ClientSide, Upgrading};

/// An outgoing connection asked for by [`ServerHandle::connect`](crate::runtime::ServerHandle::connect).
pub(crate) struct Dial {
    dialing: Dialing,
    masks: MaskRng,
    data: Box<dyn Any + Send>,
}

/// What an outgoing connection keeps until the server accepts its upgrade.
#[derive(Debug)]
pub(crate) struct Dialing {
    url: Url,
    settings: ClientBuilder,
    /// Addresses not tried yet, the next one last.
    untried: Vec<SocketAddr>,
    addr: Option<SocketAddr>,
    upgrade: PendingUpgrade,
}

impl Dial {
    /// Resolves the host, prepares the request and seeds the masking keys, on
    /// the caller's thread.
    pub fn new(url: &Url, settings: &ClientBuilder, data: Box<dyn Any + Send>) -> Result<Dial, ClientError> {
        let mut untried = resolve(url)?;
        untried.reverse();
        let upgrade = start_upgrade(url, settings)?;
        let masks = mask_rng()?;
        let settings = settings.clone();
        Ok(Dial { dialing: Dialing { url: url.clone(), settings, untried, addr: None, upgrade }, masks, data })
    }
}

impl<H: Handler> Worker<H> {
    /// Starts an outgoing connection: TCP connect now, the rest as events come.
    pub(super) fn dial(&mut self, dial: Dial) {
        // ServerHandle::connect checked the type.
        let Ok(data) = dial.data.downcast::<H::Data>() else { return };
        let mut dialing = dial.dialing;
        if self.shutdown_deadline.is_some() {
            return self.handler.on_connect_error(*data, ClientError::ServerStopped);
        }
        let socket = match next_socket(&mut dialing) {
            Ok(socket) => socket,
            Err(error) => return self.handler.on_connect_error(*data, error),
        };
        self.ctx.handle.shared.connections.fetch_add(1, Ordering::Relaxed);
        self.next_generation = self.next_generation.wrapping_add(1);
        // The server's protocol settings, with the dial's own limits and timeout.
        let config =
            Config { limits: dialing.settings.limits, handshake_timeout: dialing.settings.timeout, ..*self.ctx.config };
        let machine = Machine::client(self.ctx.now(), &config);
        let extra = RareState {
            upgrade: Some(Upgrading::Dialing(Box::new(dialing))),
            client: Some(ClientSide { masks: dial.masks, config: std::rc::Rc::new(config) }),
            ..RareState::default()
        };
        let conn = Transport {
            socket,
            generation: self.next_generation,
            // Writability says the connect finished; the interest stays on (see `await_writable`).
            flags: flag::CONNECTING | flag::WRITE_INTEREST,
            timer: NO_ENTRY,
            close_sent: 0,
            out: None,
            extra: Some(Box::new(extra)),
            data: *data,
        };
        let entry = self.slab.vacant_entry();
        let key = entry.key();
        let WorkerConn { machine, conn } = entry.insert(WorkerConn { machine, conn });
        self.ctx.metrics.admitted.inc();
        let interest = Interest::READABLE | Interest::WRITABLE;
        if let Err(e) = self.poll.registry().register(&mut conn.socket, Token(key + FIRST_CONN), interest) {
            return self.dial_failed(key, ClientError::Io(e));
        }
        self.ctx.follow(key, conn, machine.control());
    }

    /// A connecting socket became writable (or failed): on success, send the
    /// upgrade request (through TLS for `wss://`); on failure try the next address.
    pub(super) fn on_connected(&mut self, key: usize) {
        let Worker { slab, ctx, .. } = self;
        let conn = &mut slab[key].conn;
        let outcome = match conn.socket.take_error() {
            Ok(None) => conn.socket.peer_addr().map(|_| ()),
            Ok(Some(e)) | Err(e) => Err(e),
        };
        match outcome {
            Ok(()) => {}
            // Not connected yet: a spurious wakeup.
            Err(e) if e.kind() == io::ErrorKind::NotConnected => return,
            Err(e) => return self.next_address(key, e),
        }
        conn.flags &= !flag::CONNECTING;
        let _ = conn.socket.set_nodelay(true);
        if let Err(error) = start_tls(conn) {
            return self.dial_failed(key, error);
        }
        let dialing = conn.dialing().expect("only an outgoing connection is CONNECTING, and it opens later");
        // Sent once: the connect succeeded, so no other address will need it.
        let request = std::mem::take(&mut dialing.upgrade.request);
        ctx.queue(key, conn).push_with(|out| out.extend_from_slice(&request));
    }

    /// The connect to one address failed: try the next, or give up.
    fn next_address(&mut self, key: usize, error: io::Error) {
        let conn = &mut self.slab[key].conn;
        let dialing = conn.dialing().expect("only an outgoing connection is CONNECTING, and it opens later");
        let failed = connect_error(dialing.addr.expect("an address was tried"), error);
        if dialing.untried.is_empty() {
            return self.dial_failed(key, failed);
        }
        let next = next_socket(dialing);
        let _ = self.poll.registry().deregister(&mut conn.socket);
        let socket = match next {
            Ok(socket) => socket,
            Err(error) => return self.dial_failed(key, error),
        };
        conn.socket = socket;
        let interest = Interest::READABLE | Interest::WRITABLE;
        if let Err(e) = self.poll.registry().register(&mut conn.socket, Token(key + FIRST_CONN), interest) {
            self.dial_failed(key, ClientError::Io(e));
        }
    }

    /// Drops an outgoing connection that never opened and tells the handler.
    pub(super) fn dial_failed(&mut self, key: usize, error: ClientError) {
        if let Some(data) = self.remove(key) {
            self.handler.on_connect_error(data, error);
        }
    }
}

/// A non-blocking connect to the next address that does not fail at once.
fn next_socket(dialing: &mut Dialing) -> Result<TcpStream, ClientError> {
    let mut last = None;
    while let Some(addr) = dialing.untried.pop() {
        dialing.addr = Some(addr);
        match TcpStream::connect(addr) {
            Ok(socket) => return Ok(socket),
            Err(e) => last = Some(connect_error(addr, e)),
        }
    }
    Err(last.unwrap_or(ClientError::Timeout))
}

#[cfg(feature = "tls")]
fn start_tls<D>(conn: &mut Transport<D>) -> Result<(), ClientError> {
    let dialing = conn.dialing().expect("only an outgoing connection is CONNECTING, and it opens later");
    if !dialing.url.is_secure() {
        return Ok(());
    }
    let connector = dialing.settings.tls.clone().unwrap_or_else(crate::dial::default_connector);
    let session = connector.session(dialing.url.host()).map_err(ClientError::Tls)?;
    conn.extra.get_or_insert_with(Box::default).tls = Some(Box::new(session));
    Ok(())
}

#[cfg(not(feature = "tls"))]
fn start_tls<D>(conn: &mut Transport<D>) -> Result<(), ClientError> {
    match conn.dialing() {
        Some(dialing) if dialing.url.is_secure() => Err(ClientError::TlsUnavailable),
        _ => Ok(()),
    }
}

/// Feeds the server's answer to the upgrade; once it is complete and valid
/// the connection opens. Returns how many bytes the head used if the
/// connection is now open, and the reason if the server refused.
pub(super) fn response<H: Handler>(
    slot: &mut WorkerConn<H::Data>,
    key: usize,
    handler: &mut H,
    ctx: &mut WorkerState,
    input: &[u8],
) -> Result<Option<usize>, ClientError> {
    let dialing = slot.conn.dialing().expect("the worker asks only an outgoing connection, until it opens");
    let Some(used) = dialing.upgrade.push(input).map_err(ClientError::Handshake)? else { return Ok(None) };
    let accepted = match dialing.upgrade.finish() {
        Ok(accepted) => accepted,
        Err(ResponseError::NotSwitching(status)) => {
            let rest = &input[used..];
            let length = dialing.upgrade.refusal_length().unwrap_or(usize::MAX);
            let body = rest[..rest.len().min(length).min(MAX_REFUSAL_BODY)].to_vec();
            return Err(ClientError::Status { status, body });
        }
        Err(error) => return Err(ClientError::Handshake(error)),
    };
    let config = dialing.settings.deflate;
    // An agreement comes only with our offer: `finish` refuses any other.
    if let (Some(agreement), Some(config)) = (accepted.deflate, config) {
        slot.compress(DeflateState::new(Role::Client, agreement, config));
    }
    Ok(super::open(handler, key, slot, ctx).then_some(used))
}
