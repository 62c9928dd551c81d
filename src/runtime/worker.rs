//! One worker: a mio event loop that owns its connections.
//!
//! Each loop turn: poll; read every readable socket into the worker's one read
//! buffer and hand complete messages to the handler; apply commands from other
//! threads; expire timers; then write every connection that queued bytes during
//! the turn, once each. Reads are bounded per connection per turn, so one busy
//! peer cannot starve the rest.
//!
//! This file holds the loop itself; beside it, `accept` takes connections in,
//! `upgrade` answers the upgrade request, `dispatch` hands an open
//! connection's frames to the handler, and `outgoing` dials out.

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

use super::conn::{flag, Conn, Outbox, RareState, SendStatus, Transport, WorkerState};
use super::handle::{Command, ConnId, ServerHandle, ServerState, Stats, WorkerInbox};
use super::outbuf::QueuePool;
use super::settings::{AcceptMode, Settings};
use super::timer::{Entry, Tick, Wheel, NO_ENTRY};
use super::{listen, Conns, Handler, RunningServer, UpgradeRequest};
use crate::dial::ClientError;
use crate::proto::compress::{DeflateState, Deflater, RSV1};
use crate::proto::connection::{Config, Connection as Machine, Control, Received, Step, Timer};
use crate::proto::deflate::{self, DeflateAgreement};
use crate::proto::handshake::server::{self, HandshakeError, RequestReader};
use crate::proto::{CloseCode, CloseReason, Role};

mod accept;
mod adopt;
mod counted;
mod dispatch;
mod drain;
mod outgoing;
mod shutdown;
mod upgrade;
#[cfg(all(feature = "io-uring", target_os = "linux"))]
mod uring;

use accept::run_acceptor;
use counted::Counted;
use dispatch::{frames, report_close, settle};
pub(crate) use outgoing::{Dial, Dialing};
use upgrade::{handshake, open};

const LISTENER: Token = Token(0);
const WAKER: Token = Token(1);
const FIRST_CONN: usize = 2;
/// Reads of one socket per loop turn before other sockets get their turn.
const READS_PER_TURN: usize = 4;

/// The ring a worker's sends go through when `Settings::io_uring_sends` is on.
#[cfg(all(feature = "io-uring", target_os = "linux"))]
type Ring = Option<uring::SendRing>;
/// Without the feature, never a ring.
#[cfg(not(all(feature = "io-uring", target_os = "linux")))]
type Ring = Option<std::convert::Infallible>;

/// A worker's ring, made here so that a kernel refusing io_uring fails `start`.
#[cfg(all(feature = "io-uring", target_os = "linux"))]
fn ring(settings: &Settings) -> io::Result<Ring> {
    let ring = settings.io_uring_sends.then(uring::SendRing::new).transpose();
    ring.map_err(|e| io::Error::new(e.kind(), format!("io_uring_sends is on, and the kernel refuses io_uring: {e}")))
}
#[cfg(not(all(feature = "io-uring", target_os = "linux")))]
fn ring(_: &Settings) -> io::Result<Ring> {
    Ok(None)
}

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
    let shared = Arc::new(ServerState {
        data_type: Some(std::any::TypeId::of::<H::Data>()),
        metrics: settings.metrics.clone(),
        ..ServerState::default()
    });
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
        let ring = ring(&settings)?;
        let (settings, handle, handler) = (settings.clone(), handle.clone(), handler.clone());
        // The worker is built on its own thread, so connection data need not be `Send`.
        let thread = std::thread::Builder::new().name(format!("emitws-worker-{index}")).spawn(move || {
            let mut worker = Worker::new(index, poll, inbox, listener, settings, handle, Counted(handler));
            worker.ring = ring;
            worker.run()
        })?;
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
    tracing::info!(addr = %local_addr, workers, listening = addr.is_some(), "started");
    Ok(RunningServer { handle, local_addr, threads })
}

/// A connection as the worker keeps it: its protocol machine beside the
/// rest of its state, so the two can be borrowed separately (a message
/// borrows from the machine's decoder while the handler sends).
pub(crate) struct WorkerConn<D> {
    pub(crate) machine: Machine<Tick>,
    pub(crate) conn: Transport<D>,
}

