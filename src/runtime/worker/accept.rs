//! Taking connections in: the acceptor thread (acceptor mode), and a
//! worker's own accepts, caps and per-IP counts.

use super::*;

/// Accepts connections and deals them to the workers in turn.
pub(super) fn run_acceptor(mut poll: Poll, mut listener: TcpListener, handle: ServerHandle) {
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

impl<H: Handler> Worker<H> {
    pub(super) fn accept_all(&mut self) {
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
    pub(super) fn adopt(&mut self, stream: TcpStream) {
        self.take_in(stream, true);
    }

    /// [`adopt`](Self::adopt), with a TLS session if `tls` and the server
    /// serves `wss://`; returns the connection's key if it was taken.
    pub(super) fn take_in(&mut self, mut stream: TcpStream, tls: bool) -> Option<usize> {
        if self.shutdown_deadline.is_some() {
            return None;
        }
        self.ctx.metrics.accepted.inc();
        let settings = self.ctx.settings.clone();
        #[cfg(feature = "tls")]
        let extra = match settings.tls.as_ref().filter(|_| tls).map(|acceptor| acceptor.session()) {
            Some(Ok(session)) => Some(Box::new(RareState { tls: Some(Box::new(session)), ..RareState::default() })),
            Some(Err(_)) => return None,
            None => None,
        };
        #[cfg(not(feature = "tls"))]
        let extra: Option<Box<RareState>> = None;
        #[cfg(not(feature = "tls"))]
        let _ = tls;
        let peer_ip = match settings.max_connections_per_ip {
            Some(_) => match stream.peer_addr() {
                Ok(peer) => Some(peer.ip()),
                Err(_) => return None,
            },
            None => None,
        };
        if let Err(refusal) = self.admit(peer_ip) {
            self.ctx.metrics.refused(503);
            refuse(stream, refusal);
            return None;
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
        let conn = Transport {
            socket: stream,
            generation: self.next_generation,
            flags: 0,
            timer: NO_ENTRY,
            close_sent: 0,
            out: None,
            extra,
            data: Default::default(),
        };
        let machine = Machine::server(self.ctx.now(), &self.ctx.config);
        let WorkerConn { machine, conn } = entry.insert(WorkerConn { machine, conn });
        self.ctx.metrics.admitted.inc();
        if let Some(ip) = peer_ip {
            self.peer_ips.insert(key, ip);
        }
        if registered.is_err() {
            self.remove(key);
            return None;
        }
        self.ctx.follow(key, conn, machine.control());
        crate::runtime::logs::accepted(ConnId::new(self.ctx.worker, key, conn.generation), &conn.socket);
        Some(key)
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
}

/// Turns away a connection over a cap with a best-effort 503.
pub(super) fn refuse(mut stream: TcpStream, reason: &str) {
    use std::io::Write as _;
    crate::runtime::logs::over_cap(&stream, reason);
    let mut response = Vec::new();
    server::write_response(&mut response, 503, &[], reason.as_bytes());
    let _ = stream.write(&response);
}
