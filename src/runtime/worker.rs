//! One worker: a mio event loop that owns its connections.
//!
//! Each loop turn: poll; read every readable socket into the worker's one read
//! buffer and hand complete messages to the handler; apply commands from other
//! threads; expire timers; then write every connection that queued bytes during
//! the turn, once each. Reads are bounded per connection per turn, so one busy
//! peer cannot starve the rest.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Shutdown, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token, Waker};
use slab::Slab;

use super::conn::{flag, Conn, Connection, Phase, RareState, WorkerState};
use super::handle::{Command, ConnId, ServerHandle, ServerState, Stats, WorkerInbox};
use super::settings::{AcceptMode, Settings};
use super::timer::{Entry, Wheel};
use super::{listen, Conns, Handler, RunningServer, UpgradeRequest};
use crate::client::ClientError;
use crate::proto::compress::{DeflateState, Deflater, RSV1};
use crate::proto::deflate::{self, DeflateAgreement};
use crate::proto::handshake::{self, HandshakeError, RequestReader};
use crate::proto::{CloseCode, CloseReason, Decoder, Event, OpCode, ProtocolError, Role};

mod outgoing;

pub(crate) use outgoing::{Dial, Dialing};

const LISTENER: Token = Token(0);
const WAKER: Token = Token(1);
const FIRST_CONN: usize = 2;
/// Reads of one socket per loop turn before other sockets get their turn.
const READS_PER_TURN: usize = 4;

/// Starts the workers (and, in acceptor mode, the acceptor) for `addr`;
/// without an address, workers that only dial out.
pub(crate) fn start<H: Handler>(settings: Settings, addr: Option<SocketAddr>, handler: H) -> io::Result<RunningServer> {
    let workers = settings.workers.max(1);
    let reuse_port = settings.accept_mode == AcceptMode::ReusePort || addr.is_none();
    let mut listeners = Vec::new();
    let mut local_addr = SocketAddr::from(([0, 0, 0, 0], 0));
    if let Some(addr) = addr {
        let first = listen::bind(addr, settings.backlog, reuse_port)?;
        local_addr = first.local_addr()?;
        listeners.push(first);
        if reuse_port {
            for _ in 1..workers {
                listeners.push(listen::bind(local_addr, settings.backlog, true)?);
            }
        }
    }

    let mut polls = Vec::new();
    let mut inboxes = Vec::new();
    let mut receivers = Vec::new();
    for _ in 0..workers {
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let (sender, receiver) = mpsc::channel();
        polls.push(poll);
        inboxes.push(WorkerInbox { sender, waker });
        receivers.push(receiver);
    }
    let shared = Arc::new(ServerState { data_type: Some(std::any::TypeId::of::<H::Data>()), ..ServerState::default() });
    let mut acceptor = None;
    if !reuse_port {
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        acceptor = Some((poll, waker));
    }
    let handle = ServerHandle {
        inboxes: Arc::new(inboxes),
        shared,
        acceptor: acceptor.as_ref().map(|(_, waker)| waker.clone()),
    };

    let settings = Arc::new(settings);
    let mut threads = Vec::new();
    let mut listeners = listeners.into_iter();
    for (index, (poll, inbox)) in polls.into_iter().zip(receivers).enumerate() {
        let mut listener = if reuse_port { listeners.next().map(TcpListener::from_std) } else { None };
        if let Some(listener) = listener.as_mut() {
            poll.registry().register(listener, LISTENER, Interest::READABLE)?;
        }
        let (settings, handle, handler) = (settings.clone(), handle.clone(), handler.clone());
        // The worker is built on its own thread, so connection data need not be `Send`.
        let thread = std::thread::Builder::new()
            .name(format!("emitws-worker-{index}"))
            .spawn(move || Worker::new(index, poll, inbox, listener, settings, handle, handler).run())?;
        threads.push(thread);
    }
    if let Some((poll, _)) = acceptor {
        let listener = TcpListener::from_std(listeners.next().expect("the first listener"));
        let handle = handle.clone();
        let thread = std::thread::Builder::new()
            .name("emitws-acceptor".into())
            .spawn(move || run_acceptor(poll, listener, handle))?;
        threads.push(thread);
    }
    Ok(RunningServer { handle, local_addr, threads })
}