struct Worker<H: Handler> {
    poll: Poll,
    inbox: Receiver<Command>,
    listener: Option<TcpListener>,
    slab: Slab<WorkerConn<H::Data>>,
    handler: H,
    read_buf: Vec<u8>,
    ctx: WorkerState,
    /// Connections that still had input after their reads this turn.
    retry: Vec<usize>,
    next_generation: u32,
    /// Client IPs of connections, kept only when a per-IP cap is set.
    peer_ips: HashMap<usize, IpAddr>,
    shutdown_deadline: Option<Instant>,
    /// When the handler asked for its next `on_turn`.
    turn_deadline: Option<Instant>,
    ring: Ring,
    /// This worker's share of a drain, while one is under way.
    draining: Option<drain::Draining>,
    /// Connections a shutdown closes once their handler's work is done.
    finishing: Option<shutdown::Finishing>,
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
        let config = std::rc::Rc::new(settings.connection_config());
        let metrics = settings.metrics.worker();
        let ctx = WorkerState {
            worker: index,
            settings,
            handle,
            wheel: Wheel::new(Instant::now()),
            now_tick: 0,
            dirty: Vec::new(),
            pool: QueuePool::default(),
            deflater: Deflater::default(),
            config,
            close_pending: Vec::new(),
            metrics,
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
            turn_deadline: None,
            ring: Ring::default(),
            draining: None,
            finishing: None,
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
            for deadline in
                [self.shutdown_deadline, self.turn_deadline, self.drain_due(), self.grace_due()].into_iter().flatten()
            {
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
            self.drain_step(now);
            self.finish_step(now);
            #[cfg(all(feature = "io-uring", target_os = "linux"))]
            self.flush_batched();
            self.flush_dirty();
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

    fn drain_inbox(&mut self) {
        while let Ok(command) = self.inbox.try_recv() {
            match command {
                Command::Send(id, frame) => self.with_open(id, |conn| {
                    let _ = conn.send_shared(&frame);
                }),
                Command::Broadcast(ids, frame) => {
                    let mut sent = 0;
                    for id in ids {
                        self.with_open(id, |conn| {
                            sent += u64::from(conn.queue_shared(&frame) != SendStatus::Refused);
                        });
                    }
                    self.ctx.metrics.shared_out(&frame, sent);
                }
                Command::Close(id, code, reason) => self.with_open(id, |conn| conn.close(code, &reason)),
                Command::Adopt(stream) => self.adopt(stream),
                Command::AdoptReceived(stream, received) => self.adopt_received(stream, &received),
                Command::Notify(message) => self.with_conns(|handler, conns| handler.on_notify(conns, message)),
                Command::Connect(dial) => self.dial(*dial),
                Command::Stats(answer) => {
                    let _ = answer.send(self.stats());
                }
                Command::Drain(plan) => self.begin_drain(plan),
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
            pooled_queues: self.ctx.pool.size().0,
            pooled_bytes: self.ctx.pool.size().1,
        }
    }

    /// Runs `f` on connection `id` if it still exists and is open.
    fn with_open(&mut self, id: ConnId, f: impl FnOnce(&mut Conn<'_, H::Data>)) {
        let Worker { slab, handler, ctx, .. } = self;
        let key = id.key();
        let Some(WorkerConn { machine, conn }) = slab.get_mut(key) else { return };
        if conn.generation & 0xff_ffff != id.generation() || !machine.is_open() {
            return;
        }
        let control = machine.control();
        f(&mut Conn { key, conn, control, ctx });
        settle(handler, key, conn, control, ctx);
    }

    /// Runs a handler callback that may reach any of this worker's connections.
    fn with_conns<R>(&mut self, f: impl FnOnce(&mut H, &mut Conns<'_, H::Data>) -> R) -> R {
        let Worker { slab, handler, ctx, .. } = self;
        let result = f(handler, &mut Conns { slab, ctx });
        while let Some(key) = ctx.close_pending.pop() {
            if let Some(WorkerConn { machine, conn }) = slab.get_mut(key) {
                settle(handler, key, conn, machine.control(), ctx);
            }
        }
        result
    }

    fn on_readable(&mut self, key: usize) {
        for _ in 0..READS_PER_TURN {
            let Some(WorkerConn { conn, .. }) = self.slab.get_mut(key) else { return };
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
            self.on_received(key, n);
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
        let WorkerConn { machine, conn } = &self.slab[key];
        if machine.is_closed() && !conn.has(flag::WRITE_SHUT) {
            // The peer may close right after its close frame; still send our reply.
            self.flush(key);
        }
        let Some(slot) = self.slab.get_mut(key) else { return };
        if slot.conn.is_dialing() {
            let error = dial_error(CloseReason::NoCloseFrame, slot.conn.is_tls_handshaking());
            return self.dial_failed(key, error);
        }
        let ended = slot.machine.handle_eof();
        self.end(key, ended);
    }

    /// Counts `n` bytes just read into the read buffer and hands them on.
    /// Inlined into the socket's read path, as it was before adoption
    /// shared it (callgrind: a call here cost the echo 2%).
    #[inline(always)]
    fn on_received(&mut self, key: usize, n: usize) {
        let WorkerConn { machine, conn } = &mut self.slab[key];
        self.ctx.metrics.bytes_read.add(n as u64);
        // Traffic postpones the keepalive.
        machine.handle_read(self.ctx.now(), conn.config(&self.ctx.config));
        if let Some(Tick(tick)) = machine.poll_timeout() {
            self.ctx.arm_wheel(key, conn, tick);
        }
        self.on_input(key, n);
    }

    /// Hands `n` freshly read bytes to the connection's current phase.
    #[inline(always)] // one socket read path, as on_received
    fn on_input(&mut self, key: usize, n: usize) {
        let Worker { slab, handler, read_buf, ctx, .. } = self;
        let slot = &mut slab[key];
        let input = &mut read_buf[..n];
        if !slot.machine.is_handshaking() {
            frames(slot, key, handler, ctx, input);
        } else if slot.conn.is_dialing() {
            match outgoing::response(slot, key, handler, ctx, input) {
                Ok(Some(used)) => frames(slot, key, handler, ctx, &mut input[used..]),
                Ok(None) => {}
                Err(error) => return self.dial_failed(key, error),
            }
        } else if let Some(used) = handshake(slot, key, handler, ctx, input) {
            frames(slot, key, handler, ctx, &mut input[used..]);
        }
        // The last message's buffer goes back to the worker's spares now, not
        // when this connection next speaks.
        slot.machine.release_buffers();
    }

    fn on_timer(&mut self, entry: Entry) {
        let key = entry.key as usize;
        let Worker { slab, handler, ctx, .. } = self;
        let Some(WorkerConn { machine, conn }) = slab.get_mut(key) else { return };
        if conn.generation != entry.generation || conn.timer == NO_ENTRY {
            return;
        }
        if ctx.wheel.armed_tick(conn.timer, entry.key, conn.generation).is_some() {
            // A newer entry replaced this one after it expired, before this look.
            return;
        }
        conn.timer = NO_ENTRY;
        let now = ctx.now();
        match machine.poll_timeout() {
            None => return,
            // Armed early (the wheel's horizon, or a deadline that moved on).
            Some(due) if due > now => return ctx.arm_wheel(key, conn, due.0),
            Some(_) if machine.timer() == Some(Timer::Handshake) && conn.is_dialing() => {
                return self.dial_failed(key, ClientError::Timeout);
            }
            Some(_) => {}
        }
        let config = ctx.config_of(conn);
        let ended = machine.handle_timeout(now, &config, &mut Outbox { key, conn, ctx });
        if machine.is_finished() {
            return self.end(key, ended);
        }
        let control = machine.control();
        ctx.follow(key, conn, control);
        if let Some(reason) = ended {
            // A keepalive timeout: the handler hears now, with the code
            // sent; the close deadline then ends the connection.
            report_close(handler, key, conn, control, ctx, &reason);
        }
    }

    /// Writes what the connection has queued; once the machine will send
    /// nothing more and all is written, shuts our side.
    fn flush(&mut self, key: usize) {
        let Worker { slab, handler, ctx, .. } = self;
        let Some(WorkerConn { machine, conn }) = slab.get_mut(key) else { return };
        conn.flags &= !flag::DIRTY;
        if let Some(mut queue) = conn.out.take() {
            let flushed = queue.flush(&mut conn.sink());
            conn.out = Some(queue);
            match flushed {
                Ok(true) => {
                    let queue = conn.out.take().expect("checked above");
                    ctx.pool.give(queue);
                    conn.flags &= !flag::BACKLOGGED;
                    if conn.has(flag::DRAIN_WANTED) {
                        conn.flags &= !flag::DRAIN_WANTED;
                        if machine.is_open() {
                            let control = machine.control();
                            handler.on_drain(&mut Conn { key, conn, control, ctx });
                            settle(handler, key, conn, control, ctx);
                        }
                    }
                }
                Ok(false) => return self.backlog(key),
                Err(e) => return self.abort(key, CloseReason::WriteFailed(Arc::new(e))),
            }
        }
        match conn.flush_tls() {
            Ok(true) => {}
            Ok(false) => return self.backlog(key),
            Err(e) => return self.abort(key, CloseReason::WriteFailed(Arc::new(e))),
        }
        if machine.is_closed() && conn.out.is_none() && !conn.has(flag::WRITE_SHUT) {
            conn.close_tls();
            let _ = conn.socket.shutdown(Shutdown::Write);
            conn.flags |= flag::WRITE_SHUT;
        }
    }

    /// Writes the turn's connections through the ring, if there is one: the
    /// plain-TCP ones whose queue is one buffer, with one submission per
    /// batch (the others stay in the dirty list for `flush`). Each result is
    /// then applied as `flush` would have applied its own `send`'s, and
    /// `flush` finishes the rest (a short write's remainder, `on_drain`, the
    /// shutdown of a closed connection).
    #[cfg(all(feature = "io-uring", target_os = "linux"))]
    #[allow(unsafe_code)] // the ring reads the queues' buffers until `submit` returns
    fn flush_batched(&mut self) {
        use std::os::fd::AsRawFd;
        let Some(mut ring) = self.ring.take() else { return };
        let mut failed = false;
        // The dirty list is compacted in place, in order (the order of
        // `flush_dirty`): `dirty[..kept]` are left for it, `dirty[next..]`
        // are still to look at.
        let (mut next, mut kept) = (0, 0);
        while !failed && next < self.ctx.dirty.len() {
            while next < self.ctx.dirty.len() && !ring.is_full() {
                let key = self.ctx.dirty[next];
                next += 1;
                let slot = self.slab.get(key).filter(|slot| !slot.conn.is_tls());
                match slot.and_then(|slot| Some((slot.conn.socket.as_raw_fd(), slot.conn.out.as_ref()?.contiguous()?)))
                {
                    // SAFETY: nothing touches the queues or the sockets
                    // until `submit` has returned.
                    Some((fd, bytes)) => unsafe { ring.push(key, fd, bytes) },
                    None => {
                        self.ctx.dirty[kept] = key;
                        kept += 1;
                    }
                }
            }
            failed = ring.submit().is_err();
            // Every result is recorded before any callback (`on_drain`,
            // `on_close`) can queue onto, or close, another connection of the batch.
            for &(key, result) in ring.sends() {
                if let (Ok(written @ 1..), Some(slot)) = (usize::try_from(result), self.slab.get_mut(key)) {
                    slot.conn.out.as_mut().expect("a queue was sent from").consume(written);
                }
            }
            for &(key, result) in ring.sends() {
                match result {
                    uring::NOT_SENT | 1.. => self.flush(key),
                    0 => self.abort(key, CloseReason::WriteFailed(Arc::new(io::ErrorKind::WriteZero.into()))),
                    error if error == -libc::EAGAIN => self.backlog(key),
                    error if error == -libc::EINTR => self.flush(key),
                    error => self.abort(key, CloseReason::WriteFailed(Arc::new(io::Error::from_raw_os_error(-error)))),
                }
            }
            ring.clear();
        }
        // What a failed submission left, and what the batches' callbacks
        // queued, join what `flush_dirty` writes.
        self.ctx.dirty.copy_within(next.., kept);
        self.ctx.dirty.truncate(kept + self.ctx.dirty.len() - next);
        // A failed ring is dropped: the turns that follow write with `send`.
        if !failed {
            self.ring = Some(ring);
        }
    }

    /// Writes the connections written to this turn, in the order they were
    /// first written to: a room's members in the order they joined, so the
    /// first to join (often the first to speak) hear first and can answer
    /// within the same turn's writes.
    fn flush_dirty(&mut self) {
        let mut batch = Vec::new();
        while !self.ctx.dirty.is_empty() {
            // Callbacks of a flush (`on_drain`) may queue more: another round.
            std::mem::swap(&mut batch, &mut self.ctx.dirty);
            for &key in &batch {
                self.flush(key);
            }
            batch.clear();
        }
        // The list's allocation is kept for the next turn.
        self.ctx.dirty = batch;
    }

    /// A connection's socket took less than it had queued: it waits for writability.
    fn backlog(&mut self, key: usize) {
        let Some(WorkerConn { conn, .. }) = self.slab.get_mut(key) else { return };
        conn.flags &= !flag::DIRTY;
        if let Err(e) = await_writable(&self.poll, key, conn) {
            self.abort(key, CloseReason::WriteFailed(Arc::new(e)));
        }
    }

    /// Drops the connection now for `reason` (its transport failed, or the
    /// server stops), telling the handler if it had not been told.
    fn abort(&mut self, key: usize, reason: CloseReason) {
        let Some(slot) = self.slab.get_mut(key) else { return };
        if slot.conn.is_dialing() {
            let error = dial_error(reason, slot.conn.is_tls_handshaking());
            return self.dial_failed(key, error);
        }
        let ended = slot.machine.handle_error(reason);
        self.end(key, ended);
    }

    /// Drops a connection the machine finished, telling the handler why if
    /// this ended it.
    fn end(&mut self, key: usize, ended: Option<CloseReason>) {
        let Worker { slab, handler, ctx, .. } = self;
        if let (Some(reason), Some(WorkerConn { machine, conn })) = (ended, slab.get_mut(key)) {
            report_close(handler, key, conn, machine.control(), ctx, &reason);
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
            self.ctx.pool.give(queue);
        }
        self.ctx.metrics.removed.inc();
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
fn await_writable<D>(poll: &Poll, key: usize, conn: &mut Transport<D>) -> io::Result<()> {
    conn.flags |= flag::BACKLOGGED;
    if !conn.has(flag::WRITE_INTEREST) {
        conn.flags |= flag::WRITE_INTEREST;
        let interest = Interest::READABLE | Interest::WRITABLE;
        poll.registry().reregister(&mut conn.socket, Token(key + FIRST_CONN), interest)?;
    }
    Ok(())
}

/// The error an outgoing connection that never opened reports for `reason`:
/// an I/O error keeps its kind and the error itself, and is a TLS handshake
/// failure if it came while that handshake was under way.
fn dial_error(reason: CloseReason, tls_handshaking: bool) -> ClientError {
    let error = match reason {
        CloseReason::ReadFailed(e) | CloseReason::WriteFailed(e) => io::Error::new(e.kind(), e),
        other => io::Error::other(other.reason().into_owned()),
    };
    #[cfg(feature = "tls")]
    if tls_handshaking {
        return ClientError::Tls(crate::tls::TlsError::Handshake(error));
    }
    #[cfg(not(feature = "tls"))]
    let _ = tls_handshaking;
    ClientError::Io(error)
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
        // 112 bytes: the protocol machine's 80 and the driver's 32. mio's
        // socket holds an 8-byte selector id under `debug_assertions`, and
        // its alignment pads the driver to 48.
        let budget = if cfg!(debug_assertions) { 128 } else { 112 };
        let size = std::mem::size_of::<super::WorkerConn<()>>();
        assert!(size <= budget, "{size} > {budget}");
    }
}