/// Accepts connections and deals them to the workers in turn.
fn run_acceptor(mut poll: Poll, mut listener: TcpListener, handle: ServerHandle) {
    if poll.registry().register(&mut listener, LISTENER, Interest::READABLE).is_err() {
        return;
    }
    let mut events = Events::with_capacity(64);
    let mut next = 0;
    loop {
        if let Err(e) = poll.poll(&mut events, None) {
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return;
        }
        if handle.shared.stopping.load(Ordering::Acquire) {
            return;
        }
        loop {
            match listener.accept() {
                Ok((stream, _)) => {
                    let inbox = &handle.inboxes[next % handle.inboxes.len()];
                    next += 1;
                    if inbox.sender.send(Command::Adopt(stream)).is_ok() {
                        let _ = inbox.waker.wake();
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if is_transient_accept_error(&e) => continue,
                Err(_) => break,
            }
        }
    }
}

/// Accept errors that concern one connection (or a momentary shortage), not the listener.
fn is_transient_accept_error(e: &io::Error) -> bool {
    matches!(e.kind(), io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset | io::ErrorKind::Interrupted)
}

/// A connection's frame decoder, kept beside the rest of its state so the two
/// can be borrowed separately (events borrow from the decoder).
pub(crate) struct Slot<D> {
    decoder: Decoder,
    pub(crate) conn: Connection<D>,
}

struct Worker<H: Handler> {
    poll: Poll,
    inbox: Receiver<Command>,
    listener: Option<TcpListener>,
    slab: Slab<Slot<H::Data>>,
    handler: H,
    read_buf: Vec<u8>,
    ctx: WorkerState,
    /// Connections that still had input after their reads this turn.
    retry: Vec<usize>,
    next_generation: u32,
    /// Client IPs of connections, kept only when a per-IP cap is set.
    peer_ips: HashMap<usize, IpAddr>,
    shutdown_deadline: Option<Instant>,
    /// Connections handed to a `Conns` callback, to settle after it.
    touched: Vec<usize>,
    /// When the handler asked for its next `on_turn`.
    turn_deadline: Option<Instant>,
}

impl<H: Handler> Worker<H> {
    fn new(
        index: usize,
        poll: Poll,
        inbox: Receiver<Command>,
        listener: Option<TcpListener>,
        settings: Arc<Settings>,
        handle: ServerHandle,
        handler: H,
    ) -> Self {
        let read_buf = vec![0; settings.read_buffer_size.max(1024)];
        let ctx = WorkerState {
            worker: index,
            settings,
            handle,
            wheel: Wheel::new(Instant::now()),
            now_tick: 0,
            dirty: Vec::new(),
            pool: Vec::new(),
            deflater: Deflater::default(),
        };
        Worker {
            poll,
            inbox,
            listener,
            slab: Slab::new(),
            handler,
            read_buf,
            ctx,
            retry: Vec::new(),
            next_generation: 0,
            peer_ips: HashMap::new(),
            shutdown_deadline: None,
            touched: Vec::new(),
            turn_deadline: None,
        }
    }

    fn run(mut self) {
        let mut events = Events::with_capacity(1024);
        let mut due = Vec::new();
        // One clock read per turn: timeouts computed from it run late by at
        // most the turn's own work, far below the wheel's 10 ms tick.
        let mut now = Instant::now();
        loop {
            let mut timeout =
                if self.retry.is_empty() { self.ctx.wheel.next_timeout(now) } else { Some(Duration::ZERO) };
            for deadline in [self.shutdown_deadline, self.turn_deadline].into_iter().flatten() {
                let left = deadline.saturating_duration_since(now);
                timeout = Some(timeout.map_or(left, |t| t.min(left)));
            }
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                break;
            }
            now = Instant::now();
            self.ctx.now_tick = self.ctx.wheel.tick_of(now);
            for event in events.iter() {
                match event.token() {
                    LISTENER => self.accept_all(),
                    WAKER => self.drain_inbox(),
                    Token(token) => {
                        let key = token - FIRST_CONN;
                        if self.slab.get(key).is_some_and(|s| s.conn.has(flag::CONNECTING)) {
                            self.on_connected(key);
                            continue;
                        }
                        if event.is_readable() || event.is_read_closed() || event.is_error() {
                            if event.is_read_closed() {
                                if let Some(slot) = self.slab.get_mut(key) {
                                    slot.conn.flags |= flag::READ_CLOSED;
                                }
                            }
                            self.on_readable(key);
                        }
                        if event.is_writable() && self.slab.get(key).is_some_and(|s| s.conn.has(flag::BACKLOGGED)) {
                            self.flush(key);
                        }
                    }
                }
            }
            for key in std::mem::take(&mut self.retry) {
                self.on_readable(key);
            }
            self.ctx.wheel.expire(self.ctx.now_tick, &mut due);
            for entry in due.drain(..) {
                self.on_timer(entry);
            }
            let next_turn = self.with_conns(|handler, conns| handler.on_turn(conns));
            self.turn_deadline = next_turn.map(|after| now + after);
            while let Some(key) = self.ctx.dirty.pop() {
                self.flush(key);
            }
            if let Some(deadline) = self.shutdown_deadline {
                if self.slab.is_empty() || now >= deadline {
                    let keys: Vec<usize> = self.slab.iter().map(|(key, _)| key).collect();
                    for key in keys {
                        self.abort(key, CloseReason::Shutdown);
                    }
                    return;
                }
            }
        }
    }

    fn accept_all(&mut self) {
        let Some(listener) = self.listener.take() else { return };
        loop {
            match listener.accept() {
                Ok((stream, _)) => self.adopt(stream),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if is_transient_accept_error(&e) => continue,
                // Out of file descriptors, most likely: stop for this turn; the
                // listener will report readiness again as connections close.
                Err(_) => break,
            }
        }
        self.listener = Some(listener);
    }

    /// Takes a freshly accepted socket, unless a connection cap forbids it.
    ///
    /// Everything that can fail on its own (the TLS session, the peer's
    /// address) comes first; once the connection counts are taken, the
    /// connection is in the slab, and every way out goes through `remove`,
    /// which gives them back.
    fn adopt(&mut self, mut stream: TcpStream) {
        if self.shutdown_deadline.is_some() {
            return;
        }
        let settings = self.ctx.settings.clone();
        #[cfg(feature = "tls")]
        let extra = match settings.tls.as_ref().map(|acceptor| acceptor.session()) {
            Some(Ok(session)) => Some(Box::new(RareState { tls: Some(Box::new(session)), ..RareState::default() })),
            Some(Err(_)) => return,
            None => None,
        };
        #[cfg(not(feature = "tls"))]
        let extra: Option<Box<RareState>> = None;
        let peer_ip = match settings.max_connections_per_ip {
            Some(_) => match stream.peer_addr() {
                Ok(peer) => Some(peer.ip()),
                Err(_) => return,
            },
            None => None,
        };
        if let Err(refusal) = self.admit(peer_ip) {
            return refuse(stream, refusal);
        }
        let _ = stream.set_nodelay(true);
        let entry = self.slab.vacant_entry();
        let key = entry.key();
        let registered = self.poll.registry().register(
            &mut stream,
            Token(key + FIRST_CONN),
            // Writability is asked for once a write falls short (see
            // `flush`): until then, ACKs of our writes do not wake the loop.
            Interest::READABLE,
        );
        self.next_generation = self.next_generation.wrapping_add(1);
        let conn = Connection {
            socket: stream,
            generation: self.next_generation,
            phase: Phase::Handshake,
            flags: 0,
            deadline: 0,
            armed: 0,
            timer: 0,
            out: None,
            extra,
            data: Default::default(),
        };
        let slot = entry.insert(Slot { decoder: Decoder::new(Role::Server), conn });
        if let Some(ip) = peer_ip {
            self.peer_ips.insert(key, ip);
        }
        if registered.is_err() {
            self.remove(key);
            return;
        }
        let tick = self.ctx.wheel.deadline_ticks(self.ctx.now_tick, settings.handshake_timeout);
        self.ctx.set_deadline(key, &mut slot.conn, tick);
    }

    /// Counts a new connection (and one more from `peer_ip`, when a per-IP
    /// cap is set), or says which cap it would pass. A connection counted here
    /// must go into the slab: `remove` uncounts it.
    fn admit(&mut self, peer_ip: Option<IpAddr>) -> Result<(), &'static str> {
        let settings = &self.ctx.settings;
        let shared = &self.ctx.handle.shared;
        let open = shared.connections.fetch_add(1, Ordering::Relaxed) + 1;
        if settings.max_connections.is_some_and(|max| open > max) {
            shared.connections.fetch_sub(1, Ordering::Relaxed);
            return Err("too many connections");
        }
        if let (Some(ip), Some(max)) = (peer_ip, settings.max_connections_per_ip) {
            let mut per_ip = lock(&shared.per_ip);
            let count = per_ip.entry(ip).or_insert(0);
            if *count >= max {
                drop(per_ip);
                shared.connections.fetch_sub(1, Ordering::Relaxed);
                return Err("too many connections from this address");
            }
            *count += 1;
        }
        Ok(())
    }

    fn drain_inbox(&mut self) {
        while let Ok(command) = self.inbox.try_recv() {
            match command {
                Command::Send(id, frame) => self.with_open(id, |conn| {
                    let _ = conn.send_shared(&frame);
                }),
                Command::Broadcast(ids, frame) => {
                    for id in ids {
                        self.with_open(id, |conn| {
                            let _ = conn.send_shared(&frame);
                        });
                    }
                }
                Command::Close(id, code, reason) => self.with_open(id, |conn| conn.close(code, &reason)),
                Command::Adopt(stream) => self.adopt(stream),
                Command::Notify(message) => self.with_conns(|handler, conns| handler.on_notify(conns, message)),
                Command::Connect(dial) => self.dial(*dial),
                Command::Stats(answer) => {
                    let _ = answer.send(self.stats());
                }
                Command::Shutdown => self.begin_shutdown(),
            }
        }
    }

    fn stats(&self) -> Stats {
        Stats {
            connections: self.slab.len(),
            connection_slots: self.slab.capacity(),
            timer_entries: self.ctx.wheel.len(),
            timer_capacity: self.ctx.wheel.capacity(),
            pooled_queues: self.ctx.pool.len(),
        }
    }

    /// Runs `f` on connection `id` if it still exists and is open.
    fn with_open(&mut self, id: ConnId, f: impl FnOnce(&mut Conn<'_, H::Data>)) {
        let Worker { slab, handler, ctx, .. } = self;
        let key = id.key();
        let Some(slot) = slab.get_mut(key) else { return };
        let conn = &mut slot.conn;
        if conn.generation & 0xff_ffff != id.generation() || conn.phase != Phase::Open {
            return;
        }
        f(&mut Conn { key, conn, ctx });
        settle(handler, key, conn, ctx);
    }

    /// Runs a handler callback that may reach any of this worker's connections.
    fn with_conns<R>(&mut self, f: impl FnOnce(&mut H, &mut Conns<'_, H::Data>) -> R) -> R {
        let Worker { slab, handler, ctx, touched, .. } = self;
        let result = f(handler, &mut Conns { slab, ctx, touched });
        for key in touched.drain(..) {
            if let Some(slot) = slab.get_mut(key) {
                settle(handler, key, &mut slot.conn, ctx);
            }
        }
        result
    }

    fn begin_shutdown(&mut self) {
        if self.shutdown_deadline.is_some() {
            return;
        }
        self.shutdown_deadline = Some(Instant::now() + self.ctx.settings.shutdown_timeout);
        if let Some(mut listener) = self.listener.take() {
            let _ = self.poll.registry().deregister(&mut listener);
        }
        self.ctx.handle.shared.stopping.store(true, Ordering::Release);
        if let Some(acceptor) = &self.ctx.handle.acceptor {
            let _ = acceptor.wake();
        }
        let keys: Vec<usize> = self.slab.iter().map(|(key, _)| key).collect();
        for key in keys {
            let conn = &mut self.slab[key].conn;
            match conn.phase {
                Phase::Handshake => self.abort(key, CloseReason::Shutdown),
                _ => self.ctx.start_close(key, conn, CloseCode::GOING_AWAY, "server shutting down"),
            }
        }
    }

    fn on_readable(&mut self, key: usize) {
        for _ in 0..READS_PER_TURN {
            let Some(slot) = self.slab.get_mut(key) else { return };
            let conn = &mut slot.conn;
            let read_closed = conn.has(flag::READ_CLOSED);
            let read = conn.read(&mut self.read_buf);
            if conn.tls_wants_write() {
                // The TLS session has records to answer with (its handshake, say).
                self.ctx.mark_dirty(key, conn);
            }
            let n = match read {
                Ok(0) => return self.on_eof(key),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return self.abort(key, CloseReason::ReadFailed(Arc::new(e))),
            };
            let is_tls = conn.is_tls();
            if conn.phase == Phase::Open {
                conn.flags &= !flag::PING_SENT;
                if let Some(keepalive) = self.ctx.settings.keepalive {
                    let tick = self.ctx.wheel.deadline_ticks(self.ctx.now_tick, keepalive.idle);
                    self.ctx.set_deadline(key, conn, tick);
                }
            }
            self.on_input(key, n);
            if n < self.read_buf.len() && !read_closed && !is_tls {
                // A short read drained the socket; readiness will be reported
                // again. Not so if the peer's FIN came with this data: then
                // the next read returns 0, and nothing else would say so.
                return;
            }
        }
        self.retry.push(key);
    }

    fn on_eof(&mut self, key: usize) {
        let phase = self.slab[key].conn.phase;
        if phase == Phase::Finishing {
            // The peer may close right after its close frame; still send our reply.
            self.flush(key);
        }
        self.abort(key, CloseReason::NoCloseFrame);
    }

    /// Hands `n` freshly read bytes to the connection's current phase.
    fn on_input(&mut self, key: usize, n: usize) {
        let Worker { slab, handler, read_buf, ctx, .. } = self;
        let slot = &mut slab[key];
        let input = &mut read_buf[..n];
        match slot.conn.phase {
            Phase::Handshake if slot.conn.is_dialing() => match outgoing::response(slot, key, handler, ctx, input) {
                Ok(Some(used)) => frames(slot, key, handler, ctx, &mut input[used..]),
                Ok(None) => {}
                Err(error) => return self.dial_failed(key, error),
            },
            Phase::Handshake => {
                if let Some(used) = handshake(slot, key, handler, ctx, input) {
                    frames(slot, key, handler, ctx, &mut input[used..]);
                }
            }
            Phase::Open | Phase::Closing => frames(slot, key, handler, ctx, input),
            Phase::Finishing | Phase::Draining => {}
        }
        // The last message's buffer goes back to the worker's spares now, not
        // when this connection next speaks.
        slot.decoder.release_buffers();
    }

    fn on_timer(&mut self, entry: Entry) {
        let key = entry.key as usize;
        let Some(slot) = self.slab.get_mut(key) else { return };
        let conn = &mut slot.conn;
        if conn.generation != entry.generation || conn.armed != entry.tick {
            return;
        }
        conn.armed = 0;
        if conn.deadline > self.ctx.now_tick {
            (conn.armed, conn.timer) = self.ctx.wheel.arm(entry.key, conn.generation, conn.deadline);
            return;
        }
        match conn.phase {
            Phase::Handshake if conn.is_dialing() => self.dial_failed(key, ClientError::Timeout),
            Phase::Handshake => {
                self.remove(key);
            }
            Phase::Open => match self.ctx.settings.keepalive {
                Some(keepalive) if conn.has(flag::PING_SENT) => {
                    // The peer may be slow rather than gone: tell it why
                    // before dropping TCP. The handler hears now, with the
                    // code sent; the close timeout then ends the connection.
                    let reason = CloseReason::KeepaliveTimeout(keepalive.close_code);
                    self.ctx.start_close(key, conn, reason.code(), &reason.reason());
                    report_close(&mut self.handler, key, conn, &mut self.ctx, &reason);
                }
                Some(keepalive) => {
                    conn.flags |= flag::PING_SENT;
                    self.ctx.push_frame(key, conn, OpCode::Ping, 0, b"");
                    let tick = self.ctx.wheel.deadline_ticks(self.ctx.now_tick, keepalive.timeout);
                    self.ctx.set_deadline(key, conn, tick);
                }
                None => {}
            },
            Phase::Closing | Phase::Finishing | Phase::Draining => self.abort(key, CloseReason::CloseTimeout),
        }
    }

    /// Writes what the connection has queued; moves a finishing connection on.
    fn flush(&mut self, key: usize) {
        let Worker { poll, slab, handler, ctx, .. } = self;
        let Some(slot) = slab.get_mut(key) else { return };
        let conn = &mut slot.conn;
        conn.flags &= !flag::DIRTY;
        if let Some(mut queue) = conn.out.take() {
            let flushed = queue.flush(&mut conn.sink());
            conn.out = Some(queue);
            match flushed {
                Ok(true) => {
                    let queue = conn.out.take().expect("checked above");
                    ctx.recycle(queue);
                    conn.flags &= !flag::BACKLOGGED;
                    if conn.has(flag::DRAIN_WANTED) {
                        conn.flags &= !flag::DRAIN_WANTED;
                        if conn.phase == Phase::Open {
                            handler.on_drain(&mut Conn { key, conn, ctx });
                            settle(handler, key, conn, ctx);
                        }
                    }
                }
                Ok(false) => {
                    if let Err(e) = await_writable(poll, key, conn) {
                        self.abort(key, CloseReason::WriteFailed(Arc::new(e)));
                    }
                    return;
                }
                Err(e) => return self.abort(key, CloseReason::WriteFailed(Arc::new(e))),
            }
        }
        match conn.flush_tls() {
            Ok(true) => {}
            Ok(false) => {
                if let Err(e) = await_writable(poll, key, conn) {
                    self.abort(key, CloseReason::WriteFailed(Arc::new(e)));
                }
                return;
            }
            Err(e) => return self.abort(key, CloseReason::WriteFailed(Arc::new(e))),
        }
        if conn.phase == Phase::Finishing && conn.out.is_none() {
            conn.close_tls();
            let _ = conn.socket.shutdown(Shutdown::Write);
            conn.phase = Phase::Draining;
        }
    }

    /// Drops the connection now, telling the handler if it had not been told.
    fn abort(&mut self, key: usize, reason: CloseReason) {
        let Worker { slab, handler, ctx, .. } = self;
        if let Some(slot) = slab.get_mut(key) {
            if slot.conn.is_dialing() {
                return self.dial_failed(key, dial_error(reason));
            }
            report_close(handler, key, &mut slot.conn, ctx, &reason);
        }
        self.remove(key);
    }

    /// Drops the connection; returns its data.
    fn remove(&mut self, key: usize) -> Option<H::Data> {
        let mut slot = self.slab.try_remove(key)?;
        self.ctx.disarm(key, &mut slot.conn);
        if self.slab.is_empty() {
            // The last connection went: give back the slots of the busiest time.
            self.slab.shrink_to_fit();
        }
        if let Some(queue) = slot.conn.out {
            self.ctx.recycle(queue);
        }
        let shared = &self.ctx.handle.shared;
        shared.connections.fetch_sub(1, Ordering::Relaxed);
        if let Some(ip) = self.peer_ips.remove(&key) {
            let mut per_ip = lock(&shared.per_ip);
            if let Some(count) = per_ip.get_mut(&ip) {
                *count -= 1;
                if *count == 0 {
                    per_ip.remove(&ip);
                }
            }
        }
        Some(slot.conn.data)
    }
}

/// Marks a connection whose write fell short, and asks the poller to report
/// writability too (once: the interest is kept, see `flag::WRITE_INTEREST`).
fn await_writable<D>(poll: &Poll, key: usize, conn: &mut Connection<D>) -> io::Result<()> {
    conn.flags |= flag::BACKLOGGED;
    if !conn.has(flag::WRITE_INTEREST) {
        conn.flags |= flag::WRITE_INTEREST;
        let interest = Interest::READABLE | Interest::WRITABLE;
        poll.registry().reregister(&mut conn.socket, Token(key + FIRST_CONN), interest)?;
    }
    Ok(())
}

/// Feeds bytes to the request reader; on a complete head, answers it. Returns
/// how many bytes the head used if the connection is now open.
fn handshake<H: Handler>(
    slot: &mut Slot<H::Data>,
    key: usize,
    handler: &mut H,
    ctx: &mut WorkerState,
    input: &[u8],
) -> Option<usize> {
    let conn = &mut slot.conn;
    let limits = ctx.settings.request_limits;
    let extra = conn.extra.get_or_insert_with(Box::default);
    let reader = extra.handshake.get_or_insert_with(RequestReader::default);
    let used = match reader.push(input, &limits) {
        Ok(None) => return None,
        Ok(Some(used)) => used,
        Err(e) => {
            ctx.queue(key, conn).push_with(|out| e.write_response(out));
            ctx.finish(key, conn);
            return None;
        }
    };
    let extra = conn.extra.as_deref_mut().expect("a handshaking connection holds its reader");
    let reader = extra.handshake.take().expect("a handshaking connection holds its reader");
    let settings = ctx.settings.clone();
    let peer = conn.socket.peer_addr().ok();
    let mut accepted = None;
    ctx.queue(key, conn).push_with(|out| accepted = answer(&reader, peer, handler, &settings, out));
    let Some((accept, deflate)) = accepted else {
        ctx.finish(key, conn);
        return None;
    };
    if let (Some(agreement), Some(config)) = (deflate, settings.deflate) {
        slot.compress(DeflateState::new(Role::Server, agreement, config));
    }
    slot.conn.data = accept.data;
    open(handler, key, &mut slot.conn, ctx).then_some(used)
}

impl<D> Slot<D> {
    /// permessage-deflate was agreed: compressed messages may arrive, and sends compress.
    fn compress(&mut self, state: DeflateState) {
        self.conn.extra.get_or_insert_with(Box::default).deflate = Some(state);
        self.decoder.allow_extension_rsv(RSV1);
    }
}

/// The upgrade is done (either way round): the connection opens. Returns
/// whether it is still open after `on_open`.
fn open<H: Handler>(handler: &mut H, key: usize, conn: &mut Connection<H::Data>, ctx: &mut WorkerState) -> bool {
    conn.tidy_extra();
    conn.phase = Phase::Open;
    conn.flags |= flag::OPENED;
    // The handshake deadline no longer applies.
    ctx.disarm(key, conn);
    conn.deadline = u32::MAX;
    if let Some(keepalive) = ctx.settings.keepalive {
        let tick = ctx.wheel.deadline_ticks(ctx.now_tick, keepalive.idle);
        ctx.set_deadline(key, conn, tick);
    }
    handler.on_open(&mut Conn { key, conn, ctx });
    settle(handler, key, conn, ctx);
    conn.phase == Phase::Open
}

/// Answers a complete request head into `response`: the 101 (returning the
/// acceptance and any permessage-deflate agreement) or an HTTP response that
/// ends the connection (returning `None`).
fn answer<H: Handler>(
    reader: &RequestReader,
    peer: Option<SocketAddr>,
    handler: &mut H,
    settings: &Settings,
    response: &mut Vec<u8>,
) -> Option<(super::Accept<H::Data>, Option<DeflateAgreement>)> {
    let request = match reader.request(&settings.request_limits) {
        Ok(request) => request,
        Err(e) => {
            e.write_response(response);
            return None;
        }
    };
    if !request.is_websocket_upgrade() {
        match handler.on_http(&request) {
            Some(reply) => {
                let headers: Vec<(&str, &str)> = reply.headers.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
                handshake::write_response(response, reply.status, &headers, &reply.body);
            }
            None => handshake::write_response(
                response,
                426,
                &[("Upgrade", "websocket"), ("Sec-WebSocket-Version", "13")],
                b"This endpoint speaks WebSocket only.",
            ),
        }
        return None;
    }
    let upgrade = match request.websocket() {
        Ok(upgrade) => upgrade,
        Err(e) => {
            e.write_response(response);
            return None;
        }
    };
    let origin = request.header("origin").and_then(|o| std::str::from_utf8(o).ok());
    if !settings.origins.allows(origin) {
        HandshakeError::OriginRejected.write_response(response);
        return None;
    }
    let view = UpgradeRequest { request: &request, upgrade: &upgrade, peer };
    match handler.on_upgrade(&view) {
        Ok(mut accept) => {
            let offered = |p: &String| upgrade.protocols().any(|offer| offer == p);
            accept.protocol = accept.protocol.filter(offered);
            let deflate = settings.deflate.and_then(|config| {
                let offers: Vec<_> = upgrade.extensions().collect();
                deflate::accept_offer(&offers, &config)
            });
            let extensions = deflate.map(|agreement| agreement.to_string());
            handshake::write_accept(response, &upgrade.accept_key(), accept.protocol.as_deref(), extensions.as_deref());
            Some((accept, deflate))
        }
        Err(reject) => {
            handshake::write_response(response, reject.status, &[], reject.body.as_bytes());
            None
        }
    }
}

/// Decodes frames from `input` and dispatches them.
fn frames<H: Handler>(slot: &mut Slot<H::Data>, key: usize, handler: &mut H, ctx: &mut WorkerState, input: &mut [u8]) {
    let Slot { decoder, conn } = slot;
    let limits = conn.limits(&ctx.settings);
    let mut pos = 0;
    while pos < input.len() && matches!(conn.phase, Phase::Open | Phase::Closing) {
        let decoded = match decoder.decode(&mut input[pos..], &limits) {
            Ok(decoded) => decoded,
            Err(e) => return fail_on(e, handler, key, conn, ctx),
        };
        pos += decoded.consumed;
        match decoded.event {
            None => {}
            // After our close frame, data messages are no longer delivered.
            Some(Event::Message(message)) if conn.phase == Phase::Open => {
                handler.on_message(&mut Conn { key, conn, ctx }, message);
                settle(handler, key, conn, ctx);
            }
            Some(Event::Compressed { text, payload }) if conn.phase == Phase::Open => {
                let state = conn.deflate().expect("RSV1 is only allowed once permessage-deflate is agreed");
                // Taken out of the context for the callback, which borrows the context too.
                let mut deflater = std::mem::take(&mut ctx.deflater);
                let inflated = deflater.decompress(state, text, payload, limits.max_message_size);
                let result = inflated.map(|message| handler.on_message(&mut Conn { key, conn, ctx }, message));
                ctx.deflater = deflater;
                if let Err(e) = result {
                    return fail_on(e, handler, key, conn, ctx);
                }
                settle(handler, key, conn, ctx);
            }
            Some(Event::Ping(payload)) => {
                // Pongs count against the send budget like any frame: a ping
                // flood from a peer that does not read cannot grow the queue.
                let fits = conn.queued() + payload.len() + 2 <= ctx.settings.max_buffered;
                if conn.phase == Phase::Open && fits {
                    ctx.push_frame(key, conn, OpCode::Pong, 0, payload);
                }
            }
            Some(Event::Pong(payload)) if conn.phase == Phase::Open => {
                handler.on_pong(&mut Conn { key, conn, ctx }, payload);
                settle(handler, key, conn, ctx);
            }
            Some(Event::Pong(_) | Event::Message(_) | Event::Compressed { .. }) => {}
            Some(Event::Close(code, reason)) => {
                if let Some(reply) = conn.phase.close_handshake().and_then(|mut close| close.receive(code)) {
                    ctx.push_frame(key, conn, OpCode::Close, 0, reply.payload());
                }
                ctx.finish(key, conn);
                report_close(handler, key, conn, ctx, &CloseReason::Peer { code, reason: reason.to_string() });
                return;
            }
        }
    }
}

/// Fails the connection for a protocol error of the peer's, and tells the handler.
fn fail_on<H: Handler>(
    error: ProtocolError,
    handler: &mut H,
    key: usize,
    conn: &mut Connection<H::Data>,
    ctx: &mut WorkerState,
) {
    ctx.fail(key, conn, error.close_code(), &error.to_string());
    report_close(handler, key, conn, ctx, &CloseReason::Protocol(error));
}

/// Calls `on_close` once for an opened connection.
fn report_close<H: Handler>(
    handler: &mut H,
    key: usize,
    conn: &mut Connection<H::Data>,
    ctx: &mut WorkerState,
    reason: &CloseReason,
) {
    if conn.has(flag::OPENED) && !conn.has(flag::NOTIFIED) {
        conn.flags |= flag::NOTIFIED;
        handler.on_close(&mut Conn { key, conn, ctx }, reason);
    }
}

/// After a callback: report a close the callback caused (a send over budget).
fn settle<H: Handler>(handler: &mut H, key: usize, conn: &mut Connection<H::Data>, ctx: &mut WorkerState) {
    if conn.has(flag::CLOSE_PENDING) {
        conn.flags &= !flag::CLOSE_PENDING;
        report_close(handler, key, conn, ctx, &CloseReason::SendBufferFull);
    }
}

/// The error an outgoing connection that never opened reports for `reason`:
/// an I/O error keeps its kind and the error itself.
fn dial_error(reason: CloseReason) -> ClientError {
    match reason {
        CloseReason::ReadFailed(e) | CloseReason::WriteFailed(e) => ClientError::Io(io::Error::new(e.kind(), e)),
        other => ClientError::Io(io::Error::other(other.reason().into_owned())),
    }
}

/// Turns away a connection over a cap with a best-effort 503.
fn refuse(mut stream: TcpStream, reason: &str) {
    use std::io::Write as _;
    let mut response = Vec::new();
    handshake::write_response(&mut response, 503, &[], reason.as_bytes());
    let _ = stream.write(&response);
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    #[test]
    fn idle_connection_state_stays_small() {
        // Per-connection memory is a headline number (docs/BENCHMARKS.md);
        // this catches a field that would quietly grow it.
        assert!(std::mem::size_of::<super::Slot<()>>() <= 128, "{}", std::mem::size_of::<super::Slot<()>>());
    }
}
